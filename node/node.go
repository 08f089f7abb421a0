// Package node is one running keyledger process: NATS (embedded or
// remote), the projector, the usage publisher, the verifier, the fleet
// heartbeats, analytics (admin nodes with ClickHouse) and the HTTP server,
// wired and run as one. It has the shape of a program's Main: Open starts
// every part and every goroutine the node owns, Run waits until the
// context ends or a part fails for good, Close stops everything in order.
package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/analytics"
	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/github"
	khttp "github.com/keyledger/keyledger/http"
	"github.com/keyledger/keyledger/merkle"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/projector"
	"github.com/keyledger/keyledger/prometheus"
	"github.com/keyledger/keyledger/quota"
	"github.com/keyledger/keyledger/verifier"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Node is one running keyledger process.
type Node struct {
	cfg         Config
	log         *slog.Logger
	token       string
	creds       *credentials
	nats        *nats.Server // nil with Config.NATSURL
	nc          *natsgo.Conn
	js          jetstream.JetStream
	projector   *projector.Projector
	audit       *audit.Auditor
	usage       *nats.UsagePublisher
	verifier    *verifier.Verifier
	meter       *quota.Meter
	snapshots   *nats.Snapshots // nil when the fleet has no bucket
	stopPublish context.CancelFunc
	counters    *nats.Counters
	announcer   *nats.Announcer
	registry    *nats.Registry // admin role only
	alerts      sync.WaitGroup // RaiseAlert calls in flight; Close waits
	bg          sync.WaitGroup // the analytics retry; Close waits
	stopRetry   context.CancelFunc
	analyticsMu sync.Mutex
	analytics   *analytics.Analytics // admin role with ClickHouse
	quotaAlerts *analytics.QuotaAlerts
	http        *khttp.Server
	adminHTTP   *khttp.Server // Config.AdminHTTPAddr only
}

