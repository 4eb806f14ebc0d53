//! The ts2021 Noise layer: the IK handshake (snow, byte-identical to the Go
//! client) and our own transport record layer, because the client's record
//! nonce is big-endian where snow's is little-endian (protocol trap 1).
//!
//! `NoiseStream` carries the decrypted byte stream as a futures-io
//! `AsyncRead`/`AsyncWrite` (what the HTTP/2 driver runs on); underneath it
//! polls any futures-io stream (an `async_io::Async<TcpStream>`).

use crate::wire::noise::{self as wn, RecordHeader, MAX_PLAINTEXT_LEN, RECORD_HEADER_LEN, TAG_LEN};
use futures_lite::io::{AsyncRead as FRead, AsyncWrite as FWrite};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tinyscale_aead::Aead;

const PROTOCOL: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

fn prologue(version: u16) -> Vec<u8> {
    format!("Tailscale Control Protocol v{version}").into_bytes()
}

fn params() -> snow::params::NoiseParams {
    // A constant, valid protocol name: parsing cannot fail.
    PROTOCOL.parse().expect("valid noise protocol name")
}

#[derive(Debug)]
pub enum HandshakeError {
    Malformed(wn::Error),
    /// Decryption failed: wrong server key, or a prologue/version mismatch.
    Crypto,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Malformed(e) => e.fmt(f),
            HandshakeError::Crypto => f.write_str("noise handshake failed (wrong key or version)"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Directional transport keys after the handshake.
#[derive(Clone)]
pub struct TransportKeys {
    pub rx: [u8; 32],
    pub tx: [u8; 32],
}

/// The result of accepting a client's initiation.
pub struct Accepted {
    pub version: u16,
    /// The client's static key: its machine key.
    pub machine_key: [u8; 32],
    /// The 51-byte response message to send after the 101 headers.
    pub response: Vec<u8>,
    pub keys: TransportKeys,
}

/// Server side: processes the 101-byte initiation and builds the response.
pub fn accept(server_private: &[u8; 32], init: &[u8]) -> Result<Accepted, HandshakeError> {
    accept_with(server_private, init, None)
}

fn accept_with(
    server_private: &[u8; 32],
    init: &[u8],
    fixed_ephemeral: Option<&[u8; 32]>,
) -> Result<Accepted, HandshakeError> {
    let msg = wn::Initiation::parse(init).map_err(HandshakeError::Malformed)?;
    let pro = prologue(msg.version());
    let mut b = snow::Builder::new(params())
        .local_private_key(server_private)
        .and_then(|b| b.prologue(&pro))
        .map_err(|_| HandshakeError::Crypto)?;
    if let Some(e) = fixed_ephemeral {
        b = b.fixed_ephemeral_key_for_testing_only(e);
    }
    let mut hs = b.build_responder().map_err(|_| HandshakeError::Crypto)?;
    let mut payload = [0u8; 128];
    let n = hs
        .read_message(msg.noise_message(), &mut payload)
        .map_err(|_| HandshakeError::Crypto)?;
    if n != 0 {
        return Err(HandshakeError::Malformed(wn::Error::Malformed(
            "non-empty payload",
        )));
    }
    let machine_key: [u8; 32] = hs
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or(HandshakeError::Crypto)?;
    let mut out = [0u8; 128];
    let n = hs
        .write_message(&[], &mut out)
        .map_err(|_| HandshakeError::Crypto)?;
    let mut response = Vec::with_capacity(wn::RESPONSE_LEN);
    wn::Response::emit(&out[..n], &mut response).map_err(HandshakeError::Malformed)?;
    let (k1, k2) = hs.dangerously_get_raw_split();
    Ok(Accepted {
        version: msg.version(),
        machine_key,
        response,
        keys: TransportKeys { rx: k1, tx: k2 },
    })
}

/// Client side of the handshake (the protocol-level test client).
pub struct Initiator {
    hs: snow::HandshakeState,
}

impl Initiator {
    /// Returns the initiator and the 101-byte initiation message.
    pub fn start(
        machine_private: &[u8; 32],
        server_public: &[u8; 32],
        version: u16,
    ) -> Result<(Initiator, Vec<u8>), HandshakeError> {
        Self::start_with(machine_private, server_public, version, None)
    }

    fn start_with(
        machine_private: &[u8; 32],
        server_public: &[u8; 32],
        version: u16,
        fixed_ephemeral: Option<&[u8; 32]>,
    ) -> Result<(Initiator, Vec<u8>), HandshakeError> {
        let pro = prologue(version);
        let mut b = snow::Builder::new(params())
            .local_private_key(machine_private)
            .and_then(|b| b.prologue(&pro))
            .and_then(|b| b.remote_public_key(server_public))
            .map_err(|_| HandshakeError::Crypto)?;
        if let Some(e) = fixed_ephemeral {
            b = b.fixed_ephemeral_key_for_testing_only(e);
        }
        let mut hs = b.build_initiator().map_err(|_| HandshakeError::Crypto)?;
        let mut out = [0u8; 128];
        let n = hs
            .write_message(&[], &mut out)
            .map_err(|_| HandshakeError::Crypto)?;
        let mut init = Vec::with_capacity(wn::INITIATION_LEN);
        wn::Initiation::emit(version, &out[..n], &mut init).map_err(HandshakeError::Malformed)?;
        Ok((Initiator { hs }, init))
    }

    /// Consumes the server's 51-byte response.
    pub fn finish(mut self, response: &[u8]) -> Result<TransportKeys, HandshakeError> {
        let r = wn::Response::parse(response).map_err(HandshakeError::Malformed)?;
        let mut payload = [0u8; 64];
        self.hs
            .read_message(r.noise_message(), &mut payload)
            .map_err(|_| HandshakeError::Crypto)?;
        let (k1, k2) = self.hs.dangerously_get_raw_split();
        Ok(TransportKeys { rx: k2, tx: k1 })
    }
}

/// One direction of the record layer: a key and its big-endian counter.
pub struct CipherState {
    aead: Aead,
    counter: u64,
}

impl CipherState {
    pub fn new(key: &[u8; 32]) -> Self {
        CipherState {
            aead: Aead::new(key),
            counter: 0,
        }
    }

    fn next_nonce(&mut self) -> io::Result<[u8; 12]> {
        if self.counter == u64::MAX {
            return Err(io::Error::other("noise nonce exhausted"));
        }
        let n = wn::nonce(self.counter);
        self.counter += 1;
        Ok(n)
    }

    /// Appends one record (header + ciphertext + tag) holding `plain` (≤ 4077 bytes).
    pub fn seal_record(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let at = out.len();
        out.extend_from_slice(&[0; RECORD_HEADER_LEN]);
        out.extend_from_slice(plain);
        self.seal_tail(out, at)
    }

    /// Seals the record whose header starts at `out[at]`: its plaintext
    /// (≤ 4077 bytes) follows the header's place up to the end of `out`.
    fn seal_tail(&mut self, out: &mut Vec<u8>, at: usize) -> io::Result<()> {
        let start = at + RECORD_HEADER_LEN;
        debug_assert!(out.len() - start <= MAX_PLAINTEXT_LEN);
        let nonce = self.next_nonce()?;
        let hdr = RecordHeader {
            len: out.len() - start + TAG_LEN,
        }
        .emit();
        out[at..start].copy_from_slice(&hdr);
        let tag = self
            .aead
            .seal(&nonce, &mut out[start..])
            .map_err(|_| io::Error::other("noise encrypt failed"))?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Decrypts a record body (ciphertext ‖ tag) in place; returns the plaintext length.
    pub fn open_record(&mut self, body: &mut [u8]) -> io::Result<usize> {
        if body.len() < TAG_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "short noise record",
            ));
        }
        let nonce = self.next_nonce()?;
        let (ct, tag) = body.split_at_mut(body.len() - TAG_LEN);
        let tag: &[u8; TAG_LEN] = (&*tag)
            .try_into()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "short noise record"))?;
        self.aead.open(&nonce, ct, tag).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "noise record decryption failed")
        })?;
        Ok(ct.len())
    }
}

