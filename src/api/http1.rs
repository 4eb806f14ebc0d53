//! One API request over HTTP/1.1 on any async stream: the admin socket and
//! the main listener both come here once they have read a request head.
//! Who the caller is gets decided before a byte of the body is read, so an
//! unauthenticated peer on the internet can make us hold a head (bounded by
//! the front door) and nothing more.

use super::routes::{self, Reply};
use crate::control::SharedServer;
use crate::http::head::Head;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use std::io;
use std::time::Duration;

/// Largest request body accepted (a policy is the largest thing sent).
pub const MAX_BODY: usize = 1 << 20;
/// Time allowed for a whole body to arrive (not per read).
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which way the request came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The admin socket: its peer's uid was checked on accept.
    Local,
    /// The main listener: `Authorization: Bearer <API key>` required
    /// (except for the public `/health` and `/version`).
    Network,
}

/// Headscale's API version level tinyscale implements; `/version` reports
/// it so that Headplane takes its ≥ 0.28 code paths (README says so).
pub const COMPAT_VERSION: &str = "v0.29.2";

/// True for the paths this module serves on the main listener.
pub fn is_api_path(path: &str) -> bool {
    path.starts_with("/api/v1/") || path == "/health" || path == "/version"
}

/// Serves one request whose head is `h`; `buf` holds what was read past
/// the head (the body's start; what is left of it stays for the next
/// request). Returns false when the connection must be closed.
pub async fn serve<S>(
    server: &SharedServer,
    stream: &mut S,
    h: &Head,
    buf: &mut Vec<u8>,
    caller: Caller,
) -> io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let public = matches!(h.path.as_str(), "/health" | "/version");
    let mut who = match caller {
        Caller::Local => super::web::Who::Local,
        Caller::Network => super::web::Who::ApiKey,
    };
    if caller == Caller::Network && !public && !authorised(server, h).await {
        // No API key: the admin page's session cookie (+ CSRF token) is the
        // one alternative (api/web.rs).
        match super::web::authorise(server, h) {
            super::web::Browser::Session(c) => who = super::web::Who::Session(c),
            super::web::Browser::Refused(status, why) => {
                let r = routes::error(status, why);
                write(stream, status, "application/json", r.body.as_bytes(), true).await?;
                return Ok(false);
            }
            super::web::Browser::NoCookie => {
                // Headscale's answer, byte for byte: both UIs look for a 401.
                write(
                    stream,
                    401,
                    "text/plain; charset=utf-8",
                    b"Unauthorized",
                    true,
                )
                .await?;
                return Ok(false);
            }
        }
    }
    if h.header("transfer-encoding").is_some() {
        let r = routes::error(411, "send the body with Content-Length");
        write(stream, 411, "application/json", r.body.as_bytes(), true).await?;
        return Ok(false);
    }
    let len = h.content_length().unwrap_or(0);
    if len > MAX_BODY {
        let r = routes::error(
            413,
            format!("request body of {len} bytes is larger than the {MAX_BODY} allowed"),
        );
        write(stream, 413, "application/json", r.body.as_bytes(), true).await?;
        return Ok(false);
    }
    if !crate::http::read_body(stream, buf, len, BODY_TIMEOUT).await? {
        return Ok(false);
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    let close = h.header_has_token("connection", "close");
    let (status, ctype, text) = match h.path.as_str() {
        "/health" => {
            let s = server.clone();
            let up = crate::control::unblock_bool(Box::new(move || routes::db_healthy(&s))).await;
            let b = if up {
                r#"{"status":"pass"}"#
            } else {
                r#"{"status":"fail"}"#
            };
            let status = if up { 200 } else { 500 };
            (
                status,
                "application/health+json; charset=utf-8",
                b.to_string(),
            )
        }
        "/version" => (200, "application/json", version_json()),
        p if super::web::is_web_api_path(p) => {
            let (s, m, p) = (server.clone(), h.method.to_ascii_uppercase(), p.to_string());
            let Reply { status, body } =
                smol::unblock(move || super::web::handle(&s, &who, &m, &p)).await;
            (status, "application/json", body)
        }
        // The server writes the file itself: only for the local admin.
        "/api/v1/backup" if caller == Caller::Local && h.method.eq_ignore_ascii_case("POST") => {
            let s = server.clone();
            let Reply { status, body } =
                smol::unblock(move || super::backup::handle(&s, &body)).await;
            (status, "application/json", body)
        }
        "/api/v1/backup" => {
            let r = routes::error(403, "backups are taken over the admin socket only");
            (403, "application/json", r.body)
        }
        _ => {
            let (s, m) = (server.clone(), h.method.to_ascii_uppercase());
            let url = if h.query.is_empty() {
                h.path.clone()
            } else {
                format!("{}?{}", h.path, h.query)
            };
            let Reply { status, body } =
                smol::unblock(move || routes::handle(&s, &m, &url, &body)).await;
            log::debug!("api: {} {} -> {status}", h.method, h.path);
            (status, "application/json", body)
        }
    };
    write(stream, status, ctype, text.as_bytes(), close).await?;
    Ok(!close)
}

/// Checks the bearer key (a database read, off the executor threads). The
/// table is read under the state lock; an imported key's bcrypt runs
/// without it, in the one [`crate::bcrypt::Slot`] (taken: refused, so a
/// peer who knows a prefix cannot take every core), once per key.
async fn authorised(server: &SharedServer, h: &Head) -> bool {
    let Some(key) = h
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
    else {
        return false;
    };
    let s = server.clone();
    crate::control::unblock_bool(Box::new(move || {
        let c = super::apikey::check(&s.state().store, &key);
        let k = match c {
            super::apikey::Check::Decided(ok) => return ok,
            super::apikey::Check::Bcrypt(k) => k,
        };
        let Some(slot) = crate::bcrypt::Slot::take() else {
            return false;
        };
        let ok = k.verify();
        drop(slot);
        if ok {
            if let Err(e) = super::apikey::accept(&s.state().store, &k) {
                log::warn!("api: rehashing an imported API key: {e}");
            }
        }
        ok
    }))
    .await
}

fn version_json() -> String {
    serde_json::json!({
        "version": COMPAT_VERSION,
        "commit": concat!("tinyscale-", env!("CARGO_PKG_VERSION")),
        "buildTime": "",
        "go": {"version": "", "os": std::env::consts::OS, "arch": std::env::consts::ARCH},
        "dirty": false,
    })
    .to_string()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

async fn write<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    ctype: &str,
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    crate::metrics::http_answer(status);
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{}\r\n",
        reason(status),
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await?;
    stream.flush().await
}
