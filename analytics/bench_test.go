package analytics

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkIngest measures sustained ingest from USAGE into ClickHouse: a
// backlog of events (KEYLEDGER_BENCH_EVENTS, default 500,000) is published
// first, then each iteration drains it through a fresh durable consumer
// into a fresh database, until every event is stored. It reports the
// sustained rate (10% to 90% of the backlog) and the end-to-end rate.
//
//	go test ./analytics -run '^$' -bench BenchmarkIngest -benchtime 1x
func BenchmarkIngest(b *testing.B) {
	n := 500_000
	if s := os.Getenv("KEYLEDGER_BENCH_EVENTS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	tj := MustStartJetStream(b)
	now := time.Now().UTC()
	outcomes := keyledger.Outcomes()
	const chunk = 50_000
	evs := make([]*events.KeyUsed, 0, chunk)
	for i := range n {
		ev := used(fmt.Sprintf("key_%d", i%1000), keyledger.EnvLive, outcomes[i%len(outcomes)],
			fmt.Sprintf("10.%d.%d.%d", i%7, i%251, i%13), now.Add(-time.Duration(i)*time.Millisecond))
		ev.UserAgent = "Mozilla/5.0 (X11; Linux x86_64) keyledger-bench/1.0"
		evs = append(evs, ev)
		if len(evs) == chunk || i == n-1 {
			publishUsageBatches(b, tj.js, 1024, evs...) // as verifier nodes publish
			evs = evs[:0]
		}
	}
	if p := os.Getenv("KEYLEDGER_BENCH_CPUPROFILE"); p != "" {
		// Profile the ingest only, not the publishing above.
		f, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	b.ResetTimer()
	var total, sustained time.Duration
	for i := range b.N {
		b.StopTimer()
		a := MustOpen(b, Config{JetStream: tj.js, ConsumerPrefix: fmt.Sprintf("bench%d", i), Registerer: prometheus.NewRegistry()})
		// Woken after each stored batch (the rows metric already counts
		// it) instead of polling the metric.
		stored := make(chan struct{}, 1)
		a.ingesters[0].testAfterWrite = func(int) bool {
			select {
			case stored <- struct{}{}:
			default:
			}
			return true
		}
		b.StartTimer()
		start := time.Now()
		MustStart(b, a)
		deadline := time.NewTimer(10 * time.Minute)
		var t10, t90 time.Time
		for {
			got := metricValue(a.metrics.rows.WithLabelValues(nats.UsageStream))
			if t10.IsZero() && got >= 0.1*float64(n) {
				t10 = time.Now()
			}
			if t90.IsZero() && got >= 0.9*float64(n) {
				t90 = time.Now()
			}
			if got >= float64(n) {
				break
			}
			select {
			case <-stored:
			case <-deadline.C:
				b.Fatalf("ingested %v of %d", got, n)
			}
		}
		deadline.Stop()
		total += time.Since(start)
		sustained += t90.Sub(t10)
		b.StopTimer()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		var got uint64
		if err := a.conn.QueryRow(ctx, "SELECT uniqExact(event_id) FROM usage_events").Scan(&got); err != nil || got != uint64(n) {
			b.Fatalf("stored %d events (%v), want %d", got, err, n)
		}
		a.Close(ctx)
		cancel()
		b.StartTimer()
	}
	// Sustained: between 10% and 90% of the backlog, so neither the start
	// (consumer creation, first fetch) nor the last partial batch (which
	// waits FlushInterval) counts.
	b.ReportMetric(0.8*float64(n)*float64(b.N)/sustained.Seconds(), "events/s")
	b.ReportMetric(float64(n)*float64(b.N)/total.Seconds(), "events/s-end-to-end")
}
