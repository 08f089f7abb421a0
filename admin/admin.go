// Package admin is keyledger's write side: it issues, rolls, imports and
// revokes keys by appending events to the KEYS ledger with optimistic
// concurrency, waits for the fleet to apply them, and reads key records.
// Package http serves it as the admin API.
package admin

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/projector"
)

// Config configures a Service.
type Config struct {
	Log       *nats.Log
	Projector *projector.Projector // must keep records (Options.Records)
	Catalog   *keyledger.Catalog   // default keyledger.DefaultCatalog
	Format    keyledger.Format     // default keyledger.DefaultFormat
	Rand      io.Reader            // default crypto/rand
	Now       func() time.Time     // default time.Now
	// ApplyTimeout bounds how long a write waits for this node to apply
	// its own event before answering (default 5s).
	ApplyTimeout time.Duration
	// Fleet, if set, lets writes wait until every live node applied them.
	Fleet Fleet
	// Usage, if set (analytics on), adds last_used_at and uses_30d to
	// key listings.
	Usage UsageSource
	// LeakAction is what a leak report does to an active key: LeakRevoke
	// (the default) or LeakAlert.
	LeakAction string
	// OnLeak, if set, hears of every true positive of a leak report (for
	// the key_leaked alert).
	OnLeak func(Leak)
	Logger *slog.Logger
}

// KeyUse is when a key was last verified successfully and how often in
// the last 30 days.
type KeyUse struct {
	LastUsedAt time.Time
	Uses30d    uint64
}

// UsageSource tells when keys were last used.
type UsageSource interface {
	LastUsed(ctx context.Context, keyIDs []string) (map[string]KeyUse, error)
}

// WithUsage fills LastUsedAt and Uses30d of views from the usage source,
// when there is one. Listings never fail for want of usage figures: an
// error is logged and the fields stay empty.
func (s *Service) WithUsage(ctx context.Context, views []KeyView) {
	if s.cfg.Usage == nil || len(views) == 0 {
		return
	}
	ids := make([]string, len(views))
	for i := range views {
		ids[i] = views[i].ID
	}
	m, err := s.cfg.Usage.LastUsed(ctx, ids)
	if err != nil {
		s.cfg.Logger.Warn("usage figures unavailable for key listing", "err", err)
		return
	}
	for i := range views {
		u := m[views[i].ID]
		n := u.Uses30d
		views[i].Uses30d = &n
		if !u.LastUsedAt.IsZero() {
			t := u.LastUsedAt.UTC()
			views[i].LastUsedAt = &t
		}
	}
}

// Fleet is the set of live nodes (nats.Registry).
type Fleet interface {
	// WaitApplied waits until every live node applied seq, or ctx ends.
	WaitApplied(ctx context.Context, seq uint64) nats.Applied
	// Live lists the nodes heard from recently.
	Live() []nats.NodeStatus
	// ProofTimeout is how long a wait may need to prove every silent
	// node refusing (the fleet's longest lease and its margins).
	ProofTimeout() time.Duration
}

// NodeView is a live node with its lag behind the ledger.
type NodeView struct {
	nats.NodeStatus
	// Lag is how many ledger events the node had not applied when it
	// last reported, against the newest sequence this node knows.
	Lag uint64 `json:"lag"`
	// LastSeen is how long ago the node's last heartbeat arrived, in ms.
	AgeMS int64 `json:"age_ms"`
}

// Nodes lists the live nodes.
func (s *Service) Nodes() []NodeView {
	if s.cfg.Fleet == nil {
		return nil
	}
	st := s.cfg.Projector.Stats()
	head := st.LastSeq + st.Lag
	now := s.cfg.Now()
	live := s.cfg.Fleet.Live()
	out := make([]NodeView, len(live))
	for i, n := range live {
		head = max(head, n.LastSeq)
		out[i] = NodeView{NodeStatus: n, AgeMS: now.Sub(n.At).Milliseconds()}
	}
	for i := range out {
		out[i].Lag = head - out[i].LastSeq
	}
	return out
}

// Wait says how long a write waits before answering.
type Wait string

// Wait modes. Every write waits at least until the node that served it has
// applied it; WaitAll also waits (bounded) for every live node.
const (
	WaitNone Wait = "none"
	WaitAll  Wait = "all"
)

// DefaultWaitTimeout bounds WaitAll, or the time the fleet needs to prove
// a silent node refusing when its leases are longer (see
// nats.Registry.ProofTimeout): a default wait never ends before a proof
// was possible. The wait ends as soon as every node applied the write or
// is proven refusing.
const DefaultWaitTimeout = 10 * time.Second

// Write describes who makes a write and how long it waits.
type Write struct {
	Actor   string
	ActorIP string
	Wait    Wait
	Timeout time.Duration // for WaitAll; default DefaultWaitTimeout
	// Scope, when set, is the one owner the caller may act for (an
	// owner-scoped admin key): other owners' keys do not exist for it.
	Scope string
}

// mine reports whether the caller may see key k.
func (w Write) mine(k keyledger.Key) bool { return w.Scope == "" || k.Owner == w.Scope }

// Service issues, revokes and reads keys.
type Service struct {
	cfg Config
}

