// Package events defines keyledger's event schema (version 1): the key
// lifecycle events of the ledger (KeyCreated, KeyRolled, KeyRevoked) and the
// KeyUsed event of every verification, their encoding, decoding and
// validation. Where events are stored and how they travel is package nats's
// business; this package imports no transport.
//
// Events are JSON objects. Other producers may write them: the README
// documents every field. A consumer ignores fields it does not know, so
// fields may be added within a version; changing a field's meaning needs a
// new version.
package events

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"strings"
	"time"

	gojson "github.com/goccy/go-json"
	"github.com/google/uuid"
	keyledger "github.com/keyledger/keyledger"
)

// Version is the schema version written into every event's "v".
const Version = 1

// Type names an event kind.
type Type string

// The event types.
const (
	TypeKeyCreated  Type = "KeyCreated"
	TypeKeyRevoked  Type = "KeyRevoked"
	TypeKeyRolled   Type = "KeyRolled"
	TypeKeyUsed     Type = "KeyUsed"
	TypeKeyUpdated  Type = "KeyUpdated"
	TypeKeyDisabled Type = "KeyDisabled"
	TypeKeyEnabled  Type = "KeyEnabled"
	// TypeKeyLeakReported records a leak report about a key (see
	// KeyLeakReported).
	TypeKeyLeakReported Type = "KeyLeakReported"
	// TypePlanSet and TypeOwnerSet are the events of plans and owners
	// (their Header.KeyID is keyledger.PlanID or keyledger.OwnerID).
	TypePlanSet  Type = "PlanSet"
	TypeOwnerSet Type = "OwnerSet"
)

// Event is a decoded event of any type.
type Event interface {
	// Head returns the fields every event carries.
	Head() *Header
}

// Header holds the fields every event carries. KeyUsed events leave Actor
// empty: the caller presenting a key is not an actor of the ledger.
type Header struct {
	Type    Type      `json:"type"`
	V       int       `json:"v"`
	EventID string    `json:"event_id"`
	At      time.Time `json:"at"`
	Actor   string    `json:"actor,omitempty"`
	// ActorIP is the address the actor's request came from, when known.
	ActorIP string `json:"actor_ip,omitempty"`
	KeyID   string `json:"key_id"`
}

// Head implements Event.
func (h *Header) Head() *Header { return h }

// KeyCreated records the issue of a key. Only the hash of its secret is
// ever published.
type KeyCreated struct {
	Header
	Name        string                `json:"name"`
	Environment keyledger.Environment `json:"environment"`
	Permissions []string              `json:"permissions"`
	Owner       string                `json:"owner"`
	Hash        string                `json:"hash"`
	Hint        string                `json:"hint"`
	ExpiresAt   *time.Time            `json:"expires_at"`
	RateLimit   *keyledger.RateLimit  `json:"rate_limit"`
	// RolledFrom names the key this one replaces, when it was rolled.
	RolledFrom string `json:"rolled_from,omitempty"`
	// Imported marks a key whose secret was issued elsewhere: only its
	// hash was brought in, and it need not have keyledger's format.
	Imported bool `json:"imported,omitempty"`
	// Metadata, AllowedIPs and AdminScope: see keyledger.Key.
	Metadata   json.RawMessage       `json:"metadata,omitempty"`
	AllowedIPs []string              `json:"allowed_ips,omitempty"`
	AdminScope *keyledger.AdminScope `json:"admin_scope,omitempty"`
	// Credits, if set, is a balance each valid verification spends.
	Credits *keyledger.Credits `json:"credits,omitempty"`
}

// Prev binds a reversible event to the key's history: it is the stream
// sequence of the key's last event when the event was written (the
// expected last sequence of its append). A node applies the event only
// if no event of the key was applied after Prev, so a signed event copied
// back into the stream later (a replayed enable, an old permission set)
// is refused: its Prev is behind the key's history.
type Prev struct {
	Prev uint64 `json:"prev"`
}

// Fields a KeyUpdated may change.
const (
	FieldName        = "name"
	FieldPermissions = "permissions"
	FieldRateLimit   = "rate_limit"
	FieldExpiresAt   = "expires_at"
	FieldMetadata    = "metadata"
	FieldAllowedIPs  = "allowed_ips"
	// FieldCredits sets a new balance (and refill): the balance starts
	// again from the event's credits.remaining.
	FieldCredits = "credits"
)

