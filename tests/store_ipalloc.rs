//! IP allocation at scale: 10,000 existing nodes, allocations stay unique,
//! inside the prefixes, off the reserved ranges, and cheap.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;
use tinyscale::state::{ipalloc, Node, State, Store};

fn node(id: u64, v4: Ipv4Addr, v6: Ipv6Addr) -> Node {
    Node {
        id,
        user: 1,
        ipv4: Some(v4),
        ipv6: Some(v6),
        given_name: format!("n{id}"),
        ..Default::default()
    }
}

#[test]
fn ten_thousand_nodes() {
    let dir = std::env::temp_dir().join(format!("tinyscale-store-ipalloc-{}", std::process::id()));
    let mut st = State::load(Store::open(&dir.join("db.redb")).unwrap()).unwrap();
    let v4net = "100.64.0.0/10".parse().unwrap();
    let v6net = "fd7a:115c:a1e0::/48".parse().unwrap();
    // Memory only: the allocator reads State::nodes, nothing else. The
    // first 9,990 nodes get what sequential allocation hands out (checked
    // below for the last ones), without paying 9,990 allocations in a debug
    // build.
    let mut a4 = u32::from(Ipv4Addr::new(100, 64, 0, 0));
    let base6 = u128::from("fd7a:115c:a1e0::".parse::<Ipv6Addr>().unwrap());
    let mut a6 = base6;
    for i in 1..=9_990u64 {
        a4 += 1;
        a6 += 1;
        if a6 == base6 + 0x53 {
            a6 += 1;
        }
        st.nodes.insert(i, node(i, a4.into(), a6.into()));
    }
    let t = Instant::now();
    for i in 9_991..=10_000u64 {
        let (a, b) = ipalloc::allocate(&st, v4net, v6net).unwrap();
        st.nodes.insert(i, node(i, a, b));
    }
    let per = t.elapsed() / 10;
    assert!(per.as_millis() < 50, "{per:?} per allocation at ~10k nodes");
    let v4: HashSet<_> = st.nodes.values().map(|n| n.ipv4.unwrap()).collect();
    let v6: HashSet<_> = st.nodes.values().map(|n| n.ipv6.unwrap()).collect();
    assert_eq!((v4.len(), v6.len()), (10_000, 10_000));
    let quad100: ipnet::Ipv4Net = "100.100.100.0/24".parse().unwrap();
    let chromeos: ipnet::Ipv4Net = "100.115.92.0/23".parse().unwrap();
    assert!(v4
        .iter()
        .all(|a| v4net.contains(a) && !quad100.contains(a) && !chromeos.contains(a)));
    assert!(
        v4.contains(&"100.64.39.16".parse().unwrap()),
        "sequential from .0.1"
    );
    assert!(!v4.contains(&"100.64.0.0".parse().unwrap()));
    assert!(!v6.contains(&"fd7a:115c:a1e0::53".parse().unwrap()));
    assert!(v6.iter().all(|a| v6net.contains(a)));
    // A freed address is not handed out again at once.
    let freed = st.nodes.remove(&5).unwrap().ipv4.unwrap();
    let (next, _) = ipalloc::allocate(&st, v4net, v6net).unwrap();
    assert_ne!(next, freed);
    drop(st);
    let _ = std::fs::remove_dir_all(dir);
}
