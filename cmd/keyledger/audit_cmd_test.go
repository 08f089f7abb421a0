package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/keyledger/keyledger/analytics/analyticstest"
	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/http/openapitest"
	"github.com/keyledger/keyledger/merkle"
	"github.com/keyledger/keyledger/node"
	"github.com/keyledger/keyledger/node/nodetest"
	"golang.org/x/mod/sumdb/tlog"
)

// TestCLI_audit proves a real node's ledger with the CLI, as a security
// team would: save a checkpoint, verify the ledger against it, its
// signatures and ClickHouse's audit rows; then edits a ClickHouse row and
// watches the verification fail at that event.
func TestCLI_audit(t *testing.T) {
	addr := analyticstest.Addr(t)
	db := analyticstest.MustTempDatabase(t, addr)
	dsn := analyticstest.DSN(addr, db)
	dir := t.TempDir()
	const token = "cli-audit-token-0123456789abcdef"
	cfg := nodetest.Config(dir, io.Discard)
	cfg.Name, cfg.AdminToken, cfg.ClickHouse = "audit-1", token, dsn
	cfg.CheckpointEvery, cfg.CheckpointInterval = 1, time.Millisecond
	n := nodetest.MustOpenConfig(t, cfg)
	c := &nodetest.Caller{T: t, Base: n.URL(), Token: token}
	nodetest.WaitReady(t, c)
	prev := httpClient.Transport
	httpClient.Transport = openapitest.Transport(t, http.DefaultTransport)
	t.Cleanup(func() { httpClient.Transport = prev })
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cli := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(ctx, append(args, "--url", n.URL(), "--token", token), &out, &errb)
		return code, out.String(), errb.String()
	}

	var ids []string
	for i := range 6 {
		code, _, body := c.Call("POST", "/v1/keys", token, fmt.Sprintf(`{"name":"k%d","owner":"acme","environment":"live"}`, i))
		var k struct{ ID string }
		if code != 201 || json.Unmarshal(body, &k) != nil {
			t.Fatalf("create: %d %s", code, body)
		}
		ids = append(ids, k.ID)
	}
	for _, id := range ids[:2] {
		if code, _, body := c.Call("POST", "/v1/keys/"+id+"/revoke", token, `{"reason":"rotated"}`); code != 200 {
			t.Fatalf("revoke: %d %s", code, body)
		}
	}
	const nEvents = 8
	var cp struct {
		Size int64
		Root string
		Note string
	}
	nodetest.WaitFor(t, 20*time.Second, "a checkpoint of every event", func() bool {
		code, _, body := c.Call("GET", "/v1/audit/checkpoint", token, "")
		return code == 200 && json.Unmarshal(body, &cp) == nil && cp.Size == nEvents
	})
	conn := mustClickHouse(t, dsn)
	nodetest.WaitFor(t, 30*time.Second, "every event in ClickHouse", func() bool {
		var rows uint64
		err := conn.QueryRow(ctx, "SELECT count() FROM key_events FINAL WHERE leaf_hash != ''").Scan(&rows)
		return err == nil && rows == nEvents
	})
	trusted := filepath.Join(dir, "credentials", node.TrustedSignersFile)
	witnesses := filepath.Join(dir, "credentials", node.WitnessesFile)
	saved := filepath.Join(t.TempDir(), "checkpoint.note")

	t.Run("audit checkpoint saves the signed note", func(t *testing.T) {
		code, out, errOut := cli("audit", "checkpoint", "--out", saved)
		b, _ := os.ReadFile(saved)
		if code != 0 || string(b) != cp.Note || out != cp.Note {
			t.Fatalf("%d %q %s", code, out, errOut)
		}
	})
	t.Run("audit verify proves the ledger, the checkpoint and ClickHouse's rows", func(t *testing.T) {
		code, out, errOut := cli("audit", "verify", "--trusted-signers", trusted, "--witnesses", witnesses,
			"--since-checkpoint", saved, "--clickhouse", dsn, "--json")
		var rep struct {
			audit.Report
			ClickHouse struct{ Rows, Compared int }
		}
		if code != 0 || json.Unmarshal([]byte(out), &rep) != nil || !rep.OK || rep.Events != nEvents || rep.CheckpointsVerified < 1 ||
			rep.Since == nil || !rep.Since.OK || rep.ClickHouse.Compared != nEvents || rep.KeysFromBundle {
			t.Fatalf("%d %s %s", code, out, errOut)
		}
		code, out, _ = cli("audit", "verify", "--trusted-signers", trusted)
		if code != 0 || !strings.HasPrefix(out, "audit OK: keyledger/KEYS") {
			t.Fatalf("human verdict: %d %s", code, out)
		}
	})
	t.Run("audit export writes a bundle that verifies offline", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "bundle.ndjson")
		if code, _, errOut := cli("audit", "export", "--out", file); code != 0 {
			t.Fatalf("export: %s", errOut)
		}
		code, out, _ := cli("audit", "verify", "--file", file, "--trusted-signers", trusted, "--since-checkpoint", saved)
		if code != 0 || !strings.Contains(out, "your checkpoint of 8 events: extended") {
			t.Fatalf("%d %s", code, out)
		}
	})
	t.Run("a key's events prove their inclusion in the checkpoint", func(t *testing.T) {
		code, _, body := c.Call("GET", "/v1/keys/"+ids[0]+"/events?proof=true", token, "")
		var h struct {
			Events []struct {
				Seq   uint64
				Proof struct {
					Stored    []byte
					LeafIndex int64 `json:"leaf_index"`
					Proof     []string
				}
			}
			Checkpoint struct {
				Size int64
				Root string
			}
		}
		if code != 200 || json.Unmarshal(body, &h) != nil || len(h.Events) != 2 {
			t.Fatalf("%d %s", code, body)
		}
		root := mustHash(t, h.Checkpoint.Root)
		for _, e := range h.Events {
			var p tlog.RecordProof
			for _, s := range e.Proof.Proof {
				p = append(p, mustHash(t, s))
			}
			if err := tlog.CheckRecord(p, h.Checkpoint.Size, root, int64(e.Seq)-1, tlog.RecordHash(e.Proof.Stored)); err != nil {
				t.Fatalf("event %d: %v", e.Seq, err)
			}
			forged := bytes.Replace(e.Proof.Stored, []byte("rotated"), []byte("expired"), 1)
			if tlog.CheckRecord(p, h.Checkpoint.Size, root, int64(e.Seq)-1, tlog.RecordHash(forged)) == nil && !bytes.Equal(forged, e.Proof.Stored) {
				t.Fatalf("an edited event %d proved included", e.Seq)
			}
		}
		if code, _, body := c.Call("GET", "/v1/keys/"+ids[0]+"/events?proof=maybe", token, ""); code != 400 {
			t.Fatalf("proof=maybe: %d %s", code, body)
		}
	})
	t.Run("consistency proofs verify against roots computed from the events", func(t *testing.T) {
		// The roots of the smaller trees, from the events themselves.
		body, err := (&clientFlags{url: n.URL(), token: token}).exportBytes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var leaves [][]byte
		err = audit.ReadBundle(bytes.NewReader(body), func(audit.BundleHeader) error { return nil },
			func(e audit.BundleEvent) error { leaves = append(leaves, e.Data); return nil },
			func(audit.BundleCheckpoint) error { return nil })
		if err != nil || len(leaves) != nEvents {
			t.Fatalf("%d events, %v", len(leaves), err)
		}
		tree := &merkle.Tree{}
		for _, l := range leaves {
			tree.Append(l)
		}
		for _, from := range []int64{1, 3, 7, 8} {
			var pr struct{ Proof []string }
			code, _, body := c.Call("GET", fmt.Sprintf("/v1/audit/consistency?from=%d&to=%d", from, cp.Size), token, "")
			if code != 200 || json.Unmarshal(body, &pr) != nil {
				t.Fatalf("%d %s", code, body)
			}
			var p tlog.TreeProof
			for _, s := range pr.Proof {
				p = append(p, mustHash(t, s))
			}
			old, _ := tree.Root(from)
			if err := tlog.CheckTree(p, cp.Size, mustHash(t, cp.Root), from, old); err != nil {
				t.Fatalf("from %d: %v", from, err)
			}
			if bad := tlog.RecordHash([]byte("not the root")); tlog.CheckTree(p, cp.Size, mustHash(t, cp.Root), from, bad) == nil {
				t.Fatalf("from %d: a wrong old root proved consistent", from)
			}
		}
		for _, q := range []string{"from=0&to=3", "from=5&to=3", "to=3", "from=1&to=999"} {
			if code, _, _ := c.Call("GET", "/v1/audit/consistency?"+q, token, ""); code != 400 && code != 404 {
				t.Fatalf("%s: %d", q, code)
			}
		}
	})
	t.Run("attack: an edited ClickHouse audit row", func(t *testing.T) {
		var seq uint64
		if err := conn.QueryRow(ctx, "SELECT stream_seq FROM key_events FINAL WHERE type = 'KeyRevoked' ORDER BY stream_seq LIMIT 1").Scan(&seq); err != nil {
			t.Fatal(err)
		}
		if err := conn.Exec(ctx, fmt.Sprintf("ALTER TABLE key_events UPDATE reason = 'expired' WHERE stream_seq = %d", seq)); err != nil {
			t.Fatal(err)
		}
		nodetest.WaitFor(t, 30*time.Second, "the mutation", func() bool {
			var pending uint64
			err := conn.QueryRow(ctx, "SELECT count() FROM system.mutations WHERE database = ? AND table = 'key_events' AND is_done = 0", db).Scan(&pending)
			return err == nil && pending == 0
		})
		code, out, _ := cli("audit", "verify", "--trusted-signers", trusted, "--clickhouse", dsn, "--json")
		var rep audit.Report
		if code != 1 || json.Unmarshal([]byte(out), &rep) != nil || rep.OK || len(rep.Failures) != 1 ||
			rep.Failures[0].Kind != "clickhouse" || rep.Failures[0].Seq != seq || rep.Failures[0].Expected != "rotated" || rep.Failures[0].Found != "expired" {
			t.Fatalf("%d %s", code, out)
		}
		code, out, _ = cli("audit", "verify", "--trusted-signers", trusted, "--clickhouse", dsn)
		if code != 1 || !strings.Contains(out, fmt.Sprintf("ClickHouse's audit row of event %d differs from the ledger in reason (expected rotated, found expired)", seq)) {
			t.Fatalf("%d %s", code, out)
		}
	})
	t.Run("a checkpoint signed by a key the auditor does not trust fails", func(t *testing.T) {
		_, vkey, _ := events.GenerateSigningKey(strings.NewReader(strings.Repeat("x", 64)), "someone-else")
		other := filepath.Join(t.TempDir(), "trusted")
		os.WriteFile(other, []byte(vkey+"\n"), 0o644)
		code, out, _ := cli("audit", "verify", "--trusted-signers", other, "--json")
		var rep audit.Report
		if code != 1 || json.Unmarshal([]byte(out), &rep) != nil || rep.RefusedCount != nEvents || rep.CheckpointsVerified != 0 {
			t.Fatalf("%d %s", code, out)
		}
	})
}

func mustHash(tb testing.TB, s string) tlog.Hash {
	tb.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != tlog.HashSize {
		tb.Fatalf("not a hash: %q", s)
	}
	var h tlog.Hash
	copy(h[:], b)
	return h
}

func mustClickHouse(tb testing.TB, dsn string) clickhouse.Conn {
	tb.Helper()
	opts, err := clickhouse.ParseDSN(dsn)
	if err != nil {
		tb.Fatal(err)
	}
	conn, err := clickhouse.Open(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// exportBytes reads the node's whole bundle.
func (c *clientFlags) exportBytes(ctx context.Context) ([]byte, error) {
	body, err := openExport(ctx, c)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	return io.ReadAll(body)
}
