package http

import (
	"crypto/sha256"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/analytics"
	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/console"
	"github.com/keyledger/keyledger/prometheus"
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
	// Leaks configures the leak-report endpoints of admin nodes:
	// POST /v1/leaks always, GitHub's and GitLab's when configured.
	Leaks LeakOptions
	// Audit serves the provable audit's endpoints (admin nodes).
	Audit *audit.Auditor
	// Quotas, if set, is the fleet's quota enforcement, which
	// GET /v1/owners/{owner}/quota reports (with Admin); without it that
	// endpoint answers 503.
	Quotas QuotaSource
	// HTTPMetrics, if set, counts the answers of every endpoint but
	// forward auth (which VerifyMetrics counts).
	HTTPMetrics *prometheus.HTTPMetrics
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
	// address (0: none). Past a cap fasthttp answers a new connection
	// itself, in plain text (503, or 429 per address), and closes it; the
	// rest keep being served.
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

// Route is one endpoint a router serves: a method and the pattern its
// handler is registered under on the router's http.ServeMux ("/v1/keys",
// "/v1/keys/{id}"; a pattern ending in "/" serves every path below it).
type Route struct {
	Method  string
	Pattern string
}

// Routes lists every route NewRouter(o) serves, in the order it registers
// them: the table the OpenAPI document (OpenAPI) is checked against.
// Endpoints that answer every method alike are listed with the methods
// they are for: forward auth with every method OpenAPI can describe
// (anyMethod), /healthz, /readyz, /metrics and the document with GET and
// HEAD. The web console (console.Prefix and every page below it) is
// listed with GET and POST.
func Routes(o RouterOptions) []Route {
	_, routes := newRouter(o)
	return routes
}

// NewRouter returns the net/http side of a node's HTTP API: every
// endpoint o.Endpoints selects, the forward-auth one included (Server
// answers that one with fasthttp natively, but programs that embed
// keyledger can serve this handler with net/http alone), and the OpenAPI
// document on every listener (PathOpenAPI). Unknown paths get 404 in the
// envelope; a panic gets 500, logged, never a stack trace. A request
// outside the verifier endpoints whose path or query holds a key-shaped
// value is refused before anything else (see errExposedSecret).
func NewRouter(o RouterOptions) http.Handler {
	h, _ := newRouter(o)
	return h
}

// anyMethod are the methods forward auth is documented for: it answers
// every method alike (gateways forward the client's), and these are the
// ones an OpenAPI document can describe.
var anyMethod = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
	http.MethodDelete, http.MethodOptions, http.MethodTrace}

// verifierMethods are the methods each of VerifierPaths serves or is for.
var verifierMethods = map[string][]string{
	"/v1/verify": {http.MethodPost},
	"/v1/authz":  anyMethod,
	"/v1/authz/": anyMethod,
	"/healthz":   {http.MethodGet, http.MethodHead},
	"/readyz":    {http.MethodGet, http.MethodHead},
}

// methodsOf lists the methods of a methods table, sorted.
func methodsOf(m map[string]http.HandlerFunc) []string { return slices.Sorted(maps.Keys(m)) }

