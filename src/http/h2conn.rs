//! A small HTTP/2 connection driver, both roles, over any byte stream
//! (the Noise transport in production, plain TCP in the conformance tests).
//!
//! Why not the `h2` crate: it keeps a fixed write buffer per connection
//! (16 KiB) and ~300 KB of code with its tokio shim; a router holding
//! thousands of idle long polls cannot afford either. Here a connection
//! between messages holds its HPACK table (we ask peers for size 0), the
//! windows and one small record per open stream: the read buffer is freed
//! whenever it holds no partial frame, the write queue whenever it drained.
//!
//! Shape: one driver task reads the socket and parses frames
//! ([`crate::wire::h2`], [`crate::wire::hpack`]); the tasks that serve
//! requests (server) or read responses (client) share a small state with
//! it behind a mutex, the socket included. A task sending DATA or HEADERS
//! while nothing is queued writes the frame into the socket itself (one
//! lock, no hop to the driver task); otherwise, and for the driver's own
//! frames, frames are queued into `out` and the driver is woken. The
//! driver wakes the tasks when windows open or data arrives. Request bodies
//! are buffered whole (bounded by [`Limits`]) and handed over at
//! END_STREAM; responses and client-side bodies are streamed with flow
//! control. This module knows nothing of what the requests mean.

use crate::wire::h2::{self as w, code, flag, kind, setting};
use crate::wire::hpack;
use futures_lite::future::poll_fn;
use futures_lite::io::{AsyncRead, AsyncWrite};
use std::io::{self, IoSlice};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// What one side of a connection accepts.
pub struct Limits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams the peer may open at once
    /// (server role); streams over it are refused.
    pub max_streams: usize,
    /// SETTINGS_INITIAL_WINDOW_SIZE we advertise: bytes a peer may send on
    /// one stream before we read them.
    pub stream_window: u32,
    /// Extra connection-level window granted at start (over the 65,535).
    pub conn_window_extra: u32,
    /// Largest request body (server role); over it the stream gets 413.
    pub max_body: usize,
    /// Request body bytes buffered on the connection at once, all streams
    /// together (server role); over it the stream that crossed gets 413.
    pub body_budget: usize,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: decoded header bytes (RFC 9113
    /// §6.5.2 counting); a larger request gets 431.
    pub max_header_list: usize,
    /// Encoded header block (HEADERS + CONTINUATION) we buffer before the
    /// connection is ended with ENHANCE_YOUR_CALM.
    pub max_header_block: usize,
}

/// Frames queued by handlers beyond this wait until the driver drained
/// them: the per-connection send buffer is at most this plus one frame.
const OUT_HIGH: usize = 32 * 1024;
/// The driver stops reading while this much output is unsent, so a peer
/// that floods PINGs or SETTINGS and never reads cannot grow our queue.
const READ_PAUSE: usize = 64 * 1024;
/// The HPACK table size a peer may use before it has seen our SETTINGS
/// (the protocol's initial value); we then ask for 0.
const HPACK_INITIAL: usize = 4096;

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn closed(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, why)
}

struct Stream {
    id: u32,
    /// Our send window on this stream.
    send: i64,
    /// What the peer may still send on it.
    recv: i64,
    /// Client: bytes read whose WINDOW_UPDATE is held back ([`refund`]).
    unsent: i64,
    /// The task serving (server) or reading (client) this stream, while
    /// it waits for a window, room in `out` or data.
    waker: Option<Waker>,
    /// A task waiting in [`Responder::closed`]: woken only when the stream
    /// or the connection ends, not by every WINDOW_UPDATE or drained write
    /// (a long poll waits there between messages; each message's
    /// WINDOW_UPDATE would otherwise poll it once more for nothing).
    closer: Option<Waker>,
    /// Request body (server) / response bytes not yet taken (client).
    body: Vec<u8>,
    remote_end: bool,
    local_end: bool,
    /// Client: the response status, 0 until the final HEADERS.
    status: u16,
    /// Server: the request's `:path`, until dispatch.
    path: String,
}

/// The byte stream a connection runs on, shared by the driver and the
/// sending tasks (behind the state's mutex).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct State {
    server: bool,
    limits: &'static Limits,
    /// Frames waiting for the driver to write: `out[opos..]`; freed when
    /// written.
    out: Vec<u8>,
    opos: usize,
    /// The socket; None once the driver ended (the connection is closed
    /// then, whoever still holds a stream handle).
    io: Option<Box<dyn Io>>,
    /// Written bytes may wait in the stream's own buffer (a Noise record
    /// the socket did not take whole): the driver flushes them.
    flushing: bool,
    driver: Option<Waker>,
    /// Set once the connection is ending; no new work is accepted.
    dead: Option<&'static str>,
    peer_window: i64,
    peer_max_frame: usize,
    send_conn: i64,
    recv_conn: i64,
    /// Client: connection-level bytes whose WINDOW_UPDATE is held back.
    conn_unsent: i64,
    streams: Vec<Stream>,
    /// Highest stream id the peer opened (server) — GOAWAY's last id.
    last_peer: u32,
    next_local: u32,
    /// Request body bytes buffered, all streams.
    buffered: usize,
    hpack: hpack::Decoder,
    /// A header block waiting for its CONTINUATION frames.
    hblock: Vec<u8>,
    hstream: u32,
    hflags: u8,
    /// The peer's first SETTINGS arrived (after the preface, server role).
    got_settings: bool,
    /// Client: handles (Client, RecvStream) alive; at 0 the driver ends.
    handles: usize,
    requests: u64,
}

