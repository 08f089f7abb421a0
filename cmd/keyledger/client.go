package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	keyledger "github.com/keyledger/keyledger"
)

// clientFlags are the flags of every command that talks to a node.
type clientFlags struct {
	url   string
	token string
	data  string
	json  bool
}

func addClientFlags(fs *flag.FlagSet) *clientFlags {
	c := &clientFlags{}
	fs.StringVar(&c.url, "url", envOr("KEYLEDGER_URL", "http://127.0.0.1:8080"), "node URL (env KEYLEDGER_URL)")
	fs.StringVar(&c.token, "token", "", "admin token (default: env KEYLEDGER_ADMIN_TOKEN, else the file DATA/admin-token)")
	fs.StringVar(&c.data, "data", envOr("KEYLEDGER_DATA", "./data"), "data directory of a local node, to read its admin-token file")
	fs.BoolVar(&c.json, "json", false, "print JSON for scripts")
	return c
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// adminToken resolves the admin token: flag, environment, then the file a
// local `serve` wrote.
func (c *clientFlags) adminToken() (string, error) {
	if c.token != "" {
		return c.token, nil
	}
	if t := os.Getenv("KEYLEDGER_ADMIN_TOKEN"); t != "" {
		return t, nil
	}
	path := filepath.Join(c.data, "admin-token")
	b, err := os.ReadFile(path)
	if err != nil {
		return "", keyledger.Errorf(keyledger.Unauthorized, "no admin token: pass --token, set KEYLEDGER_ADMIN_TOKEN, or run next to a node's data dir (%s not readable)", path)
	}
	return strings.TrimSpace(string(b)), nil
}

var httpClient = &http.Client{Timeout: 30 * time.Second}

// do sends a request and decodes a JSON answer into out, or the error
// envelope into a *keyledger.Error.
func (c *clientFlags) do(ctx context.Context, method, path string, auth bool, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.url, "/")+path, rd)
	if err != nil {
		return usageErr("bad --url: %v", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth {
		tok, err := c.adminToken()
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot reach "+c.url)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "reading the answer")
	}
	if resp.StatusCode >= 300 {
		return keyledger.ErrorFromResponse(resp.StatusCode, b)
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = b
		return nil
	}
	return json.Unmarshal(b, out)
}

// printJSON prints raw JSON indented.
func printJSON(w io.Writer, raw []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		_, err = w.Write(raw)
		return err
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

// printTable prints rows under a header, aligned.
func printTable(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func fmtTime(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
