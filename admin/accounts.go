package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
)

// Plans and owners are records of the ledger like keys: each has a subject
// of its own on the KEYS stream (keyledger.PlanID, keyledger.OwnerID), and
// each write appends a signed event expecting the subject's last sequence.
// They are billing: an owner-scoped admin key may read its own owner (and
// its plan) but never write either, or it would pick its own quota.

// PlanView is the answer to a plan's create: the record and how far it
// has spread.
type PlanView struct {
	keyledger.PlanRecord
	Propagation
}

// PlanUpdated is the answer to a plan's update.
type PlanUpdated struct {
	keyledger.PlanRecord
	// Changed names the fields the write changed (none: nothing to do,
	// and nothing was written).
	Changed []string `json:"changed"`
	Propagation
}

// PlanList is the answer of GET /v1/plans.
type PlanList struct {
	Plans []keyledger.PlanRecord `json:"plans"`
}

// PlanPatch is a JSON merge patch (RFC 7396) of a plan: monthly_quota (an
// integer, never null), rate_limit (null clears it) and on_outage (null
// goes back to the default, closed). A plan's name is its identity and
// cannot change; any other member is refused.
type PlanPatch map[string]json.RawMessage

// The members of a plan a patch may change, in the order Changed lists
// them.
const (
	PlanFieldMonthlyQuota = "monthly_quota"
	PlanFieldRateLimit    = "rate_limit"
	PlanFieldOnOutage     = "on_outage"
)

var planFields = []string{PlanFieldMonthlyQuota, PlanFieldRateLimit, PlanFieldOnOutage}

// planImmutable are a plan record's members a patch may name but not
// change: naming them is more likely a mistake worth explaining than an
// unknown field.
var planImmutable = []string{"name", "revision", "updated_at", "updated_by"}

// OwnerRequest is the body of PUT /v1/owners/{owner}: the whole record,
// since a PUT replaces it.
type OwnerRequest struct {
	// Plan names an existing plan, or "" for none (nothing metered).
	Plan     string          `json:"plan"`
	Metadata json.RawMessage `json:"metadata"`
}

// OwnerView is the answer to a PUT of an owner.
type OwnerView struct {
	keyledger.Owner
	// Created tells a create (HTTP 201) from a replace (200).
	Created bool `json:"-"`
	Propagation
}

// errPlansBilling refuses plan and owner writes to owner-scoped admin keys.
func errPlansBilling(scope string) error {
	return keyledger.Errorf(keyledger.Forbidden, "this admin key is limited to owner %s: plans and owners are billing, which only the admin token or an unscoped admin key may change",
		keyledger.Quote(scope))
}

func errNoPlan(name string) error {
	return keyledger.Errorf(keyledger.NotFound, "no plan %s", keyledger.Quote(name))
}

func errNoOwner(owner string) error {
	return keyledger.Errorf(keyledger.NotFound, "no owner %s", keyledger.Quote(owner))
}

// CheckOwner tells whether the caller may read owner's records (its
// owner record, its quota): an owner-scoped admin key only its own. Any
// other owner is not found, as other owners' keys are, so that a scoped
// key learns nothing about who else is a customer.
func (s *Service) CheckOwner(owner string, w Write) error {
	if w.Scope != "" && owner != w.Scope {
		return errNoOwner(owner)
	}
	if keyledger.ValidOwner(owner) != nil {
		return errNoOwner(owner)
	}
	return nil
}

