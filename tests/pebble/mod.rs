//! Debian's `pebble` (Let's Encrypt's test ACME CA) for tests: started on
//! loopback with its companion `pebble-challtestsrv` used only as a DNS
//! stub (every A query answered with one address), both stopped by PID.
#![allow(dead_code)]

use futures_rustls::rustls;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether pebble is installed; without it under CI=true this panics.
pub fn have_pebble() -> bool {
    let ok = |b: &str| {
        Command::new(b)
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if ok("pebble") && ok("pebble-challtestsrv") {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "pebble is not installed (apt-get install pebble); CI=true: failing"
    );
    eprintln!("SKIPPED: pebble is not installed (Debian: apt-get install pebble)");
    false
}

/// A process stopped by PID on drop.
pub struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Pebble {
    pub ca: Option<Proc>,
    _dns: Proc,
    /// pebble's own TLS certificate (trust for the ACME API).
    pub tls_cert: PathBuf,
    pub dir_url: String,
    pub mgmt: SocketAddr,
}

impl Pebble {
    /// Pebble validating on `http_port` / `tls_port` of `addr`, every name
    /// resolving to `addr` (its DNS stub), certificates valid `validity_secs`.
    pub fn start(
        dir: &Path,
        addr: &str,
        http_port: u16,
        tls_port: u16,
        validity_secs: u64,
    ) -> Pebble {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        let tls_cert = dir.join("pebble-tls.pem");
        let tls_key = dir.join("pebble-tls.key");
        std::fs::write(&tls_cert, ck.cert.pem()).unwrap();
        std::fs::write(&tls_key, ck.key_pair.serialize_pem()).unwrap();
        let dns_port = {
            let u = UdpSocket::bind("127.0.0.1:0").unwrap();
            u.local_addr().unwrap().port()
        };
        let dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_tcp())])
            .args(["-defaultIPv4", addr, "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("challtestsrv.log")).unwrap())
            .spawn()
            .expect("start pebble-challtestsrv");
        let (api, mgmt) = (free_tcp(), free_tcp());
        let cfg = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{api}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": tls_cert, "privateKey": tls_key,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }});
        let cfg_path = dir.join("pebble.json");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let ca = Command::new("pebble")
            .arg("-config")
            .arg(&cfg_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(std::fs::File::create(dir.join("pebble.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble");
        let p = Pebble {
            ca: Some(Proc(ca)),
            _dns: Proc(dns),
            tls_cert,
            dir_url: format!("https://127.0.0.1:{api}/dir"),
            mgmt: SocketAddr::from(([127, 0, 0, 1], mgmt)),
        };
        let t0 = Instant::now();
        while p.get(&p.dir_url).is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "pebble did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    pub fn get(&self, url: &str) -> Option<Vec<u8>> {
        let mut req = tinyscale::http::client::Request::get(url, 1 << 20, Duration::from_secs(10));
        req.ca_file = Some(&self.tls_cert);
        let r = smol::block_on(tinyscale::http::client::send(&req)).ok()?;
        (r.status == 200).then_some(r.body)
    }

    /// The root pebble issues under (regenerated at each start).
    pub fn root(&self) -> rustls::pki_types::CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        let pem = self
            .get(&format!("https://{}/roots/0", self.mgmt))
            .expect("pebble root");
        rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap()
    }
}
