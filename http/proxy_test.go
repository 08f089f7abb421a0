package http_test

import (
	"net"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	khttp "github.com/keyledger/keyledger/http"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/verifier/verifiertest"
	"github.com/valyala/fasthttp"
)

// recordBoth sends one forward-auth request, from peer (host:port), to
// both implementations and returns the KeyUsed event they recorded,
// failing the test unless they recorded the same one. hdr are name, value
// pairs; a name given twice is sent twice.
func recordBoth(tb testing.TB, f *verifiertest.Fixture, h *khttp.VerifierHandler, peer, method, uri string, hdr ...string) events.KeyUsed {
	tb.Helper()
	r := httptest.NewRequest(method, uri, nil)
	r.RemoteAddr = peer
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	f.Used = nil
	h.ServeHTTP(httptest.NewRecorder(), r)
	if len(f.Used) != 1 {
		tb.Fatalf("net/http recorded %d events", len(f.Used))
	}
	want := f.Used[0]

	ap, err := netip.ParseAddrPort(peer)
	if err != nil {
		tb.Fatal(err)
	}
	var req fasthttp.Request
	req.Header.SetMethod(method)
	req.SetRequestURI(uri)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, net.TCPAddrFromAddrPort(ap), nil)
	f.Used = nil
	h.AuthzFastHTTP(&ctx)
	if len(f.Used) != 1 {
		tb.Fatalf("fasthttp recorded %d events", len(f.Used))
	}
	got := f.Used[0]
	for _, ev := range []*events.KeyUsed{&got, &want} {
		ev.EventID, ev.LatencyUS = "", 0
		ev.Clip() // as published
	}
	if got != want {
		tb.Fatalf("KeyUsed\nfasthttp %+v\nnet/http %+v", got, want)
	}
	return got
}

