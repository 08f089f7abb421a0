package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/http/openapitest"
	"github.com/keyledger/keyledger/node/nodetest"
)

func TestCLI(t *testing.T) {
	dir := t.TempDir()
	n := nodetest.MustOpen(t, dir, io.Discard)
	// Every exchange of the CLI is checked against the OpenAPI document.
	prev := httpClient.Transport
	httpClient.Transport = openapitest.Transport(t, http.DefaultTransport)
	t.Cleanup(func() { httpClient.Transport = prev })
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
	t.Run("keys that change", func(t *testing.T) {
		code, out, errOut := cli("keys", "create", "--name", "changing", "--owner", "team-b", "--json")
		var k struct{ Key, ID string }
		if code != 0 || json.Unmarshal([]byte(out), &k) != nil {
			t.Fatalf("create: %d %s %s", code, out, errOut)
		}
		code, out, errOut = cli("keys", "update", k.ID, "--name", "changed", "--permissions", "storage:read",
			"--allow-ip", "203.0.113.0/24", "--allow-ip", "2001:db8::/32", "--meta", "plan=pro", "--reason", "tighten")
		if code != 0 || !strings.Contains(out, "Updated "+k.ID) || !strings.Contains(out, "203.0.113.0/24,2001:db8::/32") || !strings.Contains(out, `{"plan":"pro"}`) {
			t.Fatalf("update: %d %s %s", code, out, errOut)
		}
		if code, out, _ := cli("keys", "update", k.ID, "--meta", "plan=", "--allow-ip", "none"); code != 0 || strings.Contains(out, "203.0.113") || strings.Contains(out, `"plan"`) {
			t.Fatalf("clearing: %d %s", code, out)
		}
		if code, _, errOut := cli("keys", "update", k.ID, "--name", "x", "--if-match", "1"); code != 1 || !strings.Contains(errOut, "revision_mismatch") {
			t.Fatalf("stale --if-match: %d %s", code, errOut)
		}
		if code, out, _ := cli("keys", "disable", k.ID, "--reason", "pause"); code != 0 || !strings.Contains(out, "disabled") {
			t.Fatalf("disable: %d %s", code, out)
		}
		if code, out, _ := cli("verify", k.Key); code != 1 || !strings.Contains(out, "unauthorized") {
			t.Fatalf("verify a disabled key: %d %s", code, out)
		}
		if code, out, _ := cli("keys", "enable", k.ID); code != 0 || !strings.Contains(out, "active") {
			t.Fatalf("enable: %d %s", code, out)
		}
		for i := range 5 {
			cli("keys", "create", "--name", fmt.Sprintf("paged-%d", i), "--owner", "team-c")
		}
		code, out, _ = cli("keys", "list", "--owner", "team-c", "--limit", "2")
		if code != 0 || strings.Count(out, "paged-") != 2 || !strings.Contains(out, "--cursor") {
			t.Fatalf("one page: %d %s", code, out)
		}
		if code, out, _ := cli("keys", "list", "--owner", "team-c", "--limit", "2", "--all"); code != 0 || strings.Count(out, "paged-") != 5 || strings.Contains(out, "--cursor") {
			t.Fatalf("--all: %d %s", code, out)
		}
	})
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
