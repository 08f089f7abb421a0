// Package analytics loads keyledger's events into ClickHouse and answers
// questions about them: usage over time, monthly quota, the audit trail of
// key lifecycle events, and security alerts raised by a detector.
//
// Ingest: two durable pull consumers, on the USAGE stream (KeyUsed) and on
// the KEYS stream (KeyCreated, KeyRevoked), batch events into ClickHouse
// and acknowledge them only after ClickHouse accepted the batch. While
// ClickHouse is down, events wait in JetStream (negative acknowledgement
// with a delay) and land when it is back. Ingest is idempotent by event_id:
// raw tables are ReplacingMergeTree keyed by the event's own fields, exact
// queries count distinct event ids, and events delivered more than once are
// checked against ClickHouse before they are inserted again, so the
// per-minute rollups fed by materialized views never count an event twice.
// An event that cannot be decoded goes to the subject
// keyledger.deadletter.<stream> (reason in the Keyledger-Dead-Letter-Reason
// header) and is terminated, so it is not retried forever.
//
// The schema is created and migrated at Open; it uses only SQL that
// ClickHouse 18.16 accepts (DateTime plus a milliseconds column, IPs as
// String, no TTL: raw rows are retained for a number of months by dropping
// monthly partitions).
//
// The detector runs SQL over the last window against each key's own
// history, using the events' own timestamps, so history can be replayed
// (see Detect). Alerts are stored in ClickHouse, published on
// keyledger.alerts.<rule> and POSTed to a webhook.
package analytics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultDSN is the ClickHouse of scripts/clickhouse.sh.
const DefaultDSN = "clickhouse://127.0.0.1:19000/keyledger"

// Config configures Analytics. Zero values take the documented defaults.
type Config struct {
	// Keyring holds the admin signing keys: a KEYS event none of them
	// signed is not recorded in the audit but dead-lettered and alerted
	// (RuleLedgerForgery). Required: with none, every event is refused.
	Keyring *events.Keyring
	// DSN locates ClickHouse: clickhouse://[user:password@]HOST:PORT/DB
	// (native protocol). The database is created if missing. Default
	// DefaultDSN.
	DSN string

	// JetStream is the NATS JetStream to ingest from. Nil runs Analytics
	// without ingest (queries and detection only).
	JetStream jetstream.JetStream
	// NATS publishes alerts and dead letters. Nil: JetStream's connection.
	NATS *natsgo.Conn
	// ConsumerPrefix names the durable consumers: <prefix>-usage on USAGE
	// and <prefix>-keys on KEYS. Default "analytics". Every analytics node
	// of a deployment shares them, so each event is ingested by one node.
	ConsumerPrefix string

	// BatchSize is the most events inserted in one ClickHouse INSERT.
	// Default 50,000.
	BatchSize int
	// FlushInterval is the longest an event waits in a partial batch.
	// Default 1s.
	FlushInterval time.Duration
	// InsertTimeout bounds one INSERT. Default 30s.
	InsertTimeout time.Duration
	// AckWait is the consumers' ack wait: longer than a batch window plus an
	// insert. Default 2 × (FlushInterval + InsertTimeout).
	AckWait time.Duration
	// RetryDelay is the first redelivery delay after a failed insert; it
	// doubles up to MaxRetryDelay (default 1s and 30s).
	RetryDelay    time.Duration
	MaxRetryDelay time.Duration

	// DetectInterval is how often Start runs the detector. Default 30s;
	// negative disables the ticker (Detect may still be called).
	DetectInterval time.Duration
	// Window is the span each detection looks at, ending at "now".
	// Default 5m.
	Window time.Duration
	// Thresholds of the detector rules.
	Thresholds Thresholds
	// ResolveAfter is how long a rule must find nothing on an incident's
	// subject before the incident is resolved (default: Window).
	ResolveAfter time.Duration
	// WebhookURL, if set, receives each alert notice (firing, updated,
	// resolved) as a POST, once per notice across analytics nodes: it is
	// fed from the ALERTS stream's durable consumer.
	WebhookURL string
	// WebhookFormat is the payload: FormatJSON (default), FormatSlack or
	// FormatPagerDuty (with PagerDutyRoutingKey).
	WebhookFormat       string
	PagerDutyRoutingKey string
	// WebhookClient posts to WebhookURL. Default: a client with a 10s timeout.
	WebhookClient *http.Client
	// WebhookAttempts bounds delivery attempts per notice in one go
	// (default 5), with exponential backoff from 200ms within 30s; a
	// notice still undelivered is redelivered from ALERTS a minute later.
	WebhookAttempts int
	// WebhookSecret, if set, signs every delivery (see
	// WebhookSignatureHeader), so a receiver can tell keyledger's alerts
	// from anyone's POST.
	WebhookSecret []byte

	// RetentionMonths is how many months of raw usage rows are kept,
	// counting the current one (default 13; negative keeps everything).
	// Per-minute rollups, key events and alerts are kept.
	RetentionMonths int
	// RetentionInterval is how often old partitions are dropped. Default 1h.
	RetentionInterval time.Duration

	// Now is the clock (default time.Now). The detector's "now" and the
	// default query ranges come from it.
	Now func() time.Time
	// Logger receives the package's logs. Default slog.Default().
	Logger *slog.Logger
	// Registerer, if set, gets the package's Prometheus metrics.
	Registerer prometheus.Registerer
}

