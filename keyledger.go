// Package keyledger holds the domain types shared by every part of the
// system: key records, environments, verification outcomes, the permission
// catalog, the secret key format and the one error type. It imports nothing
// from the rest of the module, so events, projector, verifier, analytics and
// the admin API can all speak in these types without import cycles.
package keyledger

import (
	"encoding/json"
	"fmt"
	"time"
)

// Environment is the world a key belongs to: production ("live") or sandbox
// ("test"). Every verifier node serves exactly one environment.
type Environment uint8

// The environments. The zero value is deliberately invalid so that a missing
// environment is never mistaken for production.
const (
	EnvUnknown Environment = iota
	EnvLive
	EnvTest
)

// String returns the wire name of the environment ("live", "test").
func (e Environment) String() string {
	switch e {
	case EnvLive:
		return "live"
	case EnvTest:
		return "test"
	}
	return ""
}

// ParseEnvironment parses "live" or "test".
func ParseEnvironment(s string) (Environment, error) {
	switch s {
	case "live":
		return EnvLive, nil
	case "test":
		return EnvTest, nil
	}
	return EnvUnknown, Errorf(Invalid, "environment must be \"live\" or \"test\", not %s", Quote(s))
}

// MarshalText implements encoding.TextMarshaler.
func (e Environment) MarshalText() ([]byte, error) {
	if e == EnvUnknown {
		return nil, fmt.Errorf("keyledger: cannot encode unknown environment")
	}
	return []byte(e.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (e *Environment) UnmarshalText(b []byte) error {
	v, err := ParseEnvironment(string(b))
	if err != nil {
		return err
	}
	*e = v
	return nil
}

// Status is the lifecycle state of a key as seen at a point in time.
type Status string

// Key statuses. Revoked is final: no later event can make a key active
// again. Disabled is not: an enable makes the key active again.
const (
	StatusActive   Status = "active"
	StatusRevoked  Status = "revoked"
	StatusExpired  Status = "expired"
	StatusDisabled Status = "disabled"
)

// ParseStatus parses a status filter value.
func ParseStatus(s string) (Status, error) {
	switch Status(s) {
	case StatusActive, StatusRevoked, StatusExpired, StatusDisabled:
		return Status(s), nil
	}
	return "", Errorf(Invalid, "status must be active, revoked, expired or disabled, not %q", s)
}

// AdminScope limits an admin key to one owner's keys: it sees, creates,
// updates, rolls and revokes only those, and other owners' keys do not
// exist for it (404).
type AdminScope struct {
	Owner string `json:"owner"`
}

// RateLimit is a token bucket: PerSecond tokens refill each second, up to
// Burst. It bounds how often one key may be verified successfully.
type RateLimit struct {
	PerSecond float64 `json:"per_second"`
	Burst     int     `json:"burst"`
}

// Validate reports whether the limit is usable.
func (r RateLimit) Validate() error {
	if !(r.PerSecond > 0) || r.PerSecond > 1e9 {
		return Errorf(Invalid, "rate_limit.per_second must be a positive number")
	}
	if r.Burst < 1 || r.Burst > 1e9 {
		return Errorf(Invalid, "rate_limit.burst must be a positive integer")
	}
	return nil
}

// Key is the record of one API key as the ledger knows it. It never holds
// the secret: only Hash (hex SHA-256 of the secret) and Hint (its last four
// characters, so people can tell their keys apart).
type Key struct {
	ID          string      `json:"id"`
	Name        string      `json:"name"`
	Environment Environment `json:"environment"`
	Permissions []string    `json:"permissions"`
	Owner       string      `json:"owner"`
	Hash        string      `json:"-"`
	Hint        string      `json:"hint"`
	ExpiresAt   *time.Time  `json:"expires_at"`
	RateLimit   *RateLimit  `json:"rate_limit"`
	CreatedAt   time.Time   `json:"created_at"`
	CreatedBy   string      `json:"created_by"`
	RevokedAt   *time.Time  `json:"revoked_at,omitempty"`
	RevokedBy   string      `json:"revoked_by,omitempty"`
	// RevokeReason is the free-text reason given at revocation.
	RevokeReason string `json:"revoke_reason,omitempty"`
	// RolledFrom is the key this one replaced; RolledTo the key that
	// replaced this one (which then expires at ExpiresAt).
	RolledFrom string `json:"rolled_from,omitempty"`
	RolledTo   string `json:"rolled_to,omitempty"`
	// Imported keys were issued elsewhere; only their hash came in.
	Imported bool `json:"imported,omitempty"`
	// Metadata is the operator's JSON object about the key (see
	// ValidateMetadata); AllowedIPs, when set, are the only addresses the
	// key may be used from (see ParseAllowlist).
	Metadata   json.RawMessage `json:"metadata,omitempty"`
	AllowedIPs []string        `json:"allowed_ips,omitempty"`
	// AdminScope, on a key holding the admin permission, limits it to
	// one owner.
	AdminScope *AdminScope `json:"admin_scope,omitempty"`
	// Credits, if set, is the key's balance as last set (what remains
	// now is the quota counters' business: see GET /v1/keys/{id}/credits).
	Credits *Credits `json:"credits,omitempty"`
	// Disabled keys are refused (401) until enabled again.
	Disabled   bool       `json:"disabled,omitempty"`
	DisabledAt *time.Time `json:"disabled_at,omitempty"`
	DisabledBy string     `json:"disabled_by,omitempty"`
	// UpdatedAt and UpdatedBy are those of the last KeyUpdated.
	UpdatedAt *time.Time `json:"updated_at,omitempty"`
	UpdatedBy string     `json:"updated_by,omitempty"`
	// Revision is the KEYS stream sequence of the last event applied to
	// this key; a writer passes it back to get optimistic concurrency.
	Revision uint64 `json:"revision"`
}

// StatusAt reports the key's status at now. Revocation wins over
// everything, an operator's disable over expiry.
func (k *Key) StatusAt(now time.Time) Status {
	switch {
	case k.RevokedAt != nil:
		return StatusRevoked
	case k.Disabled:
		return StatusDisabled
	case k.ExpiresAt != nil && !now.Before(*k.ExpiresAt):
		return StatusExpired
	}
	return StatusActive
}
