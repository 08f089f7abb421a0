package node_test

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/node"
	"github.com/keyledger/keyledger/node/nodetest"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestNode_trust runs the attacks of issue 11 against a whole single node
// whose embedded NATS listens on loopback, as `keyledger serve` does by
// default. Before this change each attack succeeded: anyone reaching
// 127.0.0.1:4222 minted a working key with a secret of their choosing, and
// a recreated KEYS stream was followed as if nothing had happened.
func TestNode_trust(t *testing.T) {
	dir := t.TempDir()
	logs := &nodetest.SyncBuffer{}
	cfg := nodetest.Config(dir, logs)
	cfg.NATSListen = "127.0.0.1:0"
	n := nodetest.MustOpenConfig(t, cfg)
	c := &nodetest.Caller{T: t, Base: n.URL(), Token: n.Token()}
	nodetest.WaitReady(t, c)
	creds := filepath.Join(dir, "credentials")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("credentials are generated and never logged", func(t *testing.T) {
		for _, f := range []string{node.FleetFile, node.NKeyFile(cfg.Name), node.NKeyFile("operator"), node.SigningKeyFile(cfg.Name)} {
			fi, err := os.Stat(filepath.Join(creds, f))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Fatalf("%s has mode %v, want 0600", f, fi.Mode().Perm())
			}
		}
		out := logs.String()
		for _, secret := range []string{"PRIVATE+KEY", "\"SU", " SU", "=SU"} {
			if strings.Contains(out, secret) {
				t.Fatalf("a secret (%q) is in the log", secret)
			}
		}
	})

	t.Run("an anonymous client cannot connect", func(t *testing.T) {
		nc, err := natsgo.Connect(n.NATSURL(), natsgo.MaxReconnects(0), natsgo.Timeout(2*time.Second))
		if err == nil {
			nc.Close()
			t.Fatal("anonymous NATS client accepted")
		}
		if !errors.Is(err, natsgo.ErrAuthorization) {
			t.Fatalf("connect: %v, want an authorization violation", err)
		}
	})

	// The operator's credentials are the strongest on the bus; with them
	// an attacker can publish anything on KEYS, but not sign it.
	op, err := nats.LoadIdentity(filepath.Join(creds, node.NKeyFile("operator")), "operator")
	if err != nil {
		t.Fatal(err)
	}
	nc, err := natsgo.Connect(n.NATSURL(), append(op.Options(), natsgo.MaxReconnects(0))...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("a key minted with the admin node's own NATS credentials but no signature does not work", func(t *testing.T) {
		// The admin role may publish on keyledger.keys.*: what stops
		// the forgery is the signature, not the bus.
		adm, err := nats.LoadIdentity(filepath.Join(creds, node.NKeyFile(cfg.Name)), cfg.Name)
		if err != nil {
			t.Fatal(err)
		}
		anc, err := natsgo.Connect(n.NATSURL(), append(adm.Options(), natsgo.MaxReconnects(0))...)
		if err != nil {
			t.Fatal(err)
		}
		defer anc.Close()
		js, err := jetstream.New(anc)
		if err != nil {
			t.Fatal(err)
		}
		secret, err := keyledger.DefaultFormat.New(keyledger.EnvLive, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		id := events.NewKeyID()
		ev := &events.KeyCreated{
			Header: events.NewHeader(events.TypeKeyCreated, id, "attacker", time.Now()), Name: "evil",
			Environment: keyledger.EnvLive, Permissions: []string{"all"}, Hash: keyledger.HashSecret(secret).String(), Hint: keyledger.Hint(secret),
		}
		data, err := events.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		ack, err := js.Publish(ctx, nats.KeySubject(id), data)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Projector().WaitApplied(ctx, ack.Sequence); err != nil {
			t.Fatal(err)
		}
		if code, _, _ := c.Call("GET", "/v1/authz", secret, ""); code != 401 {
			t.Fatalf("a forged key answered %d, want 401", code)
		}
		if got := n.Projector().Rejected()["unsigned"]; got != 1 {
			t.Fatalf("rejected unsigned = %d, want 1", got)
		}
		code, _, body := c.Call("GET", "/metrics", c.Token, "")
		if code != 200 || !strings.Contains(string(body), `keyledger_projector_rejected_total{reason="unsigned"} 1`) {
			t.Fatalf("metrics %d: no rejected counter", code)
		}
		if !strings.Contains(logs.String(), "ledger event refused") {
			t.Fatal("the refusal was not logged")
		}
	})

	t.Run("a recreated KEYS makes the node fail closed", func(t *testing.T) {
		code, _, body := c.Call("POST", "/v1/keys", c.Token, `{"name":"victim","environment":"live"}`)
		if code != 201 {
			t.Fatalf("create %d %s", code, body)
		}
		secret := between(string(body), `"key":"`, `"`)
		if code, _, _ := c.Call("GET", "/v1/authz", secret, ""); code != 200 {
			t.Fatalf("before: %d", code)
		}
		if err := js.DeleteStream(ctx, nats.KeysStream); err != nil {
			t.Fatal(err)
		}
		if _, err := js.CreateStream(ctx, nats.KeysStreamConfig(nats.StreamConfig{})); err != nil {
			t.Fatal(err)
		}
		nodetest.WaitFor(t, 20*time.Second, "503 from a node whose stream was replaced", func() bool {
			code, _, _ := c.Call("GET", "/v1/authz", secret, "")
			return code == 503
		})
		code, _, body = c.Call("GET", "/readyz", "", "")
		if code != 503 || !strings.Contains(string(body), "recreated") {
			t.Fatalf("readyz %d %s: want 503 saying KEYS was recreated", code, body)
		}
		// Creates must not answer 201 for keys that never work.
		if code, _, _ := c.Call("POST", "/v1/keys", c.Token, `{"name":"after","environment":"live"}`); code == 201 {
			t.Fatal("a create was acknowledged on a replaced ledger")
		}
	})
}

// TestNode_adoptsAnUnsignedLedgerOnlyWhenTold: a ledger written before
// events were signed is refused until the operator names, at start, the
// last sequence to adopt; events after it must still be signed.
func TestNode_adoptsAnUnsignedLedgerOnlyWhenTold(t *testing.T) {
	dir := t.TempDir()
	logs := &nodetest.SyncBuffer{}
	cfg := nodetest.Config(dir, logs)
	cfg.NATSListen = "127.0.0.1:0"
	n := nodetest.MustOpenConfig(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The old ledger: an unsigned KeyCreated, as keyledger wrote before.
	op, err := nats.LoadIdentity(filepath.Join(dir, "credentials", node.NKeyFile("operator")), "operator")
	if err != nil {
		t.Fatal(err)
	}
	nc, err := natsgo.Connect(n.NATSURL(), append(op.Options(), natsgo.MaxReconnects(0))...)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	publish := func() (string, uint64) {
		secret, err := keyledger.DefaultFormat.New(keyledger.EnvLive, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		id := events.NewKeyID()
		data, err := events.Encode(&events.KeyCreated{
			Header: events.NewHeader(events.TypeKeyCreated, id, "admin-token", time.Now()), Name: "old",
			Environment: keyledger.EnvLive, Permissions: []string{"all"}, Hash: keyledger.HashSecret(secret).String(), Hint: keyledger.Hint(secret),
		})
		if err != nil {
			t.Fatal(err)
		}
		ack, err := js.Publish(ctx, nats.KeySubject(id), data)
		if err != nil {
			t.Fatal(err)
		}
		return secret, ack.Sequence
	}
	old, seq := publish()
	after, _ := publish() // written after the adoption point: never applied
	nc.Close()
	c := &nodetest.Caller{T: t, Base: n.URL(), Token: n.Token()}
	if code, _, _ := c.Call("GET", "/v1/authz", old, ""); code != 401 {
		t.Fatalf("an unsigned key answered %d without --trust-unsigned-through", code)
	}
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}

	cfg.TrustUnsignedThrough = seq
	n2 := nodetest.MustOpenConfig(t, cfg)
	c2 := &nodetest.Caller{T: t, Base: n2.URL(), Token: n2.Token()}
	nodetest.WaitReady(t, c2)
	if code, _, _ := c2.Call("GET", "/v1/authz", old, ""); code != 200 {
		t.Fatalf("the adopted key answered %d", code)
	}
	if code, _, _ := c2.Call("GET", "/v1/authz", after, ""); code != 401 {
		t.Fatalf("an unsigned key after the adoption point answered %d", code)
	}
	if !strings.Contains(logs.String(), "trust-unsigned-through") {
		t.Fatal("the adoption was not logged")
	}
}

// A node told to run analytics whose fleet entry lacks the analytics role
// would have its consumers refused by the bus and retry for ever, with a
// permission violation in the log every 30 s: it refuses to start, saying
// how to fix it.
func TestNode_analyticsNeedsItsRole(t *testing.T) {
	dir := t.TempDir()
	creds := filepath.Join(dir, "credentials")
	if err := node.GenerateCredentials(creds, []nats.Member{{Name: "a1", Roles: []nats.Role{nats.RoleAdmin}}}, false, nil); err != nil {
		t.Fatal(err)
	}
	cfg := nodetest.Config(filepath.Join(dir, "data"), io.Discard)
	cfg.Name, cfg.Credentials, cfg.ClickHouse = "a1", creds, "clickhouse://127.0.0.1:1/x"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := node.Open(ctx, cfg)
	if err == nil {
		n.Close(ctx)
		t.Fatal("a node ran analytics without the analytics role")
	}
	if !strings.Contains(err.Error(), "a1=admin+analytics") {
		t.Fatalf("the error does not say how to fix it: %v", err)
	}
}
