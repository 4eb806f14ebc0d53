#!/usr/bin/env bash
# First byte between two fresh REAL Tailscale clients (tsnet 1.90.9 in Caddy, tests/realclient/),
# with and without tinyscale's embedded DERP relay. Prints every run and a summary per mode.
#
#   benches/first_byte.sh [RUNS] [MODE...]        (as root; default: 3 runs of `relay norelay`)
#
# Per run: a fresh server (new data dir) on the bridge address, a reusable pre-auth key, then the
# clock starts and two fresh nodes are started in their namespaces: a (serves HTTP on the tailnet)
# and b (local proxy to http://a over the tailnet). The figure is the time from starting a to the
# first complete HTTP 200 from a through b's proxy (curl polled inside b's namespace), with the
# time both nodes had their tailnet IPs as a breakdown.
#
# Modes:
#   relay         the default config: embedded DERP relay on the TLS port (198.18.0.1:TLS, pinned
#                 self-signed certificate) and STUN on 198.18.0.1:3478.
#   norelay       `derp.server.enabled: false` (no relay, no STUN) plus a DERP map file
#                 (`derp.paths`) whose only region points at nothing: 198.18.0.1, DERP port 1 and
#                 STUN port 9, both closed. Clients must find the direct UDP path on their own.
#   relay-blocked the relay and STUN run, but TCP from the nodes to the TLS port is rejected by
#                 nftables inside each node namespace (needs `nft`): the relay is unreachable while
#                 STUN still answers.
#
# No TS_DEBUG_* knob is used in any mode. Environment: SERVER_BIN (server binary; default: build
# `cargo build --release` and use $CARGO_TARGET_DIR/release/tinyscale), NO_BUILD=1 (use the existing
# release binary), REALCLIENT_HOME (client install), REALCLIENT_SUBNET (default 198.18.0),
# LIMIT (seconds a run may take to the first byte, default 90).
# Takes the real-client test lock (/tmp/tinyscale-e2e-realclient.lock), so it never overlaps the
# e2e tests; uses namespaces tsb-a, tsb-b and bridge tsbbr0.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
RC="$ROOT/tests/realclient"
RUNS=${1:-3}
shift || true
MODES=("$@")
[ ${#MODES[@]} -gt 0 ] || MODES=(relay norelay)
LIMIT=${LIMIT:-90}
LOCK=/tmp/tinyscale-e2e-realclient.lock

export REALCLIENT_PREFIX=tsb
export REALCLIENT_SUBNET="${REALCLIENT_SUBNET:-198.18.0}"
HOST="$REALCLIENT_SUBNET.1"

say() { printf '[first_byte] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
[[ "$RUNS" =~ ^[0-9]+$ ]] && [ "$RUNS" -ge 1 ] || die "RUNS must be a positive number"
for m in "${MODES[@]}"; do
  case "$m" in
    relay | norelay) ;;
    relay-blocked) command -v nft >/dev/null || die "mode relay-blocked needs nft (package nftables)" ;;
    *) die "unknown mode $m (relay, norelay, relay-blocked)" ;;
  esac
done

if [ -n "${SERVER_BIN:-}" ]; then
  BIN="$SERVER_BIN"
else
  TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
  if [ "${NO_BUILD:-}" != 1 ]; then
    say "building the release server (cargo build --release)"
    (cd "$ROOT" && cargo build --release --bin tinyscale >&2)
  fi
  BIN="$TARGET/release/tinyscale"
fi
[ -x "$BIN" ] || die "no server binary at $BIN"
bash "$RC/install.sh" >&2

# --- lock (the same mkdir lock as the e2e tests; a dead owner's lock is taken over) -----------
waited=0
until mkdir "$LOCK" 2>/dev/null; do
  owner="$(cat "$LOCK/pid" 2>/dev/null || true)"
  if [ -z "$owner" ] || ! kill -0 "$owner" 2>/dev/null; then
    sleep 0.3
    [ "$(cat "$LOCK/pid" 2>/dev/null || true)" != "$owner" ] || rm -rf "$LOCK"
    continue
  fi
  [ $waited -lt 900 ] || die "another real-client run (pid $owner) holds $LOCK for 15 minutes"
  [ $waited -gt 0 ] || say "waiting for another real-client run (pid $owner)"
  sleep 1; waited=$((waited + 1))
done
echo $$ >"$LOCK/pid"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tinyscale-first-byte.XXXXXX")"
export REALCLIENT_RUN="$WORK/run"
SERVER_PID=""

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

