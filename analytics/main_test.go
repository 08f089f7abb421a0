package analytics

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/analytics/analyticstest"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/events/eventstest"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/nats/natstest"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// newDSN returns the DSN of a fresh database on the ClickHouse at addr,
// dropped when the test ends.
func newDSN(tb testing.TB, addr string) string {
	tb.Helper()
	return analyticstest.DSN(addr, analyticstest.MustTempDatabase(tb, addr))
}

// testJetStream is an embedded JetStream in a temp dir with both streams,
// authentication on; nc and js are the operator's (tests set up freely),
// and env holds the rest (other roles, the ledger signing key).
type testJetStream struct {
	env *natstest.Env
	nc  *natsgo.Conn
	js  jetstream.JetStream
}

func MustStartJetStream(tb testing.TB) *testJetStream {
	tb.Helper()
	env := natstest.MustStart(tb)
	return &testJetStream{env: env, nc: env.Conn, js: env.JS}
}

// testSigner is the key natstest's ledgers are signed with; testKeyring
// trusts it.
func testSigner(tb testing.TB) *eventstest.Signer {
	return eventstest.MustSigner(tb, natstest.Admin, 1)
}

// testLogger discards below warnings unless -v.
func testLogger(tb testing.TB) *slog.Logger {
	if os.Getenv("KEYLEDGER_TEST_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// MustOpen opens Analytics on a fresh database of the shared ClickHouse
// (analyticstest.Addr: KEYLEDGER_CLICKHOUSE, as `make test` sets it),
// unless cfg.DSN is set, and closes it when the test ends. Detection and
// retention tickers are off unless cfg asks for them.
func MustOpen(tb testing.TB, cfg Config) *Analytics {
	tb.Helper()
	if cfg.DSN == "" {
		cfg.DSN = newDSN(tb, analyticstest.Addr(tb))
	}
	if cfg.DetectInterval == 0 {
		cfg.DetectInterval = -1
	}
	if cfg.RetentionMonths == 0 {
		cfg.RetentionMonths = -1
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(tb)
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = 100 * time.Millisecond
	}
	if cfg.Keyring == nil {
		cfg.Keyring = eventstest.Keyring(tb, testSigner(tb))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := Open(ctx, cfg)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := a.Close(ctx); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return a
}

// MustStart starts a's goroutines.
func MustStart(tb testing.TB, a *Analytics) {
	tb.Helper()
	if err := a.Start(context.Background()); err != nil {
		tb.Fatalf("Start: %v", err)
	}
}

// used builds a KeyUsed event.
func used(keyID string, env keyledger.Environment, outcome keyledger.Outcome, ip string, at time.Time) *events.KeyUsed {
	return &events.KeyUsed{
		Header:      events.NewHeader(events.TypeKeyUsed, keyID, "", at),
		Environment: env,
		Outcome:     outcome,
		OutcomeName: outcome.String(),
		Permission:  "keys:read",
		IP:          ip,
		UserAgent:   "curl/8.5",
		Method:      "GET",
		Path:        "/v1/things",
		Node:        "node-1",
		LatencyUS:   42,
	}
}

// publishUsage publishes KeyUsed events to USAGE, one per message, as
// other publishers than keyledger's verifier nodes may.
func publishUsage(tb testing.TB, js jetstream.JetStream, evs ...*events.KeyUsed) {
	tb.Helper()
	publishUsageBatches(tb, js, 1, evs...)
}

// publishUsageBatches publishes KeyUsed events to USAGE in batches of per
// events, as verifier nodes do (async, then waits).
func publishUsageBatches(tb testing.TB, js jetstream.JetStream, per int, evs ...*events.KeyUsed) {
	tb.Helper()
	futures := make([]jetstream.PubAckFuture, 0, 4096)
	flush := func() {
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(30 * time.Second):
			tb.Fatal("publish: timed out")
		}
		for _, f := range futures {
			select {
			case err := <-f.Err():
				tb.Fatalf("publish: %v", err)
			default:
			}
		}
		futures = futures[:0]
	}
	for len(evs) > 0 {
		n := min(per, len(evs))
		var data []byte
		subject := nats.UsageSubject(evs[0].Environment, evs[0].KeyID)
		if per == 1 {
			data = evs[0].AppendJSON(nil)
		} else {
			subject = nats.UsageBatchSubject(evs[0].Environment, evs[0].Node)
			for _, ev := range evs[:n] {
				data = events.AppendUsage(data, ev)
			}
		}
		evs = evs[n:]
		f, err := js.PublishAsync(subject, data)
		if err != nil {
			tb.Fatalf("publish: %v", err)
		}
		futures = append(futures, f)
		if len(futures) == cap(futures) {
			flush()
		}
	}
	flush()
}

// publishRaw publishes arbitrary bytes on a USAGE subject.
func publishRaw(tb testing.TB, js jetstream.JetStream, subject string, data []byte) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, subject, data); err != nil {
		tb.Fatalf("publish: %v", err)
	}
}

