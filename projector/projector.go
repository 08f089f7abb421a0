package projector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
	"github.com/nats-io/nats.go/jetstream"
)

// Options configure a Projector.
type Options struct {
	// Catalog turns permission names into bit sets (default: DefaultCatalog).
	Catalog *keyledger.Catalog
	// Records keeps the full record of every key for the admin API. Nodes
	// that only verify leave it off and keep just the table.
	Records bool
	// Logger receives warnings about events that could not be applied.
	Logger *slog.Logger
	// MaxStaleness is how long the node may go without confirming it
	// has the stream's latest events (connection down, consumer stalled)
	// before Fresh turns false (default 5s).
	MaxStaleness time.Duration
	// Now is the clock of the staleness checks (default time.Now).
	Now func() time.Time
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
}

// Stats counts what the projector has seen.
type Stats struct {
	Applied  uint64 // events that changed the table
	Ignored  uint64 // duplicates and out-of-order events, safely skipped
	Poison   uint64 // undecodable events, skipped
	LastSeq  uint64 // last applied stream sequence
	Lag      uint64 // stream events not yet applied, as of the last check
	Keys     int    // entries in the table
	CaughtUp bool
	Fresh    bool
}

// Projector follows KEYS and maintains a Table (and optionally the full key
// records). It is the table's only writer.
type Projector struct {
	js      jetstream.JetStream
	catalog *keyledger.Catalog
	log     *slog.Logger
	table   *Table

	// Interned owners and permission lists: most keys share them. Touched
	// only by the apply goroutine (the table's single writer).
	owners map[string]string
	perms  map[string]*[]string

	recMu   sync.RWMutex
	records map[string]*keyledger.Key // nil unless Options.Records

	lastSeq  atomic.Uint64
	caughtUp atomic.Bool
	target   uint64 // stream's last sequence at Start
	applied  atomic.Uint64
	ignored  atomic.Uint64
	poison   atomic.Uint64

	// Staleness: the monitor records when it last confirmed that this
	// node had every event in the stream.
	maxStale    time.Duration
	now         func() time.Time
	lastFresh   atomic.Int64 // unix nanos
	fresh       atomic.Bool  // lastFresh within maxStale, as of the last tick
	streamLast  atomic.Uint64
	lastChecked uint64 // applied sequence at the previous check (monitor only)

	// waitCh is closed and replaced each time lastSeq advances.
	waitMu sync.Mutex
	waitCh chan struct{}

	onAdvance func(seq uint64)

	snapDir      string
	snapEvery    uint64
	snapInterval time.Duration
	snapSeq      atomic.Uint64 // sequence of the newest snapshot written or loaded
	streamID     int64         // KEYS creation time: snapshots are only valid for it
	snapMu       sync.Mutex    // one snapshot at a time

	cancel context.CancelFunc
	done   chan struct{}
}

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
		js:           js,
		catalog:      opts.Catalog,
		log:          opts.Logger,
		table:        NewTable(0),
		owners:       make(map[string]string),
		perms:        make(map[string]*[]string),
		waitCh:       make(chan struct{}),
	}
	if opts.Records {
		p.records = make(map[string]*keyledger.Key)
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
		Applied: p.applied.Load(), Ignored: p.ignored.Load(), Poison: p.poison.Load(),
		LastSeq: p.lastSeq.Load(), Keys: p.table.Len(), CaughtUp: p.caughtUp.Load(), Fresh: p.Fresh(),
	}
	if sl := p.streamLast.Load(); sl > st.LastSeq {
		st.Lag = sl - st.LastSeq
	}
	return st
}

// Fresh reports whether the node has confirmed, within MaxStaleness, that
// it holds every event in the stream. A node that is not fresh may be
// missing a revocation.
// The monitor keeps the answer current several times per MaxStaleness, so
// asking costs one atomic load and no clock read on the verify path.
func (p *Projector) Fresh() bool { return p.fresh.Load() }

// Ready reports whether the node may answer verifications: caught up with
// the stream and fresh.
func (p *Projector) Ready() bool { return p.caughtUp.Load() && p.Fresh() }

