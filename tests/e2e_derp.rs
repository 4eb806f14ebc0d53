//! The embedded DERP relay end to end.
//!
//! `real_clients_relay_over_derp_and_survive_server_restart` (root; REAL Tailscale clients, see
//! tests/realclient/README.md and tests/e2e_realclient.rs, whose approach this follows):
//!  1. Two real clients a (serves HTTP on the tailnet) and b (local proxy -> `http://a`) whose
//!     namespaces drop every UDP packet to the other node (nftables in each namespace's OUTPUT
//!     chain; without `nft` the clients get `TS_DEBUG_NEVER_DIRECT_UDP=1` instead). STUN to the
//!     server stays open, so the only path between them is the relay on the server's TLS port.
//!     b fetches `http://a/` and a 1 MiB blob (sha256 compared); both logs show the DERP route
//!     (`derp route for [..] set to derp-999`) and neither shows a direct `now using <ip>:<port>`.
//!  2. The server is killed (SIGKILL by PID) under the live clients: b can no longer reach a.
//!     It is started again on the same data dir: the clients reconnect by themselves (both
//!     `online` in `nodes list`), keep their IPs, and b fetches from a again through the relay.
//!
//! `derp_relay_admits_only_registered_node_keys` (no root, loopback only): the protocol-level
//! DERP client (`tinyscale::derp::client`) over TLS to `/derp`, pinning the certificate the way
//! real clients do (`CertName: sha256-raw:…` from the DERP map a registered node receives): a
//! random node key is refused, registered node keys are admitted and can relay a packet to each
//! other, and the key of a node deleted with `nodes delete` is refused again.
//!
//! Root-only parts skip with a reason when they cannot run (fail under CI=true). Knobs as in
//! tests/e2e_realclient.rs: TINYSCALE_E2E_BIN, REALCLIENT_HOME, REALCLIENT_SUBNET, TINYSCALE_E2E_KEEP;
//! `TINYSCALE_E2E_NO_NFT=1` uses `TS_DEBUG_NEVER_DIRECT_UDP=1` instead of nftables. Under CI=true a
//! missing `nft` (Debian package `nftables`) is a failure.

#[macro_use]
mod realclient_common;
mod derp_tls;

use derp_tls::derp_over_tls;

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use realclient_common::*;
use serde_json::Value;

const PREFIX: &str = "tsd"; // netns tsd-a, tsd-b; bridge tsdbr0

/// Drops UDP from the node's namespace to every other address of the test /24 except the server
/// (.1, STUN): no direct WireGuard/disco path between nodes, DERP only. Returns false without nft.
/// `TINYSCALE_E2E_NO_NFT=1` forces the fallback.
fn block_direct_udp(h: &Harness, node: &str) -> bool {
    if !have("nft") || std::env::var_os("TINYSCALE_E2E_NO_NFT").is_some() {
        return false;
    }
    let rules = format!(
        "table inet tinyscale_e2e {{
  chain out {{
    type filter hook output priority 0; policy accept;
    ip daddr {s}.2-{s}.254 meta l4proto udp counter drop
  }}
}}
",
        s = h.subnet
    );
    let file = h.dir.join(format!("nft-{node}.conf"));
    fs::write(&file, rules).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &h.ns(node), "nft", "-f"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft in {}: {}",
        h.ns(node),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// Packets the drop rule has counted in NODE's namespace.
fn dropped_udp(h: &Harness, node: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &h.ns(node), "nft", "list", "chain"])
        .args(["inet", "tinyscale_e2e", "out"])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .find_map(|l| {
            let l = l.trim();
            l.contains("counter packets").then(|| {
                l.split("counter ")
                    .nth(1)
                    .unwrap_or(l)
                    .trim_end_matches(" drop")
                    .to_owned()
            })
        })
        .unwrap_or_else(|| "?".into())
}

