//! The admin plane: Headscale-shaped REST API served by tiny-http on the
//! unix socket `cfg.unix_socket` (mode 0600 in an owner-only directory),
//! which the CLI talks to. Two worker threads handle requests: every
//! operation is a short critical section plus one durable redb commit.

pub mod api;
pub mod types;

use crate::control::Server;
use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// Binds the admin socket and serves it on worker threads (two, so one
/// slow client cannot stall the CLI); returns the first one's handle.
///
/// Fails if another server is already answering on the socket; a stale
/// socket file (nobody listening) is replaced.
pub fn spawn(server: Arc<Server>) -> std::io::Result<std::thread::JoinHandle<()>> {
    let listener = bind_private(&server.cfg.unix_socket)?;
    let http = Arc::new(
        tiny_http::Server::from_listener(listener, None)
            .map_err(|e| std::io::Error::other(format!("admin socket: {e}")))?,
    );
    let mut first = None;
    for i in 0..2 {
        let (server, http) = (server.clone(), http.clone());
        let h = std::thread::Builder::new()
            .name(format!("admin-{i}"))
            .spawn(move || serve(&server, &http))?;
        first.get_or_insert(h);
    }
    Ok(first.expect("two threads spawned"))
}

fn serve(server: &Server, http: &tiny_http::Server) {
    loop {
        let req = match http.recv() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("admin: accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        handle_request(server, req);
    }
}

fn handle_request(server: &Server, mut req: tiny_http::Request) {
    let method = req.method().as_str().to_ascii_uppercase();
    let url = req.url().to_string();
    let reply = if req.body_length().is_some_and(|n| n > MAX_BODY) {
        api::error(413, format!("request body larger than {MAX_BODY} bytes"))
    } else {
        let mut body = Vec::new();
        match req
            .as_reader()
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut body)
        {
            Err(e) => api::error(400, format!("reading body: {e}")),
            Ok(_) if body.len() > MAX_BODY => {
                api::error(413, format!("request body larger than {MAX_BODY} bytes"))
            }
            Ok(_) => {
                let r = api::handle(server, &method, &url, &body);
                log::debug!("admin: {method} {url} -> {}", r.status);
                r
            }
        }
    };
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        .expect("static header");
    let resp = tiny_http::Response::from_string(reply.body)
        .with_status_code(reply.status)
        .with_header(header);
    if let Err(e) = req.respond(resp) {
        log::debug!("admin: writing response: {e}");
    }
}

/// Creates the socket's directory owner-only if missing, clears a stale
/// socket and binds with mode 0600.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    if let Ok(md) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !md.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "unix_socket {} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "admin socket {} is in use: is another tinyscale running?",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}
