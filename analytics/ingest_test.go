package analytics

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/analytics/analyticstest"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
	natsgo "github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestIngestExactCounts(t *testing.T) {
	t.Parallel()
	tj := MustStartJetStream(t)
	reg := prometheus.NewRegistry()
	a := MustOpen(t, Config{JetStream: tj.js, BatchSize: 1000, Registerer: reg})
	MustStart(t, a)

	base := time.Date(2026, 1, 31, 23, 58, 0, 0, time.UTC) // batches straddle a month
	var evs []*events.KeyUsed
	want := map[string]map[string]uint64{} // key → outcome → count
	outcomes := []keyledger.Outcome{keyledger.OutcomeValid, keyledger.OutcomeValid, keyledger.OutcomeForbidden, keyledger.OutcomeRateLimited}
	for i := range 6000 {
		key := fmt.Sprintf("key_%d", i%3)
		o := outcomes[i%len(outcomes)]
		evs = append(evs, used(key, keyledger.EnvLive, o, "10.0.0.1", base.Add(time.Duration(i)*50*time.Millisecond)))
		if want[key] == nil {
			want[key] = map[string]uint64{}
		}
		want[key][o.String()]++
	}
	// Batches of 7 events: messages straddle ingest batches and months.
	publishUsageBatches(t, tj.js, 7, evs...)
	waitIngested(t, a, 6000, 60*time.Second)

	ctx := context.Background()
	for key, byOutcome := range want {
		pts, err := a.Usage(ctx, UsageQuery{KeyID: key, From: base.Add(-time.Hour), To: base.Add(time.Hour), Interval: Day})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]uint64{}
		for _, p := range pts {
			got[p.Outcome] += p.Count
		}
		for o, n := range byOutcome {
			if got[o] != n {
				t.Errorf("%s %s: usage %d, want %d (points %+v)", key, o, got[o], n, pts)
			}
		}
		if len(pts) != 2*len(byOutcome) { // two days
			t.Errorf("%s: %d points, want %d: %+v", key, len(pts), 2*len(byOutcome), pts)
		}
	}
	// A range cutting through minutes is still exact (raw rows at the edges).
	from, to := base.Add(30*time.Second+25*time.Millisecond), base.Add(3*time.Minute+10*time.Second)
	var wantN uint64
	for _, ev := range evs {
		if ev.KeyID == "key_0" && !ev.At.Before(from) && ev.At.Before(to) {
			wantN++
		}
	}
	pts, err := a.Usage(ctx, UsageQuery{KeyID: "key_0", From: from, To: to, Interval: Minute})
	if err != nil {
		t.Fatal(err)
	}
	var gotN uint64
	for _, p := range pts {
		gotN += p.Count
	}
	if gotN != wantN {
		t.Errorf("partial-minute range: %d, want %d", gotN, wantN)
	}
	if n := metricValue(a.metrics.rows.WithLabelValues(nats.UsageStream)); n != 6000 {
		t.Errorf("ingested rows metric = %v, want 6000", n)
	}
	if n := metricValue(a.metrics.batches.WithLabelValues(nats.UsageStream, "ok")); n < 6 {
		t.Errorf("batches metric = %v, want >= 6", n)
	}
}

