#!/usr/bin/env bash
# scripts/promtool.sh install — Debian's prometheus package, for promtool,
# which checks and unit-tests deploy/prometheus/rules.yml (go test
# ./deploy/). The package's service is never started: only the tool is used.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/debian.sh"
case "${1:-}" in
install) debian_install promtool prometheus ;;
*)
	echo "usage: $0 install" >&2
	exit 2
	;;
esac
