// Package verifiertest is a verification table fed by hand (no stream)
// with a deterministic clock and randomness, for tests of the verifier and
// of what serves it.
package verifiertest

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/events/eventstest"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/projector"
	"github.com/keyledger/keyledger/verifier"
)

// Fixture is a projector fed by hand (no stream) and a deterministic clock.
type Fixture struct {
	P      *projector.Projector
	signer *eventstest.Signer
	seq    uint64
	last   map[string]uint64 // each key's last event
	Rand   *rand.ChaCha8
	Now    time.Time
	mu     sync.Mutex
	Used   []events.KeyUsed
}

// New returns a fixture whose clock stands at 2026-11-26 12:00 UTC.
func New(tb testing.TB) *Fixture {
	tb.Helper()
	signer := eventstest.MustSigner(tb, "admin-test", 1)
	return &Fixture{
		P:      projector.New(nil, projector.Options{Records: true, Keyring: eventstest.Keyring(tb, signer)}),
		signer: signer,
		Rand:   rand.NewChaCha8([32]byte{1}),
		Now:    time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC),
	}
}

// Clock is the fixture's clock, for verifier.Config.Now.
func (f *Fixture) Clock() time.Time { return f.Now }

// Record implements verifier.Recorder.
func (f *Fixture) Record(ev events.KeyUsed) {
	f.mu.Lock()
	f.Used = append(f.Used, ev)
	f.mu.Unlock()
}

func (f *Fixture) apply(tb testing.TB, ev events.Event) {
	tb.Helper()
	f.seq++
	f.P.ApplyMsg(f.seq, nats.KeySubject(ev.Head().KeyID), f.signer.MustSeal(tb, ev))
	if f.last == nil {
		f.last = map[string]uint64{}
	}
	f.last[ev.Head().KeyID] = f.seq
}

// Disable disables key id; Enable enables it again.
func (f *Fixture) Disable(tb testing.TB, id string) {
	tb.Helper()
	f.apply(tb, &events.KeyDisabled{Header: events.NewHeader(events.TypeKeyDisabled, id, "test", f.Now), Prev: events.Prev{Prev: f.last[id]}})
}

// Enable enables key id.
func (f *Fixture) Enable(tb testing.TB, id string) {
	tb.Helper()
	f.apply(tb, &events.KeyEnabled{Header: events.NewHeader(events.TypeKeyEnabled, id, "test", f.Now), Prev: events.Prev{Prev: f.last[id]}})
}

// MustCreate issues a key into the table and returns its secret and id.
func (f *Fixture) MustCreate(tb testing.TB, env keyledger.Environment, perms []string, mod func(*events.KeyCreated)) (secret, id string) {
	tb.Helper()
	secret, err := keyledger.DefaultFormat.New(env, f.Rand)
	if err != nil {
		tb.Fatal(err)
	}
	if perms == nil {
		perms = []string{"all"}
	}
	id = events.NewKeyID()
	ev := &events.KeyCreated{
		Header:      events.NewHeader(events.TypeKeyCreated, id, "test", f.Now),
		Name:        "k",
		Environment: env,
		Permissions: perms,
		Owner:       "acme",
		Hash:        keyledger.HashSecret(secret).String(),
		Hint:        keyledger.Hint(secret),
	}
	if mod != nil {
		mod(ev)
	}
	f.apply(tb, ev)
	return secret, id
}

// Update applies ev, a KeyUpdated of key id (its header and Prev are
// filled in).
func (f *Fixture) Update(tb testing.TB, id string, ev *events.KeyUpdated) {
	tb.Helper()
	ev.Header = events.NewHeader(events.TypeKeyUpdated, id, "test", f.Now)
	ev.Prev = events.Prev{Prev: f.last[id]}
	f.apply(tb, ev)
}

// SetPlan creates or replaces a plan.
func (f *Fixture) SetPlan(tb testing.TB, p keyledger.Plan) {
	tb.Helper()
	id := keyledger.PlanID(p.Name)
	f.apply(tb, &events.PlanSet{Header: events.NewHeader(events.TypePlanSet, id, "test", f.Now), Prev: events.Prev{Prev: f.last[id]}, Plan: p})
}

// SetOwner gives owner the plan named plan.
func (f *Fixture) SetOwner(tb testing.TB, owner, plan string) {
	tb.Helper()
	id := keyledger.OwnerID(owner)
	f.apply(tb, &events.OwnerSet{Header: events.NewHeader(events.TypeOwnerSet, id, "test", f.Now), Prev: events.Prev{Prev: f.last[id]}, Owner: owner, Plan: plan})
}

// Revoke revokes key id.
func (f *Fixture) Revoke(tb testing.TB, id string) {
	tb.Helper()
	f.apply(tb, &events.KeyRevoked{Header: events.NewHeader(events.TypeKeyRevoked, id, "test", f.Now), Reason: "test"})
}

// Verifier returns a verifier of env over the fixture's table, recording
// into the fixture, with a test rate limit of 2/s (burst 3).
func (f *Fixture) Verifier(env keyledger.Environment, ready func() bool) *verifier.Verifier {
	return verifier.New(f.P.Table(), verifier.Config{
		Environment: env, Now: f.Clock, Node: "n1", Usage: f, Ready: ready,
		TestRateLimit: keyledger.RateLimit{PerSecond: 2, Burst: 3},
	})
}