// Thresholds tune the detector. Zero values take the defaults.
type Thresholds struct {
	// SpikeFactor: volume_spike fires when a key's events in the window
	// reach SpikeFactor × its average per window over SpikeBaseline
	// (default 10 and 7 days) …
	SpikeFactor   float64
	SpikeBaseline time.Duration
	// … and at least SpikeMin events (default 100), so quiet keys don't page.
	SpikeMin uint64
	// SourceHistory is how far back new_source looks for a key's known IPs
	// (default 30 days).
	SourceHistory time.Duration
	// GuessingMin: key_guessing fires when one IP presents at least this
	// many unknown or malformed keys in the window (default 20).
	GuessingMin uint64
	// ForbiddenMin: permission_probing fires when one key is refused for
	// missing permissions at least this many times in the window (default 20).
	ForbiddenMin uint64
	// RevokedMin and EnvMismatchMin: revoked_key_used and env_mismatch fire
	// at this many events per key and IP in the window (default 1).
	RevokedMin     uint64
	EnvMismatchMin uint64
	// DormantAfter: dormant_key fires on the first use after at least this
	// long without any (default 30 days).
	DormantAfter time.Duration
}

func (t Thresholds) withDefaults() Thresholds {
	if t.SpikeFactor <= 0 {
		t.SpikeFactor = 10
	}
	if t.SpikeBaseline <= 0 {
		t.SpikeBaseline = 7 * 24 * time.Hour
	}
	if t.SpikeMin == 0 {
		t.SpikeMin = 100
	}
	if t.SourceHistory <= 0 {
		t.SourceHistory = 30 * 24 * time.Hour
	}
	if t.GuessingMin == 0 {
		t.GuessingMin = 20
	}
	if t.ForbiddenMin == 0 {
		t.ForbiddenMin = 20
	}
	if t.RevokedMin == 0 {
		t.RevokedMin = 1
	}
	if t.EnvMismatchMin == 0 {
		t.EnvMismatchMin = 1
	}
	if t.DormantAfter <= 0 {
		t.DormantAfter = 30 * 24 * time.Hour
	}
	return t
}

