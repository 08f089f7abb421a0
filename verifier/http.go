package verifier

import (
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
)

// MaxVerifyBody bounds POST /v1/verify bodies.
const MaxVerifyBody = 8 << 10

// Handler serves a verifier node's HTTP endpoints:
//
//	POST /v1/verify   {"key":"…","permission":"…"}
//	ANY  /v1/authz    Authorization: Bearer …, X-Required-Permission: …
//	GET  /healthz     the process is up
//	GET  /readyz      the table is caught up and fresh
type Handler struct {
	v *Verifier
}

// NewHandler returns the HTTP handler of v.
func NewHandler(v *Verifier) *Handler { return &Handler{v: v} }

// Paths lists the paths Handler serves, for muxes that mount it.
var Paths = []string{"/v1/verify", "/v1/authz", "/v1/authz/", "/healthz", "/readyz"}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v1/authz":
		h.authz(w, r)
	case "/v1/verify":
		h.verify(w, r)
	case "/healthz":
		keyledger.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	case "/readyz":
		if h.v.cfg.Ready != nil && !h.v.cfg.Ready() {
			keyledger.WriteError(w, errNotReady)
			return
		}
		keyledger.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	default:
		if strings.HasPrefix(r.URL.Path, "/v1/authz/") {
			// Envoy's HTTP ext_authz appends the client's path to the
			// authorization service's path prefix.
			h.authz(w, r)
			return
		}
		keyledger.WriteError(w, keyledger.Errorf(keyledger.NotFound, "no such endpoint: %s", r.URL.Path))
	}
}

// start reads the clock only when the time will be recorded.
func (h *Handler) start() time.Time {
	if h.v.cfg.Usage == nil {
		return time.Time{}
	}
	return h.v.cfg.Now()
}

var errNotReady = keyledger.Errorf(keyledger.Unavailable, "this node cannot vouch for its key table yet (catching up with the ledger, or cut off from it)")

// authz is the forward-auth endpoint. Any method is accepted because
// gateways forward the client's method.
func (h *Handler) authz(w http.ResponseWriter, r *http.Request) {
	req := Request{
		Start:      h.start(),
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

func (h *Handler) verify(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		keyledger.WriteError(w, &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonMethodNotAllowed, Message: "use POST /v1/verify"})
		return
	}
	start := h.start()
	var body verifyRequest
	if err := keyledger.DecodeJSON(w, r, MaxVerifyBody, &body); err != nil {
		keyledger.WriteError(w, err)
		return
	}
	req := Request{
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
	keyledger.WriteJSON(w, http.StatusOK, resp)
}

// OutcomeError returns the error a refused outcome is reported as.
func OutcomeError(o keyledger.Outcome, permission string, retry time.Duration) error {
	switch o {
	case keyledger.OutcomeValid:
		return nil
	case keyledger.OutcomeForbidden:
		return keyledger.Errorf(keyledger.Forbidden, "API key lacks permission %q", permission)
	case keyledger.OutcomeRateLimited:
		return keyledger.Errorf(keyledger.RateLimited, "rate limit exceeded for this key; retry after %d s", retrySeconds(retry))
	case keyledger.OutcomeUnavailable:
		return errNotReady
	}
	return keyledger.ErrUnauthorized
}

func writeRefusal(w http.ResponseWriter, req *Request, res Result) {
	if res.Outcome == keyledger.OutcomeRateLimited {
		w.Header().Set("Retry-After", strconv.Itoa(retrySeconds(res.RetryAfter)))
	}
	keyledger.WriteError(w, OutcomeError(res.Outcome, req.Permission, res.RetryAfter))
}

func retrySeconds(d time.Duration) int {
	s := int(math.Ceil(d.Seconds()))
	if s < 1 {
		s = 1
	}
	return s
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
