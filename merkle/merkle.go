// Package merkle keeps the Merkle tree of the ledger (RFC 6962 hashing,
// through golang.org/x/mod/sumdb/tlog: no Merkle code of our own) and its
// signed checkpoints (golang.org/x/mod/sumdb/note, in the C2SP checkpoint
// form), so that anyone holding an old checkpoint can prove that no event
// of the KEYS stream was altered, removed, reordered or inserted since.
//
// A leaf is an event exactly as the stream stores it, signature included;
// leaf i is stream sequence i+1. This package is the tree and its proofs
// only: nodes are yet to maintain it and publish checkpoints (see the
// README's status of the provable-audit work).
package merkle

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Tree is an append-only Merkle tree held in memory: every stored hash
// (about two per leaf, 32 bytes each) in tlog's storage order. It is safe
// for concurrent use; appends are serialized.
type Tree struct {
	mu     sync.RWMutex
	n      int64
	hashes []tlog.Hash
}

// Size is the number of leaves.
func (t *Tree) Size() int64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.n
}

// Append adds a leaf and returns its index.
func (t *Tree) Append(data []byte) (int64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	hs, err := tlog.StoredHashes(t.n, data, hashReader{t})
	if err != nil {
		return 0, err
	}
	t.hashes = append(t.hashes, hs...)
	t.n++
	return t.n - 1, nil
}

// hashReader reads stored hashes with t.mu already held.
type hashReader struct{ t *Tree }

func (r hashReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(r.t.hashes)) {
			return nil, fmt.Errorf("merkle: stored hash %d not in a tree of %d leaves", x, r.t.n)
		}
		out[i] = r.t.hashes[x]
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
// and root hash, in the C2SP checkpoint body "origin\nsize\nbase64(root)\n".
type Checkpoint struct {
	Origin string
	Size   int64
	Root   tlog.Hash
}

// Body is the checkpoint's note text.
func (c Checkpoint) Body() string {
	return c.Origin + "\n" + strconv.FormatInt(c.Size, 10) + "\n" + base64.StdEncoding.EncodeToString(c.Root[:]) + "\n"
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
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 || lines[len(lines)-1] != "" {
		return Checkpoint{}, nil, ErrBadCheckpoint
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 {
		return Checkpoint{}, nil, ErrBadCheckpoint
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != tlog.HashSize {
		return Checkpoint{}, nil, ErrBadCheckpoint
	}
	c := Checkpoint{Origin: lines[0], Size: size}
	copy(c.Root[:], raw)
	names := make([]string, len(n.Sigs))
	for i, s := range n.Sigs {
		names[i] = s.Name
	}
	return c, names, nil
}
