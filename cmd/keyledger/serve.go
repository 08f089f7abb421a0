package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/analytics"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/projector"
	"github.com/keyledger/keyledger/verifier"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// nodeConfig is everything `serve` is told.
type nodeConfig struct {
	Role            string // "admin" (admin API + verifier) or "verifier"
	DataDir         string
	HTTPAddr        string
	Environment     keyledger.Environment
	NATSURL         string
	NATSListen      string
	Cluster         string
	ClusterName     string
	Routes          []string
	Replicas        int
	Sync            string // "always" or a duration
	AdminToken      string
	Prefix          string
	Permissions     []string
	TestRateLimit   keyledger.RateLimit
	Name            string
	UsageMaxAge     time.Duration
	UsageLinger     time.Duration
	MaxStaleness    time.Duration
	FailOpen        bool
	ShutdownTimeout time.Duration
	Logger          *slog.Logger
	// noUsage records no KeyUsed events (benchmarks only: it shows what
	// usage publishing costs).
	noUsage bool

	// Analytics (admin role, with ClickHouse).
	ClickHouse      string
	DetectInterval  time.Duration
	AlertWebhook    string
	RetentionMonths int
}

const (
	roleAdmin    = "admin"
	roleVerifier = "verifier"
)

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg := nodeConfig{}
	var env, perms, routes, logFormat string
	host, _ := os.Hostname()
	fs.StringVar(&cfg.Role, "role", envOr("KEYLEDGER_ROLE", roleAdmin), "admin (admin API + verifier) or verifier (verifier only; needs --nats)")
	fs.StringVar(&cfg.DataDir, "data", envOr("KEYLEDGER_DATA", "./data"), "data directory (JetStream files, admin-token)")
	fs.StringVar(&cfg.HTTPAddr, "http", envOr("KEYLEDGER_HTTP", "127.0.0.1:8080"), "HTTP listen address")
	fs.StringVar(&env, "environment", envOr("KEYLEDGER_ENVIRONMENT", "live"), "environment this node verifies: live or test")
	fs.StringVar(&cfg.NATSURL, "nats", os.Getenv("KEYLEDGER_NATS"), "URL(s) of an existing NATS deployment, comma-separated (default: run an embedded server)")
	fs.StringVar(&cfg.NATSListen, "nats-listen", "127.0.0.1:4222", "where the embedded NATS server listens for other nodes and tools (\"\" = in-process only)")
	fs.StringVar(&cfg.Cluster, "cluster", "", "host:port for routes from other embedded servers: makes this node a NATS cluster member")
	fs.StringVar(&cfg.ClusterName, "cluster-name", "keyledger", "NATS cluster name")
	fs.StringVar(&routes, "routes", "", "the other cluster members, comma-separated nats-route://host:port URLs")
	fs.IntVar(&cfg.Replicas, "replicas", 1, "replicas of each stream (3 in a 3-node cluster)")
	fs.StringVar(&cfg.Sync, "sync", "always", "embedded JetStream fsync: always (every write before its ack) or an interval such as 2m")
	fs.StringVar(&cfg.AdminToken, "admin-token", os.Getenv("KEYLEDGER_ADMIN_TOKEN"), "admin bearer token (default: generated into DATA/admin-token)")
	fs.StringVar(&cfg.Prefix, "prefix", keyledger.DefaultPrefix, "product prefix of keys")
	fs.StringVar(&perms, "permissions", strings.Join(keyledger.DefaultPermissions, ","), "permission catalog, comma-separated")
	fs.Float64Var(&cfg.TestRateLimit.PerSecond, "test-rate", verifier.DefaultTestRateLimit.PerSecond, "requests/s per test key")
	fs.IntVar(&cfg.TestRateLimit.Burst, "test-burst", verifier.DefaultTestRateLimit.Burst, "burst per test key")
	fs.StringVar(&cfg.Name, "node", host, "name of this node (unique): NATS server name, heartbeats, usage events")
	fs.DurationVar(&cfg.UsageMaxAge, "usage-max-age", 7*24*time.Hour, "how long USAGE keeps events")
	fs.DurationVar(&cfg.UsageLinger, "usage-linger", nats.DefaultUsageLinger, "how long a batch of KeyUsed events waits for more before it is published (negative: no wait)")
	fs.DurationVar(&cfg.MaxStaleness, "max-staleness", 5*time.Second, "refuse verifications (503) when the node cannot confirm it is current for this long")
	fs.BoolVar(&cfg.FailOpen, "fail-open", false, "keep verifying from a stale table instead of answering 503 (unsafe: a revoked key may pass)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 15*time.Second, "how long a clean shutdown may take")
	fs.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&cfg.ClickHouse, "clickhouse", os.Getenv("KEYLEDGER_CLICKHOUSE_DSN"), "turn analytics on: clickhouse://HOST:PORT/DB (native protocol)")
	fs.DurationVar(&cfg.DetectInterval, "detect-interval", 30*time.Second, "how often the anomaly detector runs")
	fs.StringVar(&cfg.AlertWebhook, "alert-webhook", "", "POST every alert as JSON to this URL")
	fs.IntVar(&cfg.RetentionMonths, "retention-months", 13, "months of raw usage rows kept in ClickHouse (rollups are kept)")
	if pos, err := parseArgs(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageErr("serve takes flags only")
	}
	var err error
	if cfg.Environment, err = keyledger.ParseEnvironment(env); err != nil {
		return usageErr("--environment: %s", keyledger.ErrorMessage(err))
	}
	cfg.Permissions = splitList(perms)
	cfg.Routes = splitList(routes)
	switch logFormat {
	case "json":
		cfg.Logger = slog.New(slog.NewJSONHandler(stderr, nil))
	case "text":
		cfg.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	default:
		return usageErr("--log-format must be text or json")
	}
	n, err := openNode(ctx, cfg)
	if err != nil {
		return err
	}
	<-ctx.Done()
	cfg.Logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	return n.Close(sctx)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// node is one running keyledger process: NATS (embedded or remote), the
