package analytics

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	keyledger "github.com/keyledger/keyledger"
)

// migration is one version of the schema. Its statements are idempotent
// (IF NOT EXISTS), one statement per call, in the subset of SQL that
// ClickHouse 18.16 and current versions both accept.
type migration struct {
	version uint32
	name    string
	stmts   []string
}

// migrations is the schema history; append, never edit.
//
// Tables:
//   - usage_events: one row per KeyUsed event (ReplacingMergeTree on the
//     event's own key, so a row inserted twice collapses on merge; exact
//     queries count uniqExact(event_id)).
//   - usage_minute: per-minute counts per key and outcome, fed by a
//     materialized view (SummingMergeTree: read with sum()).
//   - usage_key_ip_hour: per-hour counts per key and IP (new_source).
//   - key_events: every key lifecycle event, the audit trail and the
//     key → owner / environment table (one row per KEYS message, see
//     AuditRow).
//   - alerts: detector findings.
var migrations = []migration{
	{1, "initial schema", []string{
		`CREATE TABLE IF NOT EXISTS usage_events (
			event_id UUID,
			ts DateTime('UTC'),
			ms UInt16,
			key_id String,
			environment String,
			outcome String,
			permission String,
			ip String,
			user_agent String,
			method String,
			path String,
			node String,
			latency_us Int64,
			stream_seq UInt64
		) ENGINE = ReplacingMergeTree()
		PARTITION BY toYYYYMM(ts)
		ORDER BY (toStartOfHour(ts), key_id, ts, event_id)`,
		`CREATE TABLE IF NOT EXISTS usage_minute (
			key_id String,
			minute DateTime('UTC'),
			outcome String,
			count UInt64
		) ENGINE = SummingMergeTree()
		PARTITION BY toYYYYMM(minute)
		ORDER BY (key_id, minute, outcome)`,
		`CREATE MATERIALIZED VIEW IF NOT EXISTS usage_minute_mv TO usage_minute AS
		SELECT key_id, toStartOfMinute(ts) AS minute, outcome, count() AS count
		FROM usage_events GROUP BY key_id, minute, outcome`,
		`CREATE TABLE IF NOT EXISTS usage_key_ip_hour (
			key_id String,
			ip String,
			hour DateTime('UTC'),
			count UInt64
		) ENGINE = SummingMergeTree()
		PARTITION BY toYYYYMM(hour)
		ORDER BY (key_id, ip, hour)`,
		`CREATE MATERIALIZED VIEW IF NOT EXISTS usage_key_ip_hour_mv TO usage_key_ip_hour AS
		SELECT key_id, ip, toStartOfHour(ts) AS hour, count() AS count
		FROM usage_events WHERE key_id != '' GROUP BY key_id, ip, hour`,
		`CREATE TABLE IF NOT EXISTS key_events (
			event_id UUID,
			type String,
			key_id String,
			actor String,
			ts DateTime('UTC'),
			ms UInt16,
			reason String,
			name String,
			owner String,
			environment String,
			permissions Array(String),
			hint String,
			expires_at_ms UInt64,
			stream_seq UInt64
		) ENGINE = ReplacingMergeTree()
		PARTITION BY toYYYYMM(ts)
		ORDER BY (key_id, ts, event_id)`,
		`CREATE TABLE IF NOT EXISTS alerts (
			bucket DateTime('UTC'),
			rule String,
			key_id String,
			ip String,
			owner String,
			ts DateTime('UTC'),
			ms UInt16,
			detail String,
			observed Float64,
			baseline Float64
		) ENGINE = ReplacingMergeTree()
		PARTITION BY toYYYYMM(bucket)
		ORDER BY (bucket, rule, key_id, ip)`,
	}},
	// 18.16 has no ADD COLUMN IF NOT EXISTS: execDDL takes "column
	// already exists" (code 44) from a racing node as success.
	{2, "actor_ip on key events", []string{
		`ALTER TABLE key_events ADD COLUMN actor_ip String`,
	}},
	{3, "the fields a KeyUpdated changed", []string{
		`ALTER TABLE key_events ADD COLUMN changed Array(String)`,
	}},
	// One row per incident state; the highest version wins (FINAL). Two
	// analytics nodes opening the same incident write the same id.
	{4, "alert incidents", []string{
		`CREATE TABLE IF NOT EXISTS incidents (
			id String,
			rule String,
			subject String,
			key_id String,
			owner String,
			severity String,
			status String,
			opened UInt64,
			updated UInt64,
			seen UInt64,
			resolved UInt64,
			findings UInt64,
			address_count UInt64,
			addresses String,
			observed Float64,
			detail String,
			version UInt64
		) ENGINE = ReplacingMergeTree(version)
		ORDER BY id`,
	}},
	// The Merkle leaf of the ledger message a row came from, so the audit
	// trail can be checked against the ledger row by row. Rows written
	// before have '' (the column's default): ALTER … UPDATE could fill
	// them, but only from the ledger, which the schema does not read.
	{5, "leaf hash on key events", []string{
		`ALTER TABLE key_events ADD COLUMN leaf_hash String`,
	}},
}

