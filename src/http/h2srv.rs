//! HTTP/2 (prior knowledge) inside the Noise stream, served by the `h2`
//! crate polled on smol. Routes `/machine/*` to the control plane.

use crate::control::{map, register, SharedServer};
use crate::noise::NoiseStream;
use bytes::Bytes;
use futures_lite::future::poll_fn;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{Response, StatusCode};
use log::debug;
use std::io;
use std::sync::Arc;

/// Largest request body accepted (Headscale's cap too).
pub const MAX_BODY: usize = 1024 * 1024;

/// Per-connection identity, from the Noise handshake.
pub struct ConnCtx {
    /// The client's machine key: authoritative for who this is.
    pub machine_key: [u8; 32],
    pub version: u16,
}

fn h2_io(e: h2::Error) -> io::Error {
    io::Error::other(e)
}

pub async fn serve<S>(server: SharedServer, io: NoiseStream<S>, ctx: ConnCtx) -> io::Result<()>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + Send + 'static,
{
    // Small windows and buffers: memory per connected node is the budget
    // that decides how many nodes a router can hold (issue: ≤ 24 KiB/node).
    let mut conn = h2::server::Builder::new()
        .initial_window_size(64 * 1024)
        .initial_connection_window_size(128 * 1024)
        .max_concurrent_streams(64)
        .max_header_list_size(16 * 1024)
        .max_send_buffer_size(32 * 1024)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(h2_io)?;
    let ctx = Arc::new(ctx);
    while let Some(r) = conn.accept().await {
        let (req, respond) = r.map_err(h2_io)?;
        let server = server.clone();
        let ctx = ctx.clone();
        smol::spawn(async move {
            let (parts, body) = req.into_parts();
            if let Err(e) = route(server, ctx, parts, body, respond).await {
                debug!("request: {e}");
            }
        })
        .detach();
    }
    Ok(())
}

async fn route(
    server: SharedServer,
    ctx: Arc<ConnCtx>,
    parts: http::request::Parts,
    body: RecvStream,
    mut respond: SendResponse<Bytes>,
) -> io::Result<()> {
    let path = parts.uri.path().to_string();
    let body = match read_body(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return reply(
                &mut respond,
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                e.to_string().into_bytes(),
            )
            .await
        }
    };
    if path.ends_with("/machine/register") {
        let (status, json) = register::handle(&server, &ctx, &body).await;
        reply(&mut respond, status, "application/json", json).await
    } else if path.ends_with("/machine/map") {
        Box::pin(map::handle(server, ctx, body, respond)).await
    } else if path.ends_with("/machine/audit-log") || path.ends_with("/machine/update-health") {
        // Accept and drop: 404/501 would be treated as permanent failures.
        reply(&mut respond, StatusCode::OK, "text/plain", Vec::new()).await
    } else {
        reply(
            &mut respond,
            StatusCode::NOT_FOUND,
            "text/plain",
            b"not found\n".to_vec(),
        )
        .await
    }
}

/// Reads a whole request body, refusing more than `limit` bytes.
pub async fn read_body(mut body: RecvStream, limit: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(h2_io)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if out.len() + chunk.len() > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request body too large",
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Sends a complete response.
pub async fn reply(
    respond: &mut SendResponse<Bytes>,
    status: StatusCode,
    ctype: &str,
    body: Vec<u8>,
) -> io::Result<()> {
    let mut tx = start(respond, status, ctype, body.is_empty())?;
    if !body.is_empty() {
        send_all(&mut tx, Bytes::from(body), true).await?;
    }
    Ok(())
}

/// Sends response headers; returns the body stream.
pub fn start(
    respond: &mut SendResponse<Bytes>,
    status: StatusCode,
    ctype: &str,
    end: bool,
) -> io::Result<SendStream<Bytes>> {
    let resp = Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(())
        .map_err(io::Error::other)?;
    respond.send_response(resp, end).map_err(h2_io)
}

/// Writes `data` honouring HTTP/2 flow control, so a slow reader applies
/// back-pressure instead of growing our buffers.
pub async fn send_all(tx: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> io::Result<()> {
    if data.is_empty() {
        return tx.send_data(data, end).map_err(h2_io);
    }
    while !data.is_empty() {
        tx.reserve_capacity(data.len());
        let cap = match poll_fn(|cx| tx.poll_capacity(cx)).await {
            Some(c) => c.map_err(h2_io)?,
            None => return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream closed")),
        };
        if cap == 0 {
            continue;
        }
        let chunk = data.split_to(cap.min(data.len()));
        tx.send_data(chunk, end && data.is_empty()).map_err(h2_io)?;
    }
    Ok(())
}

/// Client side of [`send_all`]: sends a whole request body and ends it.
pub async fn send_all_client(tx: &mut SendStream<Bytes>, data: Bytes) -> io::Result<()> {
    send_all(tx, data, true).await
}
