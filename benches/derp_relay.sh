#!/usr/bin/env bash
# benches/derp_relay.sh — relay throughput (MB/s, packets/s) between two synthetic DERP clients on
# loopback, and RSS per connected DERP client. A benchmark, not a test: it prints figures and
# asserts nothing about speed. The measurements live as #[ignore]d functions in tests/derp_relay.rs
# so they share that file's synthetic-client code; this script is the command that runs them,
# optimised, one at a time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo test --release --test derp_relay -- --ignored --nocapture --test-threads=1 relay_throughput memory_per_connection
