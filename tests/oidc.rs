//! OIDC login end to end, against a small OpenID provider this test runs
//! itself on loopback (tiny_http; tests/oidc_provider, shared with
//! tests/e2e_oidc.rs): discovery, JWKS (an RSA test key from
//! tests/vectors and a P-256 key made per run), an authorization endpoint
//! that "logs the user in" at once and redirects back with a code, and a
//! token endpoint that checks the client secret (HTTP Basic) and the PKCE
//! verifier against the S256 challenge. A protocol-level client starts an
//! interactive registration; a plain-HTTP "browser" follows the AuthURL
//! through the redirects. Every refusal is checked to change nothing.
//! All traffic stays on 127.0.0.1; every wait is bounded.

mod common;
mod oidc_provider;

use common::*;
use oidc_provider::*;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tinyscale::client::{self, Node};
use tinyscale::config::{OidcConfig, Secret};
use tinyscale::control::interactive;

// ------------------------------------------------------------------ server

/// A fresh browser for the test server `ts`.
fn browser(ts: &TestServer) -> Browser {
    Browser::new(&ts.server.cfg.server_url, ts.addr)
}

fn oidc_config(p: &Provider) -> OidcConfig {
    OidcConfig {
        issuer: p.url.clone(),
        client_id: CLIENT_ID.into(),
        client_secret: Secret(CLIENT_SECRET.into()),
        scope: vec!["openid".into(), "profile".into(), "email".into()],
        extra_params: vec![],
        allowed_domains: vec!["example.com".into()],
        allowed_users: vec!["amy@example.com".into(), "bob@example.com".into()],
        allowed_groups: vec!["vpn".into()],
        expiry: Duration::from_secs(30 * 86400),
        use_expiry_from_token: false,
        pkce: true,
        pkce_plain: false,
        only_start_if_oidc_is_available: true,
        email_verified_required: true,
        ca_cert_path: None,
    }
}

fn start_oidc(tag: &str, o: OidcConfig) -> TestServer {
    let dir = tempdir(tag);
    let mut cfg = config(&dir);
    cfg.oidc = Some(o);
    start_with(cfg, dir)
}

/// Users and nodes, to compare before and after a refused login.
fn snapshot(ts: &TestServer) -> (Vec<tinyscale::state::User>, Vec<tinyscale::state::Node>) {
    let st = ts.server.state();
    (
        st.users.values().cloned().collect(),
        st.nodes.values().cloned().collect(),
    )
}

/// Starts an interactive registration for `n`; returns the AuthURL.
async fn pending(ts: &TestServer, conn: &mut client::Conn, n: &Node) -> String {
    let r = conn.register(&n.register_request(None)).await.unwrap();
    assert_eq!(r.error, "");
    assert!(!r.machine_authorized && !r.auth_url.is_empty());
    assert!(r.auth_url.starts_with(&ts.server.cfg.server_url));
    r.auth_url
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    smol::unblock(f).await
}

// ------------------------------------------------------------------- tests

