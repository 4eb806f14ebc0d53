//! HTTP/2 frames (RFC 9113 §4 and §6): the 9-byte frame header, the
//! payload layouts of the frame types we act on, and their emitters.
//!
//! Views over borrowed buffers, no I/O and no state: the connection driver
//! (`src/http/h2conn.rs`) decides what a frame means for a stream. Every
//! length is checked here, so the driver never indexes past a payload.

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header length.
pub const HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial value: the largest payload a peer may
/// send us, since we never raise it.
pub const DEFAULT_MAX_FRAME: usize = 16_384;
/// Largest flow-control window (2^31 - 1).
pub const MAX_WINDOW: i64 = (1 << 31) - 1;
/// The window every stream and the connection start with.
pub const DEFAULT_WINDOW: i64 = 65_535;

/// Frame types.
pub mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const PRIORITY: u8 = 2;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PUSH_PROMISE: u8 = 5;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
}

/// Frame flags (the same bit means different things per type).
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Error codes (RFC 9113 §7).
pub mod code {
    pub const NO_ERROR: u32 = 0;
    pub const PROTOCOL: u32 = 1;
    pub const INTERNAL: u32 = 2;
    pub const FLOW_CONTROL: u32 = 3;
    pub const STREAM_CLOSED: u32 = 5;
    pub const FRAME_SIZE: u32 = 6;
    pub const REFUSED_STREAM: u32 = 7;
    pub const CANCEL: u32 = 8;
    pub const COMPRESSION: u32 = 9;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// SETTINGS identifiers.
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 1;
    pub const ENABLE_PUSH: u16 = 2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 3;
    pub const INITIAL_WINDOW_SIZE: u16 = 4;
    pub const MAX_FRAME_SIZE: u16 = 5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 6;
}

/// A connection error: the connection ends with GOAWAY carrying `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    pub code: u32,
    pub why: &'static str,
}

fn err(code: u32, why: &'static str) -> Error {
    Error { code, why }
}

/// The frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    /// Stream identifier (the reserved bit cleared).
    pub stream: u32,
}

impl Header {
    /// None while fewer than 9 bytes are there.
    pub fn parse(b: &[u8]) -> Option<Header> {
        let b: &[u8; HEADER_LEN] = b.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize,
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        })
    }

    /// Appends the header; `len` must be below 2^24 (callers emit at most
    /// the peer's max frame size).
    pub fn emit(&self, out: &mut Vec<u8>) {
        debug_assert!(self.len < 1 << 24);
        out.extend_from_slice(&(self.len as u32).to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&(self.stream & 0x7fff_ffff).to_be_bytes());
    }
}

/// One whole frame inside a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub hdr: Header,
    pub payload: &'a [u8],
}

/// The next whole frame at the start of `buf` and the bytes it used;
/// Ok(None) while it is incomplete. A payload longer than `max_payload`
/// (our SETTINGS_MAX_FRAME_SIZE) is a FRAME_SIZE_ERROR, found as soon as the
/// header is in, so a peer cannot make us buffer past it.
pub fn split(buf: &[u8], max_payload: usize) -> Result<Option<(Frame<'_>, usize)>, Error> {
    let Some(hdr) = Header::parse(buf) else {
        return Ok(None);
    };
    if hdr.len > max_payload {
        return Err(err(
            code::FRAME_SIZE,
            "frame larger than SETTINGS_MAX_FRAME_SIZE",
        ));
    }
    let end = HEADER_LEN + hdr.len;
    Ok(buf
        .get(HEADER_LEN..end)
        .map(|payload| (Frame { hdr, payload }, end)))
}

/// The payload of a DATA or HEADERS frame without its padding (§6.1).
pub fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], Error> {
    if flags & flag::PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload
        .split_first()
        .ok_or(err(code::FRAME_SIZE, "padded frame without pad length"))?;
    rest.len()
        .checked_sub(pad as usize)
        .map(|n| &rest[..n])
        .ok_or(err(code::PROTOCOL, "padding longer than the payload"))
}

/// The header block fragment of a HEADERS frame: padding and the priority
/// fields (which we ignore) stripped (§6.2).
pub fn headers_fragment(flags: u8, payload: &[u8]) -> Result<&[u8], Error> {
    let p = unpad(flags, payload)?;
    if flags & flag::PRIORITY == 0 {
        return Ok(p);
    }
    p.get(5..)
        .ok_or(err(code::FRAME_SIZE, "HEADERS too short for its priority"))
}

