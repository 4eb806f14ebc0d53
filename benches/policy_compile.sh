#!/usr/bin/env bash
# benches/policy_compile.sh — policy compile time for 1000 nodes × 100 rules, with and without
# autogroup:self, full and after one change. The engine recompiles the whole policy on a change;
# the server coalesces recompiles (at least twice the last compile's duration apart) and compiles
# outside its locks, so a burst of changes costs one compile, not one per change.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo test --release --test policy_bench -- --ignored --nocapture 2>&1 | grep -E "^policy compile|test result"
