package events_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/events/eventstest"
)

// keyUsedDoc is the wire form of KeyUsed read back with encoding/json,
// independently of the package's own decoding.
type keyUsedDoc struct {
	Type        string `json:"type"`
	V           int    `json:"v"`
	EventID     string `json:"event_id"`
	At          string `json:"at"`
	KeyID       string `json:"key_id"`
	Environment string `json:"environment"`
	Outcome     string `json:"outcome"`
	Permission  string `json:"permission"`
	IP          string `json:"ip"`
	UserAgent   string `json:"user_agent"`
	Method      string `json:"method"`
	Path        string `json:"path"`
	Node        string `json:"node"`
	LatencyUS   int64  `json:"latency_us"`
}

// asJSONString is what a Go string becomes after a trip through a JSON
// string: each invalid UTF-8 byte turns into U+FFFD.
func asJSONString(s string) string { return string([]rune(s)) }

// checkAppendJSON encodes e after prefix and checks the output with
// encoding/json: strict JSON, HTML-safe, every string field intact.
func checkAppendJSON(tb testing.TB, e *events.KeyUsed) {
	tb.Helper()
	prefix := []byte("prefix:")
	out := e.AppendJSON(append([]byte(nil), prefix...))
	if !bytes.HasPrefix(out, prefix) {
		tb.Fatalf("AppendJSON overwrote its destination: %q", out)
	}
	b := out[len(prefix):]
	if !json.Valid(b) {
		tb.Fatalf("AppendJSON produced invalid JSON: %q", b)
	}
	if !utf8.Valid(b) {
		tb.Fatalf("AppendJSON produced invalid UTF-8: %q", b)
	}
	for _, c := range b {
		if c < 0x20 || c == '<' || c == '>' || c == '&' {
			tb.Fatalf("AppendJSON left %q unescaped: %q", c, b)
		}
	}
	if bytes.Contains(b, []byte("\u2028")) || bytes.Contains(b, []byte("\u2029")) {
		tb.Fatalf("AppendJSON left U+2028/U+2029 unescaped: %q", b)
	}
	var d keyUsedDoc
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		tb.Fatalf("encoding/json cannot read %q: %v", b, err)
	}
	want := keyUsedDoc{
		Type: "KeyUsed", V: 1,
		EventID:     asJSONString(e.EventID),
		At:          e.At.UTC().Format(time.RFC3339Nano),
		KeyID:       asJSONString(e.KeyID),
		Environment: e.Environment.String(),
		Outcome:     e.Outcome.String(),
		Permission:  asJSONString(e.Permission),
		IP:          asJSONString(e.IP),
		UserAgent:   asJSONString(e.UserAgent),
		Method:      asJSONString(e.Method),
		Path:        asJSONString(e.Path),
		Node:        asJSONString(e.Node),
		LatencyUS:   e.LatencyUS,
	}
	if d != want {
		tb.Fatalf("AppendJSON(%#v) read back as\n %#v\nwant\n %#v", e, d, want)
	}
	at, err := time.Parse(time.RFC3339Nano, d.At)
	if err != nil || !at.Equal(e.At) {
		tb.Fatalf("at %q = %v, %v; want %v", d.At, at, err, e.At)
	}

	// Same document as encoding/json makes of the struct (OutcomeName
	// aside, which AppendJSON derives from Outcome).
	if e.Environment == keyledger.EnvUnknown {
		return // encoding/json refuses to encode an unknown environment
	}
	c := *e
	c.OutcomeName = e.Outcome.String()
	c.Actor = ""
	c.At = e.At.UTC()
	std, err := json.Marshal(&c)
	if err != nil {
		tb.Fatalf("json.Marshal: %v", err)
	}
	var m1, m2 map[string]any
	if err := json.Unmarshal(b, &m1); err != nil {
		tb.Fatal(err)
	}
	if err := json.Unmarshal(std, &m2); err != nil {
		tb.Fatal(err)
	}
	if !reflect.DeepEqual(m1, m2) {
		tb.Fatalf("AppendJSON and json.Marshal disagree:\n %q\n %q", b, std)
	}
}

