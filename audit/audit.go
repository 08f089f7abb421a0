// Package audit makes the ledger's history provable, the way Certificate
// Transparency and the Go checksum database make theirs: admin nodes
// publish signed checkpoints (size and Merkle root of KEYS, package
// merkle) on the AUDIT stream; every other node recomputes each one from
// its own copy of the ledger and cosigns it, or, when its root differs,
// fails closed (ledger_divergence) and publishes its own checkpoint of
// that size so the split view is on record. The package also writes and
// checks audit bundles: the events, checkpoints and proofs an auditor
// verifies offline (see Export and Verify).
package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/merkle"
	"github.com/keyledger/keyledger/nats"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Ledger is this node's copy of the ledger (the projector).
type Ledger interface {
	// Tree is the Merkle tree of the events applied so far.
	Tree() *merkle.Tree
	// WaitApplied blocks until sequence seq is applied.
	WaitApplied(ctx context.Context, seq uint64) error
	// CaughtUp and Broken say whether the copy is current and sound.
	CaughtUp() bool
	Broken() string
	// Diverge fails the node closed: its copy is not the fleet's.
	Diverge(why string)
	// RefusedThrough and KeyringDigest are what a checkpoint states of
	// the events' signatures (merkle.Verified): the events through size
	// refused on their envelope (false: too many to list), under the
	// keyring of that digest.
	RefusedThrough(size uint64) ([]uint64, bool)
	KeyringDigest() [32]byte
}

// Defaults of Config.
const (
	DefaultOrigin   = "keyledger/KEYS"
	DefaultEvery    = 1000
	DefaultInterval = time.Minute
	// cosignWait bounds how long a node waits to have applied the events
	// a checkpoint covers before it gives up cosigning that one.
	cosignWait = 30 * time.Second
)

// Config configures an Auditor.
type Config struct {
	JS     jetstream.JetStream
	Ledger Ledger
	// Origin names the log in every checkpoint (default DefaultOrigin).
	// Give each ledger its own (e.g. "api.example.com/keyledger"): a
	// checkpoint of one is then never taken for another's.
	Origin string
	// Name is this node's name: its cosignatures' subject.
	Name string
	// Keyring holds the keys whose checkpoints count: the admin signing
	// keys, as for events.
	Keyring *events.Keyring
	// Signer, on admin nodes, signs the checkpoints this node publishes;
	// nil publishes none.
	Signer note.Signer
	// Witness signs this node's cosignatures; nil cosigns nothing.
	Witness note.Signer
	// Witnesses verify other nodes' cosignatures (admin nodes: the
	// fleet's witness keys). A cosignature no witness key verifies is
	// not served. WitnessesText is their file, for export.
	Witnesses     note.Verifiers
	WitnessesText string
	// A checkpoint is published when Every events (default 1000) or
	// Interval (default 1m) have gone by since the last, with at least
	// one new event.
	Every    int64
	Interval time.Duration
	// OnDivergence hears of a node whose copy of the ledger differs from
	// a checkpoint (this one or, on admin nodes, another node's dissent).
	// It must not block.
	OnDivergence func(node, detail string)
	Logger       *slog.Logger
	Now          func() time.Time
}

// Signed is a published checkpoint with the cosignatures gathered for it.
type Signed struct {
	merkle.Checkpoint
	// Note is the signed note: the publisher's signature, then every
	// verified cosignature.
	Note []byte
	// Signer is the key that published it; Cosigners the witnesses that
	// recomputed it.
	Signer    string
	Cosigners []string
	// Seq is the checkpoint's sequence in AUDIT.
	Seq uint64
}

// entry is a checkpoint as the auditor keeps it.
type entry struct {
	cp      merkle.Checkpoint
	note    []byte // as published
	signer  string
	seq     uint64
	cosigs  []string // signature lines, "— name base64\n"
	cosigNs []string
}

