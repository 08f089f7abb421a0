package nats

// An internal test: it lengthens the announcer's heartbeat period and stops
// the registry's clock, so what it asserts does not depend on timing. It
// cannot use natstest (which imports this package).

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	natsgo "github.com/nats-io/nats.go"
)

// startFleetServer starts an embedded server and returns a connection to
// it; both end with the test.
func startFleetServer(t *testing.T) *natsgo.Conn {
	t.Helper()
	srv, err := StartServer(ServerConfig{Name: "fleet-test", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatalf("start embedded NATS: %v", err)
	}
	nc, err := srv.Connect("fleet-test")
	if err != nil {
		srv.Stop()
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() {
		nc.Close()
		srv.Stop()
	})
	return nc
}

// waitLive waits, up to timeout, until r knows a live node, and returns
// the live nodes; it fails the test with msg otherwise.
func waitLive(t *testing.T, r *Registry, timeout time.Duration, msg string) []NodeStatus {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		live, changed := r.liveLocked(), r.changed
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
	nc := startFleetServer(t)
	var seq atomic.Uint64 // read by the announcer's goroutine
	seq.Store(5)
	a := NewAnnouncer(nc, func() NodeStatus {
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

	r, err := NewRegistry(nc)
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
