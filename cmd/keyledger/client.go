package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keyledger/keyledger/internal/cli"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/client"
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
	fs.StringVar(&c.url, "url", cli.EnvOr("KEYLEDGER_URL", "http://127.0.0.1:8080"), "node URL (env KEYLEDGER_URL)")
	fs.StringVar(&c.token, "token", "", "admin token (default: env KEYLEDGER_ADMIN_TOKEN, else the file DATA/admin-token)")
	fs.StringVar(&c.data, "data", cli.EnvOr("KEYLEDGER_DATA", "./data"), "data directory of a local node, to read its admin-token file")
	fs.BoolVar(&c.json, "json", false, "print JSON for scripts")
	return c
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

// do sends a request through the library client and decodes a JSON answer
// into out, or the error envelope into a *keyledger.Error.
// doWith is an authenticated do with extra request headers.
func (c *clientFlags) doWith(ctx context.Context, method, path string, header map[string]string, body, out any) error {
	return c.send(ctx, method, path, true, header, body, out)
}

func (c *clientFlags) do(ctx context.Context, method, path string, auth bool, body, out any) error {
	return c.send(ctx, method, path, auth, nil, body, out)
}

func (c *clientFlags) send(ctx context.Context, method, path string, auth bool, header map[string]string, body, out any) error {
	cl := c.client()
	if auth {
		tok, err := c.adminToken()
		if err != nil {
			return err
		}
		cl.Token = tok
	}
	if _, err := url.Parse(c.url); err != nil {
		return usageErr("bad --url: %v", err)
	}
	return cl.DoWith(ctx, method, path, auth, header, body, out)
}

// client is the library client for --url, without a token.
func (c *clientFlags) client() *client.Client {
	return &client.Client{BaseURL: c.url, HTTP: httpClient}
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
