package analytics

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"
	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
	"golang.org/x/mod/sumdb/tlog"
)

// AuditRow is one key_events row: what analytics stores of a ledger event.
//
// Ingestion writes one row per KEYS message it records, derived by
// AuditRowOf; the ledger checker recomputes the same rows from the stream
// and compares them with ReadAuditRows' (DiffAuditRow). Anything ingestion
// stores is a field here, so an edit of any stored column shows.
type AuditRow struct {
	Seq                              uint64 // stream sequence of the KEYS message (stream_seq)
	EventID                          string // canonical lowercase UUID, as the UUID column renders it
	Type, KeyID, Actor, ActorIP      string
	At                               time.Time // UTC, millisecond precision as stored
	Reason, Name, Owner, Environment string
	Permissions                      []string // never nil from AuditRowOf
	Hint                             string
	ExpiresMS                        uint64
	Changed                          []string // never nil from AuditRowOf
	LeafHash                         string   // lowercase hex
}

// AuditRowOf returns the row ingestion stores for the event stored at seq
// on subject. ok is false (with a nil error) for an event ingestion refuses
// to record (unsigned, forged, wrong subject: events.Keyring.Open / subject
// checks as keysSink does today); err is for an undecodable one. Either
// way ingestion stores no row for it. data is the message's exact stored
// bytes (msg.Data()), which LeafHash is the Merkle leaf hash of. A nil ring
// trusts no signer, like Config's default.
func AuditRowOf(ring *events.Keyring, seq uint64, subject string, data []byte) (row AuditRow, ok bool, err error) {
	row, err = auditRowOf(ring, seq, subject, data)
	var forged *forgeryError
	if errors.As(err, &forged) {
		return AuditRow{}, false, nil
	}
	if err != nil {
		return AuditRow{}, false, err
	}
	return row, true, nil
}

// auditRowOf is AuditRowOf keeping why an event was refused: ingestion
// needs the reason (a *forgeryError) for the dead letter and the alert.
func auditRowOf(ring *events.Keyring, seq uint64, subject string, data []byte) (AuditRow, error) {
	if ring == nil {
		ring = &events.Keyring{}
	}
	text, _, err := ring.Open(data, seq)
	if err != nil {
		return AuditRow{}, &forgeryError{reason: events.RejectReason(err)}
	}
	ev, err := events.Decode(text)
	if err != nil {
		return AuditRow{}, err
	}
	h := ev.Head()
	if nats.KeySubject(h.KeyID) != subject {
		return AuditRow{}, &forgeryError{reason: events.RejectReason(events.ErrSubjectMismatch)}
	}
	at := h.At.UTC()
	if at.Unix() < minSec || at.Unix() > maxSec {
		return AuditRow{}, fmt.Errorf("at %s is outside the storable range (1970 to 2106)", at.Format(time.RFC3339))
	}
	id, err := uuid.Parse(h.EventID)
	if err != nil {
		return AuditRow{}, fmt.Errorf("event_id must be a UUID")
	}
	r := AuditRow{Seq: seq, EventID: id.String(), Type: string(h.Type), KeyID: h.KeyID, Actor: h.Actor,
		ActorIP: h.ActorIP, At: at.Truncate(time.Millisecond), LeafHash: leafHash(data)}
	switch e := ev.(type) {
	case *events.KeyCreated:
		r.Name, r.Owner, r.Environment, r.Hint = e.Name, e.Owner, e.Environment.String(), e.Hint
		r.Permissions = e.Permissions
		if e.ExpiresAt != nil {
			r.ExpiresMS = uint64(max(e.ExpiresAt.UnixMilli(), 0))
		}
	case *events.KeyRevoked:
		r.Reason = e.Reason
	case *events.KeyRolled:
		r.Reason = "rolled to " + e.RolledTo
		r.ExpiresMS = uint64(max(e.ExpiresAt.UnixMilli(), 0))
	case *events.KeyUpdated:
		// The fields it changed, and the new name, permissions and
		// expiry when those are among them (metadata and allowlists
		// stay in the ledger: GET /v1/keys/{id}/events).
		r.Reason, r.Changed = e.Reason, e.Changed
		if e.Changes(events.FieldName) {
			r.Name = e.Name
		}
		if e.Changes(events.FieldPermissions) {
			r.Permissions = e.Permissions
		}
		if e.Changes(events.FieldExpiresAt) && e.ExpiresAt != nil {
			r.ExpiresMS = uint64(max(e.ExpiresAt.UnixMilli(), 0))
		}
	case *events.KeyDisabled:
		r.Reason = e.Reason
	case *events.KeyEnabled:
		r.Reason = e.Reason
	case *events.KeyLeakReported:
		r.Reason = strings.TrimSpace("leak reported by " + e.Source + " " + e.URL + " (" + e.Action + ")")
	case *events.PlanSet:
		// Who changed which plan, and to what: the audit of billing.
		r.Name, r.Reason = e.Plan.Name, planSummary(&e.Plan)
	case *events.OwnerSet:
		r.Owner, r.Name = e.Owner, e.Plan
		r.Reason = "plan " + e.Plan
		if e.Plan == "" {
			r.Reason = "no plan"
		}
	default:
		return AuditRow{}, fmt.Errorf("a %s event does not belong on the %s stream", h.Type, nats.KeysStream)
	}
	// Array columns have no NULL: what is read back of nil is empty.
	if r.Permissions == nil {
		r.Permissions = []string{}
	}
	if r.Changed == nil {
		r.Changed = []string{}
	}
	return r, nil
}

