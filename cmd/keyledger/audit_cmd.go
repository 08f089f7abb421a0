package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/events"
)

// streamClient has no overall timeout: a bundle holds the whole ledger.
var streamClient = &http.Client{}

// auditLogCmd runs `keyledger audit verify|export|checkpoint`.
func auditLogCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	switch args[0] {
	case "verify":
		return auditVerify(ctx, args[1:], stdout, stderr)
	case "export":
		return auditExport(ctx, args[1:], stdout)
	case "checkpoint":
		return auditCheckpoint(ctx, args[1:], stdout)
	}
	return usageErr("audit %s: unknown subcommand", args[0])
}

func auditCheckpoint(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("audit checkpoint", flag.ContinueOnError)
	c := addClientFlags(fs)
	size := fs.Int64("size", 0, "the checkpoint of this many events (default the latest)")
	out := fs.String("out", "", "write the signed note to this file (keep it outside keyledger: a ticket, a git repository)")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	tok, err := c.adminToken()
	if err != nil {
		return err
	}
	cl := c.client()
	cl.Token = tok
	cp, err := cl.Checkpoint(ctx, *size)
	if err != nil {
		return err
	}
	if *out != "" {
		if err := os.WriteFile(*out, []byte(cp.Note), 0o644); err != nil {
			return keyledger.Wrap(keyledger.Internal, err, "cannot write "+*out)
		}
	}
	if c.json {
		return json.NewEncoder(stdout).Encode(cp)
	}
	_, err = fmt.Fprint(stdout, cp.Note)
	return err
}

func auditExport(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("audit export", flag.ContinueOnError)
	c := addClientFlags(fs)
	out := fs.String("out", "", "write the bundle to this file (default stdout)")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	body, err := openExport(ctx, c)
	if err != nil {
		return err
	}
	defer body.Close()
	w := stdout
	if *out != "" {
		f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return keyledger.Wrap(keyledger.Internal, err, "cannot write "+*out)
		}
		defer f.Close()
		w = f
	}
	if _, err := io.Copy(w, body); err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "the bundle was cut off")
	}
	return nil
}

func openExport(ctx context.Context, c *clientFlags) (io.ReadCloser, error) {
	tok, err := c.adminToken()
	if err != nil {
		return nil, err
	}
	cl := c.client()
	cl.Token, cl.HTTP = tok, streamClient
	return cl.AuditExport(ctx)
}

func auditVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	c := addClientFlags(fs)
	file := fs.String("file", "", "verify this bundle (from `keyledger audit export`) instead of asking --url")
	trusted := fs.String("trusted-signers", "", "your copy of the trusted signers (default: the bundle's own, which proves only that it agrees with itself)")
	witnesses := fs.String("witnesses", "", "your copy of the witnesses file (default: the bundle's)")
	since := fs.String("since-checkpoint", "", "a checkpoint you saved earlier: the ledger must extend it")
	save := fs.String("save-checkpoint", "", "on success, write the newest verified checkpoint here, for the next --since-checkpoint")
	dsn := fs.String("clickhouse", "", "also check ClickHouse's audit rows against the ledger, event by event (clickhouse://HOST:PORT/DB)")
	allowRefused := fs.Bool("allow-refused", false, "accept events the keyring refuses (attempted forgeries stay in the ledger): list them, do not fail")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	opts := audit.VerifyOptions{AllowRefused: *allowRefused}
	if *trusted != "" {
		b, err := os.ReadFile(*trusted)
		if err != nil {
			return usageErr("cannot read --trusted-signers: %v", err)
		}
		if opts.Keyring, err = events.ParseKeyring(b); err != nil {
			return usageErr("--trusted-signers: %s", keyledger.ErrorMessage(err))
		}
	}
	if *witnesses != "" {
		b, err := os.ReadFile(*witnesses)
		if err != nil {
			return usageErr("cannot read --witnesses: %v", err)
		}
		if opts.Witnesses, err = audit.ParseWitnesses(b); err != nil {
			return usageErr("--witnesses: %v", err)
		}
	}
	if *since != "" {
		b, err := os.ReadFile(*since)
		if err != nil {
			return usageErr("cannot read --since-checkpoint: %v", err)
		}
		opts.Since = b
	}
	var in io.Reader
	if *file != "" {
		f, err := os.Open(*file)
		if err != nil {
			return usageErr("cannot read --file: %v", err)
		}
		defer f.Close()
		in = f
	} else {
		body, err := openExport(ctx, c)
		if err != nil {
			return err
		}
		defer body.Close()
		in = body
	}
	var ch *audit.ClickHouseCheck
	if *dsn != "" {
		ch = audit.NewClickHouseCheck(ctx, *dsn)
		defer ch.Close()
		ch.Options(&opts)
	}
	rep, err := audit.Verify(in, opts)
	if err != nil {
		return keyledger.Errorf(keyledger.Invalid, "%v", err)
	}
	if ch != nil {
		if err := ch.Finish(rep); err != nil {
			return keyledger.Wrap(keyledger.Unavailable, err, "cannot read ClickHouse's audit rows: "+keyledger.ErrorMessage(err))
		}
	}
	if rep.OK && *save != "" && rep.Newest != "" {
		if err := os.WriteFile(*save, []byte(rep.Newest), 0o644); err != nil {
			return keyledger.Wrap(keyledger.Internal, err, "cannot write "+*save)
		}
	}
	if c.json {
		out := struct {
			*audit.Report
			ClickHouse *chSummary `json:"clickhouse,omitempty"`
		}{Report: rep}
		if ch != nil {
			out.ClickHouse = &chSummary{Rows: ch.Rows, Compared: ch.Compared, Pending: ch.Pending}
		}
		if err := json.NewEncoder(stdout).Encode(out); err != nil {
			return err
		}
	} else {
		printReport(stdout, rep, ch)
	}
	if !rep.OK {
		return errRefused
	}
	return nil
}

type chSummary struct {
	Rows     int `json:"rows"`
	Compared int `json:"compared"`
	Pending  int `json:"pending"`
}

func printReport(w io.Writer, rep *audit.Report, ch *audit.ClickHouseCheck) {
	verdict := "OK"
	if !rep.OK {
		verdict = "FAILED"
	}
	fmt.Fprintf(w, "audit %s: %s\n", verdict, rep.Origin)
	fmt.Fprintf(w, "  events       %d, root %s (%.0f events/s)\n", rep.Events, orDash(rep.Root), rep.EventsPerSecond)
	fmt.Fprintf(w, "  checkpoints  %d verified of %d, %d cosignatures\n", rep.CheckpointsVerified, rep.Checkpoints, rep.Cosignatures)
	if rep.RefusedCount > 0 {
		fmt.Fprintf(w, "  refused      %d events no trusted key signed (first: %v)\n", rep.RefusedCount, rep.Refused)
	}
	if rep.Since != nil {
		fmt.Fprintf(w, "  since        your checkpoint of %d events: %s\n", rep.Since.Size, map[bool]string{true: "extended", false: "NOT extended"}[rep.Since.OK])
	}
	if ch != nil {
		fmt.Fprintf(w, "  clickhouse   %d rows, %d compared, %d not ingested yet\n", ch.Rows, ch.Compared, ch.Pending)
	}
	if rep.KeysFromBundle {
		fmt.Fprintln(w, "  note         keys taken from the bundle: pass --trusted-signers (and --witnesses) to check against your own copies")
	}
	for i, f := range rep.Failures {
		if i == 0 {
			fmt.Fprintln(w, "first divergence:")
		} else if i == 1 {
			fmt.Fprintln(w, "also:")
		}
		fmt.Fprintf(w, "  %s", f.Detail)
		if f.Expected != "" || f.Found != "" {
			fmt.Fprintf(w, " (expected %s, found %s)", orDash(f.Expected), orDash(f.Found))
		}
		fmt.Fprintln(w)
	}
}
