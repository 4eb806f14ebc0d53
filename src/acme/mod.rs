//! Certificates from an ACME CA (RFC 8555; Let's Encrypt by default), with
//! Headscale's keys (`tls_letsencrypt_*`, `acme_url`, `acme_email`): an
//! account (ES256 JWS, `jws`), an order for the one hostname, its
//! authorization by HTTP-01 (a token on `tls_letsencrypt_listen`) or
//! TLS-ALPN-01 (RFC 8737: a certificate offered on the TLS listener to a
//! validator asking for ALPN `acme-tls/1`), finalize with a CSR (rcgen),
//! download. Account key, certificate and key live in the cache directory,
//! 0600. The certificate is renewed at two thirds of its lifetime without a
//! restart: the TLS listener picks its certificate per handshake through
//! [`Manager`] (a rustls `ResolvesServerCert`), so new handshakes get the
//! new one and live connections are not touched. A failed attempt backs off
//! (10 s doubling to 1 h) and the last good certificate stays in use.

pub mod jws;
pub mod x509;

use crate::config::{AcmeChallenge, AcmeConfig};
use crate::http::client::{send, Request, Response};
use log::{info, warn};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use serde_json::Value;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// ALPN protocol of TLS-ALPN-01 validation (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Largest ACME response read (a certificate chain is a few KB).
const MAX_BODY: usize = 256 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);
/// Unix seconds now.
fn now() -> u64 {
    crate::state::now().max(0) as u64
}

/// Polls of an authorization or order before giving up on this attempt.
const POLLS: u32 = 60;
const BACKOFF_MIN: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// The certificate in use and what the challenges need while an order runs.
pub struct Manager {
    pub cfg: AcmeConfig,
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// (notBefore, notAfter) of the current certificate.
    validity: Mutex<Option<(u64, u64)>>,
    /// HTTP-01: token → key authorization, only while our order runs.
    http_tokens: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: the validation certificate, only while our order runs.
    alpn_cert: RwLock<Option<Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("acme::Manager")
            .field("hostname", &self.cfg.hostname)
            .finish_non_exhaustive()
    }
}

impl rustls::server::ResolvesServerCert for Manager {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validator = hello
            .alpn()
            .is_some_and(|mut a| a.any(|p| p == ACME_TLS_ALPN));
        if validator {
            // Only to a validator asking for our own name (RFC 8737 §3).
            if hello.server_name() != Some(self.cfg.hostname.as_str()) {
                return None;
            }
            return self
                .alpn_cert
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
        }
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn paths(cfg: &AcmeConfig) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    (
        cfg.cache_dir.join("acme_account.pk8"),
        cfg.cache_dir.join("acme_cert.pem"),
        cfg.cache_dir.join("acme_key.pem"),
    )
}

fn bad(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
}

/// A rustls certified key from a PEM chain and a PKCS#8 key; and its validity.
fn certified(chain_pem: &[u8], key_der: Vec<u8>) -> io::Result<(Arc<CertifiedKey>, (u64, u64))> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad("certificate chain", e))?;
    let leaf = certs
        .first()
        .ok_or_else(|| bad("certificate chain", "empty"))?;
    let validity = x509::validity(leaf).ok_or_else(|| bad("certificate", "unreadable validity"))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| bad("key", e))?;
    Ok((Arc::new(CertifiedKey::new(certs, signer)), validity))
}

impl Manager {
    /// The manager, with the cached certificate if there is one (served at
    /// once, renewed when due).
    pub fn new(cfg: AcmeConfig) -> io::Result<Arc<Manager>> {
        crate::secretfile::create_private_dir(&cfg.cache_dir)?;
        let m = Manager {
            cfg,
            current: RwLock::new(None),
            validity: Mutex::new(None),
            http_tokens: Mutex::new(HashMap::new()),
            alpn_cert: RwLock::new(None),
        };
        let (_, cert, key) = paths(&m.cfg);
        if let (Ok(c), Ok(k)) = (std::fs::read(&cert), std::fs::read(&key)) {
            match PrivateKeyDer::from_pem_slice(&k)
                .map_err(|e| bad("cached key", e))
                .and_then(|k| certified(&c, k.secret_der().to_vec()))
            {
                Ok((ck, v)) => m.install(ck, v),
                Err(e) => warn!(
                    "ACME: cached certificate {}: {e} (requesting a new one)",
                    cert.display()
                ),
            }
        }
        Ok(Arc::new(m))
    }

