package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"

	khttp "github.com/keyledger/keyledger/http"
	"github.com/keyledger/keyledger/internal/cli"
	"github.com/keyledger/keyledger/scan"
)

// errFound makes `scan` exit 1 when it found keys (for pre-commit hooks)
// without printing an error.
var errFound = errRefused

// scanCmd finds keyledger keys in files, directories or stdin.
func scanCmd(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("scan", flag.ContinueOnError)
	prefixes := fs.String("prefix", "fsk", "product prefixes to look for, comma-separated")
	show := fs.Bool("show", false, "print the whole secret (default: only its hint)")
	binary := fs.Bool("binary", false, "scan files holding NUL bytes too")
	report := fs.Bool("report", false, "report the keys found to the node's POST /v1/leaks (revokes them)")
	source := fs.String("source", "keyledger-scan", "with --report: the scanner's name in the ledger")
	c := addClientFlags(fs)
	paths, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	s, err := scan.New(cli.SplitList(*prefixes)...)
	if err != nil {
		return usageErr("--prefix: %v", err)
	}
	s.Binary = *binary
	var found []scan.Finding
	add := func(f scan.Finding) { found = append(found, f) }
	skipped := func(p string, err error) { fmt.Fprintf(stderr, "keyledger scan: skipped %s: %v\n", p, err) }
	if len(paths) == 0 {
		paths = []string{"-"}
	}
	for _, p := range paths {
		if p == "-" {
			if err := s.Reader(stdin, "(stdin)", add); err != nil {
				return err
			}
			continue
		}
		if err := s.Path(p, add, skipped); err != nil {
			return err
		}
	}
	type out struct {
		scan.Finding
		Secret string `json:"secret,omitempty"`
	}
	rows := make([]out, len(found))
	for i, f := range found {
		rows[i] = out{Finding: f}
		if *show {
			rows[i].Secret = f.Secret
		}
	}
	if c.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(map[string]any{"findings": rows}); err != nil {
			return err
		}
	} else {
		for _, r := range rows {
			what := r.Environment.String() + " key …" + r.Hint
			if *show {
				what = r.Secret
			}
			fmt.Fprintf(stdout, "%s:%d:%d: %s\n", r.Path, r.Line, r.Column, what)
		}
	}
	if *report && len(found) > 0 {
		var req khttp.LeakRequest
		req.Source = *source
		seen := map[string]bool{}
		for _, f := range found {
			if seen[f.Secret] {
				continue
			}
			seen[f.Secret] = true
			req.Tokens = append(req.Tokens, struct {
				Token string `json:"token"`
				URL   string `json:"url"`
				Type  string `json:"type"`
			}{Token: f.Secret, URL: fmt.Sprintf("file://%s#L%d", strings.TrimPrefix(f.Path, "./"), f.Line)})
		}
		var res khttp.LeakResponse
		if err := c.do(ctx, "POST", khttp.PathLeaks, true, req, &res); err != nil {
			return err
		}
		n := 0
		for _, r := range res.Results {
			if r.Action == "revoked" {
				n++
			}
		}
		fmt.Fprintf(stderr, "keyledger scan: reported %d keys; %d revoked now\n", len(req.Tokens), n)
	}
	if len(found) > 0 {
		fmt.Fprintf(stderr, "keyledger scan: %d key(s) found\n", len(found))
		return errFound
	}
	return nil
}
