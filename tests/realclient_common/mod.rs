//! Shared harness for the real-client end-to-end tests (`tests/e2e_*.rs`), parameterised by the
//! namespace prefix: every test drives REAL Tailscale clients (tests/realclient/*.sh) in network
//! namespaces against the `tinyscale` binary, under one machine-wide lock, with a Drop guard that
//! stops everything by PID.
#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tinyscale::client::netmap::NetMap;

/// Prints straight to stderr, past libtest's output capture, so the figures show in `cargo test` logs.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "[e2e] {}", format!($($t)*));
    }};
}

/// One real-client run at a time on this machine (the tests share the test subnet, the bridge
/// address and the fixed TLS/STUN ports).
pub const LOCK_DIR: &str = "/tmp/tinyscale-e2e-realclient.lock";

pub fn harness_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/realclient")
}

pub fn server_bin() -> PathBuf {
    std::env::var_os("TINYSCALE_E2E_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tinyscale")))
}

pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI")
            .ok()
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("true" | "1" | "yes")
    )
}

pub fn run_ok(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.status().map(|s| s.success()).unwrap_or(false)
}

pub fn have(tool: &str) -> bool {
    run_ok(Command::new("sh").args(["-c", &format!("command -v {tool}")]))
}

/// Why this machine cannot run a real-client test, if it cannot.
pub fn cannot_run() -> Option<String> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Some("needs Linux x86_64 (the pinned client binary)".into());
    }
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() != Some("0") {
        return Some(format!(
            "needs root for network namespaces (uid is {})",
            uid.unwrap_or_else(|| "unknown".into())
        ));
    }
    if !run_ok(Command::new("ip").args(["netns", "list"])) {
        return Some("`ip netns` is unavailable (install iproute2)".into());
    }
    for tool in ["curl", "timeout", "setsid", "sha256sum", "bash"] {
        if !have(tool) {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// The skip-or-fail preamble: Some(()) when the test can go on. Prints why it skips; panics under
/// CI=true instead of skipping. Also installs the client (idempotent, sha256-pinned).
pub fn preflight(what: &str) -> Option<()> {
    if let Some(why) = cannot_run() {
        assert!(!in_ci(), "{what} cannot run under CI=true: {why}");
        say!("SKIPPED {what}: {why} (run as root with iproute2 and curl; CI=true makes this a failure)");
        return None;
    }
    let out = Command::new("timeout")
        .args(["-k", "5", "900", "bash"])
        .arg(harness_dir().join("install.sh"))
        .stdin(Stdio::null())
        .output()
        .expect("run install.sh");
    if !out.status.success() {
        let why = format!(
            "tests/realclient/install.sh failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!in_ci(), "{why}");
        say!("SKIPPED {what}: {why}");
        return None;
    }
    Some(())
}

/// One run at a time on this machine (a mkdir lock; a lock whose owner PID is gone is taken over).
/// Waits up to 15 minutes.
pub struct RunLock;

impl RunLock {
    pub fn take() -> RunLock {
        let deadline = Instant::now() + Duration::from_secs(900);
        let mut said = false;
        loop {
            if fs::create_dir(LOCK_DIR).is_ok() {
                fs::write(format!("{LOCK_DIR}/pid"), std::process::id().to_string())
                    .expect("write lock pid");
                return RunLock;
            }
            let owner = fs::read_to_string(format!("{LOCK_DIR}/pid")).unwrap_or_default();
            let owner = owner.trim();
            if owner.is_empty() || !Path::new(&format!("/proc/{owner}")).exists() {
                std::thread::sleep(Duration::from_millis(300));
                let again = fs::read_to_string(format!("{LOCK_DIR}/pid")).unwrap_or_default();
                if again.trim() == owner {
                    let _ = fs::remove_dir_all(LOCK_DIR);
                }
                continue;
            }
            assert!(
                Instant::now() < deadline,
                "another real-client e2e run (pid {owner}) holds {LOCK_DIR} for 15 minutes"
            );
            if !said {
                say!("waiting for another real-client e2e run (pid {owner}) to finish");
                said = true;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(LOCK_DIR);
    }
}

/// What goes into the server's config file.
#[derive(Debug, Clone, Default)]
pub struct ServerOpts {
    /// Control port on the bridge address.
    pub port: u16,
    /// TLS (DERP, HTTPS control fallback) port on the bridge address; 0 = a free port.
    pub tls_port: u16,
    pub derp_enabled: bool,
    pub policy_path: Option<PathBuf>,
    /// `node.ephemeral.inactivity_timeout` in seconds (None = the server's default).
    pub ephemeral_timeout_secs: Option<u64>,
    /// The body of the config's `dns:` section, each line indented by two spaces (None = MagicDNS
    /// on with `base_domain: e2e.internal`).
    pub dns: Option<String>,
    /// More top-level YAML appended to the config as is (e.g. an `oidc:` section); "" = none.
    pub extra_yaml: String,
    /// DERP map files (`derp.paths`) merged over the embedded region.
    pub derp_paths: Vec<PathBuf>,
}

/// Spawns `bin serve --config cfg` in its own process group, bounded by `timeout` and tied to the
/// test's life by `setpriv --pdeathsig` when available; output goes to `log`.
pub fn spawn_server(bin: &Path, config: &Path, log: &Path) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = if run_ok(Command::new("setpriv").args(["--pdeathsig", "TERM", "true"])) {
        let mut c = Command::new("setpriv");
        c.args(["--pdeathsig", "TERM", "--", "timeout", "-k", "5", "1200"]);
        c
    } else {
        let mut c = Command::new("timeout");
        c.args(["-k", "5", "1200"]);
        c
    };
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.arg(bin)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

/// Waits (bounded) until `GET url` (the server's /key) answers; panics if the child exits.
pub fn wait_server_up(child: &mut Child, url: &str, log: &Path, limit: Duration) -> String {
    wait_for("server answers GET /key?v=130", limit, || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "tinyscale serve exited early ({status}); log:\n{}",
                tail(log, 40)
            );
        }
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "2", url])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && body.contains("mkey:")).then_some(body)
    })
}

