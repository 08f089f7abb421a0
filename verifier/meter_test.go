package verifier_test

import (
	"context"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/quota"
	"github.com/keyledger/keyledger/quota/quotatest"
	"github.com/keyledger/keyledger/verifier"
	"github.com/keyledger/keyledger/verifier/verifiertest"
)

// meteredVerifier is a live verifier over f's table spending from a
// meter over store (the fleet's counters, in memory).
func meteredVerifier(tb testing.TB, f *verifiertest.Fixture, store quota.Store) *verifier.Verifier {
	tb.Helper()
	m := quota.New(quota.Config{Store: store, Now: f.Clock, Nodes: 1, Wait: 100 * time.Millisecond})
	m.Start(context.Background())
	tb.Cleanup(func() { m.Close(context.Background()) })
	return verifier.New(f.P.Table(), verifier.Config{Environment: keyledger.EnvLive, Now: f.Clock, Meter: m, Accounts: f.P,
		TestRateLimit: keyledger.RateLimit{PerSecond: 1000, Burst: 1000}})
}

func TestVerifier_Verify_metered(t *testing.T) {
	t.Run("a plan's monthly quota, then 429 quota_exceeded until the month's end", func(t *testing.T) {
		f := verifiertest.New(t)
		f.SetPlan(t, keyledger.Plan{Name: "pro", MonthlyQuota: 5})
		f.SetOwner(t, "acme", "pro")
		k1, _ := f.MustCreate(t, keyledger.EnvLive, nil, nil)
		k2, _ := f.MustCreate(t, keyledger.EnvLive, nil, nil)
		other, _ := f.MustCreate(t, keyledger.EnvLive, nil, func(e *events.KeyCreated) { e.Owner = "globex" })
		v := meteredVerifier(t, f, quotatest.NewStore())
		valid := 0
		var last verifier.Result
		for i := range 8 {
			k := k1
			if i%2 == 1 {
				k = k2 // the quota is the owner's, across its keys
			}
			if last = v.Verify(&verifier.Request{Key: k}); last.Valid() {
				valid++
			}
		}
		if valid != 5 || last.Outcome != keyledger.OutcomeQuotaExceeded {
			t.Fatalf("%d valid, last %s; want 5 then quota_exceeded", valid, last.Outcome)
		}
		if want := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).Sub(f.Now); last.RetryAfter != want {
			t.Fatalf("retry after %v, want %v (the month's reset)", last.RetryAfter, want)
		}
		err := verifier.OutcomeError(last.Outcome, "", last.RetryAfter)
		if e, ok := err.(*keyledger.Error); !ok || e.Code != keyledger.RateLimited || e.Reason != keyledger.ReasonQuotaExceeded {
			t.Fatalf("error %#v", err)
		}
		if r := v.Verify(&verifier.Request{Key: other}); !r.Valid() {
			t.Fatalf("another owner's key without a plan: %s", r.Outcome)
		}
	})

	t.Run("test keys never consume or hit the quota", func(t *testing.T) {
		f := verifiertest.New(t)
		f.SetPlan(t, keyledger.Plan{Name: "pro", MonthlyQuota: 1})
		f.SetOwner(t, "acme", "pro")
		tk, _ := f.MustCreate(t, keyledger.EnvTest, nil, nil)
		lk, _ := f.MustCreate(t, keyledger.EnvLive, nil, nil)
		store := quotatest.NewStore()
		m := quota.New(quota.Config{Store: store, Now: f.Clock})
		m.Start(context.Background())
		defer m.Close(context.Background())
		tv := verifier.New(f.P.Table(), verifier.Config{Environment: keyledger.EnvTest, Now: f.Clock, Accounts: f.P,
			Meter: m, TestRateLimit: keyledger.RateLimit{PerSecond: 100, Burst: 100}})
		for range 5 {
			if r := tv.Verify(&verifier.Request{Key: tk}); r.Outcome == keyledger.OutcomeQuotaExceeded {
				t.Fatal("a test key hit the quota")
			}
		}
		if r := meteredVerifier(t, f, store).Verify(&verifier.Request{Key: lk}); !r.Valid() {
			t.Fatalf("the live key's one verification: %s (test keys consumed the quota?)", r.Outcome)
		}
	})

	t.Run("credits spend cost, then 429 credits_exhausted; a new balance starts over", func(t *testing.T) {
		f := verifiertest.New(t)
		k, id := f.MustCreate(t, keyledger.EnvLive, nil, func(e *events.KeyCreated) { e.Credits = &keyledger.Credits{Remaining: 10} })
		v := meteredVerifier(t, f, quotatest.NewStore())
		if r := v.Verify(&verifier.Request{Key: k, Cost: 4}); !r.Valid() {
			t.Fatal(r.Outcome)
		}
		if n := v.CreditsRemaining(v.Verify(&verifier.Request{Key: k, Cost: 4}).Entry); n != 2 {
			t.Fatalf("credits remaining %d, want 2", n)
		}
		r := v.Verify(&verifier.Request{Key: k, Cost: 4})
		if r.Outcome != keyledger.OutcomeCreditsExhausted || r.RetryAfter != 0 {
			t.Fatalf("%s retry %v; want credits_exhausted with no refill to wait for", r.Outcome, r.RetryAfter)
		}
		if r := v.Verify(&verifier.Request{Key: k, Cost: 2}); !r.Valid() {
			t.Fatalf("the last 2 credits: %s", r.Outcome)
		}
		f.Update(t, id, &events.KeyUpdated{Changed: []string{events.FieldCredits}, Credits: &keyledger.Credits{Remaining: 3}})
		valid := 0
		for range 5 {
			if v.Verify(&verifier.Request{Key: k}).Valid() {
				valid++
			}
		}
		if valid != 3 {
			t.Fatalf("%d valid after a new balance of 3", valid)
		}
	})

	t.Run("a roll hands the balance on: the old and the new key spend one", func(t *testing.T) {
		f := verifiertest.New(t)
		cr := &keyledger.Credits{Remaining: 5}
		old, oldID := f.MustCreate(t, keyledger.EnvLive, nil, func(e *events.KeyCreated) { e.Credits = cr })
		v := meteredVerifier(t, f, quotatest.NewStore())
		for range 3 {
			if !v.Verify(&verifier.Request{Key: old}).Valid() {
				t.Fatal("refused within the balance")
			}
		}
		// The admin API copies the credits as set into the rolled key:
		// before, that was a fresh balance of 5 (a roll minted credits).
		nk, _ := f.MustCreate(t, keyledger.EnvLive, nil, func(e *events.KeyCreated) { e.Credits, e.RolledFrom = cr, oldID })
		valid := 0
		for _, k := range []string{nk, old, nk, old, nk} {
			if v.Verify(&verifier.Request{Key: k}).Valid() {
				valid++
			}
		}
		if valid != 2 {
			t.Fatalf("%d valid after the roll, want the 2 left", valid)
		}
	})

	t.Run("credits exhausted do not consume the quota", func(t *testing.T) {
		f := verifiertest.New(t)
		f.SetPlan(t, keyledger.Plan{Name: "pro", MonthlyQuota: 3})
		f.SetOwner(t, "acme", "pro")
		poor, _ := f.MustCreate(t, keyledger.EnvLive, nil, func(e *events.KeyCreated) { e.Credits = &keyledger.Credits{Remaining: 1} })
		rich, _ := f.MustCreate(t, keyledger.EnvLive, nil, nil)
		v := meteredVerifier(t, f, quotatest.NewStore())
		for range 4 {
			v.Verify(&verifier.Request{Key: poor})
		}
		valid := 0
		for range 4 {
			if v.Verify(&verifier.Request{Key: rich}).Valid() {
				valid++
			}
		}
		if valid != 2 {
			t.Fatalf("%d valid of the quota's 3 after one credit spent: refused credits took quota", valid)
		}
	})

	t.Run("cut off from the counters: 503 for metered keys unless the plan fails open", func(t *testing.T) {
		for _, outage := range []string{"", keyledger.OutageOpen} {
			f := verifiertest.New(t)
			f.SetPlan(t, keyledger.Plan{Name: "pro", MonthlyQuota: 1000, OnOutage: outage})
			f.SetOwner(t, "acme", "pro")
			k, _ := f.MustCreate(t, keyledger.EnvLive, nil, nil)
			store := quotatest.NewStore()
			store.Down.Store(true)
			want := keyledger.OutcomeUnavailable
			if outage == keyledger.OutageOpen {
				want = keyledger.OutcomeValid
			}
			if r := meteredVerifier(t, f, store).Verify(&verifier.Request{Key: k}); r.Outcome != want {
				t.Fatalf("on_outage %q: %s, want %s", outage, r.Outcome, want)
			}
		}
	})
}

