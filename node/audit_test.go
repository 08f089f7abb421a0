package node_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
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
	// Of a size the node has not checkpointed itself (it publishes its
	// first checkpoint as soon as it has an event, the next 1,000 events
	// or a minute later): the node reaches it with the next event.
	other, err := merkle.Checkpoint{Origin: audit.DefaultOrigin, Size: 2, Root: tlog.RecordHash([]byte("another history")),
		Time: time.Now()}.Sign(signer.NoteSigner())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := n.JetStream().Publish(ctx, nats.CheckpointSubject, other); err != nil {
		t.Fatal(err)
	}
	c.Call("POST", "/v1/keys?wait=none", n.Token(), `{"name":"second","environment":"live"}`)
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

// A node that starts without its snapshots replays the ledger on the
// newest signed checkpoint: the events it covers are applied without each
// one's signature check, the table is the same, and the events after it
// are checked one by one.
func TestNode_replayOnCheckpoint(t *testing.T) {
	dir := t.TempDir()
	cfg := nodetest.Config(dir, io.Discard)
	cfg.Name, cfg.CheckpointEvery = "rep-1", 20
	n, err := node.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := &nodetest.Caller{T: t, Base: n.URL(), Token: n.Token()}
	nodetest.WaitReady(t, c)
	var keys []string
	for i := range 30 {
		code, _, body := c.Call("POST", "/v1/keys", n.Token(), `{"name":"r","environment":"live"}`)
		var k struct{ Key, ID string }
		if code != 201 || json.Unmarshal(body, &k) != nil {
			t.Fatalf("create %d: %d %s", i, code, body)
		}
		keys = append(keys, k.Key)
		if i == 3 {
			if code, _, body := c.Call("POST", "/v1/keys/"+k.ID+"/revoke", n.Token(), `{"reason":"r"}`); code != 200 {
				t.Fatalf("revoke: %d %s", code, body)
			}
		}
	}
	nodetest.WaitFor(t, 30*time.Second, "a checkpoint of 20 events or more", func() bool {
		var cp struct{ Size uint64 }
		code, _, body := c.Call("GET", "/v1/audit/checkpoint", n.Token(), "")
		return code == 200 && json.Unmarshal(body, &cp) == nil && cp.Size >= 20
	})
	// Events after it (fewer than --checkpoint-every: no checkpoint
	// covers them).
	for range 3 {
		code, _, body := c.Call("POST", "/v1/keys", n.Token(), `{"name":"after","environment":"live"}`)
		var k struct{ Key string }
		if code != 201 || json.Unmarshal(body, &k) != nil {
			t.Fatalf("create: %d %s", code, body)
		}
		keys = append(keys, k.Key)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// No snapshot, no tree file: a new node's first start.
	if err := os.RemoveAll(filepath.Join(dir, "snapshots")); err != nil {
		t.Fatal(err)
	}
	n2 := nodetest.MustOpenConfig(t, cfg)
	c2 := &nodetest.Caller{T: t, Base: n2.URL(), Token: n2.Token()}
	nodetest.WaitReady(t, c2)
	// The newest checkpoint on AUDIT is what the replay leaned on (the
	// restarted node publishes none of its own: fewer than 20 events
	// and less than a minute since the last).
	ringText, err := os.ReadFile(filepath.Join(dir, "credentials", node.TrustedSignersFile))
	if err != nil {
		t.Fatal(err)
	}
	ring, err := events.ParseKeyring(ringText)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := audit.Newest(context.Background(), n2.JetStream(), audit.DefaultOrigin, ring)
	if err != nil || cp == nil {
		t.Fatalf("newest checkpoint: %v %v", cp, err)
	}
	st := n2.Projector().Stats()
	if st.Vouched != uint64(cp.Size) || st.LastSeq <= uint64(cp.Size) || n2.Projector().Broken() != "" {
		t.Fatalf("stats %+v: want the checkpoint's events vouched for, the later ones checked", st)
	}
	for i, k := range keys {
		want := 200
		if i == 3 {
			want = 401
		}
		if code, _, _ := c2.Call("GET", "/v1/authz", k, ""); code != want {
			t.Fatalf("key %d after the replay: %d, want %d", i, code, want)
		}
	}
}

// A verifier node that starts with an empty data directory comes up from
// the snapshot an admin node published, replaying only the events after
// it, and serves the same answers.
func TestNode_bootstrapFromPublishedSnapshot(t *testing.T) {
	cfgs, err := node.ClusterConfigs(1, t.TempDir(), clusterToken, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	cfgs[0].SnapshotPublishEvery = 50 * time.Millisecond
	a := nodetest.MustOpenConfig(t, cfgs[0])
	c := &nodetest.Caller{T: t, Base: a.URL(), Token: clusterToken}
	nodetest.WaitReady(t, c)
	var keys []string
	for range 20 {
		code, _, body := c.Call("POST", "/v1/keys", clusterToken, `{"name":"b","environment":"live"}`)
		var k struct{ Key string }
		if code != 201 || json.Unmarshal(body, &k) != nil {
			t.Fatalf("create: %d %s", code, body)
		}
		keys = append(keys, k.Key)
	}
	// The snapshot the publisher's next tick finds newer than any it
	// published.
	if _, err := a.Projector().Snapshot(); err != nil {
		t.Fatal(err)
	}
	bucket, err := nats.OpenSnapshots(context.Background(), a.JetStream())
	if err != nil {
		t.Fatal(err)
	}
	nodetest.WaitFor(t, 10*time.Second, "the admin node to publish its snapshot", func() bool {
		names, err := bucket.Names(context.Background(), "manifest-")
		return err == nil && len(names) > 0
	})
	v := nodetest.MustOpenConfig(t, node.Config{
		Role: node.RoleVerifier, DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", Environment: cfgs[0].Environment,
		NATSURL: "nats://" + cfgs[0].NATSListen, Prefix: cfgs[0].Prefix, Permissions: cfgs[0].Permissions,
		TestRateLimit: cfgs[0].TestRateLimit, Name: "v1", Logger: cfgs[0].Logger, Credentials: cfgs[0].Credentials,
	})
	vc := &nodetest.Caller{T: t, Base: v.URL()}
	nodetest.WaitReady(t, vc)
	if st := v.Projector().Stats(); st.Snapshot == 0 {
		t.Fatalf("stats %+v: the verifier replayed instead of loading the published snapshot", st)
	}
	for i, k := range keys {
		if code, _, _ := vc.Call("GET", "/v1/authz", k, ""); code != 200 {
			t.Fatalf("key %d on the bootstrapped verifier: %d", i, code)
		}
	}
}
