package projector

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	_ "unsafe" // for go:linkname

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/merkle"
	"github.com/keyledger/keyledger/nats"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"golang.org/x/mod/sumdb/tlog"
)

// Options configure a Projector.
type Options struct {
	// Catalog turns permission names into bit sets (default: DefaultCatalog).
	Catalog *keyledger.Catalog
	// Trusted, if set, is the newest signed checkpoint of the ledger,
	// its signature already checked against the keyring: the events it
	// covers are replayed without checking each one's signature when it
	// states the refused events under this node's keyring (see
	// trust.go).
	Trusted *merkle.Checkpoint
	// Records keeps the full record of every key for the admin API. Nodes
	// that only verify leave it off and keep just the table.
	Records bool
	// Logger receives warnings about events that could not be applied.
	Logger *slog.Logger
	// MaxStaleness is how long the node may go without confirming it
	// has the stream's latest events (connection down, consumer stalled)
	// before Fresh turns false (default 5s).
	MaxStaleness time.Duration
	// Now is the wall clock (default time.Now).
	Now func() time.Time
	// Mono is the monotonic clock of the freshness lease, in nanoseconds
	// (default Monotonic). Tests stop or jump it.
	Mono func() int64
	// OnAdvance, if set, is called after each applied sequence, on the
	// apply goroutine: it must not block (e.g. Announcer.Notify).
	OnAdvance func(seq uint64)
	// SnapshotDir, if set, holds snapshots of the table: Start loads the
	// newest usable one and replays only the events after it, and the
	// projector writes a new one after SnapshotEvery events (default
	// 10,000) or SnapshotInterval (default 5m) with any, and on Close.
	SnapshotDir      string
	SnapshotEvery    uint64
	SnapshotInterval time.Duration
	// Keyring holds the admin signing keys: only events one of them
	// signed, on the subject of the key they name, are applied. With no
	// keyring every event is refused.
	Keyring *events.Keyring
	// OnReject, if set, hears of every event refused (forgeries) and of
	// the stream being replaced, on the goroutine that found it; it must
	// not block (e.g. raise an alert asynchronously).
	OnReject func(Rejection)
	// Name prefixes the name of this projector's consumer on KEYS (the
	// node's name), so an operator can tell whose it is
	// (`nats consumer ls KEYS`). A random suffix keeps two processes
	// of one name, or a restart, from colliding.
	Name string
}

// Rejection is an event the projector refused to apply, or (Seq 0,
// Reason "stream_replaced" or "ledger_divergence") the stream itself.
type Rejection struct {
	Seq     uint64
	Subject string
	Reason  string // events.RejectReason, "stream_replaced" or "ledger_divergence"
	Detail  string // human-readable, never a secret
}

// RejectReasons are the values of Rejection.Reason for events.
var RejectReasons = []string{"unsigned", "unknown_signer", "bad_signature", "signer_retired", "malformed", "subject_mismatch", "replayed", "invalid"}

// Stats counts what the projector has seen.
type Stats struct {
	Applied  uint64 // events that changed the table
	Rejected uint64 // events refused: unsigned, forged, on the wrong subject
	Ignored  uint64 // duplicates and out-of-order events, safely skipped
	Poison   uint64 // undecodable events, skipped
	// Filled counts events read from the stream's leader because the
	// consumer delivered nothing while the stream held more (see fill).
	Filled uint64
	// Vouched counts events applied on a checkpoint's signature rather
	// than their own (see trust.go).
	Vouched uint64
	LastSeq uint64 // last applied stream sequence
	Lag     uint64 // stream events not yet applied, as of the last check
	Keys    int    // entries in the table
	// Snapshot is the sequence of the snapshot the table was loaded from
	// at Start; 0 when the node replayed the stream from the beginning.
	Snapshot uint64
	CaughtUp bool
	Fresh    bool
}

// Monotonic is the process's monotonic clock in nanoseconds: unaffected by
// wall-clock steps, and running while the process is stopped. (~25 ns, the
// vDSO clock read; the runtime's own nanotime saves only 1.5 ns of it.)
func Monotonic() int64 { return int64(time.Since(monoBase)) }

var monoBase = time.Now()

// Projector follows KEYS and maintains a Table (and optionally the full key
// records). It is the table's only writer.
type Projector struct {
	js      jetstream.JetStream
	catalog *keyledger.Catalog
	log     *slog.Logger
	table   *Table

	// Interned owners: most keys share them. Touched only by the apply
	// goroutine (the table's single writer), like slab, where new keys'
	// entries are made.
	owners map[string]string
	slab   entrySlab
	// accounts are the plans and owners (see accounts.go).
	accounts *accounts
	// refused are the events refused on their envelope; trusted is
	// Options.Trusted until Start decides on it, trust what the replay
	// leans on then (fixed before the checkers run; see trust.go).
	refused refusedSeqs
	trusted *merkle.Checkpoint
	trust   *trust

	recMu   sync.RWMutex
	records map[string]*keyledger.Key // nil unless Options.Records
	// byTime orders the records by creation (see keyIndex), byOwner
	// each owner's (keyed by the interned owner). Kept with records,
	// under recMu.
	byTime  *keyIndex
	byOwner map[string]*keyIndex

	lastSeq  atomic.Uint64
	caughtUp atomic.Bool
	target   uint64 // stream's last sequence at Start
	// following is set by Start before the apply loop runs.
	following bool
	applied   atomic.Uint64
	ignored   atomic.Uint64
	poison    atomic.Uint64
	filled    atomic.Uint64
	vouched   atomic.Uint64
	// fills carries events the monitor read from the stream's leader to
	// the apply loop (see fill).
	fills chan *batch
	// gapAt is the last applied sequence when the previous check found
	// the stream ahead of it (0 when it did not); monitor only.
	gapAt   uint64
	gapSeen bool
	filling bool // a fill episode is under way (logged once)

	ring     *events.Keyring
	onReject func(Rejection)
	rejected map[string]*atomic.Uint64 // by reason; the map is fixed at New
	// head is the last applied sequence and its stored bytes, as a
	// snapshot records them. Under cutMu.
	head headState
	// broken, once set, is why the node must never serve from this table
	// again: the stream it follows is not the one it started with.
	broken atomic.Pointer[string]

	// Staleness: the monitor records when it last confirmed that this
	// node had every event in the stream.
	maxStale time.Duration
	now      func() time.Time
	// The freshness lease (see Fresh): the node may serve until
	// leaseUntil on the monotonic clock; a confirmation waits in
	// confirming until the events it vouches for are applied.
	mono       func() int64
	leaseUntil atomic.Int64
	confirming atomic.Pointer[confirmation]
	streamLast atomic.Uint64
	suspect    string // the previous check's replacement finding (monitor only)

	// waitCh, when a WaitApplied made one, is closed (and cleared) at
	// the next advance of lastSeq: a replay applies millions of events
	// that nobody waits for, and makes no channel for them.
	waitCh atomic.Pointer[chan struct{}]

	onAdvance func(seq uint64)

	snapDir      string
	snapEvery    uint64
	snapInterval time.Duration
	snapSeq      atomic.Uint64 // sequence of the newest snapshot written or loaded
	streamID     int64         // KEYS creation time: snapshots are only valid for it
	snapMu       sync.Mutex    // one snapshot at a time
	loadedSeq    uint64        // sequence of the snapshot loaded at Start (0: none)
	loadedLeaf   tlog.Hash     // the Merkle leaf of the event at loadedSeq, as the stream holds it
	// cutMu makes a snapshot a consistent cut: the apply loop holds it
	// for each event, a snapshot while it collects the (immutable)
	// entries and records it will write.
	cutMu sync.Mutex

	// tree is the Merkle tree of every stored message of KEYS, leaf i
	// being sequence i+1 (refused events too: the tree is of the
	// stream, not of the table). Written by the apply loop under cutMu;
	// in memory without SnapshotDir, else in a file beside the
	// snapshots.
	tree *merkle.Tree

	name   string
	cancel context.CancelFunc
	done   chan struct{}
}