/// PIDs of the direct children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Stops a server started by [`spawn_server`]: TERM to the leader (timeout forwards it), then KILL
/// of its process group.
pub fn stop_child(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
}

/// `tinyscale <args> --config <cfg>`, bounded; returns stdout, panics on failure.
pub fn cli(bin: &Path, config: &Path, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["-k", "5", "30"])
        .arg(bin)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run tinyscale CLI");
    assert!(
        out.status.success(),
        "tinyscale {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn cli_json(bin: &Path, config: &Path, args: &[&str]) -> Value {
    let out = cli(bin, config, args);
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("tinyscale {args:?}: not JSON ({e}): {out}"))
}

/// Owns everything a real-client test starts; its Drop stops it all (by PID) and deletes the
/// namespaces, also when an assertion fails.
pub struct Harness {
    pub prefix: &'static str,
    pub dir: PathBuf,
    pub run: PathBuf,
    pub subnet: String,
    pub bin: PathBuf,
    pub config: PathBuf,
    pub server: Option<Child>,
    pub opts: Option<ServerOpts>,
    pub netns_up: bool,
    pub node_names: Vec<String>,
    _lock: RunLock,
}

impl Harness {
    /// The start of every real-client test: [`preflight`] (None = skip, said why), then the
    /// harness with namespaces `nodes` up; prints the temp dir and the topology.
    pub fn begin(what: &str, prefix: &'static str, nodes: &[&str]) -> Option<Harness> {
        preflight(what)?;
        let mut h = Harness::new(prefix);
        say!(
            "{what}: temp dir {} (server binary {})",
            h.dir.display(),
            h.bin.display()
        );
        let topo = h.netns_up(nodes);
        say!("topology: {}", topo.replace('\n', " "));
        Some(h)
    }