func TestKeyUsed_AppendJSON(t *testing.T) {
	g := eventstest.NewIDs(6)
	hostile := []struct{ name, s string }{
		{"empty", ""},
		{"quotes", `say "hi"`},
		{"backslashes", `C:\path\to\"x"\\`},
		{"JSON injection", `","outcome":"valid","x":"`},
		{"newline tab CR", "a\nb\tc\rd"},
		{"every control character", func() string {
			var b strings.Builder
			for c := 0; c < 0x20; c++ {
				b.WriteByte(byte(c))
			}
			return b.String() + "\x7f"
		}()},
		{"NUL", "\x00"},
		{"invalid UTF-8 byte", "ab\xffcd"},
		{"truncated UTF-8", "é"[:1] + "x"},
		{"truncated at end", "x" + "€"[:2]},
		{"UTF-16 surrogate as UTF-8", "\xed\xa0\x80"},
		{"overlong encoding", "\xc0\xaf"},
		{"U+2028 and U+2029", "a\u2028b\u2029c"},
		{"HTML", `<script>alert("&amp;")</script>`},
		{"U+FFFD itself", "\ufffd"},
		{"emoji and CJK", "🔑 鍵 ключ"},
		{"long", strings.Repeat("Mozilla/5.0 \"\\ <>&\u2028\xff ", 20000)},
	}
	for _, h := range hostile {
		t.Run(h.name, func(t *testing.T) {
			e := eventstest.Used(t, g, "")
			e.EventID, e.KeyID, e.Permission, e.IP = h.s, h.s, h.s, h.s
			e.UserAgent, e.Method, e.Path, e.Node = h.s, h.s, h.s, h.s
			checkAppendJSON(t, e)
		})
	}
	t.Run("every outcome and environment", func(t *testing.T) {
		for _, o := range keyledger.Outcomes() {
			for _, env := range []keyledger.Environment{keyledger.EnvLive, keyledger.EnvTest} {
				e := eventstest.Used(t, g, "key_1")
				e.Outcome, e.Environment = o, env
				checkAppendJSON(t, e)
				ev := MustDecode(t, e.AppendJSON(nil))
				eventstest.AssertSame(t, ev, &events.KeyUsed{Header: e.Header, Environment: env, Outcome: o, OutcomeName: o.String(),
					Permission: e.Permission, IP: e.IP, UserAgent: e.UserAgent, Method: e.Method, Path: e.Path, Node: e.Node, LatencyUS: e.LatencyUS})
			}
		}
	})
	t.Run("times and latencies", func(t *testing.T) {
		for _, at := range []time.Time{
			eventstest.FixedAt,
			time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
			time.Date(2026, 1, 2, 3, 4, 5, 100, time.FixedZone("X", 5*3600+1800)),
			time.Unix(0, 0),
			time.Now(), // has a monotonic reading
		} {
			for _, lat := range []int64{0, 1, -1, 1<<63 - 1, -1 << 63} {
				e := eventstest.Used(t, g, "key_1")
				e.At, e.LatencyUS = at, lat
				checkAppendJSON(t, e)
			}
		}
	})
	t.Run("golden", func(t *testing.T) {
		e := &events.KeyUsed{
			Header:      events.Header{Type: events.TypeKeyUsed, V: 1, EventID: "0193a5b2-c3d4-7e8f-9a0b-1c2d3e4f5a6b", At: time.Date(2026, 11, 26, 12, 0, 0, 5000, time.UTC), KeyID: "key_1"},
			Environment: keyledger.EnvLive, Outcome: keyledger.OutcomeRevoked,
			Permission: "", IP: "192.0.2.1", UserAgent: "ua \"1\"", Method: "GET", Path: "/a?b=<c>", Node: "n1", LatencyUS: 42,
		}
		const want = `{"type":"KeyUsed","v":1,"event_id":"0193a5b2-c3d4-7e8f-9a0b-1c2d3e4f5a6b","at":"2026-11-26T12:00:00.000005Z","key_id":"key_1","environment":"live","outcome":"revoked","permission":"","ip":"192.0.2.1","user_agent":"ua \"1\"","method":"GET","path":"/a?b=\u003cc\u003e","node":"n1","latency_us":42}`
		if got := string(e.AppendJSON(nil)); got != want {
			t.Fatalf("AppendJSON =\n %s\nwant\n %s", got, want)
		}
		if got, _ := events.Encode(e); string(got) != want {
			t.Fatalf("Encode =\n %s\nwant\n %s", got, want)
		}
	})
}