// Open starts a node: it connects to (or starts) NATS, makes sure the
// streams exist, loads the newest snapshot and follows the ledger, and
// serves HTTP. On error everything started so far is stopped again.
func Open(ctx context.Context, cfg Config) (_ *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger}
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
	isAdmin := cfg.Role == RoleAdmin
	if isAdmin {
		if n.token, err = adminToken(cfg, n.log); err != nil {
			return nil, err
		}
	}

	if n.creds, err = loadCredentials(&cfg, n.log); err != nil {
		return nil, err
	}
	n.cfg = cfg
	if err := n.connect(); err != nil {
		return nil, err
	}
	// Admin nodes own the streams; verifier nodes only follow them.
	if isAdmin {
		err = nats.EnsureStreams(ctx, n.js, nats.StreamConfig{Replicas: cfg.Replicas, UsageMaxAge: cfg.UsageMaxAge,
			UsageMaxBytes: cfg.UsageMaxBytes, Logger: n.log})
	} else {
		err = nats.WaitStreams(ctx, n.js)
	}
	if err != nil {
		return nil, err
	}

	counters, err := nats.OpenCounters(ctx, n.js)
	if err != nil {
		return nil, err
	}
	n.meter = quota.New(quota.Config{Store: counters, Nodes: cfg.FleetSize, MaxLease: cfg.LeaseMax, ReturnAfter: cfg.LeaseIdle, Logger: n.log})
	n.meter.Start(ctx)
	n.counters = counters

	n.announcer = nats.NewAnnouncer(n.nc, n.creds.id, n.status, n.log)
	var trusted *merkle.Checkpoint
	if !cfg.CheckEverySignature {
		origin := cfg.AuditOrigin
		if origin == "" {
			origin = audit.DefaultOrigin
		}
		// A replay leans on the newest checkpoint a trusted key signed
		// (see projector's trust.go); without one it checks every event.
		if trusted, err = audit.Newest(ctx, n.js, origin, n.creds.ring); err != nil {
			n.log.Warn("no checkpoint to replay on: every event's signature is checked", "err", err)
			trusted = nil
		}
	}
	n.projector = projector.New(n.js, projector.Options{
		Trusted: trusted,
		Catalog: catalog, Records: isAdmin, Logger: n.log, MaxStaleness: cfg.MaxStaleness, Keyring: n.creds.ring,
		SnapshotDir: filepath.Join(cfg.DataDir, "snapshots"),
		OnAdvance:   func(uint64) { n.announcer.Notify() },
		OnReject:    n.onReject, Name: cfg.Name,
	})
	// A first start (no snapshot of its own) loads the newest snapshot
	// an admin node published, when one verifies (projector's
	// bootstrap.go); otherwise the node replays.
	//
	// Finding the bucket is bounded on its own: a JetStream API request
	// lost in a leader election waits out its context, and the node's
	// start must not spend all of its own on a shortcut (CI once saw a
	// cluster node's whole minute go there).
	octx, cancel := context.WithTimeout(ctx, openSnapshotsTimeout)
	n.snapshots, err = nats.OpenSnapshots(octx, n.js)
	cancel()
	if err == nil {
		if _, err := n.projector.Bootstrap(ctx, n.snapshots); err != nil {
			n.log.Warn("cannot look for a published snapshot; replaying the ledger", "err", err)
		}
	} else if !errors.Is(err, nats.ErrNoSnapshots) {
		n.log.Warn("cannot open the snapshots bucket; replaying the ledger", "err", err)
	}
	if err := n.projector.Start(ctx); err != nil {
		return nil, err
	}
	n.announcer.Start(ctx)
	if isAdmin && n.snapshots != nil && n.creds.signer != nil && cfg.SnapshotPublishEvery > 0 {
		pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		n.stopPublish = cancel
		n.bg.Add(1)
		go func() {
			defer n.bg.Done()
			n.publishSnapshots(pctx, cfg.SnapshotPublishEvery)
		}()
	}
	acfg := audit.Config{JS: n.js, Ledger: n.projector, Origin: cfg.AuditOrigin, Name: cfg.Name, Keyring: n.creds.ring,
		Witness: n.creds.witness, Witnesses: n.creds.witnesses, WitnessesText: n.creds.witnessesText,
		Every: cfg.CheckpointEvery, Interval: cfg.CheckpointInterval, Logger: n.log, OnDivergence: n.onDivergence}
	if n.creds.signer != nil {
		acfg.Signer = n.creds.signer.NoteSigner()
	}
	if n.audit, err = audit.Open(ctx, acfg); err != nil {
		return nil, err
	}
	n.usage = nats.NewUsagePublisher(n.js, nats.UsageOptions{Linger: cfg.UsageLinger, Logger: n.log})
	n.usage.Start(ctx)
	ready := n.projector.Ready
	if cfg.FailOpen {
		n.log.Warn("--fail-open: this node keeps verifying from a stale table when cut off from the ledger; a revoked key may be accepted")
		// Not even --fail-open serves from a table whose stream was
		// replaced: that is not staleness but lost history.
		ready = func() bool { return n.projector.CaughtUp() && n.projector.Broken() == "" }
	}
	metrics := prometheus.NewRegistry()
	if n.nats != nil {
		prometheus.RegisterStorageFailed(metrics, n.nats.StorageFailed)
	}
	prometheus.RegisterNode(metrics, n.projector, n.usage)
	prometheus.RegisterAudit(metrics, n.audit, time.Now)
	prometheus.RegisterQuota(metrics, n.meter)
	var usage verifier.Recorder = prometheus.NewVerifyMetrics(metrics, n.usage)
	if cfg.NoUsage {
		usage = nil
	}
	n.verifier = verifier.New(n.projector.Table(), verifier.Config{
		Environment: cfg.Environment, Format: format, Catalog: catalog, TestRateLimit: cfg.TestRateLimit,
		Ready: ready, Broken: n.projector.Broken, Node: cfg.Name, Usage: usage,
		Meter: n.meter, Accounts: n.projector,
	})

	routes := khttp.RouterOptions{Verifier: n.verifier, Metrics: prometheus.Handler(metrics), Logger: n.log,
		TrustedProxies: cfg.TrustedProxies, MaxConns: cfg.MaxConns, MaxConnsPerIP: cfg.MaxConnsPerIP,
		AuthzMetaHeaders: cfg.AuthzMetaHeaders, NoConsole: cfg.NoConsole, HTTPMetrics: prometheus.NewHTTPMetrics(metrics)}
	if isAdmin {
		ledger, err := nats.OpenLog(ctx, n.js, n.creds.signer, n.creds.ring)
		if err != nil {
			return nil, err
		}
		if cfg.WriteTimeout > 0 {
			ledger.WriteTimeout = cfg.WriteTimeout
		}
		if n.nats != nil {
			ledger.Storage = n.nats.StorageError
		}
		if n.registry, err = nats.NewRegistry(n.nc, n.creds.fleet, n.status, n.log); err != nil {
			return nil, err
		}
		if err := n.openAnalytics(ctx, metrics); err != nil {
			return nil, err
		}
		var usage admin.UsageSource
		if cfg.ClickHouse != "" {
			usage = lastUsed{n}
		}
		routes.Admin = admin.New(admin.Config{
			Log: ledger, Projector: n.projector, Catalog: catalog, Format: format, Fleet: n.registry, Usage: usage, Logger: n.log,
			LeakAction: cfg.LeakAction, OnLeak: n.onLeak,
		})
		routes.Leaks.GitLabToken = cfg.GitLabRevocationToken
		if cfg.GitHubScanningKeys != "" {
			if routes.Leaks.GitHubKeys, err = github.LoadKeys(cfg.GitHubScanningKeys); err != nil {
				return nil, fmt.Errorf("%w: --github-scanning-keys: %v", ErrConfig, err)
			}
		}
		routes.Token = n.token
		routes.Audit = n.audit
		routes.Quotas = quotas{n}
		if cfg.ClickHouse != "" {
			routes.AnalyticsLater = n.analyticsNow
		}
	}
	adminRoutes := routes
	if cfg.AdminHTTPAddr != "" {
		// The gateways' listener serves verification only; the admin API,
		// analytics and /metrics get a listener of their own.
		routes.Endpoints, adminRoutes.Endpoints = khttp.VerifierEndpoints, khttp.AdminEndpoints
	}
	n.http = khttp.NewServer(routes)
	if err := n.http.Open(cfg.HTTPAddr); err != nil {
		return nil, err
	}
	if cfg.AdminHTTPAddr != "" {
		n.adminHTTP = khttp.NewServer(adminRoutes)
		if err := n.adminHTTP.Open(cfg.AdminHTTPAddr); err != nil {
			return nil, err
		}
		n.log.Info("admin API on its own listener", "admin_http", n.adminHTTP.Addr().String())
	}
	n.log.Info("keyledger serving", "http", n.http.Addr().String(), "role", cfg.Role,
		"environment", cfg.Environment.String(), "node", cfg.Name)
	if isAdmin && !cfg.NoConsole {
		n.log.Info("web console: sign in with the admin token or an admin key", "url", n.AdminURL()+"/console/")
	}
	return n, nil
}

