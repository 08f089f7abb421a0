package node_test

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/analytics/analyticstest"
	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/merkle"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/node"
	"github.com/keyledger/keyledger/node/nodetest"
	"golang.org/x/mod/sumdb/tlog"
)

// A whole node shown a checkpoint its own ledger does not hash to (as a
// split view would show it: a genuinely signed checkpoint of another
// history) fails closed, says why, and raises ledger_divergence.
func TestNode_ledgerDivergence(t *testing.T) {
	addr := analyticstest.Addr(t)
	dir := t.TempDir()
	cfg := nodetest.Config(dir, io.Discard)
	cfg.Name, cfg.ClickHouse = "div-1", analyticstest.DSN(addr, analyticstest.MustTempDatabase(t, addr))
	cfg.DetectInterval = 200 * time.Millisecond
	n := nodetest.MustOpenConfig(t, cfg)
	c := &nodetest.Caller{T: t, Base: n.URL(), Token: n.Token()}
	nodetest.WaitReady(t, c)
	code, _, body := c.Call("POST", "/v1/keys", n.Token(), `{"name":"d","environment":"live"}`)
	var k struct{ Key string }
	if code != 201 || json.Unmarshal(body, &k) != nil {
		t.Fatalf("create: %d %s", code, body)
	}
	if code, _, _ := c.Call("GET", "/v1/authz", k.Key, ""); code != 200 {
		t.Fatalf("authz before: %d", code)
	}

	// The checkpoint of another history, signed with the fleet's key.
	skey, err := os.ReadFile(filepath.Join(dir, "credentials", node.SigningKeyFile("div-1")))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := events.NewSigner(string(skey))
	if err != nil {
		t.Fatal(err)
	}
	other, err := merkle.Checkpoint{Origin: audit.DefaultOrigin, Size: 1, Root: tlog.RecordHash([]byte("another history")),
		Time: time.Now()}.Sign(signer.NoteSigner())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := n.JetStream().Publish(ctx, nats.CheckpointSubject, other); err != nil {
		t.Fatal(err)
	}
	nodetest.WaitFor(t, 20*time.Second, "the node to fail closed", func() bool {
		code, _, body := c.Call("GET", "/readyz", "", "")
		return code == 503 && strings.Contains(string(body), "ledger_divergence")
	})
	if code, _, _ := c.Call("GET", "/v1/authz", k.Key, ""); code != 503 {
		t.Fatalf("authz after the divergence: %d, want 503", code)
	}
	var alerts string
	nodetest.WaitFor(t, 30*time.Second, "the ledger_divergence alert", func() bool {
		code, _, body := c.Call("GET", "/v1/alerts?rule=ledger_divergence", n.Token(), "")
		alerts = string(body)
		return code == 200 && strings.Contains(alerts, `"rule":"ledger_divergence"`) && strings.Contains(alerts, "div-1")
	})
	if code, _, body := c.Call("GET", "/metrics", "", ""); code != 200 || !strings.Contains(string(body), "keyledger_audit_divergences_total 1") ||
		!strings.Contains(string(body), "keyledger_projector_stream_replaced 1") {
		t.Fatalf("metrics: %d", code)
	}
}