// New returns a Service.
func New(cfg Config) *Service {
	if cfg.Catalog == nil {
		cfg.Catalog = keyledger.DefaultCatalog
	}
	if cfg.Format == (keyledger.Format{}) {
		cfg.Format = keyledger.DefaultFormat
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ApplyTimeout <= 0 {
		cfg.ApplyTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Service{cfg: cfg}
}

// CreateRequest is the body of POST /v1/keys.
type CreateRequest struct {
	Name        string                `json:"name"`
	Environment keyledger.Environment `json:"environment"`
	Permissions []string              `json:"permissions"`
	Owner       string                `json:"owner"`
	ExpiresAt   *time.Time            `json:"expires_at"`
	RateLimit   *keyledger.RateLimit  `json:"rate_limit"`
	Metadata    json.RawMessage       `json:"metadata"`
	AllowedIPs  []string              `json:"allowed_ips"`
	// AdminScope limits a key holding the admin permission to one owner.
	AdminScope *keyledger.AdminScope `json:"admin_scope"`
	// Credits, if set, gives the key a balance each valid verification
	// spends.
	Credits *keyledger.Credits `json:"credits"`
}

// KeyView is a key record as the API shows it, with its current status.
type KeyView struct {
	keyledger.Key
	Status keyledger.Status `json:"status"`
	// LastUsedAt and Uses30d come from analytics, when it is on: the last
	// valid verification and the number of them in the last 30 days.
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
	Uses30d    *uint64    `json:"uses_30d,omitempty"`
}

// Created is the answer to a create: the record and, this once, the secret.
type Created struct {
	Secret string `json:"key"`
	KeyView
	Propagation
	Warning string `json:"warning"`
}

// Propagation says how far a write has spread, when the caller waited.
type Propagation struct {
	// AppliedBy is "k/n": k of the n nodes that may be serving (this one
	// included) applied the write.
	AppliedBy string `json:"applied_by,omitempty"`
	// PendingNodes had not applied it when the call returned: each is in
	// RefusingNodes (its freshness lease has certainly run out, so it
	// refuses every key) or in UnprovenNodes (the wait ended first).
	PendingNodes  []string `json:"pending_nodes,omitempty"`
	RefusingNodes []string `json:"refusing_nodes,omitempty"`
	UnprovenNodes []string `json:"unproven_nodes,omitempty"`
}

// Revoked is the answer to a revoke.
type Revoked struct {
	KeyView
	Propagation
}

const (
	maxNameLen   = 200
	maxOwnerLen  = 200
	maxReasonLen = 1000
)

func checkText(field, s string, max int, required bool) error {
	if required && strings.TrimSpace(s) == "" {
		return keyledger.Errorf(keyledger.Invalid, "%s is required", field)
	}
	if len(s) > max {
		return keyledger.Errorf(keyledger.Invalid, "%s must be at most %d bytes", field, max)
	}
	for _, r := range s {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return keyledger.Errorf(keyledger.Invalid, "%s must be printable UTF-8 text", field)
		}
	}
	return nil
}

// Create issues a key. The secret is in the result and nowhere else: the
// event carries only its SHA-256.
func (s *Service) Create(ctx context.Context, req CreateRequest, w Write) (*Created, error) {
	perms, err := s.validate(&req, w)
	if err != nil {
		return nil, err
	}
	secret, err := s.cfg.Format.New(req.Environment, s.cfg.Rand)
	if err != nil {
		return nil, err
	}
	ev := s.createdEvent(req, perms, keyledger.HashSecret(secret).String(), keyledger.Hint(secret), w)
	k, prop, err := s.appendCreated(ctx, ev, w)
	if err != nil {
		return nil, err
	}
	return &Created{
		Secret:      secret,
		KeyView:     KeyView{Key: k, Status: k.StatusAt(s.cfg.Now())},
		Propagation: prop,
		Warning:     "Store this key now: it will not be shown again.",
	}, nil
}

// validate checks a key's metadata and returns its normalized permissions.
func (s *Service) validate(req *CreateRequest, w Write) ([]string, error) {
	if err := checkText("name", req.Name, maxNameLen, true); err != nil {
		return nil, err
	}
	if err := checkText("owner", req.Owner, maxOwnerLen, false); err != nil {
		return nil, err
	}
	if w.Scope != "" {
		// An owner-scoped admin key issues keys for its owner only.
		if req.Owner == "" {
			req.Owner = w.Scope
		}
		if req.Owner != w.Scope {
			return nil, errOtherOwner(w.Scope)
		}
	}
	if req.Environment == keyledger.EnvUnknown {
		return nil, keyledger.Errorf(keyledger.Invalid, "environment is required: \"live\" or \"test\"")
	}
	perms, err := s.cfg.Catalog.Normalize(req.Permissions)
	if err != nil {
		return nil, err
	}
	if req.ExpiresAt != nil {
		t := req.ExpiresAt.UTC()
		if !t.After(s.cfg.Now()) {
			return nil, keyledger.Errorf(keyledger.Invalid, "expires_at must be in the future")
		}
		req.ExpiresAt = &t
	}
	if req.RateLimit != nil {
		if err := req.RateLimit.Validate(); err != nil {
			return nil, err
		}
	}
	if req.Credits != nil {
		if err := req.Credits.Validate(); err != nil {
			return nil, err
		}
	}
	if req.Metadata, err = keyledger.ValidateMetadata(req.Metadata); err != nil {
		return nil, err
	}
	if _, req.AllowedIPs, err = keyledger.ParseAllowlist(req.AllowedIPs); err != nil {
		return nil, err
	}
	if w.Scope != "" && req.AdminScope == nil && slices.Contains(perms, keyledger.PermissionAdmin) {
		req.AdminScope = &keyledger.AdminScope{Owner: w.Scope}
	}
	if err := checkScope(perms, req.AdminScope, w); err != nil {
		return nil, err
	}
	if req.AdminScope != nil && req.AdminScope.Owner == "" {
		req.AdminScope = &keyledger.AdminScope{Owner: w.Scope}
		if w.Scope == "" {
			req.AdminScope = &keyledger.AdminScope{Owner: req.Owner}
		}
	}
	return perms, nil
}

// checkScope refuses what would let a scoped caller out of its owner: an
// admin key it issues (or grants admin to) is scoped to its own owner.
func checkScope(perms []string, scope *keyledger.AdminScope, w Write) error {
	admin := slices.Contains(perms, keyledger.PermissionAdmin)
	if scope != nil && !admin {
		return keyledger.Errorf(keyledger.Invalid, "admin_scope is only for keys holding the admin permission")
	}
	if scope != nil {
		if err := checkText("admin_scope.owner", scope.Owner, maxOwnerLen, false); err != nil {
			return err
		}
	}
	if w.Scope == "" {
		return nil
	}
	if admin && (scope == nil || scope.Owner != "" && scope.Owner != w.Scope) {
		return keyledger.Errorf(keyledger.Forbidden, "this admin key is limited to owner %s: the admin keys it issues must be too (\"admin_scope\":{\"owner\":%s})",
			keyledger.Quote(w.Scope), keyledger.Quote(w.Scope))
	}
	return nil
}

// errOtherOwner refuses a scoped caller's write for another owner.
func errOtherOwner(scope string) error {
	return keyledger.Errorf(keyledger.Forbidden, "this admin key is limited to owner %s", keyledger.Quote(scope))
}

// errNoKey is the answer for a key that does not exist, or that the
// caller may not see (no existence oracle).
func errNoKey(id string) error { return keyledger.Errorf(keyledger.NotFound, "no key %q", id) }

func (s *Service) header(t events.Type, id string, w Write) events.Header {
	h := events.NewHeader(t, id, w.Actor, s.cfg.Now())
	h.ActorIP = w.ActorIP
	return h
}

func (s *Service) createdEvent(req CreateRequest, perms []string, hash, hint string, w Write) *events.KeyCreated {
	return &events.KeyCreated{
		Header:      s.header(events.TypeKeyCreated, events.NewKeyID(), w),
		Name:        req.Name,
		Environment: req.Environment,
		Permissions: perms,
		Owner:       req.Owner,
		Hash:        hash,
		Hint:        hint,
		ExpiresAt:   req.ExpiresAt,
		RateLimit:   req.RateLimit,
		Metadata:    req.Metadata,
		AllowedIPs:  req.AllowedIPs,
		AdminScope:  req.AdminScope,
		Credits:     req.Credits,
	}
}

// appendCreated appends a create (expecting an empty subject) and waits as
// w asks.
// append writes ev to the ledger, unless this node's projector found the
// ledger's stream replaced: a write acknowledged there would answer 201
// for a key no node of the old history serves, or revoke nothing.
func (s *Service) append(ctx context.Context, ev events.Event, expect uint64) (uint64, error) {
	if why := s.cfg.Projector.Broken(); why != "" {
		return 0, keyledger.Errorf(keyledger.Unavailable, "the ledger's stream was replaced; this node accepts no write until an operator intervenes (%s)", why)
	}
	return s.cfg.Log.Append(ctx, ev, expect)
}

func (s *Service) appendCreated(ctx context.Context, ev *events.KeyCreated, w Write) (keyledger.Key, Propagation, error) {
	seq, err := s.append(ctx, ev, 0)
	if err != nil {
		if errors.Is(err, keyledger.ErrConflict) {
			// A fresh UUIDv7 id cannot exist already; a conflict here
			// means the ledger is not what we think it is.
			return keyledger.Key{}, Propagation{}, keyledger.Wrap(keyledger.Internal, err, "key id collision")
		}
		return keyledger.Key{}, Propagation{}, err
	}
	prop := s.propagate(ctx, seq, w)
	s.cfg.Logger.Info("key created", "key_id", ev.KeyID, "environment", ev.Environment.String(), "owner", ev.Owner,
		"actor", w.Actor, "actor_ip", w.ActorIP, "seq", seq, "rolled_from", ev.RolledFrom, "imported", ev.Imported)
	return keyledger.Key{
		ID: ev.KeyID, Name: ev.Name, Environment: ev.Environment, Permissions: ev.Permissions, Owner: ev.Owner,
		Hint: ev.Hint, ExpiresAt: ev.ExpiresAt, RateLimit: ev.RateLimit, CreatedAt: ev.At, CreatedBy: w.Actor,
		Revision: seq, RolledFrom: ev.RolledFrom, Imported: ev.Imported,
		Metadata: ev.Metadata, AllowedIPs: ev.AllowedIPs, AdminScope: ev.AdminScope, Credits: ev.Credits,
	}, prop, nil
}

// ImportRequest is the body of POST /v1/keys/import: a key issued by
// another system, as the SHA-256 of its secret.
type ImportRequest struct {
	CreateRequest
	// Hash is the hex SHA-256 of the whole secret as clients send it.
	Hash string `json:"hash"`
	// Hint is optional: the secret's last four characters, for listings.
	Hint string `json:"hint"`
}

// Import brings in a key issued elsewhere. The secret never passes
// through: the caller hashes it. The key may have any format; verifiers
// accept it as it is. Importing a hash that is already in the ledger is a
// conflict.
func (s *Service) Import(ctx context.Context, req ImportRequest, w Write) (*KeyView, error) {
	perms, err := s.validate(&req.CreateRequest, w)
	if err != nil {
		return nil, err
	}
	h, err := keyledger.ParseHash(strings.ToLower(req.Hash))
	if err != nil {
		return nil, keyledger.Errorf(keyledger.Invalid, "hash must be the 64-character hex SHA-256 of the secret")
	}
	if err := checkText("hint", req.Hint, 8, false); err != nil {
		return nil, err
	}
	if s.cfg.Projector.Table().Lookup(&h) != nil {
		return nil, &keyledger.Error{Code: keyledger.Conflict, Reason: keyledger.ReasonAlreadyExists,
			Message: "a key with this hash is already in the ledger"}
	}
	ev := s.createdEvent(req.CreateRequest, perms, h.String(), req.Hint, w)
	ev.Imported = true
	k, _, err := s.appendCreated(ctx, ev, w)
	if err != nil {
		return nil, err
	}
	// The check above races with other imports of the same hash: each
	// gets its own key id and lands. Every node applies only the first
	// (in stream order) and ignores the rest, so the answer comes from
	// this node's table once it has applied this event: the loser is
	// told, and its event stays inert in the ledger.
	switch e := s.cfg.Projector.Table().Lookup(&h); {
	case e == nil:
		return nil, keyledger.Errorf(keyledger.Unavailable, "import %s recorded but not yet applied on this node: check GET /v1/keys/%s", ev.KeyID, ev.KeyID)
	case e.ID() != ev.KeyID:
		return nil, &keyledger.Error{Code: keyledger.Conflict, Reason: keyledger.ReasonAlreadyExists,
			Message: "a key with this hash is already in the ledger (" + e.ID() + "); this import has no effect"}
	}
	return &KeyView{Key: k, Status: k.StatusAt(s.cfg.Now())}, nil
}

// errRevoked is the conflict of acting on a revoked key.
func errRevoked(id string) *keyledger.Error {
	return &keyledger.Error{Code: keyledger.Conflict, Reason: keyledger.ReasonAlreadyRevoked, Message: "key " + id + " is already revoked"}
}

// Rolled is the answer to a roll: the new key (its secret this once) and
// what became of the old one.
type Rolled struct {
	Created
	Old KeyView `json:"old_key"`
}

// Roll replaces key id with a new key of the same name, owner,
// environment, permissions, rate limit and expiry. The old key keeps
// working for grace, but never past its own expiry; a zero grace revokes
// it now. A revoked or expired key cannot be rolled (conflict).
func (s *Service) Roll(ctx context.Context, id string, grace time.Duration, w Write) (*Rolled, error) {
	if grace < 0 || grace > 365*24*time.Hour {
		return nil, keyledger.Errorf(keyledger.Invalid, "expire_old_in must be between 0s and 8760h")
	}
	old, ok := s.cfg.Projector.Key(id)
	if !ok || !w.mine(old) {
		return nil, errNoKey(id)
	}
	now := s.cfg.Now()
	switch old.StatusAt(now) {
	case keyledger.StatusRevoked:
		return nil, errRevoked(id)
	case keyledger.StatusExpired:
		return nil, keyledger.Errorf(keyledger.Conflict, "key %s has expired; create a new key instead", id)
	}
	last, err := s.cfg.Log.Last(ctx, id)
	if err != nil {
		return nil, err
	}
	if _, revoked := last.Event.(*events.KeyRevoked); revoked && last.Rejected == "" {
		return nil, errRevoked(id)
	}
	// The new key inherits the old one's expiry: rolling must not turn a
	// trial key into a permanent one. It inherits the credits too: the
	// projector makes the new key spend the old one's balance (the
	// fleet counter of the lineage), so a roll never mints credits.
	req := CreateRequest{Name: old.Name, Environment: old.Environment, Permissions: old.Permissions,
		Owner: old.Owner, ExpiresAt: old.ExpiresAt, RateLimit: old.RateLimit,
		Metadata: old.Metadata, AllowedIPs: old.AllowedIPs, AdminScope: old.AdminScope, Credits: old.Credits}
	secret, err := s.cfg.Format.New(req.Environment, s.cfg.Rand)
	if err != nil {
		return nil, err
	}
	ev := s.createdEvent(req, old.Permissions, keyledger.HashSecret(secret).String(), keyledger.Hint(secret), Write{Actor: w.Actor, ActorIP: w.ActorIP})
	ev.RolledFrom = id
	k, _, err := s.appendCreated(ctx, ev, Write{Actor: w.Actor, ActorIP: w.ActorIP, Wait: WaitNone})
	if err != nil {
		return nil, err
	}
	// Then retire the old key, expecting the sequence read above: if it
	// was revoked meanwhile, the new key must not outlive the refusal.
	var oldEv events.Event
	if grace == 0 {
		oldEv = &events.KeyRevoked{Header: s.header(events.TypeKeyRevoked, id, w), Reason: "rolled to " + k.ID}
	} else {
		until := now.Add(grace).UTC()
		if old.ExpiresAt != nil && old.ExpiresAt.Before(until) {
			until = *old.ExpiresAt
		}
		oldEv = &events.KeyRolled{Header: s.header(events.TypeKeyRolled, id, w), RolledTo: k.ID, ExpiresAt: until}
	}
	seq, err := s.append(ctx, oldEv, last.Seq)
	if err != nil {
		// Undo the new key: a roll happens whole or not at all, as far
		// as anyone can use it.
		undo := &events.KeyRevoked{Header: s.header(events.TypeKeyRevoked, k.ID, w), Reason: "roll of " + id + " failed"}
		if _, uerr := s.append(context.WithoutCancel(ctx), undo, k.Revision); uerr != nil {
			s.cfg.Logger.Error("roll failed and its new key could not be revoked", "old", id, "new", k.ID, "err", uerr)
		}
		if errors.Is(err, nats.ErrConflict) {
			return nil, keyledger.Errorf(keyledger.Conflict, "key %s changed while it was being rolled; try again", id)
		}
		return nil, err
	}
	prop := s.propagate(ctx, seq, w)
	oldView, err := s.Get(ctx, id, w)
	if err != nil {
		return nil, err
	}
	s.cfg.Logger.Info("key rolled", "old", id, "new", k.ID, "grace", grace, "actor", w.Actor)
	return &Rolled{
		Created: Created{Secret: secret, KeyView: KeyView{Key: k, Status: k.StatusAt(now)}, Propagation: prop,
			Warning: "Store this key now: it will not be shown again."},
		Old: *oldView,
	}, nil
}

// propagate waits, bounded, until this node's table holds event seq, so
// the caller's very next request to this node sees the change; with
// WaitAll, until every live node has it. The event is durable either way:
// a timeout only means some node lags, and the answer names it.
func (s *Service) propagate(ctx context.Context, seq uint64, w Write) Propagation {
	lctx, cancel := context.WithTimeout(ctx, s.cfg.ApplyTimeout)
	defer cancel()
	if err := s.cfg.Projector.WaitApplied(lctx, seq); err != nil {
		s.cfg.Logger.Warn("write recorded but not yet applied on this node", "seq", seq, "err", err)
	}
	if s.cfg.Fleet == nil {
		return Propagation{}
	}
	timeout := w.Timeout
	if timeout <= 0 {
		timeout = max(DefaultWaitTimeout, s.cfg.Fleet.ProofTimeout())
	}
	if w.Wait != WaitAll {
		// No wait, but still the truth as of now: who has applied it
		// so far (the rest unproven).
		timeout = 0
	}
	fctx, fcancel := context.WithTimeout(ctx, timeout)
	defer fcancel()
	a := s.cfg.Fleet.WaitApplied(fctx, seq)
	switch {
	case w.Wait != WaitAll:
	case len(a.Unproven) > 0:
		s.cfg.Logger.Warn("write not applied by every node, and not every other node proven refusing, in time",
			"seq", seq, "applied_by", a.String(), "unproven", a.Unproven, "refusing", a.Refusing)
	case len(a.Refusing) > 0:
		s.cfg.Logger.Warn("write not applied by every node; the others have lost their lease and refuse every key",
			"seq", seq, "applied_by", a.String(), "refusing", a.Refusing)
	}
	return Propagation{AppliedBy: a.String(), PendingNodes: a.Pending, RefusingNodes: a.Refusing, UnprovenNodes: a.Unproven}
}

// Revoke revokes a key for good. Revoking a revoked key is a conflict
// (reason already_revoked); an unknown id is not found.
func (s *Service) Revoke(ctx context.Context, id, reason string, w Write) (*Revoked, error) {
	if err := checkText("reason", reason, maxReasonLen, false); err != nil {
		return nil, err
	}
	alreadyRevoked := errRevoked(id)
	if w.Scope != "" {
		if k, err := s.Get(ctx, id, w); err != nil {
			return nil, err
		} else if k.RevokedAt != nil {
			return nil, alreadyRevoked
		}
	}
	// Optimistic concurrency: append expecting the sequence of the key's
	// last event. The first try takes it from this node's records, which
	// saves a round trip; they may lag, but then the append fails and
	// every further try reads the ledger itself. (A revocation seen here
	// is final, so a lagging record can never wrongly say "revoked".)
	for attempt := 0; attempt < 5; attempt++ {
		var expect uint64
		if k, ok := s.cfg.Projector.Key(id); ok && attempt == 0 {
			if k.RevokedAt != nil {
				return nil, alreadyRevoked
			}
			expect = k.Revision
		} else {
			last, err := s.cfg.Log.Last(ctx, id)
			if err != nil {
				return nil, err
			}
			if _, revoked := last.Event.(*events.KeyRevoked); revoked && last.Rejected == "" {
				return nil, alreadyRevoked
			}
			expect = last.Seq
		}
		ev := &events.KeyRevoked{Header: s.header(events.TypeKeyRevoked, id, w), Reason: reason}
		seq, err := s.append(ctx, ev, expect)
		if errors.Is(err, nats.ErrConflict) {
			continue
		}
		if err != nil {
			return nil, err
		}
		prop := s.propagate(ctx, seq, w)
		s.cfg.Logger.Info("key revoked", "key_id", id, "actor", w.Actor, "actor_ip", w.ActorIP, "seq", seq, "applied_by", prop.AppliedBy)
		k, err := s.local(id)
		if err != nil {
			k = s.fromLedger(ctx, id)
		}
		if k.RevokedAt == nil {
			// The revocation landed: never answer 404 or "active" for
			// it because this node has not applied it yet.
			at := ev.At
			k.RevokedAt, k.RevokedBy, k.RevokeReason, k.Revision, k.Status = &at, w.Actor, reason, seq, keyledger.StatusRevoked
		}
		return &Revoked{KeyView: *k, Propagation: prop}, nil
	}
	return nil, keyledger.Errorf(keyledger.Conflict, "key %s is being changed concurrently; try again", id)
}

// fromLedger builds a key's record from its KeyCreated, for an answer
// about a key this node has not applied yet (an answer needs its
// environment and name, not a blank).
func (s *Service) fromLedger(ctx context.Context, id string) *KeyView {
	k := &KeyView{Key: keyledger.Key{ID: id, Environment: keyledger.EnvLive, Permissions: []string{}}}
	recs, err := s.cfg.Log.History(ctx, id)
	if err != nil {
		return k
	}
	for _, r := range recs {
		if c, ok := r.Event.(*events.KeyCreated); ok && r.Rejected == "" {
			k.Name, k.Environment, k.Permissions, k.Owner, k.Hint = c.Name, c.Environment, c.Permissions, c.Owner, c.Hint
			k.CreatedAt, k.CreatedBy, k.ExpiresAt, k.RateLimit, k.Credits = c.At, c.Actor, c.ExpiresAt, c.RateLimit, c.Credits
			break
		}
	}
	return k
}

// Get returns a key's record, reflecting every write acknowledged before
// the call (see barrier).
func (s *Service) Get(ctx context.Context, id string, w Write) (*KeyView, error) {
	if err := s.barrier(ctx); err != nil {
		return nil, err
	}
	k, err := s.local(id)
	if err != nil || !w.mine(k.Key) {
		return nil, errNoKey(id)
	}
	return k, nil
}

// Catalog is the permission catalog keys are issued from.
func (s *Service) Catalog() *keyledger.Catalog { return s.cfg.Catalog }

// AdminKey reports whether key id may administer now, from ip: it exists,
// is active (not revoked, disabled or expired), holds the reserved admin
// permission and its allowlist admits ip. It returns the owner the key is
// scoped to, if any. It reads this node's table as it is, without a
// barrier, so that a console session can afford the check on every
// request: callers that must not trust a stale table check the verifier's
// readiness first (a stale table is refused, never trusted).
func (s *Service) AdminKey(id, ip string) (scope string, ok bool) {
	k, err := s.local(id)
	if err != nil || k.Status != keyledger.StatusActive || !slices.Contains(k.Permissions, keyledger.PermissionAdmin) {
		return "", false
	}
	if len(k.AllowedIPs) > 0 {
		list, _, err := keyledger.ParseAllowlist(k.AllowedIPs)
		addr, aerr := netip.ParseAddr(ip)
		if err != nil || aerr != nil || !list.Allows(addr) {
			return "", false
		}
	}
	if k.AdminScope != nil {
		scope = k.AdminScope.Owner
	}
	return scope, true
}

// local returns a key's record as this node knows it now.
func (s *Service) local(id string) (*KeyView, error) {
	k, ok := s.cfg.Projector.Key(id)
	if !ok {
		return nil, keyledger.Errorf(keyledger.NotFound, "no key %q", id)
	}
	return &KeyView{Key: k, Status: k.StatusAt(s.cfg.Now())}, nil
}

// barrier is the read barrier that lets any admin node read its own and
// every other node's writes: it asks the stream for its last sequence and
// waits until this node has applied it. A write acknowledged anywhere
// before the call is in the answer; a node that cannot catch up within
// ApplyTimeout answers 503 rather than an out-of-date record.
func (s *Service) barrier(ctx context.Context) error {
	seq, err := s.cfg.Log.LastSeq(ctx)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, s.cfg.ApplyTimeout)
	defer cancel()
	if err := s.cfg.Projector.WaitApplied(wctx, seq); err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "this node has not caught up with the ledger; try again or ask another node")
	}
	return nil
}

