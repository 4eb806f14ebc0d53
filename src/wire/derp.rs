//! DERP frames: the relay protocol Tailscale clients speak after `GET /derp`
//! is upgraded (see `shared/protocol/derp.md` §3).
//!
//! Every frame is a 1-byte type, a 4-byte big-endian payload length and the
//! payload. As in smoltcp there are two layers:
//! * [`Frame`], a view over a borrowed buffer with checked accessors, plus the
//!   5-byte [`Header`] alone so a stream reader can bound a frame *before*
//!   reading (or allocating for) its payload;
//! * [`Repr`], the parsed meaning of each frame type, with [`Repr::parse`] and
//!   [`Repr::emit`].
//!
//! NaCl boxes (ClientInfo, ServerInfo) are carried as nonce + sealed bytes;
//! opening and sealing them is the relay's business, not the codec's.
//!
//! Parsing follows the Go client/server in tolerating trailing bytes after
//! the fields it knows (the protocol grows that way: PeerPresent gained an
//! endpoint and flags, PeerGone a reason) while rejecting anything shorter
//! than the mandatory fields or longer than the per-type bound.

use core::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Frame header: type byte + big-endian u32 payload length.
pub const HEADER_LEN: usize = 5;
/// Curve25519 public key length (node keys, the server key).
pub const KEY_LEN: usize = 32;
/// NaCl box nonce length.
pub const NONCE_LEN: usize = 24;
/// NaCl box overhead (Poly1305 tag) inside the sealed bytes.
pub const BOX_TAG_LEN: usize = 16;
/// `DERP🔑`, the first bytes of the ServerKey frame.
pub const MAGIC: [u8; 8] = [0x44, 0x45, 0x52, 0x50, 0xF0, 0x9F, 0x94, 0x91];
/// Protocol version we speak (v2: RecvPacket carries the source key).
pub const PROTOCOL_VERSION: u32 = 2;
/// Largest relayed packet (the data magicsock sees, without DERP framing).
pub const MAX_PACKET_SIZE: usize = 64 << 10;
/// Largest ClientInfo payload the Go server accepts.
pub const MAX_CLIENT_INFO_LEN: usize = 256 << 10;
/// Largest ping payload; only the first 8 bytes mean anything, the rest is
/// room the Go server leaves for future extensions.
pub const MAX_PING_LEN: usize = 1000;
/// Largest frame payload of any type; clients refuse anything bigger.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Prefix of a disco message (`TS💬`); the relay answers undeliverable disco
/// packets with PeerGone(NotHere) so the sender stops trying this path.
pub const DISCO_MAGIC: [u8; 6] = [0x54, 0x53, 0xF0, 0x9F, 0x92, 0xAC];
/// Shortest disco message: magic + sender disco key + nonce.
pub const DISCO_MIN_LEN: usize = DISCO_MAGIC.len() + KEY_LEN + NONCE_LEN;

/// A Curve25519 public key as raw bytes (node key or server key).
pub type Key = [u8; KEY_LEN];

/// Why a frame could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Fewer bytes than the header or the type's mandatory fields need.
    Truncated,
    /// Payload longer than the bound for its frame type.
    TooLong,
    /// ServerKey without the `DERP🔑` magic.
    BadMagic,
    /// A field has an impossible value (e.g. Health text not UTF-8).
    Malformed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Truncated => "DERP frame truncated",
            Error::TooLong => "DERP frame too long",
            Error::BadMagic => "DERP server key frame without magic",
            Error::Malformed => "malformed DERP frame",
        })
    }
}

impl std::error::Error for Error {}

/// Result alias for this module.
pub type Result<T> = core::result::Result<T, Error>;

/// Frame types (derp.md §3.4). Unknown types are kept so they can be skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// 0x01, S→C: magic + server public key.
    ServerKey,
    /// 0x02, C→S: client key + sealed JSON.
    ClientInfo,
    /// 0x03, S→C: sealed JSON.
    ServerInfo,
    /// 0x04, C→S: destination key + packet.
    SendPacket,
    /// 0x05, S→C: source key + packet.
    RecvPacket,
    /// 0x06, S→C: empty.
    KeepAlive,
    /// 0x07, C→S: 1 byte, whether this is the client's home region.
    NotePreferred,
    /// 0x08, S→C: key + optional reason.
    PeerGone,
    /// 0x09, S→watcher: key + optional endpoint + optional flags.
    PeerPresent,
    /// 0x0a, mesh→S: source key + destination key + packet.
    ForwardPacket,
    /// 0x10, mesh C→S: empty.
    WatchConns,
    /// 0x11, mesh C→S: key.
    ClosePeer,
    /// 0x12: 8 bytes.
    Ping,
    /// 0x13: the 8 bytes of the ping.
    Pong,
    /// 0x14, S→C: problem text, empty when healthy again.
    Health,
    /// 0x15, S→C: two BE u32 millisecond durations.
    Restarting,
    /// Anything else; must be skipped by the receiver.
    Unknown(u8),
}