/// Encrypted records written out before `poll_write` asks the caller to wait.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// A Noise transport over `S`, exposing the plaintext stream.
pub struct NoiseStream<S> {
    inner: S,
    rx: CipherState,
    tx: CipherState,
    /// Read buffer: `rbuf[..filled]` holds what was read. Records are
    /// decrypted in place and their plaintext handed out from here
    /// (`rbuf[pbeg..pend]`), so the hot path copies bytes once, into the
    /// caller's buffer. `rbuf[rpos..filled]` is ciphertext not yet a whole
    /// record. Empty (no allocation) while the connection is idle.
    rbuf: Vec<u8>,
    filled: usize,
    rpos: usize,
    pbeg: usize,
    pend: usize,
    /// Sealed records not yet written: `wbuf[wpos..]`.
    wbuf: Vec<u8>,
    wpos: usize,
    eof: bool,
}

impl<S> NoiseStream<S> {
    /// `leftover`: bytes already read from `inner` past the handshake.
    pub fn new(inner: S, keys: &TransportKeys, leftover: Vec<u8>) -> Self {
        NoiseStream {
            inner,
            rx: CipherState::new(&keys.rx),
            tx: CipherState::new(&keys.tx),
            filled: leftover.len(),
            rbuf: leftover,
            rpos: 0,
            pbeg: 0,
            pend: 0,
            wbuf: Vec::new(),
            wpos: 0,
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Decrypts the next whole record of `rbuf` in place, if present, and
    /// makes its plaintext the bytes to hand out.
    fn decrypt_one(&mut self) -> io::Result<bool> {
        let avail = &self.rbuf[self.rpos..self.filled];
        if avail.len() < RECORD_HEADER_LEN {
            return Ok(false);
        }
        let hdr = [avail[0], avail[1], avail[2]];
        let h = RecordHeader::parse(&hdr)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let total = RECORD_HEADER_LEN + h.len;
        if avail.len() < total {
            return Ok(false);
        }
        let body = self.rpos + RECORD_HEADER_LEN;
        let n = self
            .rx
            .open_record(&mut self.rbuf[body..self.rpos + total])?;
        self.pbeg = body;
        self.pend = body + n;
        self.rpos += total;
        Ok(true)
    }

    /// Makes room to read: moves the partial record (always shorter than a
    /// record) to the front and sizes the buffer for what the next read
    /// needs: the rest of the record when its header is in, otherwise a
    /// small first read ([`FIRST_READ`]) that holds a typical control record
    /// (WINDOW_UPDATE, PING) whole. A connection that was idle thus
    /// zero-fills a few dozen bytes per small record, not 8 KiB.
    fn compact(&mut self) {
        let left = self.filled - self.rpos;
        if left == 0 {
            self.filled = 0;
            self.rpos = 0;
        } else if self.rpos > 0 {
            self.rbuf.copy_within(self.rpos..self.filled, 0);
            self.filled = left;
            self.rpos = 0;
        }
        self.pbeg = 0;
        self.pend = 0;
        // decrypt_one has checked this header (a bad one is an error there)
        // and found the record incomplete, so the record ends past
        // `filled`, within MAX_RECORD_LEN; the max() keeps the read slice
        // non-empty regardless.
        let need = match self.rbuf.get(..RECORD_HEADER_LEN) {
            Some(&[a, b, c]) if self.filled >= RECORD_HEADER_LEN => {
                RecordHeader::parse(&[a, b, c]).map_or(FIRST_READ, |h| RECORD_HEADER_LEN + h.len)
            }
            _ => FIRST_READ,
        }
        .max(self.filled + 1);
        if self.rbuf.capacity() == 0 {
            // One size for every allocation (a record's maximum), whatever
            // the record: the allocator hands the same chunk back and forth
            // instead of fragmenting the heap with a spread of sizes.
            self.rbuf.reserve_exact(wn::MAX_RECORD_LEN);
        }
        if self.rbuf.len() < need {
            self.rbuf.resize(need, 0);
        }
    }

    /// Gives the buffer back while nothing is buffered: idle connections
    /// (most of them, most of the time) hold no read buffer.
    fn release_if_empty(&mut self) {
        if self.filled == self.rpos && self.pbeg == self.pend {
            self.rbuf = Vec::new();
            self.filled = 0;
            self.rpos = 0;
            self.pbeg = 0;
            self.pend = 0;
        }
    }
}

/// First read into an empty buffer: a whole small record (header, a
/// 13-byte WINDOW_UPDATE or 17-byte PING frame, tag) and then some.
const FIRST_READ: usize = 64;

impl<S: FRead + FWrite + Unpin> NoiseStream<S> {
    fn poll_flush_wbuf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        // Everything is written: give the buffer back. Idle connections
        // (most of them) then hold none; a write allocates one sized for it.
        self.wbuf = Vec::new();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads plaintext into `dst`; 0 means end of stream.
    pub fn poll_read_plain(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.pbeg < self.pend {
                let n = dst.len().min(self.pend - self.pbeg);
                dst[..n].copy_from_slice(&self.rbuf[self.pbeg..self.pbeg + n]);
                self.pbeg += n;
                return Poll::Ready(Ok(n));
            }
            if self.decrypt_one()? {
                continue; // zero-length records are legal and skipped
            }
            if self.eof {
                return Poll::Ready(Ok(0));
            }
            self.compact();
            let filled = self.filled;
            match Pin::new(&mut self.inner).poll_read(cx, &mut self.rbuf[filled..]) {
                Poll::Pending => {
                    self.release_if_empty();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => {
                    if self.filled > self.rpos {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    self.eof = true;
                    self.release_if_empty();
                }
                Poll::Ready(Ok(n)) => self.filled += n,
            }
        }
    }

    pub fn poll_write_plain(
        &mut self,
        cx: &mut Context<'_>,
        src: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_parts(cx, &[io::IoSlice::new(src)])
    }

    /// Seals the concatenation of `bufs` into records (up to the write
    /// high-water mark) and writes out what the socket takes: a frame
    /// header and its payload given apart share one record and one write,
    /// as one buffer would, without being copied together first.
    pub fn poll_write_parts(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.wbuf.len() - self.wpos >= WRITE_HIGH_WATER {
            ready!(self.poll_flush_wbuf(cx))?;
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let room = WRITE_HIGH_WATER.saturating_sub(self.wbuf.len() - self.wpos);
        let records = total.min(room).div_ceil(MAX_PLAINTEXT_LEN).max(1);
        self.wbuf
            .reserve(total.min(room) + records * (RECORD_HEADER_LEN + TAG_LEN));
        let (mut taken, mut i, mut off) = (0, 0, 0);
        while taken < total && self.wbuf.len() - self.wpos < WRITE_HIGH_WATER {
            let n = (total - taken).min(MAX_PLAINTEXT_LEN);
            let at = self.wbuf.len();
            self.wbuf.extend_from_slice(&[0; RECORD_HEADER_LEN]);
            let mut need = n;
            while need > 0 {
                let b = &bufs[i][off..];
                let k = b.len().min(need);
                self.wbuf.extend_from_slice(&b[..k]);
                need -= k;
                off += k;
                if off == bufs[i].len() {
                    i += 1;
                    off = 0;
                }
            }
            self.tx.seal_tail(&mut self.wbuf, at)?;
            taken += n;
        }
        // Opportunistic write-out; the bytes are accepted either way.
        if let Poll::Ready(Err(e)) = self.poll_flush_wbuf(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    pub fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flush_wbuf(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    pub fn poll_close_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flush_wbuf(cx))?;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

impl<S: FRead + FWrite + Unpin> FRead for NoiseStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_read_plain(cx, buf)
    }
}

impl<S: FRead + FWrite + Unpin> FWrite for NoiseStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_plain(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_parts(cx, bufs)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_all(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_close_all(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{from_hex, to_hex};
    use crate::wire::test_hex as h;

    /// protocol/noise.md §8 vectors (capver 130).
    #[test]
    fn handshake_and_records_match_vectors() {
        let server =
            from_hex::<32>("0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20")
                .unwrap();
        let client =
            from_hex::<32>("2122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40")
                .unwrap();
        let ceph =
            from_hex::<32>("4142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f60")
                .unwrap();
        let seph =
            from_hex::<32>("6162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f80")
                .unwrap();
        let server_pub = crate::keys::x25519_public(&server);
        let (ini, init) = Initiator::start_with(&client, &server_pub, 130, Some(&ceph)).unwrap();
        let want_init = h(
            "0082 01 0060 64b101b1d0be5a8704bd078f9895001fc03e8e9f9522f188dd128d9846d48466
            0806c371c2f5b89e49d5c606b01d6586a9712bf580bcfb3a6c2d1d66cc5a9591
            408e5c05c1173ab99f3225f4f6434f00 549771054b9963b6bfc7e2a99edb4c06",
        );
        assert_eq!(init, want_init);
        assert_eq!(
            crate::wire::base64::encode(&init),
            "AIIBAGBksQGx0L5ahwS9B4+YlQAfwD6On5Ui8YjdEo2YRtSEZggGw3HC9bieSdXGBrAdZYapcSv1gLz7OmwtHWbMWpWRQI5cBcEXOrmfMiX09kNPAFSXcQVLmWO2v8fiqZ7bTAY="
        );
        let acc = accept_with(&server, &init, Some(&seph)).unwrap();
        assert_eq!(acc.version, 130);
        assert_eq!(
            to_hex(&acc.machine_key),
            "5869aff450549732cbaaed5e5df9b30a6da31cb0e5742bad5ad4a1a768f1a67b"
        );
        assert_eq!(
            acc.response,
            h("02 0030 244fe3b963e899dd295baffce248d3530f3a9a7479ba063002680ebfe7adad49 57324e83f722058835b2229bbe82a1d8")
        );
        assert_eq!(
            to_hex(&acc.keys.rx),
            "d5e58dae60ff25cc337ac1ea707d6c02dd1de177f8bc6d566627fc383ac00af8"
        );
        assert_eq!(
            to_hex(&acc.keys.tx),
            "6efd2cd4516d87a0827fbc5863fa03c5d58eafd0da54497d5190362fe50b0f6f"
        );
        let ck = ini.finish(&acc.response).unwrap();
        assert_eq!(ck.tx, acc.keys.rx);
        assert_eq!(ck.rx, acc.keys.tx);

        // Client→server records with big-endian nonces 0, 1, 2.
        let mut c = CipherState::new(&ck.tx);
        let mut out = Vec::new();
        c.seal_record(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &mut out)
            .unwrap();
        assert_eq!(out, h("0400288b2e0c876dbab1a674906e8272135e34de154776d5d522b2c9c11610e77b6f7c6f4d0bf3d767307f"));
        out.clear();
        c.seal_record(b"second record", &mut out).unwrap();
        assert_eq!(
            out,
            h("04001de308291c858a4b9f0fbc60c7cded42fd35b60c6c517191e096a9c6926a")
        );
        out.clear();
        c.seal_record(b"third record", &mut out).unwrap();
        assert_eq!(
            out,
            h("04001c4e2d7a467a993c23e4078d3581159b5b9fbbf7e18caebb384d7e3e87")
        );

        // Server→client record #0 and #1 decrypt on the server's tx key.
        let mut s = CipherState::new(&acc.keys.tx);
        let mut out = Vec::new();
        s.seal_record(&h("ffffff5453000000027b7d"), &mut out)
            .unwrap();
        assert_eq!(
            out,
            h("04001b946cea560ed458b7061fbe2d0c2cfe8dceb2570c3789e91aebb64a")
        );
        let mut r = CipherState::new(&acc.keys.rx);
        let mut rec = h("04001dd47673e995b194f28c8135fb756836e1299b505c5b6b8edcf6ede9edd8");
        // A little-endian record #1 must fail after a good record #0.
        let mut first = h("0400288b2e0c876dbab1a674906e8272135e34de154776d5d522b2c9c11610e77b6f7c6f4d0bf3d767307f");
        assert!(r.open_record(&mut first[3..]).is_ok());
        assert!(r.open_record(&mut rec[3..]).is_err());
    }

    /// The real client's captured first contact (shared realclient vectors,
    /// copied into tests/vectors): its handshake decrypts to the machine key
    /// recorded in the capture.
    #[test]
    fn real_client_initiation() {
        let summary: serde_json::Value =
            serde_json::from_str(include_str!("../tests/vectors/summary.json")).unwrap();
        let init_b64 = include_str!("../tests/vectors/handshake_init.b64").trim();
        let init = crate::wire::base64::decode(init_b64).unwrap();
        let priv_hex = summary["control_private_key_hex_TEST_ONLY"]
            .as_str()
            .unwrap();
        let server = from_hex::<32>(priv_hex).unwrap();
        let acc = accept(&server, &init).unwrap();
        assert_eq!(acc.version, 130);
        let want = summary["client_machine_key"].as_str().unwrap();
        assert_eq!(format!("mkey:{}", to_hex(&acc.machine_key)), want);
    }

    /// A byte source that hands out its data in the given chunk sizes,
    /// answering Pending (and waking itself) between chunks, as a socket does.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        sizes: Vec<usize>,
        step: usize,
        pending_next: bool,
    }

    impl FRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            if self.pending_next {
                self.pending_next = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.pending_next = true;
            let size = self.sizes[self.step % self.sizes.len()];
            self.step += 1;
            let n = size.min(buf.len()).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Poll::Ready(Ok(n))
        }
    }

    impl FWrite for Chunked {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Records split at every possible boundary (one byte at a time, odd
    /// sizes, several records per read, a leftover from the handshake) come
    /// out as the same plaintext stream, zero-length records skipped; a
    /// truncated record is an error, a clean end is end of stream; the read
    /// buffer is released while idle.
    #[test]
    fn stream_reassembles_records_across_reads() {
        let key = [9u8; 32];
        let mut sealer = CipherState::new(&key);
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for (i, len) in [
            0usize,
            1,
            100,
            MAX_PLAINTEXT_LEN,
            0,
            7,
            3000,
            MAX_PLAINTEXT_LEN,
        ]
        .into_iter()
        .enumerate()
        {
            let plain: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            sealer.seal_record(&plain, &mut wire).unwrap();
            want.extend_from_slice(&plain);
        }
        for sizes in [
            vec![1],
            vec![3, 5000, 2, 8191],
            vec![1 << 20],
            vec![4096, 4095, 4097],
        ] {
            for leftover_len in [0usize, 2, 200, 5000] {
                let keys = TransportKeys {
                    rx: key,
                    tx: [0; 32],
                };
                let leftover = wire[..leftover_len].to_vec();
                let src = Chunked {
                    data: wire[leftover_len..].to_vec(),
                    pos: 0,
                    sizes: sizes.clone(),
                    step: 0,
                    pending_next: false,
                };
                let mut ns = NoiseStream::new(src, &keys, leftover);
                let mut got = Vec::new();
                let mut out = [0u8; 777];
                futures_lite::future::block_on(async {
                    loop {
                        let n =
                            futures_lite::future::poll_fn(|cx| ns.poll_read_plain(cx, &mut out))
                                .await
                                .unwrap();
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&out[..n]);
                    }
                });
                assert_eq!(
                    got.len(),
                    want.len(),
                    "sizes {sizes:?} leftover {leftover_len}"
                );
                assert!(got == want, "sizes {sizes:?} leftover {leftover_len}");
                assert_eq!(ns.rbuf.capacity(), 0, "buffer kept after the stream ended");
            }
        }
        // Truncated mid-record: an error, not a silent end.
        let keys = TransportKeys {
            rx: key,
            tx: [0; 32],
        };
        let src = Chunked {
            data: wire[..wire.len() - 5].to_vec(),
            pos: 0,
            sizes: vec![1000],
            step: 0,
            pending_next: false,
        };
        let mut ns = NoiseStream::new(src, &keys, Vec::new());
        let mut out = [0u8; 4096];
        let err = futures_lite::future::block_on(async {
            loop {
                match futures_lite::future::poll_fn(|cx| ns.poll_read_plain(cx, &mut out)).await {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(e) => return Some(e),
                }
            }
        });
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::UnexpectedEof));
    }

    /// The read buffer is filled as far as what arrives: small records (a client's
    /// WINDOW_UPDATE) cost a small buffer, a record split across reads
    /// (header split too) grows it to exactly that record, never beyond
    /// MAX_RECORD_LEN; between messages it holds nothing.
    #[test]
    fn read_buffer_fits_the_record() {
        let key = [5u8; 32];
        let mut sealer = CipherState::new(&key);
        let small: Vec<u8> = (0..13u8).collect();
        let big: Vec<u8> = (0..MAX_PLAINTEXT_LEN).map(|i| i as u8).collect();
        let mut small_rec = Vec::new();
        sealer.seal_record(&small, &mut small_rec).unwrap();
        // Each case is a fresh stream, whose first record has nonce 0.
        let mut big_rec = Vec::new();
        CipherState::new(&key)
            .seal_record(&big, &mut big_rec)
            .unwrap();
        let keys = TransportKeys {
            rx: key,
            tx: [0; 32],
        };
        for (sizes, wire, plain, bound) in [
            (vec![1 << 20], &small_rec, &small, FIRST_READ),
            (vec![2, 1, 5, 1 << 20], &small_rec, &small, FIRST_READ),
            (vec![1 << 20], &big_rec, &big, wn::MAX_RECORD_LEN),
            (vec![2, 700, 1, 1 << 20], &big_rec, &big, wn::MAX_RECORD_LEN),
        ] {
            let src = Chunked {
                data: wire.clone(),
                pos: 0,
                sizes: sizes.clone(),
                step: 0,
                pending_next: false,
            };
            let mut ns = NoiseStream::new(src, &keys, Vec::new());
            let mut got = Vec::new();
            let mut most = 0;
            let mut out = [0u8; 8192];
            futures_lite::future::block_on(async {
                loop {
                    let n = futures_lite::future::poll_fn(|cx| {
                        let r = ns.poll_read_plain(cx, &mut out);
                        most = most.max(ns.rbuf.len());
                        assert!(ns.rbuf.capacity() <= wn::MAX_RECORD_LEN, "{sizes:?}");
                        if r.is_pending() && ns.filled == ns.rpos {
                            assert_eq!(ns.rbuf.capacity(), 0, "idle buffer kept ({sizes:?})");
                        }
                        r
                    })
                    .await
                    .unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&out[..n]);
                }
            });
            assert!(&got == plain, "sizes {sizes:?}");
            // Bytes zero-filled (the buffer's length) per case.
            assert!(most > 0 && most <= bound, "{most} > {bound} ({sizes:?})");
        }
    }
}
