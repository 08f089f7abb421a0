package http_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	khttp "github.com/keyledger/keyledger/http"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/verifier"
	"github.com/keyledger/keyledger/verifier/verifiertest"
)

const unauthorizedBody = `{"error":{"code":"unauthorized","message":"Invalid or missing API key"}}`

func do(t *testing.T, h http.Handler, r *http.Request) (*http.Response, string) {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	resp := w.Result()
	b, _ := io.ReadAll(resp.Body)
	return resp, strings.TrimSpace(string(b))
}

func TestHandler_authz(t *testing.T) {
	f := verifiertest.New(t)
	live, liveID := f.MustCreate(t, keyledger.EnvLive, []string{"workflows:read"}, nil)
	test, _ := f.MustCreate(t, keyledger.EnvTest, nil, nil)
	revoked, revokedID := f.MustCreate(t, keyledger.EnvLive, nil, nil)
	f.Revoke(t, revokedID)
	h := khttp.NewVerifierHandler(f.Verifier(keyledger.EnvLive, nil))

	t.Run("valid key: 200 with identity headers", func(t *testing.T) {
		r := httptest.NewRequest("GET", "/v1/authz", nil)
		r.RemoteAddr = "127.0.0.1:40000" // a gateway on the same host: trusted by default
		r.Header.Set("Authorization", "Bearer "+live)
		r.Header.Set("X-Required-Permission", "workflows:read")
		r.Header.Set("X-Forwarded-For", "203.0.113.7")
		r.Header.Set("X-Forwarded-Method", "DELETE")
		r.Header.Set("X-Forwarded-Uri", "/api/workflows/42")
		r.Header.Set("User-Agent", "sdk/1.0")
		f.Used = nil
		resp, _ := do(t, h, r)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if resp.Header.Get("X-Key-Id") != liveID || resp.Header.Get("X-Key-Owner") != "acme" || resp.Header.Get("X-Key-Environment") != "live" {
			t.Fatalf("headers %v", resp.Header)
		}
		u := f.Used[0]
		if u.IP != "203.0.113.7" || u.Method != "DELETE" || u.Path != "/api/workflows/42" || u.UserAgent != "sdk/1.0" || u.KeyID != liveID {
			t.Fatalf("usage %+v", u)
		}
	})
	t.Run("nginx original headers and lower-case scheme", func(t *testing.T) {
		r := httptest.NewRequest("GET", "/v1/authz", nil)
		r.RemoteAddr = "[::1]:40000"
		r.Header.Set("Authorization", "bearer "+live)
		r.Header.Set("X-Real-IP", "198.51.100.9")
		r.Header.Set("X-Original-Method", "POST")
		r.Header.Set("X-Original-URI", "/v2/run?x=1")
		f.Used = nil
		if resp, _ := do(t, h, r); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if u := f.Used[0]; u.IP != "198.51.100.9" || u.Method != "POST" || u.Path != "/v2/run?x=1" {
			t.Fatalf("usage %+v", u)
		}
	})
	t.Run("any method is accepted", func(t *testing.T) {
		r := httptest.NewRequest("PATCH", "/v1/authz", nil)
		r.Header.Set("Authorization", "Bearer "+live)
		if resp, _ := do(t, h, r); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	for _, tc := range []struct{ name, auth string }{
		{"missing header", ""},
		{"basic scheme", "Basic " + live},
		{"bearer without key", "Bearer "},
		{"malformed", "Bearer fsk_live_nope"},
		{"revoked", "Bearer " + revoked},
		{"test key at live node", "Bearer " + test},
	} {
		t.Run(tc.name+": exact 401", func(t *testing.T) {
			r := httptest.NewRequest("GET", "/v1/authz", nil)
			if tc.auth != "" {
				r.Header.Set("Authorization", tc.auth)
			}
			resp, body := do(t, h, r)
			if resp.StatusCode != 401 || body != unauthorizedBody {
				t.Fatalf("got %d %s", resp.StatusCode, body)
			}
			if resp.Header.Get("X-Key-Id") != "" {
				t.Fatal("refusal carries identity headers")
			}
		})
	}
	t.Run("missing permission: 403 naming it", func(t *testing.T) {
		r := httptest.NewRequest("GET", "/v1/authz", nil)
		r.Header.Set("Authorization", "Bearer "+live)
		r.Header.Set("X-Required-Permission", "storage:write")
		resp, body := do(t, h, r)
		var env khttp.Envelope
		if err := json.Unmarshal([]byte(body), &env); err != nil || resp.StatusCode != 403 ||
			env.Error.Code != keyledger.Forbidden || !strings.Contains(env.Error.Message, "storage:write") {
			t.Fatalf("got %d %s", resp.StatusCode, body)
		}
	})
	t.Run("test key over its limit: 429 with Retry-After", func(t *testing.T) {
		th := khttp.NewVerifierHandler(f.Verifier(keyledger.EnvTest, nil))
		var last *http.Response
		var body string
		for i := 0; i < 4; i++ { // burst 3
			r := httptest.NewRequest("GET", "/v1/authz", nil)
			r.Header.Set("Authorization", "Bearer "+test)
			last, body = do(t, th, r)
		}
		if last.StatusCode != 429 || last.Header.Get("Retry-After") != "1" || !strings.Contains(body, `"code":"rate_limited"`) {
			t.Fatalf("got %d retry-after %q %s", last.StatusCode, last.Header.Get("Retry-After"), body)
		}
	})
}

func TestHandler_verify(t *testing.T) {
	f := verifiertest.New(t)
	exp := f.Now.Add(time.Hour)
	live, liveID := f.MustCreate(t, keyledger.EnvLive, []string{"storage:read"}, func(e *events.KeyCreated) { e.ExpiresAt = &exp })
	h := khttp.NewVerifierHandler(f.Verifier(keyledger.EnvLive, nil))
	post := func(body, ct string) (*http.Response, string) {
		r := httptest.NewRequest("POST", "/v1/verify", strings.NewReader(body))
		if ct != "" {
			r.Header.Set("Content-Type", ct)
		}
		return do(t, h, r)
	}
	t.Run("valid", func(t *testing.T) {
		resp, body := post(`{"key":"`+live+`","permission":"storage:read"}`, "application/json")
		var got khttp.VerifyResponse
		if err := json.Unmarshal([]byte(body), &got); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		if !got.Valid || got.KeyID != liveID || got.Environment != "live" || got.Owner != "acme" ||
			len(got.Permissions) != 1 || got.ExpiresAt == nil || !got.ExpiresAt.Equal(exp) {
			t.Fatalf("response %+v", got)
		}
		if strings.Contains(body, live) {
			t.Fatal("response echoes the secret")
		}
	})
	for _, tc := range []struct {
		name, body, ct string
		status         int
		code           string
	}{
		{"unknown key", `{"key":"fsk_live_x"}`, "", 401, "unauthorized"},
		{"empty key", `{}`, "application/json", 401, "unauthorized"},
		{"forbidden", `{"key":"` + live + `","permission":"storage:write"}`, "", 403, "forbidden"},
		{"bad json", `{"key":`, "application/json", 400, "invalid_request"},
		{"unknown field", `{"key":"a","nope":1}`, "application/json", 400, "invalid_request"},
		{"wrong content type", `{"key":"a"}`, "text/plain", 415, "invalid_request"},
		{"too big", `{"key":"` + strings.Repeat("a", khttp.MaxVerifyBody) + `"}`, "", 413, "invalid_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := post(tc.body, tc.ct)
			var env khttp.Envelope
			if err := json.Unmarshal([]byte(body), &env); err != nil || resp.StatusCode != tc.status || string(env.Error.Code) != tc.code {
				t.Fatalf("got %d %s, want %d %s", resp.StatusCode, body, tc.status, tc.code)
			}
			if strings.Contains(body, live) {
				t.Fatal("error echoes the secret")
			}
		})
	}
	t.Run("GET is 405", func(t *testing.T) {
		resp, body := do(t, h, httptest.NewRequest("GET", "/v1/verify", nil))
		if resp.StatusCode != 405 || !strings.Contains(body, "method_not_allowed") {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
	})
}

func TestHandler_readyz(t *testing.T) {
	f := verifiertest.New(t)
	ready := false
	h := khttp.NewVerifierHandler(f.Verifier(keyledger.EnvLive, func() bool { return ready }))
	if resp, body := do(t, h, httptest.NewRequest("GET", "/readyz", nil)); resp.StatusCode != 503 || !strings.Contains(body, `"unavailable"`) {
		t.Fatalf("not ready: %d %s", resp.StatusCode, body)
	}
	if resp, _ := do(t, h, httptest.NewRequest("GET", "/healthz", nil)); resp.StatusCode != 200 {
		t.Fatalf("healthz %d", resp.StatusCode)
	}
	ready = true
	if resp, _ := do(t, h, httptest.NewRequest("GET", "/readyz", nil)); resp.StatusCode != 200 {
		t.Fatalf("ready: %d", resp.StatusCode)
	}
}

// Envoy's ext_authz calls /v1/authz + the client's path.
func TestHandler_authzEnvoyPrefix(t *testing.T) {
	f := verifiertest.New(t)
	live, liveID := f.MustCreate(t, keyledger.EnvLive, nil, nil)
	h := khttp.NewVerifierHandler(f.Verifier(keyledger.EnvLive, nil))
	r := httptest.NewRequest("POST", "/v1/authz/workflows/42?run=1", nil)
	r.Header.Set("Authorization", "Bearer "+live)
	f.Used = nil
	resp, _ := do(t, h, r)
	if resp.StatusCode != 200 || resp.Header.Get("X-Key-Id") != liveID {
		t.Fatalf("status %d headers %v", resp.StatusCode, resp.Header)
	}
	if u := f.Used[0]; u.Path != "/workflows/42?run=1" || u.Method != "POST" {
		t.Fatalf("usage %+v", u)
	}
}

// discardWriter is a reusable http.ResponseWriter, so that the benchmark
// counts the handler's own allocations only.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }

type discardRecorder struct{}

func (discardRecorder) Record(events.KeyUsed) {}

// BenchmarkHandler_authz is the forward-auth handler alone, on a request
// as nginx auth_request sends it; net/http's own parsing and writing are
// not included (keyledger bench authz measures the whole server).
func BenchmarkHandler_authz(b *testing.B) {
	f := verifiertest.New(b)
	live, _ := f.MustCreate(b, keyledger.EnvLive, []string{"workflows:read"}, nil)
	h := khttp.NewVerifierHandler(verifier.New(f.P.Table(), verifier.Config{
		Environment: keyledger.EnvLive, Node: "n1", Usage: discardRecorder{}}))
	r := httptest.NewRequest("GET", "/v1/authz", nil)
	r.Header.Set("Authorization", "Bearer "+live)
	r.Header.Set("X-Required-Permission", "workflows:read")
	r.Header.Set("X-Original-Uri", "/api/workflows/42")
	r.Header.Set("X-Original-Method", "GET")
	r.Header.Set("X-Real-Ip", "203.0.113.7")
	r.Header.Set("User-Agent", "sdk/1.0")
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, r)
		if w.code != http.StatusOK {
			b.Fatalf("status %d", w.code)
		}
	}
}

// The handler looks headers up by their canonical key directly; a key
// that is not canonical would never match.
func TestHandler_headerKeysCanonical(t *testing.T) {
	for _, k := range khttp.HeaderKeys {
		if c := http.CanonicalHeaderKey(k); c != k {
			t.Errorf("header key %q is not canonical (%q)", k, c)
		}
	}
}
