package http

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"io"
	"net/http"
	"strings"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/github"
	"github.com/keyledger/keyledger/verifier"
	"golang.org/x/time/rate"
)

// The leak endpoints: one code path (admin.Service.ReportLeaks) behind
// three doors.
const (
	PathLeaks            = "/v1/leaks"
	PathLeaksGitHub      = "/v1/leaks/github"
	PathLeaksGitLabTypes = "/v1/leaks/gitlab/revocable_token_types"
	PathLeaksGitLab      = "/v1/leaks/gitlab/revoke_tokens"
)

// MaxLeakBody bounds a leak report's body: 1,000 tokens with their URLs
// take about 200 KB. (The server refuses bodies over 1 MiB before any
// handler reads them.)
const MaxLeakBody = 512 << 10

// LeakOptions configure the leak endpoints of an admin node.
type LeakOptions struct {
	// GitHubKeys enables POST /v1/leaks/github: reports signed by one of
	// these keys (GitHub's secret-scanning key file). nil: 404.
	GitHubKeys *github.Keys
	// GitLabToken enables the GitLab token revocation API, for requests
	// bearing it. "": 404.
	GitLabToken string
	// Rate bounds the reports each endpoint accepts (per second, with a
	// burst of 4 × Rate); 0 means 10.
	Rate float64
}

type leaks struct {
	a        *api
	o        LeakOptions
	gitlab   []byte // SHA-256 of the GitLab token
	limiters map[string]*rate.Limiter

	// refusals are logged at most once a second: a flood of forged
	// reports must not flood the log.
	refusals throttle
}

func (l *leaks) refused(r *http.Request, err error) {
	if n, ok := l.refusals.allow(); ok {
		l.a.log.Warn("leak report refused: bad GitHub signature", "err", err, "ip", l.a.proxies.clientIP(r), "similar_since_last_line", n)
	}
}

func newLeaks(a *api, o LeakOptions) *leaks {
	if o.Rate <= 0 {
		o.Rate = 10
	}
	l := &leaks{a: a, o: o, limiters: map[string]*rate.Limiter{}}
	if o.GitLabToken != "" {
		sum := sha256.Sum256([]byte(o.GitLabToken))
		l.gitlab = sum[:]
	}
	for _, p := range []string{PathLeaks, PathLeaksGitHub, PathLeaksGitLab} {
		l.limiters[p] = rate.NewLimiter(rate.Limit(o.Rate), int(4*o.Rate))
	}
	return l
}

var errLeakRate = keyledger.Errorf(keyledger.RateLimited, "too many leak reports; try again in a second")

// allow applies the endpoint's rate limit.
func (l *leaks) allow(w http.ResponseWriter, r *http.Request, path string) bool {
	if !l.limiters[path].Allow() {
		w.Header().Set("Retry-After", "1")
		l.a.fail(w, r, errLeakRate)
		return false
	}
	return true
}

// readBody reads the raw body (a signature covers exactly these bytes).
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxLeakBody))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return nil, &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonBodyTooLarge, Message: "a leak report may hold at most 512 KiB"}
	}
	if err != nil {
		return nil, keyledger.Errorf(keyledger.Invalid, "cannot read the request body")
	}
	return b, nil
}

// github serves GitHub's secret-scanning partner program: a signed JSON
// array of {token, type, url, source}, answered with GitHub's feedback
// (token_hash, token_type, label). Unsigned, badly signed or unknown-key
// requests get 401 and nothing is done.
func (l *leaks) github(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		l.a.fail(w, r, err)
		return
	}
	if err := l.o.GitHubKeys.Verify(body, r.Header.Get(github.KeyIdentifierHeader), r.Header.Get(github.SignatureHeader)); err != nil {
		l.refused(r, err)
		WriteError(w, keyledger.ErrUnauthorized)
		return
	}
	if !l.allow(w, r, PathLeaksGitHub) {
		return
	}
	ms, err := github.DecodeReport(body)
	if err != nil {
		l.a.fail(w, r, keyledger.Errorf(keyledger.Invalid, "%s", err.Error()))
		return
	}
	rep := admin.LeakReport{Source: "github", Tokens: make([]admin.LeakedToken, len(ms))}
	for i, m := range ms {
		rep.Tokens[i] = admin.LeakedToken{Token: m.Token, Type: m.Type, URL: m.URL}
	}
	res, err := l.a.svc.ReportLeaks(r.Context(), rep)
	if err != nil {
		// 503 and the like: GitHub retries the report, which is
		// idempotent.
		l.a.fail(w, r, err)
		return
	}
	out := make([]github.Feedback, len(res))
	for i, x := range res {
		out[i] = github.Feedback{TokenHash: x.TokenHash, TokenType: x.TokenType, Label: x.Label}
	}
	WriteJSON(w, http.StatusOK, out)
}

// gitlabAuth requires the configured GitLab token as a bearer token.
func (l *leaks) gitlabAuth(w http.ResponseWriter, r *http.Request) bool {
	tok := bearer(header(r, "Authorization"))
	sum := sha256.Sum256([]byte(tok))
	if tok == "" || subtle.ConstantTimeCompare(sum[:], l.gitlab) != 1 {
		WriteError(w, keyledger.ErrUnauthorized)
		return false
	}
	return true
}

