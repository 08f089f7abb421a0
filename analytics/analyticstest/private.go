package analyticstest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Private is a ClickHouse of one test's own (Debian's 18.16, run by
// scripts/clickhouse.sh with its own directory and free loopback ports),
// for tests that stop or kill it: the shared instance and other tests are
// untouched.
type Private struct {
	// Addr is its host:port (native protocol).
	Addr string
	dir  string
	env  []string
}

// StartPrivate starts a private ClickHouse and stops it when the test
// ends. It fails the test, rather than let the script install anything,
// unless the ClickHouse binaries are on PATH (`make test` installs them).
func StartPrivate(tb testing.TB) *Private {
	tb.Helper()
	for _, bin := range []string{"clickhouse-server", "clickhouse-client"} {
		if _, err := exec.LookPath(bin); err != nil {
			tb.Fatalf("%s is not on PATH: this test runs a ClickHouse of its own; run `make test`, which installs it", bin)
		}
	}
	var ports []int
	var ls []net.Listener
	for range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	c := &Private{Addr: fmt.Sprintf("127.0.0.1:%d", ports[0]), dir: tb.TempDir()}
	c.env = []string{"KEYLEDGER_CH_DIR=" + c.dir, "KEYLEDGER_CH_PORT=" + strconv.Itoa(ports[0]),
		"KEYLEDGER_CH_HTTP_PORT=" + strconv.Itoa(ports[1]), "KEYLEDGER_CH_INTERSERVER_PORT=" + strconv.Itoa(ports[2])}
	if err := c.Run("start"); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Run("stop") })
	return c
}

// Run runs the script with start or stop (a clean stop); safe from any
// goroutine.
func (c *Private) Run(arg string) error {
	_, file, _, _ := runtime.Caller(0)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(filepath.Dir(file), "..", "..", "scripts", "clickhouse.sh"), arg)
	cmd.Env = append(os.Environ(), c.env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("clickhouse.sh %s: %v\n%s", arg, err, out)
	}
	return nil
}

// Kill stops the server with SIGKILL, as a crash would, and waits until
// it is gone.
func (c *Private) Kill(tb testing.TB) {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(c.dir, "clickhouse-server.pid"))
	if err != nil {
		tb.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		tb.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		tb.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); syscall.Kill(pid, 0) == nil; {
		if time.Now().After(deadline) {
			tb.Fatalf("ClickHouse %d still runs 30 s after SIGKILL", pid)
		}
		time.Sleep(20 * time.Millisecond) // polling a process's exit
	}
}
