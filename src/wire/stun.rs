//! STUN (RFC 5389) Binding messages, the subset Tailscale's netcheck uses.
//!
//! A client learns its public `ip:port` (as seen after NAT) and the latency to
//! a DERP region by sending a Binding Request from its WireGuard UDP socket;
//! we answer with a Binding Success Response that carries only
//! XOR-MAPPED-ADDRESS, exactly the shape Tailscale's own responder emits.
//!
//! As in smoltcp, there are two layers:
//! * [`Packet`], a view over a borrowed buffer with checked accessors, and
//! * [`Repr`], the parsed meaning, with [`Repr::parse`] and [`Repr::emit`].
//!
//! Everything here works on bytes already received; no I/O.

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Length of the fixed STUN header: type, length, cookie, transaction ID.
pub const HEADER_LEN: usize = 20;

/// The RFC 5389 magic cookie; its presence distinguishes STUN from other UDP
/// traffic (notably WireGuard and disco) arriving on the same port.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// Largest message we look at. A Tailscale request is 40 bytes; 1280 (the
/// IPv6 minimum MTU) leaves ample room for other well-formed clients while
/// keeping the parser's work bounded.
pub const MAX_MESSAGE_LEN: usize = 1280;

/// Binding Request message type (method Binding, class request).
pub const BINDING_REQUEST: u16 = 0x0001;
/// Binding Success Response message type.
pub const BINDING_SUCCESS: u16 = 0x0101;

/// MAPPED-ADDRESS: plain address, accepted by clients only as a fallback.
pub const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
/// XOR-MAPPED-ADDRESS: the address we report.
pub const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// Pre-RFC "comprehension-optional" XOR-MAPPED-ADDRESS some servers still send.
pub const ATTR_XOR_MAPPED_ADDRESS_ALT: u16 = 0x8020;
/// SOFTWARE: Tailscale clients put `tailnode` here.
pub const ATTR_SOFTWARE: u16 = 0x8022;
/// FINGERPRINT: CRC-32 of everything before it, XOR [`FINGERPRINT_XOR`].
pub const ATTR_FINGERPRINT: u16 = 0x8028;

/// Constant XORed into the CRC-32 of a FINGERPRINT attribute ("STUN").
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// The SOFTWARE value Tailscale clients send (8 bytes, so no padding).
pub const TAILSCALE_SOFTWARE: &[u8] = b"tailnode";

/// A 96-bit STUN transaction ID, echoed verbatim in the response.
pub type TransactionId = [u8; 12];

/// Why a datagram is not a message we answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the header, or shorter than the header's length field says.
    Truncated,
    /// Larger than [`MAX_MESSAGE_LEN`].
    TooLong,
    /// Top bits set or magic cookie missing: not STUN at all.
    NotStun,
    /// Length field not a multiple of 4 or not matching the datagram, or an
    /// attribute runs past the end.
    Malformed,
    /// A well-formed STUN message of a type we do not handle.
    Unsupported,
    /// FINGERPRINT present but wrong, or not the last attribute.
    BadFingerprint,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Truncated => "STUN message truncated",
            Error::TooLong => "STUN message too long",
            Error::NotStun => "not a STUN message",
            Error::Malformed => "malformed STUN message",
            Error::Unsupported => "unsupported STUN message type",
            Error::BadFingerprint => "bad STUN fingerprint",
        })
    }
}

impl std::error::Error for Error {}

/// Result alias for this module.
pub type Result<T> = core::result::Result<T, Error>;

