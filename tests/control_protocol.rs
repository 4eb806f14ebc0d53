//! Integration tests with the protocol-level client against an in-process
//! server on loopback: register, map stream, deltas, lite updates, restart.

mod common;

use common::*;
use std::time::Duration;
use tinyscale::client::{self, netmap::NetMap, Node};

#[test]
fn two_nodes_see_each_other_and_updates() {
    let ts = start("two");
    let key = ts.key("alice", true, false, &[]);
    block_on_timeout(30, async {
        let a = Node::new("alpha");
        let b = Node::new("beta");
        let (_ca, mut sa, mut nma) = join_with(&ts, &a, &key, &[], &["198.51.100.1:41641"]).await;
        // First map: self node with addresses, authorized, DERP map, filter.
        let me = &nma.self_node;
        assert_eq!(me["MachineAuthorized"], true);
        assert_eq!(me["Name"], "alpha.tail.test.");
        assert!(me["Addresses"][0].as_str().unwrap().starts_with("100.64."));
        assert!(nma.derp_map["Regions"]
            .as_object()
            .is_some_and(|r| !r.is_empty()));
        assert_eq!(nma.packet_filter[0]["SrcIPs"][0], "*");
        assert!(nma.peers.is_empty());

        let (mut cb, mut sb, mut nmb) =
            join_with(&ts, &b, &key, &[], &["198.51.100.1:41641"]).await;
        assert_eq!(nmb.peers.len(), 1);
        let pa = nmb.peer_by_name("alpha").unwrap();
        assert_eq!(pa["DiscoKey"], a.disco_key().to_string());
        assert!(pa["HomeDERP"].as_i64().unwrap() > 0);
        assert_eq!(pa["Online"], true);
        // a learns about b as a delta.
        until(&mut sa, &mut nma, |n| n.peer_by_name("beta").is_some()).await;
        assert_eq!(
            nma.peer_by_name("beta").unwrap()["Key"],
            b.node_key().to_string()
        );

        // Lite update from b: new endpoints reach a as a patch.
        let lite = b.map_request(false, &["203.0.113.9:41641"]);
        let (status, _) = cb
            .post_json("/machine/map", serde_json::to_vec(&lite).unwrap())
            .await
            .unwrap();
        assert_eq!(status, 200);
        until(&mut sa, &mut nma, |n| {
            n.peer_by_name("beta")
                .is_some_and(|p| p["Endpoints"][0] == "203.0.113.9:41641")
        })
        .await;

        // Deleting b removes it from a's map and ends b's stream.
        let bid = nmb.self_node["ID"].as_u64().unwrap();
        ts.server.state().delete_node(bid).unwrap();
        ts.server.hub.disconnect(bid);
        ts.server
            .hub
            .notify(tinyscale::control::Change::NodeRemoved(bid));
        until(&mut sa, &mut nma, |n| n.peers.is_empty()).await;
        while let Some(m) = sb.next().await.unwrap() {
            nmb.apply(&m);
        }
    });
}

#[test]
fn bad_keys_get_clear_errors() {
    let ts = start("badkeys");
    let once = ts.key("bob", false, false, &[]);
    block_on_timeout(30, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let n = Node::new("one");
        let mut c = client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let r = c
            .register(&n.register_request(Some("hskey-auth-000000000000-nope")))
            .await
            .unwrap();
        assert_eq!(r.error, "invalid key");
        let r = c.register(&n.register_request(Some(&once))).await.unwrap();
        assert_eq!(r.error, "");
        // Single-use key, second machine: spent.
        let n2 = Node::new("two");
        let mut c2 = client::connect(ts.addr, &server_pub, &n2.machine_private)
            .await
            .unwrap();
        let r = c2
            .register(&n2.register_request(Some(&once)))
            .await
            .unwrap();
        assert_eq!(r.error, "authkey already used");
        // ...but the first node restarting with the spent key is fine.
        let r = c.register(&n.register_request(Some(&once))).await.unwrap();
        assert_eq!(r.error, "");
        // A map poll for a node key this machine does not own: 404.
        let err = c2.map(&n.map_request(true, &[])).await.err().unwrap();
        assert!(err.to_string().contains("404"), "{err}");
        // Wrong server key: the handshake fails for that client alone.
        let wrong = tinyscale::keys::random32();
        let e = client::connect(ts.addr, &wrong, &n.machine_private)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("server error"), "{e}");
        // Too-old client version: a Noise error frame that says why.
        let e = client::connect_version(ts.addr, &server_pub, &n.machine_private, 100)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("unsupported client version"), "{e}");
        // The server still serves.
        assert_eq!(client::fetch_key(ts.addr).await.unwrap(), server_pub);
    });
}

