//! Other Tailscale client implementations against the `tinyscale` binary, beside Go tsnet nodes
//! (the harness of tests/realclient_common; tests/realclient/README.md).
//!
//! `arkitekt_mesh_joins_fetches_direct_and_via_derp_and_obeys_acls` (root): arkitekt-mesh 0.8.0
//! from PyPI (a Rust client, capability version 142; tests/realclient/install-arkitekt.sh puts it
//! in a venv, tests/realclient/arkitekt_node.py drives it) in namespace `k`, user alice; two Go
//! nodes of user bob serve HTTP on the tailnet: `g`, and `d` with `TS_DEBUG_ALWAYS_USE_DERP=1`.
//! Policy file: `alice@ -> bob@:80`.
//!  1. k joins (tailnet IPs; `nodes list` shows it with its version `arkitekt-mesh/0.8.0`).
//!  2. k fetches `http://<g>/` (the reply names k's tailnet IP) and the 1 MiB `/blob` (sha256
//!     equal); g's log shows the direct path to k's underlay address (`now using <k>:<port>`).
//!  3. k fetches d's `/blob` through tinyscale's DERP relay (its pinned self-signed certificate):
//!     d's log shows `derp route for [..] set to derp-999` and never a direct path.
//!  4. The policy becomes `bob@ -> bob@:80`: k's fetches from g fail (three in a row); back to the
//!     first policy, they succeed again.
//!
//! arkitekt-mesh has no way to listen on the tailnet, so it is only ever the client side.
//!
//! `go_clients_over_an_acme_certificate` (root, `--features acme`): Debian's pebble issues the
//! server a certificate for `ts.acme.test` by HTTP-01 (pebble's DNS stub resolves the name to the
//! bridge address, where `tls_letsencrypt_listen` is); two Go tsnet nodes whose namespaces resolve
//! `ts.acme.test` to the server (`/etc/netns/NS/hosts`, removed with the namespace) and trust only
//! pebble's root (`SSL_CERT_FILE`) join with the control URL `https://ts.acme.test:<tls port>` (the
//! plain control port is never given to them) and, both with `TS_DEBUG_ALWAYS_USE_DERP=1`, reach
//! each other through the relay, which the DERP map names by host with no pin.
//! Skips with a reason when it cannot run (not root, no `ip netns`, install failed); fails under
//! CI=true instead. Knobs as in tests/e2e_realclient.rs.

#[macro_use]
mod realclient_common;
#[cfg(feature = "acme")]
mod pebble;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use realclient_common::*;
use serde_json::Value;

const PREFIX: &str = "tsk"; // netns tsk-g, tsk-d, tsk-k; bridge tskbr0

const ALICE_TO_BOB: &str = r#"{
  // alice's arkitekt-mesh node may open TCP connections to port 80 of bob's Go nodes
  "acls": [{"action": "accept", "proto": "tcp", "src": ["alice@"], "dst": ["bob@:80"]}],
}"#;

const BOB_ONLY: &str = r#"{
  // alice may reach nothing
  "acls": [{"action": "accept", "proto": "tcp", "src": ["bob@"], "dst": ["bob@:80"]}],
}"#;

