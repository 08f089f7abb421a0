package node

import (
	"context"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/quota"
)

// quotas answers GET /v1/owners/{owner}/quota from the fleet's counters:
// the number the verifiers enforce.
type quotas struct{ n *Node }

// Quota implements khttp.QuotaSource.
func (q quotas) Quota(ctx context.Context, owner string, now time.Time) (keyledger.Quota, error) {
	o, ok := q.n.projector.Owner(owner)
	if !ok {
		return keyledger.Quota{}, keyledger.Errorf(keyledger.NotFound, "no owner %s in the ledger (PUT /v1/owners/{owner} makes one)", keyledger.Quote(owner))
	}
	w := quota.Month(now, 0)
	res := keyledger.Quota{Owner: owner, Plan: o.Plan, Month: w.Period, ResetsAt: w.End}
	if p := q.n.projector.OwnerPlan(owner); p != nil {
		res.Limit = p.MonthlyQuota
	}
	v, found, err := q.n.counters.ReadCounter(ctx, nats.CounterKey(quota.KindQuota, keyledger.OwnerID(owner)))
	if err != nil {
		return keyledger.Quota{}, err
	}
	if found && v.Period == w.Period {
		res.Used = v.Used
	}
	return res, nil
}
