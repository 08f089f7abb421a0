// Package nodetest starts whole keyledger nodes for tests, in-process, on
// loopback, each in its own temporary directory and stopped when the test
// ends, and talks to them over raw HTTP where a test must see the bytes of
// an answer.
package nodetest

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/http/openapitest"
	"github.com/keyledger/keyledger/node"
)

// Config is the configuration MustOpen uses for a node on dir: admin
// role, embedded NATS without a listener, HTTP on a free loopback port,
// the default key format and catalog, logs to logs.
func Config(dir string, logs io.Writer) node.Config {
	return node.Config{
		DataDir: dir, HTTPAddr: "127.0.0.1:0", Environment: keyledger.EnvLive, Prefix: "fsk",
		Permissions: keyledger.DefaultPermissions, TestRateLimit: keyledger.RateLimit{PerSecond: 25, Burst: 50},
		Name: "e2e", Logger: slog.New(slog.NewTextHandler(logs, nil)),
	}
}

// MustOpen starts a whole node with Config(dir, logs).
func MustOpen(tb testing.TB, dir string, logs io.Writer) *node.Node {
	tb.Helper()
	return MustOpenConfig(tb, Config(dir, logs))
}

// MustOpenConfig starts a whole node with cfg and closes it when the test
// ends.
func MustOpenConfig(tb testing.TB, cfg node.Config) *node.Node {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := node.Open(ctx, cfg)
	if err != nil {
		tb.Fatalf("open node: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n.Close(ctx)
	})
	return n
}

// SyncBuffer collects log output from concurrent goroutines.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Caller sends raw HTTP requests to a node: tests that check an answer
// byte for byte, or send what no client library would, use it. Every
// exchange is checked against the OpenAPI document (openapitest.Transport):
// an answer that does not match it, or an accepted request that does not,
// fails the test.
type Caller struct {
	T     testing.TB
	Base  string
	Token string
}

// client returns the HTTP client of a call made for tb: the validating
// transport over http.DefaultTransport (whose connections all calls
// share), with a bound on the whole exchange.
func client(tb testing.TB) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: openapitest.Transport(tb, http.DefaultTransport)}
}

// Call sends a request (token "" for none; hdr are name, value pairs) and
// returns the status, headers and body. It fails the test on a transport
// error, so only the test's own goroutine may call it; others use Try.
func (c *Caller) Call(method, path, token, body string, hdr ...string) (int, http.Header, []byte) {
	c.T.Helper()
	code, h, b, err := c.Try(method, path, token, body, hdr...)
	if err != nil {
		c.T.Fatal(err)
	}
	return code, h, b
}

// Try is Call returning a transport error instead of failing the test.
func (c *Caller) Try(method, path, token, body string, hdr ...string) (int, http.Header, []byte, error) {
	req, err := http.NewRequest(method, c.Base+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client(c.T).Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b, err
}

// WaitFor polls ok until it holds, failing the test after d: a bounded
// wait for an observable condition, never a sleep that hopes.
func WaitFor(tb testing.TB, d time.Duration, what string, ok func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WaitReady waits until the node answers /readyz with 200.
func WaitReady(tb testing.TB, c *Caller) {
	tb.Helper()
	WaitFor(tb, 10*time.Second, "the node to be ready", func() bool {
		code, _, _, err := c.Try("GET", "/readyz", "", "")
		return err == nil && code == 200
	})
}
