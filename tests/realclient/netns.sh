#!/usr/bin/env bash
# netns.sh - isolated test network for real Tailscale clients (idempotent).
# (tinyscale copy of the research harness; see tests/realclient/README.md)
#
#   netns.sh up NAME...   create bridge ${PREFIX}br0 = $SUBNET.1/24 in the root namespace and, per NAME,
#                         a netns ${PREFIX}-NAME whose eth0 ($SUBNET.11, .12, ... in argument order) is
#                         plugged into the bridge. Replaces previous node netns of this prefix (keeps the bridge).
#   netns.sh bridge       only create the bridge (so a control server can bind $SUBNET.1 before nodes exist).
#   netns.sh down         kill every process left in our netns (by PID), delete netns, veths, bridge.
#   netns.sh down-nodes   same, but keep the bridge (and the control server bound to it).
#   netns.sh show         print the topology file (NAME_IP=..., HOST_IP=...).
#   netns.sh ip NAME      print NAME's underlay address.
#
# Safety properties (why the clients cannot send traffic anywhere else):
#   * each node netns has only lo + eth0 with a /24 connected route and NO default route, so any
#     packet to an address outside $SUBNET.0/24 fails locally with ENETUNREACH;
#   * /etc/netns/<ns>/resolv.conf points DNS at 127.0.0.1 inside the netns (nothing listens there);
#   * IPv6 is disabled inside the netns and on the bridge ports (no link-local chatter);
#   * the root namespace only gains a connected route for $SUBNET.0/24 on the bridge; ip_forward is untouched.
# Run the control server in the root namespace listening on $SUBNET.1 (HOST_IP) or 0.0.0.0.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/lib.sh"

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2; }

our_netns() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${RC_PREFIX}-[a-z][a-z0-9]*$" || true; }

down() {
  rc_need_root
  local ns pid
  for ns in $(our_netns); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      log "killing leftover pid $pid in netns $ns"
      kill -TERM "$pid" 2>/dev/null || true
    done
  done
  sleep 0.5
  for ns in $(our_netns); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
    ip link del "${RC_PREFIX}v-${ns#"${RC_PREFIX}"-}" 2>/dev/null || true
  done
  # veths whose netns vanished some other way
  local l
  for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${RC_PREFIX}v-" || true); do
    ip link del "$l" 2>/dev/null || true
  done
  rm -f "$RC_TOPO"
  if [ "${1:-}" = keep-bridge ]; then log "node namespaces of '${RC_PREFIX}' removed (bridge kept)"; return 0; fi
  ip link del "$RC_BRIDGE" 2>/dev/null || true
  log "topology '${RC_PREFIX}' is down"
}

bridge_up() {  # keep an existing bridge: a control server may already be bound to $RC_HOST_IP
  # refuse to share the subnet with another harness (e.g. one with a different REALCLIENT_PREFIX)
  local other
  other="$(ip -o -4 addr show 2>/dev/null | awk -v a="$RC_HOST_IP/" -v b="$RC_BRIDGE" 'index($4, a) == 1 && $2 != b {print $2}' | head -n1)"
  [ -z "$other" ] || die "$RC_HOST_IP is already assigned to interface $other: another test network uses $RC_SUBNET.0/24 (set REALCLIENT_SUBNET, or take that one down)"
  # (captured first: `producer | grep -q` can fail under pipefail when grep exits early)
  local routes; routes="$(ip -o -4 route show to "$RC_SUBNET.0/24" 2>/dev/null || true)"
  if [ -n "$routes" ] && grep -qv "dev $RC_BRIDGE" <<<"$routes"; then
    die "a route to $RC_SUBNET.0/24 already exists on another interface: $(head -n1 <<<"$routes")"
  fi
  if ! ip link show "$RC_BRIDGE" >/dev/null 2>&1; then
    ip link add "$RC_BRIDGE" type bridge forward_delay 0 stp_state 0 || die "cannot create bridge $RC_BRIDGE (kernel bridge support?)"
  fi
  sysctl -qw "net.ipv6.conf.$RC_BRIDGE.disable_ipv6=1" 2>/dev/null || true
  local addrs; addrs="$(ip addr show dev "$RC_BRIDGE")"
  grep -q "inet $RC_HOST_IP/24" <<<"$addrs" || ip addr add "$RC_HOST_IP/24" dev "$RC_BRIDGE"
  ip link set "$RC_BRIDGE" up
}

up() {
  rc_need_root
  [ $# -ge 1 ] || die "usage: netns.sh up NAME..."
  [ $# -le 200 ] || die "too many nodes"
  local n
  for n in "$@"; do rc_check_name "$n"; done
  [ "$(printf '%s\n' "$@" | sort | uniq -d)" = "" ] || die "duplicate node names"
  down keep-bridge >/dev/null 2>&1 || true
  mkdir -p "$RC_RUN"
  bridge_up

  {
    echo "HOST_IP=$RC_HOST_IP"
    echo "BRIDGE=$RC_BRIDGE"
    echo "NODES=\"$*\""
  } >"$RC_TOPO.tmp"

  local i=11 ns veth addr
  for n in "$@"; do
    ns="$(rc_ns "$n")"; veth="${RC_PREFIX}v-$n"; addr="$RC_SUBNET.$i"
    ip netns add "$ns" || die "ip netns add $ns failed"
    mkdir -p "/etc/netns/$ns"
    printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"/etc/netns/$ns/resolv.conf"
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 || true
    ip link add "$veth" type veth peer name eth0 netns "$ns" || die "veth $veth failed"
    sysctl -qw "net.ipv6.conf.$veth.disable_ipv6=1" 2>/dev/null || true
    ip link set "$veth" master "$RC_BRIDGE"
    ip link set "$veth" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    echo "$(echo "$n" | tr a-z A-Z)_IP=$addr" >>"$RC_TOPO.tmp"
    i=$((i + 1))
  done
  mv "$RC_TOPO.tmp" "$RC_TOPO"

  # sanity: every node reaches the host side of the bridge (bounded wait for the links to come up)
  for n in "$@"; do
    ns="$(rc_ns "$n")"
    local ok=0 t out=""
    for t in $(seq 1 40); do
      # a TCP RST ("refused") from $RC_HOST_IP:1 proves L2+L3 reachability without needing a listener
      out="$(timeout 1 ip netns exec "$ns" bash -c "exec 3<>/dev/tcp/$RC_HOST_IP/1" 2>&1 || true)"
      case "$out" in *refused*) ok=1; break ;; esac
      sleep 0.25
    done
    [ "$ok" = 1 ] || die "netns $ns cannot reach $RC_HOST_IP over the bridge (last probe: $out)"
    if [ -n "$(ip -n "$ns" route show default)" ]; then die "netns $ns unexpectedly has a default route"; fi
  done
  log "topology up: host(control)=$RC_HOST_IP; $(grep '_IP=' "$RC_TOPO" | grep -v HOST_IP | tr '\n' ' ')"
  cat "$RC_TOPO"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  up) up "$@" ;;
  bridge) rc_need_root; bridge_up; log "bridge $RC_BRIDGE = $RC_HOST_IP/24 is up (start your control server on it)" ;;
  down) down ;;
  down-nodes) down keep-bridge ;;
  show) [ -f "$RC_TOPO" ] && cat "$RC_TOPO" || die "no topology (run: netns.sh up NAME...)" ;;
  ip) [ -f "$RC_TOPO" ] || die "no topology"; v="$(echo "${1:?name}" | tr a-z A-Z)_IP"
      grep "^$v=" "$RC_TOPO" | cut -d= -f2 | grep . || die "unknown node $1" ;;
  *) usage ;;
esac
