package nats_test

import (
	"context"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/nats/natstest"
)

func TestRegistry(t *testing.T) {
	env := natstest.MustStart(t)
	var seq uint64 = 5
	a := nats.NewAnnouncer(env.Conn, func() nats.NodeStatus {
		return nats.NodeStatus{Name: "n1", Role: "verifier", Environment: keyledger.EnvLive, LastSeq: seq, CaughtUp: true, At: time.Now()}
	}, nil)
	a.Start(context.Background())
	defer a.Close(context.Background())
	time.Sleep(50 * time.Millisecond) // n1's first heartbeat is gone before the registry exists

	start := time.Now()
	r, err := nats.NewRegistry(env.Conn)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for len(r.Live()) == 0 {
		if time.Since(start) > nats.HeartbeatInterval/2 {
			t.Fatal("a new registry did not hear of a running node before its next heartbeat: the ping went unanswered")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := r.Live()[0]; n.Name != "n1" || n.LastSeq != 5 || !n.CaughtUp {
		t.Fatalf("live %+v", n)
	}

	// WaitApplied: satisfied as soon as the node reports the sequence.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if got := r.WaitApplied(ctx, 6); got.Applied != 0 || got.Total != 1 || len(got.Pending) != 1 || got.String() != "0/1" {
		t.Fatalf("before the node applied 6: %+v", got)
	}
	seq = 6 // read by the announcer's goroutine only after Notify
	a.Notify()
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	if got := r.WaitApplied(ctx2, 6); got.String() != "1/1" || len(got.Pending) != 0 {
		t.Fatalf("after: %+v", got)
	}
}
