//! A REAL Tailscale client joins while the server is under the slow-request attack of
//! tests/hostile.rs: 2,000 HTTP/1 requests from the server's own bridge address, each announcing
//! a 60,000-byte body and sending one byte of it per second for as long as the client takes.
//! The client (Go tsnet in Caddy, tests/realclient) joins from its namespace (198.18.x.11, another
//! source address, so the per-source cap on unidentified connections does not touch it): it gets
//! its tailnet IPs, `nodes list` shows it, and the server is still running when the attack ends.
//!
//! Needs root, `ip netns`, curl and python3, like every real-client test (tests/realclient_common):
//! without them it prints why and passes, except under CI (`CI=true`), where it fails.

#[macro_use]
mod realclient_common;
mod attacks;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use realclient_common::*;

#[test]
fn real_client_joins_during_slow_request_attack() {
    let Some(mut h) = Harness::begin("hostile e2e", "tsh", &["a"]) else {
        return;
    };
    let port = h.free_port();
    h.start_server(ServerOpts {
        port,
        derp_enabled: true,
        ..ServerOpts::default()
    });
    let control = h.control_url();
    h.cli(&["users", "create", "alice"]);
    let key = h.preauth_key("alice", &["--reusable"]);

    let addr: SocketAddr = format!("{}:{port}", h.host_ip()).parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let attacker = std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut socks = attacks::open_slow_requests(addr, 2000);
        let opened = (socks.len(), t0.elapsed());
        // Bounded: the join below has 90 s.
        while !st.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(120) {
            attacks::trickle(&mut socks);
            std::thread::sleep(Duration::from_secs(1));
        }
        opened
    });
    // Let the attack reach full strength first.
    std::thread::sleep(Duration::from_secs(3));

    let t_join = Instant::now();
    h.start_node("a", &control, &key, 41641, &[]);
    let ips = wait_for(
        "a gets its tailnet IPs during the attack",
        Duration::from_secs(90),
        || self_ips(&h.node_log_path("a")),
    );
    let joined = t_join.elapsed();
    let nodes = h.nodes();
    let a = find_node(&nodes, "a", &ips[0])
        .unwrap_or_else(|| panic!("a ({ips:?}) not in nodes list: {}", describe_all(&nodes)));
    stop.store(true, Ordering::SeqCst);
    let (opened, took) = attacker.join().expect("attacker");
    say!(
        "slow-request attack: {opened} connections opened in {:.1} s; a joined in {:.2} s during it: {}",
        took.as_secs_f64(),
        joined.as_secs_f64(),
        describe(a)
    );
    let server = h.server.as_mut().expect("server started");
    assert!(
        matches!(server.try_wait(), Ok(None)),
        "the server died during the attack; log:\n{}",
        tail(&h.server_log(), 30)
    );
    // The server refused the excess at accept and said so, rate-limited.
    let log = read_lossy(&h.server_log());
    let refused = log.matches("refused a connection from").count();
    say!("server log: {refused} refused-connection lines");
    assert!(
        (1..=20).contains(&refused),
        "refused connections are logged, at most one line per 10 s ({refused} lines)"
    );
}
