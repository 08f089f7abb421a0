#!/usr/bin/env bash
# scripts/bench-deps.sh — installs what `keyledger bench authz` compares
# against: wrk (the load tool) and nginx (the `return 200` baseline), both
# from Debian's packages, when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/sbin:/sbin"
./scripts/nginx.sh install
if ! command -v wrk >/dev/null 2>&1; then
	sudo=""
	[ "$(id -u)" = 0 ] || sudo=sudo
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -qq
	$sudo apt-get install -y -qq --no-install-recommends wrk
fi
command -v wrk >/dev/null && command -v nginx >/dev/null