/// A parsed request (server role), its body complete.
pub struct Request {
    pub path: String,
    pub body: Vec<u8>,
    pub resp: Responder,
}

impl State {
    fn new(server: bool, limits: &'static Limits, io: Box<dyn Io>) -> State {
        State {
            server,
            limits,
            out: Vec::new(),
            opos: 0,
            io: Some(io),
            flushing: false,
            driver: None,
            dead: None,
            peer_window: w::DEFAULT_WINDOW,
            peer_max_frame: w::DEFAULT_MAX_FRAME,
            send_conn: w::DEFAULT_WINDOW,
            recv_conn: w::DEFAULT_WINDOW + i64::from(limits.conn_window_extra),
            conn_unsent: 0,
            streams: Vec::new(),
            last_peer: 0,
            next_local: 1,
            buffered: 0,
            hpack: hpack::Decoder::new(HPACK_INITIAL),
            hblock: Vec::new(),
            hstream: 0,
            hflags: 0,
            got_settings: false,
            handles: 0,
            requests: 0,
        }
    }

    fn start(&mut self) {
        let l = self.limits;
        if !self.server {
            self.out.extend_from_slice(w::PREFACE);
        }
        let mut s = vec![
            (setting::HEADER_TABLE_SIZE, 0),
            (setting::INITIAL_WINDOW_SIZE, l.stream_window),
            (setting::MAX_HEADER_LIST_SIZE, l.max_header_list as u32),
        ];
        if self.server {
            s.push((setting::MAX_CONCURRENT_STREAMS, l.max_streams as u32));
        } else {
            s.push((setting::ENABLE_PUSH, 0));
        }
        w::emit_settings(&s, &mut self.out);
        if l.conn_window_extra > 0 {
            w::emit_window_update(0, l.conn_window_extra, &mut self.out);
        }
    }

    fn wake_driver(&mut self) {
        if let Some(w) = self.driver.take() {
            w.wake();
        }
    }

    /// Bytes queued for the driver and not yet written.
    fn unsent(&self) -> usize {
        self.out.len() - self.opos
    }

    /// Sends one frame (header, payload) from a task other than the
    /// driver. While nothing is queued, the frame is written into the
    /// socket here and now, in one write (a Noise record holds header and
    /// payload together): no wake-up and no poll of the driver task, which
    /// would otherwise do the same write a moment later and then try a
    /// read that fails. Writing under the driver's waker makes it the task
    /// the reactor wakes if the socket is full. What the socket does not
    /// take is queued, in order, for the driver.
    fn push_frame(&mut self, hdr: &[u8; w::HEADER_LEN], payload: &[u8]) {
        let mut done = 0;
        if let (0, Some(waker), Some(io)) = (self.unsent(), &self.driver, &mut self.io) {
            let mut cx = Context::from_waker(waker);
            let bufs = [IoSlice::new(hdr), IoSlice::new(payload)];
            let r = match Pin::new(&mut **io).poll_write_vectored(&mut cx, &bufs) {
                Poll::Ready(Ok(n)) => {
                    done = n;
                    // The stream may have buffered part of it (a Noise
                    // record): the driver flushes the rest when the socket
                    // is writable again (the reactor wakes it).
                    match Pin::new(&mut **io).poll_flush(&mut cx) {
                        Poll::Pending => {
                            self.flushing = true;
                            Ok(())
                        }
                        Poll::Ready(r) => r,
                    }
                }
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => Ok(()),
            };
            if r.is_err() {
                // The connection is over: every stream ends now, the
                // driver at its next poll (it finds no socket).
                self.io = None;
                self.dead.get_or_insert("connection write failed");
                self.wake_all();
                self.wake_driver();
                return;
            }
            if done == hdr.len() + payload.len() {
                return;
            }
        }
        if done < hdr.len() {
            self.out.extend_from_slice(&hdr[done..]);
            self.out.extend_from_slice(payload);
        } else {
            self.out.extend_from_slice(&payload[done - hdr.len()..]);
        }
        self.wake_driver();
    }

