package projector_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/nats/natstest"
	"github.com/keyledger/keyledger/projector"
)

// appendKeys writes n creates (every third revoked, every fifth with an
// expiry and a rate limit, every seventh with an id not of keyledger's
// form, which a table keeps as text) and returns the last sequence.
func appendKeys(tb testing.TB, log *nats.Log, n int) uint64 {
	tb.Helper()
	last, err := tryAppendKeys(log, n)
	if err != nil {
		tb.Fatal(err)
	}
	return last
}

// tryAppendKeys is appendKeys for goroutines other than the test's: it
// returns the first error instead of failing the test.
func tryAppendKeys(log *nats.Log, n int) (uint64, error) {
	ctx := context.Background()
	var last uint64
	for i := 0; i < n; i++ {
		id := events.NewKeyID()
		if i%7 == 3 {
			id = "Legacy_" + id[4:]
		}
		c, _, err := tryCreated(id)
		if err != nil {
			return last, err
		}
		c.Owner = []string{"acme", "globex", ""}[i%3]
		if i%5 == 0 {
			exp := t0.Add(time.Duration(i) * time.Hour)
			c.ExpiresAt = &exp
			c.RateLimit = &keyledger.RateLimit{PerSecond: 2.5, Burst: 7}
			c.Permissions = []string{"all"}
		}
		seq, err := log.Append(ctx, c, 0)
		if err != nil {
			return last, err
		}
		last = seq
		if i%3 == 0 {
			if last, err = log.Append(ctx, revoked(c.KeyID), seq); err != nil {
				return last, err
			}
		}
	}
	return last, nil
}

func mustFollow(tb testing.TB, env *natstest.Env, opts projector.Options, seq uint64) *projector.Projector {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts.Keyring = env.Keyring
	p := projector.New(env.JS, opts)
	if err := p.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	if err := p.WaitApplied(ctx, seq); err != nil {
		tb.Fatal(err)
	}
	return p
}

func sameRecords(t *testing.T, a, b *projector.Projector) {
	t.Helper()
	ka, kb := a.Keys(projector.Filter{}, t0), b.Keys(projector.Filter{}, t0)
	if len(ka) != len(kb) {
		t.Fatalf("%d records vs %d", len(ka), len(kb))
	}
	for i := range ka {
		x, y := ka[i], kb[i]
		if !reflect.DeepEqual(x, y) {
			t.Fatalf("record %d differs:\n%+v\n%+v", i, x, y)
		}
	}
}

