// Package merkle keeps the Merkle tree of the ledger (RFC 6962 hashing,
// through golang.org/x/mod/sumdb/tlog: no Merkle code of our own) and its
// signed checkpoints (golang.org/x/mod/sumdb/note, in the C2SP checkpoint
// form), so that anyone holding an old checkpoint can prove that no event
// of the KEYS stream was altered, removed, reordered or inserted since.
//
// A leaf is an event exactly as the stream stores it, signature included;
// leaf i is stream sequence i+1.
package merkle

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Tree is an append-only Merkle tree: every stored hash (about two per
// leaf, 32 bytes each) in tlog's storage order. A tree opened with
// OpenFile keeps them in a file (64 B per leaf on disk, read back through
// the page cache) and in memory only the last few thousand not yet
// written plus one hash per level, so a ledger of ten million events does
// not cost the node 640 MB of heap; a zero Tree keeps them all in memory.
// It is safe for concurrent use; appends are serialized.
type Tree struct {
	mu sync.RWMutex
	n  int64
	// Stored hashes [0, flushed) are in f; [flushed, flushed+len(tail))
	// in tail.
	f        *os.File
	flushed  int64
	tail     []tlog.Hash
	flushErr error // the last write's failure, until one succeeds
	// frontier[l] is the newest stored hash of level l: the only hashes
	// an append reads (its left siblings) and the ones the root of the
	// whole tree is made of, so neither touches the file.
	frontier [64]stored
}

// stored is one stored hash and its index (ok: set).
type stored struct {
	idx int64
	h   tlog.Hash
	ok  bool
}

// flushAt is how many stored hashes wait in memory before one write.
const flushAt = 2048

// Size is the number of leaves.
func (t *Tree) Size() int64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.n
}

// Append adds a leaf and returns its index.
func (t *Tree) Append(data []byte) (int64, error) {
	return t.AppendHash(tlog.RecordHash(data))
}

// AppendHash adds a leaf by its record hash (tlog.RecordHash of its data,
// which callers may compute in parallel) and returns its index.
func (t *Tree) AppendHash(h tlog.Hash) (int64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	// What tlog.StoredHashesForRecordHash computes, without its three
	// allocations an append (a replay appends millions): the leaf, then
	// for each trailing 1 bit of n the subtree it completes, hashed with
	// the newest stored hash of the level below, which is the frontier's.
	base := t.flushed + int64(len(t.tail))
	m := bits.TrailingZeros64(uint64(t.n + 1))
	for l := range m {
		if want := tlog.StoredHashIndex(l, t.n>>l-1); !t.frontier[l].ok || t.frontier[l].idx != want {
			return 0, fmt.Errorf("merkle: no stored hash %d to append leaf %d with", want, t.n)
		}
	}
	t.tail = append(t.tail, h)
	for l := range m {
		h = tlog.NodeHash(t.frontier[l].h, h)
		t.tail = append(t.tail, h)
	}
	// Only now: the loop above read the frontier as it was.
	for i := range m + 1 {
		t.remember(base + int64(i))
	}
	t.n++
	if t.f != nil && len(t.tail) >= flushAt && len(t.tail)%flushAt < m+1 {
		// A failed write (a full disk) loses nothing: the hashes stay
		// in memory, the next flushAt appends try again, and Sync
		// reports it. The tree must keep growing with the ledger.
		t.flushErr = t.flush()
	}
	return t.n - 1, nil
}

func (t *Tree) remember(idx int64) {
	level, _ := tlog.SplitStoredHashIndex(idx)
	t.frontier[level] = stored{idx: idx, h: t.tail[idx-t.flushed], ok: true}
}

// refront rebuilds the frontier of a tree of t.n leaves from its stored
// hashes: level l's newest node covers leaves up to the last multiple of
// 2^l ≤ n.
func (t *Tree) refront() error {
	t.frontier = [64]stored{}
	for l := 0; l < 63 && t.n>>l > 0; l++ {
		idx := tlog.StoredHashIndex(l, t.n>>l-1)
		hs, err := hashReader{t}.ReadHashes([]int64{idx})
		if err != nil {
			return err
		}
		t.frontier[l] = stored{idx: idx, h: hs[0], ok: true}
	}
	return nil
}

