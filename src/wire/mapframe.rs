//! Map-poll message framing (protocol/map.md §2): a u32 LITTLE-endian length,
//! then either a zstd frame or plain JSON, as the request's `Compress` asked.
//!
//! The zstd frame is built from raw (stored) blocks: valid zstd that every
//! decoder accepts, at no code-size cost. Blocks are at most 128 KiB.

pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Largest block the format allows.
pub const MAX_BLOCK: usize = 128 * 1024;
/// Largest message we emit or accept (the client has no cap; be sane).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Appends a raw-block zstd frame holding `payload` to `out`.
pub fn emit_zstd_raw(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&ZSTD_MAGIC);
    // Frame header descriptor: FCS field 4 bytes (flag 2), single segment.
    out.push(0xa0);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    if payload.is_empty() {
        out.extend_from_slice(&[1, 0, 0]);
        return;
    }
    let mut chunks = payload.chunks(MAX_BLOCK).peekable();
    while let Some(c) = chunks.next() {
        let last = chunks.peek().is_none() as u32;
        let h = last | ((c.len() as u32) << 3);
        out.extend_from_slice(&h.to_le_bytes()[..3]);
        out.extend_from_slice(c);
    }
}

/// Appends one framed map message: length prefix then the body.
pub fn emit_message(json: &[u8], zstd: bool, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    if zstd {
        emit_zstd_raw(json, out);
    } else {
        out.extend_from_slice(json);
    }
    let n = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&n.to_le_bytes());
}

#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    Truncated,
    TooLarge,
    /// Not a frame we can read: only raw and RLE blocks are supported here.
    Unsupported(&'static str),
}

/// Reads the length prefix: Some((len, rest)) when the whole message is present.
pub fn split_message(buf: &[u8]) -> Result<Option<(&[u8], usize)>, Error> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let n = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if n > MAX_MESSAGE {
        return Err(Error::TooLarge);
    }
    if buf.len() < 4 + n {
        return Ok(None);
    }
    Ok(Some((&buf[4..4 + n], 4 + n)))
}

/// Decodes a zstd frame made of raw/RLE blocks (what our server and the
/// test client produce). Compressed blocks are refused.
pub fn decode_zstd_raw(frame: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    if frame.len() < 5 || frame[..4] != ZSTD_MAGIC {
        return Err(Error::Unsupported("magic"));
    }
    let fhd = frame[4];
    if fhd & 0x08 != 0 || fhd & 0x03 != 0 {
        return Err(Error::Unsupported("reserved bit or dictionary"));
    }
    let single = fhd & 0x20 != 0;
    let fcs_len = match fhd >> 6 {
        0 => usize::from(single),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let mut i = 5 + usize::from(!single) + fcs_len;
    let checksum = fhd & 0x04 != 0;
    loop {
        let h = frame.get(i..i + 3).ok_or(Error::Truncated)?;
        let h = u32::from_le_bytes([h[0], h[1], h[2], 0]);
        i += 3;
        let last = h & 1 == 1;
        let size = (h >> 3) as usize;
        if size > MAX_BLOCK || out.len() + size > MAX_MESSAGE {
            return Err(Error::TooLarge);
        }
        match (h >> 1) & 3 {
            0 => {
                out.extend_from_slice(frame.get(i..i + size).ok_or(Error::Truncated)?);
                i += size;
            }
            1 => {
                let b = *frame.get(i).ok_or(Error::Truncated)?;
                out.resize(out.len() + size, b);
                i += 1;
            }
            _ => return Err(Error::Unsupported("compressed block")),
        }
        if last {
            break;
        }
    }
    if checksum {
        i += 4;
    }
    if i > frame.len() {
        return Err(Error::Truncated);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_vector() {
        // protocol/map.md §2.1 example, byte for byte.
        let mut v = Vec::new();
        emit_message(br#"{"KeepAlive":true}"#, true, &mut v);
        let mut want = vec![
            0x1e, 0, 0, 0, 0x28, 0xb5, 0x2f, 0xfd, 0xa0, 0x12, 0, 0, 0, 0x91, 0, 0,
        ];
        want.extend_from_slice(br#"{"KeepAlive":true}"#);
        assert_eq!(v, want);
    }

    #[test]
    fn multi_block_round_trip() {
        let payload: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
        let mut v = Vec::new();
        emit_message(&payload, true, &mut v);
        let (body, used) = split_message(&v).unwrap().unwrap();
        assert_eq!(used, v.len());
        let mut out = Vec::new();
        decode_zstd_raw(body, &mut out).unwrap();
        assert_eq!(out, payload);
        let mut e = Vec::new();
        emit_zstd_raw(b"", &mut e);
        let mut out = Vec::new();
        decode_zstd_raw(&e, &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(split_message(&v[..10]).unwrap(), None);
        assert_eq!(
            decode_zstd_raw(&body[..body.len() - 1], &mut out),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn plain_json_when_not_asked() {
        let mut v = Vec::new();
        emit_message(b"{}", false, &mut v);
        assert_eq!(v, b"\x02\x00\x00\x00{}");
    }
}