// TreeFile is the name of the Merkle tree's file in the snapshot
// directory.
const TreeFile = "merkle.hashes"

// New returns a projector over js. Call Start to follow the stream.
func New(js jetstream.JetStream, opts Options) *Projector {
	if opts.Catalog == nil {
		opts.Catalog = keyledger.DefaultCatalog
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxStaleness <= 0 {
		opts.MaxStaleness = 5 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Mono == nil {
		opts.Mono = Monotonic
	}
	if opts.SnapshotEvery == 0 {
		opts.SnapshotEvery = 10_000
	}
	if opts.SnapshotInterval <= 0 {
		opts.SnapshotInterval = 5 * time.Minute
	}
	p := &Projector{
		maxStale:     opts.MaxStaleness,
		onAdvance:    opts.OnAdvance,
		snapDir:      opts.SnapshotDir,
		snapEvery:    opts.SnapshotEvery,
		snapInterval: opts.SnapshotInterval,
		now:          opts.Now,
		mono:         opts.Mono,
		js:           js,
		catalog:      opts.Catalog,
		log:          opts.Logger,
		table:        NewTable(0),
		owners:       make(map[string]string),
		accounts:     newAccounts(),
		fills:        make(chan *batch),
		name:         consumerPrefix(opts.Name),
		ring:         opts.Keyring,
		onReject:     opts.OnReject,
		rejected:     make(map[string]*atomic.Uint64, len(RejectReasons)),
		tree:         &merkle.Tree{},
		trusted:      opts.Trusted,
	}
	for _, r := range RejectReasons {
		p.rejected[r] = new(atomic.Uint64)
	}
	if p.ring == nil {
		p.ring, _ = events.NewKeyring()
	}
	if opts.Records {
		p.records = make(map[string]*keyledger.Key)
		p.byTime, p.byOwner = &keyIndex{}, make(map[string]*keyIndex)
	}
	return p
}

// Table returns the verification table.
func (p *Projector) Table() *Table { return p.table }

// LastSeq returns the last applied KEYS sequence.
func (p *Projector) LastSeq() uint64 { return p.lastSeq.Load() }

// CaughtUp reports whether the projector has applied everything that was in
// the stream when it started. A node serves only once it has.
func (p *Projector) CaughtUp() bool { return p.caughtUp.Load() }

// Stats returns counters.
func (p *Projector) Stats() Stats {
	st := Stats{
		Applied: p.applied.Load(), Ignored: p.ignored.Load(), Poison: p.poison.Load(), Rejected: p.rejectedTotal(),
		Filled:  p.filled.Load(),
		Vouched: p.vouched.Load(),
		LastSeq: p.lastSeq.Load(), Keys: p.table.Len(), CaughtUp: p.caughtUp.Load(), Fresh: p.Fresh(),
		Snapshot: p.loadedSeq,
	}
	if sl := p.streamLast.Load(); sl > st.LastSeq {
		st.Lag = sl - st.LastSeq
	}
	return st
}

// Fresh reports whether the node holds its freshness lease: it confirmed,
// less than MaxStaleness ago on the monotonic clock, that it had applied
// every event the stream held at the moment it asked. A node that is not
// fresh may be missing a revocation and refuses every key.
//
// The lease is read on every request, so a node that was paused (SIGSTOP,
// a GC pause, VM steal, a partition) refuses keys from its first request
// after the lease ran out, before any timer of its own has fired. And it
// is what makes `applied_by` a proof: an event appended at time T is, by
// T + MaxStaleness, either applied by a node or refused with everything
// else, since no lease granted before T outlives that and none granted
// after T is granted before the event is applied. Cost: one monotonic
// clock read.
func (p *Projector) Fresh() bool { return p.mono() < p.leaseUntil.Load() }

// Lease returns the lease duration (MaxStaleness): how long after an
// event was appended a node that has not applied it may still serve.
func (p *Projector) Lease() time.Duration { return p.maxStale }

// confirmation is a freshness check answered by the stream: at sent
// (monotonic), the stream held events up to target.
type confirmation struct {
	sent   int64
	target uint64
}

// confirm records a check's answer and grants the lease as soon as the
// node has applied what it vouches for (now, or in advance).
func (p *Projector) confirm(c *confirmation) {
	if p.lastSeq.Load() >= c.target {
		p.renew(c.sent)
		return
	}
	p.confirming.Store(c)
	// The apply loop may have passed target between the load and the
	// store: look again.
	if p.lastSeq.Load() >= c.target && p.confirming.CompareAndSwap(c, nil) {
		p.renew(c.sent)
	}
}

// renew extends the lease to sent + MaxStaleness (never shortens it).
func (p *Projector) renew(sent int64) {
	if p.broken.Load() != nil {
		return
	}
	until := sent + int64(p.maxStale)
	for {
		old := p.leaseUntil.Load()
		if until <= old || p.leaseUntil.CompareAndSwap(old, until) {
			return
		}
	}
}

// Ready reports whether the node may answer verifications: caught up with
// the stream and fresh (never once Broken).
func (p *Projector) Ready() bool { return p.caughtUp.Load() && p.Fresh() }

// Broken says why the projector stopped for good ("" while it has not):
// the KEYS stream it follows was deleted, recreated or cut. The table may
// lack revocations the lost history held, so the node refuses every
// verification until an operator decides (see the README, "The stream you
// follow").
func (p *Projector) Broken() string {
	if b := p.broken.Load(); b != nil {
		return *b
	}
	return ""
}

// breakDown marks the projector Broken, once, and says so loudly.
func (p *Projector) breakDown(why string) { p.breakDownAs("stream_replaced", why) }

// Diverge marks the projector Broken because its own copy of the ledger
// is not the fleet's: its Merkle root differs from a signed checkpoint of
// the same size, or its stream lost an event. It refuses every
// verification from then on, like a replaced stream.
func (p *Projector) Diverge(why string) { p.breakDownAs("ledger_divergence", why) }

func (p *Projector) breakDownAs(reason, why string) {
	if !p.broken.CompareAndSwap(nil, &why) {
		return
	}
	p.leaseUntil.Store(0)
	p.log.Error("projector: refusing every verification: the KEYS stream is not the one this node followed", "reason", why, "kind", reason)
	if p.onReject != nil {
		p.onReject(Rejection{Reason: reason, Detail: why})
	}
}

// lostEvent fails the projector closed: the stream skipped sequence want
// and holds got next.
func (p *Projector) lostEvent(want, got uint64) {
	p.Diverge(fmt.Sprintf("KEYS lost event %d: the next stored event is %d", want, got))
}

// Tree is the Merkle tree of the stream as this node applied it: its
// Size is the last applied sequence.
func (p *Projector) Tree() *merkle.Tree { return p.tree }

// Rejected returns the count of refused events by reason.
func (p *Projector) Rejected() map[string]uint64 {
	out := make(map[string]uint64, len(p.rejected))
	for r, c := range p.rejected {
		out[r] = c.Load()
	}
	return out
}

func (p *Projector) rejectedTotal() uint64 {
	var n uint64
	for _, c := range p.rejected {
		n += c.Load()
	}
	return n
}

// reject counts and reports an event that is not applied.
func (p *Projector) reject(seq uint64, subject string, err error) {
	reason := events.RejectReason(err)
	if p.rejected[reason].Add(1) == 1 && reason == "unsigned" {
		p.log.Warn("projector: the ledger holds unsigned events, which no node applies; a ledger written before signing is adopted with --trust-unsigned-through SEQ (see README, Security)",
			"first_seq", seq)
	}
	// Logged once per event (no secret can be in it: only hashes are
	// ever published, and the event body is not logged).
	p.log.Error("projector: ledger event refused", "seq", seq, "subject", clipSubject(subject), "reason", reason, "err", err.Error())
	if p.onReject != nil {
		p.onReject(Rejection{Seq: seq, Subject: clipSubject(subject), Reason: reason, Detail: err.Error()})
	}
}

func clipSubject(s string) string {
	if len(s) > 100 {
		return s[:100]
	}
	return s
}

// headState is an event as a snapshot ties itself to the stream with: its
// sequence and the SHA-256 of its stored bytes. The hash is taken when a
// snapshot asks for it, not for each of the millions of events a replay
// applies; data is nil when hash is already known (a loaded snapshot's).
type headState struct {
	seq  uint64
	data []byte
	hash [32]byte
}

// sum is the SHA-256 of the head event's stored bytes.
func (h *headState) sum() [32]byte {
	if h.data != nil {
		return sha256.Sum256(h.data)
	}
	return h.hash
}

// monitor checks, several times per MaxStaleness, that the connection is up
// and that the projector has applied everything the stream holds (or is
// still making progress towards it).
func (p *Projector) monitor(ctx context.Context, stream jetstream.Stream) {
	// Checks every 250 ms at most: each one is one request to the
	// stream's leader, and it bounds how long a stalled consumer can hold
	// the table back (see fill).
	interval := min(max(p.maxStale/10, 50*time.Millisecond), 250*time.Millisecond)
	timeout := min(max(p.maxStale/5, 100*time.Millisecond), time.Second)
	// A gap between ticks longer than this is a pause of the process, not
	// scheduling noise (a busy machine delays a ticker by some hundreds
	// of milliseconds; Raft elections take seconds).
	pauseAfter := max(2*interval, time.Second)
	t := time.NewTicker(interval)
	defer t.Stop()
	last := p.mono()
	var quarantine int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := p.mono()
		if now-last > int64(pauseAfter) {
			// This process was stopped (SIGSTOP, a long GC pause, VM
			// steal). So perhaps was its embedded server, which may
			// still think itself the stream's leader and answer with
			// what the stream held before the pause: no answer renews
			// the lease until a deposed leader has certainly heard of
			// its successor.
			quarantine = now + int64(max(p.maxStale, pauseQuarantine))
			p.confirming.Store(nil)
			p.log.Warn("projector: this process was paused; refusing keys until the stream can be trusted again",
				"paused_for", time.Duration(now-last).Round(time.Millisecond))
		}
		last = now
		if now < quarantine {
			continue
		}
		p.check(ctx, stream, timeout)
		last = p.mono()
	}
}

// consumerPrefix returns the name prefix of a projector's consumer:
// "projector-NAME-RANDOM", with the characters NATS forbids in consumer
// names replaced. (nats.go appends "_SERIAL".)
func consumerPrefix(name string) string {
	b := []byte("projector-")
	for i := 0; i < len(name) && i < 64; i++ {
		c := name[i]
		if c <= ' ' || c == '.' || c == '*' || c == '>' || c == '/' || c == '\\' || c >= 0x7f {
			c = '_'
		}
		b = append(b, c)
	}
	return string(b) + "-" + nuid.Next()
}

// pauseQuarantine is the least time a paused node waits before it trusts
// the stream's answers again: a few of NATS's Raft heartbeats, after which
// a leader that was paused with the node has stepped down.
const pauseQuarantine = 5 * time.Second

// replaced says how info shows that KEYS is not the stream this projector
// has followed, or "". The ledger never loses an event: a different
// creation time, a last sequence behind what was applied, or a first
// sequence past 1 all mean history this node relied on is gone.
func (p *Projector) replaced(info *jetstream.StreamInfo) string {
	switch {
	case info.Created.UnixNano() != p.streamID:
		return fmt.Sprintf("KEYS was recreated (created %s, followed since %s)", info.Created.UTC().Format(time.RFC3339Nano), time.Unix(0, p.streamID).UTC().Format(time.RFC3339Nano))
	case info.State.LastSeq < p.lastSeq.Load():
		return fmt.Sprintf("KEYS went backwards: its last sequence is %d, this node applied %d", info.State.LastSeq, p.lastSeq.Load())
	case info.State.FirstSeq > 1:
		return fmt.Sprintf("KEYS lost its history: its first sequence is %d", info.State.FirstSeq)
	}
	return ""
}

func (p *Projector) check(ctx context.Context, stream jetstream.Stream, timeout time.Duration) {
	if nc := p.js.Conn(); nc == nil || !nc.IsConnected() {
		return
	}
	// The confirmation dates from before the question: whatever the
	// answer says the stream held, it held by then at the latest.
	sent := p.mono()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	info, err := stream.Info(cctx)
	cancel()
	// A missing stream is not proof of a deletion (a server catching up
	// with its cluster may not know the stream yet): the node just
	// cannot confirm it is current, and fails closed after MaxStaleness.
	if err != nil {
		return
	}
	// A replica that has lost its cluster's majority still answers, but
	// names no leader: it cannot know what was written since, so its
	// answer proves nothing, about freshness or about history.
	if info.Cluster != nil && info.Cluster.Leader == "" {
		return
	}
	// A replaced stream is a permanent verdict: it takes the same answer
	// from a leader twice in a row.
	if why := p.replaced(info); why != "" {
		if p.suspect == why {
			p.breakDown(why)
			return
		}
		p.suspect = why
		return
	}
	p.suspect = ""
	p.streamLast.Store(info.State.LastSeq)
	p.confirm(&confirmation{sent: sent, target: info.State.LastSeq})

	// The stream held more than this node had applied at the previous
	// check too, and nothing was applied since: the consumer is stalled.
	applied := p.lastSeq.Load()
	stalled := info.State.LastSeq > applied && p.gapSeen && p.gapAt == applied
	p.gapSeen, p.gapAt = info.State.LastSeq > applied, applied
	if stalled {
		p.fill(ctx, stream, applied, info.State.LastSeq, timeout)
	} else if p.filling && !p.gapSeen {
		p.filling = false
		p.log.Info("projector: the KEYS consumer delivers again", "seq", applied)
	}
}

// fill reads the events after applied, up to last, from the stream's
// leader and hands them to the apply loop. It is what keeps a node's
// table moving when its consumer is stuck: an ordered consumer lives on
// one server, and when that server dies it is recreated only after
// missed heartbeats and a consumer-create request that can wait up to
// 10 s for a new meta leader (nats.go retries with backoff), measured at
// ~13 s. The leader that answered the check answers these too, so the
// table lags a stalled consumer by at most two checks. Duplicates of what
// the consumer later delivers are skipped by sequence. Reads stop at
// timeout, so a long gap (the consumer lost during a replay) is filled
// over several checks while the consumer recovers.
func (p *Projector) fill(ctx context.Context, stream jetstream.Stream, applied, last uint64, timeout time.Duration) {
	if !p.filling {
		p.filling = true
		p.log.Warn("projector: the KEYS consumer delivers nothing while the stream holds more; reading the missing events from the stream's leader",
			"applied", applied, "stream_last", last)
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for seq := applied + 1; seq <= last; seq++ {
		m, err := stream.GetMsg(cctx, seq)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) {
				p.log.Warn("projector: reading a missing event from the stream failed", "seq", seq, "err", err)
			}
			return
		}
		b := &batch{msgs: []pending{{seq: seq, subject: m.Subject, data: m.Data}}}
		p.checkBatch(b)
		// Counted before the hand-over: once the apply loop has it, a
		// reader that waited for its sequence must see it counted.
		p.filled.Add(1)
		select {
		case p.fills <- b:
		case <-ctx.Done():
			return
		}
	}
}

