package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	khttp "github.com/keyledger/keyledger/http"
)

// CreatePlan adds a plan (POST /v1/plans); a plan of that name already in
// the ledger is a conflict with reason already_exists.
func (c *Client) CreatePlan(ctx context.Context, p keyledger.Plan, o WriteOptions) (*admin.PlanView, error) {
	var res admin.PlanView
	if err := c.Do(ctx, http.MethodPost, "/v1/plans"+o.query(), true, p, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// UpdatePlan applies a JSON merge patch to a plan (PATCH
// /v1/plans/{name}): monthly_quota, rate_limit (nil clears it) and
// on_outage. ifMatch, when not 0, is the revision the caller read: the
// update happens only if the plan is still at it (else a
// revision_mismatch conflict).
func (c *Client) UpdatePlan(ctx context.Context, name string, patch map[string]any, ifMatch uint64, o WriteOptions) (*admin.PlanUpdated, error) {
	var res admin.PlanUpdated
	if err := c.DoWith(ctx, http.MethodPatch, "/v1/plans/"+url.PathEscape(name)+o.query(), true, ifMatchHeader(ifMatch), patch, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// GetPlan reads one plan (GET /v1/plans/{name}).
func (c *Client) GetPlan(ctx context.Context, name string) (*keyledger.PlanRecord, error) {
	var res keyledger.PlanRecord
	if err := c.Do(ctx, http.MethodGet, "/v1/plans/"+url.PathEscape(name), true, nil, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// ListPlans lists every plan by name (GET /v1/plans).
func (c *Client) ListPlans(ctx context.Context) ([]keyledger.PlanRecord, error) {
	var res admin.PlanList
	if err := c.Do(ctx, http.MethodGet, "/v1/plans", true, nil, &res); err != nil {
		return nil, err
	}
	return res.Plans, nil
}

// PutOwner creates or replaces an owner's record (PUT /v1/owners/{owner}):
// its plan, which must exist ("" for none), and its metadata.
func (c *Client) PutOwner(ctx context.Context, owner string, req admin.OwnerRequest, o WriteOptions) (*admin.OwnerView, error) {
	var res admin.OwnerView
	if err := c.Do(ctx, http.MethodPut, "/v1/owners/"+url.PathEscape(owner)+o.query(), true, req, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// GetOwner reads an owner's record (GET /v1/owners/{owner}).
func (c *Client) GetOwner(ctx context.Context, owner string) (*keyledger.Owner, error) {
	var res keyledger.Owner
	if err := c.Do(ctx, http.MethodGet, "/v1/owners/"+url.PathEscape(owner), true, nil, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// OwnerQuota tells where an owner stands against its plan's monthly quota
// as the fleet enforces it, with the exact count when the node runs
// analytics (GET /v1/owners/{owner}/quota). Quota is analytics' count
// alone.
func (c *Client) OwnerQuota(ctx context.Context, owner string) (*khttp.OwnerQuota, error) {
	var res khttp.OwnerQuota
	if err := c.Do(ctx, http.MethodGet, "/v1/owners/"+url.PathEscape(owner)+"/quota", true, nil, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// ifMatchHeader is the If-Match of a conditional write (none for 0).
func ifMatchHeader(rev uint64) map[string]string {
	if rev == 0 {
		return nil
	}
	return map[string]string{"If-Match": `"` + strconv.FormatUint(rev, 10) + `"`}
}
