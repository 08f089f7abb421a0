// Package natstest starts real, embedded JetStream servers for tests: each
// in its own temporary directory, in-process, stopped by t.Cleanup.
package natstest

import (
	"context"
	"testing"
	"time"

	"github.com/keyledger/keyledger/nats"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Env is a running embedded server with a client and both streams.
type Env struct {
	Server *nats.Server
	Conn   *natsgo.Conn
	JS     jetstream.JetStream
	Dir    string
}

// MustStart starts an embedded JetStream server in a temp dir (no network
// listener: in-process connections only), creates the KEYS and USAGE
// streams, and stops everything when the test ends.
func MustStart(tb testing.TB) *Env {
	tb.Helper()
	return MustStartIn(tb, tb.TempDir(), "")
}

// MustStartIn is MustStart on a given store directory, listening on listen
// ("" for none, "127.0.0.1:0" for a free loopback port): a test restarts a
// server on the same directory to check durability.
func MustStartIn(tb testing.TB, dir, listen string) *Env {
	tb.Helper()
	srv, err := nats.StartServer(nats.ServerConfig{Name: "test", StoreDir: dir, Listen: listen})
	if err != nil {
		tb.Fatalf("start embedded NATS: %v", err)
	}
	nc, err := srv.Connect("test")
	if err != nil {
		srv.Stop()
		tb.Fatalf("connect: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := nats.EnsureStreams(ctx, js, nats.StreamConfig{}); err != nil {
		tb.Fatalf("streams: %v", err)
	}
	e := &Env{Server: srv, Conn: nc, JS: js, Dir: dir}
	tb.Cleanup(e.Stop)
	return e
}

// Stop closes the client and the server; calling it twice is harmless.
func (e *Env) Stop() {
	e.Conn.Close()
	e.Server.Stop()
}

// MustLog opens the KEYS ledger.
func (e *Env) MustLog(tb testing.TB) *nats.Log {
	tb.Helper()
	l, err := nats.OpenLog(context.Background(), e.JS)
	if err != nil {
		tb.Fatalf("open log: %v", err)
	}
	return l
}