// projector, the usage publisher, the verifier, the fleet heartbeats and
// the HTTP API.
type node struct {
	cfg       nodeConfig
	log       *slog.Logger
	nats      *nats.Server // nil with --nats
	nc        *natsgo.Conn
	js        jetstream.JetStream
	projector *projector.Projector
	usage     *nats.UsagePublisher
	verifier  *verifier.Verifier
	announcer *nats.Announcer
	registry  *nats.Registry       // admin role only
	analytics *analytics.Analytics // admin role with --clickhouse
	metrics   *prometheus.Registry
	http      *fasthttp.Server
	httpLn    net.Listener
}

func (cfg *nodeConfig) check() error {
	switch cfg.Role {
	case roleAdmin, roleVerifier:
	default:
		return usageErr("--role must be admin or verifier")
	}
	if cfg.Role == roleVerifier && cfg.NATSURL == "" {
		return usageErr("--role verifier follows an existing NATS deployment: give --nats URL")
	}
	if cfg.ClickHouse != "" && cfg.Role != roleAdmin {
		return usageErr("--clickhouse runs analytics, which belongs on admin nodes")
	}
	if cfg.Cluster != "" && len(cfg.Routes) == 0 {
		// A JetStream cluster member with no route never elects a meta
		// leader: it would only time out at start.
		return usageErr("--cluster makes this node a NATS cluster member: name the other members with --routes (a single node needs neither)")
	}
	if cfg.Cluster != "" && cfg.NATSURL != "" {
		return usageErr("--cluster makes the embedded server a cluster member; it does not combine with --nats")
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	if cfg.Replicas < 1 || cfg.Replicas > 5 {
		return usageErr("--replicas must be 1 to 5")
	}
	if cfg.Name == "" || strings.ContainsAny(cfg.Name, " .*>\t") {
		return usageErr("--node must be a name without spaces, dots or wildcards")
	}
	if cfg.Sync == "" {
		cfg.Sync = "always"
	}
	if cfg.Sync != "always" {
		if d, err := time.ParseDuration(cfg.Sync); err != nil || d <= 0 {
			return usageErr("--sync must be always or a positive duration such as 2m")
		}
	}
	return nil
}

func openNode(ctx context.Context, cfg nodeConfig) (_ *node, err error) {
	if cfg.Role == "" {
		cfg.Role = roleAdmin
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	n := &node{cfg: cfg, log: cfg.Logger}
	if n.log == nil {
		n.log = slog.Default()
	}
	defer func() {
		if err != nil {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			n.Close(cctx)
			cancel()
		}
	}()
	format, err := keyledger.NewFormat(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	catalog, err := keyledger.NewCatalog(cfg.Permissions)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, keyledger.Wrap(keyledger.Internal, err, "cannot create data directory")
	}
	admin_ := cfg.Role == roleAdmin
	var token string
	if admin_ {
		if token, err = adminToken(cfg, n.log); err != nil {
			return nil, err
		}
	}

	if err := n.connect(); err != nil {
		return nil, err
	}
	// Admin nodes own the streams; verifier nodes only follow them.
	if admin_ {
		err = nats.EnsureStreams(ctx, n.js, nats.StreamConfig{Replicas: cfg.Replicas, UsageMaxAge: cfg.UsageMaxAge})
	} else {
		err = nats.WaitStreams(ctx, n.js)
	}
	if err != nil {
		return nil, err
	}

	n.announcer = nats.NewAnnouncer(n.nc, n.status, n.log)
	n.projector = projector.New(n.js, projector.Options{
		Catalog: catalog, Records: admin_, Logger: n.log, MaxStaleness: cfg.MaxStaleness,
		SnapshotDir: filepath.Join(cfg.DataDir, "snapshots"),
		OnAdvance:   func(uint64) { n.announcer.Notify() },
	})
	if err := n.projector.Start(ctx); err != nil {
		return nil, err
	}
	n.announcer.Start(ctx)
	n.usage = nats.NewUsagePublisher(n.js, nats.UsageOptions{Linger: cfg.UsageLinger, Logger: n.log})
	n.usage.Start(ctx)
	ready := n.projector.Ready
	if cfg.FailOpen {
		n.log.Warn("--fail-open: this node keeps verifying from a stale table when cut off from the ledger; a revoked key may be accepted")
		ready = n.projector.CaughtUp
	}
	n.metrics = newRegistry()
	registerNodeMetrics(n.metrics, n.projector, n.usage)
	var usage verifier.Recorder = verifier.NewMetrics(n.metrics, n.usage)
	if cfg.noUsage {
		usage = nil
	}
	n.verifier = verifier.New(n.projector.Table(), verifier.Config{
		Environment: cfg.Environment, Format: format, Catalog: catalog, TestRateLimit: cfg.TestRateLimit,
		Ready: ready, Node: cfg.Name, Usage: usage,
	})

	vh := verifier.NewHandler(n.verifier)
	public := http.NewServeMux()
	for _, path := range verifier.Paths {
		public.Handle(path, vh)
	}
	public.Handle("/metrics", promhttp.HandlerFor(n.metrics, promhttp.HandlerOpts{}))
	opts := admin.HandlerOptions{Token: token, Public: public, PublicPaths: append([]string{"/metrics"}, verifier.Paths...), Logger: n.log}
	if admin_ {
		ledger, err := nats.OpenLog(ctx, n.js)
		if err != nil {
			return nil, err
		}
		if n.registry, err = nats.NewRegistry(n.nc); err != nil {
			return nil, err
		}
		if opts.Protected, err = n.openAnalytics(ctx); err != nil {
			return nil, err
		}
		var usage admin.UsageSource
		if n.analytics != nil {
			usage = lastUsed{n.analytics}
		}
		opts.Service = admin.New(admin.Config{
			Log: ledger, Projector: n.projector, Catalog: catalog, Format: format, Fleet: n.registry, Usage: usage, Logger: n.log,
		})
		opts.Verifier = n.verifier
	}
	n.httpLn, err = net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot listen on "+cfg.HTTPAddr)
	}
	n.http = newHTTPServer(vh, admin.NewHandler(opts), n.log)
	go n.http.Serve(n.httpLn)
	n.log.Info("keyledger serving", "http", n.httpLn.Addr().String(), "role", cfg.Role,
		"environment", cfg.Environment.String(), "node", cfg.Name)
	return n, nil
}

// newHTTPServer returns the node's HTTP server. It is fasthttp: forward
// auth (/v1/authz) is most of a node's traffic, and with net/http its
// per-request cost was most of the node's CPU, so the verifier answers it
// natively; every other endpoint is the net/http handler rest, through
// fasthttp's adaptor (a few microseconds more, on low-volume endpoints).
func newHTTPServer(authz *verifier.Handler, rest http.Handler, log *slog.Logger) *fasthttp.Server {
	adapted := fasthttpadaptor.NewFastHTTPHandler(ownRequest(rest))
	return &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			// fasthttp does not recover panics as net/http does: one
			// would end the process, and every node's verification with it.
			defer func() {
				if v := recover(); v != nil {
					log.Error("panic serving request", "method", string(ctx.Method()), "path", string(ctx.Path()), "panic", v)
					verifier.FastHTTPInternalError(ctx)
				}
			}()
			if verifier.IsAuthzPath(ctx.Path()) {
				authz.AuthzFastHTTP(ctx)
				return
			}
			adapted(ctx)
		},
		ErrorHandler: verifier.FastHTTPError,
		// Gateways forward the client's headers to forward auth, cookies
		// included: allow 32 KiB of headers (net/http allows 1 MiB).
		ReadBufferSize: 32 << 10,
		// Admin bodies are bounded by the handlers (64 KiB); this only
		// stops a larger body from being read at all.
		MaxRequestBodySize: 1 << 20,
		// Slow clients cannot hold a connection reading forever.
		ReadTimeout:           30 * time.Second,
		IdleTimeout:           120 * time.Second,
		NoDefaultServerHeader: true,
		CloseOnShutdown:       true,
		Logger:                slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// ownRequest gives rest a request whose strings it owns. fasthttp's
// adaptor lends the net/http request strings that point into fasthttp's
// buffers, which the next request on the connection overwrites; handlers
// here keep some beyond their return (a verification's KeyUsed event is
// published later), so they are copied at this boundary.
func ownRequest(rest http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o := *r
		o.Method, o.Proto, o.Host = strings.Clone(r.Method), strings.Clone(r.Proto), strings.Clone(r.Host)
		o.RemoteAddr, o.RequestURI = strings.Clone(r.RemoteAddr), strings.Clone(r.RequestURI)
		if r.URL != nil {
			u := *r.URL
			u.Scheme, u.Opaque, u.Host = strings.Clone(u.Scheme), strings.Clone(u.Opaque), strings.Clone(u.Host)
			u.Path, u.RawPath, u.RawQuery, u.Fragment = strings.Clone(u.Path), strings.Clone(u.RawPath), strings.Clone(u.RawQuery), strings.Clone(u.Fragment)
			u.User = nil
			o.URL = &u
		}
		o.Header = make(http.Header, len(r.Header))
		for k, vs := range r.Header {
			own := make([]string, len(vs))
			for i, v := range vs {
				own[i] = strings.Clone(v)
			}
			o.Header[strings.Clone(k)] = own
		}
		o.TransferEncoding = slices.Clone(r.TransferEncoding)
		o.Trailer = nil
		rest.ServeHTTP(w, &o)
	})
}

