package http

import (
	"crypto/sha256"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/analytics"
	"github.com/keyledger/keyledger/console"
	"github.com/keyledger/keyledger/verifier"
)

// RouterOptions say what a node serves.
type RouterOptions struct {
	// Verifier serves the unauthenticated endpoints (VerifierPaths). With
	// Admin set, it also lets ledger keys holding the reserved "admin"
	// permission use the admin API besides the bootstrap token.
	Verifier *verifier.Verifier
	// AuthzMetaHeaders are metadata members forward auth hands to the
	// upstream on a valid key: member "plan" as X-Key-Meta-Plan (see
	// ValidMetaHeader). The header is always set, empty when the key has
	// no such member, so a client's own header of that name never
	// reaches the upstream through a gateway that copies it.
	AuthzMetaHeaders []string
	// Admin serves the admin endpoints behind the token; nil on
	// verifier-only nodes, which serve none of them.
	Admin *admin.Service
	// Token is the admin bearer token (with Admin).
	Token string
	// Analytics serves /v1/usage, /v1/quota, /v1/audit and /v1/alerts
	// behind the token. On an admin node without it those endpoints answer
	// 503 saying analytics is off.
	Analytics *analytics.Analytics
	// AnalyticsLater, when set instead, is analytics that may come up
	// after the node (nil until then).
	AnalyticsLater func() *analytics.Analytics
	// NoConsole leaves out the web console (console.Prefix), which admin
	// nodes serve by default.
	NoConsole bool
	// Metrics, if set, serves /metrics without authentication.
	Metrics http.Handler
	Logger  *slog.Logger
	// TrustedProxies are the peers whose forwarded headers
	// (X-Forwarded-For, X-Real-IP, X-Forwarded-Method/-Uri,
	// X-Original-Method/-Uri) are believed, for usage records and the
	// actor_ip of admin events. nil means DefaultTrustedProxies (loopback);
	// an empty, non-nil slice trusts nobody.
	TrustedProxies []netip.Prefix
	// Endpoints selects which endpoints are served: all of them (the zero
	// value), or one listener's share when the admin API has a listener of
	// its own.
	Endpoints Endpoints
	// MaxConns caps the connections the server holds at once (0: 256 Ki,
	// fasthttp's default); MaxConnsPerIP caps those of one client
	// address (0: none). Past a cap a new connection is answered 503 and
	// closed, and the rest keep being served.
	MaxConns      int
	MaxConnsPerIP int
}

// Endpoints selects which of a node's endpoints a router serves.
type Endpoints uint8

const (
	// AllEndpoints serves everything on one listener.
	AllEndpoints Endpoints = iota
	// VerifierEndpoints serves VerifierPaths only: the listener a gateway
	// reaches. Everything else (admin API, analytics, /metrics) is 404.
	VerifierEndpoints
	// AdminEndpoints serves the admin API, analytics, /metrics, /healthz
	// and /readyz: the listener operators and monitoring reach.
	// Verification (/v1/verify, /v1/authz) is 404.
	AdminEndpoints
)

// verifier and admin report whether e includes the verifier's and the
// admin side's endpoints.
func (e Endpoints) verifier() bool { return e != AdminEndpoints }
func (e Endpoints) admin() bool    { return e != VerifierEndpoints }

// AnalyticsPaths are the endpoints of analytics.
var AnalyticsPaths = []string{PathUsage, PathQuota, PathAudit, PathAlerts}

// errAnalyticsOff answers the analytics endpoints of an admin node that
// runs without ClickHouse.
var errAnalyticsOff = keyledger.Errorf(keyledger.Unavailable, "analytics is off on this node: start it with --clickhouse clickhouse://HOST:PORT/DB")

