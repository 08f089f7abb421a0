package verifier_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/verifier"
	"github.com/keyledger/keyledger/verifier/verifiertest"
)

func TestVerifier_Verify(t *testing.T) {
	f := verifiertest.New(t)
	live, liveID := f.MustCreate(t, keyledger.EnvLive, nil, nil)
	readOnly, _ := f.MustCreate(t, keyledger.EnvLive, []string{"workflows:read"}, nil)
	test, testID := f.MustCreate(t, keyledger.EnvTest, nil, nil)
	revoked, revokedID := f.MustCreate(t, keyledger.EnvLive, nil, nil)
	f.Revoke(t, revokedID)
	exp := f.Now.Add(time.Minute)
	expiring, _ := f.MustCreate(t, keyledger.EnvLive, nil, func(e *events.KeyCreated) { e.ExpiresAt = &exp })
	unknown, _ := keyledger.DefaultFormat.New(keyledger.EnvLive, f.Rand)
	disabled, disabledID := f.MustCreate(t, keyledger.EnvLive, nil, nil)
	f.Disable(t, disabledID)
	reenabled, reenabledID := f.MustCreate(t, keyledger.EnvLive, nil, nil)
	f.Disable(t, reenabledID)
	f.Enable(t, reenabledID)
	fromHere, _ := f.MustCreate(t, keyledger.EnvLive, nil, func(e *events.KeyCreated) { e.AllowedIPs = []string{"2001:db8::/32", "192.0.2.0/24"} })
	fromElsewhere, _ := f.MustCreate(t, keyledger.EnvLive, nil, func(e *events.KeyCreated) { e.AllowedIPs = []string{"203.0.113.0/24", "2001:db8::1"} })
	v := f.Verifier(keyledger.EnvLive, nil)

	flip := []byte(live)
	flip[12] ^= 1 // still base62, checksum now wrong

	cases := []struct {
		name       string
		key, perm  string
		want       keyledger.Outcome
		wantKeyID  string
		advanceBy  time.Duration
		verifierFn func() *verifier.Verifier
	}{
		{name: "valid", key: live, want: keyledger.OutcomeValid, wantKeyID: liveID},
		{name: "valid with permission via all", key: live, perm: "storage:write", want: keyledger.OutcomeValid, wantKeyID: liveID},
		{name: "valid scoped permission", key: readOnly, perm: "workflows:read", want: keyledger.OutcomeValid},
		{name: "missing permission", key: readOnly, perm: "storage:write", want: keyledger.OutcomeForbidden},
		{name: "permission outside catalog, scoped key", key: readOnly, perm: "billing:admin", want: keyledger.OutcomeForbidden},
		{name: "permission outside catalog, all key", key: live, perm: "billing:admin", want: keyledger.OutcomeValid},
		{name: "missing key", key: "", want: keyledger.OutcomeMalformed},
		{name: "garbage", key: "hello", want: keyledger.OutcomeMalformed},
		{name: "bad checksum", key: string(flip), want: keyledger.OutcomeMalformed},
		{name: "too long", key: live + string(make([]byte, 200)), want: keyledger.OutcomeMalformed},
		{name: "unknown", key: unknown, want: keyledger.OutcomeUnknown},
		{name: "revoked", key: revoked, want: keyledger.OutcomeRevoked, wantKeyID: revokedID},
		{name: "test key at live node", key: test, want: keyledger.OutcomeEnvMismatch, wantKeyID: testID},
		{name: "live key at test node", key: live, want: keyledger.OutcomeEnvMismatch,
			verifierFn: func() *verifier.Verifier { return f.Verifier(keyledger.EnvTest, nil) }},
		{name: "expired", key: expiring, want: keyledger.OutcomeExpired, advanceBy: time.Minute},
		{name: "not expired yet", key: expiring, want: keyledger.OutcomeValid, advanceBy: time.Minute - time.Nanosecond},
		{name: "disabled", key: disabled, want: keyledger.OutcomeDisabled, wantKeyID: disabledID},
		{name: "disabled, then enabled", key: reenabled, want: keyledger.OutcomeValid, wantKeyID: reenabledID},
		{name: "allowlisted source", key: fromHere, want: keyledger.OutcomeValid},
		{name: "source outside the allowlist", key: fromElsewhere, want: keyledger.OutcomeIPNotAllowed},
		{name: "node not ready", key: live, want: keyledger.OutcomeUnavailable,
			verifierFn: func() *verifier.Verifier { return f.Verifier(keyledger.EnvLive, func() bool { return false }) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := f.Now
			f.Now = f.Now.Add(tc.advanceBy)
			defer func() { f.Now = start }()
			vv := v
			if tc.verifierFn != nil {
				vv = tc.verifierFn()
			}
			f.Used = nil
			res := vv.Verify(&verifier.Request{Key: tc.key, Permission: tc.perm, IP: "192.0.2.1", Method: "GET", Path: "/x"})
			if res.Outcome != tc.want {
				t.Fatalf("outcome = %v, want %v", res.Outcome, tc.want)
			}
			if tc.wantKeyID != "" && (res.Entry == nil || res.Entry.ID() != tc.wantKeyID) {
				t.Fatalf("entry = %+v, want key %s", res.Entry, tc.wantKeyID)
			}
			if len(f.Used) != 1 {
				t.Fatalf("recorded %d usage events, want 1", len(f.Used))
			}
			u := f.Used[0]
			if u.Outcome != tc.want || u.IP != "192.0.2.1" || u.Node != "n1" || !u.At.Equal(f.Now) || u.Permission != tc.perm {
				t.Fatalf("usage event = %+v", u)
			}
			if tc.wantKeyID != "" && u.KeyID != tc.wantKeyID {
				t.Fatalf("usage key_id = %q, want %q", u.KeyID, tc.wantKeyID)
			}
			if (tc.want == keyledger.OutcomeMalformed || tc.want == keyledger.OutcomeUnknown) && u.KeyID != "" {
				t.Fatalf("usage of an unknown key names key %q", u.KeyID)
			}
		})
	}

	t.Run("revocation applies to the very next request", func(t *testing.T) {
		k, id := f.MustCreate(t, keyledger.EnvLive, nil, nil)
		if got := v.Verify(&verifier.Request{Key: k}).Outcome; got != keyledger.OutcomeValid {
			t.Fatalf("before revoke: %v", got)
		}
		f.Revoke(t, id)
		if got := v.Verify(&verifier.Request{Key: k}).Outcome; got != keyledger.OutcomeRevoked {
			t.Fatalf("after revoke: %v", got)
		}
	})
}