// lastUsed adapts analytics to the admin API's usage source.
type lastUsed struct{ a *analytics.Analytics }

func (u lastUsed) LastUsed(ctx context.Context, ids []string) (map[string]admin.KeyUse, error) {
	m, err := u.a.LastUsed(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := make(map[string]admin.KeyUse, len(m))
	for id, k := range m {
		out[id] = admin.KeyUse{LastUsedAt: k.LastUsedAt, Uses30d: k.Uses30d}
	}
	return out, nil
}

// analyticsPaths are the endpoints of package analytics.
var analyticsPaths = []string{"/v1/usage", "/v1/quota", "/v1/audit", "/v1/alerts"}

// openAnalytics starts analytics when --clickhouse is given and returns its
// endpoints; without it the endpoints answer 503 saying analytics is off.
func (n *node) openAnalytics(ctx context.Context) (map[string]http.Handler, error) {
	var h http.Handler
	if n.cfg.ClickHouse == "" {
		n.log.Info("analytics off (no --clickhouse): usage, audit and alerts endpoints answer 503")
		off := keyledger.Errorf(keyledger.Unavailable, "analytics is off on this node: start it with --clickhouse clickhouse://HOST:PORT/DB")
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { keyledger.WriteError(w, off) })
	} else {
		a, err := analytics.Open(ctx, analytics.Config{
			DSN: n.cfg.ClickHouse, JetStream: n.js, NATS: n.nc, DetectInterval: n.cfg.DetectInterval,
			WebhookURL: n.cfg.AlertWebhook, RetentionMonths: n.cfg.RetentionMonths, Logger: n.log, Registerer: n.metrics,
		})
		if err != nil {
			return nil, err
		}
		n.analytics = a
		if err := a.Start(ctx); err != nil {
			return nil, err
		}
		n.log.Info("analytics on", "clickhouse", redactDSN(n.cfg.ClickHouse), "detect_interval", n.cfg.DetectInterval)
		h = a.Handler()
	}
	m := make(map[string]http.Handler, len(analyticsPaths))
	for _, p := range analyticsPaths {
		m[p] = h
	}
	return m, nil
}

