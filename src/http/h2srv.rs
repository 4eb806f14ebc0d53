//! HTTP/2 (prior knowledge) inside the Noise stream: our own driver
//! ([`super::h2conn`]) with the bounds below, handing each request to a
//! [`Handler`] (the control plane, given by the top-level room).

use super::h2conn::{Driver, Limits, Request, Responder};
use async_io::Timer;
use futures_lite::future::{self, FutureExt};
use futures_lite::io::{AsyncRead, AsyncWrite};
use log::debug;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted (Headscale's cap too); a register
/// request with a full Hostinfo is a few KB.
pub const MAX_BODY: usize = 1024 * 1024;

/// Request body bytes one connection may have buffered at once, all its
/// streams together. Bodies are buffered whole before they are parsed, and
/// an unauthenticated peer chooses them: with 64 streams × 1 MiB (the
/// limits before) one Noise handshake could pin 64 MiB. One maximal body
/// is the most a legitimate client ever needs.
pub const CONN_BODY_BUDGET: usize = MAX_BODY;

/// Streams a client may have open at once. The Go client uses one long
/// poll, a second while it replaces it, and short requests (register, lite
/// map updates, health, audit log) beside them.
pub const MAX_STREAMS: usize = 8;

/// The client's preface and SETTINGS must arrive within this of the
/// Noise handshake (the Go client sends them at once).
pub const PREFACE_DEADLINE: Duration = Duration::from_secs(10);
/// The first request must have started by then.
pub const FIRST_REQUEST_DEADLINE: Duration = Duration::from_secs(20);
/// A connection that has not identified a node by then (a register
/// request answered 200, or a map request for a node this machine key
/// owns) is closed once no request is in flight: otherwise anyone who
/// completes a handshake may hold a socket and its memory indefinitely.
pub const IDENTIFY_DEADLINE: Duration = Duration::from_secs(30);

/// What the server side of a control connection accepts.
pub static SERVER_LIMITS: Limits = Limits {
    max_streams: MAX_STREAMS,
    // What a stream may send before we read it: a request body arrives in
    // steps of this (we give it back as we buffer it).
    stream_window: 64 * 1024,
    conn_window_extra: 0,
    max_body: MAX_BODY,
    body_budget: CONN_BODY_BUDGET,
    // The Go client's request heads are ~200 bytes.
    max_header_list: 16 * 1024,
    max_header_block: 32 * 1024,
};

/// Per-connection identity, from the Noise handshake.
pub struct ConnCtx {
    /// The client's machine key: authoritative for who this is.
    pub machine_key: [u8; 32],
    pub version: u16,
    /// A request on this connection named a node it may act for.
    pub identified: AtomicBool,
    /// Source address (None for in-process callers).
    pub peer: Option<std::net::IpAddr>,
    /// The connection's charge against the caps on unidentified
    /// connections (`http::admission`), given back once identified.
    pub permit: std::sync::Mutex<crate::http::admission::Permit>,
}

impl ConnCtx {
    pub fn new(
        machine_key: [u8; 32],
        version: u16,
        peer: Option<std::net::IpAddr>,
        permit: crate::http::admission::Permit,
    ) -> ConnCtx {
        ConnCtx {
            machine_key,
            version,
            identified: AtomicBool::new(false),
            peer,
            permit: std::sync::Mutex::new(permit),
        }
    }
    pub fn set_identified(&self) {
        self.identified.store(true, Ordering::Relaxed);
        self.permit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release();
    }
}

fn timeout(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, why.to_string())
}

/// What serves the requests of a control connection: the control plane
/// (`/machine/*`), handed to the transport by the top-level room.
pub trait Handler: Send + Sync + 'static {
    /// Serves one request on a task of its own; an error is logged (debug).
    fn request(
        self: Arc<Self>,
        ctx: Arc<ConnCtx>,
        req: Request,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

pub async fn serve<S, H>(handler: Arc<H>, io: S, ctx: ConnCtx) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let driver = Driver::server(io, &SERVER_LIMITS);
    let watch = driver.watch();
    let ctx = Arc::new(ctx);
    let ctx2 = ctx.clone();
    let deadlines = async move {
        Timer::after(PREFACE_DEADLINE).await;
        if !watch.settled() {
            return Err(timeout("no HTTP/2 preface and SETTINGS"));
        }
        Timer::after(FIRST_REQUEST_DEADLINE - PREFACE_DEADLINE).await;
        if watch.requests() == 0 {
            return Err(timeout("no request"));
        }
        Timer::after(IDENTIFY_DEADLINE - FIRST_REQUEST_DEADLINE).await;
        // A request still being served (an interactive registration waiting
        // for approval) may identify the node when it completes.
        while !ctx2.identified.load(Ordering::Relaxed) {
            if watch.open_streams() == 0 {
                return Err(timeout("no node identified"));
            }
            Timer::after(Duration::from_secs(1)).await;
        }
        future::pending().await
    };
    driver
        .serve(|req| {
            let handler = handler.clone();
            let ctx = ctx.clone();
            smol::spawn(async move {
                if let Err(e) = handler.request(ctx, req).await {
                    debug!("request: {e}");
                }
            })
            .detach();
        })
        .or(deadlines)
        .await
}

/// Sends a complete response (a helper for the control handlers).
pub async fn reply(
    respond: &mut Responder,
    status: u16,
    ctype: &str,
    body: Vec<u8>,
) -> io::Result<()> {
    respond.reply(status, ctype, &body).await
}
