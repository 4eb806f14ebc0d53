#!/usr/bin/env bash
# node.sh - run one real Tailscale client (tsnet inside caddy) in its own netns.
#
#   node.sh start NAME --control URL [--authkey KEY] [--role serve|proxy] [--upstream HOST[:PORT]]
#                 [--proxy-port 8080] [--ts-port 41641] [--ephemeral] [--env K=V]... [--keep-state]
#                 [--max-seconds 1800] [--proxy-no-keepalive]
#                                     start NAME (a fresh node: its tailscale state dir is wiped
#                                     unless --keep-state). --env adds client env for this node only
#                                     (e.g. --env TS_DEBUG_MAP=1); --ephemeral registers it ephemeral.
#                                     Without --authkey (or with an empty one) the Caddyfile has no
#                                     auth_key: a new node logs in interactively, tsnet logs
#                                     "To start this tsnet server, restart with TS_AUTHKEY set, or
#                                     go to: <AuthURL>" (node.sh auth-url NAME prints the URL).
#                                     --proxy-no-keepalive: the proxy sends `Connection: close` upstream,
#                                     so every request dials anew over the tailnet (Tailscale's filter
#                                     passes non-SYN TCP, so a pooled connection could outlive an ACL
#                                     change; policy tests want every probe to be a new connection).
#   node.sh restart NAME [START-OPTIONS...]
#                                     stop NAME and start it again with the same options, KEEPING its
#                                     state dir (same node key, so the same node on the server).
#                                     The previous log is kept as caddy.log.N. START-OPTIONS are added
#                                     for this start only (later ones win, --env adds), e.g. a forced
#                                     re-login with a new key: --authkey NEW --env TSNET_FORCE_LOGIN=1;
#                                     --authkey '' drops the key. Later restarts use the original options.
#   node.sh stop NAME | stop-all      stop by the PID recorded at start (TERM, then KILL its process group)
#   node.sh kill NAME                 simulate a crash: SIGKILL NAME's process group (no graceful logout)
#   node.sh pid NAME                  print NAME's PID if it is running
#   node.sh ips NAME                  print the node's tailnet addresses seen so far (from its current log)
#   node.sh wait-ip NAME [SECONDS]    wait (default 60 s) until the node has a tailnet IPv4, print it
#   node.sh wait-http NAME URL [SECONDS] [CURL-ARGS...]
#                                     curl URL from inside NAME's netns until it answers 2xx; print body
#   node.sh log NAME                  path of the node's current log (JSON lines, tsnet logs under "tailscale")
#   node.sh auth-url NAME [SECONDS]   wait (default 60 s) until the node's current log shows an AuthURL
#                                     (interactive login), print the newest one
#
# Roles (both roles join the tailnet at startup and serve on tailnet port 80):
#   serve  GET http://<tailnet-ip>/      -> "hello from NAME over the tailnet; you are <peer tailnet ip>"
#          GET http://<tailnet-ip>/blob  -> a 1 MiB random file (its sha256 is in $RUN/NAME/blob.sha256)
#   proxy  additionally listens on 0.0.0.0:PROXY_PORT inside its netns and reverse-proxies every request
#          to http://UPSTREAM over the tailnet (caddy's `tailscale` transport = tsnet Dial), so
#          `ip netns exec <ns> curl 127.0.0.1:8080/blob` proves bytes crossed the WireGuard tunnel.
#
# Files: $REALCLIENT_RUN/NAME/{Caddyfile,caddy.log,stdout.log,pid,args,ts-state/,home/,www/}
# The node runs under `timeout --max-seconds` so it can never outlive a test by much.
# Extra env for every client: REALCLIENT_EXTRA_ENV="TS_DEBUG_MAP=1 TS_DEBUG_DISCO=1"
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/lib.sh"