// GitLabTypes are the token types the GitLab endpoint revokes, named
// after the secrets analyzer's rule ids an operator adds for keyledger.
type GitLabTypes struct {
	Types []string `json:"types"`
}

// gitlabTokenTypes is the keyledger type names GitLab is told about.
var gitlabTokenTypes = []string{"keyledger_live_key", "keyledger_test_key"}

func (l *leaks) gitlabTypes(w http.ResponseWriter, r *http.Request) {
	if !l.gitlabAuth(w, r) {
		return
	}
	WriteJSON(w, http.StatusOK, GitLabTypes{Types: gitlabTokenTypes})
}

// gitlabToken is one entry of a GitLab revocation request.
type gitlabToken struct {
	Type     string `json:"type"`
	Token    string `json:"token"`
	Location string `json:"location"`
	URL      string `json:"url"`
}

// gitlabRevoke revokes what GitLab found: 204 once every active key of
// the request is revoked (and again, idempotently, for a repeat).
func (l *leaks) gitlabRevoke(w http.ResponseWriter, r *http.Request) {
	if !l.gitlabAuth(w, r) || !l.allow(w, r, PathLeaksGitLab) {
		return
	}
	var toks []gitlabToken
	if err := DecodeJSON(w, r, MaxLeakBody, &toks); err != nil {
		l.a.fail(w, r, err)
		return
	}
	rep := admin.LeakReport{Source: "gitlab", Tokens: make([]admin.LeakedToken, len(toks))}
	for i, t := range toks {
		where := t.Location
		if where == "" {
			where = t.URL
		}
		rep.Tokens[i] = admin.LeakedToken{Token: t.Token, Type: t.Type, URL: where}
	}
	if _, err := l.a.svc.ReportLeaks(r.Context(), rep); err != nil {
		l.a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// LeakRequest is the body of POST /v1/leaks.
type LeakRequest struct {
	// Source names the scanner (recorded as actor leak-report:<source>).
	Source string `json:"source"`
	Tokens []struct {
		Token string `json:"token"`
		URL   string `json:"url"`
		Type  string `json:"type"`
	} `json:"tokens"`
}

// LeakResponse is the answer of POST /v1/leaks.
type LeakResponse struct {
	Results []admin.LeakResult `json:"results"`
}

// generic serves in-house scanners: the admin token, an unscoped admin
// key, or a key holding the reserved leaks:report permission.
func (l *leaks) generic(w http.ResponseWriter, r *http.Request) {
	if !l.reporter(w, r) || !l.allow(w, r, PathLeaks) {
		return
	}
	var req LeakRequest
	if err := DecodeJSON(w, r, MaxLeakBody, &req); err != nil {
		l.a.fail(w, r, err)
		return
	}
	src := strings.TrimSpace(req.Source)
	if src == "" {
		src = "scanner"
	}
	rep := admin.LeakReport{Source: src, Tokens: make([]admin.LeakedToken, len(req.Tokens))}
	for i, t := range req.Tokens {
		rep.Tokens[i] = admin.LeakedToken{Token: t.Token, Type: t.Type, URL: t.URL}
	}
	res, err := l.a.svc.ReportLeaks(r.Context(), rep)
	if err != nil {
		l.a.fail(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, LeakResponse{Results: res})
}

// reporter admits the admin token, an unscoped admin key or a
// leaks:report key. The key is verified once, needing no permission, and
// its permissions are then read: a leaks:report key is not thereby
// logged as a forbidden admin attempt, nor the reverse.
func (l *leaks) reporter(w http.ResponseWriter, r *http.Request) bool {
	tok := bearer(header(r, "Authorization"))
	if tok == "" {
		WriteError(w, keyledger.ErrUnauthorized)
		return false
	}
	if l.a.isToken(tok) {
		return true
	}
	if l.a.verifier == nil {
		WriteError(w, keyledger.ErrUnauthorized)
		return false
	}
	ip := l.a.proxies.clientIP(r)
	res := l.a.verifier.Verify(&verifier.Request{Key: tok, IP: ip, UserAgent: r.Header.Get("User-Agent"), Method: r.Method, Path: r.URL.Path})
	if !res.Valid() {
		if res.Outcome == keyledger.OutcomeUnavailable || res.Outcome == keyledger.OutcomeRateLimited {
			writeRefusal(w, &verifier.Request{}, res)
		} else {
			WriteError(w, keyledger.ErrUnauthorized)
		}
		return false
	}
	p := res.Entry.Perms
	switch {
	case p.LeaksReport():
		return true
	case p.Admin() && res.Entry.Scope() == "":
		return true
	case p.Admin():
		l.a.fail(w, r, keyledger.Errorf(keyledger.Forbidden, "an owner-scoped admin key may not report leaks: a report spans owners"))
		return false
	}
	WriteError(w, keyledger.ErrUnauthorized)
	return false
}
