package http

import (
	"context"
	"net/http"
	"net/url"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/analytics"
)

// QuotaSource tells where an owner stands against its plan's monthly
// quota, as the fleet enforces it (its counters, not analytics: the
// number that decides whether the next verification passes).
type QuotaSource interface {
	// Quota returns owner's quota for the month of now (Month as
	// YYYY-MM, UTC).
	Quota(ctx context.Context, owner string, now time.Time) (keyledger.Quota, error)
}

// OwnerQuota is the answer of GET /v1/owners/{owner}/quota.
type OwnerQuota struct {
	keyledger.Quota
	// ExactUsed, with analytics on, is the month's valid verifications as
	// ClickHouse counted them: Used also counts units nodes hold and have
	// not spent yet, so the two differ by at most the fleet's leases.
	ExactUsed *uint64 `json:"exact_used,omitempty"`
}

// errQuotasOff answers the quota endpoint of a node that enforces none.
var errQuotasOff = keyledger.Errorf(keyledger.Unavailable, "this node does not enforce plan quotas, so it cannot tell an owner's quota; ask a node that does")

func (a *api) createPlan(w http.ResponseWriter, r *http.Request) {
	handleWrite(a, w, r, admin.WaitAll, false, http.StatusCreated, func(ctx context.Context, p keyledger.Plan, w8 admin.Write) (*admin.PlanView, string, error) {
		res, err := a.svc.CreatePlan(ctx, p, w8)
		if err != nil {
			return nil, "", err
		}
		w.Header().Set("ETag", etag(res.Revision))
		return res, "/v1/plans/" + res.Name, nil
	})
}

func (a *api) updatePlan(w http.ResponseWriter, r *http.Request) {
	match, err := ifMatch(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	handleWrite(a, w, r, admin.WaitAll, false, http.StatusOK, func(ctx context.Context, patch admin.PlanPatch, w8 admin.Write) (*admin.PlanUpdated, string, error) {
		res, err := a.svc.UpdatePlan(ctx, r.PathValue("name"), patch, match, w8)
		if err == nil {
			w.Header().Set("ETag", etag(res.Revision))
		}
		return res, "", err
	})
}

func (a *api) getPlan(w http.ResponseWriter, r *http.Request) {
	p, err := a.svc.GetPlan(r.Context(), r.PathValue("name"), callerOf(r).write())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set("ETag", etag(p.Revision))
	WriteJSON(w, http.StatusOK, p)
}

func (a *api) listPlans(w http.ResponseWriter, r *http.Request) {
	if err := noQuery(r); err != nil {
		a.fail(w, r, err)
		return
	}
	list, err := a.svc.ListPlans(r.Context(), callerOf(r).write())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, list)
}

// noQuery refuses query parameters on an endpoint that takes none, as
// listings refuse unknown ones: a filter that is silently ignored answers
// more than the caller asked for.
func noQuery(r *http.Request) error {
	for name := range r.URL.Query() {
		return keyledger.Errorf(keyledger.Invalid, "unknown query parameter %s (this endpoint takes none)", keyledger.Quote(name))
	}
	return nil
}

func (a *api) putOwner(w http.ResponseWriter, r *http.Request) {
	// 200 for a replace; handleWrite answers 201 when there is a
	// Location, i.e. when the PUT created the record.
	handleWrite(a, w, r, admin.WaitAll, false, http.StatusOK, func(ctx context.Context, req admin.OwnerRequest, w8 admin.Write) (*admin.OwnerView, string, error) {
		owner := r.PathValue("owner")
		res, err := a.svc.PutOwner(ctx, owner, req, w8)
		if err != nil {
			return nil, "", err
		}
		w.Header().Set("ETag", etag(res.Revision))
		if res.Created {
			return res, "/v1/owners/" + url.PathEscape(owner), nil
		}
		return res, "", nil
	})
}

func (a *api) getOwner(w http.ResponseWriter, r *http.Request) {
	o, err := a.svc.GetOwner(r.Context(), r.PathValue("owner"), callerOf(r).write())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set("ETag", etag(o.Revision))
	WriteJSON(w, http.StatusOK, o)
}

// ownerQuota answers the enforcement state, and the exact count beside it
// when analytics is on. Analytics failing does not fail the answer: the
// enforced figure is the one a caller needs, the exact one a refinement
// (the error is logged, and exact_used left out).
func (a *api) ownerQuota(w http.ResponseWriter, r *http.Request) {
	owner := r.PathValue("owner")
	if err := noQuery(r); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.svc.CheckOwner(owner, callerOf(r).write()); err != nil {
		a.fail(w, r, err)
		return
	}
	if a.quotas == nil {
		a.fail(w, r, errQuotasOff)
		return
	}
	q, err := a.quotas.Quota(r.Context(), owner, time.Now())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	res := OwnerQuota{Quota: q}
	if an := a.analytics(); an != nil {
		if exact, err := an.Quota(r.Context(), owner, q.Month); err != nil {
			a.log.Warn("exact quota use unavailable from analytics", "owner", owner, "month", q.Month, "err", err)
		} else {
			res.ExactUsed = &exact.Used
		}
	}
	WriteJSON(w, http.StatusOK, res)
}

// analyticsOf returns the analytics o serves (nil when off or not up yet).
func analyticsOf(o RouterOptions) func() *analytics.Analytics {
	switch {
	case o.Analytics != nil:
		return func() *analytics.Analytics { return o.Analytics }
	case o.AnalyticsLater != nil:
		return o.AnalyticsLater
	}
	return func() *analytics.Analytics { return nil }
}
