package nats

// An internal test: it lengthens the announcer's heartbeat period and stops
// the registry's clock, so what it asserts does not depend on timing. It
// cannot use natstest (which imports this package).

import (
	"context"
	"encoding/base64"
	"encoding/json"
	mrand "math/rand/v2"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"errors"

	keyledger "github.com/keyledger/keyledger"
	natsgo "github.com/nats-io/nats.go"
)

// fleetServer is an embedded server with authentication on and the
// credentials of its fleet: op (operator), reg (admin), n1 and n2
// (verifiers).
type fleetServer struct {
	srv   *Server
	fleet *Fleet
	creds string
}

// startFleetServer starts an embedded server; it ends with the test.
func startFleetServer(t *testing.T) *fleetServer {
	t.Helper()
	creds := t.TempDir()
	fleet, err := GenerateFleet(creds, []Member{
		{Name: "op", Roles: []Role{RoleOperator}}, {Name: "reg", Roles: []Role{RoleAdmin}},
		{Name: "n1", Roles: []Role{RoleVerifier}}, {Name: "n2", Roles: []Role{RoleVerifier}},
	}, false, mrand.NewChaCha8([32]byte{1}))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := StartServer(ServerConfig{Name: "fleet-test", StoreDir: t.TempDir(), Fleet: fleet})
	if err != nil {
		t.Fatalf("start embedded NATS: %v", err)
	}
	t.Cleanup(srv.Stop)
	return &fleetServer{srv: srv, fleet: fleet, creds: creds}
}

