package nats_test

import (
	"reflect"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/events/eventstest"
	"github.com/keyledger/keyledger/nats"
	"github.com/nats-io/nats.go/jetstream"
)

func TestSubjects(t *testing.T) {
	tests := []struct{ got, want string }{
		{nats.KeySubject("key_1"), "keyledger.keys.key_1"},
		{nats.UsageSubject(keyledger.EnvLive, "key_1"), "keyledger.usage.live.key_1"},
		{nats.UsageSubject(keyledger.EnvTest, "key_1"), "keyledger.usage.test.key_1"},
		{nats.UsageSubject(keyledger.EnvLive, ""), "keyledger.usage.live.unknown"},
		{nats.UsageSubject(keyledger.EnvTest, ""), "keyledger.usage.test.unknown"},
		{nats.UsageBatchSubject(keyledger.EnvLive, "node-a"), "keyledger.usage.live.batch.node-a"},
		{nats.UsageBatchSubject(keyledger.EnvTest, "a.b *>\x7f"), "keyledger.usage.test.batch.a_b____"},
		{nats.UsageBatchSubject(keyledger.EnvLive, ""), "keyledger.usage.live.batch.unnamed"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("subject %q, want %q", tt.got, tt.want)
		}
	}
	t.Run("IsKeySubject", func(t *testing.T) {
		for _, tt := range []struct {
			subject, keyID string
			want           bool
		}{
			{"keyledger.keys.key_1", "key_1", true},
			{"keyledger.keys.key_1", "key_2", false},
			{"keyledger.keys.key_12", "key_1", false},
			{"keyledger.keys.", "", true},
			{"keyledger.usage.live.key_1", "key_1", false},
			{"xkeyledger.keys.key_1", "key_1", false},
			{"key_1", "key_1", false},
		} {
			if got := nats.IsKeySubject(tt.subject, tt.keyID); got != tt.want || got != (nats.KeySubject(tt.keyID) == tt.subject) {
				t.Errorf("IsKeySubject(%q, %q) = %v, want %v", tt.subject, tt.keyID, got, tt.want)
			}
		}
	})
}

func TestKeysStreamConfig(t *testing.T) {
	tests := []struct {
		in       nats.StreamConfig
		dup      time.Duration
		replicas int
	}{
		{nats.StreamConfig{}, 2 * time.Minute, 1},
		{nats.StreamConfig{Duplicates: time.Second}, 2 * time.Minute, 1},
		{nats.StreamConfig{Duplicates: 2*time.Minute - 1}, 2 * time.Minute, 1},
		{nats.StreamConfig{Duplicates: 10 * time.Minute, Replicas: 3}, 10 * time.Minute, 3},
		{nats.StreamConfig{Replicas: -1}, 2 * time.Minute, 1},
	}
	for _, tt := range tests {
		c := nats.KeysStreamConfig(tt.in)
		if c.Name != "KEYS" || nats.KeysStream != "KEYS" {
			t.Errorf("Name %q", c.Name)
		}
		if !c.DenyDelete || !c.DenyPurge {
			t.Errorf("%+v: DenyDelete %v DenyPurge %v; the ledger must refuse both", tt.in, c.DenyDelete, c.DenyPurge)
		}
		if c.Duplicates != tt.dup || c.Replicas != tt.replicas {
			t.Errorf("%+v: Duplicates %v Replicas %d, want %v %d", tt.in, c.Duplicates, c.Replicas, tt.dup, tt.replicas)
		}
		if c.MaxMsgs > 0 || c.MaxBytes > 0 || c.MaxAge != 0 || c.MaxMsgsPerSubject > 0 || c.MaxMsgSize > 0 {
			t.Errorf("KEYS has limits: msgs %d bytes %d age %v per-subject %d size %d", c.MaxMsgs, c.MaxBytes, c.MaxAge, c.MaxMsgsPerSubject, c.MaxMsgSize)
		}
		if c.Storage != jetstream.FileStorage || c.Retention != jetstream.LimitsPolicy {
			t.Errorf("storage %v retention %v", c.Storage, c.Retention)
		}
		if len(c.Subjects) != 1 || c.Subjects[0] != "keyledger.keys.*" {
			t.Errorf("subjects %q", c.Subjects)
		}
	}
}

func TestUsageStreamConfig(t *testing.T) {
	c := nats.UsageStreamConfig(nats.StreamConfig{})
	if c.Name != "USAGE" || c.MaxAge != 7*24*time.Hour || c.MaxBytes != 10<<30 || c.Discard != jetstream.DiscardOld {
		t.Errorf("defaults: %+v", c)
	}
	if len(c.Subjects) != 1 || c.Subjects[0] != "keyledger.usage.>" {
		t.Errorf("subjects %q", c.Subjects)
	}
	c = nats.UsageStreamConfig(nats.StreamConfig{UsageMaxAge: time.Hour, UsageMaxBytes: 1 << 20, Replicas: 3})
	if c.MaxAge != time.Hour || c.MaxBytes != 1<<20 || c.Replicas != 3 {
		t.Errorf("overrides: %+v", c)
	}
	if c.DenyDelete || c.DenyPurge {
		t.Errorf("USAGE is a buffer; analytics may purge it")
	}
}

// FuzzDecode: Decode never panics, refuses with invalid_request, and what
// it accepts re-encodes into an event that decodes equal.
func FuzzDecode(f *testing.F) {
	g := eventstest.NewIDs(5)
	exp := eventstest.FixedAt.Add(24 * time.Hour)
	c := eventstest.Created(f, g, "key_1")
	c.ExpiresAt = &exp
	c.RateLimit = &keyledger.RateLimit{PerSecond: 2.5, Burst: 10}
	hostile := eventstest.Used(f, g, "")
	hostile.UserAgent = "\"><script>\u2028\x00\xff"
	for _, ev := range []events.Event{eventstest.Created(f, g, "key_2"), c, eventstest.Revoked(f, g, "key_1", "leaked \"x\""), eventstest.Used(f, g, "key_1"), hostile} {
		b, err := events.Encode(ev)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"type":"KeyUsed","v":1}`))
	f.Add([]byte(`{"type":"KeyRevoked","v":1,"event_id":"00000000-0000-0000-0000-000000000000","at":"2026-01-01T00:00:00+05:00","key_id":"k"}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"v":1e400}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := events.Decode(data)
		if err != nil {
			if ev != nil || keyledger.ErrorCode(err) != keyledger.Invalid {
				t.Fatalf("Decode(%q) = %v, %v; want nil and invalid_request", data, ev, err)
			}
			return
		}
		b, err := events.Encode(ev)
		if err != nil {
			t.Fatalf("Decode(%q) accepted an event that does not encode: %v", data, err)
		}
		ev2, err := events.Decode(b)
		if err != nil {
			t.Fatalf("re-encoded event %q does not decode: %v (input %q)", b, err, data)
		}
		if u, ok := ev.(*events.KeyUsed); ok {
			// KeyUsed has no actor (see Header); AppendJSON does not write one.
			u.Actor = ""
		}
		if !reflect.DeepEqual(eventstest.Normalized(t, ev2), eventstest.Normalized(t, ev)) {
			t.Fatalf("round trip changed the event:\n in  %q\n out %q\n %#v\n %#v", data, b, eventstest.Normalized(t, ev), eventstest.Normalized(t, ev2))
		}
	})
}
