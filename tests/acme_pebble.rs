//! ACME against Debian's `pebble` (Let's Encrypt's test CA), on loopback:
//! pebble and its companion `pebble-challtestsrv` (used only as a DNS stub
//! answering every A query with 127.0.0.1, given to pebble as -dnsserver)
//! are started by each test, pebble validating HTTP-01 and TLS-ALPN-01 on
//! the ports the in-process server listens on (`PEBBLE_VA_NOSLEEP=1`; pebble
//! still rejects 5 % of nonces, which the client must retry).
//! - `http01_certificate_serves_derp_and_the_map_names_the_host`: HTTP-01;
//!   a client trusting only pebble's root completes TLS for the hostname and
//!   a DERP upgrade; the DERP map carries the hostname and no pin; the cache
//!   files are 0600.
//! - `tls_alpn01_certificate`: the same by TLS-ALPN-01 (no HTTP listener).
//! - `renewal_keeps_live_connections_and_a_failing_ca_keeps_the_last_good_certificate`:
//!   15 s certificates (pebble's certificateValidityPeriod): renewed at two
//!   thirds of their life without a restart; a DERP connection made before
//!   still relays after; new handshakes get the new certificate. Then pebble
//!   is killed: past the next due time the server still serves the last
//!   good certificate.
//!
//! Without `pebble` installed (Debian package `pebble`) the tests skip with
//! a reason; under CI=true they fail instead.
#![cfg(feature = "acme")]

mod common;
mod derp_tls;
mod pebble;

use common::*;
use futures_rustls::rustls;
use pebble::{free_tcp, have_pebble, Pebble};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tinyscale::client::Node;
use tinyscale::config::{AcmeChallenge, AcmeConfig};

const HOST: &str = "ts.acme.test";

fn server(
    dir: PathBuf,
    p: &Pebble,
    challenge: AcmeChallenge,
    http_port: u16,
    tls_port: u16,
) -> TestServer {
    let mut cfg = config(&dir);
    cfg.tls_listen_addr = Some(SocketAddr::from(([127, 0, 0, 1], tls_port)));
    cfg.acme = Some(AcmeConfig {
        hostname: HOST.into(),
        challenge,
        cache_dir: dir.join("acme"),
        listen: SocketAddr::from(([127, 0, 0, 1], http_port)),
        url: p.dir_url.clone(),
        email: "ops@acme.test".into(),
        ca_cert_path: Some(p.tls_cert.clone()),
    });
    start_with(cfg, dir)
}

fn manager(ts: &TestServer) -> std::sync::Arc<tinyscale::acme::Manager> {
    let app = ts.app.upgrade().expect("server running");
    app.acme.clone().expect("ACME configured")
}

