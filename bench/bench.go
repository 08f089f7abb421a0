// Package bench is `keyledger bench`: the system benchmarks whose figures
// the README quotes (revocation propagation, verification, forward auth
// against nginx, cold start, ingestion into ClickHouse). Each one sets up
// what it needs on this machine (embedded NATS, a local cluster, temp
// dirs), on loopback only, and prints a table or, with --json, one object
// per benchmark, so that a run can be compared with the quoted one.
//
// It is a package of its own, not part of the command, so that the binary's
// main package only wires commands, and so that its smoke test runs without
// the CLI's.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/keyledger/keyledger/internal/cli"

	keyledger "github.com/keyledger/keyledger"
)

const usage = `keyledger bench — reproducible benchmarks on this machine (loopback only)

Usage:
  keyledger bench revoke [--nodes 3] [--revocations 200] [--json]
      start a local cluster (or use --urls) and measure how long after the start
      of a revoke call every node refuses the key over HTTP
  keyledger bench verify [--keys 100000] [--random] [--json]
      in-process verification, ns/op for a valid key and a bad checksum; --random also
      verifies every key once in random order and reports the table's heap per key
  keyledger bench authz [--duration 5s] [--connections 32] [--threads 1] [--json]
      GET /v1/authz with a valid key against nginx "return 200", same wrk settings
      (scripts/bench-deps.sh installs wrk and nginx)
  keyledger bench ingest [--events 500000] [--clickhouse HOST:PORT] [--json]
      events/s from USAGE into ClickHouse (scripts/clickhouse.sh start runs one)
  keyledger bench audit [--events 1000000] [--json]
      audit verify of a bundle of N signed events (events/s), tree append, inclusion proof
  keyledger bench quota [--nodes 3] [--quota 100000] [--workers 8] [--lease-max 1000] [--json]
      hammer one owner's plan quota from every node of a local cluster past its
      limit: overshoot (≤ 0 by design), shortfall, accepted req/s beside an unmetered key
  keyledger bench all [--json]
      every benchmark above with its defaults, one after the other
  keyledger bench coldstart [--keys 1000000] [--tail 1000] [--records] [--replay] [--json]
      seconds from start to ready (snapshot + tail, caught up, verifying) with N keys
`

// ErrUsage is the cause of every error Main returns because the command
// line, not the machine, is wrong: the CLI prints it and exits 2.
var ErrUsage = errors.New("usage")

func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUsage, fmt.Sprintf(format, args...))
}

// Result is what --json prints: one object per benchmark, on one line.
// Its field names are part of the output that the README quotes and that
// scripts compare between runs; they do not change.
type Result struct {
	Name  string             `json:"name"`
	Value float64            `json:"value"`
	Unit  string             `json:"unit"`
	Extra map[string]float64 `json:"extra,omitempty"`
	Notes string             `json:"notes,omitempty"`
}

// Main runs `keyledger bench ARGS…`: args is what follows "bench", e.g.
// ["revoke", "--nodes", "3", "--json"] or ["all"]. Results go to stdout,
// progress and the usage text to stderr (stdout for -h), so that --json
// output stays parseable.
//
// The error wraps flag.ErrHelp after -h or --help (exit 0), ErrUsage for a
// bad command line (exit 2); any other error is a benchmark that failed.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageErr("bench needs a benchmark name")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return fmt.Errorf("bench: %w", flag.ErrHelp)
	case "revoke":
		return revoke(ctx, args[1:], stdout, stderr)
	case "coldstart":
		return coldstart(ctx, args[1:], stdout, stderr)
	case "verify":
		return verify(ctx, args[1:], stdout, stderr)
	case "authz":
		return authz(ctx, args[1:], stdout, stderr)
	case "ingest":
		return ingest(ctx, args[1:], stdout, stderr)
	case "audit":
		return auditBench(ctx, args[1:], stdout, stderr)
	case "quota":
		return quotaBench(ctx, args[1:], stdout, stderr)
	case "all":
		return all(ctx, args[1:], stdout, stderr)
	case "node-start":
		return nodeStart(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprint(stderr, usage)
	return usageErr("unknown benchmark %q", args[0])
}

// all runs every benchmark with its defaults. With --json it prints one
// object per line; a benchmark that cannot run here (no wrk, no
// ClickHouse) is reported and the rest go on, so that one missing tool
// does not cost the other figures.
func all(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench all", stderr)
	asJSON := fs.Bool("json", false, "print one JSON object per benchmark")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	var extra []string
	if *asJSON {
		extra = []string{"--json"}
	}
	var failed []string
	for _, b := range []struct {
		name string
		run  func(context.Context, []string, io.Writer, io.Writer) error
	}{
		{"verify", verify},
		{"authz", authz},
		{"revoke", revoke},
		{"coldstart", coldstart},
		{"ingest", ingest},
	} {
		if ctx.Err() != nil {
			// Interrupted: the remaining benchmarks would fail at once.
			failed = append(failed, b.name)
			continue
		}
		if !*asJSON {
			fmt.Fprintf(stdout, "\n== bench %s\n", b.name)
		}
		if err := b.run(ctx, extra, stdout, stderr); err != nil {
			fmt.Fprintf(stderr, "bench %s: %s\n", b.name, keyledger.Describe(err))
			failed = append(failed, b.name)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("benchmarks that did not run: %s", strings.Join(failed, ", "))
	}
	return nil
}

// newFlagSet returns a flag set that reports to stderr rather than the
// process's os.Stderr, so that a caller (or a test) sees the -h text
// where it sees the rest.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseArgs parses a benchmark's flags. A benchmark takes no positional
// arguments: one is most likely a mistyped flag, and running for minutes
// with the defaults instead would be the worse answer.
func parseArgs(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageErr("%v", err)
	}
	if fs.NArg() > 0 {
		return usageErr("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}

// report writes r as one JSON line, or rows as a table for a person.
func report(w io.Writer, asJSON bool, r Result, rows [][]string) error {
	if asJSON {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(w, string(b))
		return err
	}
	return cli.PrintTable(w, []string{"METRIC", "VALUE"}, rows)
}

// waitFor polls cond every interval until it holds, ctx ends or timeout
// passes. It is for conditions that have no notification to wait on (a
// projector's readiness, a fleet's heartbeats, a counter), so that no wait
// of a benchmark is a guess at a duration or without end.
func waitFor(ctx context.Context, timeout, interval time.Duration, what string, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(interval)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			if cond() {
				return nil
			}
			return fmt.Errorf("%s: not after %v: %w", what, timeout, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// closeTimeout bounds the shutdown of what a benchmark started, so that a
// stuck part cannot hold the command after its figures are printed.
const closeTimeout = 30 * time.Second

// closeWithin calls stop with a context that ends after closeTimeout.
func closeWithin(stop func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	return stop(ctx)
}