    /// Wakes every task waiting for a window, room or data.
    fn wake_senders(&mut self) {
        for s in &mut self.streams {
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }

    /// The connection ends: wakes every task of every stream.
    fn wake_all(&mut self) {
        self.wake_senders();
        for s in &mut self.streams {
            if let Some(w) = s.closer.take() {
                w.wake();
            }
        }
    }

    fn find(&mut self, id: u32) -> Option<&mut Stream> {
        self.streams.iter_mut().find(|s| s.id == id)
    }

    fn remove(&mut self, id: u32) -> Option<Stream> {
        let i = self.streams.iter().position(|s| s.id == id)?;
        let s = self.streams.swap_remove(i);
        if self.server {
            self.buffered -= s.body.len();
        }
        if let Some(w) = &s.waker {
            w.wake_by_ref();
        }
        if let Some(w) = &s.closer {
            w.wake_by_ref();
        }
        Some(s)
    }

    /// Ends the connection: GOAWAY queued, every stream woken to fail.
    fn fail(&mut self, e: w::Error) {
        if self.dead.is_none() {
            w::emit_goaway(self.last_peer, e.code, &mut self.out);
            self.dead = Some(e.why);
        }
        self.wake_all();
    }

    fn reset(&mut self, id: u32, error: u32) {
        w::emit_rst_stream(id, error, &mut self.out);
        self.remove(id);
    }

    /// Server: answers a stream we refuse to serve (413, 431) and stops
    /// its upload, keeping the connection.
    fn refuse(&mut self, id: u32, status: u16, remote_end: bool) {
        let mut block = Vec::new();
        encode_status(status, &mut block);
        w::emit_headers(id, &block, true, &mut self.out);
        if !remote_end {
            w::emit_rst_stream(id, code::NO_ERROR, &mut self.out);
        }
        self.remove(id);
    }

    fn on_frame(
        &mut self,
        f: w::Frame<'_>,
        sh: &Arc<Shared>,
        reqs: &mut Vec<Request>,
    ) -> Result<(), w::Error> {
        let h = f.hdr;
        let proto = |why| w::Error {
            code: code::PROTOCOL,
            why,
        };
        if self.hstream != 0 && h.kind != kind::CONTINUATION {
            return Err(proto("frame inside a header block"));
        }
        if !self.got_settings && h.kind != kind::SETTINGS {
            return Err(proto("first frame is not SETTINGS"));
        }
        match h.kind {
            kind::DATA => self.on_data(h, f.payload, sh, reqs)?,
            kind::HEADERS => {
                if h.stream == 0 {
                    return Err(proto("HEADERS on stream 0"));
                }
                let frag = w::headers_fragment(h.flags, f.payload)?;
                self.hblock.clear();
                self.add_fragment(frag)?;
                self.hstream = h.stream;
                self.hflags = h.flags;
                if h.flags & flag::END_HEADERS != 0 {
                    self.on_header_block(sh, reqs)?;
                }
            }
            kind::CONTINUATION => {
                if self.hstream == 0 || h.stream != self.hstream {
                    return Err(proto("unexpected CONTINUATION"));
                }
                self.add_fragment(f.payload)?;
                if h.flags & flag::END_HEADERS != 0 {
                    self.on_header_block(sh, reqs)?;
                }
            }
            kind::PRIORITY if h.stream == 0 => return Err(proto("PRIORITY on stream 0")),
            kind::RST_STREAM => {
                if h.stream == 0 || self.idle(h.stream) {
                    return Err(proto("RST_STREAM on an idle stream"));
                }
                let error = w::rst_stream(f.payload)?;
                let server = self.server;
                match self.find(h.stream) {
                    // A server that answered before reading the whole
                    // request (413) stops the upload with NO_ERROR: the
                    // response stands.
                    Some(s) if !server && error == code::NO_ERROR && s.status != 0 => {
                        s.remote_end = true;
                        s.local_end = true;
                        if let Some(w) = s.waker.take() {
                            w.wake();
                        }
                    }
                    _ => {
                        self.remove(h.stream);
                    }
                }
            }
            kind::SETTINGS => self.on_settings(h, f.payload)?,
            kind::PUSH_PROMISE => return Err(proto("PUSH_PROMISE")),
            kind::PING => {
                if h.stream != 0 {
                    return Err(proto("PING on a stream"));
                }
                let data = w::ping(f.payload)?;
                if h.flags & flag::ACK == 0 {
                    w::emit_ping(true, data, &mut self.out);
                }
            }
            kind::GOAWAY => {
                if h.stream != 0 {
                    return Err(proto("GOAWAY on a stream"));
                }
                w::goaway(f.payload)?;
            }
            kind::WINDOW_UPDATE => {
                let inc = i64::from(w::window_update(f.payload)?);
                if h.stream == 0 {
                    if inc == 0 {
                        return Err(proto("zero WINDOW_UPDATE"));
                    }
                    self.send_conn += inc;
                    if self.send_conn > w::MAX_WINDOW {
                        return Err(w::Error {
                            code: code::FLOW_CONTROL,
                            why: "connection window overflow",
                        });
                    }
                    self.wake_senders();
                } else if let Some(s) = self.find(h.stream) {
                    s.send += inc;
                    let bad = if inc == 0 {
                        Some(code::PROTOCOL)
                    } else if s.send > w::MAX_WINDOW {
                        Some(code::FLOW_CONTROL)
                    } else {
                        None
                    };
                    if let Some(w) = s.waker.take() {
                        w.wake();
                    }
                    if let Some(c) = bad {
                        self.reset(h.stream, c);
                    }
                } else if self.idle(h.stream) {
                    return Err(proto("WINDOW_UPDATE on an idle stream"));
                }
            }
            _ => {} // unknown frame types are ignored (§4.1)
        }
        Ok(())
    }

    /// A stream id the peer has not opened yet (server) or we have not.
    fn idle(&self, id: u32) -> bool {
        if self.server == (id % 2 == 1) {
            id > self.last_peer
        } else {
            id >= self.next_local
        }
    }

    fn add_fragment(&mut self, frag: &[u8]) -> Result<(), w::Error> {
        if self.hblock.len() + frag.len() > self.limits.max_header_block {
            return Err(w::Error {
                code: code::ENHANCE_YOUR_CALM,
                why: "header block too large",
            });
        }
        self.hblock.extend_from_slice(frag);
        Ok(())
    }

    fn on_settings(&mut self, h: w::Header, payload: &[u8]) -> Result<(), w::Error> {
        if h.stream != 0 {
            return Err(w::Error {
                code: code::PROTOCOL,
                why: "SETTINGS on a stream",
            });
        }
        if h.flags & flag::ACK != 0 {
            if !payload.is_empty() {
                return Err(w::Error {
                    code: code::FRAME_SIZE,
                    why: "SETTINGS ACK with payload",
                });
            }
            return Ok(());
        }
        for (id, v) in w::settings(payload)? {
            match id {
                setting::INITIAL_WINDOW_SIZE => {
                    let v = i64::from(v);
                    if v > w::MAX_WINDOW {
                        return Err(w::Error {
                            code: code::FLOW_CONTROL,
                            why: "initial window too large",
                        });
                    }
                    let delta = v - self.peer_window;
                    self.peer_window = v;
                    for s in &mut self.streams {
                        s.send += delta;
                        if s.send > w::MAX_WINDOW {
                            return Err(w::Error {
                                code: code::FLOW_CONTROL,
                                why: "stream window overflow",
                            });
                        }
                    }
                    self.wake_senders();
                }
                setting::MAX_FRAME_SIZE => {
                    if !(w::DEFAULT_MAX_FRAME as u32..1 << 24).contains(&v) {
                        return Err(w::Error {
                            code: code::PROTOCOL,
                            why: "bad SETTINGS_MAX_FRAME_SIZE",
                        });
                    }
                    self.peer_max_frame = v as usize;
                }
                setting::ENABLE_PUSH if v > 1 => {
                    return Err(w::Error {
                        code: code::PROTOCOL,
                        why: "bad SETTINGS_ENABLE_PUSH",
                    });
                }
                _ => {} // table size (our encoder uses no table), others
            }
        }
        w::emit_settings_ack(&mut self.out);
        self.got_settings = true;
        Ok(())
    }

    fn on_header_block(
        &mut self,
        sh: &Arc<Shared>,
        reqs: &mut Vec<Request>,
    ) -> Result<(), w::Error> {
        let id = std::mem::replace(&mut self.hstream, 0);
        let end = self.hflags & flag::END_STREAM != 0;
        let block = std::mem::take(&mut self.hblock);
        let mut path = String::new();
        let mut status = 0u16;
        let mut list = 0usize;
        let cap = self.limits.max_header_list;
        self.hpack
            .decode(&block, |n, v| {
                list += n.len() + v.len() + 32;
                if list > cap {
                    return;
                }
                match n {
                    b":path" => path = String::from_utf8_lossy(v).into_owned(),
                    b":status" => {
                        status = std::str::from_utf8(v)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0)
                    }
                    _ => {}
                }
            })
            .map_err(|_| w::Error {
                code: code::COMPRESSION,
                why: "bad header block",
            })?;
        let too_big = list > cap;
        let proto = |why| w::Error {
            code: code::PROTOCOL,
            why,
        };
        if !self.server {
            let Some(s) = self.find(id) else {
                return Ok(()); // a stream we already dropped
            };
            if s.status == 0 {
                if (100..200).contains(&status) {
                    return Ok(());
                }
                s.status = if status == 0 { 502 } else { status };
            } else if !end {
                return Err(proto("trailers without END_STREAM"));
            }
            s.remote_end |= end;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
            return Ok(());
        }
        if let Some(s) = self.find(id) {
            // Trailers: they end the request; their content is ignored.
            if !end || s.remote_end {
                return Err(proto("HEADERS on a half-closed stream"));
            }
            s.remote_end = true;
            return self.dispatch(id, sh, reqs);
        }
        if id % 2 == 0 || id <= self.last_peer {
            return Err(w::Error {
                code: code::STREAM_CLOSED,
                why: "HEADERS on a closed stream",
            });
        }
        self.last_peer = id;
        self.requests += 1;
        if self.streams.len() >= self.limits.max_streams {
            w::emit_rst_stream(id, code::REFUSED_STREAM, &mut self.out);
            return Ok(());
        }
        self.streams.push(Stream {
            id,
            send: self.peer_window,
            recv: i64::from(self.limits.stream_window),
            unsent: 0,
            waker: None,
            closer: None,
            body: Vec::new(),
            remote_end: end,
            local_end: false,
            status: 0,
            path,
        });
        if too_big {
            self.refuse(id, 431, end);
        } else if end {
            self.dispatch(id, sh, reqs)?;
        }
        Ok(())
    }

