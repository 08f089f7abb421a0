#!/usr/bin/env bash
# scripts/test.sh — every check and test of keyledger, from a fresh clone on
# a machine with only Go: formatting, vet, then `go test -race` over every
# package against a real embedded JetStream and a real ClickHouse, which this
# script installs (Debian's package) and starts on loopback if needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== gofmt"
unformatted="$(gofmt -l $(git ls-files '*.go'))"
if [ -n "$unformatted" ]; then
	echo "gofmt needed on:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

echo "== staticcheck"
# Pinned, fetched through the Go module proxy like every dependency.
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

echo "== ClickHouse"
started_ch=0
if [ -z "${KEYLEDGER_CLICKHOUSE:-}" ]; then
	if ! ./scripts/clickhouse.sh status >/dev/null 2>&1; then
		./scripts/clickhouse.sh start
		started_ch=1
	fi
	export KEYLEDGER_CLICKHOUSE="127.0.0.1:${KEYLEDGER_CH_PORT:-19000}"
fi
cleanup() {
	if [ "$started_ch" = 1 ]; then ./scripts/clickhouse.sh stop || true; fi
}
trap cleanup EXIT

echo "== nginx"
# The gateway test runs Debian's nginx-light in front of a node; go test
# itself never installs anything.
./scripts/nginx.sh install

echo "== promtool"
# The alert rules in deploy/prometheus/ are checked and unit-tested with
# promtool (Debian's prometheus package).
./scripts/promtool.sh install

echo "== chromium"
# The console's browser test drives Debian's Chromium headless (chromedp).
./scripts/chromium.sh install

echo "== go test -race"
# -p 1: the integration tests start servers (JetStream, use ClickHouse); on a
# 2-core machine running packages one at a time keeps timings sane.
go test -race -count=1 -p 1 -timeout 20m "$@" ./...

echo "== go test (no -race): the in-place JetStream restart"
# node/disk_test.go is built without the race detector: the restart it
# tests races inside nats-server (EnableJetStream vs. its API dispatch),
# not in keyledger's code. Everything else above ran with -race.
go test -count=1 -run 'TestNode_diskFull' "$@" ./node/
