//! OIDC login of a REAL Tailscale client (tests/realclient/README.md; the harness of
//! tests/realclient_common), through the OpenID provider of tests/oidc_provider, which this test
//! runs on 127.0.0.1 in the root namespace next to the server (server → provider over loopback;
//! the test itself is the browser).
//!
//!  1. The server starts with an `oidc:` section naming the provider (it reads discovery and the
//!     JWKS before it listens). Node a, an unmodified tsnet client, starts with NO auth key and
//!     logs its AuthURL (`<server_url>/register/<id>`).
//!  2. Refusals seen by the real client: a login by `amy@evil.example` (outside `allowed_domains`)
//!     and a login whose ID token is signed by a key the provider does not publish both end on a
//!     403 page; a still has no tailnet address, no user and no node exist, and the same AuthURL
//!     still works.
//!  3. The good login on that AuthURL: AuthURL → provider → callback → confirmation page naming
//!     the machine and the account → POST confirm. a comes up with tailnet IPs; `nodes list`
//!     shows it owned by the user the login created (`amy`, from `preferred_username`), `users
//!     list` shows the provider identity (provider `oidc`, providerId `<issuer>/sub-amy`, email,
//!     display name, picture); the key expiry is `oidc.expiry` (30d) after the login, and a's own
//!     MapResponse (TS_DEBUG_MAP=1) carries the same KeyExpiry and amy's profile.
//!  4. Node b joins with a pre-auth key of that same user and reaches a over the tailnet by HTTP.
//!
//! Every wait is bounded; timings are printed on stderr. Needs root; skips with a reason
//! otherwise (fails under CI=true).

#[macro_use]
mod realclient_common;
mod oidc_provider;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use oidc_provider::*;
use realclient_common::*;
use serde_json::Value;

const PREFIX: &str = "tso"; // netns tso-a, tso-b; bridge tsobr0

/// `oidc.expiry` in the server's config.
const EXPIRY_DAYS: i64 = 30;

fn user_field<'a>(n: &'a Value, field: &str) -> Option<&'a str> {
    n.get("user")?.get(field)?.as_str()
}