    fn dispatch(
        &mut self,
        id: u32,
        sh: &Arc<Shared>,
        reqs: &mut Vec<Request>,
    ) -> Result<(), w::Error> {
        let Some(s) = self.find(id) else {
            return Ok(());
        };
        let body = std::mem::take(&mut s.body);
        let path = std::mem::take(&mut s.path);
        self.buffered -= body.len();
        reqs.push(Request {
            path,
            body,
            resp: Responder { sh: sh.clone(), id },
        });
        Ok(())
    }

    fn on_data(
        &mut self,
        h: w::Header,
        payload: &[u8],
        sh: &Arc<Shared>,
        reqs: &mut Vec<Request>,
    ) -> Result<(), w::Error> {
        if h.stream == 0 {
            return Err(w::Error {
                code: code::PROTOCOL,
                why: "DATA on stream 0",
            });
        }
        let n = payload.len() as i64;
        self.recv_conn -= n;
        if self.recv_conn < 0 {
            return Err(w::Error {
                code: code::FLOW_CONTROL,
                why: "connection window exceeded",
            });
        }
        let data = w::unpad(h.flags, payload)?;
        let end = h.flags & flag::END_STREAM != 0;
        let server = self.server;
        let (max_body, budget) = (self.limits.max_body, self.limits.body_budget);
        let buffered = self.buffered;
        let Some(s) = self.find(h.stream) else {
            if self.idle(h.stream) {
                return Err(w::Error {
                    code: code::PROTOCOL,
                    why: "DATA on an idle stream",
                });
            }
            // A stream we reset or finished: the bytes still count against
            // the connection window, which we give back.
            self.give_back(0, n);
            return Ok(());
        };
        if s.remote_end {
            self.give_back(0, n);
            self.reset(h.stream, code::STREAM_CLOSED);
            return Ok(());
        }
        s.recv -= n;
        if s.recv < 0 {
            self.give_back(0, n);
            self.reset(h.stream, code::FLOW_CONTROL);
            return Ok(());
        }
        if server && (s.body.len() + data.len() > max_body || buffered + data.len() > budget) {
            self.give_back(0, n);
            self.refuse(h.stream, 413, end);
            return Ok(());
        }
        s.body.extend_from_slice(data);
        s.remote_end = end;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
        if server {
            // Buffered within the budget: the peer may send the next bytes.
            self.buffered += data.len();
            self.give_back(if end { 0 } else { h.stream }, n);
            if end {
                self.dispatch(h.stream, sh, reqs)?;
            }
        } else {
            // Client: the connection window is given back as it is
            // received (in steps, see `refund`), and padding on the
            // stream; the data's when the reader takes it.
            let u = refund(&mut self.recv_conn, &mut self.conn_unsent, n);
            if u > 0 {
                w::emit_window_update(0, u as u32, &mut self.out);
            }
            let pad = n - data.len() as i64;
            if pad > 0 && !end {
                if let Some(s) = self.find(h.stream) {
                    s.recv += pad;
                }
                w::emit_window_update(h.stream, pad as u32, &mut self.out);
            }
        }
        Ok(())
    }