/// Who listens on TCP `port` (from `ss`), for messages.
fn port_holder(port: u16) -> String {
    let out = Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{port}")])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let holders: Vec<&str> = out
        .split_whitespace()
        .filter(|w| w.starts_with("users:"))
        .collect();
    if holders.is_empty() {
        "unknown".into()
    } else {
        holders.join(" ")
    }
}

fn both_online(h: &Harness, ip_a: &str, ip_b: &str) -> Option<Vec<Value>> {
    let nodes = h.nodes();
    let on = |name: &str, ip: &str| {
        find_node(&nodes, name, ip)
            .and_then(|n| n.get("online"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    (on("a", ip_a) && on("b", ip_b)).then_some(nodes)
}

#[test]
fn real_clients_relay_over_derp_and_survive_server_restart() {
    let Some(mut h) = Harness::begin("DERP real-client e2e", PREFIX, &["a", "b"]) else {
        return;
    };
    let t_start = Instant::now();

    // No direct path between the nodes.
    let nft_a = block_direct_udp(&h, "a");
    let nft_b = block_direct_udp(&h, "b");
    let mut node_env: Vec<&str> = vec![];
    if nft_a && nft_b {
        say!(
            "nftables in {} and {}: UDP to {}.2-254 dropped (STUN to .1 allowed)",
            h.ns("a"),
            h.ns("b"),
            h.subnet
        );
    } else {
        assert!(
            !in_ci() || std::env::var_os("TINYSCALE_E2E_NO_NFT").is_some(),
            "`nft` (package nftables) is missing under CI=true"
        );
        say!("no `nft` (or TINYSCALE_E2E_NO_NFT set): TS_DEBUG_NEVER_DIRECT_UDP=1 on both clients instead");
        node_env = vec!["--env", "TS_DEBUG_NEVER_DIRECT_UDP=1"];
    }

    // The TLS port must be 443: a client whose control connection dropped redials the HTTPS port,
    // which for an http:// control URL with a port is 443.
    // Another server on this machine may hold it (e.g. one on the default 0.0.0.0:443): wait for
    // it, bounded, naming the holder.
    let host = h.host_ip();
    let mut said = false;
    wait_for(
        &format!("{host}:443 to be free (the TLS listener must be there)"),
        Duration::from_secs(600),
        || match TcpListener::bind((host.as_str(), 443)) {
            Ok(_) => Some(()),
            Err(e) => {
                if !said {
                    said = true;
                    say!(
                        "{host}:443 is taken ({e}) by: {}; waiting up to 10 min",
                        port_holder(443)
                    );
                }
                std::thread::sleep(Duration::from_secs(1));
                None
            }
        },
    );
    let port = h.free_port();
    h.start_server(ServerOpts {
        port,
        tls_port: 443,
        derp_enabled: true,
        policy_path: None,
        ..ServerOpts::default()
    });
    let control = h.control_url();
    h.cli(&["users", "create", "alice"]);
    let authkey = h.preauth_key("alice", &["--reusable"]);

    // 1. two clients, relay only
    let t_join = Instant::now();
    let mut a_args = vec!["--role", "serve"];
    a_args.extend_from_slice(&node_env);
    h.start_node("a", &control, &authkey, 41641, &a_args);
    let mut b_args = vec!["--role", "proxy", "--upstream", "a"];
    b_args.extend_from_slice(&node_env);
    h.start_node("b", &control, &authkey, 41642, &b_args);
    let ips_a = wait_for(
        "node a gets its tailnet IPs",
        Duration::from_secs(60),
        || self_ips(&h.node_log_path("a")),
    );
    let ips_b = wait_for(
        "node b gets its tailnet IPs",
        Duration::from_secs(60),
        || self_ips(&h.node_log_path("b")),
    );
    say!(
        "node a {ips_a:?}, node b {ips_b:?} ({:.1}s after start)",
        t_join.elapsed().as_secs_f64()
    );
    let (ip4_a, ip4_b) = (ips_a[0].clone(), ips_b[0].clone());

    let (body, _) = h.fetch_via("b", "b -> http://a/ via DERP", Duration::from_secs(90));
    assert_eq!(
        body,
        format!("hello from a over the tailnet; you are {ip4_b}")
    );
    say!(
        "first byte b -> a {:.1}s after the nodes were started",
        t_join.elapsed().as_secs_f64()
    );

    let t_blob = Instant::now();
    let (code, blob) = h.curl("b", "http://127.0.0.1:8080/blob", 60);
    let secs = t_blob.elapsed().as_secs_f64();
    assert_eq!(code, 200, "GET /blob through b's proxy");
    let want = read_lossy(&h.run.join("a/blob.sha256")).trim().to_owned();
    let got = sha256_hex(&blob);
    say!(
        "1 MiB blob via DERP: {} bytes in {secs:.2}s; sha256 served by a {want}, received by b {got}",
        blob.len()
    );
    assert_eq!(blob.len(), 1 << 20);
    assert_eq!(got, want);

    for (node, peer) in [("b", "a"), ("a", "b")] {
        let lines = wait_for(
            &format!("{node}'s log shows the DERP route to {peer}"),
            Duration::from_secs(30),
            || Some(derp_route_lines(&h.node_log_path(node))).filter(|l| !l.is_empty()),
        );
        say!("{node} sends to {peer} via our relay: {}", lines[0]);
    }
    for node in ["a", "b"] {
        let direct = direct_lines(&h, &h.node_log_path(node));
        assert!(
            direct.is_empty(),
            "{node} found a direct path although UDP between the nodes is blocked: {direct:?}"
        );
    }
    say!(
        "no `now using {}.x:port` (direct path) in either log",
        h.subnet
    );
    if nft_a {
        say!(
            "UDP dropped by nftables so far: a {}, b {}",
            dropped_udp(&h, "a"),
            dropped_udp(&h, "b")
        );
    }

    // 2. server restart under live clients
    let nodes_before = h.nodes();
    assert_eq!(nodes_before.len(), 2, "{}", describe_all(&nodes_before));
    let killed = h.kill_server();
    let t_down = Instant::now();
    say!("killed tinyscale serve (pid {killed}, SIGKILL) under live clients");
    let (code, _) = wait_for(
        "b can no longer reach a with the relay down",
        Duration::from_secs(30),
        || {
            let r = h.curl("b", "http://127.0.0.1:8080/", 5);
            (r.0 != 200).then_some(r)
        },
    );
    say!(
        "relay down: b -> a answers HTTP {code} ({:.1}s after the kill)",
        t_down.elapsed().as_secs_f64()
    );
    let a_mark = read_lossy(&h.node_log_path("a")).len();
    let b_mark = read_lossy(&h.node_log_path("b")).len();

    h.launch_server();
    let t_up = Instant::now();
    let nodes = wait_for(
        "both clients reconnect to the restarted server (online in nodes list)",
        Duration::from_secs(180),
        || both_online(&h, &ip4_a, &ip4_b),
    );
    let reconnect = t_up.elapsed().as_secs_f64();
    say!(
        "clients reconnected {reconnect:.1}s after the restart ({:.1}s after the kill): {}",
        t_down.elapsed().as_secs_f64(),
        describe_all(&nodes)
    );
    assert_eq!(nodes.len(), 2, "a restart must not add nodes");
    for (name, ip) in [("a", &ip4_a), ("b", &ip4_b)] {
        let n = find_node(&nodes, name, ip).expect("node after restart");
        let before = find_node(&nodes_before, name, ip).expect("node before restart");
        assert_eq!(node_ips(n), node_ips(before), "{name} changed IPs");
        assert_eq!(node_id(n), node_id(before), "{name} changed id");
    }
    let (body, took) = h.fetch_via(
        "b",
        "b -> a again after the server restart",
        Duration::from_secs(180),
    );
    assert_eq!(
        body,
        format!("hello from a over the tailnet; you are {ip4_b}")
    );
    say!(
        "first byte b -> a after the restart: {:.1}s after the server came back ({:.1}s after reconnect)",
        t_up.elapsed().as_secs_f64(),
        took.as_secs_f64()
    );
    for (node, mark, ips) in [("a", a_mark, &ips_a), ("b", b_mark, &ips_b)] {
        let log = h.node_log_path(node);
        let now = self_ips(&log).expect("IPs");
        assert_eq!(&now, ips, "{node}'s own addresses changed");
        let direct = direct_lines(&h, &log);
        assert!(direct.is_empty(), "{node}: direct path {direct:?}");
        let derp_after: Vec<String> = log_msgs(&log, mark)
            .into_iter()
            .filter(|m| m.contains("derp-999") && m.contains("connected"))
            .collect();
        if let Some(l) = derp_after.first() {
            say!("{node} after the restart: {}", l.trim());
        }
    }
    say!(
        "PASS DERP real-client e2e in {:.1}s",
        t_start.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// Protocol level: who may use the relay

async fn with_timeout<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    futures_lite::future::or(f, async {
        async_io::Timer::after(Duration::from_secs(secs)).await;
        panic!("timed out after {secs}s");
    })
    .await
}

/// A synthetic node registered with `key`; returns its DERP map (from its first MapResponse).
async fn register(addr: SocketAddr, node: &tinyscale::client::Node, key: &str) -> Value {
    let server_pub = tinyscale::client::fetch_key(addr).await.unwrap();
    let mut conn = tinyscale::client::connect(addr, &server_pub, &node.machine_private)
        .await
        .unwrap();
    let r = conn
        .register(&node.register_request(Some(key)))
        .await
        .unwrap();
    assert_eq!(r.error, "", "register {}", node.hostname);
    let mut stream = conn.map(&node.map_request(true, &[])).await.unwrap();
    let m = stream.next().await.unwrap().expect("a MapResponse");
    m.get("DERPMap").cloned().expect("DERPMap in the map")
}

fn free_loopback_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Loopback {
    dir: PathBuf,
    config: PathBuf,
    child: Option<std::process::Child>,
}

impl Drop for Loopback {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            stop_child(c);
        }
        if std::thread::panicking() {
            say!(
                "FAILED; server log tail:\n{}",
                tail(&self.dir.join("server.log"), 40)
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn derp_relay_admits_only_registered_node_keys() {
    let dir = std::env::temp_dir().join(format!("tinyscale-e2e-derpkeys-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let (port, tls_port) = (free_loopback_port(), free_loopback_port());
    let config = dir.join("config.yaml");
    fs::write(
        &config,
        format!(
            "data_dir: {data}
server_url: http://127.0.0.1:{port}
listen_addr: 127.0.0.1:{port}
tls_listen_addr: 127.0.0.1:{tls_port}
derp:
  server:
    enabled: true
    region_id: 999
    region_code: e2e
    region_name: tinyscale e2e
    stun_listen_addr: 127.0.0.1:0
    ipv4: 127.0.0.1
unix_socket: tinyscale.sock
log:
  level: debug
",
            data = dir.join("data").display()
        ),
    )
    .unwrap();
    let bin = server_bin();
    let mut lb = Loopback {
        dir: dir.clone(),
        config: config.clone(),
        child: None,
    };
    let log = dir.join("server.log");
    let mut child = spawn_server(&bin, &config, &log);
    wait_server_up(
        &mut child,
        &format!("http://127.0.0.1:{port}/key?v=130"),
        &log,
        Duration::from_secs(30),
    );
    lb.child = Some(child);
    cli(&bin, &lb.config, &["users", "create", "alice"]);
    let key = cli_json(
        &bin,
        &lb.config,
        &[
            "preauthkeys",
            "create",
            "--user",
            "alice",
            "--reusable",
            "-o",
            "json",
        ],
    )["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let control: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let x = tinyscale::client::Node::new("derpx");
    let y = tinyscale::client::Node::new("derpy");
    let mut cx = smol::block_on(with_timeout(60, async {
        let derp_map = register(control, &x, &key).await;
        register(control, &y, &key).await;
        let node = &derp_map["Regions"]["999"]["Nodes"][0];
        let cert_name = node["CertName"].as_str().unwrap_or_default();
        let pin = cert_name
            .strip_prefix("sha256-raw:")
            .unwrap_or_else(|| panic!("no sha256-raw pin in the DERP map: {node}"));
        assert_eq!(node["DERPPort"], Value::from(tls_port), "{node}");
        let relay: SocketAddr = format!("{}:{tls_port}", node["IPv4"].as_str().unwrap())
            .parse()
            .unwrap();
        say!("DERP map node: {node}");

        // a key this server never registered
        let stranger = tinyscale::keys::random32();
        match derp_over_tls(relay, pin, stranger).await {
            Ok(_) => panic!("the relay admitted an unknown node key"),
            Err(e) => say!("random node key refused: {e}"),
        }

        // registered keys: admitted, and they can talk through the relay
        let mut cx = derp_over_tls(relay, pin, x.node_private)
            .await
            .expect("registered node x admitted");
        let mut cy = derp_over_tls(relay, pin, y.node_private)
            .await
            .expect("registered node y admitted");
        say!(
            "registered node keys admitted over TLS (server DERP key {})",
            cx.server_key()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let yk = cy.public_key();
        // y may not be registered with the relay's peer table the instant its handshake ends;
        // resend until it arrives.
        let got = futures_lite::future::or(
            async {
                loop {
                    cx.send_packet(&yk, b"hello through the relay")
                        .await
                        .unwrap();
                    async_io::Timer::after(Duration::from_millis(200)).await;
                }
            },
            async { cy.recv_packet().await.unwrap() },
        )
        .await;
        assert_eq!(got.0, cx.public_key());
        assert_eq!(got.1, b"hello through the relay");
        say!(
            "x -> y through the relay: {:?}",
            String::from_utf8_lossy(&got.1)
        );
        drop(cy);
        // x stays connected over its deletion below
        cx
    }));

    // delete x: its key is refused from now on, y's still admitted
    let nodes = match cli_json(&bin, &lb.config, &["nodes", "list", "-o", "json"]) {
        Value::Array(v) => v,
        other => panic!("nodes list: {other}"),
    };
    let nx = nodes
        .iter()
        .find(|n| str_field(n, &["given_name", "name"]) == Some("derpx"))
        .unwrap_or_else(|| panic!("derpx not listed: {}", describe_all(&nodes)));
    let t_del = std::time::Instant::now();
    cli(
        &bin,
        &lb.config,
        &["nodes", "delete", "--identifier", &node_id(nx), "--force"],
    );
    // x's open relay connection is closed when the node is deleted, not at the relay's periodic
    // (15 s) sweep: the limit here is well under that period.
    smol::block_on(with_timeout(60, async {
        let closed = futures_lite::future::or(async { cx.recv_packet().await.err() }, async {
            async_io::Timer::after(Duration::from_secs(5)).await;
            None
        })
        .await;
        let e = closed.expect("the relay kept a deleted node's connection open for 5 s");
        say!(
            "deleted node's open relay connection closed {:.2}s after `nodes delete` ({e})",
            t_del.elapsed().as_secs_f64()
        );
    }));
    smol::block_on(with_timeout(60, async {
        let derp_map = register(control, &y, &key).await;
        let node = &derp_map["Regions"]["999"]["Nodes"][0];
        let pin = node["CertName"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256-raw:")
            .unwrap()
            .to_owned();
        let relay: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
        match derp_over_tls(relay, &pin, x.node_private).await {
            Ok(_) => panic!("the relay admitted the key of a deleted node"),
            Err(e) => say!("deleted node's key refused: {e}"),
        }
        derp_over_tls(relay, &pin, y.node_private)
            .await
            .expect("y still admitted");
        // a wrong pin fails the TLS handshake (what a client with a stale DERP map would see)
        let wrong = "00".repeat(32);
        assert!(derp_over_tls(relay, &wrong, y.node_private).await.is_err());
    }));
}
