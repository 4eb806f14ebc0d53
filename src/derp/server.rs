//! The DERP relay: per-connection protocol and the registry of clients.
//!
//! The HTTP front door (TLS, `GET /derp`, `101 Switching Protocols`) is not
//! here; it hands the upgraded byte stream to [`serve_derp_conn`].
//!
//! Shape of a connection: after the handshake (ServerKey →, ClientInfo ←,
//! ServerInfo →) two futures run side by side on the caller's task, a reader
//! that parses frames and acts on them, and a writer that drains this
//! client's queues and sends keepalives. Whichever ends first ends the
//! connection. Each client has two capped queues: control (Pong, PeerGone,
//! PeerPresent, Restarting, small disco packets), always written first, and
//! data (relayed packets, [`DerpConfig::queue_len`]). Senders never wait on
//! a receiver: a full queue drops its *oldest* frame (stale WireGuard
//! packets are worthless, as in Go's derper). A receiver that cannot take a
//! write within [`DerpConfig::write_timeout`] is disconnected, so one stuck
//! client costs nobody else anything.
//!
//! Measured (ignored tests in `tests/derp_relay.rs`, release build): about
//! 10 KiB of RSS per idle connection; 250–600 k relayed 1,280-byte packets
//! per second on one smol thread, depending on load from other work.

use crate::atomic64::AtomicU64;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::ratelimit::RateLimited;
use async_io::Timer;
use crypto_box::aead::Aead;
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use futures_lite::future;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::channel::{self, Receiver, Sender};

use crate::wire::derp::{
    looks_like_disco, FrameType, Header, Key, PeerGoneReason, Repr, HEADER_LEN, NONCE_LEN,
    PROTOCOL_VERSION,
};

/// Admission hook: true if this node key may use the relay (e.g. it belongs
/// to a node registered with this control server).
pub type VerifyFn = Arc<dyn Fn(&Key) -> bool + Send + Sync>;

/// Tunables; the defaults follow Tailscale's derper.
#[derive(Debug, Clone)]
pub struct DerpConfig {
    /// Base keepalive interval; up to 5 s of jitter is added. Clients give
    /// up after 120 s of silence.
    pub keepalive: Duration,
    /// Longest a single write to a client may take before it is dropped.
    pub write_timeout: Duration,
    /// Deadline for the client to send ClientInfo.
    pub handshake_timeout: Duration,
    /// Frames queued per client before the oldest is dropped.
    pub queue_len: usize,
    /// A client that said `CanAckPings` is pinged instead of sent bare
    /// keepalives, and dropped once it has sent nothing (not even a Pong)
    /// for this long. Catches peers that vanished without a FIN long
    /// before TCP's own retransmission timeout (~15 min) would.
    pub idle_timeout: Duration,
}

impl Default for DerpConfig {
    fn default() -> Self {
        DerpConfig {
            keepalive: Duration::from_secs(60),
            write_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(10),
            queue_len: 32,
            idle_timeout: Duration::from_secs(180),
        }
    }
}

/// Counters for the admin plane's metrics.
#[derive(Debug, Default)]
pub struct DerpStats {
    /// Packets delivered to a destination queue.
    pub packets_forwarded: AtomicU64,
    /// Packets whose destination was not connected.
    pub packets_dropped_unknown_dst: AtomicU64,
    /// Packets pushed out of a full queue (oldest first).
    pub packets_dropped_queue_full: AtomicU64,
    /// Connections closed because a write took too long.
    pub slow_clients_dropped: AtomicU64,
    /// Connections closed because the client stopped answering pings.
    pub idle_clients_dropped: AtomicU64,
    /// Connections refused by the verify hook.
    pub clients_refused: AtomicU64,
}

/// A length-capped frame queue that never makes the producer wait.
///
/// Built on an *unbounded* channel with the cap enforced here: a bounded
/// channel preallocates every slot (8 KiB for 256 frames) per connection,
/// while the unbounded one allocates small blocks only as frames arrive,
/// which keeps idle connections cheap.
struct Queue {
    tx: Sender<Vec<u8>>,
    /// A second handle so a producer can pop the oldest frame when full.
    rx: Receiver<Vec<u8>>,
    cap: usize,
}

