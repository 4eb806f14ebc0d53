//! Node lifecycle with REAL Tailscale clients (tests/realclient/README.md; the harness of
//! tests/realclient_common): interactive registration, key expiry and re-authentication, and a
//! protocol-level client's logout as a real peer sees it.
//!
//! Node b (user alice, pre-auth key) runs a local proxy to `http://a/` over the tailnet and dumps
//! every MapResponse it gets (`TS_DEBUG_MAP=1`); node a serves HTTP on the tailnet.
//!  1. Interactive registration: a starts with NO auth key (node.sh writes no `auth_key`), tsnet
//!     logs `To start this tsnet server, restart with TS_AUTHKEY set, or go to: <AuthURL>`; the
//!     URL points at our `server_url` `/register/<id>`, the page (fetched from the host) shows the
//!     approval command; before approval a has no address and is not listed; after
//!     `tinyscale auth register --auth-id ID --user alice` a comes up and b reaches it over the
//!     tailnet.
//!  2. Expiry: `tinyscale nodes expire` cuts a off — b's netmap dump shows a `Expired`, b can no
//!     longer reach a (three fetches in a row fail). Re-authentication, two ways, each bringing a
//!     back with the SAME node ID and IPs and b reaching it again:
//!     (2a) a forced re-login, `node.sh restart a --authkey NEW --env TSNET_FORCE_LOGIN=1` (state
//!     kept: a new node key with OldNodeKey = the expired one, and the new pre-auth key); (2b) after
//!     a second expiry, a plain restart without a key: a logs an AuthURL, approved by the CLI. a
//!     itself logs `Switching ipn state Running -> NeedsLogin` when its key expires.
//!  3. Logout: a protocol-level client (`tinyscale::client`, ephemeral key) joins the same server;
//!     b's netmap dump shows it; it logs out (RegisterRequest with a past Expiry); b's netmap drops
//!     it and `nodes list` no longer has it.
//!
//! Every wait is bounded; the cut-off, recovery and removal times are printed on stderr. Needs
//! root; skips with a reason otherwise (fails under CI=true).

#[macro_use]
mod realclient_common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use realclient_common::*;
use serde_json::Value;
use tinyscale::client::{self, netmap::NetMap, Node};

const PREFIX: &str = "tsl"; // netns tsl-a, tsl-b; bridge tslbr0

/// A fetch that is cut off hangs (no WireGuard peer, or a dropped SYN) until curl gives up.
const PROBE_SECS: u32 = 4;

/// One fetch of `http://a/` through b's proxy: (status or 0, body).
fn fetch_a(h: &Harness) -> (u16, String) {
    let (code, body) = h.curl("b", "http://127.0.0.1:8080/", PROBE_SECS);
    (code, String::from_utf8_lossy(&body).trim().to_owned())
}

/// Waits until b's fetch of a fails, then checks the next two fail too. Returns when the first
/// failing fetch started, measured from `since`, and its status.
fn until_cut_off(h: &Harness, what: &str, since: Instant) -> (Duration, u16) {
    let mut started = since;
    let code = wait_for(what, Duration::from_secs(60), || {
        started = Instant::now();
        let (code, _) = fetch_a(h);
        (code != 200).then_some(code)
    });
    for _ in 0..2 {
        let (again, body) = fetch_a(h);
        assert_ne!(again, 200, "{what}: a later fetch succeeded: {body:?}");
    }
    (started.duration_since(since), code)
}

/// Waits until b reaches a again and checks the answer names b's address.
fn until_reached(h: &Harness, what: &str, want: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    let body = wait_for(what, limit, || {
        let (code, body) = fetch_a(h);
        (code == 200).then_some(body)
    });
    assert_eq!(body, want, "{what}");
    t0.elapsed()
}

/// The MapResponses node NAME dumped to its stdout.log (`TS_DEBUG_MAP=1`), in order.
fn map_dumps(h: &Harness, name: &str) -> Vec<Value> {
    let text = read_lossy(&h.node_stdout_path(name));
    text.lines()
        .filter_map(|l| {
            let msg = match serde_json::from_str::<Value>(l) {
                Ok(v) => v.get("msg").and_then(Value::as_str)?.to_owned(),
                Err(_) => l.to_owned(),
            };
            let at = msg.find("MapResponse: ")?;
            serde_json::from_str(&msg[at + "MapResponse: ".len()..]).ok()
        })
        .collect()
}

