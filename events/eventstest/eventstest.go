// Package eventstest holds helpers for tests of events: deterministic
// sample events and a comparison that ignores time zones.
package eventstest

import (
	"io"
	mrand "math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
)

// Normalized returns a deep copy of ev with times in UTC without monotonic
// readings, so that decoded and original events compare with DeepEqual.
func Normalized(tb testing.TB, ev events.Event) events.Event {
	tb.Helper()
	utc := func(t *time.Time) *time.Time {
		if t == nil {
			return nil
		}
		u := t.UTC()
		return &u
	}
	switch e := ev.(type) {
	case *events.KeyCreated:
		c := *e
		c.At = c.At.UTC()
		c.ExpiresAt = utc(c.ExpiresAt)
		c.Permissions = append([]string(nil), c.Permissions...)
		if c.RateLimit != nil {
			rl := *c.RateLimit
			c.RateLimit = &rl
		}
		return &c
	case *events.KeyRevoked:
		c := *e
		c.At = c.At.UTC()
		return &c
	case *events.KeyUsed:
		c := *e
		c.At = c.At.UTC()
		return &c
	}
	tb.Fatalf("unknown event %T", ev)
	return nil
}

// AssertSame fails tb unless got and want are the same event, times
// compared as instants.
func AssertSame(tb testing.TB, got, want events.Event) {
	tb.Helper()
	g, w := Normalized(tb, got), Normalized(tb, want)
	if !reflect.DeepEqual(g, w) {
		tb.Fatalf("event mismatch:\n got  %#v\n want %#v", g, w)
	}
}

// FixedAt is the clock of every test event.
var FixedAt = time.Date(2026, 11, 26, 12, 0, 0, 123456789, time.UTC)

// IDs draws deterministic UUIDs (v4 layout) for event ids.
type IDs struct{ r io.Reader }

// NewIDs returns a deterministic source of event ids seeded by seed.
func NewIDs(seed byte) *IDs { return &IDs{mrand.NewChaCha8([32]byte{seed, 'e', 'v'})} }

// MustID returns the next deterministic UUID.
func (g *IDs) MustID(tb testing.TB) string {
	tb.Helper()
	id, err := uuid.NewRandomFromReader(g.r)
	if err != nil {
		tb.Fatalf("uuid: %v", err)
	}
	return id.String()
}

// Header is the header of a test event.
func Header(tb testing.TB, g *IDs, t events.Type, keyID, actor string) events.Header {
	tb.Helper()
	return events.Header{Type: t, V: events.Version, EventID: g.MustID(tb), At: FixedAt, Actor: actor, KeyID: keyID}
}

// Created is a KeyCreated of keyID.
func Created(tb testing.TB, g *IDs, keyID string) *events.KeyCreated {
	tb.Helper()
	return &events.KeyCreated{
		Header:      Header(tb, g, events.TypeKeyCreated, keyID, "admin"),
		Name:        "ci deploy",
		Environment: keyledger.EnvLive,
		Permissions: []string{"storage:read", "workflows:execute"},
		Owner:       "acme",
		Hash:        keyledger.HashSecret("fsk_live_" + keyID).String(),
		Hint:        "mKUD",
	}
}

// Revoked is a KeyRevoked of keyID.
func Revoked(tb testing.TB, g *IDs, keyID, reason string) *events.KeyRevoked {
	tb.Helper()
	return &events.KeyRevoked{Header: Header(tb, g, events.TypeKeyRevoked, keyID, "admin"), Reason: reason}
}

// Used is a KeyUsed of keyID.
func Used(tb testing.TB, g *IDs, keyID string) *events.KeyUsed {
	tb.Helper()
	h := Header(tb, g, events.TypeKeyUsed, keyID, "")
	return &events.KeyUsed{
		Header:      h,
		Environment: keyledger.EnvTest,
		Outcome:     keyledger.OutcomeForbidden,
		OutcomeName: keyledger.OutcomeForbidden.String(),
		Permission:  "storage:write",
		IP:          "2001:db8::1",
		UserAgent:   "curl/8.5.0",
		Method:      "POST",
		Path:        "/v1/verify",
		Node:        "verifier-1",
		LatencyUS:   87,
	}
}
