//! What other Tailscale client implementations need from the server, at
//! the protocol level (the real clients are in tests/e2e_clients.rs):
//! - `POST /derp` (tailscale-rs upgrades with POST; Go's server accepts
//!   any method) on the plain and the TLS listener;
//! - a later Hostinfo that leaves out what the first one said (tailscale-rs
//!   sends its version only at registration; Go clients since 1.66 leave
//!   out an unchanged NetInfo) keeps those fields, while an absent
//!   `RoutableIPs` still clears the routes;
//! - the DERP map offers the embedded region only when its TLS listener is
//!   bound, on the port it is bound to.

mod common;
mod derp_tls;

use async_io::Async;
use common::*;
use std::net::{SocketAddr, TcpListener, TcpStream};
use tinyscale::client::Node;

fn tls_addr(ts: &TestServer) -> SocketAddr {
    let port = *ts.server.tls_port.get().expect("TLS listener bound");
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn pin_hex(ts: &TestServer) -> String {
    let pin = ts.server.tls.as_ref().unwrap().pin.clone().unwrap();
    pin.trim_start_matches("sha256-raw:").to_string()
}

#[test]
fn post_derp_upgrades_on_both_listeners() {
    let ts = start("postderp");
    let key = ts.key("pat", true, false, &[]);
    block_on_timeout(30, async {
        let x = Node::new("x");
        let y = Node::new("y");
        let _jx = join(&ts, &x, &key).await;
        let _jy = join(&ts, &y, &key).await;
        // Plain listener, POST.
        let tcp = Async::<TcpStream>::connect(ts.addr).await.unwrap();
        let mut cx = derp_tls::derp_upgrade(tcp, "POST", ts.addr, x.node_private)
            .await
            .expect("POST /derp on the plain listener");
        // TLS listener, POST, certificate pinned as the DERP map says.
        let tls = tls_addr(&ts);
        let name = rustls_pki_types_name(tls);
        let cfg = derp_tls::pinned_config(&pin_hex(&ts)).unwrap();
        let mut cy = derp_tls::derp_over_tls_with(cfg, name, "POST", tls, y.node_private)
            .await
            .expect("POST /derp on the TLS listener");
        // Both are real relay connections: a packet crosses between them.
        cx.send_packet(&cy.public_key(), b"over POST")
            .await
            .unwrap();
        let (from, got) = cy.recv_packet().await.unwrap();
        assert_eq!((from, got.as_slice()), (cx.public_key(), &b"over POST"[..]));
        // Without the Upgrade header POST /derp is refused, not relayed.
        let mut raw = std::net::TcpStream::connect(ts.addr).unwrap();
        use std::io::{Read, Write};
        raw.write_all(b"POST /derp HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 12];
        raw.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 426");
    });
}

fn rustls_pki_types_name(a: SocketAddr) -> futures_rustls::rustls::pki_types::ServerName<'static> {
    futures_rustls::rustls::pki_types::ServerName::IpAddress(a.ip().into())
}

fn stored_hostinfo(ts: &TestServer, hostname: &str) -> serde_json::Value {
    let st = ts.server.state();
    let n = st
        .nodes
        .values()
        .find(|n| n.hostname == hostname)
        .expect("node stored");
    serde_json::from_str(&n.hostinfo).unwrap()
}

/// A Hostinfo as a client would send it, decoded as the server does.
fn hostinfo(v: serde_json::Value) -> tinyscale::tailcfg::Hostinfo {
    serde_json::from_value(v).unwrap()
}

#[test]
fn a_sparse_later_hostinfo_keeps_build_fields_and_netinfo() {
    let ts = start("hostinfo");
    let key = ts.key("hal", true, false, &[]);
    block_on_timeout(30, async {
        let n = Node::new("sparse");
        let server_pub = tinyscale::client::fetch_key(ts.addr).await.unwrap();
        let mut conn = tinyscale::client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let mut rr = n.register_request(Some(&key));
        rr.hostinfo = Some(hostinfo(serde_json::json!({
            "Hostname": "sparse", "IPNVersion": "rs/0.6.1", "OS": "linux",
            "RoutableIPs": ["10.9.0.0/24"], "NetInfo": {"PreferredDERP": 999},
        })));
        assert_eq!(conn.register(&rr).await.unwrap().error, "");
        // A map request as tailscale-rs sends it: Hostinfo nearly empty.
        let mut mr = n.map_request(false, &[]);
        mr.hostinfo = Some(hostinfo(serde_json::json!(
            {"Hostname": "sparse", "DeviceModel": "f1", "FrontendLogID": "f1"}
        )));
        let mut s = conn.map(&mr).await.unwrap();
        while s.next().await.unwrap().is_some() {}
        let h = stored_hostinfo(&ts, "sparse");
        assert_eq!(h["IPNVersion"], "rs/0.6.1", "version kept: {h}");
        assert_eq!(h["OS"], "linux");
        assert_eq!(h["NetInfo"]["PreferredDERP"], 999, "NetInfo kept: {h}");
        assert_eq!(h["DeviceModel"], "f1", "new fields taken: {h}");
        // Fields nobody here uses are not kept at all (bounded Hostinfo).
        assert!(h.get("FrontendLogID").is_none(), "unused field stored: {h}");
        // Routes are not kept: a Go client omits an empty RoutableIPs.
        assert!(h.get("RoutableIPs").is_none(), "routes cleared: {h}");
        // A later value replaces a kept one.
        mr.hostinfo = Some(hostinfo(
            serde_json::json!({"Hostname": "sparse", "IPNVersion": "rs/0.7.0",
            "NetInfo": {"PreferredDERP": 5}}),
        ));
        let mut s = conn.map(&mr).await.unwrap();
        while s.next().await.unwrap().is_some() {}
        let h = stored_hostinfo(&ts, "sparse");
        assert_eq!(h["IPNVersion"], "rs/0.7.0");
        assert_eq!(h["NetInfo"]["PreferredDERP"], 5);
    });
}

#[test]
fn the_derp_map_offers_the_embedded_region_only_when_served() {
    // Bound: the region is there, on the port actually bound, pinned.
    let ts = start("derpserved");
    let key = ts.key("dee", true, false, &[]);
    let port = tls_addr(&ts).port();
    let nm = block_on_timeout(30, async { join(&ts, &Node::new("m"), &key).await.2 });
    let node = &nm.derp_map["Regions"]["999"]["Nodes"][0];
    assert_eq!(node["DERPPort"], port as i64, "{}", nm.derp_map);
    assert_eq!(
        node["CertName"].as_str().unwrap(),
        ts.server.tls.as_ref().unwrap().pin.as_deref().unwrap()
    );
    // The TLS port is taken (as :443 is for a non-root user): no region.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempdir("derpunserved");
    let mut cfg = config(&dir);
    cfg.tls_listen_addr = Some(taken.local_addr().unwrap());
    let ts2 = start_with(cfg, dir);
    assert!(ts2.server.tls_port.get().is_none());
    let key2 = ts2.key("dee", true, false, &[]);
    let nm2 = block_on_timeout(30, async { join(&ts2, &Node::new("m"), &key2).await.2 });
    let regions = nm2.derp_map["Regions"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(regions.is_empty(), "no embedded region: {}", nm2.derp_map);
}
