#!/usr/bin/env bash
# scripts/nginx.sh install|render|start|stop|status
#
# Runs a project-local nginx in front of an API, with keyledger's /v1/authz as
# its auth_request endpoint (deploy/nginx/). Installs Debian's nginx-light
# when nginx is missing. The server gets its own prefix directory (config,
# pid file, logs, temp files): nothing is written to /etc or /var/log, and a
# system nginx, if any, is left alone.
#
#   install   apt-get install nginx-light if `nginx` is missing
#   render    write <dir>/conf/ (nginx.conf, keyledger.conf, keyledger-auth.conf)
#             from deploy/nginx/ with the addresses below; check it (nginx -t)
#   start     install, render, start the master (daemon, pid file in <dir>),
#             wait until it accepts connections; prints the listen address
#   stop      stop the master started with <dir> and wait until it is gone
#   status    exit 0 when the master of <dir> runs
#
# Environment:
#   KEYLEDGER_NGINX_DIR       prefix directory        (default <repo>/.cache/nginx)
#   KEYLEDGER_NGINX_LISTEN    address nginx serves    (default 127.0.0.1:8088)
#   KEYLEDGER_NGINX_KEYLEDGER keyledger node host:port (default 127.0.0.1:8080)
#   KEYLEDGER_NGINX_UPSTREAM  the API's host:port     (default 127.0.0.1:9000)
#   KEYLEDGER_NGINX_WAIT      seconds to wait for start/stop (default 20)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/debian.sh"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${KEYLEDGER_NGINX_DIR:-$repo/.cache/nginx}"
listen="${KEYLEDGER_NGINX_LISTEN:-127.0.0.1:8088}"
keyledger="${KEYLEDGER_NGINX_KEYLEDGER:-127.0.0.1:8080}"
upstream="${KEYLEDGER_NGINX_UPSTREAM:-127.0.0.1:9000}"
wait_secs="${KEYLEDGER_NGINX_WAIT:-20}"
src="$repo/deploy/nginx"
conf="$dir/conf/nginx.conf"
pidfile="$dir/nginx.pid"

log() { echo "nginx.sh: $*" >&2; }

# Debian installs nginx to /usr/sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

install() {
	debian_install nginx nginx-light || exit 1
}

check_addr() { # name value
	case "$2" in
	*[!A-Za-z0-9.:\[\]_-]* | "") log "$1 must be host:port, not '$2'"; exit 2 ;;
	esac
}

render() {
	install
	check_addr KEYLEDGER_NGINX_LISTEN "$listen"
	check_addr KEYLEDGER_NGINX_KEYLEDGER "$keyledger"
	check_addr KEYLEDGER_NGINX_UPSTREAM "$upstream"
	# Workers run as nobody when the master is root: they must be able to
	# reach the temp directories under the prefix.
	mkdir -p "$dir/conf" "$dir/logs" "$dir/tmp"
	chmod 0755 "$dir" "$dir/tmp"
	sed -e "s#__PREFIX__#$dir#g" "$src/nginx.conf" >"$conf.new"
	sed -e "s#__LISTEN__#$listen#g" -e "s#__KEYLEDGER__#$keyledger#g" -e "s#__UPSTREAM__#$upstream#g" \
		"$src/keyledger.conf" >"$dir/conf/keyledger.conf"
	cp "$src/keyledger-auth.conf" "$dir/conf/keyledger-auth.conf"
	mv "$conf.new" "$conf"
	nginx -q -t -p "$dir/" -e "$dir/logs/error.log" -c "$conf"
}

pid() {
	[ -f "$pidfile" ] || return 1
	local p
	p="$(cat "$pidfile" 2>/dev/null)" || return 1
	[ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
	echo "$p"
}

answers() { # host:port
	local host="${1%:*}" port="${1##*:}"
	host="${host#[}"
	host="${host%]}"
	(exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

start() {
	if pid >/dev/null; then
		log "already running (pid $(pid)); stop it first to change its configuration"
		echo "$listen"
		return 0
	fi
	render
	rm -f "$pidfile"
	# -e: the error log before the configuration is read (the compiled-in
	# default is /var/log/nginx/error.log). The master daemonizes and writes
	# its pid file under the prefix.
	nginx -p "$dir/" -e "$dir/logs/error.log" -c "$conf"
	local deadline=$((SECONDS + wait_secs))
	until pid >/dev/null && answers "$listen"; do
		if [ $SECONDS -ge $deadline ]; then
			log "nginx did not answer on $listen within ${wait_secs}s; see $dir/logs/error.log"
			tail -n 20 "$dir/logs/error.log" >&2 2>/dev/null || true
			return 1
		fi
		sleep 0.1
	done
	echo "$listen"
}

stop() {
	local p
	if ! p="$(pid)"; then
		rm -f "$pidfile"
		log "not running"
		return 0
	fi
	kill -QUIT "$p" 2>/dev/null || true # graceful: finish requests in flight
	local deadline=$((SECONDS + wait_secs))
	while kill -0 "$p" 2>/dev/null; do
		if [ $SECONDS -ge $deadline ]; then
			log "nginx (pid $p) did not stop gracefully; terminating it"
			kill -TERM "$p" 2>/dev/null || true
			sleep 1
			kill -KILL "$p" 2>/dev/null || true
			break
		fi
		sleep 0.1
	done
	rm -f "$pidfile"
}

case "${1:-}" in
install) install ;;
render) render ;;
start) start ;;
stop) stop ;;
status) pid >/dev/null ;;
*)
	echo "usage: $0 install|render|start|stop|status" >&2
	exit 2
	;;
esac
