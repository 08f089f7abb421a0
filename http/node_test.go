package http_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	keyledger "github.com/keyledger/keyledger"
	khttp "github.com/keyledger/keyledger/http"
	"github.com/keyledger/keyledger/node/nodetest"
)

// The admin API through a whole node on loopback, as keyledger serve
// runs it.

type createdKey struct {
	Key string `json:"key"`
	ID  string `json:"id"`
}

func mustCreateKey(t *testing.T, c *nodetest.Caller, token string, hdr ...string) createdKey {
	t.Helper()
	code, _, b := c.Call("POST", "/v1/keys", token, `{"name":"k","environment":"live"}`, hdr...)
	var k createdKey
	if err := json.Unmarshal(b, &k); err != nil || code != 201 || k.Key == "" {
		t.Fatalf("create: %d %s", code, b)
	}
	return k
}

func envelope(t *testing.T, b []byte) khttp.EnvelopeError {
	t.Helper()
	var env khttp.Envelope
	if err := json.Unmarshal(b, &env); err != nil {
		t.Fatalf("not an error envelope: %s", b)
	}
	return env.Error
}

// An input that parses as a key is never echoed back: the admin API
// answers that it looks like a secret, must be treated as exposed, and was
// not recorded. (GET /v1/keys/<secret> used to answer `no key "fsk_live_…"`.)
func TestAdminAPI_neverEchoesSecrets(t *testing.T) {
	n := nodetest.MustOpen(t, t.TempDir(), io.Discard)
	c := &nodetest.Caller{T: t, Base: n.URL(), Token: n.Token()}
	nodetest.WaitReady(t, c)
	k := mustCreateKey(t, c, n.Token())
	adm := func() createdKey {
		code, _, b := c.Call("POST", "/v1/keys", n.Token(), `{"name":"ops","environment":"live","permissions":["admin"]}`)
		var a createdKey
		if err := json.Unmarshal(b, &a); err != nil || code != 201 {
			t.Fatalf("create admin key: %d %s", code, b)
		}
		return a
	}()
	mistyped := k.Key[:len(k.Key)-1] + map[bool]string{true: "A", false: "B"}[k.Key[len(k.Key)-1] != 'A']

	for _, tc := range []struct {
		name, method, path, token string
	}{
		{"attack: GET /v1/keys/<secret>", "GET", "/v1/keys/" + k.Key, n.Token()},
		{"attack: a mistyped secret", "GET", "/v1/keys/" + mistyped, n.Token()},
		{"attack: revoke by secret", "POST", "/v1/keys/" + k.Key + "/revoke", n.Token()},
		{"attack: roll by secret", "POST", "/v1/keys/" + k.Key + "/roll", n.Token()},
		{"attack: events by secret", "GET", "/v1/keys/" + k.Key + "/events", n.Token()},
		{"attack: the secret as a filter", "GET", "/v1/keys?owner=" + k.Key, n.Token()},
		{"attack: the secret as an unknown parameter", "GET", "/v1/keys?" + k.Key + "=1", n.Token()},
		{"attack: the secret percent-encoded", "GET", "/v1/keys?owner=" + strings.ReplaceAll(k.Key, "_", "%5F"), n.Token()},
		{"attack: the secret to analytics", "GET", "/v1/audit?key_id=" + k.Key, n.Token()},
		{"attack: the secret as a path", "GET", "/" + k.Key, n.Token()},
		{"attack: without a token", "GET", "/v1/keys/" + k.Key, ""},
		{"attack: with an admin key, whose verification records the path", "GET", "/v1/keys/" + k.Key, adm.Key},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, b := c.Call(tc.method, tc.path, tc.token, "")
			if strings.Contains(string(b), k.Key) || strings.Contains(string(b), k.Key[9:25]) || strings.Contains(string(b), mistyped) {
				t.Fatalf("the answer echoes the secret: %d %s", code, b)
			}
			e := envelope(t, b)
			if code != 400 || e.Code != keyledger.Invalid || e.Reason != keyledger.ReasonExposedSecret ||
				!strings.Contains(e.Message, "looks like an API key secret") || !strings.Contains(e.Message, "exposed") ||
				!strings.Contains(e.Message, "did not record") {
				t.Fatalf("got %d %+v", code, e)
			}
		})
	}
	t.Run("what is not a secret is still named", func(t *testing.T) {
		code, _, b := c.Call("GET", "/v1/keys/key_nope", n.Token(), "")
		if e := envelope(t, b); code != 404 || e.Code != keyledger.NotFound || !strings.Contains(e.Message, "key_nope") {
			t.Fatalf("got %d %s", code, b)
		}
	})
	t.Run("forward auth still answers for a client whose path holds its key", func(t *testing.T) {
		if code, _, b := c.Call("GET", "/v1/authz/v2/run?api_key="+k.Key, k.Key, ""); code != 200 {
			t.Fatalf("got %d %s", code, b)
		}
	})
}

