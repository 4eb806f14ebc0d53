#!/usr/bin/env bash
# cross/panic-probe.sh TARGET [unwind|abort] — build cross/panic-probe for TARGET with cross/build.sh's
# route and run it under qemu-user: with panic=unwind a panic in one smol task must be contained
# ("survived", exit 0); with panic=abort the process is expected to die (SIGABRT, exit 134).
# Used to back the panic-strategy choice in size-budget.md on every target, MIPS included.
set -euo pipefail
TARGET=${1:?usage: cross/panic-probe.sh TARGET [unwind|abort]}
PANIC=${2:-unwind}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case "$TARGET" in
    x86_64-*) q=() ;;
    aarch64-*) q=(qemu-aarch64-static) ;;
    armv7-*|arm-*) q=(qemu-arm-static) ;;
    mipsel-*) q=(qemu-mipsel-static) ;;
    mips-*) q=(qemu-mips-static) ;;
    *) echo "no qemu mapping for $TARGET" >&2; exit 2 ;;
esac
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HERE/panic-probe/target}/panic-$PANIC
bin=$(CARGO_PROFILE_RELEASE_PANIC=$PANIC TINYSCALE_CROSS_CRATE_DIR="$HERE/panic-probe" \
      TINYSCALE_CROSS_BIN=panic-probe "$HERE/build.sh" "$TARGET" | tail -n1)
set +e
# bounded: on mipsel an unwinding panic was seen to deadlock (size-budget.md, "Panic strategy")
out=$(timeout 60 ${q[@]+"${q[@]}"} "$bin" 2>&1); rc=$?
set -e
printf '%s\n' "$out" | sed "s/^/[panic-probe $TARGET $PANIC] /" >&2
if [ "$PANIC" = unwind ]; then
    [ "$rc" = 0 ] && printf '%s\n' "$out" | grep -q survived \
        && { echo "panic-probe $TARGET unwind: contained (exit 0)"; exit 0; }
    [ "$rc" = 124 ] && { echo "panic-probe $TARGET unwind: HUNG (timeout)"; exit 1; }
    echo "panic-probe $TARGET unwind: NOT contained (exit $rc)"; exit 1
else
    [ "$rc" = 124 ] && { echo "panic-probe $TARGET abort: HUNG (timeout)"; exit 1; }
    [ "$rc" != 0 ] && { echo "panic-probe $TARGET abort: process died as expected (exit $rc)"; exit 0; }
    echo "panic-probe $TARGET abort: process survived?! (exit $rc)"; exit 1
fi
