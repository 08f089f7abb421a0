package events_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/events/eventstest"
)

// MustEncode encodes ev.
func MustEncode(tb testing.TB, ev events.Event) []byte {
	tb.Helper()
	b, err := events.Encode(ev)
	if err != nil {
		tb.Fatalf("Encode(%T): %v", ev, err)
	}
	return b
}

// MustDecode decodes data.
func MustDecode(tb testing.TB, data []byte) events.Event {
	tb.Helper()
	ev, err := events.Decode(data)
	if err != nil {
		tb.Fatalf("Decode(%s): %v", data, err)
	}
	return ev
}

func TestEncode_RoundTrip(t *testing.T) {
	g := eventstest.NewIDs(1)
	exp := time.Date(2027, 1, 1, 0, 0, 0, 0, time.FixedZone("CET", 3600))

	withExpiry := eventstest.Created(t, g, "key_exp")
	withExpiry.ExpiresAt = &exp
	withLimit := eventstest.Created(t, g, "key_rl")
	withLimit.RateLimit = &keyledger.RateLimit{PerSecond: 0.5, Burst: 3}
	withBoth := eventstest.Created(t, g, "key_both")
	withBoth.ExpiresAt = &exp
	withBoth.RateLimit = &keyledger.RateLimit{PerSecond: 1e9, Burst: 1}
	withBoth.Environment = keyledger.EnvTest
	withBoth.Permissions = []string{"all"}
	nonUTC := eventstest.Created(t, g, "key_tz")
	nonUTC.At = eventstest.FixedAt.In(time.FixedZone("X", -7*3600))
	unknownKey := eventstest.Used(t, g, "")
	unknownKey.Outcome, unknownKey.OutcomeName = keyledger.OutcomeMalformed, "malformed"
	valid := eventstest.Used(t, g, "key_used")
	valid.Outcome, valid.OutcomeName = keyledger.OutcomeValid, "valid"
	valid.LatencyUS = 0

	tests := []struct {
		name string
		ev   events.Event
	}{
		{"KeyCreated plain", eventstest.Created(t, g, "key_plain")},
		{"KeyCreated expires_at", withExpiry},
		{"KeyCreated rate_limit", withLimit},
		{"KeyCreated both", withBoth},
		{"KeyCreated non-UTC at", nonUTC},
		{"KeyRevoked", eventstest.Revoked(t, g, "key_plain", "leaked in CI logs")},
		{"KeyRevoked without reason", eventstest.Revoked(t, g, "key_plain", "")},
		{"KeyUsed", eventstest.Used(t, g, "key_used")},
		{"KeyUsed unknown key", unknownKey},
		{"KeyUsed valid", valid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := MustEncode(t, tt.ev)
			if !json.Valid(b) {
				t.Fatalf("Encode produced invalid JSON: %s", b)
			}
			got := MustDecode(t, b)
			if reflect.TypeOf(got) != reflect.TypeOf(tt.ev) {
				t.Fatalf("decoded %T, want %T", got, tt.ev)
			}
			eventstest.AssertSame(t, got, tt.ev)
			if !got.Head().At.Equal(tt.ev.Head().At) {
				t.Errorf("decoded at %v, want %v", got.Head().At, tt.ev.Head().At)
			}
			// Every field the schema documents is present, null or not.
			var m map[string]any
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"type", "v", "event_id", "at", "key_id"} {
				if _, ok := m[f]; !ok {
					t.Errorf("field %q missing from %s", f, b)
				}
			}
			if m["v"] != float64(1) || m["type"] != string(tt.ev.Head().Type) {
				t.Errorf("type/v of %s", b)
			}
			if c, ok := tt.ev.(*events.KeyCreated); ok {
				for _, f := range []string{"expires_at", "rate_limit", "permissions", "hash", "hint", "environment"} {
					if _, ok := m[f]; !ok {
						t.Errorf("field %q missing from %s", f, b)
					}
				}
				if (c.ExpiresAt == nil) != (m["expires_at"] == nil) || (c.RateLimit == nil) != (m["rate_limit"] == nil) {
					t.Errorf("null-ness of expires_at/rate_limit differs in %s", b)
				}
			}
		})
	}
}

