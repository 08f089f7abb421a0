package verifier_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	khttp "github.com/keyledger/keyledger/http"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/projector"
	"github.com/keyledger/keyledger/verifier"
	"github.com/nats-io/nats.go/jetstream"
)

// A Go service verifies keys in process: it follows the ledger (the KEYS
// stream) with a projector and asks a Verifier, with no network round trip
// per request. Here the JetStream server is embedded and reached in
// process; a real service connects to the keyledger cluster's NATS URL
// with nats.Connect and does the rest the same way.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// An embedded JetStream with the keyledger streams.
	dir, err := os.MkdirTemp("", "keyledger-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	// Credentials: an nkey per member of the fleet (the server holds only
	// the public halves), and the admin's ledger signing key.
	fleet, err := nats.GenerateFleet(filepath.Join(dir, "creds"), []nats.Member{
		{Name: "example", Roles: []nats.Role{nats.RoleAdmin}},
	}, false, rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	me, err := nats.LoadIdentity(filepath.Join(dir, "creds", "example.nk"), "example")
	if err != nil {
		log.Fatal(err)
	}
	skey, vkey, err := events.GenerateSigningKey(rand.Reader, "example")
	if err != nil {
		log.Fatal(err)
	}
	signer, err := events.NewSigner(skey)
	if err != nil {
		log.Fatal(err)
	}
	keyring, err := events.NewKeyring(vkey)
	if err != nil {
		log.Fatal(err)
	}
	srv, err := nats.StartServer(nats.ServerConfig{StoreDir: filepath.Join(dir, "js"), Fleet: fleet}) // no Listen: in-process only
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Stop()
	nc, err := srv.Connect(me)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	if err := nats.EnsureStreams(ctx, js, nats.StreamConfig{}); err != nil {
		log.Fatal(err)
	}

	// The service's projector follows the ledger. (Started on an empty
	// stream it is caught up at once; with history, serve only once
	// p.Ready() — the verifier refuses everything as unavailable until then.)
	p := projector.New(js, projector.Options{Logger: slog.New(slog.DiscardHandler), Keyring: keyring})
	if err := p.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer p.Close(ctx)
	v := verifier.New(p.Table(), verifier.Config{Environment: keyledger.EnvLive, Ready: p.Ready})

	// Issue a key the way the admin API does: only the secret's hash goes
	// into the ledger. (Operators use `keyledger keys create` or POST /v1/keys.)
	ledger, err := nats.OpenLog(ctx, js, signer, keyring)
	if err != nil {
		log.Fatal(err)
	}
	secret, err := keyledger.DefaultFormat.New(keyledger.EnvLive, rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	id := events.NewKeyID()
	seq, err := ledger.Append(ctx, &events.KeyCreated{
		Header:      events.NewHeader(events.TypeKeyCreated, id, "example", time.Now()),
		Name:        "billing service",
		Environment: keyledger.EnvLive,
		Permissions: []string{"workflows:read"},
		Owner:       "acme",
		Hash:        keyledger.HashSecret(secret).String(),
		Hint:        keyledger.Hint(secret),
	}, 0) // 0: the key's subject must be empty
	if err != nil {
		log.Fatal(err)
	}
	if err := p.WaitApplied(ctx, seq); err != nil {
		log.Fatal(err)
	}

	check := func(permission string) {
		res := v.Verify(&verifier.Request{Key: secret, Permission: permission})
		if res.Valid() {
			fmt.Printf("%s: %s, owner %s\n", permission, res.Outcome, res.Entry.Owner)
			return
		}
		err := verifier.OutcomeError(res.Outcome, permission, res.RetryAfter)
		fmt.Printf("%s: %s, HTTP %d %s\n", permission, res.Outcome, khttp.HTTPStatus(err), keyledger.ErrorCode(err))
	}
	check("workflows:read")
	check("storage:write")

	// Revoke: append KeyRevoked after the key's last event. The verifier
	// refuses the key as soon as the projector has applied it.
	seq, err = ledger.Append(ctx, &events.KeyRevoked{
		Header: events.NewHeader(events.TypeKeyRevoked, id, "example", time.Now()),
		Reason: "leaked in a CI log",
	}, seq)
	if err != nil {
		log.Fatal(err)
	}
	if err := p.WaitApplied(ctx, seq); err != nil {
		log.Fatal(err)
	}
	check("workflows:read")

	// Output:
	// workflows:read: valid, owner acme
	// storage:write: forbidden, HTTP 403 forbidden
	// workflows:read: revoked, HTTP 401 unauthorized
}