func (c Config) withDefaults() Config {
	if c.DSN == "" {
		c.DSN = DefaultDSN
	}
	if c.Keyring == nil {
		c.Keyring, _ = events.NewKeyring()
	}
	if c.NATS == nil && c.JetStream != nil {
		c.NATS = c.JetStream.Conn()
	}
	if c.ConsumerPrefix == "" {
		c.ConsumerPrefix = "analytics"
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 50_000
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = time.Second
	}
	if c.InsertTimeout <= 0 {
		c.InsertTimeout = 30 * time.Second
	}
	if c.AckWait <= 0 {
		c.AckWait = 2 * (c.FlushInterval + c.InsertTimeout)
	}
	if c.RetryDelay <= 0 {
		c.RetryDelay = time.Second
	}
	if c.MaxRetryDelay < c.RetryDelay {
		c.MaxRetryDelay = max(30*time.Second, c.RetryDelay)
	}
	if c.DetectInterval == 0 {
		c.DetectInterval = 30 * time.Second
	}
	if c.Window <= 0 {
		c.Window = 5 * time.Minute
	}
	c.Thresholds = c.Thresholds.withDefaults()
	if c.ResolveAfter <= 0 {
		c.ResolveAfter = c.Window
	}
	if c.WebhookFormat == "" {
		c.WebhookFormat = FormatJSON
	}
	if c.WebhookClient == nil {
		c.WebhookClient = &http.Client{Timeout: 10 * time.Second}
	}
	if c.WebhookAttempts <= 0 {
		c.WebhookAttempts = 5
	}
	if c.RetentionMonths == 0 {
		c.RetentionMonths = 13
	}
	if c.RetentionInterval <= 0 {
		c.RetentionInterval = time.Hour
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Analytics is the ClickHouse side of keyledger. Its query methods are safe
// for concurrent use.
type Analytics struct {
	cfg     Config
	db      string
	conn    driver.Conn
	log     *slog.Logger
	now     func() time.Time
	metrics *metrics

	ingesters []*ingester
	detectMu  sync.Mutex

	mu      sync.Mutex
	started bool
	closed  bool
	stop    context.CancelFunc // ends reading: readers flush and exit
	kill    context.CancelFunc // ends everything, inserts included
	wg      sync.WaitGroup
}

var dbName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// ParseDSN checks a clickhouse://HOST:PORT/DB address and returns the
// client options and the database name.
func ParseDSN(dsn string) (*clickhouse.Options, string, error) {
	opts, err := clickhouse.ParseDSN(dsn)
	if err != nil {
		return nil, "", keyledger.Errorf(keyledger.Invalid, "ClickHouse DSN %q: want clickhouse://HOST:PORT/DB", redact(dsn))
	}
	if opts.Protocol != clickhouse.Native {
		return nil, "", keyledger.Errorf(keyledger.Invalid, "ClickHouse DSN %q: only the native protocol (clickhouse://) is supported", redact(dsn))
	}
	db := opts.Auth.Database
	if db == "" {
		db = "keyledger"
	}
	if !dbName.MatchString(db) {
		return nil, "", keyledger.Errorf(keyledger.Invalid, "ClickHouse DSN %q: bad database name %q", redact(dsn), db)
	}
	opts.Auth.Database = db
	return opts, db, nil
}

func redact(dsn string) string {
	return regexp.MustCompile(`//[^@/]*@`).ReplaceAllString(dsn, "//…@")
}

// Open connects to ClickHouse, creates the database if needed, runs the
// schema migrations and, with a JetStream, creates the durable consumers.
// It starts nothing: see Start.
func Open(ctx context.Context, cfg Config) (*Analytics, error) {
	cfg = cfg.withDefaults()
	opts, db, err := ParseDSN(cfg.DSN)
	if err != nil {
		return nil, err
	}
	if err := createDatabase(ctx, *opts, db); err != nil {
		return nil, err
	}
	conn, err := connect(ctx, opts)
	if err != nil {
		return nil, err
	}
	a := &Analytics{
		cfg:     cfg,
		db:      db,
		conn:    conn,
		log:     cfg.Logger,
		now:     cfg.Now,
		metrics: newMetrics(cfg.Registerer),
	}
	if err := a.migrate(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	if cfg.JetStream != nil {
		for _, spec := range []ingestSpec{usageSpec(), keysSpec()} {
			in, err := a.newIngester(ctx, spec)
			if err != nil {
				conn.Close()
				return nil, err
			}
			a.ingesters = append(a.ingesters, in)
		}
	}
	return a, nil
}

// connect opens a connection pool with opts (from ParseDSN) and checks
// that ClickHouse answers, so a wrong address fails here rather than at
// the first query.
func connect(ctx context.Context, opts *clickhouse.Options) (driver.Conn, error) {
	if opts.DialTimeout == 0 {
		opts.DialTimeout = 5 * time.Second
	}
	if opts.MaxOpenConns == 0 {
		opts.MaxOpenConns = 10
	}
	conn, err := clickhouse.Open(opts)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot connect to ClickHouse")
	}
	if err := conn.Ping(ctx); err != nil {
		conn.Close()
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "ClickHouse does not answer")
	}
	return conn, nil
}

// createDatabase creates db through a connection to the default database
// (a connection naming a missing database is refused).
func createDatabase(ctx context.Context, opts clickhouse.Options, db string) error {
	opts.Auth.Database = "default"
	opts.MaxOpenConns = 1
	if opts.DialTimeout == 0 {
		opts.DialTimeout = 5 * time.Second
	}
	conn, err := clickhouse.Open(&opts)
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot connect to ClickHouse")
	}
	defer conn.Close()
	if err := conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+db); err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot create the ClickHouse database")
	}
	return nil
}