// Auditor follows AUDIT, publishes checkpoints (admin nodes) and cosigns
// them. Open starts its goroutines; Close stops them.
type Auditor struct {
	cfg Config
	log *slog.Logger

	mu       sync.RWMutex
	bySize   map[int64]*entry
	latest   *entry
	caughtUp bool   // AUDIT followed to the end it had at Open
	lastSeq  uint64 // the last AUDIT message handled: a re-follow starts after it
	diverged string
	divCount uint64 // every divergence seen

	// changed is closed and replaced whenever a checkpoint, a
	// cosignature or a divergence is recorded.
	changed chan struct{}

	checks chan *entry
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// ErrNoCheckpoint is returned when no checkpoint of the asked size exists.
var ErrNoCheckpoint = keyledger.Errorf(keyledger.NotFound, "no such checkpoint")

// Open starts following AUDIT. A node whose fleet has no AUDIT stream yet
// (admin nodes of an older version) keeps looking for it.
func Open(ctx context.Context, cfg Config) (*Auditor, error) {
	if cfg.Origin == "" {
		cfg.Origin = DefaultOrigin
	}
	if err := ValidOrigin(cfg.Origin); err != nil {
		return nil, err
	}
	if cfg.Every <= 0 {
		cfg.Every = DefaultEvery
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	a := &Auditor{cfg: cfg, log: cfg.Logger, bySize: map[int64]*entry{}, checks: make(chan *entry, 64), changed: make(chan struct{})}
	runCtx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.wg.Add(2)
	go func() {
		defer a.wg.Done()
		a.follow(runCtx)
	}()
	go func() {
		defer a.wg.Done()
		a.witness(runCtx)
	}()
	if cfg.Signer != nil {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.publishLoop(runCtx)
		}()
	}
	return a, nil
}

// ValidOrigin checks a log origin: one line, not starting with '{' (which
// would make a checkpoint's text look like an event's).
func ValidOrigin(origin string) error {
	if origin == "" || strings.ContainsAny(origin, "\n\r") || origin[0] == '{' || len(origin) > 256 {
		return keyledger.Errorf(keyledger.Invalid, "an audit origin is one line of at most 256 characters, not starting with '{'")
	}
	return nil
}

// Close stops the auditor's goroutines.
func (a *Auditor) Close(ctx context.Context) error {
	if a.cancel == nil {
		return nil
	}
	a.cancel()
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Tree is the Merkle tree of this node's copy of the ledger.
func (a *Auditor) Tree() *merkle.Tree { return a.cfg.Ledger.Tree() }

// Latest returns the checkpoint of the largest size seen.
func (a *Auditor) Latest() (Signed, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.latest == nil {
		return Signed{}, false
	}
	return a.signed(a.latest), true
}

// At returns the checkpoint of size n.
func (a *Auditor) At(n int64) (Signed, error) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	e := a.bySize[n]
	if e == nil {
		return Signed{}, ErrNoCheckpoint
	}
	return a.signed(e), nil
}

// All returns every checkpoint, by size.
func (a *Auditor) All() []Signed {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make([]Signed, 0, len(a.bySize))
	for _, e := range a.bySize {
		out = append(out, a.signed(e))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Size < out[j].Size })
	return out
}

// Changed returns a channel closed at the next change: a checkpoint, a
// cosignature or a divergence recorded. Tests and tools wait on it.
func (a *Auditor) Changed() <-chan struct{} {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.changed
}

// notify wakes Changed's waiters; a.mu must be held.
func (a *Auditor) notify() {
	close(a.changed)
	a.changed = make(chan struct{})
}

// Diverged says why this node's copy differs from a checkpoint ("" if it
// does not).
func (a *Auditor) Diverged() string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.diverged
}

// signed renders e with a.mu held.
func (a *Auditor) signed(e *entry) Signed {
	n := make([]byte, 0, len(e.note)+len(e.cosigs)*128)
	n = append(n, e.note...)
	for _, l := range e.cosigs {
		n = append(n, l...)
	}
	return Signed{Checkpoint: e.cp, Note: n, Signer: e.signer, Cosigners: append([]string(nil), e.cosigNs...), Seq: e.seq}
}

