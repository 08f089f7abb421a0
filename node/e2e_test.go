package node_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	khttp "github.com/keyledger/keyledger/http"

	"github.com/keyledger/keyledger/node/nodetest"
)

const unauthorized = `{"error":{"code":"unauthorized","message":"Invalid or missing API key"}}`

func TestEndToEnd(t *testing.T) {
	dir := t.TempDir()
	logs := &nodetest.SyncBuffer{}
	n := nodetest.MustOpen(t, dir, logs)
	tokBytes, err := os.ReadFile(filepath.Join(dir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "admin-token")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin-token mode %v, want 0600", fi.Mode().Perm())
	}
	token := strings.TrimSpace(string(tokBytes))
	c := &nodetest.Caller{T: t, Base: n.URL(), Token: token}
	nodetest.WaitReady(t, c)

	// The admin API refuses requests without the token.
	if code, _, body := c.Call("GET", "/v1/keys", "", ""); code != 401 || strings.TrimSpace(string(body)) != unauthorized {
		t.Fatalf("no token: %d %s", code, body)
	}
	if code, _, _ := c.Call("GET", "/v1/keys", "wrong-token-0123456789", ""); code != 401 {
		t.Fatalf("wrong token: %d", code)
	}

	code, _, body := c.Call("POST", "/v1/keys", token, `{"name":"e2e","environment":"live","owner":"acme","permissions":["workflows:read"]}`)
	if code != 201 {
		t.Fatalf("create: %d %s", code, body)
	}
	var created struct {
		Key      string `json:"key"`
		ID       string `json:"id"`
		Revision uint64 `json:"revision"`
		Status   string `json:"status"`
	}
	if err := json.Unmarshal(body, &created); err != nil || created.Key == "" || created.Revision == 0 || created.Status != "active" {
		t.Fatalf("create body %s", body)
	}
	secret := created.Key

	authz := func(perm string) (int, http.Header, []byte) {
		return c.Call("GET", "/v1/authz", secret, "", "X-Required-Permission", perm)
	}
	if code, hdr, _ := authz("workflows:read"); code != 200 || hdr.Get("X-Key-Id") != created.ID || hdr.Get("X-Key-Owner") != "acme" {
		t.Fatalf("authz valid: %d %v", code, hdr)
	}
	if code, _, _ := authz("storage:write"); code != 403 {
		t.Fatalf("authz forbidden: %d", code)
	}
	if code, _, body := c.Call("POST", "/v1/verify", "", `{"key":"`+secret+`"}`); code != 200 || !strings.Contains(string(body), `"valid":true`) {
		t.Fatalf("verify: %d %s", code, body)
	}
	if code, _, body := c.Call("GET", "/v1/keys/"+created.ID, token, ""); code != 200 || strings.Contains(string(body), secret) {
		t.Fatalf("get: %d %s", code, body)
	}

	// Revoke, then the very next request is refused.
	if code, _, body := c.Call("POST", "/v1/keys/"+created.ID+"/revoke", token, `{"reason":"e2e"}`); code != 200 || !strings.Contains(string(body), `"status":"revoked"`) {
		t.Fatalf("revoke: %d %s", code, body)
	}
	if code, _, body := authz("workflows:read"); code != 401 || strings.TrimSpace(string(body)) != unauthorized {
		t.Fatalf("authz after revoke: %d %s", code, body)
	}
	if code, _, body := c.Call("POST", "/v1/keys/"+created.ID+"/revoke", token, ""); code != 409 || !strings.Contains(string(body), "already_revoked") {
		t.Fatalf("second revoke: %d %s", code, body)
	}
	if code, _, body := c.Call("POST", "/v1/keys/key_missing/revoke", token, ""); code != 404 || !strings.Contains(string(body), `"not_found"`) {
		t.Fatalf("revoke unknown: %d %s", code, body)
	}
	code, _, body = c.Call("GET", "/v1/keys/"+created.ID+"/events", token, "")
	if code != 200 || !strings.Contains(string(body), `"KeyCreated"`) || !strings.Contains(string(body), `"KeyRevoked"`) || !strings.Contains(string(body), `"reason":"e2e"`) {
		t.Fatalf("events: %d %s", code, body)
	}

	// Bad input: clear envelopes, right statuses.
	for _, tc := range []struct {
		method, path, body string
		status             int
	}{
		{"POST", "/v1/keys", `{"name":`, 400},
		{"POST", "/v1/keys", `{"name":"x","environment":"live","extra":true}`, 400},
		{"POST", "/v1/keys", `{"name":"x","environment":"staging"}`, 400},
		{"POST", "/v1/keys", `{"name":"x","environment":"live","expires_at":"next week"}`, 400},
		{"POST", "/v1/keys", `{"name":"` + strings.Repeat("x", 70000) + `"}`, 413},
		{"DELETE", "/v1/keys/" + created.ID, "", 405},
		{"GET", "/v1/keys?status=zombie", "", 400},
		{"GET", "/v1/nothing", "", 404},
	} {
		code, _, body := c.Call(tc.method, tc.path, token, tc.body)
		var env khttp.Envelope
		if code != tc.status || json.Unmarshal(body, &env) != nil || env.Error.Code == "" || env.Error.Message == "" {
			t.Errorf("%s %s: %d %s, want %d with an envelope", tc.method, tc.path, code, body, tc.status)
		}
	}

	// Prometheus metrics count the outcomes this test produced.
	code, _, body = c.Call("GET", "/metrics", "", "")
	for _, want := range []string{`keyledger_verify_total{outcome="valid"} 2`, `keyledger_verify_total{outcome="forbidden"} 1`,
		`keyledger_verify_total{outcome="revoked"} 1`, "keyledger_projector_last_sequence 2", "keyledger_verify_latency_seconds_bucket"} {
		if code != 200 || !strings.Contains(string(body), want) {
			t.Fatalf("metrics lack %q:\n%s", want, body)
		}
	}

	// Restart on the same data dir: the key is still revoked.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
	n2 := nodetest.MustOpen(t, dir, logs)
	c2 := &nodetest.Caller{T: t, Base: n2.URL(), Token: token}
	nodetest.WaitReady(t, c2)
	if code, _, body := c2.Call("GET", "/v1/authz", secret, ""); code != 401 || strings.TrimSpace(string(body)) != unauthorized {
		t.Fatalf("after restart: %d %s", code, body)
	}
	if code, _, body := c2.Call("GET", "/v1/keys/"+created.ID, token, ""); code != 200 || !strings.Contains(string(body), `"status":"revoked"`) {
		t.Fatalf("after restart get: %d %s", code, body)
	}

	// No secret ever reached a log line.
	if out := logs.String(); strings.Contains(out, secret) || strings.Contains(out, token) {
		t.Fatal("a secret or the admin token was logged")
	}
}

