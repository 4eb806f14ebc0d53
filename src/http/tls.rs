//! TLS for the second listener (DERP and the clients' HTTPS fallback for
//! `/ts2021`): rustls with ring. Without a configured certificate a
//! self-signed one is generated on first start, kept in the data directory,
//! and pinned in the DERP map as `sha256-raw:<hex>` so stock clients accept
//! the relay. A self-signed certificate cannot serve an `https://` control
//! URL (clients verify `/key` normally), so the control URL stays http://.

use crate::secretfile::{check_private, Loose};
use futures_rustls::TlsAcceptor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{self, Error, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Tls {
    pub acceptor: TlsAcceptor,
    /// `sha256-raw:<hex>` of the leaf when the certificate is our own
    /// self-signed one (published as the DERP node's `CertName`).
    pub pin: Option<String>,
    /// Whether handshakes can succeed yet (an ACME certificate may not be
    /// in); None: a certificate is always there.
    pub ready: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl Tls {
    /// False until the certificate source has a certificate to serve.
    pub fn ready(&self) -> bool {
        self.ready.as_ref().map_or(true, |r| r())
    }
}

/// Where a generated certificate and key live.
pub fn generated_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    (
        data_dir.join("tls_selfsigned.crt"),
        data_dir.join("tls_selfsigned.key"),
    )
}

/// Generates a self-signed certificate for `names` (DNS names or IPs).
pub fn generate(names: Vec<String>, cert: &Path, key: &Path) -> io::Result<()> {
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| Error::other(format!("generating certificate: {e}")))?;
    use crate::secretfile::write_atomic;
    write_atomic(key, ck.key_pair.serialize_pem().as_bytes())?;
    write_atomic(cert, ck.cert.pem().as_bytes())
}

/// Builds the acceptor from PEM files. `pinned` marks a self-signed
/// certificate whose hash goes into the DERP map.
pub fn load(cert: &Path, key: &Path, pinned: bool) -> io::Result<Tls> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        Error::new(ErrorKind::InvalidData, format!("{what}: {e}"))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(&format!("tls_cert_path {}", cert.display()), &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&format!("tls_cert_path {}", cert.display()), &e))?;
    if certs.is_empty() {
        return Err(bad(
            &format!("tls_cert_path {}", cert.display()),
            &"no certificate found",
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| bad(&format!("tls_key_path {}", key.display()), &e))?;
    let pin = pinned.then(|| {
        let d = ring::digest::digest(&ring::digest::SHA256, certs[0].as_ref());
        format!("sha256-raw:{}", crate::keys::to_hex(d.as_ref()))
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::other(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| bad("tls certificate/key", &e))?;
    // DERP and the /ts2021 fallback are HTTP/1.1 upgrades: never offer h2.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        acceptor: TlsAcceptor::from(Arc::new(cfg)),
        pin,
        ready: None,
    })
}

/// The configured certificate, or the generated self-signed one (created
/// on first start with `names` as its subject alternative names).
pub fn load_or_generate(
    cert: Option<&Path>,
    key: Option<&Path>,
    data_dir: &Path,
    names: Vec<String>,
) -> io::Result<Tls> {
    match (cert, key) {
        (Some(c), Some(k)) => {
            check_private(k, "tls_key_path", Loose::Refuse)?;
            load(c, k, false)
        }
        (None, None) => {
            let (c, k) = generated_paths(data_dir);
            check_private(&k, "generated TLS key", Loose::Fix)?;
            if !c.exists() || !k.exists() {
                generate(names, &c, &k)?;
                log::info!("generated a self-signed TLS certificate in {}", c.display());
            }
            load(&c, &k, true)
        }
        _ => Err(Error::new(
            ErrorKind::InvalidInput,
            "tls_cert_path and tls_key_path must be set together",
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn generate_load_and_pin() {
        let d = std::env::temp_dir().join(format!("tinyscale-tls-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let t = super::load_or_generate(
            None,
            None,
            &d,
            vec!["198.18.0.1".into(), "ctl.example".into()],
        )
        .unwrap();
        let pin = t.pin.clone().unwrap();
        assert!(pin.starts_with("sha256-raw:") && pin.len() == 11 + 64);
        // Same files on the next start: same pin.
        let t2 = super::load_or_generate(None, None, &d, vec![]).unwrap();
        assert_eq!(t2.pin.unwrap(), pin);
        let (c, _) = super::generated_paths(&d);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(c).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