    /// Returns `n` received bytes to the connection window and, if
    /// `stream` is not 0, to that stream's.
    fn give_back(&mut self, stream: u32, n: i64) {
        if n <= 0 {
            return;
        }
        self.recv_conn += n;
        w::emit_window_update(0, n as u32, &mut self.out);
        if stream != 0 {
            if let Some(s) = self.find(stream) {
                s.recv += n;
                w::emit_window_update(stream, n as u32, &mut self.out);
            }
        }
    }

    /// Queues as much of `data[*sent..]` as the windows allow.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        id: u32,
        data: &[u8],
        sent: &mut usize,
        end: bool,
    ) -> Poll<io::Result<()>> {
        loop {
            if let Some(why) = self.dead {
                return Poll::Ready(Err(closed(why)));
            }
            let out_full = self.unsent() >= OUT_HIGH;
            let (conn, max_frame) = (self.send_conn, self.peer_max_frame as i64);
            let Some(s) = self.find(id) else {
                return Poll::Ready(Err(closed("stream reset")));
            };
            if s.local_end {
                if s.status != 0 {
                    return Poll::Ready(Ok(())); // answered early (client)
                }
                return Poll::Ready(Err(closed("stream already ended")));
            }
            let rest = (data.len() - *sent) as i64;
            let n = rest.min(conn).min(s.send).min(max_frame);
            if out_full || (rest > 0 && n <= 0) {
                s.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            s.send -= n;
            let last = n == rest;
            if last && end {
                s.local_end = true;
            }
            self.send_conn -= n;
            let chunk = &data[*sent..*sent + n as usize];
            self.push_frame(&w::data_header(id, chunk.len(), last && end), chunk);
            *sent += n as usize;
            if last {
                return Poll::Ready(Ok(()));
            }
        }
    }

    fn send_headers(&mut self, id: u32, block: &[u8], end: bool) -> io::Result<()> {
        if let Some(why) = self.dead {
            return Err(closed(why));
        }
        let s = self.find(id).ok_or_else(|| closed("stream reset"))?;
        if s.local_end {
            return Err(closed("stream already ended"));
        }
        s.local_end = end;
        self.push_frame(&w::headers_header(id, block.len(), end), block);
        Ok(())
    }

    /// A handle was dropped: forget the stream, resetting it if it is
    /// still open on either side.
    fn release(&mut self, id: u32) {
        if let Some(s) = self.find(id) {
            if !(s.local_end && s.remote_end) && self.dead.is_none() {
                w::emit_rst_stream(id, code::CANCEL, &mut self.out);
            }
            self.remove(id);
            self.wake_driver();
        }
    }
}

