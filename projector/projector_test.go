package projector_test

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/merkle"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/nats/natstest"
	"github.com/keyledger/keyledger/projector"
	"github.com/nats-io/nats.go/jetstream"
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

// signer signs the events the unit tests apply; ring trusts it alone.
var signer, ring = func() (*events.Signer, *events.Keyring) {
	skey, vkey, err := events.GenerateSigningKey(rand.NewChaCha8([32]byte{'s'}), "admin-test")
	if err != nil {
		panic(err)
	}
	s, err := events.NewSigner(skey)
	if err != nil {
		panic(err)
	}
	r, err := events.NewKeyring(vkey)
	if err != nil {
		panic(err)
	}
	return s, r
}()

func mustEncode(tb testing.TB, ev events.Event) []byte {
	tb.Helper()
	b, err := events.Encode(ev)
	if err != nil {
		tb.Fatal(err)
	}
	if b, err = signer.Seal(b); err != nil {
		tb.Fatal(err)
	}
	return b
}

// apply signs ev and applies it at seq on its key's subject.
func apply(tb testing.TB, p *projector.Projector, seq uint64, ev events.Event) {
	tb.Helper()
	p.ApplyMsg(seq, nats.KeySubject(ev.Head().KeyID), mustEncode(tb, ev))
}

func lookup(p *projector.Projector, secret string) *projector.Entry {
	h := keyledger.HashSecret(secret)
	return p.Table().Lookup(&h)
}