// flush writes the tail to the file (no fsync: see Sync).
func (t *Tree) flush() error {
	if t.f == nil || len(t.tail) == 0 {
		return nil
	}
	buf := make([]byte, 0, len(t.tail)*tlog.HashSize)
	for i := range t.tail {
		buf = append(buf, t.tail[i][:]...)
	}
	if _, err := t.f.WriteAt(buf, t.flushed*tlog.HashSize); err != nil {
		return fmt.Errorf("merkle: writing stored hashes: %w", err)
	}
	t.flushed += int64(len(t.tail))
	t.tail = t.tail[:0]
	return nil
}

// Sync writes every stored hash to the file and syncs it: after Sync, the
// file alone holds the tree of Size leaves. A tree in memory has nothing
// to sync.
func (t *Tree) Sync() error {
	t.mu.Lock()
	f := t.f
	if f == nil {
		t.mu.Unlock()
		return nil
	}
	t.flushErr = t.flush()
	err := t.flushErr
	t.mu.Unlock()
	if err != nil {
		return err
	}
	// The fsync runs without the lock: appends (the apply loop, a
	// revocation) must not wait for the disk.
	return f.Sync()
}

// Close writes what is pending and closes the file.
func (t *Tree) Close() error {
	if err := t.Sync(); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.f == nil {
		return nil
	}
	err := errors.Join(t.flush(), t.f.Close())
	t.f = nil
	return err
}

// OpenFile opens the tree stored in the file at path, creating it when
// missing. The tree has every leaf whose stored hashes the file holds
// whole: a file cut short by a crash opens at the last complete leaf.
// Nothing in the file is checked: it is the node's own work in its own
// data directory, and the caller compares it with the ledger (a leaf
// against the event it hashes, the root against signed checkpoints).
func OpenFile(path string) (*Tree, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("merkle: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("merkle: %w", err)
	}
	records := st.Size() / tlog.HashSize
	// The largest n whose stored hashes fit in the file.
	n := int64(sort.Search(int(records)+1, func(n int) bool { return tlog.StoredHashCount(int64(n)) > records })) - 1
	t := &Tree{f: f}
	if err := t.load(n); err != nil {
		f.Close()
		return nil, err
	}
	return t, nil
}

// load makes the tree the file's first n leaves.
func (t *Tree) load(n int64) error {
	count := tlog.StoredHashCount(n)
	if err := t.f.Truncate(count * tlog.HashSize); err != nil {
		return fmt.Errorf("merkle: %w", err)
	}
	t.n, t.flushed, t.tail = n, count, t.tail[:0]
	return t.refront()
}

// Truncate cuts the tree to its first n leaves (n ≤ Size): a node whose
// snapshot is older than its tree file rolls the tree back to it.
func (t *Tree) Truncate(n int64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n < 0 || n > t.n {
		return fmt.Errorf("merkle: cannot truncate a tree of %d leaves to %d", t.n, n)
	}
	if n == t.n {
		return nil
	}
	if t.f == nil {
		t.tail, t.n = t.tail[:tlog.StoredHashCount(n)], n
		return t.refront()
	}
	if err := t.flush(); err != nil {
		return err
	}
	return t.load(n)
}

// LeafHash returns leaf i's record hash.
func (t *Tree) LeafHash(i int64) (tlog.Hash, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if i < 0 || i >= t.n {
		return tlog.Hash{}, fmt.Errorf("merkle: no leaf %d in a tree of %d", i, t.n)
	}
	hs, err := hashReader{t}.ReadHashes([]int64{tlog.StoredHashIndex(0, i)})
	if err != nil {
		return tlog.Hash{}, err
	}
	return hs[0], nil
}

// hashReader reads stored hashes with t.mu already held.
type hashReader struct{ t *Tree }

