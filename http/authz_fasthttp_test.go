package http_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	khttp "github.com/keyledger/keyledger/http"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/verifier/verifiertest"
	"github.com/valyala/fasthttp"
)

// MustServeFastHTTP serves h's forward-auth endpoint with fasthttp on a
// loopback port, as keyledger serve does, until the test ends.
func MustServeFastHTTP(tb testing.TB, h *khttp.VerifierHandler) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: h.AuthzFastHTTP, ErrorHandler: khttp.FastHTTPError,
		ReadBufferSize: 8 << 10, MaxRequestBodySize: 1 << 10, ReadTimeout: 5 * time.Second}
	go srv.Serve(ln)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.ShutdownWithContext(ctx)
	})
	return "http://" + ln.Addr().String()
}

// The fasthttp endpoint must answer exactly as the net/http one, and
// record the same KeyUsed event.
func TestHandler_AuthzFastHTTP_parity(t *testing.T) {
	f := verifiertest.New(t)
	live, _ := f.MustCreate(t, keyledger.EnvLive, []string{"workflows:read"}, nil)
	test, _ := f.MustCreate(t, keyledger.EnvTest, nil, nil)
	revoked, revokedID := f.MustCreate(t, keyledger.EnvLive, nil, nil)
	f.Revoke(t, revokedID)
	withMeta, _ := f.MustCreate(t, keyledger.EnvLive, nil, func(e *events.KeyCreated) {
		e.Metadata = json.RawMessage(`{"plan":"pro","tenant":"Zürich\r\nX-Admin: yes","n":5,"deep":{"a":1}}`)
	})
	disabled, disabledID := f.MustCreate(t, keyledger.EnvLive, nil, nil)
	f.Disable(t, disabledID)
	fenced, _ := f.MustCreate(t, keyledger.EnvLive, nil, func(e *events.KeyCreated) { e.AllowedIPs = []string{"203.0.113.0/24"} })
	h := khttp.NewVerifierHandler(f.Verifier(keyledger.EnvLive, nil))
	h.SetMetaHeaders([]string{"plan", "tenant", "n", "deep", "missing"})
	base := MustServeFastHTTP(t, h)
	client := &http.Client{Timeout: 5 * time.Second}

	cases := []struct {
		name, method, path string
		hdr                map[string]string
	}{
		{"valid with nginx headers", "GET", "/v1/authz", map[string]string{"Authorization": "Bearer " + live,
			"X-Required-Permission": "workflows:read", "X-Real-IP": "198.51.100.9", "X-Original-Method": "POST",
			"X-Original-URI": "/v2/run?x=1", "User-Agent": "sdk/1.0"}},
		{"valid with traefik headers", "PUT", "/v1/authz", map[string]string{"Authorization": "bearer " + live,
			"X-Forwarded-For": "203.0.113.7, 10.0.0.1", "X-Forwarded-Method": "DELETE", "X-Forwarded-Uri": "/api/w/42",
			"User-Agent": "sdk/2.0"}},
		{"valid through envoy's path", "GET", "/v1/authz/api/things?id=3", map[string]string{"Authorization": "Bearer " + live,
			"User-Agent": "envoy"}},
		{"odd method", "PROPFIND", "/v1/authz", map[string]string{"Authorization": "Bearer " + live}},
		{"missing key", "GET", "/v1/authz", nil},
		{"basic scheme", "GET", "/v1/authz", map[string]string{"Authorization": "Basic " + live}},
		{"malformed", "GET", "/v1/authz", map[string]string{"Authorization": "Bearer fsk_live_nope"}},
		{"revoked", "GET", "/v1/authz", map[string]string{"Authorization": "Bearer " + revoked}},
		{"test key at a live node", "GET", "/v1/authz", map[string]string{"Authorization": "Bearer " + test}},
		{"missing permission", "GET", "/v1/authz", map[string]string{"Authorization": "Bearer " + live,
			"X-Required-Permission": "storage:write"}},
		{"unknown permission", "GET", "/v1/authz", map[string]string{"Authorization": "Bearer " + live,
			"X-Required-Permission": "nope:nope"}},
		{"metadata headers", "GET", "/v1/authz", map[string]string{"Authorization": "Bearer " + withMeta}},
		{"attack: a client's own metadata header", "GET", "/v1/authz", map[string]string{"Authorization": "Bearer " + live,
			"X-Key-Meta-Plan": "enterprise"}},
		{"disabled", "GET", "/v1/authz", map[string]string{"Authorization": "Bearer " + disabled}},
		{"allowlisted, from elsewhere", "GET", "/v1/authz", map[string]string{"Authorization": "Bearer " + fenced,
			"X-Real-IP": "198.51.100.9"}},
		{"allowlisted, from inside", "GET", "/v1/authz", map[string]string{"Authorization": "Bearer " + fenced,
			"X-Real-IP": "203.0.113.44"}},
	}
	compared := []string{"Content-Type", "Cache-Control", "Www-Authenticate", "Retry-After",
		"X-Key-Id", "X-Key-Owner", "X-Key-Environment",
		"X-Key-Meta-Plan", "X-Key-Meta-Tenant", "X-Key-Meta-N", "X-Key-Meta-Deep", "X-Key-Meta-Missing"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// net/http, through the handler directly.
			r := httptest.NewRequest(tc.method, tc.path, nil)
			r.RemoteAddr = "127.0.0.1:40000"
			for k, v := range tc.hdr {
				r.Header.Set(k, v)
			}
			if _, ok := tc.hdr["User-Agent"]; !ok {
				r.Header.Set("User-Agent", "Go-http-client/1.1")
			}
			f.Used = nil
			want, wantBody := do(t, h, r)
			wantEv := f.Used[0]

			// fasthttp, over loopback.
			req, err := http.NewRequest(tc.method, base+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.hdr {
				req.Header.Set(k, v)
			}
			f.Used = nil
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != want.StatusCode || strings.TrimSpace(string(b)) != wantBody {
				t.Fatalf("fasthttp %d %s, net/http %d %s", resp.StatusCode, b, want.StatusCode, wantBody)
			}
			for _, k := range compared {
				if got, w := resp.Header.Get(k), want.Header.Get(k); got != w {
					t.Errorf("header %s: fasthttp %q, net/http %q", k, got, w)
				}
			}
			if want.StatusCode == 200 {
				// Every configured member is answered, empty when the
				// key has none: a gateway copying the header then
				// overwrites whatever the client sent.
				for _, k := range []string{"X-Key-Meta-Plan", "X-Key-Meta-Missing"} {
					if _, ok := resp.Header[k]; !ok {
						t.Errorf("header %s missing from a 200", k)
					}
				}
			}
			if tc.name == "metadata headers" {
				for k, v := range map[string]string{"X-Key-Meta-Plan": "pro", "X-Key-Meta-Tenant": "Z%C3%BCrich%0D%0AX-Admin: yes",
					"X-Key-Meta-N": "5", "X-Key-Meta-Deep": "", "X-Key-Meta-Missing": ""} {
					if got := resp.Header.Get(k); got != v {
						t.Errorf("%s = %q, want %q", k, got, v)
					}
				}
			}
			if tc.name == "attack: a client's own metadata header" && resp.Header.Get("X-Key-Meta-Plan") != "" {
				t.Errorf("the client's X-Key-Meta-Plan came back: %q", resp.Header.Get("X-Key-Meta-Plan"))
			}
			gotEv := f.Used[0]
			for _, ev := range []*events.KeyUsed{&gotEv, &wantEv} {
				ev.EventID, ev.LatencyUS = "", 0
				ev.Clip() // as published: the fasthttp endpoint clips long headers as it copies them
			}
			if gotEv != wantEv {
				t.Fatalf("KeyUsed\nfasthttp %+v\nnet/http %+v", gotEv, wantEv)
			}
		})
	}

	t.Run("recorded strings survive the next request on the connection", func(t *testing.T) {
		f.Used = nil
		for _, ua := range []string{"first-agent/1.0", "second/2"} {
			req, _ := http.NewRequest("GET", base+"/v1/authz", nil)
			req.Header.Set("Authorization", "Bearer "+live)
			req.Header.Set("User-Agent", ua)
			req.Header.Set("X-Original-URI", "/p/"+ua)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if len(f.Used) != 2 || f.Used[0].UserAgent != "first-agent/1.0" || f.Used[0].Path != "/p/first-agent/1.0" {
			t.Fatalf("events %+v", f.Used)
		}
	})
}

