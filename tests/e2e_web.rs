//! The admin page with REAL Tailscale clients (tests/realclient, root + netns) and Debian's
//! headless Chromium (tests/browser): the owner logs in through the link `tinyscale web login`
//! prints; node b (a pre-auth key) appears on the Tailnet page without a reload; node a, started
//! without a key, waits on the Pending logins page and is approved there as alice, then comes up
//! live; both fetch from each other over the tailnet; a policy saved in the page's editor denies
//! b -> a while a -> b still works (the real clients obey it); a rejected policy shows its error
//! line and leaves that policy in force. Screenshots: target/web-screenshots/e2e-*.png.

#[macro_use]
mod realclient_common;
mod browser;

use browser::{need_chromium, Browser};
use realclient_common::*;
use std::time::{Duration, Instant};

const PREFIX: &str = "tsw"; // netns tsw-a, tsw-b

/// Only alice's nodes may open port 80 on bob's: b (bob) -> a (alice) is denied.
const A_TO_B: &str = "{\n  // set from the admin page\n  \"acls\": [\n    {\"action\": \"accept\", \"proto\": \"tcp\", \"src\": [\"alice@\"], \"dst\": [\"bob@:80\"]},\n  ],\n}\n";

const BROKEN: &str = "{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}\n    {\"missing\": \"comma\"}\n  ]\n}\n";

const DENIED_SECS: u32 = 4;

fn fetch(h: &Harness, node: &str, max_secs: u32) -> (u16, String) {
    let (code, body) = h.curl(node, "http://127.0.0.1:8080/", max_secs);
    (code, String::from_utf8_lossy(&body).trim().to_owned())
}

/// Puts `text` in the policy editor and presses Save.
fn save_policy(b: &mut Browser, text: &str) {
    b.fill("#policy", text);
    b.eval("document.getElementById('policyresult').textContent = ''");
    b.click("#save");
    b.wait(
        "document.getElementById('policyresult').textContent !== ''",
        "policy save answered",
    );
}

