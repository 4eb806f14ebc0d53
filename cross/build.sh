#!/usr/bin/env bash
# cross/build.sh TARGET — build a static, stripped musl release binary of tinyscale for TARGET.
#
#   TARGET: x86_64-unknown-linux-musl | aarch64-unknown-linux-musl | armv7-unknown-linux-musleabihf
#           | mipsel-unknown-linux-musl | mips-unknown-linux-musl   (other *-linux-musl* may work too)
#
# Works from a fresh clone on a fresh Debian 12 machine as root (rustup must already be there: Debian 12
# has no rustup package and nothing outside crates.io, PyPI and Debian is reachable). It installs what
# it lacks — Debian packages, ziglang + cargo-zigbuild into a venv (PyPI wheels; `cargo install
# cargo-zigbuild` as a fallback), the rustup target, or nightly + rust-src for -Zbuild-std — and skips
# whatever is already there, so a re-run is a no-op cargo build.
#
# Route: the stable toolchain with a rustup-installed std is tried first ("stable"); if rustup cannot
# install the target's std (armv7-musleabihf is refused here; mips/mipsel are tier 3 and have none),
# the route is "nightly-build-std": nightly + rust-src, -Zbuild-std. Both link with zig (cargo zigbuild).
# The route taken is printed on stderr and recorded next to the binary in <bin>.route.
#
# All progress goes to stderr; stdout gets exactly one line, the LAST line: the stripped binary's path.
#
# Environment (all optional):
#   CARGO_TARGET_DIR           where cargo builds (default: <repo>/target)
#   TINYSCALE_CROSS_HOME       where the venv with zig lives (default: /opt/tinyscale-cross)
#   TINYSCALE_CROSS_ROUTE      force a route: stable | nightly-build-std
#   TINYSCALE_NIGHTLY          nightly toolchain name (default: nightly)
#   TINYSCALE_CARGO_ARGS       extra cargo args, e.g. "--features zstd" or "--no-default-features"
#   TINYSCALE_PROFILE          cargo profile (default: release)
#   TINYSCALE_CROSS_CRATE_DIR  build another crate with the same route (cross/panic-probe); default repo
#   TINYSCALE_CROSS_BIN        its binary name (default: tinyscale)
#   CARGO_PROFILE_RELEASE_*    cargo's own overrides, used by the size comparisons in size-budget.md
set -euo pipefail

TARGET=${1:-}
if [ -z "$TARGET" ] || [ "$TARGET" = "-h" ] || [ "$TARGET" = "--help" ]; then
    sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//' >&2
    [ -n "$TARGET" ] && exit 0 || exit 2
fi

log() { printf '[cross %s] %s\n' "$TARGET" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CRATE_DIR=$(cd "${TINYSCALE_CROSS_CRATE_DIR:-$REPO}" && pwd)
BIN_NAME=${TINYSCALE_CROSS_BIN:-tinyscale}
cd "$CRATE_DIR"
TOOLS=${TINYSCALE_CROSS_HOME:-/opt/tinyscale-cross}
PROFILE=${TINYSCALE_PROFILE:-release}
NIGHTLY=${TINYSCALE_NIGHTLY:-nightly}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CRATE_DIR/target}
# shellcheck disable=SC2206
EXTRA_ARGS=(${TINYSCALE_CARGO_ARGS:-})

case "$TARGET" in
    *-linux-musl*) ;;
    *) die "only *-linux-musl* targets are supported (static binaries), got '$TARGET'" ;;
esac

# ---------------------------------------------------------------------------------------------- apt
need_pkgs=()
command -v cc >/dev/null 2>&1 || need_pkgs+=(gcc libc6-dev)        # build scripts run on the host
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
# Debian's python3 needs python3-venv (ensurepip) for `python3 -m venv`; only if we still must make one.
if [ ! -x "$TOOLS/venv/bin/python" ] && ! /usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1; then
    need_pkgs+=(python3-venv)
fi
# binutils-multiarch: a `strip` that knows aarch64/arm/mips ELF (checked by what it supports).
strip --help 2>/dev/null | grep -q 'elf32-tradbigmips' || need_pkgs+=(binutils-multiarch)
command -v file >/dev/null 2>&1 || need_pkgs+=(file)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "need Debian packages ${need_pkgs[*]}; run as root or install them"
    log "apt-get install ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
fi

