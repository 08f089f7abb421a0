package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	keyledger "github.com/keyledger/keyledger"
)

var (
	chOnce sync.Once
	chAddr string
	chErr  error
)

// clickHouseAddr returns the project's ClickHouse: KEYLEDGER_CLICKHOUSE
// (set by scripts/test.sh), else the one scripts/clickhouse.sh starts (and
// installs if needed).
func clickHouseAddr(t *testing.T) string {
	t.Helper()
	chOnce.Do(func() {
		if chAddr = os.Getenv("KEYLEDGER_CLICKHOUSE"); chAddr != "" {
			return
		}
		out, err := exec.Command("../../scripts/clickhouse.sh", "start").CombinedOutput()
		if err != nil {
			chErr = err
			t.Logf("%s", out)
			return
		}
		chAddr = "127.0.0.1:19000"
		if p := os.Getenv("KEYLEDGER_CH_PORT"); p != "" {
			chAddr = "127.0.0.1:" + p
		}
	})
	if chErr != nil {
		t.Fatalf("ClickHouse: %v", chErr)
	}
	return chAddr
}

// MustTempDatabase names a fresh database and drops it when the test ends.
func MustTempDatabase(t *testing.T, addr string) string {
	t.Helper()
	var b [6]byte
	rand.Read(b[:])
	db := "kl_e2e_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, Protocol: clickhouse.Native})
		if err == nil {
			conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db)
			conn.Close()
		}
	})
	return db
}

// The whole product on one node: keys verified over HTTP land in
// ClickHouse, where usage, quota, audit and alerts answer from them.
func TestEndToEnd_analytics(t *testing.T) {
	addr := clickHouseAddr(t)
	db := MustTempDatabase(t, addr)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const token = "e2e-analytics-token-0123456789"
	n, err := openNode(ctx, nodeConfig{
		DataDir: dir, HTTPAddr: "127.0.0.1:0", Environment: keyledger.EnvLive, Prefix: "fsk",
		Permissions: keyledger.DefaultPermissions, TestRateLimit: keyledger.RateLimit{PerSecond: 25, Burst: 50},
		Name: "e2e-a", AdminToken: token, ClickHouse: "clickhouse://" + addr + "/" + db,
		DetectInterval: 200 * time.Millisecond, RetentionMonths: 13,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close(context.Background())
	c := &client{t: t, base: n.URL(), token: token}
	waitReady(t, c)

	create := func(env string) createdKey {
		code, _, body := c.call("POST", "/v1/keys", token, `{"name":"a","environment":"`+env+`","owner":"acme","permissions":["workflows:read"]}`)
		var k createdKey
		if code != 201 || json.Unmarshal(body, &k) != nil {
			t.Fatalf("create: %d %s", code, body)
		}
		return k
	}
	live, test := create("live"), create("test")
	authz := func(key, perm, ip string) int {
		code, _, _ := c.call("GET", "/v1/authz", key, "", "X-Required-Permission", perm, "X-Forwarded-For", ip)
		return code
	}
	for i := 0; i < 3; i++ {
		if code := authz(live.Key, "workflows:read", "203.0.113.1"); code != 200 {
			t.Fatalf("live verify: %d", code)
		}
	}
	if code := authz(live.Key, "storage:write", "203.0.113.1"); code != 403 {
		t.Fatalf("forbidden: %d", code)
	}
	if code := authz(test.Key, "workflows:read", "203.0.113.1"); code != 401 { // test key at a live node
		t.Fatalf("test key at live node: %d", code)
	}
	if code, _, _ := c.call("POST", "/v1/keys/"+live.ID+"/revoke", token, `{"reason":"rotated"}`); code != 200 {
		t.Fatal("revoke failed")
	}
	if code := authz(live.Key, "workflows:read", "198.51.100.7"); code != 401 {
		t.Fatalf("revoked: %d", code)
	}

	month := time.Now().UTC().Format("2006-01")
	waitFor(t, 30*time.Second, "quota of 3 valid live verifications", func() bool {
		code, _, body := c.call("GET", "/v1/quota?owner=acme&month="+month, token, "")
		return code == 200 && strings.Contains(string(body), `"used":3`)
	})
	from := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	to := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	waitFor(t, 10*time.Second, "usage by outcome", func() bool {
		code, _, body := c.call("GET", "/v1/usage?key_id="+live.ID+"&interval=day&from="+from+"&to="+to, token, "")
		var r struct {
			Points []struct {
				Outcome string `json:"outcome"`
				Count   int    `json:"count"`
			} `json:"points"`
		}
		if code != 200 || json.Unmarshal(body, &r) != nil {
			return false
		}
		got := map[string]int{}
		for _, p := range r.Points {
			got[p.Outcome] += p.Count
		}
		return got["valid"] == 3 && got["forbidden"] == 1 && got["revoked"] == 1
	})
	waitFor(t, 10*time.Second, "audit trail", func() bool {
		code, _, body := c.call("GET", "/v1/audit?key_id="+live.ID, token, "")
		return code == 200 && strings.Contains(string(body), `"KeyCreated"`) && strings.Contains(string(body), `"reason":"rotated"`) &&
			strings.Contains(string(body), `"actor_ip":"127.0.0.1"`)
	})
	waitFor(t, 20*time.Second, "a revoked_key_used alert", func() bool {
		code, _, body := c.call("GET", "/v1/alerts?rule=revoked_key_used&from="+from+"&to="+to, token, "")
		return code == 200 && strings.Contains(string(body), live.ID) && strings.Contains(string(body), "198.51.100.7")
	})

	// Key listings carry last use from analytics.
	waitFor(t, 10*time.Second, "last_used_at and uses_30d on the key", func() bool {
		code, _, body := c.call("GET", "/v1/keys?owner=acme", token, "")
		return code == 200 && strings.Contains(string(body), `"uses_30d":3`) && strings.Contains(string(body), `"last_used_at":"`)
	})

	// The CLI reads the same endpoints.
	var out bytes.Buffer
	if code := run(ctx, []string{"quota", "--owner", "acme", "--url", n.URL(), "--token", token}, &out, io.Discard); code != 0 || !strings.Contains(out.String(), "3") {
		t.Fatalf("cli quota: %d %s", code, out.String())
	}
	out.Reset()
	if code := run(ctx, []string{"audit", "--key", live.ID, "--url", n.URL(), "--token", token}, &out, io.Discard); code != 0 || !strings.Contains(out.String(), "KeyRevoked") {
		t.Fatalf("cli audit: %d %s", code, out.String())
	}
	// Bad input gets the envelope.
	if code, _, body := c.call("GET", "/v1/usage?key_id=x&from=yesterday", token, ""); code != 400 || !strings.Contains(string(body), "invalid_request") {
		t.Fatalf("bad from: %d %s", code, body)
	}
}

// Without --clickhouse the analytics endpoints say so.
func TestNode_analyticsOff(t *testing.T) {
	n := MustOpenNode(t, t.TempDir(), io.Discard)
	tok, _ := os.ReadFile(n.cfg.DataDir + "/admin-token")
	c := &client{t: t, base: n.URL()}
	code, _, body := c.call("GET", "/v1/usage?owner=a", strings.TrimSpace(string(tok)), "")
	if code != 503 || !strings.Contains(string(body), "--clickhouse") {
		t.Fatalf("%d %s", code, body)
	}
}
