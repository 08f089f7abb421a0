package nats

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	keyledger "github.com/keyledger/keyledger"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// NodesSubjectPrefix + node name is where a node announces its state.
const NodesSubjectPrefix = "keyledger.nodes."

// NodesPingSubject asks every node to announce itself now: a registry
// that starts sends it, so it knows the fleet at once instead of after a
// heartbeat interval.
const NodesPingSubject = "keyledger.ping.nodes"

// HeartbeatInterval is how often a node announces itself when nothing
// happens; it also announces at once after applying a KEYS event.
const HeartbeatInterval = time.Second

// heardMargin is what a heartbeat may take to arrive, past the interval,
// for a new registry to count its sender (see Registry.WaitApplied).
const heardMargin = 250 * time.Millisecond

// NodeTimeout is how long a node may stay silent before registries stop
// listing it as live.
const NodeTimeout = 3 * HeartbeatInterval

// NodeMemory is how long a registry keeps counting a silent node in a
// wait's n (as refusing, once its lease has certainly run out): a node
// that was just paused or cut off is still part of the fleet, and
// `applied_by` must not hide it.
const NodeMemory = time.Minute

// HeaderSignature carries a heartbeat's signature: base64 of the Ed25519
// signature, by the node's own nkey, over the message body.
const HeaderSignature = "Keyledger-Signature"

// NodeStatus is a node's heartbeat: who it is and how far it has applied
// the ledger. It travels as JSON on plain NATS (not a stream): it is only
// worth anything while fresh.
//
// A heartbeat is what `applied_by n/m` counts, so it must not be forgeable:
// the server lets only node N publish on keyledger.nodes.N, and the body is
// signed with N's nkey, which a registry checks against the fleet file. A
// process outside the fleet cannot announce itself, and no node can speak
// for another; what a node says of itself is its own to lie about (a
// compromised verifier can serve revoked keys whatever it announces).
type NodeStatus struct {
	Name        string                `json:"name"`
	Role        string                `json:"role"`
	Environment keyledger.Environment `json:"environment"`
	LastSeq     uint64                `json:"last_seq"`
	CaughtUp    bool                  `json:"caught_up"`
	Fresh       bool                  `json:"fresh"`
	Keys        int                   `json:"keys"`
	At          time.Time             `json:"at"`
	// LeaseMS is the node's freshness lease (its --max-staleness): an
	// event appended at T is applied by the node, or the node refuses
	// every key, by T + lease. 0 means the node serves whatever it has
	// (--fail-open), so no wait can prove it refuses anything.
	LeaseMS int64 `json:"lease_ms"`
}

// LeaseDrift and LeaseMargin are what a registry adds to a node's lease
// before it counts the node, silent since, as refusing: clocks of two
// machines may run at rates 10 % apart at worst, and a heartbeat may be
// in flight. A node is assumed to announce itself at least every
// HeartbeatInterval while it runs (the announcer's only job).
const (
	LeaseDrift  = 10 // percent
	LeaseMargin = 250 * time.Millisecond
)

// fenceAfter is how long after a node's last heartbeat (or after an event
// was appended, whichever is later) its lease has certainly run out.
func fenceAfter(st NodeStatus) time.Duration {
	lease := time.Duration(st.LeaseMS) * time.Millisecond
	return lease + lease*LeaseDrift/100 + LeaseMargin
}

// Announcer publishes a node's status every HeartbeatInterval and whenever
// Notify is called (coalesced), so writers waiting for the fleet hear of an
// applied event within a round trip.
type Announcer struct {
	nc     *natsgo.Conn
	id     *Identity
	ping   *natsgo.Subscription
	status func() NodeStatus
	kick   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
	log    *slog.Logger
	// interval is the heartbeat period: HeartbeatInterval. Only tests
	// change it (before Start), to tell an answer to a ping or to Notify
	// from a periodic heartbeat without relying on timing.
	interval time.Duration
}

// NewAnnouncer returns an announcer of status on nc, signing as id (whose
// name must be the status's). Call Start.
func NewAnnouncer(nc *natsgo.Conn, id *Identity, status func() NodeStatus, log *slog.Logger) *Announcer {
	if log == nil {
		log = slog.Default()
	}
	return &Announcer{nc: nc, id: id, status: status, kick: make(chan struct{}, 1), log: log, interval: HeartbeatInterval}
}

