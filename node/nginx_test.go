package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyledger/keyledger/node/nodetest"
)

// backendSeen is what the API behind nginx received.
type backendSeen struct {
	Method, Path, KeyID, Owner, Env, Authorization string
}

// recordingBackend is the API nginx protects: it records the identity
// headers of every request it gets and answers 200.
type recordingBackend struct {
	mu   sync.Mutex
	seen []backendSeen
}

func (b *recordingBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	b.seen = append(b.seen, backendSeen{r.Method, r.URL.Path, r.Header.Get("X-Key-Id"), r.Header.Get("X-Key-Owner"),
		r.Header.Get("X-Key-Environment"), r.Header.Get("Authorization")})
	b.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"ok":true}`)
}

func (b *recordingBackend) take() []backendSeen {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.seen
	b.seen = nil
	return s
}

// startNginx runs deploy/nginx/keyledger.conf on a free loopback port in front of upstream,
// with keyledger as its auth_request endpoint. nginx is installed by
// `make test` (scripts/nginx.sh install), never by the test: it fails — never
// skips — when nginx is missing or cannot start, and stops nginx when
// the test ends. It returns nginx's base URL.
func startNginx(t *testing.T, keyledgerAddr, upstreamAddr string) string {
	t.Helper()
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(repo, "scripts", "nginx.sh")

	if _, err := exec.LookPath("nginx"); err != nil {
		if _, err := os.Stat("/usr/sbin/nginx"); err != nil {
			t.Fatal("nginx is required for this test: run `make test`, which installs it (scripts/nginx.sh install)")
		}
	}

	// Not t.TempDir: its parents are 0700, and nginx's workers (nobody,
	// since the master runs as root) must reach the temp files under it.
	prefix, err := os.MkdirTemp("", "keyledger-nginx-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(prefix, 0o755); err != nil {
		t.Fatal(err)
	}
	listen := freeLoopbackAddr(t)
	env := append(os.Environ(),
		"KEYLEDGER_NGINX_DIR="+prefix,
		"KEYLEDGER_NGINX_LISTEN="+listen,
		"KEYLEDGER_NGINX_KEYLEDGER="+keyledgerAddr,
		"KEYLEDGER_NGINX_UPSTREAM="+upstreamAddr,
		"KEYLEDGER_NGINX_WAIT=15",
	)
	run := func(ctx context.Context, cmd string) ([]byte, error) {
		c := exec.CommandContext(ctx, script, cmd)
		c.Env = env
		return c.CombinedOutput()
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if out, err := run(ctx, "stop"); err != nil {
			t.Errorf("scripts/nginx.sh stop: %v\n%s", err, out)
		}
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(prefix, "logs", "error.log")); err == nil && len(b) > 0 {
				t.Logf("nginx error.log:\n%s", b)
			}
		}
		os.RemoveAll(prefix)
	})
	sctx, scancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer scancel()
	if out, err := run(sctx, "start"); err != nil {
		t.Fatalf("scripts/nginx.sh start: %v\n%s", err, out)
	}
	return "http://" + listen
}

// freeLoopbackAddr returns a loopback address with a port that was free a
// moment ago.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestNginxAuthRequest runs a real nginx with deploy/nginx/keyledger.conf in
// front of a backend, with a whole keyledger node as its auth_request
// endpoint, and checks what clients and the backend see.
func TestNginxAuthRequest(t *testing.T) {
	dir := t.TempDir()
	n := nodetest.MustOpen(t, dir, io.Discard)
	tok, err := os.ReadFile(filepath.Join(dir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tok))
	c := &nodetest.Caller{T: t, Base: n.URL(), Token: token}
	nodetest.WaitReady(t, c)

	backend := &recordingBackend{}
	api := httptest.NewServer(backend)
	defer api.Close()
	gw := &nodetest.Caller{T: t, Base: startNginx(t, strings.TrimPrefix(n.URL(), "http://"), strings.TrimPrefix(api.URL, "http://"))}

	create := func(body string) (secret, id string) {
		t.Helper()
		code, _, b := c.Call("POST", "/v1/keys", token, body)
		var k struct{ Key, ID string }
		if code != 201 || json.Unmarshal(b, &k) != nil || k.Key == "" {
			t.Fatalf("create %s: %d %s", body, code, b)
		}
		return k.Key, k.ID
	}
	// refusal checks a refusal through nginx: status, JSON envelope byte for
	// byte, no identity for (and no request to) the backend.
	refusal := func(what string, code int, hdr http.Header, body []byte, wantCode int, wantBody string) {
		t.Helper()
		if code != wantCode || string(body) != wantBody {
			t.Fatalf("%s: got %d %q, want %d %q", what, code, body, wantCode, wantBody)
		}
		if ct := hdr.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("%s: Content-Type %q", what, ct)
		}
		if got := backend.take(); len(got) != 0 {
			t.Fatalf("%s: the backend was called: %+v", what, got)
		}
	}
	direct := func(secret, perm string) (int, http.Header, []byte) {
		return c.Call("GET", "/v1/authz", secret, "", "X-Required-Permission", perm)
	}

	// No key: keyledger's 401, with its challenge, exactly once.
	code, hdr, body := gw.Call("GET", "/workflows/42", "", "")
	_, _, want := direct("", "")
	refusal("no key", code, hdr, body, 401, string(want))
	if ch := hdr.Values("Www-Authenticate"); len(ch) != 1 || ch[0] != `Bearer realm="keyledger"` {
		t.Fatalf("no key: WWW-Authenticate %q", ch)
	}
	code, hdr, body = gw.Call("GET", "/workflows/42", "fsk_live_notakeyatall", "")
	refusal("malformed key", code, hdr, body, 401, string(want))

	// A valid key: the backend gets the request with the key's identity,
	// whatever the client claimed, and without the secret.
	secret, id := create(`{"name":"nginx","environment":"live","owner":"acme","permissions":["workflows:read","storage:read"]}`)
	code, _, body = gw.Call("GET", "/workflows/42?x=1", secret, "", "X-Key-Id", "key_forged", "X-Key-Owner", "mallory")
	if code != 200 || string(body) != `{"ok":true}` {
		t.Fatalf("valid key: %d %s", code, body)
	}
	if got := backend.take(); len(got) != 1 || got[0] != (backendSeen{"GET", "/workflows/42", id, "acme", "live", ""}) {
		t.Fatalf("valid key: backend saw %+v, want key %s of acme", got, id)
	}
	// /storage/ needs storage:read to read and storage:write to write.
	if code, _, body := gw.Call("GET", "/storage/a.txt", secret, ""); code != 200 {
		t.Fatalf("storage read: %d %s", code, body)
	}
	if got := backend.take(); len(got) != 1 || got[0].KeyID != id {
		t.Fatalf("storage read: backend saw %+v", got)
	}
	code, hdr, body = gw.Call("PUT", "/storage/a.txt", secret, `{"data":1}`)
	_, _, want = direct(secret, "storage:write")
	refusal("storage write without storage:write", code, hdr, body, 403, string(want))
	if !strings.Contains(string(body), `\"storage:write\"`) {
		t.Fatalf("403 does not name the permission: %s", body)
	}

	// A key lacking the location's permission: 403 naming it.
	storageOnly, _ := create(`{"name":"storage only","environment":"live","owner":"acme","permissions":["storage:read"]}`)
	code, hdr, body = gw.Call("GET", "/workflows/42", storageOnly, "")
	_, _, want = direct(storageOnly, "workflows:read")
	refusal("key without workflows:read", code, hdr, body, 403, string(want))

	// Over its rate limit: keyledger's 429 and Retry-After (which
	// auth_request alone would have turned into a 500).
	limited, _ := create(`{"name":"slow","environment":"live","owner":"acme","rate_limit":{"per_second":0.01,"burst":1}}`)
	if code, _, body := gw.Call("GET", "/workflows/1", limited, ""); code != 200 {
		t.Fatalf("rate-limited key, first request: %d %s", code, body)
	}
	backend.take()
	code, hdr, body = gw.Call("GET", "/workflows/2", limited, "")
	ra := hdr.Get("Retry-After")
	if secs, err := strconv.Atoi(ra); err != nil || secs < 1 || secs > 100 {
		t.Fatalf("429: Retry-After %q", ra)
	}
	rateBody := func(secs string) string {
		return fmt.Sprintf(`{"error":{"code":"rate_limited","message":"rate limit exceeded for this key; retry after %s s"}}`+"\n", secs)
	}
	refusal("over the rate limit", code, hdr, body, 429, rateBody(ra))
	// nginx rebuilds that body: it must be keyledger's own.
	if dcode, dhdr, dbody := direct(limited, ""); dcode != 429 || string(dbody) != rateBody(dhdr.Get("Retry-After")) {
		t.Fatalf("keyledger's own 429 is %d %q: deploy/nginx/keyledger.conf no longer matches it", dcode, dbody)
	}

	// Revoke (default wait), then the very next request is refused.
	if code, _, body := c.Call("POST", "/v1/keys/"+id+"/revoke", token, `{"reason":"nginx test"}`); code != 200 {
		t.Fatalf("revoke: %d %s", code, body)
	}
	code, hdr, body = gw.Call("GET", "/workflows/42", secret, "")
	refusal("revoked key", code, hdr, body, 401, unauthorized+"\n")

	// A test key at this live node: 401.
	testKey, _ := create(`{"name":"sandbox","environment":"test","owner":"acme"}`)
	code, hdr, body = gw.Call("GET", "/workflows/42", testKey, "")
	refusal("test key at a live node", code, hdr, body, 401, unauthorized+"\n")

	// Outside the protected locations: nothing reaches the backend.
	code, hdr, body = gw.Call("GET", "/admin", storageOnly, "")
	refusal("unprotected path", code, hdr, body, 404, `{"error":{"code":"not_found","message":"no such endpoint"}}`+"\n")

	// keyledger gone: fail closed with 503, never a pass.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
	code, hdr, body = gw.Call("GET", "/storage/a.txt", storageOnly, "")
	refusal("keyledger unreachable", code, hdr, body, 503, `{"error":{"code":"unavailable","message":"the key verifier did not answer"}}`+"\n")
}