// follow reads AUDIT from its first message, for as long as the auditor
// runs, recreating its consumer when it is lost.
func (a *Auditor) follow(ctx context.Context) {
	var logged time.Time
	failures := 0
	for wait := 100 * time.Millisecond; ctx.Err() == nil; wait = min(2*wait, 5*time.Second) {
		err := a.followOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		// Once a minute at most: a fleet whose admin nodes predate AUDIT
		// would otherwise log every few seconds for good.
		if failures++; time.Since(logged) >= time.Minute {
			a.log.Warn("audit: following AUDIT failed; retrying", "err", err, "failures", failures)
			logged, failures = time.Now(), 0
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

func (a *Auditor) followOnce(ctx context.Context) error {
	stream, err := a.cfg.JS.Stream(ctx, nats.AuditStream)
	if err != nil {
		return err
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return err
	}
	a.mu.RLock()
	from := a.lastSeq
	a.mu.RUnlock()
	end := info.State.LastSeq
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from + 1,
	})
	if err != nil {
		return err
	}
	it, err := cons.Messages(jetstream.PullHeartbeat(time.Second))
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	if end <= from {
		a.markCaughtUp()
	}
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				return err
			}
			continue
		}
		meta, err := msg.Metadata()
		if err != nil {
			continue
		}
		a.handle(meta.Sequence.Stream, msg.Subject(), msg.Data())
		a.mu.Lock()
		a.lastSeq = max(a.lastSeq, meta.Sequence.Stream)
		a.mu.Unlock()
		if meta.Sequence.Stream >= end {
			a.markCaughtUp()
		}
	}
}

// markCaughtUp: from now on checkpoints are checked as they come; the
// newest one seen so far is checked now.
func (a *Auditor) markCaughtUp() {
	a.mu.Lock()
	first := !a.caughtUp
	a.caughtUp = true
	latest := a.latest
	a.mu.Unlock()
	if first && latest != nil {
		a.check(latest)
	}
}

func (a *Auditor) check(e *entry) {
	select {
	case a.checks <- e:
	default:
		a.log.Warn("audit: too many checkpoints waiting to be checked; skipping one", "size", e.cp.Size)
	}
}

// handle indexes one AUDIT message.
func (a *Auditor) handle(seq uint64, subject string, data []byte) {
	switch {
	case subject == nats.CheckpointSubject:
		cp, names, err := a.openCheckpoint(data)
		if err != nil {
			a.log.Warn("audit: ignoring a checkpoint that does not verify", "seq", seq, "err", err)
			return
		}
		a.mu.Lock()
		if old := a.bySize[cp.Size]; old != nil {
			a.mu.Unlock()
			if old.cp.Root != cp.Root {
				a.divergence(names[0], fmt.Sprintf("two checkpoints of size %d disagree: %s signed root %s, %s signed %s",
					cp.Size, old.signer, old.cp.Root, names[0], cp.Root))
			}
			return
		}
		e := &entry{cp: cp, note: data, signer: names[0], seq: seq}
		a.bySize[cp.Size] = e
		if a.latest == nil || cp.Size > a.latest.cp.Size {
			a.latest = e
		}
		a.notify()
		live := a.caughtUp
		a.mu.Unlock()
		if live {
			a.check(e)
		}
	case strings.HasPrefix(subject, nats.CosignSubjectPrefix):
		a.handleCosign(strings.TrimPrefix(subject, nats.CosignSubjectPrefix), data)
	}
}

// openCheckpoint verifies a checkpoint's signature by a trusted log key
// not retired before its size, and its origin.
func (a *Auditor) openCheckpoint(data []byte) (merkle.Checkpoint, []string, error) {
	return OpenCheckpoint(data, a.cfg.Origin, a.cfg.Keyring)
}

// OpenCheckpoint verifies a signed checkpoint of origin: signed by a key
// of the keyring that was not retired before the checkpoint's size. It
// returns the checkpoint and the names of the keyring's keys that signed.
func OpenCheckpoint(data []byte, origin string, ring *events.Keyring) (merkle.Checkpoint, []string, error) {
	if ring == nil {
		return merkle.Checkpoint{}, nil, errors.New("no keyring")
	}
	n, err := note.Open(data, ring)
	if err != nil {
		return merkle.Checkpoint{}, nil, err
	}
	cp, err := merkle.ParseBody(n.Text)
	if err != nil {
		return merkle.Checkpoint{}, nil, err
	}
	if cp.Origin != origin {
		return merkle.Checkpoint{}, nil, fmt.Errorf("checkpoint of origin %q, not %q", cp.Origin, origin)
	}
	if err := ring.CheckRetired(n, uint64(cp.Size)); err != nil {
		return merkle.Checkpoint{}, nil, err
	}
	names := make([]string, len(n.Sigs))
	for i, s := range n.Sigs {
		names[i] = s.Name
	}
	return cp, names, nil
}

