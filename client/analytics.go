package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/keyledger/keyledger/analytics"
	khttp "github.com/keyledger/keyledger/http"
)

// Usage returns verifications per bucket and outcome (GET /v1/usage).
func (c *Client) Usage(ctx context.Context, q analytics.UsageQuery) ([]analytics.UsagePoint, error) {
	v := url.Values{}
	set(v, "key_id", q.KeyID)
	set(v, "owner", q.Owner)
	setTime(v, "from", q.From)
	setTime(v, "to", q.To)
	set(v, "interval", string(q.Interval))
	var res analytics.UsageResult
	if err := c.get(ctx, khttp.PathUsage, v, &res); err != nil {
		return nil, err
	}
	return res.Points, nil
}

// Quota returns the valid verifications of an owner's live keys in month
// (YYYY-MM; "" is the node's current month) (GET /v1/quota).
func (c *Client) Quota(ctx context.Context, owner, month string) (analytics.Quota, error) {
	v := url.Values{}
	set(v, "owner", owner)
	set(v, "month", month)
	var res analytics.Quota
	err := c.get(ctx, khttp.PathQuota, v, &res)
	return res, err
}

// Audit returns key lifecycle events (GET /v1/audit).
func (c *Client) Audit(ctx context.Context, q analytics.AuditQuery) ([]analytics.AuditEvent, error) {
	v := url.Values{}
	set(v, "key_id", q.KeyID)
	set(v, "actor", q.Actor)
	set(v, "type", q.Type)
	setTime(v, "from", q.From)
	setTime(v, "to", q.To)
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var res analytics.AuditResult
	if err := c.get(ctx, khttp.PathAudit, v, &res); err != nil {
		return nil, err
	}
	return res.Events, nil
}

// Alerts returns alerts (GET /v1/alerts).
func (c *Client) Alerts(ctx context.Context, q analytics.AlertQuery) ([]analytics.Alert, error) {
	v := url.Values{}
	set(v, "rule", q.Rule)
	set(v, "key_id", q.KeyID)
	setTime(v, "from", q.From)
	setTime(v, "to", q.To)
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var res analytics.AlertResult
	if err := c.get(ctx, khttp.PathAlerts, v, &res); err != nil {
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
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	return c.Do(ctx, http.MethodGet, path, c.Token != "", nil, out)
}
