//! Unit tests for key compiler rules, on the example tailnet of
//! shared/protocol/policy.md §11 (IPs chosen non-adjacent).

use super::*;
use serde_json::{json, Value};

fn topo() -> Topology {
    let node =
        |id: u64, name: &str, user: Option<u64>, tags: &[&str], last: u8, routes: &[&str]| {
            let routes: Vec<IpNet> = routes.iter().map(|r| r.parse().unwrap()).collect();
            TopoNode {
                id,
                name: name.into(),
                user_id: user,
                tags: tags.iter().map(|t| t.to_string()).collect(),
                ipv4: Some(format!("100.64.0.{last}").parse().unwrap()),
                ipv6: Some(format!("fd7a:115c:a1e0::{last}").parse().unwrap()),
                advertised_routes: routes.clone(),
                approved_routes: routes,
            }
        };
    Topology {
        users: vec![
            TopoUser {
                id: 1,
                name: "alice".into(),
                email: Some("alice@example.com".into()),
            },
            TopoUser {
                id: 2,
                name: "bob".into(),
                email: None,
            },
        ],
        nodes: vec![
            node(1, "a1", Some(1), &[], 10, &[]),
            node(2, "a2", Some(1), &[], 20, &[]),
            node(3, "b1", Some(2), &[], 30, &[]),
            node(4, "web", None, &["tag:web"], 40, &[]),
            node(5, "rtr", None, &["tag:router"], 50, &["192.168.1.0/24"]),
            node(6, "exit", None, &["tag:exit"], 60, &["0.0.0.0/0", "::/0"]),
        ],
        settings: Default::default(),
    }
}

fn pol(body: &str) -> Policy {
    let text = format!(
        r#"{{
          // common header
          "groups": {{"group:eng": ["alice@example.com"]}},
          "tagOwners": {{"tag:web": ["alice@example.com"], "tag:router": ["alice@example.com"],
                         "tag:exit": ["alice@example.com"],}},
          {body}
        }}"#
    );
    Policy::parse(&text).unwrap()
}

fn p(a: u16, b: u16) -> Value {
    json!({"First": a, "Last": b})
}

