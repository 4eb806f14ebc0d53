//! A protocol-level Tailscale client: `/key`, the `/ts2021` upgrade, Noise,
//! HTTP/2, register, the map stream and lite updates. Used by the
//! integration tests, the load generator and the cross smoke test; it
//! speaks the same bytes as a real client (vectors in tests/vectors).

pub mod netmap;

pub use crate::http::h2conn::RecvStream;
use crate::http::h2conn::{Client, Limits};
use crate::keys::{self, DiscoKey, MachineKey, NodeKey};
use crate::noise::{Initiator, NoiseStream};
use crate::tailcfg::{MapRequest, RegisterRequest, RegisterResponse, RegisterResponseAuth};
use crate::wire::{base64, mapframe, noise as wn};
use async_io::Async;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::io::{self, Error, ErrorKind};
use std::net::{IpAddr, SocketAddr, TcpStream};

/// The capability version this client claims (Go client 1.90).
pub const CAPVER: u16 = 130;

fn other(e: impl std::fmt::Display) -> Error {
    Error::other(e.to_string())
}

async fn read_http_head(s: &mut Async<TcpStream>, buf: &mut Vec<u8>) -> io::Result<(u16, usize)> {
    loop {
        let mut hdrs = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut hdrs);
        if let httparse::Status::Complete(n) = r.parse(buf).map_err(other)? {
            return Ok((r.code.unwrap_or(0), n));
        }
        if buf.len() > 16 * 1024 {
            return Err(Error::new(
                ErrorKind::InvalidData,
                "response head too large",
            ));
        }
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// Opens a TCP connection to `addr`, from source address `from` when
/// given (tests tell attackers and legitimate clients apart by source:
/// 127.0.0.1 and 127.0.0.2 are both loopback).
pub async fn dial(addr: SocketAddr, from: Option<IpAddr>) -> io::Result<Async<TcpStream>> {
    let Some(from) = from else {
        return Async::<TcpStream>::connect(addr).await;
    };
    use rustix::net::{AddressFamily, SocketType};
    let family = match from {
        IpAddr::V4(_) => AddressFamily::INET,
        IpAddr::V6(_) => AddressFamily::INET6,
    };
    let fd = rustix::net::socket(family, SocketType::STREAM, None)?;
    rustix::net::bind(&fd, &SocketAddr::new(from, 0))?;
    // Blocking, but only ever to a local listener: immediate.
    rustix::net::connect(&fd, &addr)?;
    Async::new(TcpStream::from(fd))
}

/// `GET /key?v=N`: the server's Noise public key.
pub async fn fetch_key(addr: SocketAddr) -> io::Result<[u8; 32]> {
    fetch_key_from(addr, None).await
}

/// [`fetch_key`] from source address `from`.
pub async fn fetch_key_from(addr: SocketAddr, from: Option<IpAddr>) -> io::Result<[u8; 32]> {
    let mut s = dial(addr, from).await?;
    let req = format!("GET /key?v={CAPVER} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let (code, n) = read_http_head(&mut s, &mut buf).await?;
    if code != 200 {
        return Err(other(format!("/key: HTTP {code}")));
    }
    let len = {
        let mut hdrs = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut hdrs);
        let _ = r.parse(&buf);
        r.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(64 * 1024)
            .min(64 * 1024)
    };
    let mut body = buf.split_off(n);
    while body.len() < len {
        let mut tmp = [0u8; 4096];
        let k = s.read(&mut tmp).await?;
        if k == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..k]);
    }
    let v: crate::tailcfg::OverTlsPublicKeyResponse =
        serde_json::from_slice(&body).map_err(other)?;
    if v.public_key.is_zero() {
        return Err(other("server has no noise key"));
    }
    Ok(v.public_key.0)
}

/// The client side's HTTP/2 settings: a 1 MiB stream window so a full
/// map arrives without waiting on window updates.
static CLIENT_LIMITS: Limits = Limits {
    max_streams: 0,
    stream_window: 1 << 20,
    conn_window_extra: 16 << 20,
    max_body: 0,
    body_budget: 0,
    max_header_list: 64 * 1024,
    max_header_block: 64 * 1024,
};

/// A Noise + HTTP/2 connection to the control server.
pub struct Conn {
    send: Client,
    pub machine_public: [u8; 32],
}

/// Dials `/ts2021` and completes the handshake; the HTTP/2 connection is
/// driven by a task on smol's executor.
pub async fn connect(
    addr: SocketAddr,
    server_public: &[u8; 32],
    machine_private: &[u8; 32],
) -> io::Result<Conn> {
    connect_version(addr, server_public, machine_private, CAPVER).await
}

pub async fn connect_version(
    addr: SocketAddr,
    server_public: &[u8; 32],
    machine_private: &[u8; 32],
    version: u16,
) -> io::Result<Conn> {
    let noise = connect_noise_from(addr, server_public, machine_private, version, None).await?;
    Ok(h2_over(noise, machine_private))
}

