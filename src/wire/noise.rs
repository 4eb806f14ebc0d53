//! ts2021 Noise framing (protocol/noise.md §4–§6): the 101-byte initiation
//! carried in the upgrade header, the 51-byte response, the error frame and
//! the 3-byte record header. Everything here is big-endian.

/// Message types of the controlbase framing.
pub const TYPE_INITIATION: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;
pub const TYPE_ERROR: u8 = 3;
pub const TYPE_RECORD: u8 = 4;

/// Length of a whole initiation message, header included.
pub const INITIATION_LEN: usize = 101;
/// Noise IK message 1 with an empty payload.
pub const INITIATION_PAYLOAD_LEN: usize = 96;
pub const RESPONSE_LEN: usize = 51;
pub const RESPONSE_PAYLOAD_LEN: usize = 48;
/// Maximum record on the wire, header included: the Go reader kills the
/// connection on anything larger.
pub const MAX_RECORD_LEN: usize = 4096;
pub const RECORD_HEADER_LEN: usize = 3;
pub const TAG_LEN: usize = 16;
/// Largest plaintext carried by one record.
pub const MAX_PLAINTEXT_LEN: usize = MAX_RECORD_LEN - RECORD_HEADER_LEN - TAG_LEN;

#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// Wrong length, type or payload-length field.
    Malformed(&'static str),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Malformed(s) => write!(f, "malformed noise message: {s}"),
        }
    }
}

/// A checked view of the client's initiation message.
pub struct Initiation<'a> {
    buf: &'a [u8],
}

impl<'a> Initiation<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        if buf.len() != INITIATION_LEN {
            return Err(Error::Malformed("initiation length"));
        }
        if buf[2] != TYPE_INITIATION {
            return Err(Error::Malformed("initiation type"));
        }
        if u16::from_be_bytes([buf[3], buf[4]]) as usize != INITIATION_PAYLOAD_LEN {
            return Err(Error::Malformed("initiation payload length"));
        }
        Ok(Initiation { buf })
    }
    /// The client's capability version (also the Noise prologue's version).
    pub fn version(&self) -> u16 {
        u16::from_be_bytes([self.buf[0], self.buf[1]])
    }
    /// The standard Noise IK message 1.
    pub fn noise_message(&self) -> &'a [u8] {
        &self.buf[5..]
    }
    /// Builds an initiation from a Noise message 1 (test client side).
    pub fn emit(version: u16, noise_msg: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if noise_msg.len() != INITIATION_PAYLOAD_LEN {
            return Err(Error::Malformed("initiation payload length"));
        }
        out.extend_from_slice(&version.to_be_bytes());
        out.push(TYPE_INITIATION);
        out.extend_from_slice(&(INITIATION_PAYLOAD_LEN as u16).to_be_bytes());
        out.extend_from_slice(noise_msg);
        Ok(())
    }
}

/// The server's 51-byte response: `02 00 30` + Noise IK message 2.
pub struct Response<'a> {
    buf: &'a [u8],
}

impl<'a> Response<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        if buf.len() != RESPONSE_LEN
            || buf[0] != TYPE_RESPONSE
            || u16::from_be_bytes([buf[1], buf[2]]) as usize != RESPONSE_PAYLOAD_LEN
        {
            return Err(Error::Malformed("response"));
        }
        Ok(Response { buf })
    }
    pub fn noise_message(&self) -> &'a [u8] {
        &self.buf[3..]
    }
    pub fn emit(noise_msg: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if noise_msg.len() != RESPONSE_PAYLOAD_LEN {
            return Err(Error::Malformed("response payload length"));
        }
        out.push(TYPE_RESPONSE);
        out.extend_from_slice(&(RESPONSE_PAYLOAD_LEN as u16).to_be_bytes());
        out.extend_from_slice(noise_msg);
        Ok(())
    }
}

/// Error frame sent instead of a response: unauthenticated text the client
/// shows as `server error: "<text>"`. Keep it short and constant.
pub fn emit_error(text: &str, out: &mut Vec<u8>) {
    let t = &text.as_bytes()[..text.len().min(1024)];
    out.push(TYPE_ERROR);
    out.extend_from_slice(&(t.len() as u16).to_be_bytes());
    out.extend_from_slice(t);
}

/// A 3-byte record header: type 4 and the ciphertext length.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct RecordHeader {
    pub len: usize,
}

impl RecordHeader {
    pub fn parse(buf: &[u8; RECORD_HEADER_LEN]) -> Result<Self, Error> {
        if buf[0] != TYPE_RECORD {
            return Err(Error::Malformed("record type"));
        }
        let len = u16::from_be_bytes([buf[1], buf[2]]) as usize;
        if !(TAG_LEN..=MAX_RECORD_LEN - RECORD_HEADER_LEN).contains(&len) {
            return Err(Error::Malformed("record length"));
        }
        Ok(RecordHeader { len })
    }
    pub fn emit(&self) -> [u8; RECORD_HEADER_LEN] {
        let l = (self.len as u16).to_be_bytes();
        [TYPE_RECORD, l[0], l[1]]
    }
}

/// The transport nonce: 4 zero bytes then the counter BIG-endian (unlike the
/// Noise spec and snow, which are little-endian — trap 1).
pub fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initiation_checks() {
        let mut v = Vec::new();
        Initiation::emit(130, &[7u8; 96], &mut v).unwrap();
        assert_eq!(&v[..5], &[0, 0x82, 1, 0, 0x60]);
        let i = Initiation::parse(&v).unwrap();
        assert_eq!(i.version(), 130);
        assert_eq!(i.noise_message(), &[7u8; 96][..]);
        assert!(Initiation::parse(&v[..100]).is_err());
        v[2] = 2;
        assert!(Initiation::parse(&v).is_err());
        v[2] = 1;
        v[4] = 0x61;
        assert!(Initiation::parse(&v).is_err());
    }

    #[test]
    fn record_header_bounds() {
        assert_eq!(RecordHeader::parse(&[4, 0x0f, 0xfd]).unwrap().len, 4093);
        assert!(RecordHeader::parse(&[4, 0x0f, 0xfe]).is_err());
        assert!(RecordHeader::parse(&[5, 0, 16]).is_err());
        assert!(RecordHeader::parse(&[4, 0, 15]).is_err());
        assert_eq!(RecordHeader { len: 300 }.emit(), [4, 1, 44]);
        assert_eq!(nonce(1), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn error_frame() {
        let mut v = Vec::new();
        emit_error("too old", &mut v);
        assert_eq!(v, b"\x03\x00\x07too old");
    }
}