    /// `prefix`: netns `PREFIX-NAME`, bridge `PREFIXbr0` (at most 3 characters).
    pub fn new(prefix: &'static str) -> Harness {
        let lock = RunLock::take();
        let dir =
            std::env::temp_dir().join(format!("tinyscale-e2e-{prefix}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        let run = dir.join("run");
        let subnet = pick_subnet(prefix);
        Harness {
            prefix,
            config: dir.join("config.yaml"),
            dir,
            run,
            subnet,
            bin: server_bin(),
            server: None,
            opts: None,
            netns_up: false,
            node_names: Vec::new(),
            _lock: lock,
        }
    }

    pub fn host_ip(&self) -> String {
        format!("{}.1", self.subnet)
    }

    pub fn underlay_ip(&self, index: u8) -> String {
        format!("{}.{}", self.subnet, 11 + index)
    }

    pub fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    /// A harness script with the harness env, bounded by `timeout`.
    pub fn script(&self, name: &str, args: &[&str], secs: u64) -> Output {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", &secs.to_string(), "bash"])
            .arg(harness_dir().join(name))
            .args(args)
            .env("REALCLIENT_RUN", &self.run)
            .env("REALCLIENT_PREFIX", self.prefix)
            .env("REALCLIENT_SUBNET", &self.subnet)
            .stdin(Stdio::null());
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
    }

    pub fn script_ok(&self, name: &str, args: &[&str], secs: u64) -> String {
        let out = self.script(name, args, secs);
        assert!(
            out.status.success(),
            "{name} {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn node(&self, args: &[&str], secs: u64) -> String {
        self.script_ok("node.sh", args, secs)
    }

    /// `netns.sh up NAMES...`; returns the topology text.
    pub fn netns_up(&mut self, names: &[&str]) -> String {
        self.netns_up = true;
        self.node_names = names.iter().map(|s| s.to_string()).collect();
        let mut args = vec!["up"];
        args.extend_from_slice(names);
        self.script_ok("netns.sh", &args, 120)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        cli(&self.bin, &self.config, args)
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        cli_json(&self.bin, &self.config, args)
    }

    pub fn nodes(&self) -> Vec<Value> {
        match self.cli_json(&["nodes", "list", "-o", "json"]) {
            Value::Array(v) => v,
            Value::Null => vec![],
            other => panic!("nodes list -o json: expected an array, got {other}"),
        }
    }

    /// `preauthkeys create --user USER FLAGS -o json` → the key.
    pub fn preauth_key(&self, user: &str, flags: &[&str]) -> String {
        let mut args = vec!["preauthkeys", "create", "--user", user];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["-o", "json"]);
        let key = self.cli_json(&args);
        match key.get("key").and_then(Value::as_str) {
            Some(k) => k.to_owned(),
            None => panic!("no `key` in {key}"),
        }
    }

    /// `node.sh start NAME` against our server (nodes live at most 900 s).
    pub fn start_node(&self, name: &str, control: &str, key: &str, ts_port: u16, extra: &[&str]) {
        let port = ts_port.to_string();
        let mut args = vec!["start", name, "--control", control, "--authkey", key];
        args.extend_from_slice(&["--ts-port", &port, "--max-seconds", "900"]);
        args.extend_from_slice(extra);
        self.node(&args, 60);
    }

    pub fn node_log_path(&self, name: &str) -> PathBuf {
        self.run.join(name).join("caddy.log")
    }

    /// NAME's stdout: with `TS_DEBUG_MAP=1` the client dumps every MapResponse there.
    pub fn node_stdout_path(&self, name: &str) -> PathBuf {
        self.run.join(name).join("stdout.log")
    }

    /// The MapResponses node NAME dumped (`--env TS_DEBUG_MAP=1`: tsnet's `MapResponse: {…}`
    /// lines in its stdout.log, plain or inside a JSON log line's `msg`), in order.
    pub fn map_dumps(&self, name: &str) -> Vec<Value> {
        map_dumps_in(&read_lossy(&self.node_stdout_path(name)))
    }

    /// What node NAME believes from its dumped MapResponses, applied in order as the client
    /// applies them (`tinyscale::client::netmap`, map.md §5); and how many there were.
    pub fn dumped_netmap(&self, name: &str) -> (NetMap, usize) {
        let dumps = self.map_dumps(name);
        let mut nm = NetMap::default();
        for m in &dumps {
            nm.apply(m);
        }
        (nm, dumps.len())
    }

    pub fn server_log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    pub fn control_url(&self) -> String {
        let port = self.opts.as_ref().expect("server configured").port;
        format!("http://{}:{port}", self.host_ip())
    }

    /// A free TCP port on the bridge address.
    pub fn free_port(&self) -> u16 {
        TcpListener::bind((self.host_ip().as_str(), 0))
            .expect("bind probe port")
            .local_addr()
            .unwrap()
            .port()
    }

    /// Writes the config (DERP + STUN + TLS on the bridge address) and starts the server.
    pub fn start_server(&mut self, mut opts: ServerOpts) {
        if opts.tls_port == 0 {
            opts.tls_port = self.free_port();
        }
        let data = self.dir.join("data");
        fs::create_dir_all(&data).unwrap();
        let host = self.host_ip();
        let mut policy = match &opts.policy_path {
            Some(p) => format!("policy:\n  mode: file\n  path: {}\n", p.display()),
            None => String::new(),
        };
        if let Some(secs) = opts.ephemeral_timeout_secs {
            policy += &format!("node:\n  ephemeral:\n    inactivity_timeout: {secs}s\n");
        }
        let dns = opts
            .dns
            .clone()
            .unwrap_or_else(|| "  magic_dns: true\n  base_domain: e2e.internal\n".into());
        let config = format!(
            "# tinyscale e2e test config (written by tests/realclient_common)
data_dir: {data}
server_url: http://{host}:{port}
listen_addr: {host}:{port}
tls_listen_addr: {host}:{tls_port}
noise:
  private_key_path: noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
derp:
  server:
    enabled: {derp}
    region_id: 999
    region_code: e2e
    region_name: tinyscale e2e
    stun_listen_addr: {host}:3478
    ipv4: {host}
{derp_paths}database:
  path: db.redb
unix_socket: tinyscale.sock
dns:
{dns}{policy}log:
  level: debug
{extra}",
            extra = opts.extra_yaml,
            derp_paths = if opts.derp_paths.is_empty() {
                String::new()
            } else {
                let l: Vec<String> = opts
                    .derp_paths
                    .iter()
                    .map(|p| format!("    - {}\n", p.display()))
                    .collect();
                format!("  paths:\n{}", l.concat())
            },
            data = data.display(),
            port = opts.port,
            tls_port = opts.tls_port,
            derp = opts.derp_enabled,
        );
        fs::write(&self.config, config).unwrap();
        self.opts = Some(opts);
        self.launch_server();
    }

    /// Starts the server with the config already written (the same data dir every time).
    pub fn launch_server(&mut self) -> Duration {
        let t0 = Instant::now();
        let mut child = spawn_server(&self.bin, &self.config, &self.server_log());
        say!(
            "server: {} serve --config {} (pid {})",
            self.bin.display(),
            self.config.display(),
            child.id()
        );
        let url = format!("{}/key?v=130", self.control_url());
        let body = wait_server_up(
            &mut child,
            &url,
            &self.server_log(),
            Duration::from_secs(30),
        );
        self.server = Some(child);
        let up = t0.elapsed();
        say!(
            "server up after {:.1}s: GET /key -> {}",
            up.as_secs_f64(),
            body.trim()
        );
        up
    }

    /// Simulated crash: SIGKILL of the `tinyscale` process itself (the child of `timeout`), by PID.
    /// Returns the PID killed.
    pub fn kill_server(&mut self) -> u32 {
        let mut child = self.server.take().expect("server running");
        let leader = child.id();
        let server_pid = children(leader).into_iter().next().unwrap_or(leader);
        let _ = Command::new("kill")
            .args(["-KILL", &server_pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return server_pid;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop_child(&mut child);
        server_pid
    }

    pub fn stop_server(&mut self) {
        if let Some(mut child) = self.server.take() {
            stop_child(&mut child);
        }
    }

    /// curl from inside node NAME's namespace.
    pub fn curl(&self, node: &str, url: &str, max_secs: u32) -> (u16, Vec<u8>) {
        curl_in(&self.ns(node), url, max_secs)
    }

    /// Waits (bounded) until NAME's local proxy answers 200 from its upstream over the tailnet;
    /// returns the body and the time it took.
    pub fn fetch_via(&self, node: &str, what: &str, limit: Duration) -> (String, Duration) {
        let t0 = Instant::now();
        let body = wait_for(what, limit, || {
            let (code, body) = self.curl(node, "http://127.0.0.1:8080/", 10);
            (code == 200).then(|| String::from_utf8_lossy(&body).trim().to_owned())
        });
        let took = t0.elapsed();
        say!("{what}: {body:?} ({:.1}s)", took.as_secs_f64());
        (body, took)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            say!("FAILED; server log tail:\n{}", tail(&self.server_log(), 60));
            for n in &self.node_names {
                let p = self.node_log_path(n);
                if p.exists() {
                    say!("node {n} log tail ({}):\n{}", p.display(), tail(&p, 25));
                }
            }
        }
        if self.run.exists() {
            let _ = self.script("node.sh", &["stop-all"], 60);
        }
        self.stop_server();
        if self.netns_up {
            let _ = self.script("netns.sh", &["down"], 60);
        }
        if failed || std::env::var_os("TINYSCALE_E2E_KEEP").is_some() {
            say!("kept {} for inspection", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The interface (other than our bridge) holding an address or route in `subnet`.0/24, if any.
pub fn subnet_holder(prefix: &str, subnet: &str) -> Option<String> {
    let ours = format!("{prefix}br0");
    let run = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let addr = format!(" {subnet}.");
    let addrs = run(&["-o", "-4", "addr", "show"]);
    let by_addr = addrs
        .lines()
        .filter(|l| l.contains(&addr))
        .filter_map(|l| l.split_whitespace().nth(1));
    let routes = run(&["-o", "-4", "route", "show", "to", &format!("{subnet}.0/24")]);
    let by_route = routes
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "dev").nth(1));
    by_addr
        .chain(by_route)
        .find(|d| *d != ours)
        .map(str::to_owned)
}

/// The test /24: `REALCLIENT_SUBNET` if set, else the first of 198.18.0 … 198.18.15 that no other
/// interface uses. Waits (bounded) when none is free.
pub fn pick_subnet(prefix: &str) -> String {
    let candidates: Vec<String> = match std::env::var("REALCLIENT_SUBNET") {
        Ok(s) if !s.is_empty() => vec![s],
        _ => (0..16).map(|i| format!("198.18.{i}")).collect(),
    };
    let mut said = false;
    wait_for("a free test subnet", Duration::from_secs(600), || {
        if let Some(free) = candidates
            .iter()
            .find(|s| subnet_holder(prefix, s).is_none())
        {
            return Some(free.clone());
        }
        if !said {
            say!("test subnet(s) {candidates:?} in use by other interfaces; waiting up to 10 min");
            said = true;
        }
        None
    })
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = read_lossy(path);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `f` every 250 ms until it returns Some, or panics after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < limit,
            "timed out after {}s waiting for: {what}",
            limit.as_secs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The `msg` fields of a node's JSON-lines log, from byte `from` on.
pub fn log_msgs(path: &Path, from: usize) -> Vec<String> {
    let text = read_lossy(path);
    log_msgs_in(text.get(from.min(text.len())..).unwrap_or(""))
}

pub fn log_msgs_in(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("msg").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// The node's own tailnet addresses from its newest `netmap: self: [..] ... [100.x/32 fd7a:../128]` line.
pub fn self_ips(path: &Path) -> Option<Vec<String>> {
    let msgs = log_msgs(path, 0);
    let line = msgs.iter().rev().find_map(|m| {
        m.lines()
            .find(|l| l.starts_with("netmap: self:"))
            .map(str::to_owned)
    })?;
    let open = line.rfind('[')?;
    let close = line.rfind(']')?;
    let ips: Vec<String> = line
        .get(open + 1..close)?
        .split_whitespace()
        .map(|p| p.split('/').next().unwrap_or(p).to_owned())
        .filter(|p| p.starts_with("100.") || p.contains(':'))
        .collect();
    (!ips.is_empty()).then_some(ips)
}

/// Peer count from the newest `magicsock: got updated network map; N peers` line at or after `from`.
pub fn last_peer_count(path: &Path, from: usize) -> Option<(usize, String)> {
    log_msgs(path, from).into_iter().rev().find_map(|m| {
        let rest = m.split("magicsock: got updated network map; ").nth(1)?;
        let n = rest.split_whitespace().next()?.parse().ok()?;
        Some((n, m.trim().to_owned()))
    })
}

/// `curl` from inside netns `ns`; returns (HTTP status or 0, body).
pub fn curl_in(ns: &str, url: &str, max_secs: u32) -> (u16, Vec<u8>) {
    let out = Command::new("timeout")
        .args([
            "-k",
            "2",
            &(max_secs + 2).to_string(),
            "ip",
            "netns",
            "exec",
            ns,
        ])
        .args([
            "curl",
            "-sS",
            "--max-time",
            &max_secs.to_string(),
            "-w",
            "\n%{http_code}",
            url,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let mut body = out.stdout;
    let nl = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&body[nl..])
        .trim()
        .parse()
        .unwrap_or(0);
    body.truncate(nl);
    (code, body)
}

/// `MapResponse: {…}` dumps in `text` (Go's `log.Printf` of indented JSON: the JSON runs over
/// several lines; or one JSON log line whose `msg` holds it), in order.
pub fn map_dumps_in(text: &str) -> Vec<Value> {
    const TAG: &str = "MapResponse: ";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(TAG) {
        let line_start = rest[..at].rfind('\n').map_or(0, |i| i + 1);
        let after = &rest[at + TAG.len()..];
        if rest[line_start..].starts_with('{') {
            // a JSON log line: the dump is inside its `msg`
            let line_end = rest[at..].find('\n').map_or(rest.len(), |i| at + i);
            let msg = serde_json::from_str::<Value>(&rest[line_start..line_end])
                .ok()
                .and_then(|v| v.get("msg").and_then(Value::as_str).map(str::to_owned));
            if let Some(m) = msg.as_deref().and_then(|m| m.split_once(TAG)) {
                if let Ok(v) = serde_json::from_str(m.1) {
                    out.push(v);
                }
            }
            rest = &rest[line_end..];
            continue;
        }
        let mut it = serde_json::Deserializer::from_str(after).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                out.push(v);
                rest = &after[it.byte_offset()..];
            }
            // a dump still being written, or garbage: skip this tag
            _ => rest = after,
        }
    }
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned()
}

pub fn str_field<'a>(v: &'a Value, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| v.get(*n).and_then(Value::as_str))
}

/// A Headscale CLI timestamp (`{"seconds": N}`) as Unix seconds.
pub fn ts_field(v: &Value, name: &str) -> Option<i64> {
    v.get(name)?.get("seconds")?.as_i64()
}

/// Node id as the CLI prints it (number, or string in the REST API shape).
pub fn node_id(n: &Value) -> String {
    match n.get("id") {
        Some(Value::Number(x)) => x.to_string(),
        Some(Value::String(s)) => s.clone(),
        other => panic!("node without id: {other:?} in {n}"),
    }
}

pub fn node_ips(n: &Value) -> Vec<String> {
    n.get("ip_addresses")
        .or_else(|| n.get("ipAddresses"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

pub fn find_node<'a>(nodes: &'a [Value], name: &str, ip4: &str) -> Option<&'a Value> {
    nodes
        .iter()
        .find(|n| node_ips(n).iter().any(|ip| ip == ip4))
        .or_else(|| {
            nodes
                .iter()
                .find(|n| str_field(n, &["given_name", "givenName", "name"]) == Some(name))
        })
}

pub fn describe(n: &Value) -> String {
    format!(
        "id={} name={} ips={:?} online={}",
        node_id(n),
        str_field(n, &["given_name", "givenName", "name"]).unwrap_or("?"),
        node_ips(n),
        n.get("online").and_then(Value::as_bool).unwrap_or(false)
    )
}

pub fn describe_all(nodes: &[Value]) -> String {
    nodes.iter().map(describe).collect::<Vec<_>>().join("; ")
}

/// The node's log lines saying it sends to a peer through our DERP region (magicsock logs this when
/// it starts writing to the peer via DERP; that the bytes really crossed the relay follows from the
/// blocked UDP, the successful transfer, and the outage while the server is down).
pub fn derp_route_lines(path: &Path) -> Vec<String> {
    log_msgs(path, 0)
        .into_iter()
        .filter(|m| m.contains("derp route for") && m.contains("derp-999"))
        .map(|m| m.trim().to_owned())
        .collect()
}

/// Direct-path lines (`now using <underlay ip>:<port>`) towards a node of the test /24.
pub fn direct_lines(h: &Harness, path: &Path) -> Vec<String> {
    let needle = format!("now using {}.", h.subnet);
    log_msgs(path, 0)
        .into_iter()
        .filter(|m| m.contains(&needle))
        .collect()
}
