// Package cli holds the few helpers that the keyledger command and its
// benchmarks share for reading flags and printing to a terminal.
package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
)

// EnvOr is the environment variable name, or def when it is unset or empty:
// the default of a flag that the environment may set.
func EnvOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// SplitList splits a comma-separated flag value, dropping blanks.
func SplitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// PrintTable prints rows under a header, aligned.
func PrintTable(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}
