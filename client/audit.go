package client

import (
	"context"
	"fmt"
	"io"
	"net/http"
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
	resp, err := c.send(ctx, http.MethodGet, "/v1/audit/export", true, nil, nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
		return nil, decodeRefusal(resp, b)
	}
	return resp.Body, nil
}
