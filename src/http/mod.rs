//! The transport: accept loops (async-io, TCP_NODELAY on every socket) with
//! the caps on unidentified connections ([`admission`]), TLS, HTTP/1.1 heads
//! parsed with httparse, the `/ts2021` upgrade into Noise and HTTP/2 inside
//! it ([`h2srv`]). It knows no plane: what a connection is for is decided by
//! the [`Service`] and the [`h2srv::Handler`] the top-level room (`crate::app`)
//! hands it.

pub mod admission;
pub mod client;
pub mod h2conn;
pub mod h2srv;
pub mod head;
pub mod prefixed;
pub mod tls;

use crate::keys::MachineKey;
use crate::noise;
use crate::wire::{base64, noise as wn};
use async_io::{Async, Timer};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use log::{debug, warn};
use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

/// Oldest capability version we accept (client 1.80, as Headscale).
pub const MIN_CAPVER: u16 = 113;
/// Time allowed for a whole request head to arrive (not per read: a byte
/// every few seconds must not hold a socket for days).
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed for a whole request body once its head is in (bodies on
/// the front door are ≤ 64 KiB).
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to write an upgrade answer (101 + the Noise response): a
/// peer that never reads must not hold the socket.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accept back-off after an error (EMFILE, ENFILE, ENOBUFS): starts here
/// and doubles up to [`ACCEPT_BACKOFF_MAX`] while errors continue.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Log lines an attacker can trigger (refused connections, EMFILE) are
/// written at most once per this.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Requests served on one plain-HTTP connection before it is closed.
pub(crate) const MAX_KEEPALIVE_REQUESTS: usize = 100;

/// What the listeners hand each admitted connection to: the top-level
/// room's router. `tls`: the connection came over the TLS listener.
pub trait Service: Send + Sync + 'static {
    fn serve<S>(
        self: Arc<Self>,
        stream: S,
        tls: bool,
        peer: std::net::SocketAddr,
        permit: admission::Permit,
    ) -> impl std::future::Future<Output = io::Result<()>> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static;
}

/// Accepts connections forever on `listener`.
pub async fn accept_loop<V: Service>(
    service: Arc<V>,
    adm: Arc<admission::Admission>,
    listener: Async<TcpListener>,
) {
    accept_each(&adm, listener, "accept", move |stream, peer, permit| {
        let service = service.clone();
        async move {
            if let Err(e) = service.serve(stream, false, peer, permit).await {
                debug!("connection from {peer}: {e}");
            }
        }
    })
    .await
}

/// The accept loop every listener shares: each admitted connection gets its
/// own task; one over the unidentified caps is closed at once.
pub(crate) async fn accept_each<F, Fut>(
    adm: &Arc<admission::Admission>,
    listener: Async<TcpListener>,
    what: &str,
    serve: F,
) where
    F: Fn(Async<std::net::TcpStream>, std::net::SocketAddr, admission::Permit) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    static REFUSED: crate::ratelimit::RateLimited = crate::ratelimit::RateLimited::new(LOG_EVERY);
    static FAILED: crate::ratelimit::RateLimited = crate::ratelimit::RateLimited::new(LOG_EVERY);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let permit = match adm.admit(peer.ip()) {
                    Ok(p) => p,
                    Err(why) => {
                        // Dropped here: closed before anything is read.
                        drop(stream);
                        if let Some(n) = REFUSED.allow() {
                            let (total, from) = adm.held(peer.ip());
                            warn!(
                                "{what}: refused a connection from {}: {} ({total} unidentified connections, {from} from that address){}",
                                peer.ip(),
                                match why {
                                    admission::Refused::Total => "limits.unidentified_connections reached",
                                    admission::Refused::Source => "limits.unidentified_connections_per_source reached",
                                },
                                crate::ratelimit::held_back(n)
                            );
                        }
                        continue;
                    }
                };
                // Without NODELAY, h2 setups measured 190x slower (design.md).
                let _ = stream.get_ref().set_nodelay(true);
                smol::spawn(serve(stream, peer, permit)).detach();
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, and
                // say so once per LOG_EVERY, not once per attempt.
                if let Some(n) = FAILED.allow() {
                    warn!(
                        "{what}: {e}; retrying in up to {:?}{}",
                        ACCEPT_BACKOFF_MAX,
                        crate::ratelimit::held_back(n)
                    );
                }
                Timer::after(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

pub(crate) async fn timeout<T>(
    d: Duration,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    f.or(async {
        Timer::after(d).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    })
    .await
}

/// Reads until `buf` holds `len` bytes of body, under one deadline `d` for
/// the whole body (not per read, so a byte at a time cannot hold a socket);
/// false if the peer closed first.
pub(crate) async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    len: usize,
    d: Duration,
) -> io::Result<bool> {
    timeout(d, async {
        while buf.len() < len {
            let mut tmp = [0u8; 4096];
            let n = stream.read(&mut tmp).await?;
            if n == 0 {
                return Ok(false);
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        Ok(true)
    })
    .await
}

/// Reads one request head; returns the head and any bytes read past it.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> io::Result<Option<head::Head>> {
    loop {
        match head::parse(buf) {
            Ok(Some((h, n))) => {
                buf.drain(..n);
                return Ok(Some(h));
            }
            Ok(None) => {}
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad request head: {e:?}"),
                ))
            }
        }
        let mut tmp = [0u8; 4096];
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

