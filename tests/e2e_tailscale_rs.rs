//! tailscale-rs 0.6.1 (crates.io `tailscale`, capability version 130) against the `tinyscale`
//! binary beside Go tsnet nodes. It is a large build (aws-lc-sys; ~4 min of two cores, longer on a
//! loaded machine), so this test runs only when `TINYSCALE_E2E_TAILSCALE_RS=1` asks for it and says
//! so otherwise — CI does not run it. The probe (tests/tailscale_rs_probe, a crate of its own) is
//! built in `$REALCLIENT_HOME/tsrs-target` (default ~/.cache/tinyscale-realclient/tsrs-target), which
//! is kept between runs.
//!
//!  1. r (tailscale-rs, user alice) joins; `nodes list` lists it.
//!  2. r fetches `http://<g>/` from Go node g (user bob) directly: g logs `now using <r>:<port>`.
//!  3. Go node p (user bob; a proxy to r's tailnet IP) fetches from r: `hello from tailscale-rs`.
//!  4. r fetches from Go node d, which has `TS_DEBUG_ALWAYS_USE_DERP=1`: through tinyscale's relay
//!     (d logs its DERP route to derp-999, no direct line). tailscale-rs trusts only its baked-in
//!     web-PKI roots and cannot read a `sha256-raw:` pin, so here the embedded region is given to
//!     every node by a `derp.paths` file with `InsecureForTests: true` (the probe is built with
//!     ts_control's `insecure-derp`); with a certificate from a public CA (ACME) it needs neither.
//!  5. The policy becomes `bob@ -> bob@:80`: r's fetch from g fails three times in a row.
//!
//! Client-side bugs worked around here (tailscale-rs's, not tinyscale's):
//!  - In a fresh network namespace its netlink monitor fails with EBUSY and it reports no
//!    endpoints; the harness deletes and re-adds the namespace's eth0 address ~2 s after it
//!    starts (`readd_address`), after which it picks the interface up.
//!  - Its key fetch is plain `GET /key` over http (feature `insecure-keyfetch`).
//!  - A peer removed from its netmap and added back is never sent to again: this test never
//!    removes a peer it talks to (the policy change comes last).
//!  - Its packet filter drops replies to its own connections unless a rule admits the peer to
//!    its ephemeral ports (see `BOTH_WAYS`).
//!  - Its first request can take 10-12 s when the other side's first WireGuard handshake is lost
//!    (one side had no relay yet): fetches are retried within a bounded time.

#[macro_use]
mod realclient_common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use realclient_common::*;
use serde_json::Value;

const PREFIX: &str = "tsr"; // netns tsr-g, tsr-d, tsr-p, tsr-r

/// `bob@ -> alice@:*`, not `:80`: tailscale-rs's packet filter does not let a reply in unless a
/// rule allows its source to reach the reply's destination port (its ephemeral port): with
/// `alice@:80` only, Go node g accepts r's SYN (`Accept: TCP{r > g:80} tcp ok`) and its SYN-ACK
/// never makes it in. Go's filter passes non-SYN TCP, so Go peers need no such rule.
const BOTH_WAYS: &str = r#"{"acls": [
  {"action": "accept", "proto": "tcp", "src": ["alice@"], "dst": ["bob@:80"]},
  {"action": "accept", "proto": "tcp", "src": ["bob@"], "dst": ["alice@:*"]},
]}"#;
const BOB_ONLY: &str =
    r#"{"acls": [{"action": "accept", "proto": "tcp", "src": ["bob@"], "dst": ["bob@:80"]}]}"#;

fn write_policy(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn rc_home() -> PathBuf {
    std::env::var_os("REALCLIENT_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
            cache.join("tinyscale-realclient")
        })
}