// handleCosign records a node's cosignature, or its dissent: its own
// checkpoint of a size another checkpoint has with another root.
func (a *Auditor) handleCosign(node string, data []byte) {
	text, _, ok := splitNote(data)
	if !ok {
		return
	}
	cp, err := merkle.ParseBody(text)
	if err != nil || cp.Origin != a.cfg.Origin {
		return
	}
	// Only signatures a witness key verified are kept, rebuilt from
	// what note.Open checked: a line that does not verify, merged into
	// the served note, would make every auditor's check of it fail.
	var sigs []string
	if a.cfg.Witnesses != nil {
		n, err := note.Open(data, a.cfg.Witnesses)
		if err != nil {
			a.log.Warn("audit: ignoring a cosignature no witness key verifies", "node", node, "size", cp.Size)
			return
		}
		for _, s := range n.Sigs {
			sigs = append(sigs, "\u2014 "+s.Name+" "+s.Base64+"\n")
		}
	}
	a.mu.Lock()
	e := a.bySize[cp.Size]
	if e == nil {
		a.mu.Unlock()
		return
	}
	if text != e.cp.Body() {
		a.mu.Unlock()
		// A node's own dissent was reported when it found it.
		if cp.Root != e.cp.Root && node != a.cfg.Name {
			a.divergence(node, fmt.Sprintf("node %s computes root %s for the first %d events; checkpoint %d by %s says %s",
				node, cp.Root, cp.Size, cp.Size, e.signer, e.cp.Root))
		}
		return
	}
	if a.cfg.Witnesses != nil {
		for _, l := range sigs {
			name, _, _ := strings.Cut(strings.TrimPrefix(l, "\u2014 "), " ")
			if slices.Contains(e.cosigNs, name) {
				continue // a node that cosigned twice (a republish)
			}
			e.cosigs = append(e.cosigs, l)
			e.cosigNs = append(e.cosigNs, name)
		}
		a.notify()
	}
	a.mu.Unlock()
}

// Stats are what the auditor's metrics read.
type Stats struct {
	// LatestSize and LatestTime are the newest checkpoint's (0 and zero
	// before any); TreeSize is this node's ledger; Cosigners counts the
	// newest checkpoint's cosignatures.
	LatestSize, TreeSize int64
	LatestTime           time.Time
	Cosigners            int
	// Divergences counts every divergence seen: this node's own and,
	// on admin nodes, other nodes' dissents.
	Divergences uint64
}

// Uncovered is the number of this node's events no checkpoint covers yet.
func (s Stats) Uncovered() int64 { return max(0, s.TreeSize-s.LatestSize) }

// Stats returns the auditor's figures now.
func (a *Auditor) Stats() Stats {
	st := Stats{TreeSize: a.cfg.Ledger.Tree().Size()}
	a.mu.RLock()
	defer a.mu.RUnlock()
	if e := a.latest; e != nil {
		st.LatestSize, st.LatestTime, st.Cosigners = e.cp.Size, e.cp.Time, len(e.cosigNs)
	}
	st.Divergences = a.divCount
	return st
}

// divergence reports a split view.
func (a *Auditor) divergence(node, detail string) {
	a.mu.Lock()
	if node == a.cfg.Name && a.diverged == "" {
		a.diverged = detail
	}
	a.divCount++
	a.notify()
	a.mu.Unlock()
	a.log.Error("audit: ledger divergence", "node", node, "detail", detail)
	if a.cfg.OnDivergence != nil {
		a.cfg.OnDivergence(node, detail)
	}
}

