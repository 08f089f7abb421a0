package projector

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/nats"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// A node that starts with an empty data directory (a new node, a lost
// disk) would replay the whole ledger. Admin nodes therefore publish their
// snapshots, with the Merkle tree file beside them, to the fleet's
// JetStream Object Store (nats.Snapshots), each under a manifest signed
// with the node's ledger signing key:
//
//	keyledger snapshot
//	stream <KEYS creation, unix ns>
//	seq <sequence>
//	snapshot <object name> <SHA-256 digest>
//	tree <object name> <SHA-256 digest>
//
// under the name manifest-<sequence>-<publish time>, so that the newest
// sorts last and no publish ever replaces an object.
//
// A new node takes the newest manifest a key of its keyring signed (not
// retired before its sequence) of the stream it follows, within the
// stream's end, downloads both files checking their digests, and then
// starts as from its own snapshot: the snapshot's checksum, the stream's
// identity and the event at its sequence are checked again (Start), and
// the tree file's last leaf against the stream. A manifest that does not
// verify, a file whose digest differs, a snapshot of another stream or
// ahead of it is refused, and the node replays instead: never a wrong
// table. What a signed manifest can make a node load is what its signer
// could sign as events anyway, as for checkpoints (trust.go).

const (
	manifestPrefix = "manifest-"
	manifestHead   = "keyledger snapshot\n"
)

// manifest is a published snapshot's signed description.
type manifest struct {
	stream        int64
	seq           uint64
	snap, snapSum string
	tree, treeSum string
	signer        string
}

func (m manifest) text() string {
	return manifestHead + "stream " + strconv.FormatInt(m.stream, 10) + "\nseq " + strconv.FormatUint(m.seq, 10) +
		"\nsnapshot " + m.snap + " " + m.snapSum + "\ntree " + m.tree + " " + m.treeSum + "\n"
}

func parseManifest(text string) (manifest, bool) {
	body, ok := strings.CutPrefix(text, manifestHead)
	lines := strings.Split(body, "\n")
	if !ok || len(lines) != 5 || lines[4] != "" {
		return manifest{}, false
	}
	var m manifest
	var err1, err2 error
	if v, ok := strings.CutPrefix(lines[0], "stream "); ok {
		m.stream, err1 = strconv.ParseInt(v, 10, 64)
	}
	if v, ok := strings.CutPrefix(lines[1], "seq "); ok {
		m.seq, err2 = strconv.ParseUint(v, 10, 64)
	}
	f3, f4 := strings.Fields(lines[2]), strings.Fields(lines[3])
	if err1 != nil || err2 != nil || m.seq == 0 || len(f3) != 3 || f3[0] != "snapshot" || len(f4) != 3 || f4[0] != "tree" {
		return manifest{}, false
	}
	m.snap, m.snapSum, m.tree, m.treeSum = f3[1], f3[2], f4[1], f4[2]
	if m.text() != text {
		return manifest{}, false
	}
	return m, true
}

// PublishSnapshot publishes the snapshot at path (one this projector
// wrote) and the tree's first leaves up to its sequence to the fleet's
// bucket, with a manifest signed by signer.
func (p *Projector) PublishSnapshot(ctx context.Context, bucket *nats.Snapshots, path string, signer note.Signer) error {
	meta, err := peekSnapshotMeta(path)
	if err != nil {
		return err
	}
	return publishSnapshot(ctx, bucket, meta.streamCreated, meta.seq, path, filepath.Join(p.snapDir, TreeFile), signer)
}

func publishSnapshot(ctx context.Context, bucket *nats.Snapshots, streamCreated int64, seq uint64, snapPath, treePath string, signer note.Signer) error {
	// Names no publish reuses: replacing an object purges its chunks,
	// which no node role may do (and two admin nodes may publish a
	// snapshot of one sequence).
	id := fmt.Sprintf("%020d-%020d", seq, time.Now().UnixNano())
	m := manifest{stream: streamCreated, seq: seq, snap: "snap-" + id + ".bin", tree: "tree-" + id + ".hashes"}
	f, err := os.Open(snapPath)
	if err != nil {
		return err
	}
	defer f.Close()
	if m.snapSum, err = bucket.Put(ctx, m.snap, f); err != nil {
		return err
	}
	tf, err := os.Open(treePath)
	if err != nil {
		return err
	}
	defer tf.Close()
	// The file grows as events apply; its first hashes, those of the
	// snapshot's leaves, were synced before the snapshot was written.
	if m.treeSum, err = bucket.Put(ctx, m.tree, io.LimitReader(tf, tlog.StoredHashCount(int64(seq))*tlog.HashSize)); err != nil {
		return err
	}
	msg, err := note.Sign(&note.Note{Text: m.text()}, signer)
	if err != nil {
		return err
	}
	_, err = bucket.Put(ctx, manifestPrefix+id, strings.NewReader(string(msg)))
	return err
}

