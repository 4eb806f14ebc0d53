//! The HTTP/2 phase's bounds (issue 10, items 1–2) attacked on a live
//! server: deadlines for the preface, the first request and for naming a
//! node, and the request-body budget. Timings are the constants in
//! src/http/h2srv.rs; the test only waits for them with hang-catching
//! margins, it does not measure them.

mod common;

use async_io::Timer;
use common::{block_on_timeout, start};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::time::{Duration, Instant};
use tinyscale::client::{self, Node, CAPVER};
use tinyscale::http::h2srv::{CONN_BODY_BUDGET, IDENTIFY_DEADLINE, MAX_BODY};
use tinyscale::wire::h2 as w;

/// Reads until the server closes; returns when it did (None: an error
/// other than a clean close, which also means closed).
async fn until_closed(mut s: impl futures_lite::AsyncRead + Unpin) -> Duration {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return t0.elapsed(),
            Ok(_) => {}
        }
    }
}

fn preface_and_settings() -> Vec<u8> {
    let mut out = w::PREFACE.to_vec();
    w::emit_settings(&[], &mut out);
    out
}

/// Three idle attackers that completed a Noise handshake (silent; preface
/// only; one request that names no node) are all disconnected, while a
/// real node that registered on its connection keeps it past the
/// identification deadline and can still use it.
#[test]
fn connections_that_never_identify_a_node_are_closed() {
    let ts = start("h2deadlines");
    let key = ts.key("alice", true, false, &[]);
    block_on_timeout(IDENTIFY_DEADLINE.as_secs() + 60, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let silent = client::connect_noise(ts.addr, &server_pub, &[1; 32], CAPVER)
            .await
            .unwrap();
        let mut preface_only = client::connect_noise(ts.addr, &server_pub, &[2; 32], CAPVER)
            .await
            .unwrap();
        preface_only
            .write_all(&preface_and_settings())
            .await
            .unwrap();
        preface_only.flush().await.unwrap();
        // A request that names no node: an unknown path.
        let mut conn = client::connect(ts.addr, &server_pub, &[3; 32])
            .await
            .unwrap();
        let (status, _) = conn
            .post_json("/nothing-here", b"{}".to_vec())
            .await
            .unwrap();
        assert_eq!(status, 404);

        let node = Node::new("legit");
        let (mut legit, _stream, _nm) = common::join(&ts, &node, &key).await;

        let a = smol::spawn(until_closed(silent));
        let b = smol::spawn(until_closed(preface_only));
        let (ta, tb) = (a.await, b.await);
        // The unidentified client's next request fails: its connection is gone.
        Timer::after(IDENTIFY_DEADLINE.saturating_sub(ta) + Duration::from_secs(2)).await;
        let gone = conn.post_json("/machine/register", b"{}".to_vec()).await;
        assert!(
            gone.is_err(),
            "unidentified connection still open: {gone:?}"
        );
        // The legit node's connection is past every deadline and still works.
        let lite = node.map_request(false, &["192.0.2.1:41641"]);
        let (status, _) = legit
            .post_json("/machine/map", serde_json::to_vec(&lite).unwrap())
            .await
            .unwrap();
        assert_eq!(status, 200);
        println!("silent closed after {ta:?}, preface-only after {tb:?}");
    });
}

/// A body over MAX_BODY gets 413 (not a crash, not a hang), the
/// connection and the server stay usable, and concurrent uploads on one
/// connection cannot buffer more than the connection's budget: whatever
/// the interleaving, every answer is 400 (not JSON) or 413, and at least
/// one is 413 when the bodies together exceed the budget.
#[test]
fn request_bodies_are_bounded() {
    let ts = start("h2budget");
    let key = ts.key("alice", true, false, &[]);
    block_on_timeout(120, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let mut conn = client::connect(ts.addr, &server_pub, &[7; 32])
            .await
            .unwrap();
        let (status, _) = conn
            .post_json("/machine/register", vec![b' '; MAX_BODY + 1])
            .await
            .unwrap();
        assert_eq!(status, 413);
        let (status, _) = conn
            .post_json("/machine/register", b"{}".to_vec())
            .await
            .unwrap();
        assert_eq!(status, 400, "connection unusable after a 413");

        let conn2 = client::connect(ts.addr, &server_pub, &[8; 32])
            .await
            .unwrap();
        let conn2 = std::sync::Arc::new(conn2);
        let each = CONN_BODY_BUDGET / 2 + 1;
        let mut tasks = Vec::new();
        for _ in 0..4 {
            // Four streams of one HTTP/2 connection, uploading at once.
            let c = conn2.clone();
            tasks.push(smol::spawn(async move {
                let (status, mut rx) = c.post("/machine/register", vec![b' '; each]).await?;
                let _ = rx.read_all(1 << 20).await;
                Ok::<u16, std::io::Error>(status)
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        assert!(
            statuses.iter().all(|s| *s == 400 || *s == 413),
            "{statuses:?}"
        );

        // The server still serves a real node.
        let node = Node::new("after");
        let (_c, _s, nm) = common::join(&ts, &node, &key).await;
        assert!(nm.self_node.is_object(), "no self node in the first map");
    });
}
