package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"os"
	"runtime"
	"sync"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/merkle"
	"golang.org/x/mod/sumdb/tlog"
)

// auditBench measures the provable audit: appending a leaf to the tree,
// proving an event's inclusion, and `keyledger audit verify` of a bundle
// of N signed events with a checkpoint (every signature checked, the tree
// recomputed).
func auditBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench audit", stderr)
	n := fs.Int("events", 1_000_000, "signed events in the bundle")
	asJSON := fs.Bool("json", false, "print one JSON object")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *n < 1 {
		return usageErr("--events must be positive")
	}
	skey, vkey, err := events.GenerateSigningKey(rand.Reader, "bench")
	if err != nil {
		return err
	}
	signer, err := events.NewSigner(skey)
	if err != nil {
		return err
	}
	ring, err := events.NewKeyring(vkey)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp("", "keyledger-audit-bundle-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	fmt.Fprintf(stderr, "signing %d events into a bundle…\n", *n)
	leaves, err := writeBundle(ctx, f, *n, signer)
	if err != nil {
		return err
	}

	// The tree: append and prove, on the leaves just written.
	tree := &merkle.Tree{}
	start := time.Now()
	for _, l := range leaves {
		if _, err := tree.AppendHash(l); err != nil {
			return err
		}
	}
	appendNs := float64(time.Since(start).Nanoseconds()) / float64(*n)
	size := tree.Size()
	root, _ := tree.Root(size)
	const proofs = 10_000
	r := mrand.New(mrand.NewPCG(1, 2))
	start = time.Now()
	for range proofs {
		if _, err := tree.ProveLeaf(size, r.Int64N(size)); err != nil {
			return err
		}
	}
	proofUs := float64(time.Since(start).Microseconds()) / proofs

	cp := merkle.Checkpoint{Origin: audit.DefaultOrigin, Size: size, Root: root, Time: time.Now()}
	note, err := cp.Sign(signer.NoteSigner())
	if err != nil {
		return err
	}
	bw := audit.NewBundleWriter(f)
	bw.Checkpoint(audit.BundleCheckpoint{Checkpoint: string(note)})
	if err := bw.Flush(); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	fi, _ := f.Stat()
	fmt.Fprintf(stderr, "verifying the bundle (%d MB)…\n", fi.Size()>>20)
	start = time.Now()
	rep, err := audit.Verify(f, audit.VerifyOptions{Keyring: ring})
	if err != nil {
		return err
	}
	took := time.Since(start)
	if !rep.OK || rep.Events != size || rep.CheckpointsVerified != 1 {
		return fmt.Errorf("the bundle did not verify: %+v", rep.Failures)
	}
	rate := float64(size) / took.Seconds()
	res := Result{Name: "audit_verify_events_per_second", Value: math.Round(rate), Unit: "events/s",
		Extra: map[string]float64{"events": float64(size), "verify_seconds": took.Seconds(), "append_ns": appendNs,
			"proof_us": proofUs, "bundle_mb": float64(fi.Size()) / (1 << 20), "cores": float64(runtime.GOMAXPROCS(0))},
		Notes: "audit verify of a bundle: every Ed25519 signature checked, the Merkle tree recomputed, one checkpoint"}
	return report(stdout, *asJSON, res, [][]string{
		{"events", fmt.Sprint(size)},
		{"audit verify", fmt.Sprintf("%.0f events/s (%.2f s)", rate, took.Seconds())},
		{"tree append", fmt.Sprintf("%.0f ns/event", appendNs)},
		{"inclusion proof", fmt.Sprintf("%.1f µs at %d events", proofUs, size)},
		{"bundle", fmt.Sprintf("%.0f MB", float64(fi.Size())/(1<<20))},
	})
}

// writeBundle writes a bundle header and n signed KeyCreated events (every
// tenth a revoke of the one before) to w, signing on every core, and
// returns the events' leaf hashes in order.
func writeBundle(ctx context.Context, w io.Writer, n int, signer *events.Signer) ([]tlog.Hash, error) {
	bw := audit.NewBundleWriter(w)
	bw.Header(audit.BundleHeader{Origin: audit.DefaultOrigin, Size: int64(n), ExportedAt: time.Now().UTC()})
	type item struct {
		subject string
		data    []byte
	}
	const chunk = 4096
	leaves := make([]tlog.Hash, 0, n)
	at := time.Now().UTC()
	for base := 0; base < n; base += chunk {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		m := min(chunk, n-base)
		items := make([]item, m)
		var wg sync.WaitGroup
		var firstErr error
		var mu sync.Mutex
		workers := runtime.GOMAXPROCS(0)
		for wkr := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var h keyledger.Hash
				for i := wkr; i < m; i += workers {
					rand.Read(h[:])
					subject, b, err := signedCreate(signer, base+i, h, at)
					if err != nil {
						mu.Lock()
						firstErr = err
						mu.Unlock()
						return
					}
					items[i] = item{subject, b}
				}
			}()
		}
		wg.Wait()
		if firstErr != nil {
			return nil, firstErr
		}
		for i, it := range items {
			bw.Event(audit.BundleEvent{Seq: uint64(base + i + 1), Subject: it.subject, Data: it.data})
			leaves = append(leaves, tlog.RecordHash(it.data))
		}
	}
	return leaves, bw.Flush()
}
