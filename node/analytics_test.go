package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/analytics"
	"github.com/keyledger/keyledger/analytics/analyticstest"
	"github.com/keyledger/keyledger/client"
	"github.com/keyledger/keyledger/node/nodetest"
)

// The whole product on one node: keys verified over HTTP land in
// ClickHouse, where usage, quota, audit and alerts answer from them.
func TestEndToEnd_analytics(t *testing.T) {
	addr := analyticstest.Addr(t)
	db := analyticstest.MustTempDatabase(t, addr)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const token = "e2e-analytics-token-0123456789"
	cfg := nodetest.Config(dir, io.Discard)
	cfg.Name, cfg.AdminToken, cfg.ClickHouse = "e2e-a", token, analyticstest.DSN(addr, db)
	cfg.DetectInterval, cfg.RetentionMonths = 200*time.Millisecond, 13
	n := nodetest.MustOpenConfig(t, cfg)
	c := &nodetest.Caller{T: t, Base: n.URL(), Token: token}
	nodetest.WaitReady(t, c)

	create := func(env string) createdKey {
		code, _, body := c.Call("POST", "/v1/keys", token, `{"name":"a","environment":"`+env+`","owner":"acme","permissions":["workflows:read"]}`)
		var k createdKey
		if code != 201 || json.Unmarshal(body, &k) != nil {
			t.Fatalf("create: %d %s", code, body)
		}
		return k
	}
	live, test := create("live"), create("test")
	authz := func(key, perm, ip string) int {
		code, _, _ := c.Call("GET", "/v1/authz", key, "", "X-Required-Permission", perm, "X-Forwarded-For", ip)
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
	if code, _, _ := c.Call("POST", "/v1/keys/"+live.ID+"/revoke", token, `{"reason":"rotated"}`); code != 200 {
		t.Fatal("revoke failed")
	}
	if code := authz(live.Key, "workflows:read", "198.51.100.7"); code != 401 {
		t.Fatalf("revoked: %d", code)
	}

	month := time.Now().UTC().Format("2006-01")
	nodetest.WaitFor(t, 30*time.Second, "quota of 3 valid live verifications", func() bool {
		code, _, body := c.Call("GET", "/v1/quota?owner=acme&month="+month, token, "")
		return code == 200 && strings.Contains(string(body), `"used":3`)
	})
	from := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	to := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	nodetest.WaitFor(t, 10*time.Second, "usage by outcome", func() bool {
		code, _, body := c.Call("GET", "/v1/usage?key_id="+live.ID+"&interval=day&from="+from+"&to="+to, token, "")
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
	nodetest.WaitFor(t, 10*time.Second, "audit trail", func() bool {
		code, _, body := c.Call("GET", "/v1/audit?key_id="+live.ID, token, "")
		return code == 200 && strings.Contains(string(body), `"KeyCreated"`) && strings.Contains(string(body), `"reason":"rotated"`) &&
			strings.Contains(string(body), `"actor_ip":"127.0.0.1"`)
	})
	nodetest.WaitFor(t, 20*time.Second, "a revoked_key_used alert", func() bool {
		code, _, body := c.Call("GET", "/v1/alerts?rule=revoked_key_used&from="+from+"&to="+to, token, "")
		return code == 200 && strings.Contains(string(body), live.ID) && strings.Contains(string(body), "198.51.100.7")
	})

	// Key listings carry last use from analytics.
	nodetest.WaitFor(t, 10*time.Second, "last_used_at and uses_30d on the key", func() bool {
		code, _, body := c.Call("GET", "/v1/keys?owner=acme", token, "")
		return code == 200 && strings.Contains(string(body), `"uses_30d":3`) && strings.Contains(string(body), `"last_used_at":"`)
	})

	// The library client reads the same endpoints.
	cl := &client.Client{BaseURL: n.URL(), Token: token}
	if q, err := cl.Quota(ctx, "acme", ""); err != nil || q.Used != 3 {
		t.Fatalf("client quota: %+v %v", q, err)
	}
	if evs, err := cl.Audit(ctx, analytics.AuditQuery{KeyID: live.ID, Type: "revoked"}); err != nil || len(evs) != 1 || evs[0].Reason != "rotated" {
		t.Fatalf("client audit: %+v %v", evs, err)
	}
	pts, err := cl.Usage(ctx, analytics.UsageQuery{KeyID: live.ID, Interval: analytics.Day})
	valid := uint64(0)
	for _, p := range pts {
		if p.Outcome == "valid" {
			valid += p.Count
		}
	}
	if err != nil || valid != 3 {
		t.Fatalf("client usage: %+v %v", pts, err)
	}
	if al, err := cl.Alerts(ctx, analytics.AlertQuery{Rule: analytics.RuleRevokedKeyUsed, KeyID: live.ID}); err != nil || len(al) == 0 || al[0].IP != "198.51.100.7" {
		t.Fatalf("client alerts: %+v %v", al, err)
	}
	if _, err := (&client.Client{BaseURL: n.URL(), Token: "not-the-token-at-all"}).Quota(ctx, "acme", ""); !errors.Is(err, keyledger.ErrUnauthorized) {
		t.Fatalf("client with a wrong token: %v", err)
	}
	// Bad input gets the envelope.
	if code, _, body := c.Call("GET", "/v1/usage?key_id=x&from=yesterday", token, ""); code != 400 || !strings.Contains(string(body), "invalid_request") {
		t.Fatalf("bad from: %d %s", code, body)
	}
}

// Without --clickhouse the analytics endpoints say so.
func TestNode_analyticsOff(t *testing.T) {
	n := nodetest.MustOpen(t, t.TempDir(), io.Discard)
	tok, _ := os.ReadFile(n.Config().DataDir + "/admin-token")
	c := &nodetest.Caller{T: t, Base: n.URL()}
	code, _, body := c.Call("GET", "/v1/usage?owner=a", strings.TrimSpace(string(tok)), "")
	if code != 503 || !strings.Contains(string(body), "--clickhouse") {
		t.Fatalf("%d %s", code, body)
	}
}

// TestNode_analyticsDegraded: ClickHouse not answering at start does not
// stop a node. Before, `serve --clickhouse` failed to start. Now the node
// verifies, its analytics endpoints answer 503 saying analytics is
// degraded, and analytics comes up by itself once ClickHouse answers.
func TestNode_analyticsDegraded(t *testing.T) {
	addr := analyticstest.Addr(t)
	db := analyticstest.MustTempDatabase(t, addr)
	// ClickHouse is reached through a port where nothing listens yet.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	late := l.Addr().String()
	l.Close()

	const token = "degraded-token-0123456789"
	cfg := nodetest.Config(t.TempDir(), io.Discard)
	cfg.Name, cfg.AdminToken, cfg.ClickHouse = "deg", token, analyticstest.DSN(late, db)
	cfg.DetectInterval, cfg.RetentionMonths = -1, -1
	n := nodetest.MustOpenConfig(t, cfg)
	c := &nodetest.Caller{T: t, Base: n.URL(), Token: token}
	nodetest.WaitReady(t, c)
	code, _, body := c.Call("POST", "/v1/keys", token, `{"name":"d","environment":"live"}`)
	if code != 201 {
		t.Fatalf("create with ClickHouse down: %d %s", code, body)
	}
	secret := between(string(body), `"key":"`, `"`)
	if code, _, _ := c.Call("GET", "/v1/authz", secret, ""); code != 200 {
		t.Fatalf("verify with ClickHouse down: %d", code)
	}
	if code, _, body := c.Call("GET", "/v1/audit", token, ""); code != 503 || !strings.Contains(string(body), "degraded") {
		t.Fatalf("audit with ClickHouse down: %d %s, want 503 degraded", code, body)
	}

	// ClickHouse "returns": a forwarder on that port to the real one.
	fwd, err := net.Listen("tcp", late)
	if err != nil {
		t.Fatal(err)
	}
	defer fwd.Close()
	go func() {
		for {
			in, err := fwd.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", addr)
			if err != nil {
				in.Close()
				continue
			}
			go func() { io.Copy(out, in); out.Close() }()
			go func() { io.Copy(in, out); in.Close() }()
		}
	}()
	nodetest.WaitFor(t, 60*time.Second, "analytics up, with the key's creation in the audit", func() bool {
		code, _, body := c.Call("GET", "/v1/audit", token, "")
		return code == 200 && strings.Contains(string(body), "KeyCreated")
	})
}