/// Smallest WINDOW_UPDATE a client sends (Go's x/net/http2 `inflowMinRefresh`).
const MIN_REFRESH: i64 = 4096;

/// A receiver gives `n` consumed bytes back to a window whose peer may
/// still send `avail`: returns the increment to send now, 0 to hold it.
/// As the Go client (x/net/http2 `inflow.add`, which Tailscale's control
/// client uses) does: an update once at least 4 KiB are owed, or once the
/// owed bytes reach what the peer may still send (half the window is
/// used), so a stream of small messages is not answered with a
/// WINDOW_UPDATE each. The client role here (load generator, smoke client,
/// tests) behaves like the real client the server serves.
fn refund(avail: &mut i64, unsent: &mut i64, n: i64) -> i64 {
    *unsent += n;
    if *unsent < MIN_REFRESH && *unsent < *avail {
        return 0;
    }
    let u = std::mem::take(unsent);
    *avail += u;
    u
}

fn encode_status(status: u16, out: &mut Vec<u8>) {
    let s = status.to_string();
    if !hpack::encode_indexed(":status", &s, out) {
        hpack::encode_literal(":status", &s, out);
    }
}

struct Shared {
    st: Mutex<State>,
}

/// Answers one request (server role).
pub struct Responder {
    sh: Arc<Shared>,
    id: u32,
}

impl Responder {
    /// Sends the response head; `end` when there is no body.
    pub fn start(&mut self, status: u16, ctype: &str, end: bool) -> io::Result<()> {
        let mut block = Vec::with_capacity(40);
        encode_status(status, &mut block);
        hpack::encode_literal("content-type", ctype, &mut block);
        lock(&self.sh.st).send_headers(self.id, &block, end)
    }

    /// Sends body bytes under flow control (a slow reader holds us here,
    /// not in a growing buffer); `end` finishes the response.
    pub async fn send(&mut self, data: &[u8], end: bool) -> io::Result<()> {
        let mut sent = 0;
        poll_fn(|cx| lock(&self.sh.st).poll_send(cx, self.id, data, &mut sent, end)).await
    }

    /// Ends the response body (an empty DATA with END_STREAM).
    pub fn end(&mut self) {
        let mut st = lock(&self.sh.st);
        if let Some(s) = st.find(self.id).filter(|s| !s.local_end) {
            s.local_end = true;
            st.push_frame(&w::data_header(self.id, 0, true), &[]);
        }
    }

    /// Resolves when the peer reset the stream or the connection ended.
    pub async fn closed(&self) {
        poll_fn(|cx| self.poll_closed(cx)).await
    }

    /// [`Responder::closed`] as a poll function.
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = lock(&self.sh.st);
        if st.dead.is_some() {
            return Poll::Ready(());
        }
        match st.find(self.id) {
            Some(s) => {
                if !s.closer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.closer = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            None => Poll::Ready(()),
        }
    }

    /// A complete response.
    pub async fn reply(&mut self, status: u16, ctype: &str, body: &[u8]) -> io::Result<()> {
        self.start(status, ctype, body.is_empty())?;
        if !body.is_empty() {
            self.send(body, true).await?;
        }
        Ok(())
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        lock(&self.sh.st).release(self.id);
    }
}

/// Watches a server connection's progress (for its deadlines).
pub struct Watch(Arc<Shared>);

impl Watch {
    /// The preface and the client's SETTINGS have arrived.
    pub fn settled(&self) -> bool {
        lock(&self.0.st).got_settings
    }
    /// Requests opened so far.
    pub fn requests(&self) -> u64 {
        lock(&self.0.st).requests
    }
    /// Streams open now (requests being served).
    pub fn open_streams(&self) -> usize {
        lock(&self.0.st).streams.len()
    }
}

/// Runs one connection: reads and parses frames, writes what is queued.
/// Only its constructor knows the socket's type (boxed in the shared
/// state): the code that runs the connection exists once in the binary,
/// not once per kind of stream (TCP, TLS, client).
pub struct Driver<S> {
    core: Core,
    _io: PhantomData<fn() -> S>,
}

struct Core {
    sh: Arc<Shared>,
    /// Bytes read and not yet a whole frame; freed when empty.
    rbuf: Vec<u8>,
    preface: bool,
}