// planSummary is a plan's limits in words, for the audit's reason column.
func planSummary(p *keyledger.Plan) string {
	s := "monthly_quota " + strconv.FormatInt(p.MonthlyQuota, 10)
	if p.MonthlyQuota == 0 {
		s = "no monthly quota"
	}
	if rl := p.RateLimit; rl != nil {
		s += ", rate_limit " + strconv.FormatFloat(rl.PerSecond, 'g', -1, 64) + "/s burst " + strconv.Itoa(rl.Burst)
	}
	if p.OnOutage != "" {
		s += ", on_outage " + p.OnOutage
	}
	return s
}

// leafHash is the Merkle leaf of a stored message as the projector's tree
// has it, in the text form key_events holds.
func leafHash(data []byte) string {
	h := tlog.RecordHash(data)
	return hex.EncodeToString(h[:])
}

// splitMilli is t as the ts (seconds) and ms columns hold it.
func splitMilli(t time.Time) (sec int64, ms uint16) {
	return t.Unix(), uint16(t.Nanosecond() / 1e6)
}

// DiffAuditRow names the first field in which got (from ClickHouse) differs
// from want (recomputed from the ledger), "" when equal. Fields are named
// by their key_events column, in this order: "stream_seq", "event_id",
// "type", "key_id", "actor", "actor_ip", "ts" (the second of At), "ms" (its
// millisecond), "reason", "name", "owner", "environment", "permissions",
// "hint", "expires_at_ms", "changed", "leaf_hash". Nil and empty arrays
// are equal (ClickHouse stores both as []); an empty leaf_hash (a row
// written before the column existed) differs from any real one.
func DiffAuditRow(want, got AuditRow) string {
	wantSec, wantMS := splitMilli(want.At)
	gotSec, gotMS := splitMilli(got.At)
	switch {
	case want.Seq != got.Seq:
		return "stream_seq"
	case want.EventID != got.EventID:
		return "event_id"
	case want.Type != got.Type:
		return "type"
	case want.KeyID != got.KeyID:
		return "key_id"
	case want.Actor != got.Actor:
		return "actor"
	case want.ActorIP != got.ActorIP:
		return "actor_ip"
	case wantSec != gotSec:
		return "ts"
	case wantMS != gotMS:
		return "ms"
	case want.Reason != got.Reason:
		return "reason"
	case want.Name != got.Name:
		return "name"
	case want.Owner != got.Owner:
		return "owner"
	case want.Environment != got.Environment:
		return "environment"
	case !slices.Equal(want.Permissions, got.Permissions):
		return "permissions"
	case want.Hint != got.Hint:
		return "hint"
	case want.ExpiresMS != got.ExpiresMS:
		return "expires_at_ms"
	case !slices.Equal(want.Changed, got.Changed):
		return "changed"
	case want.LeafHash != got.LeafHash:
		return "leaf_hash"
	}
	return ""
}