impl From<u8> for FrameType {
    fn from(b: u8) -> Self {
        match b {
            0x01 => FrameType::ServerKey,
            0x02 => FrameType::ClientInfo,
            0x03 => FrameType::ServerInfo,
            0x04 => FrameType::SendPacket,
            0x05 => FrameType::RecvPacket,
            0x06 => FrameType::KeepAlive,
            0x07 => FrameType::NotePreferred,
            0x08 => FrameType::PeerGone,
            0x09 => FrameType::PeerPresent,
            0x0a => FrameType::ForwardPacket,
            0x10 => FrameType::WatchConns,
            0x11 => FrameType::ClosePeer,
            0x12 => FrameType::Ping,
            0x13 => FrameType::Pong,
            0x14 => FrameType::Health,
            0x15 => FrameType::Restarting,
            other => FrameType::Unknown(other),
        }
    }
}

impl From<FrameType> for u8 {
    fn from(t: FrameType) -> u8 {
        match t {
            FrameType::ServerKey => 0x01,
            FrameType::ClientInfo => 0x02,
            FrameType::ServerInfo => 0x03,
            FrameType::SendPacket => 0x04,
            FrameType::RecvPacket => 0x05,
            FrameType::KeepAlive => 0x06,
            FrameType::NotePreferred => 0x07,
            FrameType::PeerGone => 0x08,
            FrameType::PeerPresent => 0x09,
            FrameType::ForwardPacket => 0x0a,
            FrameType::WatchConns => 0x10,
            FrameType::ClosePeer => 0x11,
            FrameType::Ping => 0x12,
            FrameType::Pong => 0x13,
            FrameType::Health => 0x14,
            FrameType::Restarting => 0x15,
            FrameType::Unknown(b) => b,
        }
    }
}

impl FrameType {
    /// Largest payload accepted for this type. A reader checks this against
    /// the header before reading the payload, so a peer cannot make us
    /// buffer more than this per frame.
    pub fn max_payload_len(self) -> usize {
        match self {
            FrameType::SendPacket | FrameType::RecvPacket => KEY_LEN + MAX_PACKET_SIZE,
            FrameType::ForwardPacket => 2 * KEY_LEN + MAX_PACKET_SIZE,
            FrameType::ClientInfo => MAX_CLIENT_INFO_LEN,
            FrameType::Ping | FrameType::Pong => MAX_PING_LEN,
            _ => MAX_FRAME_LEN,
        }
    }
}

/// The 5-byte frame header on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame type.
    pub frame_type: FrameType,
    /// Payload length in bytes (not counting the header).
    pub payload_len: usize,
}

impl Header {
    /// Parse a header from the first [`HEADER_LEN`] bytes of `b`, rejecting
    /// lengths over the type's [`FrameType::max_payload_len`].
    pub fn parse(b: &[u8]) -> Result<Header> {
        let h = b.get(..HEADER_LEN).ok_or(Error::Truncated)?;
        let frame_type = FrameType::from(h[0]);
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        let payload_len = usize::try_from(len).map_err(|_| Error::TooLong)?;
        if payload_len > frame_type.max_payload_len() {
            return Err(Error::TooLong);
        }
        Ok(Header {
            frame_type,
            payload_len,
        })
    }