impl Drop for Core {
    fn drop(&mut self) {
        let mut st = lock(&self.sh.st);
        st.dead.get_or_insert("connection closed");
        st.out = Vec::new();
        st.opos = 0;
        // The socket closes with the driver, not with the last handle.
        st.io = None;
        st.wake_all();
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Driver<S> {
    fn new(io: S, server: bool, limits: &'static Limits) -> Driver<S> {
        let mut st = State::new(server, limits, Box::new(io));
        st.start();
        Driver {
            core: Core {
                sh: Arc::new(Shared { st: Mutex::new(st) }),
                rbuf: Vec::new(),
                preface: !server,
            },
            _io: PhantomData,
        }
    }

    /// Server side: the caller then runs [`Driver::serve`].
    pub fn server(io: S, limits: &'static Limits) -> Driver<S> {
        Driver::new(io, true, limits)
    }

    pub fn watch(&self) -> Watch {
        Watch(self.core.sh.clone())
    }

    /// Runs the connection; `on_request` gets each complete request.
    pub async fn serve(self, mut on_request: impl FnMut(Request)) -> io::Result<()> {
        let mut core = self.core;
        poll_fn(|cx| core.poll(cx, &mut on_request)).await
    }
}

impl Core {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        on_request: &mut dyn FnMut(Request),
    ) -> Poll<io::Result<()>> {
        // A read that would block registered this task with the reactor,
        // which wakes it when bytes arrive: reading again in the same poll
        // would only be a second failing syscall.
        let mut read_blocked = false;
        loop {
            let mut progress = false;
            let mut reqs = Vec::new();
            {
                let mut guard = lock(&self.sh.st);
                let st = &mut *guard;
                if !st.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    st.driver = Some(cx.waker().clone());
                }
                if !st.server && st.dead.is_none() && st.handles == 0 {
                    // Client: every handle is gone.
                    w::emit_goaway(0, code::NO_ERROR, &mut st.out);
                    st.dead = Some("client closed");
                }
                // Out of the state while the lock is held (put back below;
                // an early return ends the connection and drops it).
                let Some(mut boxed) = st.io.take() else {
                    return Poll::Ready(Err(closed(st.dead.unwrap_or("connection closed"))));
                };
                let mut io = Pin::new(&mut *boxed);
                while st.opos < st.out.len() {
                    match io.as_mut().poll_write(cx, &st.out[st.opos..]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                        }
                        Poll::Ready(Ok(n)) => {
                            st.opos += n;
                            progress = true;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => break,
                    }
                }
                if st.opos > 0 && st.opos == st.out.len() {
                    st.out = Vec::new();
                    st.opos = 0;
                    st.flushing = true;
                    st.wake_senders(); // senders waiting for room
                }
                if st.flushing {
                    match io.as_mut().poll_flush(cx) {
                        Poll::Ready(Ok(())) => st.flushing = false,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {}
                    }
                }
                let unsent = st.out.len() - st.opos;
                if let Some(why) = st.dead {
                    if unsent == 0 && !st.flushing {
                        let _ = io.as_mut().poll_close(cx);
                        return Poll::Ready(match why {
                            "client closed" => Ok(()),
                            _ => Err(io::Error::new(io::ErrorKind::InvalidData, why)),
                        });
                    }
                } else if unsent < READ_PAUSE && !read_blocked {
                    let mut tmp = [0u8; 4096];
                    match io.as_mut().poll_read(cx, &mut tmp) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                        Poll::Ready(Ok(n)) => {
                            self.rbuf.extend_from_slice(&tmp[..n]);
                            process(&mut self.rbuf, &mut self.preface, &self.sh, st, &mut reqs);
                            progress = true;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => read_blocked = true,
                    }
                }
                st.io = Some(boxed);
            }
            for r in reqs {
                on_request(r);
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }
}

/// Parses the frames read so far (the driver's read buffer) under the lock.
fn process(
    rbuf: &mut Vec<u8>,
    preface: &mut bool,
    sh: &Arc<Shared>,
    st: &mut State,
    reqs: &mut Vec<Request>,
) {
    let mut pos = 0;
    if !*preface {
        if rbuf.len() < w::PREFACE.len() {
            if !w::PREFACE.starts_with(rbuf) {
                st.fail(w::Error {
                    code: code::PROTOCOL,
                    why: "bad connection preface",
                });
            }
            return;
        }
        if rbuf[..w::PREFACE.len()] != w::PREFACE[..] {
            st.fail(w::Error {
                code: code::PROTOCOL,
                why: "bad connection preface",
            });
            return;
        }
        *preface = true;
        pos = w::PREFACE.len();
    }
    while st.dead.is_none() {
        match w::split(&rbuf[pos..], w::DEFAULT_MAX_FRAME) {
            Err(e) => st.fail(e),
            Ok(None) => break,
            Ok(Some((f, used))) => {
                pos += used;
                if let Err(e) = st.on_frame(f, sh, reqs) {
                    st.fail(e);
                }
            }
        }
    }
    rbuf.drain(..pos);
    if rbuf.is_empty() {
        *rbuf = Vec::new();
    }
}

/// Client side of a connection: opens request streams; the driver runs in
/// its own task and ends when this and every [`RecvStream`] are dropped.
pub struct Client {
    sh: Arc<Shared>,
}

/// A response body being received (client role).
pub struct RecvStream {
    sh: Arc<Shared>,
    id: u32,
}

impl Client {
    /// Starts a client connection on `io`; returns it and the driver
    /// future to run (spawn it).
    pub fn new<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        io: S,
        limits: &'static Limits,
    ) -> (Client, impl std::future::Future<Output = io::Result<()>>) {
        let mut core = Driver::new(io, false, limits).core;
        let sh = core.sh.clone();
        lock(&sh.st).handles += 1;
        let run = async move { poll_fn(|cx| core.poll(cx, &mut |_| {})).await };
        (Client { sh }, run)
    }

    /// POSTs `body` to `path`: returns the status and the response body.
    pub async fn post(&self, path: &str, body: &[u8]) -> io::Result<(u16, RecvStream)> {
        let id = {
            let mut st = lock(&self.sh.st);
            if let Some(why) = st.dead {
                return Err(closed(why));
            }
            let id = st.next_local;
            st.next_local += 2;
            let mut block = Vec::with_capacity(path.len() + 16);
            hpack::encode_indexed(":method", "POST", &mut block);
            hpack::encode_indexed(":scheme", "https", &mut block);
            hpack::encode_literal(":authority", "unused", &mut block);
            hpack::encode_literal(":path", path, &mut block);
            let (send, recv) = (st.peer_window, i64::from(st.limits.stream_window));
            st.streams.push(Stream {
                id,
                send,
                recv,
                unsent: 0,
                waker: None,
                closer: None,
                body: Vec::new(),
                remote_end: false,
                local_end: false,
                status: 0,
                path: String::new(),
            });
            st.send_headers(id, &block, body.is_empty())?;
            st.handles += 1;
            id
        };
        let rs = RecvStream {
            sh: self.sh.clone(),
            id,
        };
        if !body.is_empty() {
            let mut sent = 0;
            poll_fn(|cx| lock(&self.sh.st).poll_send(cx, id, body, &mut sent, true)).await?;
        }
        let status = poll_fn(|cx| {
            let mut st = lock(&self.sh.st);
            let dead = st.dead;
            match st.find(id) {
                None => Poll::Ready(Err(closed("stream reset by the server"))),
                Some(s) if s.status != 0 => Poll::Ready(Ok(s.status)),
                Some(_) if dead.is_some() => Poll::Ready(Err(closed(dead.unwrap_or("")))),
                Some(s) => {
                    s.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await?;
        Ok((status, rs))
    }
}

impl RecvStream {
    /// The next bytes of the body; None at its end.
    pub async fn data(&mut self) -> Option<io::Result<Vec<u8>>> {
        poll_fn(|cx| {
            let mut st = lock(&self.sh.st);
            let dead = st.dead;
            let Some(s) = st.find(self.id) else {
                return Poll::Ready(Some(Err(closed("stream reset"))));
            };
            if !s.body.is_empty() {
                let b = std::mem::take(&mut s.body);
                let u = if s.remote_end {
                    0
                } else {
                    refund(&mut s.recv, &mut s.unsent, b.len() as i64)
                };
                if u > 0 {
                    w::emit_window_update(self.id, u as u32, &mut st.out);
                }
                if u > 0 {
                    st.wake_driver();
                }
                return Poll::Ready(Some(Ok(b)));
            }
            if s.remote_end {
                return Poll::Ready(None);
            }
            if let Some(why) = dead {
                return Poll::Ready(Some(Err(closed(why))));
            }
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// The whole body, refusing more than `limit` bytes.
    pub async fn read_all(&mut self, limit: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = self.data().await {
            let chunk = chunk?;
            if out.len() + chunk.len() > limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response body too large",
                ));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        let mut st = lock(&self.sh.st);
        st.release(self.id);
        st.handles -= 1;
        st.wake_driver();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let mut st = lock(&self.sh.st);
        st.handles -= 1;
        st.wake_driver();
    }
}

#[cfg(test)]
mod tests {
    use super::refund;

    #[test]
    fn window_updates_are_sent_in_steps_like_the_go_client() {
        // A 1 MiB window and 300-byte messages: one update per 4 KiB.
        let (mut avail, mut unsent) = (1i64 << 20, 0i64);
        let mut updates = vec![];
        for _ in 0..40 {
            avail -= 300; // received
            let u = refund(&mut avail, &mut unsent, 300);
            if u > 0 {
                updates.push(u);
            }
        }
        assert_eq!(updates, vec![4200, 4200]);
        assert_eq!(avail + unsent, 1 << 20, "nothing lost");
        // A small window: given back once half of it is used, so the
        // peer never runs dry.
        let (mut avail, mut unsent) = (1000i64, 0i64);
        avail -= 400;
        assert_eq!(refund(&mut avail, &mut unsent, 400), 0);
        avail -= 200;
        assert_eq!(refund(&mut avail, &mut unsent, 200), 600);
        assert_eq!((avail, unsent), (1000, 0));
    }
}
