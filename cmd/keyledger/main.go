// Command keyledger runs a keyledger node (serve) and talks to one as an
// operator (keys, verify). It only wires the packages together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/bench"
	"github.com/keyledger/keyledger/node"
)

const usage = `keyledger — an event-sourced API-key ledger

Usage:
  keyledger serve [flags]                 run a node (admin API + verifier)
  keyledger keys create --name N [flags]  issue a key (the secret is shown once)
                        [--credits N [--refill daily|monthly --refill-amount N]]
                                          with a balance of verifications
  keyledger keys list [--owner O] [--environment E] [--status S]
  keyledger keys show ID
  keyledger keys revoke ID [--reason R]
  keyledger keys roll ID [--grace 24h]   replace a key; the old one works for the grace (0s: revoke now)
  keyledger keys events ID                a key's audit trail from the ledger
  keyledger plans create --name N [--monthly-quota N] [--rate R --burst B] [--on-outage closed|open]
  keyledger plans list
  keyledger plans show NAME
  keyledger plans update NAME [--monthly-quota N] [--rate R --burst B | --no-rate] [--on-outage closed|open] [--if-match REV]
                                          change only the flags given
  keyledger owners set OWNER [--plan P] [--metadata JSON]
                                          an owner's plan and metadata (flags left out keep their values)
  keyledger owners show OWNER
  keyledger owners quota OWNER            this month's use against the plan's quota, as the fleet enforces it
  keyledger verify KEY [--permission P]   ask a node whether KEY is valid
  keyledger usage  (--key ID | --owner O) [--from T] [--to T] [--interval minute|hour|day]
  keyledger quota  --owner O [--month YYYY-MM]     valid verifications of O's live keys
  keyledger audit  [--key ID] [--actor A] [--type T] [--from T] [--to T]
  keyledger audit checkpoint [--size N] [--out FILE]
                                          the latest signed checkpoint of the ledger (save it elsewhere)
  keyledger audit verify [--file F] [--since-checkpoint F] [--trusted-signers F] [--clickhouse DSN] [--json]
                                          prove the ledger: signatures, Merkle roots, checkpoints (exit 1 on any failure)
  keyledger audit export [--out FILE]     a self-contained bundle for an auditor
  keyledger alerts [--rule R] [--key ID] [--from T] [--to T]
  keyledger nodes                         live nodes and how far each has applied the ledger
  keyledger creds generate --dir D [--routes] NAME=ROLE[+ROLE]…
                                          NATS nkeys, signing keys and keyring for a fleet
  keyledger scan [--prefix fsk] [--show] [--json] [--report] PATH…
                                          find keys in files (exit 1 if any; - or nothing: stdin)
  keyledger bench NAME [--json]           benchmarks on this machine: verify, authz, revoke, coldstart, ingest, all

Run "keyledger COMMAND -h" for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// errRefused makes `verify` exit 1 without printing an error twice.
var errRefused = errors.New("refused")

// run executes one command and returns the process exit code: 0 success,
// 1 refusal or failure, 2 bad usage.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(ctx, args[1:], stderr)
	case "keys":
		err = keysCmd(ctx, args[1:], stdout)
	case "verify":
		err = verifyCmd(ctx, args[1:], stdout)
	case "audit":
		if len(args) > 1 && (args[1] == "verify" || args[1] == "export" || args[1] == "checkpoint") {
			err = auditLogCmd(ctx, args[1:], stdout, stderr)
		} else {
			err = analyticsCmd(ctx, args[0], args[1:], stdout)
		}
	case "usage", "quota", "alerts":
		err = analyticsCmd(ctx, args[0], args[1:], stdout)
	case "nodes":
		err = nodesCmd(ctx, args[1:], stdout)
	case "plans":
		err = plansCmd(ctx, args[1:], stdout)
	case "owners":
		err = ownersCmd(ctx, args[1:], stdout)
	case "creds":
		err = creds(ctx, args[1:], stdout, stderr)
	case "bench":
		err = bench.Main(ctx, args[1:], stdout, stderr)
	case "scan":
		err = scanCmd(ctx, args[1:], os.Stdin, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "keyledger: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errRefused):
		return 1
	case errors.Is(err, errUsage), errors.Is(err, bench.ErrUsage), errors.Is(err, node.ErrConfig):
		fmt.Fprintf(stderr, "keyledger: %v\n", err)
		return 2
	}
	fmt.Fprintf(stderr, "keyledger: %s\n", keyledger.Describe(err))
	return 1
}

var errUsage = errors.New("usage")

func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// parseArgs parses flags that may come before, between or after positional
// arguments ("keys show ID --json"), and returns the positional ones.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageErr("%v", err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
