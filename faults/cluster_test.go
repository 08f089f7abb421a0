package faults

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keyledger/keyledger/internal/buildtest"
	"github.com/keyledger/keyledger/internal/disktest"
	"github.com/keyledger/keyledger/nats"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// proc is one keyledger node process, which the harness kills, pauses and
// starts again with the same data directory.
type proc struct {
	name     string
	url      string
	natsURL  string
	args     []string
	logPath  string
	data     string
	disk     string // the tmpfs data is on, if any
	mu       sync.Mutex
	cmd      *exec.Cmd
	log      *os.File
	exited   chan struct{}
	up       bool // started and neither killed nor paused by the harness
	restarts int
}

// alive reports whether the harness left the node running (it may still
// be starting up).
func (p *proc) alive() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.up
}

// cluster is three admin nodes, each with an embedded NATS server, in one
// JetStream cluster (R3, sync always), started from the built binary.
type cluster struct {
	t     *testing.T
	bin   string
	dir   string
	creds string
	nodes []*proc
	token string
	lease time.Duration
}

const adminToken = "faults-admin-token-0123456789"

// clusterOptions shape the nodes' flags.
type clusterOptions struct {
	lease      time.Duration // --max-staleness
	clickhouse string        // --clickhouse, "" for none
	// smallDisk, if set, puts n1's data directory on a tmpfs of this
	// size, which the disk_full scenario fills.
	smallDisk string
}

func startCluster(t *testing.T, o clusterOptions) *cluster {
	t.Helper()
	if o.lease == 0 {
		o.lease = 2 * time.Second
	}
	bin := buildtest.Keyledger(t)
	dir := t.TempDir()
	creds := filepath.Join(dir, "credentials")
	if out, err := exec.Command(bin, "creds", "generate", "--dir", creds, "--routes",
		"n1=admin+analytics", "n2=admin+analytics", "n3=admin+analytics", "operator=operator").CombinedOutput(); err != nil {
		t.Fatalf("creds generate: %v\n%s", err, out)
	}
	var disk string
	if o.smallDisk != "" {
		disk = disktest.MustTmpfs(t, o.smallDisk)
	}
	ports := buildtest.FreePorts(t, 9)
	c := &cluster{t: t, bin: bin, dir: dir, creds: creds, token: adminToken, lease: o.lease}
	for i := range 3 {
		name := fmt.Sprintf("n%d", i+1)
		var routes []string
		for j := range 3 {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[6+j]))
			}
		}
		p := &proc{name: name, url: fmt.Sprintf("http://127.0.0.1:%d", ports[i]),
			natsURL: fmt.Sprintf("nats://127.0.0.1:%d", ports[3+i]), logPath: filepath.Join(dir, name+".log"),
			data: filepath.Join(dir, name)}
		if i == 0 && disk != "" {
			p.data, p.disk = filepath.Join(disk, name), disk
		}
		p.args = []string{"serve", "--node", name, "--data", p.data, "--usage-max-bytes", "16777216",
			"--http", fmt.Sprintf("127.0.0.1:%d", ports[i]), "--nats-listen", fmt.Sprintf("127.0.0.1:%d", ports[3+i]),
			"--cluster", fmt.Sprintf("127.0.0.1:%d", ports[6+i]), "--routes", strings.Join(routes, ","),
			"--replicas", "3", "--credentials", creds, "--admin-token", adminToken,
			"--max-staleness", o.lease.String()}
		if o.clickhouse != "" {
			p.args = append(p.args, "--clickhouse", o.clickhouse)
		}
		c.nodes = append(c.nodes, p)
	}
	t.Cleanup(func() {
		for _, p := range c.nodes {
			p.mu.Lock()
			if p.cmd != nil {
				p.cmd.Process.Signal(syscall.SIGCONT)
				p.cmd.Process.Kill()
				<-p.exited
				p.log.Close()
			}
			p.mu.Unlock()
			if t.Failed() {
				b, _ := os.ReadFile(p.logPath)
				t.Logf("--- %s log (tail) ---\n%s", p.name, tail(string(b), 4000))
			}
		}
	})
	for _, p := range c.nodes {
		c.start(p)
	}
	for _, p := range c.nodes {
		c.waitReady(p, 90*time.Second)
	}
	return c
}

// start runs the node's process (again).
func (c *cluster) start(p *proc) {
	c.t.Helper()
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.bin, p.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	p.mu.Lock()
	if p.cmd != nil {
		p.restarts++
	}
	p.cmd, p.log, p.exited, p.up = cmd, logf, exited, true
	p.mu.Unlock()
}