pub(crate) async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    ctype: &str,
    body: &[u8],
) -> io::Result<()> {
    respond_with(stream, status, ctype, "", body).await
}

pub(crate) async fn respond_with<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    ctype: &str,
    extra: &str,
    body: &[u8],
) -> io::Result<()> {
    crate::metrics::http_answer(status.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0));
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Every `Cookie` header of a request, joined (OIDC state, the admin
/// page's session).
pub(crate) fn cookies(h: &head::Head) -> String {
    let v: Vec<&str> = h
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
        .map(|(_, v)| v.as_str())
        .collect();
    v.join("; ")
}

/// `POST /ts2021`: the Noise handshake rides in the request header; the
/// response follows the 101 headers immediately on the same stream.
pub(crate) async fn upgrade_ts2021<S, H>(
    handler: Arc<H>,
    noise_private: &[u8; 32],
    mut stream: S,
    h: head::Head,
    leftover: Vec<u8>,
    peer: std::net::SocketAddr,
    permit: admission::Permit,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: h2srv::Handler,
{
    if !h
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("tailscale-control-protocol"))
    {
        return respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            b"missing or unknown Upgrade header\n",
        )
        .await;
    }
    let Some(init) = h
        .header("x-tailscale-handshake")
        .filter(|v| v.len() <= 256)
        .and_then(|v| base64::decode(v.trim()))
    else {
        return respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            b"missing or invalid X-Tailscale-Handshake\n",
        )
        .await;
    };
    let version = match wn::Initiation::parse(&init) {
        Ok(i) => i.version(),
        Err(_) => {
            return respond(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                b"invalid handshake message\n",
            )
            .await
        }
    };
    let mut out = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n\r\n".to_vec();
    if version < MIN_CAPVER {
        // The client shows this as `server error: "..."`.
        wn::emit_error(
            "unsupported client version: upgrade tailscale to 1.80 or newer",
            &mut out,
        );
        return timeout(WRITE_TIMEOUT, write_flush(&mut stream, &out)).await;
    }
    let accepted = noise::accept(noise_private, &init);
    crate::metrics::noise_handshake(accepted.is_ok());
    let accepted = match accepted {
        Ok(a) => a,
        Err(e) => {
            // Wrong server key (stale client) or garbage: tell that client alone.
            wn::emit_error("noise handshake failed", &mut out);
            timeout(WRITE_TIMEOUT, write_flush(&mut stream, &out)).await?;
            return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
        }
    };
    out.extend_from_slice(&accepted.response);
    timeout(WRITE_TIMEOUT, write_flush(&mut stream, &out)).await?;
    let conn = noise::NoiseStream::new(stream, &accepted.keys, leftover);
    let ctx = h2srv::ConnCtx::new(
        accepted.machine_key,
        accepted.version,
        Some(peer.ip()),
        permit,
    );
    debug!(
        "noise connection from {:?} (capver {})",
        MachineKey(ctx.machine_key),
        ctx.version
    );
    // The HTTP/2 phase's deadlines (preface, first request, identifying
    // a node) are the driver's (h2srv).
    spawn_long_lived("control connection", h2srv::serve(handler, conn, ctx));
    Ok(())
}

pub(crate) async fn write_flush<S: AsyncWrite + Unpin>(stream: &mut S, b: &[u8]) -> io::Result<()> {
    stream.write_all(b).await?;
    stream.flush().await
}

/// Runs what an upgraded connection does for the rest of its life (HTTP/2
/// inside Noise, DERP) as a task of its own, and lets the task that read
/// the request head and did the handshake end. A task's allocation is the
/// size of its future's largest state; the accepting task's is ~8.8 KB
/// (head buffers, the handshake), which would otherwise stay allocated
/// beside every connected node for as long as it stays connected.
pub(crate) fn spawn_long_lived<F>(what: &'static str, f: F)
where
    F: std::future::Future<Output = io::Result<()>> + Send + 'static,
{
    smol::spawn(async move {
        if let Err(e) = f.await {
            debug!("{what}: {e}");
        }
    })
    .detach();
}

/// Accepts TLS connections forever: DERP and the HTTPS control fallback.
pub async fn accept_loop_tls<V: Service>(
    service: Arc<V>,
    adm: Arc<admission::Admission>,
    listener: Async<TcpListener>,
    acceptor: futures_rustls::TlsAcceptor,
) {
    accept_each(
        &adm,
        listener,
        "accept (TLS)",
        move |stream, peer, permit| {
            let service = service.clone();
            let acceptor = acceptor.clone();
            async move {
                let handshake = async { acceptor.accept(stream).await };
                let tls = match timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(t) => t,
                    Err(e) => {
                        debug!("TLS handshake from {peer}: {e}");
                        return;
                    }
                };
                if let Err(e) = service.serve(tls, true, peer, permit).await {
                    debug!("TLS connection from {peer}: {e}");
                }
            }
        },
    )
    .await
}