impl Queue {
    fn new(cap: usize) -> Queue {
        let (tx, rx) = channel::unbounded();
        Queue {
            tx,
            rx,
            cap: cap.max(1),
        }
    }

    /// Queue an encoded frame; never waits. Returns false if the connection
    /// is closing. A full queue loses its oldest frames (stale WireGuard
    /// packets are worthless; fresh ones carry the retransmissions).
    /// Concurrent producers may overshoot the cap by one frame each.
    fn push(&self, frame: Vec<u8>, stats: &DerpStats) -> bool {
        while self.tx.len() >= self.cap {
            if self.rx.try_recv().is_err() {
                break;
            }
            stats
                .packets_dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
        self.tx.try_send(frame).is_ok()
    }
}

/// Control queue length: server-made frames (Pong, PeerGone, PeerPresent,
/// Restarting) and small disco packets. They are few and tiny but must not
/// be lost behind a flood of data packets: a client whose Pong is dropped
/// reconnects, one that misses PeerGone keeps a dead path.
const CTL_QUEUE_LEN: usize = 1024;

/// Disco packets up to this size ride the control queue (real ones are a
/// few hundred bytes); bigger "disco-looking" packets are treated as data so
/// a peer cannot park 64 KiB frames in someone's priority queue.
const DISCO_PRIORITY_MAX: usize = 2048;

/// One live connection as seen by others: its identity and its queues.
struct Conn {
    id: u64,
    key: Key,
    remote: Option<SocketAddr>,
    /// The client acknowledges server pings (from ClientInfo).
    can_ack_pings: bool,
    /// When the reader last saw a frame, in ms since the server's epoch.
    last_rx_ms: AtomicU64,
    /// Relayed data packets, drained after `ctl`.
    data: Queue,
    /// Control frames and disco, drained first.
    ctl: Queue,
}

impl Conn {
    /// Queue a relayed data frame.
    fn enqueue(&self, frame: Vec<u8>, stats: &DerpStats) -> bool {
        self.data.push(frame, stats)
    }

    /// Queue a control frame (or a small disco packet) ahead of data.
    fn enqueue_ctl(&self, frame: Vec<u8>, stats: &DerpStats) -> bool {
        self.ctl.push(frame, stats)
    }

    /// Make the writer stop, which ends the connection. Frames already in
    /// the control queue are still written first.
    fn close(&self) {
        self.ctl.tx.close();
        self.data.tx.close();
    }
}

#[derive(Default)]
struct Registry {
    /// Connections per node key; the last one is the active one ("last
    /// writer wins", as Go resolves reconnect races).
    clients: HashMap<Key, Vec<Arc<Conn>>>,
    /// src → destinations src has sent to, for PeerGone when src leaves.
    sent_to: HashMap<Key, HashSet<Key>>,
    /// dst → sources that sent to it, to prune `sent_to` when dst leaves.
    received_from: HashMap<Key, HashSet<Key>>,
    /// Mesh peers that asked for WatchConns, by connection id.
    watchers: HashMap<u64, Arc<Conn>>,
}

/// The relay: our DERP key pair, policy hooks and the connected clients.
pub struct DerpServer {
    secret: SecretKey,
    public: Key,
    mesh_key: Option<Key>,
    verify: Option<VerifyFn>,
    config: DerpConfig,
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    stats: DerpStats,
    /// Time base for [`Conn::last_rx_ms`].
    epoch: Instant,
}

impl std::fmt::Debug for DerpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DerpServer")
            .field("public", &hex(&self.public))
            .field("mesh", &self.mesh_key.is_some())
            .field("verify", &self.verify.is_some())
            .finish_non_exhaustive()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Constant-time equality for the mesh key, so a remote cannot learn it
/// byte by byte from response timing.
fn ct_eq(a: &Key, b: &Key) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(format!("getrandom: {e}")))?;
    Ok(b)
}

