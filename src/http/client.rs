//! A small outbound HTTP/1.1 client for the few documents the server asks
//! for itself: DERP maps (`derp.urls`) and, with the `oidc` feature, the
//! provider's discovery document, keys and token endpoint. One request per
//! connection (`Connection: close`), `http://` or `https://` (rustls with
//! ring, the system CA bundle or a given PEM file). Every response is
//! bounded in size and every exchange in time, because the peer may be
//! slow, hostile or simply wrong.

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use std::io;
use std::path::Path;
use std::time::Duration;

/// Room for the status line and headers on top of a body limit.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// CA bundles tried, in order, when no file is configured.
const SYSTEM_ROOTS: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a str,
    /// Extra headers (name, value); the caller keeps values free of CR/LF.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    /// Largest body accepted; a longer response is an error, not truncated.
    pub max_body: usize,
    /// Bound on the whole exchange: resolve, connect, TLS, send, receive.
    pub timeout: Duration,
    /// PEM roots for https; None = the system bundle.
    pub ca_file: Option<&'a Path>,
}

impl<'a> Request<'a> {
    /// A GET of `url` with the given bounds.
    pub fn get(url: &'a str, max_body: usize, timeout: Duration) -> Self {
        Request {
            method: "GET",
            url,
            headers: &[],
            body: &[],
            max_body,
            timeout,
            ca_file: None,
        }
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// Response headers (name, value) as received; at most 64.
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `req` and reads the whole response.
pub async fn send(req: &Request<'_>) -> io::Result<Response> {
    send_inner(req)
        .or(async {
            async_io::Timer::after(req.timeout).await;
            Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
        })
        .await
}

/// GET `url`; anything but 200 is an error.
pub async fn get_ok(url: &str, max_body: usize, timeout: Duration) -> io::Result<Vec<u8>> {
    let r = send(&Request::get(url, max_body, timeout)).await?;
    if r.status != 200 {
        return Err(io::Error::other(format!("HTTP {}", r.status)));
    }
    Ok(r.body)
}

struct Target<'a> {
    tls: bool,
    host: &'a str,
    port: u16,
    hostport: &'a str,
    /// Origin-form target: path and query.
    path: String,
}

fn parse_url(url: &str) -> io::Result<Target<'_>> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(io::Error::other("unsupported URL scheme"));
    };
    let (hostport, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let bad = |b: u8| b <= b' ' || b >= 0x7f || matches!(b, b'@' | b'#' | b'\\');
    if hostport.is_empty() || hostport.bytes().any(bad) || url.bytes().any(|b| b < b' ') {
        return Err(io::Error::other("invalid URL"));
    }
    let default_port = if tls { 443 } else { 80 };
    let port = |p: Option<&str>| match p {
        None => Ok(default_port),
        Some(p) => p.parse::<u16>().map_err(|_| io::Error::other("bad port")),
    };
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| io::Error::other("invalid URL"))?;
            if !after.is_empty() && !after.starts_with(':') {
                return Err(io::Error::other("invalid URL"));
            }
            (h, port(after.strip_prefix(':'))?)
        }
        None => match hostport.split_once(':') {
            Some((h, p)) => (h, port(Some(p))?),
            None => (hostport, default_port),
        },
    };
    Ok(Target {
        tls,
        host,
        port,
        hostport,
        path,
    })
}