func TestProjector_snapshots(t *testing.T) {
	env := natstest.MustStart(t)
	log := env.MustLog(t)
	dir := t.TempDir()
	last := appendKeys(t, log, 300)
	ctx := context.Background()

	full := mustFollow(t, env, projector.Options{Records: true}, last)
	defer full.Close(ctx)

	// A node follows with snapshots on and writes one on Close.
	p1 := mustFollow(t, env, projector.Options{Records: true, SnapshotDir: dir}, last)
	if err := p1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	snaps, _ := filepath.Glob(filepath.Join(dir, "snap-*.bin"))
	if len(snaps) != 1 {
		t.Fatalf("snapshots after close: %v", snaps)
	}

	t.Run("restart loads the snapshot and replays only the tail", func(t *testing.T) {
		tail := appendKeys(t, log, 20)
		p2 := projector.New(env.JS, projector.Options{Records: true, SnapshotDir: dir, Keyring: env.Keyring})
		if err := p2.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer p2.Close(ctx)
		if got := p2.Stats().Applied; got > 40 {
			// the snapshot counted for everything before the tail
			t.Logf("applied %d events after the snapshot", got)
		}
		if err := p2.WaitApplied(ctx, tail); err != nil {
			t.Fatal(err)
		}
		if err := full.WaitApplied(ctx, tail); err != nil {
			t.Fatal(err)
		}
		if p2.Stats().Applied > 40 {
			t.Fatalf("replayed %d events: the snapshot was not used", p2.Stats().Applied)
		}
		if p2.Table().Digest() != full.Table().Digest() {
			t.Fatal("snapshot + tail differs from a full replay")
		}
		sameRecords(t, p2, full)
		last = tail
	})

	t.Run("a corrupt snapshot falls back to full replay", func(t *testing.T) {
		cdir := t.TempDir()
		b, _ := os.ReadFile(snaps[0])
		b[len(b)/2] ^= 0xFF
		os.WriteFile(filepath.Join(cdir, filepath.Base(snaps[0])), b, 0o600)
		p := mustFollow(t, env, projector.Options{Records: true, SnapshotDir: cdir}, last)
		defer p.Close(ctx)
		if p.Table().Digest() != full.Table().Digest() || p.Stats().Applied < 300 {
			t.Fatalf("corrupt snapshot: applied %d, digest match %v", p.Stats().Applied, p.Table().Digest() == full.Table().Digest())
		}
	})

	t.Run("a truncated snapshot falls back to full replay", func(t *testing.T) {
		cdir := t.TempDir()
		b, _ := os.ReadFile(snaps[0])
		os.WriteFile(filepath.Join(cdir, filepath.Base(snaps[0])), b[:len(b)/3], 0o600)
		p := mustFollow(t, env, projector.Options{Records: true, SnapshotDir: cdir}, last)
		defer p.Close(ctx)
		if p.Table().Digest() != full.Table().Digest() {
			t.Fatal("truncated snapshot: wrong table")
		}
	})

	t.Run("a verifier node's snapshot (no records) is not used by an admin node", func(t *testing.T) {
		vdir := t.TempDir()
		v := mustFollow(t, env, projector.Options{SnapshotDir: vdir}, last)
		if err := v.Close(ctx); err != nil {
			t.Fatal(err)
		}
		// but another verifier node uses it
		v2 := mustFollow(t, env, projector.Options{SnapshotDir: vdir}, last)
		defer v2.Close(ctx)
		if v2.Stats().Applied != 0 || v2.Table().Digest() != full.Table().Digest() {
			t.Fatalf("verifier restart: applied %d", v2.Stats().Applied)
		}
		a := mustFollow(t, env, projector.Options{Records: true, SnapshotDir: vdir}, last)
		defer a.Close(ctx)
		if a.Stats().Applied < 300 {
			t.Fatalf("admin node used a snapshot without records (applied %d)", a.Stats().Applied)
		}
		sameRecords(t, a, full)
	})
}

// The attack of an operator-level credential (or a fault) that deletes KEYS
// and recreates it without the revocations: a node that restarts from its
// snapshot must not follow the new history. Before, it silently replayed
// the new stream (and the old revocations were gone); a node running
// through the replacement kept its sequence and dropped the new stream's
// first events as duplicates.
func TestProjector_streamReplaced(t *testing.T) {
	ctx := context.Background()
	replace := func(t *testing.T, env *natstest.Env) uint64 {
		t.Helper()
		if err := env.JS.DeleteStream(ctx, nats.KeysStream); err != nil {
			t.Fatal(err)
		}
		if err := nats.EnsureStreams(ctx, env.JS, nats.StreamConfig{}); err != nil {
			t.Fatal(err)
		}
		return appendKeys(t, env.MustLog(t), 100) // a longer, different history
	}
	assertBroken := func(t *testing.T, p *projector.Projector, applied uint64) {
		t.Helper()
		if p.Ready() || p.Broken() == "" || p.LastSeq() != applied {
			t.Fatalf("ready %v, broken %q, last seq %d (want %d): the node follows a replaced stream", p.Ready(), p.Broken(), p.LastSeq(), applied)
		}
	}

	t.Run("restart from a snapshot", func(t *testing.T) {
		env := natstest.MustStart(t)
		dir := t.TempDir()
		last := appendKeys(t, env.MustLog(t), 50)
		p := mustFollow(t, env, projector.Options{SnapshotDir: dir}, last)
		if err := p.Close(ctx); err != nil {
			t.Fatal(err)
		}
		replace(t, env)
		var heard []projector.Rejection
		p2 := projector.New(env.JS, projector.Options{SnapshotDir: dir, Keyring: env.Keyring,
			OnReject: func(r projector.Rejection) { heard = append(heard, r) }})
		if err := p2.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer p2.Close(ctx)
		assertBroken(t, p2, 0)
		if len(heard) != 1 || heard[0].Reason != "stream_replaced" {
			t.Fatalf("OnReject heard %+v", heard)
		}
	})

	t.Run("while following", func(t *testing.T) {
		env := natstest.MustStart(t)
		last := appendKeys(t, env.MustLog(t), 50)
		broken := make(chan struct{})
		p := projector.New(env.JS, projector.Options{Keyring: env.Keyring, MaxStaleness: 250 * time.Millisecond,
			OnReject: func(r projector.Rejection) {
				if r.Reason == "stream_replaced" {
					close(broken)
				}
			}})
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer p.Close(ctx)
		if err := p.WaitApplied(ctx, last); err != nil {
			t.Fatal(err)
		}
		replace(t, env)
		select {
		case <-broken:
		case <-time.After(20 * time.Second):
			t.Fatal("the projector did not notice KEYS was replaced")
		}
		if p.Ready() || p.Broken() == "" {
			t.Fatalf("ready %v broken %q", p.Ready(), p.Broken())
		}
	})
}