func (r hashReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	t := r.t
	out := make([]tlog.Hash, len(indexes))
	var fromFile []int
	for i, x := range indexes {
		if x < 0 || x >= t.flushed+int64(len(t.tail)) {
			return nil, fmt.Errorf("merkle: stored hash %d not in a tree of %d leaves", x, t.n)
		}
		if x >= t.flushed {
			out[i] = t.tail[x-t.flushed]
			continue
		}
		if level, _ := tlog.SplitStoredHashIndex(x); t.frontier[level].ok && t.frontier[level].idx == x {
			out[i] = t.frontier[level].h
			continue
		}
		fromFile = append(fromFile, i)
	}
	if len(fromFile) == 0 {
		return out, nil
	}
	idx := make([]int64, len(fromFile))
	for j, i := range fromFile {
		idx[j] = indexes[i]
	}
	hs, err := t.readFile(idx)
	if err != nil {
		return nil, err
	}
	for j, i := range fromFile {
		out[i] = hs[j]
	}
	return out, nil
}

func (t *Tree) readFile(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if t.f == nil {
			return nil, fmt.Errorf("merkle: stored hash %d is not kept", x)
		}
		if _, err := t.f.ReadAt(out[i][:], x*tlog.HashSize); err != nil {
			return nil, fmt.Errorf("merkle: reading stored hash %d: %w", x, err)
		}
	}
	return out, nil
}

// Root is the tree hash of the first n leaves (n ≤ Size).
func (t *Tree) Root(n int64) (tlog.Hash, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if n < 0 || n > t.n {
		return tlog.Hash{}, fmt.Errorf("merkle: no tree of %d leaves (size %d)", n, t.n)
	}
	return tlog.TreeHash(n, hashReader{t})
}

// ProveLeaf proves that leaf i is in the tree of the first n leaves.
func (t *Tree) ProveLeaf(n, i int64) (tlog.RecordProof, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if n > t.n || i < 0 || i >= n {
		return nil, fmt.Errorf("merkle: no leaf %d in a tree of %d (size %d)", i, n, t.n)
	}
	return tlog.ProveRecord(n, i, hashReader{t})
}

// ProveConsistency proves that the tree of the first m leaves extends the
// tree of the first n (n ≤ m ≤ Size): the log only grew.
func (t *Tree) ProveConsistency(n, m int64) (tlog.TreeProof, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if n < 0 || n > m || m > t.n {
		return nil, fmt.Errorf("merkle: no consistency from %d to %d (size %d)", n, m, t.n)
	}
	return tlog.ProveTree(m, n, hashReader{t})
}

// CheckLeaf checks that data is leaf i of the tree of n leaves whose hash
// is root.
func CheckLeaf(p tlog.RecordProof, n int64, root tlog.Hash, i int64, data []byte) error {
	return tlog.CheckRecord(p, n, root, i, tlog.RecordHash(data))
}

// CheckConsistency checks that the tree (m, rootM) extends (n, rootN).
func CheckConsistency(p tlog.TreeProof, m int64, rootM tlog.Hash, n int64, rootN tlog.Hash) error {
	return tlog.CheckTree(p, m, rootM, n, rootN)
}

// Checkpoint is a signed statement of the tree: origin (which log), size
// and root hash, in the C2SP checkpoint body "origin\nsize\nbase64(root)\n",
// with the time it was made as an extension line ("time RFC3339").
type Checkpoint struct {
	Origin string
	Size   int64
	Root   tlog.Hash
	// Time, when not zero, is when the checkpoint was made (whole
	// seconds, UTC).
	Time time.Time
	// Verified, when set, is the signer's statement about the events
	// the tree covers, for nodes that replay them: under the keyring of
	// this digest ("keyring <hex>"), every event but those of Refused
	// ("refused <seq>,…" or "refused none", ascending) carries a
	// signature it trusts. A node with the same keyring may then apply
	// them without checking each signature (see projector.Trusted).
	Verified *Verified
}

// Verified is what a checkpoint says of its events' signatures.
type Verified struct {
	Keyring [32]byte
	Refused []uint64
}

// MaxRefused bounds the refused list a checkpoint carries: a ledger
// with more refused events gets checkpoints without the statement (and
// nodes that replay it check every signature).
const MaxRefused = 1000

