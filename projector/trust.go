package projector

import (
	"fmt"
	"slices"
	"sync"

	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/merkle"
	"golang.org/x/mod/sumdb/tlog"
)

// Replaying on a checkpoint's word. Checking every event's Ed25519
// signature is 90 % of a full replay's time (≈50 µs an event here). A
// signed checkpoint whose signer states, under a keyring with this node's
// digest, which events it refused (merkle.Verified) vouches for every
// other event it covers: the node applies those without checking their
// signatures, checks the listed ones itself (each must be refused again),
// and compares its own Merkle root with the checkpoint's when it reaches
// the checkpoint's size, before it can be ready. So
//
//   - an event changed, added or removed in the stream after the
//     checkpoint was signed changes the root: the node fails closed
//     (ledger_divergence), never serving from what it applied;
//   - a checkpoint that calls a good event refused is caught at that
//     event: the node fails closed;
//   - what a checkpoint can make a node accept is what its signer could
//     sign as events anyway: trusting it asks no more than the keyring
//     already grants that key.
//
// Events after the checkpoint are checked one by one, as always.

// trust is the checkpoint a replay leans on.
type trust struct {
	size    uint64
	root    tlog.Hash
	refused map[uint64]bool
}

// refusedSeqs is the list of events this node refused on their envelope
// (signature, format, subject), for the checkpoints it publishes.
type refusedSeqs struct {
	mu   sync.Mutex
	seqs []uint64 // ascending
}

func (r *refusedSeqs) add(seq uint64) {
	r.mu.Lock()
	if n := len(r.seqs); n == 0 || r.seqs[n-1] < seq {
		r.seqs = append(r.seqs, seq)
	}
	r.mu.Unlock()
}

func (r *refusedSeqs) set(seqs []uint64) {
	r.mu.Lock()
	r.seqs = seqs
	r.mu.Unlock()
}

func (r *refusedSeqs) through(size uint64) []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, _ := slices.BinarySearch(r.seqs, size+1)
	return slices.Clone(r.seqs[:i])
}

// RefusedThrough returns the sequences of the events up to size this node
// refused on their envelope, and false when there are more than a
// checkpoint may list (merkle.MaxRefused).
func (p *Projector) RefusedThrough(size uint64) ([]uint64, bool) {
	s := p.refused.through(size)
	return s, len(s) <= merkle.MaxRefused
}

// KeyringDigest is the digest of the keyring this node checks events
// with (events.Keyring.Digest).
func (p *Projector) KeyringDigest() [32]byte {
	if p.ring == nil {
		return (&events.Keyring{}).Digest()
	}
	return p.ring.Digest()
}

// adoptTrust decides, once the stream's end and the snapshot are known,
// whether the replay leans on Options.Trusted.
func (p *Projector) adoptTrust() {
	cp := p.trusted
	p.trusted = nil
	if cp == nil || cp.Verified == nil {
		return
	}
	size := uint64(cp.Size)
	switch {
	case cp.Verified.Keyring != p.KeyringDigest():
		p.log.Info("projector: the newest checkpoint was made under another keyring; checking every signature")
		return
	case size <= p.lastSeq.Load():
		return // the snapshot is newer: nothing to replay on its word
	case size > p.target:
		// A checkpoint beyond the stream's end: the stream lost events
		// (the auditor fails closed on it); vouch for nothing.
		p.log.Warn("projector: the newest checkpoint covers more events than KEYS holds; checking every signature",
			"checkpoint_size", size, "stream_last", p.target)
		return
	}
	t := &trust{size: size, root: cp.Root, refused: make(map[uint64]bool, len(cp.Verified.Refused))}
	for _, s := range cp.Verified.Refused {
		t.refused[s] = true
	}
	p.trust = t
	p.log.Info("projector: replaying on the newest checkpoint's signature: events it covers are not checked one by one",
		"from", p.lastSeq.Load()+1, "through", size, "refused_listed", len(t.refused))
}

// vouched reports whether the event at seq is one the checkpoint vouches
// for (applied without its signature check).
func (t *trust) vouched(seq uint64) bool { return t != nil && seq <= t.size && !t.refused[seq] }

// listed reports whether the checkpoint says the event at seq was refused.
func (t *trust) listed(seq uint64) bool { return t != nil && seq <= t.size && t.refused[seq] }

// checkTrust runs on the apply goroutine after the event at seq is in the
// tree: a listed event must have been refused again, and at the
// checkpoint's size the roots must agree.
func (p *Projector) checkTrust(seq uint64, c checked) bool {
	t := p.trust
	if t == nil || seq > t.size {
		return true
	}
	if t.listed(seq) && c.reject == nil {
		p.Diverge(fmt.Sprintf("checkpoint %d lists event %d as refused, but its signature verifies: the checkpoint's signer lied about the ledger", t.size, seq))
		return false
	}
	if seq == t.size {
		root, err := p.tree.Root(int64(t.size))
		if err != nil || root != t.root {
			p.Diverge(fmt.Sprintf("ledger_divergence: the first %d events hash to %s, not to the checkpoint's %s that this node replayed them on", t.size, root, t.root))
			return false
		}
		p.log.Info("projector: the replay matches the checkpoint it leaned on", "size", t.size)
	}
	return true
}