    fn install(&self, ck: Arc<CertifiedKey>, v: (u64, u64)) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(ck);
        *self.validity.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
    }

    /// (notBefore, notAfter) of the certificate in use.
    pub fn validity(&self) -> Option<(u64, u64)> {
        *self.validity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The DER of the certificate in use (tests, logs).
    pub fn current_der(&self) -> Option<Vec<u8>> {
        let c = self.current.read().unwrap_or_else(|e| e.into_inner());
        c.as_ref()
            .and_then(|ck| ck.cert.first())
            .map(|c| c.to_vec())
    }

    /// The key authorization for an HTTP-01 token, while it is ours.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    /// When the current certificate is due for renewal (Unix seconds): at
    /// two thirds of its lifetime; now when there is none.
    pub fn due(&self) -> u64 {
        match self.validity() {
            Some((nb, na)) => nb + na.saturating_sub(nb) * 2 / 3,
            None => 0,
        }
    }

    /// Obtains a certificate now (one full order) and puts it in use.
    pub async fn obtain(&self) -> io::Result<()> {
        let mut s = Session::open(&self.cfg).await?;
        let r = self.order(&mut s).await;
        self.http_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self.alpn_cert.write().unwrap_or_else(|e| e.into_inner()) = None;
        r
    }

    async fn order(&self, s: &mut Session<'_>) -> io::Result<()> {
        let host = self.cfg.hostname.clone();
        let payload = serde_json::json!({"identifiers": [{"type": "dns", "value": host}]});
        let new_order = s.dir_url("newOrder")?;
        let r = s.post(&new_order, Some(&payload)).await?;
        let order_url = r
            .header("location")
            .ok_or_else(|| bad("newOrder", "no Location"))?
            .to_string();
        let order = json(&r)?;
        let authzs: Vec<String> = order["authorizations"]
            .as_array()
            .ok_or_else(|| bad("order", "no authorizations"))?
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .take(8)
            .collect();
        let finalize = order["finalize"]
            .as_str()
            .ok_or_else(|| bad("order", "no finalize URL"))?
            .to_string();
        for a in &authzs {
            self.authorize(s, a).await?;
        }
        // The certificate key and the CSR for our one name.
        let key = rcgen::KeyPair::generate().map_err(|e| bad("certificate key", e))?;
        let params =
            rcgen::CertificateParams::new(vec![host.clone()]).map_err(|e| bad("CSR", e))?;
        let csr = params.serialize_request(&key).map_err(|e| bad("CSR", e))?;
        let csr = crate::wire::base64::encode_url(csr.der());
        let mut order = json(
            &s.post(&finalize, Some(&serde_json::json!({"csr": csr})))
                .await?,
        )?;
        for _ in 0..POLLS {
            match order["status"].as_str() {
                Some("valid") => break,
                Some("invalid") => return Err(bad("order", order.to_string())),
                _ => {
                    async_io::Timer::after(Duration::from_secs(1)).await;
                    order = json(&s.post(&order_url, None).await?)?;
                }
            }
        }
        let cert_url = order["certificate"]
            .as_str()
            .ok_or_else(|| bad("order", format!("not issued: {order}")))?
            .to_string();
        let chain = s.post(&cert_url, None).await?.body;
        let key_der = key.serialize_der();
        let (ck, v) = certified(&chain, key_der)?;
        let (_, cert_path, key_path) = paths(&self.cfg);
        crate::secretfile::write_atomic(&key_path, key.serialize_pem().as_bytes())?;
        crate::secretfile::write_atomic(&cert_path, &chain)?;
        self.install(ck, v);
        info!(
            "ACME: certificate for {host} installed (valid {}s, renewal due in {}s)",
            v.1.saturating_sub(v.0),
            self.due().saturating_sub(now())
        );
        Ok(())
    }

    async fn authorize(&self, s: &mut Session<'_>, url: &str) -> io::Result<()> {
        let authz = json(&s.post(url, None).await?)?;
        if authz["status"] == "valid" {
            return Ok(());
        }
        let want = match self.cfg.challenge {
            AcmeChallenge::Http01 => "http-01",
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        };
        let ch = authz["challenges"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == want))
            .ok_or_else(|| bad("authorization", format!("no {want} challenge offered")))?;
        let token = ch["token"].as_str().unwrap_or_default();
        let ch_url = ch["url"].as_str().unwrap_or_default().to_string();
        // RFC 8555 §8.1: tokens are base64url, at least 128 bits.
        if token.len() < 22
            || token.len() > 128
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("challenge", "bad token"));
        }
        let key_auth = format!("{token}.{}", s.key.thumbprint());
        match self.cfg.challenge {
            AcmeChallenge::Http01 => {
                self.http_tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(token.to_string(), key_auth.clone());
            }
            AcmeChallenge::TlsAlpn01 => {
                let ck = alpn_certificate(&self.cfg.hostname, &key_auth)?;
                *self.alpn_cert.write().unwrap_or_else(|e| e.into_inner()) = Some(ck);
            }
        }
        s.post(&ch_url, Some(&serde_json::json!({}))).await?;
        for _ in 0..POLLS {
            async_io::Timer::after(Duration::from_millis(500)).await;
            let a = json(&s.post(url, None).await?)?;
            match a["status"].as_str() {
                Some("valid") => return Ok(()),
                Some("pending") | Some("processing") => {}
                _ => return Err(bad("authorization", a.to_string())),
            }
        }
        Err(bad("authorization", "still pending"))
    }
}

