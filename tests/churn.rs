//! A node looping Hostinfo changes (lite updates) costs its peers at most
//! one fan-out per node per window, and the last state still arrives.

mod common;

use common::*;
use std::time::Duration;
use tinyscale::client::Node;

#[test]
fn hostinfo_churn_reaches_peers_coalesced_and_complete() {
    let ts = start("churn");
    let k = ts.key("alice", true, false, &[]);
    block_on_timeout(60, async {
        let (a, b) = (Node::new("looper"), Node::new("watcher"));
        let (mut ca, _sa, _) = join(&ts, &a, &k).await;
        let (_cb, mut sb, mut nmb) = join(&ts, &b, &k).await;
        until(&mut sb, &mut nmb, |n| n.peer_by_name("looper").is_some()).await;
        // Let the join's own notices pass.
        messages_within(&mut sb, &mut nmb, Duration::from_millis(500)).await;
        const N: usize = 40;
        for i in 0..N {
            let mut mr = a.map_request(false, &[]);
            let mut h = a.hostinfo(&[]);
            h.os_version = format!("churn-{i}");
            mr.hostinfo = Some(h);
            let (status, _) = ca
                .post_json("/machine/map", serde_json::to_vec(&mr).unwrap())
                .await
                .unwrap();
            assert_eq!(status, 200);
        }
        // The window is 2 s: everything has arrived 3 s after the loop.
        let msgs = messages_within(&mut sb, &mut nmb, Duration::from_secs(3)).await;
        let carrying = msgs
            .iter()
            .filter(|m| m.get("PeersChanged").is_some_and(|p| !p.is_null()))
            .count();
        eprintln!("{N} Hostinfo changes reached the peer in {carrying} message(s)");
        assert!(carrying >= 1, "the peer never heard of the change");
        assert!(
            carrying <= 3,
            "{carrying} fan-outs for {N} changes in ~1 window"
        );
        let last = format!("churn-{}", N - 1);
        let seen = nmb.peer_by_name("looper").unwrap()["Hostinfo"]["OSVersion"].clone();
        assert_eq!(
            seen,
            serde_json::json!(last),
            "the latest Hostinfo must arrive"
        );
    });
}
