package node_test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/analytics/analyticstest"
	"github.com/keyledger/keyledger/github/githubtest"
	"github.com/keyledger/keyledger/node"
	"github.com/keyledger/keyledger/node/nodetest"
)

const gitlabToken = "gitlab-revocation-token-0123456789"

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

type feedback struct {
	TokenHash string `json:"token_hash"`
	TokenType string `json:"token_type"`
	Label     string `json:"label"`
}

// Leak response end to end on a 3-node R3 cluster: GitHub's signed
// report, GitLab's revocation API and the generic endpoint each revoke a
// reported key on every node before they answer; forged reports do
// nothing; replays change nothing; no secret reaches a log line.
func TestLeaks_cluster(t *testing.T) {
	logs := &nodetest.SyncBuffer{}
	dir := t.TempDir()
	gh := githubtest.NewSigner(t, "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a")
	keyFile := gh.WriteFile(t, dir)
	c := MustStartClusterWith(t, 3, dir, slog.New(slog.NewTextHandler(logs, nil)), func(cfgs []node.Config) {
		for i := range cfgs {
			cfgs[i].GitHubScanningKeys, cfgs[i].GitLabRevocationToken = keyFile, gitlabToken
		}
	})
	n0 := caller(t, c, 0)
	var secrets []string
	mk := func(body string) createdKey {
		t.Helper()
		code, _, b := n0.Call("POST", "/v1/keys", clusterToken, body)
		var k createdKey
		if code != 201 || json.Unmarshal(b, &k) != nil {
			t.Fatalf("create: %d %s", code, b)
		}
		secrets = append(secrets, k.Key)
		return k
	}
	authzEverywhere := func(key string, want int) {
		t.Helper()
		for i := range c.Nodes {
			if code, _, _ := caller(t, c, i).Call("GET", "/v1/authz", key, ""); code != want {
				t.Fatalf("node %d: authz %d, want %d", i+1, code, want)
			}
		}
	}
	a := mk(`{"name":"leaky","environment":"live","owner":"acme"}`)
	b := mk(`{"name":"gitlab-found","environment":"test","owner":"acme"}`)
	authzEverywhere(a.Key, 200)

	format, _ := keyledger.NewFormat(keyledger.DefaultPrefix)
	unknown, _ := format.New(keyledger.EnvLive, rand.NewChaCha8([32]byte{'u'}))
	lookAlike := a.Key[:len(a.Key)-1] + map[bool]string{true: "B", false: "A"}[strings.HasSuffix(a.Key, "A")]
	secrets = append(secrets, unknown, lookAlike)
	report := func(tokens ...string) []byte {
		var ms []map[string]string
		for _, tok := range tokens {
			ms = append(ms, map[string]string{"token": tok, "type": "keyledger_live_key", "url": "https://github.com/acme/app/blob/abc123/config.go", "source": "content"})
		}
		body, _ := json.Marshal(ms)
		return body
	}
	postGitHub := func(body []byte, keyID, sig string) (int, []byte) {
		t.Helper()
		code, _, out := n0.Call("POST", "/v1/leaks/github", "", string(body), "Github-Public-Key-Identifier", keyID, "Github-Public-Key-Signature", sig)
		return code, out
	}

	t.Run("forged GitHub reports do nothing", func(t *testing.T) {
		body := report(a.Key)
		other := githubtest.NewSigner(t, gh.ID)
		for _, tc := range []struct {
			name       string
			body       []byte
			keyID, sig string
		}{
			{"unsigned", body, "", ""},
			{"unknown key id", body, "another-key", gh.Sign(t, body)},
			{"signed by another key", body, gh.ID, other.Sign(t, body)},
			{"tampered body", []byte(strings.Replace(string(body), "config.go", "other.go", 1)), gh.ID, gh.Sign(t, body)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if code, out := postGitHub(tc.body, tc.keyID, tc.sig); code != 401 {
					t.Fatalf("%d %s, want 401", code, out)
				}
			})
		}
		authzEverywhere(a.Key, 200)
	})

	t.Run("GitHub", func(t *testing.T) {
		body := report(a.Key, lookAlike, unknown)
		code, out := postGitHub(body, gh.ID, gh.Sign(t, body))
		if code != 200 {
			t.Fatalf("report: %d %s", code, out)
		}
		// When the endpoint answers, every node refuses the key.
		authzEverywhere(a.Key, 401)
		var fb []feedback
		if err := json.Unmarshal(out, &fb); err != nil || len(fb) != 3 {
			t.Fatalf("feedback %s: %v", out, err)
		}
		for i, want := range []struct{ tok, label string }{{a.Key, "true_positive"}, {lookAlike, "false_positive"}, {unknown, "false_positive"}} {
			if fb[i].TokenHash != sha(want.tok) || fb[i].Label != want.label || fb[i].TokenType != "keyledger_live_key" {
				t.Errorf("feedback %d = %+v, want %s for %s…", i, fb[i], want.label, sha(want.tok)[:8])
			}
		}
		// The same report again: the same answer, nothing revoked or
		// recorded twice.
		code, again := postGitHub(body, gh.ID, gh.Sign(t, body))
		if code != 200 || string(again) != string(out) {
			t.Fatalf("replay: %d %s, want %s", code, again, out)
		}
		_, _, hist := n0.Call("GET", "/v1/keys/"+a.ID+"/events", clusterToken, "")
		if strings.Count(string(hist), `"KeyRevoked"`) != 1 || strings.Count(string(hist), `"KeyLeakReported"`) != 1 ||
			!strings.Contains(string(hist), `leaked: github https://github.com/acme/app/blob/abc123/config.go`) ||
			!strings.Contains(string(hist), `"actor":"leak-report:github"`) {
			t.Fatalf("history after a report and its replay: %s", hist)
		}
	})

	t.Run("GitLab", func(t *testing.T) {
		if code, _, _ := n0.Call("GET", "/v1/leaks/gitlab/revocable_token_types", "not-the-token-0123456789", ""); code != 401 {
			t.Fatalf("types without the token: %d", code)
		}
		code, _, out := n0.Call("GET", "/v1/leaks/gitlab/revocable_token_types", gitlabToken, "")
		if code != 200 || !strings.Contains(string(out), "keyledger_test_key") {
			t.Fatalf("types: %d %s", code, out)
		}
		req := fmt.Sprintf(`[{"type":"keyledger_test_key","token":%q,"location":"https://gitlab.example/acme/app/-/blob/main/.env"}]`, b.Key)
		if code, _, _ := n0.Call("POST", "/v1/leaks/gitlab/revoke_tokens", clusterToken, req); code != 401 {
			t.Fatalf("revoke with the admin token instead of GitLab's: %d", code)
		}
		for range 2 { // idempotent
			if code, _, out := n0.Call("POST", "/v1/leaks/gitlab/revoke_tokens", gitlabToken, req); code != 204 {
				t.Fatalf("revoke_tokens: %d %s", code, out)
			}
			authzEverywhere(b.Key, 401)
		}
	})

	t.Run("generic, and 1,000 tokens in one report", func(t *testing.T) {
		rep := mk(`{"name":"scanner","environment":"live","permissions":["leaks:report"]}`)
		plain := mk(`{"name":"plain","environment":"live"}`)
		var toks []string
		var real []createdKey
		for i := range 20 {
			k := mk(fmt.Sprintf(`{"name":"batch-%d","environment":"live","owner":"globex"}`, i))
			real = append(real, k)
			toks = append(toks, k.Key)
		}
		rng := rand.NewChaCha8([32]byte{'j'})
		for len(toks) < 1000 {
			junk, _ := format.New(keyledger.EnvLive, rng)
			toks = append(toks, junk)
		}
		body := `{"source":"ci-scanner","tokens":[`
		for i, tok := range toks {
			if i > 0 {
				body += ","
			}
			body += fmt.Sprintf(`{"token":%q,"url":"https://ci.example/job/%d"}`, tok, i)
		}
		body += "]}"
		if code, _, _ := n0.Call("POST", "/v1/leaks", plain.Key, body); code != 401 {
			t.Fatalf("a key without leaks:report: %d", code)
		}
		start := time.Now()
		code, _, out := n0.Call("POST", "/v1/leaks", rep.Key, body)
		took := time.Since(start)
		if code != 200 {
			t.Fatalf("report: %d %s", code, out)
		}
		var res struct {
			Results []struct {
				TokenHash string `json:"token_hash"`
				Label     string `json:"label"`
				KeyID     string `json:"key_id"`
				Action    string `json:"action"`
			} `json:"results"`
		}
		if err := json.Unmarshal(out, &res); err != nil || len(res.Results) != 1000 {
			t.Fatalf("results: %v (%d)", err, len(res.Results))
		}
		for i, r := range res.Results {
			wantLabel := "false_positive"
			if i < len(real) {
				wantLabel = "true_positive"
				if r.KeyID != real[i].ID || r.Action != "revoked" {
					t.Errorf("token %d: %+v", i, r)
				}
			}
			if r.Label != wantLabel || r.TokenHash != sha(toks[i]) {
				t.Errorf("token %d: label %s, want %s", i, r.Label, wantLabel)
			}
		}
		for _, k := range real[:3] {
			authzEverywhere(k.Key, 401)
		}
		t.Logf("1,000 tokens (20 real) answered in %v", took.Round(time.Millisecond))
		// The scanner's key still works as a reporter, and only as one.
		if code, _, _ := n0.Call("GET", "/v1/keys", rep.Key, ""); code != 401 {
			t.Fatalf("a leaks:report key listed keys: %d", code)
		}
	})

	t.Run("size limit", func(t *testing.T) {
		big := `{"source":"x","tokens":[{"token":"` + strings.Repeat("a", 600<<10) + `"}]}`
		if code, _, out := n0.Call("POST", "/v1/leaks", clusterToken, big); code != 413 || !strings.Contains(string(out), "body_too_large") {
			t.Fatalf("a 600 KiB report: %d %s, want 413", code, out)
		}
		// 10 MB: refused on its Content-Length, before a byte of it is
		// read.
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(c.Nodes[0].URL(), "http://"), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "POST /v1/leaks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", clusterToken, 10<<20)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 413 {
			t.Fatalf("a 10 MB report: %d, want 413", resp.StatusCode)
		}
	})

	for _, s := range secrets {
		if strings.Contains(logs.String(), s) {
			t.Fatalf("a secret is in the logs")
		}
	}
}

