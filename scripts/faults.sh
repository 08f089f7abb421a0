#!/usr/bin/env bash
# scripts/faults.sh [DURATION] — the long fault run (`make faults`): every
# scenario of ./faults (kill -9 of the KEYS leader, of another node's
# consumer host and of a follower, SIGSTOP of the leader, a full disk,
# a whole-cluster restart, a ClickHouse crash) with its fault injected
# again and again for DURATION (default 60s) each, against a 3-node
# cluster of the built binary. Installs ClickHouse (Debian's package) if
# missing; needs root for the full-disk scenario's tmpfs. The figures go
# to faults-report.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
duration="${1:-60s}"
./scripts/clickhouse.sh install
report="$PWD/faults-report.txt"
KEYLEDGER_FAULTS_REPORT="$report" go test -count=1 -timeout 80m -v -run 'TestFaults' ./faults/ -args -duration="$duration" |
	grep -E '^(=== RUN|--- |\s+\S+_test\.go:[0-9]+: |ok|FAIL|PASS)'
echo "== figures ($report)"
cat "$report"