mod field {
    use core::ops::Range;
    pub const TYPE: Range<usize> = 0..2;
    pub const LENGTH: Range<usize> = 2..4;
    pub const COOKIE: Range<usize> = 4..8;
    pub const TXID: Range<usize> = 8..20;
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// A read/write view of a STUN message in a buffer.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap a buffer without checking it; accessors may panic on short input.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wrap a buffer after [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Check the buffer holds a header and exactly the attributes the length
    /// field announces. On UDP a datagram is one message, so trailing bytes
    /// mean the sender (or a truncating receive) got it wrong.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() > MAX_MESSAGE_LEN {
            return Err(Error::TooLong);
        }
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = usize::from(self.length());
        if HEADER_LEN + len > b.len() {
            return Err(Error::Truncated);
        }
        if HEADER_LEN + len != b.len() || len % 4 != 0 {
            return Err(Error::Malformed);
        }
        Ok(())
    }

    /// Consume the view and return the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The 16-bit message type (class and method interleaved).
    pub fn message_type(&self) -> u16 {
        be16(self.buffer.as_ref(), field::TYPE.start)
    }

    /// Length of the attributes that follow the header, in bytes.
    pub fn length(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// The magic cookie field.
    pub fn magic_cookie(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::COOKIE];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The transaction ID.
    pub fn transaction_id(&self) -> TransactionId {
        let mut id = [0u8; 12];
        id.copy_from_slice(&self.buffer.as_ref()[field::TXID]);
        id
    }

    /// True when the first two bits are zero and the cookie is right: the test
    /// RFC 5389 §7.3 gives for telling STUN from other protocols on a port.
    pub fn is_stun(&self) -> bool {
        self.buffer.as_ref()[0] & 0xC0 == 0 && self.magic_cookie() == MAGIC_COOKIE
    }

    /// Iterate over the attributes (header and padding handled for you).
    /// Call only after [`Packet::check_len`] succeeded.
    pub fn attributes(&self) -> Attributes<'_> {
        let b = self.buffer.as_ref();
        let end = (HEADER_LEN + usize::from(self.length())).min(b.len());
        Attributes {
            msg: &b[..end],
            pos: HEADER_LEN,
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Set the message type.
    pub fn set_message_type(&mut self, v: u16) {
        self.buffer.as_mut()[field::TYPE].copy_from_slice(&v.to_be_bytes());
    }

    /// Set the attributes length.
    pub fn set_length(&mut self, v: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }

    /// Write the magic cookie.
    pub fn set_magic_cookie(&mut self) {
        self.buffer.as_mut()[field::COOKIE].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    }

    /// Set the transaction ID.
    pub fn set_transaction_id(&mut self, id: &TransactionId) {
        self.buffer.as_mut()[field::TXID].copy_from_slice(id);
    }
}

/// One attribute: its type, its value (without padding), and where it starts
/// in the message (needed to check FINGERPRINT, which covers what precedes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    /// Attribute type.
    pub kind: u16,
    /// Value bytes, padding stripped.
    pub value: &'a [u8],
    /// Offset of the attribute's own header within the message.
    pub offset: usize,
}

/// Iterator over a message's attributes; yields `Err(Malformed)` once and
/// stops if an attribute would run past the end.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<Attribute<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.msg.len() {
            return None;
        }
        let rest = &self.msg[self.pos..];
        if rest.len() < 4 {
            self.pos = self.msg.len();
            return Some(Err(Error::Malformed));
        }
        let kind = be16(rest, 0);
        let len = usize::from(be16(rest, 2));
        let padded = (len + 3) & !3;
        if 4 + padded > rest.len() {
            self.pos = self.msg.len();
            return Some(Err(Error::Malformed));
        }
        let attr = Attribute {
            kind,
            value: &rest[4..4 + len],
            offset: self.pos,
        };
        self.pos += 4 + padded;
        Some(Ok(attr))
    }
}

/// CRC-32 (IEEE 802.3, reflected, as Go's `crc32.ChecksumIEEE`). Twelve lines
/// of table-driven code are cheaper than a dependency for 40-byte inputs.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    !crc
}

/// The FINGERPRINT value for the message bytes preceding the attribute.
pub fn fingerprint(preceding: &[u8]) -> u32 {
    crc32(preceding) ^ FINGERPRINT_XOR
}

/// A parsed STUN message of the kinds we handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr {
    /// A Binding Request. Any well-formed one is answered; `tailnode` records
    /// whether it carried SOFTWARE `tailnode` and a valid trailing FINGERPRINT,
    /// which is what Tailscale's own responder insists on.
    BindingRequest {
        /// Transaction ID to echo.
        transaction_id: TransactionId,
        /// SOFTWARE was `tailnode` and FINGERPRINT was present and valid.
        tailnode: bool,
    },
    /// A Binding Success Response carrying the address the server saw.
    BindingSuccess {
        /// Transaction ID of the request being answered.
        transaction_id: TransactionId,
        /// The request's source address as seen by the server.
        mapped: SocketAddr,
    },
}

