package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/node/nodetest"
)

func TestCLI(t *testing.T) {
	dir := t.TempDir()
	n := nodetest.MustOpen(t, dir, io.Discard)
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
	nodetest.WaitFor(t, 5*time.Second, "the node in its own registry", func() bool {
		code, out, _ := cli("nodes")
		return code == 0 && strings.Contains(out, "e2e") && strings.Contains(out, "admin")
	})
	var out2, err2 bytes.Buffer
	if code := run(ctx, []string{"bogus"}, &out2, &err2); code != 2 {
		t.Fatalf("unknown command exit %d", code)
	}
}
