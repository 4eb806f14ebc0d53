//! Fuzz HuJSON standardisation and policy parsing + compilation: any input
//! must give a value or a clear error, never a panic; standardising keeps
//! byte offsets (same length); whatever parses compiles against a small
//! tailnet and its per-node outputs serialise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, Ipv6Addr};
use tinyscale::policy::{self, TopoNode, TopoUser, Topology};

fn topology() -> Topology {
    let users = vec![
        TopoUser { id: 1, name: "alice".into(), email: Some("alice@example.com".into()) },
        TopoUser { id: 2, name: "bob".into(), email: None },
    ];
    let node = |id: u64, user: Option<u64>, tags: &[&str], routes: &[&str]| TopoNode {
        id,
        name: format!("n{id}"),
        user_id: user,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ipv4: Some(Ipv4Addr::new(100, 64, 0, id as u8)),
        ipv6: Some(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, id as u16)),
        advertised_routes: routes.iter().filter_map(|r| r.parse().ok()).collect(),
        approved_routes: routes.iter().filter_map(|r| r.parse().ok()).collect(),
    };
    Topology {
        users,
        nodes: vec![
            node(1, Some(1), &[], &[]),
            node(2, Some(2), &[], &["10.0.0.0/24"]),
            node(3, None, &["tag:server"], &["0.0.0.0/0", "::/0"]),
        ],
        settings: Default::default(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(std) = policy::hujson::standardize(text) {
        assert_eq!(std.len(), text.len(), "standardising must keep byte offsets");
    }
    let _ = policy::hujson::parse(text);
    if let Ok(p) = policy::Policy::parse(text) {
        let topo = topology();
        let _ = policy::check_tests(&p, &topo);
        let c = policy::compile(&p, &topo);
        for id in 1..=3 {
            let _ = serde_json::to_string(&c.packet_filter(id)).unwrap();
            let _ = c.peers(id);
            let _ = c.ssh_policy(id);
            let _ = c.cap_map(id);
            for peer in 1..=3 {
                let _ = c.peer_allowed_ips(id, peer);
            }
        }
        let route = "10.0.0.0/24".parse().unwrap();
        let _ = policy::auto_approves(&p, &topo, 2, &route);
    }
});