func TestEncode_Invalid(t *testing.T) {
	g := eventstest.NewIDs(2)
	badID := eventstest.Created(t, g, "key.with.dots")
	noEnv := eventstest.Created(t, g, "key_1")
	noEnv.Environment = keyledger.EnvUnknown
	wrongType := eventstest.Revoked(t, g, "key_1", "")
	wrongType.Type = events.TypeKeyCreated
	for name, ev := range map[string]events.Event{"bad key id": badID, "no environment": noEnv, "type mismatch": wrongType} {
		if b, err := events.Encode(ev); !errors.Is(err, keyledger.ErrInvalid) || b != nil {
			t.Errorf("%s: Encode = %s, %v; want ErrInvalid", name, b, err)
		}
	}
}

func TestDecode_Rejects(t *testing.T) {
	g := eventstest.NewIDs(3)
	// base returns a valid event of each type as a JSON object to mutate.
	base := func(tb testing.TB, typ events.Type) map[string]any {
		tb.Helper()
		var ev events.Event
		switch typ {
		case events.TypeKeyCreated:
			ev = eventstest.Created(tb, g, "key_1")
		case events.TypeKeyRevoked:
			ev = eventstest.Revoked(tb, g, "key_1", "r")
		default:
			ev = eventstest.Used(tb, g, "key_1")
		}
		var m map[string]any
		if err := json.Unmarshal(MustEncode(tb, ev), &m); err != nil {
			tb.Fatal(err)
		}
		return m
	}
	for _, ty := range []events.Type{events.TypeKeyCreated, events.TypeKeyRevoked, events.TypeKeyUsed} {
		b, _ := json.Marshal(base(t, ty))
		MustDecode(t, b) // the bases themselves are valid
	}

	type mut struct {
		field string
		value any // deleteField removes it
	}
	tests := []struct {
		name string
		typ  events.Type
		set  []mut
		raw  string // used instead of typ/set when non-empty
	}{
		{name: "not JSON", raw: `KeyCreated`},
		{name: "empty", raw: " "},
		{name: "truncated", raw: `{"type":"KeyCreated","v":1`},
		{name: "array", raw: `[{"type":"KeyCreated","v":1}]`},
		{name: "null", raw: `null`},
		{name: "string", raw: `"KeyCreated"`},
		{name: "v 0", typ: events.TypeKeyCreated, set: []mut{{"v", 0}}},
		{name: "v 2", typ: events.TypeKeyCreated, set: []mut{{"v", 2}}},
		{name: "v missing", typ: events.TypeKeyRevoked, set: []mut{{"v", deleteField}}},
		{name: "v as string", typ: events.TypeKeyCreated, set: []mut{{"v", "1"}}},
		{name: "v fractional", typ: events.TypeKeyCreated, set: []mut{{"v", 1.5}}},
		{name: "unknown type", typ: events.TypeKeyCreated, set: []mut{{"type", "KeyDeleted"}}},
		{name: "type lower-case", typ: events.TypeKeyCreated, set: []mut{{"type", "keycreated"}}},
		{name: "type missing", typ: events.TypeKeyRevoked, set: []mut{{"type", deleteField}}},
		{name: "bad event_id", typ: events.TypeKeyCreated, set: []mut{{"event_id", "not-a-uuid"}}},
		{name: "empty event_id", typ: events.TypeKeyRevoked, set: []mut{{"event_id", ""}}},
		{name: "event_id missing", typ: events.TypeKeyUsed, set: []mut{{"event_id", deleteField}}},
		{name: "event_id number", typ: events.TypeKeyCreated, set: []mut{{"event_id", 7}}},
		{name: "at missing", typ: events.TypeKeyCreated, set: []mut{{"at", deleteField}}},
		{name: "at missing (revoke)", typ: events.TypeKeyRevoked, set: []mut{{"at", deleteField}}},
		{name: "at missing (used)", typ: events.TypeKeyUsed, set: []mut{{"at", deleteField}}},
		{name: "at zero", typ: events.TypeKeyCreated, set: []mut{{"at", "0001-01-01T00:00:00Z"}}},
		{name: "at not RFC 3339", typ: events.TypeKeyCreated, set: []mut{{"at", "26/11/2026"}}},
		{name: "key_id missing", typ: events.TypeKeyCreated, set: []mut{{"key_id", deleteField}}},
		{name: "key_id dot", typ: events.TypeKeyCreated, set: []mut{{"key_id", "key.1"}}},
		{name: "key_id wildcard", typ: events.TypeKeyRevoked, set: []mut{{"key_id", "*"}}},
		{name: "key_id gt", typ: events.TypeKeyRevoked, set: []mut{{"key_id", ">"}}},
		{name: "key_id space", typ: events.TypeKeyCreated, set: []mut{{"key_id", "key 1"}}},
		{name: "key_id unicode", typ: events.TypeKeyCreated, set: []mut{{"key_id", "ключ"}}},
		{name: "key_id too long", typ: events.TypeKeyCreated, set: []mut{{"key_id", strings.Repeat("k", 65)}}},
		{name: "key_id bad (used)", typ: events.TypeKeyUsed, set: []mut{{"key_id", "key.1"}}},
		{name: "hash empty", typ: events.TypeKeyCreated, set: []mut{{"hash", ""}}},
		{name: "hash short", typ: events.TypeKeyCreated, set: []mut{{"hash", strings.Repeat("a", 63)}}},
		{name: "hash not hex", typ: events.TypeKeyCreated, set: []mut{{"hash", strings.Repeat("z", 64)}}},
		{name: "hash missing", typ: events.TypeKeyCreated, set: []mut{{"hash", deleteField}}},
		{name: "permissions empty", typ: events.TypeKeyCreated, set: []mut{{"permissions", []string{}}}},
		{name: "permissions null", typ: events.TypeKeyCreated, set: []mut{{"permissions", nil}}},
		{name: "permissions missing", typ: events.TypeKeyCreated, set: []mut{{"permissions", deleteField}}},
		{name: "permissions string", typ: events.TypeKeyCreated, set: []mut{{"permissions", "all"}}},
		{name: "environment prod", typ: events.TypeKeyCreated, set: []mut{{"environment", "prod"}}},
		{name: "environment empty", typ: events.TypeKeyCreated, set: []mut{{"environment", ""}}},
		{name: "environment missing", typ: events.TypeKeyCreated, set: []mut{{"environment", deleteField}}},
		{name: "environment prod (used)", typ: events.TypeKeyUsed, set: []mut{{"environment", "prod"}}},
		{name: "environment missing (used)", typ: events.TypeKeyUsed, set: []mut{{"environment", deleteField}}},
		{name: "rate_limit zero rate", typ: events.TypeKeyCreated, set: []mut{{"rate_limit", map[string]any{"per_second": 0, "burst": 1}}}},
		{name: "rate_limit zero burst", typ: events.TypeKeyCreated, set: []mut{{"rate_limit", map[string]any{"per_second": 1, "burst": 0}}}},
		{name: "expires_at garbage", typ: events.TypeKeyCreated, set: []mut{{"expires_at", "soon"}}},
		// Past 2262-04-11 the expiry does not fit the int64 nanoseconds
		// the verify path compares: the key was dead on arrival while
		// listed active.
		{name: "expires_at after 2262", typ: events.TypeKeyCreated, set: []mut{{"expires_at", "2262-04-12T00:00:00Z"}}},
		{name: "expires_at before 1677", typ: events.TypeKeyCreated, set: []mut{{"expires_at", "1600-01-01T00:00:00Z"}}},
		{name: "unknown outcome", typ: events.TypeKeyUsed, set: []mut{{"outcome", "bogus"}}},
		{name: "outcome invalid", typ: events.TypeKeyUsed, set: []mut{{"outcome", "invalid"}}},
		{name: "outcome missing", typ: events.TypeKeyUsed, set: []mut{{"outcome", deleteField}}},
		{name: "outcome number", typ: events.TypeKeyUsed, set: []mut{{"outcome", 0}}},
		{name: "latency string", typ: events.TypeKeyUsed, set: []mut{{"latency_us", "87"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := []byte(tt.raw)
			if tt.raw == "" {
				m := base(t, tt.typ)
				for _, s := range tt.set {
					if s.value == deleteField {
						delete(m, s.field)
					} else {
						m[s.field] = s.value
					}
				}
				data, _ = json.Marshal(m)
			}
			ev, err := events.Decode(data)
			if err == nil {
				t.Fatalf("Decode(%s) accepted %#v", data, ev)
			}
			if ev != nil || !errors.Is(err, keyledger.ErrInvalid) {
				t.Fatalf("Decode(%s) = %v, %v; want nil, ErrInvalid", data, ev, err)
			}
		})
	}
}

// deleteField marks a field to remove in TestDecode_Rejects.
var deleteField = &struct{ x int }{}

func TestDecode_Accepts(t *testing.T) {
	g := eventstest.NewIDs(4)
	t.Run("unknown fields are ignored", func(t *testing.T) {
		b := MustEncode(t, eventstest.Revoked(t, g, "key_1", "r"))
		b = append([]byte(`{"added_in_v1_7":{"x":[1,2]},`), b[1:]...)
		ev := MustDecode(t, b)
		if r, ok := ev.(*events.KeyRevoked); !ok || r.Reason != "r" {
			t.Fatalf("decoded %#v", ev)
		}
	})
	t.Run("KeyUsed without key_id", func(t *testing.T) {
		ev := MustDecode(t, MustEncode(t, eventstest.Used(t, g, "")))
		if ev.Head().KeyID != "" {
			t.Fatalf("key id %q", ev.Head().KeyID)
		}
	})
	t.Run("KeyUsed sets Outcome from its name", func(t *testing.T) {
		for _, o := range keyledger.Outcomes() {
			u := eventstest.Used(t, g, "key_1")
			u.Outcome = o
			ev := MustDecode(t, MustEncode(t, u)).(*events.KeyUsed)
			if ev.Outcome != o || ev.OutcomeName != o.String() {
				t.Fatalf("outcome %v decoded as %v/%q", o, ev.Outcome, ev.OutcomeName)
			}
		}
	})
	t.Run("event_id forms uuid accepts", func(t *testing.T) {
		r := eventstest.Revoked(t, g, "key_1", "")
		r.EventID = strings.ToUpper(r.EventID)
		MustDecode(t, MustEncode(t, r))
	})
}

// TestDecode_ExtremeTimesRoundTrip: an event Decode accepts must survive
// Encode and Decode again. Times whose offset pushes them across year 0 or
// 9999 in UTC are valid RFC 3339 with their own offset, but not in UTC.
func TestDecode_ExtremeTimesRoundTrip(t *testing.T) {
	const id = "0193a5b2-c3d4-7e8f-9a0b-1c2d3e4f5a6b"
	hash := keyledger.HashSecret("x").String()
	for _, at := range []string{"0000-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z"} {
		for _, doc := range []string{
			`{"type":"KeyCreated","v":1,"event_id":"` + id + `","at":"` + at + `","key_id":"k","environment":"live","permissions":["all"],"hash":"` + hash + `","expires_at":"` + at + `"}`,
			`{"type":"KeyRevoked","v":1,"event_id":"` + id + `","at":"` + at + `","key_id":"k"}`,
			`{"type":"KeyUsed","v":1,"event_id":"` + id + `","at":"` + at + `","environment":"live","outcome":"valid"}`,
		} {
			ev, err := events.Decode([]byte(doc))
			if err != nil {
				continue // refusing is fine
			}
			b, err := events.Encode(ev)
			if err != nil {
				t.Errorf("%s at %s: Decode accepted it but Encode fails: %v", ev.Head().Type, at, err)
				continue
			}
			ev2, err := events.Decode(b)
			if err != nil {
				t.Errorf("%s at %s: Decode accepted it, but not its re-encoding %s: %v", ev.Head().Type, at, b, err)
				continue
			}
			eventstest.AssertSame(t, ev2, ev)
		}
	}
}

func TestValidKeyID(t *testing.T) {
	valid := []string{"k", "key_0193a5b2c3d47e8f9a0b1c2d3e4f5a6b", "A-z_9", strings.Repeat("x", 64), "-", "_"}
	for _, id := range valid {
		if err := events.ValidKeyID(id); err != nil {
			t.Errorf("ValidKeyID(%q) = %v", id, err)
		}
	}
	invalid := []string{"", strings.Repeat("x", 65), "a.b", ".", "*", ">", "a b", " ", "key/1", "key:1", "é", "key\x00", "key\n", "ключ"}
	for _, id := range invalid {
		if err := events.ValidKeyID(id); !errors.Is(err, keyledger.ErrInvalid) {
			t.Errorf("ValidKeyID(%q) = %v; want ErrInvalid", id, err)
		}
	}
}

func TestNewKeyID(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := events.NewKeyID()
		if err := events.ValidKeyID(id); err != nil {
			t.Fatalf("NewKeyID() = %q: %v", id, err)
		}
		if !strings.HasPrefix(id, "key_") || len(id) != len("key_")+32 {
			t.Fatalf("NewKeyID() = %q: want key_ and 32 hex digits", id)
		}
		if seen[id] {
			t.Fatalf("NewKeyID() repeated %q", id)
		}
		seen[id] = true
	}
}