fn write_policy(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// `tests/realclient/install-arkitekt.sh`; the venv's python, or None (skip, said why).
fn install_arkitekt() -> Option<PathBuf> {
    let out = Command::new("timeout")
        .args(["-k", "5", "900", "bash"])
        .arg(harness_dir().join("install-arkitekt.sh"))
        .stdin(Stdio::null())
        .output()
        .expect("run install-arkitekt.sh");
    if !out.status.success() {
        let why = format!(
            "tests/realclient/install-arkitekt.sh failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!in_ci(), "{why}");
        say!("SKIPPED arkitekt-mesh e2e: {why}");
        return None;
    }
    let home = std::env::var_os("REALCLIENT_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
            cache.join("tinyscale-realclient")
        });
    Some(home.join("arkitekt-venv/bin/python"))
}

/// One arkitekt-mesh node (tests/realclient/arkitekt_node.py) in a namespace, driven line by line;
/// stopped by PID on drop.
struct Arkitekt {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Arkitekt {
    fn start(h: &Harness, python: &Path, name: &str, control: &str, key: &str) -> Arkitekt {
        let home = h.dir.join(format!("ark-{name}"));
        fs::create_dir_all(&home).unwrap();
        let log = h.dir.join(format!("ark-{name}.log"));
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
            .arg(python)
            .arg(harness_dir().join("arkitekt_node.py"))
            .arg(home.join("state"))
            .args([name, control, key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("start arkitekt_node.py");
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
        Arkitekt {
            child,
            stdin,
            lines,
            log,
        }
    }

    /// The next JSON line, within `limit`.
    fn next(&self, limit: Duration) -> Value {
        match self.lines.recv_timeout(limit) {
            Ok(l) => serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}")),
            Err(e) => panic!(
                "arkitekt-mesh node: no answer within {limit:?} ({e}); its log:\n{}",
                tail(&self.log, 30)
            ),
        }
    }

    /// Fetches `url` through the node's proxy into the tailnet.
    fn fetch(&mut self, url: &str, secs: u32) -> Value {
        writeln!(self.stdin, "fetch {url} {secs}").unwrap();
        self.stdin.flush().unwrap();
        self.next(Duration::from_secs(secs as u64 + 30))
    }
}

impl Drop for Arkitekt {
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
        let _ = self.child.kill(); // by PID: `ip netns exec` and `env` exec into python
        let _ = self.child.wait();
    }
}

#[test]
fn arkitekt_mesh_joins_fetches_direct_and_via_derp_and_obeys_acls() {
    let Some(mut h) = Harness::begin("arkitekt-mesh e2e", PREFIX, &["g", "d", "k"]) else {
        return;
    };
    let Some(python) = install_arkitekt() else {
        return;
    };
    let t_start = Instant::now();
    let policy = h.dir.join("policy.hujson");
    write_policy(&policy, ALICE_TO_BOB);
    let port = h.free_port();
    h.start_server(ServerOpts {
        port,
        derp_enabled: true,
        policy_path: Some(policy.clone()),
        ..ServerOpts::default()
    });
    let control = h.control_url();
    h.cli(&["users", "create", "alice"]);
    h.cli(&["users", "create", "bob"]);
    let bob_key = h.preauth_key("bob", &["--reusable"]);
    let alice_key = h.preauth_key("alice", &[]);

    h.start_node("g", &control, &bob_key, 41641, &["--role", "serve"]);
    h.start_node(
        "d",
        &control,
        &bob_key,
        41642,
        &["--role", "serve", "--env", "TS_DEBUG_ALWAYS_USE_DERP=1"],
    );
    // 1. join
    let mut k = Arkitekt::start(&h, &python, "k", &control, &alice_key);
    let up = k.next(Duration::from_secs(120));
    assert_eq!(up["event"], "up", "{up}");
    let k_ip = up["addresses"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .find(|a| a.starts_with("100."))
        })
        .unwrap_or_else(|| panic!("no tailnet IPv4 in {up}"))
        .to_owned();
    say!(
        "arkitekt-mesh k joined in {:.3}s: {}",
        up["join_s"].as_f64().unwrap_or(-1.0),
        up["addresses"]
    );
    let g_ip = wait_for("g gets its tailnet IPs", Duration::from_secs(60), || {
        self_ips(&h.node_log_path("g"))
    })[0]
        .clone();
    let d_ip = wait_for("d gets its tailnet IPs", Duration::from_secs(60), || {
        self_ips(&h.node_log_path("d"))
    })[0]
        .clone();
    let nodes = h.nodes();
    let kn = find_node(&nodes, "k", &k_ip)
        .unwrap_or_else(|| panic!("k ({k_ip}) not in nodes list: {}", describe_all(&nodes)));
    say!("nodes list: {}", describe_all(&nodes));
    // The version is a column of the table (Headscale's JSON node has no such field).
    let table = h.cli(&["nodes", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&k_ip) && l.contains("arkitekt-mesh/0.8.0")),
        "nodes list shows k's version: {kn}\n{table}"
    );

    // 2. k -> g, direct
    let t = Instant::now();
    let hello = wait_for("k fetches http://g/", Duration::from_secs(90), || {
        let r = k.fetch(&format!("http://{g_ip}/"), 10);
        (r["status"] == 200).then_some(r)
    });
    say!("k -> g: {hello} ({:.1}s)", t.elapsed().as_secs_f64());
    let blob = k.fetch(&format!("http://{g_ip}/blob"), 60);
    let want = read_lossy(&h.run.join("g/blob.sha256")).trim().to_owned();
    assert_eq!(
        (blob["status"].as_u64(), blob["bytes"].as_u64()),
        (Some(200), Some(1 << 20)),
        "{blob}"
    );
    assert_eq!(blob["sha256"].as_str(), Some(want.as_str()), "{blob}");
    say!(
        "k -> g 1 MiB in {:.2}s, sha256 equal",
        blob["secs"].as_f64().unwrap_or(-1.0)
    );
    let k_under = h.underlay_ip(2);
    let direct = wait_for("g logs a direct path to k", Duration::from_secs(30), || {
        let d: Vec<String> = direct_lines(&h, &h.node_log_path("g"))
            .into_iter()
            .filter(|l| l.contains(&format!("now using {k_under}:")))
            .collect();
        (!d.is_empty()).then_some(d)
    });
    say!("direct: g: {}", direct[0]);

    // 3. k -> d through the relay
    let t = Instant::now();
    wait_for(
        "k fetches http://d/ (DERP)",
        Duration::from_secs(90),
        || (k.fetch(&format!("http://{d_ip}/"), 10)["status"] == 200).then_some(()),
    );
    let blob = k.fetch(&format!("http://{d_ip}/blob"), 60);
    let want = read_lossy(&h.run.join("d/blob.sha256")).trim().to_owned();
    assert_eq!(blob["sha256"].as_str(), Some(want.as_str()), "{blob}");
    let routes = derp_route_lines(&h.node_log_path("d"));
    let direct_d = direct_lines(&h, &h.node_log_path("d"));
    say!(
        "k -> d via DERP ({:.1}s to first byte; 1 MiB in {:.2}s): {:?}; direct lines: {}",
        t.elapsed().as_secs_f64(),
        blob["secs"].as_f64().unwrap_or(-1.0),
        routes.first(),
        direct_d.len()
    );
    assert!(!routes.is_empty(), "d logs its DERP route (derp-999)");
    assert!(
        direct_d.is_empty(),
        "d never used a direct path: {direct_d:?}"
    );

    // 4. ACL: alice may reach nothing, then g again
    write_policy(&policy, BOB_ONLY);
    let t = Instant::now();
    let denied = wait_for(
        "k's fetch from g is denied",
        Duration::from_secs(60),
        || {
            let r = k.fetch(&format!("http://{g_ip}/"), 4);
            (r["status"] != 200).then_some(r)
        },
    );
    for _ in 0..2 {
        let r = k.fetch(&format!("http://{g_ip}/"), 4);
        assert_ne!(r["status"], 200, "denied fetch succeeded again: {r}");
    }
    say!(
        "ACL: denied after {:.1}s: {denied}",
        t.elapsed().as_secs_f64()
    );
    write_policy(&policy, ALICE_TO_BOB);
    wait_for(
        "k's fetch from g is allowed again",
        Duration::from_secs(60),
        || (k.fetch(&format!("http://{g_ip}/"), 4)["status"] == 200).then_some(()),
    );
    drop(k);
    say!(
        "PASS arkitekt-mesh e2e in {:.1}s",
        t_start.elapsed().as_secs_f64()
    );
}