func TestHandler_AuthzFastHTTP_rateLimited(t *testing.T) {
	f := verifiertest.New(t)
	test, _ := f.MustCreate(t, keyledger.EnvTest, nil, nil)
	base := MustServeFastHTTP(t, khttp.NewVerifierHandler(f.Verifier(keyledger.EnvTest, nil)))
	client := &http.Client{Timeout: 5 * time.Second}
	var last *http.Response
	var body []byte
	for range 4 { // burst 3
		req, _ := http.NewRequest("GET", base+"/v1/authz", nil)
		req.Header.Set("Authorization", "Bearer "+test)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		last = resp
	}
	if last.StatusCode != 429 || last.Header.Get("Retry-After") != "1" || !strings.Contains(string(body), `"code":"rate_limited"`) {
		t.Fatalf("got %d retry-after %q %s", last.StatusCode, last.Header.Get("Retry-After"), body)
	}
}

// Requests fasthttp cannot take get the product's error envelope, not
// fasthttp's plain text.
func TestFastHTTPError(t *testing.T) {
	f := verifiertest.New(t)
	base := MustServeFastHTTP(t, khttp.NewVerifierHandler(f.Verifier(keyledger.EnvLive, nil)))
	client := &http.Client{Timeout: 5 * time.Second}
	for _, tc := range []struct {
		name   string
		mod    func(*http.Request)
		status int
		reason string
	}{
		{"headers over the read buffer", func(r *http.Request) { r.Header.Set("Cookie", strings.Repeat("c", 16<<10)) },
			http.StatusRequestHeaderFieldsTooLarge, keyledger.ReasonHeadersTooLarge},
		{"body over the limit", func(r *http.Request) {
			r.Body = io.NopCloser(strings.NewReader(strings.Repeat("b", 4<<10)))
			r.ContentLength = 4 << 10
		}, http.StatusRequestEntityTooLarge, keyledger.ReasonBodyTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", base+"/v1/authz", nil)
			tc.mod(req)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !strings.Contains(string(b), `"code":"invalid_request"`) ||
				!strings.Contains(string(b), `"reason":"`+tc.reason+`"`) || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("got %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
			}
		})
	}
}

