-- keyledger analytics schema for a ClickHouse cluster (shards x replicas,
-- ClickHouse Keeper or ZooKeeper).
--
-- It is the single-node schema of analytics/schema.go, column for column
-- (same columns, types, PARTITION BY and ORDER BY), split in two:
--   * <name>_local: Replicated*MergeTree tables on every node, replicated
--     through Keeper under /clickhouse/tables/{shard}/keyledger/<table>;
--   * <name>: Distributed tables with the names the application queries,
--     which fan reads out to every shard and route inserts to one.
-- The materialized views read the local raw table and write the local
-- rollup table, so each shard rolls up its own rows (queries read the
-- rollups with sum(), so partial sums on several shards add up).
--
-- Needs: the macros {cluster}, {shard} and {replica} on every server
-- (<macros> in config.xml), a cluster of that name in <remote_servers>, and
-- <zookeeper> pointing at Keeper. Written for current ClickHouse (macros in
-- ON CLUSTER and in Distributed need 20.x or later).
--
-- Apply once, from any node (the statements are idempotent):
--   clickhouse-client --host CH_HOST --multiquery < deploy/clickhouse/cluster.sql
-- The database is `keyledger`; for another name replace every `keyledger.`
-- and the Distributed(..., keyledger, ...) arguments.
--
-- Then point every keyledger admin node at any ClickHouse node, e.g.
--   --clickhouse 'clickhouse://USER:PASS@ch-1:9000/keyledger?insert_distributed_sync=1&distributed_product_mode=global'
-- The application then runs against the Distributed tables: its own
-- migrations find every table and view already there (CREATE ... IF NOT
-- EXISTS does nothing) and only record their version in schema_migrations.
--   insert_distributed_sync=1        an INSERT returns once the shards have the
--                                    rows, so JetStream is acked only then;
--   distributed_product_mode=global  the app's `key_id IN (SELECT ... FROM
--                                    key_events ...)` subqueries read a
--                                    Distributed table inside a Distributed
--                                    query, which ClickHouse refuses by default.
--
-- Retention: the application drops old monthly partitions of the tables it
-- knows by name; a Distributed table has no partitions, so on a cluster that
-- is a no-op. Drop them on the local tables instead (monthly, e.g. cron):
--   ALTER TABLE keyledger.usage_events_local ON CLUSTER '{cluster}' DROP PARTITION 202401;
--   ALTER TABLE keyledger.usage_key_ip_hour_local ON CLUSTER '{cluster}' DROP PARTITION 202401;
--
-- Sharding keys keep every copy of a row on one shard (they are functions of
-- the columns ReplacingMergeTree deduplicates on), so FINAL and the
-- duplicate collapsing work per shard as on one node.
--
-- Keep this file in step with analytics/schema.go: `go test ./deploy/`
-- applies it (replication swapped out) and compares the tables with the
-- ones the application creates.

CREATE DATABASE IF NOT EXISTS keyledger ON CLUSTER '{cluster}';

-- Raw usage events: one row per KeyUsed event.
CREATE TABLE IF NOT EXISTS keyledger.usage_events_local ON CLUSTER '{cluster}' (
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
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/keyledger/usage_events_local', '{replica}')
PARTITION BY toYYYYMM(ts)
ORDER BY (toStartOfHour(ts), key_id, ts, event_id);

CREATE TABLE IF NOT EXISTS keyledger.usage_events ON CLUSTER '{cluster}'
AS keyledger.usage_events_local
ENGINE = Distributed('{cluster}', keyledger, usage_events_local, cityHash64(toString(event_id)));

-- Per-minute counts per key and outcome.
CREATE TABLE IF NOT EXISTS keyledger.usage_minute_local ON CLUSTER '{cluster}' (
	key_id String,
	minute DateTime('UTC'),
	outcome String,
	count UInt64
) ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/keyledger/usage_minute_local', '{replica}')
PARTITION BY toYYYYMM(minute)
ORDER BY (key_id, minute, outcome);

CREATE TABLE IF NOT EXISTS keyledger.usage_minute ON CLUSTER '{cluster}'
AS keyledger.usage_minute_local
ENGINE = Distributed('{cluster}', keyledger, usage_minute_local, cityHash64(key_id));

CREATE MATERIALIZED VIEW IF NOT EXISTS keyledger.usage_minute_mv ON CLUSTER '{cluster}'
TO keyledger.usage_minute_local AS
SELECT key_id, toStartOfMinute(ts) AS minute, outcome, count() AS count
FROM keyledger.usage_events_local GROUP BY key_id, minute, outcome;

-- Per-hour counts per key and IP (the new_source rule).
CREATE TABLE IF NOT EXISTS keyledger.usage_key_ip_hour_local ON CLUSTER '{cluster}' (
	key_id String,
	ip String,
	hour DateTime('UTC'),
	count UInt64
) ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/keyledger/usage_key_ip_hour_local', '{replica}')
PARTITION BY toYYYYMM(hour)
ORDER BY (key_id, ip, hour);

CREATE TABLE IF NOT EXISTS keyledger.usage_key_ip_hour ON CLUSTER '{cluster}'
AS keyledger.usage_key_ip_hour_local
ENGINE = Distributed('{cluster}', keyledger, usage_key_ip_hour_local, cityHash64(key_id, ip));

CREATE MATERIALIZED VIEW IF NOT EXISTS keyledger.usage_key_ip_hour_mv ON CLUSTER '{cluster}'
TO keyledger.usage_key_ip_hour_local AS
SELECT key_id, ip, toStartOfHour(ts) AS hour, count() AS count
FROM keyledger.usage_events_local WHERE key_id != '' GROUP BY key_id, ip, hour;

-- Key lifecycle events (KeyCreated, KeyRolled, KeyRevoked, KeyUpdated,
-- KeyDisabled, KeyEnabled): the audit trail.
CREATE TABLE IF NOT EXISTS keyledger.key_events_local ON CLUSTER '{cluster}' (
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
	stream_seq UInt64,
	actor_ip String,
	changed Array(String),
	-- lowercase hex Merkle leaf hash of the stored event: keyledger
	-- audit verify --clickhouse matches rows to the ledger by it
	leaf_hash String
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/keyledger/key_events_local', '{replica}')
PARTITION BY toYYYYMM(ts)
ORDER BY (key_id, ts, event_id);

CREATE TABLE IF NOT EXISTS keyledger.key_events ON CLUSTER '{cluster}'
AS keyledger.key_events_local
ENGINE = Distributed('{cluster}', keyledger, key_events_local, cityHash64(key_id));

-- Detector findings.
CREATE TABLE IF NOT EXISTS keyledger.alerts_local ON CLUSTER '{cluster}' (
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
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/keyledger/alerts_local', '{replica}')
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, rule, key_id, ip);

CREATE TABLE IF NOT EXISTS keyledger.alerts ON CLUSTER '{cluster}'
AS keyledger.alerts_local
ENGINE = Distributed('{cluster}', keyledger, alerts_local, cityHash64(bucket, rule, key_id, ip));

-- Alert incidents: one row per state, the highest version wins (FINAL);
-- sharded by id, so every state of an incident is on one shard.
CREATE TABLE IF NOT EXISTS keyledger.incidents_local ON CLUSTER '{cluster}' (
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
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/keyledger/incidents_local', '{replica}', version)
ORDER BY id;

CREATE TABLE IF NOT EXISTS keyledger.incidents ON CLUSTER '{cluster}'
AS keyledger.incidents_local
ENGINE = Distributed('{cluster}', keyledger, incidents_local, cityHash64(id));

-- The application's migration bookkeeping.
CREATE TABLE IF NOT EXISTS keyledger.schema_migrations_local ON CLUSTER '{cluster}' (
	version UInt32,
	name String,
	applied_at DateTime('UTC')
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/keyledger/schema_migrations_local', '{replica}')
ORDER BY version;

CREATE TABLE IF NOT EXISTS keyledger.schema_migrations ON CLUSTER '{cluster}'
AS keyledger.schema_migrations_local
ENGINE = Distributed('{cluster}', keyledger, schema_migrations_local, version);
