// Package faults holds fault-injection tests against real keyledger
// processes: a 3-node R3 cluster of the built binary on loopback, with
// processes paused (SIGSTOP) and killed (SIGKILL) the way an operating
// system, a GC pause or a hypervisor does to them. Each test records what
// every node answered and checks it against the product's promises.
package faults

import (
	"encoding/json"
	"flag"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyledger/keyledger/internal/buildtest"
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	buildtest.Cleanup()
	if path := os.Getenv("KEYLEDGER_FAULTS_REPORT"); path != "" {
		reports.mu.Lock()
		os.WriteFile(path, []byte(strings.Join(reports.lines, "\n")+"\n"), 0o644)
		reports.mu.Unlock()
	}
	os.Exit(code)
}

// reports collects each scenario's figures for KEYLEDGER_FAULTS_REPORT.
var reports struct {
	mu    sync.Mutex
	lines []string
}

func addReport(line string) {
	reports.mu.Lock()
	defer reports.mu.Unlock()
	reports.lines = append(reports.lines, line)
}

// TestPausedNodeNeverServesARevokedKey is the fault run's first finding:
// SIGSTOP one node, revoke a key with the default wait, SIGCONT. Before
// the freshness lease the revoke answered "applied_by 2/2" (the silent
// node dropped after 3 s) and the resumed node answered 200 to every
// request with the revoked key until its 1 s timer noticed it was stale.
// Now the revoke counts the paused node, as refusing, only once its lease
// has certainly run out, and the resumed node refuses the key from its
// very first request.
func TestPausedNodeNeverServesARevokedKey(t *testing.T) {
	c := startCluster(t, clusterOptions{lease: 2 * time.Second})
	n1, n3 := c.nodes[0], c.nodes[2]
	code, body := c.do("POST", n1, "/v1/keys", c.token, `{"name":"victim","environment":"live"}`)
	var k struct {
		Key, ID   string
		AppliedBy string `json:"applied_by"`
	}
	if code != 201 || json.Unmarshal(body, &k) != nil || k.AppliedBy != "3/3" {
		t.Fatalf("create: %d %s", code, body)
	}
	if code, _ := c.do("GET", n3, "/v1/authz", k.Key, ""); code != 200 {
		t.Fatalf("n3 before the pause: %d", code)
	}

	c.pause(n3)
	paused := time.Now()
	code, body = c.do("POST", n1, "/v1/keys/"+k.ID+"/revoke", c.token, `{"reason":"leaked"}`)
	var r struct {
		AppliedBy string   `json:"applied_by"`
		Refusing  []string `json:"refusing_nodes"`
		Unproven  []string `json:"unproven_nodes"`
	}
	if code != 200 || json.Unmarshal(body, &r) != nil {
		t.Fatalf("revoke: %d %s", code, body)
	}
	// n3 is proven refusing, and nobody is left unproven. (If n3 led the
	// stream, a survivor whose consumer sat on n3's server may not have
	// applied the revoke in time either; it is then proven refusing too.)
	if !strings.HasSuffix(r.AppliedBy, "/3") || !contains(r.Refusing, "n3") || len(r.Unproven) != 0 {
		t.Fatalf("revoke with n3 paused: %s; want n/3 with n3 proven refusing and nobody unproven", body)
	}
	if since := time.Since(paused); since < 2*time.Second {
		t.Fatalf("n3 counted as refusing %v into its pause, within its 2 s lease", since)
	}

	// The other nodes refuse it too, from the moment the call returned.
	for _, p := range c.nodes[:2] {
		if code, _ := c.do("GET", p, "/v1/authz", k.Key, ""); code == 200 {
			t.Fatalf("%s accepted the key after the revoke returned", p.name)
		}
	}

	c.resume(n3)
	// Every answer n3 gives from now on refuses the key: 503 while it
	// regains its lease, 401 once it has applied the revocation.
	var answers []int
	for resumed := time.Now(); time.Since(resumed) < 30*time.Second; {
		code, _ := c.do("GET", n3, "/v1/authz", k.Key, "")
		if len(answers) == 0 || answers[len(answers)-1] != code {
			answers = append(answers, code)
		}
		if code == 200 {
			t.Fatalf("the resumed node accepted the revoked key (answers so far %v)", answers)
		}
		if code == 401 {
			break
		}
		time.Sleep(20 * time.Millisecond) // pacing the polls
	}
	if answers[len(answers)-1] != 401 {
		t.Fatalf("the resumed node never applied the revocation: %v", answers)
	}
	t.Logf("n3's answers after SIGCONT: %v", answers)
}