#[test]
fn login_creates_user_and_registers_node() {
    let p = start_provider();
    let ts = start_oidc("oidc-ok", oidc_config(&p));
    assert!(ts.server.state().users.is_empty());
    block_on_timeout(60, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let n = Node::new("laptop");
        let mut c = client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let url = pending(&ts, &mut c, &n).await;
        let id = interactive::id_from_url(&url).unwrap().to_string();

        // The client's follow-up is held while the browser logs in.
        let mut follow = n.register_request(None);
        follow.followup = url.clone();
        let held = smol::spawn(async move {
            let r = c.register(&follow).await.unwrap();
            (c, r)
        });
        async_io::Timer::after(Duration::from_millis(200)).await;
        assert!(!held.is_finished(), "follow-up answered before login");

        // The callback shows the confirmation page; nothing is registered
        // until the click, which only counts from this browser, once.
        let mut b = browser(&ts);
        let t0 = tinyscale::state::now();
        let srv = ts.server.cfg.server_url.clone();
        let addr = ts.addr;
        let url_again = url.clone();
        let (ask, b) = blocking(move || {
            let cb = b.until_callback(&url);
            (b.get(&cb), b)
        })
        .await;
        assert_eq!(ask.status, 200, "{}", ask.body);
        assert!(
            ask.body.contains("Register the machine <b>laptop</b>"),
            "{}",
            ask.body
        );
        assert!(ask.body.contains("amy@example.com"), "{}", ask.body);
        assert!(
            ts.server.state().users.is_empty(),
            "user made before the click"
        );
        assert_eq!(ts.server.pending.status(&id), Some((false, None)));
        let action = format!("{srv}{}", confirm_url(&ask).unwrap());
        let (stranger, late) = blocking(move || {
            let mut b = b;
            let mut stranger = Browser {
                server_url: srv,
                server_addr: addr,
                cookies: vec![],
                source: None,
            };
            let s = stranger.request("POST", &action);
            // The stranger's attempt used the token up, even for the
            // browser that owned it: it has to start over.
            (s, b.request("POST", &action))
        })
        .await;
        assert_eq!(stranger.status, 403, "{}", stranger.body);
        assert_eq!(late.status, 400, "{}", late.body);
        assert!(ts.server.state().users.is_empty());
        assert_eq!(ts.server.pending.status(&id), Some((false, None)));
        let mut b = browser(&ts);
        let page = blocking(move || b.login(&url_again)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(page.body.contains("Logged in as amy"), "{}", page.body);
        assert_eq!(p.pkce_ok.load(Ordering::SeqCst), 2);

        let (mut c, r) = held.await;
        assert_eq!(r.error, "");
        assert!(r.machine_authorized && r.auth_url.is_empty());
        assert_eq!(r.login.login_name, "amy@example.com");
        assert_eq!(r.login.profile_pic_url, "https://pics.example.com/amy.png");

        let (user, node) = {
            let st = ts.server.state();
            assert_eq!(st.users.len(), 1);
            let u = st.users.values().next().unwrap().clone();
            let n = st.node_by_node_key(&n.node_key().0).unwrap().clone();
            (u, n)
        };
        assert_eq!(user.name, "amy");
        assert_eq!(user.email, "amy@example.com");
        assert_eq!(user.display_name, "Amy Example");
        assert_eq!(user.provider_id, format!("{}/sub-amy", p.url));
        assert_eq!(node.user, user.id);
        assert_eq!(node.register_method, tinyscale::state::RegisterMethod::Oidc);
        let want = t0 + 30 * 86400;
        assert!(
            (want..=want + 5).contains(&node.expiry),
            "expiry {} not ~{want}",
            node.expiry
        );
        // The registration is done; its page says so, a second login is refused.
        assert_eq!(
            ts.server.pending.status(&id).map(|s| s.1),
            Some(Some(node.id))
        );

        let mut s = c.map(&n.map_request(true, &[])).await.unwrap();
        let m = s.next().await.unwrap().unwrap();
        assert_eq!(m["Node"]["MachineAuthorized"], true);
        assert_eq!(m["Node"]["User"], json!(user.id));
        drop(s);

        // Its key expires; the client rotates to a new node key and logs in
        // again through the provider: same node, addresses and user.
        ts.server.state().expire_node(node.id).unwrap();
        let mut n = n;
        let old_key = n.node_key();
        n.node_private = tinyscale::keys::random32();
        let mut rotate = n.register_request(None);
        rotate.old_node_key = old_key;
        let r = c.register(&rotate).await.unwrap();
        assert!(!r.auth_url.is_empty() && !r.machine_authorized, "{r:?}");
        rotate.followup = r.auth_url.clone();
        let held = smol::spawn(async move { c.register(&rotate).await.unwrap() });
        let mut b = browser(&ts);
        let u = r.auth_url.clone();
        let t1 = tinyscale::state::now();
        let page = blocking(move || b.login(&u)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(held.await.machine_authorized);
        {
            let st = ts.server.state();
            let again = st.node_by_node_key(&n.node_key().0).unwrap();
            assert_eq!(again.id, node.id);
            assert_eq!((again.ipv4, again.ipv6), (node.ipv4, node.ipv6));
            assert_eq!(again.old_node_key, old_key.0);
            assert_eq!(again.user, user.id);
            assert!(again.expiry >= t1 + 30 * 86400, "{}", again.expiry);
            assert_eq!(st.users.len(), 1);
        }

        // Same account, second machine, ES256 this time: the user is reused.
        p.next.lock().unwrap().signer = Signer::Ec;
        let n2 = Node::new("phone");
        let mut c2 = client::connect(ts.addr, &server_pub, &n2.machine_private)
            .await
            .unwrap();
        let url2 = pending(&ts, &mut c2, &n2).await;
        let mut b = browser(&ts);
        let page = blocking(move || b.login(&url2)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let st = ts.server.state();
        assert_eq!(st.users.len(), 1, "second login made another user");
        assert_eq!(st.node_by_node_key(&n2.node_key().0).unwrap().user, user.id);
    });
}

#[test]
fn groups_from_userinfo() {
    let p = start_provider();
    let ts = start_oidc("oidc-ui", oidc_config(&p));
    block_on_timeout(60, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let n = Node::new("ui");
        let mut c = client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let url = pending(&ts, &mut c, &n).await;
        let before = snapshot(&ts);
        // Userinfo about someone else is ignored: no groups, refused.
        *p.next.lock().unwrap() = Login {
            groups_only_in_userinfo: true,
            userinfo_sub: Some("sub-mallory".into()),
            ..Default::default()
        };
        let mut b = browser(&ts);
        let u = url.clone();
        let page = blocking(move || b.login(&u)).await;
        assert_eq!(page.status, 403, "{}", page.body);
        assert!(page.body.contains("group"), "{}", page.body);
        assert_eq!(snapshot(&ts), before);
        // The same subject's userinfo supplies the groups the token lacks.
        p.next.lock().unwrap().userinfo_sub = None;
        let mut b = browser(&ts);
        let page = blocking(move || b.login(&url)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(ts.server.state().users.len(), 1);
    });
}

#[test]
fn provider_key_rotation() {
    let p = start_provider();
    let ts = start_oidc("oidc-rot", oidc_config(&p));
    // Start-up read the key set once.
    assert_eq!(p.jwks_served.load(Ordering::SeqCst), 1);
    block_on_timeout(60, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let n = Node::new("rot");
        let mut c = client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let url = pending(&ts, &mut c, &n).await;
        // The provider rolls over to a new key. A token naming it within
        // seconds of the last download is refused without another download
        // (a stream of unknown `kid`s cannot make us hammer the provider)...
        p.rotated.store(true, Ordering::SeqCst);
        p.next.lock().unwrap().signer = Signer::Rotated;
        let mut b = browser(&ts);
        let u = url.clone();
        let page = blocking(move || b.login(&u)).await;
        assert_eq!(page.status, 403, "{}", page.body);
        assert!(page.body.contains("does not publish"), "{}", page.body);
        assert_eq!(p.jwks_served.load(Ordering::SeqCst), 1);
        assert!(ts.server.state().users.is_empty());
        // ...and once the cached set is 10 s old, the unknown key makes us
        // fetch the set again, and the login passes.
        async_io::Timer::after(Duration::from_millis(10_500)).await;
        let mut b = browser(&ts);
        let page = blocking(move || b.login(&url)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(p.jwks_served.load(Ordering::SeqCst), 2);
        assert_eq!(ts.server.state().users.len(), 1);
    });
}

#[test]
fn expiry_from_token_and_name_clash() {
    let p = start_provider();
    let mut o = oidc_config(&p);
    o.use_expiry_from_token = true;
    let ts = start_oidc("oidc-exp", o);
    // A local user already named "amy": the OIDC account must not become it.
    let local = ts.server.state().create_user("amy", "", "").unwrap();
    block_on_timeout(60, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let n = Node::new("box");
        let mut c = client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let url = pending(&ts, &mut c, &n).await;
        p.next.lock().unwrap().exp_in = 7200;
        let t0 = tinyscale::state::now();
        let mut b = browser(&ts);
        let page = blocking(move || b.login(&url)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let st = ts.server.state();
        let node = st.node_by_node_key(&n.node_key().0).unwrap();
        assert_ne!(node.user, local.id);
        assert_eq!(st.users[&node.user].name, "amy-2");
        assert!(
            (t0 + 7200..=t0 + 7205).contains(&node.expiry),
            "{}",
            node.expiry
        );
    });
}

#[test]
fn refusals_change_nothing() {
    let p = start_provider();
    let ts = start_oidc("oidc-bad", oidc_config(&p));
    let bad: Vec<(&str, Login, u16, &str)> = vec![
        (
            "forged signature",
            Login {
                signer: Signer::Forged,
                ..Default::default()
            },
            403,
            "signature",
        ),
        (
            "expired token",
            Login {
                exp_in: -3600,
                ..Default::default()
            },
            403,
            "expired",
        ),
        (
            "wrong audience",
            Login {
                aud: "another-client".into(),
                ..Default::default()
            },
            403,
            "aud",
        ),
        (
            "wrong issuer",
            Login {
                iss: Some("http://127.0.0.1:1".into()),
                ..Default::default()
            },
            403,
            "iss",
        ),
        (
            "wrong nonce",
            Login {
                nonce: Some("not-the-nonce".into()),
                ..Default::default()
            },
            403,
            "nonce",
        ),
        (
            "disallowed domain",
            Login {
                email: "amy@evil.example".into(),
                ..Default::default()
            },
            403,
            "domain",
        ),
        (
            "disallowed user",
            Login {
                email: "carol@example.com".into(),
                ..Default::default()
            },
            403,
            "not allowed",
        ),
        (
            "disallowed group",
            Login {
                groups: vec!["staff".into()],
                ..Default::default()
            },
            403,
            "group",
        ),
        (
            "unverified email",
            Login {
                email_verified: false,
                ..Default::default()
            },
            403,
            "verified",
        ),
        (
            "provider error",
            Login {
                error: Some("access_denied".into()),
                ..Default::default()
            },
            403,
            "refused",
        ),
    ];
    block_on_timeout(120, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let n = Node::new("victim");
        let mut c = client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let url = pending(&ts, &mut c, &n).await;
        let id = interactive::id_from_url(&url).unwrap().to_string();
        let before = snapshot(&ts);
        let unchanged = |what: &str| {
            assert_eq!(snapshot(&ts), before, "{what} changed state");
            assert_eq!(
                ts.server.pending.status(&id),
                Some((false, None)),
                "{what} touched the registration"
            );
        };

        for (what, login, status, says) in bad {
            *p.next.lock().unwrap() = login;
            let mut b = browser(&ts);
            let u = url.clone();
            let page = blocking(move || b.login(&u)).await;
            assert_eq!(page.status, status, "{what}: {}", page.body);
            assert!(page.body.contains(says), "{what}: {}", page.body);
            unchanged(what);
        }
        *p.next.lock().unwrap() = Login::default();

        // Tampered state: unknown, refused before any provider call.
        let mut b = browser(&ts);
        let u = url.clone();
        let page = blocking(move || {
            let cb = b.until_callback(&u);
            let tampered = cb.replacen("state=", "state=x", 1);
            b.get(&tampered)
        })
        .await;
        assert_eq!(page.status, 400, "{}", page.body);
        assert!(page.body.contains("Unknown"), "{}", page.body);
        unchanged("tampered state");
        // A state that is not even ours in shape (multi-byte UTF-8).
        let mut b = browser(&ts);
        let srv = ts.server.cfg.server_url.clone();
        let page = blocking(move || {
            b.get(&format!(
                "{srv}/oidc/callback?code=c&state=a%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9"
            ))
        })
        .await;
        assert_eq!(page.status, 400, "{}", page.body);
        unchanged("garbage state");

        // The callback in a browser that did not start the login (no
        // cookie), then replayed in the right one: both refused.
        let mut b = browser(&ts);
        let u = url.clone();
        let srv = ts.server.cfg.server_url.clone();
        let addr = ts.addr;
        let (other, replay) = blocking(move || {
            let cb = b.until_callback(&u);
            let mut stranger = Browser {
                server_url: srv,
                server_addr: addr,
                cookies: vec![],
                source: None,
            };
            let other = stranger.get(&cb);
            (other, b.get(&cb))
        })
        .await;
        assert_eq!(other.status, 403, "{}", other.body);
        assert!(other.body.contains("not started in this browser"));
        assert_eq!(replay.status, 400, "{}", replay.body);
        unchanged("foreign browser / replay");

        // Unknown registration ID: no redirect to the provider.
        let mut b = browser(&ts);
        let srv = ts.server.cfg.server_url.clone();
        let page = blocking(move || b.get(&format!("{srv}/register/0000deadbeef"))).await;
        assert_eq!(page.status, 404);
        assert!(page.location.is_none());
        unchanged("unknown registration");

        // A registration that expires while the user is at the provider.
        let short = ts
            .server
            .pending
            .start_with_ttl(
                interactive::Request {
                    machine_key: [7; 32],
                    node_key: [8; 32],
                    old_node_key: [0; 32],
                    hostinfo: tinyscale::tailcfg::Hostinfo {
                        hostname: "late".into(),
                        ..Default::default()
                    },
                    source: None,
                    ephemeral: false,
                    version: 130,
                },
                Duration::from_secs(2),
            )
            .unwrap();
        let mut b = browser(&ts);
        let short_url = format!("{}/register/{short}", ts.server.cfg.server_url);
        let srv = ts.server.cfg.server_url.clone();
        let (page, confirm, again) = blocking(move || {
            // One login still at the provider, one at the confirmation page.
            let cb = b.until_callback(&short_url);
            let cb2 = b.until_callback(&short_url);
            let ask = b.get(&cb2);
            let action = confirm_url(&ask).expect("confirmation page");
            std::thread::sleep(Duration::from_millis(3100));
            let confirm = b.request("POST", &format!("{srv}{action}"));
            (b.get(&cb), confirm, b.get(&short_url))
        })
        .await;
        assert_eq!(page.status, 410, "{}", page.body);
        assert!(page.body.contains("expired"), "{}", page.body);
        assert_eq!(confirm.status, 410, "{}", confirm.body);
        assert!(confirm.body.contains("expired"), "{}", confirm.body);
        assert_eq!(again.status, 410, "{}", again.body);
        assert_eq!(snapshot(&ts), before, "expired registration changed state");

        // Nothing above reached a token endpoint with a wrong secret or
        // verifier, and the pending registration still completes.
        assert_eq!(p.refused.load(Ordering::SeqCst), 0);
        let mut follow = n.register_request(None);
        follow.followup = url.clone();
        let held = smol::spawn(async move { c.register(&follow).await.unwrap() });
        let mut b = browser(&ts);
        let page = blocking(move || b.login(&url)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(held.await.machine_authorized);
        assert_eq!(ts.server.state().users.len(), 1);
    });
}

#[test]
fn wrong_client_secret_is_refused_by_the_provider() {
    let p = start_provider();
    let mut o = oidc_config(&p);
    o.client_secret = Secret("not-the-secret".into());
    let ts = start_oidc("oidc-secret", o);
    block_on_timeout(60, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let n = Node::new("x");
        let mut c = client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let url = pending(&ts, &mut c, &n).await;
        let before = snapshot(&ts);
        let mut b = browser(&ts);
        let page = blocking(move || b.login(&url)).await;
        assert_eq!(page.status, 502, "{}", page.body);
        assert!(page.body.contains("invalid_client"), "{}", page.body);
        assert!(!page.body.contains("not-the-secret"));
        assert_eq!(p.refused.load(Ordering::SeqCst), 1);
        assert_eq!(snapshot(&ts), before);
    });
}

#[test]
fn unreachable_provider_stops_start_unless_allowed() {
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = Provider {
        url: format!("http://127.0.0.1:{port}"),
        next: Default::default(),
        pkce_ok: Default::default(),
        refused: Default::default(),
        rotated: Default::default(),
        jwks_served: Default::default(),
        running: None,
    };
    let dir = tempdir("oidc-down");
    let mut cfg = config(&dir);
    cfg.oidc = Some(oidc_config(&p));
    let e = tinyscale::app::build(cfg.clone())
        .err()
        .expect("must refuse to start");
    assert!(
        e.to_string().contains("only_start_if_oidc_is_available"),
        "{e}"
    );
    if let Some(o) = cfg.oidc.as_mut() {
        o.only_start_if_oidc_is_available = false;
    }
    let ts = start_with(cfg, dir);
    block_on_timeout(60, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let n = Node::new("y");
        let mut c = client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let url = pending(&ts, &mut c, &n).await;
        let id = interactive::id_from_url(&url).unwrap().to_string();
        let mut b = browser(&ts);
        let page = blocking(move || b.get(&url)).await;
        assert_eq!(page.status, 503, "{}", page.body);
        assert!(page.body.contains(&format!("auth register --auth-id {id}")));
    });
}