// Start begins following KEYS from its first message. It returns once the
// consumer exists; catching up happens in the background (see CaughtUp and
// WaitApplied). The goroutine it starts runs until Close.
func (p *Projector) Start(ctx context.Context) error {
	stream, err := p.js.Stream(ctx, nats.KeysStream)
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "KEYS stream is not available")
	}
	sent := p.mono()
	info, err := stream.Info(ctx)
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot read KEYS stream state")
	}
	p.target = info.State.LastSeq
	if p.streamID == 0 {
		p.streamID = info.Created.UnixNano()
	}
	if p.snapDir != "" && p.lastSeq.Load() == 0 {
		if err := p.loadNewestSnapshot(ctx, stream, info.State.LastSeq); err != nil {
			p.breakDown(err.Error())
		}
	}
	if why := p.replaced(info); why != "" {
		p.breakDown(why)
	}
	if p.Broken() == "" {
		if err := p.openTree(ctx, stream); err != nil {
			return err
		}
	}
	if p.Broken() != "" {
		// Follow nothing: applying another history over this table
		// would hide what was lost.
		return nil
	}
	p.adoptTrust()
	// Size the table for the stream once, rather than growing it all
	// through the replay: room for what is loaded plus every event still
	// to apply (events ≥ keys, so this errs on the roomy side).
	p.table.reserve(p.table.Len() + int(info.State.LastSeq-p.lastSeq.Load()))
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		NamePrefix:    p.name,
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   p.lastSeq.Load() + 1,
	})
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot follow KEYS stream")
	}
	p.streamLast.Store(p.target)
	p.confirm(&confirmation{sent: sent, target: p.target})
	if p.lastSeq.Load() >= p.target {
		p.markCaughtUp()
	}
	it, err := cons.Messages(followOpts...)
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot follow KEYS stream")
	}
	runCtx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.following = true
	p.done = make(chan struct{})
	var helpers sync.WaitGroup
	helpers.Add(2)
	go func() {
		defer helpers.Done()
		p.monitor(runCtx, stream)
	}()
	go func() {
		defer helpers.Done()
		p.snapshotLoop(runCtx)
	}()
	go func() {
		p.run(runCtx, it)
		helpers.Wait()
		close(p.done)
	}()
	return nil
}

