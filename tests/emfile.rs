//! Out of file descriptors: the built binary runs as a child process with
//! RLIMIT_NOFILE 64 (soft and hard, so raising the soft limit at start
//! cannot help) and the unidentified-connection caps far above that, so the
//! only thing between a connection flood and `accept` is the process's
//! open-files limit. The test holds connections until `accept` fails with
//! EMFILE, keeps the server there for one rate-limited log period, and
//! checks that:
//! - the server logged the failure and backed off instead of spinning: the
//!   second log line counts the failed accepts it held back in between, and
//!   a retry every 5 ms .. 1 s makes that a few dozen where a loop retrying
//!   at once (the listener stays readable while the queue is full) makes
//!   hundreds of thousands;
//! - it is still running during and after, and once the connections are
//!   released it serves `GET /key` and the CLI over the admin socket.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The server's open-files limit: its own descriptors (database, epoll,
/// listeners, admin socket, stdio) take about a dozen.
const NOFILE: u64 = 64;
/// Connections the test opens: enough to exhaust [`NOFILE`] with the rest
/// waiting in the listen queue.
const FLOOD: usize = 3 * NOFILE as usize;
/// Failed accepts allowed between two rate-limited log lines (10 s apart).
/// Backing off 5 ms, 10 ms, ... 1 s gives ~17 in 10 s (a few more for each
/// success in between, which resets the back-off); spinning gives orders of
/// magnitude more.
const MAX_HELD_BACK: u64 = 200;

/// The number in the accept-failure lines' " (N more like it since the last
/// such line)" suffix, for every such line after the first.
fn held_back(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("accept: ") && l.contains("retrying in up to"))
        .filter_map(|l| {
            let (_, rest) = l.rsplit_once(" (")?;
            rest.strip_suffix(" more like it since the last such line)")?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn out_of_descriptors_the_server_backs_off_and_recovers() {
    // This process holds FLOOD sockets, the server must not be the one
    // short of descriptors.
    tinyscale::debug::procfs::raise_nofile(4096).expect("raise this test's open-files limit");
    let dir = common::tempdir("emfile");
    let port = common::free_port();
    let (mut server, cfg) = common::serve_with(
        &dir,
        &format!(
            "server_url: http://127.0.0.1:{port}\nlisten_addr: 127.0.0.1:{port}\ndata_dir: {d}\n\
             unix_socket: {d}/admin.sock\ntls_listen_addr: \"\"\n\
             derp:\n  server:\n    enabled: true\n    stun_listen_addr: \"\"\n\
             dns:\n  base_domain: emfile.test\n\
             limits:\n  unidentified_connections: 100000\n  unidentified_connections_per_source: 100000\n\
             log:\n  level: info\n",
            d = dir.display()
        ),
        |cmd| common::limit_nofile(cmd, NOFILE),
    );
    let read = || common::serve_log(&dir);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut alive = |during: &str| {
        if let Ok(Some(st)) = server.0.try_wait() {
            panic!("server exited during {during} ({st}); log:\n{}", read());
        }
    };
    assert!(
        common::eventually(30, || TcpStream::connect(addr).is_ok()),
        "server did not start; log:\n{}",
        read()
    );
    alive("start");
    assert!(
        read().contains(&format!("open files: soft limit {NOFILE}")),
        "the start-up log names the open-files limit:\n{}",
        read()
    );

    // The flood: connections beyond the listen queue time out in connect
    // (the server never answers their SYN), which is fine.
    let mut held = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            held.push(s);
        }
    }
    assert!(
        held.len() > NOFILE as usize,
        "only {} connections opened; the server cannot have run out of descriptors",
        held.len()
    );
    assert!(
        common::eventually(30, || read().contains("Too many open files")),
        "{} connections held, but no accept failed with EMFILE; log:\n{}",
        held.len(),
        read()
    );
    alive("EMFILE");
    // Stay out of descriptors until the next rate-limited line (10 s after
    // the first) reports how many failed accepts it held back.
    assert!(
        common::eventually(40, || !held_back(&read()).is_empty()),
        "no second accept-failure line while out of descriptors; log:\n{}",
        read()
    );
    alive("EMFILE");
    let counts = held_back(&read());
    println!(
        "emfile: {} connections held; failed accepts held back between log lines: {counts:?}",
        held.len()
    );
    assert!(
        counts.iter().all(|&n| n <= MAX_HELD_BACK),
        "accept retried {counts:?} times between two log lines (bound {MAX_HELD_BACK}): \
         the loop spins instead of backing off; log:\n{}",
        read()
    );

    // Released: the server accepts (and closes) what was queued, then serves.
    drop(held);
    let got = common::block_on_timeout(30, async {
        loop {
            match tinyscale::client::fetch_key(addr).await {
                Ok(k) => return k,
                Err(_) => async_io::Timer::after(Duration::from_millis(100)).await,
            };
        }
    });
    assert_ne!(got, [0u8; 32], "GET /key returned a zero key");
    alive("recovery");
    let (code, _, err) = common::cli(&cfg, &["users", "create", "after-emfile"]);
    assert_eq!(code, 0, "CLI over the admin socket after EMFILE: {err}");
    let (code, out, err) = common::cli(&cfg, &["users", "list"]);
    assert!(
        code == 0 && out.contains("after-emfile"),
        "users list: {out}{err}"
    );
    alive("the end");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