func (f *fleetServer) identity(t *testing.T, name string) *Identity {
	t.Helper()
	id, err := LoadIdentity(filepath.Join(f.creds, name+".nk"), name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// connect connects as a member; the connection ends with the test.
func (f *fleetServer) connect(t *testing.T, name string) *natsgo.Conn {
	t.Helper()
	nc, err := f.srv.Connect(f.identity(t, name))
	if err != nil {
		t.Fatalf("connect as %s: %v", name, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// waitLive waits, up to timeout, until r knows a live node, and returns
// the live nodes; it fails the test with msg otherwise.
func waitLive(t *testing.T, r *Registry, timeout time.Duration, msg string) []NodeStatus {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		live, changed := r.knownLocked(false), r.changed
		r.mu.Unlock()
		if len(live) > 0 {
			return live
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatal(msg)
		}
	}
}

func TestRegistry(t *testing.T) {
	fs := startFleetServer(t)
	nc := fs.connect(t, "reg")
	var seq atomic.Uint64 // read by the announcer's goroutine
	seq.Store(5)
	a := NewAnnouncer(fs.connect(t, "n1"), fs.identity(t, "n1"), func() NodeStatus {
		return NodeStatus{Name: "n1", Role: "verifier", Environment: keyledger.EnvLive, LastSeq: seq.Load(), CaughtUp: true, At: time.Now()}
	}, nil)
	// No periodic heartbeat during the test: after the one at Start, n1
	// announces itself only when pinged or notified.
	a.interval = time.Hour

	// n1's first heartbeat is gone before the registry exists: the test
	// receives it, on the connection the registry will subscribe on, first.
	first := make(chan *natsgo.Msg, 1)
	sub, err := nc.ChanSubscribe(NodesSubjectPrefix+"n1", first)
	if err != nil {
		t.Fatal(err)
	}
	// The server has the subscription once a flush returns: n1's
	// heartbeat, on another connection, cannot overtake it then.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	a.Start(context.Background())
	defer a.Close(context.Background())
	select {
	case <-first:
	case <-time.After(10 * time.Second):
		t.Fatal("no heartbeat from n1 at Start")
	}
	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}

	r, err := NewRegistry(nc, fs.fleet, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// The registry's clock stands still: n1, which announces itself only
	// on demand here, must not time out however slow the machine is.
	frozen := time.Now()
	r.mu.Lock()
	r.now = func() time.Time { return frozen }
	r.mu.Unlock()

	live := waitLive(t, r, 10*time.Second,
		"a new registry did not hear of a running node before its next heartbeat: the ping went unanswered")
	if n := live[0]; n.Name != "n1" || n.LastSeq != 5 || !n.CaughtUp {
		t.Fatalf("live %+v", n)
	}

	// WaitApplied: satisfied as soon as the node reports the sequence.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if got := r.WaitApplied(ctx, 6); got.Applied != 0 || got.Total != 1 || len(got.Pending) != 1 || got.String() != "0/1" {
		t.Fatalf("before the node applied 6: %+v", got)
	}
	seq.Store(6)
	a.Notify() // the only announcement that can report 6: no heartbeat is due
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if got := r.WaitApplied(ctx2, 6); got.String() != "1/1" || len(got.Pending) != 0 {
		t.Fatalf("after: %+v", got)
	}
}

// TestForgedHeartbeats is the attack on applied_by: heartbeats that claim
// a node applied an event it has not. Before heartbeats were signed and
// subjects bound to their publisher, each of these made WaitApplied count
// n1 as having applied sequence 99.
func TestForgedHeartbeats(t *testing.T) {
	fs := startFleetServer(t)
	op := fs.connect(t, "op") // can publish anything: the bus is not the only guard
	regConn := fs.connect(t, "reg")
	r, err := NewRegistry(regConn, fs.fleet, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// The registry's subscription is in place on the server once its
	// connection has made a round trip: no forgery below can miss it.
	if err := regConn.Flush(); err != nil {
		t.Fatal(err)
	}
	n1 := fs.identity(t, "n1")
	n2 := fs.identity(t, "n2")
	claim := func(name string) []byte {
		b, _ := json.Marshal(NodeStatus{Name: name, Role: "verifier", Environment: keyledger.EnvLive, LastSeq: 99, CaughtUp: true, At: time.Now()})
		return b
	}
	signed := func(id *Identity, b []byte) string {
		sig, err := id.Sign(b)
		if err != nil {
			t.Fatal(err)
		}
		return base64.StdEncoding.EncodeToString(sig)
	}
	body := claim("n1")
	for _, tc := range []struct {
		name, subject, sig string
		body               []byte
	}{
		{"unsigned", "keyledger.nodes.n1", "", body},
		{"signed by another node", "keyledger.nodes.n1", signed(n2, body), body},
		{"garbage signature", "keyledger.nodes.n1", "AAAA", body},
		{"n1's signature on another body", "keyledger.nodes.n1", signed(n1, claim("n1 ")), body},
		{"a node outside the fleet", "keyledger.nodes.ghost", signed(n1, claim("ghost")), claim("ghost")},
		{"n2 speaking for n1 on its own subject", "keyledger.nodes.n2", signed(n2, body), body},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := r.Rejected()
			m := natsgo.NewMsg(tc.subject)
			m.Data = tc.body
			if tc.sig != "" {
				m.Header.Set(HeaderSignature, tc.sig)
			}
			if err := op.PublishMsg(m); err != nil {
				t.Fatal(err)
			}
			// The registry handles messages in order: once a later,
			// genuine heartbeat is in, the forged one has been judged.
			waitRejected(t, r, before+1)
			for _, n := range r.Live() {
				if n.LastSeq == 99 {
					t.Fatalf("forged heartbeat believed: %+v", n)
				}
			}
		})
	}

	t.Run("the server refuses n2 publishing on n1's subject", func(t *testing.T) {
		watch := make(chan *natsgo.Msg, 4)
		sub, err := op.ChanSubscribe("keyledger.nodes.n1", watch)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		if err := op.Flush(); err != nil {
			t.Fatal(err)
		}
		errs := make(chan error, 1)
		nc2, err := fs.srv.Connect(n2, natsgo.ErrorHandler(func(_ *natsgo.Conn, _ *natsgo.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
		if err != nil {
			t.Fatal(err)
		}
		defer nc2.Close()
		m := natsgo.NewMsg("keyledger.nodes.n1")
		m.Data = body
		m.Header.Set(HeaderSignature, signed(n2, body))
		if err := nc2.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errs:
			if !errors.Is(err, natsgo.ErrPermissionViolation) {
				t.Fatalf("async error %v, want a permissions violation", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the server accepted n2's publish on keyledger.nodes.n1")
		}
		if err := op.Flush(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-watch:
			t.Fatal("n2's message reached keyledger.nodes.n1")
		default:
		}
	})
}

// waitRejected waits until r has refused n heartbeats: those it can tell
// at once, and those it verifies only when asked (Live settles them).
func waitRejected(t *testing.T, r *Registry, n uint64) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		ch := r.changed
		r.mu.Unlock()
		r.Live()
		if r.Rejected() >= n {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("heartbeat not rejected (rejected %d, want %d)", r.Rejected(), n)
		}
	}
}

// TestWaitAppliedCountsItselfAndProvesTheRest: the serving node is always
// counted (never "0/0"), a node that has not applied is reported as
// refusing only once its lease has certainly run out, and as unproven when
// the wait ends first.
func TestWaitAppliedCountsItselfAndProvesTheRest(t *testing.T) {
	fs := startFleetServer(t)
	var seq atomic.Uint64
	seq.Store(7)
	self := func() NodeStatus {
		return NodeStatus{Name: "reg", Role: "admin", Environment: keyledger.EnvLive, LastSeq: seq.Load(), LeaseMS: 100, At: time.Now()}
	}
	r, err := NewRegistry(fs.connect(t, "reg"), fs.fleet, self, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if got := r.WaitApplied(ctx, 5); got.String() != "1/1" || !got.Proven() {
		t.Fatalf("with no heartbeat heard at all: %+v, want 1/1", got)
	}
	start := time.Now()
	got := r.WaitApplied(ctx, 9)
	if got.String() != "0/1" || len(got.Refusing) != 1 || got.Refusing[0] != "reg" || !got.Proven() {
		t.Fatalf("a node that did not apply: %+v, want it refusing", got)
	}
	if min := 100*time.Millisecond + LeaseMargin; time.Since(start) < min {
		t.Fatalf("counted as refusing after %v, before its lease and margin (%v) ran out", time.Since(start), min)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if got := r.WaitApplied(short, 9); len(got.Unproven) != 1 || got.Proven() {
		t.Fatalf("a wait shorter than the lease: %+v, want it unproven", got)
	}
}

// A default wait must be long enough to prove a silent node refusing: with
// 20 s leases, the old fixed 10 s wait always ended with it unproven.
func TestProofTimeoutCoversTheLongestLease(t *testing.T) {
	fs := startFleetServer(t)
	self := func() NodeStatus {
		return NodeStatus{Name: "reg", Role: "admin", Environment: keyledger.EnvLive, LeaseMS: 20000, At: time.Now()}
	}
	r, err := NewRegistry(fs.connect(t, "reg"), fs.fleet, self, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	fence := 20*time.Second + 20*time.Second*LeaseDrift/100 + LeaseMargin
	if got := r.ProofTimeout(); got < HeartbeatInterval+fence {
		t.Fatalf("ProofTimeout = %v with a 20 s lease; a silent node is proven refusing only after %v", got, HeartbeatInterval+fence)
	}
}

// A registry that just started has not heard every live node yet: a write
// it waits for must still count a node whose heartbeat comes a moment
// later (a node that missed the ping announces itself within an
// interval). Before, the wait counted only what had been heard: "1/1"
// while another serving node had not applied the write.
func TestWaitAppliedOfANewRegistryHearsTheFleetFirst(t *testing.T) {
	fs := startFleetServer(t)
	self := func() NodeStatus {
		return NodeStatus{Name: "reg", Role: "admin", Environment: keyledger.EnvLive, LastSeq: 7, LeaseMS: 100, At: time.Now()}
	}
	// n1 serves with an older table and is not subscribed to pings.
	a := NewAnnouncer(fs.connect(t, "n1"), fs.identity(t, "n1"), func() NodeStatus {
		return NodeStatus{Name: "n1", Role: "verifier", Environment: keyledger.EnvLive, LastSeq: 3, LeaseMS: 100, CaughtUp: true, At: time.Now()}
	}, nil)
	r, err := NewRegistry(fs.connect(t, "reg"), fs.fleet, self, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// Its periodic heartbeat, 300 ms into the registry's life (a timer
	// standing for n1's own ticker, not a synchronization).
	late := time.AfterFunc(300*time.Millisecond, a.announce)
	defer late.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := r.WaitApplied(ctx, 5)
	if got.Total != 2 || got.Applied != 1 || len(got.Refusing) != 1 || got.Refusing[0] != "n1" {
		t.Fatalf("a new registry's wait: %+v, want 1/2 with n1 proven refusing", got)
	}
}
