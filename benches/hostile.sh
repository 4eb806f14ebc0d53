#!/usr/bin/env bash
# benches/hostile.sh — each attack of tests/hostile.rs on a live release server (a child process
# started with RLIMIT_NOFILE 1024 soft and hard), with its peak RSS (VmHWM, reset before each
# attack) and the time a legitimate client from another source address (127.0.0.2) takes from
# TCP connect to its first map while the attack runs. Prints one table; ~1.5 minutes.
# The test asserts the bounds (server alive, RSS <= 64 MiB, deadlines); this prints the figures.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
nice -n 10 cargo test --release --test hostile -- --nocapture 2>&1 | grep -E "^hostile:|test result" | sed 's/^hostile: //'
