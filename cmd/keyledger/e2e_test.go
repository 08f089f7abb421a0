package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
)

// syncBuffer collects log output from concurrent goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// MustOpenNode starts a whole node (embedded NATS without a listener, HTTP
// on a free loopback port) on dir.
func MustOpenNode(tb testing.TB, dir string, logs io.Writer) *node {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := openNode(ctx, nodeConfig{
		DataDir: dir, HTTPAddr: "127.0.0.1:0", Environment: keyledger.EnvLive, Prefix: "fsk",
		Permissions: keyledger.DefaultPermissions, TestRateLimit: keyledger.RateLimit{PerSecond: 25, Burst: 50},
		Name: "e2e", Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		tb.Fatalf("open node: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n.Close(ctx)
	})
	return n
}

type client struct {
	t     *testing.T
	base  string
	token string
}

func (c *client) call(method, path, token, body string, hdr ...string) (int, http.Header, []byte) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func waitReady(t *testing.T, c *client) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, _, _ := c.call("GET", "/readyz", "", ""); code == 200 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("node never became ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

const unauthorized = `{"error":{"code":"unauthorized","message":"Invalid or missing API key"}}`

func TestEndToEnd(t *testing.T) {
	dir := t.TempDir()
	logs := &syncBuffer{}
	n := MustOpenNode(t, dir, logs)
	tokBytes, err := os.ReadFile(filepath.Join(dir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "admin-token")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin-token mode %v, want 0600", fi.Mode().Perm())
	}
	token := strings.TrimSpace(string(tokBytes))
	c := &client{t: t, base: n.URL(), token: token}
	waitReady(t, c)

	// The admin API refuses requests without the token.
	if code, _, body := c.call("GET", "/v1/keys", "", ""); code != 401 || strings.TrimSpace(string(body)) != unauthorized {
		t.Fatalf("no token: %d %s", code, body)
	}
	if code, _, _ := c.call("GET", "/v1/keys", "wrong-token-0123456789", ""); code != 401 {
		t.Fatalf("wrong token: %d", code)
	}

	code, _, body := c.call("POST", "/v1/keys", token, `{"name":"e2e","environment":"live","owner":"acme","permissions":["workflows:read"]}`)
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
		return c.call("GET", "/v1/authz", secret, "", "X-Required-Permission", perm)
	}
	if code, hdr, _ := authz("workflows:read"); code != 200 || hdr.Get("X-Key-Id") != created.ID || hdr.Get("X-Key-Owner") != "acme" {
		t.Fatalf("authz valid: %d %v", code, hdr)
	}
	if code, _, _ := authz("storage:write"); code != 403 {
		t.Fatalf("authz forbidden: %d", code)
	}
	if code, _, body := c.call("POST", "/v1/verify", "", `{"key":"`+secret+`"}`); code != 200 || !strings.Contains(string(body), `"valid":true`) {
		t.Fatalf("verify: %d %s", code, body)
	}
	if code, _, body := c.call("GET", "/v1/keys/"+created.ID, token, ""); code != 200 || strings.Contains(string(body), secret) {
		t.Fatalf("get: %d %s", code, body)
	}

	// Revoke, then the very next request is refused.
	if code, _, body := c.call("POST", "/v1/keys/"+created.ID+"/revoke", token, `{"reason":"e2e"}`); code != 200 || !strings.Contains(string(body), `"status":"revoked"`) {
		t.Fatalf("revoke: %d %s", code, body)
	}
	if code, _, body := authz("workflows:read"); code != 401 || strings.TrimSpace(string(body)) != unauthorized {
		t.Fatalf("authz after revoke: %d %s", code, body)
	}
	if code, _, body := c.call("POST", "/v1/keys/"+created.ID+"/revoke", token, ""); code != 409 || !strings.Contains(string(body), "already_revoked") {
		t.Fatalf("second revoke: %d %s", code, body)
	}
	if code, _, body := c.call("POST", "/v1/keys/key_missing/revoke", token, ""); code != 404 || !strings.Contains(string(body), `"not_found"`) {
		t.Fatalf("revoke unknown: %d %s", code, body)
	}
	code, _, body = c.call("GET", "/v1/keys/"+created.ID+"/events", token, "")
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
		code, _, body := c.call(tc.method, tc.path, token, tc.body)
		var env keyledger.Envelope
		if code != tc.status || json.Unmarshal(body, &env) != nil || env.Error.Code == "" || env.Error.Message == "" {
			t.Errorf("%s %s: %d %s, want %d with an envelope", tc.method, tc.path, code, body, tc.status)
		}
	}

	// Prometheus metrics count the outcomes this test produced.
	code, _, body = c.call("GET", "/metrics", "", "")
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
	n2 := MustOpenNode(t, dir, logs)
	c2 := &client{t: t, base: n2.URL(), token: token}
	waitReady(t, c2)
	if code, _, body := c2.call("GET", "/v1/authz", secret, ""); code != 401 || strings.TrimSpace(string(body)) != unauthorized {
		t.Fatalf("after restart: %d %s", code, body)
	}
	if code, _, body := c2.call("GET", "/v1/keys/"+created.ID, token, ""); code != 200 || !strings.Contains(string(body), `"status":"revoked"`) {
		t.Fatalf("after restart get: %d %s", code, body)
	}

	// No secret ever reached a log line.
	if out := logs.String(); strings.Contains(out, secret) || strings.Contains(out, token) {
		t.Fatal("a secret or the admin token was logged")
	}
}