// Run waits until ctx ends (nil) or a part of the node fails for good: an
// HTTP server (either listener) stopping on its own is such a failure, and the process
// should exit non-zero so that its supervisor starts it again. Run does
// not close the node.
func (n *Node) Run(ctx context.Context) error {
	var adminDone <-chan struct{} // nil, never ready, without an admin listener
	if n.adminHTTP != nil {
		adminDone = n.adminHTTP.Done()
	}
	select {
	case <-ctx.Done():
		return nil
	case <-n.http.Done():
		if err := n.http.Err(); err != nil {
			n.log.Error("node failing: HTTP stopped", "err", err)
			return err
		}
		return nil
	case <-adminDone:
		if err := n.adminHTTP.Err(); err != nil {
			n.log.Error("node failing: admin HTTP stopped", "err", err)
			return err
		}
		return nil
	}
}

// openAnalytics starts analytics when ClickHouse is configured. ClickHouse
// not answering does not stop the node: it verifies, and analytics comes
// up when ClickHouse does (usage waits in JetStream meanwhile).
func (n *Node) openAnalytics(ctx context.Context, metrics *prometheus.Registry) error {
	if n.cfg.ClickHouse == "" {
		n.log.Info("analytics off (no --clickhouse): usage, audit and alerts endpoints answer 503")
		return nil
	}
	prometheus.RegisterAnalyticsUp(metrics, func() bool { return n.analyticsNow() != nil })
	cfg := analytics.Config{Keyring: n.creds.ring,
		DSN: n.cfg.ClickHouse, JetStream: n.js, NATS: n.nc, DetectInterval: n.cfg.DetectInterval,
		WebhookURL: n.cfg.AlertWebhook, WebhookSecret: []byte(n.cfg.AlertWebhookSecret),
		WebhookFormat: n.cfg.AlertWebhookFormat, PagerDutyRoutingKey: n.cfg.AlertPagerDutyKey, RetentionMonths: n.cfg.RetentionMonths, Logger: n.log, Registerer: metrics,
	}
	err := n.startAnalytics(ctx, cfg)
	if err == nil || keyledger.ErrorCode(err) != keyledger.Unavailable {
		return err
	}
	n.log.Warn("analytics degraded: ClickHouse unavailable; verifying without it and retrying every 5 s",
		"clickhouse", redactURLs(n.cfg.ClickHouse), "err", err)
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	n.stopRetry = cancel
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				return
			case <-t.C:
			}
			actx, acancel := context.WithTimeout(rctx, 30*time.Second)
			err := n.startAnalytics(actx, cfg)
			acancel()
			if err == nil {
				return
			}
			n.log.Debug("analytics still degraded", "err", err)
		}
	}()
	return nil
}