// UpdatableFields lists them, in the order events list them.
var UpdatableFields = []string{FieldName, FieldPermissions, FieldRateLimit, FieldExpiresAt, FieldMetadata, FieldAllowedIPs, FieldCredits}

// KeyUpdated changes the fields named in Changed to the values it holds
// (a null rate_limit, expires_at, metadata or allowed_ips clears it).
// Fields not in Changed are left as they were, whatever the event holds.
type KeyUpdated struct {
	Header
	Prev
	Changed     []string             `json:"changed"`
	Reason      string               `json:"reason,omitempty"`
	Name        string               `json:"name,omitempty"`
	Permissions []string             `json:"permissions,omitempty"`
	RateLimit   *keyledger.RateLimit `json:"rate_limit,omitempty"`
	ExpiresAt   *time.Time           `json:"expires_at,omitempty"`
	Metadata    json.RawMessage      `json:"metadata,omitempty"`
	AllowedIPs  []string             `json:"allowed_ips,omitempty"`
	Credits     *keyledger.Credits   `json:"credits,omitempty"`
}

// Changes reports whether the event changes field.
func (e *KeyUpdated) Changes(field string) bool { return slices.Contains(e.Changed, field) }

// KeyDisabled makes a key refused (401) until a KeyEnabled; unlike a
// revocation it can be undone.
type KeyDisabled struct {
	Header
	Prev
	Reason string `json:"reason,omitempty"`
}

// KeyEnabled undoes a KeyDisabled. It never revives a revoked key.
type KeyEnabled struct {
	Header
	Prev
	Reason string `json:"reason,omitempty"`
}

// KeyRolled records that a key was replaced by RolledTo and now expires at
// ExpiresAt, which is never later than its expiry before.
type KeyRolled struct {
	Header
	RolledTo  string    `json:"rolled_to"`
	ExpiresAt time.Time `json:"expires_at"`
}

// KeyLeakReported records that a scanner reported the key's secret
// found in public (Source: github, gitlab or the reporter's name; URL:
// where), and what keyledger did about it (Action). It changes nothing
// in the key: when the key was revoked for it, the KeyRevoked before it
// says so. It never carries the secret.
type KeyLeakReported struct {
	Header
	Source string `json:"source"`
	URL    string `json:"url,omitempty"`
	// Action is LeakRevoked, LeakAlerted (policy alert) or
	// LeakAlreadyRevoked.
	Action string `json:"action"`
}

// The actions of a KeyLeakReported.
const (
	LeakRevoked        = "revoked"
	LeakAlerted        = "alerted"
	LeakAlreadyRevoked = "already_revoked"
)

// PlanSet creates a plan (Prev 0) or replaces it with Plan.
type PlanSet struct {
	Header
	Prev
	Plan keyledger.Plan `json:"plan"`
}

// OwnerSet creates or replaces an owner's record: its plan and metadata.
type OwnerSet struct {
	Header
	Prev
	Owner    string          `json:"owner"`
	Plan     string          `json:"plan"`
	Metadata json.RawMessage `json:"metadata,omitempty"`
}

// KeyRevoked records the revocation of a key. It is final.
type KeyRevoked struct {
	Header
	Reason string `json:"reason"`
}

// KeyUsed records one verification, whatever its outcome. It never carries
// a secret, nor any part of an unknown presented key beyond its prefix.
type KeyUsed struct {
	Header
	Environment keyledger.Environment `json:"environment"`
	Outcome     keyledger.Outcome     `json:"-"`
	OutcomeName string                `json:"outcome"`
	Permission  string                `json:"permission"`
	IP          string                `json:"ip"`
	UserAgent   string                `json:"user_agent"`
	Method      string                `json:"method"`
	Path        string                `json:"path"`
	Node        string                `json:"node"`
	LatencyUS   int64                 `json:"latency_us"`
}

// NewHeader returns a header with a fresh UUIDv7 event id and at in UTC.
func NewHeader(t Type, keyID, actor string, at time.Time) Header {
	return Header{Type: t, V: Version, EventID: NewID(), At: at.UTC(), Actor: actor, KeyID: keyID}
}

func init() {
	// Event ids need uniqueness, not secrecy: drawing their random bits
	// from a pooled buffer (filled from crypto/rand) saves a read of the
	// system's random source per KeyUsed event.
	uuid.EnableRandPool()
}