/// [`connect`] from source address `from`.
pub async fn connect_from(
    addr: SocketAddr,
    server_public: &[u8; 32],
    machine_private: &[u8; 32],
    from: Option<IpAddr>,
) -> io::Result<Conn> {
    let noise = connect_noise_from(addr, server_public, machine_private, CAPVER, from).await?;
    Ok(h2_over(noise, machine_private))
}

fn h2_over(noise: NoiseStream<Async<TcpStream>>, machine_private: &[u8; 32]) -> Conn {
    let (send, conn) = Client::new(noise, &CLIENT_LIMITS);
    smol::spawn(async move {
        let _ = conn.await;
    })
    .detach();
    Conn {
        send,
        machine_public: keys::x25519_public(machine_private),
    }
}

/// Dials `/ts2021` and completes the Noise handshake: the stream HTTP/2
/// would run on (tests that misbehave at the HTTP/2 layer start here).
pub async fn connect_noise(
    addr: SocketAddr,
    server_public: &[u8; 32],
    machine_private: &[u8; 32],
    version: u16,
) -> io::Result<NoiseStream<Async<TcpStream>>> {
    connect_noise_from(addr, server_public, machine_private, version, None).await
}

/// [`connect_noise`] from source address `from`.
pub async fn connect_noise_from(
    addr: SocketAddr,
    server_public: &[u8; 32],
    machine_private: &[u8; 32],
    version: u16,
    from: Option<IpAddr>,
) -> io::Result<NoiseStream<Async<TcpStream>>> {
    let mut s = dial(addr, from).await?;
    let _ = s.get_ref().set_nodelay(true);
    let (ini, init) = Initiator::start(machine_private, server_public, version).map_err(other)?;
    let req = format!(
        "POST /ts2021 HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: upgrade\r\nUpgrade: tailscale-control-protocol\r\nX-Tailscale-Handshake: {}\r\n\r\n",
        base64::encode(&init)
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let (code, n) = read_http_head(&mut s, &mut buf).await?;
    if code != 101 {
        return Err(other(format!("/ts2021: HTTP {code}")));
    }
    buf.drain(..n);
    while buf.len() < 3 {
        read_more(&mut s, &mut buf).await?;
    }
    if buf[0] == wn::TYPE_ERROR {
        let len = u16::from_be_bytes([buf[1], buf[2]]) as usize;
        while buf.len() < 3 + len {
            read_more(&mut s, &mut buf).await?;
        }
        return Err(other(format!(
            "server error: {:?}",
            String::from_utf8_lossy(&buf[3..3 + len])
        )));
    }
    while buf.len() < wn::RESPONSE_LEN {
        read_more(&mut s, &mut buf).await?;
    }
    let keys = ini.finish(&buf[..wn::RESPONSE_LEN]).map_err(other)?;
    let leftover = buf.split_off(wn::RESPONSE_LEN);
    Ok(NoiseStream::new(s, &keys, leftover))
}

async fn read_more(s: &mut Async<TcpStream>, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut tmp = [0u8; 4096];
    let n = s.read(&mut tmp).await?;
    if n == 0 {
        return Err(ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&tmp[..n]);
    Ok(())
}

impl Conn {
    /// POSTs JSON; returns the status and the response body stream.
    pub async fn post(&self, path: &str, body: Vec<u8>) -> io::Result<(u16, RecvStream)> {
        self.send.post(path, &body).await
    }

    /// POSTs JSON and reads the whole (bounded) response.
    pub async fn post_json(&mut self, path: &str, body: Vec<u8>) -> io::Result<(u16, Vec<u8>)> {
        let (status, mut rx) = self.post(path, body).await?;
        let body = rx.read_all(64 << 20).await?;
        Ok((status, body))
    }

    pub async fn register(&mut self, req: &RegisterRequest) -> io::Result<RegisterResponse> {
        let (status, body) = self
            .post_json("/machine/register", serde_json::to_vec(req).map_err(other)?)
            .await?;
        if status != 200 {
            return Err(other(format!(
                "register: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        serde_json::from_slice(&body).map_err(other)
    }

    /// Logs `node` out (register.md: a RegisterRequest for its current node
    /// key with an `Expiry` in the past, as `tailscale logout` sends): the
    /// server expires the node's key, or deletes the node if it is ephemeral.
    pub async fn logout(&mut self, node: &Node) -> io::Result<RegisterResponse> {
        self.register(&node.logout_request()).await
    }

    /// Opens a map poll; with `Stream: true` messages keep coming.
    pub async fn map(&mut self, req: &MapRequest) -> io::Result<MapStream> {
        let (status, mut rx) = self
            .post("/machine/map", serde_json::to_vec(req).map_err(other)?)
            .await?;
        if status != 200 {
            let body = rx.read_all(1 << 20).await.unwrap_or_default();
            return Err(other(format!(
                "map: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(MapStream {
            rx,
            buf: Vec::new(),
            zstd: req.compress == "zstd",
            bytes: 0,
        })
    }
}

/// Joins as `node`: fetches the server key, connects, registers with
/// `auth_key` advertising `routes` (Hostinfo.RoutableIPs), opens a streaming
/// map poll and waits for the first map. Errors say which step failed. (A
/// subnet router in tests, since tsnet cannot advertise routes.)
pub async fn join(
    addr: SocketAddr,
    node: &Node,
    auth_key: &str,
    routes: &[&str],
) -> Result<(Conn, MapStream, serde_json::Value), String> {
    let e = |what: &str, err: io::Error| format!("{what}: {err}");
    let server_pub = fetch_key(addr).await.map_err(|x| e("GET /key", x))?;
    let mut conn = connect(addr, &server_pub, &node.machine_private)
        .await
        .map_err(|x| e("connect /ts2021", x))?;
    let mut rr = node.register_request(Some(auth_key));
    rr.hostinfo = Some(node.hostinfo(routes));
    let r = conn.register(&rr).await.map_err(|x| e("register", x))?;
    if !r.error.is_empty() || !r.machine_authorized {
        return Err(format!("register: {r:?}"));
    }
    let mut mr = node.map_request(true, &[]);
    mr.hostinfo = Some(node.hostinfo(routes));
    let mut stream = conn.map(&mr).await.map_err(|x| e("map", x))?;
    let first = stream
        .next()
        .await
        .map_err(|x| e("first map", x))?
        .ok_or("map stream ended before the first map")?;
    Ok((conn, stream, first))
}

/// The message stream of a map poll.
pub struct MapStream {
    rx: RecvStream,
    buf: Vec<u8>,
    zstd: bool,
    /// Wire bytes received so far.
    pub bytes: u64,
}

impl MapStream {
    /// The next MapResponse as JSON; None at end of stream.
    pub async fn next(&mut self) -> io::Result<Option<serde_json::Value>> {
        loop {
            if let Some((body, used)) =
                mapframe::split_message(&self.buf).map_err(|e| other(format!("{e:?}")))?
            {
                let json = if self.zstd {
                    let mut out = Vec::new();
                    mapframe::decode_zstd_raw(body, &mut out)
                        .map_err(|e| other(format!("{e:?}")))?;
                    out
                } else {
                    body.to_vec()
                };
                self.buf.drain(..used);
                return serde_json::from_slice(&json).map(Some).map_err(other);
            }
            match self.rx.data().await {
                None => return Ok(None),
                Some(chunk) => {
                    let chunk = chunk?;
                    self.bytes += chunk.len() as u64;
                    self.buf.extend_from_slice(&chunk);
                }
            }
        }
    }
}

/// A synthetic node: its keys and the requests a real client would send.
pub struct Node {
    pub machine_private: [u8; 32],
    pub node_private: [u8; 32],
    pub disco_private: [u8; 32],
    pub hostname: String,
}

impl Node {
    pub fn new(hostname: &str) -> Node {
        Node {
            machine_private: keys::random32(),
            node_private: keys::random32(),
            disco_private: keys::random32(),
            hostname: hostname.to_string(),
        }
    }
    pub fn machine_key(&self) -> MachineKey {
        MachineKey(keys::x25519_public(&self.machine_private))
    }
    pub fn node_key(&self) -> NodeKey {
        NodeKey(keys::x25519_public(&self.node_private))
    }
    pub fn disco_key(&self) -> DiscoKey {
        DiscoKey(keys::x25519_public(&self.disco_private))
    }
    pub fn hostinfo(&self, routes: &[&str]) -> crate::tailcfg::Hostinfo {
        crate::tailcfg::Hostinfo {
            hostname: self.hostname.clone(),
            os: "linux".into(),
            ipn_version: "tinyscale-testclient".into(),
            routable_ips: routes.iter().map(|r| r.to_string()).collect(),
            net_info: Some(crate::tailcfg::NetInfo {
                preferred_derp: 999,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
    pub fn register_request(&self, auth_key: Option<&str>) -> RegisterRequest {
        RegisterRequest {
            version: CAPVER as u32,
            node_key: self.node_key(),
            auth: auth_key.map(|k| RegisterResponseAuth {
                auth_key: k.to_string(),
            }),
            hostinfo: Some(self.hostinfo(&[])),
            ..Default::default()
        }
    }
    /// What the Go client sends to log out: its node key and `Expiry` =
    /// Unix time 123 (controlclient's doLogin with `Logout`).
    pub fn logout_request(&self) -> RegisterRequest {
        RegisterRequest {
            version: CAPVER as u32,
            node_key: self.node_key(),
            expiry: Some(crate::timefmt::rfc3339(123)),
            hostinfo: Some(self.hostinfo(&[])),
            ..Default::default()
        }
    }
    /// A streaming map request (`zstd` as the Go client always asks).
    pub fn map_request(&self, stream: bool, endpoints: &[&str]) -> MapRequest {
        MapRequest {
            version: CAPVER as u32,
            compress: "zstd".into(),
            keep_alive: true,
            node_key: self.node_key(),
            disco_key: self.disco_key(),
            stream,
            omit_peers: !stream,
            hostinfo: Some(self.hostinfo(&[])),
            endpoints: Some(endpoints.iter().map(|e| e.to_string()).collect()),
        }
    }
}