// Database returns the name of the ClickHouse database.
func (a *Analytics) Database() string { return a.db }

// Start starts the goroutines Analytics owns: one ingest pipeline per
// stream (with a JetStream), the detector ticker and the retention ticker.
// They run until Close; ctx only carries values (its cancellation does
// not stop them).
func (a *Analytics) Start(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return keyledger.Errorf(keyledger.Unavailable, "analytics is closed")
	}
	if a.started {
		return nil
	}
	a.started = true
	base := context.WithoutCancel(ctx)
	// stopCtx ends reading (readers flush their batch); killCtx ends
	// everything, inserts in progress included.
	killCtx, kill := context.WithCancel(base)
	stopCtx, stop := context.WithCancel(base)
	a.stop, a.kill = stop, kill
	for _, in := range a.ingesters {
		if err := in.start(stopCtx, killCtx, &a.wg); err != nil {
			stop()
			kill()
			return err
		}
	}
	if a.cfg.DetectInterval > 0 {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.every(stopCtx, a.cfg.DetectInterval, func(ctx context.Context) {
				if _, err := a.Detect(ctx, a.now()); err != nil && ctx.Err() == nil {
					a.log.Warn("analytics: detection failed", "err", err)
				}
			})
		}()
	}
	if a.cfg.WebhookURL != "" && a.cfg.JetStream != nil {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.deliverNotices(stopCtx)
		}()
	}
	if a.cfg.RetentionMonths > 0 {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.every(stopCtx, a.cfg.RetentionInterval, func(ctx context.Context) {
				if _, err := a.ApplyRetention(ctx); err != nil && ctx.Err() == nil {
					a.log.Warn("analytics: retention failed", "err", err)
				}
			})
		}()
	}
	return nil
}

// every runs f now and then every d until ctx is done.
func (a *Analytics) every(ctx context.Context, d time.Duration, f func(context.Context)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		f(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Close stops ingest, writes and acknowledges the batches already read
// (until ctx is done; what is left unacknowledged is redelivered later),
// waits for every goroutine and closes the ClickHouse connection.
func (a *Analytics) Close(ctx context.Context) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	stop, kill := a.stop, a.kill
	a.mu.Unlock()
	var err error
	if stop != nil {
		stop()
		done := make(chan struct{})
		go func() { a.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			err = keyledger.Wrap(keyledger.Unavailable, ctx.Err(), "analytics did not flush in time; unacknowledged events will be redelivered")
			kill()
			<-done
		}
		kill()
	}
	if cerr := a.conn.Close(); cerr != nil && err == nil {
		err = keyledger.Wrap(keyledger.Internal, cerr, "closing the ClickHouse connection")
	}
	return err
}

// Ping checks that ClickHouse answers.
func (a *Analytics) Ping(ctx context.Context) error {
	if err := a.conn.Ping(ctx); err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "ClickHouse does not answer")
	}
	return nil
}

// ApplyRetention drops the monthly partitions of raw usage rows older than
// RetentionMonths (counting the current month of the clock) and returns the
// partitions dropped.
func (a *Analytics) ApplyRetention(ctx context.Context) ([]string, error) {
	if a.cfg.RetentionMonths <= 0 {
		return nil, nil
	}
	now := a.now().UTC()
	first := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC).AddDate(0, -(a.cfg.RetentionMonths - 1), 0)
	cutoff := fmt.Sprintf("%04d%02d", first.Year(), int(first.Month()))
	var dropped []string
	for _, table := range []string{"usage_events", "usage_key_ip_hour"} {
		rows, err := a.conn.Query(ctx, `SELECT DISTINCT partition FROM system.parts
			WHERE database = ? AND table = ? AND active AND partition < ? ORDER BY partition`, a.db, table, cutoff)
		if err != nil {
			return dropped, keyledger.Wrap(keyledger.Unavailable, err, "cannot list partitions")
		}
		var parts []string
		for rows.Next() {
			var p string
			if err := rows.Scan(&p); err != nil {
				rows.Close()
				return dropped, keyledger.Wrap(keyledger.Internal, err, "cannot list partitions")
			}
			parts = append(parts, p)
		}
		rows.Close()
		for _, p := range parts {
			if !isDigits(p) {
				continue
			}
			if err := a.conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DROP PARTITION %s", table, p)); err != nil {
				return dropped, keyledger.Wrap(keyledger.Unavailable, err, "cannot drop partition")
			}
			a.log.Info("analytics: dropped old partition", "table", table, "partition", p)
			dropped = append(dropped, table+"/"+p)
		}
	}
	return dropped, nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// metrics are the package's Prometheus metrics.