// kill sends SIGKILL and waits for the process to be gone.
func (c *cluster) kill(p *proc) {
	p.mu.Lock()
	cmd, exited, logf := p.cmd, p.exited, p.log
	p.up = false
	p.mu.Unlock()
	cmd.Process.Signal(syscall.SIGKILL)
	<-exited
	logf.Close()
}

// pause sends SIGSTOP; resume SIGCONT.
func (c *cluster) pause(p *proc) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.up = false
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		c.t.Error(err)
	}
}

func (c *cluster) resume(p *proc) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		c.t.Error(err)
	}
	p.up = true
}

// waitReady polls the node's /readyz until it answers 200.
func (c *cluster) waitReady(p *proc, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if code, _ := do(verifyClient, "GET", p, "/readyz", "", ""); code == 200 {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s not ready within %v", p.name, timeout)
		}
		time.Sleep(50 * time.Millisecond) // polling a process's readiness
	}
}

// node returns the node named name.
func (c *cluster) node(name string) *proc {
	for _, p := range c.nodes {
		if p.name == name {
			return p
		}
	}
	c.t.Fatalf("no node %q", name)
	return nil
}

// operator connects to the live nodes' NATS servers as the operator.
func (c *cluster) operator() (*natsgo.Conn, jetstream.JetStream, error) {
	id, err := nats.LoadIdentity(filepath.Join(c.creds, "operator.nk"), "operator")
	if err != nil {
		return nil, nil, err
	}
	var urls []string
	for _, p := range c.nodes {
		if p.alive() {
			urls = append(urls, p.natsURL)
		}
	}
	nc, err := natsgo.Connect(strings.Join(urls, ","), append(id.Options(), natsgo.Timeout(2*time.Second))...)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// consumerHosts returns, for each node, the server that hosts its
// projector's consumer on KEYS (consumers are named after their node).
func (c *cluster) consumerHosts(ctx context.Context) (map[string]string, error) {
	nc, js, err := c.operator()
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	s, err := js.Stream(ctx, nats.KeysStream)
	if err != nil {
		return nil, err
	}
	hosts := map[string]string{}
	l := s.ListConsumers(ctx)
	for ci := range l.Info() {
		name, ok := strings.CutPrefix(ci.Name, "projector-")
		if !ok || ci.Cluster == nil {
			continue
		}
		node, _, _ := strings.Cut(name, "-")
		hosts[node] = ci.Cluster.Leader
	}
	return hosts, l.Err()
}

// keysLeader asks the cluster, as the operator, which server leads KEYS.
func (c *cluster) keysLeader(ctx context.Context) (string, error) {
	nc, js, err := c.operator()
	if err != nil {
		return "", err
	}
	defer nc.Close()
	for {
		s, err := js.Stream(ctx, nats.KeysStream)
		if err == nil && s.CachedInfo().Cluster != nil && s.CachedInfo().Cluster.Leader != "" {
			return s.CachedInfo().Cluster.Leader, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no KEYS leader: %v (%w)", err, ctx.Err())
		case <-time.After(100 * time.Millisecond): // polling for an elected leader
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// Writes wait for the fleet (up to 10 s) and ride through elections (up
// to --write-timeout, 30 s); verifications answer at once or not at all.
var (
	writeClient  = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	verifyClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
)

// do sends one request; code 0 means no answer (body: the error).
func do(client *http.Client, method string, p *proc, path, bearer, body string) (int, []byte) {
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

// metric reads one unlabelled metric of a node (-1 if it has none).
func (c *cluster) metric(p *proc, name string) float64 {
	_, b := do(verifyClient, "GET", p, "/metrics", "", "")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return -1
}

// filled reads keyledger_projector_filled_total of each node: events a
// node read from the stream's leader because its consumer had stalled.
func (c *cluster) filled() map[string]int {
	n := map[string]int{}
	for _, p := range c.nodes {
		_, b := do(verifyClient, "GET", p, "/metrics", "", "")
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "keyledger_projector_filled_total "); ok {
				var f float64
				fmt.Sscan(v, &f)
				n[p.name] = int(f)
			}
		}
	}
	return n
}

// filledSince sums what filled grew by since before (a restarted node
// counts from zero again).
func (c *cluster) filledSince(before map[string]int) int {
	sum := 0
	for name, n := range c.filled() {
		if n >= before[name] {
			n -= before[name]
		}
		sum += n
	}
	return sum
}

// do on the cluster sends an admin or verification request.
func (c *cluster) do(method string, p *proc, path, bearer, body string) (int, []byte) {
	if strings.HasPrefix(path, "/v1/authz") || strings.HasPrefix(path, "/v1/verify") {
		return do(verifyClient, method, p, path, bearer, body)
	}
	return do(writeClient, method, p, path, bearer, body)
}
