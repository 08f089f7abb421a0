package client

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	keyledger "github.com/keyledger/keyledger"
)

// Checkpoint is a signed checkpoint of the ledger (GET /v1/audit/checkpoint).
type Checkpoint struct {
	Origin    string   `json:"origin"`
	Size      int64    `json:"size"`
	Root      string   `json:"root"`
	Signer    string   `json:"signer"`
	Cosigners []string `json:"cosigners"`
	// Note is the signed note, every signature included.
	Note string `json:"note"`
}

// Checkpoint returns the latest checkpoint, or the one of size events
// when size > 0.
func (c *Client) Checkpoint(ctx context.Context, size int64) (*Checkpoint, error) {
	path := "/v1/audit/checkpoint"
	if size > 0 {
		path += fmt.Sprintf("?size=%d", size)
	}
	var out Checkpoint
	if err := c.Do(ctx, http.MethodGet, path, true, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// AuditExport streams the node's audit bundle (GET /v1/audit/export). The
// caller closes it. It is not bounded like other answers: a bundle holds
// the whole ledger.
func (c *Client) AuditExport(ctx context.Context) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(c.BaseURL, "/")+"/v1/audit/export", nil)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Invalid, err, fmt.Sprintf("bad node URL %s", keyledger.Quote(c.BaseURL)))
	}
	if c.Token == "" {
		return nil, keyledger.Errorf(keyledger.Unauthorized, "no admin token given")
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot reach "+redactURL(c.BaseURL))
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
		return nil, decodeRefusal(resp, b)
	}
	return resp.Body, nil
}
