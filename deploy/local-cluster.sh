#!/usr/bin/env bash
# deploy/local-cluster.sh start|stop|status
#
# Runs a 3-node keyledger cluster on loopback: three admin nodes, each with
# an embedded NATS JetStream server, together one JetStream cluster (KEYS
# and USAGE at 3 replicas, fsync always) — what deploy/docker-compose.yml
# and deploy/k8s/ run, as plain processes. Builds bin/keyledger if missing.
#
# Environment:
#   KEYLEDGER_CLUSTER_DIR        data, logs, pid files, admin token
#                                (default <repo>/.cache/local-cluster)
#   KEYLEDGER_BIN                the binary (default <repo>/bin/keyledger)
#   KEYLEDGER_CLUSTER_HTTP_PORT  first HTTP port  (default 18081; nodes use +0, +1, +2)
#   KEYLEDGER_CLUSTER_NATS_PORT  first NATS client port (default 14231)
#   KEYLEDGER_CLUSTER_ROUTE_PORT first NATS cluster port (default 16231)
#   KEYLEDGER_CLUSTER_WAIT       seconds to wait for start/stop (default 60)
#
# The admin token (the same on the three nodes) is in $KEYLEDGER_CLUSTER_DIR/admin-token
# and in each node's data dir, so the CLI finds it with --data:
#   bin/keyledger keys create --name demo --url http://127.0.0.1:18081 --data .cache/local-cluster/n1
#
# Credentials: on the first start, `keyledger creds generate --routes` writes
# $KEYLEDGER_CLUSTER_DIR/credentials: n1..n3 (admin+analytics), the verifiers
# v1 and v2, and the break-glass operator; each node runs with
# --credentials pointing there (its own n<i>.nk and n<i>.signing-key, the
# fleet file, the keyring). A verifier follows the cluster with only its
# nkey and the keyring:
#   bin/keyledger serve --role verifier --node v1 --data .cache/local-cluster/v1 --http 127.0.0.1:18091 \
#     --nats nats://127.0.0.1:14231,nats://127.0.0.1:14232,nats://127.0.0.1:14233 \
#     --nats-nkey .cache/local-cluster/credentials/v1.nk --trusted-signers .cache/local-cluster/credentials/trusted-signers
# and the nats CLI as the operator: nats --server nats://127.0.0.1:14231 --nkey .cache/local-cluster/credentials/operator.nk stream ls
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${KEYLEDGER_CLUSTER_DIR:-$repo/.cache/local-cluster}"
bin="${KEYLEDGER_BIN:-$repo/bin/keyledger}"
http_port="${KEYLEDGER_CLUSTER_HTTP_PORT:-18081}"
nats_port="${KEYLEDGER_CLUSTER_NATS_PORT:-14231}"
route_port="${KEYLEDGER_CLUSTER_ROUTE_PORT:-16231}"
wait_secs="${KEYLEDGER_CLUSTER_WAIT:-60}"
nodes=(1 2 3)

log() { echo "local-cluster.sh: $*" >&2; }

url() { echo "http://127.0.0.1:$((http_port + $1 - 1))"; }

