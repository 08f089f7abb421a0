package node_test

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/nats/natstest"
	"github.com/keyledger/keyledger/node/nodetest"
)

// A node cut off from NATS fails closed after --max-staleness, and serves
// again by itself once NATS is back.
func TestNode_failsClosedWhenStale(t *testing.T) {
	natsDir := t.TempDir()
	srv := natstest.MustStartIn(t, natsDir, "127.0.0.1:0")
	addr := srv.Server.Addr().(*net.TCPAddr)
	url := srv.Server.ClientURL()

	dir := t.TempDir()
	cfg := nodetest.Config(dir, io.Discard)
	cfg.Name, cfg.NATSURL, cfg.MaxStaleness, cfg.AdminToken = natstest.Admin, url, 300*time.Millisecond, "test-admin-token-0123456789"
	cfg.Credentials = srv.CredsDir
	n := nodetest.MustOpenConfig(t, cfg)
	c := &nodetest.Caller{T: t, Base: n.URL(), Token: "test-admin-token-0123456789"}
	nodetest.WaitReady(t, c)
	code, _, body := c.Call("POST", "/v1/keys", c.Token, `{"name":"s","environment":"live"}`)
	if code != 201 {
		t.Fatalf("create %d %s", code, body)
	}
	secret := between(string(body), `"key":"`, `"`)
	if code, _, _ := c.Call("GET", "/v1/authz", secret, ""); code != 200 {
		t.Fatalf("before outage: %d", code)
	}

	srv.Stop() // NATS goes away
	nodetest.WaitFor(t, 5*time.Second, "503 after max-staleness", func() bool {
		code, _, body := c.Call("GET", "/v1/authz", secret, "")
		return code == 503 && strings.Contains(string(body), `"unavailable"`)
	})
	if code, _, _ := c.Call("GET", "/readyz", "", ""); code != 503 {
		t.Fatalf("readyz while stale: %d", code)
	}

	// NATS comes back on the same port and store.
	natstest.MustStartIn(t, natsDir, addr.String())
	nodetest.WaitFor(t, 15*time.Second, "200 after reconnect", func() bool {
		code, _, _ := c.Call("GET", "/v1/authz", secret, "")
		return code == 200
	})
}

func between(s, a, b string) string {
	i := strings.Index(s, a)
	if i < 0 {
		return ""
	}
	s = s[i+len(a):]
	if j := strings.Index(s, b); j >= 0 {
		return s[:j]
	}
	return s
}
