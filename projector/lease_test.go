package projector

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyledger/keyledger/events/eventstest"
	"github.com/keyledger/keyledger/nats"
)

// TestLease is the freshness lease's contract, on a fake monotonic clock:
// it is granted only once the node has applied everything the stream held
// when it asked, it is read on every call (a node whose clock jumped past
// it, as a paused process's does, refuses at once, before any timer of its
// own fires), and it never outlives MaxStaleness from the question.
func TestLease(t *testing.T) {
	var clock atomic.Int64
	signer := eventstest.MustSigner(t, "admin-test", 1)
	p := New(nil, Options{Keyring: eventstest.Keyring(t, signer), MaxStaleness: time.Second, Mono: clock.Load})
	ids := eventstest.NewIDs(1)
	apply := func(seq uint64, id string) {
		ev := eventstest.Created(t, ids, id)
		p.ApplyMsg(seq, nats.KeySubject(id), signer.MustSeal(t, ev))
	}

	if p.Fresh() {
		t.Fatal("fresh before any confirmation")
	}
	clock.Store(int64(100 * time.Millisecond))
	// The stream held 2 events when the node asked at t=100ms.
	p.confirm(&confirmation{sent: clock.Load(), target: 2})
	if p.Fresh() {
		t.Fatal("fresh before applying what the stream held")
	}
	apply(1, "key_a")
	if p.Fresh() {
		t.Fatal("fresh with one of two events applied")
	}
	apply(2, "key_b")
	if !p.Fresh() {
		t.Fatal("not fresh once everything the confirmation vouched for is applied")
	}
	// The lease runs from the question, not from the answer or the apply.
	clock.Store(int64(100*time.Millisecond+time.Second) - 1)
	if !p.Fresh() {
		t.Fatal("lease ended early")
	}
	clock.Store(int64(100*time.Millisecond + time.Second))
	if p.Fresh() {
		t.Fatal("lease outlived MaxStaleness from the question: a paused node would serve")
	}
	// An older confirmation never shortens a newer lease, nor revives an
	// expired one.
	p.confirm(&confirmation{sent: 0, target: 1})
	if p.Fresh() {
		t.Fatal("an old confirmation revived the lease")
	}
	p.confirm(&confirmation{sent: clock.Load(), target: 2})
	if !p.Fresh() {
		t.Fatal("a current confirmation of applied events did not renew the lease")
	}
	p.breakDown("test")
	if p.Fresh() {
		t.Fatal("a broken projector keeps its lease")
	}
}