#[cfg(feature = "acme")]
#[test]
fn go_clients_over_an_acme_certificate() {
    const HOST: &str = "ts.acme.test";
    let Some(mut h) = Harness::begin("ACME real-client e2e", "tsa", &["a", "b"]) else {
        return;
    };
    if !pebble::have_pebble() {
        return;
    }
    let t_start = Instant::now();
    let host_ip = h.host_ip();
    let (port, tls_port, http01) = (h.free_port(), h.free_port(), h.free_port());
    let p = pebble::Pebble::start(&h.dir, &host_ip, http01, tls_port, 3600);
    let root = h.dir.join("pebble-root.pem");
    let root_pem = p
        .get(&format!("https://{}/roots/0", p.mgmt))
        .expect("pebble root");
    fs::write(&root, &root_pem).unwrap();
    h.start_server(ServerOpts {
        port,
        tls_port,
        derp_enabled: true,
        extra_yaml: format!(
            "tls_letsencrypt_hostname: {HOST}\ntls_letsencrypt_listen: {host_ip}:{http01}\nacme_url: {}\nacme_ca_cert_path: {}\n",
            p.dir_url,
            p.tls_cert.display()
        ),
        ..ServerOpts::default()
    });
    let t = Instant::now();
    let line = wait_for(
        "the server installs its ACME certificate",
        Duration::from_secs(60),
        || {
            read_lossy(&h.server_log())
                .lines()
                .find(|l| l.contains("ACME: certificate for"))
                .map(str::to_owned)
        },
    );
    say!("{line} ({:.1}s)", t.elapsed().as_secs_f64());
    for n in ["a", "b"] {
        fs::write(
            format!("/etc/netns/{}/hosts", h.ns(n)),
            format!("127.0.0.1 localhost\n{host_ip} {HOST}\n"),
        )
        .unwrap();
    }
    let control = format!("https://{HOST}:{tls_port}");
    h.cli(&["users", "create", "carol"]);
    let key = h.preauth_key("carol", &["--reusable"]);
    let trust = format!("SSL_CERT_FILE={}", root.display());
    let env = [
        "--env",
        &trust,
        "--env",
        "TS_DEBUG_ALWAYS_USE_DERP=1",
        "--env",
        "TS_DEBUG_MAP=1",
    ];
    let mut a_args = vec!["--role", "serve"];
    a_args.extend_from_slice(&env);
    h.start_node("a", &control, &key, 41641, &a_args);
    let mut b_args = vec!["--role", "proxy", "--upstream", "a"];
    b_args.extend_from_slice(&env);
    h.start_node("b", &control, &key, 41642, &b_args);
    let ips_b = wait_for("b joins over https://", Duration::from_secs(90), || {
        self_ips(&h.node_log_path("b"))
    });
    say!("b joined over {control}: {ips_b:?}");
    let (body, took) = h.fetch_via(
        "b",
        "b -> http://a/ via DERP (ACME certificate)",
        Duration::from_secs(90),
    );
    assert!(body.starts_with("hello from a over the tailnet"), "{body}");
    let routes = derp_route_lines(&h.node_log_path("b"));
    assert!(!routes.is_empty(), "b logs its DERP route (derp-999)");
    let direct = direct_lines(&h, &h.node_log_path("b"));
    assert!(direct.is_empty(), "no direct path: {direct:?}");
    let (nm, _) = h.dumped_netmap("b");
    let node = &nm.derp_map["Regions"]["999"]["Nodes"][0];
    assert_eq!(node["HostName"], HOST, "{node}");
    assert!(node.get("CertName").is_none(), "no pin: {node}");
    say!(
        "PASS ACME real-client e2e in {:.1}s (fetch {:.1}s; {})",
        t_start.elapsed().as_secs_f64(),
        took.as_secs_f64(),
        routes[0]
    );
}
