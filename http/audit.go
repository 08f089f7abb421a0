package http

import (
	"encoding/base64"
	"net/http"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/audit"
)

// The provable audit's endpoints (admin nodes).
const (
	PathAuditCheckpoint  = "/v1/audit/checkpoint"
	PathAuditConsistency = "/v1/audit/consistency"
	PathAuditExport      = "/v1/audit/export"
)

// CheckpointView is a signed checkpoint as the API returns it.
type CheckpointView struct {
	Origin string `json:"origin"`
	Size   int64  `json:"size"`
	// Root is the Merkle root, base64 as in the note.
	Root      string     `json:"root"`
	Time      *time.Time `json:"time,omitempty"`
	Signer    string     `json:"signer"`
	Cosigners []string   `json:"cosigners"`
	// Note is the signed note: save it, and later prove the ledger
	// extends it (keyledger audit verify --since-checkpoint).
	Note string `json:"note"`
}

func viewOf(s audit.Signed) CheckpointView {
	v := CheckpointView{Origin: s.Origin, Size: s.Size, Root: base64.StdEncoding.EncodeToString(s.Root[:]),
		Signer: s.Signer, Cosigners: s.Cosigners, Note: string(s.Note)}
	if v.Cosigners == nil {
		v.Cosigners = []string{}
	}
	if !s.Time.IsZero() {
		t := s.Time
		v.Time = &t
	}
	return v
}

// errNoAudit answers the audit endpoints of a router without an auditor.
var errNoAudit = keyledger.Errorf(keyledger.Unavailable, "the provable audit is not running on this node")

func (a *api) checkpoint(w http.ResponseWriter, r *http.Request) {
	if a.audit == nil {
		a.fail(w, r, errNoAudit)
		return
	}
	q := &params{v: r.URL.Query()}
	size, given := q.pos("size"), q.str("size") != ""
	if q.err != nil {
		a.fail(w, r, q.err)
		return
	}
	var s audit.Signed
	var err error
	if given {
		if s, err = a.audit.At(size); err != nil {
			a.fail(w, r, keyledger.Errorf(keyledger.NotFound, "no checkpoint of size %d", size))
			return
		}
	} else {
		var ok bool
		if s, ok = a.audit.Latest(); !ok {
			a.fail(w, r, keyledger.Errorf(keyledger.NotFound, "no checkpoint has been published yet"))
			return
		}
	}
	WriteJSON(w, http.StatusOK, viewOf(s))
}

// ConsistencyView is a consistency proof: the tree of To events extends
// the tree of From.
type ConsistencyView struct {
	From  int64    `json:"from"`
	To    int64    `json:"to"`
	Proof []string `json:"proof"` // base64 hashes
}

func (a *api) consistency(w http.ResponseWriter, r *http.Request) {
	if a.audit == nil {
		a.fail(w, r, errNoAudit)
		return
	}
	q := &params{v: r.URL.Query()}
	from, to := q.pos("from"), q.pos("to")
	if q.err != nil {
		a.fail(w, r, q.err)
		return
	}
	okF, okT := q.str("from") != "", q.str("to") != ""
	tree := a.audit.Tree()
	if !okF || !okT || from > to {
		a.fail(w, r, keyledger.Errorf(keyledger.Invalid, "from and to are required, with from ≤ to"))
		return
	}
	if to > tree.Size() {
		a.fail(w, r, keyledger.Errorf(keyledger.NotFound, "this node's ledger holds %d events, not %d", tree.Size(), to))
		return
	}
	p, err := tree.ProveConsistency(from, to)
	if err != nil {
		a.fail(w, r, keyledger.Wrap(keyledger.Internal, err, "cannot prove consistency"))
		return
	}
	WriteJSON(w, http.StatusOK, ConsistencyView{From: from, To: to, Proof: b64s(p)})
}

func b64s[H ~[32]byte](hs []H) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = base64.StdEncoding.EncodeToString(h[:])
	}
	return out
}

func (a *api) export(w http.ResponseWriter, r *http.Request) {
	if a.audit == nil {
		a.fail(w, r, errNoAudit)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Content-Disposition", `attachment; filename="keyledger-audit.ndjson"`)
	if r.Method == http.MethodHead {
		return
	}
	if err := a.audit.Export(r.Context(), w); err != nil {
		// Headers are gone: the bundle is cut short, which the
		// verifier reports (events missing against its checkpoints).
		a.report(r, err)
	}
}

// EventProof is an event's inclusion proof in the latest checkpoint.
type EventProof struct {
	// Stored is the event exactly as KEYS stores it (the Merkle leaf).
	Stored    []byte   `json:"stored"`
	LeafIndex int64    `json:"leaf_index"`
	Proof     []string `json:"proof"`
}

// proofs returns each history entry's inclusion proof against the latest
// checkpoint, nil for events after it.
func (a *api) proofs(entries []HistoryEntry, stored [][]byte) (*CheckpointView, error) {
	if a.audit == nil {
		return nil, errNoAudit
	}
	s, ok := a.audit.Latest()
	if !ok {
		return nil, keyledger.Errorf(keyledger.Unavailable, "no checkpoint has been published yet: try again in a minute")
	}
	tree := a.audit.Tree()
	for i := range entries {
		if int64(entries[i].Seq) > s.Size {
			continue
		}
		p, err := audit.ProveEvent(tree, s.Size, entries[i].Seq)
		if err != nil {
			return nil, keyledger.Wrap(keyledger.Unavailable, err, "this node cannot prove that event yet")
		}
		entries[i].Proof = &EventProof{Stored: stored[i], LeafIndex: p.Index, Proof: b64s(p.Proof)}
	}
	v := viewOf(s)
	return &v, nil
}