// schemaVersion is the version the code expects.
func schemaVersion() uint32 { return migrations[len(migrations)-1].version }

// migrate brings the database to the current schema. It is idempotent and
// safe when several nodes run it at once: every statement is
// CREATE … IF NOT EXISTS, and the version rows live in a ReplacingMergeTree
// keyed by version, so a row written twice collapses.
func (a *Analytics) migrate(ctx context.Context) error {
	if err := a.execDDL(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version UInt32,
		name String,
		applied_at DateTime('UTC')
	) ENGINE = ReplacingMergeTree() ORDER BY version`); err != nil {
		return err
	}
	applied, err := a.appliedVersions(ctx)
	if err != nil {
		return err
	}
	for _, m := range migrations {
		if applied[m.version] {
			continue
		}
		a.log.Info("analytics: applying schema migration", "version", m.version, "name", m.name)
		for _, stmt := range m.stmts {
			if err := a.execDDL(ctx, stmt); err != nil {
				return err
			}
		}
		if err := a.recordMigration(ctx, m); err != nil {
			return keyledger.Wrap(keyledger.Unavailable, err, "cannot record schema migration")
		}
	}
	return nil
}

// recordMigration inserts m's version row. (INSERT … VALUES through Exec
// hangs on 18.16's native protocol: inserts go through PrepareBatch.)
func (a *Analytics) recordMigration(ctx context.Context, m migration) error {
	b, err := a.conn.PrepareBatch(ctx, "INSERT INTO schema_migrations (version, name, applied_at)")
	if err != nil {
		return err
	}
	defer b.Close()
	if err := b.Append(m.version, m.name, time.Now().UTC().Truncate(time.Second)); err != nil {
		return err
	}
	return b.Send()
}

func (a *Analytics) appliedVersions(ctx context.Context) (map[uint32]bool, error) {
	rows, err := a.conn.Query(ctx, `SELECT DISTINCT version FROM schema_migrations`)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot read schema versions")
	}
	defer rows.Close()
	out := map[uint32]bool{}
	for rows.Next() {
		var v uint32
		if err := rows.Scan(&v); err != nil {
			return nil, keyledger.Wrap(keyledger.Internal, err, "cannot read schema versions")
		}
		out[v] = true
	}
	return out, rows.Err()
}

// execDDL runs one idempotent DDL statement. Two nodes racing on the same
// CREATE … IF NOT EXISTS may see "table already exists" (code 57), and on
// the same ADD COLUMN "column already exists" (code 44): both are success.
func (a *Analytics) execDDL(ctx context.Context, stmt string) error {
	err := a.conn.Exec(ctx, stmt)
	var ex *clickhouse.Exception
	if errors.As(err, &ex) && (ex.Code == 57 || ex.Code == 44 && strings.Contains(stmt, "ADD COLUMN")) {
		return nil
	}
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, fmt.Sprintf("schema migration failed: %s", firstLine(stmt)))
	}
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return strings.TrimSpace(s[:i])
	}
	return s
}