// List returns the keys matching f, newest first, reflecting every write
// acknowledged before the call.
func (s *Service) List(ctx context.Context, f projector.Filter, w Write) ([]KeyView, error) {
	if err := s.barrier(ctx); err != nil {
		return nil, err
	}
	if w.Scope != "" {
		if f.Owner != "" && f.Owner != w.Scope {
			return []KeyView{}, nil
		}
		f.Owner = w.Scope
	}
	now := s.cfg.Now()
	keys := s.cfg.Projector.Keys(f, now)
	out := make([]KeyView, len(keys))
	for i, k := range keys {
		out[i] = KeyView{Key: k, Status: k.StatusAt(now)}
	}
	return out, nil
}

// KeyPage is one page of GET /v1/keys.
type KeyPage struct {
	Keys []KeyView `json:"keys"`
	// NextCursor fetches the next page; "" on the last.
	NextCursor string `json:"next_cursor,omitempty"`
}

// Page returns one page of keys, newest first, reflecting every write
// acknowledged before the call. A scoped caller sees its owner's keys only.
func (s *Service) Page(ctx context.Context, q projector.PageQuery, w Write) (*KeyPage, error) {
	if err := s.barrier(ctx); err != nil {
		return nil, err
	}
	if w.Scope != "" {
		if q.Owner != "" && q.Owner != w.Scope {
			return &KeyPage{Keys: []KeyView{}}, nil
		}
		q.Owner = w.Scope
	}
	now := s.cfg.Now()
	if q.Now.IsZero() {
		q.Now = now
	}
	pg, err := s.cfg.Projector.Page(q)
	if err != nil {
		return nil, err
	}
	out := &KeyPage{Keys: make([]KeyView, len(pg.Keys)), NextCursor: pg.NextCursor}
	for i, k := range pg.Keys {
		out.Keys[i] = KeyView{Key: k, Status: k.StatusAt(q.Now)}
	}
	return out, nil
}

