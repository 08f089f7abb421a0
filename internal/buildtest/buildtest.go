// Package buildtest builds the keyledger binary for tests that run it as
// a process (deploy checks, fault injection): once per test binary, the
// way deploy/Dockerfile does (static, CGO off, trimmed paths).
package buildtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

var (
	once    sync.Once
	dir     string
	binPath string
	err     error
)

// Keyledger returns the path of ./cmd/keyledger built into a temporary
// directory, building it on the first call. Call Cleanup from TestMain.
func Keyledger(tb testing.TB) string {
	tb.Helper()
	once.Do(func() {
		if dir, err = os.MkdirTemp("", "keyledger-bin-"); err != nil {
			return
		}
		binPath = filepath.Join(dir, "keyledger")
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", binPath, "./cmd/keyledger")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, berr := cmd.CombinedOutput(); berr != nil {
			err = fmt.Errorf("go build ./cmd/keyledger: %v\n%s", berr, out)
		}
	})
	if err != nil {
		tb.Fatal(err)
	}
	return binPath
}

// Cleanup removes the built binary, if any.
func Cleanup() {
	if dir != "" {
		os.RemoveAll(dir)
	}
}

// FreePorts returns n loopback TCP ports that were free a moment ago, for
// the processes a test starts.
func FreePorts(tb testing.TB, n int) []int {
	tb.Helper()
	var ls []net.Listener
	var ports []int
	for range n {
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
	return ports
}
