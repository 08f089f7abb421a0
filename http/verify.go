package http

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/textproto"
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
//
// The caller's address, and the method and path being authorized, go into
// each verification's KeyUsed event. They are taken from a gateway's
// headers (X-Forwarded-For, X-Real-IP, X-Forwarded-Method,
// X-Original-Method, X-Forwarded-Uri, X-Original-Uri) only when the TCP
// peer is a trusted proxy; anyone else's headers are their own word, and
// the peer's address and the request's own method and path are recorded.
type VerifierHandler struct {
	v       *verifier.Verifier
	proxies *proxySet
	// meta are the metadata members answered as headers, with their
	// header names (canonical, and as bytes for fasthttp).
	meta      []string
	metaNames []string
	metaBytes [][]byte
}

// MaxMetaHeaders bounds --authz-meta-headers: the answer for keys without
// metadata is then a shared slice (projector.Entry.MetaValues), so a 200
// allocates nothing.
const MaxMetaHeaders = 16

// ValidMetaHeader checks a metadata member name for --authz-meta-headers:
// 1 to 32 letters, digits, '-' or '_'.
func ValidMetaHeader(field string) error {
	if field == "" || len(field) > 32 {
		return keyledger.Errorf(keyledger.Invalid, "--authz-meta-headers: member names are 1 to 32 characters")
	}
	for i := 0; i < len(field); i++ {
		c := field[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return keyledger.Errorf(keyledger.Invalid, "--authz-meta-headers: %s may hold only letters, digits, '-' and '_'", keyledger.Quote(field))
		}
	}
	return nil
}

// SetMetaHeaders makes forward auth answer the metadata members fields
// as X-Key-Meta-<Field> headers (names checked by ValidMetaHeader). Call
// it before serving.
func (h *VerifierHandler) SetMetaHeaders(fields []string) {
	h.meta, h.metaNames, h.metaBytes = nil, nil, nil
	for _, f := range fields {
		if ValidMetaHeader(f) != nil {
			continue
		}
		name := textproto.CanonicalMIMEHeaderKey("X-Key-Meta-" + f)
		h.meta = append(h.meta, f)
		h.metaNames = append(h.metaNames, name)
		h.metaBytes = append(h.metaBytes, []byte(name))
	}
}