// redactURLs drops passwords from a comma-separated list of URLs.
func redactURLs(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		parts[i] = redactDSN(strings.TrimSpace(p))
	}
	return strings.Join(parts, ",")
}

// redactDSN drops a password from a DSN before it is logged.
func redactDSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "(unparsable)"
	}
	return u.Redacted()
}

// connect starts the embedded NATS server (unless --nats) and connects.
func (n *node) connect() error {
	cfg := n.cfg
	var err error
	if cfg.NATSURL != "" {
		n.nc, err = natsgo.Connect(cfg.NATSURL, natsgo.Name("keyledger "+cfg.Name), natsgo.MaxReconnects(-1),
			natsgo.ReconnectWait(250*time.Millisecond))
		if err != nil {
			return keyledger.Wrap(keyledger.Unavailable, err, "cannot connect to NATS at "+redactURLs(cfg.NATSURL))
		}
	} else {
		sc := nats.ServerConfig{
			Name: cfg.Name, StoreDir: filepath.Join(cfg.DataDir, "jetstream"), Listen: cfg.NATSListen,
			Cluster: cfg.Cluster, ClusterName: cfg.ClusterName, Routes: cfg.Routes, SyncAlways: cfg.Sync == "always",
		}
		if !sc.SyncAlways {
			sc.SyncInterval, _ = time.ParseDuration(cfg.Sync)
		}
		if n.nats, err = nats.StartServer(sc); err != nil {
			return err
		}
		if n.nc, err = n.nats.Connect("keyledger "+cfg.Name, natsgo.MaxReconnects(-1)); err != nil {
			return err
		}
		n.log.Info("embedded NATS server", "listen", cfg.NATSListen, "cluster", cfg.Cluster,
			"store", sc.StoreDir, "sync", cfg.Sync)
	}
	if n.js, err = jetstream.New(n.nc); err != nil {
		return keyledger.Wrap(keyledger.Internal, err, "jetstream")
	}
	return nil
}

