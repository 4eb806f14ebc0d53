//! Fuzz the relay's connection handling: a client stream made of an
//! optional valid handshake followed by arbitrary bytes, run through
//! `serve_derp_conn` to completion. It must never panic or hang.
//!
//! The relay and codec are included by path with a `wire` module standing
//! in for the crate's, so only the relay's own dependencies are built
//! (not redb, h2, rustls…).
//!
//! First input byte picks the mode: 0 = raw bytes from the start (fuzzes
//! the handshake), 1 = valid plain client, 2 = valid mesh client (reaches
//! WatchConns / ClosePeer / ForwardPacket).
#![no_main]

#[path = "../../src/wire/derp.rs"]
#[allow(dead_code)]
pub mod derp_codec;

/// Stands in for `crate::wire` so `server.rs` resolves `crate::wire::derp`.
mod wire {
    pub use super::derp_codec as derp;
}

/// `server.rs` resolves `crate::ratelimit` for its refusal log line.
#[path = "../../src/ratelimit.rs"]
#[allow(dead_code)]
mod ratelimit;

#[path = "../../src/derp/server.rs"]
#[allow(dead_code)]
mod server;

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use crypto_box::aead::Aead;
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use futures_lite::io::{AsyncRead, AsyncWrite};
use libfuzzer_sys::fuzz_target;
use server::DerpServer;
use wire::derp::Repr;

const MESH: [u8; 32] = [0x42; 32];

/// Reads come from `input` (then EOF); writes are accepted and dropped.
struct Mem {
    input: Vec<u8>,
    pos: usize,
}

impl AsyncRead for Mem {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.input.len() - self.pos);
        buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Mem {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

struct Fixture {
    server: Arc<DerpServer>,
    plain_hello: Vec<u8>,
    mesh_hello: Vec<u8>,
}

fn hello(server_pub: [u8; 32], seed: u8, json: &str) -> Vec<u8> {
    let secret = SecretKey::from_bytes([seed; 32]);
    let b = SalsaBox::new(&PublicKey::from_bytes(server_pub), &secret);
    let nonce = [seed; 24];
    let sealed = b.encrypt(&nonce.into(), json.as_bytes()).expect("seal");
    Repr::ClientInfo {
        key: secret.public_key().to_bytes(),
        nonce,
        sealed: &sealed,
    }
    .to_vec()
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let server = Arc::new(DerpServer::new([7; 32]).with_mesh_key(MESH));
        let pk = server.public_key();
        let mesh_hex: String = MESH.iter().map(|b| format!("{b:02x}")).collect();
        Fixture {
            plain_hello: hello(pk, 1, r#"{"version":2,"CanAckPings":true}"#),
            mesh_hello: hello(pk, 2, &format!(r#"{{"version":2,"meshKey":"{mesh_hex}"}}"#)),
            server,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let mut input = match mode % 3 {
        0 => Vec::new(),
        1 => f.plain_hello.clone(),
        _ => f.mesh_hello.clone(),
    };
    input.extend_from_slice(rest);
    let stream = Mem { input, pos: 0 };
    // Ends at EOF of the input at the latest; errors are expected.
    let _ = async_io::block_on(server::serve_derp_conn(stream, f.server.clone()));
    assert!(
        f.server.connected_keys().is_empty(),
        "connection left registered"
    );
});