/// What node NAME believes from the MapResponses it dumped (applied as the client does).
fn dumped_netmap(h: &Harness, name: &str) -> (NetMap, usize) {
    let dumps = map_dumps(h, name);
    let mut nm = NetMap::default();
    for m in &dumps {
        nm.apply(m);
    }
    (nm, dumps.len())
}

/// How MapResponse `m` tells its receiver that peer `id` expired, if it does: the peer with
/// `Expired: true` (Peers / PeersChanged), or removed.
fn expiry_seen(m: &Value, id: u64) -> Option<String> {
    for field in ["Peers", "PeersChanged"] {
        for p in m.get(field).and_then(Value::as_array).into_iter().flatten() {
            if p.get("ID").and_then(Value::as_u64) == Some(id) && p["Expired"] == true {
                return Some(format!(
                    "{field}: Expired=true KeyExpiry={}",
                    p.get("KeyExpiry").unwrap_or(&Value::Null)
                ));
            }
        }
    }
    let removed = m.get("PeersRemoved").and_then(Value::as_array);
    removed
        .is_some_and(|r| r.iter().any(|x| x.as_u64() == Some(id)))
        .then(|| "PeersRemoved".to_owned())
}

/// Waits until b's netmap (its dumped MapResponses, applied in order) has peer `id` with node
/// key `key` and not expired.
fn until_peer_valid(h: &Harness, id: u64, key: &str) {
    wait_for(
        &format!("b's netmap has peer {id} with {key}, not expired"),
        Duration::from_secs(30),
        || {
            let (nm, _) = dumped_netmap(h, "b");
            let p = nm.peers.get(&id)?;
            (p["Key"] == key && p["Expired"] != true).then_some(())
        },
    );
}

/// The CLI prints Headscale's enum number (Go's encoding/json of the proto).
fn method(n: &Value) -> String {
    match n.get("register_method").and_then(Value::as_u64) {
        Some(1) => "REGISTER_METHOD_AUTH_KEY",
        Some(2) => "REGISTER_METHOD_CLI",
        Some(3) => "REGISTER_METHOD_OIDC",
        _ => "?",
    }
    .to_owned()
}

fn find_by_id<'a>(nodes: &'a [Value], id: &str) -> Option<&'a Value> {
    nodes.iter().find(|n| node_id(n) == id)
}

/// The newest AuthURL node NAME logged (`node.sh auth-url`), as (url, registration id).
fn auth_url(h: &Harness, name: &str, control: &str) -> (String, String) {
    let url = h.node(&["auth-url", name, "60"], 70);
    let prefix = format!("{control}/register/");
    let id = url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("AuthURL {url:?} is not on our server_url ({prefix}…)"))
        .to_owned();
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "registration id {id:?} in {url}"
    );
    (url, id)
}

/// GET the AuthURL from the host: the page must show the approval command for this id.
fn check_page(url: &str, id: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", url])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("curl the AuthURL");
    let page = String::from_utf8_lossy(&out.stdout).into_owned();
    let cmd = format!("tinyscale auth register --auth-id {id} --user");
    assert!(
        page.contains(&cmd),
        "the AuthURL page does not show {cmd:?}:\n{page}"
    );
    cmd
}