/// Builds the probe (release, its own cached target dir); its path.
fn build_probe() -> PathBuf {
    let target = rc_home().join("tsrs-target");
    let manifest =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tailscale_rs_probe/Cargo.toml");
    let t0 = Instant::now();
    let out = Command::new("timeout")
        .args([
            "-k",
            "10",
            "3600",
            "cargo",
            "build",
            "--release",
            "--manifest-path",
        ])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .output()
        .expect("run cargo build for the tailscale-rs probe");
    assert!(
        out.status.success(),
        "building tests/tailscale_rs_probe failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    say!(
        "tailscale-rs probe built in {:.0}s",
        t0.elapsed().as_secs_f64()
    );
    target.join("release/tsrs-probe")
}

/// The tailscale-rs node, driven line by line; stopped by PID on drop.
struct Probe {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Probe {
    fn start(h: &Harness, bin: &Path, name: &str, control: &str, key: &str) -> Probe {
        let home = h.dir.join(format!("tsrs-{name}"));
        fs::create_dir_all(&home).unwrap();
        let log = h.dir.join(format!("tsrs-{name}.log"));
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &h.ns(name),
                "env",
                "-i",
                "PATH=/usr/bin:/bin",
            ])
            .arg(format!("HOME={}", home.display()))
            .arg("RUST_LOG=info")
            .arg(bin)
            .arg(home.join("keys.json"))
            .args([name, control, key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the tailscale-rs probe");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Probe {
            child,
            stdin,
            lines,
            log,
        }
    }