func TestRedeliveredBatchNotDoubleCounted(t *testing.T) {
	t.Parallel()
	tj := MustStartJetStream(t)
	reg := prometheus.NewRegistry()
	a := MustOpen(t, Config{JetStream: tj.js, BatchSize: 500, AckWait: time.Second, Registerer: reg})
	// The first two batches are stored but their acknowledgements are
	// lost, as if the node crashed between INSERT and ack.
	var batches, dropped atomic.Int32
	a.ingesters[0].testAfterWrite = func(n int) bool {
		if batches.Add(1) > 2 {
			return true
		}
		dropped.Add(int32(n))
		return false
	}
	MustStart(t, a)

	now := time.Now().UTC()
	var evs []*events.KeyUsed
	for i := range 2000 {
		evs = append(evs, used("key_r", keyledger.EnvLive, keyledger.OutcomeValid, "10.0.0.2", now.Add(-time.Duration(i)*time.Second)))
	}
	publishUsageBatches(t, tj.js, 3, evs...)
	waitIngested(t, a, 2000, 60*time.Second)
	// Redeliveries happen after AckWait; wait until they are all acked.
	waitFor(t, 30*time.Second, "no unacknowledged messages", func() (bool, string) {
		ci, err := a.ingesters[0].consumer().Info(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return ci.NumAckPending == 0 && ci.NumPending == 0 && ci.NumRedelivered == 0, fmt.Sprintf("%+v", ci)
	})
	if c := usageCounts(t, a.conn); c != (counts{2000, 2000, 2000}) {
		t.Fatalf("after redelivery counts = %+v, want 2000 each", c)
	}
	if n, want := metricValue(a.metrics.duplicates.WithLabelValues(nats.UsageStream)), float64(dropped.Load()); n != want || want == 0 {
		t.Errorf("duplicates skipped = %v, want %v (the two batches whose acks were lost)", n, want)
	}
	q, err := a.Usage(context.Background(), UsageQuery{KeyID: "key_r", From: now.Add(-time.Hour), To: now.Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for _, p := range q {
		total += p.Count
	}
	if total != 2000 {
		t.Errorf("usage total = %d, want 2000", total)
	}
}

func TestPoisonEventDeadLettered(t *testing.T) {
	t.Parallel()
	tj := MustStartJetStream(t)
	reg := prometheus.NewRegistry()
	dl := make(chan *natsgo.Msg, 10)
	sub, err := tj.nc.ChanSubscribe(DeadLetterSubject(nats.UsageStream), dl)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	a := MustOpen(t, Config{JetStream: tj.js, BatchSize: 100, Registerer: reg})
	MustStart(t, a)

	now := time.Now().UTC()
	publishUsage(t, tj.js, used("key_p", keyledger.EnvLive, keyledger.OutcomeValid, "10.0.0.3", now))
	publishRaw(t, tj.js, "keyledger.usage.live.key_p", []byte("this is not JSON"))
	bad := used("key_p", keyledger.EnvLive, keyledger.OutcomeValid, "10.0.0.3", now)
	publishRaw(t, tj.js, "keyledger.usage.live.key_p",
		[]byte(`{"type":"KeyUsed","v":1,"event_id":"`+bad.EventID+`","at":"2026-01-01T00:00:00Z","key_id":"key_p","environment":"live","outcome":"teleported"}`))
	// A batch with one bad event goes to the dead letters whole: none of
	// its events is stored, and the dead letter holds all of them.
	good := used("key_p", keyledger.EnvLive, keyledger.OutcomeValid, "10.0.0.3", now)
	batch := events.AppendUsage(nil, good)
	batch = append(batch, "{\"type\":\"KeyUsed\"}\n"...)
	publishRaw(t, tj.js, nats.UsageBatchSubject(keyledger.EnvLive, "node-1"), batch)
	// An empty message is not an event.
	publishRaw(t, tj.js, nats.UsageBatchSubject(keyledger.EnvLive, "node-1"), []byte("\n\n"))
	var evs []*events.KeyUsed
	for range 300 {
		evs = append(evs, used("key_p", keyledger.EnvLive, keyledger.OutcomeValid, "10.0.0.3", now))
	}
	publishUsageBatches(t, tj.js, 10, evs...)
	waitIngested(t, a, 301, 60*time.Second)

	reasons := map[string]bool{}
	for range 4 {
		select {
		case m := <-dl:
			r := m.Header.Get(HeaderDeadLetterReason)
			if r == "" || m.Header.Get(HeaderDeadLetterStream) != nats.UsageStream || m.Header.Get(HeaderDeadLetterSeq) == "" {
				t.Errorf("dead letter headers: %v", m.Header)
			}
			reasons[r] = true
			if strings.Contains(r, "event 2 of the batch") && !bytes.Equal(m.Data, batch) {
				t.Errorf("dead letter of a batch holds %q, want the whole batch", m.Data)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("dead letter not received")
		}
	}
	if len(reasons) != 4 {
		t.Errorf("reasons = %v", reasons)
	}
	if n := metricValue(a.metrics.deadLetters.WithLabelValues(nats.UsageStream)); n != 4 {
		t.Errorf("dead letters metric = %v, want 4", n)
	}
	if c := usageCounts(t, a.conn); c.Rows != 301 {
		t.Errorf("stored rows %+v, want 301: none of the bad batch's events", c)
	}
	// Terminated, not waiting for redelivery.
	waitFor(t, 10*time.Second, "no unacknowledged messages", func() (bool, string) {
		ci, err := a.ingesters[0].consumer().Info(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return ci.NumAckPending == 0 && ci.NumPending == 0, fmt.Sprintf("ack pending %d pending %d", ci.NumAckPending, ci.NumPending)
	})
}

// TestClickHouseDownThenBack stops a private ClickHouse (own ports and
// directory, so the shared instance and parallel tests are untouched) while
// events flow, starts it again and checks every event landed exactly once.
// It runs the private server with scripts/clickhouse.sh, and fails, rather
// than let the script install anything, unless the ClickHouse binaries are
// on PATH (`make test` installs them).
func TestClickHouseDownThenBack(t *testing.T) {
	priv := analyticstest.StartPrivate(t)
	runPrivate := priv.Run
	script := func(arg string) {
		t.Helper()
		if err := runPrivate(arg); err != nil {
			t.Fatal(err)
		}
	}
	addr := priv.Addr

	tj := MustStartJetStream(t)
	reg := prometheus.NewRegistry()
	a := MustOpen(t, Config{DSN: newDSN(t, addr), JetStream: tj.js, BatchSize: 500,
		InsertTimeout: 2 * time.Second, RetryDelay: 200 * time.Millisecond, MaxRetryDelay: time.Second, Registerer: reg})
	MustStart(t, a)

	now := time.Now().UTC()
	batch := func(n int) []*events.KeyUsed {
		var evs []*events.KeyUsed
		for i := range n {
			evs = append(evs, used("key_d", keyledger.EnvLive, keyledger.OutcomeValid, "10.0.0.4", now.Add(time.Duration(i)*time.Millisecond)))
		}
		return evs
	}
	publishUsage(t, tj.js, batch(3000)...)
	waitIngested(t, a, 3000, 60*time.Second)

	// Down mid-stream: publish while it stops (the script runs in a
	// goroutine, the test keeps publishing), and the last batch once it
	// has stopped, so that inserts are sure to fail.
	stopped := make(chan error, 1)
	go func() { stopped <- runPrivate("stop") }()
	const downBatches = 10
	isDown := false
	down := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		isDown = true
	}
	for i := range downBatches {
		if !isDown {
			if i == downBatches-1 {
				down(<-stopped)
			} else {
				select {
				case err := <-stopped:
					down(err)
				default:
				}
			}
		}
		publishUsage(t, tj.js, batch(300)...)
	}
	waitFor(t, 30*time.Second, "failed inserts", func() (bool, string) {
		n := metricValue(a.metrics.batches.WithLabelValues(nats.UsageStream, "error"))
		return n >= 1, fmt.Sprint(n)
	})
	publishUsage(t, tj.js, batch(1000)...)
	script("start")
	waitIngested(t, a, 7000, 90*time.Second)
	waitFor(t, 30*time.Second, "no unacknowledged messages", func() (bool, string) {
		ci, err := a.ingesters[0].consumer().Info(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return ci.NumAckPending == 0 && ci.NumPending == 0, fmt.Sprintf("ack pending %d pending %d", ci.NumAckPending, ci.NumPending)
	})
	if c := usageCounts(t, a.conn); c != (counts{7000, 7000, 7000}) {
		t.Fatalf("counts = %+v, want 7000 each", c)
	}
}

func TestKeyEventsAndAudit(t *testing.T) {
	t.Parallel()
	tj := MustStartJetStream(t)
	a := MustOpen(t, Config{JetStream: tj.js})
	MustStart(t, a)

	t0 := time.Date(2026, 2, 1, 10, 0, 0, 123e6, time.UTC)
	c1 := created("key_a1", "acme", keyledger.EnvLive, t0)
	exp := t0.Add(90 * 24 * time.Hour)
	c1.ExpiresAt = &exp
	c2 := created("key_a2", "acme", keyledger.EnvTest, t0.Add(time.Minute))
	r1 := revoked("key_a1", "bob@example.com", "leaked in a public repo", t0.Add(time.Hour))
	for _, ev := range []events.Event{c1, c2, r1} {
		publishKeyEvent(t, tj.js, ev)
	}
	// The same event again (a producer retry): shown once.
	publishKeyEvent(t, tj.js, r1)

	ctx := context.Background()
	waitFor(t, 30*time.Second, "3 audit events", func() (bool, string) {
		evs, err := a.Audit(ctx, AuditQuery{})
		if err != nil {
			return false, err.Error()
		}
		return len(evs) == 3, fmt.Sprint(len(evs))
	})
	evs, err := a.Audit(ctx, AuditQuery{KeyID: "key_a1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 {
		t.Fatalf("audit key_a1 = %+v", evs)
	}
	c, r := evs[0], evs[1]
	if c.Type != "KeyCreated" || c.Actor != "alice@example.com" || !c.At.Equal(t0) || c.Owner != "acme" ||
		c.Environment != "live" || len(c.Permissions) != 2 || c.Name != "name of key_a1" || c.ExpiresAt == nil || !c.ExpiresAt.Equal(exp) ||
		c.EventID != c1.EventID {
		t.Errorf("created = %+v", c)
	}
	if r.Type != "KeyRevoked" || r.Actor != "bob@example.com" || r.Reason != "leaked in a public repo" || !r.At.Equal(r1.At) || r.Permissions != nil {
		t.Errorf("revoked = %+v", r)
	}
	for _, tc := range []struct {
		q    AuditQuery
		want int
	}{
		{AuditQuery{Actor: "bob@example.com"}, 1},
		{AuditQuery{Type: "created"}, 2},
		{AuditQuery{Type: "KeyRevoked"}, 1},
		{AuditQuery{From: t0.Add(time.Minute)}, 2},
		{AuditQuery{From: t0, To: t0.Add(time.Minute)}, 1},
		{AuditQuery{From: t0.Add(time.Millisecond)}, 2},
		{AuditQuery{Limit: 1}, 1},
	} {
		evs, err := a.Audit(ctx, tc.q)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != tc.want {
			t.Errorf("Audit(%+v) = %d events, want %d", tc.q, len(evs), tc.want)
		}
	}
	// A KeyUsed event on KEYS is not applied but dead-lettered.
	ku := used("key_a1", keyledger.EnvLive, keyledger.OutcomeValid, "1.1.1.1", t0)
	publishRaw(t, tj.js, nats.KeySubject("key_a1"), ku.AppendJSON(nil))
	waitFor(t, 10*time.Second, "dead letter", func() (bool, string) {
		n := metricValue(a.metrics.deadLetters.WithLabelValues(nats.KeysStream))
		return n == 1, fmt.Sprint(n)
	})
}

// TestIngestForgedLedgerEvents is the attack on the audit trail: events on
// KEYS that no admin signing key signed. Before, analytics recorded them
// as history; now they are not in the audit, they are dead-lettered, and
// each raises a ledger_forgery alert.
func TestIngestForgedLedgerEvents(t *testing.T) {
	t.Parallel()
	tj := MustStartJetStream(t)
	ctx := context.Background()
	a := MustOpen(t, Config{JetStream: tj.js})
	MustStart(t, a)
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	genuine := created("key_real", "acme", keyledger.EnvLive, t0)
	publishKeyEvent(t, tj.js, genuine)
	forged := created("key_forged", "evil", keyledger.EnvLive, t0)
	unsigned, err := events.Encode(forged)
	if err != nil {
		t.Fatal(err)
	}
	publishRaw(t, tj.js, nats.KeySubject("key_forged"), unsigned)
	// A genuine, signed event copied onto another key's subject.
	publishRaw(t, tj.js, nats.KeySubject("key_other"), testSigner(t).MustSeal(t, genuine))
	waitFor(t, 20*time.Second, "two ledger_forgery alerts", func() (bool, string) {
		n := metricValue(a.metrics.alerts.WithLabelValues(RuleLedgerForgery))
		return n == 2, fmt.Sprint(n)
	})
	// Ingestion is in stream order: once the event after the forgeries
	// is in the audit, the forgeries have been judged.
	publishKeyEvent(t, tj.js, created("key_after", "acme", keyledger.EnvLive, t0))
	waitFor(t, 20*time.Second, "the events after the forgeries", func() (bool, string) {
		evs, err := a.Audit(ctx, AuditQuery{})
		if err != nil {
			return false, err.Error()
		}
		return len(evs) >= 2, fmt.Sprint(len(evs))
	})
	evs, err := a.Audit(ctx, AuditQuery{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if e.KeyID != "key_real" && e.KeyID != "key_after" {
			t.Fatalf("a forged event is in the audit: %+v", e)
		}
	}
	al, err := a.Alerts(ctx, AlertQuery{Rule: RuleLedgerForgery})
	if err != nil {
		t.Fatal(err)
	}
	if len(al) != 2 {
		t.Fatalf("stored alerts %+v", al)
	}
}

// TestIngestUsageInAnotherNodesName: a batch on node A's subject whose
// events name node B (a verifier inflating another node's figures, or
// hiding its own) is dead-lettered, not counted.
func TestIngestUsageInAnotherNodesName(t *testing.T) {
	t.Parallel()
	tj := MustStartJetStream(t)
	a := MustOpen(t, Config{JetStream: tj.js})
	MustStart(t, a)
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	ku := used("key_a1", keyledger.EnvLive, keyledger.OutcomeValid, "1.1.1.1", t0)
	ku.Node = "node-b"
	publishRaw(t, tj.js, nats.UsageBatchSubject(keyledger.EnvLive, "node-a"), ku.AppendJSON(nil))
	waitFor(t, 10*time.Second, "dead letter", func() (bool, string) {
		n := metricValue(a.metrics.deadLetters.WithLabelValues(nats.UsageStream))
		return n == 1, fmt.Sprint(n)
	})
}

func TestQuotaIgnoresTestKeys(t *testing.T) {
	t.Parallel()
	tj := MustStartJetStream(t)
	march := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	a := MustOpen(t, Config{JetStream: tj.js, Now: func() time.Time { return march.AddDate(0, 0, 15) }})
	MustStart(t, a)

	march = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	publishKeyEvent(t, tj.js, created("key_live", "acme", keyledger.EnvLive, march.AddDate(0, -2, 0)))
	publishKeyEvent(t, tj.js, created("key_live2", "acme", keyledger.EnvLive, march.AddDate(0, -2, 0)))
	publishKeyEvent(t, tj.js, created("key_test", "acme", keyledger.EnvTest, march.AddDate(0, -2, 0)))
	publishKeyEvent(t, tj.js, created("key_other", "globex", keyledger.EnvLive, march.AddDate(0, -2, 0)))
	var evs []*events.KeyUsed
	add := func(n int, key string, env keyledger.Environment, o keyledger.Outcome, at time.Time) {
		for i := range n {
			evs = append(evs, used(key, env, o, "10.1.1.1", at.Add(time.Duration(i)*time.Second)))
		}
	}
	add(40, "key_live", keyledger.EnvLive, keyledger.OutcomeValid, march.Add(time.Hour))
	add(2, "key_live", keyledger.EnvLive, keyledger.OutcomeValid, march.Add(-10*time.Second))                 // February
	add(3, "key_live", keyledger.EnvLive, keyledger.OutcomeValid, march.AddDate(0, 1, 0))                     // April
	add(7, "key_live2", keyledger.EnvLive, keyledger.OutcomeValid, march.AddDate(0, 0, 30).Add(23*time.Hour)) // March 31
	add(5, "key_live", keyledger.EnvLive, keyledger.OutcomeRateLimited, march.Add(time.Hour))
	add(4, "key_live", keyledger.EnvLive, keyledger.OutcomeForbidden, march.Add(time.Hour))
	add(30, "key_test", keyledger.EnvTest, keyledger.OutcomeValid, march.Add(time.Hour))
	add(11, "key_other", keyledger.EnvLive, keyledger.OutcomeValid, march.Add(time.Hour))
	publishUsage(t, tj.js, evs...)
	waitIngested(t, a, uint64(len(evs)), 60*time.Second)
	ctx := context.Background()
	waitFor(t, 10*time.Second, "key events", func() (bool, string) {
		evs, _ := a.Audit(ctx, AuditQuery{})
		return len(evs) == 4, fmt.Sprint(len(evs))
	})
	for _, tc := range []struct {
		owner, month string
		want         uint64
	}{
		{"acme", "2026-03", 47},
		{"acme", "2026-02", 2},
		{"acme", "2026-04", 3},
		{"globex", "2026-03", 11},
		{"nobody", "2026-03", 0},
	} {
		q, err := a.Quota(ctx, tc.owner, tc.month)
		if err != nil {
			t.Fatal(err)
		}
		if q.Used != tc.want || q.Owner != tc.owner || q.Month != tc.month {
			t.Errorf("Quota(%s, %s) = %+v, want used %d", tc.owner, tc.month, q, tc.want)
		}
	}
	// Usage by owner covers all the owner's keys, test ones included.
	pts, err := a.Usage(ctx, UsageQuery{Owner: "acme", From: march, To: march.AddDate(0, 1, 0), Interval: Day})
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for _, p := range pts {
		total += p.Count
	}
	if total != 40+7+5+4+30 {
		t.Errorf("owner usage = %d, want 86", total)
	}
	// LastUsed: valid uses only.
	lu, err := a.LastUsed(ctx, []string{"key_live", "key_other", "key_none"})
	if err != nil {
		t.Fatal(err)
	}
	if u := lu["key_live"]; !u.LastUsedAt.Equal(march.AddDate(0, 1, 0).Add(2*time.Second)) || u.Uses30d != 42 {
		t.Errorf("LastUsed key_live = %+v", u)
	}
	if _, ok := lu["key_none"]; ok || len(lu) != 2 {
		t.Errorf("LastUsed = %+v", lu)
	}
}

// metricValue reads a counter or gauge.
func metricValue(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	if c := d.GetCounter(); c != nil {
		return c.GetValue()
	}
	return d.GetGauge().GetValue()
}

// TestRecreatedConsumerNoDoubleCount: a durable consumer deleted and
// created again delivers the whole stream anew, as first deliveries; what
// is already stored is recognized and not counted twice.
func TestRecreatedConsumerNoDoubleCount(t *testing.T) {
	t.Parallel()
	tj := MustStartJetStream(t)
	dsn := newDSN(t, analyticstest.Addr(t))
	a := MustOpen(t, Config{DSN: dsn, JetStream: tj.js, BatchSize: 400, Registerer: prometheus.NewRegistry()})
	MustStart(t, a)
	now := time.Now().UTC()
	var evs []*events.KeyUsed
	for i := range 1000 {
		evs = append(evs, used("key_rc", keyledger.EnvLive, keyledger.OutcomeValid, "10.0.0.9", now.Add(time.Duration(i)*time.Millisecond)))
	}
	publishUsage(t, tj.js, evs...)
	waitIngested(t, a, 1000, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tj.js.DeleteConsumer(ctx, nats.UsageStream, "analytics-usage"); err != nil {
		t.Fatal(err)
	}
	b := MustOpen(t, Config{DSN: dsn, JetStream: tj.js, BatchSize: 400, Registerer: prometheus.NewRegistry()})
	MustStart(t, b)
	publishUsage(t, tj.js, used("key_rc", keyledger.EnvLive, keyledger.OutcomeValid, "10.0.0.9", now))
	waitIngested(t, b, 1001, 30*time.Second)
	waitFor(t, 30*time.Second, "all acknowledged", func() (bool, string) {
		ci, err := b.ingesters[0].consumer().Info(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return ci.NumAckPending == 0 && ci.NumPending == 0, fmt.Sprintf("%d/%d", ci.NumAckPending, ci.NumPending)
	})
	if c := usageCounts(t, b.conn); c != (counts{1001, 1001, 1001}) {
		t.Fatalf("counts = %+v, want 1001 each", c)
	}
	if n := metricValue(b.metrics.duplicates.WithLabelValues(nats.UsageStream)); n != 1000 {
		t.Errorf("duplicates skipped = %v, want 1000", n)
	}
}

// TestConsumerDeletedWhileRunning: the consumer is recreated and the
// replayed events are recognized.
func TestConsumerDeletedWhileRunning(t *testing.T) {
	t.Parallel()
	tj := MustStartJetStream(t)
	a := MustOpen(t, Config{JetStream: tj.js, BatchSize: 400, RetryDelay: 100 * time.Millisecond, Registerer: prometheus.NewRegistry()})
	MustStart(t, a)
	now := time.Now().UTC()
	batch := func(n int) []*events.KeyUsed {
		var evs []*events.KeyUsed
		for i := range n {
			evs = append(evs, used("key_cd", keyledger.EnvLive, keyledger.OutcomeValid, "10.0.0.8", now.Add(time.Duration(i)*time.Millisecond)))
		}
		return evs
	}
	publishUsage(t, tj.js, batch(700)...)
	waitIngested(t, a, 700, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tj.js.DeleteConsumer(ctx, nats.UsageStream, "analytics-usage"); err != nil {
		t.Fatal(err)
	}
	publishUsage(t, tj.js, batch(300)...)
	waitIngested(t, a, 1000, 30*time.Second)
	waitFor(t, 30*time.Second, "replay recognized", func() (bool, string) {
		n := metricValue(a.metrics.duplicates.WithLabelValues(nats.UsageStream))
		return n == 700, fmt.Sprint(n)
	})
	if c := usageCounts(t, a.conn); c != (counts{1000, 1000, 1000}) {
		t.Fatalf("counts = %+v, want 1000 each", c)
	}
}

// Keys that change are in the audit: every KeyUpdated with the fields it
// changed (and the new permissions when those changed), every disable and
// enable with its reason. Before, analytics dead-lettered them, and the
// audit trail lost every change of a key.
func TestAuditOfKeysThatChange(t *testing.T) {
	t.Parallel()
	tj := MustStartJetStream(t)
	a := MustOpen(t, Config{JetStream: tj.js})
	MustStart(t, a)
	ctx := context.Background()
	t0 := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	h := func(typ events.Type, at time.Time) events.Header {
		hd := events.NewHeader(typ, "key_c1", "alice@example.com", at)
		hd.ActorIP = "192.0.2.7"
		return hd
	}
	up := &events.KeyUpdated{Header: h(events.TypeKeyUpdated, t0.Add(time.Minute)), Prev: events.Prev{Prev: 1},
		Changed: []string{events.FieldPermissions, events.FieldMetadata}, Reason: "least privilege",
		Permissions: []string{"storage:read"}, Metadata: json.RawMessage(`{"plan":"pro"}`)}
	off := &events.KeyDisabled{Header: h(events.TypeKeyDisabled, t0.Add(2*time.Minute)), Prev: events.Prev{Prev: 2}, Reason: "investigating"}
	on := &events.KeyEnabled{Header: h(events.TypeKeyEnabled, t0.Add(3*time.Minute)), Prev: events.Prev{Prev: 3}, Reason: "cleared"}
	for _, ev := range []events.Event{created("key_c1", "acme", keyledger.EnvLive, t0), up, off, on} {
		publishKeyEvent(t, tj.js, ev)
	}
	var evs []AuditEvent
	waitFor(t, 30*time.Second, "4 audit events", func() (bool, string) {
		var err error
		evs, err = a.Audit(ctx, AuditQuery{KeyID: "key_c1"})
		if err != nil {
			return false, err.Error()
		}
		return len(evs) == 4, fmt.Sprint(len(evs))
	})
	u := evs[1]
	if u.Type != "KeyUpdated" || u.Reason != "least privilege" || !slices.Equal(u.Changed, []string{"permissions", "metadata"}) ||
		!slices.Equal(u.Permissions, []string{"storage:read"}) || u.ActorIP != "192.0.2.7" {
		t.Errorf("update = %+v", u)
	}
	if evs[2].Type != "KeyDisabled" || evs[2].Reason != "investigating" || evs[3].Type != "KeyEnabled" || evs[3].Permissions != nil {
		t.Errorf("disable, enable = %+v, %+v", evs[2], evs[3])
	}
	for _, tc := range []struct {
		typ  string
		want int
	}{{"updated", 1}, {"KeyDisabled", 1}, {"enabled", 1}} {
		got, err := a.Audit(ctx, AuditQuery{KeyID: "key_c1", Type: tc.typ})
		if err != nil || len(got) != tc.want {
			t.Errorf("Audit(type %s) = %d events, %v", tc.typ, len(got), err)
		}
	}
}
