package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/keyledger/keyledger/analytics/analyticstest"
)

// TestFaults_clickHouseOutage kills ClickHouse (SIGKILL) under a
// verification load on a 3-node cluster with analytics, and starts it
// again: verification never notices, and every verification a node
// answered is counted in ClickHouse exactly once.
func TestFaults_clickHouseOutage(t *testing.T) {
	ch := analyticstest.StartPrivate(t)
	c := startCluster(t, clusterOptions{lease: *lease, clickhouse: "clickhouse://" + ch.Addr + "/keyledger_faults"})
	const owner = "faults-clickhouse"
	h := newHistory()
	ctx, cancel := context.WithCancel(context.Background())
	wg := workload(ctx, c, h, owner)
	stop := func() { cancel(); wg.Wait() }
	defer stop()
	begin := time.Now()
	waitUntil(t, 30*time.Second, "30 acknowledged creates", func() bool { return h.count() >= 30 })
	var outage time.Duration
	for start := time.Now(); ; {
		ch.Kill(t)
		d := h.down("clickhouse")
		hold(5 * time.Second)
		if err := ch.Run("start"); err != nil {
			t.Fatal(err)
		}
		h.up(d)
		outage += d.end.Sub(d.start)
		hold(2 * time.Second)
		if time.Since(start) >= *duration {
			break
		}
	}
	stop()

	r := h.check(t, c, "clickhouse_outage", owner)
	t.Log(r.String())
	for _, p := range r.problems {
		t.Error(p)
	}
	if r.Lost+r.Duplicates+r.Wrong > 0 {
		t.Fatal("the ClickHouse outage broke a promise")
	}
	// Every verification that got an answer was recorded: count them,
	// and wait for ClickHouse to hold exactly as many.
	answered := 0
	h.mu.Lock()
	for _, o := range h.ops {
		if o.kind == "verify" && o.code != 0 {
			answered++
		}
	}
	h.mu.Unlock()
	// The end check verifies every key once more on every node.
	answered += 3 * r.Creates
	q := url.Values{"owner": {owner}, "interval": {"day"},
		"from": {begin.Add(-time.Hour).UTC().Format(time.RFC3339)}, "to": {time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}}
	var counted uint64
	waitUntil(t, 90*time.Second, "ClickHouse to count every verification", func() bool {
		code, b := c.do("GET", c.nodes[0], "/v1/usage?"+q.Encode(), c.token, "")
		var u struct {
			Points []struct{ Count uint64 }
		}
		if code != 200 || json.Unmarshal(b, &u) != nil {
			return false
		}
		counted = 0
		for _, p := range u.Points {
			counted += p.Count
		}
		if counted > uint64(answered) {
			t.Fatalf("ClickHouse counts %d verifications, more than the %d answered: duplicates", counted, answered)
		}
		return counted == uint64(answered)
	})
	line := fmt.Sprintf("%s | usage counted in ClickHouse: %d of %d answered verifications, through %.1f s of ClickHouse crashed", r, counted, answered, outage.Seconds())
	t.Log(line)
	addReport(line)
}