// History returns a key's events from the ledger: its audit trail.
func (s *Service) History(ctx context.Context, id string, w Write) ([]nats.Record, error) {
	if w.Scope != "" {
		if _, err := s.Get(ctx, id, w); err != nil {
			return nil, err
		}
	}
	return s.cfg.Log.History(ctx, id)
}

// Updated is the answer to an update, a disable or an enable.
type Updated struct {
	KeyView
	// Changed names the fields the write changed (none: nothing to do,
	// and nothing was written).
	Changed []string `json:"changed"`
	Propagation
}

// Patch is a JSON merge patch (RFC 7396) of a key's changeable fields:
// name, permissions, rate_limit, expires_at, metadata (merged member by
// member; null removes a member), allowed_ips and credits. A member set
// to null clears rate_limit, expires_at, metadata, allowed_ips or
// credits; name and permissions cannot be null. "reason" is recorded in
// the event, not on the key. Any other member is refused.
type Patch map[string]json.RawMessage

// immutable are the key's fields a patch may name but not change.
var immutable = []string{"id", "environment", "owner", "hash", "hint", "created_at", "created_by", "revoked_at",
	"revoked_by", "revoke_reason", "rolled_from", "rolled_to", "imported", "admin_scope", "disabled", "revision", "status"}

// Update applies a merge patch to key id. ifMatch, when not 0, is the
// revision the caller last read: the update happens only if the key is
// still at it (else a conflict with reason revision_mismatch, HTTP 412).
// A revoked key cannot change (conflict). Like a revoke, the update is in
// force on every node it reports in applied_by when the call returns: a
// narrowed permission set is refused there from then on.
func (s *Service) Update(ctx context.Context, id string, patch Patch, ifMatch uint64, w Write) (*Updated, error) {
	if len(patch) == 0 {
		return nil, keyledger.Errorf(keyledger.Invalid, "the patch names no field (updatable: %s)", strings.Join(events.UpdatableFields, ", "))
	}
	for name := range patch {
		switch {
		case name == "reason" || slices.Contains(events.UpdatableFields, name):
		case slices.Contains(immutable, name):
			return nil, keyledger.Errorf(keyledger.Invalid, "%s cannot be changed (disable, enable, roll or revoke the key instead)", name)
		default:
			return nil, keyledger.Errorf(keyledger.Invalid, "unknown field %s (updatable: %s)", keyledger.Quote(clipName(name)), strings.Join(events.UpdatableFields, ", "))
		}
	}
	var reason string
	if raw, ok := patch["reason"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &reason); err != nil {
			return nil, keyledger.Errorf(keyledger.Invalid, "reason must be a string")
		}
		if err := checkText("reason", reason, maxReasonLen, false); err != nil {
			return nil, err
		}
	}
	return s.change(ctx, id, ifMatch, w, func(k keyledger.Key) (events.Event, []string, error) {
		ev := &events.KeyUpdated{Header: s.header(events.TypeKeyUpdated, id, w), Reason: reason}
		if err := s.applyPatch(ev, k, patch, w); err != nil {
			return nil, nil, err
		}
		if len(ev.Changed) == 0 {
			return nil, nil, nil
		}
		return ev, ev.Changed, nil
	})
}