    /// Write the header into the first [`HEADER_LEN`] bytes of `b`.
    ///
    /// # Panics
    /// If `b` is shorter than [`HEADER_LEN`] or the length exceeds `u32`.
    pub fn emit(&self, b: &mut [u8]) {
        b[0] = self.frame_type.into();
        let len = u32::try_from(self.payload_len).expect("DERP payload length fits u32");
        b[1..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    }
}

/// A view of one whole frame (header + payload) in a buffer.
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wrap a buffer without checks; accessors may panic on short input.
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wrap a buffer after [`Frame::check_len`].
    pub fn new_checked(buffer: T) -> Result<Frame<T>> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    /// The header is present, its length is within the type's bound, and the
    /// buffer holds the whole payload (extra bytes after it are the next
    /// frame's and are ignored).
    pub fn check_len(&self) -> Result<()> {
        let h = Header::parse(self.buffer.as_ref())?;
        if self.buffer.as_ref().len() < HEADER_LEN + h.payload_len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Consume the view and return the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The frame type.
    pub fn frame_type(&self) -> FrameType {
        FrameType::from(self.buffer.as_ref()[0])
    }

    /// The payload length from the header.
    pub fn payload_len(&self) -> usize {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize
    }

    /// Header plus payload length: how many bytes of the buffer this frame uses.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Set the frame type.
    pub fn set_frame_type(&mut self, t: FrameType) {
        self.buffer.as_mut()[0] = t.into();
    }

    /// Set the payload length.
    pub fn set_payload_len(&mut self, len: u32) {
        self.buffer.as_mut()[1..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    }

    /// The payload bytes, mutable (length from the header).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// Why a peer is gone (PeerGone's optional trailing byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerGoneReason {
    /// 0x00: the peer was connected and disconnected (or the byte is absent).
    Disconnected,
    /// 0x01: the server has no connection for that key; stop sending here.
    NotHere,
    /// A reason this implementation does not know.
    Other(u8),
}

impl From<u8> for PeerGoneReason {
    fn from(b: u8) -> Self {
        match b {
            0 => PeerGoneReason::Disconnected,
            1 => PeerGoneReason::NotHere,
            o => PeerGoneReason::Other(o),
        }
    }
}

impl From<PeerGoneReason> for u8 {
    fn from(r: PeerGoneReason) -> u8 {
        match r {
            PeerGoneReason::Disconnected => 0,
            PeerGoneReason::NotHere => 1,
            PeerGoneReason::Other(o) => o,
        }
    }
}

/// The meaning of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr<'a> {
    /// The server's public key, sent first.
    ServerKey {
        /// Server public key.
        key: Key,
    },
    /// The client's node key and its sealed JSON info.
    ClientInfo {
        /// Client node public key (the box sender).
        key: Key,
        /// Box nonce.
        nonce: [u8; NONCE_LEN],
        /// Tag + ciphertext.
        sealed: &'a [u8],
    },
    /// The server's sealed JSON info.
    ServerInfo {
        /// Box nonce.
        nonce: [u8; NONCE_LEN],
        /// Tag + ciphertext.
        sealed: &'a [u8],
    },
    /// A packet a client asks us to relay.
    SendPacket {
        /// Destination node key.
        dst: Key,
        /// Packet bytes (at most [`MAX_PACKET_SIZE`]).
        packet: &'a [u8],
    },
    /// A relayed packet delivered to its destination.
    RecvPacket {
        /// Source node key.
        src: Key,
        /// Packet bytes.
        packet: &'a [u8],
    },
    /// Liveness; carries nothing.
    KeepAlive,
    /// Whether this server is the client's home region.
    NotePreferred {
        /// True for home.
        preferred: bool,
    },
    /// A peer we relayed for is gone.
    PeerGone {
        /// The peer's key.
        key: Key,
        /// Why (absent on the wire means [`PeerGoneReason::Disconnected`]).
        reason: PeerGoneReason,
    },
    /// A peer connected (sent to mesh watchers).
    PeerPresent {
        /// The peer's key.
        key: Key,
        /// Its address as the server saw it, if known.
        endpoint: Option<SocketAddr>,
        /// Flags byte (only on the wire together with `endpoint`).
        flags: u8,
    },
    /// A packet relayed by a mesh peer on behalf of `src`.
    ForwardPacket {
        /// Original sender.
        src: Key,
        /// Destination.
        dst: Key,
        /// Packet bytes.
        packet: &'a [u8],
    },
    /// Mesh: subscribe to PeerPresent/PeerGone for every connection.
    WatchConns,
    /// Mesh: close that peer's connection.
    ClosePeer {
        /// The peer's key.
        key: Key,
    },
    /// Ping; extra bytes after the first 8 are ignored.
    Ping {
        /// Opaque data to echo.
        data: [u8; 8],
    },
    /// Answer to a ping.
    Pong {
        /// The ping's data.
        data: [u8; 8],
    },
    /// Connection health problem text; empty means healthy.
    Health {
        /// Problem description.
        problem: &'a str,
    },
    /// The server is restarting.
    Restarting {
        /// Milliseconds before reconnecting.
        reconnect_in_ms: u32,
        /// Milliseconds to keep trying.
        try_for_ms: u32,
    },
    /// A frame type we don't know; skip it.
    Unknown {
        /// Raw type byte.
        frame_type: u8,
        /// Payload.
        payload: &'a [u8],
    },
}

fn key_at(b: &[u8], at: usize) -> Result<Key> {
    let s = b.get(at..at + KEY_LEN).ok_or(Error::Truncated)?;
    let mut k = [0u8; KEY_LEN];
    k.copy_from_slice(s);
    Ok(k)
}

fn array8(b: &[u8]) -> Result<[u8; 8]> {
    let s = b.get(..8).ok_or(Error::Truncated)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(a)
}

fn split_box(b: &[u8]) -> Result<([u8; NONCE_LEN], &[u8])> {
    if b.len() < NONCE_LEN + BOX_TAG_LEN {
        return Err(Error::Truncated);
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&b[..NONCE_LEN]);
    Ok((nonce, &b[NONCE_LEN..]))
}

fn packet_checked(b: &[u8]) -> Result<&[u8]> {
    if b.len() > MAX_PACKET_SIZE {
        return Err(Error::TooLong);
    }
    Ok(b)
}

impl<'a> Repr<'a> {
    /// Parse a frame whose length was checked (by [`Frame::new_checked`]).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &Frame<&'a T>) -> Result<Repr<'a>> {
        frame.check_len()?;
        let buf: &'a [u8] = frame.buffer.as_ref();
        let p = &buf[HEADER_LEN..HEADER_LEN + frame.payload_len()];
        Ok(match frame.frame_type() {
            FrameType::ServerKey => {
                if p.len() < MAGIC.len() + KEY_LEN {
                    return Err(Error::Truncated);
                }
                if p[..MAGIC.len()] != MAGIC {
                    return Err(Error::BadMagic);
                }
                Repr::ServerKey {
                    key: key_at(p, MAGIC.len())?,
                }
            }
            FrameType::ClientInfo => {
                let key = key_at(p, 0)?;
                let (nonce, sealed) = split_box(&p[KEY_LEN..])?;
                Repr::ClientInfo { key, nonce, sealed }
            }
            FrameType::ServerInfo => {
                let (nonce, sealed) = split_box(p)?;
                Repr::ServerInfo { nonce, sealed }
            }
            FrameType::SendPacket => Repr::SendPacket {
                dst: key_at(p, 0)?,
                packet: packet_checked(&p[KEY_LEN..])?,
            },
            FrameType::RecvPacket => Repr::RecvPacket {
                src: key_at(p, 0)?,
                packet: packet_checked(&p[KEY_LEN..])?,
            },
            FrameType::ForwardPacket => Repr::ForwardPacket {
                src: key_at(p, 0)?,
                dst: key_at(p, KEY_LEN)?,
                packet: packet_checked(&p[2 * KEY_LEN..])?,
            },
            FrameType::KeepAlive => Repr::KeepAlive,
            FrameType::WatchConns => Repr::WatchConns,
            FrameType::NotePreferred => Repr::NotePreferred {
                preferred: *p.first().ok_or(Error::Truncated)? != 0,
            },
            FrameType::PeerGone => Repr::PeerGone {
                key: key_at(p, 0)?,
                reason: p
                    .get(KEY_LEN)
                    .map_or(PeerGoneReason::Disconnected, |&b| b.into()),
            },
            FrameType::PeerPresent => {
                let key = key_at(p, 0)?;
                // Older servers sent only the key; the endpoint and then the
                // flags were appended later, each optional.
                let endpoint = p.get(KEY_LEN..KEY_LEN + 18).map(|e| {
                    let mut ip = [0u8; 16];
                    ip.copy_from_slice(&e[..16]);
                    let ip = Ipv6Addr::from(ip);
                    let ip = match ip.to_ipv4_mapped() {
                        Some(v4) => IpAddr::V4(v4),
                        None => IpAddr::V6(ip),
                    };
                    SocketAddr::new(ip, u16::from_be_bytes([e[16], e[17]]))
                });
                let flags = match endpoint {
                    Some(_) => p.get(KEY_LEN + 18).copied().unwrap_or(0),
                    None => 0,
                };
                Repr::PeerPresent {
                    key,
                    endpoint,
                    flags,
                }
            }
            FrameType::ClosePeer => Repr::ClosePeer { key: key_at(p, 0)? },
            FrameType::Ping => Repr::Ping { data: array8(p)? },
            FrameType::Pong => Repr::Pong { data: array8(p)? },
            FrameType::Health => Repr::Health {
                problem: core::str::from_utf8(p).map_err(|_| Error::Malformed)?,
            },
            FrameType::Restarting => {
                let a = array8(p)?;
                Repr::Restarting {
                    reconnect_in_ms: u32::from_be_bytes([a[0], a[1], a[2], a[3]]),
                    try_for_ms: u32::from_be_bytes([a[4], a[5], a[6], a[7]]),
                }
            }
            FrameType::Unknown(t) => Repr::Unknown {
                frame_type: t,
                payload: p,
            },
        })
    }

