#!/usr/bin/env bash
# scripts/clickhouse.sh start|stop|status|wait|install
#
# Runs the project's own ClickHouse server (Debian's clickhouse-server 18.16)
# on loopback, with its own config, ports and data directory, so it never
# collides with a system instance. Installs the Debian packages when missing.
#
# Environment:
#   KEYLEDGER_CH_DIR              data/config/log dir (default <repo>/.cache/clickhouse)
#   KEYLEDGER_CH_PORT             native TCP port     (default 19000)
#   KEYLEDGER_CH_HTTP_PORT        HTTP port           (default 18123)
#   KEYLEDGER_CH_INTERSERVER_PORT interserver port    (default 19009)
#   KEYLEDGER_CH_WAIT             seconds to wait for start/stop (default 60)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/debian.sh"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${KEYLEDGER_CH_DIR:-$repo/.cache/clickhouse}"
port="${KEYLEDGER_CH_PORT:-19000}"
http_port="${KEYLEDGER_CH_HTTP_PORT:-18123}"
interserver_port="${KEYLEDGER_CH_INTERSERVER_PORT:-19009}"
wait_secs="${KEYLEDGER_CH_WAIT:-60}"
conf="$dir/etc/config.xml"
pidfile="$dir/clickhouse-server.pid"

log() { echo "clickhouse.sh: $*" >&2; }

install() {
	debian_install "clickhouse-server clickhouse-client" clickhouse-server clickhouse-client || exit 1
}

write_config() {
	mkdir -p "$dir/etc" "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas" "$dir/log"
	local src=/etc/clickhouse-server
	[ -f "$src/config.xml" ] || { log "$src/config.xml not found"; exit 1; }
	cp "$src/users.xml" "$dir/etc/users.xml"
	sed \
		-e "s#<log>.*</log>#<log>$dir/log/clickhouse-server.log</log>#" \
		-e "s#<errorlog>.*</errorlog>#<errorlog>$dir/log/clickhouse-server.err.log</errorlog>#" \
		-e "s#<size>1000M</size>#<size>100M</size>#" \
		-e "s#<count>10</count>#<count>2</count>#" \
		-e "s#<http_port>[0-9]*</http_port>#<http_port>$http_port</http_port>#" \
		-e "s#<tcp_port>[0-9]*</tcp_port>#<tcp_port>$port</tcp_port>#" \
		-e "s#<interserver_http_port>[0-9]*</interserver_http_port>#<interserver_http_port>$interserver_port</interserver_http_port>#" \
		-e "s#<path>/var/lib/clickhouse/</path>#<path>$dir/data/</path>#" \
		-e "s#<tmp_path>.*</tmp_path>#<tmp_path>$dir/tmp/</tmp_path>#" \
		-e "s#<user_files_path>.*</user_files_path>#<user_files_path>$dir/user_files/</user_files_path>#" \
		-e "s#<format_schema_path>.*</format_schema_path>#<format_schema_path>$dir/format_schemas/</format_schema_path>#" \
		-e "s#<mark_cache_size>[0-9]*</mark_cache_size>#<mark_cache_size>268435456</mark_cache_size>#" \
		-e "s#<uncompressed_cache_size>[0-9]*</uncompressed_cache_size>#<uncompressed_cache_size>268435456</uncompressed_cache_size>#" \
		-e "/^ *<listen_host>[^<]*<\/listen_host> *$/d" \
		-e "s#</yandex>#    <listen_host>127.0.0.1</listen_host>\n    <interserver_http_host>127.0.0.1</interserver_http_host>\n    <timezone>UTC</timezone>\n    <max_table_size_to_drop>0</max_table_size_to_drop>\n    <max_partition_size_to_drop>0</max_partition_size_to_drop>\n</yandex>#" \
		"$src/config.xml" >"$conf.new"
	grep -q "<tcp_port>$port</tcp_port>" "$conf.new" || { log "could not rewrite $src/config.xml"; exit 1; }
	mv "$conf.new" "$conf"
}

pid() {
	[ -f "$pidfile" ] || return 1
	local p
	p="$(cat "$pidfile" 2>/dev/null)" || return 1
	[ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
	echo "$p"
}

answers() {
	clickhouse-client --host 127.0.0.1 --port "$port" -q 'SELECT 1' >/dev/null 2>&1
}

wait_up() {
	local deadline=$((SECONDS + wait_secs))
	until answers; do
		if [ $SECONDS -ge $deadline ]; then
			log "server did not answer on 127.0.0.1:$port within ${wait_secs}s; see $dir/log/"
			tail -n 20 "$dir/log/clickhouse-server.err.log" >&2 2>/dev/null || true
			return 1
		fi
		sleep 0.2
	done
}

start() {
	install
	if pid >/dev/null && answers; then
		echo "127.0.0.1:$port"
		return 0
	fi
	if ! pid >/dev/null; then
		if answers; then
			log "port $port already answers but is not this project's server ($pidfile)"
			echo "127.0.0.1:$port"
			return 0
		fi
		write_config
		rm -f "$pidfile"
		(cd "$dir" && clickhouse-server --daemon --pid-file="$pidfile" --config-file="$conf" \
			>>"$dir/log/stdout.log" 2>&1)
	fi
	wait_up
	echo "127.0.0.1:$port"
}

stop() {
	local p
	if ! p="$(pid)"; then
		rm -f "$pidfile"
		log "not running"
		return 0
	fi
	kill -TERM "$p"
	local deadline=$((SECONDS + wait_secs))
	while kill -0 "$p" 2>/dev/null; do
		if [ $SECONDS -ge $deadline ]; then
			log "server $p did not stop within ${wait_secs}s; killing it"
			kill -KILL "$p" 2>/dev/null || true
			break
		fi
		sleep 0.2
	done
	rm -f "$pidfile"
	log "stopped"
}

status() {
	if p="$(pid)" && answers; then
		echo "running pid $p on 127.0.0.1:$port ($dir)"
		return 0
	fi
	echo "not running (127.0.0.1:$port, $dir)"
	return 3
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
wait) wait_up && echo "127.0.0.1:$port" ;;
install) install ;;
*)
	echo "usage: $0 start|stop|status|wait|install" >&2
	exit 2
	;;
esac