// newRouter is NewRouter, and the routes it registered.
func newRouter(o RouterOptions) (http.Handler, []Route) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	proxies := newProxySet(o.TrustedProxies)
	a := &api{svc: o.Admin, log: o.Logger, verifier: o.Verifier, proxies: proxies, audit: o.Audit,
		quotas: o.Quotas, analytics: analyticsOf(o)}
	sum := sha256.Sum256([]byte(o.Token))
	a.tokenSum = sum[:]

	mux := http.NewServeMux()
	var routes []Route
	handle := func(pattern string, h http.Handler, methods ...string) {
		mux.Handle(pattern, h)
		for _, m := range methods {
			routes = append(routes, Route{Method: m, Pattern: pattern})
		}
	}
	// keys registers an endpoint of the admin API: the methods of m,
	// behind the token.
	keys := func(pattern string, m map[string]http.HandlerFunc) {
		handle(pattern, a.auth(a.methods(m)), methodsOf(m)...)
	}

	handle(PathOpenAPI, a.openAPI(), http.MethodGet, http.MethodHead)
	if o.Verifier != nil {
		vh := &VerifierHandler{v: o.Verifier, proxies: proxies}
		vh.SetMetaHeaders(o.AuthzMetaHeaders)
		paths := VerifierPaths
		if !o.Endpoints.verifier() {
			paths = healthPaths
		}
		for _, p := range paths {
			handle(p, vh, verifierMethods[p]...)
		}
	}
	if o.Endpoints.admin() {
		if o.Metrics != nil {
			handle("/metrics", o.Metrics, http.MethodGet, http.MethodHead)
		}
		if o.Admin != nil {
			keys("/v1/keys", map[string]http.HandlerFunc{"GET": a.list, "POST": a.create})
			keys("/v1/keys/{id}", map[string]http.HandlerFunc{"GET": a.get, "PATCH": a.update})
			keys("/v1/keys/{id}/disable", map[string]http.HandlerFunc{"POST": a.setDisabled(true)})
			keys("/v1/keys/{id}/enable", map[string]http.HandlerFunc{"POST": a.setDisabled(false)})
			keys("/v1/keys/{id}/revoke", map[string]http.HandlerFunc{"POST": a.revoke})
			keys("/v1/keys/{id}/events", map[string]http.HandlerFunc{"GET": a.events})
			keys("/v1/keys/{id}/roll", map[string]http.HandlerFunc{"POST": a.roll})
			keys("/v1/keys/import", map[string]http.HandlerFunc{"POST": a.importKey})
			keys("/v1/plans", map[string]http.HandlerFunc{"GET": a.listPlans, "POST": a.createPlan})
			keys("/v1/plans/{name}", map[string]http.HandlerFunc{"GET": a.getPlan, "PATCH": a.updatePlan})
			keys("/v1/owners/{owner}", map[string]http.HandlerFunc{"GET": a.getOwner, "PUT": a.putOwner})
			keys("/v1/owners/{owner}/quota", map[string]http.HandlerFunc{"GET": a.ownerQuota})
			for _, e := range []struct {
				path string
				h    http.HandlerFunc
			}{{PathAuditCheckpoint, a.checkpoint}, {PathAuditConsistency, a.consistency}, {PathAuditExport, a.export}} {
				m := map[string]http.HandlerFunc{"GET": e.h}
				handle(e.path, a.auth(a.scopedOut(a.methods(m))), methodsOf(m)...)
			}
			nodes := map[string]http.HandlerFunc{"GET": a.nodes}
			handle("/v1/nodes", a.auth(a.scopedOut(a.methods(nodes))), methodsOf(nodes)...)
			var ah http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { WriteError(w, errAnalyticsOff) })
			switch {
			case o.Analytics != nil:
				ah = NewAnalyticsHandler(o.Analytics, o.Logger)
			case o.AnalyticsLater != nil:
				ah = NewAnalyticsHandlerFunc(o.AnalyticsLater, o.Logger)
			}
			for _, p := range AnalyticsPaths {
				// The handler allows GET and HEAD (HEAD: the headers of
				// the GET).
				handle(p, a.auth(a.scopedOut(ah)), http.MethodGet, http.MethodHead)
			}
			if !o.NoConsole {
				later := o.AnalyticsLater
				if later == nil {
					later = func() *analytics.Analytics { return o.Analytics }
				}
				handle(console.Prefix, console.New(console.Config{Admin: o.Admin, Verifier: o.Verifier, TokenSum: a.tokenSum,
					Analytics: later, ClientIP: proxies.clientIP, Status: HTTPStatus, Report: a.report, Logger: o.Logger, Audit: o.Audit}),
					http.MethodGet, http.MethodPost)
			}
			lk := newLeaks(a, o.Leaks)
			post := func(h http.HandlerFunc) map[string]http.HandlerFunc { return map[string]http.HandlerFunc{"POST": h} }
			handle(PathLeaks, a.methods(post(lk.generic)), http.MethodPost)
			if o.Leaks.GitHubKeys != nil {
				handle(PathLeaksGitHub, a.methods(post(lk.github)), http.MethodPost)
			}
			if o.Leaks.GitLabToken != "" {
				handle(PathLeaksGitLabTypes, a.methods(map[string]http.HandlerFunc{"GET": lk.gitlabTypes}), http.MethodGet)
				handle(PathLeaksGitLab, a.methods(post(lk.gitlabRevoke)), http.MethodPost)
			}
		}
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		a.fail(w, r, errNoEndpoint(r.URL.Path))
	})
	return a.recover(guard(mux)), routes
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