// NewID returns a new UUIDv7: time-ordered, so event ids sort by creation.
func NewID() string {
	id, err := uuid.NewV7()
	if err != nil {
		// NewV7 fails only when the system's random source does; a ledger
		// that cannot draw random ids cannot safely go on.
		panic("events: reading randomness: " + err.Error())
	}
	return id.String()
}

// Encode returns the JSON form of an event.
func Encode(ev Event) ([]byte, error) {
	if err := Validate(ev); err != nil {
		return nil, err
	}
	if ku, ok := ev.(*KeyUsed); ok {
		return ku.AppendJSON(make([]byte, 0, 512)), nil
	}
	return json.Marshal(ev)
}

// Decode parses and validates an event of any type.
func Decode(data []byte) (Event, error) { return decodeWith(data, unmarshal) }

// decodeWith is Decode with the given JSON decoder of the event's fields.
func decodeWith(data []byte, unmarshal func([]byte, any) error) (Event, error) {
	var h struct {
		Type Type `json:"type"`
		V    int  `json:"v"`
	}
	if t, ok := sniffHead(data); ok {
		h.Type, h.V = t, Version
	} else if err := json.Unmarshal(data, &h); err != nil {
		return nil, keyledger.Errorf(keyledger.Invalid, "event is not a JSON object: %v", err)
	}
	if h.V != Version {
		return nil, keyledger.Errorf(keyledger.Invalid, "unsupported event version %d", h.V)
	}
	var ev Event
	switch h.Type {
	case TypeKeyCreated:
		ev = new(KeyCreated)
	case TypeKeyRevoked:
		ev = new(KeyRevoked)
	case TypeKeyRolled:
		ev = new(KeyRolled)
	case TypeKeyUsed:
		ev = new(KeyUsed)
	case TypeKeyUpdated:
		ev = new(KeyUpdated)
	case TypeKeyDisabled:
		ev = new(KeyDisabled)
	case TypeKeyEnabled:
		ev = new(KeyEnabled)
	case TypeKeyLeakReported:
		ev = new(KeyLeakReported)
	case TypePlanSet:
		ev = new(PlanSet)
	case TypeOwnerSet:
		ev = new(OwnerSet)
	default:
		return nil, keyledger.Errorf(keyledger.Invalid, "unknown event type %q", h.Type)
	}
	if err := unmarshal(data, ev); err != nil {
		return nil, keyledger.Errorf(keyledger.Invalid, "malformed %s event: %v", h.Type, err)
	}
	if ku, ok := ev.(*KeyUsed); ok {
		o, ok := keyledger.ParseOutcome(ku.OutcomeName)
		if !ok {
			return nil, keyledger.Errorf(keyledger.Invalid, "unknown outcome %q", ku.OutcomeName)
		}
		ku.Outcome = o
	}
	if err := Validate(ev); err != nil {
		return nil, err
	}
	return ev, nil
}

// unmarshal decodes an event's fields with github.com/goccy/go-json, a
// drop-in for encoding/json that decodes the ledger's events 4–5 × faster
// (1.3 against 6 µs a KeyCreated here): a replay decodes every event of
// the ledger, and once a checkpoint spares the signature checks the
// decode is what is left. FuzzDecode_decoders holds it to
// encoding/json's answers.
func unmarshal(data []byte, v any) error { return gojson.Unmarshal(data, v) }

// sniffHead reads the type of an event as Encode writes it, `{"type":"…",
// "v":1,` first, without a JSON pass of its own: the decode that follows
// parses the whole event, its type included, and Validate refuses one
// whose type is not the sniffed one. (A replay decodes every event of the
// ledger: a pass saved is ~40 % of its decode time.) Anything else is read
// the slow way.
func sniffHead(data []byte) (Type, bool) {
	const head = `{"type":"`
	if !bytes.HasPrefix(data, []byte(head)) {
		return "", false
	}
	rest := data[len(head):]
	i := bytes.IndexByte(rest, '"')
	if i <= 0 || i > 32 || !bytes.HasPrefix(rest[i:], []byte(`","v":1,`)) {
		return "", false
	}
	for _, c := range rest[:i] {
		if c < 'A' || c > 'Z' && c < 'a' || c > 'z' {
			return "", false
		}
	}
	return Type(rest[:i]), true
}

