// Package quota enforces limits that hold across the whole fleet — plans'
// monthly quotas, keys' credits and fleet-wide rate limits — without a
// network round trip on the verify path.
//
// Every limit is a counter in the fleet's JetStream (a KV bucket, see
// nats.Counters): the units of one period (a month, a day, a rate window)
// that nodes have drawn so far, changed only by compare-and-set. A node
// never asks the counter per request: it draws a lease, a block of units,
// in the background and spends it in memory with one atomic operation. A
// lease is drawn only from what the counter still has, so
//
//   - the fleet never passes more than the limit: every unit passed was
//     drawn from the counter first (no overshoot, whatever N);
//   - what it may refuse early is at most the units other nodes hold and
//     have not spent: at most (N−1) × the largest lease, and leases shrink
//     to remaining/(2N) near the limit, so the last units are near-exact;
//     a node returns a lease it has not touched for ReturnAfter;
//   - a node that crashes wastes at most the leases it held;
//   - a node that cannot reach the counters spends what it holds, then
//     refuses metered keys (503), or lets them through uncounted when the
//     plan says on_outage "open";
//   - a plan change or a new balance applies to every new lease, so on
//     every node as soon as the lease in hand is spent or returned.
//
// A node waits for a counter only when it holds no lease for it: the first
// metered request of an owner or key after start, after an idle return, or
// in a new period (rate windows' next lease is drawn before the window
// ends, so steady traffic never waits).
package quota

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	keyledger "github.com/keyledger/keyledger"
)

// Kind is what a counter limits.
type Kind string

// The kinds of counters.
const (
	KindQuota   Kind = "quota"   // an owner's monthly quota
	KindCredits Kind = "credits" // a key's credits
	KindRate    Kind = "rate"    // a fleet-wide rate window
)

// Value is a counter as stored: the units of Period drawn so far, and the
// limit they were drawn against (for the alerts that watch the counters).
type Value struct {
	Kind   Kind   `json:"kind"`
	Period string `json:"period"`
	Used   int64  `json:"used"`
	Limit  int64  `json:"limit"`
	Owner  string `json:"owner,omitempty"`
	KeyID  string `json:"key_id,omitempty"`
}

// Store holds the fleet's counters.
type Store interface {
	// Get returns a counter and its revision; ErrNotFound when there is
	// none.
	Get(ctx context.Context, key string) (Value, uint64, error)
	// Swap stores v if the counter is still at rev (0: absent) and
	// returns the new revision; ErrStale when it has moved.
	Swap(ctx context.Context, key string, v Value, rev uint64) (uint64, error)
}

// The errors of a Store.
var (
	ErrNotFound = errors.New("quota: no such counter")
	ErrStale    = errors.New("quota: the counter moved")
)

// Verdict is what a counter says to one request.
type Verdict uint8

// The verdicts.
const (
	Pass      Verdict = iota // units spent
	Exhausted                // the period's units are all drawn and spent
	Down                     // no units in hand and the counters cannot be reached
	Open                     // like Down, but the limit fails open: passed uncounted
)

// Config configures a Meter.
type Config struct {
	Store Store
	// Nodes is the fleet size leases are sized for near a limit (default
	// 3). It bounds nothing: a wrong value only makes the last units of
	// a period less (or more) exact.
	Nodes int
	// MinLease and MaxLease bound a lease (default 16 and 1000). A
	// counter's lease doubles while its leases last under a second and
	// halves when one lasts over ten.
	MinLease, MaxLease int64
	// Wait bounds how long a request waits for a lease when the node
	// holds none (default 500 ms).
	Wait time.Duration
	// ReturnAfter: a lease untouched this long goes back to the counter
	// (default 10 s).
	ReturnAfter time.Duration
	// Workers draw leases concurrently (default 4).
	Workers int
	Now     func() time.Time
	Logger  *slog.Logger
}