    fn next(&self, limit: Duration) -> Value {
        match self.lines.recv_timeout(limit) {
            Ok(l) => serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}")),
            Err(e) => panic!(
                "tailscale-rs probe: no answer within {limit:?} ({e}); its log:\n{}",
                tail(&self.log, 30)
            ),
        }
    }

    fn get(&mut self, ip: &str, path: &str, secs: u32) -> Value {
        writeln!(self.stdin, "get {ip} 80 {path} {secs}").unwrap();
        self.stdin.flush().unwrap();
        self.next(Duration::from_secs(secs as u64 + 30))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The EBUSY workaround: the namespace's eth0 address deleted and added again.
fn readd_address(h: &Harness, node: &str, ip: &str) {
    for op in ["del", "add"] {
        let ok = Command::new("ip")
            .args([
                "-n",
                &h.ns(node),
                "addr",
                op,
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip addr {op} {ip} in {}", h.ns(node));
    }
}

#[test]
fn tailscale_rs_joins_both_directions_via_derp_and_acl() {
    if std::env::var_os("TINYSCALE_E2E_TAILSCALE_RS").is_none() {
        say!("SKIPPED tailscale-rs e2e: set TINYSCALE_E2E_TAILSCALE_RS=1 to run it (a ~4 min crates.io build of tailscale 0.6.1 and aws-lc-sys; not run in CI)");
        return;
    }
    let Some(mut h) = Harness::begin("tailscale-rs e2e", PREFIX, &["g", "d", "p", "r"]) else {
        return;
    };
    let bin = build_probe();
    let t_start = Instant::now();
    let policy = h.dir.join("policy.hujson");
    write_policy(&policy, BOTH_WAYS);
    let (port, tls_port) = (h.free_port(), h.free_port());
    let host = h.host_ip();
    let derp_file = h.dir.join("derp-insecure.json");
    fs::write(
        &derp_file,
        format!(
            r#"{{"Regions":{{"999":{{"RegionID":999,"RegionCode":"e2e","RegionName":"tinyscale e2e","Nodes":[{{"Name":"999a","RegionID":999,"HostName":"{host}","IPv4":"{host}","IPv6":"none","STUNPort":3478,"DERPPort":{tls_port},"InsecureForTests":true}}]}}}}}}"#
        ),
    )
    .unwrap();
    h.start_server(ServerOpts {
        port,
        tls_port,
        derp_enabled: true,
        policy_path: Some(policy.clone()),
        derp_paths: vec![derp_file],
        ..ServerOpts::default()
    });
    let control = h.control_url();
    h.cli(&["users", "create", "alice"]);
    h.cli(&["users", "create", "bob"]);
    let bob = h.preauth_key("bob", &["--reusable"]);
    let alice = h.preauth_key("alice", &[]);
    h.start_node("g", &control, &bob, 41641, &["--role", "serve"]);
    h.start_node(
        "d",
        &control,
        &bob,
        41642,
        &["--role", "serve", "--env", "TS_DEBUG_ALWAYS_USE_DERP=1"],
    );
    // 1. join (and the EBUSY workaround)
    let mut r = Probe::start(&h, &bin, "r", &control, &alice);
    std::thread::sleep(Duration::from_secs(2));
    readd_address(&h, "r", &h.underlay_ip(3));
    let up = r.next(Duration::from_secs(120));
    let r_ip = up["ipv4"]
        .as_str()
        .unwrap_or_else(|| panic!("{up}"))
        .to_owned();
    say!("tailscale-rs r joined: {up}");
    let nodes = h.nodes();
    assert!(
        find_node(&nodes, "r", &r_ip).is_some(),
        "r listed: {}",
        describe_all(&nodes)
    );
    let g_ip = wait_for("g's IPs", Duration::from_secs(60), || {
        self_ips(&h.node_log_path("g"))
    })[0]
        .clone();
    let d_ip = wait_for("d's IPs", Duration::from_secs(60), || {
        self_ips(&h.node_log_path("d"))
    })[0]
        .clone();

    // 2. r -> g, direct
    let got = wait_for("r fetches http://g/", Duration::from_secs(90), || {
        let v = r.get(&g_ip, "/", 15);
        (v["status"] == 200).then_some(v)
    });
    say!("r -> g: {got}");
    let r_under = h.underlay_ip(3);
    let direct = wait_for("g logs a direct path to r", Duration::from_secs(30), || {
        let d: Vec<String> = direct_lines(&h, &h.node_log_path("g"))
            .into_iter()
            .filter(|l| l.contains(&format!("now using {r_under}:")))
            .collect();
        (!d.is_empty()).then_some(d)
    });
    say!("direct: {}", direct[0]);

    // 3. Go -> r
    h.start_node(
        "p",
        &control,
        &bob,
        41643,
        &["--role", "proxy", "--upstream", &r_ip],
    );
    let (body, _) = h.fetch_via(
        "p",
        "p -> http://r/ (tailscale-rs serves)",
        Duration::from_secs(90),
    );
    assert_eq!(body, "hello from tailscale-rs");

    // 4. r -> d via DERP
    let got = wait_for(
        "r fetches http://d/blob via DERP",
        Duration::from_secs(90),
        || {
            let v = r.get(&d_ip, "/blob", 30);
            (v["status"] == 200).then_some(v)
        },
    );
    let want = read_lossy(&h.run.join("d/blob.sha256")).trim().to_owned();
    assert_eq!(got["sha256"].as_str(), Some(want.as_str()), "{got}");
    let routes = derp_route_lines(&h.node_log_path("d"));
    let direct_d = direct_lines(&h, &h.node_log_path("d"));
    say!(
        "r -> d 1 MiB via DERP in {:.2}s: {:?}",
        got["secs"].as_f64().unwrap_or(-1.0),
        routes.first()
    );
    assert!(
        !routes.is_empty() && direct_d.is_empty(),
        "{routes:?} {direct_d:?}"
    );

    // 5. ACL
    write_policy(&policy, BOB_ONLY);
    let denied = wait_for(
        "r's fetch from g is denied",
        Duration::from_secs(60),
        || {
            let v = r.get(&g_ip, "/", 4);
            (v["status"] != 200).then_some(v)
        },
    );
    for _ in 0..2 {
        let v = r.get(&g_ip, "/", 4);
        assert_ne!(v["status"], 200, "denied fetch succeeded again: {v}");
    }
    say!("ACL: {denied}");
    drop(r);
    say!(
        "PASS tailscale-rs e2e in {:.1}s",
        t_start.elapsed().as_secs_f64()
    );
}
