//! How the CLI reaches the server: a minimal HTTP/1.1 client over the
//! admin unix socket (one request per connection, `Connection: close`), or,
//! when a remote address is configured (`HEADSCALE_CLI_ADDRESS` /
//! `TINYSCALE_CLI_ADDRESS` / `cli.address`), the same API over the main
//! listener's REST routes with `Authorization: Bearer <API key>`.
//! Headscale's remote CLI speaks gRPC there; tinyscale has no gRPC, so the
//! remote mode speaks REST to the same address.

use crate::config::Config;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Bound on one request when `cli.timeout` is not set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer taken from a remote server (a node list of many
/// thousands of nodes fits).
const MAX_REMOTE_BODY: usize = 64 << 20;

#[derive(Debug)]
pub enum ClientError {
    /// The socket is missing or nobody listens: the server is not running.
    Unreachable(String),
    /// Transport trouble after connecting, or an unusable remote setting.
    Io(String),
    /// The server answered with an error status.
    Api { status: u16, detail: String },
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unreachable(s) | ClientError::Io(s) => f.write_str(s),
            ClientError::Api { detail, .. } => f.write_str(detail),
        }
    }
}

/// A remote server: base URL (no trailing slash) and its API key.
struct Remote {
    base: String,
    key: String,
}

fn env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// The remote address in force, if any: the environment wins over the
/// config file, as with Headscale.
pub fn remote_address(cfg: &Config) -> Option<String> {
    env(&["TINYSCALE_CLI_ADDRESS", "HEADSCALE_CLI_ADDRESS"]).or_else(|| cfg.cli_address.clone())
}

fn remote(cfg: &Config) -> Result<Option<Remote>, ClientError> {
    let Some(addr) = remote_address(cfg) else {
        return Ok(None);
    };
    let addr = addr.trim().trim_end_matches('/');
    let base = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else if addr.contains("://") {
        return Err(ClientError::Io(format!(
            "cli address {addr:?}: only http:// and https:// are spoken (tinyscale's remote CLI uses the REST API, not gRPC)"
        )));
    } else {
        format!("http://{addr}")
    };
    let key = env(&["TINYSCALE_CLI_API_KEY", "HEADSCALE_CLI_API_KEY"])
        .or_else(|| cfg.cli_api_key.clone())
        .ok_or_else(|| {
            ClientError::Io(format!(
                "cli address {base} is set but no API key: set HEADSCALE_CLI_API_KEY (or cli.api_key); create one on the server with `tinyscale apikeys create`"
            ))
        })?;
    Ok(Some(Remote {
        base,
        key: key.trim().to_string(),
    }))
}

/// Sends one request to the configured server (remote address or admin
/// socket) and returns the JSON body of a 2xx answer.
pub fn request(
    cfg: &Config,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    let timeout = cfg.cli_timeout.unwrap_or(DEFAULT_TIMEOUT);
    match remote(cfg)? {
        Some(r) => call_remote(&r, timeout, method, path, body),
        None => call_socket(&cfg.unix_socket, timeout, method, path, body),
    }
}

/// Sends one request over the admin socket at `socket` and returns the
/// JSON body of a 2xx answer.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    call_socket(socket, DEFAULT_TIMEOUT, method, path, body)
}

fn call_remote(
    r: &Remote,
    timeout: Duration,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    let url = format!("{}{path}", r.base);
    let auth = format!("Bearer {}", r.key);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut headers = vec![("Authorization", auth.as_str())];
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    let req = crate::http::client::Request {
        method,
        url: &url,
        headers: &headers,
        body: body.as_bytes(),
        max_body: MAX_REMOTE_BODY,
        timeout,
        ca_file: None,
    };
    let resp = smol::block_on(crate::http::client::send(&req)).map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            ClientError::Unreachable(format!(
                "cannot reach tinyscale at {}: connection refused",
                r.base
            ))
        } else {
            ClientError::Io(format!("cannot talk to tinyscale at {}: {e}", r.base))
        }
    })?;
    if resp.status == 401 {
        return Err(ClientError::Api {
            status: 401,
            detail: format!(
                "{} answered 401 Unauthorized: the API key was refused (check HEADSCALE_CLI_API_KEY / cli.api_key)",
                r.base
            ),
        });
    }
    answer(resp.status, &resp.body)
}

fn call_socket(
    socket: &Path,
    timeout: Duration,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return ClientError::Unreachable(format!(
                "cannot reach tinyscale at {}: permission denied (run as the user the server runs as)",
                socket.display()
            ));
        }
        ClientError::Unreachable(format!(
            "cannot reach tinyscale at {}: is 'tinyscale serve' running?",
            socket.display()
        ))
    })?;
    let io = |e: std::io::Error| ClientError::Io(format!("admin socket {}: {e}", socket.display()));
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: tinyscale\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let (status, body) = parse_response(&raw)
        .ok_or_else(|| ClientError::Io("malformed response from server".into()))?;
    answer(status, &body)
}

/// The JSON of a 2xx answer, or the server's error detail.
fn answer(status: u16, body: &[u8]) -> Result<serde_json::Value, ClientError> {
    if !(200..300).contains(&status) {
        let detail = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                v.get("detail")
                    .or_else(|| v.get("message"))
                    .and_then(|d| d.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| {
                format!(
                    "server answered {status}: {}",
                    String::from_utf8_lossy(body)
                )
            });
        return Err(ClientError::Api { status, detail });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| ClientError::Io(format!("invalid JSON from server: {e}")))
}

/// Status and (de-chunked) body of a complete HTTP/1.1 response.
fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut chunked = false;
    let mut len = None;
    for l in lines {
        let (k, v) = l.split_once(':')?;
        let v = v.trim();
        if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k.eq_ignore_ascii_case("content-length") {
            len = v.parse::<usize>().ok();
        }
    }
    if chunked {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n")?;
            let size_str = std::str::from_utf8(&rest[..nl]).ok()?;
            let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        return Some((status, out));
    }
    let body = match len {
        Some(n) => body.get(..n)?,
        None => body,
    };
    Some((status, body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(r), Some((200, b"{}".to_vec())));
        let r = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(r), Some((404, b"abcde".to_vec())));
        assert_eq!(parse_response(b"garbage"), None);
    }

    #[test]
    fn unreachable() {
        let e = call(
            Path::new("/nonexistent/tinyscale.sock"),
            "GET",
            "/health",
            None,
        )
        .unwrap_err();
        assert!(matches!(e, ClientError::Unreachable(_)));
        assert!(e.to_string().starts_with(
            "cannot reach tinyscale at /nonexistent/tinyscale.sock: is 'tinyscale serve' running?"
        ));
    }
}