#[test]
fn real_clients_node_lifecycle() {
    let Some(mut h) = Harness::begin("lifecycle real-client e2e", PREFIX, &["a", "b"]) else {
        return;
    };
    let t_start = Instant::now();
    let port = h.free_port();
    h.start_server(ServerOpts {
        port,
        tls_port: 0,
        derp_enabled: true,
        policy_path: None,
        ..ServerOpts::default()
    });
    let control = h.control_url();
    h.cli(&["users", "create", "alice"]);

    // b: a pre-auth key, a proxy to http://a/ (a new tailnet connection per request), netmap dumps
    let key_b = h.preauth_key("alice", &[]);
    h.start_node(
        "b",
        &control,
        &key_b,
        41642,
        &[
            "--role",
            "proxy",
            "--upstream",
            "a",
            "--proxy-no-keepalive",
            "--env",
            "TS_DEBUG_MAP=1",
        ],
    );
    let ips_b = wait_for(
        "node b gets its tailnet IPs",
        Duration::from_secs(60),
        || self_ips(&h.node_log_path("b")),
    );
    let ip4_b = ips_b[0].clone();
    say!("node b (pre-auth key) is up: {ips_b:?}");
    let hello = format!("hello from a over the tailnet; you are {ip4_b}");

    // 1. interactive registration of a (no auth key at all)
    let t_a = Instant::now();
    h.start_node("a", &control, "", 41641, &["--role", "serve"]);
    let (url, reg_id) = auth_url(&h, "a", &control);
    say!(
        "1. node a started without a key; {:.1}s later its log shows the AuthURL {url}",
        t_a.elapsed().as_secs_f64()
    );
    let cmd = check_page(&url, &reg_id);
    say!("1. GET {url} from the host shows `{cmd} USERNAME`");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        self_ips(&h.node_log_path("a")).is_none(),
        "a has tailnet addresses before approval"
    );
    let before = h.nodes();
    assert_eq!(
        before.len(),
        1,
        "only b is registered before approval: {}",
        describe_all(&before)
    );
    let t_approve = Instant::now();
    let out = h.cli(&["auth", "register", "--auth-id", &reg_id, "--user", "alice"]);
    say!(
        "1. tinyscale auth register --auth-id {reg_id} --user alice: {}",
        out.trim()
    );
    let ips_a = wait_for(
        "node a comes up after approval",
        Duration::from_secs(60),
        || self_ips(&h.node_log_path("a")),
    );
    let up = t_approve.elapsed();
    let nodes = h.nodes();
    let node_a = find_node(&nodes, "a", &ips_a[0])
        .unwrap_or_else(|| panic!("a ({ips_a:?}) not in nodes list: {}", describe_all(&nodes)));
    let id_a = node_id(node_a);
    assert_eq!(
        node_a
            .get("user")
            .and_then(|u| u.get("name"))
            .and_then(Value::as_str),
        Some("alice"),
        "a's owner: {node_a}"
    );
    assert_eq!(
        method(node_a),
        "REGISTER_METHOD_CLI",
        "a was approved by the CLI: {node_a}"
    );
    let node_key_1 = str_field(node_a, &["node_key"])
        .expect("node_key")
        .to_owned();
    say!(
        "1. a is up {:.1}s after approval: {} (user alice, {})",
        up.as_secs_f64(),
        describe(node_a),
        method(node_a)
    );
    let took = until_reached(
        &h,
        "b reaches a (approved interactively)",
        &hello,
        Duration::from_secs(90),
    );
    say!(
        "1. b -> http://a/ over the tailnet: {hello:?} ({:.1}s after approval)",
        t_approve.elapsed().as_secs_f64().max(took.as_secs_f64())
    );

    // 2. expiry cuts a off; a forced re-login brings it back with the same IPs
    let id_num: u64 = id_a.parse().expect("numeric node id");
    let expire_and_check = |round: &str| -> Instant {
        let a_mark = read_lossy(&h.node_log_path("a")).len();
        let n0 = map_dumps(&h, "b").len();
        let t_exp = Instant::now();
        h.cli(&["nodes", "expire", "--identifier", &id_a]);
        let (seen, n) = wait_for(
            &format!("{round}: a MapResponse tells b that a expired"),
            Duration::from_secs(30),
            || {
                let dumps = map_dumps(&h, "b");
                dumps
                    .iter()
                    .enumerate()
                    .skip(n0)
                    .find_map(|(i, m)| expiry_seen(m, id_num).map(|s| (s, i + 1)))
            },
        );
        let in_netmap = t_exp.elapsed();
        let (at, code) = until_cut_off(&h, &format!("{round}: b can no longer reach a"), t_exp);
        say!(
            "{round}: `nodes expire -i {id_a}`: b is told ({seen}) {:.2}s later (its MapResponse #{n}); b's first failing fetch of http://a/ started {:.1}s after the expiry ({}), the next two failed too",
            in_netmap.as_secs_f64(),
            at.as_secs_f64(),
            if code == 0 { format!("no answer within {PROBE_SECS}s") } else { format!("HTTP {code}") },
        );
        // a itself learns it is logged out (its self node's key expired)
        let line = wait_for(
            &format!("{round}: a's log shows it needs a login again"),
            Duration::from_secs(30),
            || {
                log_msgs(&h.node_log_path("a"), a_mark)
                    .into_iter()
                    .find(|m| m.contains("Switching ipn state Running -> NeedsLogin"))
            },
        );
        say!("{round}: a's log: {line}");
        let nodes = h.nodes();
        let na = find_by_id(&nodes, &id_a).expect("expired a is still listed");
        say!(
            "{round}: nodes list: {} expiry={}",
            describe(na),
            na.get("expiry").unwrap_or(&Value::Null)
        );
        t_exp
    };
    let t_exp = expire_and_check("2a");
    let skipped = log_msgs(&h.node_log_path("b"), 0)
        .into_iter()
        .find(|m| m.contains("skipped expired peer") || m.contains("clearing expired peer"));
    if let Some(line) = skipped {
        say!("2a: b's log: {line}");
    }

    let created = h.cli_json(&["preauthkeys", "create", "--user", "alice", "-o", "json"]);
    let key_new = str_field(&created, &["key"]).expect("key").to_owned();
    let key_new_id = created["id"].as_u64().expect("key id");
    let t_re = Instant::now();
    h.node(
        &[
            "restart",
            "a",
            "--authkey",
            &key_new,
            "--env",
            "TSNET_FORCE_LOGIN=1",
        ],
        60,
    );
    let ips_a2 = wait_for(
        "a comes back after a forced re-login",
        Duration::from_secs(60),
        || self_ips(&h.node_log_path("a")),
    );
    assert_eq!(ips_a2, ips_a, "a changed IPs across a forced re-login");
    let took = until_reached(
        &h,
        "b reaches a after the re-login",
        &hello,
        Duration::from_secs(90),
    );
    let nodes = h.nodes();
    assert_eq!(
        nodes.len(),
        2,
        "re-login made a new node: {}",
        describe_all(&nodes)
    );
    let na = find_by_id(&nodes, &id_a).expect("a keeps its node id");
    assert_eq!(
        node_ips(na).first(),
        ips_a.first(),
        "a's IPv4 in nodes list"
    );
    let node_key_2 = str_field(na, &["node_key"]).expect("node_key").to_owned();
    assert_ne!(
        node_key_2, node_key_1,
        "the forced re-login rotates a's node key"
    );
    assert_eq!(method(na), "REGISTER_METHOD_AUTH_KEY", "{na}");
    until_peer_valid(&h, id_num, &node_key_2);
    assert_eq!(
        na.get("pre_auth_key").and_then(|k| k["id"].as_u64()),
        Some(key_new_id),
        "a now holds the new pre-auth key: {na}"
    );
    say!(
        "2a. forced re-login (restart with TSNET_FORCE_LOGIN=1 and a new key): a has the same IPs {ips_a2:?} and id {id_a}; b reaches it {:.1}s after the restart ({:.1}s after the expiry)",
        t_re.elapsed().as_secs_f64().max(took.as_secs_f64()),
        t_exp.elapsed().as_secs_f64()
    );

    // 2b. expire again; a restart without a key prints an AuthURL; approval brings it back
    let t_exp = expire_and_check("2b");
    let t_re = Instant::now();
    h.node(&["restart", "a"], 60);
    let (url, reg_id) = auth_url(&h, "a", &control);
    say!(
        "2b. restarted without a key: AuthURL {url} after {:.1}s",
        t_re.elapsed().as_secs_f64()
    );
    check_page(&url, &reg_id);
    let t_approve = Instant::now();
    h.cli(&["auth", "register", "--auth-id", &reg_id, "--user", "alice"]);
    let ips_a3 = wait_for(
        "a comes back after the AuthURL approval",
        Duration::from_secs(60),
        || self_ips(&h.node_log_path("a")),
    );
    assert_eq!(
        ips_a3, ips_a,
        "a changed IPs across an interactive re-login"
    );
    let took = until_reached(
        &h,
        "b reaches a after the approval",
        &hello,
        Duration::from_secs(90),
    );
    let nodes = h.nodes();
    assert_eq!(
        nodes.len(),
        2,
        "re-approval made a new node: {}",
        describe_all(&nodes)
    );
    let na = find_by_id(&nodes, &id_a).expect("a keeps its node id");
    let node_key_3 = str_field(na, &["node_key"]).expect("node_key").to_owned();
    assert_ne!(
        node_key_3, node_key_2,
        "the interactive re-login rotates a's node key"
    );
    assert_eq!(method(na), "REGISTER_METHOD_CLI", "{na}");
    until_peer_valid(&h, id_num, &node_key_3);
    say!(
        "2b. AuthURL approval: a has the same IPs {ips_a3:?} and id {id_a}; b reaches it {:.1}s after the approval ({:.1}s after the expiry)",
        t_approve.elapsed().as_secs_f64().max(took.as_secs_f64()),
        t_exp.elapsed().as_secs_f64()
    );

    // 3. a protocol-level client joins, b sees it, it logs out, b sees it go
    let addr: SocketAddr = format!("{}:{port}", h.host_ip()).parse().unwrap();
    let ekey = h.preauth_key("alice", &["--ephemeral"]);
    let proto = Node::new("proto");
    let (mut conn, _stream, self_node) = smol::block_on(async {
        use futures_lite::FutureExt;
        async {
            let server_pub = client::fetch_key(addr).await.expect("GET /key");
            let mut conn = client::connect(addr, &server_pub, &proto.machine_private)
                .await
                .expect("connect /ts2021");
            let r = conn
                .register(&proto.register_request(Some(&ekey)))
                .await
                .expect("register");
            assert_eq!(r.error, "", "protocol client register");
            assert!(r.machine_authorized);
            let mut stream = conn
                .map(&proto.map_request(true, &["198.51.100.7:41641"]))
                .await
                .expect("map");
            let mut nm = NetMap::default();
            nm.apply(&stream.next().await.expect("map").expect("first map"));
            (conn, stream, nm.self_node)
        }
        .or(async {
            async_io::Timer::after(Duration::from_secs(30)).await;
            panic!("protocol client: join timed out")
        })
        .await
    });
    let proto_id = self_node["ID"].as_u64().expect("self ID");
    let t_seen = Instant::now();
    let peer = wait_for(
        "b's netmap dump shows the protocol client",
        Duration::from_secs(30),
        || dumped_netmap(&h, "b").0.peers.get(&proto_id).cloned(),
    );
    assert_eq!(peer["Key"], proto.node_key().to_string());
    let count = wait_for("b's magicsock has 2 peers", Duration::from_secs(30), || {
        last_peer_count(&h.node_log_path("b"), 0).filter(|(n, _)| *n == 2)
    });
    say!(
        "3. protocol client joined (id {proto_id}, {}); b's netmap has it {:.2}s later ({} peers)",
        self_node["Addresses"],
        t_seen.elapsed().as_secs_f64(),
        count.0
    );
    assert!(
        h.nodes().iter().any(|n| node_id(n) == proto_id.to_string()),
        "protocol client missing from nodes list"
    );

    let t_out = Instant::now();
    let r = smol::block_on(async {
        use futures_lite::FutureExt;
        async { conn.logout(&proto).await.expect("logout") }
            .or(async {
                async_io::Timer::after(Duration::from_secs(10)).await;
                panic!("protocol client: logout timed out")
            })
            .await
    });
    assert_eq!(r.error, "", "logout");
    assert!(r.node_key_expired, "logout answer: {r:?}");
    let answered = t_out.elapsed();
    wait_for(
        "b's netmap dump drops the logged-out protocol client",
        Duration::from_secs(30),
        || (!dumped_netmap(&h, "b").0.peers.contains_key(&proto_id)).then_some(()),
    );
    let dropped = t_out.elapsed();
    let count = wait_for(
        "b's magicsock is back to 1 peer",
        Duration::from_secs(30),
        || last_peer_count(&h.node_log_path("b"), 0).filter(|(n, _)| *n == 1),
    );
    let nodes = h.nodes();
    assert!(
        !nodes.iter().any(|n| node_id(n) == proto_id.to_string()),
        "logged-out ephemeral node still listed: {}",
        describe_all(&nodes)
    );
    say!(
        "3. logout answered in {:.3}s (NodeKeyExpired); b's netmap dropped the node {:.2}s after the logout ({} peer left); nodes list: {}",
        answered.as_secs_f64(),
        dropped.as_secs_f64(),
        count.0,
        describe_all(&nodes)
    );
    let (code, body) = fetch_a(&h);
    assert_eq!(
        (code, body.as_str()),
        (200, hello.as_str()),
        "b -> a at the end"
    );

    say!(
        "PASS lifecycle real-client e2e in {:.1}s",
        t_start.elapsed().as_secs_f64()
    );
}
