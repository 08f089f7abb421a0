package http

import (
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/analytics"
)

// The paths Handler serves.
const (
	PathUsage  = "/v1/usage"
	PathQuota  = "/v1/quota"
	PathAudit  = "/v1/audit"
	PathAlerts = "/v1/alerts"
)

// NewAnalyticsHandler returns the HTTP API of analytics (GET only, JSON):
//
//	GET /v1/usage?key_id=|owner=&from=&to=&interval=minute|hour|day
//	GET /v1/quota?owner=&month=YYYY-MM
//	GET /v1/audit?key_id=&actor=&type=&from=&to=&limit=
//	GET /v1/alerts?from=&to=&rule=&key_id=&limit=
//
// Times are RFC 3339. Errors are keyledger error envelopes. The handler does
// no authentication: mount it behind the admin token check.
func NewAnalyticsHandler(a *analytics.Analytics, log *slog.Logger) http.Handler {
	return &analyticsHandler{get: func() *analytics.Analytics { return a }, log: log}
}

// NewAnalyticsHandlerFunc is NewAnalyticsHandler over analytics that may
// come up later: get returns nil while it has not (ClickHouse down at
// start), and the endpoints answer 503 saying analytics is degraded.
func NewAnalyticsHandlerFunc(get func() *analytics.Analytics, log *slog.Logger) http.Handler {
	return &analyticsHandler{get: get, log: log}
}

type analyticsHandler struct {
	get func() *analytics.Analytics
	a   *analytics.Analytics // this request's
	log *slog.Logger
}

// errAnalyticsDegraded answers while analytics waits for ClickHouse.
var errAnalyticsDegraded = keyledger.Errorf(keyledger.Unavailable,
	"analytics is degraded: ClickHouse did not answer when this node started; the node retries, and usage is kept in JetStream meanwhile")

var allowedParams = map[string][]string{
	PathUsage:  {"key_id", "owner", "from", "to", "interval"},
	PathQuota:  {"owner", "month"},
	PathAudit:  {"key_id", "actor", "type", "from", "to", "limit"},
	PathAlerts: {"from", "to", "rule", "key_id", "limit"},
}

// ServeHTTP routes, validates and answers one request.
func (h *analyticsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a := h.get()
	if a == nil {
		WriteError(w, errAnalyticsDegraded)
		return
	}
	h = &analyticsHandler{get: h.get, a: a, log: h.log}
	allowed, ok := allowedParams[r.URL.Path]
	if !ok {
		WriteError(w, errNoEndpoint(r.URL.Path))
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		WriteError(w, &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonMethodNotAllowed,
			Message: "method " + keyledger.Quote(r.Method) + " not allowed: use GET"})
		return
	}
	p, err := newParams(r.URL.RawQuery, allowed)
	if err != nil {
		WriteError(w, err)
		return
	}
	var body any
	switch r.URL.Path {
	case PathUsage:
		q := analytics.UsageQuery{KeyID: p.str("key_id"), Owner: p.str("owner"), Interval: analytics.Interval(p.str("interval")),
			From: p.time("from"), To: p.time("to")}
		if p.err != nil {
			err = p.err
			break
		}
		var pts []analytics.UsagePoint
		if pts, err = h.a.Usage(r.Context(), q); err == nil {
			body = analytics.UsageResult{Points: pts}
		}
	case PathQuota:
		owner, month := p.str("owner"), p.str("month")
		if owner == "" {
			err = keyledger.Errorf(keyledger.Invalid, "owner is required")
			break
		}
		var qt analytics.Quota
		if qt, err = h.a.Quota(r.Context(), owner, month); err == nil {
			body = qt
		}
	case PathAudit:
		q := analytics.AuditQuery{KeyID: p.str("key_id"), Actor: p.str("actor"), Type: p.str("type"),
			From: p.time("from"), To: p.time("to"), Limit: p.int("limit")}
		if p.err != nil {
			err = p.err
			break
		}
		var evs []analytics.AuditEvent
		if evs, err = h.a.Audit(r.Context(), q); err == nil {
			body = analytics.AuditResult{Events: evs}
		}
	case PathAlerts:
		q := analytics.AlertQuery{Rule: p.str("rule"), KeyID: p.str("key_id"),
			From: p.time("from"), To: p.time("to"), Limit: p.int("limit")}
		if p.err != nil {
			err = p.err
			break
		}
		var al []analytics.Alert
		if al, err = h.a.Alerts(r.Context(), q); err == nil {
			body = analytics.AlertResult{Alerts: al}
		}
	}
	if err != nil {
		if keyledger.ErrorCode(err) != keyledger.Invalid {
			h.log.Warn("analytics: request failed", "path", r.URL.Path, "err", err)
		}
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, body) // a HEAD response's body is dropped by net/http
}

// params reads query parameters, remembering the first error.
type params struct {
	v   url.Values
	err error
}

func newParams(raw string, allowed []string) (*params, error) {
	v, err := url.ParseQuery(raw)
	if err != nil {
		return nil, keyledger.Errorf(keyledger.Invalid, "malformed query string")
	}
	// The router refuses these before they get here; the handler can be
	// mounted on its own.
	for k, vs := range v {
		if keyledger.LooksLikeSecret(k) || slices.ContainsFunc(vs, keyledger.LooksLikeSecret) {
			return nil, errExposedSecret
		}
	}
	for k, vs := range v {
		ok := false
		for _, a := range allowed {
			ok = ok || a == k
		}
		if !ok {
			return nil, keyledger.Errorf(keyledger.Invalid, "unknown parameter %s (allowed: %v)", keyledger.Quote(k), allowed)
		}
		if len(vs) > 1 {
			return nil, keyledger.Errorf(keyledger.Invalid, "parameter %s given more than once", keyledger.Quote(k))
		}
	}
	return &params{v: v}, nil
}

func (p *params) str(k string) string { return p.v.Get(k) }

func (p *params) time(k string) time.Time {
	s := p.v.Get(k)
	if s == "" || p.err != nil {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		p.err = keyledger.Errorf(keyledger.Invalid, "%s must be an RFC 3339 time such as 2026-01-02T15:04:05Z, not %s", k, keyledger.Quote(s))
	}
	return t
}

// pos reads a positive integer (0 when absent).
func (p *params) pos(k string) int64 {
	s := p.v.Get(k)
	if s == "" || p.err != nil {
		return 0
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 1 {
		p.err = keyledger.Errorf(keyledger.Invalid, "%s must be a positive integer", k)
	}
	return n
}

func (p *params) int(k string) int {
	s := p.v.Get(k)
	if s == "" || p.err != nil {
		return 0
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > analytics.MaxLimit {
		p.err = keyledger.Errorf(keyledger.Invalid, "%s must be an integer from 1 to %d, not %s", k, analytics.MaxLimit, keyledger.Quote(s))
	}
	return n
}
