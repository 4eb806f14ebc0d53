#!/usr/bin/env bash
# cross/smoke.sh TARGET — build TARGET with cross/build.sh, then run the binary under qemu-user:
#   1. `tinyscale --version`
#   2. start `tinyscale serve --config <tmp config>` (emulated) on 127.0.0.1:<free port>
#   3. GET /key?v=130 must answer JSON with `publicKey`
#   4. (emulated CLI over the admin socket) `users create smoke`, `preauthkeys create --user smoke -o json`
#   5. PROTOCOL CLIENT STEP: only if `tinyscale debug smoke --help` succeeds, run
#      `tinyscale debug smoke --server http://127.0.0.1:PORT --authkey KEY` with the HOST's native binary
#      against the emulated server: it registers a node and gets a map.
# Steps 4 and 5 are skipped (and said so) while the CLI lacks those commands; `TINYSCALE_SMOKE_STRICT=1`
# turns every skip into a failure. Processes are cleaned up by PID. Exit 0 = all steps that ran passed.
#
# Environment: as cross/build.sh (CARGO_TARGET_DIR, ...), plus
#   TINYSCALE_SMOKE_BIN        use this binary instead of building one
#   TINYSCALE_SMOKE_HOST_BIN   native binary for step 5 (default: cross/build.sh <host>-unknown-linux-musl)
#   TINYSCALE_SMOKE_TIMEOUT    seconds to wait for the server to listen (default 60: qemu is slow)
set -euo pipefail

TARGET=${1:-}
if [ -z "$TARGET" ] || [ "$TARGET" = "-h" ] || [ "$TARGET" = "--help" ]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    [ -n "$TARGET" ] && exit 0 || exit 2
fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STRICT=${TINYSCALE_SMOKE_STRICT:-0}
WAIT=${TINYSCALE_SMOKE_TIMEOUT:-60}

log()  { printf '[smoke %s] %s\n' "$TARGET" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
skip() { if [ "$STRICT" = 1 ]; then fail "$* (TINYSCALE_SMOKE_STRICT=1)"; else log "SKIP: $*"; fi; }

# ------------------------------------------------------------------------------------------ tools
need=()
host_arch=$(uname -m)
case "$TARGET" in
    x86_64-*)   qarch=x86_64 ;;
    aarch64-*)  qarch=aarch64 ;;
    armv7-*|arm-*|thumbv7*) qarch=arm ;;
    mipsel-*)   qarch=mipsel ;;
    mips-*)     qarch=mips ;;
    mips64el-*) qarch=mips64el ;;
    mips64-*)   qarch=mips64 ;;
    riscv64*)   qarch=riscv64 ;;
    *) fail "no qemu-user mapping for $TARGET" ;;
esac
QEMU=()
if [ "$qarch" != "$host_arch" ]; then
    if ! command -v "qemu-$qarch-static" >/dev/null 2>&1 && ! command -v "qemu-$qarch" >/dev/null 2>&1; then
        need+=(qemu-user-static)
    fi
fi
command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
if [ "$qarch" != "$host_arch" ]; then
    if command -v "qemu-$qarch-static" >/dev/null 2>&1; then QEMU=("qemu-$qarch-static")
    else QEMU=("qemu-$qarch"); fi
fi

# ------------------------------------------------------------------------------------------ build
if [ -n "${TINYSCALE_SMOKE_BIN:-}" ]; then
    BIN=$TINYSCALE_SMOKE_BIN
else
    BIN=$("$HERE/build.sh" "$TARGET" | tail -n1)
fi
[ -x "$BIN" ] || fail "no binary: $BIN"
run() { ${QEMU[@]+"${QEMU[@]}"} "$BIN" "$@"; }
log "binary: $BIN ($(stat -c %s "$BIN") bytes), runner: ${QEMU[*]:-native}"

# ------------------------------------------------------------------------- step 1: --version
ver=$(run --version) || fail "--version exited $?"
log "step 1 ok: --version -> $ver"
case "$ver" in tinyscale*) ;; *) fail "--version printed '$ver', expected 'tinyscale ...'" ;; esac