// followOpts are how the projector pulls from its consumer: short pulls with
// frequent idle heartbeats. The ordered consumer notices a lost consumer (a
// leader change, a server restart) after two missed heartbeats and
// recreates itself, so revocations resume within about a second instead of
// the ten of the defaults.
var followOpts = []jetstream.PullMessagesOpt{jetstream.PullMaxMessages(1024), jetstream.PullExpiry(5 * time.Second), jetstream.PullHeartbeat(500 * time.Millisecond)}

// run applies the stream's messages in order. Checking a signature costs
// ~50 µs, more than everything else an event costs together, and needs no
// state: a reader hands messages to one checker per core and the apply
// loop (this goroutine, the table's only writer) takes the results in
// stream order.
//
// While it catches up, the reader hands them on in batches: a replay of
// millions of events would otherwise pay a hand-off and a wake-up per
// event on each of three goroutines. An event past the stream's end at
// Start (the live tail: a revocation) is handed on at once, alone.
func (p *Projector) run(ctx context.Context, it jetstream.MessagesContext) {
	go func() {
		<-ctx.Done()
		it.Stop()
	}()
	jobs := make(chan *batch, 16)
	order := make(chan *batch, 64)
	go func() {
		defer close(order)
		defer close(jobs)
		var b *batch
		for {
			msg, err := it.Next()
			if err != nil {
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
					return
				}
				// The ordered consumer recreates itself after gaps and
				// reconnects; other errors are transient heartbeat misses.
				p.log.Warn("projector: KEYS consumer error", "err", err)
				continue
			}
			meta, err := msg.Metadata()
			if err != nil {
				p.poison.Add(1)
				continue
			}
			seq := meta.Sequence.Stream
			if b == nil {
				b = &batch{msgs: make([]pending, 0, batchSize)}
			}
			b.msgs = append(b.msgs, pending{seq: seq, subject: msg.Subject(), data: msg.Data()})
			if seq < p.target && len(b.msgs) < batchSize {
				continue // more is on its way
			}
			if len(b.msgs) == 1 && len(order) == 0 {
				// Nothing queued (the live tail): checking here
				// saves a hand-off on the path of a revocation.
				p.checkBatch(b)
			} else {
				b.done = make(chan struct{})
				jobs <- b
			}
			order <- b
			b = nil
		}
	}()
	var checkers sync.WaitGroup
	for range max(1, runtime.GOMAXPROCS(0)) {
		checkers.Add(1)
		go func() {
			defer checkers.Done()
			for b := range jobs {
				p.checkBatch(b)
				close(b.done)
			}
		}()
	}
	for {
		var b *batch
		select {
		case next, ok := <-order:
			if !ok {
				checkers.Wait()
				return
			}
			b = next
		case b = <-p.fills:
		}
		if b.done != nil {
			<-b.done
		}
		for i := range b.msgs {
			j := &b.msgs[i]
			p.applyChecked(j.seq, j.subject, j.data, j.checked)
		}
	}
}

