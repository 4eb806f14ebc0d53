//! HTTP/1.1 request heads for the front door (`/key`, `/ts2021`, small
//! pages): httparse over a bounded buffer. The control protocol itself runs
//! as HTTP/2 inside Noise; this only has to carry the first exchange.

/// Largest request head we accept.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 48;

#[derive(Debug)]
pub struct Head {
    pub method: String,
    /// Path without query, from origin form (`/key`) or absolute form
    /// (`http://host:port/key`, as Tailscale's Rust client sends).
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    TooLarge,
    Malformed,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True if a comma-separated header contains `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    /// A query parameter's raw value.
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then_some(v)
        })
    }

    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Parsed headers as owned (name, value) pairs; a value that is not UTF-8
/// is kept lossily.
pub fn owned_headers(h: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    h.iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// Parses a head at the start of `buf`: Ok(Some((head, head_len))) when
/// complete, Ok(None) when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<(Head, usize)>, Error> {
    let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hdrs);
    match req.parse(buf) {
        // The reader appends up to 4 KiB at a time, and a pipelined or
        // kept-alive connection may hand over more: a head that is whole
        // in the buffer is still held to the bound.
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => Err(Error::TooLarge),
        Ok(httparse::Status::Complete(n)) => {
            let target = req.path.ok_or(Error::Malformed)?;
            let (path, query) = split_target(target).ok_or(Error::Malformed)?;
            let headers = owned_headers(req.headers);
            Ok(Some((
                Head {
                    method: req.method.ok_or(Error::Malformed)?.to_string(),
                    path,
                    query,
                    headers,
                },
                n,
            )))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(Error::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Error::TooLarge),
        Err(_) => Err(Error::Malformed),
    }
}

fn split_target(target: &str) -> Option<(String, String)> {
    let rest = if let Some(r) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        match r.find('/') {
            Some(i) => &r[i..],
            None => "/",
        }
    } else if target.starts_with('/') {
        target
    } else {
        return None;
    };
    let (p, q) = rest.split_once('?').unwrap_or((rest, ""));
    Some((p.to_string(), q.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_and_absolute_form() {
        let (h, n) = parse(b"GET /key?v=130 HTTP/1.1\r\nHost: x\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.path.as_str(), h.query_param("v"), n),
            ("/key", Some("130"), 36)
        );
        let (h, _) = parse(b"GET http://198.18.0.1:8080/key?v=130 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.path.as_str(), h.query_param("v")), ("/key", Some("130")));
        let (h, _) = parse(b"GET http://host HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.path, "/");
        assert_eq!(
            parse(b"GET /key HTTP/1.1\r\nHost:").unwrap().map(|_| ()),
            None
        );
        assert_eq!(
            parse(b"\x00\x01garbage\r\n\r\n").unwrap_err(),
            Error::Malformed
        );
        assert_eq!(
            parse(b"GET * HTTP/1.1\r\n\r\n").unwrap_err(),
            Error::Malformed
        );
        let big = vec![b'a'; MAX_HEAD];
        assert_eq!(parse(&big).unwrap_err(), Error::TooLarge);
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        assert_eq!(parse(&long).unwrap_err(), Error::TooLarge);
    }

    /// A head that arrives whole but longer than MAX_HEAD (the reader's
    /// last 4 KiB read took it past the bound) is refused too (found by
    /// fuzz/fuzz_targets/http_head.rs: an 18,372-byte head was accepted).
    #[test]
    fn whole_head_over_the_bound_is_refused() {
        let mut head = b"GET /key?v=130 HTTP/1.1\r\nX: ".to_vec();
        head.resize(MAX_HEAD + 1000, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse(&head).unwrap_err(), Error::TooLarge);
        // At the bound exactly it is still a head.
        let mut at = b"GET /key?v=130 HTTP/1.1\r\nX: ".to_vec();
        at.resize(MAX_HEAD - 4, b'a');
        at.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse(&at).unwrap().unwrap().1, MAX_HEAD);
    }

    #[test]
    fn tokens() {
        let (h, _) = parse(b"POST /ts2021 HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUPGRADE: tailscale-control-protocol\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.header_has_token("connection", "upgrade"));
        assert_eq!(h.header("upgrade"), Some("tailscale-control-protocol"));
    }
}