// Validate checks the fields an event must carry to be applied.
func Validate(ev Event) error {
	h := ev.Head()
	if h.V != Version {
		return keyledger.Errorf(keyledger.Invalid, "unsupported event version %d", h.V)
	}
	if _, err := uuid.Parse(h.EventID); err != nil {
		return keyledger.Errorf(keyledger.Invalid, "event_id must be a UUID")
	}
	if h.At.IsZero() {
		return keyledger.Errorf(keyledger.Invalid, "at is required")
	}
	if !encodable(h.At) {
		return keyledger.Errorf(keyledger.Invalid, "at must be between years 1 and 9999 in UTC")
	}
	switch e := ev.(type) {
	case *KeyCreated:
		if h.Type != TypeKeyCreated {
			return keyledger.Errorf(keyledger.Invalid, "type must be %s", TypeKeyCreated)
		}
		if err := ValidKeyID(h.KeyID); err != nil {
			return err
		}
		if e.Environment == keyledger.EnvUnknown {
			return keyledger.Errorf(keyledger.Invalid, "environment is required")
		}
		if _, err := keyledger.ParseHash(e.Hash); err != nil {
			return err
		}
		if len(e.Permissions) == 0 {
			return keyledger.Errorf(keyledger.Invalid, "permissions must not be empty")
		}
		if e.ExpiresAt != nil && !expiryInRange(*e.ExpiresAt) {
			return errExpiryRange
		}
		if e.RateLimit != nil {
			if err := e.RateLimit.Validate(); err != nil {
				return err
			}
		}
		if err := validExtras(e.Metadata, e.AllowedIPs); err != nil {
			return err
		}
		if e.AdminScope != nil && e.AdminScope.Owner == "" {
			return keyledger.Errorf(keyledger.Invalid, "admin_scope.owner is required")
		}
		if e.Credits != nil {
			if err := e.Credits.Validate(); err != nil {
				return err
			}
		}
	case *KeyUpdated:
		if h.Type != TypeKeyUpdated {
			return keyledger.Errorf(keyledger.Invalid, "type must be %s", TypeKeyUpdated)
		}
		if err := ValidKeyID(h.KeyID); err != nil {
			return err
		}
		if len(e.Changed) == 0 {
			return keyledger.Errorf(keyledger.Invalid, "changed must name at least one field")
		}
		for i, f := range e.Changed {
			if !slices.Contains(UpdatableFields, f) || slices.Contains(e.Changed[:i], f) {
				return keyledger.Errorf(keyledger.Invalid, "changed: %s is not an updatable field, or is named twice", keyledger.Quote(f))
			}
		}
		if e.Changes(FieldPermissions) && len(e.Permissions) == 0 {
			return keyledger.Errorf(keyledger.Invalid, "permissions must not be empty")
		}
		if e.Changes(FieldExpiresAt) && e.ExpiresAt != nil && !expiryInRange(*e.ExpiresAt) {
			return errExpiryRange
		}
		if e.Changes(FieldRateLimit) && e.RateLimit != nil {
			if err := e.RateLimit.Validate(); err != nil {
				return err
			}
		}
		if err := validExtras(e.Metadata, e.AllowedIPs); err != nil {
			return err
		}
		if e.Changes(FieldCredits) && e.Credits != nil {
			if err := e.Credits.Validate(); err != nil {
				return err
			}
		}
	case *PlanSet:
		if h.Type != TypePlanSet {
			return keyledger.Errorf(keyledger.Invalid, "type must be %s", TypePlanSet)
		}
		if err := e.Plan.Validate(); err != nil {
			return err
		}
		if h.KeyID != keyledger.PlanID(e.Plan.Name) {
			return keyledger.Errorf(keyledger.Invalid, "a PlanSet's key_id must be %s", keyledger.PlanID(e.Plan.Name))
		}
	case *OwnerSet:
		if h.Type != TypeOwnerSet {
			return keyledger.Errorf(keyledger.Invalid, "type must be %s", TypeOwnerSet)
		}
		if err := keyledger.ValidOwner(e.Owner); err != nil {
			return err
		}
		if e.Plan != "" {
			if err := keyledger.ValidPlanName(e.Plan); err != nil {
				return err
			}
		}
		if h.KeyID != keyledger.OwnerID(e.Owner) {
			return keyledger.Errorf(keyledger.Invalid, "an OwnerSet's key_id must be %s", keyledger.OwnerID(e.Owner))
		}
		if err := validExtras(e.Metadata, nil); err != nil {
			return err
		}
	case *KeyDisabled:
		if h.Type != TypeKeyDisabled {
			return keyledger.Errorf(keyledger.Invalid, "type must be %s", TypeKeyDisabled)
		}
		if err := ValidKeyID(h.KeyID); err != nil {
			return err
		}
	case *KeyEnabled:
		if h.Type != TypeKeyEnabled {
			return keyledger.Errorf(keyledger.Invalid, "type must be %s", TypeKeyEnabled)
		}
		if err := ValidKeyID(h.KeyID); err != nil {
			return err
		}
	case *KeyRolled:
		if h.Type != TypeKeyRolled {
			return keyledger.Errorf(keyledger.Invalid, "type must be %s", TypeKeyRolled)
		}
		if err := ValidKeyID(h.KeyID); err != nil {
			return err
		}
		if err := ValidKeyID(e.RolledTo); err != nil {
			return keyledger.Errorf(keyledger.Invalid, "rolled_to: %s", keyledger.ErrorMessage(err))
		}
		if e.ExpiresAt.IsZero() {
			return keyledger.Errorf(keyledger.Invalid, "expires_at is required")
		}
		if !expiryInRange(e.ExpiresAt) {
			return errExpiryRange
		}
	case *KeyRevoked:
		if h.Type != TypeKeyRevoked {
			return keyledger.Errorf(keyledger.Invalid, "type must be %s", TypeKeyRevoked)
		}
		if err := ValidKeyID(h.KeyID); err != nil {
			return err
		}
	case *KeyLeakReported:
		if h.Type != TypeKeyLeakReported {
			return keyledger.Errorf(keyledger.Invalid, "type must be %s", TypeKeyLeakReported)
		}
		if err := ValidKeyID(h.KeyID); err != nil {
			return err
		}
		switch e.Action {
		case LeakRevoked, LeakAlerted, LeakAlreadyRevoked:
		default:
			return keyledger.Errorf(keyledger.Invalid, "action must be revoked, alerted or already_revoked")
		}
		if e.Source == "" || len(e.Source) > 64 || len(e.URL) > 2048 {
			return keyledger.Errorf(keyledger.Invalid, "source must be 1 to 64 bytes and url at most 2048")
		}
	case *KeyUsed:
		if h.Type != TypeKeyUsed {
			return keyledger.Errorf(keyledger.Invalid, "type must be %s", TypeKeyUsed)
		}
		if e.Environment == keyledger.EnvUnknown {
			return keyledger.Errorf(keyledger.Invalid, "environment is required")
		}
		if e.Outcome.String() == "invalid" {
			return keyledger.Errorf(keyledger.Invalid, "unknown outcome")
		}
		if h.KeyID != "" {
			if err := ValidKeyID(h.KeyID); err != nil {
				return err
			}
		}
	}
	return nil
}

