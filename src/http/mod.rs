//! The front door: a TCP listener (async-io, TCP_NODELAY on every socket),
//! HTTP/1.1 heads parsed with httparse, `GET /key`, the `/ts2021` upgrade
//! into Noise, and HTTP/2 inside it (`h2srv`).

pub mod admission;
pub mod client;
pub mod h2conn;
pub mod h2srv;
pub mod head;
pub mod prefixed;
pub mod tls;

use crate::config::Config;
use crate::control::{Server, SharedServer};
use crate::keys::MachineKey;
use crate::noise;
use crate::wire::{base64, noise as wn};
use async_io::{Async, Timer};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use log::{debug, info, warn};
use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

/// Oldest capability version we accept (client 1.80, as Headscale).
pub const MIN_CAPVER: u16 = 113;
/// Time allowed for a whole request head to arrive (not per read: a byte
/// every few seconds must not hold a socket for days).
const HEAD_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed for a whole request body once its head is in (bodies on
/// the front door are ≤ 64 KiB).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to write an upgrade answer (101 + the Noise response): a
/// peer that never reads must not hold the socket.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accept back-off after an error (EMFILE, ENFILE, ENOBUFS): starts here
/// and doubles up to [`ACCEPT_BACKOFF_MAX`] while errors continue.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Log lines an attacker can trigger (refused connections, EMFILE) are
/// written at most once per this.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Requests served on one plain-HTTP connection before it is closed.
const MAX_KEEPALIVE_REQUESTS: usize = 100;

/// Runs `tinyscale serve` until the process is stopped.
pub fn serve(cfg: Config) -> io::Result<()> {
    crate::logging::init(&cfg.log_level);
    crate::logging::raise_nofile_limit();
    let server = crate::control::build_server(cfg)?;
    crate::control::run_forever(server)
}

/// Accepts connections forever on `listener`.
pub async fn accept_loop(server: SharedServer, listener: Async<TcpListener>) {
    let adm = server.admission.clone();
    accept_each(&adm, listener, "accept", move |stream, peer, permit| {
        let server = server.clone();
        async move {
            if let Err(e) = handle_conn(server, stream, false, peer, permit).await {
                debug!("connection from {peer}: {e}");
            }
        }
    })
    .await
}

/// The accept loop both listeners share: each admitted connection gets its
/// own task; one over the unidentified caps is closed at once.
async fn accept_each<F, Fut>(
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

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    ctype: &str,
    body: &[u8],
) -> io::Result<()> {
    respond_with(stream, status, ctype, "", body).await
}

async fn respond_with<S: AsyncWrite + Unpin>(
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

#[cfg(feature = "oidc")]
async fn respond_page<S: AsyncWrite + Unpin>(
    stream: &mut S,
    pg: crate::oidc::Page,
) -> io::Result<()> {
    let reason = match pg.status {
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        429 => "Too Many Requests",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    respond_with(
        stream,
        &format!("{} {reason}", pg.status),
        "text/html; charset=utf-8",
        &pg.headers,
        pg.body.as_bytes(),
    )
    .await
}

/// One front-door connection, plain or TLS, from `peer`, charged to the
/// unidentified caps by `permit` until an upgrade identifies it.
pub async fn handle_conn<S>(
    server: SharedServer,
    mut stream: S,
    tls: bool,
    peer: std::net::SocketAddr,
    permit: admission::Permit,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = Vec::new();
    for _ in 0..MAX_KEEPALIVE_REQUESTS {
        let Some(h) = timeout(HEAD_TIMEOUT, read_head(&mut stream, &mut buf)).await? else {
            return Ok(());
        };
        if crate::api::http1::is_api_path(&h.path) {
            let caller = crate::api::http1::Caller::Network;
            if crate::api::http1::serve(&server, &mut stream, &h, &mut buf, caller).await? {
                continue;
            }
            return Ok(());
        }
        // Bodies on the front door are tiny or absent; bound and discard them.
        let body_len = h.content_length().unwrap_or(0);
        if body_len > 64 * 1024 {
            respond(
                &mut stream,
                "413 Payload Too Large",
                "text/plain",
                b"request body too large\n",
            )
            .await?;
            return Ok(());
        }
        // One deadline for the whole body, not per read.
        let complete = timeout(BODY_TIMEOUT, async {
            while buf.len() < body_len {
                let mut tmp = [0u8; 4096];
                let n = stream.read(&mut tmp).await?;
                if n == 0 {
                    return Ok(false);
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            Ok(true)
        })
        .await?;
        if !complete {
            return Ok(());
        }
        buf.drain(..body_len);
        let close = h.header_has_token("connection", "close");
        match (h.method.as_str(), h.path.as_str()) {
            (_, "/ts2021") => {
                let leftover = std::mem::take(&mut buf);
                return upgrade_ts2021(server, stream, h, leftover, peer, permit).await;
            }
            ("GET", "/key") => {
                if h.query_param("v")
                    .and_then(|v| v.parse::<u32>().ok())
                    .is_none()
                {
                    respond(
                        &mut stream,
                        "400 Bad Request",
                        "text/plain",
                        b"missing or invalid v parameter\n",
                    )
                    .await?;
                    continue;
                }
                let body = serde_json::to_vec(&crate::tailcfg::OverTlsPublicKeyResponse {
                    legacy_public_key: MachineKey::default(),
                    public_key: MachineKey(server.noise_public),
                })
                .map_err(io::Error::other)?;
                respond(&mut stream, "200 OK", "application/json", &body).await?;
            }
            // Any method: Go's derphttp server looks only at the Upgrade
            // header, and tailscale-rs upgrades with `POST /derp`.
            (_, "/derp") if tls || server.cfg.derp_server_enabled => {
                let leftover = std::mem::take(&mut buf);
                return upgrade_derp(server, stream, h, leftover, peer, permit).await;
            }
            ("GET" | "HEAD", "/derp/probe") | ("GET" | "HEAD", "/derp/latency-check") => {
                respond_with(
                    &mut stream,
                    "200 OK",
                    "text/plain",
                    "Access-Control-Allow-Origin: *\r\n",
                    b"",
                )
                .await?;
            }
            ("GET", "/generate_204") => {
                let mut extra = String::from("Cache-Control: no-cache, no-store, must-revalidate, no-transform, max-age=0\r\n");
                if let Some(c) = h.header("x-tailscale-challenge").filter(|c| {
                    c.len() <= 64
                        && c.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
                }) {
                    extra.push_str(&format!("X-Tailscale-Response: response {c}\r\n"));
                }
                let head = format!("HTTP/1.1 204 No Content\r\n{extra}\r\n");
                stream.write_all(head.as_bytes()).await?;
                stream.flush().await?;
            }
            #[cfg(feature = "oidc")]
            ("GET", p) if p.starts_with("/register/") && server.oidc.is_some() => {
                if let Some(o) = server.oidc.as_ref() {
                    let pg = o.start(&server, &p["/register/".len()..], peer.ip()).await;
                    respond_page(&mut stream, pg).await?;
                }
            }
            #[cfg(feature = "oidc")]
            ("GET", "/oidc/callback") if server.oidc.is_some() => {
                if let Some(o) = server.oidc.as_ref() {
                    let pg = o.callback(&server, &h.query, &cookies(&h)).await;
                    respond_page(&mut stream, pg).await?;
                }
            }
            #[cfg(feature = "oidc")]
            ("POST", "/oidc/confirm") if server.oidc.is_some() => {
                if let Some(o) = server.oidc.as_ref() {
                    let pg = o.confirm(&server, &h.query, &cookies(&h));
                    respond_page(&mut stream, pg).await?;
                }
            }
            ("GET", p) if p.starts_with("/register/") => {
                let id = &p["/register/".len()..];
                let (code, html) = crate::control::interactive::page(&server, id);
                let status = if code == 200 {
                    "200 OK"
                } else {
                    "404 Not Found"
                };
                respond(
                    &mut stream,
                    status,
                    "text/html; charset=utf-8",
                    html.as_bytes(),
                )
                .await?;
            }
            ("GET", "/healthz") => {
                respond(
                    &mut stream,
                    "200 OK",
                    "application/json",
                    b"{\"status\":\"pass\"}",
                )
                .await?;
            }
            (_, p) if server.cfg.web_enabled && crate::web::is_page_path(p) => {
                let pg = crate::web::serve_page(&server, &h, tls);
                respond_with(&mut stream, pg.status, pg.ctype, &pg.headers, &pg.body).await?;
            }
            ("GET", "/") => {
                respond(
                    &mut stream,
                    "200 OK",
                    "text/plain",
                    b"tinyscale control server\n",
                )
                .await?;
            }
            _ => {
                respond(&mut stream, "404 Not Found", "text/plain", b"not found\n").await?;
            }
        }
        if close {
            break;
        }
    }
    Ok(())
}

/// `POST /ts2021`: the Noise handshake rides in the request header; the
/// response follows the 101 headers immediately on the same stream.
async fn upgrade_ts2021<S>(
    server: SharedServer,
    mut stream: S,
    h: head::Head,
    leftover: Vec<u8>,
    peer: std::net::SocketAddr,
    permit: admission::Permit,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
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
    let accepted = noise::accept(&server.noise_private, &init);
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
    spawn_long_lived("control connection", h2srv::serve(server, conn, ctx));
    Ok(())
}

async fn write_flush<S: AsyncWrite + Unpin>(stream: &mut S, b: &[u8]) -> io::Result<()> {
    stream.write_all(b).await?;
    stream.flush().await
}

/// Runs what an upgraded connection does for the rest of its life (HTTP/2
/// inside Noise, DERP) as a task of its own, and lets the task that read
/// the request head and did the handshake end. A task's allocation is the
/// size of its future's largest state; the accepting task's is ~8.8 KB
/// (head buffers, the handshake), which would otherwise stay allocated
/// beside every connected node for as long as it stays connected.
fn spawn_long_lived<F>(what: &'static str, f: F)
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

/// `/derp` (any method) with `Upgrade: DERP`: hijack the HTTP/1.1 connection and
/// run the relay protocol on it.
async fn upgrade_derp<S>(
    server: SharedServer,
    mut stream: S,
    h: head::Head,
    leftover: Vec<u8>,
    peer: std::net::SocketAddr,
    permit: admission::Permit,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(derp) = server.derp.clone() else {
        return respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"DERP is not enabled on this server\n",
        )
        .await;
    };
    if !h
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("derp"))
    {
        return respond(
            &mut stream,
            "426 Upgrade Required",
            "text/plain",
            b"DERP requires connection upgrade\n",
        )
        .await;
    }
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: 2\r\nDerp-Public-Key: {}\r\n\r\n",
        crate::keys::to_hex(&derp.public_key())
    );
    timeout(WRITE_TIMEOUT, write_flush(&mut stream, head.as_bytes())).await?;
    spawn_long_lived(
        "DERP connection",
        crate::derp::server::serve_derp_conn_admitted(
            prefixed::Prefixed::new(leftover, stream),
            derp,
            Some(peer),
            move || drop(permit),
        ),
    );
    Ok(())
}

/// Accepts TLS connections forever: DERP and the HTTPS control fallback.
pub async fn accept_loop_tls(
    server: SharedServer,
    listener: Async<TcpListener>,
    acceptor: futures_rustls::TlsAcceptor,
) {
    let adm = server.admission.clone();
    accept_each(
        &adm,
        listener,
        "accept (TLS)",
        move |stream, peer, permit| {
            let server = server.clone();
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
                if let Err(e) = handle_conn(server, tls, true, peer, permit).await {
                    debug!("TLS connection from {peer}: {e}");
                }
            }
        },
    )
    .await
}

/// The HTTP-01 listener: `GET /.well-known/acme-challenge/<token>` answers
/// the key authorization of a token our running order placed; everything
/// else is 404. One request per connection.
#[cfg(feature = "acme")]
pub async fn accept_loop_http01(m: Arc<crate::acme::Manager>, listener: Async<TcpListener>) {
    // Its own small caps: one request per connection, only the CA needs it.
    let adm = admission::Admission::new(64, 8);
    accept_each(
        &adm,
        listener,
        "accept (ACME HTTP-01)",
        move |mut stream, _peer, permit| {
            let m = m.clone();
            async move {
                let _held = permit;
                let mut buf = Vec::new();
                let Ok(Some(h)) = timeout(HEAD_TIMEOUT, read_head(&mut stream, &mut buf)).await
                else {
                    return;
                };
                let answer = h
                    .path
                    .strip_prefix("/.well-known/acme-challenge/")
                    .filter(|_| h.method == "GET")
                    .and_then(|t| m.http01(t));
                let _ = match answer {
                    Some(ka) => {
                        respond(
                            &mut stream,
                            "200 OK",
                            "application/octet-stream",
                            ka.as_bytes(),
                        )
                        .await
                    }
                    None => {
                        respond(&mut stream, "404 Not Found", "text/plain", b"not found\n").await
                    }
                };
            }
        },
    )
    .await
}

/// Binds the control listener.
pub fn bind(server: &Server) -> io::Result<Async<TcpListener>> {
    let l = Async::<TcpListener>::bind(server.cfg.listen_addr)?;
    info!(
        "listening on {} (server_url {})",
        server.cfg.listen_addr, server.cfg.server_url
    );
    Ok(l)
}

/// Shared handle for tests and the loader.
pub type ServerHandle = Arc<Server>;