    /// Parse the first frame in `b`; returns it and the bytes it used.
    pub fn parse_bytes(b: &'a [u8]) -> Result<(Repr<'a>, usize)> {
        let f = Frame::new_checked(b)?;
        let used = f.total_len();
        Ok((Repr::parse(&f)?, used))
    }

    /// The frame type this representation emits.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Repr::ServerKey { .. } => FrameType::ServerKey,
            Repr::ClientInfo { .. } => FrameType::ClientInfo,
            Repr::ServerInfo { .. } => FrameType::ServerInfo,
            Repr::SendPacket { .. } => FrameType::SendPacket,
            Repr::RecvPacket { .. } => FrameType::RecvPacket,
            Repr::KeepAlive => FrameType::KeepAlive,
            Repr::NotePreferred { .. } => FrameType::NotePreferred,
            Repr::PeerGone { .. } => FrameType::PeerGone,
            Repr::PeerPresent { .. } => FrameType::PeerPresent,
            Repr::ForwardPacket { .. } => FrameType::ForwardPacket,
            Repr::WatchConns => FrameType::WatchConns,
            Repr::ClosePeer { .. } => FrameType::ClosePeer,
            Repr::Ping { .. } => FrameType::Ping,
            Repr::Pong { .. } => FrameType::Pong,
            Repr::Health { .. } => FrameType::Health,
            Repr::Restarting { .. } => FrameType::Restarting,
            Repr::Unknown { frame_type, .. } => FrameType::from(*frame_type),
        }
    }

    /// Payload length [`Repr::emit`] writes.
    pub fn payload_len(&self) -> usize {
        match self {
            Repr::ServerKey { .. } => MAGIC.len() + KEY_LEN,
            Repr::ClientInfo { sealed, .. } => KEY_LEN + NONCE_LEN + sealed.len(),
            Repr::ServerInfo { sealed, .. } => NONCE_LEN + sealed.len(),
            Repr::SendPacket { packet, .. } | Repr::RecvPacket { packet, .. } => {
                KEY_LEN + packet.len()
            }
            Repr::ForwardPacket { packet, .. } => 2 * KEY_LEN + packet.len(),
            Repr::KeepAlive | Repr::WatchConns => 0,
            Repr::NotePreferred { .. } => 1,
            Repr::PeerGone { .. } => KEY_LEN + 1,
            Repr::PeerPresent { endpoint, .. } => match endpoint {
                Some(_) => KEY_LEN + 16 + 2 + 1,
                None => KEY_LEN,
            },
            Repr::ClosePeer { .. } => KEY_LEN,
            Repr::Ping { .. } | Repr::Pong { .. } | Repr::Restarting { .. } => 8,
            Repr::Health { problem } => problem.len(),
            Repr::Unknown { payload, .. } => payload.len(),
        }
    }

    /// Header plus payload: the buffer size [`Repr::emit`] needs.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// Write header and payload into `frame`, whose buffer must hold at
    /// least [`Repr::buffer_len`] bytes.
    ///
    /// The caller is responsible for sizes (a packet over
    /// [`MAX_PACKET_SIZE`] would be written but refused by the peer); the
    /// relay only emits what it parsed and bounded itself.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        debug_assert!(self.payload_len() <= self.frame_type().max_payload_len());
        frame.set_frame_type(self.frame_type());
        frame.set_payload_len(self.payload_len() as u32);
        let p = frame.payload_mut();
        match self {
            Repr::ServerKey { key } => {
                p[..8].copy_from_slice(&MAGIC);
                p[8..].copy_from_slice(key);
            }
            Repr::ClientInfo { key, nonce, sealed } => {
                p[..KEY_LEN].copy_from_slice(key);
                p[KEY_LEN..KEY_LEN + NONCE_LEN].copy_from_slice(nonce);
                p[KEY_LEN + NONCE_LEN..].copy_from_slice(sealed);
            }
            Repr::ServerInfo { nonce, sealed } => {
                p[..NONCE_LEN].copy_from_slice(nonce);
                p[NONCE_LEN..].copy_from_slice(sealed);
            }
            Repr::SendPacket { dst: key, packet } | Repr::RecvPacket { src: key, packet } => {
                p[..KEY_LEN].copy_from_slice(key);
                p[KEY_LEN..].copy_from_slice(packet);
            }
            Repr::ForwardPacket { src, dst, packet } => {
                p[..KEY_LEN].copy_from_slice(src);
                p[KEY_LEN..2 * KEY_LEN].copy_from_slice(dst);
                p[2 * KEY_LEN..].copy_from_slice(packet);
            }
            Repr::KeepAlive | Repr::WatchConns => {}
            Repr::NotePreferred { preferred } => p[0] = u8::from(*preferred),
            Repr::PeerGone { key, reason } => {
                p[..KEY_LEN].copy_from_slice(key);
                p[KEY_LEN] = (*reason).into();
            }
            Repr::PeerPresent {
                key,
                endpoint,
                flags,
            } => {
                p[..KEY_LEN].copy_from_slice(key);
                if let Some(ep) = endpoint {
                    let ip = match ep.ip() {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                        IpAddr::V6(v6) => v6,
                    };
                    p[KEY_LEN..KEY_LEN + 16].copy_from_slice(&ip.octets());
                    p[KEY_LEN + 16..KEY_LEN + 18].copy_from_slice(&ep.port().to_be_bytes());
                    p[KEY_LEN + 18] = *flags;
                }
            }
            Repr::ClosePeer { key } => p.copy_from_slice(key),
            Repr::Ping { data } | Repr::Pong { data } => p.copy_from_slice(data),
            Repr::Health { problem } => p.copy_from_slice(problem.as_bytes()),
            Repr::Restarting {
                reconnect_in_ms,
                try_for_ms,
            } => {
                p[..4].copy_from_slice(&reconnect_in_ms.to_be_bytes());
                p[4..].copy_from_slice(&try_for_ms.to_be_bytes());
            }
            Repr::Unknown { payload, .. } => p.copy_from_slice(payload),
        }
    }

    /// Append the encoded frame to `out` (handy for write buffers).
    pub fn emit_to_vec(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.buffer_len(), 0);
        self.emit(&mut Frame::new_unchecked(&mut out[start..]));
    }

    /// Encode into a fresh `Vec`.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.buffer_len());
        self.emit_to_vec(&mut v);
        v
    }
}

