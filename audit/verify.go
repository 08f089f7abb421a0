package audit

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"time"

	keyledger "github.com/keyledger/keyledger"

	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/merkle"
	"github.com/keyledger/keyledger/nats"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// VerifyOptions are what an auditor brings to Verify.
type VerifyOptions struct {
	// Keyring verifies events and checkpoints. Nil takes the bundle's own
	// (reported as such: it proves only that the bundle agrees with
	// itself).
	Keyring *events.Keyring
	// Witnesses verify cosignatures; nil takes the bundle's.
	Witnesses note.Verifiers
	// Since is a signed checkpoint saved earlier: the ledger must extend
	// it.
	Since []byte
	// AllowRefused accepts events the keyring refuses (attempted
	// forgeries nodes refused to apply stay in the ledger forever); they
	// are still listed. Without it any refused event fails verification.
	AllowRefused bool
	// Prepare, if set, runs on the checkers (in parallel) for every
	// event, and Observe sees every event in sequence order with what
	// Prepare returned: the ClickHouse comparison hangs here.
	Prepare func(ring *events.Keyring, ev BundleEvent) any
	Observe func(seq uint64, leaf tlog.Hash, refused bool, prepared any) error
	// Workers check signatures in parallel (default GOMAXPROCS).
	Workers int
}

// Failure is one thing Verify found wrong.
type Failure struct {
	// Kind: "missing_event", "refused_event", "checkpoint_signature",
	// "checkpoint_root", "checkpoint_size", "consistency", "since",
	// "clickhouse", "bundle".
	Kind     string `json:"kind"`
	Seq      uint64 `json:"seq,omitempty"`
	Size     int64  `json:"size,omitempty"`
	Expected string `json:"expected,omitempty"`
	Found    string `json:"found,omitempty"`
	Detail   string `json:"detail"`
}

// Report is Verify's verdict.
type Report struct {
	OK     bool   `json:"ok"`
	Origin string `json:"origin"`
	Events int64  `json:"events"`
	// Root is the recomputed root of all the events.
	Root                string   `json:"root"`
	Refused             []uint64 `json:"refused,omitempty"` // at most 100
	RefusedCount        int      `json:"refused_count"`
	Checkpoints         int      `json:"checkpoints"`
	CheckpointsVerified int      `json:"checkpoints_verified"`
	Cosignatures        int      `json:"cosignatures"`
	Since               *Since   `json:"since_checkpoint,omitempty"`
	KeysFromBundle      bool     `json:"keys_from_bundle"`
	// Newest is the largest checkpoint that verified, as a signed note:
	// what to save for the next check's Since.
	Newest          string    `json:"newest_checkpoint,omitempty"`
	Failures        []Failure `json:"failures"`
	Seconds         float64   `json:"seconds"`
	EventsPerSecond float64   `json:"events_per_second"`
}

// Since is the result of the check against a saved checkpoint.
type Since struct {
	Size int64  `json:"size"`
	Root string `json:"root"`
	OK   bool   `json:"ok"`
}

// maxFailures bounds the failures listed (their count is still exact in
// refused_count; one altered event can make every later checkpoint fail).
const maxFailures = 100

func (r *Report) fail(f Failure) {
	r.OK = false
	if len(r.Failures) < maxFailures {
		r.Failures = append(r.Failures, f)
	}
}

// FirstFailure is the first divergence found, if any.
func (r *Report) FirstFailure() *Failure {
	if len(r.Failures) == 0 {
		return nil
	}
	return &r.Failures[0]
}

// job is one event between the reader, a checker and the sequencer.
type job struct {
	ev     BundleEvent
	leaf   tlog.Hash
	reason string
	prep   any
	done   chan struct{}
}