cleanup() {
  set +e
  [ -d "$REALCLIENT_RUN" ] && bash "$RC/node.sh" stop-all >/dev/null 2>&1
  stop_server
  bash "$RC/netns.sh" down >/dev/null 2>&1
  if [ -n "${KEEP:-}" ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
  rm -rf "$LOCK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$HOST"
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# start_server MODE DIR: writes DIR/config.yaml, starts the server, waits for /key
start_server() {
  local mode="$1" dir="$2" port tls_port derp=true paths=""
  port="$(free_port)"; tls_port="$(free_port)"
  if [ "$mode" = norelay ]; then
    derp=false
    cat >"$dir/deadregion.json" <<JSON
{"Regions": {"900": {"RegionID": 900, "RegionCode": "dead", "RegionName": "points at nothing",
  "Nodes": [{"Name": "900a", "RegionID": 900, "HostName": "$HOST", "IPv4": "$HOST", "IPv6": "none",
             "DERPPort": 1, "STUNPort": 9}]}}}
JSON
    paths="  paths:
    - $dir/deadregion.json"
  fi
  cat >"$dir/config.yaml" <<YAML
data_dir: $dir/data
server_url: http://$HOST:$port
listen_addr: $HOST:$port
tls_listen_addr: $HOST:$tls_port
derp:
  server:
    enabled: $derp
    region_id: 999
    region_code: bench
    region_name: tinyscale bench
    stun_listen_addr: $HOST:3478
    ipv4: $HOST
$paths
unix_socket: tinyscale.sock
dns:
  magic_dns: true
  base_domain: bench.internal
log:
  level: info
YAML
  CONTROL="http://$HOST:$port"
  TLS_PORT="$tls_port"
  setsid timeout -k 5 900 "$BIN" serve --config "$dir/config.yaml" </dev/null >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 120); do
    curl -fsS --max-time 2 "$CONTROL/key?v=130" 2>/dev/null | grep -q mkey: && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$dir/server.log" >&2; die "server exited"; }
    sleep 0.25
  done
  die "server did not answer /key within 30 s"
}

# block_relay NODE: reject TCP from NODE's namespace to the TLS (DERP) port
block_relay() {
  ip netns exec "tsb-$1" nft -f - <<NFT
table inet tinyscale_bench {
  chain out {
    type filter hook output priority 0; policy accept;
    ip daddr $HOST tcp dport $TLS_PORT reject with tcp reset
  }
}
NFT
}

declare -A RESULTS
one_run() {
  local mode="$1" run="$2" dir="$WORK/$mode-$run"
  mkdir -p "$dir"
  bash "$RC/netns.sh" up a b >/dev/null 2>&1 || bash "$RC/netns.sh" up a b >/dev/null
  start_server "$mode" "$dir"
  "$BIN" users create alice --config "$dir/config.yaml" >/dev/null
  local key
  key="$("$BIN" preauthkeys create --user alice --reusable -o json --config "$dir/config.yaml" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
  if [ "$mode" = relay-blocked ]; then block_relay a; block_relay b; fi

  local t0 t_ips="" code="" fb=""
  t0="$(now)"
  bash "$RC/node.sh" start a --control "$CONTROL" --authkey "$key" --role serve --ts-port 41641 --max-seconds 600 2>/dev/null
  bash "$RC/node.sh" start b --control "$CONTROL" --authkey "$key" --role proxy --upstream a --ts-port 41642 --max-seconds 600 2>/dev/null
  local end=$((SECONDS + LIMIT))
  while [ $SECONDS -lt $end ]; do
    if [ -z "$t_ips" ] && [ -n "$(bash "$RC/node.sh" ips a)" ] && [ -n "$(bash "$RC/node.sh" ips b)" ]; then
      t_ips="$(since "$t0")"
    fi
    code="$(ip netns exec tsb-b curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:8080/ 2>/dev/null || true)"
    if [ "$code" = 200 ]; then fb="$(since "$t0")"; break; fi
    sleep 0.1
  done
  # b's log: the DERP region b first sent to a through (magicsock logs it when it starts writing
  # to a peer via DERP, whether or not that region works), and the direct path if one was found.
  local relayed direct path
  relayed="$(grep -o 'derp route for \[[^]]*\] set to derp-[0-9]*' "$REALCLIENT_RUN/b/caddy.log" | head -n1 | sed 's/.* set to //' || true)"
  direct="$(grep -o 'now using [0-9.]*:[0-9]*' "$REALCLIENT_RUN/b/caddy.log" | head -n1 || true)"
  path="DERP route ${relayed:-none}; direct path: ${direct:-none}"
  if [ -n "$fb" ]; then
    say "$mode run $run: first byte after ${fb}s (both nodes had IPs after ${t_ips:-?}s; b's path: $path)"
    RESULTS[$mode]+="$fb "
  else
    say "$mode run $run: NO first byte within ${LIMIT}s (last HTTP status ${code:-none}; IPs after ${t_ips:-never}s)"
    RESULTS[$mode]+="fail "
  fi
  bash "$RC/node.sh" stop-all >/dev/null 2>&1
  stop_server
  bash "$RC/netns.sh" down-nodes >/dev/null 2>&1
}

say "server $BIN; $RUNS run(s) each of: ${MODES[*]}"
for mode in "${MODES[@]}"; do
  for run in $(seq 1 "$RUNS"); do one_run "$mode" "$run"; done
done

echo "first byte between two fresh real clients (seconds from starting node a; $RUNS runs each)"
for mode in "${MODES[@]}"; do
  # shellcheck disable=SC2086
  printf '%-14s %s\n' "$mode" "$(printf '%s\n' ${RESULTS[$mode]} | sort -n | awk '
    /fail/ { f++; next } { v[++n] = $1; s += $1 }
    END {
      out = "";
      for (i = 1; i <= n; i++) out = out v[i] " ";
      if (n) printf "%smedian %.1f mean %.1f", out, (n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2), s / n;
      if (f) printf "%s%d failed", (n ? ", " : ""), f;
    }')"
done