#[test]
fn the_admin_page_drives_real_clients() {
    let Some(bin) = need_chromium() else { return };
    let Some(mut h) = Harness::begin("web page real-client e2e", PREFIX, &["a", "b"]) else {
        return;
    };
    let port = h.free_port();
    h.start_server(ServerOpts {
        port,
        tls_port: 0,
        derp_enabled: true,
        policy_path: None,
        extra_yaml: "policy:\n  mode: database\n".into(),
        ..ServerOpts::default()
    });
    let control = h.control_url();
    h.cli(&["users", "create", "alice"]);
    h.cli(&["users", "create", "bob"]);

    // The owner logs in with the link the CLI prints.
    let link = h.cli(&["web", "login"]).trim().to_string();
    assert!(
        link.starts_with(&format!("{control}/admin/login?t=")),
        "{link}"
    );
    let mut b = Browser::launch(&bin, "e2e");
    b.goto(&link);
    b.wait(
        "document.getElementById('summary')",
        "tailnet page after login",
    );
    say!("logged in through `tinyscale web login`");

    // b joins with a key: it appears on the open page without a reload.
    let key_b = h.preauth_key("bob", &[]);
    let proxy = |up: &'static str| ["--role", "proxy", "--upstream", up, "--proxy-no-keepalive"];
    let t_b = Instant::now();
    h.start_node("b", &control, &key_b, 41642, &proxy("a"));
    b.wait(
        "[...document.querySelectorAll('[data-node] h3')].some(e => e.querySelector('.dot.on'))",
        "node b online on the page",
    );
    say!(
        "node b shown online {:.1}s after it was started",
        t_b.elapsed().as_secs_f64()
    );
    b.screenshot("e2e-1-node-b-live");

    // a starts without a key: approved from the Pending logins page as alice.
    h.start_node("a", &control, "", 41641, &proxy("b"));
    let url = h.node(&["auth-url", "a", "60"], 70);
    let id = url.rsplit('/').next().unwrap().to_string();
    b.goto(&format!("{control}/admin/#pending/{id}"));
    b.wait(
        &format!("document.querySelector('[data-auth=\"{id}\"] select')"),
        "a's login on the pending page",
    );
    b.eval(&format!(
        "document.querySelector('[data-auth=\"{id}\"] select').value = 'alice'"
    ));
    b.screenshot("e2e-2-pending");
    let t_a = Instant::now();
    b.click(&format!("[data-auth=\"{id}\"] button.p"));
    b.wait(
        "document.getElementById('msg').textContent.includes('done')",
        "approval answered",
    );
    let ips_a = wait_for(
        "node a gets its tailnet IPs",
        Duration::from_secs(60),
        || self_ips(&h.node_log_path("a")),
    );
    b.goto(&format!("{control}/admin/#tailnet"));
    b.wait(
        "document.querySelectorAll('[data-node] .dot.on').length === 2",
        "both nodes online on the page",
    );
    say!(
        "node a approved on the page; up with {ips_a:?} {:.1}s later, shown online",
        t_a.elapsed().as_secs_f64()
    );
    let page = b.text("main");
    assert!(page.contains("alice") && page.contains("bob"), "{page}");
    b.screenshot("e2e-3-both-live");

    // Allow-all: both directions work.
    let ips_b = self_ips(&h.node_log_path("b")).expect("b is up");
    let hello_from_a = format!("hello from a over the tailnet; you are {}", ips_b[0]);
    let hello_from_b = format!("hello from b over the tailnet; you are {}", ips_a[0]);
    let (body, _) = h.fetch_via("b", "b -> http://a/ (allow-all)", Duration::from_secs(90));
    assert_eq!(body, hello_from_a);
    let (body, _) = h.fetch_via("a", "a -> http://b/ (allow-all)", Duration::from_secs(60));
    assert_eq!(body, hello_from_b);

    // Save a policy that denies b -> a from the editor.
    b.goto(&format!("{control}/admin/#policy"));
    b.wait("document.getElementById('policy')", "policy page");
    let t_p = Instant::now();
    save_policy(&mut b, A_TO_B);
    assert!(
        b.text("#policyresult").contains("Saved"),
        "{}",
        b.text("#policyresult")
    );
    b.screenshot("e2e-4-policy-saved");
    let code = wait_for("b -> a denied", Duration::from_secs(60), || {
        let (code, _) = fetch(&h, "b", DENIED_SECS);
        (code != 200).then_some(code)
    });
    let denied_after = t_p.elapsed();
    for _ in 0..2 {
        let (again, body) = fetch(&h, "b", DENIED_SECS);
        assert_ne!(
            again, 200,
            "b -> a succeeded under the saved policy: {body:?}"
        );
    }
    let (body, _) = h.fetch_via("a", "a -> http://b/ (allowed)", Duration::from_secs(60));
    assert_eq!(body, hello_from_b);
    say!(
        "policy saved on the page: b -> a refused ({code}, 0 = no answer in {DENIED_SECS} s) by {:.1}s after save and twice more, a -> b still works",
        denied_after.as_secs_f64()
    );

    // A broken policy: its line is marked, nothing changes for the clients.
    save_policy(&mut b, BROKEN);
    b.wait("document.getElementById('errline')", "error line marked");
    assert_eq!(b.text("#errline"), "4");
    b.screenshot("e2e-5-policy-rejected");
    let (code, _) = fetch(&h, "b", DENIED_SECS);
    assert_ne!(code, 200, "b -> a allowed after a rejected policy");
    let (code, body) = fetch(&h, "a", 10);
    assert_eq!((code, body.as_str()), (200, hello_from_b.as_str()));
    say!("rejected policy marked line 4; the saved one stays in force");

    // The used link does not work twice.
    b.goto(&link);
    b.wait(
        "document.title.includes('does not work')",
        "replayed link refused",
    );
}
