package events

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
)

// FuzzDecode_decoders holds the fast decoder Decode uses to
// encoding/json's answers: for any input, both accept or both refuse, and
// what they accept is the same event. Nodes of different versions, and
// tools built on encoding/json, must read the ledger alike.
func FuzzDecode_decoders(f *testing.F) {
	at := time.Date(2026, 12, 1, 20, 0, 0, 123456789, time.UTC)
	exp := at.Add(time.Hour)
	seeds := []Event{
		&KeyCreated{Header: NewHeader(TypeKeyCreated, "key_1", "admin-token", at), Name: "n", Environment: keyledger.EnvLive,
			Permissions: []string{"a", "b"}, Owner: "acme", Hash: keyledger.HashSecret("x").String(), Hint: "abcd", ExpiresAt: &exp,
			RateLimit: &keyledger.RateLimit{PerSecond: 2.5, Burst: 3}, Metadata: json.RawMessage(`{"plan":"pro","n":[1,2,{"x":null}]}`),
			AllowedIPs: []string{"10.0.0.0/8"}, AdminScope: &keyledger.AdminScope{Owner: "acme"},
			Credits: &keyledger.Credits{Remaining: 5, Refill: &keyledger.Refill{Interval: "daily", Amount: 5}}},
		&KeyRevoked{Header: NewHeader(TypeKeyRevoked, "key_1", "a", at), Reason: "leaked \u00e9"},
		&KeyUpdated{Header: NewHeader(TypeKeyUpdated, "key_1", "a", at), Prev: Prev{Prev: 7}, Changed: []string{FieldName, FieldCredits}, Name: "m"},
		&KeyRolled{Header: NewHeader(TypeKeyRolled, "key_1", "a", at), RolledTo: "key_2", ExpiresAt: exp},
		&PlanSet{Header: NewHeader(TypePlanSet, keyledger.PlanID("pro"), "a", at), Plan: keyledger.Plan{Name: "pro", MonthlyQuota: 10}},
		&OwnerSet{Header: NewHeader(TypeOwnerSet, keyledger.OwnerID("acme"), "a", at), Owner: "acme", Plan: "pro"},
	}
	for _, ev := range seeds {
		b, err := Encode(ev)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"type":"KeyRevoked","v":1,"event_id":"0190d0a0-0000-7000-8000-000000000001","at":"2026-12-01T00:00:00Z","key_id":"key_1","reason":"\xff"}`))
	f.Add([]byte(`{"type":"KeyRevoked","v":1,"EVENT_ID":"0190d0a0-0000-7000-8000-000000000001","at":"2026-12-01T00:00:00Z","key_id":"key_1","reason":"r","reason":"s"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		std, errStd := decodeWith(data, json.Unmarshal)
		fast, errFast := decodeWith(data, unmarshal)
		if (errStd == nil) != (errFast == nil) {
			t.Fatalf("encoding/json: %v; the fast decoder: %v; on %q", errStd, errFast, data)
		}
		if errStd == nil && !reflect.DeepEqual(std, fast) {
			t.Fatalf("encoding/json read %#v, the fast decoder %#v, from %q", std, fast, data)
		}
	})
}
