# scripts/debian.sh — sourced by the scripts that need a tool from Debian's
# packages for the tests (nginx.sh, promtool.sh, chromium.sh).
#
# debian_install "CMD…" PKG…: apt-get install PKG… unless every CMD (a
# space-separated list) is on PATH, then require every CMD. A package whose service start is refused (policy-rc.d
# in containers) makes apt-get report an error: expected, the tests start
# their own servers, so only a missing command counts as a failure.
debian_install() {
	local cmds="$1" c
	shift
	have() {
		for c in $cmds; do command -v "$c" >/dev/null 2>&1 || return 1; done
	}
	if have; then
		return 0
	fi
	echo "$(basename "$0"): installing $* (apt-get) for $cmds" >&2
	local sudo=""
	if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -qq || echo "$(basename "$0"): apt-get update failed; trying the install anyway" >&2
	$sudo apt-get install -y -qq --no-install-recommends \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" >/dev/null ||
		echo "$(basename "$0"): apt-get install reported an error (a refused service start is expected here)" >&2
	if ! have; then
		echo "$(basename "$0"): $cmds still missing after apt-get install $*" >&2
		return 1
	fi
}
