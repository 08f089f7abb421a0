package keyledger

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"
)

// Plans, owners and credits: what keys may consume, enforced across the
// whole fleet (see package quota). A plan is a monthly quota of live
// verifications and an optional per-second rate shared by all of an
// owner's keys; an owner is a first-class record of the ledger that names
// its plan; credits are a balance on one key.

// Plan is a price plan.
type Plan struct {
	Name string `json:"name"`
	// MonthlyQuota is how many live verifications all of an owner's keys
	// together may pass per calendar month in UTC; 0 is no quota.
	MonthlyQuota int64 `json:"monthly_quota"`
	// RateLimit, if set, bounds all of an owner's keys together, across
	// every node.
	RateLimit *RateLimit `json:"rate_limit,omitempty"`
	// OnOutage is what a node does with a metered key when it holds no
	// units and cannot reach the counters: OutageClosed (the default:
	// 503) or OutageOpen (let it through, uncounted).
	OnOutage string `json:"on_outage,omitempty"`
}

// The values of Plan.OnOutage.
const (
	OutageClosed = "closed"
	OutageOpen   = "open"
)

// MaxQuota bounds quotas and credit balances: far beyond any plan, and
// small enough that sums of them never overflow an int64.
const MaxQuota = 1 << 50

// Validate checks a plan as the admin API accepts it.
func (p *Plan) Validate() error {
	if err := ValidPlanName(p.Name); err != nil {
		return err
	}
	if p.MonthlyQuota < 0 || p.MonthlyQuota > MaxQuota {
		return Errorf(Invalid, "monthly_quota must be between 0 (none) and %d", int64(MaxQuota))
	}
	if p.RateLimit != nil {
		if err := p.RateLimit.Validate(); err != nil {
			return err
		}
	}
	switch p.OnOutage {
	case "", OutageClosed, OutageOpen:
	default:
		return Errorf(Invalid, "on_outage must be %q or %q", OutageClosed, OutageOpen)
	}
	return nil
}

// FailsOpen reports whether the plan lets metered keys through when the
// counters cannot be reached.
func (p *Plan) FailsOpen() bool { return p != nil && p.OnOutage == OutageOpen }

// ValidPlanName checks that name can name a plan: 1–32 lower-case
// letters, digits, '-' and '_'.
func ValidPlanName(name string) error {
	if name == "" || len(name) > 32 {
		return Errorf(Invalid, "plan name must be 1 to 32 characters")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return Errorf(Invalid, "plan name may hold only lower-case letters, digits, '-' and '_'")
		}
	}
	return nil
}

// PlanRecord is a plan as the ledger holds it.
type PlanRecord struct {
	Plan
	// Revision is the KEYS stream sequence of the plan's last event.
	Revision  uint64    `json:"revision"`
	UpdatedAt time.Time `json:"updated_at"`
	UpdatedBy string    `json:"updated_by"`
}

// Owner is the record of one owner of keys.
type Owner struct {
	Name string `json:"owner"`
	// Plan names the owner's plan ("" for none: nothing is metered).
	Plan string `json:"plan"`
	// Metadata is the operator's JSON object about the owner.
	Metadata json.RawMessage `json:"metadata,omitempty"`
	// Revision is the KEYS stream sequence of the owner's last event.
	Revision  uint64    `json:"revision"`
	UpdatedAt time.Time `json:"updated_at"`
	UpdatedBy string    `json:"updated_by"`
}

// MaxOwnerLen bounds an owner's name.
const MaxOwnerLen = 256

// ValidOwner checks an owner's name.
func ValidOwner(owner string) error {
	if owner == "" || len(owner) > MaxOwnerLen {
		return Errorf(Invalid, "owner must be 1 to %d bytes", MaxOwnerLen)
	}
	return nil
}

// The ledger ids of plans and owners: their events share the KEYS
// stream's subjects with keys' (one subject per record, so an update
// gets the same optimistic concurrency), under ids no key id has (keys'
// ids start with "key_"). An owner's name may hold anything, so its id is
// a hash of it: 128 bits, as collision-free as a UUID.
const (
	PlanIDPrefix  = "plan_"
	OwnerIDPrefix = "owner_"
)

// PlanID returns the ledger id of the plan named name.
func PlanID(name string) string { return PlanIDPrefix + name }

// OwnerID returns the ledger id of owner.
func OwnerID(owner string) string {
	h := sha256.Sum256([]byte(owner))
	return OwnerIDPrefix + hex.EncodeToString(h[:16])
}

// Credits is a balance of verifications on one key: each valid
// verification spends its cost; at 0 the key is refused until a refill.
type Credits struct {
	// Remaining is the balance when the credits were set.
	Remaining int64 `json:"remaining"`
	// Refill, if set, replaces the balance with Amount at the start of
	// every Interval (00:00 UTC of each day or of each month's first).
	Refill *Refill `json:"refill,omitempty"`
}

// Refill is how credits come back.
type Refill struct {
	Interval string `json:"interval"`
	Amount   int64  `json:"amount"`
}

// The intervals of a Refill.
const (
	RefillDaily   = "daily"
	RefillMonthly = "monthly"
)

// Validate checks credits as the admin API accepts them.
func (c *Credits) Validate() error {
	if c.Remaining < 0 || c.Remaining > MaxQuota {
		return Errorf(Invalid, "credits.remaining must be between 0 and %d", int64(MaxQuota))
	}
	if r := c.Refill; r != nil {
		if r.Interval != RefillDaily && r.Interval != RefillMonthly {
			return Errorf(Invalid, "credits.refill.interval must be %q or %q", RefillDaily, RefillMonthly)
		}
		if r.Amount < 1 || r.Amount > MaxQuota {
			return Errorf(Invalid, "credits.refill.amount must be between 1 and %d", int64(MaxQuota))
		}
	}
	return nil
}

// MonthStart returns the first instant of t's month in UTC.
func MonthStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// DayStart returns the first instant of t's day in UTC.
func DayStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}

// Quota is where an owner stands against its plan's monthly quota.
type Quota struct {
	Owner string `json:"owner"`
	Plan  string `json:"plan"`
	Month string `json:"month"`
	// Used is what the fleet has drawn from the month's counter: the
	// verifications passed plus the units nodes hold and have not yet
	// spent (at most the nodes' leases).
	Used     int64     `json:"used"`
	Limit    int64     `json:"limit"`
	ResetsAt time.Time `json:"resets_at"`
}