// Verify reads a bundle and checks everything in it: events contiguous
// from 1, every event's signature, the Merkle root of every checkpoint
// recomputed from the events, every checkpoint's signature and the
// cosignatures, the consistency proofs, and that the ledger extends the
// saved checkpoint opts.Since. The error is for a bundle that cannot be
// read at all; what is wrong with a readable one is in the report.
func Verify(r io.Reader, opts VerifyOptions) (*Report, error) {
	start := time.Now()
	rep := &Report{OK: true}
	tree := &merkle.Tree{}
	var ring *events.Keyring
	var witnesses note.Verifiers
	var cps []BundleCheckpoint
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	jobs := make(chan *job, 4096)
	order := make(chan *job, 8192)
	var wg sync.WaitGroup
	seqDone := make(chan error, 1)
	started := false
	startPipeline := func() {
		started = true
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range jobs {
					j.leaf = tlog.RecordHash(j.ev.Data)
					j.reason = checkEvent(ring, j.ev)
					if opts.Prepare != nil {
						j.prep = opts.Prepare(ring, j.ev)
					}
					close(j.done)
				}
			}()
		}
		go func() {
			var err error
			gap := false
			next := uint64(1)
			for j := range order {
				<-j.done
				if err != nil || gap {
					continue // drain
				}
				if j.ev.Seq != next {
					if j.ev.Seq < next {
						rep.fail(Failure{Kind: "bundle", Seq: j.ev.Seq, Detail: fmt.Sprintf("event %d appears twice or out of order", j.ev.Seq)})
						continue
					}
					rep.fail(Failure{Kind: "missing_event", Seq: next, Detail: fmt.Sprintf("events %d to %d are missing: the ledger lost them", next, j.ev.Seq-1)})
					// The tree cannot go on: every later root is
					// unknown, and so is every later finding.
					gap = true
					continue
				}
				if _, e := tree.AppendHash(j.leaf); e != nil {
					err = e
					continue
				}
				next++
				if j.reason != "" {
					rep.RefusedCount++
					if len(rep.Refused) < 100 {
						rep.Refused = append(rep.Refused, j.ev.Seq)
					}
					if !opts.AllowRefused {
						rep.fail(Failure{Kind: "refused_event", Seq: j.ev.Seq, Detail: fmt.Sprintf("event %d on %s is refused: %s", j.ev.Seq, j.ev.Subject, j.reason)})
					}
				}
				if opts.Observe != nil {
					if e := opts.Observe(j.ev.Seq, j.leaf, j.reason != "", j.prep); e != nil {
						err = e
					}
				}
			}
			seqDone <- err
		}()
	}
	closePipeline := func() error {
		if !started {
			return nil
		}
		close(jobs)
		close(order)
		wg.Wait()
		return <-seqDone
	}
	err := ReadBundle(r,
		func(h BundleHeader) error {
			rep.Origin = h.Origin
			ring, witnesses = opts.Keyring, opts.Witnesses
			if ring == nil {
				rep.KeysFromBundle = true
				var err error
				if ring, err = events.ParseKeyring([]byte(h.TrustedSigners)); err != nil {
					return fmt.Errorf("the bundle holds no usable trusted signers, and none were given: %w", err)
				}
			}
			if witnesses == nil && h.Witnesses != "" {
				rep.KeysFromBundle = true
				w, err := ParseWitnesses([]byte(h.Witnesses))
				if err != nil {
					return fmt.Errorf("the bundle's witnesses: %w", err)
				}
				witnesses = w
			}
			startPipeline()
			return nil
		},
		func(e BundleEvent) error {
			j := &job{ev: e, done: make(chan struct{})}
			jobs <- j
			order <- j
			return nil
		},
		func(c BundleCheckpoint) error {
			cps = append(cps, c)
			return nil
		})
	if perr := closePipeline(); err == nil {
		err = perr
	}
	if err != nil {
		return nil, err
	}
	rep.Events = tree.Size()
	if root, err := tree.Root(tree.Size()); err == nil && tree.Size() > 0 {
		rep.Root = root.String()
	}
	verifyCheckpoints(rep, tree, ring, witnesses, cps)
	if opts.Since != nil {
		verifySince(rep, tree, ring, opts.Since)
	}
	rep.Seconds = time.Since(start).Seconds()
	if rep.Seconds > 0 {
		rep.EventsPerSecond = float64(rep.Events) / rep.Seconds
	}
	return rep, nil
}

// checkEvent returns why an event is refused, "" if it is not.
func checkEvent(ring *events.Keyring, e BundleEvent) string {
	text, _, err := ring.Open(e.Data, e.Seq)
	if err != nil {
		return events.RejectReason(err)
	}
	ev, err := events.Decode(text)
	if err != nil {
		return "malformed"
	}
	if nats.KeySubject(ev.Head().KeyID) != e.Subject {
		return events.RejectReason(events.ErrSubjectMismatch)
	}
	return ""
}