#[test]
fn group_to_tag_two_ports() {
    let c = compile(
        &pol(r#""acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:web:80,443"]}]"#),
        &topo(),
    );
    assert_eq!(
        c.packet_filter(4),
        json!([{
            "SrcIPs": ["100.64.0.10", "100.64.0.20", "fd7a:115c:a1e0::10", "fd7a:115c:a1e0::20"],
            "DstPorts": [
                {"IP": "100.64.0.40", "Ports": p(80, 80)}, {"IP": "100.64.0.40", "Ports": p(443, 443)},
                {"IP": "fd7a:115c:a1e0::40", "Ports": p(80, 80)}, {"IP": "fd7a:115c:a1e0::40", "Ports": p(443, 443)}
            ]
        }])
    );
    for id in [1, 2, 3, 5, 6] {
        assert_eq!(c.packet_filter(id), json!([]), "node {id}");
    }
    assert_eq!(c.peers(4), vec![1, 2]);
    assert_eq!(c.peers(1), vec![4]);
    assert!(c.peers(3).is_empty());
}

#[test]
fn empty_acls_deny_all_and_no_policy_allows_all() {
    let c = compile(&pol(r#""acls": []"#), &topo());
    for id in 1..=6 {
        assert_eq!(c.packet_filter(id), json!([]));
        assert!(c.peers(id).is_empty());
    }
    let c = Compiled::allow_all(&topo());
    assert_eq!(
        c.packet_filter(1),
        json!([{
            "SrcIPs": ["100.64.0.0-100.115.91.255", "100.115.94.0-100.127.255.255",
                       "192.168.1.0/24", "fd7a:115c:a1e0::/48"],
            "DstPorts": [{"IP": "*", "Ports": p(0, 65535)}]
        }])
    );
    assert_eq!(c.peers(1), vec![2, 3, 4, 5, 6]);
    // exit routes and subnet routes are visible to everybody
    let exit_ips: Vec<String> = c
        .peer_allowed_ips(1, 6)
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert!(exit_ips.contains(&"0.0.0.0/0".to_string()));
    assert_eq!(
        c.peer_primary_routes(1, 5),
        vec!["192.168.1.0/24".parse::<IpNet>().unwrap()]
    );
}

#[test]
fn autogroup_self_is_per_user() {
    let c = compile(
        &pol(
            r#""acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]"#,
        ),
        &topo(),
    );
    assert_eq!(
        c.packet_filter(1),
        json!([{
            "SrcIPs": ["100.64.0.10", "100.64.0.20", "fd7a:115c:a1e0::10", "fd7a:115c:a1e0::20"],
            "DstPorts": [{"IP": "100.64.0.10", "Ports": p(0, 65535)},
                         {"IP": "fd7a:115c:a1e0::10", "Ports": p(0, 65535)}]
        }])
    );
    assert_eq!(c.packet_filter(4), json!([]));
    assert_eq!(c.peers(1), vec![2]);
    assert!(c.peers(3).is_empty());
}

#[test]
fn internet_rules_go_to_exit_nodes() {
    let c = compile(
        &pol(
            r#""acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["autogroup:internet:*"]}]"#,
        ),
        &topo(),
    );
    let f = c.packet_filter(6);
    let dsts: Vec<&str> = f[0]["DstPorts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["IP"].as_str().unwrap())
        .collect();
    assert_eq!(dsts.len(), 7);
    assert!(dsts.contains(&"2000::-3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
    assert_eq!(c.packet_filter(1), json!([]));
    assert_eq!(c.peers(6), vec![1, 2]);
    let ips: Vec<String> = c
        .peer_allowed_ips(1, 6)
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert!(ips.contains(&"0.0.0.0/0".to_string()) && ips.contains(&"::/0".to_string()));
}

#[test]
fn subnet_destination_and_merging() {
    let c = compile(
        &pol(r#""hosts": {"nas": "192.168.1.10"},
               "acls": [{"action": "accept", "src": ["bob@"], "dst": ["nas:445"]},
                        {"action": "accept", "src": ["bob@"], "dst": ["192.168.1.0/24:22"]}]"#),
        &topo(),
    );
    assert_eq!(
        c.packet_filter(5),
        json!([{
            "SrcIPs": ["100.64.0.30", "fd7a:115c:a1e0::30"],
            "DstPorts": [{"IP": "192.168.1.10", "Ports": p(445, 445)},
                         {"IP": "192.168.1.0/24", "Ports": p(22, 22)}]
        }])
    );
    assert_eq!(c.peers(3), vec![5]);
    assert_eq!(
        c.peer_primary_routes(3, 5),
        vec!["192.168.1.0/24".parse::<IpNet>().unwrap()]
    );
}

#[test]
fn grants_ip_and_app() {
    let c = compile(
        &pol(
            r#""grants": [{"src": ["group:eng"], "dst": ["tag:web"], "ip": ["tcp:443", "udp:3478"],
                            "app": {"example.com/cap/dashboard": [{"role": "viewer"}]}}]"#,
        ),
        &topo(),
    );
    let f = c.packet_filter(4);
    assert_eq!(f.as_array().unwrap().len(), 3);
    assert_eq!(f[0]["IPProto"], json!([6]));
    assert_eq!(f[1]["IPProto"], json!([17]));
    assert_eq!(
        f[2]["CapGrant"],
        json!([{"Dsts": ["100.64.0.40/32", "fd7a:115c:a1e0::40/128"],
                "CapMap": {"example.com/cap/dashboard": [{"role": "viewer"}]}}])
    );
    let c = compile(
        &pol(
            r#""grants": [{"src": ["autogroup:danger-all"], "dst": ["tag:web"], "ip": ["tcp:22"]}]"#,
        ),
        &topo(),
    );
    assert_eq!(c.packet_filter(4)[0]["SrcIPs"], json!(["*"]));
}

#[test]
fn ssh_policy() {
    let c = compile(
        &pol(
            r#""ssh": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"],
                          "users": ["autogroup:nonroot", "root"]},
                         {"action": "check", "src": ["group:eng"], "dst": ["tag:web"], "users": ["root"]}]"#,
        ),
        &topo(),
    );
    let a1 = c.ssh_policy(1).unwrap();
    assert_eq!(
        a1["rules"][0]["sshUsers"],
        json!({"*": "=", "root": "root"})
    );
    assert_eq!(a1["rules"][0]["principals"].as_array().unwrap().len(), 4);
    let web = c.ssh_policy_with_url(4, "https://ctl.example.net").unwrap();
    assert_eq!(
        web["rules"][0]["action"]["holdAndDelegate"],
        "https://ctl.example.net/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID?local_user=$LOCAL_USER"
    );
    assert_eq!(c.ssh_policy(5).unwrap(), json!({"rules": []}));
    // no ssh section → no SSH policy
    assert!(compile(&pol(r#""acls": []"#), &topo())
        .ssh_policy(1)
        .is_none());
}

#[test]
fn auto_approval() {
    let p = pol(
        r#""autoApprovers": {"routes": {"192.168.0.0/16": ["tag:router"], "0.0.0.0/0": ["tag:exit"]},
                                      "exitNode": ["tag:exit"]}"#,
    );
    let t = topo();
    assert!(auto_approves(&p, &t, 5, &"192.168.1.0/24".parse().unwrap()));
    assert!(!auto_approves(&p, &t, 5, &"10.0.0.0/8".parse().unwrap()));
    assert!(!auto_approves(
        &p,
        &t,
        4,
        &"192.168.1.0/24".parse().unwrap()
    ));
    assert!(auto_approves(&p, &t, 6, &"0.0.0.0/0".parse().unwrap()));
    assert!(!auto_approves(&p, &t, 5, &"0.0.0.0/0".parse().unwrap()));
}

#[test]
fn policy_tests_block() {
    let acl = r#""acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:web:80,443"]}]"#;
    let ok = format!(
        r#"{acl}, "tests": [{{"src": "alice@example.com", "accept": ["tag:web:443"], "deny": ["tag:web:22"]}}]"#
    );
    assert!(check_tests(&pol(&ok), &topo()).is_ok());
    let bad = format!(r#"{acl}, "tests": [{{"src": "bob@", "accept": ["tag:web:443"]}}]"#);
    let e = check_tests(&pol(&bad), &topo()).unwrap_err();
    assert!(e.to_string().contains("test(s) failed"));
}

#[test]
fn cap_map_node_attrs() {
    let c = compile(
        &pol(
            r#""nodeAttrs": [{"target": ["tag:web"], "attr": ["magicdns-aaaa"]}], "randomizeClientPort": true"#,
        ),
        &topo(),
    );
    let m = c.cap_map(4);
    assert!(m.get("magicdns-aaaa").is_some());
    assert!(m.get("randomize-client-port").is_some());
    assert!(m.get("https://tailscale.com/cap/ssh").is_some());
    assert!(c.cap_map(1).get("magicdns-aaaa").is_none());
}

/// Truncated and byte-flipped corpus policies must never panic the parser
/// or the compiler (a cheap stand-in until the fuzz target exists).
#[test]
fn mangled_policies_do_not_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/tailscale-captures/grant_results");
    let t = topo();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files.iter().step_by(20) {
        let cap: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        let text = cap["policy"].as_str().unwrap_or("").to_string();
        let bytes = text.as_bytes();
        for cut in (0..bytes.len()).step_by(37) {
            let s = String::from_utf8_lossy(&bytes[..cut]).to_string();
            if let Ok(p) = Policy::parse(&s) {
                let _ = compile(&p, &t);
            }
            let mut m = bytes.to_vec();
            m[cut] ^= 0x20;
            let s = String::from_utf8_lossy(&m).to_string();
            if let Ok(p) = Policy::parse(&s) {
                let _ = check_tests(&p, &t);
                let _ = compile(&p, &t);
            }
        }
    }
}

/// `n` literal addresses outside the tailnet, `10.a.b.c` spelled.
fn many_ips(n: usize, second: u32) -> Vec<String> {
    (0..n as u32)
        .map(|i| format!("10.{second}.{}.{}", i / 256, i % 256))
        .collect()
}

#[test]
fn huge_source_times_destination_acl_costs_the_sum_not_the_product() {
    // 3000 sources × 3000 destinations: 9,000,000 entries if the sources
    // were expanded per destination, far over the budget; ~6000 now.
    let src = many_ips(3000, 1);
    let dst: Vec<String> = many_ips(2999, 2)
        .into_iter()
        .map(|d| format!("{d}:22"))
        .chain(["100.64.0.10:22".to_string()])
        .collect();
    let p = pol(&format!(
        r#""acls": [{{"action": "accept", "src": {}, "dst": {}}}]"#,
        serde_json::to_string(&src).unwrap(),
        serde_json::to_string(&dst).unwrap()
    ));
    let c = compile_bounded(&p, &topo()).expect("within the budget");
    // a1 (100.64.0.10) is a destination: its filter has all 3000 sources.
    let f = c.packet_filter(1);
    assert_eq!(f[0]["SrcIPs"].as_array().unwrap().len(), 3000);
    assert_eq!(f[0]["DstPorts"].as_array().unwrap().len(), 1);
}

#[test]
fn a_policy_over_the_budget_is_refused_naming_the_rule() {
    let rules = |n: u32| {
        let ports: Vec<String> = (1..=n / 2)
            .flat_map(|p| [format!("*:{p}"), format!("100.64.0.0/10:{p}")])
            .collect();
        pol(&format!(
            r#""acls": [{{"action": "accept", "src": ["*"], "dst": ["*:22"]}},
                        {{"action": "accept", "src": ["alice@example.com"], "dst": {}}}]"#,
            serde_json::to_string(&ports).unwrap()
        ))
    };
    // Every node gets every wildcard port entry: 6 nodes × 90,000 per-node
    // filter entries > 500,000 + 6 × 200.
    let e = compile_bounded(&rules(90_000), &topo())
        .err()
        .expect("over the budget")
        .to_string();
    assert!(e.contains("acls[1] is too large"), "{e}");
    // 6 × 20,000 fits.
    assert!(compile_bounded(&rules(20_000), &topo()).is_ok());
}
