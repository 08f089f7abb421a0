package http

import (
	"crypto/sha256"
	"log/slog"
	"net/http"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/analytics"
	"github.com/keyledger/keyledger/verifier"
)

// RouterOptions say what a node serves.
type RouterOptions struct {
	// Verifier serves the unauthenticated endpoints (VerifierPaths). With
	// Admin set, it also lets ledger keys holding the reserved "admin"
	// permission use the admin API besides the bootstrap token.
	Verifier *verifier.Verifier
	// Admin serves the admin endpoints behind the token; nil on
	// verifier-only nodes, which serve none of them.
	Admin *admin.Service
	// Token is the admin bearer token (with Admin).
	Token string
	// Analytics serves /v1/usage, /v1/quota, /v1/audit and /v1/alerts
	// behind the token. On an admin node without it those endpoints answer
	// 503 saying analytics is off.
	Analytics *analytics.Analytics
	// Metrics, if set, serves /metrics without authentication.
	Metrics http.Handler
	Logger  *slog.Logger
}

// AnalyticsPaths are the endpoints of analytics.
var AnalyticsPaths = []string{PathUsage, PathQuota, PathAudit, PathAlerts}

// errAnalyticsOff answers the analytics endpoints of an admin node that
// runs without ClickHouse.
var errAnalyticsOff = keyledger.Errorf(keyledger.Unavailable, "analytics is off on this node: start it with --clickhouse clickhouse://HOST:PORT/DB")

// NewRouter returns the net/http side of a node's HTTP API: every
// endpoint, the forward-auth one included (Server answers that one with
// fasthttp natively, but programs that embed keyledger can serve this
// handler with net/http alone). Unknown paths get 404 in the envelope; a
// panic gets 500, logged, never a stack trace.
func NewRouter(o RouterOptions) http.Handler {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	a := &api{svc: o.Admin, log: o.Logger, verifier: o.Verifier}
	sum := sha256.Sum256([]byte(o.Token))
	a.tokenSum = sum[:]

	mux := http.NewServeMux()
	if o.Verifier != nil {
		vh := NewVerifierHandler(o.Verifier)
		for _, p := range VerifierPaths {
			mux.Handle(p, vh)
		}
	}
	if o.Metrics != nil {
		mux.Handle("/metrics", o.Metrics)
	}
	if o.Admin != nil {
		mux.Handle("/v1/keys", a.auth(a.methods(map[string]http.HandlerFunc{"GET": a.list, "POST": a.create})))
		mux.Handle("/v1/keys/{id}", a.auth(a.methods(map[string]http.HandlerFunc{"GET": a.get})))
		mux.Handle("/v1/keys/{id}/revoke", a.auth(a.methods(map[string]http.HandlerFunc{"POST": a.revoke})))
		mux.Handle("/v1/keys/{id}/events", a.auth(a.methods(map[string]http.HandlerFunc{"GET": a.events})))
		mux.Handle("/v1/keys/{id}/roll", a.auth(a.methods(map[string]http.HandlerFunc{"POST": a.roll})))
		mux.Handle("/v1/keys/import", a.auth(a.methods(map[string]http.HandlerFunc{"POST": a.importKey})))
		mux.Handle("/v1/nodes", a.auth(a.methods(map[string]http.HandlerFunc{"GET": a.nodes})))
		var ah http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { WriteError(w, errAnalyticsOff) })
		if o.Analytics != nil {
			ah = NewAnalyticsHandler(o.Analytics, o.Logger)
		}
		for _, p := range AnalyticsPaths {
			mux.Handle(p, a.auth(ah))
		}
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		a.fail(w, r, keyledger.Errorf(keyledger.NotFound, "no such endpoint: %s", r.URL.Path))
	})
	return a.recover(mux)
}