type metrics struct {
	rows        *prometheus.CounterVec
	batches     *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	duplicates  *prometheus.CounterVec
	lag         *prometheus.GaugeVec
	pending     *prometheus.GaugeVec
	insertTime  *prometheus.HistogramVec
	alerts      *prometheus.CounterVec
	notices     *prometheus.CounterVec
	// webhookDelivered and webhookFailed count notice deliveries.
	webhookDelivered, webhookFailed prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyledger_analytics_ingested_rows_total",
			Help: "Events inserted into ClickHouse, by stream.",
		}, []string{"stream"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyledger_analytics_batches_total",
			Help: "Insert batches, by stream and result (ok, error).",
		}, []string{"stream", "result"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyledger_analytics_dead_letters_total",
			Help: "Undecodable events sent to the dead-letter subject, by stream.",
		}, []string{"stream"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyledger_analytics_duplicates_skipped_total",
			Help: "Redelivered or repeated events found already stored and not inserted again, by stream.",
		}, []string{"stream"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyledger_analytics_ingest_lag_seconds",
			Help: "Age (by the clock, from the event's own time) of the newest event of the last inserted batch.",
		}, []string{"stream"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyledger_analytics_ingest_pending_messages",
			Help: "Messages in the stream not yet delivered to the analytics consumer.",
		}, []string{"stream"}),
		insertTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keyledger_analytics_insert_seconds",
			Help:    "Duration of ClickHouse batch inserts, by stream.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}, []string{"stream"}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyledger_analytics_alerts_total",
			Help: "Alerts fired by the detector, by rule.",
		}, []string{"rule"}),
		notices: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyledger_analytics_alert_notices_total",
			Help: "Alert notices (incidents firing, updated, resolved) this node published, by rule and notice.",
		}, []string{"rule", "notice"}),
		webhookDelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keyledger_analytics_webhook_deliveries_total",
			Help: "Alert notices the webhook accepted.",
		}),
		webhookFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keyledger_analytics_webhook_failures_total",
			Help: "Alert notice deliveries that failed after their retries (each is redelivered later).",
		}),
	}
	if reg != nil {
		m.rows = register(reg, m.rows)
		m.batches = register(reg, m.batches)
		m.deadLetters = register(reg, m.deadLetters)
		m.duplicates = register(reg, m.duplicates)
		m.lag = register(reg, m.lag)
		m.pending = register(reg, m.pending)
		m.insertTime = register(reg, m.insertTime)
		m.alerts = register(reg, m.alerts)
		m.notices = register(reg, m.notices)
		m.webhookDelivered = register(reg, m.webhookDelivered)
		m.webhookFailed = register(reg, m.webhookFailed)
	}
	// Every series exists from the start, at 0: a rate() or an alert
	// rule over a series that appears only with its first event sees
	// nothing before it.
	for _, rule := range Rules() {
		m.alerts.WithLabelValues(rule)
		for _, n := range []string{NoticeFiring, NoticeUpdated, NoticeResolved} {
			m.notices.WithLabelValues(rule, n)
		}
	}
	for _, stream := range []string{nats.KeysStream, nats.UsageStream} {
		m.deadLetters.WithLabelValues(stream)
		m.duplicates.WithLabelValues(stream)
		m.lag.WithLabelValues(stream)
		m.pending.WithLabelValues(stream)
	}
	return m
}

// register registers c, or returns the collector already registered
// under its name (a second Analytics in the same process shares it).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if prev, ok := are.ExistingCollector.(C); ok {
				return prev
			}
		}
		panic(fmt.Sprintf("analytics: registering metrics: %v", err))
	}
	return c
}
