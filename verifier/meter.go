package verifier

import (
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/projector"
	"github.com/keyledger/keyledger/quota"
	"golang.org/x/time/rate"
)

// Accounts is what the verifier reads of the ledger's plans and owners
// (the projector).
type Accounts interface {
	// OwnerPlan returns owner's plan, nil when nothing is metered.
	OwnerPlan(owner string) *keyledger.Plan
	// AccountsGen moves whenever a plan or an owner changes.
	AccountsGen() uint64
}

// meters holds the verifier's side of the fleet counters.
type meters struct {
	m        *quota.Meter
	accounts Accounts
}

// ownerCounters returns the counters of owner's plan (nil for none).
func (ms *meters) ownerCounters(name string) (q, r *quota.Counter) {
	p := ms.accounts.OwnerPlan(name)
	if p == nil {
		return nil, nil
	}
	id := keyledger.OwnerID(name)
	failOpen := func() bool { return ms.accounts.OwnerPlan(name).FailsOpen() }
	if p.MonthlyQuota > 0 {
		q = ms.m.Counter(quota.Spec{Kind: quota.KindQuota, Key: nats.CounterKey(quota.KindQuota, id), Owner: name, FailOpen: failOpen,
			Window: func(now time.Time) quota.Window {
				p := ms.accounts.OwnerPlan(name)
				if p == nil || p.MonthlyQuota <= 0 {
					s := keyledger.MonthStart(now)
					return quota.Window{Period: "none", Start: s, End: s.AddDate(0, 1, 0), Limit: -1}
				}
				return quota.Month(now, p.MonthlyQuota)
			}})
	}
	if p.RateLimit != nil {
		r = ms.m.Counter(quota.Spec{Kind: quota.KindRate, Key: nats.CounterKey(quota.KindRate, id), Owner: name, FailOpen: func() bool { return true },
			Window: func(now time.Time) quota.Window {
				p := ms.accounts.OwnerPlan(name)
				if p == nil || p.RateLimit == nil {
					return unlimitedSecond(now)
				}
				return quota.RateWindow(now, p.RateLimit.PerSecond)
			}})
	}
	return q, r
}

func unlimitedSecond(now time.Time) quota.Window {
	s := now.Truncate(time.Second)
	return quota.Window{Period: "none", Start: s, End: s.Add(time.Second), Limit: -1}
}

// keyMeters returns the entry's meters, or nil when it has none: a live
// key without a rate limit or credits, while the ledger holds no plans,
// costs no atomic. A plan or owner change (the accounts' generation
// moves) makes new meters on next use.
func (v *Verifier) keyMeters(e *projector.Entry) *projector.Meters {
	var gen uint64
	if v.meters != nil && e.Environment == keyledger.EnvLive {
		gen = v.meters.accounts.AccountsGen()
	}
	if gen == 0 && e.Extra == nil && e.Environment != keyledger.EnvTest {
		return nil
	}
	km := e.Meters(func() *projector.Meters { return v.newMeters(e, nil, gen) })
	if km.Gen != gen {
		km = e.SwapMeters(km, v.newMeters(e, km, gen))
	}
	return km
}

// newMeters makes e's meters; the key's own come from old when set.
func (v *Verifier) newMeters(e *projector.Entry, old *projector.Meters, gen uint64) *projector.Meters {
	km := &projector.Meters{Gen: gen}
	if gen != 0 {
		km.OwnerQuota, km.OwnerRate = v.meters.ownerCounters(e.Owner)
	}
	if old != nil {
		km.Limiter, km.Rate, km.Credits = old.Limiter, old.Rate, old.Credits
		return km
	}
	rl := e.RateLimit()
	if rl == nil && e.Environment == keyledger.EnvTest {
		rl = &v.cfg.TestRateLimit
	}
	var cr *keyledger.Credits
	if e.Extra != nil {
		cr = e.Extra.Credits
	}
	if rl != nil {
		km.Limiter = rate.NewLimiter(rate.Limit(rl.PerSecond), rl.Burst)
	}
	if v.meters == nil {
		return km
	}
	if rl != nil {
		perSecond := rl.PerSecond
		// A rate limit fails open when the counters are out of reach:
		// the node's own bucket still holds, so the fleet passes at
		// most N × the limit (see README, Quotas).
		km.Rate = v.meters.m.Counter(quota.Spec{Kind: quota.KindRate, Key: nats.CounterKey(quota.KindRate, e.ID()), KeyID: e.ID(), Owner: e.Owner,
			FailOpen: func() bool { return true },
			Window:   func(now time.Time) quota.Window { return quota.RateWindow(now, perSecond) }})
	}
	if cr != nil {
		rev, at := e.Extra.CreditsRev, time.Unix(0, e.Extra.CreditsAt)
		owner, accounts := e.Owner, v.meters.accounts
		km.Credits = v.meters.m.Counter(quota.Spec{Kind: quota.KindCredits, Key: nats.CounterKey(quota.KindCredits, e.CreditsCounter()), KeyID: e.ID(), Owner: owner,
			FailOpen: func() bool { return accounts.OwnerPlan(owner).FailsOpen() },
			Window:   func(now time.Time) quota.Window { return quota.CreditsWindow(now, cr, rev, at) }})
	}
	return km
}

// meter spends what a valid verification costs on every fleet counter
// of km, in the order rate, owner's rate, quota, credits; it returns the
// refusing outcome, or OutcomeValid. The clock is read only for rate
// windows (see quota.Counter.Spend).
func (v *Verifier) meter(km *projector.Meters, cost int64, now *time.Time) (keyledger.Outcome, time.Duration) {
	if km.Rate == nil && km.OwnerRate == nil && km.OwnerQuota == nil && km.Credits == nil {
		return keyledger.OutcomeValid, 0
	}
	for _, r := range [2]*quota.Counter{km.Rate, km.OwnerRate} {
		if r != nil {
			if vd, retry := r.Take(v.clock(now), 1); vd == quota.Exhausted {
				return keyledger.OutcomeRateLimited, retry
			}
		}
	}
	spent := false
	if km.OwnerQuota != nil {
		switch vd, retry := km.OwnerQuota.Spend(1); vd {
		case quota.Exhausted:
			return keyledger.OutcomeQuotaExceeded, retry
		case quota.Down:
			return keyledger.OutcomeUnavailable, 0
		case quota.Pass:
			spent = true
		}
	}
	if km.Credits != nil {
		vd, retry := km.Credits.Spend(cost)
		if vd == quota.Exhausted || vd == quota.Down {
			if spent {
				km.OwnerQuota.Refund(1)
			}
			if vd == quota.Down {
				return keyledger.OutcomeUnavailable, 0
			}
			if retry > noRefill {
				retry = 0 // credits that never refill
			}
			return keyledger.OutcomeCreditsExhausted, retry
		}
	}
	return keyledger.OutcomeValid, 0
}

// noRefill: an exhausted period longer than this is one of credits that
// never refill.
const noRefill = 400 * 24 * time.Hour

// CreditsRemaining returns at most how many credits the key has left in
// the fleet (exactly, on one node), or -1 when it has no credits.
func (v *Verifier) CreditsRemaining(e *projector.Entry) int64 {
	if e == nil || e.Extra == nil || e.Extra.Credits == nil {
		return -1
	}
	km := v.keyMeters(e)
	if km == nil || km.Credits == nil {
		return -1
	}
	return km.Credits.Remaining(v.cfg.Now())
}
