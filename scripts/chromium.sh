#!/usr/bin/env bash
# scripts/chromium.sh install — Debian's chromium package, for the console's
# browser test (go test ./console/ drives it headless with chromedp). Nothing
# is downloaded by the test itself: Chromium comes from Debian like nginx,
# ClickHouse and promtool.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/debian.sh"
case "${1:-}" in
install) debian_install chromium chromium fonts-dejavu-core ;;
*)
	echo "usage: $0 install" >&2
	exit 2
	;;
esac