func TestVerifier_Verify_meteredAllocations(t *testing.T) {
	f := verifiertest.New(t)
	f.SetPlan(t, keyledger.Plan{Name: "pro", MonthlyQuota: keyledger.MaxQuota})
	f.SetOwner(t, "acme", "pro")
	k, _ := f.MustCreate(t, keyledger.EnvLive, nil, func(e *events.KeyCreated) { e.Credits = &keyledger.Credits{Remaining: keyledger.MaxQuota} })
	v := meteredVerifier(t, f, quotatest.NewStore())
	req := &verifier.Request{Key: k}
	v.Verify(req) // the first draws the leases
	if n := testing.AllocsPerRun(1000, func() {
		if !v.Verify(req).Valid() {
			t.Fatal("refused")
		}
	}); n != 0 {
		t.Fatalf("a metered verification allocates %v times, want 0", n)
	}
}

// BenchmarkVerify_metered is the verify path with a plan's quota, credits,
// or both, spending leases in hand (the figure the README gives).
func BenchmarkVerify_metered(b *testing.B) {
	f := verifiertest.New(b)
	f.SetPlan(b, keyledger.Plan{Name: "pro", MonthlyQuota: keyledger.MaxQuota})
	f.SetOwner(b, "metered", "pro")
	for range 100_000 {
		f.MustCreate(b, keyledger.EnvLive, nil, nil)
	}
	credits := func(e *events.KeyCreated) { e.Credits = &keyledger.Credits{Remaining: keyledger.MaxQuota} }
	quotaOnly, _ := f.MustCreate(b, keyledger.EnvLive, nil, func(e *events.KeyCreated) { e.Owner = "metered" })
	creditsOnly, _ := f.MustCreate(b, keyledger.EnvLive, nil, credits)
	both, _ := f.MustCreate(b, keyledger.EnvLive, nil, func(e *events.KeyCreated) { credits(e); e.Owner = "metered" })
	plain, _ := f.MustCreate(b, keyledger.EnvLive, nil, nil)
	m := quota.New(quota.Config{Store: quotatest.NewStore(), MaxLease: 1 << 20})
	m.Start(context.Background())
	b.Cleanup(func() { m.Close(context.Background()) })
	v := verifier.New(f.P.Table(), verifier.Config{Environment: keyledger.EnvLive, Meter: m, Accounts: f.P})
	for _, bc := range []struct{ name, key string }{{"unmetered", plain}, {"quota", quotaOnly}, {"credits", creditsOnly}, {"quota+credits", both}} {
		b.Run(bc.name, func(b *testing.B) {
			req := &verifier.Request{Key: bc.key}
			v.Verify(req)
			b.ReportAllocs()
			for b.Loop() {
				if !v.Verify(req).Valid() {
					b.Fatal("refused")
				}
			}
		})
	}
}