# ---------------------------------------------------------------------------------- zig, zigbuild
# Pinned to the versions measured in size-budget.md; any version works, pins keep sizes comparable.
ZIGLANG_VERSION=${ZIGLANG_VERSION:-0.17.1}
ZIGBUILD_VERSION=${ZIGBUILD_VERSION:-0.24.0}
if [ ! -x "$TOOLS/venv/bin/python" ]; then
    log "creating venv $TOOLS/venv"
    mkdir -p "$TOOLS"
    if [ -x /usr/bin/python3 ]; then /usr/bin/python3 -m venv "$TOOLS/venv" >&2
    else python3 -m venv "$TOOLS/venv" >&2; fi
fi
if ! "$TOOLS/venv/bin/python" -m ziglang version >/dev/null 2>&1; then
    log "pip install ziglang==$ZIGLANG_VERSION (PyPI)"
    "$TOOLS/venv/bin/pip" install -q "ziglang==$ZIGLANG_VERSION" >&2 \
        || "$TOOLS/venv/bin/pip" install -q ziglang >&2
fi
export PATH="$TOOLS/venv/bin:$TOOLS/bin:$PATH"
if ! command -v cargo-zigbuild >/dev/null 2>&1; then
    # PyPI ships cargo-zigbuild as a prebuilt wheel: seconds instead of minutes of `cargo install`.
    log "pip install cargo-zigbuild==$ZIGBUILD_VERSION (PyPI)"
    if ! "$TOOLS/venv/bin/pip" install -q "cargo-zigbuild==$ZIGBUILD_VERSION" >&2; then
        log "no wheel; cargo install cargo-zigbuild (crates.io, takes a few minutes)"
        nice -n 19 cargo install --locked --root "$TOOLS" cargo-zigbuild >&2
    fi
fi
# cargo-zigbuild finds zig through `python3 -m ziglang`; make `zig` itself reachable too.
if ! command -v zig >/dev/null 2>&1; then
    mkdir -p "$TOOLS/bin"
    printf '#!/bin/sh\nexec "%s" -m ziglang "$@"\n' "$TOOLS/venv/bin/python" >"$TOOLS/bin/zig"
    chmod +x "$TOOLS/bin/zig"
fi

# ------------------------------------------------------------------------------------- rust + route
command -v rustup >/dev/null 2>&1 \
    || die "rustup not found. Debian 12 has no rustup package and rustup's installer is not reachable here; use a machine image with rustup + stable (and nightly for armv7/mips)."

stable_std_ok() {   # true if the default toolchain has (or can install) the target's std
    rustup target list --installed 2>/dev/null | grep -qx "$TARGET" && return 0
    log "stable: rustup target add $TARGET"
    local out
    if out=$(rustup target add "$TARGET" 2>&1); then return 0; fi
    log "stable route unavailable: $(printf '%s\n' "$out" | grep -m1 -iE 'error|not' || printf '%s' "$out" | head -n1)"
    return 1
}

ensure_nightly() {
    if ! rustup toolchain list | grep -q "^$NIGHTLY"; then
        log "rustup toolchain install $NIGHTLY --profile minimal"
        rustup toolchain install "$NIGHTLY" --profile minimal >&2 \
            || die "cannot install the $NIGHTLY toolchain, needed for -Zbuild-std on $TARGET"
    fi
    if ! rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src'; then
        log "rustup component add rust-src --toolchain $NIGHTLY"
        rustup component add rust-src --toolchain "$NIGHTLY" >&2 \
            || die "cannot install rust-src for $NIGHTLY, needed for -Zbuild-std on $TARGET"
    fi
}

ROUTE=${TINYSCALE_CROSS_ROUTE:-}
if [ -z "$ROUTE" ]; then
    if stable_std_ok; then ROUTE=stable; else ROUTE=nightly-build-std; fi
fi