impl Repr {
    /// Parse a checked packet. A FINGERPRINT, if present, must be the last
    /// attribute and must match (RFC 5389 §15.5); unknown attributes are
    /// skipped, as comprehension-required ones only matter to full servers.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        if !packet.is_stun() {
            return Err(Error::NotStun);
        }
        let transaction_id = packet.transaction_id();
        let msg = &packet.buffer.as_ref()[..HEADER_LEN + usize::from(packet.length())];
        match packet.message_type() {
            BINDING_REQUEST => {
                let mut software_ok = false;
                let mut fingerprint_ok = false;
                for attr in packet.attributes() {
                    let attr = attr?;
                    if fingerprint_ok {
                        // Something after FINGERPRINT: it must be last.
                        return Err(Error::BadFingerprint);
                    }
                    match attr.kind {
                        ATTR_SOFTWARE => software_ok = attr.value == TAILSCALE_SOFTWARE,
                        ATTR_FINGERPRINT => {
                            let v: [u8; 4] =
                                attr.value.try_into().map_err(|_| Error::BadFingerprint)?;
                            if u32::from_be_bytes(v) != fingerprint(&msg[..attr.offset]) {
                                return Err(Error::BadFingerprint);
                            }
                            fingerprint_ok = true;
                        }
                        _ => {}
                    }
                }
                Ok(Repr::BindingRequest {
                    transaction_id,
                    tailnode: software_ok && fingerprint_ok,
                })
            }
            BINDING_SUCCESS => {
                let mut xor = None;
                let mut plain = None;
                for attr in packet.attributes() {
                    let attr = attr?;
                    match attr.kind {
                        ATTR_XOR_MAPPED_ADDRESS | ATTR_XOR_MAPPED_ADDRESS_ALT => {
                            xor = Some(parse_address(attr.value, Some(&transaction_id))?);
                        }
                        ATTR_MAPPED_ADDRESS => plain = Some(parse_address(attr.value, None)?),
                        _ => {}
                    }
                }
                let mapped = xor.or(plain).ok_or(Error::Malformed)?;
                Ok(Repr::BindingSuccess {
                    transaction_id,
                    mapped,
                })
            }
            _ => Err(Error::Unsupported),
        }
    }

    /// Bytes [`Repr::emit`] will write.
    pub fn buffer_len(&self) -> usize {
        match self {
            // SOFTWARE "tailnode" (4+8) and FINGERPRINT (4+4).
            Repr::BindingRequest { tailnode: true, .. } => HEADER_LEN + 12 + 8,
            Repr::BindingRequest {
                tailnode: false, ..
            } => HEADER_LEN,
            Repr::BindingSuccess { mapped, .. } => HEADER_LEN + 4 + address_value_len(mapped),
        }
    }

    /// Write the message into `packet`, whose buffer must be at least
    /// [`Repr::buffer_len`] bytes; only that prefix is written.
    ///
    /// A response to an IPv4 client reached through a dual-stack socket is
    /// written as family IPv4 (the v4-mapped form is unwrapped), as clients
    /// expect the family they sent from.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let total = self.buffer_len();
        packet.set_length((total - HEADER_LEN) as u16);
        packet.set_magic_cookie();
        match self {
            Repr::BindingRequest {
                transaction_id,
                tailnode,
            } => {
                packet.set_message_type(BINDING_REQUEST);
                packet.set_transaction_id(transaction_id);
                if *tailnode {
                    let b = &mut packet.buffer.as_mut()[..total];
                    b[20..22].copy_from_slice(&ATTR_SOFTWARE.to_be_bytes());
                    b[22..24].copy_from_slice(&(TAILSCALE_SOFTWARE.len() as u16).to_be_bytes());
                    b[24..32].copy_from_slice(TAILSCALE_SOFTWARE);
                    let fp = fingerprint(&b[..32]);
                    b[32..34].copy_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
                    b[34..36].copy_from_slice(&4u16.to_be_bytes());
                    b[36..40].copy_from_slice(&fp.to_be_bytes());
                }
            }
            Repr::BindingSuccess {
                transaction_id,
                mapped,
            } => {
                packet.set_message_type(BINDING_SUCCESS);
                packet.set_transaction_id(transaction_id);
                let b = &mut packet.buffer.as_mut()[HEADER_LEN..total];
                let vlen = address_value_len(mapped);
                b[0..2].copy_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
                b[2..4].copy_from_slice(&(vlen as u16).to_be_bytes());
                emit_xor_address(&mut b[4..4 + vlen], mapped, transaction_id);
            }
        }
    }

    /// Convenience: emit into a fresh `Vec`.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.buffer_len()];
        self.emit(&mut Packet::new_unchecked(&mut v[..]));
        v
    }
}

/// Canonical form of an address for the wire: v4-mapped IPv6 becomes IPv4.
fn canonical_ip(addr: &SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn address_value_len(addr: &SocketAddr) -> usize {
    match canonical_ip(addr) {
        IpAddr::V4(_) => 4 + 4,
        IpAddr::V6(_) => 4 + 16,
    }
}

/// XOR key for address bytes: cookie, then transaction ID (RFC 5389 §15.2).
fn xor_key(txid: &TransactionId) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    k[4..].copy_from_slice(txid);
    k
}

