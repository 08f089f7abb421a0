package analytics

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
)

// slowRow decodes with events.Decode only: the reference.
func slowRow(data []byte) (usageRow, error) {
	var r usageRow
	ev, err := events.Decode(data)
	if err != nil {
		return r, err
	}
	ku, ok := ev.(*events.KeyUsed)
	if !ok {
		return r, errNotKeyUsed
	}
	at := ku.At.UTC()
	id, _ := uuid.Parse(ku.EventID)
	return usageRow{eventID: id, sec: at.Unix(), ms: uint16(at.Nanosecond() / 1e6), keyID: ku.KeyID,
		env: ku.Environment.String(), outcome: ku.Outcome.String(), permission: ku.Permission, ip: ku.IP,
		userAgent: ku.UserAgent, method: ku.Method, path: ku.Path, node: ku.Node, latencyUS: ku.LatencyUS}, nil
}

var errNotKeyUsed = keyledger.Errorf(keyledger.Invalid, "not KeyUsed")

func decodeSamples() [][]byte {
	at := time.Date(2026, 5, 6, 7, 8, 9, 123456789, time.UTC)
	ku := used("key_1", keyledger.EnvLive, keyledger.OutcomeForbidden, "2001:db8::1", at)
	canonical := ku.AppendJSON(nil)
	ku2 := used("", keyledger.EnvTest, keyledger.OutcomeUnknown, "1.2.3.4", at)
	ku2.UserAgent = "quote \" backslash \\ newline \n <tag> é \u2028"
	id := ku.EventID
	return [][]byte{
		canonical,
		ku2.AppendJSON(nil),
		[]byte(`{"type":"KeyUsed","v":1,"event_id":"` + id + `","at":"2026-01-01T00:00:00+02:00","environment":"live","outcome":"valid"}`),
		[]byte(`{"type":"KeyUsed","v":1,"event_id":"` + id + `","at":"2026-01-01T00:00:00Z","environment":"live","outcome":"valid","extra":{"a":[1,2.5e3,true,null,"x"]}}`),
		[]byte(` { "v" : 1 , "type" : "KeyUsed" , "event_id" : "` + id + `" , "at" : "2026-01-01T00:00:00.5Z" , "environment" : "test" , "outcome" : "valid" , "actor" : null } `),
		[]byte(`{"type":"KeyUsed","v":1,"event_id":"` + id + `","at":"2026-01-01T00:00:00Z","environment":"live","outcome":"valid","Key_ID":"key_x"}`),
		[]byte(`{"type":"KeyUsed","v":1,"event_id":"` + strings.ReplaceAll(id, "-", "") + `","at":"2026-01-01T00:00:00Z","environment":"live","outcome":"valid"}`),
		[]byte(`{"type":"KeyUsed","v":1.0,"event_id":"` + id + `","at":"2026-01-01T00:00:00Z","environment":"live","outcome":"valid"}`),
		[]byte(`{"type":"KeyUsed","v":2,"event_id":"` + id + `","at":"2026-01-01T00:00:00Z","environment":"live","outcome":"valid"}`),
		[]byte(`{"type":"KeyUsed","v":1,"event_id":"nope","at":"2026-01-01T00:00:00Z","environment":"live","outcome":"valid"}`),
		[]byte(`{"type":"KeyUsed","v":1,"event_id":"` + id + `","at":"2026-02-30T00:00:00Z","environment":"live","outcome":"valid"}`),
		[]byte(`{"type":"KeyUsed","v":1,"event_id":"` + id + `","at":"2026-01-01T00:00:00Z","environment":"prod","outcome":"valid"}`),
		[]byte(`{"type":"KeyUsed","v":1,"event_id":"` + id + `","at":"2026-01-01T00:00:00Z","environment":"live","outcome":"valid","key_id":"bad key"}`),
		[]byte(`{"type":"KeyUsed","v":1,"event_id":"` + id + `","at":"2026-01-01T00:00:00Z","environment":"live","outcome":"valid"} x`),
		[]byte(`{"type":"KeyUsed","v":1,"event_id":"` + id + `","at":"2026-01-01T00:00:00Z","environment":"live","outcome":"valid",}`),
		[]byte(`{"type":"KeyUsed","v":1,"event_id":"` + id + `","environment":"live","outcome":"valid"}`),
		[]byte(`{"type":"KeyUsed","v":1,"event_id":"` + id + `","at":"1960-01-01T00:00:00Z","environment":"live","outcome":"valid"}`),
		[]byte(`{"type":"KeyCreated","v":1}`),
		[]byte("\xff\xfe"),
		[]byte(`[]`),
		[]byte(`{"type":"KeyUsed","v":1,"event_id":"` + id + `","at":"2026-01-01T00:00:00Z","environment":"live","outcome":"valid","latency_us":-7,"ip":"\u0041"}`),
	}
}

// TestDecodeMatchesEventsDecode checks the fast decoder against the
// reference on canonical, unusual and invalid input.
func TestDecodeMatchesEventsDecode(t *testing.T) {
	for _, data := range decodeSamples() {
		checkDecode(t, data)
	}
	var r usageRow
	if !fastKeyUsed(string(decodeSamples()[0]), &r) {
		t.Error("the canonical encoding must take the fast path")
	}
}

func checkDecode(t *testing.T, data []byte) {
	t.Helper()
	want, werr := slowRow(data)
	if werr == nil && (want.sec < minSec || want.sec > maxSec) {
		werr = errNotKeyUsed // out of DateTime range: refused by analytics too
	}
	var got usageRow
	gerr := decodeKeyUsed(data, &got)
	if (gerr == nil) != (werr == nil) {
		t.Fatalf("%q: decode err %v, reference err %v", data, gerr, werr)
	}
	if gerr == nil && got != want {
		t.Fatalf("%q:\n got %+v\nwant %+v", data, got, want)
	}
	var fast usageRow
	if fastKeyUsed(string(data), &fast) && (werr != nil || fast != want) {
		t.Fatalf("%q: fast path accepted %+v, reference %+v, %v", data, fast, want, werr)
	}
}

func FuzzDecodeKeyUsed(f *testing.F) {
	for _, s := range decodeSamples() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkDecode(t, data)
	})
}

func BenchmarkDecodeKeyUsed(b *testing.B) {
	data := decodeSamples()[0]
	b.Run("fast", func(b *testing.B) {
		var r usageRow
		for b.Loop() {
			if err := decodeKeyUsed(data, &r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("events.Decode", func(b *testing.B) {
		for b.Loop() {
			if _, err := events.Decode(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
