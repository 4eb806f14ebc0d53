#!/usr/bin/env bash
# install-arkitekt.sh - the second real client the harness runs (idempotent): arkitekt-mesh 0.8.0,
# an independent Tailscale client written in Rust (capability version 142), shipped as a CPython
# abi3 wheel on PyPI. Installed into its own venv: $REALCLIENT_HOME/arkitekt-venv (default
# ~/.cache/tinyscale-realclient/arkitekt-venv), the wheel pinned by sha256 (pip --require-hashes).
# It has no dependencies. Re-running is cheap (a present, importable install is kept).
#
# Env: REALCLIENT_HOME, PYTHON (default python3; needs the venv module, Debian: python3-venv).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

VERSION="0.8.0"
WHEEL_SHA256="bddd8dff39ca9c777e2c24fd5a402c4174302305e85d207224813d446e86780c"
PYTHON="${PYTHON:-python3}"
VENV="$RC_HOME/arkitekt-venv"

[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || die "only Linux x86_64 is supported (the pinned wheel is manylinux2014_x86_64)"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("arkitekt-mesh") != "'"$VERSION"'")' 2>/dev/null; then
  log "arkitekt-mesh $VERSION already installed: $VENV"
  exit 0
fi
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
req="$VENV/requirements.txt"
printf 'arkitekt-mesh==%s --hash=sha256:%s\n' "$VERSION" "$WHEEL_SHA256" >"$req"
log "installing arkitekt-mesh==$VERSION from PyPI into $VENV"
timeout 600 "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
  --only-binary=:all: --require-hashes -r "$req" || die "pip install arkitekt-mesh==$VERSION failed"
"$VENV/bin/python" -c 'from arkitekt_mesh import Node' || die "arkitekt_mesh does not import"
log "ok: arkitekt-mesh $VERSION in $VENV"
