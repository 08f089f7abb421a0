package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/keyledger/keyledger/internal/cli"

	"github.com/ClickHouse/clickhouse-go/v2"
	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/analytics"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
	"github.com/prometheus/client_golang/prometheus"
)

// ingest publishes --events KeyUsed events to USAGE and times their
// ingestion into ClickHouse by package analytics.
func ingest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench ingest", stderr)
	n := fs.Int("events", 500_000, "events in the backlog")
	addr := fs.String("clickhouse", cli.EnvOr("KEYLEDGER_CLICKHOUSE", "127.0.0.1:19000"), "ClickHouse host:port (native); scripts/clickhouse.sh start runs one")
	asJSON := fs.Bool("json", false, "print one JSON object")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *n < 1 {
		return usageErr("--events must be positive")
	}
	l, err := startJetStream(ctx, "keyledger-ingest-", "")
	if err != nil {
		return err
	}
	defer l.stop()
	js, nc := l.js, l.nc
	fmt.Fprintf(stderr, "publishing %d KeyUsed events…\n", *n)
	// The events go through the verifier nodes' own publisher, so USAGE
	// holds the batches it writes in production.
	up := nats.NewUsagePublisher(js, nats.UsageOptions{Buffer: *n,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	outcomes := keyledger.Outcomes()
	now := time.Now().UTC()
	for i := 0; i < *n; i++ {
		up.Record(events.KeyUsed{
			Header:      events.Header{Type: events.TypeKeyUsed, V: 1, EventID: events.NewID(), At: now.Add(-time.Duration(i) * time.Millisecond), KeyID: fmt.Sprintf("key_%d", i%1000)},
			Environment: keyledger.EnvLive, Outcome: outcomes[i%len(outcomes)], IP: fmt.Sprintf("10.%d.%d.%d", i%7, i%251, i%13),
			UserAgent: "keyledger-bench/1.0", Method: "GET", Path: "/v1/x", Node: "bench", LatencyUS: 12,
		})
	}
	up.Start(ctx)
	// Close publishes the whole backlog and waits for its acknowledgements;
	// the bound is for a JetStream that stopped answering.
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	err = up.Close(cctx)
	cancel()
	if err != nil {
		return fmt.Errorf("bench ingest: publishing the backlog: %w", err)
	}
	if st := up.Stats(); st.Published != uint64(*n) {
		return fmt.Errorf("bench ingest: %d of %d events stored in USAGE (%+v)", st.Published, *n, st)
	}

	var b [6]byte
	rand.Read(b[:])
	db := "kl_bench_" + hex.EncodeToString(b[:])
	reg := prometheus.NewRegistry()
	a, err := analytics.Open(ctx, analytics.Config{
		DSN: "clickhouse://" + *addr + "/" + db, JetStream: js, NATS: nc, DetectInterval: -1, RetentionMonths: -1,
		Registerer: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return err
	}
	defer dropDatabase(*addr, db)
	defer closeWithin(a.Close)
	start := time.Now()
	if err := a.Start(ctx); err != nil {
		return err
	}
	// Ingestion has no completion to wait on, only its counter: polled
	// every 5 ms, fine enough for a 10%→90% window of a second or more.
	var t10, t90 time.Time
	var got float64
	if err := waitFor(ctx, 10*time.Minute, 5*time.Millisecond, "ingestion", func() bool {
		got = gatherCounter(reg, "keyledger_analytics_ingested_rows_total", "stream", nats.UsageStream)
		if t10.IsZero() && got >= 0.1*float64(*n) {
			t10 = time.Now()
		}
		if t90.IsZero() && got >= 0.9*float64(*n) {
			t90 = time.Now()
		}
		return got >= float64(*n)
	}); err != nil {
		return fmt.Errorf("ingested %v of %d events: %w", got, *n, err)
	}
	total := time.Since(start)
	sustained := 0.8 * float64(*n) / t90.Sub(t10).Seconds()
	return report(stdout, *asJSON, Result{
		Name: "ingest_events_per_second", Value: sustained, Unit: "events/s",
		Extra: map[string]float64{"events": float64(*n), "end_to_end_events_per_second": float64(*n) / total.Seconds()},
		Notes: "USAGE backlog into ClickHouse, 10%→90% of the backlog; NATS in process, ClickHouse on the same machine",
	}, [][]string{
		{"events", fmt.Sprint(*n)},
		{"sustained (10%→90%)", fmt.Sprintf("%.0f events/s", sustained)},
		{"end to end", fmt.Sprintf("%.0f events/s in %.2f s", float64(*n)/total.Seconds(), total.Seconds())},
	})
}

// dropDatabase removes the benchmark's database, so that runs leave
// nothing behind in a ClickHouse that is also the tests'. It is best
// effort: the figures are printed by then.
func dropDatabase(addr, db string) {
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, Protocol: clickhouse.Native, DialTimeout: 5 * time.Second})
	if err != nil {
		return
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db)
}

// gatherCounter reads one labelled counter from a registry.
func gatherCounter(reg *prometheus.Registry, name, label, value string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
