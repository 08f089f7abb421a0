// Package natstest starts real, embedded JetStream servers for tests: each
// in its own temporary directory, in-process, stopped by t.Cleanup.
package natstest

import (
	"context"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/events/eventstest"
	"github.com/keyledger/keyledger/nats"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Env is a running embedded server with a client and both streams.
// Authentication is on, as in production: Conn is the operator (tests set
// up what no node may), and ConnectAs gives a connection with a node
// role's permissions.
type Env struct {
	Server *nats.Server
	Conn   *natsgo.Conn
	JS     jetstream.JetStream
	Dir    string
	// Fleet lists the members below; CredsDir holds their seeds.
	Fleet    *nats.Fleet
	CredsDir string
	// Signer is admin-1's ledger signing key; Keyring trusts it alone.
	Signer  *eventstest.Signer
	Keyring *events.Keyring
}

// The members of every test fleet.
const (
	Operator  = "test"        // operator: the test itself
	Admin     = "admin-1"     // admin and analytics
	Verifier  = "verifier-1"  // verifier
	Verifier2 = "verifier-2"  // verifier
	Analytics = "analytics-1" // analytics alone
)

// MustFleet generates credentials for the test members into a temp dir,
// from a seeded source.
func MustFleet(tb testing.TB, routes bool) (*nats.Fleet, string) {
	tb.Helper()
	dir := tb.TempDir()
	f, err := nats.GenerateFleet(dir, []nats.Member{
		{Name: Operator, Roles: []nats.Role{nats.RoleOperator}},
		{Name: Admin, Roles: []nats.Role{nats.RoleAdmin, nats.RoleAnalytics}},
		{Name: Verifier, Roles: []nats.Role{nats.RoleVerifier}},
		{Name: Verifier2, Roles: []nats.Role{nats.RoleVerifier}},
		{Name: Analytics, Roles: []nats.Role{nats.RoleAnalytics}},
	}, routes, mrand.NewChaCha8([32]byte{'k', 'l'}))
	if err != nil {
		tb.Fatalf("generate fleet: %v", err)
	}
	return f, dir
}

// Identity loads a member's credentials.
func (e *Env) Identity(tb testing.TB, name string) *nats.Identity {
	tb.Helper()
	id, err := nats.LoadIdentity(filepath.Join(e.CredsDir, name+".nk"), name)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

// ConnectAs connects in-process as a fleet member, closed when the test
// ends.
func (e *Env) ConnectAs(tb testing.TB, name string, opts ...natsgo.Option) (*natsgo.Conn, jetstream.JetStream) {
	tb.Helper()
	nc, err := e.Server.Connect(e.Identity(tb, name), opts...)
	if err != nil {
		tb.Fatalf("connect as %s: %v", name, err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	return nc, js
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
	fleet, creds := MustFleet(tb, false)
	srv, err := nats.StartServer(nats.ServerConfig{Name: "test", StoreDir: dir, Listen: listen, Fleet: fleet})
	if err != nil {
		tb.Fatalf("start embedded NATS: %v", err)
	}
	op, err := nats.LoadIdentity(filepath.Join(creds, Operator+".nk"), Operator)
	if err != nil {
		tb.Fatal(err)
	}
	nc, err := srv.Connect(op)
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
	signer := eventstest.MustSigner(tb, Admin, 1)
	// The credentials directory is complete, as `keyledger creds
	// generate` writes it (node.GenerateCredentials; the file names are
	// node's), so a node can join this server with --credentials.
	if err := os.WriteFile(filepath.Join(creds, Admin+".signing-key"), []byte(signer.SigningKey+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(creds, "trusted-signers"), []byte(signer.VerifierKey+"\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	e := &Env{Server: srv, Conn: nc, JS: js, Dir: dir, Fleet: fleet, CredsDir: creds,
		Signer: signer, Keyring: eventstest.Keyring(tb, signer)}
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
	l, err := nats.OpenLog(context.Background(), e.JS, e.Signer.Signer, e.Keyring)
	if err != nil {
		tb.Fatalf("open log: %v", err)
	}
	return l
}

// MustFleetIdentity returns credentials for name that no test fleet lists.
func MustFleetIdentity(tb testing.TB, name string) *nats.Identity {
	tb.Helper()
	dir := tb.TempDir()
	if _, err := nats.GenerateFleet(dir, []nats.Member{{Name: name, Roles: []nats.Role{nats.RoleOperator}}}, false, mrand.NewChaCha8([32]byte{'x'})); err != nil {
		tb.Fatal(err)
	}
	id, err := nats.LoadIdentity(filepath.Join(dir, name+".nk"), name)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}