usage() { sed -n '2,45p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2; }

node_dir() { printf '%s/%s' "$RC_RUN" "$1"; }

node_pid() {  # prints pid if the recorded process is alive and is ours (its cmdline names our Caddyfile)
  local d pid; d="$(node_dir "$1")"
  [ -f "$d/pid" ] || return 1
  pid="$(cat "$d/pid")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  local cmdline; cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  grep -qF -- "$d/Caddyfile" <<<"$cmdline" || return 1
  echo "$pid"
}

stop_node() {
  local name="$1" pid d; d="$(node_dir "$name")"
  if pid="$(node_pid "$name")"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    # the node runs in its own session/process group (setsid, pgid = pid): nothing of it survives
    kill -KILL -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    log "stopped $name (pid $pid)"
  fi
  rm -f "$d/pid"
}

kill_node() {  # simulated crash: SIGKILL the whole process group at once, no graceful logout
  local name="$1" pid d; d="$(node_dir "$name")"
  if pid="$(node_pid "$name")"; then
    kill -KILL -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    log "killed $name (pid $pid, SIGKILL)"
  fi
  rm -f "$d/pid"
}

start_node() {
  local name="${1:-}"; shift || true
  rc_check_name "$name"
  local -a orig_args=("$@")
  local control="" authkey="" role="serve" upstream="" proxy_port=8080 ts_port=41641 ephemeral=false
  local max_seconds=1800 keep_state=0 proxy_keepalive=1
  local -a node_env=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --control) control="$2"; shift 2 ;;
      --authkey) authkey="$2"; shift 2 ;;
      --role) role="$2"; shift 2 ;;
      --upstream) upstream="$2"; shift 2 ;;
      --proxy-port) proxy_port="$2"; shift 2 ;;
      --ts-port) ts_port="$2"; shift 2 ;;
      --ephemeral) ephemeral=true; shift ;;
      --env) [[ "$2" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants K=V, got '$2'"; node_env+=("$2"); shift 2 ;;
      --keep-state) keep_state=1; shift ;;
      --proxy-no-keepalive) proxy_keepalive=0; shift ;;
      --max-seconds) max_seconds="$2"; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  [ -n "$control" ] || die "--control URL is required (e.g. http://$RC_HOST_IP:8080)"
  [[ "$control" =~ ^https?://[^/]+$ ]] || die "--control must look like http://HOST:PORT (no path)"
  case "$role" in serve|proxy) ;; *) die "--role must be serve or proxy" ;; esac
  [ "$role" != proxy ] || [ -n "$upstream" ] || die "--role proxy needs --upstream HOST[:PORT] (a tailnet IP or MagicDNS name)"
  [[ "$max_seconds" =~ ^[0-9]+$ ]] || die "--max-seconds wants a number"
  [ -x "$RC_CADDY" ] || die "caddy not installed at $RC_CADDY: run install.sh first"
  # Always inside its own netns: in the root namespace the client would advertise and probe the
  # machine's real interfaces and gateway.
  rc_need_root
  local ns; ns="$(rc_ns "$name")"
  [ -e "/run/netns/$ns" ] || die "netns $ns missing: run netns.sh up $name ..."

  stop_node "$name"
  local d; d="$(node_dir "$name")"
  mkdir -p "$d"
  # remember how it was started, for `restart` (contains the auth key: owner-only)
  ( umask 077; printf '%s\0' "${orig_args[@]}" >"$d/args" )
  if [ -f "$d/caddy.log" ]; then   # keep earlier logs (restart): caddy.log.1, .2, ...
    local n=1; while [ -e "$d/caddy.log.$n" ]; do n=$((n + 1)); done
    mv "$d/caddy.log" "$d/caddy.log.$n"
    [ ! -f "$d/stdout.log" ] || mv "$d/stdout.log" "$d/stdout.log.$n"
  fi
  rm -rf "$d/home" "$d/www" "$d/Caddyfile" "$d/stdout.log"
  [ "$keep_state" = 1 ] || rm -rf "$d/ts-state" "$d/caddy-data"
  mkdir -p "$d/home" "$d/www" "$d/ts-state" "$d/caddy-data"
  chmod 700 "$d/ts-state"
  head -c 1048576 /dev/urandom >"$d/www/blob.bin"
  sha256sum "$d/www/blob.bin" | cut -d' ' -f1 >"$d/blob.sha256"

  local proxy_block="" proxy_extra=""
  [ "$proxy_keepalive" = 1 ] || proxy_extra="
		header_up Connection close"
  if [ "$role" = proxy ]; then
    proxy_block="