// batchSize is how many events the reader hands on at once while it
// catches up: enough to spread the hand-off over many events, few enough
// that both checkers stay busy on a short replay.
const batchSize = 256

// batch is messages in stream order between the reader, a checker and
// the apply loop.
type batch struct {
	msgs []pending
	done chan struct{} // closed once every checked is set; nil if set before the hand-off
}

func (p *Projector) checkBatch(b *batch) {
	for i := range b.msgs {
		j := &b.msgs[i]
		j.checked = p.checkMsg(j.seq, j.subject, j.data)
	}
}

// pending is a message and what its checker found.
type pending struct {
	seq     uint64
	subject string
	data    []byte
	checked checked
}

// checked is what check found in a stored message: the event, or why it
// is refused (reject) or unusable (poison), and its Merkle leaf hash.
type checked struct {
	ev     events.Event
	reject error
	poison error
	leaf   tlog.Hash
}

func (p *Projector) markCaughtUp() {
	if !p.caughtUp.Swap(true) {
		p.log.Info("projector caught up", "seq", p.lastSeq.Load(), "keys", p.table.Len())
	}
}

// Close stops following the stream, waits for the goroutines to exit, and
// writes a last snapshot so the next start replays almost nothing.
func (p *Projector) Close(ctx context.Context) error {
	if p.cancel == nil {
		return nil
	}
	p.cancel()
	select {
	case <-p.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if p.snapDir != "" && p.caughtUp.Load() && p.lastSeq.Load() > p.snapSeq.Load() {
		if _, err := p.Snapshot(); err != nil {
			return err
		}
	}
	return p.tree.Close()
}

// loadNewestSnapshot loads the newest usable snapshot, trying older ones
// when one is not, and leaves the table empty (full replay) when none is.
// It returns an errReplaced error, and loads nothing, when the snapshot
// shows that the stream is not the one it was taken of.
func (p *Projector) loadNewestSnapshot(ctx context.Context, stream jetstream.Stream, streamLast uint64) error {
	start := time.Now()
	for _, name := range listSnapshots(p.snapDir) {
		path := filepath.Join(p.snapDir, name)
		leaf, err := p.checkSnapshotHead(ctx, stream, path, streamLast)
		if err != nil {
			if errors.Is(err, errReplaced) {
				return err
			}
			p.log.Warn("projector: snapshot not used", "path", path, "err", err)
			continue
		}
		meta, err := p.loadSnapshot(path, snapshotMeta{streamCreated: p.streamID, seq: streamLast, unsignedThrough: p.ring.UnsignedThrough()})
		if errors.Is(err, errReplaced) {
			return err
		}
		if err != nil {
			p.log.Warn("projector: snapshot not used", "path", path, "err", err)
			continue
		}
		p.lastSeq.Store(meta.seq)
		p.snapSeq.Store(meta.seq)
		p.loadedSeq, p.loadedLeaf = meta.seq, leaf
		p.cutMu.Lock()
		p.head = headState{seq: meta.seq, hash: meta.head}
		p.cutMu.Unlock()
		p.log.Info("projector: snapshot loaded", "path", path, "seq", meta.seq, "keys", p.table.Len(),
			"took", time.Since(start).Round(time.Millisecond))
		return nil
	}
	return nil
}

// checkSnapshotHead establishes that a snapshot belongs to the stream: the
// snapshot is this node's own work (written by it after checking every
// event's signature, in its 0700 data directory, SHA-256 checksummed), so
// what remains to prove is that the stream still holds the history it
// summarises: the same stream (creation time), at least as long, and the
// very same event (SHA-256 of its stored bytes, signature included) at
// the snapshot's sequence.
//
// It returns the Merkle leaf of that event, which the tree file must end on.
func (p *Projector) checkSnapshotHead(ctx context.Context, stream jetstream.Stream, path string, streamLast uint64) (tlog.Hash, error) {
	meta, err := peekSnapshotMeta(path)
	if err != nil {
		return tlog.Hash{}, err
	}
	if meta.streamCreated != p.streamID {
		return tlog.Hash{}, fmt.Errorf("%w: the snapshot %s was taken of a KEYS created %s; this one was created %s", errReplaced, filepath.Base(path),
			time.Unix(0, meta.streamCreated).UTC().Format(time.RFC3339Nano), time.Unix(0, p.streamID).UTC().Format(time.RFC3339Nano))
	}
	if meta.seq > streamLast {
		return tlog.Hash{}, fmt.Errorf("%w: the snapshot is at sequence %d, the stream ends at %d", errReplaced, meta.seq, streamLast)
	}
	m, err := stream.GetMsg(ctx, meta.seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return tlog.Hash{}, fmt.Errorf("%w: the event at the snapshot's sequence %d is gone", errReplaced, meta.seq)
	}
	if err != nil {
		return tlog.Hash{}, fmt.Errorf("cannot read the event at the snapshot's sequence: %w", err)
	}
	if sha256.Sum256(m.Data) != meta.head {
		return tlog.Hash{}, fmt.Errorf("%w: the event at sequence %d differs from the one the snapshot recorded", errReplaced, meta.seq)
	}
	return tlog.RecordHash(m.Data), nil
}

// Snapshot writes a snapshot of the table now and prunes old ones. It
// needs Options.SnapshotDir.
func (p *Projector) Snapshot() (string, error) {
	if p.snapDir == "" {
		return "", errors.New("projector: no snapshot directory")
	}
	p.snapMu.Lock()
	defer p.snapMu.Unlock()
	c, err := p.cut()
	if err != nil {
		return "", err
	}
	seq := c.meta.seq
	// The tree file must hold at least the snapshot's leaves before the
	// snapshot exists: a start from it then never needs the stream to
	// rebuild the tree.
	if err := p.tree.Sync(); err != nil {
		return "", fmt.Errorf("projector: syncing the Merkle tree: %w", err)
	}
	path, err := p.writeSnapshot(p.snapDir, c)
	if err != nil {
		return "", fmt.Errorf("projector: writing snapshot: %w", err)
	}
	p.snapSeq.Store(seq)
	pruneSnapshots(p.snapDir, 2)
	return path, nil
}

// snapshotLoop writes a snapshot once SnapshotEvery events, or any events
// and SnapshotInterval, have gone by since the last one.
func (p *Projector) snapshotLoop(ctx context.Context) {
	if p.snapDir == "" {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		seq, snap := p.lastSeq.Load(), p.snapSeq.Load()
		if !p.caughtUp.Load() || seq <= snap || (seq-snap < p.snapEvery && time.Since(last) < p.snapInterval) {
			continue
		}
		start := time.Now()
		if path, err := p.Snapshot(); err != nil {
			p.log.Error("projector: snapshot failed", "err", err)
		} else {
			p.log.Info("projector: snapshot written", "path", path, "seq", seq, "keys", p.table.Len(), "took", time.Since(start).Round(time.Millisecond))
		}
		last = time.Now()
	}
}

// WaitApplied blocks until the projector has applied sequence seq, or ctx
// ends. The admin API uses it so that a revoke returns only once this node
// refuses the key.
func (p *Projector) WaitApplied(ctx context.Context, seq uint64) error {
	for {
		// The channel is published before lastSeq is read, and advance
		// stores lastSeq before it takes the channel: one of the two
		// sees the other (Go's atomics are sequentially consistent).
		ch := p.waitCh.Load()
		if ch == nil {
			c := make(chan struct{})
			if !p.waitCh.CompareAndSwap(nil, &c) {
				continue // another waiter's, or already closed: look again
			}
			ch = &c
		}
		if p.lastSeq.Load() >= seq {
			return nil
		}
		select {
		case <-*ch:
		case <-ctx.Done():
			return keyledger.Wrap(keyledger.Unavailable, ctx.Err(), "this node has not applied the event yet")
		}
	}
}

func (p *Projector) advance(seq uint64, data []byte) {
	p.head = headState{seq: seq, data: data}
	p.lastSeq.Store(seq)
	// Caught up means: applied the sequence the stream's leader
	// reported at Start. NumPending is not enough: it is counted by the
	// consumer's replica, which may itself lag the leader. Marked before
	// waiters wake, so that one that waited for the target finds it.
	if p.following && seq >= p.target {
		p.markCaughtUp()
	}
	if c := p.confirming.Load(); c != nil && seq >= c.target && p.confirming.CompareAndSwap(c, nil) {
		p.renew(c.sent)
	}
	if p.waitCh.Load() != nil {
		if ch := p.waitCh.Swap(nil); ch != nil {
			close(*ch)
		}
	}
	if p.onAdvance != nil {
		p.onAdvance(seq)
	}
}

// ApplyMsg applies the stored event at stream sequence seq on subject.
// Sequences at or below the last applied one are duplicates and change
// nothing. An event no trusted key signed, or whose key_id is not its
// subject's, is refused (counted, logged, reported to OnReject); an
// undecodable one is counted and skipped. It must be called by one
// goroutine at a time, in stream order.
func (p *Projector) ApplyMsg(seq uint64, subject string, data []byte) {
	p.applyChecked(seq, subject, data, p.checkMsg(seq, subject, data))
}

// checkMsg verifies and decodes a stored event. It touches no state, so
// any number of goroutines may call it.
func (p *Projector) checkMsg(seq uint64, subject string, data []byte) checked {
	leaf := tlog.RecordHash(data)
	var text []byte
	if p.trust.vouched(seq) {
		// A checkpoint vouches for its signature (see trust.go).
		text = events.Unseal(data)
		p.vouched.Add(1)
	} else {
		var err error
		if text, _, err = p.ring.Open(data, seq); err != nil {
			return checked{reject: err, leaf: leaf}
		}
	}
	ev, err := events.Decode(text)
	if err != nil {
		return checked{poison: err, leaf: leaf}
	}
	if !nats.IsKeySubject(subject, ev.Head().KeyID) {
		// A signature vouches for the event, not for where it was put:
		// a signed revoke of one key copied onto another key's subject
		// must not move that key's history.
		return checked{reject: events.ErrSubjectMismatch, leaf: leaf}
	}
	return checked{ev: ev, leaf: leaf}
}

// applyChecked applies what check found, on the apply goroutine.
func (p *Projector) applyChecked(seq uint64, subject string, data []byte, c checked) {
	p.cutMu.Lock()
	defer p.cutMu.Unlock()
	if seq <= p.lastSeq.Load() {
		p.ignored.Add(1)
		return
	}
	if p.broken.Load() != nil {
		return
	}
	// The ledger is append-only and never loses an event (KEYS denies
	// deletes): a sequence skipped is history removed by someone who
	// could change the stream's configuration. No Merkle root past it
	// could match the fleet's checkpoints, so the node stops here.
	if want := uint64(p.tree.Size()) + 1; seq != want {
		p.lostEvent(want, seq)
		return
	}
	if _, err := p.tree.AppendHash(c.leaf); err != nil {
		p.Diverge("cannot extend the ledger's Merkle tree: " + err.Error())
		return
	}
	if !p.checkTrust(seq, c) {
		return
	}
	switch {
	case c.reject != nil:
		p.refused.add(seq)
		p.reject(seq, subject, c.reject)
	case c.poison != nil:
		p.poison.Add(1)
		p.log.Error("projector: skipping undecodable KEYS event", "seq", seq, "err", c.poison)
	default:
		applied := p.applied.Load()
		p.Apply(seq, c.ev)
		if p.applied.Load() != applied {
			// Every event that changes an entry stores it with Rev
			// = seq already: no second lookup.
			p.advance(seq, data)
			return
		}
	}
	p.stored(seq, subject)
	p.advance(seq, data)
}

// Apply applies a decoded event. It is idempotent and order-checked: a
// second create of an id or hash, a revoke of an unknown or revoked key, or
// any event after a revoke leaves the table as it was.
func (p *Projector) Apply(seq uint64, ev events.Event) {
	switch e := ev.(type) {
	case *events.KeyCreated:
		p.applyCreated(seq, e)
	case *events.KeyRevoked:
		p.applyRevoked(seq, e)
	case *events.KeyRolled:
		p.applyRolled(seq, e)
	case *events.KeyUpdated:
		p.applyUpdated(seq, e)
	case *events.KeyDisabled:
		p.applySwitch(seq, &e.Header, e.Prev.Prev, true)
	case *events.KeyEnabled:
		p.applySwitch(seq, &e.Header, e.Prev.Prev, false)
	case *events.PlanSet:
		p.applyPlanSet(seq, e)
	case *events.OwnerSet:
		p.applyOwnerSet(seq, e)
	default:
		p.ignored.Add(1)
	}
}

// follows reports whether a reversible event with prev may apply to the
// entry: prev must be the last event stored on the key's subject. A copy
// of an old signed event, put back into the stream, has a Prev behind it.
func (p *Projector) follows(seq uint64, ent *Entry, prev uint64, keyID string) bool {
	if ent.Rev == 0 || prev == ent.Rev {
		return true
	}
	p.reject(seq, nats.KeySubject(keyID), fmt.Errorf("%w: prev %d, the key's last event is %d", events.ErrReplayed, prev, ent.Rev))
	return false
}

// reversible finds the entry a reversible event (what) applies to, in
// slot s, or nil when it is unknown or the event does not follow the
// key's last one (ignored or refused, and counted).
func (p *Projector) reversible(seq uint64, h *events.Header, prev uint64, what string) (int, *Entry) {
	d := p.table.data.Load()
	s := p.table.byID(d, h.KeyID)
	if s < 0 {
		p.ignore(what+" of unknown key", seq, h.KeyID)
		return -1, nil
	}
	old := d.slots[s].e.Load()
	if !p.follows(seq, old, prev, h.KeyID) {
		return -1, nil
	}
	return s, old
}

// applyUpdated changes the fields a KeyUpdated names. A revoked key never
// changes, and no update pushes a rolled key's expiry past its roll's.
func (p *Projector) applyUpdated(seq uint64, e *events.KeyUpdated) {
	s, old := p.reversible(seq, &e.Header, e.Prev.Prev, "update")
	if old == nil {
		return
	}
	if old.Revoked {
		p.ignore("update of revoked key", seq, e.KeyID)
		return
	}
	c := old.clone()
	x := old.Extra.edit()
	if e.Changes(events.FieldPermissions) {
		c.Perms, c.names = p.permMask(e.Permissions), internNames(e.Permissions)
	}
	if e.Changes(events.FieldRateLimit) {
		x.RateLimit = e.RateLimit
	}
	if e.Changes(events.FieldExpiresAt) {
		c.ExpiresAt = 0
		if e.ExpiresAt != nil {
			c.ExpiresAt = e.ExpiresAt.UnixNano()
		}
		if x.RollCap != 0 && (c.ExpiresAt == 0 || c.ExpiresAt > x.RollCap) {
			c.ExpiresAt = x.RollCap
		}
	}
	if e.Changes(events.FieldMetadata) {
		x.Metadata = e.Metadata
	}
	if e.Changes(events.FieldAllowedIPs) {
		x.Allowlist, x.AllowedIPs, _ = keyledger.ParseAllowlist(e.AllowedIPs)
	}
	if e.Changes(events.FieldCredits) {
		// A new balance is the key's own, whatever it shared before.
		x.Credits, x.CreditsRev, x.CreditsAt, x.CreditsKey = e.Credits, seq, e.At.UnixNano(), ""
		if e.Credits == nil {
			x.CreditsRev, x.CreditsAt = 0, 0
		}
	}
	c.Extra = x.orNil()
	c.Rev = seq
	p.table.replace(s, c)
	p.updateRecord(e.KeyID, seq, func(k *keyledger.Key) {
		if e.Changes(events.FieldName) {
			k.Name = e.Name
		}
		if e.Changes(events.FieldPermissions) {
			k.Permissions = e.Permissions
		}
		if e.Changes(events.FieldRateLimit) {
			k.RateLimit = e.RateLimit
		}
		if e.Changes(events.FieldExpiresAt) {
			k.ExpiresAt = nil
			if c.ExpiresAt != 0 {
				t := time.Unix(0, c.ExpiresAt).UTC()
				k.ExpiresAt = &t
			}
		}
		if e.Changes(events.FieldMetadata) {
			k.Metadata = json.RawMessage(e.Metadata)
		}
		if e.Changes(events.FieldAllowedIPs) {
			k.AllowedIPs = x.AllowedIPs
		}
		if e.Changes(events.FieldCredits) {
			k.Credits = e.Credits
		}
		at := e.At
		k.UpdatedAt, k.UpdatedBy = &at, e.Actor
	})
	p.applied.Add(1)
}

// applySwitch disables (off) or enables a key. A revoked key stays
// revoked; disabling a disabled key (or enabling an enabled one) changes
// nothing but the key's last event.
func (p *Projector) applySwitch(seq uint64, h *events.Header, prev uint64, off bool) {
	s, old := p.reversible(seq, h, prev, "disable or enable")
	if old == nil {
		return
	}
	if old.Revoked {
		p.ignore("disable or enable of revoked key", seq, h.KeyID)
		return
	}
	c := old.clone()
	c.Disabled, c.Rev = off, seq
	p.table.replace(s, c)
	p.updateRecord(h.KeyID, seq, func(k *keyledger.Key) {
		k.Disabled = off
		if off {
			at := h.At
			k.DisabledAt, k.DisabledBy = &at, h.Actor
		} else {
			k.DisabledAt, k.DisabledBy = nil, ""
		}
	})
	p.applied.Add(1)
}

// stored records that an event at seq, which changed nothing (ignored or
// refused), is still the last one on its key's subject, for the Prev
// check of the key's next reversible event.
func (p *Projector) stored(seq uint64, subject string) {
	id, ok := strings.CutPrefix(subject, nats.KeysSubjectPrefix)
	if !ok {
		return
	}
	if isAccountID(id) {
		p.storedAccount(seq, id)
		return
	}
	d := p.table.data.Load()
	s := p.table.byID(d, id)
	if s < 0 {
		return
	}
	if e := d.slots[s].e.Load(); e.Rev != seq {
		c := e.clone()
		c.Rev = seq
		p.table.replace(s, c)
	}
}

func (p *Projector) applyCreated(seq uint64, e *events.KeyCreated) {
	if p.table.ByID(e.KeyID) != nil {
		p.ignore("key already exists", seq, e.KeyID)
		return
	}
	h, err := keyledger.ParseHash(e.Hash)
	if err != nil {
		p.ignore("bad hash", seq, e.KeyID)
		return
	}
	if p.table.Lookup(&h) != nil {
		p.ignore("hash already belongs to another key", seq, e.KeyID)
		return
	}
	perms := p.permMask(e.Permissions)
	ent := p.slab.alloc()
	*ent = Entry{
		Hash:        h,
		Owner:       p.intern(e.Owner),
		Environment: e.Environment,
		Perms:       perms,
		Imported:    e.Imported,
		names:       internNames(e.Permissions),
		Rev:         seq,
	}
	// What few keys have, on the stack until it turns out to hold
	// something (a replay creates millions of keys that have none).
	x := Extra{RateLimit: e.RateLimit, Metadata: e.Metadata}
	ent.setID(e.KeyID, &x)
	x.Allowlist, x.AllowedIPs, _ = keyledger.ParseAllowlist(e.AllowedIPs)
	if e.AdminScope != nil {
		x.Scope = p.intern(e.AdminScope.Owner)
	}
	if e.Credits != nil {
		x.Credits, x.CreditsRev, x.CreditsAt = e.Credits, seq, e.At.UnixNano()
		// A roll hands the balance on: the new key spends its
		// predecessor's counter, not a fresh copy of its credits.
		if e.RolledFrom != "" {
			if old := p.table.ByID(e.RolledFrom); old != nil && old.Extra != nil && old.Extra.Credits != nil {
				ox := old.Extra
				x.Credits, x.CreditsRev, x.CreditsAt, x.CreditsKey = ox.Credits, ox.CreditsRev, ox.CreditsAt, ox.CreditsKey
				if x.CreditsKey == "" {
					x.CreditsKey = old.idText()
				}
			}
		}
	}
	if !x.empty() {
		ent.Extra = x.edit()
	}
	if e.ExpiresAt != nil {
		ent.ExpiresAt = e.ExpiresAt.UnixNano()
	}
	p.table.insert(ent)
	if p.records != nil {
		k := &keyledger.Key{
			ID: e.KeyID, Name: e.Name, Environment: e.Environment, Permissions: e.Permissions,
			Owner: e.Owner, Hash: e.Hash, Hint: e.Hint, ExpiresAt: e.ExpiresAt, RateLimit: e.RateLimit,
			CreatedAt: e.At, CreatedBy: e.Actor, Revision: seq, RolledFrom: e.RolledFrom, Imported: e.Imported,
			Metadata: e.Metadata, AdminScope: e.AdminScope, Credits: e.Credits,
		}
		if ent.Extra != nil {
			k.AllowedIPs = ent.Extra.AllowedIPs
		}
		p.recMu.Lock()
		p.records[e.KeyID] = k
		p.indexRecord(k, ent.Owner)
		p.recMu.Unlock()
	}
	p.applied.Add(1)
}

func (p *Projector) applyRevoked(seq uint64, e *events.KeyRevoked) {
	d := p.table.data.Load()
	s := p.table.byID(d, e.KeyID)
	if s < 0 {
		p.ignore("revoke of unknown key", seq, e.KeyID)
		return
	}
	old := d.slots[s].e.Load()
	if old.Revoked {
		p.ignore("revoke of revoked key", seq, e.KeyID)
		return
	}
	rc := old.revokedCopy()
	rc.Rev = seq
	p.table.replace(s, rc)
	p.updateRecord(e.KeyID, seq, func(k *keyledger.Key) {
		at := e.At
		k.RevokedAt, k.RevokedBy, k.RevokeReason = &at, e.Actor, e.Reason
	})
	p.applied.Add(1)
}

// applyRolled shortens a key's life to the roll's expiry. It never
// lengthens it, and a revoked key stays revoked.
func (p *Projector) applyRolled(seq uint64, e *events.KeyRolled) {
	d := p.table.data.Load()
	s := p.table.byID(d, e.KeyID)
	if s < 0 {
		p.ignore("roll of unknown key", seq, e.KeyID)
		return
	}
	old := d.slots[s].e.Load()
	exp := e.ExpiresAt.UnixNano()
	if old.Revoked || (old.ExpiresAt != 0 && old.ExpiresAt <= exp) {
		p.ignore("roll would not shorten the key's life", seq, e.KeyID)
		p.updateRecord(e.KeyID, seq, func(k *keyledger.Key) { k.RolledTo = e.RolledTo })
		return
	}
	c := old.clone()
	c.ExpiresAt, c.Rev = exp, seq
	x := old.Extra.edit()
	x.RollCap = exp
	c.Extra = x
	p.table.replace(s, c)
	p.updateRecord(e.KeyID, seq, func(k *keyledger.Key) {
		at := e.ExpiresAt.UTC()
		k.ExpiresAt, k.RolledTo = &at, e.RolledTo
	})
	p.applied.Add(1)
}

// updateRecord applies f to a copy of a key's record (admin nodes).
func (p *Projector) updateRecord(id string, seq uint64, f func(*keyledger.Key)) {
	if p.records == nil {
		return
	}
	p.recMu.Lock()
	defer p.recMu.Unlock()
	if k := p.records[id]; k != nil {
		c := *k
		f(&c)
		c.Revision = seq
		p.records[id] = &c
		p.reindex(&c)
	}
}

// permMask turns permission names into a set over this node's catalog.
// Names the catalog does not know (it may have shrunk since) grant nothing;
// "all" still grants everything.
func (p *Projector) permMask(names []string) keyledger.Permissions {
	var perms keyledger.Permissions
	for _, name := range names {
		if m, err := p.catalog.Mask([]string{name}); err == nil {
			perms |= m
		}
	}
	return perms
}

// intern returns the one copy of s the projector keeps.
func (p *Projector) intern(s string) string {
	if v, ok := p.owners[s]; ok {
		return v
	}
	p.owners[s] = s
	return s
}

func (p *Projector) ignore(why string, seq uint64, keyID string) {
	p.ignored.Add(1)
	p.log.Warn("projector: event ignored", "reason", why, "seq", seq, "key_id", keyID)
}

// Key returns a copy of a key's record. It needs Options.Records.
func (p *Projector) Key(id string) (keyledger.Key, bool) {
	p.recMu.RLock()
	defer p.recMu.RUnlock()
	k, ok := p.records[id]
	if !ok {
		return keyledger.Key{}, false
	}
	return *k, true
}

// Filter selects keys in Keys. Zero fields match everything.
type Filter struct {
	Owner       string
	Environment keyledger.Environment
	Status      keyledger.Status
}

// Keys returns copies of the records matching f, newest first (by
// CreatedAt, then by ID, as Page orders them). It needs Options.Records.
// It reads the whole set (an owner's, with an owner filter) in one go;
// the admin API pages with Page.
func (p *Projector) Keys(f Filter, now time.Time) []keyledger.Key {
	p.recMu.RLock()
	defer p.recMu.RUnlock()
	x := p.byTime
	if f.Owner != "" {
		x = p.byOwner[f.Owner]
	}
	if x == nil {
		return []keyledger.Key{}
	}
	out := make([]keyledger.Key, 0, x.n)
	for at := x.last(); at.c >= 0; at = x.prev(at) {
		k := x.at(at).k
		if f.Owner != "" && k.Owner != f.Owner ||
			f.Environment != keyledger.EnvUnknown && k.Environment != f.Environment ||
			f.Status != "" && k.StatusAt(now) != f.Status {
			continue
		}
		out = append(out, *k)
	}
	return out
}