/// The TLS-ALPN-01 validation certificate: self-signed for `host` with the
/// critical acmeIdentifier extension holding SHA-256(key authorization).
fn alpn_certificate(host: &str, key_auth: &str) -> io::Result<Arc<CertifiedKey>> {
    let digest = ring::digest::digest(&ring::digest::SHA256, key_auth.as_bytes());
    let mut p =
        rcgen::CertificateParams::new(vec![host.to_string()]).map_err(|e| bad("alpn", e))?;
    p.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let key = rcgen::KeyPair::generate().map_err(|e| bad("alpn", e))?;
    let cert = p.self_signed(&key).map_err(|e| bad("alpn", e))?;
    let (ck, _) = certified(cert.pem().as_bytes(), key.serialize_der())?;
    Ok(ck)
}

fn json(r: &Response) -> io::Result<Value> {
    serde_json::from_slice(&r.body).map_err(|e| bad("ACME response", e))
}

/// One conversation with the ACME server: its directory, the account, the
/// current nonce.
struct Session<'a> {
    cfg: &'a AcmeConfig,
    dir: Value,
    key: jws::AccountKey,
    kid: Option<String>,
    nonce: String,
}

impl<'a> Session<'a> {
    async fn open(cfg: &'a AcmeConfig) -> io::Result<Session<'a>> {
        let dir = get(cfg, &cfg.url).await?;
        if dir.status != 200 {
            return Err(bad("ACME directory", format!("HTTP {}", dir.status)));
        }
        let dir = json(&dir)?;
        let (acct_path, _, _) = paths(cfg);
        let key = match std::fs::read(&acct_path) {
            Ok(der) => jws::AccountKey::from_pkcs8(&der)?,
            Err(_) => {
                let (k, der) = jws::AccountKey::generate()?;
                crate::secretfile::write_atomic(&acct_path, &der)?;
                k
            }
        };
        let mut s = Session {
            cfg,
            dir,
            key,
            kid: None,
            nonce: String::new(),
        };
        s.fresh_nonce().await?;
        let mut acct = serde_json::json!({"termsOfServiceAgreed": true});
        if !cfg.email.is_empty() {
            acct["contact"] = serde_json::json!([format!("mailto:{}", cfg.email)]);
        }
        let url = s.dir_url("newAccount")?;
        let r = s.post(&url, Some(&acct)).await?;
        s.kid = Some(
            r.header("location")
                .ok_or_else(|| bad("newAccount", "no Location"))?
                .to_string(),
        );
        Ok(s)
    }

    fn dir_url(&self, what: &str) -> io::Result<String> {
        self.dir[what]
            .as_str()
            .map(String::from)
            .ok_or_else(|| bad("ACME directory", format!("no {what}")))
    }

    async fn fresh_nonce(&mut self) -> io::Result<()> {
        let url = self.dir_url("newNonce")?;
        let r = get(self.cfg, &url).await?;
        self.nonce = r
            .header("replay-nonce")
            .ok_or_else(|| bad("newNonce", "no Replay-Nonce"))?
            .to_string();
        Ok(())
    }

    /// A signed POST (`payload` None = POST-as-GET); a `badNonce` answer is
    /// retried with the nonce it carries (RFC 8555 §6.5).
    async fn post(&mut self, url: &str, payload: Option<&Value>) -> io::Result<Response> {
        let body = payload.map(|p| p.to_string()).unwrap_or_default();
        for _ in 0..4 {
            let jws = self
                .key
                .sign(url, &self.nonce, self.kid.as_deref(), &body)?;
            let mut req = Request::get(url, MAX_BODY, TIMEOUT);
            req.method = "POST";
            req.headers = &[("Content-Type", "application/jose+json")];
            req.body = jws.as_bytes();
            req.ca_file = self.cfg.ca_cert_path.as_deref();
            let r = send(&req).await?;
            match r.header("replay-nonce") {
                Some(n) => self.nonce = n.to_string(),
                None => self.fresh_nonce().await?,
            }
            if r.status < 300 {
                return Ok(r);
            }
            let problem = json(&r).unwrap_or_default();
            if problem["type"] == "urn:ietf:params:acme:error:badNonce" {
                continue;
            }
            return Err(bad(
                "ACME",
                format!("HTTP {} from {url}: {problem}", r.status),
            ));
        }
        Err(bad("ACME", "nonce rejected repeatedly"))
    }
}

async fn get(cfg: &AcmeConfig, url: &str) -> io::Result<Response> {
    let mut req = Request::get(url, MAX_BODY, TIMEOUT);
    req.ca_file = cfg.ca_cert_path.as_deref();
    send(&req).await
}

/// Keeps the certificate current for as long as the manager lives: obtain
/// when there is none or it is due; on failure keep the last good one and
/// back off.
pub fn spawn_renewer(m: &Arc<Manager>) {
    let weak = Arc::downgrade(m);
    smol::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        loop {
            let Some(m) = weak.upgrade() else { return };
            let now = now();
            let due = m.due();
            if now < due {
                drop(m);
                let wait = Duration::from_secs((due - now).min(3600));
                async_io::Timer::after(wait).await;
                continue;
            }
            match m.obtain().await {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(e) => {
                    let kept = if m.validity().is_some() {
                        "keeping the last good certificate"
                    } else {
                        "no certificate yet"
                    };
                    warn!("ACME: {e} ({kept}; next try in {}s)", backoff.as_secs());
                    drop(m);
                    async_io::Timer::after(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    })
    .detach();
}

/// A TLS acceptor whose certificate comes from `m` at each handshake.
pub fn acceptor(m: &Arc<Manager>) -> io::Result<futures_rustls::TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(m.clone());
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    if m.cfg.challenge == AcmeChallenge::TlsAlpn01 {
        cfg.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    Ok(futures_rustls::TlsAcceptor::from(Arc::new(cfg)))
}