# local entry point (inside the netns): forwards over the tailnet through node $name
:$proxy_port {
	bind 0.0.0.0
	reverse_proxy http://$upstream {
		transport tailscale $name$proxy_extra
	}
}"
  fi
  # caddy-tailscale node options: auth_key, hostname, state_dir, port, ephemeral (per node).
  # No key: no auth_key line at all (caddy refuses an empty {env.RC_AUTH_KEY} placeholder), so
  # tsnet starts an interactive login and logs the AuthURL.
  local auth_line="# no auth_key: interactive login (AuthURL in the log)"
  [ -z "$authkey" ] || auth_line="auth_key {env.RC_AUTH_KEY}"
  cat >"$d/Caddyfile" <<CADDY
{
	admin localhost:2019
	auto_https off
	persist_config off
	storage file_system $d/caddy-data
	log default {
		output file $d/caddy.log
		format json
		level DEBUG
	}
	tailscale {
		control_url {env.RC_CONTROL_URL}
		$name {
			$auth_line
			hostname $name
			state_dir $d/ts-state
			port $ts_port
			ephemeral $ephemeral
		}
	}
}

# tailnet listener: starts the node at config load and answers on <tailnet-ip>:80
:80 {
	bind tailscale/$name
	handle /blob {
		root * $d/www
		rewrite * /blob.bin
		file_server
	}
	handle {
		respond "hello from $name over the tailnet; you are {http.request.remote.host}
" 200
	}
}
$proxy_block
CADDY
  local -a envv=(
    "PATH=/usr/sbin:/usr/bin:/sbin:/bin" "HOME=$d/home" "TMPDIR=$d/home"
    "XDG_CONFIG_HOME=$d/home/.config" "XDG_DATA_HOME=$d/home/.local/share" "XDG_CACHE_HOME=$d/home/.cache"
    "RC_CONTROL_URL=$control" "RC_AUTH_KEY=$authkey"
    "TS_LOGS_DIR=$d/home"   # else logpolicy (sockstatlog) creates /var/lib/tailscale when run as root
  )
  mapfile -t -O "${#envv[@]}" envv < <(rc_ts_env)
  local kv; for kv in ${REALCLIENT_EXTRA_ENV:-}; do envv+=("$kv"); done
  envv+=(${node_env[@]+"${node_env[@]}"})

  # syntax check only: `caddy validate` panics on the tailscale transport (tsnet.Server.Close on a
  # never-started node inside caddy-tailscale's Cleanup), so adapt the Caddyfile instead.
  env -i "${envv[@]}" timeout 30 "$RC_CADDY" adapt --config "$d/Caddyfile" --adapter caddyfile \
    >"$d/adapted.json" 2>"$d/adapt.log" || die "generated Caddyfile is invalid, see $d/adapt.log"

  # setsid: own session + process group (pgid = recorded pid), so stop_node can reap everything;
  # env -i: no proxy vars etc. The recorded pid is `timeout`, which forwards TERM to caddy.
  rm -f "$d/pid"
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$d/pid" \
    ip netns exec "$ns" env -i "${envv[@]}" \
    timeout -k 5 "$max_seconds" "$RC_CADDY" run --config "$d/Caddyfile" --adapter caddyfile \
    </dev/null >"$d/stdout.log" 2>&1 &
  for _ in $(seq 1 40); do [ -s "$d/pid" ] && break; sleep 0.05; done
  sleep 0.5
  node_pid "$name" >/dev/null || { tail -n 20 "$d/stdout.log" >&2; die "node $name exited at startup (see $d/stdout.log)"; }
  log "started $name role=$role ephemeral=$ephemeral netns=$ns pid=$(cat "$d/pid") control=$control log=$d/caddy.log"
}

