#!/usr/bin/env bash
# Load benchmark: a release tinyscale server pinned to core 0, the load
# generator (`tinyscale debug loadgen`) pinned to core 1, speaking the real
# protocol over loopback. Prints every figure; see benches/README.md.
#
#   benches/loadgen.sh [N] [shape]
#   STORM=1 benches/loadgen.sh 10000 large   # + the reconnect storm at the end
#     N      member nodes (default 1000)
#     shape  allow-all (default): one user, one reusable key, no policy
#            large: N/100 users x 100 nodes, autogroup:self policy plus
#                   $TAGGED shared tag:server nodes every member may reach
#
# Environment: C (concurrency, 64), K (changes, 20), M (handshakes, 2000),
# TAGGED (large shape, 4), MAX_SECONDS (loadgen time limit, 540),
# CARGO_TARGET_DIR, NO_BUILD=1 (use the existing release binary),
# SERVER_CORE (0) / LOADGEN_CORE (1), PERF=1 (record the server with perf into $TMPDIR),
# PRIO=-10 (run server and load generator under `nice -n PRIO`: on a shared
# machine wall-clock figures suffer from other processes; CPU-second
# figures do not), TMPDIR (where the data directory goes; /dev/shm takes
# fsync out of the picture), SERVER_BIN (another build of the server, e.g.
# one with symbols for perf), STORM=1 (last phase: the load generator
# SIGKILLs the server, starts it again with the same command line, and every
# streaming node reconnects at once; K=0 M=0 skip the phases before it).
set -euo pipefail

N=${1:-1000}
SHAPE=${2:-allow-all}
C=${C:-64}
K=${K:-20}
M=${M:-2000}
TAGGED=${TAGGED:-4}
MAX_SECONDS=${MAX_SECONDS:-540}
SERVER_CORE=${SERVER_CORE:-0}
NICE=()
if [ -n "${PRIO:-}" ]; then NICE=(nice -n "$PRIO"); fi
LOADGEN_CORE=${LOADGEN_CORE:-1}

case "$SHAPE" in
allow-all | large) ;;
*)
    echo "unknown shape $SHAPE (allow-all or large)" >&2
    exit 2
    ;;
esac
if [ "$SHAPE" = allow-all ] && [ "$N" -gt 1000 ]; then
    echo "note: allow-all at N=$N is O(N^2) map traffic by design; the issue's shape for N > 1000 is 'large'" >&2
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
if [ "${NO_BUILD:-}" != 1 ]; then
    (cd "$REPO" && cargo build --release --quiet --features loadgen)
fi
BIN=$CARGO_TARGET_DIR/release/tinyscale
if ! "$BIN" debug loadgen --help 2>&1 | grep -q -- --nodes; then
    echo "$BIN has no load generator: build it with cargo build --release --features loadgen" >&2
    exit 1
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tinyscale-loadgen.XXXXXX")
SPID=
cleanup() {
    # After a storm the server is the restarted one, whose PID its shell wrote.
    if [ -s "$TMP/server.pid" ]; then SPID=$(cat "$TMP/server.pid"); fi
    if [ -n "$SPID" ] && kill -0 "$SPID" 2>/dev/null; then
        kill "$SPID" 2>/dev/null || true
        wait "$SPID" 2>/dev/null || true
    fi
    if [ -n "${KEEP_LOG:-}" ]; then cp "$TMP/server.log" "$KEEP_LOG" || true; fi
    if [ -n "${KEEP_DATA:-}" ]; then rm -rf "$KEEP_DATA"; cp -a "$TMP" "$KEEP_DATA" || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback port (the kernel picks one; a race is harmless here).
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)))}
CFG=$TMP/config.yaml
POLICY_LINE=
if [ "$SHAPE" = large ]; then
    USERS=$(((N + 99) / 100))
    cat >"$TMP/policy.hujson" <<'POL'
// loadgen "large" shape: every member reaches its own user's devices and
// the shared tagged servers; nothing else.
{
  "tagOwners": {
    "tag:server": ["u0@"],
  },
  "acls": [
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:server:*"]},
  ],
}
POL
    POLICY_LINE="  path: $TMP/policy.hujson"
else
    USERS=1
fi
cat >"$CFG" <<CONF
server_url: http://127.0.0.1:$PORT
listen_addr: 127.0.0.1:$PORT
data_dir: $TMP/data
noise:
  private_key_path: $TMP/data/noise_private.key
database:
  path: $TMP/data/db.redb
unix_socket: $TMP/admin.sock
# Every simulated node connects from 127.0.0.1, thousands at once.
limits:
  unidentified_connections: 1000000
  unidentified_connections_per_source: 1000000
# No TLS listener: the benchmark must not take port 443 from anyone.
tls_listen_addr: ""
# Nor the metrics port (default 127.0.0.1:9090).
metrics_listen_addr: ""
derp:
  server:
    enabled: true
    stun_listen_addr: ""
