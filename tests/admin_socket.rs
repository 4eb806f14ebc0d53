//! The admin socket's safety (issue 10 item 9) and its survival when the
//! process runs out of file descriptors (item 1): the real binary, started
//! with a small RLIMIT_NOFILE, is flooded with idle admin connections until
//! accept fails with EMFILE; it must stay alive and answer the CLI once
//! the flood ends. (tiny_http, which served this socket before, unwrapped a
//! failed socket clone on that path and a release build aborted.)

mod common;

use common::{eventually, free_port, tempdir, Serve};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn write_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("config.yaml");
    let port = free_port();
    std::fs::write(
        &cfg,
        format!(
            "data_dir: {}\nunix_socket: run/admin.sock\nlisten_addr: 127.0.0.1:{port}\n\
             server_url: http://127.0.0.1:{port}\nstun_listen_addr: \"\"\ntls_listen_addr: \"\"\n",
            dir.display()
        ),
    )
    .unwrap();
    cfg
}

/// The binary under test (`TINYSCALE_BIN` runs the same test against
/// another build, e.g. an older release, to compare).
fn bin() -> PathBuf {
    std::env::var_os("TINYSCALE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tinyscale").into())
}

fn cli(cfg: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(cfg)
        .env_remove("TINYSCALE_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn survives_emfile_on_the_admin_socket() {
    let dir = tempdir("emfile");
    let cfg = write_config(&dir);
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("TINYSCALE_CONFIG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("serve.log")).unwrap());
    // Soft and hard limit both 64: raising the soft limit at start cannot
    // lift it.
    unsafe {
        cmd.pre_exec(|| {
            let l = rustix::process::Rlimit {
                current: Some(64),
                maximum: Some(64),
            };
            rustix::process::setrlimit(rustix::process::Resource::Nofile, l)
                .map_err(std::io::Error::from)
        });
    }
    let mut srv = Serve(cmd.spawn().unwrap());
    assert!(
        eventually(30, || cli(&cfg, &["users", "create", "before"]).0),
        "server did not come up"
    );
    let sock = dir.join("run/admin.sock");
    // Far more idle connections than descriptors: the server's accept
    // fails with EMFILE for a while (each idle one is held until its head
    // deadline or until we close it).
    let mut flood = Vec::new();
    for _ in 0..200 {
        match UnixStream::connect(&sock) {
            Ok(s) => flood.push(s),
            Err(_) => break, // backlog full: the server is not accepting.
        }
    }
    assert!(flood.len() > 64, "only {} connections made", flood.len());
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        srv.0.try_wait().unwrap().is_none(),
        "the server died under EMFILE"
    );
    drop(flood);
    // The flood did reach EMFILE (said once, not every 100 ms).
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    let emfile = log.matches("accept failed").count();
    assert!(emfile >= 1, "no accept error logged: {log}");
    assert!(emfile < 5, "accept errors logged {emfile} times: {log}");
    let (ok, out) = {
        let mut last = (false, String::new());
        eventually(30, || {
            last = cli(&cfg, &["users", "create", "after"]);
            last.0
        });
        last
    };
    assert!(ok, "CLI after the flood: {out}");
    assert!(srv.0.try_wait().unwrap().is_none(), "server died");
    let (_, out) = cli(&cfg, &["users", "list"]);
    assert!(out.contains("before") && out.contains("after"), "{out}");
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
}

fn config_for(dir: &Path, sock: &Path) -> tinyscale::config::Config {
    let mut c = tinyscale::config::Config::defaults(dir);
    c.unix_socket = sock.to_path_buf();
    c.listen_addr = "127.0.0.1:0".parse().unwrap();
    c
}

#[test]
fn socket_mode_and_directory_checks() {
    let dir = tempdir("dir");
    // Created owner-only, the socket 0600 from the start.
    let server = tinyscale::app::build(config_for(&dir, &dir.join("run/a.sock")))
        .unwrap()
        .server
        .clone();
    tinyscale::api::spawn(server).unwrap();
    let md = std::fs::metadata(dir.join("run/a.sock")).unwrap();
    assert_eq!(md.mode() & 0o777, 0o600);
    let md = std::fs::metadata(dir.join("run")).unwrap();
    assert_eq!(md.mode() & 0o777, 0o700);

    // A directory others may write to (not sticky) is refused: they could
    // replace the socket.
    let open = dir.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut c = config_for(&dir, &open.join("b.sock"));
    c.database_path = dir.join("db2/db.redb");
    let e = tinyscale::api::spawn(tinyscale::app::build(c).unwrap().server.clone()).unwrap_err();
    assert!(e.to_string().contains("lets others replace"), "{e}");
    assert!(!open.join("b.sock").exists());
    // Sticky and world-writable (like /tmp) is fine.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut c = config_for(&dir, &open.join("c.sock"));
    c.database_path = dir.join("db3/db.redb");
    tinyscale::api::spawn(tinyscale::app::build(c).unwrap().server.clone()).unwrap();

    // Owned by someone else (only root can arrange that here).
    if rustix::process::geteuid().is_root() {
        let theirs = dir.join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let mut c = config_for(&dir, &theirs.join("d.sock"));
        c.database_path = dir.join("db4/db.redb");
        let e =
            tinyscale::api::spawn(tinyscale::app::build(c).unwrap().server.clone()).unwrap_err();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    } else {
        skip_or_fail("the foreign-owner case needs root to chown");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn skip_or_fail(why: &str) {
    if std::env::var_os("CI").is_some_and(|v| v == "true") {
        panic!("CI=true: {why}");
    }
    eprintln!("SKIPPED part of the test: {why}");
}

/// A peer running as another uid is refused even when the socket's mode
/// would let it connect (as `unix_socket_permission: "0770"` might).
#[test]
fn peer_uid_is_checked() {
    if !rustix::process::geteuid().is_root() {
        return skip_or_fail("running a client as another uid needs root");
    }
    let dir = tempdir("peer");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = write_config(&dir);
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir(dir.join("run")).unwrap();
    std::fs::set_permissions(dir.join("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (c, _) = tinyscale::config::load(Some(&cfg)).unwrap();
    let server = tinyscale::app::build(c).unwrap().server.clone();
    tinyscale::api::spawn(server.clone()).unwrap();
    let sock = dir.join("run/admin.sock");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    // Root (our uid) is served.
    let (ok, out) = cli(&cfg, &["users", "create", "mine"]);
    assert!(ok, "{out}");
    // uid 65534 connects (the mode allows it) and is refused.
    let out = Command::new(bin())
        .args(["users", "create", "theirs", "--config"])
        .arg(&cfg)
        .env_remove("TINYSCALE_CONFIG")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(server.state().find_user("theirs").is_none());
    assert!(server.state().find_user("mine").is_some());
    let _ = std::fs::remove_dir_all(&dir);
}
