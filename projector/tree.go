package projector

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/merkle"
	"github.com/keyledger/keyledger/nats"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/tlog"
)

// openTree makes p.tree the Merkle tree of the first LastSeq events: with
// a snapshot directory, the tree file beside the snapshots, cut back to
// the loaded snapshot's sequence and its last leaf checked against the
// stream's event there; leaves it lacks (a node upgraded from a version
// without the tree, a removed file) are hashed from the stream before the
// projector follows it. Without a snapshot directory the tree stays in
// memory and grows from the first event.
func (p *Projector) openTree(ctx context.Context, stream jetstream.Stream) error {
	if p.snapDir == "" {
		return nil
	}
	if err := os.MkdirAll(p.snapDir, 0o700); err != nil {
		return keyledger.Wrap(keyledger.Internal, err, "cannot create the snapshot directory")
	}
	t, err := merkle.OpenFile(filepath.Join(p.snapDir, TreeFile))
	if err != nil {
		return keyledger.Wrap(keyledger.Internal, err, "cannot open the ledger's Merkle tree")
	}
	p.tree = t
	seq := int64(p.lastSeq.Load())
	if t.Size() > seq {
		if err := t.Truncate(seq); err != nil {
			return keyledger.Wrap(keyledger.Internal, err, "cannot cut the Merkle tree back to the snapshot")
		}
	}
	if seq > 0 && t.Size() == seq {
		// The file is this node's own work, like its snapshots; what
		// is left to check is that its last leaf is the event the
		// snapshot ends on (read once, by checkSnapshotHead). A damaged
		// file elsewhere shows at the next checkpoint as a divergence.
		if h, err := t.LeafHash(seq - 1); err != nil || h != p.loadedLeaf {
			p.log.Warn("projector: the Merkle tree file does not end on the snapshot's event; rebuilding it from the stream")
			if err := t.Truncate(0); err != nil {
				return keyledger.Wrap(keyledger.Internal, err, "cannot reset the Merkle tree")
			}
		}
	}
	if t.Size() < seq {
		start := time.Now()
		from := t.Size()
		if err := p.hashFromStream(ctx, stream, uint64(seq)); err != nil {
			return err
		}
		p.log.Info("projector: Merkle tree rebuilt from the stream", "from", from, "to", seq, "took", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// hashFromStream appends to the tree the leaves of the stored events after
// its last one, up to sequence to.
func (p *Projector) hashFromStream(ctx context.Context, stream jetstream.Stream, to uint64) error {
	errGap := errors.New("gap")
	err := nats.ReadRange(ctx, stream, uint64(p.tree.Size())+1, to, func(seq uint64, _ string, data []byte) error {
		if want := uint64(p.tree.Size()) + 1; seq != want {
			p.lostEvent(want, seq)
			return errGap
		}
		if _, err := p.tree.AppendHash(tlog.RecordHash(data)); err != nil {
			return keyledger.Wrap(keyledger.Internal, err, "cannot rebuild the Merkle tree")
		}
		return nil
	})
	if errors.Is(err, errGap) {
		return nil
	}
	return err
}