# Which panic runtime to build std with: follow the profile (CARGO_PROFILE_* overrides included).
profile_key() {   # profile_key PROFILE KEY -> value in Cargo.toml's [profile.PROFILE], unquoted
    awk -v p="[profile.$1]" -v k="$2" '
        $0 == p { inside = 1; next }
        /^\[/ { inside = 0 }
        inside && $1 == k { v = $3; gsub(/"/, "", v); print v; exit }' Cargo.toml
}
panic_strategy() {   # follows `inherits`; CARGO_PROFILE_<NAME>_PANIC wins, as in cargo
    local p=$1 var v depth=0
    while [ -n "$p" ] && [ $depth -lt 5 ]; do
        var="CARGO_PROFILE_$(printf '%s' "$p" | tr 'a-z-' 'A-Z_')_PANIC"
        if [ -n "${!var:-}" ]; then printf '%s' "${!var}"; return; fi
        v=$(profile_key "$p" panic)
        if [ -n "$v" ]; then printf '%s' "$v"; return; fi
        p=$(profile_key "$p" inherits); depth=$((depth + 1))
    done
}
PANIC=$(panic_strategy "$PROFILE"); PANIC=${PANIC:-unwind}

# Per-target codegen flags, via CARGO_TARGET_<TRIPLE>_RUSTFLAGS so host build scripts are unaffected.
tflags=()
case "$TARGET" in
    mips-*|mipsel-*)
        # Non-PIE static: -12% on MIPS, where PIC code is expensive (see size-budget.md). Only with
        # panic=abort: with unwind, the cdylib that redb also declares links std's unwinder/backtrace
        # code, and non-PIC code cannot go into a shared object (R_MIPS_26 ... recompile with -fPIC).
        if [ "$PANIC" = abort ]; then tflags+=(-C relocation-model=static); fi ;;
esac
std_features=()
if [ "$ROUTE" = nightly-build-std ]; then
    case "$TARGET" in
        # Without a prebuilt self-contained std the musl crt objects are not there: let zig supply them.
        armv7-*|arm-*|thumbv7neon-*) tflags+=(-C link-self-contained=no) ;;
        # MIPS is over its 3.5 MiB budget without these (-11.4% on mipsel at a015d46, size-budget.md):
        # std's smaller algorithms, and no file:line:column in panic messages (the message stays).
        # TINYSCALE_CROSS_LOCATIONS=1 keeps the locations.
        mips-*|mipsel-*)
            std_features+=(-Zbuild-std-features=optimize_for_size)
            [ "${TINYSCALE_CROSS_LOCATIONS:-0}" = 1 ] || tflags+=(-Zlocation-detail=none) ;;
    esac
fi
triple_var="CARGO_TARGET_$(printf '%s' "$TARGET" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
if [ ${#tflags[@]} -gt 0 ]; then
    export "$triple_var"="${!triple_var:+${!triple_var} }${tflags[*]}"
fi

if [ "$PROFILE" = release ]; then prof_args=(--release); else prof_args=(--profile "$PROFILE"); fi
case "$ROUTE" in
    stable)
        log "route: stable (rustup std for $TARGET) + cargo zigbuild"
        cmd=(cargo zigbuild "${prof_args[@]}" --target "$TARGET") ;;
    nightly-build-std)
        ensure_nightly
        log "route: nightly-build-std ($NIGHTLY + rust-src, -Zbuild-std=std,panic_$PANIC) + cargo zigbuild"
        cmd=(cargo "+$NIGHTLY" zigbuild "${prof_args[@]}" --target "$TARGET" "-Zbuild-std=std,panic_$PANIC"
             ${std_features[@]+"${std_features[@]}"}) ;;
    *) die "unknown TINYSCALE_CROSS_ROUTE '$ROUTE' (stable | nightly-build-std)" ;;
esac
cmd+=(--bin "$BIN_NAME" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})

log "${triple_var}=${!triple_var:-}"
log "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
log "+ ${cmd[*]}"
start=$(date +%s)
nice -n 19 "${cmd[@]}" >&2
log "cargo took $(( $(date +%s) - start )) s"

# --------------------------------------------------------------------------------------------- strip
out_dir=$CARGO_TARGET_DIR/$TARGET/$PROFILE
[ "$PROFILE" = dev ] && out_dir=$CARGO_TARGET_DIR/$TARGET/debug
bin=$out_dir/$BIN_NAME
[ -x "$bin" ] || die "no binary at $bin"
stripped=$out_dir/$BIN_NAME.stripped
# Only redo when the build produced a new binary (keeps re-runs fast and the output's mtime stable).
if [ ! -e "$stripped" ] || [ "$bin" -nt "$stripped" ]; then
    strip --strip-all -o "$stripped.tmp" "$bin"
    mv -f "$stripped.tmp" "$stripped"
fi
printf '%s\n' "$ROUTE" >"$stripped.route"
desc=$(file -b "$stripped")
case "$desc" in
    *"statically linked"*|*"static-pie linked"*) ;;
    *) die "not a static binary: $desc" ;;
esac
log "binary: $desc"
log "size: $(stat -c %s "$stripped") bytes stripped ($TARGET, route $ROUTE, panic=$PANIC)"
printf '%s\n' "$stripped"
