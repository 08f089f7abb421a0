package projector_test

import (
	"context"
	"strings"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/merkle"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/nats/natstest"
	"github.com/keyledger/keyledger/node/nodetest"
	"github.com/keyledger/keyledger/projector"
)

// TestProjector_trustedReplay: a replay that leans on a checkpoint's
// signature builds the table a full replay builds, and a checkpoint that
// does not match the stream, or lies about what was refused, fails the
// node closed before it can serve.
func TestProjector_trustedReplay(t *testing.T) {
	env := natstest.MustStart(t)
	log := env.MustLog(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var secrets []string
	for i := range 300 {
		c, secret := created(t, events.NewKeyID())
		seq, err := log.Append(ctx, c, 0)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, secret)
		if i%10 == 0 {
			if _, err = log.Append(ctx, revoked(c.KeyID), seq); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Forgeries in the ledger: an unsigned create of a key of the
	// attacker's, a signed event on another key's subject.
	evil, evilSecret := created(t, "key_evil")
	unsigned, _ := events.Encode(evil)
	if _, err := env.JS.Publish(ctx, nats.KeySubject("key_evil"), unsigned); err != nil {
		t.Fatal(err)
	}
	good, goodSecret := created(t, "key_good")
	sealed := mustEncode(t, good)
	if _, err := env.JS.Publish(ctx, nats.KeySubject("key_other"), sealed); err != nil {
		t.Fatal(err)
	}
	c, _ := created(t, events.NewKeyID())
	last, err := log.Append(ctx, c, 0)
	if err != nil {
		t.Fatal(err)
	}

	start := func(t *testing.T, trusted *merkle.Checkpoint) *projector.Projector {
		t.Helper()
		p := projector.New(env.JS, projector.Options{Keyring: env.Keyring, Trusted: trusted})
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close(context.Background()) })
		return p
	}
	full := start(t, nil)
	if err := full.WaitApplied(ctx, last); err != nil {
		t.Fatal(err)
	}
	refused, ok := full.RefusedThrough(last)
	if !ok || len(refused) != 2 {
		t.Fatalf("refused %v, want the two forgeries", refused)
	}
	root, err := full.Tree().Root(int64(last))
	if err != nil {
		t.Fatal(err)
	}
	checkpoint := func(edit func(*merkle.Checkpoint)) *merkle.Checkpoint {
		cp := &merkle.Checkpoint{Origin: "keyledger/KEYS", Size: int64(last), Root: root,
			Verified: &merkle.Verified{Keyring: env.Keyring.Digest(), Refused: refused}}
		if edit != nil {
			edit(cp)
		}
		return cp
	}

	t.Run("the table a full replay builds, without checking the signatures the checkpoint vouches for", func(t *testing.T) {
		p := start(t, checkpoint(nil))
		if err := p.WaitApplied(ctx, last); err != nil {
			t.Fatal(err)
		}
		if p.Broken() != "" {
			t.Fatalf("broken: %s", p.Broken())
		}
		st, want := p.Stats(), full.Stats()
		if st.Vouched != last-2 || st.Applied != want.Applied || st.Rejected != want.Rejected || st.Keys != want.Keys {
			t.Fatalf("stats %+v, want those of the full replay %+v with %d events vouched for", st, want, last-2)
		}
		for _, s := range secrets {
			h := keyledger.HashSecret(s)
			a, b := p.Table().Lookup(&h), full.Table().Lookup(&h)
			if a == nil || b == nil || a.ID() != b.ID() || a.Revoked != b.Revoked {
				t.Fatalf("key %v differs from the full replay's %v", a, b)
			}
		}
		for _, s := range []string{evilSecret, goodSecret} {
			if lookup(p, s) != nil {
				t.Fatal("a forgery the checkpoint lists was applied")
			}
		}
		if got, _ := p.RefusedThrough(last); len(got) != 2 {
			t.Fatalf("refused %v after the trusted replay, want the checkpoint's", got)
		}
	})

	t.Run("attack: a checkpoint that calls a genuine event refused", func(t *testing.T) {
		// Before the listed events were checked again, a checkpoint's
		// signer could make replaying nodes skip a revocation.
		p := start(t, checkpoint(func(cp *merkle.Checkpoint) { cp.Verified.Refused = append([]uint64{2}, refused...) }))
		nodetest.WaitFor(t, 10*time.Second, "the node to fail closed", func() bool { return p.Broken() != "" })
		if !strings.Contains(p.Broken(), "lists event 2 as refused") || p.Ready() {
			t.Fatalf("broken %q, ready %v", p.Broken(), p.Ready())
		}
	})

	t.Run("attack: a stream that does not hash to the checkpoint it is replayed on", func(t *testing.T) {
		// The events were applied unchecked: the root at the
		// checkpoint's size is what stands between them and serving.
		other := root
		other[0] ^= 1
		p := start(t, checkpoint(func(cp *merkle.Checkpoint) { cp.Root = other }))
		nodetest.WaitFor(t, 10*time.Second, "the node to fail closed", func() bool { return p.Broken() != "" })
		if !strings.Contains(p.Broken(), "ledger_divergence") || p.Ready() {
			t.Fatalf("broken %q, ready %v", p.Broken(), p.Ready())
		}
	})

	t.Run("a checkpoint under another keyring, or without the statement, vouches for nothing", func(t *testing.T) {
		for _, cp := range []*merkle.Checkpoint{
			checkpoint(func(cp *merkle.Checkpoint) { cp.Verified.Keyring[0] ^= 1 }),
			checkpoint(func(cp *merkle.Checkpoint) { cp.Verified = nil }),
		} {
			p := start(t, cp)
			if err := p.WaitApplied(ctx, last); err != nil {
				t.Fatal(err)
			}
			if st := p.Stats(); st.Vouched != 0 || p.Broken() != "" || st.Rejected != 2 {
				t.Fatalf("stats %+v, broken %q", st, p.Broken())
			}
		}
	})

	t.Run("a checkpoint beyond the stream's end vouches for nothing", func(t *testing.T) {
		p := start(t, checkpoint(func(cp *merkle.Checkpoint) { cp.Size = int64(last) + 5 }))
		if err := p.WaitApplied(ctx, last); err != nil {
			t.Fatal(err)
		}
		if st := p.Stats(); st.Vouched != 0 {
			t.Fatalf("stats %+v", st)
		}
	})

	t.Run("a snapshot keeps the refused list", func(t *testing.T) {
		dir := t.TempDir()
		p := projector.New(env.JS, projector.Options{Keyring: env.Keyring, SnapshotDir: dir})
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := p.WaitApplied(ctx, last); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Snapshot(); err != nil {
			t.Fatal(err)
		}
		p.Close(ctx)
		q := start2(t, env, dir)
		if got, _ := q.RefusedThrough(last); len(got) != 2 || got[0] != refused[0] || got[1] != refused[1] || q.Stats().Snapshot != last {
			t.Fatalf("refused %v from the snapshot (stats %+v), want %v", got, q.Stats(), refused)
		}
	})
}

func start2(t *testing.T, env *natstest.Env, dir string) *projector.Projector {
	t.Helper()
	p := projector.New(env.JS, projector.Options{Keyring: env.Keyring, SnapshotDir: dir})
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	return p
}