// SetDisabled disables (off) or enables key id. Disabling a disabled key,
// or enabling an enabled one, writes nothing. A revoked key can be neither
// (conflict).
func (s *Service) SetDisabled(ctx context.Context, id string, off bool, reason string, w Write) (*Updated, error) {
	if err := checkText("reason", reason, maxReasonLen, false); err != nil {
		return nil, err
	}
	return s.change(ctx, id, 0, w, func(k keyledger.Key) (events.Event, []string, error) {
		if k.Disabled == off {
			return nil, nil, nil
		}
		if off {
			return &events.KeyDisabled{Header: s.header(events.TypeKeyDisabled, id, w), Reason: reason}, []string{"disabled"}, nil
		}
		return &events.KeyEnabled{Header: s.header(events.TypeKeyEnabled, id, w), Reason: reason}, []string{"disabled"}, nil
	})
}

// change runs one reversible write with optimistic concurrency: read the
// key as of every write acknowledged before (the read barrier), let make
// build the event from it, append it expecting the key's last sequence,
// and on a concurrent change read again (at most 5 times). The event's
// Prev is that sequence, which binds it to the key's history.
func (s *Service) change(ctx context.Context, id string, ifMatch uint64, w Write,
	build func(keyledger.Key) (events.Event, []string, error)) (*Updated, error) {
	var expect uint64
	for attempt := 0; attempt < 12; attempt++ {
		if attempt > 0 {
			// A conflict: the key's subject moved, or a write to it is
			// still in flight at the stream's leader. Wait a little,
			// read the subject's last event, and build on a table that
			// has applied it: never on a state older than what the
			// append will expect (that would lose the other update).
			select {
			case <-ctx.Done():
				return nil, keyledger.Wrap(keyledger.Unavailable, ctx.Err(), "update interrupted")
			case <-time.After(min(time.Duration(1<<attempt)*time.Millisecond, 50*time.Millisecond)):
			}
			last, err := s.cfg.Log.Last(ctx, id)
			if err != nil {
				return nil, err
			}
			wctx, cancel := context.WithTimeout(ctx, s.cfg.ApplyTimeout)
			err = s.cfg.Projector.WaitApplied(wctx, last.Seq)
			cancel()
			if err != nil {
				return nil, keyledger.Wrap(keyledger.Unavailable, err, "this node has not caught up with the ledger; try again or ask another node")
			}
			expect = last.Seq
		}
		k, err := s.Get(ctx, id, w)
		if err != nil {
			return nil, err
		}
		if attempt == 0 {
			expect = k.Revision
		}
		// The record's revision is its last applied event; the subject
		// may end with events no node applied (forgeries), which an
		// If-Match does not have to name.
		if ifMatch != 0 && k.Revision != ifMatch {
			return nil, &keyledger.Error{Code: keyledger.Conflict, Reason: keyledger.ReasonRevisionMismatch,
				Message: fmt.Sprintf("key %s is at revision %d, not %d: read it again", id, k.Revision, ifMatch)}
		}
		if k.RevokedAt != nil {
			return nil, errRevoked(id)
		}
		ev, changed, err := build(k.Key)
		if err != nil {
			return nil, err
		}
		if ev == nil {
			return &Updated{KeyView: *k, Changed: []string{}}, nil
		}
		setPrev(ev, expect)
		seq, err := s.append(ctx, ev, expect)
		if errors.Is(err, nats.ErrConflict) {
			continue
		}
		if err != nil {
			return nil, err
		}
		prop := s.propagate(ctx, seq, w)
		s.cfg.Logger.Info("key changed", "key_id", id, "type", ev.Head().Type, "changed", changed, "actor", w.Actor,
			"actor_ip", w.ActorIP, "seq", seq, "applied_by", prop.AppliedBy)
		view, err := s.local(id)
		if err != nil || view.Revision < seq {
			// Landed, but this node has not applied it (its answer
			// named it pending): say what was written.
			return &Updated{KeyView: *k, Changed: changed, Propagation: prop}, nil
		}
		return &Updated{KeyView: *view, Changed: changed, Propagation: prop}, nil
	}
	return nil, keyledger.Errorf(keyledger.Conflict, "key %s is being changed concurrently; try again", id)
}

