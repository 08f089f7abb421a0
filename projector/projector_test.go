package projector_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats/natstest"
	"github.com/keyledger/keyledger/projector"
)

var t0 = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

var rng = rand.NewChaCha8([32]byte{7})

func created(tb testing.TB, id string) (*events.KeyCreated, string) {
	tb.Helper()
	c, secret, err := tryCreated(id)
	if err != nil {
		tb.Fatal(err)
	}
	return c, secret
}

// tryCreated is created for goroutines other than the test's, which must
// not call tb.Fatal: it returns the error.
func tryCreated(id string) (*events.KeyCreated, string, error) {
	secret, err := keyledger.DefaultFormat.New(keyledger.EnvLive, rng)
	if err != nil {
		return nil, "", err
	}
	return &events.KeyCreated{
		Header:      events.NewHeader(events.TypeKeyCreated, id, "test", t0),
		Name:        "n",
		Environment: keyledger.EnvLive,
		Permissions: []string{"workflows:read"},
		Owner:       "acme",
		Hash:        keyledger.HashSecret(secret).String(),
		Hint:        keyledger.Hint(secret),
	}, secret, nil
}

func revoked(id string) *events.KeyRevoked {
	return &events.KeyRevoked{Header: events.NewHeader(events.TypeKeyRevoked, id, "test", t0.Add(time.Minute)), Reason: "r"}
}