func TestCLI(t *testing.T) {
	dir := t.TempDir()
	n := MustOpenNode(t, dir, io.Discard)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cli := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(ctx, append(args, "--url", n.URL(), "--data", dir), &out, &errb)
		return code, out.String(), errb.String()
	}
	code, out, errOut := cli("keys", "create", "--name", "cli", "--env", "test", "--owner", "team-a", "--permissions", "storage:read", "--json")
	if code != 0 {
		t.Fatalf("create: %d %s %s", code, out, errOut)
	}
	var created struct{ Key, ID string }
	if err := json.Unmarshal([]byte(out), &created); err != nil || !strings.HasPrefix(created.Key, "fsk_test_") {
		t.Fatalf("create output %s", out)
	}
	code, out, _ = cli("keys", "create", "--name", "human")
	if code != 0 || !strings.Contains(out, "will not be shown again") || !strings.Contains(out, "fsk_live_") {
		t.Fatalf("human create: %d %s", code, out)
	}
	if code, out, _ := cli("keys", "list", "--owner", "team-a"); code != 0 || !strings.Contains(out, created.ID) || strings.Contains(out, "human") {
		t.Fatalf("list: %d %s", code, out)
	}
	if code, out, _ := cli("keys", "show", created.ID); code != 0 || !strings.Contains(out, "storage:read") || strings.Contains(out, created.Key) {
		t.Fatalf("show: %d %s", code, out)
	}
	// A test key at a live node is refused: exit 1.
	if code, out, _ := cli("verify", created.Key); code != 1 || !strings.Contains(out, "unauthorized") {
		t.Fatalf("verify test key at live node: %d %s", code, out)
	}
	if code, out, _ := cli("keys", "revoke", created.ID, "--reason", "rotated"); code != 0 || !strings.Contains(out, "revoked") {
		t.Fatalf("revoke: %d %s", code, out)
	}
	if code, _, errOut := cli("keys", "revoke", created.ID); code != 1 || !strings.Contains(errOut, "already_revoked") {
		t.Fatalf("revoke twice: %d %s", code, errOut)
	}
	if code, out, _ := cli("keys", "events", created.ID); code != 0 || !strings.Contains(out, "KeyRevoked") || !strings.Contains(out, "rotated") {
		t.Fatalf("events: %d %s", code, out)
	}
	if code, _, errOut := cli("keys", "show"); code != 2 || !strings.Contains(errOut, "one key id") {
		t.Fatalf("usage error: %d %s", code, errOut)
	}
	if code, _, errOut := cli("keys", "list", "--token", "not-the-token-at-all"); code != 1 || !strings.Contains(errOut, "unauthorized") {
		t.Fatalf("bad token: %d %s", code, errOut)
	}
	waitFor(t, 5*time.Second, "the node in its own registry", func() bool {
		code, out, _ := cli("nodes")
		return code == 0 && strings.Contains(out, "e2e") && strings.Contains(out, "admin")
	})
	var out2, err2 bytes.Buffer
	if code := run(ctx, []string{"bogus"}, &out2, &err2); code != 2 {
		t.Fatalf("unknown command exit %d", code)
	}
}