// Column renders the column name of r (a name DiffAuditRow returns), for
// a report of what differs.
func (r AuditRow) Column(name string) string {
	switch name {
	case "stream_seq":
		return fmt.Sprint(r.Seq)
	case "event_id":
		return r.EventID
	case "type":
		return r.Type
	case "key_id":
		return r.KeyID
	case "actor":
		return r.Actor
	case "actor_ip":
		return r.ActorIP
	case "ts", "ms":
		return r.At.Format("2006-01-02T15:04:05.000Z07:00")
	case "reason":
		return r.Reason
	case "name":
		return r.Name
	case "owner":
		return r.Owner
	case "environment":
		return r.Environment
	case "permissions":
		return fmt.Sprint(r.Permissions)
	case "hint":
		return r.Hint
	case "expires_at_ms":
		return fmt.Sprint(r.ExpiresMS)
	case "changed":
		return fmt.Sprint(r.Changed)
	case "leaf_hash":
		return r.LeafHash
	}
	return ""
}

// ReadAuditRows calls fn with every key_events row, deduplicated (FINAL), in
// stream_seq order.
//
// dsn is the form of Config.DSN. ReadAuditRows only reads (a read-only
// ClickHouse user will do): it neither creates the database nor migrates
// the schema, and fails when analytics has not yet added leaf_hash to
// key_events (it has not been upgraded). An error from fn stops the read
// and is returned as is.
//
// FINAL folds rows with the same key_id, ts (the second) and event_id, the
// table's sorting key: a ledger event stored twice on its subject (the
// same event replayed) is one row, carrying the stream_seq of the copy
// inserted last (normally the later one), so the checker must expect one
// row for such a pair.
func ReadAuditRows(ctx context.Context, dsn string, fn func(AuditRow) error) error {
	opts, db, err := ParseDSN(dsn)
	if err != nil {
		return err
	}
	// One query at a time, and the schema check before it.
	opts.MaxOpenConns = 1
	conn, err := connect(ctx, opts)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := checkAuditSchema(ctx, conn, db); err != nil {
		return err
	}
	// Closing rows drains the whole result: cancelling first ends the
	// query when fn stops early.
	qctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rows, err := conn.Query(qctx, `SELECT stream_seq, toString(event_id), type, key_id, actor, actor_ip,
		toUInt64(ts), ms, reason, name, owner, environment, permissions, hint, expires_at_ms, changed, leaf_hash
		FROM key_events FINAL ORDER BY stream_seq, event_id`)
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot read the audit trail")
	}
	defer func() {
		cancel()
		rows.Close()
	}()
	for rows.Next() {
		var r AuditRow
		var sec uint64
		var ms uint16
		if err := rows.Scan(&r.Seq, &r.EventID, &r.Type, &r.KeyID, &r.Actor, &r.ActorIP, &sec, &ms, &r.Reason,
			&r.Name, &r.Owner, &r.Environment, &r.Permissions, &r.Hint, &r.ExpiresMS, &r.Changed, &r.LeafHash); err != nil {
			return keyledger.Wrap(keyledger.Internal, err, "cannot read the audit trail")
		}
		r.At = time.UnixMilli(int64(sec)*1000 + int64(ms)).UTC()
		if err := fn(r); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot read the audit trail")
	}
	return nil
}

// checkAuditSchema fails unless key_events has leaf_hash. It reads
// system.columns rather than schema_migrations: the column is what the
// query needs, whether or not its migration was recorded yet.
func checkAuditSchema(ctx context.Context, conn driver.Conn, db string) error {
	rows, err := conn.Query(ctx, `SELECT name FROM system.columns WHERE database = ? AND table = 'key_events'`, db)
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot read the key_events schema")
	}
	defer rows.Close()
	var n int
	leaf := false
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return keyledger.Wrap(keyledger.Internal, err, "cannot read the key_events schema")
		}
		n++
		leaf = leaf || name == "leaf_hash"
	}
	if err := rows.Err(); err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot read the key_events schema")
	}
	switch {
	case n == 0:
		return keyledger.Errorf(keyledger.Unavailable, "ClickHouse database %s has no key_events table: analytics has never run against it", db)
	case !leaf:
		return keyledger.Errorf(keyledger.Unavailable, "key_events in ClickHouse database %s has no leaf_hash column: "+
			"analytics has not been upgraded (schema version %d); start an upgraded analytics node against it, then check again", db, schemaVersion())
	}
	return nil
}
