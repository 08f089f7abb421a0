package quota_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/quota"
	"github.com/keyledger/keyledger/quota/quotatest"
)

// clock is an injected clock.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock    { c := &clock{}; c.ns.Store(t.UnixNano()); return c }
func (c *clock) Now() time.Time      { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) Add(d time.Duration) { c.ns.Add(int64(d)) }

func mustStart(tb testing.TB, cfg quota.Config) *quota.Meter {
	tb.Helper()
	m := quota.New(cfg)
	m.Start(context.Background())
	tb.Cleanup(func() { m.Close(context.Background()) })
	return m
}

func monthly(limit int64) quota.Spec {
	return quota.Spec{Kind: quota.KindQuota, Key: "quota.owner_x", Owner: "x", Window: func(now time.Time) quota.Window { return quota.Month(now, limit) }}
}

func TestCounter(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

	t.Run("passes exactly the limit, then says when it resets", func(t *testing.T) {
		st, clk := quotatest.NewStore(), newClock(t0)
		m := mustStart(t, quota.Config{Store: st, Now: clk.Now, Nodes: 1})
		c := m.Counter(monthly(100))
		pass := 0
		for range 150 {
			v, retry := c.Take(clk.Now(), 1)
			switch v {
			case quota.Pass:
				pass++
			case quota.Exhausted:
				if want := keyledger.MonthStart(t0).AddDate(0, 1, 0).Sub(clk.Now()); retry != want {
					t.Fatalf("retry after %v, want %v (the month's end)", retry, want)
				}
			default:
				t.Fatalf("verdict %d", v)
			}
		}
		if pass != 100 || st.Value("quota.owner_x").Used != 100 {
			t.Fatalf("passed %d, counter %d; want 100 and 100", pass, st.Value("quota.owner_x").Used)
		}
	})

	t.Run("three nodes hammering one counter pass exactly the limit", func(t *testing.T) {
		st, clk := quotatest.NewStore(), newClock(t0)
		var passed atomic.Int64
		var wg sync.WaitGroup
		for range 3 {
			m := mustStart(t, quota.Config{Store: st, Now: clk.Now, Nodes: 3, MaxLease: 64})
			c := m.Counter(monthly(10_000))
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 5000 {
						if v, _ := c.Take(clk.Now(), 1); v == quota.Pass {
							passed.Add(1)
						}
					}
				}()
			}
		}
		wg.Wait()
		if passed.Load() != 10_000 || st.Value("quota.owner_x").Used != 10_000 {
			t.Fatalf("passed %d, counter %d; want exactly 10000", passed.Load(), st.Value("quota.owner_x").Used)
		}
	})

	t.Run("a new month starts from zero", func(t *testing.T) {
		st, clk := quotatest.NewStore(), newClock(time.Date(2026, 12, 31, 23, 59, 0, 0, time.UTC))
		m := mustStart(t, quota.Config{Store: st, Now: clk.Now, Nodes: 1})
		c := m.Counter(monthly(10))
		for range 10 {
			if v, _ := c.Take(clk.Now(), 1); v != quota.Pass {
				t.Fatal("refused within the quota")
			}
		}
		if v, _ := c.Take(clk.Now(), 1); v != quota.Exhausted {
			t.Fatalf("verdict %d over the quota", v)
		}
		clk.Add(time.Minute)
		if v, _ := c.Take(clk.Now(), 1); v != quota.Pass {
			t.Fatalf("verdict %d in January", v)
		}
		got := st.Value("quota.owner_x")
		if got.Period != "2027-01" || got.Limit != 10 {
			t.Fatalf("counter %+v", got)
		}
	})

	t.Run("a node whose clock lags never resets a counter already in the next month", func(t *testing.T) {
		// Before, a draw for December over a January counter read its
		// used as 0 and wrote December's count over it: a node with a
		// slow clock could hand every other node a fresh quota.
		st := quotatest.NewStore()
		jan, dec := newClock(time.Date(2027, 1, 1, 0, 0, 5, 0, time.UTC)), newClock(time.Date(2026, 12, 31, 23, 59, 59, 0, time.UTC))
		ahead := mustStart(t, quota.Config{Store: st, Now: jan.Now, Nodes: 1, MinLease: 10})
		behind := mustStart(t, quota.Config{Store: st, Now: dec.Now, Nodes: 1, MinLease: 10, Wait: 50 * time.Millisecond})
		a, b := ahead.Counter(monthly(100)), behind.Counter(monthly(100))
		if v, _ := a.Take(jan.Now(), 1); v != quota.Pass {
			t.Fatal("January's first take refused")
		}
		if v, _ := b.Take(dec.Now(), 1); v == quota.Pass {
			t.Fatal("the lagging node drew December's units from a January counter")
		}
		if got := st.Value("quota.owner_x"); got.Period != "2027-01" || got.Used != 10 {
			t.Fatalf("counter %+v after the lagging node's draw, want January's 10 untouched", got)
		}
	})

	t.Run("cut off, a node spends what it holds, then fails closed or open", func(t *testing.T) {
		for _, open := range []bool{false, true} {
			st, clk := quotatest.NewStore(), newClock(t0)
			m := mustStart(t, quota.Config{Store: st, Now: clk.Now, Nodes: 1, MinLease: 8, MaxLease: 8, Wait: 50 * time.Millisecond})
			spec := monthly(1000)
			spec.FailOpen = func() bool { return open }
			c := m.Counter(spec)
			if v, _ := c.Take(clk.Now(), 1); v != quota.Pass {
				t.Fatal("first take refused")
			}
			st.Down.Store(true)
			held := 0
			for {
				v, _ := c.Take(clk.Now(), 1)
				if v != quota.Pass {
					want := quota.Down
					if open {
						want = quota.Open
					}
					if v != want {
						t.Fatalf("open=%v: verdict %d, want %d", open, v, want)
					}
					break
				}
				held++
			}
			if held != 7 {
				t.Fatalf("spent %d units of the 7 left in hand", held)
			}
		}
	})

	t.Run("a refund goes back to the lease", func(t *testing.T) {
		st, clk := quotatest.NewStore(), newClock(t0)
		m := mustStart(t, quota.Config{Store: st, Now: clk.Now, Nodes: 1})
		c := m.Counter(monthly(3))
		for range 3 {
			c.Take(clk.Now(), 1)
		}
		c.Refund(1)
		if v, _ := c.Take(clk.Now(), 1); v != quota.Pass {
			t.Fatal("the refunded unit was not spendable")
		}
		if v, _ := c.Take(clk.Now(), 1); v != quota.Exhausted {
			t.Fatal("passed beyond the limit")
		}
	})

	t.Run("an idle lease goes back to the counter, and Close returns the rest", func(t *testing.T) {
		st, clk := quotatest.NewStore(), newClock(t0)
		m := quota.New(quota.Config{Store: st, Now: clk.Now, Nodes: 1, MinLease: 50, ReturnAfter: 10 * time.Second})
		m.Start(context.Background())
		c := m.Counter(monthly(1000))
		c.Take(clk.Now(), 1)
		if st.Value("quota.owner_x").Used != 50 {
			t.Fatalf("counter %d after one lease of 50", st.Value("quota.owner_x").Used)
		}
		m.Sweep(context.Background()) // notes the level
		clk.Add(11 * time.Second)
		m.Sweep(context.Background())
		if got := st.Value("quota.owner_x").Used; got != 1 {
			t.Fatalf("counter %d after the idle return, want 1 (the unit spent)", got)
		}
		c.Take(clk.Now(), 1)
		m.Close(context.Background())
		if got := st.Value("quota.owner_x").Used; got != 2 {
			t.Fatalf("counter %d after Close, want 2", got)
		}
	})

	t.Run("a lower limit applies to the next lease", func(t *testing.T) {
		st, clk := quotatest.NewStore(), newClock(t0)
		m := mustStart(t, quota.Config{Store: st, Now: clk.Now, Nodes: 1, MinLease: 10, MaxLease: 10})
		var limit atomic.Int64
		limit.Store(1000)
		c := m.Counter(quota.Spec{Kind: quota.KindQuota, Key: "quota.owner_y", Window: func(now time.Time) quota.Window { return quota.Month(now, limit.Load()) }})
		c.Take(clk.Now(), 1) // draws 10
		limit.Store(5)
		pass := 1
		for range 50 {
			if v, _ := c.Take(clk.Now(), 1); v == quota.Pass {
				pass++
			}
		}
		if pass != 10 {
			t.Fatalf("passed %d: the lease in hand (10) and nothing more", pass)
		}
	})

	t.Run("credits refill daily", func(t *testing.T) {
		st, clk := quotatest.NewStore(), newClock(time.Date(2026, 12, 1, 23, 0, 0, 0, time.UTC))
		m := mustStart(t, quota.Config{Store: st, Now: clk.Now, Nodes: 1})
		cr := &keyledger.Credits{Remaining: 3, Refill: &keyledger.Refill{Interval: keyledger.RefillDaily, Amount: 5}}
		setAt := clk.Now()
		c := m.Counter(quota.Spec{Kind: quota.KindCredits, Key: "credits.key_a", Window: func(now time.Time) quota.Window { return quota.CreditsWindow(now, cr, 7, setAt) }})
		count := func() (n int) {
			for range 20 {
				if v, _ := c.Take(clk.Now(), 1); v == quota.Pass {
					n++
				}
			}
			return n
		}
		if n := count(); n != 3 {
			t.Fatalf("day of issue: %d passed, want the 3 remaining", n)
		}
		clk.Add(2 * time.Hour)
		if n := count(); n != 5 {
			t.Fatalf("after the refill: %d passed, want 5", n)
		}
	})

	t.Run("rate windows", func(t *testing.T) {
		st, clk := quotatest.NewStore(), newClock(t0)
		m := mustStart(t, quota.Config{Store: st, Now: clk.Now, Nodes: 1})
		c := m.Counter(quota.Spec{Kind: quota.KindRate, Key: "rate.key_r", Window: func(now time.Time) quota.Window { return quota.RateWindow(now, 10) }})
		for sec := range 3 {
			n := 0
			for range 30 {
				if v, _ := c.Take(clk.Now(), 1); v == quota.Pass {
					n++
				}
			}
			if n != 10 {
				t.Fatalf("second %d: %d passed, want 10", sec, n)
			}
			clk.Add(time.Second)
		}
	})
}

