//! Ephemeral nodes without a map stream are swept: those that registered
//! and never streamed, and those whose clients never came back after the
//! server restarted (no stream ended in the new process, so no timer).

mod common;

use common::*;
use std::time::{Duration, Instant};
use tinyscale::client::Node;

/// Registers without ever opening a map stream; returns the node's id.
async fn register_only(ts: &TestServer, node: &Node, key: &str) -> u64 {
    register_with(ts, node, key, &[]).await;
    let st = ts.server.state();
    st.node_by_machine_key(&node.machine_key().0)
        .map(|n| n.id)
        .expect("registered")
}

/// Waits (bounded) until node `id` is gone; returns how long it took.
fn gone_within(ts: &TestServer, id: u64, deadline: Duration) -> Duration {
    let t0 = Instant::now();
    while ts.server.state().nodes.contains_key(&id) {
        assert!(
            t0.elapsed() < deadline,
            "node {id} still there after {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

#[test]
fn ephemeral_node_that_never_streamed_is_swept() {
    let dir = tempdir("sweep-never");
    let mut cfg = config(&dir);
    cfg.ephemeral_inactivity_timeout = Duration::from_secs(1);
    let ts = start_with(cfg, dir);
    let eph = ts.key("alice", true, true, &[]);
    let keep = ts.key("alice", true, false, &[]);
    let (e, k) = block_on_timeout(30, async {
        (
            register_only(&ts, &Node::new("eph"), &eph).await,
            register_only(&ts, &Node::new("keep"), &keep).await,
        )
    });
    let took = gone_within(&ts, e, Duration::from_secs(30));
    eprintln!("never-streamed ephemeral node swept after {took:?} (timeout 1 s)");
    assert!(
        ts.server.state().nodes.contains_key(&k),
        "a non-ephemeral node was swept"
    );
}

#[test]
fn ephemeral_node_whose_client_never_returns_after_a_restart_is_swept() {
    let dir = tempdir("sweep-restart");
    let mut cfg = config(&dir);
    cfg.ephemeral_inactivity_timeout = Duration::from_secs(2);
    let ts = start_with(cfg.clone(), dir.clone());
    let eph = ts.key("alice", true, true, &[]);
    let keep = ts.key("alice", true, false, &[]);
    let (e, k) = block_on_timeout(30, async {
        let (_c1, _s1, _) = join(&ts, &Node::new("eph"), &eph).await;
        let (_c2, _s2, _) = join(&ts, &Node::new("keep"), &keep).await;
        let st = ts.server.state();
        let id = |name: &str| st.nodes.values().find(|n| n.hostname == name).unwrap().id;
        (id("eph"), id("keep"))
    });
    // The streams were open when the server went away.
    ts.stop();
    let ts = start_with(cfg, dir);
    assert!(
        ts.server.state().nodes.contains_key(&e),
        "the node must get the timeout to come back after a restart"
    );
    let took = gone_within(&ts, e, Duration::from_secs(30));
    eprintln!("ephemeral node swept {took:?} after the restart (timeout 2 s)");
    assert!(ts.server.state().nodes.contains_key(&k));
}