dns:
  magic_dns: true
  base_domain: loadgen.test
policy:
  mode: file
$POLICY_LINE
log:
  level: warn
CONF

# Both processes may hold N+ sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "== tinyscale loadgen: N=$N shape=$SHAPE C=$C K=$K M=$M port=$PORT (RLIMIT_NOFILE $(ulimit -n)) =="
echo "binary: $BIN ($(stat -c %s "$BIN") bytes), data in $TMP"
${NICE[@]+"${NICE[@]}"} taskset -c "$SERVER_CORE" "${SERVER_BIN:-$BIN}" serve --config "$CFG" >"$TMP/server.log" 2>&1 &
SPID=$!
echo "server PID $SPID on core $SERVER_CORE"
for _ in $(seq 1 100); do
    if [ -S "$TMP/admin.sock" ] && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        break
    fi
    if ! kill -0 "$SPID" 2>/dev/null; then
        echo "server exited:" >&2
        cat "$TMP/server.log" >&2
        exit 1
    fi
    sleep 0.1
done

key_of() { sed -n 's/.*"key": *"\([^"]*\)".*/\1/p' | head -n 1; }
T0=$(date +%s.%N)
ARGS=()
if [ "$SHAPE" = allow-all ]; then
    "$BIN" users create bench --config "$CFG" >/dev/null
    KEY=$("$BIN" preauthkeys create --user bench --reusable -o json --config "$CFG" | key_of)
    [ -n "$KEY" ] || { echo "no key from the CLI" >&2; exit 1; }
    ARGS+=(--authkey "$KEY")
else
    : >"$TMP/keys"
    for u in $(seq 0 $((USERS - 1))); do
        "$BIN" users create "u$u" --config "$CFG" >/dev/null
        "$BIN" preauthkeys create --user "u$u" --reusable -o json --config "$CFG" | key_of >>"$TMP/keys"
    done
    [ "$(grep -c . "$TMP/keys")" = "$USERS" ] || { echo "expected $USERS keys" >&2; exit 1; }
    ARGS+=(--keys-file "$TMP/keys")
    if [ "$TAGGED" -gt 0 ]; then
        TKEY=$("$BIN" preauthkeys create --tags tag:server --reusable -o json --config "$CFG" | key_of)
        [ -n "$TKEY" ] || { echo "no tagged key from the CLI" >&2; exit 1; }
        ARGS+=(--tagged "$TAGGED" --tagged-key "$TKEY")
    fi
fi
echo "created $USERS user(s) and their keys with the CLI in $(echo "$(date +%s.%N) - $T0" | bc 2>/dev/null || echo '?') s"

PERF_PID=
PERF_OUT=${TMPDIR:-/tmp}/perf-loadgen-$SHAPE-$N.data
if [ "${PERF:-}" = 1 ] && command -v perf >/dev/null; then
    perf record -F 499 -g -p "$SPID" -o "$PERF_OUT" >/dev/null 2>&1 &
    PERF_PID=$!
fi
RESTART=()
if [ "${STORM:-}" = 1 ]; then
    # Run by the load generator after its SIGKILL: `exec` keeps the shell's
    # PID for the server, and the shell writes it down for the cleanup. The
    # server inherits the load generator's niceness (PRIO).
    RESTART=(--restart-cmd "echo \$\$ >'$TMP/server.pid'; exec taskset -c $SERVER_CORE '${SERVER_BIN:-$BIN}' serve --config '$CFG' >>'$TMP/server.log' 2>&1")
fi
set +e
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores; other processes skew wall-clock figures)"
${NICE[@]+"${NICE[@]}"} taskset -c "$LOADGEN_CORE" "$BIN" debug loadgen --server "http://127.0.0.1:$PORT" --server-pid "$SPID" \
    --nodes "$N" --concurrency "$C" --changes "$K" --handshakes "$M" --max-seconds "$MAX_SECONDS" "${ARGS[@]}" ${RESTART[@]+"${RESTART[@]}"}
RC=$?
if [ -s "$TMP/server.pid" ]; then SPID=$(cat "$TMP/server.pid"); fi
set -e
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "$PERF_PID" ]; then
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    echo "perf data: $PERF_OUT (perf report -i $PERF_OUT --no-children; a server with symbols: SERVER_BIN)"
fi
if ! kill -0 "$SPID" 2>/dev/null; then
    echo "server died during the run; its log:" >&2
    tail -n 50 "$TMP/server.log" >&2
    RC=1
elif grep -qiE 'panic|error' "$TMP/server.log"; then
    echo "-- server log (errors) --"
    grep -iE 'panic|error' "$TMP/server.log" | tail -n 20
fi
exit $RC