/// The (identifier, value) pairs of a SETTINGS payload (§6.5).
pub fn settings(payload: &[u8]) -> Result<impl Iterator<Item = (u16, u32)> + '_, Error> {
    if payload.len() % 6 != 0 {
        return Err(err(code::FRAME_SIZE, "SETTINGS length not a multiple of 6"));
    }
    Ok(payload.chunks_exact(6).map(|c| {
        (
            u16::from_be_bytes([c[0], c[1]]),
            u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
        )
    }))
}

/// A 4-byte payload (WINDOW_UPDATE increment or RST_STREAM code).
fn u32_payload(payload: &[u8], reserved_bit: bool) -> Result<u32, Error> {
    let b: [u8; 4] = payload
        .try_into()
        .map_err(|_| err(code::FRAME_SIZE, "4-byte frame of another length"))?;
    let v = u32::from_be_bytes(b);
    Ok(if reserved_bit { v & 0x7fff_ffff } else { v })
}

/// WINDOW_UPDATE's increment (0 is the caller's error to judge: it is a
/// stream error on a stream and a connection error on stream 0).
pub fn window_update(payload: &[u8]) -> Result<u32, Error> {
    u32_payload(payload, true)
}

/// RST_STREAM's error code.
pub fn rst_stream(payload: &[u8]) -> Result<u32, Error> {
    u32_payload(payload, false)
}

/// PING's opaque 8 bytes.
pub fn ping(payload: &[u8]) -> Result<[u8; 8], Error> {
    payload
        .try_into()
        .map_err(|_| err(code::FRAME_SIZE, "PING of length other than 8"))
}

/// GOAWAY's (last stream id, error code).
pub fn goaway(payload: &[u8]) -> Result<(u32, u32), Error> {
    if payload.len() < 8 {
        return Err(err(code::FRAME_SIZE, "GOAWAY shorter than 8"));
    }
    Ok((
        u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
        u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]),
    ))
}

fn emit_header(len: usize, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
    Header {
        len,
        kind,
        flags,
        stream,
    }
    .emit(out)
}

/// A DATA frame; `data.len()` must not exceed the peer's max frame size.
pub fn emit_data(stream: u32, data: &[u8], end: bool, out: &mut Vec<u8>) {
    let flags = if end { flag::END_STREAM } else { 0 };
    emit_header(data.len(), kind::DATA, flags, stream, out);
    out.extend_from_slice(data);
}

/// The frame header of a DATA frame of `len` bytes (a sender writes it
/// and the payload together, without copying them into one buffer).
pub fn data_header(stream: u32, len: usize, end: bool) -> [u8; HEADER_LEN] {
    let flags = if end { flag::END_STREAM } else { 0 };
    header_bytes(len, kind::DATA, flags, stream)
}

/// The frame header of a HEADERS frame carrying a whole block of `len` bytes.
pub fn headers_header(stream: u32, len: usize, end: bool) -> [u8; HEADER_LEN] {
    let flags = flag::END_HEADERS | if end { flag::END_STREAM } else { 0 };
    header_bytes(len, kind::HEADERS, flags, stream)
}

fn header_bytes(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; HEADER_LEN] {
    debug_assert!(len < 1 << 24);
    let l = (len as u32).to_be_bytes();
    let s = (stream & 0x7fff_ffff).to_be_bytes();
    [l[1], l[2], l[3], kind, flags, s[0], s[1], s[2], s[3]]
}

/// A HEADERS frame carrying a whole header block (we only emit small ones).
pub fn emit_headers(stream: u32, block: &[u8], end: bool, out: &mut Vec<u8>) {
    let flags = flag::END_HEADERS | if end { flag::END_STREAM } else { 0 };
    emit_header(block.len(), kind::HEADERS, flags, stream, out);
    out.extend_from_slice(block);
}

