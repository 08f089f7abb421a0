package analytics

import (
	"context"
	"sync"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/analytics/analyticstest"
	"github.com/keyledger/keyledger/events"
)

func TestMigrationsConcurrentAndRepeated(t *testing.T) {
	t.Parallel()
	dsn := newDSN(t, analyticstest.Addr(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const nodes = 4
	var wg sync.WaitGroup
	errs := make([]error, nodes)
	opened := make([]*Analytics, nodes)
	for i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			opened[i], errs[i] = Open(ctx, Config{DSN: dsn, Logger: testLogger(t)})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("node %d: Open: %v", i, err)
		}
		defer opened[i].Close(ctx)
	}
	a := opened[0]
	tables := func() []string {
		var names []string
		rows, err := a.conn.Query(ctx, `SELECT name FROM system.tables WHERE database = ? ORDER BY name`, a.db)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var n string
			rows.Scan(&n)
			names = append(names, n)
		}
		return names
	}
	before := tables()
	want := []string{"alerts", "incidents", "key_events", "schema_migrations", "usage_events", "usage_key_ip_hour", "usage_key_ip_hour_mv", "usage_minute", "usage_minute_mv"}
	if len(before) != len(want) {
		t.Fatalf("tables = %v, want %v", before, want)
	}
	// Once more, on a database already at the current version.
	again := MustOpen(t, Config{DSN: dsn})
	if got := tables(); len(got) != len(before) {
		t.Fatalf("tables after re-run = %v", got)
	}
	applied, err := again.appliedVersions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != len(migrations) || !applied[schemaVersion()] {
		t.Errorf("applied versions = %v", applied)
	}
}

func TestRetentionDropsOldPartitions(t *testing.T) {
	t.Parallel()
	tj := MustStartJetStream(t)
	now := time.Date(2026, 6, 15, 0, 0, 0, 0, time.UTC)
	a := MustOpen(t, Config{JetStream: tj.js, Now: func() time.Time { return now }})
	a.cfg.RetentionMonths = 3 // April, May, June kept
	MustStart(t, a)
	var evs []*events.KeyUsed
	for m := 1; m <= 6; m++ {
		evs = append(evs, used("key_old", keyledger.EnvLive, keyledger.OutcomeValid, "10.2.0.1", time.Date(2026, time.Month(m), 3, 0, 0, 0, 0, time.UTC)))
	}
	publishUsage(t, tj.js, evs...)
	waitIngested(t, a, 6, 30*time.Second)
	ctx := context.Background()
	dropped, err := a.ApplyRetention(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(dropped) != 6 { // 3 months × (usage_events, usage_key_ip_hour)
		t.Errorf("dropped = %v", dropped)
	}
	c := usageCounts(t, a.conn)
	if c.Distinct != 3 || c.Rollup != 6 {
		t.Errorf("after retention: %+v, want 3 raw rows and the 6 in rollups", c)
	}
	if again, err := a.ApplyRetention(ctx); err != nil || len(again) != 0 {
		t.Errorf("second run dropped %v, %v", again, err)
	}
}
