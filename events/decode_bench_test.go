package events_test

import (
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
)

// BenchmarkDecode_created is the decode of the ledger's commonest event,
// the part of a replay a checkpoint cannot spare.
func BenchmarkDecode_created(b *testing.B) {
	exp := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	ev := &events.KeyCreated{Header: events.NewHeader(events.TypeKeyCreated, events.NewKeyID(), "admin-token", time.Now()),
		Name: "billing service", Environment: keyledger.EnvLive, Permissions: []string{"workflows:read", "storage:read"},
		Owner: "acme", Hash: keyledger.HashSecret("fsk_live_x").String(), Hint: "abcd", ExpiresAt: &exp,
		RateLimit: &keyledger.RateLimit{PerSecond: 10, Burst: 20}}
	data, err := events.Encode(ev)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := events.Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}