// NewRouter returns the net/http side of a node's HTTP API: every
// endpoint o.Endpoints selects, the forward-auth one included (Server
// answers that one with fasthttp natively, but programs that embed
// keyledger can serve this handler with net/http alone). Unknown paths get
// 404 in the envelope; a panic gets 500, logged, never a stack trace. A
// request outside the verifier endpoints whose path or query holds a
// key-shaped value is refused before anything else (see errExposedSecret).
func NewRouter(o RouterOptions) http.Handler {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	proxies := newProxySet(o.TrustedProxies)
	a := &api{svc: o.Admin, log: o.Logger, verifier: o.Verifier, proxies: proxies}
	sum := sha256.Sum256([]byte(o.Token))
	a.tokenSum = sum[:]

	mux := http.NewServeMux()
	if o.Verifier != nil {
		vh := &VerifierHandler{v: o.Verifier, proxies: proxies}
		vh.SetMetaHeaders(o.AuthzMetaHeaders)
		paths := VerifierPaths
		if !o.Endpoints.verifier() {
			paths = healthPaths
		}
		for _, p := range paths {
			mux.Handle(p, vh)
		}
	}
	if o.Endpoints.admin() {
		if o.Metrics != nil {
			mux.Handle("/metrics", o.Metrics)
		}
		if o.Admin != nil {
			mux.Handle("/v1/keys", a.auth(a.methods(map[string]http.HandlerFunc{"GET": a.list, "POST": a.create})))
			mux.Handle("/v1/keys/{id}", a.auth(a.methods(map[string]http.HandlerFunc{"GET": a.get, "PATCH": a.update})))
			mux.Handle("/v1/keys/{id}/disable", a.auth(a.methods(map[string]http.HandlerFunc{"POST": a.setDisabled(true)})))
			mux.Handle("/v1/keys/{id}/enable", a.auth(a.methods(map[string]http.HandlerFunc{"POST": a.setDisabled(false)})))
			mux.Handle("/v1/keys/{id}/revoke", a.auth(a.methods(map[string]http.HandlerFunc{"POST": a.revoke})))
			mux.Handle("/v1/keys/{id}/events", a.auth(a.methods(map[string]http.HandlerFunc{"GET": a.events})))
			mux.Handle("/v1/keys/{id}/roll", a.auth(a.methods(map[string]http.HandlerFunc{"POST": a.roll})))
			mux.Handle("/v1/keys/import", a.auth(a.methods(map[string]http.HandlerFunc{"POST": a.importKey})))
			mux.Handle("/v1/nodes", a.auth(a.scopedOut(a.methods(map[string]http.HandlerFunc{"GET": a.nodes}))))
			var ah http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { WriteError(w, errAnalyticsOff) })
			switch {
			case o.Analytics != nil:
				ah = NewAnalyticsHandler(o.Analytics, o.Logger)
			case o.AnalyticsLater != nil:
				ah = NewAnalyticsHandlerFunc(o.AnalyticsLater, o.Logger)
			}
			for _, p := range AnalyticsPaths {
				mux.Handle(p, a.auth(a.scopedOut(ah)))
			}
			if !o.NoConsole {
				later := o.AnalyticsLater
				if later == nil {
					later = func() *analytics.Analytics { return o.Analytics }
				}
				mux.Handle(console.Prefix, console.New(console.Config{Admin: o.Admin, Verifier: o.Verifier, TokenSum: a.tokenSum,
					Analytics: later, ClientIP: proxies.clientIP, Status: HTTPStatus, Report: a.report, Logger: o.Logger}))
			}
		}
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		a.fail(w, r, errNoEndpoint(r.URL.Path))
	})
	return a.recover(guard(mux))
}

// healthPaths are the verifier's endpoints an admin listener serves too:
// its supervisor and load balancer probe it like any other.
var healthPaths = []string{"/healthz", "/readyz"}

// guard refuses key-shaped URLs (refuseSecrets) everywhere but on the
// verifier endpoints, whose URLs are not echoed: forward auth must answer
// for a client whose own path carries its key (the usage record redacts
// it), and /v1/verify takes keys by design (in its body).
func guard(mux http.Handler) http.Handler {
	guarded := refuseSecrets(mux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isVerifierPath(r.URL.Path) {
			mux.ServeHTTP(w, r)
			return
		}
		guarded.ServeHTTP(w, r)
	})
}

// isVerifierPath reports whether path is one of VerifierPaths (or below
// /v1/authz/).
func isVerifierPath(path string) bool {
	switch path {
	case "/v1/verify", "/v1/authz", "/healthz", "/readyz":
		return true
	}
	return strings.HasPrefix(path, "/v1/authz/")
}