// What a client sends is not what the ledger records about it: forwarded
// headers are believed from trusted proxies only, parsed as what they
// claim to be, and walked from the proxy's end.
func TestTrustedProxies_forwardedHeaders(t *testing.T) {
	f := verifiertest.New(t)
	live, _ := f.MustCreate(t, keyledger.EnvLive, nil, nil)
	auth := "Bearer " + live
	loopback := khttp.NewVerifierHandler(f.Verifier(keyledger.EnvLive, nil))
	private := khttp.NewVerifierHandlerTrusting(f.Verifier(keyledger.EnvLive, nil),
		[]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")})
	nobody := khttp.NewVerifierHandlerTrusting(f.Verifier(keyledger.EnvLive, nil), []netip.Prefix{})
	everyone, _ := khttp.ParseTrustedProxies("0.0.0.0/0,::/0")
	all := khttp.NewVerifierHandlerTrusting(f.Verifier(keyledger.EnvLive, nil), everyone)
	var longChain []string
	for i := range 40 {
		longChain = append(longChain, "10.0.0."+string(rune('0'+i%10)))
	}

	for _, tc := range []struct {
		name                     string
		h                        *khttp.VerifierHandler
		peer, method, uri        string
		hdr                      []string
		ip, wantMethod, wantPath string
	}{
		// Attacks: a client that reaches the node itself.
		{"attack: a client reaching the node directly names its own IP, method and path", loopback,
			"198.51.100.66:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", "203.0.113.7", "X-Real-Ip", "203.0.113.8", "X-Forwarded-Method", "DELETE",
				"X-Forwarded-Uri", "/api/admin", "X-Original-Method", "DELETE", "X-Original-Uri", "/api/admin"},
			"198.51.100.66", "GET", "/v1/authz"},
		{"attack: the same from IPv6", loopback, "[2001:db8::66]:5555", "PUT", "/v1/authz/api/x?y=1",
			[]string{"X-Real-Ip", "203.0.113.8", "X-Original-Uri", "/elsewhere"},
			"2001:db8::66", "PUT", "/api/x?y=1"},
		{"attack: from loopback when nobody is trusted", nobody, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", "203.0.113.7", "X-Original-Method", "POST"},
			"127.0.0.1", "GET", "/v1/authz"},
		{"attack: behind an appending proxy, a forged first hop", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", "192.0.2.1, 203.0.113.7"}, "203.0.113.7", "GET", "/v1/authz"},
		{"attack: a forged X-Forwarded-For line before the proxy's", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", "192.0.2.1", "X-Forwarded-For", "203.0.113.7"}, "203.0.113.7", "GET", "/v1/authz"},
		{"attack: a hop that is not an address", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", "evil.example"}, "127.0.0.1", "GET", "/v1/authz"},
		{"attack: markup for an address", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", "<script>alert(1)</script>"}, "127.0.0.1", "GET", "/v1/authz"},
		{"attack: an address and more", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", "203.0.113.7 junk"}, "127.0.0.1", "GET", "/v1/authz"},
		{"attack: a huge hop", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", strings.Repeat("1", 5000)}, "127.0.0.1", "GET", "/v1/authz"},
		{"attack: an unparsable X-Forwarded-For does not fall back to X-Real-IP", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", "unknown", "X-Real-Ip", "203.0.113.8"}, "127.0.0.1", "GET", "/v1/authz"},
		{"attack: X-Real-IP twice", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Real-Ip", "192.0.2.1", "X-Real-Ip", "203.0.113.8"}, "127.0.0.1", "GET", "/v1/authz"},
		{"attack: the client's X-Forwarded-Uri beside the gateway's X-Original-Uri", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-Uri", "/innocent", "X-Original-Uri", "/api/secret-report"}, "127.0.0.1", "GET", "/v1/authz"},
		{"attack: the client's X-Original-Method beside the gateway's X-Forwarded-Method", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-Method", "DELETE", "X-Original-Method", "GET"}, "127.0.0.1", "GET", "/v1/authz"},
		{"attack: X-Original-Uri twice", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Original-Uri", "/a", "X-Original-Uri", "/b"}, "127.0.0.1", "GET", "/v1/authz"},
		{"attack: a method that is no method", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Original-Method", "GET /admin"}, "127.0.0.1", "GET", "/v1/authz"},
		{"attack: a method longer than a record holds", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Original-Method", strings.Repeat("M", 17)}, "127.0.0.1", "GET", "/v1/authz"},

		// What gateways send.
		{"nginx on the same host", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", "203.0.113.7", "X-Real-Ip", "203.0.113.7", "X-Original-Method", "POST",
				"X-Original-Uri", "/v2/run?x=1"}, "203.0.113.7", "POST", "/v2/run?x=1"},
		{"traefik over IPv6 loopback", loopback, "[::1]:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", "2001:db8::7", "X-Forwarded-Method", "PATCH", "X-Forwarded-Uri", "/api/w/42"},
			"2001:db8::7", "PATCH", "/api/w/42"},
		{"both spellings agreeing", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-Method", "PUT", "X-Original-Method", "PUT", "X-Forwarded-Uri", "/a", "X-Original-Uri", "/a"},
			"127.0.0.1", "PUT", "/a"},
		{"a WebDAV method", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Original-Method", "PROPFIND"}, "127.0.0.1", "PROPFIND", "/v1/authz"},
		{"X-Real-IP alone", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Real-Ip", "198.51.100.9"}, "198.51.100.9", "GET", "/v1/authz"},
		{"a chain of trusted proxies", private, "10.1.1.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", "192.0.2.1, 203.0.113.7, 10.0.0.5,10.9.9.9"}, "203.0.113.7", "GET", "/v1/authz"},
		{"a chain over several lines", private, "[fd00::1]:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", "203.0.113.7", "X-Forwarded-For", "fd00::2, 10.0.0.5"}, "203.0.113.7", "GET", "/v1/authz"},
		{"nothing but trusted proxies: the first hop", private, "10.1.1.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", "10.0.0.7, 10.0.0.5"}, "10.0.0.7", "GET", "/v1/authz"},
		{"the walk stops after 32 hops", all, "10.1.1.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", strings.Join(longChain, ", ")}, longChain[len(longChain)-32], "GET", "/v1/authz"},
		{"empty list elements", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", " , 203.0.113.7 ,, "}, "203.0.113.7", "GET", "/v1/authz"},
		{"a port on the hop", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", "203.0.113.7:4711"}, "203.0.113.7", "GET", "/v1/authz"},
		{"a bracketed IPv6 hop with a port", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", "[2001:DB8::1]:443"}, "2001:db8::1", "GET", "/v1/authz"},
		{"canonical spelling: mapped and upper-case", loopback, "127.0.0.1:5555", "GET", "/v1/authz",
			[]string{"X-Forwarded-For", "::FFFF:203.0.113.7"}, "203.0.113.7", "GET", "/v1/authz"},
		{"a mapped loopback peer is loopback", loopback, "[::ffff:127.0.0.1]:5555", "GET", "/v1/authz",
			[]string{"X-Real-Ip", "198.51.100.9"}, "198.51.100.9", "GET", "/v1/authz"},
		{"envoy's path from a trusted peer", loopback, "127.0.0.1:5555", "POST", "/v1/authz/workflows/42?run=1", nil,
			"127.0.0.1", "POST", "/workflows/42?run=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := append([]string{"Authorization", auth}, tc.hdr...)
			u := recordBoth(t, f, tc.h, tc.peer, tc.method, tc.uri, hdr...)
			if u.IP != tc.ip || u.Method != tc.wantMethod || u.Path != tc.wantPath {
				t.Fatalf("recorded ip %q method %q path %q, want %q %q %q", u.IP, u.Method, u.Path, tc.ip, tc.wantMethod, tc.wantPath)
			}
			if u.Outcome != keyledger.OutcomeValid {
				t.Fatalf("outcome %s", u.Outcome)
			}
		})
	}
}

// A key in a URL is exposed, but the ledger keeps no copy of it: usage
// records are kept for months and read by more people than its owner.
func TestAuthz_redactsKeysInPaths(t *testing.T) {
	f := verifiertest.New(t)
	live, _ := f.MustCreate(t, keyledger.EnvLive, nil, nil)
	other, _ := f.MustCreate(t, keyledger.EnvTest, nil, nil)
	h := khttp.NewVerifierHandler(f.Verifier(keyledger.EnvLive, nil))
	long := "/" + strings.Repeat("p", events.MaxUsedPathLen-20) + "?api_key=" + live
	for _, tc := range []struct {
		name, peer, uri string
		hdr             []string
		want            string
	}{
		{"attack: the key in a forwarded query", "127.0.0.1:1", "/v1/authz",
			[]string{"X-Original-Uri", "/v2/run?api_key=" + live + "&x=1"}, "/v2/run?api_key=REDACTED&x=1"},
		{"attack: the key in traefik's forwarded path", "127.0.0.1:1", "/v1/authz",
			[]string{"X-Forwarded-Uri", "/keys/" + live + "/run"}, "/keys/REDACTED/run"},
		{"attack: two keys", "127.0.0.1:1", "/v1/authz",
			[]string{"X-Original-Uri", "/a?k=" + live + "&t=" + other}, "/a?k=REDACTED&t=REDACTED"},
		{"attack: the key with its underscores percent-encoded", "127.0.0.1:1", "/v1/authz",
			[]string{"X-Original-Uri", "/v2/run?x=a%20b&api_key=" + strings.ReplaceAll(live, "_", "%5f")}, "/v2/run?x=a b&api_key=REDACTED"},
		{"attack: the key in envoy's path", "127.0.0.1:1", "/v1/authz/v2/run?api_key=" + live, nil, "/v2/run?api_key=REDACTED"},
		{"attack: the key in the path of a client reaching the node itself", "198.51.100.66:1", "/v1/authz?api_key=" + live,
			[]string{"X-Original-Uri", "/innocent"}, "/v1/authz?api_key=REDACTED"},
		{"attack: the key across the recorded length", "127.0.0.1:1", "/v1/authz",
			[]string{"X-Original-Uri", long}, events.Clip(strings.TrimSuffix(long, live)+"REDACTED", events.MaxUsedPathLen)},
		{"a path without keys is recorded as sent", "127.0.0.1:1", "/v1/authz",
			[]string{"X-Original-Uri", "/runs/cache_test_run?sort=created_at_desc"}, "/runs/cache_test_run?sort=created_at_desc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := append([]string{"Authorization", "Bearer " + live}, tc.hdr...)
			u := recordBoth(t, f, h, tc.peer, "GET", tc.uri, hdr...)
			if u.Path != tc.want {
				t.Fatalf("recorded path %q, want %q", u.Path, tc.want)
			}
			for _, k := range []string{live, other} {
				if strings.Contains(u.Path, k[9:25]) {
					t.Fatalf("recorded path holds a key: %q", u.Path)
				}
			}
		})
	}
}

func TestParseTrustedProxies(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // the prefixes, comma-separated; "error" for an error
	}{
		{"127.0.0.0/8,::1/128", "127.0.0.0/8,::1/128"},
		{" 10.0.0.0/8 , fd00::/8 ,", "10.0.0.0/8,fd00::/8"},
		{"203.0.113.7", "203.0.113.7/32"},
		{"2001:db8::1", "2001:db8::1/128"},
		{"10.1.2.3/8", "10.0.0.0/8"},
		{"::ffff:10.0.0.0/104", "10.0.0.0/8"},
		{"none", ""},
		{"", ""},
		{"10.0.0.0/33", "error"},
		{"10.0.0.0/8,evil.example", "error"},
		{"10.0.0.0", "10.0.0.0/32"},
		{"10.0.0/8", "error"},
		{"fe80::1%eth0", "error"},
		{"fsk_live_OdQTOCTFHcsMURTIbMJeubMBSmrlYD1tzeqP", "error"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			ps, err := khttp.ParseTrustedProxies(tc.in)
			if tc.want == "error" {
				if err == nil || keyledger.ErrorCode(err) != keyledger.Invalid {
					t.Fatalf("got %v, %v; want an invalid_request error", ps, err)
				}
				if strings.Contains(err.Error(), "fsk_live_") {
					t.Fatalf("the error echoes a key: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ps == nil {
				t.Fatal("nil prefixes would mean the default")
			}
			var got []string
			for _, p := range ps {
				got = append(got, p.String())
			}
			if s := strings.Join(got, ","); s != tc.want {
				t.Fatalf("got %s, want %s", s, tc.want)
			}
		})
	}
	t.Run("too many", func(t *testing.T) {
		var many []string
		for i := range khttp.MaxTrustedProxies + 1 {
			many = append(many, netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}).String())
		}
		if _, err := khttp.ParseTrustedProxies(strings.Join(many, ",")); err == nil {
			t.Fatal("no error")
		}
	})
}

// FuzzTrustedProxies feeds both forward-auth implementations arbitrary
// gateway headers from a trusted or an untrusted peer: they must record
// the same event; an untrusted peer's request is recorded as it reached
// the node; a recorded IP is an address in canonical form; a recorded path
// holds nothing key-shaped.
func FuzzTrustedProxies(f *testing.F) {
	fx := verifiertest.New(f)
	live, _ := fx.MustCreate(f, keyledger.EnvLive, nil, nil)
	h := khttp.NewVerifierHandlerTrusting(fx.Verifier(keyledger.EnvLive, nil),
		[]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("10.0.0.0/8")})
	peers := []string{"127.0.0.1:1", "[::1]:1", "10.2.3.4:1", "198.51.100.66:1", "[2001:db8::66]:1", "[::ffff:10.0.0.1]:1"}
	f.Add(uint8(0), "203.0.113.7, 10.0.0.1", "", "", "GET", "", "/a?b=c", "")
	f.Add(uint8(3), "203.0.113.7", "10.0.0.1", "198.51.100.1", "", "POST", "", "/x")
	f.Add(uint8(2), "1.2.3.4:5", "[::1]:8", "x", "PUT", "PUT", "/a", "/a")
	f.Add(uint8(1), " , ", "::ffff:1.2.3.4", "", "", "", "/v2/run?api_key="+live, "")
	f.Fuzz(func(t *testing.T, peer uint8, xff1, xff2, realIP, fwdMethod, origMethod, fwdURI, origURI string) {
		// Only what an HTTP parser can hand over: no control characters,
		// no surrounding blanks.
		for _, v := range []string{xff1, xff2, realIP, fwdMethod, origMethod, fwdURI, origURI} {
			if strings.TrimSpace(v) != v || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				return
			}
		}
		hdr := []string{"Authorization", "Bearer " + live}
		for _, kv := range [][2]string{{"X-Forwarded-For", xff1}, {"X-Forwarded-For", xff2}, {"X-Real-Ip", realIP},
			{"X-Forwarded-Method", fwdMethod}, {"X-Original-Method", origMethod}, {"X-Forwarded-Uri", fwdURI}, {"X-Original-Uri", origURI}} {
			if kv[1] != "" {
				hdr = append(hdr, kv[0], kv[1])
			}
		}
		p := peers[int(peer)%len(peers)]
		u := recordBoth(t, fx, h, p, "GET", "/v1/authz", hdr...)
		peerAddr := netip.MustParseAddrPort(p).Addr().Unmap()
		trusted := peerAddr.IsLoopback() || netip.MustParsePrefix("10.0.0.0/8").Contains(peerAddr)
		if !trusted && (u.IP != peerAddr.String() || u.Method != "GET" || u.Path != "/v1/authz") {
			t.Fatalf("an untrusted peer's headers were believed: %+v", u)
		}
		if a, err := netip.ParseAddr(u.IP); err != nil || a.String() != u.IP {
			t.Fatalf("recorded IP %q is not a canonical address", u.IP)
		}
		if d, err := url.PathUnescape(u.Path); keyledger.LooksLikeSecret(u.Path) || err == nil && keyledger.LooksLikeSecret(d) {
			t.Fatalf("recorded path holds a key: %q", u.Path)
		}
	})
}
