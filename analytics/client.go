package analytics

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
)

// Client calls the analytics HTTP API (see Handler). Errors from the
// server come back as *keyledger.Error with the server's code and message.
type Client struct {
	// BaseURL is where Handler is mounted, e.g. "http://127.0.0.1:8080".
	BaseURL string
	// Token, if set, is sent as "Authorization: Bearer <token>".
	Token string
	// HTTP is the client used (default http.DefaultClient).
	HTTP *http.Client
}

// Usage calls GET /v1/usage.
func (c *Client) Usage(ctx context.Context, q UsageQuery) ([]UsagePoint, error) {
	v := url.Values{}
	set(v, "key_id", q.KeyID)
	set(v, "owner", q.Owner)
	setTime(v, "from", q.From)
	setTime(v, "to", q.To)
	set(v, "interval", string(q.Interval))
	var res UsageResult
	if err := c.get(ctx, PathUsage, v, &res); err != nil {
		return nil, err
	}
	return res.Points, nil
}

// Quota calls GET /v1/quota; month is YYYY-MM ("" is the server's current
// month).
func (c *Client) Quota(ctx context.Context, owner, month string) (Quota, error) {
	v := url.Values{}
	set(v, "owner", owner)
	set(v, "month", month)
	var res Quota
	err := c.get(ctx, PathQuota, v, &res)
	return res, err
}

// Audit calls GET /v1/audit.
func (c *Client) Audit(ctx context.Context, q AuditQuery) ([]AuditEvent, error) {
	v := url.Values{}
	set(v, "key_id", q.KeyID)
	set(v, "actor", q.Actor)
	set(v, "type", q.Type)
	setTime(v, "from", q.From)
	setTime(v, "to", q.To)
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var res AuditResult
	if err := c.get(ctx, PathAudit, v, &res); err != nil {
		return nil, err
	}
	return res.Events, nil
}

// Alerts calls GET /v1/alerts.
func (c *Client) Alerts(ctx context.Context, q AlertQuery) ([]Alert, error) {
	v := url.Values{}
	set(v, "rule", q.Rule)
	set(v, "key_id", q.KeyID)
	setTime(v, "from", q.From)
	setTime(v, "to", q.To)
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var res AlertResult
	if err := c.get(ctx, PathAlerts, v, &res); err != nil {
		return nil, err
	}
	return res.Alerts, nil
}

func set(v url.Values, k, s string) {
	if s != "" {
		v.Set(k, s)
	}
}

func setTime(v url.Values, k string, t time.Time) {
	if !t.IsZero() {
		v.Set(k, t.UTC().Format(time.RFC3339Nano))
	}
}

func (c *Client) get(ctx context.Context, path string, v url.Values, out any) error {
	u := strings.TrimRight(c.BaseURL, "/") + path
	if len(v) > 0 {
		u += "?" + v.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return keyledger.Wrap(keyledger.Invalid, err, fmt.Sprintf("bad analytics URL %q", c.BaseURL))
	}
	req.Header.Set("Accept", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "analytics server unreachable")
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "reading the analytics response")
	}
	if resp.StatusCode/100 != 2 {
		return keyledger.ErrorFromResponse(resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return keyledger.Wrap(keyledger.Internal, err, "malformed analytics response")
	}
	return nil
}
