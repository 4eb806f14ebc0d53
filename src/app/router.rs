//! The front door's routes: what each HTTP/1.1 request on the main and TLS
//! listeners is for (the control plane's `/key` and `/ts2021`, the API
//! room's `/api/v1/*`, the admin page, OIDC logins, DERP), and the ACME
//! HTTP-01 listener's one route. The transport (`crate::http`) reads the
//! heads and runs the upgrades; it learns of this table only through
//! [`http::Service`].

use super::App;
use crate::http::{
    self, admission, head, prefixed, read_head, respond, respond_with, spawn_long_lived, timeout,
    write_flush, BODY_TIMEOUT, HEAD_TIMEOUT, MAX_KEEPALIVE_REQUESTS, WRITE_TIMEOUT,
};
use crate::keys::MachineKey;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use std::future::Future;
use std::io;
use std::sync::Arc;

impl http::Service for App {
    fn serve<S>(
        self: Arc<Self>,
        stream: S,
        tls: bool,
        peer: std::net::SocketAddr,
        permit: admission::Permit,
    ) -> impl Future<Output = io::Result<()>> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        handle_conn(self, stream, tls, peer, permit)
    }
}

/// One front-door connection, plain or TLS, from `peer`, charged to the
/// unidentified caps by `permit` until an upgrade identifies it.
async fn handle_conn<S>(
    app: Arc<App>,
    mut stream: S,
    tls: bool,
    peer: std::net::SocketAddr,
    permit: admission::Permit,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let server = &app.server;
    let mut buf = Vec::new();
    for _ in 0..MAX_KEEPALIVE_REQUESTS {
        let Some(h) = timeout(HEAD_TIMEOUT, read_head(&mut stream, &mut buf)).await? else {
            return Ok(());
        };
        if crate::api::http1::is_api_path(&h.path) {
            let caller = crate::api::http1::Caller::Network;
            if crate::api::http1::serve(server, &mut stream, &h, &mut buf, caller).await? {
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
        if !http::read_body(&mut stream, &mut buf, body_len, BODY_TIMEOUT).await? {
            return Ok(());
        }
        buf.drain(..body_len);
        let close = h.header_has_token("connection", "close");
        match (h.method.as_str(), h.path.as_str()) {
            (_, "/ts2021") => {
                let leftover = std::mem::take(&mut buf);
                let (handler, key) = (server.clone(), &server.noise_private);
                return http::upgrade_ts2021(handler, key, stream, h, leftover, peer, permit).await;
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
                let derp = server.derp.clone();
                return upgrade_derp(derp, stream, h, leftover, peer, permit).await;
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
            ("GET", p) if p.starts_with("/register/") && app.oidc.is_some() => {
                if let Some(o) = app.oidc.as_ref() {
                    let pg = o.start(server, &p["/register/".len()..], peer.ip()).await;
                    respond_page(&mut stream, pg).await?;
                }
            }
            #[cfg(feature = "oidc")]
            ("GET", "/oidc/callback") if app.oidc.is_some() => {
                if let Some(o) = app.oidc.as_ref() {
                    let pg = o.callback(server, &h.query, &http::cookies(&h)).await;
                    respond_page(&mut stream, pg).await?;
                }
            }
            #[cfg(feature = "oidc")]
            ("POST", "/oidc/confirm") if app.oidc.is_some() => {
                if let Some(o) = app.oidc.as_ref() {
                    let pg = o.confirm(server, &h.query, &http::cookies(&h));
                    respond_page(&mut stream, pg).await?;
                }
            }
            ("GET", p) if p.starts_with("/register/") => {
                let id = &p["/register/".len()..];
                let (code, html) = crate::control::interactive::page(server, id);
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
                let pg = crate::web::serve_page(server, &h, tls);
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

/// `/derp` (any method) with `Upgrade: DERP`: hijack the HTTP/1.1 connection and
/// run the relay protocol on it.
async fn upgrade_derp<S>(
    derp: Option<Arc<crate::derp::server::DerpServer>>,
    mut stream: S,
    h: head::Head,
    leftover: Vec<u8>,
    peer: std::net::SocketAddr,
    permit: admission::Permit,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(derp) = derp else {
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

/// The HTTP-01 listener: `GET /.well-known/acme-challenge/<token>` answers
/// the key authorization of a token our running order placed; everything
/// else is 404. One request per connection.
#[cfg(feature = "acme")]
pub(super) async fn accept_loop_http01(
    m: Arc<crate::acme::Manager>,
    listener: async_io::Async<std::net::TcpListener>,
) {
    // Its own small caps: one request per connection, only the CA needs it.
    let adm = admission::Admission::new(64, 8);
    http::accept_each(
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