func TestVerifier_Verify_rateLimit(t *testing.T) {
	f := verifiertest.New(t)
	test, _ := f.MustCreate(t, keyledger.EnvTest, nil, nil)
	live, _ := f.MustCreate(t, keyledger.EnvLive, nil, nil)
	limited, _ := f.MustCreate(t, keyledger.EnvLive, nil, func(e *events.KeyCreated) {
		e.RateLimit = &keyledger.RateLimit{PerSecond: 1, Burst: 1}
	})
	glacial, _ := f.MustCreate(t, keyledger.EnvLive, nil, func(e *events.KeyCreated) {
		e.RateLimit = &keyledger.RateLimit{PerSecond: 1e-12, Burst: 1}
	})
	tv := f.Verifier(keyledger.EnvTest, nil)
	lv := f.Verifier(keyledger.EnvLive, nil)

	t.Run("a tiny rate's retry-after is capped, not overflowed", func(t *testing.T) {
		lv.Verify(&verifier.Request{Key: glacial})
		res := lv.Verify(&verifier.Request{Key: glacial})
		// 1e12 s does not fit a Duration's nanoseconds: it used to wrap
		// around to a negative Retry-After.
		if res.Outcome != keyledger.OutcomeRateLimited || res.RetryAfter != 24*time.Hour {
			t.Fatalf("%v, retry after %v; want rate_limited, 24h", res.Outcome, res.RetryAfter)
		}
	})

	t.Run("test key: burst then 429 with retry-after, refills with time", func(t *testing.T) {
		for i := 0; i < 3; i++ { // burst 3
			if got := tv.Verify(&verifier.Request{Key: test}).Outcome; got != keyledger.OutcomeValid {
				t.Fatalf("request %d: %v", i, got)
			}
		}
		res := tv.Verify(&verifier.Request{Key: test})
		if res.Outcome != keyledger.OutcomeRateLimited {
			t.Fatalf("4th request: %v, want rate_limited", res.Outcome)
		}
		if res.RetryAfter <= 0 || res.RetryAfter > time.Second {
			t.Fatalf("retry after %v, want (0, 1s] at 2/s", res.RetryAfter)
		}
		f.Now = f.Now.Add(500 * time.Millisecond) // one token at 2/s
		if got := tv.Verify(&verifier.Request{Key: test}).Outcome; got != keyledger.OutcomeValid {
			t.Fatalf("after refill: %v", got)
		}
	})
	t.Run("live key without limit is unlimited", func(t *testing.T) {
		for i := 0; i < 1000; i++ {
			if got := lv.Verify(&verifier.Request{Key: live}).Outcome; got != keyledger.OutcomeValid {
				t.Fatalf("request %d: %v", i, got)
			}
		}
	})
	t.Run("live key with its own limit", func(t *testing.T) {
		if got := lv.Verify(&verifier.Request{Key: limited}).Outcome; got != keyledger.OutcomeValid {
			t.Fatalf("first: %v", got)
		}
		if got := lv.Verify(&verifier.Request{Key: limited}).Outcome; got != keyledger.OutcomeRateLimited {
			t.Fatalf("second: %v, want rate_limited", got)
		}
	})
	t.Run("limit survives revocation bookkeeping and refused keys spend no tokens", func(t *testing.T) {
		k, _ := f.MustCreate(t, keyledger.EnvTest, []string{"workflows:read"}, nil)
		for i := 0; i < 10; i++ {
			if got := tv.Verify(&verifier.Request{Key: k, Permission: "storage:write"}).Outcome; got != keyledger.OutcomeForbidden {
				t.Fatalf("forbidden request %d: %v", i, got)
			}
		}
		if got := tv.Verify(&verifier.Request{Key: k, Permission: "workflows:read"}).Outcome; got != keyledger.OutcomeValid {
			t.Fatalf("allowed request after forbidden ones: %v", got)
		}
	})
}