func TestNewHeader(t *testing.T) {
	at := time.Date(2026, 11, 26, 13, 0, 0, 0, time.FixedZone("CET", 3600))
	h := events.NewHeader(events.TypeKeyRevoked, "key_1", "alice", at)
	if h.Type != events.TypeKeyRevoked || h.V != events.Version || h.KeyID != "key_1" || h.Actor != "alice" {
		t.Fatalf("NewHeader = %+v", h)
	}
	if !h.At.Equal(at) || h.At.Location() != time.UTC {
		t.Fatalf("At = %v, want %v in UTC", h.At, at)
	}
	u, err := uuid.Parse(h.EventID)
	if err != nil || u.Version() != 7 {
		t.Fatalf("EventID %q: version %v, %v; want a UUIDv7", h.EventID, u.Version(), err)
	}
	// UUIDv7 ids sort by creation.
	prev := events.NewID()
	for range 1000 {
		id := events.NewID()
		if id <= prev {
			t.Fatalf("NewID() = %q after %q: not increasing", id, prev)
		}
		prev = id
	}
}

// Decode reads the head of an event as Encode writes it without a JSON
// pass of its own; every other spelling takes the full pass, and a head
// that lies about the type is refused, whichever way it is read.
func TestDecode_head(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		ok         bool
	}{
		{"as Encode writes it", `{"type":"KeyRevoked","v":1,"event_id":"0190d0a0-0000-7000-8000-000000000001","at":"2026-12-01T00:00:00Z","key_id":"key_1","reason":"r"}`, true},
		{"spaced", `{ "type": "KeyRevoked", "v": 1, "event_id":"0190d0a0-0000-7000-8000-000000000001","at":"2026-12-01T00:00:00Z","key_id":"key_1","reason":"r"}`, true},
		{"fields in another order", `{"v":1,"type":"KeyRevoked","event_id":"0190d0a0-0000-7000-8000-000000000001","at":"2026-12-01T00:00:00Z","key_id":"key_1","reason":"r"}`, true},
		{"a second type after the head", `{"type":"KeyRevoked","v":1,"event_id":"0190d0a0-0000-7000-8000-000000000001","at":"2026-12-01T00:00:00Z","key_id":"key_1","reason":"r","type":"KeyEnabled"}`, false},
		{"version 2", `{"type":"KeyRevoked","v":2,"event_id":"0190d0a0-0000-7000-8000-000000000001","at":"2026-12-01T00:00:00Z","key_id":"key_1"}`, false},
		{"an escaped type", `{"type":"Key\u0052evoked","v":1,"event_id":"0190d0a0-0000-7000-8000-000000000001","at":"2026-12-01T00:00:00Z","key_id":"key_1","reason":"r"}`, true},
		{"unknown type", `{"type":"KeyStolen","v":1,"event_id":"0190d0a0-0000-7000-8000-000000000001","at":"2026-12-01T00:00:00Z","key_id":"key_1"}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := events.Decode([]byte(tc.text))
			if (err == nil) != tc.ok {
				t.Fatalf("Decode: %v, %v", ev, err)
			}
			if err == nil && ev.Head().Type != events.TypeKeyRevoked {
				t.Fatalf("type %s", ev.Head().Type)
			}
		})
	}
}
