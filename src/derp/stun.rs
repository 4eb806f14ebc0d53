//! The STUN responder: one UDP socket answering Binding Requests.
//!
//! Clients send their probes from the WireGuard socket and learn the
//! `ip:port` we saw, so the reply must leave from the socket that received the
//! request and go to the source exactly as observed. Everything else arriving
//! on the port is dropped without a word: answering garbage would make us a
//! traffic reflector.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use async_io::{Async, Timer};

use crate::wire::stun::{self, MAX_MESSAGE_LEN};

/// A running STUN responder. Dropping it stops the responder; call
/// [`StunServer::detach`] to keep it running for the life of the process.
#[derive(Debug)]
pub struct StunServer {
    local_addr: SocketAddr,
    task: smol::Task<()>,
}

impl StunServer {
    /// The bound address (useful when binding port 0 in tests).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Let the responder run until the process exits.
    pub fn detach(self) {
        self.task.detach();
    }
}

/// Bind `addr` and answer STUN Binding Requests on smol's global executor.
///
/// Binding `[::]:port` gives a dual-stack socket on Linux; IPv4 clients then
/// appear v4-mapped and are answered with an IPv4 XOR-MAPPED-ADDRESS.
pub fn spawn_stun(addr: SocketAddr) -> io::Result<StunServer> {
    let socket = Async::<UdpSocket>::bind(addr)?;
    let local_addr = socket.get_ref().local_addr()?;
    let task = smol::spawn(serve(socket));
    Ok(StunServer { local_addr, task })
}

/// Serve STUN on an already-bound socket until the future is dropped.
pub async fn serve(socket: Async<UdpSocket>) {
    // One byte more than the largest message we accept, so an oversized
    // datagram (truncated by the kernel to fit) still fails the length check
    // instead of being mistaken for a shorter valid one.
    let mut buf = [0u8; MAX_MESSAGE_LEN + 1];
    // Largest response: header + XOR-MAPPED-ADDRESS for IPv6.
    let mut out = [0u8; stun::HEADER_LEN + 4 + 20];
    let mut since_yield = 0u32;
    loop {
        // Under a flood recv_from never returns Pending; take turns with the
        // other tasks on this executor thread.
        since_yield += 1;
        if since_yield >= 64 {
            since_yield = 0;
            futures_lite::future::yield_now().await;
        }
        let (n, src) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier sends surface here on some
                // systems; they are not fatal. Pause briefly so a persistent
                // error cannot spin the CPU.
                log::debug!("stun: recv error: {e}");
                Timer::after(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(len) = stun::respond(&buf[..n], src, &mut out) else {
            continue;
        };
        // Non-blocking send: if the kernel buffer is full, dropping the reply
        // is better than stalling every other client behind this one; the
        // client retries its probe.
        if let Err(e) = socket.get_ref().send_to(&out[..len], src) {
            log::debug!("stun: send to {src} failed: {e}");
        }
    }
}