// validExtras checks metadata and allowed_ips as they are stored: already
// canonical (the admin API writes them so).
func validExtras(meta json.RawMessage, ips []string) error {
	if len(meta) > 0 {
		if _, err := keyledger.ValidateMetadata(meta); err != nil {
			return err
		}
	}
	if _, _, err := keyledger.ParseAllowlist(ips); err != nil {
		return err
	}
	return nil
}

// Expiries are compared as nanoseconds since 1970 on the verify path:
// they must fit an int64 (1677-09-21 to 2262-04-11). Beyond, a key would
// have been dead on arrival while listed active.
var (
	minExpiry      = time.Unix(0, math.MinInt64)
	maxExpiry      = time.Unix(0, math.MaxInt64)
	errExpiryRange = keyledger.Errorf(keyledger.Invalid, "expires_at must be between 1677-09-22 and 2262-04-11")
)

func expiryInRange(t time.Time) bool { return t.After(minExpiry) && t.Before(maxExpiry) }

// encodable reports whether t survives RFC 3339 in UTC: years 1–9999.
func encodable(t time.Time) bool {
	y := t.UTC().Year()
	return y >= 1 && y <= 9999
}

// ValidKeyID checks that id can name a key and a subject token: 1–64
// characters of letters, digits, '-' and '_'.
func ValidKeyID(id string) error {
	if id == "" || len(id) > 64 {
		return keyledger.Errorf(keyledger.Invalid, "key_id must be 1 to 64 characters")
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return keyledger.Errorf(keyledger.Invalid, "key_id may hold only letters, digits, '-' and '_'")
		}
	}
	return nil
}

// NewKeyID returns a fresh key id: "key_" and a UUIDv7 without dashes.
func NewKeyID() string {
	return "key_" + strings.ReplaceAll(NewID(), "-", "")
}