#[test]
fn restart_keeps_identity_and_ips() {
    let dir = tempdir("restart");
    let n = Node::new("keeper");
    let (ip1, id1, key_pub);
    {
        let ts = start_with(config(&dir), dir.clone());
        let key = ts.key("carol", false, false, &[]);
        let (c, s, nm) =
            block_on_timeout(30, join_with(&ts, &n, &key, &[], &["198.51.100.1:41641"]));
        ip1 = nm.self_node["Addresses"].clone();
        id1 = nm.self_node["ID"].clone();
        key_pub = ts.server.noise_public;
        drop((c, s));
        ts.stop(); // keeps the directory, closes the database
    }
    // A second server process on the same data directory.
    let ts = start_with(config(&dir), dir.clone());
    assert_eq!(ts.server.noise_public, key_pub, "noise key persisted");
    block_on_timeout(30, async {
        let mut c = client::connect(ts.addr, &key_pub, &n.machine_private)
            .await
            .unwrap();
        let r = c.register(&n.register_request(None)).await.unwrap();
        assert_eq!(r.error, "");
        let mut s = c.map(&n.map_request(true, &[])).await.unwrap();
        let mut nm = NetMap::default();
        nm.apply(&s.next().await.unwrap().unwrap());
        assert_eq!(nm.self_node["Addresses"], ip1);
        assert_eq!(nm.self_node["ID"], id1);
    });
}