/// What the client told us in ClientInfo.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Protocol version the client speaks.
    pub version: u64,
    /// Client answers server pings.
    pub can_ack_pings: bool,
    /// Mesh key, if the client is a peer relay (all-zero counts as absent).
    pub mesh_key: Option<Key>,
    /// The client is a prober (stats only).
    pub is_prober: bool,
}

impl ClientInfo {
    /// Parse the JSON Go's client marshals. Go's decoder matches field names
    /// case-insensitively, so we do too; unknown fields are ignored.
    pub fn from_json(b: &[u8]) -> Option<ClientInfo> {
        let v: serde_json::Value = serde_json::from_slice(b).ok()?;
        let obj = v.as_object()?;
        let mut ci = ClientInfo::default();
        for (k, v) in obj {
            match k.to_ascii_lowercase().as_str() {
                "version" => ci.version = v.as_u64().unwrap_or(0),
                "canackpings" => ci.can_ack_pings = v.as_bool().unwrap_or(false),
                "isprober" => ci.is_prober = v.as_bool().unwrap_or(false),
                "meshkey" => {
                    ci.mesh_key = v
                        .as_str()
                        .and_then(parse_hex_key)
                        .filter(|k| k.iter().any(|&b| b != 0));
                }
                _ => {}
            }
        }
        Some(ci)
    }
}

fn parse_hex_key(s: &str) -> Option<Key> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        k[i] = u8::try_from(d(pair[0])? * 16 + d(pair[1])?).ok()?;
    }
    Some(k)
}

impl DerpServer {
    /// A relay with the given X25519 private key (keep it separate from the
    /// Noise machine key; the caller generates and persists it).
    pub fn new(private_key: [u8; 32]) -> DerpServer {
        let secret = SecretKey::from_bytes(private_key);
        let public = secret.public_key().to_bytes();
        DerpServer {
            secret,
            public,
            mesh_key: None,
            verify: None,
            config: DerpConfig::default(),
            registry: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            stats: DerpStats::default(),
            epoch: Instant::now(),
        }
    }

    /// A fresh random private key, for callers that persist it themselves.
    pub fn generate_private_key() -> io::Result<[u8; 32]> {
        random_bytes()
    }

    /// Admit only node keys for which `verify` returns true. Mesh peers
    /// (holders of the mesh key) bypass it.
    pub fn with_verify(mut self, verify: VerifyFn) -> Self {
        self.verify = Some(verify);
        self
    }

    /// Enable mesh features (WatchConns, ClosePeer, ForwardPacket) for
    /// clients presenting this key.
    pub fn with_mesh_key(mut self, key: Key) -> Self {
        self.mesh_key = Some(key);
        self
    }

    /// Override tunables.
    pub fn with_config(mut self, config: DerpConfig) -> Self {
        self.config = config;
        self
    }

    /// Our DERP public key (for the DERP map / `Derp-Public-Key` header).
    pub fn public_key(&self) -> Key {
        self.public
    }

    /// Counters.
    pub fn stats(&self) -> &DerpStats {
        &self.stats
    }

    /// Whether `key` has at least one live connection.
    pub fn is_connected(&self, key: &Key) -> bool {
        self.registry().clients.contains_key(key)
    }

    /// Node keys currently connected.
    pub fn connected_keys(&self) -> Vec<Key> {
        self.registry().clients.keys().copied().collect()
    }

    /// Tell every client the server is restarting (they reconnect after
    /// `reconnect_in`, trying for `try_for`), flush that to them, close all
    /// connections and refuse new ones.
    pub fn shutdown(&self, reconnect_in: Duration, try_for: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let frame = Repr::Restarting {
            reconnect_in_ms: u32::try_from(reconnect_in.as_millis()).unwrap_or(u32::MAX),
            try_for_ms: u32::try_from(try_for.as_millis()).unwrap_or(u32::MAX),
        }
        .to_vec();
        let reg = self.registry();
        for conn in reg.clients.values().flatten() {
            conn.enqueue_ctl(frame.clone(), &self.stats);
            // Closing the queue lets the writer drain it (the Restarting
            // frame included) and then end the connection.
            conn.close();
        }
    }

