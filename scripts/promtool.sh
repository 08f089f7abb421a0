#!/usr/bin/env bash
# scripts/promtool.sh install — Debian's prometheus package, for promtool,
# which checks and unit-tests deploy/prometheus/rules.yml (go test
# ./deploy/). The package's service is never started: only the tool is used.
set -euo pipefail
case "${1:-}" in
install)
	if command -v promtool >/dev/null 2>&1; then
		exit 0
	fi
	echo "promtool.sh: installing prometheus (apt-get) for promtool" >&2
	sudo=""
	if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -qq
	# In a container policy-rc.d refuses the service's start: expected.
	$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null || true
	command -v promtool >/dev/null 2>&1 || { echo "promtool.sh: promtool is still missing after apt-get install prometheus" >&2; exit 1; }
	;;
*)
	echo "usage: $0 install" >&2
	exit 2
	;;
esac