restart_node() {
  local name="$1" d; d="$(node_dir "$name")"; shift
  [ -f "$d/args" ] || die "node $name was never started here ($d/args missing)"
  local -a args=()
  mapfile -d '' -t args <"$d/args"
  start_node "$name" "${args[@]}" --keep-state "$@"
  # one-off options (e.g. TSNET_FORCE_LOGIN=1, a new key) are not remembered for later restarts
  ( umask 077; printf '%s\0' "${args[@]}" >"$d/args" )
}

auth_url() {  # newest AuthURL in the node's current log ("... or go to: URL")
  local f; f="$(node_dir "$1")/caddy.log"
  [ -f "$f" ] || return 0
  grep -oE 'or go to: [^" ]+' "$f" | tail -n 1 | sed 's/^or go to: //' || true
}

node_ips() {  # tailnet addresses from the node's own log lines (netmap self addresses)
  local f; f="$(node_dir "$1")/caddy.log"
  [ -f "$f" ] || return 0
  grep -oE 'netmap: self: [^"]*' "$f" \
    | grep -oE '(100\.(6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7])\.[0-9]{1,3}\.[0-9]{1,3}|fd7a:115c:a1e0:[0-9a-f:]+)/(32|128)' \
    | sort -u | head -n 4 || true
}

node_ipv4() { node_ips "$1" | grep -m1 -E '^100\.' | cut -d/ -f1 || true; }

# wait_node_value NAME SECS WHAT FUNC: print FUNC NAME's output once it is non-empty; fail when the
# node exits or SECS pass ("node NAME WHAT within SECS").
wait_node_value() {
  local name="$1" secs="$2" what="$3" fn="$4" end v
  end=$((SECONDS + secs))
  while [ $SECONDS -lt $end ]; do
    v="$("$fn" "$name")"
    [ -n "$v" ] && { echo "$v"; exit 0; }
    node_pid "$name" >/dev/null || die "node $name is not running (see $(node_dir "$name")/stdout.log)"
    sleep 0.5
  done
  die "node $name $what within ${secs}s (see $(node_dir "$name")/caddy.log)"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  start) start_node "$@" ;;
  restart) rc_check_name "${1:-}"; restart_node "$@" ;;
  stop) rc_check_name "${1:-}"; stop_node "$1" ;;
  kill) rc_check_name "${1:-}"; kill_node "$1" ;;
  stop-all) [ -d "$RC_RUN" ] && for d in "$RC_RUN"/*/; do [ -f "$d/Caddyfile" ] && stop_node "$(basename "$d")"; done; true ;;
  pid) rc_check_name "${1:-}"; node_pid "$1" ;;
  log) echo "$(node_dir "${1:?name}")/caddy.log" ;;
  auth-url) wait_node_value "${1:?name}" "${2:-60}" "logged no AuthURL" auth_url ;;
  ips) node_ips "${1:?name}" ;;
  wait-ip) wait_node_value "${1:?name}" "${2:-60}" "got no tailnet IPv4" node_ipv4 ;;
  wait-http)
    name="${1:?name}"; url="${2:?url}"; secs="${3:-60}"; shift 3 || shift $#
    ns="$(rc_ns "$name")"; end=$((SECONDS + secs))
    while [ $SECONDS -lt $end ]; do
      if out="$(ip netns exec "$ns" curl -fsS --max-time 10 "$@" "$url" 2>/dev/null)"; then printf '%s\n' "$out"; exit 0; fi
      sleep 1
    done
    die "no 2xx from $url inside $ns within ${secs}s" ;;
  *) usage ;;
esac