// Notify asks for an announcement now. It never blocks.
func (a *Announcer) Notify() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// Start runs the announcing goroutine until Close. The node answers pings
// from the moment Start returns, before its first heartbeat goes out.
func (a *Announcer) Start(ctx context.Context) {
	if sub, err := a.nc.Subscribe(NodesPingSubject, func(*natsgo.Msg) { a.Notify() }); err == nil {
		a.ping = sub
	}
	ctx, a.cancel = context.WithCancel(context.WithoutCancel(ctx))
	a.done = make(chan struct{})
	go func() {
		defer close(a.done)
		t := time.NewTicker(a.interval)
		defer t.Stop()
		for {
			a.announce()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-a.kick:
			}
		}
	}()
}

func (a *Announcer) announce() {
	st := a.status()
	b, err := json.Marshal(st)
	if err != nil {
		a.log.Error("heartbeat not encodable", "err", err)
		return
	}
	sig, err := a.id.Sign(b)
	if err != nil {
		a.log.Error("heartbeat not signed", "err", err)
		return
	}
	m := natsgo.NewMsg(NodesSubjectPrefix + st.Name)
	m.Data = b
	m.Header.Set(HeaderSignature, base64.StdEncoding.EncodeToString(sig))
	if err := a.nc.PublishMsg(m); err != nil {
		a.log.Debug("heartbeat not sent", "err", err)
	}
}

// Close stops announcing.
func (a *Announcer) Close(ctx context.Context) error {
	if a.cancel == nil {
		return nil
	}
	if a.ping != nil {
		a.ping.Unsubscribe()
	}
	a.cancel()
	select {
	case <-a.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Registry follows the heartbeats of every node.
type Registry struct {
	keys     map[string]nkeys.KeyPair // public keys of the nodes that may announce
	self     func() NodeStatus        // this node, always counted
	rejected atomic.Uint64
	log      *slog.Logger

	mu      sync.Mutex
	nodes   map[string]nodeEntry
	changed chan struct{} // closed and replaced on every heartbeat
	sub     *natsgo.Subscription
	now     func() time.Time
	// born is when the registry began listening: until a heartbeat
	// interval later it may not have heard every live node (see
	// WaitApplied).
	born time.Time
}

// nodeEntry is what the registry knows of a node: the newest heartbeat it
// verified, and the newest one it has not yet.
//
// Checking a signature costs ~50 µs; every admin node hears every node's
// heartbeat after every ledger write, and only the writer needs them. So
// a heartbeat is kept unverified until it matters — until WaitApplied or
// Live would believe it — and is verified then, once. Nothing is ever
// believed unverified.
type nodeEntry struct {
	status   NodeStatus // last verified
	seen     time.Time  // when the verified one arrived
	verified bool
	pending  *heartbeat // newer, not yet verified
}

type heartbeat struct {
	status    NodeStatus
	data, sig []byte
	seen      time.Time
}

// NewRegistry subscribes to heartbeats on nc and believes those signed by
// the admin and verifier members of fleet. self, if set, is this node's own
// status: it is always part of the fleet a wait counts, heartbeat or not.
func NewRegistry(nc *natsgo.Conn, fleet *Fleet, self func() NodeStatus, log *slog.Logger) (*Registry, error) {
	if log == nil {
		log = slog.Default()
	}
	r := &Registry{nodes: make(map[string]nodeEntry), changed: make(chan struct{}), now: time.Now,
		keys: map[string]nkeys.KeyPair{}, log: log, self: self, born: time.Now()}
	for _, m := range fleet.Members {
		if !m.Has(RoleAdmin) && !m.Has(RoleVerifier) {
			continue
		}
		kp, err := nkeys.FromPublicKey(m.NKey)
		if err != nil {
			return nil, keyledger.Errorf(keyledger.Invalid, "fleet: member %q: bad nkey", m.Name)
		}
		r.keys[m.Name] = kp
	}
	sub, err := nc.Subscribe(NodesSubjectPrefix+"*", r.handle)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot follow node heartbeats")
	}
	// Heartbeats arrive at ~1/s per node and after every ledger write: a
	// generous pending limit keeps a burst from being dropped.
	sub.SetPendingLimits(1<<16, 64<<20)
	r.sub = sub
	// Subscribed first, then asked: no node's answer can be missed.
	if err := nc.Publish(NodesPingSubject, nil); err != nil {
		sub.Unsubscribe()
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot ask nodes to announce themselves")
	}
	return r, nil
}

func (r *Registry) handle(m *natsgo.Msg) {
	hb, err := r.parse(m)
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.signalLocked()
	if err != nil {
		r.rejectLocked(m.Subject, err)
		return
	}
	e := r.nodes[hb.status.Name]
	if e.verified && hb.status.At.Before(e.status.At) {
		// A replayed heartbeat says less than one already heard.
		r.rejectLocked(m.Subject, errors.New("older than one already heard"))
		return
	}
	hb.seen = r.now()
	e.pending = hb
	r.nodes[hb.status.Name] = e
}

func (r *Registry) rejectLocked(subject string, err error) {
	// Once per node name and reason would be kinder to logs, but a
	// forged heartbeat is rare and worth seeing each time.
	if r.rejected.Add(1) <= 100 {
		r.log.Error("heartbeat rejected", "subject", clip(subject, 100), "reason", err.Error())
	}
}

// settleLocked verifies a node's pending heartbeat, if any: believed if
// the node signed it, dropped and counted if not.
func (r *Registry) settleLocked(name string) {
	e, ok := r.nodes[name]
	if !ok || e.pending == nil {
		return
	}
	hb := e.pending
	e.pending = nil
	if r.keys[name].Verify(hb.data, hb.sig) != nil {
		r.rejectLocked(NodesSubjectPrefix+name, errors.New("bad signature"))
	} else if !e.verified || !hb.status.At.Before(e.status.At) {
		e.status, e.seen, e.verified = hb.status, hb.seen, true
	}
	r.nodes[name] = e
}

// signalLocked wakes everyone waiting for news of the fleet.
func (r *Registry) signalLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// parse returns the heartbeat in m, not yet verified, if it could be
// node N's: on N's subject, naming N, with a signature of the right size.
func (r *Registry) parse(m *natsgo.Msg) (*heartbeat, error) {
	name := strings.TrimPrefix(m.Subject, NodesSubjectPrefix)
	if _, ok := r.keys[name]; !ok {
		return nil, errors.New("not a node of the fleet")
	}
	sig, err := base64.StdEncoding.DecodeString(m.Header.Get(HeaderSignature))
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, errors.New("unsigned")
	}
	var st NodeStatus
	if err := json.Unmarshal(m.Data, &st); err != nil {
		return nil, errors.New("malformed")
	}
	if st.Name != name {
		return nil, errors.New("names another node")
	}
	return &heartbeat{status: st, data: m.Data, sig: sig}, nil
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// Rejected counts heartbeats refused: unsigned, forged, from outside the
// fleet, or replayed.
func (r *Registry) Rejected() uint64 { return r.rejected.Load() }

// Close unsubscribes.
func (r *Registry) Close() error { return r.sub.Unsubscribe() }

// Live returns the nodes heard from within NodeTimeout, by name.
func (r *Registry) Live() []NodeStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.knownLocked(false)
}

