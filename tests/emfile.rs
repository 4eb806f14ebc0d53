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
use std::path::Path;
use std::process::{Command, Stdio};
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

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Runs the CLI against `cfg` with a deadline; returns (success, stdout +
/// stderr).
fn cli(cfg: &Path, args: &[&str]) -> (bool, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tinyscale"))
        .args(args)
        .arg("--config")
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the CLI");
    if !common::eventually(30, || c.try_wait().ok().flatten().is_some()) {
        let _ = c.kill();
        let _ = c.wait();
        panic!("CLI {args:?} did not answer within 30 s");
    }
    let out = c.wait_with_output().expect("CLI output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

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
    let cfg = dir.join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server_url: http://127.0.0.1:{port}\nlisten_addr: 127.0.0.1:{port}\ndata_dir: {d}\n\
             unix_socket: {d}/admin.sock\ntls_listen_addr: \"\"\n\
             derp:\n  server:\n    enabled: true\n    stun_listen_addr: \"\"\n\
             dns:\n  base_domain: emfile.test\n\
             limits:\n  unidentified_connections: 100000\n  unidentified_connections_per_source: 100000\n\
             log:\n  level: info\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let log = dir.join("server.log");
    let logf = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tinyscale"));
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf);
    // SAFETY: only an async-signal-safe system call between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            use rustix::process::{setrlimit, Resource, Rlimit};
            let l = Rlimit {
                current: Some(NOFILE),
                maximum: Some(NOFILE),
            };
            setrlimit(Resource::Nofile, l).map_err(std::io::Error::from)
        });
    }
    let mut server = common::Serve(cmd.spawn().expect("start tinyscale serve"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut alive = |during: &str| {
        if let Ok(Some(st)) = server.0.try_wait() {
            panic!("server exited during {during} ({st}); log:\n{}", read(&log));
        }
    };
    assert!(
        common::eventually(30, || TcpStream::connect(addr).is_ok()),
        "server did not start; log:\n{}",
        read(&log)
    );
    alive("start");
    assert!(
        read(&log).contains(&format!("open files: soft limit {NOFILE}")),
        "the start-up log names the open-files limit:\n{}",
        read(&log)
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
        common::eventually(30, || read(&log).contains("Too many open files")),
        "{} connections held, but no accept failed with EMFILE; log:\n{}",
        held.len(),
        read(&log)
    );
    alive("EMFILE");
    // Stay out of descriptors until the next rate-limited line (10 s after
    // the first) reports how many failed accepts it held back.
    assert!(
        common::eventually(40, || !held_back(&read(&log)).is_empty()),
        "no second accept-failure line while out of descriptors; log:\n{}",
        read(&log)
    );
    alive("EMFILE");
    let counts = held_back(&read(&log));
    println!(
        "emfile: {} connections held; failed accepts held back between log lines: {counts:?}",
        held.len()
    );
    assert!(
        counts.iter().all(|&n| n <= MAX_HELD_BACK),
        "accept retried {counts:?} times between two log lines (bound {MAX_HELD_BACK}): \
         the loop spins instead of backing off; log:\n{}",
        read(&log)
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
    let (ok, out) = cli(&cfg, &["users", "create", "after-emfile"]);
    assert!(ok, "CLI over the admin socket after EMFILE: {out}");
    let (ok, out) = cli(&cfg, &["users", "list"]);
    assert!(ok && out.contains("after-emfile"), "users list: {out}");
    alive("the end");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
