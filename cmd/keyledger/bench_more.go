package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/analytics"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/projector"
	"github.com/keyledger/keyledger/verifier"
	"github.com/prometheus/client_golang/prometheus"
)

// benchVerify times in-process verification of a valid key and of a key
// with a bad checksum against a table of --keys entries.
func benchVerify(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("bench verify", flag.ContinueOnError)
	n := fs.Int("keys", 100_000, "keys in the table")
	dur := fs.Duration("duration", 2*time.Second, "how long each case runs")
	asJSON := fs.Bool("json", false, "print one JSON object")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	p := projector.New(nil, projector.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	at := time.Now().UTC()
	var valid string
	for i := 0; i < *n; i++ {
		secret, err := keyledger.DefaultFormat.New(keyledger.EnvLive, rand.Reader)
		if err != nil {
			return err
		}
		if i == 0 {
			valid = secret
		}
		ev := &events.KeyCreated{
			Header:      events.NewHeader(events.TypeKeyCreated, events.NewKeyID(), "bench", at),
			Environment: keyledger.EnvLive, Permissions: []string{"workflows:read"}, Owner: "bench",
			Hash: keyledger.HashSecret(secret).String(),
		}
		p.Apply(uint64(i+1), ev)
	}
	v := verifier.New(p.Table(), verifier.Config{Environment: keyledger.EnvLive})
	bad := []byte(valid)
	bad[len(bad)-1] ^= 1
	time1 := func(key, perm string, want keyledger.Outcome) (float64, error) {
		req := &verifier.Request{Key: key, Permission: perm}
		if o := v.Verify(req).Outcome; o != want {
			return 0, fmt.Errorf("bench verify: outcome %v, want %v", o, want)
		}
		var ops int
		start := time.Now()
		for time.Since(start) < *dur {
			for range 10_000 {
				v.Verify(req)
			}
			ops += 10_000
		}
		return float64(time.Since(start).Nanoseconds()) / float64(ops), nil
	}
	validNS, err := time1(valid, "workflows:read", keyledger.OutcomeValid)
	if err != nil {
		return err
	}
	badNS, err := time1(string(bad), "", keyledger.OutcomeMalformed)
	if err != nil {
		return err
	}
	return printBench(stdout, *asJSON, benchResult{
		Name: "verify_valid_ns", Value: validNS, Unit: "ns/op",
		Extra: map[string]float64{"bad_checksum_ns": badNS, "keys": float64(*n)},
		Notes: "one goroutine; see BenchmarkVerify for allocations and the parallel case",
	}, [][]string{
		{"keys in table", fmt.Sprint(*n)},
		{"valid key", fmt.Sprintf("%.0f ns/op", validNS)},
		{"bad checksum", fmt.Sprintf("%.0f ns/op", badNS)},
	})
}

// benchIngest publishes --events KeyUsed events to USAGE and times their
// ingestion into ClickHouse by package analytics.
func benchIngest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench ingest", flag.ContinueOnError)
	n := fs.Int("events", 500_000, "events in the backlog")
	addr := fs.String("clickhouse", envOr("KEYLEDGER_CLICKHOUSE", "127.0.0.1:19000"), "ClickHouse host:port (native); scripts/clickhouse.sh start runs one")
	asJSON := fs.Bool("json", false, "print one JSON object")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	_, js, nc, stop, err := benchJetStream(ctx, "keyledger-ingest-")
	if err != nil {
		return err
	}
	defer stop()
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
	if err := up.Close(ctx); err != nil {
		return err
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
	defer a.Close(context.Background())
	start := time.Now()
	if err := a.Start(ctx); err != nil {
		return err
	}
	var t10, t90 time.Time
	for {
		got := gatherCounter(reg, "keyledger_analytics_ingested_rows_total", "stream", nats.UsageStream)
		if t10.IsZero() && got >= 0.1*float64(*n) {
			t10 = time.Now()
		}
		if t90.IsZero() && got >= 0.9*float64(*n) {
			t90 = time.Now()
		}
		if got >= float64(*n) {
			break
		}
		if time.Since(start) > 10*time.Minute {
			return fmt.Errorf("ingested %v of %d in 10 minutes", got, *n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	total := time.Since(start)
	sustained := 0.8 * float64(*n) / t90.Sub(t10).Seconds()
	return printBench(stdout, *asJSON, benchResult{
		Name: "ingest_events_per_second", Value: sustained, Unit: "events/s",
		Extra: map[string]float64{"events": float64(*n), "end_to_end_events_per_second": float64(*n) / total.Seconds()},
		Notes: "USAGE backlog into ClickHouse, 10%→90% of the backlog; NATS in process, ClickHouse on the same machine",
	}, [][]string{
		{"events", fmt.Sprint(*n)},
		{"sustained (10%→90%)", fmt.Sprintf("%.0f events/s", sustained)},
		{"end to end", fmt.Sprintf("%.0f events/s in %.2f s", float64(*n)/total.Seconds(), total.Seconds())},
	})
}

// dropDatabase removes the benchmark's database.
func dropDatabase(addr, db string) {
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, Protocol: clickhouse.Native})
	if err != nil {
		return
	}
	defer conn.Close()
	conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db)
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