// NewestSnapshot returns the path and sequence of the newest snapshot in
// the snapshot directory ("" when there is none).
func (p *Projector) NewestSnapshot() (string, uint64) {
	names := listSnapshots(p.snapDir)
	if p.snapDir == "" || len(names) == 0 {
		return "", 0
	}
	path := filepath.Join(p.snapDir, names[0])
	meta, err := peekSnapshotMeta(path)
	if err != nil {
		return "", 0
	}
	return path, meta.seq
}

// Bootstrap fills an empty snapshot directory from the fleet's bucket
// (see above), for a following Start to load. It returns the sequence of
// the snapshot it fetched, or 0 (and why, logged) when it took none; the
// node then replays. It does nothing when the directory holds a snapshot.
func (p *Projector) Bootstrap(ctx context.Context, bucket *nats.Snapshots) (uint64, error) {
	if p.snapDir == "" || len(listSnapshots(p.snapDir)) > 0 {
		return 0, nil
	}
	stream, err := p.js.Stream(ctx, nats.KeysStream)
	if err != nil {
		return 0, err
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return 0, err
	}
	names, err := bucket.Names(ctx, manifestPrefix)
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(p.snapDir, 0o700); err != nil {
		return 0, err
	}
	for i := len(names) - 1; i >= 0; i-- {
		m, why := p.checkManifest(ctx, bucket, names[i], info.Created.UnixNano(), info.State.LastSeq)
		if why != "" {
			p.log.Warn("projector: published snapshot not used", "manifest", names[i], "why", why)
			continue
		}
		if err := p.fetch(ctx, bucket, m); err != nil {
			p.log.Warn("projector: published snapshot not used", "manifest", names[i], "why", keyledger.Describe(err))
			os.Remove(filepath.Join(p.snapDir, snapshotName(m.seq)))
			os.Remove(filepath.Join(p.snapDir, TreeFile))
			continue
		}
		p.log.Info("projector: fetched a published snapshot", "seq", m.seq, "signer", m.signer)
		return m.seq, nil
	}
	return 0, nil
}

// checkManifest reads and verifies one manifest; why is "" when it may be
// used.
func (p *Projector) checkManifest(ctx context.Context, bucket *nats.Snapshots, name string, streamCreated int64, streamLast uint64) (manifest, string) {
	msg, err := bucket.GetBytes(ctx, name)
	if err != nil {
		return manifest{}, keyledger.Describe(err)
	}
	if p.ring == nil {
		return manifest{}, "no keyring to check its signature with"
	}
	n, err := note.Open(msg, p.ring)
	if err != nil {
		return manifest{}, "its signature does not verify against the keyring: " + err.Error()
	}
	m, ok := parseManifest(n.Text)
	if !ok {
		return manifest{}, "malformed manifest"
	}
	if err := p.ring.CheckRetired(n, m.seq); err != nil {
		return manifest{}, err.Error()
	}
	m.signer = n.Sigs[0].Name
	switch {
	case m.stream != streamCreated:
		return manifest{}, "a snapshot of another KEYS stream"
	case m.seq > streamLast:
		return manifest{}, fmt.Sprintf("ahead of the stream (%d > %d)", m.seq, streamLast)
	case !strings.HasPrefix(m.snap, "snap-") || !strings.HasPrefix(m.tree, "tree-"):
		return manifest{}, "names objects this node would not write"
	}
	return m, ""
}

// fetch downloads a manifest's two files into the snapshot directory.
func (p *Projector) fetch(ctx context.Context, bucket *nats.Snapshots, m manifest) error {
	for _, f := range []struct{ obj, sum, file string }{{m.snap, m.snapSum, snapshotName(m.seq)}, {m.tree, m.treeSum, TreeFile}} {
		tmp := filepath.Join(p.snapDir, f.file+".part")
		out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		err = bucket.Get(ctx, f.obj, f.sum, out)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp, filepath.Join(p.snapDir, f.file))
		}
		if err != nil {
			os.Remove(tmp)
			return err
		}
	}
	return nil
}
