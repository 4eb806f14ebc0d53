//! Full maps are built and sent under a bounded number of server-wide
//! slots; a client that stops reading gives its slot up after a while, so
//! stalled clients cannot hold every other node's first map back.

mod common;

use common::*;
use std::time::Instant;
use tinyscale::client::{self, Node};
use tinyscale::control::map::FULL_MAPS_IN_FLIGHT;

#[test]
fn stalled_readers_do_not_hold_back_first_maps() {
    let ts = start("slots");
    let key = ts.key("alice", true, false, &[]);
    block_on_timeout(180, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        // 200 registered nodes make a full map of well over 100 KB: more
        // than the 64 KiB HTTP/2 connection window a client that never
        // reads leaves the server, so its send blocks while holding a slot.
        for i in 0..200 {
            register(&ts, &server_pub, &format!("n{i}"), &key).await;
        }
        // More stalled readers than there are slots.
        let mut stalled = vec![];
        for i in 0..=FULL_MAPS_IN_FLIGHT {
            let (mut c, n) = register(&ts, &server_pub, &format!("stalled{i}"), &key).await;
            let s = c.map(&n.map_request(true, &[])).await.unwrap();
            stalled.push((c, s));
        }
        let t = Instant::now();
        let (_c, _s, nm) = join(&ts, &Node::new("reader"), &key).await;
        assert!(nm.peers.len() > 200, "{} peers", nm.peers.len());
        eprintln!(
            "a reading client got its first map ({} peers) {:.1} s after {} stalled readers took every slot",
            nm.peers.len(),
            t.elapsed().as_secs_f64(),
            stalled.len()
        );
        // The stalled streams were not given up on: one that starts
        // reading gets its whole map.
        let (_c0, mut s0) = stalled.pop().unwrap();
        let first = s0.next().await.unwrap().expect("first map");
        let peers = first["Peers"].as_array().map_or(0, |p| p.len());
        assert!(peers > 200, "{peers} peers");
    });
}

/// A new node registered with `key` on a connection of its own.
async fn register(
    ts: &TestServer,
    server_pub: &[u8; 32],
    name: &str,
    key: &str,
) -> (client::Conn, Node) {
    let n = Node::new(name);
    let mut c = client::connect(ts.addr, server_pub, &n.machine_private)
        .await
        .unwrap();
    let r = c.register(&n.register_request(Some(key))).await.unwrap();
    assert_eq!(r.error, "");
    (c, n)
}
