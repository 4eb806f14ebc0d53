//! DERP over TLS the way Tailscale clients dial it, for tests: the
//! certificate pinned by its sha256 (`CertName: sha256-raw:<hex>` in the
//! DERP map), the HTTP upgrade, then the DERP handshake.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use async_io::Async;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use futures_rustls::rustls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tinyscale::derp::client::{ClientOptions, DerpClient};

/// Accepts exactly one certificate (rustls' signature checks still apply): what a Tailscale
/// client does with `CertName: sha256-raw:<hex>`.
#[derive(Debug)]
pub struct Pinned {
    sha256_hex: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let d = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        if hex == self.sha256_hex {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate sha256 {hex} is not the pinned {}",
                self.sha256_hex
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub type Tls = futures_rustls::client::TlsStream<Async<TcpStream>>;

/// A client configuration that accepts exactly the certificate whose
/// sha256 is `pin` (hex).
pub fn pinned_config(pin: &str) -> std::io::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                sha256_hex: pin.to_owned(),
                provider,
            }))
            .with_no_client_auth(),
    )
}

/// TLS to `addr` (certificate pinned), `GET /derp` with `Upgrade: DERP`, then the DERP handshake
/// with `node_private`.
pub async fn derp_over_tls(
    addr: SocketAddr,
    pin: &str,
    node_private: [u8; 32],
) -> std::io::Result<DerpClient<Tls>> {
    let name = ServerName::IpAddress(addr.ip().into());
    derp_over_tls_with(pinned_config(pin)?, name, "GET", addr, node_private).await
}

/// TLS to `addr` with `cfg` (verifying `name`), the upgrade with `method`,
/// then the DERP handshake.
pub async fn derp_over_tls_with(
    cfg: rustls::ClientConfig,
    name: ServerName<'static>,
    method: &str,
    addr: SocketAddr,
    node_private: [u8; 32],
) -> std::io::Result<DerpClient<Tls>> {
    let tcp = Async::<TcpStream>::connect(addr).await?;
    let tls = futures_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await?;
    derp_upgrade(tls, method, addr, node_private).await
}

/// `METHOD /derp` with `Upgrade: DERP` on `stream`, then the DERP handshake
/// with `node_private`.
pub async fn derp_upgrade<S>(
    mut stream: S,
    method: &str,
    addr: SocketAddr,
    node_private: [u8; 32],
) -> std::io::Result<DerpClient<S>>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    let req = format!(
        "{method} /derp HTTP/1.1\r\nHost: {addr}\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    stream.flush().await?;
    // The head byte by byte: the server's first DERP frame follows it at once.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if stream.read(&mut b).await? == 0 || head.len() > 8192 {
            return Err(std::io::Error::other(format!(
                "bad /derp response head: {:?}",
                String::from_utf8_lossy(&head)
            )));
        }
        head.push(b[0]);
    }
    let status = String::from_utf8_lossy(&head).into_owned();
    if !status.starts_with("HTTP/1.1 101") {
        return Err(std::io::Error::other(format!("/derp: {status:?}")));
    }
    DerpClient::connect(stream, node_private, ClientOptions::default()).await
}