// FuzzAuthz feeds both forward-auth implementations the same gateway
// headers: neither may panic, both must reach the same outcome and record
// the same event, and no recorded field may carry the presented key.
func FuzzAuthz(f *testing.F) {
	fx := verifiertest.New(f)
	live, _ := fx.MustCreate(f, keyledger.EnvLive, []string{"workflows:read"}, nil)
	h := khttp.NewVerifierHandler(fx.Verifier(keyledger.EnvLive, nil))
	f.Add("Bearer "+live, "workflows:read", "203.0.113.7, 10.0.0.1", "", "GET", "/a?b=c", "sdk/1")
	f.Add("bearer "+live, "storage:write", "", "198.51.100.1", "", "", "")
	f.Add("Basic x", "", "", "", "PROPFIND", "", "")
	f.Add("Bearer fsk_live_"+strings.Repeat("A", 36), "nope", ",", " ", "x", "/", "\xff")
	f.Fuzz(func(t *testing.T, auth, perm, xff, realIP, method, uri, ua string) {
		// Only what an HTTP parser can hand over: no line breaks or NULs,
		// no surrounding blanks, names of token characters.
		for _, v := range []string{auth, perm, xff, realIP, method, uri, ua} {
			if strings.ContainsAny(v, "\r\n\x00") || strings.TrimSpace(v) != v || strings.Trim(v, " \t") != v {
				return
			}
		}
		hdr := map[string]string{"Authorization": auth, "X-Required-Permission": perm, "X-Forwarded-For": xff,
			"X-Real-Ip": realIP, "X-Original-Method": method, "X-Original-Uri": uri, "User-Agent": ua}

		r := httptest.NewRequest("GET", "/v1/authz", nil)
		r.RemoteAddr = "127.0.0.1:40000"
		for k, v := range hdr {
			if v != "" {
				r.Header[k] = []string{v}
			}
		}
		fx.Used = nil
		want, wantBody := do(t, h, r)
		wantEv := fx.Used[0]

		var req fasthttp.Request
		req.Header.SetMethod("GET")
		req.SetRequestURI("/v1/authz")
		for k, v := range hdr {
			if v != "" {
				req.Header.Set(k, v)
			}
		}
		var ctx fasthttp.RequestCtx
		ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}, nil)
		fx.Used = nil
		h.AuthzFastHTTP(&ctx)
		gotEv := fx.Used[0]

		if ctx.Response.StatusCode() != want.StatusCode || strings.TrimSpace(string(ctx.Response.Body())) != wantBody {
			t.Fatalf("fasthttp %d %s, net/http %d %s", ctx.Response.StatusCode(), ctx.Response.Body(), want.StatusCode, wantBody)
		}
		for _, ev := range []*events.KeyUsed{&gotEv, &wantEv} {
			ev.EventID, ev.LatencyUS = "", 0
			ev.Clip() // as published: the fasthttp endpoint clips long headers as it copies them
		}
		if gotEv != wantEv {
			t.Fatalf("KeyUsed\nfasthttp %+v\nnet/http %+v", gotEv, wantEv)
		}
		if len(live) > 0 && strings.Contains(fmt.Sprintf("%+v", gotEv), live) {
			t.Fatalf("event carries the key: %+v", gotEv)
		}
	})
}

func TestHandler_AuthzFastHTTP_longHeaders(t *testing.T) {
	f := verifiertest.New(t)
	live, _ := f.MustCreate(t, keyledger.EnvLive, nil, nil)
	h := khttp.NewVerifierHandler(f.Verifier(keyledger.EnvLive, nil))
	var req fasthttp.Request
	req.SetRequestURI("/v1/authz")
	req.Header.Set("Authorization", "Bearer "+live)
	req.Header.Set("User-Agent", strings.Repeat("u", 20_000))
	req.Header.Set("X-Original-Uri", "/"+strings.Repeat("p", 20_000))
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, nil)
	f.Used = nil
	h.AuthzFastHTTP(&ctx)
	if ctx.Response.StatusCode() != 200 {
		t.Fatalf("status %d", ctx.Response.StatusCode())
	}
	if u := f.Used[0]; len(u.UserAgent) != events.MaxUsedUserAgentLen || len(u.Path) != events.MaxUsedPathLen {
		t.Fatalf("recorded user agent %d bytes, path %d bytes", len(u.UserAgent), len(u.Path))
	}
}