/// Waits for a certificate other than `old`.
fn wait_cert(ts: &TestServer, old: Option<&[u8]>, limit: Duration) -> Vec<u8> {
    let t0 = Instant::now();
    loop {
        if let Some(c) = manager(ts)
            .current_der()
            .filter(|c| Some(c.as_slice()) != old)
        {
            return c;
        }
        assert!(
            t0.elapsed() < limit,
            "no (new) certificate within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn rooted(root: rustls::pki_types::CertificateDer<'static>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn host_name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from(HOST).unwrap()
}

/// The leaf a new full handshake is given (no session resumption, which
/// would report the certificate of the resumed session).
fn served_leaf(cfg: &rustls::ClientConfig, tls_port: u16) -> Vec<u8> {
    let mut cfg = cfg.clone();
    cfg.resumption = rustls::client::Resumption::disabled();
    smol::block_on(async {
        let tcp = async_io::Async::<std::net::TcpStream>::connect(([127, 0, 0, 1], tls_port))
            .await
            .unwrap();
        let s = futures_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(host_name(), tcp)
            .await
            .expect("TLS to the ACME certificate, verified against pebble's root");
        s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    })
}

fn issued_and_relays(challenge: AcmeChallenge, tag: &str) {
    if !have_pebble() {
        return;
    }
    let dir = tempdir(tag);
    let (http_port, tls_port) = (free_tcp(), free_tcp());
    let p = Pebble::start(&dir, "127.0.0.1", http_port, tls_port, 3600);
    let ts = server(dir.clone(), &p, challenge, http_port, tls_port);
    let t0 = Instant::now();
    let cert = wait_cert(&ts, None, Duration::from_secs(60));
    eprintln!(
        "{challenge:?}: certificate issued by pebble in {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    let cfg = rooted(p.root());
    assert_eq!(served_leaf(&cfg, tls_port), cert);
    // The DERP map offers the relay once the certificate is in, names the
    // host and pins nothing; DERP works over it.
    let t1 = Instant::now();
    while !tinyscale::control::derpmap::current(&ts.server)
        .get()
        .contains("\"999\"")
    {
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "region offered after the certificate"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let key = ts.key("acme", true, false, &[]);
    let x = Node::new("x");
    let (_c, _s, nm) = block_on_timeout(30, join(&ts, &x, &key));
    let node = &nm.derp_map["Regions"]["999"]["Nodes"][0];
    assert_eq!(
        (node["HostName"].as_str(), node.get("CertName")),
        (Some(HOST), None),
        "{node}"
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    block_on_timeout(
        30,
        derp_tls::derp_over_tls_with(cfg, host_name(), "GET", addr, x.node_private),
    )
    .expect("DERP over the ACME certificate");
    use std::os::unix::fs::PermissionsExt;
    for f in ["acme_account.pk8", "acme_cert.pem", "acme_key.pem"] {
        let mode = std::fs::metadata(dir.join("acme").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
}

#[test]
fn http01_certificate_serves_derp_and_the_map_names_the_host() {
    issued_and_relays(AcmeChallenge::Http01, "acme-http01");
}

#[test]
fn tls_alpn01_certificate() {
    issued_and_relays(AcmeChallenge::TlsAlpn01, "acme-alpn");
}

#[test]
fn renewal_keeps_live_connections_and_a_failing_ca_keeps_the_last_good_certificate() {
    if !have_pebble() {
        return;
    }
    let dir = tempdir("acme-renew");
    let (http_port, tls_port) = (free_tcp(), free_tcp());
    let mut p = Pebble::start(&dir, "127.0.0.1", http_port, tls_port, 15);
    let ts = server(dir.clone(), &p, AcmeChallenge::Http01, http_port, tls_port);
    let first = wait_cert(&ts, None, Duration::from_secs(60));
    let (nb, na) = manager(&ts).validity().unwrap();
    eprintln!("first certificate valid {}s", na - nb);
    let cfg = rooted(p.root());
    let key = ts.key("acme", true, false, &[]);
    let (x, y) = (Node::new("x"), Node::new("y"));
    let _jx = block_on_timeout(30, join(&ts, &x, &key));
    let _jy = block_on_timeout(30, join(&ts, &y, &key));
    let addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let mut cx = block_on_timeout(
        30,
        derp_tls::derp_over_tls_with(cfg.clone(), host_name(), "GET", addr, x.node_private),
    )
    .unwrap();
    let mut cy = block_on_timeout(
        30,
        derp_tls::derp_over_tls_with(cfg.clone(), host_name(), "GET", addr, y.node_private),
    )
    .unwrap();
    // Renewed at two thirds of 15 s, without a restart.
    let t0 = Instant::now();
    let second = wait_cert(&ts, Some(&first), Duration::from_secs(40));
    eprintln!(
        "renewed {:.1}s after the first was installed",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        served_leaf(&cfg, tls_port),
        second,
        "new handshakes get the new certificate"
    );
    block_on_timeout(30, async {
        cx.send_packet(&cy.public_key(), b"after renewal")
            .await
            .unwrap();
        let (from, got) = cy.recv_packet().await.unwrap();
        assert_eq!(
            (from, got.as_slice()),
            (cx.public_key(), &b"after renewal"[..])
        );
    });
    // The CA goes away: past the next due time the last good one stays.
    p.ca = None;
    let due = manager(&ts).due();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::thread::sleep(Duration::from_secs(due.saturating_sub(now) + 3));
    assert_eq!(
        manager(&ts).current_der().unwrap(),
        second,
        "last good certificate kept"
    );
    let pin = derp_tls::pinned_config(&sha256_hex(&second)).unwrap();
    assert_eq!(served_leaf(&pin, tls_port), second, "and still served");
}

fn sha256_hex(b: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