// startAnalytics opens and starts analytics and makes it the node's.
func (n *Node) startAnalytics(ctx context.Context, cfg analytics.Config) error {
	a, err := analytics.Open(ctx, cfg)
	if err != nil {
		return err
	}
	if err := a.Start(ctx); err != nil {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		a.Close(cctx)
		cancel()
		return err
	}
	qa, err := analytics.OpenQuotaAlerts(ctx, n.js, a, n.log)
	if err != nil {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		a.Close(cctx)
		cancel()
		return err
	}
	n.analyticsMu.Lock()
	n.analytics, n.quotaAlerts = a, qa
	n.analyticsMu.Unlock()
	n.log.Info("analytics on", "clickhouse", redactURLs(n.cfg.ClickHouse), "detect_interval", n.cfg.DetectInterval)
	return nil
}

// lastUsed adapts analytics to the admin API's usage source; without
// analytics yet (degraded), listings carry no usage figures.
type lastUsed struct{ n *Node }

func (u lastUsed) LastUsed(ctx context.Context, ids []string) (map[string]admin.KeyUse, error) {
	a := u.n.analyticsNow()
	if a == nil {
		return nil, nil
	}
	m, err := a.LastUsed(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := make(map[string]admin.KeyUse, len(m))
	for id, k := range m {
		out[id] = admin.KeyUse{LastUsedAt: k.LastUsedAt, Uses30d: k.Uses30d}
	}
	return out, nil
}

// redactURLs drops passwords from a comma-separated list of URLs (NATS
// URLs, a ClickHouse DSN) before they are logged or put in an error.
func redactURLs(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil {
			parts[i] = "(unparsable)"
			continue
		}
		parts[i] = u.Redacted()
	}
	return strings.Join(parts, ",")
}

