package admin_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats/natstest"
	"github.com/keyledger/keyledger/projector"
)

var t0 = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// MustOpenService returns a service over a real embedded JetStream with a
// running projector, a fixed clock and deterministic secrets.
func MustOpenService(tb testing.TB) (*admin.Service, *projector.Projector) {
	tb.Helper()
	env := natstest.MustStart(tb)
	ctx := context.Background()
	p := projector.New(env.JS, projector.Options{Records: true, Keyring: env.Keyring})
	if err := p.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close(context.Background()) })
	svc := admin.New(admin.Config{
		Log: env.MustLog(tb), Projector: p,
		Rand: rand.NewChaCha8([32]byte{3}), Now: func() time.Time { return t0 },
	})
	return svc, p
}

func TestService_Create(t *testing.T) {
	svc, p := MustOpenService(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("defaults to full access and returns the secret once", func(t *testing.T) {
		c, err := svc.Create(ctx, admin.CreateRequest{Name: "ci", Environment: keyledger.EnvTest, Owner: "acme"}, admin.Write{Actor: "tester"})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(c.Secret, "fsk_test_") || c.ID == "" || c.Revision == 0 {
			t.Fatalf("created %+v", c)
		}
		if len(c.Permissions) != 1 || c.Permissions[0] != "all" || c.Status != keyledger.StatusActive || c.CreatedBy != "tester" {
			t.Fatalf("record %+v", c.KeyView)
		}
		// The node that served the create knows the key already.
		h := keyledger.HashSecret(c.Secret)
		if e := p.Table().Lookup(&h); e == nil || e.ID() != c.ID {
			t.Fatalf("table entry %+v", e)
		}
		// And the ledger holds the hash, never the secret.
		hist, err := svc.History(ctx, c.ID, admin.Write{})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := events.Encode(hist[0].Event)
		if strings.Contains(string(b), c.Secret) || !strings.Contains(string(b), h.String()) {
			t.Fatalf("event %s", b)
		}
	})
	for _, tc := range []struct {
		name string
		req  admin.CreateRequest
		msg  string
	}{
		{"no name", admin.CreateRequest{Environment: keyledger.EnvLive}, "name is required"},
		{"no environment", admin.CreateRequest{Name: "x"}, "environment is required"},
		{"unknown permission", admin.CreateRequest{Name: "x", Environment: keyledger.EnvLive, Permissions: []string{"root"}}, `unknown permission "root"`},
		{"past expiry", admin.CreateRequest{Name: "x", Environment: keyledger.EnvLive, ExpiresAt: ptr(t0.Add(-time.Second))}, "expires_at must be in the future"},
		{"bad rate limit", admin.CreateRequest{Name: "x", Environment: keyledger.EnvLive, RateLimit: &keyledger.RateLimit{PerSecond: -1, Burst: 1}}, "per_second"},
		{"control characters", admin.CreateRequest{Name: "x\x00y", Environment: keyledger.EnvLive}, "printable"},
		{"huge owner", admin.CreateRequest{Name: "x", Environment: keyledger.EnvLive, Owner: strings.Repeat("o", 500)}, "owner must be at most"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := svc.Create(ctx, tc.req, admin.Write{Actor: "tester"})
			if !errors.Is(err, keyledger.ErrInvalid) || !strings.Contains(keyledger.ErrorMessage(err), tc.msg) {
				t.Fatalf("err %v, want invalid_request containing %q", err, tc.msg)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestService_Revoke(t *testing.T) {
	svc, p := MustOpenService(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := svc.Create(ctx, admin.CreateRequest{Name: "k", Environment: keyledger.EnvLive}, admin.Write{Actor: "tester"})
	if err != nil {
		t.Fatal(err)
	}
	k, err := svc.Revoke(ctx, c.ID, "leaked in a log", admin.Write{Actor: "tester"})
	if err != nil {
		t.Fatal(err)
	}
	if k.Status != keyledger.StatusRevoked || k.RevokeReason != "leaked in a log" || k.RevokedBy != "tester" {
		t.Fatalf("revoked record %+v", k)
	}
	h := keyledger.HashSecret(c.Secret)
	if e := p.Table().Lookup(&h); !e.Revoked {
		t.Fatal("revoke returned before this node applied it")
	}
	if _, err := svc.Revoke(ctx, c.ID, "", admin.Write{Actor: "tester"}); !errors.Is(err, keyledger.ErrAlreadyRevoked) {
		t.Fatalf("second revoke: %v, want already_revoked", err)
	}
	if _, err := svc.Revoke(ctx, "key_nope", "", admin.Write{Actor: "tester"}); !errors.Is(err, keyledger.ErrNotFound) {
		t.Fatalf("unknown key: %v, want not_found", err)
	}
	if _, err := svc.Revoke(ctx, "../../etc", "", admin.Write{Actor: "tester"}); !errors.Is(err, keyledger.ErrNotFound) {
		t.Fatalf("bad id: %v, want not_found", err)
	}
	hist, err := svc.History(ctx, c.ID, admin.Write{})
	if err != nil || len(hist) != 2 {
		t.Fatalf("history %v %v", hist, err)
	}
}

// Concurrent revokes of one key: exactly one wins, the others are told the
// key is already revoked, and the ledger holds exactly one KeyRevoked.
func TestService_Revoke_race(t *testing.T) {
	svc, _ := MustOpenService(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for round := 0; round < 10; round++ {
		c, err := svc.Create(ctx, admin.CreateRequest{Name: "k", Environment: keyledger.EnvLive}, admin.Write{Actor: "tester"})
		if err != nil {
			t.Fatal(err)
		}
		const racers = 4
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make([]error, racers)
		for i := range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, errs[i] = svc.Revoke(ctx, c.ID, "race", admin.Write{Actor: "tester"})
			}()
		}
		close(start)
		wg.Wait()
		wins := 0
		for _, err := range errs {
			switch {
			case err == nil:
				wins++
			case errors.Is(err, keyledger.ErrAlreadyRevoked):
			default:
				t.Fatalf("round %d: unexpected error %v", round, err)
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: %d revokes won, want exactly 1", round, wins)
		}
		hist, err := svc.History(ctx, c.ID, admin.Write{})
		if err != nil {
			t.Fatal(err)
		}
		if len(hist) != 2 {
			t.Fatalf("round %d: %d events in the ledger, want create + one revoke", round, len(hist))
		}
	}
}

func TestService_List(t *testing.T) {
	svc, _ := MustOpenService(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mk := func(owner string, env keyledger.Environment) string {
		c, err := svc.Create(ctx, admin.CreateRequest{Name: "k", Environment: env, Owner: owner}, admin.Write{Actor: "t"})
		if err != nil {
			t.Fatal(err)
		}
		return c.ID
	}
	a1 := mk("a", keyledger.EnvLive)
	mk("a", keyledger.EnvTest)
	mk("b", keyledger.EnvLive)
	if _, err := svc.Revoke(ctx, a1, "", admin.Write{Actor: "t"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		f    projector.Filter
		want int
	}{
		{projector.Filter{}, 3},
		{projector.Filter{Owner: "a"}, 2},
		{projector.Filter{Environment: keyledger.EnvLive}, 2},
		{projector.Filter{Status: keyledger.StatusRevoked}, 1},
		{projector.Filter{Owner: "a", Status: keyledger.StatusActive}, 1},
		{projector.Filter{Owner: "nobody"}, 0},
	} {
		if got, err := svc.List(ctx, tc.f, admin.Write{}); err != nil || len(got) != tc.want {
			t.Errorf("filter %+v: %d keys, want %d", tc.f, len(got), tc.want)
		}
	}
}

// TestService_Import_race: ten concurrent imports of one hash. Before,
// all ten answered 201 and nine phantom keys sat in the ledger, listed as
// created but never in any table; now exactly one succeeds, the others
// are told the hash is taken.
func TestService_Import_race(t *testing.T) {
	svc, p := MustOpenService(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hash := keyledger.HashSecret("sk_legacy_0123456789abcdef").String()
	var wg sync.WaitGroup
	errs := make([]error, 10)
	ids := make([]string, 10)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := svc.Import(ctx, admin.ImportRequest{CreateRequest: admin.CreateRequest{Name: "legacy", Environment: keyledger.EnvLive}, Hash: hash},
				admin.Write{Actor: "tester"})
			errs[i] = err
			if v != nil {
				ids[i] = v.ID
			}
		}()
	}
	wg.Wait()
	won := ""
	for i, err := range errs {
		switch {
		case err == nil:
			if won != "" {
				t.Fatalf("two imports of one hash succeeded: %s and %s", won, ids[i])
			}
			won = ids[i]
		case keyledger.ErrorCode(err) != keyledger.Conflict:
			t.Fatalf("import %d: %v, want a conflict", i, err)
		}
	}
	if won == "" {
		t.Fatal("no import succeeded")
	}
	h, _ := keyledger.ParseHash(hash)
	if e := p.Table().Lookup(&h); e == nil || e.ID() != won {
		t.Fatalf("the table holds %+v for the hash, want %s", e, won)
	}
}
