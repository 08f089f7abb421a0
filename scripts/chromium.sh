#!/usr/bin/env bash
# scripts/chromium.sh install — Debian's chromium package, for the console's
# browser test (go test ./console/ drives it headless with chromedp). Nothing
# is downloaded by the test itself: Chromium comes from Debian like nginx,
# ClickHouse and promtool.
set -euo pipefail
case "${1:-}" in
install)
	if command -v chromium >/dev/null 2>&1; then
		exit 0
	fi
	echo "chromium.sh: installing chromium (apt-get) for the console's browser test" >&2
	sudo=""
	if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -qq
	$sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
	command -v chromium >/dev/null 2>&1 || { echo "chromium.sh: chromium is still missing after apt-get install chromium" >&2; exit 1; }
	;;
*)
	echo "usage: $0 install" >&2
	exit 2
	;;
esac
