package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/nats/natstest"
)

// A node cut off from NATS fails closed after --max-staleness, and serves
// again by itself once NATS is back.
func TestNode_failsClosedWhenStale(t *testing.T) {
	natsDir := t.TempDir()
	srv := natstest.MustStartIn(t, natsDir, "127.0.0.1:0")
	addr := srv.Server.Addr().(*net.TCPAddr)
	url := srv.Server.ClientURL()

	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := openNode(ctx, nodeConfig{
		DataDir: dir, HTTPAddr: "127.0.0.1:0", Environment: keyledger.EnvLive, Prefix: "fsk",
		Permissions: keyledger.DefaultPermissions, TestRateLimit: keyledger.RateLimit{PerSecond: 25, Burst: 50},
		Name: "stale", NATSURL: url, MaxStaleness: 300 * time.Millisecond, AdminToken: "test-admin-token-0123456789",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close(context.Background())
	c := &client{t: t, base: n.URL(), token: "test-admin-token-0123456789"}
	waitReady(t, c)
	code, _, body := c.call("POST", "/v1/keys", c.token, `{"name":"s","environment":"live"}`)
	if code != 201 {
		t.Fatalf("create %d %s", code, body)
	}
	secret := between(string(body), `"key":"`, `"`)
	if code, _, _ := c.call("GET", "/v1/authz", secret, ""); code != 200 {
		t.Fatalf("before outage: %d", code)
	}

	srv.Stop() // NATS goes away
	waitFor(t, 5*time.Second, "503 after max-staleness", func() bool {
		code, _, body := c.call("GET", "/v1/authz", secret, "")
		return code == 503 && strings.Contains(string(body), `"unavailable"`)
	})
	if code, _, _ := c.call("GET", "/readyz", "", ""); code != 503 {
		t.Fatalf("readyz while stale: %d", code)
	}

	// NATS comes back on the same port and store.
	natstest.MustStartIn(t, natsDir, addr.String())
	waitFor(t, 15*time.Second, "200 after reconnect", func() bool {
		code, _, _ := c.call("GET", "/v1/authz", secret, "")
		return code == 200
	})
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
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