func TestWindows(t *testing.T) {
	at := time.Date(2026, 12, 15, 12, 30, 0, 0, time.UTC)
	tests := []struct {
		name   string
		w      quota.Window
		period string
		start  time.Time
		limit  int64
	}{
		{"month", quota.Month(at, 10), "2026-12", time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), 10},
		{"rate 50/s", quota.RateWindow(at, 50), "1797337800", time.Unix(1797337800, 0), 50},
		{"rate 0.25/s: 4-s windows of 1", quota.RateWindow(at.Add(3*time.Second), 0.25), "1797337800", time.Unix(1797337800, 0), 1},
		{"credits, no refill", quota.CreditsWindow(at, &keyledger.Credits{Remaining: 9}, 4, at), "4", time.Unix(0, 0), 9},
		{"credits, monthly, month of issue", quota.CreditsWindow(at, &keyledger.Credits{Remaining: 9, Refill: &keyledger.Refill{Interval: "monthly", Amount: 100}}, 4, at),
			"4/2026-12-01", time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), 9},
		{"credits, monthly, later", quota.CreditsWindow(at.AddDate(0, 1, 0), &keyledger.Credits{Remaining: 9, Refill: &keyledger.Refill{Interval: "monthly", Amount: 100}}, 4, at),
			"4/2027-01-01", time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC), 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.w.Period != tt.period || !tt.w.Start.Equal(tt.start) || tt.w.Limit != tt.limit || !tt.w.End.After(tt.w.Start) {
				t.Fatalf("%+v; want period %s start %v limit %d", tt.w, tt.period, tt.start, tt.limit)
			}
		})
	}
}