// Body is the checkpoint's note text.
func (c Checkpoint) Body() string {
	b := c.Origin + "\n" + strconv.FormatInt(c.Size, 10) + "\n" + base64.StdEncoding.EncodeToString(c.Root[:]) + "\n"
	if !c.Time.IsZero() {
		b += "time " + c.Time.UTC().Format(time.RFC3339) + "\n"
	}
	if v := c.Verified; v != nil {
		b += "keyring " + hex.EncodeToString(v.Keyring[:]) + "\nrefused "
		if len(v.Refused) == 0 {
			b += "none"
		}
		for i, seq := range v.Refused {
			if i > 0 {
				b += ","
			}
			b += strconv.FormatUint(seq, 10)
		}
		b += "\n"
	}
	return b
}

// parseRefused parses a refused line's list: ascending sequences within
// the tree, or "none".
func parseRefused(v string, size int64) ([]uint64, bool) {
	if v == "none" {
		return nil, true
	}
	parts := strings.Split(v, ",")
	if len(parts) > MaxRefused {
		return nil, false
	}
	out := make([]uint64, 0, len(parts))
	for _, p := range parts {
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil || n == 0 || n > uint64(size) || len(out) > 0 && n <= out[len(out)-1] {
			return nil, false
		}
		out = append(out, n)
	}
	return out, true
}

// ParseBody parses a checkpoint's note text, without any signature.
func ParseBody(text string) (Checkpoint, error) {
	lines := strings.Split(text, "\n")
	if len(lines) < 4 || lines[len(lines)-1] != "" || lines[0] == "" {
		return Checkpoint{}, ErrBadCheckpoint
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		return Checkpoint{}, ErrBadCheckpoint
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != tlog.HashSize {
		return Checkpoint{}, ErrBadCheckpoint
	}
	c := Checkpoint{Origin: lines[0], Size: size}
	copy(c.Root[:], raw)
	for _, ext := range lines[3 : len(lines)-1] {
		if v, ok := strings.CutPrefix(ext, "time "); ok {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return Checkpoint{}, ErrBadCheckpoint
			}
			c.Time = t.UTC()
		}
		if v, ok := strings.CutPrefix(ext, "keyring "); ok {
			raw, err := hex.DecodeString(v)
			if err != nil || len(raw) != 32 || c.Verified != nil {
				return Checkpoint{}, ErrBadCheckpoint
			}
			c.Verified = &Verified{}
			copy(c.Verified.Keyring[:], raw)
		}
		if v, ok := strings.CutPrefix(ext, "refused "); ok {
			refused, ok := parseRefused(v, size)
			if !ok || c.Verified == nil {
				return Checkpoint{}, ErrBadCheckpoint
			}
			c.Verified.Refused = refused
		}
	}
	if c.Body() != text {
		// One text per checkpoint: a body with lines this package
		// would not write cannot hide a second meaning.
		return Checkpoint{}, ErrBadCheckpoint
	}
	return c, nil
}

// Sign returns the checkpoint as a signed note, signed by every signer
// (the publishing node first, cosigners after).
func (c Checkpoint) Sign(signers ...note.Signer) ([]byte, error) {
	if strings.ContainsAny(c.Origin, "\n") || c.Origin == "" {
		return nil, errors.New("merkle: a checkpoint's origin is one non-empty line")
	}
	return note.Sign(&note.Note{Text: c.Body()}, signers...)
}

// ErrBadCheckpoint is the cause of every checkpoint that does not parse.
var ErrBadCheckpoint = errors.New("merkle: malformed checkpoint")

// Open verifies a signed checkpoint with the known verifiers and parses
// it; it returns the names of the keys whose signatures verified. A note
// no known key signed, or whose text was altered, is refused.
func Open(msg []byte, known note.Verifiers) (Checkpoint, []string, error) {
	n, err := note.Open(msg, known)
	if err != nil {
		return Checkpoint{}, nil, err
	}
	c, err := ParseBody(n.Text)
	if err != nil {
		return Checkpoint{}, nil, err
	}
	names := make([]string, len(n.Sigs))
	for i, s := range n.Sigs {
		names[i] = s.Name
	}
	return c, names, nil
}