// A rate-limited admin key is answered 429 with Retry-After, like any
// rate-limited key (the header was missing on the admin API).
func TestEndToEnd_adminKeyRateLimited(t *testing.T) {
	const token = "e2e-ratelimit-token-0123456789"
	cfg := nodetest.Config(t.TempDir(), io.Discard)
	cfg.AdminToken = token
	n := nodetest.MustOpenConfig(t, cfg)
	c := &nodetest.Caller{T: t, Base: n.URL(), Token: token}
	nodetest.WaitReady(t, c)
	code, _, b := c.Call("POST", "/v1/keys", token, `{"name":"ops","environment":"live","permissions":["admin"],"rate_limit":{"per_second":0.001,"burst":1}}`)
	var k struct{ Key string }
	if code != 201 || json.Unmarshal(b, &k) != nil {
		t.Fatalf("create: %d %s", code, b)
	}
	if code, _, _ := c.Call("GET", "/v1/nodes", k.Key, ""); code != 200 {
		t.Fatalf("first call: %d", code)
	}
	code, h, _ := c.Call("GET", "/v1/nodes", k.Key, "")
	if code != 429 || h.Get("Retry-After") == "" {
		t.Fatalf("second call: %d, Retry-After %q; want 429 with Retry-After", code, h.Get("Retry-After"))
	}
}