func mustEncode(tb testing.TB, ev events.Event) []byte {
	tb.Helper()
	b, err := events.Encode(ev)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func lookup(p *projector.Projector, secret string) *projector.Entry {
	h := keyledger.HashSecret(secret)
	return p.Table().Lookup(&h)
}

func TestProjector_ApplyMsg(t *testing.T) {
	t.Run("create then revoke", func(t *testing.T) {
		p := projector.New(nil, projector.Options{Records: true})
		c, s := created(t, "k1")
		p.ApplyMsg(1, mustEncode(t, c))
		e := lookup(p, s)
		if e == nil || e.Revoked || e.ID != "k1" || e.Owner != "acme" {
			t.Fatalf("after create: %+v", e)
		}
		p.ApplyMsg(2, mustEncode(t, revoked("k1")))
		if e := lookup(p, s); e == nil || !e.Revoked {
			t.Fatalf("after revoke: %+v", e)
		}
		k, ok := p.Key("k1")
		if !ok || k.RevokedAt == nil || k.RevokeReason != "r" || k.Revision != 2 || k.StatusAt(t0) != keyledger.StatusRevoked {
			t.Fatalf("record %+v", k)
		}
		if p.LastSeq() != 2 {
			t.Fatalf("last seq %d", p.LastSeq())
		}
	})
	t.Run("duplicate delivery changes nothing", func(t *testing.T) {
		p := projector.New(nil, projector.Options{})
		c, s := created(t, "k1")
		p.ApplyMsg(1, mustEncode(t, c))
		p.ApplyMsg(2, mustEncode(t, revoked("k1")))
		// Redelivery of seq 1 must not resurrect the key.
		p.ApplyMsg(1, mustEncode(t, c))
		if e := lookup(p, s); !e.Revoked {
			t.Fatal("duplicate create resurrected a revoked key")
		}
		if st := p.Stats(); st.Ignored != 1 || st.Applied != 2 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("nothing after a revoke brings a key back", func(t *testing.T) {
		p := projector.New(nil, projector.Options{Records: true})
		c, s := created(t, "k1")
		p.ApplyMsg(1, mustEncode(t, c))
		p.ApplyMsg(2, mustEncode(t, revoked("k1")))
		again := *c
		again.Header = events.NewHeader(events.TypeKeyCreated, "k1", "attacker", t0.Add(time.Hour))
		p.ApplyMsg(3, mustEncode(t, &again)) // same id, same hash, new event
		c2, _ := created(t, "k2")
		c2.Hash = c.Hash // another id claiming the revoked hash
		p.ApplyMsg(4, mustEncode(t, c2))
		p.ApplyMsg(5, mustEncode(t, revoked("k1")))
		e := lookup(p, s)
		if e == nil || !e.Revoked || e.ID != "k1" {
			t.Fatalf("entry %+v", e)
		}
		if _, ok := p.Key("k2"); ok {
			t.Fatal("a create reusing a revoked hash was applied")
		}
		if p.LastSeq() != 5 || p.Table().Len() != 1 {
			t.Fatalf("seq %d len %d", p.LastSeq(), p.Table().Len())
		}
	})
	t.Run("revoke of unknown key is ignored", func(t *testing.T) {
		p := projector.New(nil, projector.Options{})
		p.ApplyMsg(1, mustEncode(t, revoked("ghost")))
		c, s := created(t, "ghost")
		p.ApplyMsg(2, mustEncode(t, c))
		if e := lookup(p, s); e == nil || e.Revoked {
			t.Fatalf("entry %+v", e)
		}
	})
	t.Run("poison event is skipped and counted", func(t *testing.T) {
		p := projector.New(nil, projector.Options{})
		p.ApplyMsg(1, []byte(`{"type":"KeyCreated","v":1,"event_id":"nope"}`))
		p.ApplyMsg(2, []byte(`not json`))
		c, s := created(t, "k1")
		p.ApplyMsg(3, mustEncode(t, c))
		if st := p.Stats(); st.Poison != 2 || st.LastSeq != 3 || lookup(p, s) == nil {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("permissions outside the catalog grant nothing", func(t *testing.T) {
		p := projector.New(nil, projector.Options{})
		c, s := created(t, "k1")
		c.Permissions = []string{"billing:admin", "storage:read"}
		p.ApplyMsg(1, mustEncode(t, c))
		e := lookup(p, s)
		bit, _ := keyledger.DefaultCatalog.Bit("storage:read")
		if e.Perms != bit {
			t.Fatalf("perms %b, want %b", e.Perms, bit)
		}
	})
}

func TestProjector_follow(t *testing.T) {
	env := natstest.MustStart(t)
	log := env.MustLog(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// History before the projector starts.
	var secrets []string
	var last uint64
	for i := 0; i < 200; i++ {
		c, s := created(t, events.NewKeyID())
		seq, err := log.Append(ctx, c, 0)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, s)
		if i%4 == 0 {
			if last, err = log.Append(ctx, revoked(c.KeyID), seq); err != nil {
				t.Fatal(err)
			}
		} else {
			last = seq
		}
	}
	p := projector.New(env.JS, projector.Options{Records: true})
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	if err := p.WaitApplied(ctx, last); err != nil {
		t.Fatal(err)
	}
	if !p.CaughtUp() {
		t.Fatal("applied everything but not caught up")
	}
	for i, s := range secrets {
		e := lookup(p, s)
		if e == nil || e.Revoked != (i%4 == 0) {
			t.Fatalf("key %d: %+v", i, e)
		}
	}

	// Live tail: a revoke is applied as soon as it is published.
	c, s := created(t, events.NewKeyID())
	seq, err := log.Append(ctx, c, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitApplied(ctx, seq); err != nil {
		t.Fatal(err)
	}
	if e := lookup(p, s); e == nil || e.Revoked {
		t.Fatalf("new key %+v", e)
	}
	seq, err = log.Append(ctx, revoked(c.KeyID), seq)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitApplied(ctx, seq); err != nil {
		t.Fatal(err)
	}
	if e := lookup(p, s); !e.Revoked {
		t.Fatal("revocation not applied")
	}

	// A second projector from scratch builds the identical table.
	p2 := projector.New(env.JS, projector.Options{})
	if err := p2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer p2.Close(ctx)
	if err := p2.WaitApplied(ctx, seq); err != nil {
		t.Fatal(err)
	}
	if p.Table().Digest() != p2.Table().Digest() {
		t.Fatal("two projectors of one stream disagree")
	}

	// WaitApplied honours its context.
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if err := p.WaitApplied(short, seq+100); !keyledgerIsUnavailable(err) {
		t.Fatalf("wait for the future: %v", err)
	}
}

func keyledgerIsUnavailable(err error) bool { return keyledger.ErrorCode(err) == keyledger.Unavailable }

func TestProjector_emptyStreamIsCaughtUp(t *testing.T) {
	env := natstest.MustStart(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p := projector.New(env.JS, projector.Options{})
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	if !p.CaughtUp() {
		t.Fatal("empty stream: not caught up")
	}
}

func TestProjector_Close(t *testing.T) {
	env := natstest.MustStart(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p := projector.New(env.JS, projector.Options{})
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(ctx); err != nil { // idempotent
		t.Fatal(err)
	}
}

func BenchmarkProjector_replay(b *testing.B) {
	env := natstest.MustStart(b)
	log := env.MustLog(b)
	ctx := context.Background()
	const n = 20000
	var last uint64
	for i := 0; i < n; i++ {
		c, _ := created(b, events.NewKeyID())
		seq, err := log.Append(ctx, c, 0)
		if err != nil {
			b.Fatal(err)
		}
		last = seq
	}
	b.ResetTimer()
	for b.Loop() {
		p := projector.New(env.JS, projector.Options{})
		if err := p.Start(ctx); err != nil {
			b.Fatal(err)
		}
		if err := p.WaitApplied(ctx, last); err != nil {
			b.Fatal(err)
		}
		p.Close(ctx)
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