// status is this node's heartbeat.
func (n *node) status() nats.NodeStatus {
	st := n.projector.Stats()
	return nats.NodeStatus{
		Name: n.cfg.Name, Role: n.cfg.Role, Environment: n.cfg.Environment, LastSeq: st.LastSeq,
		CaughtUp: st.CaughtUp, Fresh: st.Fresh, Keys: st.Keys, At: time.Now().UTC(),
	}
}

// URL is the node's HTTP base URL.
func (n *node) URL() string { return "http://" + n.httpLn.Addr().String() }

// Close stops taking requests, flushes usage events, stops heartbeats and
// following the stream, and shuts NATS down, in that order, within ctx.
func (n *node) Close(ctx context.Context) error {
	var errs []error
	if n.http != nil {
		if err := n.http.ShutdownWithContext(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http: %w", err))
		}
	}
	if n.usage != nil {
		if err := n.usage.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("usage flush: %w", err))
		}
		st := n.usage.Stats()
		n.log.Info("usage events flushed", "published", st.Published, "shed", st.Shed, "failed", st.Failed)
	}
	if n.analytics != nil {
		if err := n.analytics.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("analytics: %w", err))
		}
	}
	if n.announcer != nil {
		n.announcer.Close(ctx)
	}
	if n.projector != nil {
		if err := n.projector.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("projector: %w", err))
		}
	}
	if n.registry != nil {
		n.registry.Close()
	}
	if n.nc != nil {
		n.nc.Close()
	}
	if n.nats != nil {
		n.nats.Stop()
	}
	return errors.Join(errs...)
}

// adminToken returns the configured token or the one in DATA/admin-token,
// generating that file (mode 0600) on first start. The token itself is never
// logged.
func adminToken(cfg nodeConfig, log *slog.Logger) (string, error) {
	if cfg.AdminToken != "" {
		if len(cfg.AdminToken) < 16 {
			return "", usageErr("--admin-token must be at least 16 characters")
		}
		return cfg.AdminToken, nil
	}
	path := filepath.Join(cfg.DataDir, "admin-token")
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) >= 16 {
		log.Info("admin token read from file", "path", path)
		return strings.TrimSpace(string(b)), nil
	}
	var buf [32]byte
	if _, err := rand.Read(buf[:]); err != nil {
		return "", keyledger.Wrap(keyledger.Internal, err, "cannot generate admin token")
	}
	tok := "kla_" + hex.EncodeToString(buf[:])
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", keyledger.Wrap(keyledger.Internal, err, "cannot write "+path)
	}
	log.Info("admin token generated", "path", path)
	return tok, nil
}