#[test]
fn real_client_logs_in_through_oidc() {
    let Some(mut h) = Harness::begin("OIDC real-client e2e", PREFIX, &["a", "b"]) else {
        return;
    };
    let t_start = Instant::now();

    // 1. provider, server, node a without a key
    let p = start_provider();
    say!("provider: {} (issuer, on loopback)", p.url);
    let port = h.free_port();
    let secret = serde_json::to_string(CLIENT_SECRET).unwrap(); // a JSON string is YAML
    h.start_server(ServerOpts {
        port,
        tls_port: 0,
        derp_enabled: true,
        extra_yaml: format!(
            "oidc:
  issuer: {issuer}
  client_id: {CLIENT_ID}
  client_secret: {secret}
  scope: [openid, profile, email]
  allowed_domains: [example.com]
  allowed_groups: [vpn]
  expiry: {EXPIRY_DAYS}d
",
            issuer = p.url
        ),
        ..ServerOpts::default()
    });
    assert_eq!(
        p.jwks_served.load(Ordering::SeqCst),
        1,
        "the server read the provider's key set once at start-up"
    );
    let control = h.control_url();
    let server_addr: SocketAddr = format!("{}:{port}", h.host_ip()).parse().unwrap();

    let t_a = Instant::now();
    h.start_node(
        "a",
        &control,
        "",
        41641,
        &["--role", "serve", "--env", "TS_DEBUG_MAP=1"],
    );
    let url = h.node(&["auth-url", "a", "60"], 70);
    let id = url
        .strip_prefix(&format!("{control}/register/"))
        .unwrap_or_else(|| panic!("AuthURL {url:?} is not on our server_url {control}"))
        .to_owned();
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "registration id {id:?} in {url}"
    );
    say!(
        "1. node a started without a key; {:.1}s later its log shows the AuthURL {url}",
        t_a.elapsed().as_secs_f64()
    );

    // 2. refusals: nothing is created, a stays without an address
    let nothing_yet = |what: &str| {
        assert!(
            self_ips(&h.node_log_path("a")).is_none(),
            "{what}: a has tailnet addresses"
        );
        let nodes = h.nodes();
        assert!(nodes.is_empty(), "{what}: nodes {}", describe_all(&nodes));
        let users = h.cli_json(&["users", "list", "-o", "json"]);
        assert!(
            users.as_array().is_none_or(Vec::is_empty),
            "{what}: users {users}"
        );
    };
    nothing_yet("before any login");
    let refusals = [
        (
            "a user outside allowed_domains (amy@evil.example)",
            Login {
                email: "amy@evil.example".into(),
                ..Default::default()
            },
            "domain",
        ),
        (
            "an ID token signed by a key the provider does not publish",
            Login {
                signer: Signer::Forged,
                ..Default::default()
            },
            "signature",
        ),
    ];
    for (what, login, says) in refusals {
        *p.next.lock().unwrap() = login;
        let t0 = Instant::now();
        let page = Browser::new(&control, server_addr).login(&url);
        let took = t0.elapsed();
        assert_eq!(page.status, 403, "{what}: {}", page.body);
        assert!(page.body.contains(says), "{what}: {}", page.body);
        // Give a wrongly answered follow-up time to reach the client.
        std::thread::sleep(Duration::from_secs(1));
        nothing_yet(what);
        let first = page
            .body
            .lines()
            .find(|l| l.contains(says))
            .unwrap_or("")
            .trim();
        say!(
            "2. login of {what}: HTTP 403 ({:.2}s) {first:?}; 1s later a has no IP, no user, no node",
            took.as_secs_f64()
        );
    }
    assert_eq!(
        h.node(&["auth-url", "a", "5"], 10),
        url,
        "a's AuthURL changed after the refusals"
    );

    // 3. the good login on the same AuthURL
    *p.next.lock().unwrap() = Login::default();
    let mut b = Browser::new(&control, server_addr);
    let t_login = Instant::now();
    let cb = b.until_callback(&url);
    let ask = b.get(&cb);
    assert_eq!(ask.status, 200, "{}", ask.body);
    assert!(
        ask.body.contains("Register the machine <b>a</b>") && ask.body.contains("amy@example.com"),
        "confirmation page: {}",
        ask.body
    );
    assert!(
        h.nodes().is_empty() && self_ips(&h.node_log_path("a")).is_none(),
        "a registered before the click"
    );
    let action = confirm_url(&ask).expect("a confirmation form");
    let t_click = Instant::now();
    let t_click_unix = tinyscale::state::now();
    let done = b.request("POST", &format!("{control}{action}"));
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        done.body.contains("Logged in as amy"),
        "final page: {}",
        done.body
    );
    say!(
        "3. browser: AuthURL -> provider -> callback -> confirmation page -> POST confirm: HTTP 200 in {:.2}s",
        t_login.elapsed().as_secs_f64()
    );
    let ips_a = wait_for(
        "node a comes up after the OIDC login",
        Duration::from_secs(60),
        || self_ips(&h.node_log_path("a")),
    );
    say!(
        "3. a is up {:.1}s after the click: {ips_a:?}",
        t_click.elapsed().as_secs_f64()
    );
    assert_eq!(p.pkce_ok.load(Ordering::SeqCst), 3, "token requests");
    assert_eq!(
        p.refused.load(Ordering::SeqCst),
        0,
        "refused token requests"
    );

    let users = h.cli_json(&["users", "list", "-o", "json"]);
    let users = users.as_array().expect("users list is an array");
    assert_eq!(users.len(), 1, "one user: {users:?}");
    let u = &users[0];
    let want_user = [
        ("name", "amy".to_owned()),
        ("email", "amy@example.com".to_owned()),
        ("display_name", "Amy Example".to_owned()),
        ("provider", "oidc".to_owned()),
        ("provider_id", format!("{}/sub-amy", p.url)),
        (
            "profile_pic_url",
            "https://pics.example.com/amy.png".to_owned(),
        ),
    ];
    for (k, v) in &want_user {
        assert_eq!(
            u.get(*k).and_then(Value::as_str),
            Some(v.as_str()),
            "{k}: {u}"
        );
    }
    say!("3. users list: {u}");

    let nodes = h.nodes();
    assert_eq!(nodes.len(), 1, "{}", describe_all(&nodes));
    let node_a = find_node(&nodes, "a", &ips_a[0])
        .unwrap_or_else(|| panic!("a ({ips_a:?}) not in nodes list: {}", describe_all(&nodes)));
    assert_eq!(node_ips(node_a), ips_a, "{node_a}");
    assert_eq!(
        user_field(node_a, "name"),
        Some("amy"),
        "a's owner: {node_a}"
    );
    assert_eq!(
        user_field(node_a, "provider_id"),
        Some(format!("{}/sub-amy", p.url).as_str()),
        "a's owner: {node_a}"
    );
    assert_eq!(
        node_a["register_method"].as_u64(),
        Some(3), // REGISTER_METHOD_OIDC, as Headscale's CLI prints the enum
        "{node_a}"
    );
    let expiry_unix = ts_field(node_a, "expiry").expect("a has a key expiry");
    let expiry = expiry_unix;
    let want = t_click_unix + EXPIRY_DAYS * 86400;
    assert!(
        (want - 2..=want + 5).contains(&expiry_unix),
        "expiry {expiry} ({expiry_unix}) is not oidc.expiry ({EXPIRY_DAYS}d) after the login ({want})"
    );
    say!(
        "3. nodes list: {} user=amy expiry={expiry} (login + {:.3} days)",
        describe(node_a),
        (expiry_unix - t_click_unix) as f64 / 86400.0
    );

    // What a itself was told: its own key expiry and its owner's profile.
    let (self_node, profile) = wait_for(
        "a's dumped MapResponse has its Node and UserProfiles",
        Duration::from_secs(20),
        || {
            h.map_dumps("a").into_iter().find_map(|m| {
                let node = m.get("Node")?.clone();
                let uid = node.get("User")?.clone();
                let profile = m
                    .get("UserProfiles")?
                    .as_array()?
                    .iter()
                    .find(|p| p.get("ID") == Some(&uid))?
                    .clone();
                Some((node, profile))
            })
        },
    );
    let key_expiry = self_node
        .get("KeyExpiry")
        .and_then(Value::as_str)
        .expect("KeyExpiry in a's self node");
    assert_eq!(
        tinyscale::timefmt::parse_rfc3339(key_expiry),
        Some(expiry_unix),
        "a's KeyExpiry {key_expiry} vs nodes list {expiry}"
    );
    assert_eq!(
        profile.get("LoginName").and_then(Value::as_str),
        Some("amy@example.com"),
        "{profile}"
    );
    assert_eq!(
        profile.get("DisplayName").and_then(Value::as_str),
        Some("Amy Example"),
        "{profile}"
    );
    say!("3. a's own MapResponse: KeyExpiry {key_expiry}, owner profile {profile}");

    // 4. b: a pre-auth key of the OIDC user; reaches a over the tailnet
    let key_b = h.preauth_key("amy", &[]);
    let t_b = Instant::now();
    h.start_node(
        "b",
        &control,
        &key_b,
        41642,
        &["--role", "proxy", "--upstream", "a", "--proxy-no-keepalive"],
    );
    let ips_b = wait_for(
        "node b gets its tailnet IPs",
        Duration::from_secs(60),
        || self_ips(&h.node_log_path("b")),
    );
    say!(
        "4. b (pre-auth key of amy) is up {:.1}s after start: {ips_b:?}",
        t_b.elapsed().as_secs_f64()
    );
    let (body, _) = h.fetch_via(
        "b",
        "4. b -> http://a/ over the tailnet",
        Duration::from_secs(60),
    );
    assert_eq!(
        body,
        format!("hello from a over the tailnet; you are {}", ips_b[0])
    );
    let nodes = h.nodes();
    assert_eq!(nodes.len(), 2, "{}", describe_all(&nodes));
    for n in &nodes {
        assert_eq!(user_field(n, "name"), Some("amy"), "{n}");
    }
    say!(
        "4. nodes list: {} (both owned by amy)",
        describe_all(&nodes)
    );

    // The provider's thread stops and its port closes.
    let provider_addr: SocketAddr = p.url.trim_start_matches("http://").parse().unwrap();
    drop(p);
    // (tiny_http's accept thread lets the listener go a moment after the server is dropped)
    wait_for(
        &format!("the provider's port {provider_addr} closes"),
        Duration::from_secs(5),
        || {
            std::net::TcpStream::connect_timeout(&provider_addr, Duration::from_secs(1))
                .is_err()
                .then_some(())
        },
    );
    say!(
        "OIDC real-client e2e passed in {:.1}s",
        t_start.elapsed().as_secs_f64()
    );
}