// headerValue makes a metadata value safe as a header value: at most 256
// bytes, printable ASCII kept, every other byte (controls, CR, LF,
// non-ASCII) and '%' percent-encoded. Clean values are returned as they
// are.
func headerValue(v string) string {
	const max = 256
	clean := len(v) <= max
	for i := 0; clean && i < len(v); i++ {
		if c := v[i]; c < 0x20 || c > 0x7e || c == '%' {
			clean = false
		}
	}
	if clean {
		return v
	}
	var b strings.Builder
	for i := 0; i < len(v) && b.Len() < max; i++ {
		if c := v[i]; c < 0x20 || c > 0x7e || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// NewVerifierHandler returns the HTTP handler of v. It believes the
// forwarded headers of loopback peers only (DefaultTrustedProxies): a
// gateway on the same host.
func NewVerifierHandler(v *verifier.Verifier) *VerifierHandler {
	return NewVerifierHandlerTrusting(v, nil)
}

// NewVerifierHandlerTrusting returns the HTTP handler of v believing the
// forwarded headers of the peers in trusted (nil: DefaultTrustedProxies;
// empty: nobody's).
func NewVerifierHandlerTrusting(v *verifier.Verifier, trusted []netip.Prefix) *VerifierHandler {
	return &VerifierHandler{v: v, proxies: newProxySet(trusted)}
}

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
		if err := h.v.ReadyError(); err != nil {
			WriteError(w, err)
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
		WriteError(w, errNoEndpoint(r.URL.Path))
	}
}

// authz is the forward-auth endpoint. Any method is accepted because
// gateways forward the client's method.
func (h *VerifierHandler) authz(w http.ResponseWriter, r *http.Request) {
	start := h.v.Start()
	o := h.proxies.originOf(r)
	cost, err := parseCost(header(r, "X-Key-Cost"))
	if err != nil {
		WriteError(w, err)
		return
	}
	req := verifier.Request{
		Start:      start,
		Cost:       cost,
		Key:        bearer(header(r, "Authorization")),
		Permission: header(r, "X-Required-Permission"),
		IP:         o.ip,
		UserAgent:  header(r, "User-Agent"),
		Method:     o.method,
		Path:       o.path,
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
	if len(h.meta) > 0 {
		for i, v := range res.Entry.MetaValues(h.meta) {
			hdr[h.metaNames[i]] = []string{headerValue(v)}
		}
	}
	w.WriteHeader(http.StatusOK)
}

type verifyRequest struct {
	Key        string `json:"key"`
	Permission string `json:"permission"`
	// Cost is what a valid verification spends of the key's credits
	// (default 1).
	Cost *int64 `json:"cost"`
}

// MaxCost bounds the cost of one verification.
const MaxCost = 1_000_000

var errCost = keyledger.Errorf(keyledger.Invalid, "cost must be an integer from 1 to %d", MaxCost)

// parseCost reads an X-Key-Cost header: absent is 1.
func parseCost(v string) (int64, error) {
	if v == "" {
		return 1, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 || n > MaxCost {
		return 0, errCost
	}
	return n, nil
}

// VerifyResponse is the body of a successful POST /v1/verify.
type VerifyResponse struct {
	Valid       bool       `json:"valid"`
	KeyID       string     `json:"key_id"`
	Environment string     `json:"environment"`
	Owner       string     `json:"owner"`
	Permissions []string   `json:"permissions"`
	ExpiresAt   *time.Time `json:"expires_at"`
	// Metadata is the key's metadata object, when it has one.
	Metadata json.RawMessage `json:"metadata,omitempty"`
	// CreditsRemaining, for a key with credits, is at most how many
	// remain across the fleet after this verification (exactly, on a
	// one-node fleet): other nodes' unspent leases count as spent.
	CreditsRemaining *int64 `json:"credits_remaining,omitempty"`
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
	cost := int64(1)
	if body.Cost != nil {
		if cost = *body.Cost; cost < 1 || cost > MaxCost {
			WriteError(w, errCost)
			return
		}
	}
	req := verifier.Request{
		Start:      start,
		Cost:       cost,
		Key:        body.Key,
		Permission: body.Permission,
		IP:         h.proxies.clientIP(r),
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
	resp := VerifyResponse{Valid: true, KeyID: e.ID(), Environment: e.Environment.String(), Owner: e.Owner, Permissions: e.Permissions(),
		Metadata: e.Metadata()}
	if e.ExpiresAt != 0 {
		t := time.Unix(0, e.ExpiresAt).UTC()
		resp.ExpiresAt = &t
	}
	if n := h.v.CreditsRemaining(e); n >= 0 {
		resp.CreditsRemaining = &n
	}
	WriteJSON(w, http.StatusOK, resp)
}

func writeRefusal(w http.ResponseWriter, req *verifier.Request, res verifier.Result) {
	switch res.Outcome {
	case keyledger.OutcomeRateLimited, keyledger.OutcomeQuotaExceeded, keyledger.OutcomeCreditsExhausted:
		// Credits that never refill have no time to retry at.
		if res.Outcome == keyledger.OutcomeRateLimited || res.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(verifier.RetrySeconds(res.RetryAfter)))
		}
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

// ClientIP is the caller of r: the client a gateway names when r comes
// from one of DefaultTrustedProxies, else r's peer. (Handlers use their own
// trusted proxies, RouterOptions.TrustedProxies.)
func ClientIP(r *http.Request) string { return defaultProxies.clientIP(r) }

var defaultProxies = newProxySet(nil)

// authzPath is the path being authorized, from the request URI of the
// forward-auth request itself: the part after /v1/authz (Envoy), else the
// URI. The result is a substring of uri (no allocation).
func authzPath(uri string) string {
	if strings.HasPrefix(uri, "/v1/authz/") {
		return uri[len("/v1/authz"):]
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
var headerKeys = []string{"Authorization", "X-Required-Permission", "X-Key-Cost", "User-Agent", "X-Forwarded-For", "X-Real-Ip",
	"X-Forwarded-Method", "X-Original-Method", "X-Forwarded-Uri", "X-Original-Uri"}