func TestVerifier_Verify_concurrent(t *testing.T) {
	f := verifiertest.New(t)
	var keys []string
	var ids []string
	for i := 0; i < 64; i++ {
		k, id := f.MustCreate(t, keyledger.EnvLive, nil, nil)
		keys, ids = append(keys, k), append(ids, id)
	}
	v := verifier.New(f.P.Table(), verifier.Config{Environment: keyledger.EnvLive, Now: time.Now})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan string, 8)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				o := v.Verify(&verifier.Request{Key: keys[(i+g)%len(keys)]}).Outcome
				if o != keyledger.OutcomeValid && o != keyledger.OutcomeRevoked {
					errs <- o.String()
					return
				}
			}
		}(g)
	}
	// The single writer revokes half the keys while readers run.
	for i := 0; i < len(ids); i += 2 {
		f.Revoke(t, ids[i])
	}
	close(stop)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatalf("unexpected outcome under concurrency: %s", e)
	}
	for i, k := range keys {
		want := keyledger.OutcomeValid
		if i%2 == 0 {
			want = keyledger.OutcomeRevoked
		}
		if got := v.Verify(&verifier.Request{Key: k}).Outcome; got != want {
			t.Fatalf("key %d: %v, want %v", i, got, want)
		}
	}
}

func TestVerifier_Verify_allocations(t *testing.T) {
	f := verifiertest.New(t)
	k, _ := f.MustCreate(t, keyledger.EnvLive, nil, nil)
	v := verifier.New(f.P.Table(), verifier.Config{Environment: keyledger.EnvLive})
	req := &verifier.Request{Key: k, Permission: "workflows:read"}
	if n := testing.AllocsPerRun(1000, func() { v.Verify(req) }); n != 0 {
		t.Fatalf("valid key verification allocates %v times, want 0", n)
	}
}

func BenchmarkVerify(b *testing.B) {
	f := verifiertest.New(b)
	valid, _ := f.MustCreate(b, keyledger.EnvLive, []string{"workflows:read"}, nil)
	revoked, id := f.MustCreate(b, keyledger.EnvLive, nil, nil)
	f.Revoke(b, id)
	unknown, _ := keyledger.DefaultFormat.New(keyledger.EnvLive, f.Rand)
	bad := []byte(valid)
	bad[len(bad)-1] ^= 1
	// A realistic table: 100k other keys.
	for i := 0; i < 100_000; i++ {
		f.MustCreate(b, keyledger.EnvLive, nil, nil)
	}
	// A key with an allowlist of 10 prefixes, the request's address
	// matching the last one.
	var ips []string
	for i := range 9 {
		ips = append(ips, fmt.Sprintf("198.51.%d.0/24", i))
	}
	listed, _ := f.MustCreate(b, keyledger.EnvLive, []string{"workflows:read"}, func(e *events.KeyCreated) { e.AllowedIPs = append(ips, "2001:db8::/32") })
	v := verifier.New(f.P.Table(), verifier.Config{Environment: keyledger.EnvLive})
	for _, bc := range []struct{ name, key, perm string }{
		{"valid", valid, "workflows:read"},
		{"valid_allowlisted", listed, "workflows:read"},
		{"bad_checksum", string(bad), ""},
		{"unknown", unknown, ""},
		{"revoked", revoked, ""},
	} {
		b.Run(bc.name, func(b *testing.B) {
			req := &verifier.Request{Key: bc.key, Permission: bc.perm, IP: "2001:db8::7"}
			b.ReportAllocs()
			for b.Loop() {
				v.Verify(req)
			}
		})
		b.Run(bc.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				req := &verifier.Request{Key: bc.key, Permission: bc.perm, IP: "2001:db8::7"}
				for pb.Next() {
					v.Verify(req)
				}
			})
		})
	}
}
