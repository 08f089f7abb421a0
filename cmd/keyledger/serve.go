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
	"os"
	"path/filepath"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/projector"
	"github.com/keyledger/keyledger/verifier"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// nodeConfig is everything `serve` is told.
type nodeConfig struct {
	DataDir         string
	HTTPAddr        string
	Environment     keyledger.Environment
	NATSURL         string
	NATSListen      string
	AdminToken      string
	Prefix          string
	Permissions     []string
	TestRateLimit   keyledger.RateLimit
	Name            string
	UsageMaxAge     time.Duration
	MaxStaleness    time.Duration
	FailOpen        bool
	ShutdownTimeout time.Duration
	Logger          *slog.Logger
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg := nodeConfig{}
	var env, perms, logFormat string
	host, _ := os.Hostname()
	fs.StringVar(&cfg.DataDir, "data", envOr("KEYLEDGER_DATA", "./data"), "data directory (JetStream files, admin-token)")
	fs.StringVar(&cfg.HTTPAddr, "http", envOr("KEYLEDGER_HTTP", "127.0.0.1:8080"), "HTTP listen address")
	fs.StringVar(&env, "environment", envOr("KEYLEDGER_ENVIRONMENT", "live"), "environment this node verifies: live or test")
	fs.StringVar(&cfg.NATSURL, "nats", os.Getenv("KEYLEDGER_NATS"), "URL of an existing NATS deployment (default: run an embedded server)")
	fs.StringVar(&cfg.NATSListen, "nats-listen", "127.0.0.1:4222", "where the embedded NATS server listens for other nodes and tools (\"\" = in-process only)")
	fs.StringVar(&cfg.AdminToken, "admin-token", os.Getenv("KEYLEDGER_ADMIN_TOKEN"), "admin bearer token (default: generated into DATA/admin-token)")
	fs.StringVar(&cfg.Prefix, "prefix", keyledger.DefaultPrefix, "product prefix of keys")
	fs.StringVar(&perms, "permissions", strings.Join(keyledger.DefaultPermissions, ","), "permission catalog, comma-separated")
	fs.Float64Var(&cfg.TestRateLimit.PerSecond, "test-rate", verifier.DefaultTestRateLimit.PerSecond, "requests/s per test key")
	fs.IntVar(&cfg.TestRateLimit.Burst, "test-burst", verifier.DefaultTestRateLimit.Burst, "burst per test key")
	fs.StringVar(&cfg.Name, "node", host, "name of this node in usage events")
	fs.DurationVar(&cfg.UsageMaxAge, "usage-max-age", 7*24*time.Hour, "how long USAGE keeps events")
	fs.DurationVar(&cfg.MaxStaleness, "max-staleness", 5*time.Second, "refuse verifications (503) when the node cannot confirm it is current for this long")
	fs.BoolVar(&cfg.FailOpen, "fail-open", false, "keep verifying from a stale table instead of answering 503 (unsafe: a revoked key may pass)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 15*time.Second, "how long a clean shutdown may take")
	fs.StringVar(&logFormat, "log-format", "text", "log format: text or json")
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
// projector, the usage publisher, the verifier and the HTTP API.
type node struct {
	cfg       nodeConfig
	log       *slog.Logger
	nats      *events.Server // nil with --nats
	nc        *nats.Conn
	js        jetstream.JetStream
	projector *projector.Projector
	usage     *verifier.UsagePublisher
	verifier  *verifier.Verifier
	metrics   *prometheus.Registry
	http      *http.Server
	httpLn    net.Listener
	served    chan error
}

func openNode(ctx context.Context, cfg nodeConfig) (_ *node, err error) {
	n := &node{cfg: cfg, log: cfg.Logger, served: make(chan error, 1)}
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
	token, err := adminToken(cfg, n.log)
	if err != nil {
		return nil, err
	}

	if cfg.NATSURL == "" {
		n.nats, err = events.StartServer(events.ServerConfig{
			Name: cfg.Name, StoreDir: filepath.Join(cfg.DataDir, "jetstream"), Listen: cfg.NATSListen,
		})
		if err != nil {
			return nil, err
		}
		n.nc, err = n.nats.Connect("keyledger " + cfg.Name)
		if err != nil {
			return nil, err
		}
		if cfg.NATSListen != "" {
			n.log.Info("embedded NATS server", "listen", n.nats.ClientURL(), "store", filepath.Join(cfg.DataDir, "jetstream"))
		}
	} else {
		n.nc, err = nats.Connect(cfg.NATSURL, nats.Name("keyledger "+cfg.Name), nats.MaxReconnects(-1),
			nats.ReconnectWait(250*time.Millisecond), nats.RetryOnFailedConnect(false))
		if err != nil {
			return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot connect to NATS at "+cfg.NATSURL)
		}
	}
	if n.js, err = jetstream.New(n.nc); err != nil {
		return nil, keyledger.Wrap(keyledger.Internal, err, "jetstream")
	}
	if err := events.EnsureStreams(ctx, n.js, events.StreamConfig{UsageMaxAge: cfg.UsageMaxAge}); err != nil {
		return nil, err
	}
	ledger, err := events.OpenLog(ctx, n.js)
	if err != nil {
		return nil, err
	}
	n.projector = projector.New(n.js, projector.Options{Catalog: catalog, Records: true, Logger: n.log, MaxStaleness: cfg.MaxStaleness})
	if err := n.projector.Start(ctx); err != nil {
		return nil, err
	}
	n.usage = verifier.NewUsagePublisher(n.js, verifier.UsageOptions{Logger: n.log})
	n.usage.Start(ctx)
	ready := n.projector.Ready
	if cfg.FailOpen {
		n.log.Warn("--fail-open: this node keeps verifying from a stale table when cut off from the ledger; a revoked key may be accepted")
		ready = n.projector.CaughtUp
	}
	n.metrics = newRegistry()
	registerNodeMetrics(n.metrics, n.projector, n.usage)
	n.verifier = verifier.New(n.projector.Table(), verifier.Config{
		Environment: cfg.Environment, Format: format, Catalog: catalog, TestRateLimit: cfg.TestRateLimit,
		Ready: ready, Node: cfg.Name, Usage: verifier.NewMetrics(n.metrics, n.usage),
	})
	svc := admin.New(admin.Config{Log: ledger, Projector: n.projector, Catalog: catalog, Format: format, Logger: n.log})
	public := http.NewServeMux()
	for _, path := range verifier.Paths {
		public.Handle(path, verifier.NewHandler(n.verifier))
	}
	public.Handle("/metrics", promhttp.HandlerFor(n.metrics, promhttp.HandlerOpts{}))
	handler := admin.NewHandler(admin.HandlerOptions{
		Service: svc, Token: token, Public: public, PublicPaths: append(verifier.Paths, "/metrics"), Logger: n.log,
	})
	n.httpLn, err = net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot listen on "+cfg.HTTPAddr)
	}
	n.http = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
	}
	go func() { n.served <- n.http.Serve(n.httpLn) }()
	n.log.Info("keyledger serving", "http", n.httpLn.Addr().String(), "environment", cfg.Environment.String(), "node", cfg.Name)
	return n, nil
}

// URL is the node's HTTP base URL.
func (n *node) URL() string { return "http://" + n.httpLn.Addr().String() }

// Close stops taking requests, flushes usage events, stops following the
// stream and shuts NATS down, in that order, within ctx.
func (n *node) Close(ctx context.Context) error {
	var errs []error
	if n.http != nil {
		if err := n.http.Shutdown(ctx); err != nil {
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
	if n.projector != nil {
		if err := n.projector.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("projector: %w", err))
		}
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
