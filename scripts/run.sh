#!/usr/bin/env bash
# scripts/run.sh [serve flags] — run a whole keyledger system on this machine:
# a project-local ClickHouse (installed from Debian's packages when missing,
# started on 127.0.0.1:19000) and one node with its embedded NATS JetStream,
# analytics on. Ctrl-C stops the node, then the ClickHouse this script started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -x bin/keyledger ] || go build -o bin/keyledger ./cmd/keyledger

started_ch=0
if ! ./scripts/clickhouse.sh status >/dev/null 2>&1; then
	./scripts/clickhouse.sh start
	started_ch=1
fi
stop_ch() {
	if [ "$started_ch" = 1 ]; then ./scripts/clickhouse.sh stop || true; fi
}
trap stop_ch EXIT

ch="clickhouse://127.0.0.1:${KEYLEDGER_CH_PORT:-19000}/keyledger"
# Not exec: the trap must run after the node exits.
./bin/keyledger serve --clickhouse "$ch" "$@" &
node=$!
trap 'kill -TERM $node 2>/dev/null || true' INT TERM
wait $node || true
wait $node 2>/dev/null || true