func TestKeyUsed_AppendJSONAllocs(t *testing.T) {
	e := eventstest.Used(t, eventstest.NewIDs(7), "key_0193a5b2c3d47e8f9a0b1c2d3e4f5a6b")
	e.UserAgent = "Mozilla/5.0 (X11; Linux x86_64) \"quoted\" <tag> \xff \u2028"
	buf := make([]byte, 0, 1024)
	n := testing.AllocsPerRun(200, func() { buf = e.AppendJSON(buf[:0]) })
	if n != 0 {
		t.Fatalf("AppendJSON into a large enough buffer makes %v allocations, want 0", n)
	}
}

func FuzzKeyUsedJSON(f *testing.F) {
	f.Add("0193a5b2-c3d4-7e8f-9a0b-1c2d3e4f5a6b", "key_1", "storage:read", "192.0.2.1", "curl/8", "POST", "/v1/verify", "n1", int64(87), eventstest.FixedAt.UnixNano(), uint8(0), uint8(1))
	f.Add("", "", "", "", "\"\\\x00\x1f<>&\u2028\u2029\xff", "\xed\xa0\x80", "\xc0", "🔑", int64(-1), int64(0), uint8(9), uint8(0))
	f.Add(`","x":"`, "\t\n\r", "\\u0000", "<!--", "\x7f\x80", "é"[:1], "\ufffd", "a\u2028", int64(1<<62), int64(-1<<62), uint8(255), uint8(2))
	f.Fuzz(func(t *testing.T, eventID, keyID, perm, ip, ua, method, path, node string, latency, atNanos int64, outcome, env uint8) {
		e := &events.KeyUsed{
			Header:      events.Header{Type: events.TypeKeyUsed, V: 1, EventID: eventID, At: time.Unix(0, atNanos), KeyID: keyID},
			Environment: keyledger.Environment(env % 3),
			Outcome:     keyledger.Outcome(outcome),
			Permission:  perm, IP: ip, UserAgent: ua, Method: method, Path: path, Node: node,
			LatencyUS: latency,
		}
		checkAppendJSON(t, e)
	})
}

func BenchmarkKeyUsedAppendJSON(b *testing.B) {
	e := eventstest.Used(b, eventstest.NewIDs(8), "key_0193a5b2c3d47e8f9a0b1c2d3e4f5a6b")
	e.UserAgent = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
	b.Run("AppendJSON", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 1024)
		for b.Loop() {
			buf = e.AppendJSON(buf[:0])
		}
		b.SetBytes(int64(len(buf)))
	})
	b.Run("AppendJSON_nil", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			e.AppendJSON(nil)
		}
	})
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		var out []byte
		for b.Loop() {
			var err error
			if out, err = json.Marshal(e); err != nil {
				b.Fatal(err)
			}
		}
		b.SetBytes(int64(len(out)))
	})
}

