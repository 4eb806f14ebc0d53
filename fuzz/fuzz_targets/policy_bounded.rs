//! Fuzz policy compilation under the server's bound (`compile_bounded`):
//! the first input byte sizes the tailnet (1-64 nodes), the rest is the
//! policy. Never a panic; a refusal names the rule that is too large; and
//! when the bounded compile succeeds it gives exactly what the unbounded
//! one gives (the budget only counts, it never changes a result).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, Ipv6Addr};
use tinyscale::policy::{self, TopoNode, TopoUser, Topology};

fn topology(n: u64) -> Topology {
    let users = vec![
        TopoUser { id: 1, name: "alice".into(), email: Some("alice@example.com".into()) },
        TopoUser { id: 2, name: "bob".into(), email: None },
    ];
    let nodes = (1..=n)
        .map(|id| {
            let tags: Vec<String> = match id % 4 {
                0 => vec!["tag:server".into()],
                3 => vec!["tag:router".into()],
                _ => vec![],
            };
            let routes: Vec<ipnet::IpNet> = match id % 8 {
                3 => vec![format!("10.{id}.0.0/24").parse().unwrap()],
                7 => vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
                _ => vec![],
            };
            TopoNode {
                id,
                name: format!("n{id}"),
                user_id: tags.is_empty().then_some(1 + id % 2),
                tags,
                ipv4: Some(Ipv4Addr::new(100, 64, (id >> 8) as u8, id as u8)),
                ipv6: Some(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, id as u16)),
                advertised_routes: routes.clone(),
                approved_routes: routes,
            }
        })
        .collect();
    Topology { users, nodes, settings: Default::default() }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let Ok(p) = policy::Policy::parse(text) else { return };
    let topo = topology(1 + u64::from(n % 64));
    match policy::compile_bounded(&p, &topo) {
        Ok(c) => {
            let full = policy::compile(&p, &topo);
            for node in &topo.nodes {
                let id = node.id;
                assert_eq!(c.packet_filter(id), full.packet_filter(id));
                assert_eq!(c.peers(id), full.peers(id));
                let _ = serde_json::to_string(&c.packet_filter(id)).unwrap();
            }
        }
        Err(e) => assert!(e.to_string().contains("is too large"), "{e}"),
    }
});
