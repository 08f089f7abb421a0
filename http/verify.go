package http

import (
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/verifier"
)

// MaxVerifyBody bounds POST /v1/verify bodies.
const MaxVerifyBody = 8 << 10

// VerifierHandler serves a verifier node's HTTP endpoints:
//
//	POST /v1/verify   {"key":"…","permission":"…"}
//	ANY  /v1/authz    Authorization: Bearer …, X-Required-Permission: …
//	GET  /healthz     the process is up
//	GET  /readyz      the table is caught up and fresh
type VerifierHandler struct {
	v *verifier.Verifier
}

// NewVerifierHandler returns the HTTP handler of v.
func NewVerifierHandler(v *verifier.Verifier) *VerifierHandler { return &VerifierHandler{v: v} }

// VerifierPaths lists the paths VerifierHandler serves, for muxes that mount it.
var VerifierPaths = []string{"/v1/verify", "/v1/authz", "/v1/authz/", "/healthz", "/readyz"}

// ServeHTTP implements http.Handler.
func (h *VerifierHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v1/authz":
		h.authz(w, r)
	case "/v1/verify":
		h.verify(w, r)
	case "/healthz":
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	case "/readyz":
		if !h.v.Ready() {
			WriteError(w, verifier.ErrNotReady)
			return
		}
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	default:
		if strings.HasPrefix(r.URL.Path, "/v1/authz/") {
			// Envoy's HTTP ext_authz appends the client's path to the
			// authorization service's path prefix.
			h.authz(w, r)
			return
		}
		WriteError(w, keyledger.Errorf(keyledger.NotFound, "no such endpoint: %s", r.URL.Path))
	}
}

// authz is the forward-auth endpoint. Any method is accepted because
// gateways forward the client's method.
func (h *VerifierHandler) authz(w http.ResponseWriter, r *http.Request) {
	req := verifier.Request{
		Start:      h.v.Start(),
		Key:        bearer(header(r, "Authorization")),
		Permission: header(r, "X-Required-Permission"),
		IP:         clientIP(r),
		UserAgent:  header(r, "User-Agent"),
		Method:     firstHeader(r, "X-Forwarded-Method", "X-Original-Method", r.Method),
		Path:       firstHeader(r, "X-Forwarded-Uri", "X-Original-Uri", ""),
	}
	if req.Path == "" {
		// Built only when no gateway header names the path: it allocates.
		req.Path = clientPath(r)
	}
	res := h.v.Verify(&req)
	if !res.Valid() {
		writeRefusal(w, &req, res)
		return
	}
	hdr, kh := w.Header(), res.Entry.Headers()
	hdr["X-Key-Id"] = kh.ID
	hdr["X-Key-Owner"] = kh.Owner
	hdr["X-Key-Environment"] = kh.Environment
	w.WriteHeader(http.StatusOK)
}

type verifyRequest struct {
	Key        string `json:"key"`
	Permission string `json:"permission"`
}

// VerifyResponse is the body of a successful POST /v1/verify.
type VerifyResponse struct {
	Valid       bool       `json:"valid"`
	KeyID       string     `json:"key_id"`
	Environment string     `json:"environment"`
	Owner       string     `json:"owner"`
	Permissions []string   `json:"permissions"`
	ExpiresAt   *time.Time `json:"expires_at"`
}

func (h *VerifierHandler) verify(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		WriteError(w, &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonMethodNotAllowed, Message: "use POST /v1/verify"})
		return
	}
	start := h.v.Start()
	var body verifyRequest
	if err := DecodeJSON(w, r, MaxVerifyBody, &body); err != nil {
		WriteError(w, err)
		return
	}
	req := verifier.Request{
		Start:      start,
		Key:        body.Key,
		Permission: body.Permission,
		IP:         clientIP(r),
		UserAgent:  header(r, "User-Agent"),
		Method:     r.Method,
		Path:       r.URL.Path,
	}
	res := h.v.Verify(&req)
	if !res.Valid() {
		writeRefusal(w, &req, res)
		return
	}
	e := res.Entry
	resp := VerifyResponse{Valid: true, KeyID: e.ID, Environment: e.Environment.String(), Owner: e.Owner, Permissions: e.Permissions()}
	if e.ExpiresAt != 0 {
		t := time.Unix(0, e.ExpiresAt).UTC()
		resp.ExpiresAt = &t
	}
	WriteJSON(w, http.StatusOK, resp)
}

func writeRefusal(w http.ResponseWriter, req *verifier.Request, res verifier.Result) {
	if res.Outcome == keyledger.OutcomeRateLimited {
		w.Header().Set("Retry-After", strconv.Itoa(verifier.RetrySeconds(res.RetryAfter)))
	}
	WriteError(w, verifier.OutcomeError(res.Outcome, req.Permission, res.RetryAfter))
}

// bearer extracts the token of an "Authorization: Bearer …" header. The
// scheme is case-insensitive (RFC 7235).
func bearer(h string) string {
	const scheme = "bearer "
	if len(h) > len(scheme) && strings.EqualFold(h[:len(scheme)], scheme) {
		return strings.TrimSpace(h[len(scheme):])
	}
	return ""
}

// ClientIP is the caller of r as the gateway saw it (see clientIP).
func ClientIP(r *http.Request) string { return clientIP(r) }

// clientIP is the caller as the gateway saw it: the first X-Forwarded-For
// hop, else X-Real-IP, else the connection's peer. Only gateways should be
// able to reach a verifier, since these headers are the client's word.
func clientIP(r *http.Request) string {
	if ip := forwardedIP(header(r, "X-Forwarded-For"), header(r, "X-Real-Ip")); ip != "" {
		return ip
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// forwardedIP is the client a gateway names: the first X-Forwarded-For
// hop, else X-Real-IP; "" when neither header is set. The result may be a
// substring of its arguments.
func forwardedIP(xff, realIP string) string {
	if xff != "" {
		if i := strings.IndexByte(xff, ','); i >= 0 {
			xff = xff[:i]
		}
		return strings.TrimSpace(xff)
	}
	return realIP
}

// clientPath is the path being authorized when no gateway header names it
// (see authzPath).
func clientPath(r *http.Request) string { return authzPath(r.URL.RequestURI()) }

// authzPath is the path being authorized, from the request URI of the
// forward-auth request itself: the part after /v1/authz (Envoy), else the
// URI. The result may be uri itself.
func authzPath(uri string) string {
	if p, ok := strings.CutPrefix(uri, "/v1/authz/"); ok {
		return "/" + p
	}
	return uri
}

// header returns the first value of a header given in canonical form
// (see headerKeys). net/http's server stores incoming headers under
// canonical keys, so a direct lookup finds them; Header.Get would
// re-canonicalize the key on every call, which was half the handler's time.
func header(r *http.Request, canonicalKey string) string {
	if v := r.Header[canonicalKey]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// headerKeys are the headers the handler reads, for the test that checks
// they are canonical.
var headerKeys = []string{"Authorization", "X-Required-Permission", "User-Agent", "X-Forwarded-For", "X-Real-Ip",
	"X-Forwarded-Method", "X-Original-Method", "X-Forwarded-Uri", "X-Original-Uri"}

// firstHeader returns the first of two headers (canonical keys) that is
// set, else def.
func firstHeader(r *http.Request, a, b, def string) string {
	if v := header(r, a); v != "" {
		return v
	}
	if v := header(r, b); v != "" {
		return v
	}
	return def
}