// connect starts the embedded NATS server (unless Config.NATSURL) and
// connects.
func (n *Node) connect() error {
	cfg := n.cfg
	var err error
	// nats.go prints asynchronous errors (a permissions violation, a
	// slow consumer) to stderr by default; they belong in the node's log.
	onErr := natsgo.ErrorHandler(func(_ *natsgo.Conn, sub *natsgo.Subscription, err error) {
		subject := ""
		if sub != nil {
			subject = sub.Subject
		}
		n.log.Error("NATS error", "err", err, "subscription", subject)
	})
	if cfg.NATSURL != "" {
		opts := append(n.creds.id.Options(), natsgo.Name("keyledger "+cfg.Name), natsgo.MaxReconnects(-1),
			natsgo.ReconnectWait(250*time.Millisecond), onErr)
		n.nc, err = natsgo.Connect(cfg.NATSURL, opts...)
		if err != nil {
			return keyledger.Wrap(keyledger.Unavailable, err, "cannot connect to NATS at "+redactURLs(cfg.NATSURL))
		}
	} else {
		sc := nats.ServerConfig{
			Name: cfg.Name, StoreDir: filepath.Join(cfg.DataDir, "jetstream"), Listen: cfg.NATSListen,
			Cluster: cfg.Cluster, ClusterName: cfg.ClusterName, Routes: cfg.Routes, SyncAlways: cfg.Sync == "always",
			Fleet: n.creds.fleet, Logger: n.log,
		}
		if !sc.SyncAlways {
			sc.SyncInterval, _ = time.ParseDuration(cfg.Sync)
		}
		if n.nats, err = nats.StartServer(sc); err != nil {
			return err
		}
		if n.nc, err = n.nats.Connect(n.creds.id, natsgo.MaxReconnects(-1), onErr); err != nil {
			return err
		}
		n.log.Info("embedded NATS server", "listen", cfg.NATSListen, "cluster", cfg.Cluster,
			"store", sc.StoreDir, "sync", cfg.Sync)
	}
	// An asynchronous publish (usage batches) that is never acknowledged
	// fails after this long instead of waiting forever.
	if n.js, err = jetstream.New(n.nc, jetstream.WithPublishAsyncTimeout(10*time.Second)); err != nil {
		return keyledger.Wrap(keyledger.Internal, err, "jetstream")
	}
	return nil
}

// onReject hears of the projector's refusals. Forged events are alerted
// by analytics, which reads KEYS itself; a replaced stream only the
// projector can see, so it raises that alert here, off the apply
// goroutine.
func (n *Node) onReject(r projector.Rejection) {
	if r.Reason == "ledger_divergence" {
		n.onDivergence(n.cfg.Name, r.Detail)
		return
	}
	if r.Reason != "stream_replaced" {
		return
	}
	if a := n.analyticsNow(); a != nil {
		n.alerts.Add(1)
		go func() {
			defer n.alerts.Done()
			a.RaiseAlert(analytics.RuleLedgerReplaced, nats.KeysStream, n.cfg.Name+": "+r.Detail)
		}()
	}
}

// onDivergence raises ledger_divergence: this node's copy of the ledger,
// or another node's (its dissent on AUDIT, seen by admin nodes), differs
// from a signed checkpoint.
func (n *Node) onDivergence(node, detail string) {
	if a := n.analyticsNow(); a != nil {
		n.alerts.Add(1)
		go func() {
			defer n.alerts.Done()
			a.RaiseAlert(analytics.RuleLedgerDivergence, node, detail)
		}()
	}
}

// onLeak raises key_leaked for a leak report's true positive (when
// analytics is on; the report is in the ledger and the log either way).
func (n *Node) onLeak(l admin.Leak) {
	a := n.analyticsNow()
	if a == nil {
		return
	}
	detail := fmt.Sprintf("reported leaked by %s at %s; %s", l.Source, l.URL, strings.ReplaceAll(l.Action, "_", " "))
	n.alerts.Add(1)
	go func() {
		defer n.alerts.Done()
		a.Raise(analytics.Alert{Rule: analytics.RuleKeyLeaked, KeyID: l.KeyID, Owner: l.Owner, Detail: detail, Observed: 1})
	}()
}

// analyticsNow returns analytics once it is open (the projector starts
// first).
func (n *Node) analyticsNow() *analytics.Analytics {
	n.analyticsMu.Lock()
	defer n.analyticsMu.Unlock()
	return n.analytics
}

// leaseMS is the lease the node announces: none with --fail-open, which
// serves whatever its table holds, so no wait can count it as refusing.
func (n *Node) leaseMS() int64 {
	if n.cfg.FailOpen {
		return 0
	}
	return n.projector.Lease().Milliseconds()
}

// status is this node's heartbeat.
func (n *Node) status() nats.NodeStatus {
	st := n.projector.Stats()
	return nats.NodeStatus{
		Name: n.cfg.Name, Role: n.cfg.Role, Environment: n.cfg.Environment, LastSeq: st.LastSeq,
		CaughtUp: st.CaughtUp, Fresh: st.Fresh, Keys: st.Keys, At: time.Now().UTC(), LeaseMS: n.leaseMS(),
	}
}