#[test]
fn garbage_on_the_front_door_is_refused() {
    use std::io::{Read, Write};
    let ts = start("garbage");
    for req in [
        &b"\x16\x03\x01garbage\r\n\r\n"[..],
        b"POST /ts2021 HTTP/1.1\r\nUpgrade: tailscale-control-protocol\r\nX-Tailscale-Handshake: !!!\r\n\r\n",
        b"POST /ts2021 HTTP/1.1\r\nUpgrade: tailscale-control-protocol\r\nX-Tailscale-Handshake: AAAA\r\n\r\n",
        b"GET /key HTTP/1.1\r\n\r\n",
    ] {
        let mut s = std::net::TcpStream::connect(ts.addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        s.write_all(req).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 400"), "{text}");
    }
    block_on_timeout(10, async { client::fetch_key(ts.addr).await.unwrap() });
}

#[test]
fn logout_deletes_ephemeral_and_expires_others() {
    let ts = start("logout");
    let key = ts.key("alice", true, false, &[]);
    let ekey = ts.key("alice", true, true, &[]);
    block_on_timeout(30, async {
        let watcher = Node::new("watcher");
        let (_cw, mut sw, mut nmw) = join(&ts, &watcher, &key).await;

        // An ephemeral node logs out: deleted; the peer gets it removed.
        let eph = Node::new("eph");
        let (mut ce, _se, nme) = join(&ts, &eph, &ekey).await;
        let eid = nme.self_node["ID"].as_u64().unwrap();
        until(&mut sw, &mut nmw, |n| n.peers.contains_key(&eid)).await;
        let r = ce.logout(&eph).await.unwrap();
        assert_eq!(r.error, "");
        assert!(r.node_key_expired);
        until(&mut sw, &mut nmw, |n| !n.peers.contains_key(&eid)).await;
        assert!(!ts.server.state().nodes.contains_key(&eid));

        // A normal node logs out: kept, its key expired; the peer sees it Expired.
        let lap = Node::new("laptop");
        let (mut cl, _sl, nml) = join(&ts, &lap, &key).await;
        let lid = nml.self_node["ID"].as_u64().unwrap();
        until(&mut sw, &mut nmw, |n| n.peers.contains_key(&lid)).await;
        let r = cl.logout(&lap).await.unwrap();
        assert!(r.node_key_expired);
        until(&mut sw, &mut nmw, |n| {
            n.peers.get(&lid).is_some_and(|p| p["Expired"] == true)
        })
        .await;
        let t = tinyscale::state::now();
        assert!(ts.server.state().nodes[&lid].is_expired(t));
        // Told once: the expiry watcher (a 5 s tick) does not announce the
        // same expiry again.
        let later = messages_within(&mut sw, &mut nmw, Duration::from_secs(6)).await;
        let repeats = full_updates_of(&later, lid);
        assert_eq!(repeats, 0, "expiry announced again: {later:?}");
        // Without a key it cannot come back by itself.
        let again = cl.register(&lap.register_request(None)).await.unwrap();
        assert!(again.node_key_expired && !again.machine_authorized);

        // `nodes expire` (the admin API): the peer sees it Expired, once.
        let desk = Node::new("desk");
        let (_cd, _sd, nmd) = join(&ts, &desk, &key).await;
        let did = nmd.self_node["ID"].as_u64().unwrap();
        until(&mut sw, &mut nmw, |n| n.peers.contains_key(&did)).await;
        let r = tinyscale::api::handle(
            &ts.server,
            "POST",
            &format!("/api/v1/node/{did}/expire"),
            b"{}",
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let later = messages_within(&mut sw, &mut nmw, Duration::from_secs(6)).await;
        assert!(nmw.peers[&did]["Expired"] == true, "{later:?}");
        let told = full_updates_of(&later, did);
        assert_eq!(told, 1, "expiry told {told} times: {later:?}");
    });
}

/// How many of `msgs` carry node `id` in full (PeersChanged).
fn full_updates_of(msgs: &[serde_json::Value], id: u64) -> usize {
    msgs.iter()
        .filter(|m| {
            m["PeersChanged"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["ID"] == id))
        })
        .count()
}

#[test]
fn ephemeral_timeout_shorter_than_the_offline_grace() {
    // The inactivity timeout is honoured as configured even when it is
    // shorter than the 10 s grace after which peers are told a node is
    // offline (it used to act as max(grace, timeout)).
    let dir = tempdir("eph-short");
    let mut cfg = config(&dir);
    cfg.ephemeral_inactivity_timeout = Duration::from_secs(1);
    let ts = start_with(cfg, dir);
    let key = ts.key("alice", true, true, &[]);
    let eid = block_on_timeout(30, async {
        let (c, s, nm) = join(&ts, &Node::new("eph"), &key).await;
        drop((c, s));
        nm.self_node["ID"].as_u64().unwrap()
    });
    let t = std::time::Instant::now();
    while ts.server.state().nodes.contains_key(&eid) && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!("ephemeral node deleted {secs:.2} s after its connection closed (timeout 1 s)");
    assert!(!ts.server.state().nodes.contains_key(&eid), "never deleted");
    assert!(
        secs < 9.0,
        "deleted after {secs:.1} s: the 10 s grace, not the 1 s timeout"
    );
}

/// A node whose key has expired (here by `nodes expire`) is authorised for
/// nothing on /machine/map, as on register: what it reports is not stored
/// (endpoints, Hostinfo, routes), and a map request gets its own node (with
/// the past KeyExpiry that makes a real client ask for a login), no peers
/// and a packet filter that admits nothing, then the end of the body.
#[test]
fn expired_node_gets_no_peers_and_stores_nothing() {
    let ts = start("expired-map");
    let key = ts.key("alice", true, false, &[]);
    block_on_timeout(30, async {
        let watcher = Node::new("watcher");
        let (_cw, _sw, _nmw) = join(&ts, &watcher, &key).await;
        let desk = Node::new("desk");
        let (mut cd, _sd, nmd) = join(&ts, &desk, &key).await;
        let did = nmd.self_node["ID"].as_u64().unwrap();
        assert_eq!(nmd.peers.len(), 1, "before expiry desk sees the watcher");
        let r = tinyscale::api::handle(
            &ts.server,
            "POST",
            &format!("/api/v1/node/{did}/expire"),
            b"{}",
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let before = ts.server.state().nodes[&did].clone();

        // A lite update with new endpoints and a route: accepted, not stored.
        let mut lite = desk.map_request(false, &["203.0.113.77:41641"]);
        lite.hostinfo = Some(desk.hostinfo(&["10.99.0.0/24"]));
        let (status, _) = cd
            .post_json("/machine/map", serde_json::to_vec(&lite).unwrap())
            .await
            .unwrap();
        assert_eq!(status, 200);
        let after = ts.server.state().nodes[&did].clone();
        assert_eq!(after.endpoints, before.endpoints, "endpoints stored");
        assert!(after.advertised_routes.is_empty(), "routes stored");

        // A streaming map: its own expired node, nothing else, then the end.
        let mut mr = desk.map_request(true, &["203.0.113.77:41641"]);
        mr.hostinfo = Some(desk.hostinfo(&["10.99.0.0/24"]));
        let mut stream = cd.map(&mr).await.unwrap();
        let first = stream.next().await.unwrap().expect("one message");
        let mut nm = NetMap::default();
        nm.apply(&first);
        assert_eq!(nm.self_node["ID"].as_u64(), Some(did));
        let expiry = nm.self_node["KeyExpiry"].as_str().unwrap().to_string();
        let exp = tinyscale::timefmt::parse_rfc3339(&expiry).unwrap();
        assert!(exp <= tinyscale::state::now(), "KeyExpiry {expiry}");
        assert!(
            nm.peers.is_empty(),
            "peers sent to an expired node: {first}"
        );
        assert_eq!(first["PacketFilters"]["base"], serde_json::json!([]));
        assert!(stream.next().await.unwrap().is_none(), "the body goes on");
        assert!(ts.server.state().nodes[&did].advertised_routes.is_empty());
    });
}
