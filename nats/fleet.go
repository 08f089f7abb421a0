package nats

import (
	"context"
	"encoding/json"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"

	keyledger "github.com/keyledger/keyledger"
	natsgo "github.com/nats-io/nats.go"
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

// NodeTimeout is how long a node may stay silent before registries drop it.
const NodeTimeout = 3 * HeartbeatInterval

// NodeStatus is a node's heartbeat: who it is and how far it has applied
// the ledger. It travels as JSON on plain NATS (not a stream): it is only
// worth anything while fresh.
type NodeStatus struct {
	Name        string                `json:"name"`
	Role        string                `json:"role"`
	Environment keyledger.Environment `json:"environment"`
	LastSeq     uint64                `json:"last_seq"`
	CaughtUp    bool                  `json:"caught_up"`
	Fresh       bool                  `json:"fresh"`
	Keys        int                   `json:"keys"`
	At          time.Time             `json:"at"`
}

// Announcer publishes a node's status every HeartbeatInterval and whenever
// Notify is called (coalesced), so writers waiting for the fleet hear of an
// applied event within a round trip.
type Announcer struct {
	nc     *natsgo.Conn
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

// NewAnnouncer returns an announcer of status on nc. Call Start.
func NewAnnouncer(nc *natsgo.Conn, status func() NodeStatus, log *slog.Logger) *Announcer {
	if log == nil {
		log = slog.Default()
	}
	return &Announcer{nc: nc, status: status, kick: make(chan struct{}, 1), log: log, interval: HeartbeatInterval}
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
	if err := a.nc.Publish(NodesSubjectPrefix+st.Name, b); err != nil {
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
	mu      sync.Mutex
	nodes   map[string]nodeEntry
	changed chan struct{} // closed and replaced on every heartbeat
	sub     *natsgo.Subscription
	now     func() time.Time
}

type nodeEntry struct {
	status NodeStatus
	seen   time.Time
}

// NewRegistry subscribes to heartbeats on nc.
func NewRegistry(nc *natsgo.Conn) (*Registry, error) {
	r := &Registry{nodes: make(map[string]nodeEntry), changed: make(chan struct{}), now: time.Now}
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
	var st NodeStatus
	if err := json.Unmarshal(m.Data, &st); err != nil || st.Name == "" {
		return
	}
	r.mu.Lock()
	r.nodes[st.Name] = nodeEntry{status: st, seen: r.now()}
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// Close unsubscribes.
func (r *Registry) Close() error { return r.sub.Unsubscribe() }

// Live returns the nodes heard from within NodeTimeout, by name.
func (r *Registry) Live() []NodeStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.liveLocked()
}

func (r *Registry) liveLocked() []NodeStatus {
	now := r.now()
	out := make([]NodeStatus, 0, len(r.nodes))
	for name, e := range r.nodes {
		if now.Sub(e.seen) > NodeTimeout {
			delete(r.nodes, name)
			continue
		}
		out = append(out, e.status)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Applied says how many of the live nodes applied an event.
type Applied struct {
	Seq     uint64   `json:"seq"`
	Applied int      `json:"applied"`
	Total   int      `json:"total"`
	Pending []string `json:"pending,omitempty"` // nodes that had not applied it
}

// String renders "n/m".
func (a Applied) String() string { return strconv.Itoa(a.Applied) + "/" + strconv.Itoa(a.Total) }

// WaitApplied waits until every node live when it is called reports having
// applied seq, or until ctx ends, and says who had and who had not.
func (r *Registry) WaitApplied(ctx context.Context, seq uint64) Applied {
	r.mu.Lock()
	live := r.liveLocked()
	r.mu.Unlock()
	waiting := make(map[string]bool, len(live))
	for _, n := range live {
		waiting[n.Name] = true
	}
	for {
		r.mu.Lock()
		for name := range waiting {
			if e, ok := r.nodes[name]; ok && e.status.LastSeq >= seq {
				delete(waiting, name)
			}
		}
		ch := r.changed
		r.mu.Unlock()
		if len(waiting) == 0 {
			return Applied{Seq: seq, Applied: len(live), Total: len(live)}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			pending := make([]string, 0, len(waiting))
			for name := range waiting {
				pending = append(pending, name)
			}
			sort.Strings(pending)
			return Applied{Seq: seq, Applied: len(live) - len(pending), Total: len(live), Pending: pending}
		}
	}
}