// --leak-action alert records and alerts but leaves the key working; the
// alert key_leaked and the audit row reach ClickHouse.
func TestLeaks_alertOnly(t *testing.T) {
	addr := analyticstest.Addr(t)
	cfg := nodetest.Config(t.TempDir(), &nodetest.SyncBuffer{})
	cfg.AdminToken, cfg.LeakAction = clusterToken, "alert"
	cfg.ClickHouse = analyticstest.DSN(addr, analyticstest.MustTempDatabase(t, addr))
	n := nodetest.MustOpenConfig(t, cfg)
	c := &nodetest.Caller{T: t, Base: n.URL(), Token: clusterToken}
	nodetest.WaitReady(t, c)
	code, _, b := c.Call("POST", "/v1/keys", clusterToken, `{"name":"k","environment":"live"}`)
	var k createdKey
	if code != 201 || json.Unmarshal(b, &k) != nil {
		t.Fatalf("create: %d %s", code, b)
	}
	code, _, out := c.Call("POST", "/v1/leaks", clusterToken, fmt.Sprintf(`{"source":"chat","tokens":[{"token":%q,"url":"https://chat.example/m/1"}]}`, k.Key))
	if code != 200 || !strings.Contains(string(out), `"action":"alerted"`) {
		t.Fatalf("report: %d %s", code, out)
	}
	if code, _, _ := c.Call("GET", "/v1/authz", k.Key, ""); code != 200 {
		t.Fatalf("alert policy revoked the key: %d", code)
	}
	_, _, hist := c.Call("GET", "/v1/keys/"+k.ID+"/events", clusterToken, "")
	if !strings.Contains(string(hist), `"KeyLeakReported"`) || !strings.Contains(string(hist), `"action":"alerted"`) {
		t.Fatalf("history: %s", hist)
	}
	nodetest.WaitFor(t, 30*time.Second, "the key_leaked alert and the audit row", func() bool {
		_, _, al := c.Call("GET", "/v1/alerts?rule=key_leaked", clusterToken, "")
		_, _, au := c.Call("GET", "/v1/audit?type=leaked&key_id="+k.ID, clusterToken, "")
		return strings.Contains(string(al), k.ID) && strings.Contains(string(al), "https://chat.example/m/1") &&
			strings.Contains(string(au), "leak reported by chat")
	})
}