/// True if `packet` looks like a disco message, which the relay treats
/// specially when the destination is absent.
pub fn looks_like_disco(packet: &[u8]) -> bool {
    packet.len() >= DISCO_MIN_LEN && packet.starts_with(&DISCO_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: Key = [0x11; 32];
    const K2: Key = [0x22; 32];

    fn roundtrip(r: Repr<'_>) -> Vec<u8> {
        let v = r.to_vec();
        let (back, used) = Repr::parse_bytes(&v).unwrap();
        assert_eq!(back, r);
        assert_eq!(used, v.len());
        v
    }

    #[test]
    fn server_key_vector() {
        let v = roundtrip(Repr::ServerKey { key: K1 });
        let mut want = vec![0x01, 0, 0, 0, 40];
        want.extend_from_slice(b"DERP\xF0\x9F\x94\x91");
        want.extend_from_slice(&K1);
        assert_eq!(v, want);
        assert_eq!(&MAGIC, "DERP🔑".as_bytes());
    }

    #[test]
    fn server_key_extra_bytes_and_bad_magic() {
        let mut v = Repr::ServerKey { key: K1 }.to_vec();
        v.extend_from_slice(b"future");
        v[4] += 6;
        assert_eq!(
            Repr::parse_bytes(&v).unwrap().0,
            Repr::ServerKey { key: K1 }
        );
        v[5] = b'X';
        assert_eq!(Repr::parse_bytes(&v), Err(Error::BadMagic));
        assert_eq!(
            Repr::parse_bytes(&[0x01, 0, 0, 0, 3, b'D', b'E', b'R']),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn client_and_server_info() {
        let nonce = [7u8; 24];
        let sealed = [9u8; 40];
        let v = roundtrip(Repr::ClientInfo {
            key: K1,
            nonce,
            sealed: &sealed,
        });
        assert_eq!(&v[..5], &[0x02, 0, 0, 0, 32 + 24 + 40]);
        assert_eq!(&v[5..37], &K1);
        assert_eq!(&v[37..61], &nonce);
        let v = roundtrip(Repr::ServerInfo {
            nonce,
            sealed: &sealed,
        });
        assert_eq!(&v[..5], &[0x03, 0, 0, 0, 24 + 40]);
        // A box shorter than its tag is impossible.
        let mut short = vec![0x03, 0, 0, 0, 24 + 15];
        short.extend_from_slice(&[0; 39]);
        assert_eq!(Repr::parse_bytes(&short), Err(Error::Truncated));
    }

    #[test]
    fn packets() {
        let data = b"wireguard bytes";
        let v = roundtrip(Repr::SendPacket {
            dst: K2,
            packet: data,
        });
        assert_eq!(&v[..5], &[0x04, 0, 0, 0, 32 + 15]);
        let v = roundtrip(Repr::RecvPacket {
            src: K1,
            packet: data,
        });
        assert_eq!(v[0], 0x05);
        let v = roundtrip(Repr::ForwardPacket {
            src: K1,
            dst: K2,
            packet: data,
        });
        assert_eq!(&v[..5], &[0x0a, 0, 0, 0, 64 + 15]);
        assert_eq!(&v[5..37], &K1);
        assert_eq!(&v[37..69], &K2);
        // Empty packets are legal.
        roundtrip(Repr::SendPacket {
            dst: K2,
            packet: &[],
        });
        // Key missing.
        assert_eq!(
            Repr::parse_bytes(&[0x04, 0, 0, 0, 3, 1, 2, 3]),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn packet_size_bound() {
        let big = vec![0u8; MAX_PACKET_SIZE];
        roundtrip(Repr::SendPacket {
            dst: K2,
            packet: &big,
        });
        let mut v = Repr::SendPacket {
            dst: K2,
            packet: &big,
        }
        .to_vec();
        v.push(0);
        let len = (KEY_LEN + MAX_PACKET_SIZE + 1) as u32;
        v[1..5].copy_from_slice(&len.to_be_bytes());
        assert_eq!(Repr::parse_bytes(&v), Err(Error::TooLong));
        assert_eq!(Header::parse(&v), Err(Error::TooLong));
    }

    #[test]
    fn header_bounds() {
        assert_eq!(Header::parse(&[0x06, 0, 0]), Err(Error::Truncated));
        assert_eq!(
            Header::parse(&[0x06, 0, 0x10, 0, 0]),
            Ok(Header {
                frame_type: FrameType::KeepAlive,
                payload_len: MAX_FRAME_LEN
            })
        );
        assert_eq!(Header::parse(&[0x06, 0, 0x10, 0, 1]), Err(Error::TooLong));
        assert_eq!(
            Header::parse(&[0x99, 0xff, 0xff, 0xff, 0xff]),
            Err(Error::TooLong)
        );
        assert_eq!(Header::parse(&[0x02, 0, 4, 0, 1]), Err(Error::TooLong));
        assert_eq!(Header::parse(&[0x12, 0, 0, 3, 0xe9]), Err(Error::TooLong));
        // Payload announced but not present.
        assert_eq!(
            Frame::new_checked(&[0x06, 0, 0, 0, 2, 0][..]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn small_frames() {
        assert_eq!(roundtrip(Repr::KeepAlive), vec![0x06, 0, 0, 0, 0]);
        assert_eq!(roundtrip(Repr::WatchConns), vec![0x10, 0, 0, 0, 0]);
        assert_eq!(
            roundtrip(Repr::NotePreferred { preferred: true }),
            vec![0x07, 0, 0, 0, 1, 1]
        );
        roundtrip(Repr::NotePreferred { preferred: false });
        assert_eq!(
            Repr::parse_bytes(&[0x07, 0, 0, 0, 0]),
            Err(Error::Truncated)
        );
        let v = roundtrip(Repr::ClosePeer { key: K1 });
        assert_eq!(&v[..5], &[0x11, 0, 0, 0, 32]);
        let v = roundtrip(Repr::Ping { data: *b"12345678" });
        assert_eq!(v, b"\x12\0\0\0\x0812345678");
        let v = roundtrip(Repr::Pong { data: *b"12345678" });
        assert_eq!(v, b"\x13\0\0\0\x0812345678");
        let v = roundtrip(Repr::Restarting {
            reconnect_in_ms: 1000,
            try_for_ms: 0x0102_0304,
        });
        assert_eq!(v, [0x15, 0, 0, 0, 8, 0, 0, 0x03, 0xe8, 1, 2, 3, 4]);
        let v = roundtrip(Repr::Health {
            problem: "duplicate connection",
        });
        assert_eq!(&v[..5], &[0x14, 0, 0, 0, 20]);
        roundtrip(Repr::Health { problem: "" });
        assert_eq!(
            Repr::parse_bytes(&[0x14, 0, 0, 0, 1, 0xff]),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn long_ping_reads_first_eight() {
        let mut v = vec![0x12, 0, 0, 0, 20];
        v.extend_from_slice(b"abcdefgh____________");
        assert_eq!(
            Repr::parse_bytes(&v).unwrap().0,
            Repr::Ping { data: *b"abcdefgh" }
        );
        assert_eq!(
            Repr::parse_bytes(&[0x12, 0, 0, 0, 2, 1, 2]),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn peer_gone() {
        let v = roundtrip(Repr::PeerGone {
            key: K1,
            reason: PeerGoneReason::NotHere,
        });
        assert_eq!(&v[..5], &[0x08, 0, 0, 0, 33]);
        assert_eq!(v[37], 1);
        roundtrip(Repr::PeerGone {
            key: K1,
            reason: PeerGoneReason::Other(9),
        });
        // An old server's bare key means "disconnected".
        let mut v = vec![0x08, 0, 0, 0, 32];
        v.extend_from_slice(&K2);
        assert_eq!(
            Repr::parse_bytes(&v).unwrap().0,
            Repr::PeerGone {
                key: K2,
                reason: PeerGoneReason::Disconnected
            }
        );
    }

    #[test]
    fn peer_present_variants() {
        let v = roundtrip(Repr::PeerPresent {
            key: K1,
            endpoint: None,
            flags: 0,
        });
        assert_eq!(v.len(), 5 + 32);
        let ep: SocketAddr = "198.18.0.7:41641".parse().unwrap();
        let v = roundtrip(Repr::PeerPresent {
            key: K1,
            endpoint: Some(ep),
            flags: 3,
        });
        assert_eq!(&v[..5], &[0x09, 0, 0, 0, 51]);
        assert_eq!(
            &v[37..53],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 7]
        );
        assert_eq!(&v[53..56], &[0xa2, 0xa9, 3]);
        roundtrip(Repr::PeerPresent {
            key: K1,
            endpoint: Some("[2001:db8::5]:1".parse().unwrap()),
            flags: 0,
        });
        // Endpoint without flags byte (intermediate server versions).
        let trimmed = {
            let mut t = v[..v.len() - 1].to_vec();
            t[4] = 50;
            t
        };
        assert_eq!(
            Repr::parse_bytes(&trimmed).unwrap().0,
            Repr::PeerPresent {
                key: K1,
                endpoint: Some(ep),
                flags: 0
            }
        );
    }

    #[test]
    fn unknown_frames_are_carried() {
        let v = roundtrip(Repr::Unknown {
            frame_type: 0x42,
            payload: b"skip me",
        });
        assert_eq!(&v[..5], &[0x42, 0, 0, 0, 7]);
    }

    #[test]
    fn frames_back_to_back() {
        let mut buf = Vec::new();
        Repr::KeepAlive.emit_to_vec(&mut buf);
        Repr::Ping { data: [1; 8] }.emit_to_vec(&mut buf);
        let (a, n) = Repr::parse_bytes(&buf).unwrap();
        assert_eq!(a, Repr::KeepAlive);
        let (b, m) = Repr::parse_bytes(&buf[n..]).unwrap();
        assert_eq!(b, Repr::Ping { data: [1; 8] });
        assert_eq!(n + m, buf.len());
    }

    #[test]
    fn disco_detection() {
        let mut d = DISCO_MAGIC.to_vec();
        d.resize(DISCO_MIN_LEN, 0);
        assert!(looks_like_disco(&d));
        assert!(!looks_like_disco(&d[..DISCO_MIN_LEN - 1]));
        d[0] = 0;
        assert!(!looks_like_disco(&d));
    }
}
