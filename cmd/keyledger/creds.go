package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/node"
)

// creds generates a fleet's credentials: `keyledger creds generate --dir D
// [--routes] NAME=ROLE[+ROLE]…`. It prints paths, never a secret.
func creds(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "generate" {
		return usageErr("usage: keyledger creds generate --dir DIR [--routes] NAME=ROLE[+ROLE]… (roles: admin, verifier, analytics, operator)")
	}
	fs := flag.NewFlagSet("creds generate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "directory to write the credentials into (created, mode 0700; nothing is overwritten)")
	routes := fs.Bool("routes", false, "also generate route credentials, for a NATS cluster")
	pos, err := parseArgs(fs, args[1:])
	if err != nil {
		return err
	}
	if *dir == "" || len(pos) == 0 {
		return usageErr("creds generate needs --dir and at least one NAME=ROLE")
	}
	members, err := node.ParseMembers(pos)
	if err != nil {
		return usageErr("%s", keyledger.ErrorMessage(err))
	}
	if err := node.GenerateCredentials(*dir, members, *routes, nil); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "credentials written to %s:\n", *dir)
	fmt.Fprintf(stdout, "  %-22s public nkeys and roles of every member%s (admin nodes and embedded servers)\n", node.FleetFile, map[bool]string{true: ", route password", false: ""}[*routes])
	fmt.Fprintf(stdout, "  %-22s the same users for an external nats-server (include it)\n", "nats-auth.conf")
	if *routes {
		fmt.Fprintf(stdout, "  %-22s route credentials for an external cluster block\n", "nats-routes.conf")
	}
	fmt.Fprintf(stdout, "  %-22s every node's keyring of admin signing keys (public)\n", node.TrustedSignersFile)
	for _, m := range members {
		fmt.Fprintf(stdout, "  %-22s %s's NATS nkey seed: give it to that member only\n", node.NKeyFile(m.Name), m.Name)
		if m.Has(nats.RoleAdmin) {
			fmt.Fprintf(stdout, "  %-22s %s's ledger signing key: that node only\n", node.SigningKeyFile(m.Name), m.Name)
		}
	}
	return nil
}