async fn send_inner(req: &Request<'_>) -> io::Result<Response> {
    let t = parse_url(req.url)?;
    let addr = smol::net::resolve((t.host, t.port))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::other("no address"))?;
    let tcp = async_io::Async::<std::net::TcpStream>::connect(addr).await?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: tinyscale\r\nAccept: application/json\r\n",
        req.method, t.path, t.hostport
    );
    for (k, v) in req.headers {
        if k.bytes().chain(v.bytes()).any(|b| b == b'\r' || b == b'\n') {
            return Err(io::Error::other("header contains a line break"));
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !req.body.is_empty() || req.method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(req.body);
    if t.tls {
        let cfg = tls_config(req.ca_file)?;
        let name = rustls::pki_types::ServerName::try_from(t.host.to_string())
            .map_err(io::Error::other)?;
        let s = futures_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(name, tcp)
            .await?;
        exchange(s, &out, req.max_body).await
    } else {
        exchange(tcp, &out, req.max_body).await
    }
}

fn tls_config(ca_file: Option<&Path>) -> io::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let files: Vec<&Path> = match ca_file {
        Some(f) => vec![f],
        None => SYSTEM_ROOTS.iter().map(Path::new).collect(),
    };
    for path in files {
        match rustls::pki_types::CertificateDer::pem_file_iter(path) {
            Ok(it) => {
                for c in it.flatten() {
                    let _ = roots.add(c);
                }
            }
            Err(e) if ca_file.is_some() => {
                return Err(io::Error::other(format!("{}: {e}", path.display())))
            }
            Err(_) => {}
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    out: &[u8],
    max_body: usize,
) -> io::Result<Response> {
    s.write_all(out).await?;
    s.flush().await?;
    let limit = max_body.saturating_add(MAX_RESPONSE_HEAD);
    let mut buf = Vec::new();
    (&mut s)
        .take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .await?;
    if buf.len() > limit {
        return Err(io::Error::other("response too large"));
    }
    parse_response(buf, max_body)
}

/// Parses a complete `Connection: close` response: status, then a body
/// delimited by Content-Length, chunked encoding or the end of the stream.
pub fn parse_response(mut buf: Vec<u8>, max_body: usize) -> io::Result<Response> {
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hdrs);
    let n = match r.parse(&buf).map_err(io::Error::other)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Err(io::Error::other("truncated response")),
    };
    let status = r.code.unwrap_or(0);
    let headers = super::head::owned_headers(r.headers);
    let header = |name: &str| {
        r.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length = header("content-length")
        .map(|v| v.trim().parse::<usize>())
        .transpose()
        .map_err(|_| io::Error::other("bad Content-Length"))?;
    let mut body = buf.split_off(n);
    if chunked {
        body = dechunk(&body, max_body)?;
    } else if let Some(len) = length {
        if body.len() < len {
            return Err(io::Error::other("truncated body"));
        }
        body.truncate(len);
    }
    if body.len() > max_body {
        return Err(io::Error::other("response too large"));
    }
    Ok(Response {
        status,
        body,
        headers,
    })
}

fn dechunk(mut rest: &[u8], max_body: usize) -> io::Result<Vec<u8>> {
    let bad = || io::Error::other("bad chunked encoding");
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_str = std::str::from_utf8(&rest[..line_end]).map_err(|_| bad())?;
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let end = size.checked_add(2).ok_or_else(bad)?;
        if rest.len() < end || out.len().saturating_add(size) > max_body {
            return Err(bad());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[end..];
    }
}

/// `application/x-www-form-urlencoded` / query-string escaping: everything
/// but RFC 3986 unreserved characters is percent-encoded.
pub fn pct_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` and `+` (space); None on a malformed escape or non-UTF-8.
pub fn pct_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes pairs as `k=v&k2=v2`.
pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&pct_encode(k));
        out.push('=');
        out.push_str(&pct_encode(v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef".to_vec(),
            10,
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abc"[..]));
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n"
                .to_vec(),
            10,
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abcde"[..]));
        let too_big = b"HTTP/1.1 200 OK\r\n\r\n0123456789A".to_vec();
        assert!(parse_response(too_big, 10).is_err());
        let huge_chunk =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab".to_vec();
        assert!(parse_response(huge_chunk, 10).is_err());
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab".to_vec(),
            10
        )
        .is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nX: y".to_vec(), 10).is_err());
    }

    #[test]
    fn urls_and_escapes() {
        let t = parse_url("https://id.example.com:8443/a/b?c=d").unwrap();
        assert_eq!(
            (t.tls, t.host, t.port, t.path),
            (true, "id.example.com", 8443, "/a/b?c=d".to_string())
        );
        let t = parse_url("http://[::1]/x").unwrap();
        assert_eq!((t.host, t.port), ("::1", 80));
        let t = parse_url("http://[::1]:81/x").unwrap();
        assert_eq!((t.host, t.port), ("::1", 81));
        assert!(parse_url("http://h:x/").is_err());
        assert_eq!(parse_url("http://h?q=1").unwrap().path, "/?q=1");
        assert!(parse_url("http://user@evil/x").is_err());
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("http://a b/").is_err());
        assert_eq!(pct_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(pct_decode("a%20b+c%2F").as_deref(), Some("a b c/"));
        assert_eq!(pct_decode("%zz"), None);
        assert_eq!(pct_decode("%4"), None);
        assert_eq!(form(&[("a", "1 2"), ("b", "&")]), "a=1%202&b=%26");
    }
}
