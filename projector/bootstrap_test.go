package projector_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/events/eventstest"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/nats/natstest"
	"github.com/keyledger/keyledger/node/nodetest"
	"github.com/keyledger/keyledger/projector"
)

// TestProjector_bootstrap: a node with an empty data directory comes up
// from a snapshot an admin node published to the fleet's bucket — each on
// its own role's permissions — and refuses a tampered, foreign or
// unsigned one, replaying instead.
func TestProjector_bootstrap(t *testing.T) {
	env := natstest.MustStart(t)
	log := env.MustLog(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var secrets []string
	var last uint64
	for i := range 200 {
		c, secret := created(t, events.NewKeyID())
		seq, err := log.Append(ctx, c, 0)
		if err != nil {
			t.Fatal(err)
		}
		secrets, last = append(secrets, secret), seq
		if i == 7 {
			if last, err = log.Append(ctx, revoked(c.KeyID), seq); err != nil {
				t.Fatal(err)
			}
		}
	}
	_, adminJS := env.ConnectAs(t, natstest.Admin)
	admin := projector.New(adminJS, projector.Options{Keyring: env.Keyring, Records: true, SnapshotDir: t.TempDir()})
	if err := admin.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if err := admin.WaitApplied(ctx, last); err != nil {
		t.Fatal(err)
	}
	path, err := admin.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	adminBucket, err := nats.OpenSnapshots(ctx, adminJS)
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.PublishSnapshot(ctx, adminBucket, path, env.Signer.Signer.NoteSigner()); err != nil {
		t.Fatal(err)
	}
	// A key after the snapshot: the tail the new node replays.
	c, tailSecret := created(t, events.NewKeyID())
	if last, err = log.Append(ctx, c, 0); err != nil {
		t.Fatal(err)
	}

	_, verifierJS := env.ConnectAs(t, natstest.Verifier)
	bucket, err := nats.OpenSnapshots(ctx, verifierJS)
	if err != nil {
		t.Fatal(err)
	}
	var logs *nodetest.SyncBuffer
	newNode := func(t *testing.T) (*projector.Projector, uint64) {
		t.Helper()
		logs = &nodetest.SyncBuffer{}
		p := projector.New(verifierJS, projector.Options{Keyring: env.Keyring, SnapshotDir: t.TempDir(),
			Logger: slog.New(slog.NewTextHandler(logs, nil))})
		seq, err := p.Bootstrap(ctx, bucket)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close(context.Background()) })
		if err := p.WaitApplied(ctx, last); err != nil {
			t.Fatal(err)
		}
		return p, seq
	}
	same := func(t *testing.T, p *projector.Projector) {
		t.Helper()
		for i, s := range append(secrets, tailSecret) {
			e := lookup(p, s)
			if e == nil || e.Revoked != (i == 7) {
				t.Fatalf("key %d: %+v", i, e)
			}
		}
		if p.Broken() != "" {
			t.Fatalf("broken: %s", p.Broken())
		}
	}

	t.Run("an empty node loads the published snapshot and replays only the tail", func(t *testing.T) {
		p, seq := newNode(t)
		if st := p.Stats(); seq != last-1 || st.Snapshot != last-1 {
			t.Fatalf("fetched %d, stats %+v; want the snapshot at %d", seq, st, last-1)
		}
		same(t, p)
		if root, err := p.Tree().Root(int64(last - 1)); err != nil || root != mustRoot(t, admin, last-1) {
			t.Fatalf("the fetched tree's root %v %v differs from the admin's", root, err)
		}
	})

	stream, err := env.JS.Stream(ctx, nats.KeysStream)
	if err != nil {
		t.Fatal(err)
	}
	created := stream.CachedInfo().Created.UnixNano()
	treePath := filepath.Join(filepath.Dir(path), projector.TreeFile)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// publish publishes data as the snapshot at the snapshot's sequence,
	// under a manifest of stream signed by s.
	publish := func(t *testing.T, data []byte, s *eventstest.Signer, stream int64) {
		t.Helper()
		snap := filepath.Join(t.TempDir(), filepath.Base(path))
		if err := os.WriteFile(snap, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := projector.PublishSnapshotFiles(ctx, adminBucket, stream, last-1, snap, treePath, s.Signer.NoteSigner()); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name    string
		publish func(t *testing.T)
		// refused: what the log says of the newest manifest; "" when
		// the files are fetched and the load refuses the snapshot.
		refused string
	}{
		{"attack: the snapshot object replaced after its manifest was signed (by whoever holds the operator nkey)", func(t *testing.T) {
			publish(t, good, env.Signer, created)
			operatorBucket, err := nats.OpenSnapshots(ctx, env.JS)
			if err != nil {
				t.Fatal(err)
			}
			names, err := operatorBucket.Names(ctx, "snap-")
			if err != nil || len(names) == 0 {
				t.Fatalf("snapshot objects %v %v", names, err)
			}
			if _, err := operatorBucket.Put(ctx, names[len(names)-1], strings.NewReader(string(flip(good)))); err != nil {
				t.Fatal(err)
			}
		}, "is not the object its manifest names"},
		{"a signed manifest of a corrupt snapshot", func(t *testing.T) { publish(t, flip(good), env.Signer, created) }, ""},
		{"attack: a manifest signed by a key the keyring does not hold", func(t *testing.T) {
			publish(t, good, eventstest.MustSigner(t, natstest.Admin, 2), created)
		}, "its signature does not verify"},
		{"a snapshot of another KEYS stream", func(t *testing.T) { publish(t, good, env.Signer, created+1) }, "a snapshot of another KEYS stream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.publish(t)
			p, _ := newNode(t)
			if tc.refused != "" && !strings.Contains(logs.String(), tc.refused) {
				t.Fatalf("the newest manifest was not refused for %q:\n%s", tc.refused, logs.String())
			}
			if tc.refused == "" && (p.Stats().Snapshot != 0 || !strings.Contains(logs.String(), "snapshot not used")) {
				t.Fatalf("the corrupt snapshot was loaded: %+v\n%s", p.Stats(), logs.String())
			}
			// An older, sound published snapshot, or a replay: never
			// a wrong table.
			same(t, p)
		})
	}
}

func flip(b []byte) []byte {
	c := append([]byte(nil), b...)
	c[len(c)/2] ^= 1
	return c
}

func mustRoot(t *testing.T, p *projector.Projector, n uint64) (root [32]byte) {
	t.Helper()
	r, err := p.Tree().Root(int64(n))
	if err != nil {
		t.Fatal(err)
	}
	return r
}