// Meter draws and spends leases for one node. Counter lookups are the
// caller's (a counter per owner and per key, cached beside the key's
// table entry); the Meter keeps every counter it made, to refill, return
// and expire their leases.
type Meter struct {
	cfg   Config
	wants chan *Counter

	mu       sync.Mutex
	counters map[string]*Counter

	draws, conflicts, failures atomic.Uint64

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New returns a meter; Start runs its leasers.
func New(cfg Config) *Meter {
	if cfg.Nodes < 1 {
		cfg.Nodes = 3
	}
	if cfg.MinLease < 1 {
		cfg.MinLease = 16
	}
	if cfg.MaxLease < cfg.MinLease {
		cfg.MaxLease = max(cfg.MinLease, 1000)
	}
	if cfg.Wait <= 0 {
		cfg.Wait = 500 * time.Millisecond
	}
	if cfg.ReturnAfter <= 0 {
		cfg.ReturnAfter = 10 * time.Second
	}
	if cfg.Workers < 1 {
		cfg.Workers = 4
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Meter{cfg: cfg, wants: make(chan *Counter, 4096), counters: map[string]*Counter{}}
}

// Start runs the meter's goroutines until Close (ctx's values are kept,
// its end is not: the meter lives as long as the node).
func (m *Meter) Start(ctx context.Context) {
	ctx, m.cancel = context.WithCancel(context.WithoutCancel(ctx))
	for range m.cfg.Workers {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			for {
				select {
				case c := <-m.wants:
					c.queued.Store(false)
					m.draw(ctx, c)
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(sweepEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				m.sweep(ctx)
			case <-ctx.Done():
				return
			}
		}
	}()
}

// sweepEvery is how often the meter looks at its counters: rate windows'
// next lease is drawn in the last two sweeps of a window.
const sweepEvery = 100 * time.Millisecond

// Close stops the meter and returns the leases it holds to their counters
// (until ctx ends), so a node leaving the fleet wastes nothing.
func (m *Meter) Close(ctx context.Context) {
	if m.cancel != nil {
		m.cancel()
		m.wg.Wait()
	}
	for _, c := range m.all() {
		c.mu.Lock()
		m.giveBack(ctx, c)
		c.mu.Unlock()
	}
}

// Stats counts the meter's work.
type Stats struct {
	Counters  int
	Draws     uint64 // leases drawn
	Conflicts uint64 // compare-and-set lost to another node (retried)
	Failures  uint64 // draws that could not reach the counters
}

// Stats returns the meter's counts.
func (m *Meter) Stats() Stats {
	m.mu.Lock()
	n := len(m.counters)
	m.mu.Unlock()
	return Stats{Counters: n, Draws: m.draws.Load(), Conflicts: m.conflicts.Load(), Failures: m.failures.Load()}
}

func (m *Meter) all() []*Counter {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*Counter, 0, len(m.counters))
	for _, c := range m.counters {
		out = append(out, c)
	}
	return out
}

// Window is one period of a counter: its name (the counter starts from 0
// in each new one), when it ends, and its limit (negative: no limit).
type Window struct {
	Period string
	Start  time.Time
	End    time.Time
	Limit  int64
	// Slot, appended to the counter's key, keeps windows that nodes
	// draw from at once (a rate window and the next one, drawn ahead)
	// in separate entries: one entry holds one period at a time.
	Slot string
}

// Spec describes a counter: where it is stored and its window at a time.
type Spec struct {
	Kind  Kind
	Key   string // the Store's key
	Owner string
	KeyID string
	// Window returns the period containing now, with the limit as the
	// ledger has it now (it is asked at every draw).
	Window func(now time.Time) Window
	// FailOpen, if set, says whether the limit fails open now.
	FailOpen func() bool
}

// Counter returns the meter's counter for spec.Key, made from spec the
// first time. Callers cache it: the lookup takes the meter's lock.
func (m *Meter) Counter(spec Spec) *Counter {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.counters[spec.Key]; c != nil {
		c.spec.Store(&spec)
		// A new spec may name a new period now (a key's new balance):
		// what the node holds of the old one is not spendable.
		p := spec.Window(m.cfg.Now()).Period
		for _, l := range []*atomic.Pointer[lease]{&c.cur, &c.next} {
			if x := l.Load(); x != nil && x.period != p && x.start <= m.cfg.Now().UnixNano() {
				l.CompareAndSwap(x, nil)
			}
		}
		if c.state.Load() == stateExhausted {
			c.state.Store(stateOK)
		}
		return c
	}
	c := &Counter{m: m, key: spec.Key, lease: m.cfg.MinLease}
	c.spec.Store(&spec)
	ch := make(chan struct{})
	c.notify.Store(&ch)
	m.counters[spec.Key] = c
	return c
}

// lease is the units of one period a node holds.
type lease struct {
	avail  atomic.Int64
	start  int64 // Unix ns; units are spent only in [start, end)
	end    int64
	period string
	key    string // the Store's key it was drawn from
}

// Counter is one node's side of one fleet counter. Take is safe for
// concurrent use and allocates nothing when the node holds units.
type Counter struct {
	m    *Meter
	key  string
	spec atomic.Pointer[Spec]

	cur, next atomic.Pointer[lease]
	// state is stateOK, stateExhausted (until the period ends or
	// recheck) or stateDown (until retry).
	state        atomic.Int32
	recheck      atomic.Int64 // Unix ns
	exhaustedEnd atomic.Int64 // Unix ns: the end of the exhausted period
	// lowMark is the level at which the next lease is drawn: half the
	// last one.
	lowMark atomic.Int64
	// remaining is the period's units not drawn by anyone as of the
	// last draw (the node's own lease aside).
	remaining atomic.Int64
	// need is the largest cost a request waits to spend: a lease is at
	// least that.
	need   atomic.Int64
	queued atomic.Bool
	notify atomic.Pointer[chan struct{}]

	// The leaser's side, under mu.
	mu        sync.Mutex
	lease     int64 // the next lease's size
	drawnAt   time.Time
	lastAvail int64
	touched   time.Time
}

const (
	stateOK int32 = iota
	stateExhausted
	stateDown
)

// Take spends cost units at now. When the node holds none it waits (up to
// Config.Wait) for a lease; the verdict then says why not, with when to
// retry for Exhausted.
func (c *Counter) Take(now time.Time, cost int64) (Verdict, time.Duration) {
	n := now.UnixNano()
	if c.spend(n, cost) {
		return Pass, 0
	}
	return c.slow(now, n, cost)
}

// Spend is Take without a clock: it spends units of the lease in hand
// whatever the time, and reads the clock only when it holds none. Monthly
// quotas and credits use it (the clock is a quarter of a verification):
// the meter retires a lease whose period ended within one sweep (100 ms),
// so a period's units may be spent up to 100 ms into the next. Rate
// windows, a second long, use Take.
func (c *Counter) Spend(cost int64) (Verdict, time.Duration) {
	if l := c.cur.Load(); l != nil {
		for {
			a := l.avail.Load()
			if a < cost {
				break
			}
			if l.avail.CompareAndSwap(a, a-cost) {
				if a-cost <= c.lowMark.Load() {
					c.want()
				}
				return Pass, 0
			}
		}
	}
	now := c.m.cfg.Now()
	return c.slow(now, now.UnixNano(), cost)
}

// spend is the fast path: units of the current period in hand.
func (c *Counter) spend(n, cost int64) bool {
	l := c.cur.Load()
	if l == nil || n >= l.end || n < l.start {
		if l = c.promote(l, n); l == nil {
			return false
		}
	}
	for {
		a := l.avail.Load()
		if a < cost {
			c.want()
			return false
		}
		if l.avail.CompareAndSwap(a, a-cost) {
			if a-cost <= c.lowMark.Load() {
				c.want()
			}
			return true
		}
	}
}

// promote makes the next period's lease, drawn ahead, the current one
// once its period has begun.
func (c *Counter) promote(cur *lease, n int64) *lease {
	nx := c.next.Load()
	if nx == nil || n < nx.start || n >= nx.end {
		return nil
	}
	if c.cur.CompareAndSwap(cur, nx) {
		c.next.CompareAndSwap(nx, nil)
	}
	return c.cur.Load()
}

// Refund gives back units a request took but did not use (a later limit
// refused it), to the lease they came from if it is still current.
func (c *Counter) Refund(cost int64) {
	if l := c.cur.Load(); l != nil {
		l.avail.Add(cost)
	}
}

// Remaining is the most the fleet may still pass in the current period:
// what no node has drawn, plus what this node holds. (Other nodes'
// unspent leases are not known here.) -1 when there is no limit.
func (c *Counter) Remaining(now time.Time) int64 {
	l := c.cur.Load()
	if l == nil || now.UnixNano() >= l.end {
		w := c.spec.Load().Window(now)
		if w.Limit < 0 {
			return -1
		}
		if c.state.Load() == stateExhausted && now.UnixNano() < c.recheck.Load() {
			return 0
		}
		return max(0, c.remaining.Load())
	}
	if c.remaining.Load() < 0 {
		return -1
	}
	return c.remaining.Load() + max(0, l.avail.Load())
}

func (c *Counter) slow(now time.Time, n, cost int64) (Verdict, time.Duration) {
	var t *time.Timer
	for {
		switch c.state.Load() {
		case stateExhausted:
			if n < c.recheck.Load() {
				return Exhausted, c.retryAfter(n)
			}
		case stateDown:
			if n < c.recheck.Load() {
				return c.down()
			}
		}
		if cost > c.need.Load() {
			c.need.Store(cost)
		}
		ch := *c.notify.Load()
		c.want()
		if t == nil {
			t = time.NewTimer(c.m.cfg.Wait)
			defer t.Stop()
		}
		select {
		case <-ch:
		case <-t.C:
			// No lease in time (the counters are slow to answer, or
			// lost): as unreachable.
			return c.down()
		}
		n = c.m.cfg.Now().UnixNano()
		if c.spend(n, cost) {
			return Pass, 0
		}
		// The state is judged at the loop's top, against its recheck
		// time: the wake may be another leaser's draw for a period that
		// has just ended, whose exhaustion says nothing of this one
		// (returning Exhausted on it refused the first request of a new
		// month now and then).
	}
}

func (c *Counter) down() (Verdict, time.Duration) {
	if f := c.spec.Load().FailOpen; f != nil && f() {
		return Open, 0
	}
	return Down, 0
}

// retryAfter is how long until the exhausted period ends.
func (c *Counter) retryAfter(n int64) time.Duration {
	end := c.exhaustedEnd.Load()
	if end <= n {
		return time.Second
	}
	return time.Duration(end - n)
}

// want asks the leasers for a lease (once until they take it up).
func (c *Counter) want() {
	if c.queued.CompareAndSwap(false, true) {
		select {
		case c.m.wants <- c:
		default:
			c.queued.Store(false) // the leasers are swamped: the next request asks again
		}
	}
}

// wake releases the requests waiting for this counter.
func (c *Counter) wake() {
	ch := make(chan struct{})
	old := c.notify.Swap(&ch)
	close(*old)
}

// draw takes a lease from the store: for the current period, or for the
// next one when ahead is set.
func (m *Meter) draw(ctx context.Context, c *Counter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	defer c.wake()
	now := m.cfg.Now()
	m.drawFor(ctx, c, now, false)
}

func (m *Meter) drawFor(ctx context.Context, c *Counter, now time.Time, ahead bool) {
	spec := c.spec.Load()
	w := spec.Window(now)
	if ahead {
		w = spec.Window(w.End)
	}
	if w.Limit < 0 {
		// No limit (the plan lost its quota): a lease that never runs
		// out, until the period ends and the limit is asked again.
		l := &lease{start: w.Start.UnixNano(), end: w.End.UnixNano(), period: w.Period}
		l.avail.Store(keyledger.MaxQuota)
		c.install(l, ahead)
		c.remaining.Store(-1)
		c.state.Store(stateOK)
		return
	}
	cur := c.cur.Load()
	held, need := int64(0), int64(0)
	if !ahead {
		if cur != nil && cur.period == w.Period {
			held = cur.avail.Load()
		}
		need = c.need.Swap(0)
		if held > c.lowMark.Load() && held >= need {
			return // another request's want already refilled it
		}
	}
	size := m.leaseSize(c, now)
	key := c.key + w.Slot
	for range 32 {
		cctx, cancel := context.WithTimeout(ctx, m.cfg.Wait)
		v, rev, err := m.cfg.Store.Get(cctx, key)
		cancel()
		if err != nil && !errors.Is(err, ErrNotFound) {
			m.failed(c, now, err)
			return
		}
		used := int64(0)
		switch {
		case v.Period == w.Period:
			used = v.Used
		case v.Period > w.Period && rev != 0:
			// The counter is in a later period already (this node's
			// clock is behind): never reset it.
			return
		}
		left := w.Limit - used
		// At least what a waiting request needs beyond what is held.
		// A node never holds more than MaxLease (what a crash may
		// waste), unless one request needs more.
		g := min(max(min(size, max(1, left/(2*int64(m.cfg.Nodes))), m.cfg.MaxLease-held), need-held), left)
		if g <= 0 && left > 0 {
			return
		}
		if g <= 0 {
			c.remaining.Store(0)
			if !ahead {
				c.exhaust(now, w)
			}
			return
		}
		nv := Value{Kind: spec.Kind, Period: w.Period, Used: used + g, Limit: w.Limit, Owner: spec.Owner, KeyID: spec.KeyID}
		cctx, cancel = context.WithTimeout(ctx, m.cfg.Wait)
		_, err = m.cfg.Store.Swap(cctx, key, nv, rev)
		cancel()
		if errors.Is(err, ErrStale) {
			m.conflicts.Add(1)
			continue
		}
		if err != nil {
			m.failed(c, now, err)
			return
		}
		m.draws.Add(1)
		c.remaining.Store(w.Limit - nv.Used)
		c.state.Store(stateOK)
		if held+g < need && nv.Used >= w.Limit {
			// The last units, fewer than the request needs: it is
			// refused, and smaller ones still spend them.
			c.exhaust(now, w)
		}
		c.lowMark.Store(g / 2)
		c.drawnAt = now
		if l := c.leaseOf(w, ahead); l != nil {
			l.avail.Add(g)
		} else {
			l := &lease{start: w.Start.UnixNano(), end: w.End.UnixNano(), period: w.Period, key: key}
			l.avail.Store(g)
			c.install(l, ahead)
		}
		return
	}
	// Lost every race: the next request asks again.
}

// leaseOf returns the lease held for w's period, if any.
func (c *Counter) leaseOf(w Window, ahead bool) *lease {
	p := &c.cur
	if ahead {
		p = &c.next
	}
	if l := p.Load(); l != nil && l.period == w.Period {
		return l
	}
	return nil
}

func (c *Counter) install(l *lease, ahead bool) {
	if ahead {
		c.next.Store(l)
		return
	}
	c.cur.Store(l)
}

// leaseSize adapts a counter's lease to its traffic: it doubles when the
// last one lasted under a second, halves when it lasted over ten.
func (m *Meter) leaseSize(c *Counter, now time.Time) int64 {
	if !c.drawnAt.IsZero() {
		switch d := now.Sub(c.drawnAt); {
		case d < time.Second:
			c.lease = min(c.lease*2, m.cfg.MaxLease)
		case d > 10*time.Second:
			c.lease = max(c.lease/2, m.cfg.MinLease)
		}
	}
	return c.lease
}

func (c *Counter) exhaust(now time.Time, w Window) {
	// Checked again after a return period: another node's idle lease may
	// have come back, or the plan may have grown.
	c.exhaustedEnd.Store(w.End.UnixNano())
	c.recheck.Store(min(w.End.UnixNano(), now.Add(c.m.cfg.ReturnAfter/4).UnixNano()))
	c.state.Store(stateExhausted)
}

func (m *Meter) failed(c *Counter, now time.Time, err error) {
	if m.failures.Add(1) == 1 || c.state.Load() != stateDown {
		m.cfg.Logger.Warn("quota: cannot draw a lease; the node spends what it holds, then refuses metered keys", "counter", c.key, "err", err)
	}
	c.recheck.Store(now.Add(200 * time.Millisecond).UnixNano())
	c.state.Store(stateDown)
}

// sweep draws rate windows' next leases ahead and returns idle leases.
func (m *Meter) sweep(ctx context.Context) {
	now := m.cfg.Now()
	for _, c := range m.all() {
		if !c.mu.TryLock() {
			continue
		}
		l := c.cur.Load()
		switch {
		case l == nil:
		case now.UnixNano() >= l.end:
			c.cur.CompareAndSwap(l, nil)
		case c.spec.Load().Kind == KindRate && c.next.Load() == nil && l.end-now.UnixNano() <= 2*int64(sweepEvery) && c.lastAvail != l.avail.Load():
			// Traffic in this window: the next one's lease now, so
			// that no request waits at the window's turn.
			m.drawFor(ctx, c, now, true)
		}
		if l := c.cur.Load(); l != nil {
			if a := l.avail.Load(); a != c.lastAvail {
				c.lastAvail, c.touched = a, now
			} else if a > 0 && now.Sub(c.touched) >= m.cfg.ReturnAfter {
				m.giveBack(ctx, c)
			}
		}
		c.mu.Unlock()
	}
}

// giveBack returns the units of the current lease to the counter.
func (m *Meter) giveBack(ctx context.Context, c *Counter) {
	l := c.cur.Load()
	if l == nil || !c.cur.CompareAndSwap(l, nil) {
		return
	}
	a := l.avail.Swap(0)
	c.lastAvail = 0
	if a <= 0 || m.cfg.Now().UnixNano() >= l.end {
		return
	}
	for range 32 {
		cctx, cancel := context.WithTimeout(ctx, m.cfg.Wait)
		v, rev, err := m.cfg.Store.Get(cctx, l.key)
		cancel()
		if err != nil || v.Period != l.period {
			return
		}
		v.Used = max(0, v.Used-a)
		cctx, cancel = context.WithTimeout(ctx, m.cfg.Wait)
		_, err = m.cfg.Store.Swap(cctx, l.key, v, rev)
		cancel()
		if !errors.Is(err, ErrStale) {
			if err == nil {
				c.remaining.Store(v.Limit - v.Used)
			}
			return
		}
	}
}

// Month is the window of a monthly quota: limit per calendar month, UTC.
func Month(now time.Time, limit int64) Window {
	s := keyledger.MonthStart(now)
	return Window{Period: s.Format("2006-01"), Start: s, End: s.AddDate(0, 1, 0), Limit: limit}
}

// RateWindow is the window of a fleet-wide rate: one second holding
// per-second units (rates under 1/s get windows of 1/rate seconds holding
// one unit).
func RateWindow(now time.Time, perSecond float64) Window {
	secs := int64(1)
	limit := int64(perSecond)
	if perSecond < 1 {
		secs = int64(1/perSecond + 0.5)
		limit = 1
	}
	i := now.Unix() / secs
	s := time.Unix(i*secs, 0)
	return Window{Period: strconv.FormatInt(i*secs, 10), Start: s, End: s.Add(time.Duration(secs) * time.Second), Limit: max(limit, 1),
		Slot: "." + strconv.FormatInt(i%4, 10)}
}

// CreditsWindow is the window of a key's credits set by the event at rev
// at setAt: the balance Remaining until the first refill, then Amount for
// each refill interval. Credits without refill have one window, forever.
func CreditsWindow(now time.Time, cr *keyledger.Credits, rev uint64, setAt time.Time) Window {
	tag := strconv.FormatUint(rev, 10)
	if cr.Refill == nil {
		return Window{Period: tag, Start: time.Unix(0, 0), End: time.Unix(0, math.MaxInt64), Limit: cr.Remaining}
	}
	var s, e, first time.Time
	if cr.Refill.Interval == keyledger.RefillMonthly {
		s = keyledger.MonthStart(now)
		e = s.AddDate(0, 1, 0)
		first = keyledger.MonthStart(setAt)
	} else {
		s = keyledger.DayStart(now)
		e = s.AddDate(0, 0, 1)
		first = keyledger.DayStart(setAt)
	}
	limit := cr.Refill.Amount
	if !s.After(first) {
		limit = cr.Remaining
	}
	return Window{Period: tag + "/" + s.Format("2006-01-02"), Start: s, End: e, Limit: limit}
}
