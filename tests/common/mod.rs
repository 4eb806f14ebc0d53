//! Shared helpers for integration tests: an in-process server on loopback.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tinyscale::config::Config;
use tinyscale::control::SharedServer;

pub struct TestServer {
    pub server: SharedServer,
    /// The planes around it (held by the listener task, not by the test,
    /// so that `stop` sees the server let go).
    pub app: std::sync::Weak<tinyscale::app::App>,
    pub task: Option<smol::Task<()>>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tinyscale-test-{tag}-{}-{}",
        std::process::id(),
        tinyscale::keys::to_hex(&tinyscale::keys::random32()[..4])
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::defaults(dir);
    cfg.listen_addr = "127.0.0.1:0".parse().unwrap();
    cfg.stun_listen_addr = None;
    // The TLS listener (DERP, HTTPS control) on a free port: the DERP map
    // offers the embedded region only while it is bound.
    cfg.tls_listen_addr = Some("127.0.0.1:0".parse().unwrap());
    cfg.base_domain = "tail.test".into();
    cfg.ephemeral_inactivity_timeout = Duration::from_secs(12);
    // Every test client connects from 127.0.0.1, some in bursts; the
    // unidentified-connection caps have tests of their own (hostile.rs).
    cfg.max_unidentified = 100_000;
    cfg.max_unidentified_per_source = 100_000;
    cfg
}

pub fn start_with(cfg: Config, dir: PathBuf) -> TestServer {
    let app = tinyscale::app::build(cfg).unwrap();
    let server = app.server.clone();
    let (addr, task) = tinyscale::app::start_background(&app).unwrap();
    TestServer {
        server,
        app: std::sync::Arc::downgrade(&app),
        addr,
        dir,
        task: Some(task),
    }
}

pub fn start(tag: &str) -> TestServer {
    let dir = tempdir(tag);
    start_with(config(&dir), dir)
}

impl TestServer {
    /// Stops listening and waits until every connection task let go of the
    /// server, so its database closes (a restart within one process).
    pub fn stop(mut self) {
        if let Some(t) = self.task.take() {
            smol::block_on(t.cancel());
        }
        for _ in 0..200 {
            if std::sync::Arc::strong_count(&self.server) == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            std::sync::Arc::strong_count(&self.server),
            1,
            "server still referenced"
        );
        self.dir = PathBuf::new();
    }

    /// Creates a user (if needed) and a key; returns the secret.
    pub fn key(&self, user: &str, reusable: bool, ephemeral: bool, tags: &[&str]) -> String {
        let mut st = self.server.state();
        if st.find_user(user).is_none() {
            st.create_user(user, "", "").unwrap();
        }
        let u = if tags.is_empty() { Some(user) } else { None };
        st.create_preauth_key(
            u,
            reusable,
            ephemeral,
            None,
            tags.iter().map(|s| s.to_string()).collect(),
        )
        .unwrap()
        .1
    }
}

/// Runs `f` with a deadline; panics on timeout so tests never hang.
pub fn block_on_timeout<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    use futures_lite::FutureExt;
    smol::block_on(f.or(async move {
        async_io::Timer::after(Duration::from_secs(secs)).await;
        panic!("test timed out after {secs} s");
    }))
}

use tinyscale::client::{self, netmap::NetMap, Node};

/// Connects `node` and registers it with `key` (advertising `routes`),
/// without opening a map stream.
pub async fn register_with(
    ts: &TestServer,
    node: &Node,
    key: &str,
    routes: &[&str],
) -> client::Conn {
    let server_pub = client::fetch_key(ts.addr).await.unwrap();
    let mut conn = client::connect(ts.addr, &server_pub, &node.machine_private)
        .await
        .unwrap();
    let mut rr = node.register_request(Some(key));
    rr.hostinfo = Some(node.hostinfo(routes));
    let r = conn.register(&rr).await.unwrap();
    assert_eq!(r.error, "", "register error");
    assert!(r.machine_authorized);
    conn
}

/// Registers `node` with `key` (advertising `routes`), opens its streaming
/// map (reporting `endpoints`) and applies the first map.
pub async fn join_with(
    ts: &TestServer,
    node: &Node,
    key: &str,
    routes: &[&str],
    endpoints: &[&str],
) -> (client::Conn, client::MapStream, NetMap) {
    let mut conn = register_with(ts, node, key, routes).await;
    let mut mr = node.map_request(true, endpoints);
    mr.hostinfo = Some(node.hostinfo(routes));
    let mut stream = conn.map(&mr).await.unwrap();
    let mut nm = NetMap::default();
    nm.apply(&stream.next().await.unwrap().expect("first map"));
    (conn, stream, nm)
}

/// [`join_with`] without routes or endpoints.
pub async fn join(
    ts: &TestServer,
    node: &Node,
    key: &str,
) -> (client::Conn, client::MapStream, NetMap) {
    join_with(ts, node, key, &[], &[]).await
}

/// Reads messages until `pred` holds for the accumulated netmap.
pub async fn until(
    stream: &mut client::MapStream,
    nm: &mut NetMap,
    pred: impl Fn(&NetMap) -> bool,
) {
    while !pred(nm) {
        let m = stream.next().await.unwrap().expect("stream ended");
        nm.apply(&m);
    }
}