// Snapshots taken while events keep arriving are consistent cuts: each
// one is used on load (none is refused as inconsistent, forcing a full
// replay) and gives the exact table once the tail is replayed.
func TestProjector_snapshotWhileWriting(t *testing.T) {
	env := natstest.MustStart(t)
	log := env.MustLog(t)
	ctx := context.Background()
	dir := t.TempDir()
	p := mustFollow(t, env, projector.Options{Records: true, SnapshotDir: dir}, 0)
	// Four writers, so that events land while a snapshot is being cut.
	const writers = 4
	errs := make(chan error, writers)
	for range writers {
		go func() {
			_, err := tryAppendKeys(log, 150)
			errs <- err
		}()
	}
	// Snapshot as fast as possible until the writers are done, keeping a
	// copy of each distinct one.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := p.WaitApplied(wctx, 1); err != nil {
		t.Fatal(err)
	}
	kept := map[uint64]string{}
	for running := writers; running > 0; {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
			running--
			continue
		default:
		}
		path, err := p.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(path)
		var snapSeq uint64
		if _, err := fmt.Sscanf(name, "snap-%d.bin", &snapSeq); err != nil {
			t.Fatal(err)
		}
		if _, ok := kept[snapSeq]; ok {
			continue
		}
		d := filepath.Join(t.TempDir(), "snap")
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		kept[snapSeq] = d
	}
	info, err := env.JS.Stream(ctx, nats.KeysStream)
	if err != nil {
		t.Fatal(err)
	}
	last := info.CachedInfo().State.LastSeq
	if err := p.WaitApplied(ctx, last); err != nil {
		t.Fatal(err)
	}
	p.Close(ctx)
	if len(kept) < 3 {
		t.Fatalf("only %d distinct snapshots taken during the writes", len(kept))
	}
	full := mustFollow(t, env, projector.Options{Records: true}, last)
	defer full.Close(ctx)
	for seq, d := range kept {
		p2 := mustFollow(t, env, projector.Options{Records: true, SnapshotDir: d}, last)
		if got := p2.Stats().Snapshot; got != seq {
			t.Fatalf("the snapshot at %d was not used (loaded %d): taken mid-write, it was inconsistent", seq, got)
		}
		if p2.Table().Digest() != full.Table().Digest() {
			t.Fatalf("table restored from the snapshot at %d differs", seq)
		}
		sameRecords(t, p2, full)
		p2.Close(ctx)
	}
	t.Logf("%d snapshots taken during %d events, all used and exact", len(kept), last)
}