pub fn emit_settings(values: &[(u16, u32)], out: &mut Vec<u8>) {
    emit_header(values.len() * 6, kind::SETTINGS, 0, 0, out);
    for (id, v) in values {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub fn emit_settings_ack(out: &mut Vec<u8>) {
    emit_header(0, kind::SETTINGS, flag::ACK, 0, out);
}

pub fn emit_window_update(stream: u32, increment: u32, out: &mut Vec<u8>) {
    emit_header(4, kind::WINDOW_UPDATE, 0, stream, out);
    out.extend_from_slice(&(increment & 0x7fff_ffff).to_be_bytes());
}

pub fn emit_ping(ack: bool, data: [u8; 8], out: &mut Vec<u8>) {
    emit_header(8, kind::PING, if ack { flag::ACK } else { 0 }, 0, out);
    out.extend_from_slice(&data);
}

pub fn emit_rst_stream(stream: u32, error: u32, out: &mut Vec<u8>) {
    emit_header(4, kind::RST_STREAM, 0, stream, out);
    out.extend_from_slice(&error.to_be_bytes());
}

pub fn emit_goaway(last_stream: u32, error: u32, out: &mut Vec<u8>) {
    emit_header(8, kind::GOAWAY, 0, 0, out);
    out.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_reserved_bit() {
        let h = Header {
            len: 0x01_02_03,
            kind: kind::HEADERS,
            flags: flag::END_HEADERS | flag::PADDED,
            stream: 0x7fff_fffd,
        };
        let mut out = Vec::new();
        h.emit(&mut out);
        assert_eq!(out, [1, 2, 3, 1, 0x0c, 0x7f, 0xff, 0xff, 0xfd]);
        assert_eq!(Header::parse(&out), Some(h));
        out[5] |= 0x80; // the reserved bit is ignored on receipt
        assert_eq!(Header::parse(&out), Some(h));
        assert_eq!(Header::parse(&out[..8]), None);
    }

    #[test]
    fn split_waits_for_whole_frames_and_bounds_the_length() {
        let mut buf = Vec::new();
        emit_data(1, b"hello", true, &mut buf);
        emit_ping(false, *b"12345678", &mut buf);
        for cut in 0..14 {
            assert_eq!(split(&buf[..cut], 16_384), Ok(None), "cut {cut}");
        }
        let (f, used) = split(&buf, 16_384).unwrap().unwrap();
        assert_eq!(
            (f.hdr.kind, f.hdr.stream, f.payload, used),
            (kind::DATA, 1, &b"hello"[..], 14)
        );
        assert_eq!(f.hdr.flags, flag::END_STREAM);
        let (f, _) = split(&buf[used..], 16_384).unwrap().unwrap();
        assert_eq!(ping(f.payload), Ok(*b"12345678"));
        // A header announcing 16 KiB + 1 is refused before its payload arrives.
        let big = [0x00, 0x40, 0x01, 0, 0, 0, 0, 0, 1];
        assert_eq!(split(&big, 16_384).unwrap_err().code, code::FRAME_SIZE);
    }

    #[test]
    fn padding_and_priority_are_stripped_and_checked() {
        assert_eq!(unpad(0, b"abc"), Ok(&b"abc"[..]));
        assert_eq!(unpad(flag::PADDED, b"\x02abcXX"), Ok(&b"abc"[..]));
        assert_eq!(unpad(flag::PADDED, b"\x00"), Ok(&b""[..]));
        assert_eq!(unpad(flag::PADDED, b"").unwrap_err().code, code::FRAME_SIZE);
        assert_eq!(
            unpad(flag::PADDED, b"\x04abc").unwrap_err().code,
            code::PROTOCOL
        );
        let p = b"\x01\x80\x00\x00\x03\x10blockP";
        assert_eq!(
            headers_fragment(flag::PADDED | flag::PRIORITY, p),
            Ok(&b"block"[..])
        );
        assert_eq!(
            headers_fragment(flag::PRIORITY, b"1234").unwrap_err().code,
            code::FRAME_SIZE
        );
    }

    #[test]
    fn control_frames_round_trip() {
        let mut out = Vec::new();
        emit_settings(
            &[
                (setting::INITIAL_WINDOW_SIZE, 1 << 20),
                (setting::ENABLE_PUSH, 0),
            ],
            &mut out,
        );
        let (f, _) = split(&out, 16_384).unwrap().unwrap();
        assert_eq!(f.hdr.kind, kind::SETTINGS);
        let v: Vec<_> = settings(f.payload).unwrap().collect();
        assert_eq!(v, [(4, 1 << 20), (2, 0)]);
        assert!(settings(&[0; 7]).is_err());

        out.clear();
        emit_window_update(3, 1000, &mut out);
        emit_rst_stream(3, code::CANCEL, &mut out);
        emit_goaway(7, code::ENHANCE_YOUR_CALM, &mut out);
        let (f, n) = split(&out, 16_384).unwrap().unwrap();
        assert_eq!((f.hdr.stream, window_update(f.payload)), (3, Ok(1000)));
        let (f, m) = split(&out[n..], 16_384).unwrap().unwrap();
        assert_eq!(rst_stream(f.payload), Ok(code::CANCEL));
        let (f, _) = split(&out[n + m..], 16_384).unwrap().unwrap();
        assert_eq!(goaway(f.payload), Ok((7, code::ENHANCE_YOUR_CALM)));
        assert_eq!(window_update(&[0x80, 0, 0, 1]), Ok(1));
        assert!(window_update(&[0; 5]).is_err());
        assert!(ping(&[0; 7]).is_err());
        assert!(goaway(&[0; 7]).is_err());
    }
}