    /// Disconnect every connection of `key` (e.g. the node was deleted or
    /// rotated its key).
    pub fn close_client(&self, key: &Key) {
        if let Some(conns) = self.registry().clients.get(key) {
            conns.iter().for_each(|c| c.close());
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves plain maps behind, still
        // consistent enough to relay with; don't turn one bug into an outage.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keepalive interval plus jitter (up to 5 s, or a tenth of the
    /// interval if that is less) so clients connected together don't tick
    /// together.
    fn keepalive_delay(&self) -> Duration {
        let max_jitter = (self.config.keepalive.as_millis() / 10).clamp(1, 5000) as u64;
        let r = random_bytes::<2>().map_or(0, u16::from_be_bytes);
        self.config.keepalive + Duration::from_millis(u64::from(r) % max_jitter)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn register(&self, conn: &Arc<Conn>) {
        let mut reg = self.registry();
        let present = Repr::PeerPresent {
            key: conn.key,
            endpoint: conn.remote,
            flags: 0,
        }
        .to_vec();
        for w in reg.watchers.values() {
            w.enqueue_ctl(present.clone(), &self.stats);
        }
        reg.clients.entry(conn.key).or_default().push(conn.clone());
    }

    fn unregister(&self, conn: &Arc<Conn>) {
        let mut guard = self.registry();
        let reg = &mut *guard;
        reg.watchers.remove(&conn.id);
        let Some(set) = reg.clients.get_mut(&conn.key) else {
            return;
        };
        set.retain(|c| c.id != conn.id);
        if !set.is_empty() {
            // Another connection for this key lives on: nobody is told.
            return;
        }
        reg.clients.remove(&conn.key);
        let gone = Repr::PeerGone {
            key: conn.key,
            reason: PeerGoneReason::Disconnected,
        }
        .to_vec();
        if let Some(dsts) = reg.sent_to.remove(&conn.key) {
            for dst in dsts {
                if let Some(r) = reg.received_from.get_mut(&dst) {
                    r.remove(&conn.key);
                }
                if let Some(c) = reg.clients.get(&dst).and_then(|s| s.last()) {
                    c.enqueue_ctl(gone.clone(), &self.stats);
                }
            }
        }
        if let Some(srcs) = reg.received_from.remove(&conn.key) {
            for src in srcs {
                if let Some(s) = reg.sent_to.get_mut(&src) {
                    s.remove(&conn.key);
                }
            }
        }
        for w in reg.watchers.values() {
            w.enqueue_ctl(gone.clone(), &self.stats);
        }
    }

    /// Deliver `packet` from `src` to `dst`'s active connection. Returns
    /// false if `dst` is not connected here.
    fn forward(&self, from: &Conn, src: Key, dst: Key, packet: &[u8]) -> bool {
        let frame = Repr::RecvPacket { src, packet }.to_vec();
        let mut guard = self.registry();
        let reg = &mut *guard;
        let Some(target) = reg.clients.get(&dst).and_then(|s| s.last()).cloned() else {
            self.stats
                .packets_dropped_unknown_dst
                .fetch_add(1, Ordering::Relaxed);
            return false;
        };
        // Last writer is active: if the sender has duplicate connections,
        // the one that just spoke becomes the one we deliver to.
        if let Some(mine) = reg.clients.get_mut(&from.key) {
            if mine.len() > 1 && mine.last().map(|c| c.id) != Some(from.id) {
                if let Some(i) = mine.iter().position(|c| c.id == from.id) {
                    let me = mine.remove(i);
                    mine.push(me);
                }
            }
        }
        if reg.sent_to.entry(src).or_default().insert(dst) {
            reg.received_from.entry(dst).or_default().insert(src);
        }
        drop(guard);
        if packet.len() <= DISCO_PRIORITY_MAX && looks_like_disco(packet) {
            target.enqueue_ctl(frame, &self.stats);
        } else {
            target.enqueue(frame, &self.stats);
        }
        self.stats.packets_forwarded.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// Run the DERP protocol on an upgraded stream (the front door has already
/// written `101 Switching Protocols`). Returns when the client leaves, is
/// refused, is too slow, or breaks the protocol.
pub async fn serve_derp_conn<S>(stream: S, server: Arc<DerpServer>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_derp_conn_from(stream, server, None).await
}

/// [`serve_derp_conn`] with the client's address, which mesh watchers
/// receive in PeerPresent.
pub async fn serve_derp_conn_from<S>(
    stream: S,
    server: Arc<DerpServer>,
    remote: Option<SocketAddr>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_derp_conn_admitted(stream, server, remote, || {}).await
}

/// [`serve_derp_conn_from`] that calls `admitted` once the client's key is
/// admitted (the front door gives back the connection's charge as
/// unidentified then, `http::admission`).
pub async fn serve_derp_conn_admitted<S>(
    stream: S,
    server: Arc<DerpServer>,
    remote: Option<SocketAddr>,
    admitted: impl FnOnce(),
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (r, mut w) = futures_lite::io::split(stream);
    // Two small reads per frame (header, payload) would be two syscalls;
    // a small buffer makes them one for the usual sub-1.5 KB WireGuard packet.
    let mut r = futures_lite::io::BufReader::with_capacity(READ_BUFFER, r);
    let cfg = server.config.clone();

    if server.shutting_down.load(Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "DERP server shutting down",
        ));
    }

    // 1. ServerKey.
    let hello = Repr::ServerKey { key: server.public }.to_vec();
    with_timeout(cfg.write_timeout, write_flush(&mut w, &hello)).await?;

    // 2. ClientInfo, within the handshake deadline and its own small size
    // bound, checked before anything is allocated for the payload.
    let mut buf = Vec::new();
    with_timeout(cfg.handshake_timeout, read_client_info(&mut r, &mut buf)).await?;
    let Ok((Repr::ClientInfo { key, nonce, sealed }, _)) = Repr::parse_bytes(&buf) else {
        return Err(proto("bad ClientInfo frame"));
    };
    let boxed = SalsaBox::new(&PublicKey::from_bytes(key), &server.secret);
    let json = boxed
        .decrypt(&nonce.into(), sealed)
        .map_err(|_| proto("ClientInfo box does not open"))?;
    let info = ClientInfo::from_json(&json).ok_or_else(|| proto("ClientInfo JSON"))?;
    let is_mesh = match (&info.mesh_key, &server.mesh_key) {
        (Some(theirs), Some(ours)) => ct_eq(theirs, ours),
        _ => false,
    };

    // 3. Admission.
    if !is_mesh {
        if let Some(verify) = &server.verify {
            if !verify(&key) {
                server.stats.clients_refused.fetch_add(1, Ordering::Relaxed);
                // Anyone can make us refuse them: one line per 10 s at most.
                static REFUSED: RateLimited = RateLimited::new(Duration::from_secs(10));
                if let Some(n) = REFUSED.allow() {
                    log::info!(
                        "derp: refusing unknown node key {}{}",
                        hex(&key),
                        crate::ratelimit::held_back(n)
                    );
                }
                // Tell the client why before closing; it shows up in its
                // health state rather than as an unexplained EOF.
                let msg = Repr::Health {
                    problem: "node key not authorized by this DERP server",
                }
                .to_vec();
                let _ = with_timeout(cfg.write_timeout, write_flush(&mut w, &msg)).await;
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "DERP client not authorized",
                ));
            }
        }
    }

    admitted();

    // 4. Register, then ServerInfo. Frames other clients queue for us in
    // between wait in the queue until the writer starts after ServerInfo.
    let conn = Arc::new(Conn {
        id: server.next_id.fetch_add(1, Ordering::Relaxed),
        key,
        remote,
        can_ack_pings: info.can_ack_pings,
        last_rx_ms: AtomicU64::new(server.now_ms()),
        data: Queue::new(cfg.queue_len),
        ctl: Queue::new(CTL_QUEUE_LEN.max(cfg.queue_len)),
    });
    server.register(&conn);
    if server.shutting_down.load(Ordering::SeqCst) {
        // Raced with shutdown(): it may have missed us.
        conn.close();
    }
    let result = async {
        let server_info = format!("{{\"version\":{PROTOCOL_VERSION}}}");
        let nonce: [u8; NONCE_LEN] = random_bytes()?;
        let sealed = boxed
            .encrypt(&nonce.into(), server_info.as_bytes())
            .map_err(|_| io::Error::other("sealing ServerInfo"))?;
        let frame = Repr::ServerInfo {
            nonce,
            sealed: &sealed,
        }
        .to_vec();
        with_timeout(cfg.write_timeout, write_flush(&mut w, &frame)).await?;

        // 5. Steady state.
        future::or(
            reader(&mut r, &server, &conn, is_mesh, buf),
            writer(&mut w, &server, &conn),
        )
        .await
    }
    .await;
    server.unregister(&conn);
    conn.close();
    result
}

fn proto(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

async fn with_timeout<T>(
    d: Duration,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    future::or(f, async {
        Timer::after(d).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, "DERP I/O deadline"))
    })
    .await
}