// splitNote splits a signed note into its text and signature lines.
func splitNote(msg []byte) (string, []string, bool) {
	i := bytes.LastIndex(msg, []byte("\n\n"))
	if i < 0 {
		return "", nil, false
	}
	text := string(msg[:i+1])
	var sigs []string
	for _, l := range strings.SplitAfter(string(msg[i+2:]), "\n") {
		if strings.HasPrefix(l, "\u2014 ") && strings.HasSuffix(l, "\n") {
			sigs = append(sigs, l)
		}
	}
	return text, sigs, len(sigs) > 0
}

// witness checks checkpoints against this node's copy of the ledger.
func (a *Auditor) witness(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-a.checks:
			a.witnessOne(ctx, e)
		}
	}
}

func (a *Auditor) witnessOne(ctx context.Context, e *entry) {
	wctx, cancel := context.WithTimeout(ctx, cosignWait)
	err := a.cfg.Ledger.WaitApplied(wctx, uint64(e.cp.Size))
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("audit: this node has not applied what a checkpoint covers; not cosigning it", "size", e.cp.Size)
		}
		return
	}
	root, err := a.cfg.Ledger.Tree().Root(e.cp.Size)
	if err != nil {
		a.log.Warn("audit: cannot compute this node's root", "size", e.cp.Size, "err", err)
		return
	}
	if root != e.cp.Root {
		why := fmt.Sprintf("ledger_divergence: this node's root of the first %d events is %s; checkpoint %d signed by %s says %s",
			e.cp.Size, root, e.cp.Size, e.signer, e.cp.Root)
		a.cfg.Ledger.Diverge(why)
		a.divergence(a.cfg.Name, why)
		// On record for the admin nodes and auditors: this node's own
		// checkpoint of that size.
		own := e.cp
		own.Root = root
		a.publishCosign(ctx, own)
		return
	}
	if v := e.cp.Verified; v != nil {
		if v.Keyring != a.cfg.Ledger.KeyringDigest() {
			// A cosignature vouches for the whole text: this node
			// cannot vouch for refusals under another keyring.
			a.log.Warn("audit: a checkpoint states its refused events under another keyring than this node's; not cosigning it",
				"size", e.cp.Size, "signer", e.signer)
			return
		}
		own, _ := a.cfg.Ledger.RefusedThrough(uint64(e.cp.Size))
		if !slices.Equal(own, v.Refused) {
			why := fmt.Sprintf("ledger_divergence: under one keyring, this node refused events %v of the first %d, checkpoint %d signed by %s says %v",
				own, e.cp.Size, e.cp.Size, e.signer, v.Refused)
			a.cfg.Ledger.Diverge(why)
			a.divergence(a.cfg.Name, why)
			return
		}
	}
	if a.cfg.Signer != nil && e.signer == a.cfg.Signer.Name() {
		return // its own checkpoint: a cosignature would add nothing
	}
	a.publishCosign(ctx, e.cp)
}

func (a *Auditor) publishCosign(ctx context.Context, cp merkle.Checkpoint) {
	if a.cfg.Witness == nil {
		return
	}
	msg, err := note.Sign(&note.Note{Text: cp.Body()}, a.cfg.Witness)
	if err != nil {
		a.log.Error("audit: cannot sign a cosignature", "err", err)
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m := natsgo.NewMsg(nats.CosignSubjectPrefix + a.cfg.Name)
	m.Data = msg
	m.Header.Set(jetstream.MsgIDHeader, "cosign-"+a.cfg.Name+"-"+strconv.FormatInt(cp.Size, 10)+"-"+cp.Root.String())
	if _, err := a.cfg.JS.PublishMsg(pctx, m, jetstream.WithExpectStream(nats.AuditStream)); err != nil && ctx.Err() == nil {
		a.log.Warn("audit: cannot publish a cosignature", "size", cp.Size, "err", err)
	}
}

// publishLoop publishes a checkpoint when the ledger has grown by Every
// events, or by any after Interval.
func (a *Auditor) publishLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := a.maybePublish(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("audit: cannot publish a checkpoint", "err", err)
		}
	}
}

