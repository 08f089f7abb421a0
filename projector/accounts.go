package projector

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
)

// accounts are the ledger's plans and owners. They are few beside keys and
// change rarely, so they live in plain maps under a lock; what the verify
// path needs of them is cached by the quota meter, which re-reads them
// when gen moves.
type accounts struct {
	mu     sync.RWMutex
	plans  map[string]*keyledger.PlanRecord
	owners map[string]*keyledger.Owner
	// revs is the last event stored on each plan's or owner's subject,
	// applied or not (the Prev check of its next event).
	revs map[string]uint64
	gen  atomic.Uint64
}

func newAccounts() *accounts {
	return &accounts{plans: map[string]*keyledger.PlanRecord{}, owners: map[string]*keyledger.Owner{}, revs: map[string]uint64{}}
}

// isAccountID reports whether a ledger id names a plan or an owner.
func isAccountID(id string) bool {
	return strings.HasPrefix(id, keyledger.PlanIDPrefix) || strings.HasPrefix(id, keyledger.OwnerIDPrefix)
}

// accountFollows is follows for plans and owners.
func (p *Projector) accountFollows(seq uint64, id string, prev uint64) bool {
	a := p.accounts
	a.mu.RLock()
	rev := a.revs[id]
	a.mu.RUnlock()
	if prev == rev {
		return true
	}
	p.reject(seq, nats.KeySubject(id), fmt.Errorf("%w: prev %d, the record's last event is %d", events.ErrReplayed, prev, rev))
	return false
}

func (p *Projector) applyPlanSet(seq uint64, e *events.PlanSet) {
	if !p.accountFollows(seq, e.KeyID, e.Prev.Prev) {
		return
	}
	a := p.accounts
	a.mu.Lock()
	a.plans[e.Plan.Name] = &keyledger.PlanRecord{Plan: e.Plan, Revision: seq, UpdatedAt: e.At, UpdatedBy: e.Actor}
	a.revs[e.KeyID] = seq
	a.mu.Unlock()
	a.gen.Add(1)
	p.applied.Add(1)
}

func (p *Projector) applyOwnerSet(seq uint64, e *events.OwnerSet) {
	if !p.accountFollows(seq, e.KeyID, e.Prev.Prev) {
		return
	}
	a := p.accounts
	a.mu.Lock()
	a.owners[e.Owner] = &keyledger.Owner{Name: p.intern(e.Owner), Plan: e.Plan, Metadata: e.Metadata, Revision: seq, UpdatedAt: e.At, UpdatedBy: e.Actor}
	a.revs[e.KeyID] = seq
	a.mu.Unlock()
	a.gen.Add(1)
	p.applied.Add(1)
}

// storedAccount is stored for a plan's or an owner's subject.
func (p *Projector) storedAccount(seq uint64, id string) {
	a := p.accounts
	a.mu.Lock()
	a.revs[id] = seq
	a.mu.Unlock()
}

// AccountsGen changes (grows) whenever a plan or an owner does.
func (p *Projector) AccountsGen() uint64 { return p.accounts.gen.Load() }

// Plan returns the plan named name.
func (p *Projector) Plan(name string) (keyledger.PlanRecord, bool) {
	a := p.accounts
	a.mu.RLock()
	defer a.mu.RUnlock()
	r := a.plans[name]
	if r == nil {
		return keyledger.PlanRecord{}, false
	}
	return *r, true
}

// Plans returns every plan, by name.
func (p *Projector) Plans() []keyledger.PlanRecord {
	a := p.accounts
	a.mu.RLock()
	out := make([]keyledger.PlanRecord, 0, len(a.plans))
	for _, r := range a.plans {
		out = append(out, *r)
	}
	a.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Owner returns the record of owner.
func (p *Projector) Owner(name string) (keyledger.Owner, bool) {
	a := p.accounts
	a.mu.RLock()
	defer a.mu.RUnlock()
	o := a.owners[name]
	if o == nil {
		return keyledger.Owner{}, false
	}
	return *o, true
}

// OwnerPlan returns the plan of owner, or nil when the owner has none (or
// names a plan the ledger does not hold: nothing is metered then).
func (p *Projector) OwnerPlan(owner string) *keyledger.Plan {
	a := p.accounts
	a.mu.RLock()
	defer a.mu.RUnlock()
	o := a.owners[owner]
	if o == nil || o.Plan == "" {
		return nil
	}
	r := a.plans[o.Plan]
	if r == nil {
		return nil
	}
	pl := r.Plan
	return &pl
}
