//! The admin socket (`unix_socket`): the local CLI's way in, without an API
//! key. What makes that safe:
//!
//! - the socket is created under umask 0177 (mode 0600 from the first
//!   instant), in a directory that must belong to us (or root) and not be
//!   writable by others unless sticky, so nobody can swap the path before
//!   a wider `unix_socket_permission` (Headscale's key, default here 0600;
//!   world-writable modes are refused) is applied;
//! - every accepted peer's uid (SO_PEERCRED) must be ours or root's; when
//!   the mode grants the group write access (Headscale's 0770), a peer whose
//!   effective gid is the server's is served too (SO_PEERCRED carries no
//!   supplementary groups: such a member runs the CLI with `sg <group>`);
//! - a failed bind is fatal: a server without its socket would leave the
//!   CLI talking to whatever else listens at that path.
//!
//! It runs on the async executor with the project's own HTTP/1 code, not on
//! tiny_http: under EMFILE, tiny_http 0.12 unwraps a failed socket clone in
//! its accept path and a release build (panic=abort) dies; here an accept
//! error backs off and the server lives.

use crate::control::SharedServer;
use async_io::{Async, Timer};
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use super::http1::MAX_BODY;

/// Admin connections served at once (more are closed on accept).
const MAX_CONNS: usize = 64;
/// Requests on one admin connection before it is closed.
const MAX_REQUESTS: usize = 100;
const HEAD_TIMEOUT: Duration = Duration::from_secs(15);

/// Binds the admin socket and serves it on the executor.
///
/// Fails if another server is already answering on the socket, if the
/// socket's directory is not safe, or if the bind fails; a stale socket
/// file (nobody listening) is replaced.
pub fn spawn(server: SharedServer) -> io::Result<()> {
    let mode = server.cfg.unix_socket_permission;
    let listener = Async::new(bind_private(&server.cfg.unix_socket, mode)?)?;
    smol::spawn(accept_loop(server, listener)).detach();
    Ok(())
}

async fn accept_loop(server: SharedServer, listener: Async<UnixListener>) {
    let live = Arc::new(AtomicUsize::new(0));
    let mut warned = false;
    let group_may = server.cfg.unix_socket_permission & 0o020 != 0;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: one line, then back off quietly.
                if !warned {
                    log::warn!("admin socket: accept failed: {e} (retrying every 100 ms)");
                    warned = true;
                }
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        warned = false;
        if let Err(why) = peer_allowed(stream.get_ref(), group_may) {
            log::warn!("admin socket: refused a connection: {why}");
            continue;
        }
        if live.fetch_add(1, Ordering::Relaxed) >= MAX_CONNS {
            live.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        let (server, live) = (server.clone(), live.clone());
        smol::spawn(async move {
            if let Err(e) = serve_conn(&server, stream).await {
                log::debug!("admin connection: {e}");
            }
            live.fetch_sub(1, Ordering::Relaxed);
        })
        .detach();
    }
}

/// The peer must run as the server's own uid or as root.
fn peer_allowed(s: &UnixStream, group_may: bool) -> Result<(), String> {
    let cred = rustix::net::sockopt::socket_peercred(s).map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let me = rustix::process::geteuid();
    let group = group_may && cred.gid == rustix::process::getegid();
    if cred.uid == me || cred.uid.is_root() || group {
        Ok(())
    } else {
        Err(format!(
            "peer uid {} is neither the server's ({}) nor root",
            cred.uid.as_raw(),
            me.as_raw()
        ))
    }
}

async fn serve_conn(server: &SharedServer, mut stream: Async<UnixStream>) -> io::Result<()> {
    let mut buf = Vec::new();
    for _ in 0..MAX_REQUESTS {
        let h = crate::http::timeout(HEAD_TIMEOUT, crate::http::read_head(&mut stream, &mut buf));
        let Some(h) = h.await? else { return Ok(()) };
        if !super::http1::serve(
            server,
            &mut stream,
            &h,
            &mut buf,
            super::http1::Caller::Local,
        )
        .await?
        {
            break;
        }
    }
    Ok(())
}

/// Checks (or creates, owner-only) the socket's directory, clears a stale
/// socket and binds under a restrictive umask.
fn bind_private(path: &Path, mode: u32) -> io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // The mode above passes through the process umask, which another
        // thread's bind may hold at 0177 (below) at this very moment: that
        // would leave a directory without its search bit.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    check_dir(dir)?;
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if !md.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "unix_socket {} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "admin socket {} is in use: is another tinyscale running?",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // The umask is process-wide: while it is set, anything else created is
    // only more private than asked, never less.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let l = UnixListener::bind(path);
    rustix::process::umask(old);
    let l = l.map_err(|e| io::Error::new(e.kind(), format!("binding {}: {e}", path.display())))?;
    // A wider `unix_socket_permission` is granted after the bind: the
    // directory was checked so nobody else can have swapped the path.
    // Never world-writable, never less than owner read/write (the config
    // refuses such modes already).
    let mode = (mode | 0o600) & 0o775;
    if mode != 0o600 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(l)
}

/// The directory must belong to us or root and not let others replace
/// our socket (no group/other write unless the sticky bit is set, as on
/// /tmp).
fn check_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(dir)?;
    let me = rustix::process::geteuid().as_raw();
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("admin socket directory {}: {why}", dir.display()),
        ))
    };
    if md.uid() != me && md.uid() != 0 {
        return refuse(format!(
            "owned by uid {}, not by the server's uid {me} or root",
            md.uid()
        ));
    }
    if md.mode() & 0o022 != 0 && md.mode() & 0o1000 == 0 {
        return refuse(format!(
            "mode {:o} lets others replace the socket (chmod go-w, or use an owner-only directory)",
            md.mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn socket_gets_the_configured_mode() {
        let dir = std::env::temp_dir().join(format!("ts-sockmode-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(&dir)
            .unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let p = dir.join("s.sock");
        for (asked, got) in [
            (0o600, 0o600),
            (0o770, 0o770),
            (0o660, 0o660),
            (0o777, 0o775),
        ] {
            let l = bind_private(&p, asked).unwrap();
            let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, got, "asked {asked:o}");
            drop(l);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