// URL is the node's HTTP base URL.
func (n *Node) URL() string { return n.http.URL() }

// AdminURL is the base URL of the node's admin API: its own listener's
// (Config.AdminHTTPAddr), else URL.
func (n *Node) AdminURL() string {
	if n.adminHTTP != nil {
		return n.adminHTTP.URL()
	}
	return n.URL()
}

// NATSURL is where other nodes and tools reach this node's NATS: the
// embedded server's client URL ("" when it listens in-process only), or
// the --nats deployment's URLs.
func (n *Node) NATSURL() string {
	if n.nats == nil {
		return n.cfg.NATSURL
	}
	if n.cfg.NATSListen == "" {
		return ""
	}
	return n.nats.ClientURL()
}

// Token is the admin bearer token of an admin node ("" on verifiers).
func (n *Node) Token() string { return n.token }

// Config is the node's configuration, defaults filled.
func (n *Node) Config() Config { return n.cfg }

// Projector is the node's projector, for tests and benchmarks that watch
// it apply the ledger.
func (n *Node) Projector() *projector.Projector { return n.projector }

// Fleet is an admin node's registry of live nodes (nil on verifiers).
func (n *Node) Fleet() *nats.Registry { return n.registry }

// Usage is the node's usage publisher.
func (n *Node) Usage() *nats.UsagePublisher { return n.usage }

// JetStream is the node's JetStream context.
func (n *Node) JetStream() jetstream.JetStream { return n.js }

// Close stops taking requests, flushes usage events, stops heartbeats and
// following the stream, and shuts NATS down, in that order, within ctx.
func (n *Node) Close(ctx context.Context) error {
	var errs []error
	if n.http != nil {
		if err := n.http.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http: %w", err))
		}
	}
	if n.adminHTTP != nil {
		if err := n.adminHTTP.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("admin http: %w", err))
		}
	}
	if n.usage != nil {
		if err := n.usage.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("usage flush: %w", err))
		}
		st := n.usage.Stats()
		n.log.Info("usage events flushed", "published", st.Published, "shed", st.Shed, "failed", st.Failed)
	}
	if n.meter != nil {
		// After the listeners: no request spends a lease any more, so
		// what the node holds can go back to the counters.
		n.meter.Close(ctx)
	}
	if n.stopPublish != nil {
		n.stopPublish()
	}
	n.alerts.Wait() // bounded: RaiseAlert gives up after 5 s
	if n.stopRetry != nil {
		n.stopRetry()
	}
	n.bg.Wait() // the analytics retry and the snapshot publisher
	n.analyticsMu.Lock()
	qa := n.quotaAlerts
	n.analyticsMu.Unlock()
	if qa != nil {
		if err := qa.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("quota alerts: %w", err))
		}
	}
	if a := n.analyticsNow(); a != nil {
		if err := a.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("analytics: %w", err))
		}
	}
	if n.announcer != nil {
		n.announcer.Close(ctx)
	}
	if n.audit != nil {
		if err := n.audit.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("audit: %w", err))
		}
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
func adminToken(cfg Config, log *slog.Logger) (string, error) {
	if cfg.AdminToken != "" {
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

// publishSnapshots publishes the node's newest snapshot to the fleet's
// bucket every interval, when it is newer than the last one published: a
// node that starts empty then replays at most an interval of events.
func (n *Node) publishSnapshots(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var published uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		path, seq := n.projector.NewestSnapshot()
		if seq <= published {
			continue
		}
		if err := n.projector.PublishSnapshot(ctx, n.snapshots, path, n.creds.signer.NoteSigner()); err != nil {
			if ctx.Err() == nil {
				n.log.Warn("cannot publish the newest snapshot for nodes that start empty", "seq", seq, "err", err)
			}
			continue
		}
		published = seq
		n.log.Info("snapshot published for nodes that start empty", "seq", seq)
	}
}

// openSnapshotsTimeout bounds finding the snapshots bucket at start.
const openSnapshotsTimeout = 10 * time.Second