async fn write_flush<W: AsyncWrite + Unpin>(w: &mut W, b: &[u8]) -> io::Result<()> {
    w.write_all(b).await?;
    w.flush().await
}

/// Largest first frame accepted: a ClientInfo is a key, a nonce and a
/// sealed JSON of ~100 bytes (~200 bytes from real clients). The general
/// bound for the type (256 KiB) would let every unauthenticated socket pin
/// that much for the whole handshake deadline.
pub const MAX_FIRST_FRAME: usize = 4 << 10;

/// Reads the first frame into `buf`: it must be ClientInfo and at most
/// [`MAX_FIRST_FRAME`] long, both checked from the header alone.
async fn read_client_info<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head).await?;
    let h = Header::parse(&head).map_err(|_| proto("DERP frame too long"))?;
    if h.frame_type != FrameType::ClientInfo {
        return Err(proto("first frame is not ClientInfo"));
    }
    if h.payload_len > MAX_FIRST_FRAME {
        return Err(proto("ClientInfo frame too long"));
    }
    buf.clear();
    buf.extend_from_slice(&head);
    buf.resize(HEADER_LEN + h.payload_len, 0);
    r.read_exact(&mut buf[HEADER_LEN..]).await
}

/// Read one frame into `buf` (header included). Payloads over the type's
/// bound are refused before being read; unknown types are skipped without
/// buffering and reported as such with an empty `buf`.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<FrameType> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head).await?;
    let h = Header::parse(&head).map_err(|_| proto("DERP frame too long"))?;
    buf.clear();
    if let FrameType::Unknown(_) = h.frame_type {
        let mut left = h.payload_len;
        let mut sink = [0u8; 1024];
        while left > 0 {
            let n = left.min(sink.len());
            r.read_exact(&mut sink[..n]).await?;
            left -= n;
        }
        return Ok(h.frame_type);
    }
    buf.extend_from_slice(&head);
    buf.resize(HEADER_LEN + h.payload_len, 0);
    r.read_exact(&mut buf[HEADER_LEN..]).await?;
    Ok(h.frame_type)
}