/// Collects the messages `stream` delivers within `window` (keepalives
/// included), applying each to `nm`.
pub async fn messages_within(
    stream: &mut client::MapStream,
    nm: &mut NetMap,
    window: Duration,
) -> Vec<serde_json::Value> {
    use futures_lite::FutureExt;
    let end = std::time::Instant::now() + window;
    let mut got = vec![];
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return got;
        }
        let next = async { Some(stream.next().await.unwrap().expect("stream ended")) };
        let quiet = async {
            async_io::Timer::after(left).await;
            None
        };
        match next.or(quiet).await {
            Some(m) => {
                nm.apply(&m);
                got.push(m);
            }
            None => return got,
        }
    }
}

/// A `tinyscale serve` child process, killed and reaped on drop.
pub struct Serve(pub std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `yaml` as `dir/config.yaml` and starts `tinyscale serve` on it
/// (stdout and stderr to `dir/serve.log`, see [`serve_log`]); returns the
/// child and the config's path.
pub fn serve(dir: &Path, yaml: &str) -> (Serve, PathBuf) {
    serve_with(dir, yaml, |_| {})
}

/// [`serve`], with `prepare` adjusting the command before it is spawned
/// (e.g. [`limit_nofile`]).
pub fn serve_with(dir: &Path, yaml: &str, prepare: impl FnOnce(&mut Command)) -> (Serve, PathBuf) {
    let cfg = dir.join("config.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tinyscale"));
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("TINYSCALE_CONFIG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    prepare(&mut cmd);
    (Serve(cmd.spawn().expect("start tinyscale serve")), cfg)
}

/// What the server started by [`serve`] in `dir` has logged so far.
pub fn serve_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
}

/// Sets RLIMIT_NOFILE to `n`, soft *and* hard, in the child `cmd` starts,
/// so the server's raising its soft limit at start cannot help.
pub fn limit_nofile(cmd: &mut Command, n: u64) {
    // SAFETY: only an async-signal-safe system call between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            use rustix::process::{setrlimit, Resource, Rlimit};
            let l = Rlimit {
                current: Some(n),
                maximum: Some(n),
            };
            setrlimit(Resource::Nofile, l).map_err(std::io::Error::from)
        });
    }
}

/// Runs the binary (`args --config config`); returns exit code, stdout and
/// stderr. See [`cli_with`].
pub fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    cli_with(config, &[], args)
}

/// [`cli`] with `envs` set, after the variables that would point the CLI
/// elsewhere (config file, remote address, API key) are removed from the
/// test's own environment. Killed after [`CLI_DEADLINE`] so that a server
/// that stopped answering fails the test instead of hanging it.
pub fn cli_with(config: &Path, envs: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    use std::io::Read;
    let mut c = Command::new(env!("CARGO_BIN_EXE_tinyscale"));
    c.args(args).arg("--config").arg(config);
    for k in [
        "TINYSCALE_CONFIG",
        "TINYSCALE_CLI_ADDRESS",
        "TINYSCALE_CLI_API_KEY",
        "HEADSCALE_CLI_ADDRESS",
        "HEADSCALE_CLI_API_KEY",
    ] {
        c.env_remove(k);
    }
    c.envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("run the CLI");
    // Read both pipes while waiting: a long answer must not block the CLI.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut b);
            }
            String::from_utf8_lossy(&b).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let end = std::time::Instant::now() + CLI_DEADLINE;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the CLI") {
            break st;
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("CLI {args:?} did not answer within {CLI_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.code().unwrap_or(-1),
        out.join().unwrap(),
        err.join().unwrap(),
    )
}

/// How long one CLI command may take (a hang guard, not a timing).
pub const CLI_DEADLINE: Duration = Duration::from_secs(60);

/// An in-process admin plane for CLI tests: the server built from a
/// config file in a fresh temporary directory, its admin socket served
/// (`run/admin.sock`), no listener; the binary's CLI reads the same file.
pub struct AdminPlane {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub server: SharedServer,
}

impl Drop for AdminPlane {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts an [`AdminPlane`]; `yaml` is appended to its config (after
/// `data_dir` and `unix_socket`).
pub fn admin_plane(tag: &str, yaml: &str) -> AdminPlane {
    let dir = tempdir(tag);
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {}\nunix_socket: run/admin.sock\n{yaml}",
            dir.display()
        ),
    )
    .unwrap();
    let (cfg, used) = tinyscale::config::load(Some(&config)).unwrap();
    assert_eq!(used.as_deref(), Some(config.as_path()));
    let server = tinyscale::app::build(cfg).unwrap().server.clone();
    tinyscale::api::spawn(server.clone()).unwrap();
    AdminPlane {
        dir,
        config,
        server,
    }
}

impl AdminPlane {
    /// [`cli`] with this plane's config.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        cli(&self.config, args)
    }
}

/// Retries `f` every 100 ms until it holds or `secs` pass.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A loopback port nobody listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