func (a *Auditor) maybePublish(ctx context.Context) error {
	l := a.cfg.Ledger
	if !l.CaughtUp() || l.Broken() != "" {
		return nil
	}
	a.mu.RLock()
	ready, latest, diverged := a.caughtUp, a.latest, a.diverged
	a.mu.RUnlock()
	if !ready || diverged != "" {
		return nil
	}
	n := l.Tree().Size()
	now := a.cfg.Now().UTC().Truncate(time.Second)
	if latest != nil && (n <= latest.cp.Size || n-latest.cp.Size < a.cfg.Every && now.Sub(latest.cp.Time) < a.cfg.Interval) {
		return nil
	}
	if n == 0 {
		return nil
	}
	_, err := a.Publish(ctx, n, now)
	return err
}

// Publish signs and publishes the checkpoint of the first n events at t
// (admin nodes). It is what the publishing loop does, for tests and tools
// that need a checkpoint now.
func (a *Auditor) Publish(ctx context.Context, n int64, t time.Time) (merkle.Checkpoint, error) {
	if a.cfg.Signer == nil {
		return merkle.Checkpoint{}, keyledger.Errorf(keyledger.Forbidden, "only admin nodes sign checkpoints")
	}
	return PublishCheckpoint(ctx, a.cfg.JS, a.cfg.Ledger, a.cfg.Origin, a.cfg.Signer, n, t)
}

// PublishCheckpoint signs the checkpoint of the first n events of ledger
// with signer and publishes it on AUDIT: what an admin node's auditor
// does every Config.Every events (and what `keyledger bench coldstart`
// does to time a replay on it).
func PublishCheckpoint(ctx context.Context, js jetstream.JetStream, ledger Ledger, origin string, signer note.Signer, n int64, t time.Time) (merkle.Checkpoint, error) {
	root, err := ledger.Tree().Root(n)
	if err != nil {
		return merkle.Checkpoint{}, keyledger.Wrap(keyledger.Invalid, err, "no such tree")
	}
	cp := merkle.Checkpoint{Origin: origin, Size: n, Root: root, Time: t.UTC().Truncate(time.Second)}
	if refused, ok := ledger.RefusedThrough(uint64(n)); ok {
		// What lets a node that replays the ledger lean on this
		// checkpoint instead of checking each signature (see
		// projector's trust.go).
		cp.Verified = &merkle.Verified{Keyring: ledger.KeyringDigest(), Refused: refused}
	}
	msg, err := cp.Sign(signer)
	if err != nil {
		return merkle.Checkpoint{}, keyledger.Wrap(keyledger.Internal, err, "cannot sign the checkpoint")
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m := natsgo.NewMsg(nats.CheckpointSubject)
	m.Data = msg
	// Two admin nodes checkpointing the same size publish one.
	m.Header.Set(jetstream.MsgIDHeader, "checkpoint-"+strconv.FormatInt(n, 10)+"-"+root.String())
	if _, err := js.PublishMsg(pctx, m, jetstream.WithExpectStream(nats.AuditStream)); err != nil {
		return merkle.Checkpoint{}, keyledger.Wrap(keyledger.Unavailable, err, "cannot publish the checkpoint")
	}
	return cp, nil
}

// LeafProof is an inclusion proof of one event in a checkpoint's tree.
type LeafProof struct {
	Index int64
	Proof tlog.RecordProof
}

// ProveEvent proves that the event at sequence seq is in the tree of the
// checkpoint's size.
func ProveEvent(t *merkle.Tree, size int64, seq uint64) (LeafProof, error) {
	p, err := t.ProveLeaf(size, int64(seq)-1)
	if err != nil {
		return LeafProof{}, err
	}
	return LeafProof{Index: int64(seq) - 1, Proof: p}, nil
}

// Newest returns the newest checkpoint of origin on AUDIT that a key of
// ring signed (not retired before its size), for a node about to replay
// the ledger (projector.Options.Trusted); nil when there is none yet, or
// the newest is not signed by a trusted key (the replay then checks
// every signature).
func Newest(ctx context.Context, js jetstream.JetStream, origin string, ring *events.Keyring) (*merkle.Checkpoint, error) {
	s, err := js.Stream(ctx, nats.AuditStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot read the AUDIT stream")
	}
	m, err := s.GetLastMsgForSubject(ctx, nats.CheckpointSubject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot read the newest checkpoint")
	}
	cp, _, err := OpenCheckpoint(m.Data, origin, ring)
	if err != nil {
		return nil, nil
	}
	return &cp, nil
}