/// Issue 10 (hostile internet): anyone may GET `/register/<id>`, and each
/// GET starts a login held for ten minutes. One address gets 16 of them
/// (MAX_FLOWS_PER_SOURCE); past that it is refused with 429 and nothing is
/// held for it, while a browser from another address (127.0.0.2) still
/// logs in. Without the share, all 40 would start and one host could fill
/// the table (1,024) with a few seconds of reloads.
#[test]
fn login_flows_are_bounded_per_source() {
    let p = start_provider();
    let ts = start_oidc("oidc-flows", oidc_config(&p));
    block_on_timeout(120, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let n = Node::new("laptop");
        let mut c = client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let url = pending(&ts, &mut c, &n).await;
        let id = interactive::id_from_url(&url).unwrap().to_string();

        let mut attacker = browser(&ts);
        let u = url.clone();
        let (statuses, last) = blocking(move || {
            let s: Vec<u16> = (0..40).map(|_| attacker.get(&u).status).collect();
            (s, attacker.get(&u))
        })
        .await;
        assert_eq!(statuses[..16], [302; 16], "{statuses:?}");
        assert!(statuses[16..].iter().all(|&s| s == 429), "{statuses:?}");
        assert_eq!(last.status, 429);
        assert!(last.body.contains("from this address"), "{}", last.body);
        assert!(last.location.is_none());
        assert_eq!(ts.server.pending.status(&id), Some((false, None)));

        // Another host is not locked out by the first one's logins.
        let mut b = browser(&ts);
        b.source = Some("127.0.0.2".parse().unwrap());
        let page = blocking(move || b.login(&url)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(page.body.contains("Logged in as amy"), "{}", page.body);
        assert!(matches!(
            ts.server.pending.status(&id),
            Some((false, Some(_)))
        ));
        assert!(ts.server.state().users.values().any(|u| u.name == "amy"));
    });
}