func setPrev(ev events.Event, prev uint64) {
	switch e := ev.(type) {
	case *events.KeyUpdated:
		e.Prev.Prev = prev
	case *events.KeyDisabled:
		e.Prev.Prev = prev
	case *events.KeyEnabled:
		e.Prev.Prev = prev
	}
}

func clipName(s string) string {
	if len(s) > 64 {
		return s[:64]
	}
	return s
}

// applyPatch fills ev with the fields patch changes on k, each checked
// as at creation; a field set to what it already is is no change.
func (s *Service) applyPatch(ev *events.KeyUpdated, k keyledger.Key, patch Patch, w Write) error {
	for _, field := range events.UpdatableFields {
		raw, ok := patch[field]
		if !ok {
			continue
		}
		switch field {
		case events.FieldName:
			var name string
			if isNull(raw) || json.Unmarshal(raw, &name) != nil {
				return keyledger.Errorf(keyledger.Invalid, "name must be a string")
			}
			if err := checkText("name", name, maxNameLen, true); err != nil {
				return err
			}
			if name != k.Name {
				ev.Name = name
				ev.Changed = append(ev.Changed, field)
			}
		case events.FieldPermissions:
			var names []string
			if isNull(raw) || json.Unmarshal(raw, &names) != nil {
				return keyledger.Errorf(keyledger.Invalid, "permissions must be an array of permission names")
			}
			perms, err := s.cfg.Catalog.Normalize(names)
			if err != nil {
				return err
			}
			// A scoped caller cannot turn an unscoped key into an
			// admin key: checkScope wants its scope on any admin key.
			if err := checkScope(perms, k.AdminScope, w); err != nil {
				return err
			}
			if !slices.Equal(perms, k.Permissions) {
				ev.Permissions = perms
				ev.Changed = append(ev.Changed, field)
			}
		case events.FieldRateLimit:
			var rl *keyledger.RateLimit
			if !isNull(raw) {
				rl = new(keyledger.RateLimit)
				if err := json.Unmarshal(raw, rl); err != nil {
					return keyledger.Errorf(keyledger.Invalid, "rate_limit must be {\"per_second\":…,\"burst\":…} or null")
				}
				if err := rl.Validate(); err != nil {
					return err
				}
			}
			if !reflect.DeepEqual(rl, k.RateLimit) {
				ev.RateLimit = rl
				ev.Changed = append(ev.Changed, field)
			}
		case events.FieldExpiresAt:
			var at *time.Time
			if !isNull(raw) {
				var t time.Time
				if err := json.Unmarshal(raw, &t); err != nil {
					return keyledger.Errorf(keyledger.Invalid, "expires_at must be an RFC 3339 time or null")
				}
				t = t.UTC()
				if !t.After(s.cfg.Now()) {
					return keyledger.Errorf(keyledger.Invalid, "expires_at must be in the future")
				}
				at = &t
			}
			if k.RolledTo != "" && k.ExpiresAt != nil && (at == nil || at.After(*k.ExpiresAt)) {
				return keyledger.Errorf(keyledger.Conflict, "key %s was rolled to %s: its expiry cannot move past %s", k.ID, k.RolledTo, k.ExpiresAt.Format(time.RFC3339))
			}
			if !(at == nil && k.ExpiresAt == nil || at != nil && k.ExpiresAt != nil && at.Equal(*k.ExpiresAt)) {
				ev.ExpiresAt = at
				ev.Changed = append(ev.Changed, field)
			}
		case events.FieldMetadata:
			var meta json.RawMessage
			var err error
			if !isNull(raw) {
				if meta, err = keyledger.MergePatch(k.Metadata, raw); err != nil {
					return err
				}
			}
			if string(meta) != string(k.Metadata) {
				ev.Metadata = meta
				ev.Changed = append(ev.Changed, field)
			}
		case events.FieldAllowedIPs:
			var ips []string
			if !isNull(raw) {
				if err := json.Unmarshal(raw, &ips); err != nil {
					return keyledger.Errorf(keyledger.Invalid, "allowed_ips must be an array of IP addresses and CIDR prefixes, or null")
				}
			}
			_, canon, err := keyledger.ParseAllowlist(ips)
			if err != nil {
				return err
			}
			if !slices.Equal(canon, k.AllowedIPs) {
				ev.AllowedIPs = canon
				ev.Changed = append(ev.Changed, field)
			}
		case events.FieldCredits:
			var c *keyledger.Credits
			if !isNull(raw) {
				c = new(keyledger.Credits)
				if err := strictUnmarshal(raw, c); err != nil {
					return keyledger.Errorf(keyledger.Invalid, "credits must be {\"remaining\":…,\"refill\":{\"interval\":\"daily\"|\"monthly\",\"amount\":…}} or null")
				}
				if err := c.Validate(); err != nil {
					return err
				}
			}
			// Setting credits starts the balance again from their
			// remaining, so the same credits as before are a top-up,
			// not a no-op: only clearing credits the key has not is
			// nothing to write.
			if c != nil || k.Credits != nil {
				ev.Credits = c
				ev.Changed = append(ev.Changed, field)
			}
		}
	}
	return nil
}
