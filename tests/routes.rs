//! Subnet routes with protocol-level clients: served only after approval,
//! autoApprovers, and HA failover without flapping back.

mod common;

use common::*;
use std::time::Instant;
use tinyscale::client::{netmap::NetMap, Node};

const NET: &str = "10.9.0.0/24";

/// `subnetRoutes` of node `id` in the admin API's node list (what `nodes list-routes` shows as
/// "Serving (Primary)"): the routes the node actually serves, like Headscale's.
fn serving(ts: &TestServer, id: u64) -> Vec<String> {
    let r = tinyscale::api::handle(&ts.server, "GET", "/api/v1/node", b"");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let n = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"].as_str().and_then(|s| s.parse().ok()) == Some(id))
        .unwrap_or_else(|| panic!("node {id} not listed: {v}"))
        .clone();
    serde_json::from_value(n["subnetRoutes"].clone()).unwrap()
}

fn carries(nm: &NetMap, name: &str) -> bool {
    nm.peer_by_name(name).is_some_and(|p| {
        p["AllowedIPs"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == NET))
            && p["PrimaryRoutes"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == NET))
    })
}

#[test]
fn approval_and_ha_failover() {
    let ts = start("routes");
    let key = ts.key("erin", true, false, &[]);
    block_on_timeout(90, async {
        let (r1, r2, v) = (
            Node::new("router1"),
            Node::new("router2"),
            Node::new("viewer"),
        );
        let (_c1, s1, _) = join_with(&ts, &r1, &key, &[NET], &[]).await;
        let (_c2, _s2, _) = join_with(&ts, &r2, &key, &[NET], &[]).await;
        let (_cv, mut sv, mut nmv) = join_with(&ts, &v, &key, &[], &[]).await;
        // Advertised but not approved: not served.
        assert!(
            nmv.peer_by_name("router1").is_some()
                && !carries(&nmv, "router1")
                && !carries(&nmv, "router2")
        );
        let id = |name: &str, st: &tinyscale::state::State| {
            st.nodes.values().find(|n| n.hostname == name).unwrap().id
        };
        let (id1, id2) = {
            let st = ts.server.state();
            (id("router1", &st), id("router2", &st))
        };
        // Approved through the admin API (what `nodes approve-routes` calls): its answer says
        // what the node serves right away, the primary only.
        for (i, serves) in [(id1, vec![NET.to_string()]), (id2, vec![])] {
            let r = tinyscale::api::handle(
                &ts.server,
                "POST",
                &format!("/api/v1/node/{i}/approve_routes"),
                format!(r#"{{"routes": ["{NET}"]}}"#).as_bytes(),
            );
            assert_eq!(r.status, 200, "{}", r.body);
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(v["node"]["approvedRoutes"], serde_json::json!([NET]));
            assert_eq!(v["node"]["subnetRoutes"], serde_json::json!(serves), "{v}");
        }
        until(&mut sv, &mut nmv, |n| carries(n, "router1")).await;
        assert!(
            !carries(&nmv, "router2"),
            "a prefix must be in one peer's AllowedIPs only"
        );
        // The admin API says who serves it: the primary only, not the approved standby.
        assert_eq!(serving(&ts, id1), [NET]);
        assert!(serving(&ts, id2).is_empty(), "router2 is a standby");

        // The primary goes away: the standby takes over.
        let t0 = Instant::now();
        drop((_c1, s1));
        until(&mut sv, &mut nmv, |n| {
            carries(n, "router2") && !carries(n, "router1")
        })
        .await;
        eprintln!(
            "[routes] failover to router2 took {:.1} s (offline grace included)",
            t0.elapsed().as_secs_f64()
        );

        assert_eq!(serving(&ts, id2), [NET]);
        assert!(serving(&ts, id1).is_empty(), "router1 is offline");

        // router1 returns: no flapping back.
        let (_c1b, _s1b, _) = join_with(&ts, &r1, &key, &[NET], &[]).await;
        async_io::Timer::after(std::time::Duration::from_millis(500)).await;
        assert!(ts.server.is_primary(id2, NET) && !ts.server.is_primary(id1, NET));
        assert_eq!(serving(&ts, id2), [NET]);
        assert!(serving(&ts, id1).is_empty(), "router1 is a standby again");
    });
}

#[test]
fn auto_approvers_approve_advertised_routes() {
    let dir = tempdir("autoapprove");
    let mut cfg = config(&dir);
    let pfile = dir.join("policy.hujson");
    std::fs::write(
        &pfile,
        r#"{
          "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
          "autoApprovers": {"routes": {"10.9.0.0/16": ["frank@"]}},
        }"#,
    )
    .unwrap();
    cfg.policy_path = Some(pfile);
    let ts = start_with(cfg, dir);
    let kf = ts.key("frank", true, false, &[]);
    let kg = ts.key("gina", true, false, &[]);
    block_on_timeout(30, async {
        let (f, g, v) = (
            Node::new("frankrouter"),
            Node::new("ginarouter"),
            Node::new("viewer"),
        );
        let (_cf, _sf, _) = join_with(&ts, &f, &kf, &[NET], &[]).await;
        let (_cg, _sg, _) = join_with(&ts, &g, &kg, &["10.9.1.0/24"], &[]).await;
        let (_cv, mut sv, mut nmv) = join_with(&ts, &v, &kf, &[], &[]).await;
        until(&mut sv, &mut nmv, |n| carries(n, "frankrouter")).await;
        let st = ts.server.state();
        let gina = st
            .nodes
            .values()
            .find(|n| n.hostname == "ginarouter")
            .unwrap();
        assert!(
            gina.approved_routes.is_empty(),
            "gina is not an auto-approver"
        );
    });
}
