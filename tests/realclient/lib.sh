# lib.sh - shared settings for the tinyscale real-client harness. Sourced, not run.
# Every path is derived from env vars or from this file's directory; override as needed:
#   REALCLIENT_HOME    install dir (caddy binary). Default ${XDG_CACHE_HOME:-$HOME/.cache}/tinyscale-realclient
#   REALCLIENT_RUN     runtime dir (per-node config/state/logs, topology file). Default ${TMPDIR:-/tmp}/tinyscale-realclient-run
#   REALCLIENT_PREFIX  name prefix for netns/bridge/veth (default "tsc"; netns are PREFIX-NAME, veths PREFIXv-NAME)
#   REALCLIENT_SUBNET  first three octets of the test /24 (default 198.18.0, RFC 2544 benchmark range)
#   REALCLIENT_EXTRA_ENV  extra client env for every node, e.g. "TS_DEBUG_MAP=1 TS_DEBUG_DISCO=1"

RC_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RC_HOME="${REALCLIENT_HOME:-${XDG_CACHE_HOME:-${HOME:?HOME or REALCLIENT_HOME must be set}/.cache}/tinyscale-realclient}"
RC_RUN="${REALCLIENT_RUN:-${TMPDIR:-/tmp}/tinyscale-realclient-run}"
RC_PREFIX="${REALCLIENT_PREFIX:-tsc}"
RC_SUBNET="${REALCLIENT_SUBNET:-198.18.0}"
RC_CADDY="$RC_HOME/bin/caddy"
RC_BRIDGE="${RC_PREFIX}br0"
RC_HOST_IP="${RC_SUBNET}.1"          # root-namespace side of the bridge: run the control server here
RC_TOPO="$RC_RUN/topology.env"

log() { printf '[realclient] %s\n' "$*" >&2; }
die() { printf '[realclient] ERROR: %s\n' "$*" >&2; exit 1; }

rc_need_root() { [ "$(id -u)" = 0 ] || die "must run as root (needs ip netns / veth)"; }
rc_ns() { printf '%s-%s' "$RC_PREFIX" "$1"; }       # netns name for node NAME
rc_check_name() {
  # veth "${PREFIX}v-NAME" must fit IFNAMSIZ (15 chars)
  [[ "$1" =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "bad node name '$1' (want [a-z][a-z0-9]{0,7})"
  [ $(( ${#RC_PREFIX} + 2 + ${#1} )) -le 15 ] || die "REALCLIENT_PREFIX '$RC_PREFIX' + node name '$1' too long for an interface name"
}
# Environment given to every tailscale client process (see README "knobs").
rc_ts_env() {
  printf '%s\n' \
    TS_NO_LOGS_NO_SUPPORT=true \
    TS_DISABLE_PORTMAPPER=1 \
    TS_DISABLE_UPNP=1 \
    TS_PANIC_IF_HIT_MAIN_CONTROL=1 \
    TS_PORTLIST=0
}