# ------------------------------------------------------------------------- step 2: serve
WORK=$(mktemp -d /tmp/tinyscale-smoke.XXXXXX)
SERVER_PID=""
cleanup() {
    local rc=$?
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ "$rc" != 0 ] && [ -f "$WORK/server.log" ]; then
        log "server log (last 40 lines):"; tail -n 40 "$WORK/server.log" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {   # a port the kernel hands out for loopback, released before we return it
    python3 -c 'import socket,sys
s=socket.socket(socket.AF_INET, getattr(socket,sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' "$1"
}
PORT=$(free_port SOCK_STREAM)
STUN_PORT=$(free_port SOCK_DGRAM)
TLS_PORT=$(free_port SOCK_STREAM)
mkdir -p "$WORK/data"
chmod 700 "$WORK/data"
CONF=$WORK/config.yaml
cat >"$CONF" <<EOF
server_url: http://127.0.0.1:$PORT
listen_addr: 127.0.0.1:$PORT
data_dir: $WORK/data
tls_listen_addr: 127.0.0.1:$TLS_PORT
derp:
  server:
    enabled: true
    stun_listen_addr: 127.0.0.1:$STUN_PORT
log:
  level: debug
EOF

log "step 2: serve --config $CONF on 127.0.0.1:$PORT"
# Started directly (not through the `run` function) so that $! is the server's own PID.
${QEMU[@]+"${QEMU[@]}"} "$BIN" serve --config "$CONF" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
URL=http://127.0.0.1:$PORT
deadline=$(( $(date +%s) + WAIT ))
key_json=""
while :; do
    kill -0 "$SERVER_PID" 2>/dev/null || { wait "$SERVER_PID" && rc=0 || rc=$?; SERVER_PID=""; fail "server exited ($rc) before answering"; }
    if key_json=$(curl -fsS --max-time 5 "$URL/key?v=130" 2>/dev/null); then break; fi
    [ "$(date +%s)" -lt "$deadline" ] || fail "server did not answer $URL/key?v=130 within ${WAIT}s"
    sleep 0.3
done
log "step 2 ok: server (pid $SERVER_PID) is up"

# ------------------------------------------------------------------------- step 3: /key
printf '%s' "$key_json" | python3 -c '
import json, sys
d = json.load(sys.stdin)
k = d.get("publicKey", "")
assert isinstance(k, str) and k.startswith("mkey:") and len(k) == 5 + 64, d
print(k)' >"$WORK/mkey" 2>"$WORK/mkey.err" || fail "GET /key?v=130 answered '$key_json': $(cat "$WORK/mkey.err")"
log "step 3 ok: GET /key?v=130 -> publicKey $(cat "$WORK/mkey")"

# ------------------------------------------------------------------------- step 4: user + key
AUTHKEY=""
if run users create --help >/dev/null 2>&1 && run preauthkeys create --help >/dev/null 2>&1; then
    run users create smoke --config "$CONF" >"$WORK/user.out" 2>&1 \
        || fail "users create smoke: $(cat "$WORK/user.out")"
    # `debug smoke` joins two nodes with the one key: make it reusable where the CLI knows the flag.
    reusable=()
    case "$(run preauthkeys create --help 2>&1 || true)" in *--reusable*) reusable=(--reusable) ;; esac
    run preauthkeys create --user smoke ${reusable[@]+"${reusable[@]}"} -o json --config "$CONF" \
        >"$WORK/key.json" 2>"$WORK/key.err" \
        || fail "preauthkeys create: $(cat "$WORK/key.err")"
    AUTHKEY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"])' "$WORK/key.json") \
        || fail "preauthkeys create -o json printed no 'key': $(cat "$WORK/key.json")"
    [ -n "$AUTHKEY" ] || fail "empty pre-auth key"
    log "step 4 ok: user 'smoke' and a pre-auth key (${#AUTHKEY} chars) via the emulated CLI"
else
    skip "step 4: 'users create' / 'preauthkeys create' not in this binary yet"
fi

# ------------------------------------------------------------------------- step 5: protocol client
# >>> PROTOCOL-LEVEL CLIENT (tinyscale debug smoke, written by the lead). Runs only when the command
# >>> exists; it runs natively on the host against the emulated server, registers, and gets a map.
if [ -n "$AUTHKEY" ] && run debug smoke --help >/dev/null 2>&1; then
    HOST_BIN=${TINYSCALE_SMOKE_HOST_BIN:-}
    if [ -z "$HOST_BIN" ]; then
        if [ ${#QEMU[@]} -eq 0 ]; then HOST_BIN=$BIN
        else HOST_BIN=$("$HERE/build.sh" "$host_arch-unknown-linux-musl" | tail -n1); fi
    fi
    log "step 5: $HOST_BIN debug smoke --server $URL --authkey <key>"
    if ! timeout 120 "$HOST_BIN" debug smoke --server "$URL" --authkey "$AUTHKEY" >"$WORK/client.log" 2>&1; then
        log "client output:"; tail -n 40 "$WORK/client.log" >&2
        fail "debug smoke failed against the $TARGET server"
    fi
    tail -n 5 "$WORK/client.log" | sed 's/^/    /' >&2
    log "step 5 ok: a protocol-level client registered and got a map from the emulated server"
elif [ -z "$AUTHKEY" ]; then
    skip "step 5: no pre-auth key (step 4 skipped)"
else
    skip "step 5: 'tinyscale debug smoke' not in this binary yet"
fi
# <<< PROTOCOL-LEVEL CLIENT

kill -0 "$SERVER_PID" 2>/dev/null || fail "server died during the smoke test"
log "PASS ($TARGET)"
