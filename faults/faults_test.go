// Package faults holds fault-injection tests against real keyledger
// processes: a 3-node R3 cluster of the built binary on loopback, with
// processes paused (SIGSTOP) and killed (SIGKILL) the way an operating
// system, a GC pause or a hypervisor does to them. Each test records what
// every node answered and checks it against the product's promises.
package faults

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyledger/keyledger/internal/buildtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	buildtest.Cleanup()
	os.Exit(code)
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// proc is one keyledger node process.
type proc struct {
	name string
	url  string
	cmd  *exec.Cmd
	log  *os.File
}

// cluster is three admin nodes, each with an embedded NATS server, in one
// JetStream cluster (R3, sync always), started from the built binary.
type cluster struct {
	nodes []*proc
	token string
}

const adminToken = "faults-admin-token-0123456789"

func startCluster(t *testing.T, maxStaleness time.Duration) *cluster {
	t.Helper()
	bin := buildtest.Keyledger(t)
	dir := t.TempDir()
	creds := filepath.Join(dir, "credentials")
	if out, err := exec.Command(bin, "creds", "generate", "--dir", creds, "--routes",
		"n1=admin", "n2=admin", "n3=admin", "operator=operator").CombinedOutput(); err != nil {
		t.Fatalf("creds generate: %v\n%s", err, out)
	}
	ports := freePorts(t, 9)
	c := &cluster{token: adminToken}
	for i := range 3 {
		name := fmt.Sprintf("n%d", i+1)
		var routes []string
		for j := range 3 {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[6+j]))
			}
		}
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		p := &proc{name: name, url: fmt.Sprintf("http://127.0.0.1:%d", ports[i]), log: logf}
		p.cmd = exec.Command(bin, "serve", "--node", name, "--data", filepath.Join(dir, name),
			"--http", fmt.Sprintf("127.0.0.1:%d", ports[i]), "--nats-listen", fmt.Sprintf("127.0.0.1:%d", ports[3+i]),
			"--cluster", fmt.Sprintf("127.0.0.1:%d", ports[6+i]), "--routes", strings.Join(routes, ","),
			"--replicas", "3", "--credentials", creds, "--admin-token", adminToken,
			"--max-staleness", maxStaleness.String())
		p.cmd.Stdout, p.cmd.Stderr = logf, logf
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, p)
	}
	t.Cleanup(func() {
		for _, p := range c.nodes {
			p.cmd.Process.Signal(syscall.SIGCONT)
			p.cmd.Process.Kill()
			p.cmd.Wait()
			p.log.Close()
			if t.Failed() {
				b, _ := os.ReadFile(p.log.Name())
				t.Logf("--- %s log (tail) ---\n%s", p.name, tail(string(b), 3000))
			}
		}
	})
	deadline := time.Now().Add(90 * time.Second)
	for _, p := range c.nodes {
		for {
			if code, _ := c.do("GET", p, "/readyz", "", ""); code == 200 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not ready within 90 s", p.name)
			}
			time.Sleep(100 * time.Millisecond) // polling a process's readiness
		}
	}
	return c
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

var client = &http.Client{Timeout: 20 * time.Second}

func (c *cluster) do(method string, p *proc, path, bearer, body string) (int, []byte) {
	req, _ := http.NewRequest(method, p.url+path, strings.NewReader(body))
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
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
	c := startCluster(t, 2*time.Second)
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

	if err := n3.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
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

	if err := n3.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
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

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