# pid N prints node N's pid if that process is running and is our node.
pid() {
	local f="$dir/n$1.pid" p
	[ -f "$f" ] || return 1
	p="$(cat "$f" 2>/dev/null)" || return 1
	[ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
	# Guard against a recycled pid: the process must be a keyledger serve.
	if [ -r "/proc/$p/cmdline" ]; then
		tr "\0" " " <"/proc/$p/cmdline" | grep -q "serve .*--node n$1 " || return 1
	fi
	echo "$p"
}

# sees_all: node $1's registry lists all three nodes, so wait=all writes on
# it wait for every node (heartbeats need a moment after start).
sees_all() {
	[ "$(curl -s --max-time 2 -H "Authorization: Bearer $tok" "$(url "$1")/v1/nodes" 2>/dev/null | grep -o '"name"' | wc -l)" -ge 3 ]
}

ready() {
	[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$(url "$1")/readyz" 2>/dev/null)" = 200 ]
}

build() {
	[ -x "$bin" ] && return 0
	log "building $bin"
	(cd "$repo" && go build -o "$bin" ./cmd/keyledger)
}

# credentials generates the fleet's credentials once, into a temporary
# directory renamed into place, so a failed run leaves nothing half-made.
credentials() {
	local c="$dir/credentials" tmp
	[ -d "$c" ] && return 0
	if [ -d "$dir/n1/jetstream" ]; then
		# A ledger written before credentials: its events are unsigned and
		# every node would refuse them.
		log "$dir holds a cluster from before credentials (an unsigned ledger); remove it to start afresh"
		return 1
	fi
	tmp="$dir/credentials.tmp.$$"
	rm -rf "$tmp"
	"$bin" creds generate --dir "$tmp" --routes n1=admin+analytics n2=admin+analytics n3=admin+analytics v1=verifier v2=verifier operator=operator >/dev/null
	mv "$tmp" "$c"
	log "credentials generated in $c"
}

token() {
	local f="$dir/admin-token"
	if [ ! -s "$f" ]; then
		(umask 077 && echo "kla_$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$f")
	fi
	cat "$f"
}

start_node() {
	local i=$1 routes="" j
	for j in "${nodes[@]}"; do
		[ "$j" = "$i" ] && continue
		routes="${routes:+$routes,}nats-route://127.0.0.1:$((route_port + j - 1))"
	done
	mkdir -p "$dir/n$i"
	(umask 077 && cp "$dir/admin-token" "$dir/n$i/admin-token")
	# The token goes through the environment, not the command line.
	KEYLEDGER_ADMIN_TOKEN="$tok" nohup "$bin" serve \
		--role admin \
		--node "n$i" \
		--data "$dir/n$i" \
		--credentials "$dir/credentials" \
		--http "127.0.0.1:$((http_port + i - 1))" \
		--nats-listen "127.0.0.1:$((nats_port + i - 1))" \
		--cluster "127.0.0.1:$((route_port + i - 1))" \
		--cluster-name keyledger-local \
		--routes "$routes" \
		--replicas 3 \
		--sync always \
		</dev/null >>"$dir/n$i.log" 2>&1 &
	echo $! >"$dir/n$i.pid"
}

print_urls() {
	local i
	for i in "${nodes[@]}"; do
		echo "n$i  $(url "$i")  nats://127.0.0.1:$((nats_port + i - 1))  log $dir/n$i.log"
	done
	echo "admin token: $dir/admin-token"
	echo "credentials: $dir/credentials"
}

start() {
	local i running=0
	for i in "${nodes[@]}"; do
		if pid "$i" >/dev/null; then running=$((running + 1)); fi
	done
	if [ "$running" = 3 ]; then
		log "already running"
		print_urls
		return 0
	fi
	if [ "$running" != 0 ]; then
		log "$running of 3 nodes are running; run '$0 stop' first"
		return 1
	fi
	command -v curl >/dev/null || { log "curl is needed"; return 1; }
	build
	mkdir -p "$dir"
	credentials
	tok="$(token)"
	# All three at once: each node waits at start for the JetStream quorum
	# that only the other two can give it.
	for i in "${nodes[@]}"; do start_node "$i"; done
	local deadline=$((SECONDS + wait_secs)) pending
	while :; do
		pending=""
		for i in "${nodes[@]}"; do
			if ! pid "$i" >/dev/null; then
				log "node n$i exited during start; last lines of $dir/n$i.log:"
				tail -n 20 "$dir/n$i.log" >&2 || true
				stop >/dev/null 2>&1 || true
				return 1
			fi
			{ ready "$i" && sees_all "$i"; } || pending="$pending n$i"
		done
		[ -z "$pending" ] && break
		if [ $SECONDS -ge $deadline ]; then
			log "not ready within ${wait_secs}s:$pending (logs in $dir)"
			stop >/dev/null 2>&1 || true
			return 1
		fi
		sleep 0.2
	done
	print_urls
}

stop() {
	local i p pids=()
	for i in "${nodes[@]}"; do
		if p="$(pid "$i")"; then
			kill -TERM "$p" 2>/dev/null || true
			pids+=("$p")
		fi
	done
	local deadline=$((SECONDS + wait_secs)) alive
	while :; do
		alive=""
		for p in "${pids[@]}"; do
			if kill -0 "$p" 2>/dev/null; then alive="$alive $p"; fi
		done
		[ -z "$alive" ] && break
		if [ $SECONDS -ge $deadline ]; then
			log "still running after ${wait_secs}s:$alive; killing"
			for p in $alive; do kill -KILL "$p" 2>/dev/null || true; done
			break
		fi
		sleep 0.1
	done
	for i in "${nodes[@]}"; do rm -f "$dir/n$i.pid"; done
	log "stopped (${#pids[@]} nodes)"
}

status() {
	local i p rc=0
	for i in "${nodes[@]}"; do
		if p="$(pid "$i")"; then
			if ready "$i"; then
				echo "n$i  running pid $p  ready  $(url "$i")"
			else
				echo "n$i  running pid $p  NOT READY  $(url "$i")"
				rc=3
			fi
		else
			echo "n$i  stopped"
			rc=3
		fi
	done
	return $rc
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*)
	echo "usage: $0 start|stop|status" >&2
	exit 2
	;;
esac
