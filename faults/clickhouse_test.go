package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyledger/keyledger/internal/buildtest"
)

// privateClickHouse runs scripts/clickhouse.sh for a ClickHouse of the
// test's own (Debian's 18.16, which `make test` installs), so that
// killing it touches no other test.
type privateClickHouse struct {
	env  []string
	dir  string
	addr string
}

func startPrivateClickHouse(t *testing.T) *privateClickHouse {
	t.Helper()
	for _, bin := range []string{"clickhouse-server", "clickhouse-client"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not on PATH: this test runs a ClickHouse of its own; run `make test`, which installs it", bin)
		}
	}
	ports := buildtest.FreePorts(t, 3)
	ch := &privateClickHouse{dir: t.TempDir(), addr: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	ch.env = []string{"KEYLEDGER_CH_DIR=" + ch.dir, "KEYLEDGER_CH_PORT=" + strconv.Itoa(ports[0]),
		"KEYLEDGER_CH_HTTP_PORT=" + strconv.Itoa(ports[1]), "KEYLEDGER_CH_INTERSERVER_PORT=" + strconv.Itoa(ports[2])}
	ch.script(t, "start")
	t.Cleanup(func() { ch.run("stop") })
	return ch
}

func (ch *privateClickHouse) run(arg string) (string, error) {
	_, file, _, _ := runtime.Caller(0)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(filepath.Dir(file), "..", "scripts", "clickhouse.sh"), arg)
	cmd.Env = append(os.Environ(), ch.env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (ch *privateClickHouse) script(t *testing.T, arg string) {
	t.Helper()
	if out, err := ch.run(arg); err != nil {
		t.Fatalf("clickhouse.sh %s: %v\n%s", arg, err, out)
	}
}

// kill stops the server with SIGKILL, as a crash would.
func (ch *privateClickHouse) kill(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ch.dir, "clickhouse-server.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "ClickHouse to die", func() bool { return syscall.Kill(pid, 0) != nil })
}

// TestFaults_clickHouseOutage kills ClickHouse (SIGKILL) under a
// verification load on a 3-node cluster with analytics, and starts it
// again: verification never notices, and every verification a node
// answered is counted in ClickHouse exactly once.
func TestFaults_clickHouseOutage(t *testing.T) {
	ch := startPrivateClickHouse(t)
	c := startCluster(t, clusterOptions{lease: *lease, clickhouse: "clickhouse://" + ch.addr + "/keyledger_faults"})
	const owner = "faults-clickhouse"
	h := newHistory()
	ctx, cancel := context.WithCancel(context.Background())
	wg := workload(ctx, c, h, owner)
	stop := func() { cancel(); wg.Wait() }
	defer stop()
	begin := time.Now()
	waitUntil(t, 30*time.Second, "30 acknowledged creates", func() bool { return h.count() >= 30 })
	var outage time.Duration
	for start := time.Now(); ; {
		ch.kill(t)
		d := h.down("clickhouse")
		hold(5 * time.Second)
		ch.script(t, "start")
		h.up(d)
		outage += d.end.Sub(d.start)
		hold(2 * time.Second)
		if time.Since(start) >= *duration {
			break
		}
	}
	stop()

	r := h.check(t, c, "clickhouse_outage", owner)
	t.Log(r.String())
	for _, p := range r.problems {
		t.Error(p)
	}
	if r.Lost+r.Duplicates+r.Wrong > 0 {
		t.Fatal("the ClickHouse outage broke a promise")
	}
	// Every verification that got an answer was recorded: count them,
	// and wait for ClickHouse to hold exactly as many.
	answered := 0
	h.mu.Lock()
	for _, o := range h.ops {
		if o.kind == "verify" && o.code != 0 {
			answered++
		}
	}
	h.mu.Unlock()
	// The end check verifies every key once more on every node.
	answered += 3 * r.Creates
	q := url.Values{"owner": {owner}, "interval": {"day"},
		"from": {begin.Add(-time.Hour).UTC().Format(time.RFC3339)}, "to": {time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}}
	var counted uint64
	waitUntil(t, 90*time.Second, "ClickHouse to count every verification", func() bool {
		code, b := c.do("GET", c.nodes[0], "/v1/usage?"+q.Encode(), c.token, "")
		var u struct {
			Points []struct{ Count uint64 }
		}
		if code != 200 || json.Unmarshal(b, &u) != nil {
			return false
		}
		counted = 0
		for _, p := range u.Points {
			counted += p.Count
		}
		if counted > uint64(answered) {
			t.Fatalf("ClickHouse counts %d verifications, more than the %d answered: duplicates", counted, answered)
		}
		return counted == uint64(answered)
	})
	line := fmt.Sprintf("%s | usage counted in ClickHouse: %d of %d answered verifications, through %.1f s of ClickHouse crashed", r, counted, answered, outage.Seconds())
	t.Log(line)
	addReport(line)
}