// monitor checks, several times per MaxStaleness, that the connection is up
// and that the projector has applied everything the stream holds (or is
// still making progress towards it).
func (p *Projector) monitor(ctx context.Context, stream jetstream.Stream) {
	interval := p.maxStale / 5
	interval = min(max(interval, 50*time.Millisecond), time.Second)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.check(ctx, stream, interval)
		p.fresh.Store(p.now().UnixNano()-p.lastFresh.Load() <= int64(p.maxStale))
	}
}

func (p *Projector) check(ctx context.Context, stream jetstream.Stream, interval time.Duration) {
	if nc := p.js.Conn(); nc == nil || !nc.IsConnected() {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, interval)
	info, err := stream.Info(cctx)
	cancel()
	if err != nil {
		return
	}
	// A replica that has lost its cluster's majority still answers, but
	// names no leader: it cannot know what was written since, so its
	// answer proves nothing about freshness.
	if info.Cluster != nil && info.Cluster.Leader == "" {
		return
	}
	last, applied := info.State.LastSeq, p.lastSeq.Load()
	p.streamLast.Store(last)
	// Fresh when nothing is pending, or when the backlog is shrinking:
	// a node replaying a burst is not stale, a stalled consumer is.
	if applied >= last || applied > p.lastChecked {
		p.lastFresh.Store(p.now().UnixNano())
	}
	p.lastChecked = applied
}

// Start begins following KEYS from its first message. It returns once the
// consumer exists; catching up happens in the background (see CaughtUp and
// WaitApplied). The goroutine it starts runs until Close.
func (p *Projector) Start(ctx context.Context) error {
	stream, err := p.js.Stream(ctx, nats.KeysStream)
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "KEYS stream is not available")
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot read KEYS stream state")
	}
	p.target = info.State.LastSeq
	p.streamID = info.Created.UnixNano()
	if p.snapDir != "" && p.lastSeq.Load() == 0 {
		p.loadNewestSnapshot(info.State.LastSeq)
	}
	// Size the table for the stream once, rather than growing it all
	// through the replay: room for what is loaded plus every event still
	// to apply (events ≥ keys, so this errs on the roomy side).
	p.table.reserve(p.table.Len() + int(info.State.LastSeq-p.lastSeq.Load()))
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   p.lastSeq.Load() + 1,
	})
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot follow KEYS stream")
	}
	p.streamLast.Store(p.target)
	p.lastFresh.Store(p.now().UnixNano())
	p.fresh.Store(true)
	if p.lastSeq.Load() >= p.target {
		p.markCaughtUp()
	}
	// Short pulls with frequent idle heartbeats: the ordered consumer
	// notices a lost consumer (a leader change, a server restart) after two
	// missed heartbeats and recreates itself, so revocations resume within
	// about a second instead of the ten of the defaults.
	it, err := cons.Messages(jetstream.PullMaxMessages(1024), jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(500*time.Millisecond))
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot follow KEYS stream")
	}
	runCtx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
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

func (p *Projector) run(ctx context.Context, it jetstream.MessagesContext) {
	go func() {
		<-ctx.Done()
		it.Stop()
	}()
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				return
			}
			// The ordered consumer recreates itself after gaps and
			// reconnects; other errors are transient heartbeats misses.
			p.log.Warn("projector: KEYS consumer error", "err", err)
			continue
		}
		meta, err := msg.Metadata()
		if err != nil {
			p.poison.Add(1)
			continue
		}
		p.ApplyMsg(meta.Sequence.Stream, msg.Data())
		// Caught up means: applied the sequence the stream's leader
		// reported at Start. NumPending is not enough: it is counted by
		// the consumer's replica, which may itself lag the leader.
		if meta.Sequence.Stream >= p.target {
			p.markCaughtUp()
		}
	}
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
	return nil
}

// loadNewestSnapshot loads the newest usable snapshot, trying older ones
// when one is not, and leaves the table empty (full replay) when none is.
func (p *Projector) loadNewestSnapshot(streamLast uint64) {
	start := time.Now()
	for _, name := range listSnapshots(p.snapDir) {
		path := filepath.Join(p.snapDir, name)
		meta, err := p.loadSnapshot(path, snapshotMeta{streamCreated: p.streamID, seq: streamLast})
		if err != nil {
			p.log.Warn("projector: snapshot not used", "path", path, "err", err)
			continue
		}
		p.lastSeq.Store(meta.seq)
		p.snapSeq.Store(meta.seq)
		p.log.Info("projector: snapshot loaded", "path", path, "seq", meta.seq, "keys", p.table.Len(),
			"took", time.Since(start).Round(time.Millisecond))
		return
	}
}

