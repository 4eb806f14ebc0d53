//! The operator's view of a running binary: `/metrics` moving while a
//! client joins, SIGHUP reloading a changed policy file without dropping
//! the client, `tinyscale health` (0, and 1 when the database file cannot
//! be read) and SIGTERM stopping cleanly.

mod common;

use common::{cli, eventually, free_port, serve, tempdir};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use tinyscale::client::{self, netmap::NetMap, Node};

fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("Content-Type: text/plain; version=0.0.4"));
    out
}

/// The value of one sample line (`name{labels}` exactly).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

const ALLOW_ALL: &str = r#"{"acls":[{"action":"accept","src":["*"],"dst":["*:*"]}]}"#;
const ONLY_22: &str = r#"{"acls":[{"action":"accept","src":["*"],"dst":["*:22"]}]}"#;

#[test]
fn metrics_sighup_health_sigterm() {
    let dir = tempdir("ops");
    let (port, mport) = (free_port(), free_port());
    let policy = dir.join("policy.hujson");
    std::fs::write(&policy, ALLOW_ALL).unwrap();
    let (mut srv, cfg) = serve(
        &dir,
        &format!(
            "data_dir: {d}\nlisten_addr: 127.0.0.1:{port}\nserver_url: http://127.0.0.1:{port}\n\
             metrics_listen_addr: 127.0.0.1:{mport}\nstun_listen_addr: \"\"\ntls_listen_addr: \"\"\n\
             policy:\n  path: {p}\n",
            d = dir.display(),
            p = policy.display()
        ),
    );
    assert!(
        eventually(30, || cli(&cfg, &["health"]).0 == 0),
        "not healthy"
    );
    let (code, out, err) = cli(&cfg, &["health", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!({"database_connectivity": true})
    );
    let maddr: SocketAddr = format!("127.0.0.1:{mport}").parse().unwrap();
    let m0 = metrics(maddr);
    assert_eq!(sample(&m0, "headscale_nodestore_nodes"), 0.0);
    assert_eq!(sample(&m0, "tinyscale_map_sessions"), 0.0);
    assert!(sample(&m0, "process_resident_memory_bytes") > 0.0);
    assert!(sample(&m0, "process_open_fds") > 0.0);
    let gen0 = sample(&m0, "tinyscale_policy_generation");

    cli(&cfg, &["users", "create", "ops"]);
    let (code, key, err) = cli(
        &cfg,
        &["preauthkeys", "create", "--user", "ops", "--reusable"],
    );
    assert_eq!(code, 0, "{key}{err}");
    let key = key
        .lines()
        .find(|l| l.starts_with("hskey-auth-"))
        .unwrap()
        .to_string();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let node = Node::new("opsnode");
    smol::block_on(async {
        use futures_lite::FutureExt;
        async {
            let server_pub = client::fetch_key(addr).await.unwrap();
            let mut conn = client::connect(addr, &server_pub, &node.machine_private)
                .await
                .unwrap();
            let r = conn
                .register(&node.register_request(Some(&key)))
                .await
                .unwrap();
            assert!(r.machine_authorized, "{}", r.error);
            // A peer, so that the filter has sources to allow.
            let peer = Node::new("peer");
            let mut pconn = client::connect(addr, &server_pub, &peer.machine_private)
                .await
                .unwrap();
            let r = pconn
                .register(&peer.register_request(Some(&key)))
                .await
                .unwrap();
            assert!(r.machine_authorized, "{}", r.error);
            let mut stream = conn.map(&node.map_request(true, &[])).await.unwrap();
            let mut nm = NetMap::default();
            while !nm.packet_filter.to_string().contains("65535") {
                nm.apply(&stream.next().await.unwrap().expect("stream ended"));
            }

            // Metrics moved: one session, one full map, a Noise handshake.
            let m1 = metrics(maddr);
            assert_eq!(sample(&m1, "headscale_nodestore_nodes"), 2.0);
            assert_eq!(sample(&m1, "tinyscale_map_sessions"), 1.0);
            assert_eq!(sample(&m1, "tinyscale_nodes_online"), 1.0);
            assert!(
                sample(
                    &m1,
                    r#"headscale_mapresponse_sent_total{status="ok",type="full"}"#
                ) >= 1.0
            );
            assert!(sample(&m1, r#"tinyscale_noise_handshakes_total{result="ok"}"#) >= 2.0);

            // A changed policy file whose mtime does not move: the watcher
            // cannot see it, SIGHUP makes the server read it.
            let mtime = std::fs::metadata(&policy).unwrap().modified().unwrap();
            std::fs::write(&policy, ONLY_22).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&policy)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
            async_io::Timer::after(Duration::from_millis(2500)).await;
            assert!(nm.packet_filter.to_string().contains("65535"));
            rustix::process::kill_process(
                rustix::process::Pid::from_child(&srv.0),
                rustix::process::Signal::HUP,
            )
            .unwrap();
            // The same stream (not dropped) receives the narrowed filter.
            while !nm
                .packet_filter
                .to_string()
                .contains("\"First\":22,\"Last\":22")
            {
                let m = stream
                    .next()
                    .await
                    .unwrap()
                    .expect("stream ended after SIGHUP");
                nm.apply(&m);
            }
            let m2 = metrics(maddr);
            assert!(sample(&m2, "tinyscale_policy_generation") > gen0);
            assert_eq!(sample(&m2, "tinyscale_map_sessions"), 1.0);
            assert!(sample(&m2, "tinyscale_policy_compiles_total") >= 2.0);
        }
        .or(async {
            async_io::Timer::after(Duration::from_secs(60)).await;
            panic!("timed out");
        })
        .await
    });
    assert!(
        srv.0.try_wait().unwrap().is_none(),
        "SIGHUP killed the server"
    );

    // The database file unreadable: health says so (exit 1); back: 0.
    let db = dir.join("db.redb");
    std::fs::rename(&db, dir.join("db.moved")).unwrap();
    let (code, out, err) = cli(&cfg, &["health"]);
    assert_eq!(code, 1, "{out}{err}");
    std::fs::rename(dir.join("db.moved"), &db).unwrap();
    assert_eq!(cli(&cfg, &["health"]).0, 0);

    // SIGTERM: exit 0, socket removed.
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&srv.0),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let mut status = None;
    assert!(eventually(20, || {
        status = srv.0.try_wait().unwrap();
        status.is_some()
    }));
    assert!(status.unwrap().success(), "{status:?}");
    assert!(!dir.join("tinyscale.sock").exists());
    // Stopped: health fails.
    assert_eq!(cli(&cfg, &["health"]).0, 1);
    let _ = std::fs::remove_dir_all(&dir);
}