// verifyCheckpoints checks every checkpoint of the bundle against the
// recomputed tree, and locates the first divergence between the last
// checkpoint that matches and the first that does not.
func verifyCheckpoints(rep *Report, tree *merkle.Tree, ring *events.Keyring, witnesses note.Verifiers, cps []BundleCheckpoint) {
	type good struct {
		size int64
		root tlog.Hash
	}
	var sizes []good
	var lastMatch, newest int64
	firstBad := int64(-1)
	for _, c := range cps {
		rep.Checkpoints++
		cp, _, err := OpenCheckpoint([]byte(c.Checkpoint), rep.Origin, ring)
		if err != nil {
			body, _, _ := splitNote([]byte(c.Checkpoint))
			size := int64(0)
			if b, e := merkle.ParseBody(body); e == nil {
				size = b.Size
			}
			rep.fail(Failure{Kind: "checkpoint_signature", Size: size, Detail: "a checkpoint does not verify with the trusted signers: " + err.Error()})
			continue
		}
		if cp.Size > tree.Size() {
			rep.fail(Failure{Kind: "checkpoint_size", Size: cp.Size, Detail: fmt.Sprintf("checkpoint of %d events, the ledger holds %d: events were removed", cp.Size, tree.Size())})
			if firstBad < 0 || cp.Size < firstBad {
				firstBad = cp.Size
			}
			continue
		}
		root, err := tree.Root(cp.Size)
		if err != nil {
			continue
		}
		if root != cp.Root {
			rep.fail(Failure{Kind: "checkpoint_root", Size: cp.Size, Expected: cp.Root.String(), Found: root.String(),
				Detail: fmt.Sprintf("the first %d events do not hash to checkpoint %d's root (signed %s): an event was altered, removed, reordered or inserted", cp.Size, cp.Size, cp.Time.Format(time.RFC3339))})
			if firstBad < 0 || cp.Size < firstBad {
				firstBad = cp.Size
			}
			continue
		}
		rep.CheckpointsVerified++
		if newest < cp.Size {
			newest, rep.Newest = cp.Size, c.Checkpoint
		}
		if witnesses != nil {
			if n, err := note.Open([]byte(c.Checkpoint), witnesses); err == nil {
				rep.Cosignatures += len(n.Sigs)
			}
		}
		if c.ConsistencyFrom > 0 {
			var prev *good
			for i := range sizes {
				if sizes[i].size == c.ConsistencyFrom {
					prev = &sizes[i]
				}
			}
			proof, err := decodeHashes(c.Consistency)
			if prev != nil && (err != nil || tlog.CheckTree(proof, cp.Size, cp.Root, prev.size, prev.root) != nil) {
				rep.fail(Failure{Kind: "consistency", Size: cp.Size, Detail: fmt.Sprintf("the proof that checkpoint %d extends checkpoint %d does not verify", cp.Size, prev.size)})
			}
		}
		sizes = append(sizes, good{cp.Size, cp.Root})
		if firstBad < 0 || cp.Size < firstBad {
			lastMatch = max(lastMatch, cp.Size)
		}
	}
	if firstBad > 0 {
		// Put the located divergence first: it is the answer to "where".
		f := Failure{Kind: "checkpoint_root", Size: firstBad, Seq: uint64(lastMatch + 1),
			Detail: fmt.Sprintf("first divergence: between event %d and event %d (the ledger matches checkpoint %d, not checkpoint %d)", lastMatch+1, firstBad, lastMatch, firstBad)}
		rep.Failures = append([]Failure{f}, rep.Failures...)
		rep.OK = false
	}
}

func decodeHashes(s []string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(s))
	for i, x := range s {
		b, err := base64.StdEncoding.DecodeString(x)
		if err != nil || len(b) != tlog.HashSize {
			return nil, errors.New("bad hash")
		}
		copy(out[i][:], b)
	}
	return out, nil
}

// verifySince checks that the ledger extends a checkpoint saved earlier.
func verifySince(rep *Report, tree *merkle.Tree, ring *events.Keyring, saved []byte) {
	cp, _, err := OpenCheckpoint(saved, rep.Origin, ring)
	if err != nil {
		rep.fail(Failure{Kind: "since", Detail: "the saved checkpoint does not verify: " + err.Error()})
		return
	}
	rep.Since = &Since{Size: cp.Size, Root: cp.Root.String()}
	if cp.Size > tree.Size() {
		rep.fail(Failure{Kind: "since", Size: cp.Size, Detail: fmt.Sprintf("your saved checkpoint covers %d events; the ledger now holds %d: events were removed", cp.Size, tree.Size())})
		return
	}
	root, err := tree.Root(cp.Size)
	if err != nil || root != cp.Root {
		rep.fail(Failure{Kind: "since", Size: cp.Size, Expected: cp.Root.String(), Found: root.String(),
			Detail: fmt.Sprintf("the ledger does not extend your saved checkpoint of %d events: history before it was altered, removed, reordered or inserted", cp.Size)})
		return
	}
	rep.Since.OK = true
}

// ParseWitnesses parses a witnesses file: the trusted-signers format
// (events.ParseKeyring), one note verifier key per line, '#' comments.
func ParseWitnesses(b []byte) (note.Verifiers, error) {
	r, err := events.ParseKeyring(b)
	if err != nil {
		return nil, errors.New(strings.Replace(keyledger.ErrorMessage(err), "trusted signers", "witnesses", 1))
	}
	return r, nil
}