// publishKeyEvent publishes a key lifecycle event on KEYS.
func publishKeyEvent(tb testing.TB, js jetstream.JetStream, ev events.Event) {
	tb.Helper()
	data := testSigner(tb).MustSeal(tb, ev)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, nats.KeySubject(ev.Head().KeyID), data); err != nil {
		tb.Fatalf("publish: %v", err)
	}
}

func created(keyID, owner string, env keyledger.Environment, at time.Time) *events.KeyCreated {
	return &events.KeyCreated{
		Header:      events.NewHeader(events.TypeKeyCreated, keyID, "alice@example.com", at),
		Name:        "name of " + keyID,
		Environment: env,
		Permissions: []string{"keys:read", "keys:write"},
		Owner:       owner,
		Hash:        strings.Repeat("ab", 32),
		Hint:        "x1y2",
	}
}

func revoked(keyID, actor, reason string, at time.Time) *events.KeyRevoked {
	return &events.KeyRevoked{Header: events.NewHeader(events.TypeKeyRevoked, keyID, actor, at), Reason: reason}
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s (last: %s)", timeout, what, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// counts are the usage totals as three different readers see them.
type counts struct {
	Distinct uint64 // uniqExact(event_id) of raw rows
	Rows     uint64 // raw rows (before merges; duplicates would show)
	Rollup   uint64 // sum of the per-minute rollup
}

func usageCounts(tb testing.TB, conn driver.Conn) counts {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var c counts
	if err := conn.QueryRow(ctx, `SELECT uniqExact(event_id), count() FROM usage_events`).Scan(&c.Distinct, &c.Rows); err != nil {
		tb.Fatalf("count: %v", err)
	}
	if err := conn.QueryRow(ctx, `SELECT toUInt64(sum(count)) FROM usage_minute`).Scan(&c.Rollup); err != nil {
		tb.Fatalf("count: %v", err)
	}
	return c
}

// waitIngested waits until n distinct events are stored and the USAGE
// ingest consumer has nothing left to deliver or acknowledge (so nothing
// more is in flight: the events published so far are all stored), then
// checks raw rows and rollups agree exactly.
func waitIngested(tb testing.TB, a *Analytics, n uint64, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	waitFor(tb, timeout, fmt.Sprintf("%d events in ClickHouse", n), func() (bool, string) {
		c := usageCounts(tb, a.conn)
		// The materialized views are written just after the raw part.
		return c.Distinct >= n && c.Rollup >= n, fmt.Sprintf("%+v", c)
	})
	waitUsageIdle(tb, a, max(time.Until(deadline), 10*time.Second))
	c := usageCounts(tb, a.conn)
	if c != (counts{n, n, n}) {
		tb.Fatalf("counts = %+v, want all %d", c, n)
	}
}

// waitUsageIdle waits until the USAGE ingest consumer has no message left
// to deliver and none delivered but unacknowledged. Events are
// acknowledged only once stored (or dead-lettered), so by then every
// event published before the call is in ClickHouse.
func waitUsageIdle(tb testing.TB, a *Analytics, timeout time.Duration) {
	tb.Helper()
	waitFor(tb, timeout, "the USAGE ingest consumer to be idle (nothing pending or unacknowledged)", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ci, err := a.ingesters[0].consumer().Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return ci.NumPending == 0 && ci.NumAckPending == 0, fmt.Sprintf("pending %d ack pending %d redelivered %d",
			ci.NumPending, ci.NumAckPending, ci.NumRedelivered)
	})
}