/// Read buffer per connection (Go's derphttp client uses 4 KiB too).
const READ_BUFFER: usize = 4 << 10;

/// One 64 KiB packet must not pin 64 KiB per connection for ever: once a
/// buffer has grown past this and is empty again, give the memory back.
/// Typical frames are ~1.5 KB, so this rarely reallocates.
const KEEP_BUFFER: usize = 16 << 10;

/// Called with the buffer still holding what was just handled: only a
/// *small* use of a *large* buffer shrinks it, so a steady flow of big
/// frames or batches keeps its allocation and an idle connection does not.
fn shrink_if_idle_large(b: &mut Vec<u8>) {
    if b.capacity() > KEEP_BUFFER && b.len() <= READ_BUFFER {
        b.clear();
        b.shrink_to(READ_BUFFER);
    }
}

/// Frames a reader handles before letting other tasks run.
const YIELD_EVERY: u32 = 16;

/// Disco NotHere replies allowed per second per connection; a peer spraying
/// disco at absent nodes must not turn us into an amplifier.
const NOT_HERE_PER_SEC: u32 = 5;

async fn reader<R: AsyncRead + Unpin>(
    r: &mut R,
    server: &DerpServer,
    conn: &Arc<Conn>,
    is_mesh: bool,
    mut buf: Vec<u8>,
) -> io::Result<()> {
    let mut not_here_window = Instant::now();
    let mut not_here_count = 0u32;
    let mut since_yield = 0u32;
    loop {
        // A fast sender's frames are often all buffered already, so this
        // loop would never return Pending and would hog its executor thread
        // (starving the receivers' writers, whose queues then overflow).
        // Cooperative tasks must take turns.
        since_yield += 1;
        if since_yield >= YIELD_EVERY {
            since_yield = 0;
            future::yield_now().await;
        }
        shrink_if_idle_large(&mut buf);
        let ft = read_frame(r, &mut buf).await?;
        conn.last_rx_ms.store(server.now_ms(), Ordering::Relaxed);
        if matches!(ft, FrameType::Unknown(_)) {
            continue;
        }
        let (repr, _) = Repr::parse_bytes(&buf).map_err(|_| proto("malformed DERP frame"))?;
        match repr {
            Repr::SendPacket { dst, packet } => {
                let delivered = server.forward(conn, conn.key, dst, packet);
                if !delivered && looks_like_disco(packet) {
                    let now = Instant::now();
                    if now.duration_since(not_here_window) >= Duration::from_secs(1) {
                        not_here_window = now;
                        not_here_count = 0;
                    }
                    if not_here_count < NOT_HERE_PER_SEC {
                        not_here_count += 1;
                        let gone = Repr::PeerGone {
                            key: dst,
                            reason: PeerGoneReason::NotHere,
                        };
                        conn.enqueue_ctl(gone.to_vec(), &server.stats);
                    }
                }
            }
            Repr::ForwardPacket { src, dst, packet } => {
                if !is_mesh {
                    return Err(proto("ForwardPacket without mesh key"));
                }
                server.forward(conn, src, dst, packet);
            }
            Repr::Ping { data } => {
                conn.enqueue_ctl(Repr::Pong { data }.to_vec(), &server.stats);
            }
            Repr::WatchConns => {
                if !is_mesh {
                    return Err(proto("WatchConns without mesh key"));
                }
                let mut reg = server.registry();
                for set in reg.clients.values() {
                    if let Some(c) = set.last() {
                        let present = Repr::PeerPresent {
                            key: c.key,
                            endpoint: c.remote,
                            flags: 0,
                        };
                        conn.enqueue_ctl(present.to_vec(), &server.stats);
                    }
                }
                reg.watchers.insert(conn.id, conn.clone());
            }
            Repr::ClosePeer { key } => {
                if !is_mesh {
                    return Err(proto("ClosePeer without mesh key"));
                }
                server.close_client(&key);
            }
            // NotePreferred is bookkeeping only; Pong answers a ping we
            // never send; the rest are server→client frames a client has no
            // business sending. All are ignored like unknown frames.
            _ => {}
        }
    }
}

