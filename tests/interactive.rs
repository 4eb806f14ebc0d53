//! Interactive registration with the protocol-level client: AuthURL, a
//! held follow-up, approval, and expiry/unknown IDs.

mod common;

use common::*;
use tinyscale::client::{self, Node};
use tinyscale::control::interactive;

#[test]
fn authurl_followup_and_approval() {
    let ts = start("interactive");
    ts.server.state().create_user("dave", "", "").unwrap();
    block_on_timeout(30, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let n = Node::new("desk");
        let mut c = client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let r = c.register(&n.register_request(None)).await.unwrap();
        assert_eq!(r.error, "");
        assert!(!r.machine_authorized);
        let url = r.auth_url.clone();
        assert!(url.starts_with(&ts.server.cfg.server_url), "{url}");
        let id = interactive::id_from_url(&url).unwrap().to_string();

        // The page shows the approval command.
        let page = interactive::page(&ts.server, &id);
        assert_eq!(page.0, 200);
        assert!(page
            .1
            .contains(&format!("tinyscale auth register --auth-id {id}")));

        // The follow-up is held until approval.
        let mut req = n.register_request(None);
        req.followup = url.clone();
        let server = ts.server.clone();
        let id2 = id.clone();
        let approver = smol::spawn(async move {
            async_io::Timer::after(std::time::Duration::from_millis(500)).await;
            // Wrong user first: a clear error, nothing changes.
            assert!(interactive::approve(&server, &id2, "nobody")
                .unwrap_err()
                .contains("not found"));
            interactive::approve(&server, &id2, "dave").unwrap()
        });
        let t0 = std::time::Instant::now();
        let r = c.register(&req).await.unwrap();
        assert!(
            t0.elapsed() >= std::time::Duration::from_millis(400),
            "follow-up was not held"
        );
        assert_eq!(r.error, "");
        assert!(r.machine_authorized);
        assert!(r.auth_url.is_empty());
        let node = approver.await;
        assert_eq!(node.user, ts.server.state().find_user("dave").unwrap().id);
        // Approving twice is refused.
        assert!(interactive::approve(&ts.server, &id, "dave")
            .unwrap_err()
            .contains("already"));

        // The node now maps normally.
        let mut s = c.map(&n.map_request(true, &[])).await.unwrap();
        let m = s.next().await.unwrap().unwrap();
        assert_eq!(m["Node"]["MachineAuthorized"], true);

        // An unknown registration ID in a follow-up gets a fresh AuthURL.
        let n2 = Node::new("other");
        let mut c2 = client::connect(ts.addr, &server_pub, &n2.machine_private)
            .await
            .unwrap();
        let mut req = n2.register_request(None);
        req.followup = format!("{}/register/0000deadbeef", ts.server.cfg.server_url);
        let r = c2.register(&req).await.unwrap();
        assert!(r.auth_url.contains("/register/") && !r.auth_url.ends_with("0000deadbeef"));
        assert!(interactive::approve(&ts.server, "0000deadbeef", "dave")
            .unwrap_err()
            .contains("not found"));
    });
}

/// An expired node that was registered with a pre-auth key re-authenticates
/// interactively (new node key, OldNodeKey = the expired one): the same node
/// and IPs, now authorised by the CLI (no pre-auth key). Seen first with a
/// real client (tests/e2e_lifecycle.rs 2b): the node kept its old key's ID.
#[test]
fn expired_key_node_reapproved_interactively() {
    let ts = start("reapprove");
    let key = ts.key("erin", false, false, &[]);
    block_on_timeout(30, async {
        let mut n = Node::new("box");
        let (mut c, _s, nm) = join(&ts, &n, &key).await;
        let id = nm.self_node["ID"].as_u64().unwrap();
        let before = ts.server.state().nodes[&id].clone();
        assert_ne!(before.auth_key, 0);
        ts.server.state().expire_node(id).unwrap();

        let old = n.node_key();
        n.node_private = tinyscale::keys::random32();
        let mut req = n.register_request(None);
        req.old_node_key = old;
        let r = c.register(&req).await.unwrap();
        assert!(!r.machine_authorized);
        let id_reg = interactive::id_from_url(&r.auth_url).unwrap().to_string();
        interactive::approve(&ts.server, &id_reg, "erin").unwrap();
        req.followup = r.auth_url.clone();
        let r = c.register(&req).await.unwrap();
        assert!(r.machine_authorized, "{r:?}");

        let st = ts.server.state();
        assert_eq!(st.nodes.len(), 1);
        let after = &st.nodes[&id];
        assert_eq!((after.ipv4, after.ipv6), (before.ipv4, before.ipv6));
        assert_eq!(after.node_key, n.node_key().0);
        assert!(!after.is_expired(tinyscale::state::now()));
        assert_eq!(after.auth_key, 0, "re-approved by the CLI, not by a key");
    });
}
