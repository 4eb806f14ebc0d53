//! The policy in force shapes every node's map, and a change reaches
//! connected clients at once (protocol-level clients on loopback).

mod common;

use common::*;
use tinyscale::client::Node;

const ALICE_TO_SERVERS: &str = r#"{
  // alice may reach the servers; nobody else may do anything
  "tagOwners": {"tag:server": ["alice@"]},
  "acls": [
    {"action": "accept", "src": ["alice@"], "dst": ["tag:server:22,80"]},
  ],
}"#;

#[test]
fn policy_shapes_maps_and_changes_live() {
    let dir = tempdir("policy");
    let mut cfg = config(&dir);
    let pfile = dir.join("policy.hujson");
    std::fs::write(&pfile, ALICE_TO_SERVERS).unwrap();
    cfg.policy_path = Some(pfile.clone());
    let ts = start_with(cfg, dir);
    let ka = ts.key("alice", true, false, &[]);
    let kb = ts.key("bob", true, false, &[]);
    let ks = ts.key("alice", true, false, &["tag:server"]);
    block_on_timeout(60, async {
        let (a, b, s) = (Node::new("laptop"), Node::new("phone"), Node::new("srv"));
        let (_ca, mut sa, mut nma) = join(&ts, &a, &ka).await;
        let (_cs, mut ss, mut nms) = join(&ts, &s, &ks).await;
        let (_cb, _sb, nmb) = join(&ts, &b, &kb).await;
        // bob may reach nothing and nothing may reach bob: no peers.
        assert!(nmb.peers.is_empty(), "bob sees {:?}", nmb.peers.keys());
        assert_eq!(nmb.packet_filter, serde_json::json!([]));
        // The server's filter lets alice's laptop in on 22 and 80.
        until(&mut ss, &mut nms, |n| n.peer_by_name("laptop").is_some()).await;
        let laptop_ip = nma.self_node["Addresses"][0]
            .as_str()
            .unwrap()
            .trim_end_matches("/32")
            .to_string();
        let f = nms.packet_filter.to_string();
        assert!(
            f.contains(&laptop_ip) && f.contains("\"First\":22") && f.contains("\"First\":80"),
            "{f}"
        );
        assert!(nms.peer_by_name("phone").is_none());
        until(&mut sa, &mut nma, |n| n.peer_by_name("srv").is_some()).await;

        // Live change: deny-all. The server's filter empties and peers go.
        ts.server.set_policy(Some(r#"{"acls": []}"#)).unwrap();
        until(&mut ss, &mut nms, |n| {
            n.packet_filter == serde_json::json!([]) && n.peers.is_empty()
        })
        .await;
        until(&mut sa, &mut nma, |n| n.peers.is_empty()).await;

        // A broken policy is rejected and the previous one stays.
        let err = ts.server.set_policy(Some(
            r#"{"acls": [ {"action": "accept", "src": ["group:nope"], "dst": ["*:*"]} ]}"#,
        ));
        assert!(err.is_err());
        assert_eq!(ts.server.policy_text().as_deref(), Some(r#"{"acls": []}"#));

        // Back to the file's policy through the watcher path.
        tinyscale::control::policy::reload_if_changed(&ts.server, true);
        until(&mut ss, &mut nms, |n| n.peer_by_name("laptop").is_some()).await;
    });
}

/// A burst of registrations under autogroup:self: recompiles are
/// coalesced, yet every node ends up seeing exactly its own user's nodes.
#[test]
fn burst_of_joins_converges_under_autogroup_self() {
    let dir = tempdir("burst");
    let mut cfg = config(&dir);
    let pfile = dir.join("policy.hujson");
    std::fs::write(
        &pfile,
        r#"{"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]}"#,
    )
    .unwrap();
    cfg.policy_path = Some(pfile);
    let ts = start_with(cfg, dir);
    let keys = [
        ts.key("ua", true, false, &[]),
        ts.key("ub", true, false, &[]),
    ];
    block_on_timeout(90, async {
        let mut joined = Vec::new();
        for i in 0..16 {
            let n = Node::new(&format!("n{i}"));
            let (c, s, nm) = join(&ts, &n, &keys[i % 2]).await;
            joined.push((i % 2, c, s, nm));
        }
        for (_, _, s, nm) in joined.iter_mut() {
            until(s, nm, |n| n.peers.len() == 7).await;
        }
        let st = ts.server.state();
        for (u, _, _, nm) in &joined {
            for p in nm.peers.values() {
                let id = p["ID"].as_u64().unwrap();
                let owner = &st.users[&st.nodes[&id].user].name;
                assert_eq!(owner, if *u == 0 { "ua" } else { "ub" });
            }
        }
    });
}

/// A stored policy that cannot be used (here: it names a group that does
/// not exist) does not stop the start: the server runs deny-all, says so
/// in `policy get`, and a good policy set through the API replaces it.
#[test]
fn unusable_stored_policy_starts_deny_all_and_says_so() {
    let dir = tempdir("badstored");
    let mut cfg = config(&dir);
    cfg.policy_mode = "database".into();
    let bad = r#"{"acls": [{"action": "accept", "src": ["group:nope"], "dst": ["*:*"]}]}"#;
    {
        let s = tinyscale::state::Store::open(&cfg.database_path).unwrap();
        s.put_meta(tinyscale::control::policy::META_POLICY, bad.as_bytes())
            .unwrap();
    }
    let ts = start_with(cfg, dir);
    let e = ts.server.policy_error().expect("the fallback is reported");
    assert!(
        e.contains("stored policy") && e.contains("no traffic"),
        "{e}"
    );
    let (status, body) = api(&ts, "GET", "/api/v1/policy", b"");
    assert_eq!(status, 200);
    assert_eq!(body["policy"], bad, "the stored text is shown to be fixed");
    assert!(
        body["error"].as_str().unwrap().contains("group:nope"),
        "{body}"
    );
    let k = ts.key("alice", true, false, &[]);
    block_on_timeout(60, async {
        let (a, b) = (Node::new("laptop"), Node::new("phone"));
        let (_ca, mut sa, mut nma) = join(&ts, &a, &k).await;
        let (_cb, _sb, nmb) = join(&ts, &b, &k).await;
        // Deny-all, not allow-all.
        assert!(nmb.peers.is_empty(), "phone sees {:?}", nmb.peers.keys());
        assert_eq!(nmb.packet_filter, serde_json::json!([]));
        let good = serde_json::json!({ "policy": r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"# });
        let (status, body) = api(&ts, "PUT", "/api/v1/policy", good.to_string().as_bytes());
        assert_eq!(status, 200, "{body}");
        until(&mut sa, &mut nma, |n| n.peer_by_name("phone").is_some()).await;
    });
    assert!(ts.server.policy_error().is_none());
    let (_, body) = api(&ts, "GET", "/api/v1/policy", b"");
    assert!(body.get("error").is_none(), "{body}");
}

/// A policy too large to compile is refused before it is stored: the
/// database keeps the previous one.
#[test]
fn too_large_policy_is_refused_before_it_is_stored() {
    let dir = tempdir("toolarge");
    let mut cfg = config(&dir);
    cfg.policy_mode = "database".into();
    let ts = start_with(cfg, dir);
    let ok = serde_json::json!({ "policy": r#"{"acls": []}"# });
    assert_eq!(
        api(&ts, "PUT", "/api/v1/policy", ok.to_string().as_bytes()).0,
        200
    );
    // Every node gets 2 × 60,000 wildcard entries: 5 nodes × 120,000 >
    // 500,000 + 5 × 200.
    let ports: Vec<String> = (1..=60_000).map(|p| p.to_string()).collect();
    let ports = ports.join(",");
    let text = format!(
        r#"{{"acls": [{{"action": "accept", "src": ["*"], "dst": ["*:{ports}", "100.64.0.0/10:{ports}"]}},
                     {{"action": "accept", "src": ["*"], "dst": ["*:22"]}}]}}"#
    );
    let k = ts.key("alice", true, false, &[]);
    block_on_timeout(60, async {
        for i in 0..5 {
            join(&ts, &Node::new(&format!("n{i}")), &k).await;
        }
    });
    let big = serde_json::json!({ "policy": text });
    let (status, body) = api(&ts, "PUT", "/api/v1/policy", big.to_string().as_bytes());
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("acls[0] is too large"), "{body}");
    let stored = ts
        .server
        .state()
        .store
        .get_meta(tinyscale::control::policy::META_POLICY)
        .unwrap();
    assert_eq!(stored.as_deref(), Some(&br#"{"acls": []}"#[..]));
    assert_eq!(ts.server.policy_text().as_deref(), Some(r#"{"acls": []}"#));
}

/// Calls the admin API in-process; returns the status and the JSON body.
fn api(ts: &TestServer, method: &str, url: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let r = tinyscale::api::handle(&ts.server, method, url, body);
    (r.status, serde_json::from_str(&r.body).unwrap_or_default())
}