// The actor_ip of an admin event is the caller's word only when the caller
// is a trusted proxy.
func TestAdminAPI_actorIP(t *testing.T) {
	for _, tc := range []struct {
		name    string
		trusted []netip.Prefix
		want    string
	}{
		{"a gateway on loopback (the default) names the client", nil, "198.51.100.23"},
		{"attack: a caller that is no trusted proxy names its own address", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, "127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := nodetest.Config(t.TempDir(), io.Discard)
			cfg.TrustedProxies = tc.trusted
			n := nodetest.MustOpenConfig(t, cfg)
			c := &nodetest.Caller{T: t, Base: n.URL(), Token: n.Token()}
			nodetest.WaitReady(t, c)
			k := mustCreateKey(t, c, n.Token(), "X-Forwarded-For", "198.51.100.23")
			code, _, b := c.Call("GET", "/v1/keys/"+k.ID+"/events", n.Token(), "")
			if code != 200 || !strings.Contains(string(b), `"actor_ip":"`+tc.want+`"`) {
				t.Fatalf("events: %d %s", code, b)
			}
		})
	}
}

// With --admin-http, the listener a gateway reaches serves verification
// only: the admin API, analytics and /metrics answer 404 there, whatever
// the credentials, and are served on the admin listener.
func TestNode_adminListener(t *testing.T) {
	cfg := nodetest.Config(t.TempDir(), io.Discard)
	cfg.AdminHTTPAddr = "127.0.0.1:0"
	n := nodetest.MustOpenConfig(t, cfg)
	if n.AdminURL() == n.URL() {
		t.Fatalf("one listener for both: %s", n.URL())
	}
	gw := &nodetest.Caller{T: t, Base: n.URL()}
	adm := &nodetest.Caller{T: t, Base: n.AdminURL()}
	nodetest.WaitReady(t, gw)
	nodetest.WaitReady(t, adm)
	k := mustCreateKey(t, adm, n.Token())

	for _, tc := range []struct {
		name         string
		c            *nodetest.Caller
		method, path string
		token        string
		status       int
	}{
		{"attack: the admin API on the gateways' listener", gw, "GET", "/v1/keys", n.Token(), 404},
		{"attack: a create on the gateways' listener", gw, "POST", "/v1/keys", n.Token(), 404},
		{"attack: a revoke on the gateways' listener", gw, "POST", "/v1/keys/" + k.ID + "/revoke", n.Token(), 404},
		{"attack: the fleet on the gateways' listener", gw, "GET", "/v1/nodes", n.Token(), 404},
		{"attack: analytics on the gateways' listener", gw, "GET", "/v1/usage", n.Token(), 404},
		{"attack: metrics on the gateways' listener", gw, "GET", "/metrics", "", 404},
		{"forward auth on the gateways' listener", gw, "GET", "/v1/authz", k.Key, 200},
		{"verify on the gateways' listener", gw, "POST", "/v1/verify", "", 200},
		{"healthz on the gateways' listener", gw, "GET", "/healthz", "", 200},
		{"the admin API on its listener", adm, "GET", "/v1/keys/" + k.ID, n.Token(), 200},
		{"the fleet on the admin listener", adm, "GET", "/v1/nodes", n.Token(), 200},
		{"analytics (off) on the admin listener", adm, "GET", "/v1/usage", n.Token(), 503},
		{"metrics on the admin listener", adm, "GET", "/metrics", "", 200},
		{"readyz on the admin listener", adm, "GET", "/readyz", "", 200},
		{"no forward auth on the admin listener", adm, "GET", "/v1/authz", k.Key, 404},
		{"no forward auth below /v1/authz/ on the admin listener", adm, "GET", "/v1/authz/x", k.Key, 404},
		{"no verify on the admin listener", adm, "POST", "/v1/verify", "", 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := ""
			if tc.path == "/v1/verify" {
				body = `{"key":"` + k.Key + `"}`
			} else if tc.method == "POST" {
				body = `{"name":"x","environment":"live"}`
			}
			code, hdr, b := tc.c.Call(tc.method, tc.path, tc.token, body)
			if code != tc.status {
				t.Fatalf("got %d %s, want %d", code, b, tc.status)
			}
			if code == 404 {
				if e := envelope(t, b); e.Code != keyledger.NotFound || hdr.Get("Content-Type") != "application/json" {
					t.Fatalf("404 outside the envelope: %s", b)
				}
			}
		})
	}
	t.Run("one listener by default", func(t *testing.T) {
		n := nodetest.MustOpen(t, t.TempDir(), io.Discard)
		if n.AdminURL() != n.URL() {
			t.Fatalf("AdminURL %s, URL %s", n.AdminURL(), n.URL())
		}
		c := &nodetest.Caller{T: t, Base: n.URL()}
		nodetest.WaitReady(t, c)
		for _, p := range []string{"/metrics", "/v1/nodes"} {
			if code, _, b := c.Call("GET", p, n.Token(), ""); code != http.StatusOK {
				t.Fatalf("%s: %d %s", p, code, b)
			}
		}
	})
}