func TestNextUsage(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"empty", "", nil},
		{"one event, no newline", `{"a":1}`, []string{`{"a":1}`}},
		{"one event", "{\"a\":1}\n", []string{`{"a":1}`}},
		{"batch", "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n", []string{`{"a":1}`, `{"a":2}`, `{"a":3}`}},
		{"last without newline", "{\"a\":1}\n{\"a\":2}", []string{`{"a":1}`, `{"a":2}`}},
		{"blank lines skipped", "\n \r\n{\"a\":1}\n\n\t\n{\"a\":2}\n\n", []string{`{"a":1}`, `{"a":2}`}},
		{"only blank", "\n\n \n", nil},
		{"garbage kept for the decoder", "x\ny", []string{"x", "y"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for ev, rest := events.NextUsage([]byte(tt.in)); ev != nil; ev, rest = events.NextUsage(rest) {
				got = append(got, string(ev))
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("NextUsage(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestAppendUsage_roundTrip(t *testing.T) {
	var b []byte
	var want []events.KeyUsed
	for i, ua := range []string{"plain", "line\nbreak", "cr\r\nlf", "\u2028sep"} {
		ev := events.KeyUsed{Header: events.Header{Type: events.TypeKeyUsed, V: events.Version, EventID: events.NewID(),
			At: time.Unix(1700000000+int64(i), 0).UTC(), KeyID: "key_1"}, Environment: keyledger.EnvLive,
			Outcome: keyledger.OutcomeValid, UserAgent: ua, Node: "n"}
		want = append(want, ev)
		b = events.AppendUsage(b, &ev)
	}
	i := 0
	for data, rest := events.NextUsage(b); data != nil; data, rest = events.NextUsage(rest) {
		ev, err := events.Decode(data)
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if got := ev.(*events.KeyUsed); got.UserAgent != want[i].UserAgent || got.EventID != want[i].EventID {
			t.Fatalf("event %d = %+v, want %+v", i, got, want[i])
		}
		i++
	}
	if i != len(want) {
		t.Fatalf("%d events read back, want %d", i, len(want))
	}
}

func FuzzNextUsage(f *testing.F) {
	f.Add([]byte("{\"a\":1}\n{\"a\":2}\n"))
	f.Add([]byte("\n\n"))
	f.Add([]byte("x"))
	f.Fuzz(func(t *testing.T, data []byte) {
		total := 0
		for ev, rest := events.NextUsage(data); ev != nil; ev, rest = events.NextUsage(rest) {
			if len(bytes.TrimSpace(ev)) == 0 || bytes.IndexByte(ev, '\n') >= 0 {
				t.Fatalf("event %q: blank or holds a newline", ev)
			}
			total += len(ev) + 1
			if total > len(data)+1 {
				t.Fatalf("events longer than the message %q", data)
			}
		}
	})
}

func TestKeyUsed_Clip(t *testing.T) {
	long := strings.Repeat("é", 2000) // 2 bytes each
	ev := events.KeyUsed{UserAgent: "x" + long, Path: "/" + long, IP: long, Method: long, Permission: long, Node: long}
	ev.Clip()
	for name, tc := range map[string]struct {
		got string
		max int
	}{"user_agent": {ev.UserAgent, events.MaxUsedUserAgentLen}, "path": {ev.Path, events.MaxUsedPathLen},
		"ip": {ev.IP, events.MaxUsedIPLen}, "method": {ev.Method, events.MaxUsedMethodLen},
		"permission": {ev.Permission, events.MaxUsedPermissionLen}} {
		if len(tc.got) > tc.max || len(tc.got) < tc.max-1 || !utf8.ValidString(tc.got) {
			t.Errorf("%s clipped to %d bytes (valid UTF-8: %v), want at most %d, cut at a character", name, len(tc.got), utf8.ValidString(tc.got), tc.max)
		}
	}
	if ev.UserAgent[:3] != "xé" || ev.Node != long {
		t.Errorf("user agent starts %q; node changed: %v", ev.UserAgent[:3], ev.Node != long)
	}
	short := events.KeyUsed{UserAgent: "curl/8", Path: "/p"}
	short.Clip()
	if short.UserAgent != "curl/8" || short.Path != "/p" {
		t.Errorf("short fields changed: %+v", short)
	}
}