fn emit_xor_address(out: &mut [u8], addr: &SocketAddr, txid: &TransactionId) {
    let key = xor_key(txid);
    out[0] = 0;
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    out[2..4].copy_from_slice(&port.to_be_bytes());
    match canonical_ip(addr) {
        IpAddr::V4(v4) => {
            out[1] = 0x01;
            for (i, o) in v4.octets().iter().enumerate() {
                out[4 + i] = o ^ key[i];
            }
        }
        IpAddr::V6(v6) => {
            out[1] = 0x02;
            for (i, o) in v6.octets().iter().enumerate() {
                out[4 + i] = o ^ key[i];
            }
        }
    }
}

/// Parse (XOR-)MAPPED-ADDRESS; `txid` given means XOR-encoded.
fn parse_address(v: &[u8], txid: Option<&TransactionId>) -> Result<SocketAddr> {
    if v.len() < 4 {
        return Err(Error::Malformed);
    }
    let key = match txid {
        Some(t) => xor_key(t),
        None => [0u8; 16],
    };
    let port = be16(v, 2) ^ u16::from_be_bytes([key[0], key[1]]);
    let addr = &v[4..];
    let ip = match v[1] {
        0x01 if addr.len() >= 4 => {
            let mut o = [0u8; 4];
            for (i, b) in o.iter_mut().enumerate() {
                *b = addr[i] ^ key[i];
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        0x02 if addr.len() >= 16 => {
            let mut o = [0u8; 16];
            for (i, b) in o.iter_mut().enumerate() {
                *b = addr[i] ^ key[i];
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(Error::Malformed),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Answer a datagram: if `request` is a valid Binding Request, write the
/// Binding Success Response for `source` into `out` and return its length.
/// Anything else yields `None` and must be dropped silently (never answer
/// garbage: that would make us a reflector).
pub fn respond(request: &[u8], source: SocketAddr, out: &mut [u8]) -> Option<usize> {
    let packet = Packet::new_checked(request).ok()?;
    let Repr::BindingRequest { transaction_id, .. } = Repr::parse(&packet).ok()? else {
        return None;
    };
    let resp = Repr::BindingSuccess {
        transaction_id,
        mapped: source,
    };
    let n = resp.buffer_len();
    let out = out.get_mut(..n)?;
    resp.emit(&mut Packet::new_unchecked(out));
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXID: TransactionId = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    /// A request exactly as Tailscale's `stun.Request(TXID)` builds it; the
    /// fingerprint was computed independently with Python's `zlib.crc32`.
    const TAILNODE_REQUEST: [u8; 40] = [
        0x00, 0x01, 0x00, 0x14, 0x21, 0x12, 0xa4, 0x42, // type, len 20, cookie
        1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, // txid
        0x80, 0x22, 0x00, 0x08, b't', b'a', b'i', b'l', b'n', b'o', b'd', b'e', // SOFTWARE
        0x80, 0x28, 0x00, 0x04, 0xb3, 0x2c, 0x37, 0x0f, // FINGERPRINT
    ];

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn parse_tailnode_request() {
        let p = Packet::new_checked(&TAILNODE_REQUEST[..]).unwrap();
        assert_eq!(
            Repr::parse(&p),
            Ok(Repr::BindingRequest {
                transaction_id: TXID,
                tailnode: true
            })
        );
    }

    #[test]
    fn emit_tailnode_request_matches_vector() {
        let r = Repr::BindingRequest {
            transaction_id: TXID,
            tailnode: true,
        };
        assert_eq!(r.to_vec(), TAILNODE_REQUEST);
    }

    #[test]
    fn bare_request_accepted() {
        let mut b = [0u8; 20];
        b[1] = 1;
        b[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        b[8..].copy_from_slice(&TXID);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(
            Repr::parse(&p),
            Ok(Repr::BindingRequest {
                transaction_id: TXID,
                tailnode: false
            })
        );
    }

    #[test]
    fn rejects() {
        let good = TAILNODE_REQUEST;
        // Too short.
        assert_eq!(
            Packet::new_checked(&good[..19]).unwrap_err(),
            Error::Truncated
        );
        // Length field larger than datagram.
        assert_eq!(
            Packet::new_checked(&good[..36]).unwrap_err(),
            Error::Truncated
        );
        // Trailing garbage.
        let mut long = good.to_vec();
        long.extend_from_slice(&[0; 4]);
        assert_eq!(
            Packet::new_checked(&long[..]).unwrap_err(),
            Error::Malformed
        );
        // Oversized.
        let huge = vec![0u8; MAX_MESSAGE_LEN + 1];
        assert_eq!(Packet::new_checked(&huge[..]).unwrap_err(), Error::TooLong);
        // Wrong cookie.
        let mut b = good;
        b[4] ^= 1;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..])),
            Err(Error::NotStun)
        );
        // Top bits set.
        let mut b = good;
        b[0] = 0x40;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..])),
            Err(Error::NotStun)
        );
        // Not a binding request (an indication).
        let mut b = good;
        b[1] = 0x11;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..])),
            Err(Error::Unsupported)
        );
        // Corrupted fingerprint.
        let mut b = good;
        b[39] ^= 1;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..])),
            Err(Error::BadFingerprint)
        );
        // Corrupted software changes the CRC too.
        let mut b = good;
        b[24] = b'T';
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..])),
            Err(Error::BadFingerprint)
        );
        // Length not a multiple of four.
        let mut b = good.to_vec();
        b.truncate(38);
        b[3] = 18;
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Malformed);
        // Attribute overruns message.
        let mut b = good;
        b[23] = 0x40;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..])),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn attribute_after_fingerprint_rejected() {
        let mut b = TAILNODE_REQUEST.to_vec();
        b.extend_from_slice(&[0x80, 0x22, 0, 0]);
        b[3] = 24;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..])),
            Err(Error::BadFingerprint)
        );
    }

    #[test]
    fn response_ipv4_vector() {
        let src: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let mut out = [0u8; 64];
        let n = respond(&TAILNODE_REQUEST, src, &mut out).unwrap();
        let expect: [u8; 32] = [
            0x01, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42, // header
            1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, // txid
            0x00, 0x20, 0x00, 0x08, // XOR-MAPPED-ADDRESS, len 8
            0x00, 0x01, 0xa1, 0x47, // family v4, 32853 ^ 0x2112
            0xe1, 0x12, 0xa6, 0x43, // 192.0.2.1 ^ cookie
        ];
        assert_eq!(&out[..n], &expect);
        let p = Packet::new_checked(&out[..n]).unwrap();
        assert_eq!(
            Repr::parse(&p),
            Ok(Repr::BindingSuccess {
                transaction_id: TXID,
                mapped: src
            })
        );
    }

    #[test]
    fn response_ipv6_vector() {
        let src: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
        let r = Repr::BindingSuccess {
            transaction_id: TXID,
            mapped: src,
        };
        let v = r.to_vec();
        assert_eq!(v.len(), 44);
        assert_eq!(&v[..4], &[0x01, 0x01, 0x00, 24]);
        assert_eq!(&v[20..26], &[0x00, 0x20, 0x00, 20, 0x00, 0x02]);
        // 3478 = 0x0d96; ^ 0x2112 = 0x2c84
        assert_eq!(&v[26..28], &[0x2c, 0x84]);
        // 20 01 0d b8 ^ 21 12 a4 42, then zeros ^ txid, last byte 1 ^ 12.
        assert_eq!(&v[28..32], &[0x01, 0x13, 0xa9, 0xfa]);
        assert_eq!(&v[32..43], &TXID[..11]);
        assert_eq!(v[43], 1 ^ 12);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&v[..]).unwrap()),
            Ok(Repr::BindingSuccess {
                transaction_id: TXID,
                mapped: src
            })
        );
    }

    #[test]
    fn v4_mapped_source_answers_as_v4() {
        let src: SocketAddr = "[::ffff:198.18.0.5]:41641".parse().unwrap();
        let v = Repr::BindingSuccess {
            transaction_id: TXID,
            mapped: src,
        }
        .to_vec();
        assert_eq!(v.len(), 32);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&v[..]).unwrap()),
            Ok(Repr::BindingSuccess {
                transaction_id: TXID,
                mapped: "198.18.0.5:41641".parse().unwrap()
            })
        );
    }

    #[test]
    fn respond_drops_non_requests_and_small_buffers() {
        let src: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut out = [0u8; 64];
        assert_eq!(respond(b"hello", src, &mut out), None);
        let resp = Repr::BindingSuccess {
            transaction_id: TXID,
            mapped: src,
        }
        .to_vec();
        assert_eq!(respond(&resp, src, &mut out), None);
        assert_eq!(respond(&TAILNODE_REQUEST, src, &mut out[..10]), None);
    }

    #[test]
    fn mapped_address_fallback() {
        let mut v = vec![0x01, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
        v.extend_from_slice(&TXID);
        v.extend_from_slice(&[0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x00, 0x50, 10, 0, 0, 1]);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&v[..]).unwrap()),
            Ok(Repr::BindingSuccess {
                transaction_id: TXID,
                mapped: "10.0.0.1:80".parse().unwrap()
            })
        );
    }
}
