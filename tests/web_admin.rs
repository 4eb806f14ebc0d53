//! The admin page in a real browser (Debian's headless Chromium over the
//! DevTools pipe) against an in-process server with protocol-level
//! clients: one-time login, live nodes, route approval, pending logins,
//! users and keys (with the QR code decoded back when `zbarimg` is
//! installed), the policy editor, the status page; and the refusals
//! (replayed link, forged and expired sessions, missing CSRF token).
//! Screenshots go to target/web-screenshots/.

mod browser;
mod common;

use browser::{need_chromium, Browser};
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::time::Duration;
use tinyscale::client::{self, Node};
use tinyscale::web::api::{handle, Who};

/// A login link as the CLI gets it, pointed at the test server's address.
fn login_link(ts: &TestServer) -> String {
    let r = handle(&ts.server, &Who::Local, "POST", "/api/v1/web/login-link");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let url = v["url"].as_str().unwrap();
    let path = &url[url.find("/admin/login").unwrap()..];
    format!("http://{}{path}", ts.addr)
}

/// One raw HTTP/1.1 request; the whole answer as text.
fn http(ts: &TestServer, req: &str) -> String {
    let mut s = std::net::TcpStream::connect(ts.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn web_server(tag: &str) -> TestServer {
    let dir = tempdir(tag);
    let mut cfg = config(&dir);
    cfg.policy_mode = "database".into();
    start_with(cfg, dir)
}

/// Reads `stream` (the node stays online) until `stop` fires or the
/// stream ends.
async fn stream_until_stopped(stream: &mut client::MapStream, stop: &smol::channel::Receiver<()>) {
    use futures_lite::FutureExt;
    loop {
        let next = async { matches!(stream.next().await, Ok(Some(_))) };
        let stopped = async {
            let _ = stop.recv().await;
            false
        };
        if !next.or(stopped).await {
            return;
        }
    }
}

/// Keeps `node` registered and streaming (online) until `stop` fires.
fn hold_node(
    ts: &TestServer,
    node: &Node,
    key: &str,
    routes: &[&str],
    stop: smol::channel::Receiver<()>,
) {
    block_on_timeout(240, async {
        let (_c, mut stream, _) = join_with(ts, node, key, routes, &[]).await;
        stream_until_stopped(&mut stream, &stop).await;
    });
}

#[test]
fn pages_are_served_with_a_strict_policy_and_refusals_are_clear() {
    let ts = web_server("web-http");
    let r = http(
        &ts,
        "GET /admin/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("Content-Security-Policy: default-src 'none'; script-src 'self'"));
    assert!(r.contains("X-Frame-Options: DENY"));
    assert!(!r.contains("<script>"), "no inline script");
    let r = http(
        &ts,
        "GET /admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 302") && r.contains("Location: /admin/"));
    // A link works once; the second use is a clear 403 page.
    let link = login_link(&ts);
    let path = &link[link.find("/admin").unwrap()..];
    let r = http(
        &ts,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    assert!(r.starts_with("HTTP/1.1 303"), "{r}");
    assert!(r.contains("HttpOnly; SameSite=Strict"), "{r}");
    assert!(!r.contains("Secure"), "plain HTTP: no Secure flag");
    let cookie = r
        .split("Set-Cookie: ")
        .nth(1)
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    let r = http(
        &ts,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("This login link does not work"));
    // The cookie reads the API; a write without the CSRF token is refused
    // and changes nothing; with it, it works.
    let get = |c: &str| {
        http(
            &ts,
            &format!(
                "GET /api/v1/user HTTP/1.1\r\nHost: x\r\nCookie: {c}\r\nConnection: close\r\n\r\n"
            ),
        )
    };
    assert!(get(&cookie).starts_with("HTTP/1.1 200"));
    let body = r#"{"name":"mallory"}"#;
    let post = |extra: &str| {
        http(
            &ts,
            &format!(
                "POST /api/v1/user HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let r = post("");
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("X-CSRF-Token"),
        "{r}"
    );
    let r = post("X-CSRF-Token: 00000000000000000000000000000000\r\n");
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(
        ts.server.state().find_user("mallory").is_none(),
        "nothing changed"
    );
    let s = get(&cookie);
    let csrf = {
        let r = http(
            &ts,
            &format!("GET /api/v1/web/session HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"),
        );
        let body = &r[r.find("\r\n\r\n").unwrap() + 4..];
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["csrf"].as_str().unwrap().to_string()
    };
    assert!(s.contains("\"users\""));
    let r = post(&format!("X-CSRF-Token: {csrf}\r\n"));
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(ts.server.state().find_user("mallory").is_some());
    // A session cannot mint login links.
    let r = http(
        &ts,
        &format!("POST /api/v1/web/login-link HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nX-CSRF-Token: {csrf}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // A forged cookie and an expired session are refused.
    let r = get("tinyscale_session=0123456789abcdef");
    assert!(
        r.starts_with("HTTP/1.1 401") && r.contains("tinyscale web login"),
        "{r}"
    );
    ts.server.web.sessions.expire_all_now();
    let r = get(&cookie);
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    // No cookie at all: Headscale's plain 401.
    let r = http(
        &ts,
        "GET /api/v1/user HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        r.starts_with("HTTP/1.1 401") && r.ends_with("Unauthorized"),
        "{r}"
    );
}

#[test]
fn web_enabled_false_turns_the_page_off() {
    let dir = tempdir("web-off");
    let mut cfg = config(&dir);
    cfg.web_enabled = false;
    let ts = start_with(cfg, dir);
    let r = http(
        &ts,
        "GET /admin/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r = handle(&ts.server, &Who::Local, "POST", "/api/v1/web/login-link");
    assert_eq!(r.status, 404);
}

#[test]
fn the_page_in_chromium_manages_the_tailnet() {
    let Some(bin) = need_chromium() else { return };
    let ts = web_server("web-browser");
    let base = format!("http://{}", ts.addr);
    let mut b = Browser::launch(&bin, "admin");

    // Without a session the page says how to get one.
    b.goto(&format!("{base}/admin/"));
    b.wait(
        "document.body.innerText.includes('Not logged in')",
        "logged-out page",
    );

    // Log in through a one-time link: the token leaves the address bar.
    let link = login_link(&ts);
    b.goto(&link);
    b.wait(
        "location.pathname === '/admin/' && document.getElementById('summary')",
        "tailnet page",
    );
    assert_eq!(b.eval("location.search"), json!(""));
    let cookies = b.cookies();
    let c = cookies
        .iter()
        .find(|c| c["name"] == "tinyscale_session")
        .expect("session cookie");
    assert_eq!(c["httpOnly"], json!(true));
    assert_eq!(c["sameSite"], json!("Strict"));
    assert_eq!(
        b.eval("document.cookie"),
        json!(""),
        "HttpOnly: not readable by script"
    );
    b.screenshot("01-empty-tailnet");

    // A replayed link is refused with a clear page.
    b.goto(&link);
    b.wait("document.title.includes('does not work')", "refusal page");
    b.screenshot("02-replayed-link");
    b.goto(&format!("{base}/admin/#tailnet"));
    b.wait("document.getElementById('summary')", "tailnet page");

    let key = ts.key("alice", true, false, &[]);
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(2);
    std::thread::scope(|sc| {
        // If anything below fails, the client threads still end.
        struct StopOnDrop(smol::channel::Sender<()>);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                let _ = self.0.try_send(());
                let _ = self.0.try_send(());
            }
        }
        let _stop = StopOnDrop(stop_tx.clone());
        // A node comes up advertising a subnet: it appears live.
        let n1 = Node::new("laptop");
        let (ts_ref, key1, rx1) = (&ts, key.clone(), stop_rx.clone());
        sc.spawn(move || {
            hold_node(
                ts_ref,
                &n1,
                &key1,
                &["10.9.0.0/24", "0.0.0.0/0", "::/0"],
                rx1,
            )
        });
        b.wait(
            "[...document.querySelectorAll('[data-node] h3')].some(e => e.textContent.includes('laptop') && e.querySelector('.dot.on'))",
            "laptop online",
        );
        b.screenshot("03-node-live");

        // Approve its subnet route by ticking it.
        b.click("[data-route='10.9.0.0/24']");
        b.wait(
            "document.getElementById('msg').textContent.includes('done')",
            "route approved",
        );
        let approved = {
            let st = ts.server.state();
            st.nodes
                .values()
                .find(|n| n.hostname == "laptop")
                .unwrap()
                .approved_routes
                .clone()
        };
        assert!(approved.iter().any(|r| r == "10.9.0.0/24"), "{approved:?}");
        b.wait(
            "document.querySelector(\"[data-route='10.9.0.0/24']\").checked",
            "box ticked",
        );
        b.screenshot("04-route-approved");

        // Rename it through the inline form.
        b.click("[data-node] button");
        b.fill("[data-node] form input", "work-laptop");
        b.click("[data-node] form button[type=submit]");
        b.wait("document.body.innerText.includes('work-laptop')", "renamed");

        // A pending interactive login: approve it as alice from the page.
        let (id_tx, id_rx) = std::sync::mpsc::channel::<String>();
        let rx2 = stop_rx.clone();
        let ts_ref = &ts;
        sc.spawn(move || {
            block_on_timeout(300, async {
                let server_pub = client::fetch_key(ts_ref.addr).await.unwrap();
                let n = Node::new("phone");
                let mut c = client::connect(ts_ref.addr, &server_pub, &n.machine_private)
                    .await
                    .unwrap();
                let r = c.register(&n.register_request(None)).await.unwrap();
                let id = tinyscale::control::interactive::id_from_url(&r.auth_url)
                    .unwrap()
                    .to_string();
                id_tx.send(id).unwrap();
                let mut req = n.register_request(None);
                req.followup = r.auth_url.clone();
                let r = c.register(&req).await.unwrap();
                assert!(r.machine_authorized, "approved from the page");
                let mut s = c.map(&n.map_request(true, &[])).await.unwrap();
                stream_until_stopped(&mut s, &rx2).await;
            })
        });
        let id = id_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        b.goto(&format!("{base}/admin/#pending/{id}"));
        b.wait(
            &format!("document.querySelector('[data-auth=\"{id}\"] select')"),
            "pending login listed",
        );
        b.screenshot("05-pending-login");
        b.click(&format!("[data-auth=\"{id}\"] button.p"));
        b.goto(&format!("{base}/admin/#tailnet"));
        b.wait(
            "[...document.querySelectorAll('[data-node] h3')].some(e => e.textContent.includes('phone') && e.querySelector('.dot.on'))",
            "approved phone online",
        );
        b.screenshot("06-two-nodes");

        // Nodes that go away turn offline without a reload.
    });
    b.wait(
        "document.querySelectorAll('[data-node] .dot.on').length === 0",
        "nodes offline",
    );
    b.screenshot("07-nodes-offline");

    // Users and keys: create a user, then a key for them, shown once with
    // a QR code of the command line.
    b.goto(&format!("{base}/admin/#users"));
    b.wait("document.getElementById('newuser')", "users page");
    b.fill("#newuser input", "bob");
    b.click("#newuser button");
    b.wait(
        "document.querySelector(\"[data-user='bob']\")",
        "user bob listed",
    );
    assert!(ts.server.state().find_user("bob").is_some());
    b.eval(
        "(() => { const s = document.querySelector('#newkeyform select'); s.value = 'bob'; })()",
    );
    b.click("#newkeyform button");
    b.wait(
        "document.getElementById('newkey') && document.getElementById('qr')",
        "new key with QR",
    );
    let secret = b.text("#newkey");
    let line = b.text("#upline");
    assert!(line.ends_with(&format!("--authkey {secret}")), "{line}");
    assert!(line.starts_with("tailscale up --login-server "), "{line}");
    b.screenshot("08-new-key");
    let qr_png = browser::base64_decode(
        b.eval("document.getElementById('qr').toDataURL('image/png').split(',')[1]")
            .as_str()
            .unwrap(),
    );
    let qr_file = b.shots.join("08-new-key-qr.png");
    std::fs::write(&qr_file, qr_png).unwrap();
    match std::process::Command::new("zbarimg")
        .args(["-q", "--raw"])
        .arg(&qr_file)
        .output()
    {
        Ok(o) => assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            line,
            "QR decodes to the command line"
        ),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("zbarimg: {e}"),
        Err(e) => eprintln!("QR not decoded: zbarimg not available ({e})"),
    }
    // The key shown works: a node joins with it as bob.
    block_on_timeout(30, async {
        let n = Node::new("bobs-box");
        join(&ts, &n, &secret).await;
    });
    {
        let st = ts.server.state();
        let bob = st.find_user("bob").unwrap().id;
        assert!(st
            .nodes
            .values()
            .any(|n| n.hostname == "bobs-box" && n.user == bob));
    }

    // Policy: a broken one shows its line and is not applied; a good one
    // is saved and in force.
    b.goto(&format!("{base}/admin/#policy"));
    b.wait("document.getElementById('policy')", "policy page");
    b.fill("#policy", "{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}\n    oops\n  ]\n}\n");
    b.click("#check");
    b.wait("document.getElementById('errline')", "error line marked");
    assert_eq!(b.text("#errline"), "4");
    assert!(b.text("#policyresult").starts_with("Line 4:"));
    b.screenshot("09-policy-error");
    b.click("#save");
    b.wait(
        "document.getElementById('policyresult').className === 'err'",
        "save refused",
    );
    assert!(
        ts.server.policy_text().unwrap_or_default().is_empty(),
        "nothing saved"
    );
    let good = "{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"alice@\"], \"dst\": [\"alice@:*\"]}\n  ],\n  \"tests\": [{\"src\": \"alice@\", \"accept\": [\"alice@:22\"]}]\n}\n";
    b.fill("#policy", good);
    b.click("#check");
    b.wait(
        "document.getElementById('policyresult').textContent.includes('tests passed')",
        "check ok",
    );
    b.click("#save");
    b.wait(
        "document.getElementById('policyresult').textContent.includes('Saved')",
        "saved",
    );
    assert_eq!(ts.server.policy_text().unwrap(), good);
    assert_ne!(b.text("#policyset"), "-", "the page shows when it was set");
    b.screenshot("10-policy-saved");

    // Status.
    b.goto(&format!("{base}/admin/#status"));
    b.wait("document.getElementById('status')", "status page");
    let st = b.text("#status");
    assert!(
        st.contains(&format!("tinyscale {}", env!("CARGO_PKG_VERSION"))),
        "{st}"
    );
    assert!(st.contains("healthy"), "{st}");
    assert!(st.contains("packets relayed"), "{st}");
    b.screenshot("11-status");

    // A phone-sized screen.
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": true}),
    );
    b.goto(&format!("{base}/admin/#tailnet"));
    b.wait("document.getElementById('summary')", "tailnet on a phone");
    let wide = b.eval("document.documentElement.scrollWidth <= 390");
    assert_eq!(wide, json!(true), "no sideways scrolling on a phone");
    b.screenshot("12-phone");

    // A request without the CSRF token, from the page itself, is refused.
    let r = b.eval("fetch('/api/v1/user', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{\"name\":\"eve\"}'}).then(r => r.status)");
    assert_eq!(r, json!(403));
    assert!(ts.server.state().find_user("eve").is_none());

    // Log out: the session is gone server-side too.
    b.click("#logout");
    b.wait(
        "document.body.innerText.includes('Logged out')",
        "logged out",
    );
    let r = b.eval("fetch('/api/v1/user').then(r => r.status)");
    assert_eq!(r, json!(401));
    // Revoked from the CLI side: a fresh session dies with revoke_all.
    b.goto(&login_link(&ts));
    b.wait("document.getElementById('summary')", "logged in again");
    let r = handle(
        &ts.server,
        &Who::Local,
        "POST",
        "/api/v1/web/sessions/revoke",
    );
    assert!(r.body.contains("\"revoked\":1"), "{}", r.body);
    b.goto(&format!("{base}/admin/"));
    b.wait(
        "document.body.innerText.includes('Not logged in')",
        "revoked",
    );
    b.screenshot("13-revoked");
}
