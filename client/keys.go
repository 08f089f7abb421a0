package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	khttp "github.com/keyledger/keyledger/http"
)

// KeyFilter selects keys to list; empty fields match every key.
type KeyFilter struct {
	Owner       string
	Environment string // live or test
	Status      string // active, expired, revoked or disabled
	NamePrefix  string
	Hint        string
}

// WriteOptions say how long a write waits before answering (the query
// parameters ?wait= and ?timeout=); the zero value takes the endpoint's
// default.
type WriteOptions struct {
	Wait    admin.Wait
	Timeout time.Duration
}

func (o WriteOptions) query() string {
	v := url.Values{}
	if o.Wait != "" {
		v.Set("wait", string(o.Wait))
	}
	if o.Timeout > 0 {
		v.Set("timeout", o.Timeout.String())
	}
	if len(v) == 0 {
		return ""
	}
	return "?" + v.Encode()
}

// CreateKey issues a key (POST /v1/keys), with credits when req.Credits
// is set. The answer holds the secret, this once.
func (c *Client) CreateKey(ctx context.Context, req admin.CreateRequest, o WriteOptions) (*admin.Created, error) {
	var res admin.Created
	if err := c.Do(ctx, http.MethodPost, "/v1/keys"+o.query(), true, req, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// ImportKey brings in a key issued elsewhere by the SHA-256 of its secret
// (POST /v1/keys/import).
func (c *Client) ImportKey(ctx context.Context, req admin.ImportRequest, o WriteOptions) (*admin.KeyView, error) {
	var res admin.KeyView
	if err := c.Do(ctx, http.MethodPost, "/v1/keys/import"+o.query(), true, req, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Key reads one key (GET /v1/keys/{id}).
func (c *Client) Key(ctx context.Context, id string) (*admin.KeyView, error) {
	var res admin.KeyView
	if err := c.Do(ctx, http.MethodGet, "/v1/keys/"+url.PathEscape(id), true, nil, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// KeysPage reads one page of keys, newest first (GET /v1/keys): limit 0
// is the node's default (100); cursor "" the first page. The page's
// NextCursor is "" on the last one.
func (c *Client) KeysPage(ctx context.Context, f KeyFilter, limit int, cursor string) (*admin.KeyPage, error) {
	v := url.Values{}
	set(v, "owner", f.Owner)
	set(v, "environment", f.Environment)
	set(v, "status", f.Status)
	set(v, "name_prefix", f.NamePrefix)
	set(v, "hint", f.Hint)
	set(v, "cursor", cursor)
	if limit > 0 {
		v.Set("limit", strconv.Itoa(limit))
	}
	path := "/v1/keys"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var res admin.KeyPage
	if err := c.Do(ctx, http.MethodGet, path, true, nil, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Keys lists every key matching f, newest first, reading page after page
// of 1000.
func (c *Client) Keys(ctx context.Context, f KeyFilter) ([]admin.KeyView, error) {
	var all []admin.KeyView
	cursor := ""
	for {
		p, err := c.KeysPage(ctx, f, 1000, cursor)
		if err != nil {
			return nil, err
		}
		all = append(all, p.Keys...)
		if p.NextCursor == "" {
			return all, nil
		}
		cursor = p.NextCursor
	}
}

// RevokeKey revokes a key for good (POST /v1/keys/{id}/revoke); by default
// it waits until every live node refuses it.
func (c *Client) RevokeKey(ctx context.Context, id, reason string, o WriteOptions) (*admin.Revoked, error) {
	var res admin.Revoked
	body := struct {
		Reason string `json:"reason"`
	}{reason}
	if err := c.Do(ctx, http.MethodPost, "/v1/keys/"+url.PathEscape(id)+"/revoke"+o.query(), true, body, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// RollKey replaces a key (POST /v1/keys/{id}/roll); the old one keeps
// working for grace (0: revoked now).
func (c *Client) RollKey(ctx context.Context, id string, grace time.Duration, o WriteOptions) (*admin.Rolled, error) {
	var res admin.Rolled
	body := struct {
		ExpireOldIn string `json:"expire_old_in"`
	}{grace.String()}
	if err := c.Do(ctx, http.MethodPost, "/v1/keys/"+url.PathEscape(id)+"/roll"+o.query(), true, body, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// UpdateKey applies a JSON merge patch to a key (PATCH /v1/keys/{id}):
// name, permissions, rate_limit, expires_at, metadata, allowed_ips,
// credits (a *keyledger.Credits, which starts the balance again from its
// remaining; nil clears them), and a "reason". ifMatch, when not 0, is
// the revision the caller read: the update happens only if the key is
// still at it (else a revision_mismatch conflict).
func (c *Client) UpdateKey(ctx context.Context, id string, patch map[string]any, ifMatch uint64, o WriteOptions) (*admin.Updated, error) {
	var res admin.Updated
	if err := c.DoWith(ctx, http.MethodPatch, "/v1/keys/"+url.PathEscape(id)+o.query(), true, ifMatchHeader(ifMatch), patch, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// DisableKey makes a key refused until EnableKey (POST
// /v1/keys/{id}/disable); by default it waits until every live node
// refuses it.
func (c *Client) DisableKey(ctx context.Context, id, reason string, o WriteOptions) (*admin.Updated, error) {
	return c.switchKey(ctx, id, "disable", reason, o)
}

// EnableKey undoes DisableKey (POST /v1/keys/{id}/enable).
func (c *Client) EnableKey(ctx context.Context, id, reason string, o WriteOptions) (*admin.Updated, error) {
	return c.switchKey(ctx, id, "enable", reason, o)
}

func (c *Client) switchKey(ctx context.Context, id, op, reason string, o WriteOptions) (*admin.Updated, error) {
	var res admin.Updated
	body := struct {
		Reason string `json:"reason"`
	}{reason}
	if err := c.Do(ctx, http.MethodPost, "/v1/keys/"+url.PathEscape(id)+"/"+op+o.query(), true, body, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// KeyEvents returns a key's history from the ledger (GET
// /v1/keys/{id}/events), oldest first.
func (c *Client) KeyEvents(ctx context.Context, id string) ([]khttp.HistoryEntry, error) {
	var res struct {
		Events []khttp.HistoryEntry `json:"events"`
	}
	if err := c.Do(ctx, http.MethodGet, "/v1/keys/"+url.PathEscape(id)+"/events", true, nil, &res); err != nil {
		return nil, err
	}
	return res.Events, nil
}

// Nodes lists the live nodes and how far each has applied the ledger (GET
// /v1/nodes).
func (c *Client) Nodes(ctx context.Context) ([]admin.NodeView, error) {
	var res struct {
		Nodes []admin.NodeView `json:"nodes"`
	}
	if err := c.Do(ctx, http.MethodGet, "/v1/nodes", true, nil, &res); err != nil {
		return nil, err
	}
	return res.Nodes, nil
}

// redactURL drops a password from a URL before it goes into an error.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return keyledger.Quote(s)
	}
	return u.Redacted()
}
