//! The control plane's side of a control connection: the requests the
//! transport (`http::h2srv`) reads from HTTP/2 inside Noise arrive here.

use super::{map, register, Server};
use crate::http::h2conn::Request;
use crate::http::h2srv::{ConnCtx, Handler};
use std::future::Future;
use std::io;
use std::sync::Arc;

impl Handler for Server {
    fn request(
        self: Arc<Self>,
        ctx: Arc<ConnCtx>,
        req: Request,
    ) -> impl Future<Output = io::Result<()>> + Send {
        route(self, ctx, req)
    }
}

async fn route(server: Arc<Server>, ctx: Arc<ConnCtx>, req: Request) -> io::Result<()> {
    let Request {
        path,
        body,
        resp: mut respond,
    } = req;
    if path.ends_with("/machine/register") {
        // Identifies the connection itself, only when the node is known
        // and authorised (every answer is a 200, errors included).
        // Boxed: a registration is short, and its state inline would set
        // the size of every request task, long polls included.
        let (status, json) = Box::pin(register::handle(&server, &ctx, &body)).await;
        respond.reply(status, "application/json", &json).await
    } else if path.ends_with("/machine/map") {
        // Inline: the long poll is what most request tasks are, and one
        // allocation per stream is smaller than a task plus a box.
        map::handle(server, ctx, body, respond).await
    } else if path.ends_with("/machine/audit-log") || path.ends_with("/machine/update-health") {
        // Accept and drop: 404/501 would be treated as permanent failures.
        respond.reply(200, "text/plain", &[]).await
    } else {
        respond.reply(404, "text/plain", b"not found\n").await
    }
}
