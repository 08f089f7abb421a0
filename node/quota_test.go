package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/analytics/analyticstest"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/node"
	"github.com/keyledger/keyledger/node/nodetest"
	"github.com/keyledger/keyledger/quota"
)

// testLease is the largest lease the quota tests' nodes draw: the bounds
// they assert are in its units.
const testLease = 100

// hammer sends n forward-auth requests with key, spread over every node of
// c with workers goroutines per node, and returns how many each status
// got. It stops early at stop(), if set.
func hammer(t *testing.T, c *node.Cluster, key string, n, workers int, hdr map[string]string, stop func() bool) map[int]int {
	t.Helper()
	var mu sync.Mutex
	codes := map[int]int{}
	var left atomic.Int64
	left.Store(int64(n))
	var wg sync.WaitGroup
	for i := range c.Nodes {
		if c.Nodes[i] == nil {
			continue
		}
		url := c.Nodes[i].URL() + "/v1/authz"
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cl := &http.Client{Timeout: 10 * time.Second}
				for left.Add(-1) >= 0 && (stop == nil || !stop()) {
					req, _ := http.NewRequest("GET", url, nil)
					req.Header.Set("Authorization", "Bearer "+key)
					for k, v := range hdr {
						req.Header.Set(k, v)
					}
					resp, err := cl.Do(req)
					if err != nil {
						t.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					mu.Lock()
					codes[resp.StatusCode]++
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	return codes
}

// TestCluster_quotas: three nodes of one cluster, each verifying, enforce a
// plan's quota, a key's credits and a fleet-wide rate limit together, with
// the bounds the README states; ClickHouse counts exactly what passed.
func TestCluster_quotas(t *testing.T) {
	addr := analyticstest.Addr(t)
	dsn := analyticstest.DSN(addr, analyticstest.MustTempDatabase(t, addr))
	logs := &nodetest.SyncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the nodes' logs:\n%s", logs.String())
		}
	})
	c := MustStartClusterWith(t, 3, t.TempDir(), slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn})), func(cfgs []node.Config) {
		for i := range cfgs {
			cfgs[i].LeaseMax, cfgs[i].FleetSize = testLease, 3
		}
		cfgs[0].ClickHouse = dsn
	})
	for i := range c.Nodes {
		nodetest.WaitReady(t, caller(t, c, i))
	}
	a := caller(t, c, 0)
	call := func(method, path, body string, want int) []byte {
		t.Helper()
		code, _, resp := a.Call(method, path, a.Token, body)
		if code != want {
			t.Fatalf("%s %s: %d %s, want %d", method, path, code, resp, want)
		}
		return resp
	}
	newKey := func(body string) string {
		t.Helper()
		var k createdKey
		if err := json.Unmarshal(call("POST", "/v1/keys?wait=all", body, 201), &k); err != nil {
			t.Fatal(err)
		}
		return k.Key
	}
	call("POST", "/v1/plans", `{"name":"small","monthly_quota":10000}`, 201)
	call("PUT", "/v1/owners/acme", `{"plan":"small"}`, 201)
	// The owner's quota, its keys together.
	acme := newKey(`{"name":"acme-1","environment":"live","owner":"acme"}`)

	exact := func(owner string, want int) {
		t.Helper()
		nodetest.WaitFor(t, 60*time.Second, fmt.Sprintf("ClickHouse to count %d valid verifications of %s", want, owner), func() bool {
			var q struct {
				ExactUsed *int `json:"exact_used"`
			}
			code, _, body := a.Call("GET", "/v1/owners/"+owner+"/quota", a.Token, "")
			return code == 200 && json.Unmarshal(body, &q) == nil && q.ExactUsed != nil && *q.ExactUsed == want
		})
	}

	t.Run("three nodes hammering a 10,000 quota pass at most 10,000, and at least 10,000 less the leases held", func(t *testing.T) {
		codes := hammer(t, c, acme, 12_000, 4, nil, nil)
		ok := codes[200]
		if ok > 10_000 || ok < 10_000-3*testLease || codes[200]+codes[429] != 12_000 {
			t.Fatalf("statuses %v: want 200s in [%d, 10000], the rest 429", codes, 10_000-3*testLease)
		}
		var q keyledger.Quota
		if err := json.Unmarshal(call("GET", "/v1/owners/acme/quota", "", 200), &q); err != nil {
			t.Fatal(err)
		}
		if q.Limit != 10_000 || q.Used > 10_000 || q.Used < int64(ok) || q.Plan != "small" {
			t.Fatalf("quota %+v after %d passed", q, ok)
		}
		// 429 says why, and until when.
		code, hdr, body := caller(t, c, 1).Call("GET", "/v1/authz", acme, "")
		var e struct {
			Error struct{ Code, Reason string }
		}
		if code != 429 || json.Unmarshal(body, &e) != nil || e.Error.Reason != "quota_exceeded" || hdr.Get("Retry-After") == "" {
			t.Fatalf("over quota: %d %v %s", code, hdr, body)
		}
		exact("acme", ok)
		code, _, metrics := caller(t, c, 0).Call("GET", "/metrics", "", "")
		if code != 200 || !strings.Contains(string(metrics), "keyledger_quota_leases_drawn_total ") ||
			!strings.Contains(string(metrics), `keyledger_verify_total{outcome="quota_exceeded"}`) {
			t.Fatalf("metrics: %d, no lease or quota_exceeded figures", code)
		}
	})

	t.Run("1,000 credits across three nodes", func(t *testing.T) {
		call("PUT", "/v1/owners/credited", `{"plan":""}`, 201)
		key := newKey(`{"name":"credited","environment":"live","owner":"credited","credits":{"remaining":1000}}`)
		codes := hammer(t, c, key, 1500, 2, nil, nil)
		if ok := codes[200]; ok > 1000 || ok < 1000-3*testLease || ok+codes[429] != 1500 {
			t.Fatalf("statuses %v: want 200s in [%d, 1000]", codes, 1000-3*testLease)
		}
		code, _, body := a.Call("POST", "/v1/verify", "", `{"key":"`+key+`"}`)
		if code != 429 || !jsonHas(body, "reason", "credits_exhausted") {
			t.Fatalf("verify without credits: %d %s", code, body)
		}
		exact("credited", codes[200])
	})

	t.Run("a fleet-wide 50/s over 10 s passes 500 ± one window", func(t *testing.T) {
		key := newKey(`{"name":"rated","environment":"live","owner":"rated","rate_limit":{"per_second":50,"burst":50}}`)
		// 10 s span ten windows and parts of an eleventh: 500 to 550
		// when every window is spent whole.
		end := time.Now().Add(10 * time.Second)
		codes := hammer(t, c, key, 1<<30, 2, nil, func() bool { return !time.Now().Before(end) })
		if ok := codes[200]; ok < 450 || ok > 550+2*testLease/10 {
			t.Fatalf("statuses %v over 10 s: want 500 ± 50 passed (not 3 × 500)", codes)
		}
		t.Logf("50/s × 10 s across 3 nodes: %v", codes)
	})

	t.Run("a node that stops holding a lease wastes at most the lease; the others pass the rest", func(t *testing.T) {
		const limit = 3000
		meters := make([]*quota.Meter, 3)
		counters := make([]*quota.Counter, 3)
		for i := range meters {
			store, err := nats.OpenCounters(context.Background(), c.Nodes[i].JetStream())
			if err != nil {
				t.Fatal(err)
			}
			meters[i] = quota.New(quota.Config{Store: store, Nodes: 3, MaxLease: testLease})
			meters[i].Start(context.Background())
			counters[i] = meters[i].Counter(quota.Spec{Kind: quota.KindQuota, Key: "quota.crash-test",
				Window: func(now time.Time) quota.Window { return quota.Month(now, limit) }})
		}
		// Meter 2 "crashes" after 500 units: it is never closed until the
		// end, so its lease is never returned.
		var passed atomic.Int64
		var wg sync.WaitGroup
		for i := range counters {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; ; n++ {
					if i == 2 && n == 500 {
						return
					}
					v, _ := counters[i].Take(time.Now(), 1)
					if v == quota.Exhausted {
						return
					}
					if v == quota.Pass {
						passed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		if p := passed.Load(); p > limit || p < limit-testLease {
			t.Fatalf("passed %d of %d with one meter holding a lease: want within one lease (%d)", p, limit, testLease)
		}
		for _, m := range meters[:2] {
			m.Close(context.Background())
		}
		defer meters[2].Close(context.Background())
	})

	t.Run("month rollover and daily refill on the fleet's counters, with an injected clock", func(t *testing.T) {
		var now atomic.Int64
		now.Store(time.Date(2026, 12, 31, 23, 59, 0, 0, time.UTC).UnixNano())
		clock := func() time.Time { return time.Unix(0, now.Load()).UTC() }
		store, err := nats.OpenCounters(context.Background(), c.Nodes[1].JetStream())
		if err != nil {
			t.Fatal(err)
		}
		m := quota.New(quota.Config{Store: store, Nodes: 1, MaxLease: testLease, Now: clock})
		m.Start(context.Background())
		defer m.Close(context.Background())
		q := m.Counter(quota.Spec{Kind: quota.KindQuota, Key: "quota.rollover-test", Window: func(t time.Time) quota.Window { return quota.Month(t, 5) }})
		cr := &keyledger.Credits{Remaining: 2, Refill: &keyledger.Refill{Interval: keyledger.RefillDaily, Amount: 3}}
		setAt := clock()
		cc := m.Counter(quota.Spec{Kind: quota.KindCredits, Key: "credits.rollover-test.1", Window: func(t time.Time) quota.Window { return quota.CreditsWindow(t, cr, 1, setAt) }})
		count := func(c *quota.Counter) (n int) {
			for range 10 {
				if v, _ := c.Take(clock(), 1); v == quota.Pass {
					n++
				}
			}
			return n
		}
		if a, b := count(q), count(cc); a != 5 || b != 2 {
			t.Fatalf("31 December: %d of the quota's 5 and %d of the 2 credits passed", a, b)
		}
		now.Add(int64(2 * time.Minute))
		if a, b := count(q), count(cc); a != 5 || b != 3 {
			t.Fatalf("1 January: %d of a new month's 5 and %d of the refill's 3 passed", a, b)
		}
		v, _, err := store.Get(context.Background(), "quota.rollover-test")
		if err != nil || v.Period != "2027-01" || v.Used != 5 {
			t.Fatalf("the fleet's counter: %+v %v", v, err)
		}
	})

	t.Run("cut off from the counters, a node spends its lease, then answers 503", func(t *testing.T) {
		call("PUT", "/v1/owners/cutoff", `{"plan":"small"}`, 201)
		key := newKey(`{"name":"cut","environment":"live","owner":"cutoff"}`)
		if code, _, body := caller(t, c, 0).Call("GET", "/v1/authz", key, ""); code != 200 {
			t.Fatalf("first verification: %d %s", code, body)
		}
		// Without two of three servers JetStream has no quorum: the
		// counters cannot be reached from node 1.
		stop(t, c, 1)
		stop(t, c, 2)
		codes := hammer(t, c, key, 2*testLease+50, 1, nil, nil)
		if codes[200] > testLease-1 || codes[503] == 0 {
			t.Fatalf("statuses %v: want at most the lease's %d other units passed, then 503", codes, testLease-1)
		}
	})
}

func jsonHas(body []byte, field, want string) bool {
	var e struct {
		Error map[string]any `json:"error"`
	}
	return json.Unmarshal(body, &e) == nil && e.Error[field] == want
}