func TestProjector_ApplyMsg(t *testing.T) {
	t.Run("create then revoke", func(t *testing.T) {
		p := projector.New(nil, projector.Options{Keyring: ring, Records: true})
		c, s := created(t, "k1")
		apply(t, p, 1, c)
		e := lookup(p, s)
		if e == nil || e.Revoked || e.ID() != "k1" || e.Owner != "acme" {
			t.Fatalf("after create: %+v", e)
		}
		apply(t, p, 2, revoked("k1"))
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
		p := projector.New(nil, projector.Options{Keyring: ring})
		c, s := created(t, "k1")
		apply(t, p, 1, c)
		apply(t, p, 2, revoked("k1"))
		// Redelivery of seq 1 must not resurrect the key.
		apply(t, p, 1, c)
		if e := lookup(p, s); !e.Revoked {
			t.Fatal("duplicate create resurrected a revoked key")
		}
		if st := p.Stats(); st.Ignored != 1 || st.Applied != 2 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("nothing after a revoke brings a key back", func(t *testing.T) {
		p := projector.New(nil, projector.Options{Keyring: ring, Records: true})
		c, s := created(t, "k1")
		apply(t, p, 1, c)
		apply(t, p, 2, revoked("k1"))
		again := *c
		again.Header = events.NewHeader(events.TypeKeyCreated, "k1", "attacker", t0.Add(time.Hour))
		apply(t, p, 3, &again) // same id, same hash, new event
		c2, _ := created(t, "k2")
		c2.Hash = c.Hash // another id claiming the revoked hash
		apply(t, p, 4, c2)
		apply(t, p, 5, revoked("k1"))
		e := lookup(p, s)
		if e == nil || !e.Revoked || e.ID() != "k1" {
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
		p := projector.New(nil, projector.Options{Keyring: ring})
		apply(t, p, 1, revoked("ghost"))
		c, s := created(t, "ghost")
		apply(t, p, 2, c)
		if e := lookup(p, s); e == nil || e.Revoked {
			t.Fatalf("entry %+v", e)
		}
	})
	t.Run("poison event is skipped and counted", func(t *testing.T) {
		p := projector.New(nil, projector.Options{Keyring: ring})
		// Signed, so not a forgery, but not a valid event either.
		bad, err := signer.Seal([]byte(`{"type":"KeyCreated","v":1,"event_id":"nope"}`))
		if err != nil {
			t.Fatal(err)
		}
		p.ApplyMsg(1, "keyledger.keys.k0", bad)
		p.ApplyMsg(2, "keyledger.keys.k0", []byte(`not json`))
		c, s := created(t, "k1")
		apply(t, p, 3, c)
		if st := p.Stats(); st.Poison != 1 || st.Rejected != 1 || st.LastSeq != 3 || lookup(p, s) == nil {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("permissions outside the catalog grant nothing", func(t *testing.T) {
		p := projector.New(nil, projector.Options{Keyring: ring})
		c, s := created(t, "k1")
		c.Permissions = []string{"billing:admin", "storage:read"}
		apply(t, p, 1, c)
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
	p := projector.New(env.JS, projector.Options{Keyring: env.Keyring, Records: true})
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
	p2 := projector.New(env.JS, projector.Options{Keyring: env.Keyring})
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
	p := projector.New(env.JS, projector.Options{Keyring: env.Keyring})
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
	p := projector.New(env.JS, projector.Options{Keyring: env.Keyring})
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

// BenchmarkProjector_replay times a replay of the whole stream by a new
// projector: checking every signature, and on a checkpoint that vouches
// for them (see trust.go).
func BenchmarkProjector_replay(b *testing.B) {
	env := natstest.MustStart(b)
	log := env.MustLog(b)
	ctx := context.Background()
	const n = 50000
	var last uint64
	for i := 0; i < n; i++ {
		c, _ := created(b, events.NewKeyID())
		seq, err := log.Append(ctx, c, 0)
		if err != nil {
			b.Fatal(err)
		}
		last = seq
	}
	replay := func(b *testing.B, trusted *merkle.Checkpoint) *projector.Projector {
		p := projector.New(env.JS, projector.Options{Keyring: env.Keyring, Trusted: trusted})
		if err := p.Start(ctx); err != nil {
			b.Fatal(err)
		}
		if err := p.WaitApplied(ctx, last); err != nil {
			b.Fatal(err)
		}
		return p
	}
	first := replay(b, nil)
	root, err := first.Tree().Root(int64(last))
	first.Close(ctx)
	if err != nil {
		b.Fatal(err)
	}
	cp := &merkle.Checkpoint{Origin: "keyledger/KEYS", Size: int64(last), Root: root,
		Verified: &merkle.Verified{Keyring: env.Keyring.Digest(), Refused: []uint64{}}}
	// What the stream costs without the projector: the same ordered
	// consumer, reading each message's metadata and nothing more. On this
	// machine's two cores the embedded server and the client share the
	// CPU, and this is the ceiling of any replay.
	b.Run("stream_only", func(b *testing.B) {
		stream, err := env.JS.Stream(ctx, nats.KeysStream)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: 1})
			if err != nil {
				b.Fatal(err)
			}
			it, err := cons.Messages(projector.FollowOpts...)
			if err != nil {
				b.Fatal(err)
			}
			for seq := uint64(0); seq < last; {
				m, err := it.Next()
				if err != nil {
					b.Fatal(err)
				}
				meta, err := m.Metadata()
				if err != nil {
					b.Fatal(err)
				}
				seq = meta.Sequence.Stream
			}
			it.Stop()
		}
		b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
	for _, bc := range []struct {
		name    string
		trusted *merkle.Checkpoint
	}{{"every_signature", nil}, {"on_a_checkpoint", cp}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				p := replay(b, bc.trusted)
				if bc.trusted != nil && p.Stats().Vouched != last {
					b.Fatalf("%d events vouched for, want %d", p.Stats().Vouched, last)
				}
				p.Close(ctx)
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkProjector_apply is what the projector itself costs an event of a
// replay, the stream aside: stored KeyCreated messages, already read,
// checked and applied one after the other on one goroutine (a replay
// spreads the checks over the cores).
func BenchmarkProjector_apply(b *testing.B) {
	const n = 20000
	msgs := make([][]byte, n)
	subjects := make([]string, n)
	tree := &merkle.Tree{}
	for i := range msgs {
		c, _ := created(b, events.NewKeyID())
		msgs[i], subjects[i] = mustEncode(b, c), nats.KeySubject(c.KeyID)
		if _, err := tree.Append(msgs[i]); err != nil {
			b.Fatal(err)
		}
	}
	root, err := tree.Root(n)
	if err != nil {
		b.Fatal(err)
	}
	cp := &merkle.Checkpoint{Origin: "keyledger/KEYS", Size: n, Root: root,
		Verified: &merkle.Verified{Keyring: ring.Digest(), Refused: []uint64{}}}
	for _, bc := range []struct {
		name    string
		trusted *merkle.Checkpoint
	}{{"every_signature", nil}, {"on_a_checkpoint", cp}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p := projector.New(nil, projector.Options{Keyring: ring, Logger: slog.New(slog.DiscardHandler)})
				p.LeanOn(bc.trusted, n)
				for i, m := range msgs {
					p.ApplyMsg(uint64(i+1), subjects[i], m)
				}
				if st := p.Stats(); st.Applied != n || p.Broken() != "" {
					b.Fatalf("applied %d of %d (%s)", st.Applied, n, p.Broken())
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n*b.N), "ns/event")
		})
	}
}

// TestProjector_Forgeries is the attack of whoever can publish on
// keyledger.keys.> (a leaked admin NATS credential) without an admin
// signing key. Before events were signed, each of these minted a key with
// a secret of the attacker's choosing, or revoked a key that was not.
func TestProjector_Forgeries(t *testing.T) {
	other, _ := func() (*events.Signer, error) {
		skey, _, err := events.GenerateSigningKey(rand.NewChaCha8([32]byte{'o'}), "admin-test")
		if err != nil {
			return nil, err
		}
		return events.NewSigner(skey)
	}()
	minted, mintedSecret := created(t, "k_mint")
	good, goodSecret := created(t, "k_good")
	seal := func(s *events.Signer, ev events.Event) []byte {
		b, err := events.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		if b, err = s.Seal(b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	unsigned, _ := events.Encode(minted)
	signedGood := mustEncode(t, good)
	tampered := []byte(strings.Replace(string(mustEncode(t, minted)), `"acme"`, `"evil"`, 1))
	for _, tc := range []struct {
		name, subject string
		data          []byte
		reason        string
	}{
		{"unsigned", "keyledger.keys.k_mint", unsigned, "unsigned"},
		{"signed by an unknown key with a trusted key's name", "keyledger.keys.k_mint", seal(other, minted), "unknown_signer"},
		{"a signed event altered", "keyledger.keys.k_mint", tampered, "bad_signature"},
		{"a signed event copied onto another key's subject", "keyledger.keys.k_mint", signedGood, "subject_mismatch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []projector.Rejection
			p := projector.New(nil, projector.Options{Keyring: ring, OnReject: func(r projector.Rejection) { got = append(got, r) }})
			p.ApplyMsg(1, tc.subject, tc.data)
			if lookup(p, mintedSecret) != nil || lookup(p, goodSecret) != nil || p.Table().Len() != 0 {
				t.Fatal("a forged event was applied")
			}
			st := p.Stats()
			if st.Rejected != 1 || p.Rejected()[tc.reason] != 1 || st.LastSeq != 1 {
				t.Fatalf("stats %+v, rejected %v; want one %s", st, p.Rejected(), tc.reason)
			}
			if len(got) != 1 || got[0].Reason != tc.reason || got[0].Seq != 1 {
				t.Fatalf("OnReject heard %+v", got)
			}
			// The genuine event still applies after the forgery.
			apply(t, p, 2, good)
			if lookup(p, goodSecret) == nil {
				t.Fatal("genuine event not applied after a forgery")
			}
		})
	}
	t.Run("a revoke forged against a live key", func(t *testing.T) {
		p := projector.New(nil, projector.Options{Keyring: ring})
		apply(t, p, 1, good)
		forged, _ := events.Encode(revoked("k_good"))
		p.ApplyMsg(2, "keyledger.keys.k_good", forged)
		if e := lookup(p, goodSecret); e == nil || e.Revoked {
			t.Fatalf("an unsigned revoke took effect: %+v", e)
		}
	})
}

// BenchmarkProjector_Fresh is what the freshness lease adds to every
// verification: one monotonic clock read and an atomic load.
func BenchmarkProjector_Fresh(b *testing.B) {
	p := projector.New(nil, projector.Options{Keyring: ring})
	for b.Loop() {
		p.Fresh()
	}
}

// TestProjector_stalledConsumer is the collateral stall of the fault run:
// a node's consumer lives on one server, and when it stops delivering
// (its server died; here it is paused, which keeps its heartbeats going
// so nats.go never recreates it) the node's table froze while the stream
// moved on. Now the node reads what its consumer withholds from the
// stream's leader, within two checks.
func TestProjector_stalledConsumer(t *testing.T) {
	env := natstest.MustStart(t)
	log := env.MustLog(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := projector.New(env.JS, projector.Options{Keyring: env.Keyring, MaxStaleness: time.Second, Name: "stalled.node"})
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	c, secret, err := tryCreated(events.NewKeyID())
	if err != nil {
		t.Fatal(err)
	}
	seq, err := log.Append(ctx, c, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitApplied(ctx, seq); err != nil {
		t.Fatal(err)
	}

	// Pause the node's consumer, found by its name, for longer than the test.
	stream, err := env.JS.Stream(ctx, nats.KeysStream)
	if err != nil {
		t.Fatal(err)
	}
	var paused []string
	names := stream.ConsumerNames(ctx)
	for name := range names.Name() {
		if strings.HasPrefix(name, "projector-stalled_node-") {
			if _, err := env.JS.PauseConsumer(ctx, nats.KeysStream, name, time.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			paused = append(paused, name)
		}
	}
	if names.Err() != nil || len(paused) != 1 {
		t.Fatalf("the projector's consumer, by name: %v (err %v)", paused, names.Err())
	}

	seq, err = log.Append(ctx, revoked(c.KeyID), seq)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitApplied(ctx, seq); err != nil {
		t.Fatalf("the revoke never reached the node whose consumer stalled: %v", err)
	}
	h := keyledger.HashSecret(secret)
	if e := p.Table().Lookup(&h); e == nil || !e.Revoked {
		t.Fatal("the key is not revoked in the table")
	}
	if st := p.Stats(); st.Filled == 0 {
		t.Fatalf("applied without filling: %+v", st)
	}
	// And the node stays fresh: the lease follows the filled events.
	deadline := time.Now().Add(10 * time.Second)
	for !p.Fresh() {
		if time.Now().After(deadline) {
			t.Fatal("not fresh again after the fill")
		}
		time.Sleep(10 * time.Millisecond) // polling the lease
	}
}