// Snapshot writes a snapshot of the table now and prunes old ones. It
// needs Options.SnapshotDir.
func (p *Projector) Snapshot() (string, error) {
	if p.snapDir == "" {
		return "", errors.New("projector: no snapshot directory")
	}
	p.snapMu.Lock()
	defer p.snapMu.Unlock()
	seq := p.lastSeq.Load() // before reading the table: see snapshot.go
	path, err := p.writeSnapshot(p.snapDir, snapshotMeta{streamCreated: p.streamID, seq: seq})
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
		p.waitMu.Lock()
		ch := p.waitCh
		p.waitMu.Unlock()
		if p.lastSeq.Load() >= seq {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return keyledger.Wrap(keyledger.Unavailable, ctx.Err(), "this node has not applied the event yet")
		}
	}
}

func (p *Projector) advance(seq uint64) {
	p.lastSeq.Store(seq)
	p.waitMu.Lock()
	close(p.waitCh)
	p.waitCh = make(chan struct{})
	p.waitMu.Unlock()
	if p.onAdvance != nil {
		p.onAdvance(seq)
	}
}

// ApplyMsg applies the raw event at stream sequence seq. Sequences at or
// below the last applied one are duplicates and change nothing; an
// undecodable event is counted and skipped. It must be called by one
// goroutine at a time, in stream order.
func (p *Projector) ApplyMsg(seq uint64, data []byte) {
	if seq <= p.lastSeq.Load() {
		p.ignored.Add(1)
		return
	}
	ev, err := events.Decode(data)
	if err != nil {
		p.poison.Add(1)
		p.log.Error("projector: skipping undecodable KEYS event", "seq", seq, "err", err)
	} else {
		p.Apply(seq, ev)
	}
	p.advance(seq)
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
	default:
		p.ignored.Add(1)
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
	ent := &Entry{
		Hash:        h,
		ID:          e.KeyID,
		Owner:       p.intern(e.Owner),
		Environment: e.Environment,
		Perms:       perms,
		RateLimit:   e.RateLimit,
		Imported:    e.Imported,
		names:       p.internPerms(e.Permissions),
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
		}
		p.recMu.Lock()
		p.records[e.KeyID] = k
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
	old := d.slots[s].Load()
	if old.Revoked {
		p.ignore("revoke of revoked key", seq, e.KeyID)
		return
	}
	p.table.replace(s, old.revokedCopy())
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
	old := d.slots[s].Load()
	exp := e.ExpiresAt.UnixNano()
	if old.Revoked || (old.ExpiresAt != 0 && old.ExpiresAt <= exp) {
		p.ignore("roll would not shorten the key's life", seq, e.KeyID)
		p.updateRecord(e.KeyID, seq, func(k *keyledger.Key) { k.RolledTo = e.RolledTo })
		return
	}
	c := old.clone()
	c.ExpiresAt = exp
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

// internPerms returns the one copy of a permission list the projector keeps.
func (p *Projector) internPerms(names []string) *[]string {
	k := strings.Join(names, "\x00")
	if v, ok := p.perms[k]; ok {
		return v
	}
	c := append([]string(nil), names...)
	p.perms[k] = &c
	return &c
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

// Keys returns copies of the records matching f, newest first. It needs
// Options.Records.
func (p *Projector) Keys(f Filter, now time.Time) []keyledger.Key {
	p.recMu.RLock()
	out := make([]keyledger.Key, 0, len(p.records))
	for _, k := range p.records {
		if f.Owner != "" && k.Owner != f.Owner ||
			f.Environment != keyledger.EnvUnknown && k.Environment != f.Environment ||
			f.Status != "" && k.StatusAt(now) != f.Status {
			continue
		}
		out = append(out, *k)
	}
	p.recMu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.After(out[j].CreatedAt)
		}
		return out[i].ID > out[j].ID
	})
	return out
}