// CreatePlan adds a plan. A plan of that name already in the ledger is a
// conflict (already_exists): a create must never silently replace the
// quota of every owner on it — that is what UpdatePlan is for.
func (s *Service) CreatePlan(ctx context.Context, p keyledger.Plan, w Write) (*PlanView, error) {
	if w.Scope != "" {
		return nil, errPlansBilling(w.Scope)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	id := keyledger.PlanID(p.Name)
	var ev *events.PlanSet
	seq, prop, err := s.writeAccount(ctx, id, w, func(prev uint64) (events.Event, error) {
		if _, ok := s.cfg.Projector.Plan(p.Name); ok {
			return nil, &keyledger.Error{Code: keyledger.Conflict, Reason: keyledger.ReasonAlreadyExists,
				Message: fmt.Sprintf("plan %s already exists; PATCH /v1/plans/%s changes it", keyledger.Quote(p.Name), p.Name)}
		}
		ev = &events.PlanSet{Header: s.header(events.TypePlanSet, id, w), Prev: events.Prev{Prev: prev}, Plan: p}
		return ev, nil
	})
	if err != nil {
		return nil, err
	}
	s.cfg.Logger.Info("plan created", "plan", p.Name, "monthly_quota", p.MonthlyQuota, "actor", w.Actor, "actor_ip", w.ActorIP,
		"seq", seq, "applied_by", prop.AppliedBy)
	return &PlanView{PlanRecord: planRecord(ev, seq), Propagation: prop}, nil
}

// planRecord is the record a PlanSet at seq makes, as every node applies
// it: the answer to a write need not wait for this node's table to say so.
func planRecord(ev *events.PlanSet, seq uint64) keyledger.PlanRecord {
	return keyledger.PlanRecord{Plan: ev.Plan, Revision: seq, UpdatedAt: ev.At, UpdatedBy: ev.Actor}
}

// UpdatePlan applies a merge patch to plan name. ifMatch, when not 0, is
// the revision the caller last read: the update happens only if the plan
// is still at it (else a conflict with reason revision_mismatch, HTTP
// 412). The new limits bind every owner on the plan, on every node that
// applied the write.
func (s *Service) UpdatePlan(ctx context.Context, name string, patch PlanPatch, ifMatch uint64, w Write) (*PlanUpdated, error) {
	if w.Scope != "" {
		return nil, errPlansBilling(w.Scope)
	}
	if err := checkPlanPatch(patch); err != nil {
		return nil, err
	}
	if keyledger.ValidPlanName(name) != nil {
		return nil, errNoPlan(name)
	}
	id := keyledger.PlanID(name)
	var (
		ev      *events.PlanSet
		current keyledger.PlanRecord
		changed []string
	)
	seq, prop, err := s.writeAccount(ctx, id, w, func(prev uint64) (events.Event, error) {
		rec, ok := s.cfg.Projector.Plan(name)
		if !ok {
			return nil, errNoPlan(name)
		}
		if ifMatch != 0 && rec.Revision != ifMatch {
			return nil, &keyledger.Error{Code: keyledger.Conflict, Reason: keyledger.ReasonRevisionMismatch,
				Message: fmt.Sprintf("plan %s is at revision %d, not %d: read it again", name, rec.Revision, ifMatch)}
		}
		current = rec
		next, ch, err := applyPlanPatch(rec.Plan, patch)
		if err != nil {
			return nil, err
		}
		changed = ch
		if len(changed) == 0 {
			return nil, nil
		}
		ev = &events.PlanSet{Header: s.header(events.TypePlanSet, id, w), Prev: events.Prev{Prev: prev}, Plan: next}
		return ev, nil
	})
	if err != nil {
		return nil, err
	}
	if ev == nil {
		return &PlanUpdated{PlanRecord: current, Changed: []string{}}, nil
	}
	s.cfg.Logger.Info("plan changed", "plan", name, "changed", changed, "actor", w.Actor, "actor_ip", w.ActorIP,
		"seq", seq, "applied_by", prop.AppliedBy)
	return &PlanUpdated{PlanRecord: planRecord(ev, seq), Changed: changed, Propagation: prop}, nil
}

// checkPlanPatch refuses a patch naming no field, or a field that is not
// a plan's changeable one, before anything is read.
func checkPlanPatch(patch PlanPatch) error {
	if len(patch) == 0 {
		return keyledger.Errorf(keyledger.Invalid, "the patch names no field (updatable: %s)", strings.Join(planFields, ", "))
	}
	for name := range patch {
		switch {
		case slices.Contains(planFields, name):
		case slices.Contains(planImmutable, name):
			return keyledger.Errorf(keyledger.Invalid, "%s cannot be changed (a plan's name is its identity: create another plan and move owners to it)", name)
		default:
			return keyledger.Errorf(keyledger.Invalid, "unknown field %s (updatable: %s)", keyledger.Quote(clipName(name)), strings.Join(planFields, ", "))
		}
	}
	return nil
}

// applyPlanPatch returns p with patch applied, checked as at creation,
// and the fields that changed.
func applyPlanPatch(p keyledger.Plan, patch PlanPatch) (keyledger.Plan, []string, error) {
	next := p
	for _, field := range planFields {
		raw, ok := patch[field]
		if !ok {
			continue
		}
		switch field {
		case PlanFieldMonthlyQuota:
			if isNull(raw) || strictUnmarshal(raw, &next.MonthlyQuota) != nil {
				return p, nil, keyledger.Errorf(keyledger.Invalid, "monthly_quota must be an integer (0: no quota)")
			}
		case PlanFieldRateLimit:
			next.RateLimit = nil
			if !isNull(raw) {
				rl := new(keyledger.RateLimit)
				if strictUnmarshal(raw, rl) != nil {
					return p, nil, keyledger.Errorf(keyledger.Invalid, "rate_limit must be {\"per_second\":…,\"burst\":…} or null")
				}
				next.RateLimit = rl
			}
		case PlanFieldOnOutage:
			next.OnOutage = ""
			if !isNull(raw) && strictUnmarshal(raw, &next.OnOutage) != nil {
				return p, nil, keyledger.Errorf(keyledger.Invalid, "on_outage must be %q, %q or null", keyledger.OutageClosed, keyledger.OutageOpen)
			}
		}
	}
	if err := next.Validate(); err != nil {
		return p, nil, err
	}
	var changed []string
	if next.MonthlyQuota != p.MonthlyQuota {
		changed = append(changed, PlanFieldMonthlyQuota)
	}
	if !reflect.DeepEqual(next.RateLimit, p.RateLimit) {
		changed = append(changed, PlanFieldRateLimit)
	}
	// "" and "closed" mean the same: switching between them is no change.
	if (next.OnOutage == keyledger.OutageOpen) != (p.OnOutage == keyledger.OutageOpen) {
		changed = append(changed, PlanFieldOnOutage)
	} else {
		next.OnOutage = p.OnOutage
	}
	return next, changed, nil
}

// GetPlan returns plan name, reflecting every write acknowledged before
// the call. An owner-scoped admin key sees its own owner's plan only: the
// rest of the price list is not its business.
func (s *Service) GetPlan(ctx context.Context, name string, w Write) (*keyledger.PlanRecord, error) {
	if keyledger.ValidPlanName(name) != nil {
		return nil, errNoPlan(name)
	}
	if err := s.barrier(ctx); err != nil {
		return nil, err
	}
	if w.Scope != "" && s.scopePlan(w) != name {
		return nil, errNoPlan(name)
	}
	rec, ok := s.cfg.Projector.Plan(name)
	if !ok {
		return nil, errNoPlan(name)
	}
	return &rec, nil
}

// ListPlans returns every plan by name, reflecting every write
// acknowledged before the call; an owner-scoped admin key gets its own
// owner's plan only (or none).
func (s *Service) ListPlans(ctx context.Context, w Write) (*PlanList, error) {
	if err := s.barrier(ctx); err != nil {
		return nil, err
	}
	plans := s.cfg.Projector.Plans()
	if w.Scope != "" {
		mine := s.scopePlan(w)
		plans = slices.DeleteFunc(plans, func(r keyledger.PlanRecord) bool { return r.Name != mine })
	}
	if plans == nil {
		plans = []keyledger.PlanRecord{}
	}
	return &PlanList{Plans: plans}, nil
}

// scopePlan is the plan of a scoped caller's owner ("" for none).
func (s *Service) scopePlan(w Write) string {
	o, ok := s.cfg.Projector.Owner(w.Scope)
	if !ok {
		return ""
	}
	return o.Plan
}

// PutOwner creates or replaces owner's record. A plan it names must be in
// the ledger (a typo would leave the owner unmetered, silently); "" is no
// plan. Replacing a record with what it holds writes nothing.
func (s *Service) PutOwner(ctx context.Context, owner string, req OwnerRequest, w Write) (*OwnerView, error) {
	if w.Scope != "" {
		return nil, errPlansBilling(w.Scope)
	}
	if err := checkText("owner", owner, maxOwnerLen, true); err != nil {
		return nil, err
	}
	if err := keyledger.ValidOwner(owner); err != nil {
		return nil, err
	}
	if req.Plan != "" {
		if err := keyledger.ValidPlanName(req.Plan); err != nil {
			return nil, err
		}
	}
	meta, err := keyledger.ValidateMetadata(req.Metadata)
	if err != nil {
		return nil, err
	}
	id := keyledger.OwnerID(owner)
	var (
		ev      *events.OwnerSet
		current keyledger.Owner
		exists  bool
	)
	seq, prop, err := s.writeAccount(ctx, id, w, func(prev uint64) (events.Event, error) {
		if req.Plan != "" {
			if _, ok := s.cfg.Projector.Plan(req.Plan); !ok {
				return nil, keyledger.Errorf(keyledger.Invalid, "plan %s does not exist: create it first (POST /v1/plans)", keyledger.Quote(req.Plan))
			}
		}
		current, exists = s.cfg.Projector.Owner(owner)
		if exists && current.Plan == req.Plan && bytes.Equal(current.Metadata, meta) {
			return nil, nil
		}
		ev = &events.OwnerSet{Header: s.header(events.TypeOwnerSet, id, w), Prev: events.Prev{Prev: prev},
			Owner: owner, Plan: req.Plan, Metadata: meta}
		return ev, nil
	})
	if err != nil {
		return nil, err
	}
	if ev == nil {
		return &OwnerView{Owner: current}, nil
	}
	s.cfg.Logger.Info("owner set", "owner", owner, "plan", req.Plan, "created", !exists, "actor", w.Actor, "actor_ip", w.ActorIP,
		"seq", seq, "applied_by", prop.AppliedBy)
	return &OwnerView{
		Owner:       keyledger.Owner{Name: owner, Plan: ev.Plan, Metadata: ev.Metadata, Revision: seq, UpdatedAt: ev.At, UpdatedBy: ev.Actor},
		Created:     !exists,
		Propagation: prop,
	}, nil
}

// GetOwner returns owner's record, reflecting every write acknowledged
// before the call. An owner-scoped admin key may read its own only.
func (s *Service) GetOwner(ctx context.Context, owner string, w Write) (*keyledger.Owner, error) {
	if err := s.CheckOwner(owner, w); err != nil {
		return nil, err
	}
	if err := s.barrier(ctx); err != nil {
		return nil, err
	}
	o, ok := s.cfg.Projector.Owner(owner)
	if !ok {
		return nil, errNoOwner(owner)
	}
	return &o, nil
}

// writeAccount writes one event to a plan's or an owner's subject with
// optimistic concurrency: read the subject's last sequence, wait until
// this node applied it (so build sees the record as of then), let build
// make the event (nil: nothing to write) with that sequence as its Prev,
// and append it expecting the same; on a concurrent write, again (at most
// 12 times). The subject's last event may be one no node applied (a
// forgery): Prev must still name it, since every node checks Prev against
// the subject's last stored event.
func (s *Service) writeAccount(ctx context.Context, id string, w Write, build func(prev uint64) (events.Event, error)) (uint64, Propagation, error) {
	for attempt := 0; attempt < 12; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return 0, Propagation{}, keyledger.Wrap(keyledger.Unavailable, ctx.Err(), "write interrupted")
			case <-time.After(min(time.Duration(1<<attempt)*time.Millisecond, 50*time.Millisecond)):
			}
		}
		var last uint64
		switch rec, err := s.cfg.Log.Last(ctx, id); {
		case err == nil:
			last = rec.Seq
		case errors.Is(err, keyledger.ErrNotFound):
		default:
			return 0, Propagation{}, err
		}
		wctx, cancel := context.WithTimeout(ctx, s.cfg.ApplyTimeout)
		err := s.cfg.Projector.WaitApplied(wctx, last)
		cancel()
		if err != nil {
			return 0, Propagation{}, keyledger.Wrap(keyledger.Unavailable, err, "this node has not caught up with the ledger; try again or ask another node")
		}
		ev, err := build(last)
		if err != nil || ev == nil {
			return 0, Propagation{}, err
		}
		seq, err := s.append(ctx, ev, last)
		if errors.Is(err, nats.ErrConflict) {
			continue
		}
		if err != nil {
			return 0, Propagation{}, err
		}
		return seq, s.propagate(ctx, seq, w), nil
	}
	return 0, Propagation{}, keyledger.Errorf(keyledger.Conflict, "%s is being changed concurrently; try again", id)
}

func isNull(raw json.RawMessage) bool { return strings.TrimSpace(string(raw)) == "null" }

// strictUnmarshal decodes one JSON value into v, refusing unknown members
// as the HTTP layer does for whole bodies: a patch's nested object is no
// place for a typo to pass unnoticed.
func strictUnmarshal(raw json.RawMessage, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data")
	}
	return nil
}