// knownLocked returns the nodes heard from within NodeTimeout (live), or
// with all every node still remembered: heard within NodeMemory or
// NodeTimeout plus the time its lease certainly takes to run out,
// whichever is longer — those a wait counts. Verified heartbeats only;
// nodes silent for longer are forgotten.
func (r *Registry) knownLocked(all bool) []NodeStatus {
	now := r.now()
	out := make([]NodeStatus, 0, len(r.nodes))
	for name, e := range r.nodes {
		if e.pending != nil && (!e.verified || now.Sub(e.seen) > NodeTimeout/2) {
			// Only a heartbeat that would change the answer is worth
			// its check: the last verified one is missing or ageing.
			r.settleLocked(name)
			e = r.nodes[name]
		}
		keep := max(NodeTimeout+fenceAfter(e.status), NodeMemory)
		if !e.verified || now.Sub(e.seen) > keep {
			if e.pending == nil || now.Sub(e.pending.seen) > keep {
				delete(r.nodes, name)
			}
			continue
		}
		if !all && now.Sub(e.seen) > NodeTimeout {
			continue
		}
		out = append(out, e.status)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ProofTimeout is how long a wait may need to prove every node that is
// not applying an event refusing: the longest fence of the nodes known
// (and of this one) after a heartbeat interval of silence, plus half a
// second. A wait bounded by less may end with nodes unproven.
func (r *Registry) ProofTimeout() time.Duration {
	var longest time.Duration
	r.mu.Lock()
	for _, st := range r.knownLocked(true) {
		longest = max(longest, fenceAfter(st))
	}
	r.mu.Unlock()
	if r.self != nil {
		longest = max(longest, fenceAfter(r.self()))
	}
	return HeartbeatInterval + longest + 500*time.Millisecond
}

// Applied says how many nodes of the fleet applied an event, and proves
// what the others do: each of them is Refusing (its lease has certainly
// run out, so it refuses every key) or, when the wait ended first,
// Unproven.
type Applied struct {
	Seq     uint64 `json:"seq"`
	Applied int    `json:"applied"`
	Total   int    `json:"total"`
	// Pending had not applied the event: Refusing and Unproven together.
	Pending  []string `json:"pending,omitempty"`
	Refusing []string `json:"refusing,omitempty"`
	Unproven []string `json:"unproven,omitempty"`
}

// String renders "k/n".
func (a Applied) String() string { return strconv.Itoa(a.Applied) + "/" + strconv.Itoa(a.Total) }

// Proven reports whether every node either applied the event or is
// certainly refusing every key.
func (a Applied) Proven() bool { return len(a.Unproven) == 0 }

// WaitApplied waits until every node that may be serving — this node, and
// every node heard from recently enough that its lease may still run — has
// applied seq or has certainly lost its lease, or until ctx ends. Call it
// after seq was acknowledged: a node's lease cannot outlast an event
// appended before the call by more than fenceAfter.
func (r *Registry) WaitApplied(ctx context.Context, seq uint64) Applied {
	// A registry younger than a heartbeat interval (an admin node that
	// just started) has not necessarily heard every live node: each
	// announces itself every interval, and answers the registry's ping
	// only if it got it. Counting the fleet before then answered "1/1"
	// for a write another live node had not applied (found by the fault
	// suite's kill_consumer_host, against the restarted node).
	if d := time.Until(r.born.Add(HeartbeatInterval + heardMargin)); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	start := r.now()
	type waiter struct {
		fence time.Time // refusing for certain from then on
		self  bool
	}
	waiting := map[string]waiter{}
	r.mu.Lock()
	for _, st := range r.knownLocked(true) {
		// A silent node renewed its lease at the latest a heartbeat
		// interval after it was last heard (it announces itself every
		// interval while it runs).
		from := r.nodes[st.Name].seen.Add(HeartbeatInterval)
		if from.Before(start) {
			from = start
		}
		waiting[st.Name] = waiter{fence: from.Add(fenceAfter(st))}
	}
	r.mu.Unlock()
	if r.self != nil {
		st := r.self()
		waiting[st.Name] = waiter{fence: start.Add(fenceAfter(st)), self: true}
	}
	total := len(waiting)
	var refusing []string
	applied := 0
	for {
		now := r.now()
		var next time.Time
		r.mu.Lock()
		for name, w := range waiting {
			var st NodeStatus
			if w.self {
				st = r.self()
			} else {
				if e := r.nodes[name]; e.pending != nil && e.pending.status.LastSeq >= seq {
					r.settleLocked(name)
				}
				st = r.nodes[name].status
			}
			switch {
			case st.LastSeq >= seq:
				applied++
				delete(waiting, name)
			case st.LeaseMS > 0 && !now.Before(w.fence):
				refusing = append(refusing, name)
				delete(waiting, name)
			case st.LeaseMS > 0 && (next.IsZero() || w.fence.Before(next)):
				next = w.fence
			}
		}
		ch := r.changed
		r.mu.Unlock()
		if len(waiting) == 0 {
			return r.applied(seq, applied, total, refusing, nil)
		}
		var t *time.Timer
		var fenced <-chan time.Time
		if !next.IsZero() {
			t = time.NewTimer(next.Sub(now))
			fenced = t.C
		}
		select {
		case <-ch:
		case <-fenced:
		case <-ctx.Done():
			unproven := make([]string, 0, len(waiting))
			for name := range waiting {
				unproven = append(unproven, name)
			}
			return r.applied(seq, applied, total, refusing, unproven)
		}
		if t != nil {
			t.Stop()
		}
	}
}

func (r *Registry) applied(seq uint64, applied, total int, refusing, unproven []string) Applied {
	sort.Strings(refusing)
	sort.Strings(unproven)
	pending := append(append([]string(nil), refusing...), unproven...)
	sort.Strings(pending)
	return Applied{Seq: seq, Applied: applied, Total: total, Pending: pending, Refusing: refusing, Unproven: unproven}
}