/// Largest batch of queued frames coalesced into one write.
const WRITE_BATCH: usize = 64 << 10;

async fn writer<W: AsyncWrite + Unpin>(
    w: &mut W,
    server: &DerpServer,
    conn: &Conn,
) -> io::Result<()> {
    let timeout = server.config.write_timeout;
    let mut out: Vec<u8> = Vec::new();
    // One timer for the connection's life, re-armed after each keepalive;
    // creating one per dequeued packet would cost a reactor round trip each.
    let mut keepalive = Timer::after(server.keepalive_delay());
    loop {
        shrink_if_idle_large(&mut out);
        out.clear();
        // Control first (`or` polls its first future first), then data,
        // then the keepalive timer.
        let next = future::or(
            async { conn.ctl.rx.recv().await.map(Some) },
            future::or(async { conn.data.rx.recv().await.map(Some) }, async {
                (&mut keepalive).await;
                Ok(None)
            }),
        )
        .await;
        match next {
            // Queue closed: ClosePeer, close_client, or the reader side
            // finished unregistering.
            Err(_) => return Ok(()),
            Ok(None) => {
                if conn.can_ack_pings {
                    let idle = server
                        .now_ms()
                        .saturating_sub(conn.last_rx_ms.load(Ordering::Relaxed));
                    if u128::from(idle) >= server.config.idle_timeout.as_millis() {
                        server
                            .stats
                            .idle_clients_dropped
                            .fetch_add(1, Ordering::Relaxed);
                        log::info!("derp: dropping silent client {}", hex(&conn.key));
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "DERP client stopped answering pings",
                        ));
                    }
                    // A ping keeps the client's read deadline fresh just as
                    // a keepalive does, and its Pong proves it is alive.
                    let data: [u8; 8] = random_bytes()?;
                    Repr::Ping { data }.emit_to_vec(&mut out);
                } else {
                    Repr::KeepAlive.emit_to_vec(&mut out);
                }
                keepalive.set_after(server.keepalive_delay());
            }
            Ok(Some(frame)) => {
                out.extend_from_slice(&frame);
                while out.len() < WRITE_BATCH {
                    match conn.ctl.rx.try_recv().or_else(|_| conn.data.rx.try_recv()) {
                        Ok(f) => out.extend_from_slice(&f),
                        Err(_) => break,
                    }
                }
            }
        }
        if let Err(e) = with_timeout(timeout, write_flush(w, &out)).await {
            if e.kind() == io::ErrorKind::TimedOut {
                server
                    .stats
                    .slow_clients_dropped
                    .fetch_add(1, Ordering::Relaxed);
                log::info!("derp: dropping slow client {}", hex(&conn.key));
            }
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_info_json_case_insensitive() {
        let mk = "ab".repeat(32);
        let j =
            format!(r#"{{"version":2,"CanAckPings":true,"meshkey":"{mk}","IsProber":true,"x":1}}"#);
        let ci = ClientInfo::from_json(j.as_bytes()).unwrap();
        assert_eq!(
            ci,
            ClientInfo {
                version: 2,
                can_ack_pings: true,
                mesh_key: Some([0xab; 32]),
                is_prober: true
            }
        );
        let zero = format!(r#"{{"Version":2,"MeshKey":"{}"}}"#, "0".repeat(64));
        let ci = ClientInfo::from_json(zero.as_bytes()).unwrap();
        assert_eq!(ci.version, 2);
        assert_eq!(ci.mesh_key, None);
        assert!(ClientInfo::from_json(b"[1]").is_none());
        assert!(ClientInfo::from_json(b"{").is_none());
        assert_eq!(parse_hex_key("zz"), None);
        assert_eq!(parse_hex_key(&"g".repeat(64)), None);
    }

    #[test]
    fn public_key_derivation_matches_x25519() {
        let sk = [7u8; 32];
        let s = DerpServer::new(sk);
        let xs = x25519_dalek::StaticSecret::from(sk);
        assert_eq!(
            s.public_key(),
            x25519_dalek::PublicKey::from(&xs).to_bytes()
        );
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(&[1; 32], &[1; 32]));
        let mut b = [1; 32];
        b[31] = 2;
        assert!(!ct_eq(&[1; 32], &b));
    }
}
