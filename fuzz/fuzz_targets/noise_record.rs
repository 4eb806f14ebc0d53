//! Fuzz the Noise record layer (`NoiseStream`'s read side) fed arbitrary
//! bytes: it must return plaintext, end of stream or an error, never panic
//! and never hang. First byte = mode: 0 feeds the input as ciphertext from
//! the start; 1 encrypts the input as valid records (our own writer), then
//! flips the byte at the position the second input byte names (if any):
//! unmodified, the reader must return exactly the plaintext; modified, it
//! must fail (authentication) instead of returning altered bytes.
//!
//! `src/noise.rs` and its record codec are included by path, with a `wire`
//! module standing in for the crate's, so only snow/chacha20poly1305 are
//! built, not the main crate.
#![no_main]

#[path = "../../src/wire/noise.rs"]
#[allow(dead_code)]
pub mod noise_codec;

/// Stands in for `crate::wire` so `noise.rs` resolves `crate::wire::noise`.
mod wire {
    pub use super::noise_codec as noise;
}

#[path = "../../src/noise.rs"]
#[allow(dead_code)]
mod noise;

use futures_lite::io::{AsyncRead, AsyncWrite};
use libfuzzer_sys::fuzz_target;
use noise::{NoiseStream, TransportKeys};
use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Reads come from `input` (then EOF); writes go to `out`.
struct Mem {
    input: Vec<u8>,
    pos: usize,
    out: Rc<RefCell<Vec<u8>>>,
}

impl AsyncRead for Mem {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        // Small, uneven reads exercise record reassembly.
        let n = b
            .len()
            .min(self.input.len() - self.pos)
            .min(1 + self.pos % 7);
        let p = self.pos;
        b[..n].copy_from_slice(&self.input[p..p + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Mem {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.out.borrow_mut().extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

const A: [u8; 32] = [0x11; 32];
const B: [u8; 32] = [0x22; 32];

/// Everything the reader returns until EOF or an error (bounded by input).
fn read_all(input: Vec<u8>) -> io::Result<Vec<u8>> {
    let keys = TransportKeys { rx: A, tx: B };
    let limit = input.len();
    let mem = Mem {
        input,
        pos: 0,
        out: Rc::default(),
    };
    let mut s = NoiseStream::new(mem, &keys, Vec::new());
    let mut cx = Context::from_waker(Waker::noop());
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..=limit + 1 {
        match s.poll_read_plain(&mut cx, &mut buf) {
            Poll::Ready(Ok(0)) => return Ok(got),
            Poll::Ready(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                assert!(got.len() <= limit, "more plaintext than input");
            }
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => panic!("pending on an in-memory stream"),
        }
    }
    panic!("no end after {limit} reads");
}

fn encrypt(plain: &[u8]) -> Vec<u8> {
    let keys = TransportKeys { rx: B, tx: A };
    let out: Rc<RefCell<Vec<u8>>> = Rc::default();
    let mem = Mem {
        input: Vec::new(),
        pos: 0,
        out: out.clone(),
    };
    let mut s = NoiseStream::new(mem, &keys, Vec::new());
    let mut cx = Context::from_waker(Waker::noop());
    let mut off = 0;
    while off < plain.len() {
        match s.poll_write_plain(&mut cx, &plain[off..]) {
            Poll::Ready(Ok(n)) => off += n,
            other => panic!("write: {other:?}"),
        }
        let _ = s.poll_flush_all(&mut cx);
    }
    let _ = s.poll_flush_all(&mut cx);
    drop(s);
    out.take()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let _ = read_all(rest.to_vec());
        return;
    }
    let Some((&at, plain)) = rest.split_first() else {
        return;
    };
    let mut wire = encrypt(plain);
    if at == 0 || wire.is_empty() {
        assert_eq!(read_all(wire).expect("valid records read back"), plain);
    } else {
        let i = (at as usize * 131) % wire.len();
        wire[i] ^= 0x80;
        if let Ok(got) = read_all(wire) {
            // A flipped bit in a length prefix may only cut the stream short.
            assert!(plain.starts_with(&got), "altered plaintext accepted");
        }
    }
});
