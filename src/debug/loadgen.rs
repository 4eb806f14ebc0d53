//! `tinyscale debug loadgen`: N synthetic nodes speaking the real protocol
//! (Noise IK, HTTP/2, register, streaming maps, lite updates) against a
//! server in another process, whose RSS and CPU time are read from /proc.
//!
//! Phases, each printed as it ends (a `--max-seconds` stop keeps what was
//! measured so far):
//! 1. idle server RSS; one core's X25519 rate (the handshake limit);
//! 2. connect + register N nodes with concurrency C (registrations/s);
//! 3. open N streaming maps, each consumed by a task that decodes every
//!    message; time until all N have their first map; RSS with N connected;
//! 4. K endpoint changes, one at a time: a lite update from one node with a
//!    fresh endpoint; latency until every stream that has that node as a
//!    peer got it (p50/p99/max, completion), server CPU and bytes per change;
//! 5. M bare connections (Noise handshake + HTTP/2 preface) with
//!    concurrency C: handshakes/s against the X25519 limit;
//! 6. with `--restart-cmd`, a reconnect storm: the server is killed
//!    (SIGKILL), started again by that command, and every node that was
//!    streaming reconnects at once (new TCP + Noise + HTTP/2 connection and
//!    a streaming map request, as a client does after losing its control
//!    connection; no new registration): time until all have a fresh map,
//!    peak server RSS (VmHWM of the new process), server CPU.

use super::procfs;
use crate::atomic64::AtomicU64;
use crate::client::{self, Conn, Node};
use crate::wire::mapframe;
use argh::FromArgs;
use futures_lite::FutureExt;
use serde::Deserialize;
use smol::channel::{self, Receiver, Sender};
use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Drive N synthetic nodes against a running server and measure it.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "loadgen")]
pub struct LoadgenCmd {
    /// control server URL, e.g. http://127.0.0.1:8080
    #[argh(option)]
    pub server: String,
    /// PID of the server process, for RSS and CPU time from /proc
    #[argh(option)]
    pub server_pid: Option<u32>,
    /// reusable pre-auth key for every node
    #[argh(option)]
    pub authkey: Option<String>,
    /// file with one reusable pre-auth key per line; nodes are split into
    /// equal contiguous blocks, one block per key (one user per key)
    #[argh(option)]
    pub keys_file: Option<String>,
    /// number of member nodes (default 100)
    #[argh(option, default = "100")]
    pub nodes: usize,
    /// extra nodes registered with --tagged-key (shared tagged servers)
    #[argh(option, default = "0")]
    pub tagged: usize,
    /// reusable pre-auth key carrying the tags of the --tagged nodes
    #[argh(option)]
    pub tagged_key: Option<String>,
    /// requests in flight at once while connecting (default 32)
    #[argh(option, default = "32")]
    pub concurrency: usize,
    /// endpoint changes to measure, one at a time (default 20)
    #[argh(option, default = "20")]
    pub changes: usize,
    /// bare Noise connections for the handshake rate (default 1000; 0 skips)
    #[argh(option, default = "1000")]
    pub handshakes: usize,
    /// time allowed for one change to reach every stream (default 30)
    #[argh(option, default = "30")]
    pub change_timeout: u64,
    /// stop after this many seconds whatever the phase (default 300)
    #[argh(option, default = "300")]
    pub max_seconds: u64,
    /// reconnect storm as the last phase: SIGKILL --server-pid, run this
    /// shell command (`sh -c`; it should `exec` the server so that the
    /// shell's PID becomes the server's), then every streaming node
    /// reconnects at once
    #[argh(option)]
    pub restart_cmd: Option<String>,
}

const KIB: f64 = 1024.0;
const MIB: f64 = 1024.0 * 1024.0;
/// Endpoints of measured changes: 203.0.113.x:(PORT_BASE + change number).
const PORT_BASE: u32 = 20000;

pub fn run(cmd: LoadgenCmd) -> i32 {
    let addr = match super::parse_server(&cmd.server) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("Error: {e}");
            return 2;
        }
    };
    let keys = match load_keys(&cmd) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("Error: {e}");
            return 2;
        }
    };
    let mut lg = Loadgen::new(cmd, addr, keys);
    let code = smol::block_on(lg.main());
    lg.summary();
    code
}

fn load_keys(cmd: &LoadgenCmd) -> Result<Vec<String>, String> {
    let keys: Vec<String> = match (&cmd.authkey, &cmd.keys_file) {
        (Some(k), None) => vec![k.clone()],
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| format!("--keys-file {f}: {e}"))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect(),
        _ => return Err("give exactly one of --authkey and --keys-file".into()),
    };
    if keys.is_empty() {
        return Err("no keys".into());
    }
    if cmd.tagged > 0 && cmd.tagged_key.is_none() {
        return Err("--tagged needs --tagged-key".into());
    }
    if cmd.nodes + cmd.tagged < 2 {
        return Err("--nodes: at least 2 nodes".into());
    }
    Ok(keys)
}

// ----- what the stream readers report -----------------------------------

enum Ev {
    /// First map of stream `i`: its own node ID and the bytes it took.
    First {
        i: usize,
        at: Instant,
        id: u64,
        bytes: u64,
    },
    /// Stream `i` saw the endpoint of measured change `k`.
    Got { i: usize, k: u32, at: Instant },
    /// Stream `i` ended.
    End { i: usize, err: String },
}

/// Only what the load generator needs; the rest is skipped by serde
/// (still scanned, so every message is really decoded).
#[derive(Deserialize, Default)]
#[serde(default)]
struct LiteMsg {
    #[serde(rename = "KeepAlive")]
    keep_alive: bool,
    #[serde(rename = "Node")]
    node: Option<LiteSelf>,
    #[serde(rename = "Peers")]
    peers: Option<Vec<LitePeer>>,
    #[serde(rename = "PeersChanged")]
    peers_changed: Option<Vec<LitePeer>>,
    #[serde(rename = "PeersRemoved")]
    peers_removed: Option<Vec<u64>>,
    #[serde(rename = "PeersChangedPatch")]
    patches: Option<Vec<LitePatch>>,
}

#[derive(Deserialize, Default)]
struct LiteSelf {
    #[serde(rename = "ID", default)]
    id: u64,
}

#[derive(Deserialize)]
struct LitePeer {
    #[serde(rename = "ID")]
    id: u64,
    #[serde(rename = "Endpoints", default)]
    endpoints: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct LitePatch {
    #[serde(rename = "NodeID")]
    node_id: u64,
    #[serde(rename = "Endpoints", default)]
    endpoints: Option<Vec<String>>,
}

/// The change number encoded in a measured endpoint.
fn marker(ep: &str) -> Option<u32> {
    let port: u32 = ep
        .strip_prefix("203.0.113.")?
        .rsplit_once(':')?
        .1
        .parse()
        .ok()?;
    port.checked_sub(PORT_BASE)
}

fn marker_endpoint(k: usize) -> String {
    format!("203.0.113.{}:{}", 1 + k % 250, PORT_BASE as usize + k)
}

struct Shared {
    /// Wire bytes received by all map streams.
    bytes: AtomicU64,
    /// Messages (keep-alives excluded) and what they carried, all streams.
    msgs: AtomicU64,
    changed: AtomicU64,
    patched: AtomicU64,
    full: AtomicU64,
    /// Peer IDs each stream currently knows.
    peers: Vec<Mutex<HashSet<u64>>>,
    events: Sender<Ev>,
}

/// Consumes one map stream: frames, zstd, JSON; tracks the peer set and
/// reports first map and measured endpoints.
async fn reader(i: usize, mut rx: crate::client::RecvStream, sh: Arc<Shared>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut json = Vec::new();
    let mut first = true;
    let mut my_bytes = 0u64;
    let err = loop {
        let chunk = match rx.data().await {
            None => break "end of stream".to_string(),
            Some(Err(e)) => break e.to_string(),
            Some(Ok(c)) => c,
        };
        sh.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        my_bytes += chunk.len() as u64;
        buf.extend_from_slice(&chunk);
        let mut used_total = 0;
        let mut failed = None;
        loop {
            let (body, used) = match mapframe::split_message(&buf[used_total..]) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    failed = Some(format!("frame: {e:?}"));
                    break;
                }
            };
            json.clear();
            if let Err(e) = mapframe::decode_zstd_raw(body, &mut json) {
                failed = Some(format!("zstd: {e:?}"));
                break;
            }
            used_total += used;
            let msg: LiteMsg = match serde_json::from_slice(&json) {
                Ok(m) => m,
                Err(e) => {
                    failed = Some(format!("json: {e}"));
                    break;
                }
            };
            let at = Instant::now();
            if msg.keep_alive {
                continue;
            }
            sh.msgs.fetch_add(1, Ordering::Relaxed);
            let changed = msg.peers_changed.as_ref().map_or(0, |v| v.len() as u64);
            sh.changed.fetch_add(changed, Ordering::Relaxed);
            if msg.peers.as_ref().is_some_and(|p| !p.is_empty()) {
                sh.full.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(p) = &msg.patches {
                sh.patched.fetch_add(p.len() as u64, Ordering::Relaxed);
            }
            let mut got = Vec::new();
            {
                let mut peers = sh.peers[i].lock().unwrap_or_else(|e| e.into_inner());
                match msg.peers.filter(|p| !p.is_empty()) {
                    Some(full) => {
                        peers.clear();
                        for p in full {
                            peers.insert(p.id);
                            got.extend(p.endpoints.iter().flatten().filter_map(|e| marker(e)));
                        }
                    }
                    None => {
                        for id in msg.peers_removed.iter().flatten() {
                            peers.remove(id);
                        }
                        for p in msg.peers_changed.into_iter().flatten() {
                            peers.insert(p.id);
                            got.extend(p.endpoints.iter().flatten().filter_map(|e| marker(e)));
                        }
                        for p in msg.patches.into_iter().flatten() {
                            if peers.contains(&p.node_id) {
                                got.extend(p.endpoints.iter().flatten().filter_map(|e| marker(e)));
                            }
                        }
                    }
                }
            }
            if first {
                first = false;
                let id = msg.node.map(|n| n.id).unwrap_or(0);
                let _ = sh.events.try_send(Ev::First {
                    i,
                    at,
                    id,
                    bytes: my_bytes,
                });
            }
            for k in got {
                let _ = sh.events.try_send(Ev::Got { i, k, at });
            }
        }
        buf.drain(..used_total);
        if let Some(e) = failed {
            break e;
        }
    };
    let _ = sh.events.try_send(Ev::End { i, err });
}

// ----- the run ------------------------------------------------------------

#[derive(Default)]
struct Figures {
    x25519_per_s: Option<f64>,
    idle_rss: Option<u64>,
    reg_per_s: Option<f64>,
    registered: usize,
    rss_registered: Option<u64>,
    first_maps_s: Option<f64>,
    first_maps: usize,
    rss_connected: Option<u64>,
    connected: usize,
    change_completion: Vec<f64>,
    change_latencies: Vec<f64>,
    change_missed: usize,
    cpu_per_change: Option<f64>,
    bytes_per_change: Option<f64>,
    handshakes_per_s: Option<f64>,
    handshakes_per_server_cpu_s: Option<f64>,
    storm: Option<Storm>,
    stopped: Option<String>,
}

/// What the reconnect storm measured.
struct Storm {
    nodes: usize,
    /// Restart command started -> GET /key answered.
    ready_s: Option<f64>,
    /// Restart command started -> last fresh map.
    fresh_s: f64,
    fresh: usize,
    /// Failed connection attempts (each retried), all nodes.
    retries: usize,
    peak_rss: Option<u64>,
    rss_after: Option<u64>,
    server_cpu: Option<f64>,
}

struct Slot {
    node: Node,
    conn: Conn,
}

struct Loadgen {
    cmd: LoadgenCmd,
    addr: SocketAddr,
    keys: Vec<String>,
    start: Instant,
    deadline: Instant,
    server_pub: [u8; 32],
    total: usize,
    slots: Vec<Mutex<Option<Slot>>>,
    /// Node ID of each stream's node (0 = not known yet).
    ids: Vec<u64>,
    alive: Vec<bool>,
    f: Figures,
}

/// Runs `f` until `deadline`; None if the deadline came first.
async fn until<T>(deadline: Instant, f: impl Future<Output = T>) -> Option<T> {
    async { Some(f.await) }
        .or(async {
            async_io::Timer::at(deadline).await;
            None
        })
        .await
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(s: f64) -> String {
    format!("{:.1} ms", s * 1000.0)
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / MIB)
}

impl Loadgen {
    fn new(cmd: LoadgenCmd, addr: SocketAddr, keys: Vec<String>) -> Loadgen {
        let total = cmd.nodes + cmd.tagged;
        let start = Instant::now();
        Loadgen {
            deadline: start + Duration::from_secs(cmd.max_seconds.max(1)),
            cmd,
            addr,
            keys,
            start,
            server_pub: [0; 32],
            total,
            slots: (0..total).map(|_| Mutex::new(None)).collect(),
            ids: vec![0; total],
            alive: vec![false; total],
            f: Figures::default(),
        }
    }

    fn say(&self, s: &str) {
        println!("[{:>7.2}s] {s}", self.start.elapsed().as_secs_f64());
    }

    fn rss(&self) -> Option<u64> {
        let pid = self.cmd.server_pid?;
        match procfs::rss_bytes(pid) {
            Ok(r) => {
                if let Some(d) = procfs::rss_detail(pid) {
                    self.say(&format!("  server VmRSS {} ({d})", mib(r)));
                }
                Some(r)
            }
            Err(e) => {
                self.say(&format!("cannot read RSS of server PID {pid}: {e}"));
                None
            }
        }
    }

    fn server_cpu(&self) -> Option<f64> {
        procfs::cpu_seconds(&self.cmd.server_pid?.to_string()).ok()
    }

    fn key_for(&self, i: usize) -> &str {
        if i >= self.cmd.nodes {
            return self.cmd.tagged_key.as_deref().unwrap_or(&self.keys[0]);
        }
        let per = self.cmd.nodes.div_ceil(self.keys.len());
        &self.keys[(i / per).min(self.keys.len() - 1)]
    }

    fn stop(&mut self, phase: &str) -> i32 {
        let msg = format!(
            "stopped: --max-seconds {} reached during {phase}",
            self.cmd.max_seconds
        );
        self.say(&msg);
        self.f.stopped = Some(msg);
        1
    }

    async fn main(&mut self) -> i32 {
        let want = (self.total + self.cmd.concurrency + 256) as u64;
        match procfs::raise_nofile(want) {
            Ok((soft, hard)) if soft >= want => {
                self.say(&format!("RLIMIT_NOFILE soft {soft} (hard {hard}); need about {want}"))
            }
            Ok((soft, hard)) => self.say(&format!(
                "WARNING: RLIMIT_NOFILE soft {soft} = hard {hard} < {want} needed: connections beyond it will fail (raise the hard limit, e.g. ulimit -Hn)"
            )),
            Err(e) => self.say(&format!("WARNING: cannot raise RLIMIT_NOFILE: {e}")),
        }
        if self.cmd.server_pid.is_none() {
            self.say("no --server-pid: server RSS and CPU figures are skipped");
        }
        self.server_pub = match until(self.deadline, client::fetch_key(self.addr)).await {
            Some(Ok(k)) => k,
            Some(Err(e)) => {
                self.say(&format!("GET /key from {}: {e}", self.addr));
                return 1;
            }
            None => return self.stop("GET /key"),
        };
        self.f.idle_rss = self.rss();
        if let Some(r) = self.f.idle_rss {
            self.say(&format!(
                "server RSS idle: {} ({:.0} KiB)",
                mib(r),
                r as f64 / KIB
            ));
        }
        self.x25519_rate();

        let (tx, rx) = channel::unbounded();
        let sh = Arc::new(Shared {
            bytes: AtomicU64::new(0),
            msgs: AtomicU64::new(0),
            changed: AtomicU64::new(0),
            patched: AtomicU64::new(0),
            full: AtomicU64::new(0),
            peers: (0..self.total)
                .map(|_| Mutex::new(HashSet::new()))
                .collect(),
            events: tx,
        });
        if !self.register_all().await {
            return self.stop("registration");
        }
        if !self.open_maps(&sh, &rx).await {
            return self.stop("opening maps");
        }
        if !self.changes(&sh, &rx).await {
            return self.stop("endpoint changes");
        }
        if !self.handshakes().await {
            return self.stop("handshakes");
        }
        if !self.storm(&sh, &rx).await {
            return self.stop("the reconnect storm");
        }
        let ended = rx.len();
        if ended > 0 {
            self.say(&format!("{ended} stream event(s) unread at the end"));
        }
        0
    }

    /// One core's X25519 rate, timed like the server's handshakes use it.
    /// Counted per CPU-second of this thread, so other processes sharing
    /// the core do not lower it.
    fn x25519_rate(&mut self) {
        let a = x25519_dalek::StaticSecret::from(crate::keys::random32());
        let b = x25519_dalek::PublicKey::from(crate::keys::x25519_public(&crate::keys::random32()));
        let t = Instant::now();
        let cpu0 = procfs::cpu_seconds("thread-self").ok();
        let mut n = 0u64;
        let mut acc = 0u8;
        while t.elapsed() < Duration::from_millis(2000) {
            for _ in 0..50 {
                acc ^=
                    std::hint::black_box(a.diffie_hellman(std::hint::black_box(&b))).as_bytes()[0];
            }
            n += 50;
        }
        std::hint::black_box(acc);
        let wall = t.elapsed().as_secs_f64();
        let cpu = cpu0.and_then(|c| Some(procfs::cpu_seconds("thread-self").ok()? - c));
        let secs = cpu.filter(|c| *c > 0.5).unwrap_or(wall);
        let rate = n as f64 / secs;
        self.f.x25519_per_s = Some(rate);
        self.say(&format!(
            "X25519 (x25519-dalek diffie_hellman, this build): {rate:.0} DH per CPU-second ({:.1} µs each; {:.0}/s by the wall clock, {:.0}% of the core was ours); handshake limit = rate / 5 = {:.0}/s",
            1e6 / rate,
            n as f64 / wall,
            100.0 * secs / wall,
            rate / 5.0
        ));
    }

    /// Prints what the map streams received since `since` and returns the
    /// new snapshot.
    fn traffic(&self, sh: &Shared, what: &str, since: [u64; 5]) -> [u64; 5] {
        let now = [
            sh.bytes.load(Ordering::Relaxed),
            sh.msgs.load(Ordering::Relaxed),
            sh.full.load(Ordering::Relaxed),
            sh.changed.load(Ordering::Relaxed),
            sh.patched.load(Ordering::Relaxed),
        ];
        let d: Vec<u64> = now.iter().zip(since).map(|(a, b)| a - b).collect();
        self.say(&format!(
            "  streams received {what}: {:.1} MiB in {} messages ({} full peer lists, {} PeersChanged nodes, {} PeersChangedPatch entries)",
            d[0] as f64 / MIB,
            d[1],
            d[2],
            d[3],
            d[4]
        ));
        now
    }

    /// Server and load generator CPU seconds and run-queue waits now.
    fn cpus(&self) -> [Option<f64>; 4] {
        let pid = self.cmd.server_pid.map(|p| p.to_string());
        [
            self.server_cpu(),
            procfs::cpu_seconds("self").ok(),
            pid.as_deref().and_then(procfs::run_queue_wait_seconds),
            procfs::run_queue_wait_seconds("self"),
        ]
    }

    fn cpu_line(&self, what: &str, wall: f64, before: [Option<f64>; 4]) {
        let after = self.cpus();
        let d = |i: usize| Some(after[i]? - before[i]?);
        let fmt = |cpu: Option<f64>, wait: Option<f64>| match (cpu, wait) {
            (Some(c), Some(w)) => format!(
                "{c:.2} s ({:.0}% of a core; {w:.2} s waiting for a CPU)",
                100.0 * c / wall
            ),
            (Some(c), None) => format!("{c:.2} s ({:.0}% of a core)", 100.0 * c / wall),
            _ => "n/a".into(),
        };
        self.say(&format!(
            "  CPU during {what} ({wall:.1} s): server {}, load generator {}",
            fmt(d(0), d(2)),
            fmt(d(1), d(3))
        ));
    }

    /// Runs `work(i)` for i in 0..n with `concurrency` workers; returns
    /// the number of successes, or None at the deadline.
    async fn workers<F, Fut>(&self, n: usize, work: F) -> Option<(usize, Vec<String>)>
    where
        F: Fn(usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let next = Arc::new(AtomicUsize::new(0));
        let work = Arc::new(work);
        let errors = Arc::new(Mutex::new((0usize, Vec::new())));
        let mut tasks = Vec::new();
        for _ in 0..self.cmd.concurrency.clamp(1, n.max(1)) {
            let (next, work, errors) = (next.clone(), work.clone(), errors.clone());
            tasks.push(smol::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    if let Err(e) = work(i).await {
                        let mut g = errors.lock().unwrap_or_else(|e| e.into_inner());
                        g.0 += 1;
                        if g.1.len() < 5 {
                            g.1.push(format!("#{i}: {e}"));
                        }
                    }
                }
            }));
        }
        let all = async {
            for t in tasks {
                t.await;
            }
        };
        until(self.deadline, all).await?;
        let g = errors.lock().unwrap_or_else(|e| e.into_inner());
        Some((n - g.0, g.1.clone()))
    }

    async fn register_all(&mut self) -> bool {
        let n = self.total;
        self.say(&format!(
            "registering {n} nodes ({} member, {} tagged, {} key(s)) with concurrency {}",
            self.cmd.nodes,
            self.cmd.tagged,
            self.keys.len(),
            self.cmd.concurrency
        ));
        let keys: Arc<Vec<String>> =
            Arc::new((0..n).map(|i| self.key_for(i).to_string()).collect());
        let (addr, server_pub) = (self.addr, self.server_pub);
        let (tx, rx) = channel::unbounded::<(usize, Slot)>();
        let cpu0 = self.cpus();
        let t = Instant::now();
        let done = self
            .workers(n, move |i| {
                let (keys, tx) = (keys.clone(), tx.clone());
                async move {
                    let node = Node::new(&format!("lg-{i}"));
                    let mut conn = client::connect(addr, &server_pub, &node.machine_private)
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    let r = conn
                        .register(&node.register_request(Some(&keys[i])))
                        .await
                        .map_err(|e| e.to_string())?;
                    if !r.error.is_empty() || !r.machine_authorized {
                        return Err(format!(
                            "register: error {:?}, authorized {}",
                            r.error, r.machine_authorized
                        ));
                    }
                    let _ = tx.try_send((i, Slot { node, conn }));
                    Ok(())
                }
            })
            .await;
        let elapsed = t.elapsed().as_secs_f64();
        while let Ok((i, s)) = rx.try_recv() {
            *self.slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
        }
        let Some((ok, errors)) = done else {
            return false;
        };
        self.f.registered = ok;
        self.f.reg_per_s = Some(ok as f64 / elapsed);
        self.say(&format!(
            "registered {ok}/{n} in {elapsed:.2} s: {:.0} registrations/s (each a new TCP + Noise IK + HTTP/2 connection and /machine/register)",
            ok as f64 / elapsed
        ));
        self.cpu_line("registration", elapsed, cpu0);
        for e in &errors {
            self.say(&format!("  registration failed: {e}"));
        }
        self.f.rss_registered = self.rss();
        if let (Some(r), Some(i)) = (self.f.rss_registered, self.f.idle_rss) {
            self.say(&format!(
                "server RSS with {ok} registered connections (no map streams): {} (+{:.1} KiB per node)",
                mib(r),
                r.saturating_sub(i) as f64 / KIB / ok.max(1) as f64
            ));
        }
        ok > 1
    }

    async fn open_maps(&mut self, sh: &Arc<Shared>, rx: &Receiver<Ev>) -> bool {
        let n = self.total;
        let slots: Vec<Option<Slot>> = self
            .slots
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).take())
            .collect();
        let slots: Arc<Vec<Mutex<Option<Slot>>>> =
            Arc::new(slots.into_iter().map(Mutex::new).collect());
        let want = slots
            .iter()
            .filter(|s| s.lock().map(|s| s.is_some()).unwrap_or(false))
            .count();
        self.say(&format!(
            "opening {want} streaming maps with concurrency {}",
            self.cmd.concurrency
        ));
        let cpu0 = self.cpus();
        let t = Instant::now();
        let opener = {
            let (slots, sh) = (slots.clone(), sh.clone());
            move |i: usize| {
                let (slots, sh) = (slots.clone(), sh.clone());
                async move {
                    let taken = slots[i].lock().unwrap_or_else(|e| e.into_inner()).take();
                    let Some(s) = taken else { return Ok(()) };
                    let req = s.node.map_request(true, &["198.51.100.1:41641"]);
                    let body = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
                    let r = s.conn.post("/machine/map", body).await;
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
                    let (status, rx) = r.map_err(|e| format!("map: {e}"))?;
                    if status != 200 {
                        return Err(format!("map: HTTP {status}"));
                    }
                    smol::spawn(reader(i, rx, sh)).detach();
                    Ok(())
                }
            }
        };
        let spawned = self.workers(n, opener).await;
        // Put the connections back for the lite updates.
        for (i, s) in slots.iter().enumerate() {
            *self.slots[i].lock().unwrap_or_else(|e| e.into_inner()) =
                s.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        let Some((_, errors)) = spawned else {
            return false;
        };
        for e in &errors {
            self.say(&format!("  map open failed: {e}"));
        }
        let mut firsts = 0;
        let mut first_bytes = 0u64;
        let mut last = t;
        let mut ended = 0;
        while firsts + ended < want {
            match until(self.deadline, rx.recv()).await {
                None => {
                    self.say(&format!("{firsts}/{want} first maps when time ran out"));
                    return false;
                }
                Some(Err(_)) => break,
                Some(Ok(Ev::First { i, at, id, bytes })) => {
                    firsts += 1;
                    first_bytes += bytes;
                    last = last.max(at);
                    self.ids[i] = id;
                    self.alive[i] = true;
                    if firsts % 1000 == 0 {
                        self.say(&format!("  {firsts} first maps"));
                    }
                }
                Some(Ok(Ev::End { i, err })) => {
                    ended += 1;
                    self.alive[i] = false;
                    if ended <= 5 {
                        self.say(&format!("  stream #{i} ended before its first map: {err}"));
                    }
                }
                Some(Ok(Ev::Got { .. })) => {}
            }
        }
        let secs = (last - t).as_secs_f64();
        self.f.first_maps = firsts;
        self.f.first_maps_s = Some(secs);
        self.say(&format!(
            "all {firsts}/{want} streams had their first map {secs:.2} s after the first map request (first maps averaged {:.1} KiB on the wire)",
            first_bytes as f64 / KIB / firsts.max(1) as f64
        ));
        self.cpu_line("map opening", secs, cpu0);
        // Let the fan-out of "X came online" settle before measuring.
        let Some(quiet) = self.until_quiet(sh).await else {
            return false;
        };
        self.drain_ends(rx);
        self.say(&format!("quiet after {quiet:.1} s more"));
        self.cpu_line("map opening until quiet", t.elapsed().as_secs_f64(), cpu0);
        self.traffic(
            sh,
            "while opening maps (first maps and the \"came online\" fan-out)",
            [0; 5],
        );
        self.f.connected = self.alive.iter().filter(|a| **a).count();
        self.f.rss_connected = self.rss();
        if let (Some(r), Some(i)) = (self.f.rss_connected, self.f.idle_rss) {
            self.say(&format!(
                "server RSS with {} nodes streaming: {} = idle + {:.1} KiB per connected node",
                self.f.connected,
                mib(r),
                r.saturating_sub(i) as f64 / KIB / self.f.connected.max(1) as f64
            ));
        }
        true
    }

    /// Waits for a second without a map message other than keep-alives
    /// (those start 50-59 s after each stream's last message and never
    /// stop), at most 60 s; the seconds waited, or None at the deadline.
    async fn until_quiet(&self, sh: &Shared) -> Option<f64> {
        let q = Instant::now();
        let mut prev = sh.msgs.load(Ordering::Relaxed);
        loop {
            until(
                self.deadline,
                async_io::Timer::after(Duration::from_millis(1000)),
            )
            .await?;
            let now = sh.msgs.load(Ordering::Relaxed);
            if now == prev || q.elapsed() > Duration::from_secs(60) {
                return Some(q.elapsed().as_secs_f64());
            }
            prev = now;
        }
    }

    fn drain_ends(&mut self, rx: &Receiver<Ev>) {
        while let Ok(ev) = rx.try_recv() {
            if let Ev::End { i, err } = ev {
                self.alive[i] = false;
                self.say(&format!("  stream #{i} ended: {err}"));
            }
        }
    }

    fn changer(&self, k: usize) -> usize {
        if self.cmd.tagged > 0 && k % 5 == 4 {
            // Every fifth change comes from a shared server everyone sees.
            return self.cmd.nodes + (k / 5) % self.cmd.tagged;
        }
        (k * 7919 + 13) % self.cmd.nodes.max(1)
    }

    async fn changes(&mut self, sh: &Arc<Shared>, rx: &Receiver<Ev>) -> bool {
        let kmax = self.cmd.changes;
        if kmax == 0 {
            return true;
        }
        self.say(&format!("measuring {kmax} endpoint changes, one at a time"));
        let cpu0 = self.server_cpu();
        let own0 = procfs::cpu_seconds("self").ok();
        let bytes0 = sh.bytes.load(Ordering::Relaxed);
        let snap = self.traffic(sh, "before the changes", [0; 5]);
        let c4 = self.cpus();
        let t_phase = Instant::now();
        let mut done = 0;
        let mut by_kind: std::collections::BTreeMap<(&str, usize), Vec<(f64, f64)>> =
            std::collections::BTreeMap::new();
        for k in 0..kmax {
            let mut c = self.changer(k);
            // Skip changers whose stream is gone.
            for _ in 0..self.total {
                if self.alive[c] && self.ids[c] != 0 {
                    break;
                }
                c = (c + 1) % self.total;
            }
            let cid = self.ids[c];
            let expected: HashSet<usize> = (0..self.total)
                .filter(|&j| j != c && self.alive[j])
                .filter(|&j| {
                    sh.peers[j]
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(&cid)
                })
                .collect();
            let taken = self.slots[c]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let Some(mut slot) = taken else { continue };
            let ep = marker_endpoint(k);
            let lite = serde_json::to_vec(&slot.node.map_request(false, &[ep.as_str()]))
                .unwrap_or_default();
            let cpu_k0 = self.server_cpu();
            let t0 = Instant::now();
            let posted = until(self.deadline, slot.conn.post_json("/machine/map", lite)).await;
            let post_s = t0.elapsed().as_secs_f64();
            *self.slots[c].lock().unwrap_or_else(|e| e.into_inner()) = Some(slot);
            match posted {
                None => return false,
                Some(Err(e)) => {
                    self.say(&format!("  change {k}: lite update from #{c} failed: {e}"));
                    continue;
                }
                Some(Ok((status, _))) if status != 200 => {
                    self.say(&format!(
                        "  change {k}: lite update from #{c}: HTTP {status}"
                    ));
                    continue;
                }
                Some(Ok(_)) => {}
            }
            let mut got: HashSet<usize> = HashSet::new();
            let mut lat = Vec::with_capacity(expected.len());
            let mut unexpected = 0;
            let limit = (t0 + Duration::from_secs(self.cmd.change_timeout)).min(self.deadline);
            while got.len() < expected.len() {
                match until(limit, rx.recv()).await {
                    None | Some(Err(_)) => break,
                    Some(Ok(Ev::Got { i, k: kk, at })) if kk as usize == k => {
                        if expected.contains(&i) {
                            if got.insert(i) {
                                lat.push((at - t0).as_secs_f64());
                            }
                        } else if i != c {
                            unexpected += 1;
                        }
                    }
                    Some(Ok(Ev::End { i, err })) => {
                        self.alive[i] = false;
                        self.say(&format!("  stream #{i} ended: {err}"));
                    }
                    Some(Ok(_)) => {}
                }
            }
            if Instant::now() >= self.deadline {
                return false;
            }
            // A short pause lets stragglers arrive (counted as unexpected if
            // they should not have) and separates the changes.
            let settle = Instant::now() + Duration::from_millis(100);
            while let Some(Ok(ev)) = until(settle, rx.recv()).await {
                if let Ev::Got { i, k: kk, .. } = ev {
                    if kk as usize == k && !expected.contains(&i) && i != c {
                        unexpected += 1;
                    }
                }
            }
            lat.sort_by(f64::total_cmp);
            let missed = expected.len() - got.len();
            let completion = lat.last().copied().unwrap_or(0.0);
            if missed == 0 {
                self.f.change_completion.push(completion);
            }
            self.f.change_missed += missed;
            self.f.change_latencies.extend_from_slice(&lat);
            done += 1;
            let kind = if c >= self.cmd.nodes {
                "tagged"
            } else {
                "member"
            };
            // 100 ms of the settle pause is included; at 10 ms clock ticks
            // this is coarse for one change, fine as a median over several.
            let cpu_k = cpu_k0.and_then(|a| Some(self.server_cpu()? - a));
            if let Some(cpu) = cpu_k {
                by_kind
                    .entry((kind, expected.len()))
                    .or_default()
                    .push((completion, cpu));
            }
            self.say(&format!(
                "  change {k:>3} by #{c} ({kind}, id {cid}): {}/{} streams got it; p50 {} p99 {} max {}; lite POST {}; server CPU {}{}{}",
                got.len(),
                expected.len(),
                ms(pct(&lat, 0.5)),
                ms(pct(&lat, 0.99)),
                ms(completion),
                ms(post_s),
                cpu_k.map(ms).unwrap_or_else(|| "n/a".into()),
                if missed > 0 { format!("; {missed} MISSED within {} s", self.cmd.change_timeout) } else { String::new() },
                if unexpected > 0 { format!("; {unexpected} streams without it as a peer got it too") } else { String::new() },
            ));
        }
        for ((kind, receivers), v) in &by_kind {
            let mut comp: Vec<f64> = v.iter().map(|x| x.0).collect();
            let mut cpu: Vec<f64> = v.iter().map(|x| x.1).collect();
            comp.sort_by(f64::total_cmp);
            cpu.sort_by(f64::total_cmp);
            self.say(&format!(
                "  {} {kind} change(s) reaching {receivers} streams: completion median {} max {}; server CPU median {} per change",
                v.len(),
                ms(pct(&comp, 0.5)),
                ms(pct(&comp, 1.0)),
                ms(pct(&cpu, 0.5)),
            ));
        }
        let wall = t_phase.elapsed().as_secs_f64();
        let bytes = sh.bytes.load(Ordering::Relaxed) - bytes0;
        self.traffic(sh, "during the changes", snap);
        self.cpu_line("the changes", wall, c4);
        let done_f = done.max(1) as f64;
        self.f.bytes_per_change = Some(bytes as f64 / done_f);
        let own = own0.and_then(|o| Some(procfs::cpu_seconds("self").ok()? - o));
        if let (Some(a), Some(b)) = (cpu0, self.server_cpu()) {
            self.f.cpu_per_change = Some((b - a) / done_f);
        }
        let mut all = self.f.change_latencies.clone();
        all.sort_by(f64::total_cmp);
        let mut comp = self.f.change_completion.clone();
        comp.sort_by(f64::total_cmp);
        self.say(&format!(
            "{done} changes: over all (change, stream) pairs p50 {} p99 {} max {}; completion per change median {} max {}; {} missed",
            ms(pct(&all, 0.5)),
            ms(pct(&all, 0.99)),
            ms(pct(&all, 1.0)),
            ms(pct(&comp, 0.5)),
            ms(pct(&comp, 1.0)),
            self.f.change_missed
        ));
        self.say(&format!(
            "per change: server CPU {}, {:.1} KiB received over all map streams (incl. keep-alives); phase {wall:.1} s, load generator CPU {}",
            self.f.cpu_per_change.map(|c| format!("{:.2} ms", c * 1000.0)).unwrap_or_else(|| "n/a".into()),
            bytes as f64 / KIB / done_f,
            own.map(|o| format!("{o:.2} s")).unwrap_or_else(|| "n/a".into()),
        ));
        true
    }

    async fn handshakes(&mut self) -> bool {
        let m = self.cmd.handshakes;
        if m == 0 {
            return true;
        }
        self.say(&format!(
            "opening {m} bare connections (Noise IK + HTTP/2 preface) with concurrency {}",
            self.cmd.concurrency
        ));
        let (addr, server_pub) = (self.addr, self.server_pub);
        let machine = crate::keys::random32();
        let c4 = self.cpus();
        let cpu0 = self.server_cpu();
        let own0 = procfs::cpu_seconds("self").ok();
        let t = Instant::now();
        let r = self
            .workers(m, move |_| async move {
                client::connect(addr, &server_pub, &machine)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .await;
        let secs = t.elapsed().as_secs_f64();
        let Some((ok, errors)) = r else { return false };
        for e in &errors {
            self.say(&format!("  connection failed: {e}"));
        }
        self.cpu_line("the handshakes", secs, c4);
        let rate = ok as f64 / secs;
        self.f.handshakes_per_s = Some(rate);
        let limit = self.f.x25519_per_s.map(|x| x / 5.0);
        let server_cpu = cpu0.and_then(|a| Some(self.server_cpu()? - a));
        let own = own0.and_then(|o| Some(procfs::cpu_seconds("self").ok()? - o));
        self.say(&format!(
            "{ok}/{m} handshakes in {secs:.2} s: {rate:.0}/s{}",
            limit
                .map(|l| format!(" = {:.0}% of the limit {l:.0}/s", 100.0 * rate / l))
                .unwrap_or_default()
        ));
        if let Some(cpu) = server_cpu {
            let per_cpu = ok as f64 / cpu.max(1e-9);
            self.f.handshakes_per_server_cpu_s = Some(per_cpu);
            self.say(&format!(
                "  server CPU {cpu:.2} s ({:.0}% of its core): {:.0} µs per handshake = {per_cpu:.0} handshakes per server CPU-second{}",
                100.0 * cpu / secs,
                1e6 * cpu / ok.max(1) as f64,
                limit.map(|l| format!(" ({:.0}% of the limit)", 100.0 * per_cpu / l)).unwrap_or_default()
            ));
        }
        if let Some(o) = own {
            self.say(&format!(
                "  load generator CPU {o:.2} s ({:.0}% of its core; the client does the same DH work as the server, so near 100% means the client bounded the rate)",
                100.0 * o / secs
            ));
        }
        true
    }

    /// The reconnect storm (phase 6, only with --restart-cmd).
    async fn storm(&mut self, sh: &Arc<Shared>, rx: &Receiver<Ev>) -> bool {
        let Some(cmdline) = self.cmd.restart_cmd.clone() else {
            return true;
        };
        let Some(pid) = self.cmd.server_pid else {
            self.say("--restart-cmd needs --server-pid: no reconnect storm");
            return true;
        };
        self.drain_ends(rx);
        let nodes: Vec<usize> = (0..self.total).filter(|&i| self.alive[i]).collect();
        self.say(&format!(
            "reconnect storm: SIGKILL to server PID {pid} with {} nodes streaming",
            nodes.len()
        ));
        let killed = rustix::process::Pid::from_raw(pid as i32)
            .ok_or_else(|| "PID 0".to_string())
            .and_then(|p| {
                rustix::process::kill_process(p, rustix::process::Signal::KILL)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = killed {
            self.say(&format!("cannot SIGKILL PID {pid}: {e}"));
            return false;
        }
        // Every old stream must have ended before the new server starts,
        // so that no end of an old stream is taken for a new one's.
        let t_kill = Instant::now();
        let mut open = nodes.len();
        let wait_until = (t_kill + Duration::from_secs(30)).min(self.deadline);
        while open > 0 {
            match until(wait_until, rx.recv()).await {
                Some(Ok(Ev::End { i, .. })) => {
                    if self.alive[i] {
                        self.alive[i] = false;
                        open -= 1;
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        self.say(&format!(
            "  {} of {} streams saw the end in {:.2} s{}",
            nodes.len() - open,
            nodes.len(),
            t_kill.elapsed().as_secs_f64(),
            if open > 0 {
                " (the rest are counted as reconnecting anyway)"
            } else {
                ""
            }
        ));
        let t0 = Instant::now();
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmdline)
            .stdin(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                self.say(&format!("restart command {cmdline:?}: {e}"));
                return false;
            }
        };
        let new_pid = child.id();
        // The shell execs the server; nobody waits for it here (the
        // script stops it by PID).
        drop(child);
        self.cmd.server_pid = Some(new_pid);
        let cpu0 = self.cpus();
        self.say(&format!(
            "  restarted: new server PID {new_pid}; {} nodes reconnect at once",
            nodes.len()
        ));
        // Every node at once: dial until it works (connection refused until
        // the server listens; a jittered 100-600 ms pause between tries, as
        // clients back off), then the streaming map request.
        let retries = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::<String>::new()));
        let (tx, slots_rx) = channel::unbounded::<(usize, Slot)>();
        let (addr, server_pub, deadline) = (self.addr, self.server_pub, self.deadline);
        for &i in &nodes {
            let taken = self.slots[i]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let Some(Slot { node, conn }) = taken else {
                continue;
            };
            drop(conn);
            let (tx, sh, retries, errors) =
                (tx.clone(), sh.clone(), retries.clone(), errors.clone());
            smol::spawn(async move {
                let mut tries = 0u64;
                loop {
                    let attempt = async {
                        let conn = client::connect(addr, &server_pub, &node.machine_private)
                            .await
                            .map_err(|e| format!("connect: {e}"))?;
                        let req = node.map_request(true, &["198.51.100.1:41641"]);
                        let body = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
                        let (status, rx) = conn
                            .post("/machine/map", body)
                            .await
                            .map_err(|e| format!("map: {e}"))?;
                        if status != 200 {
                            return Err(format!("map: HTTP {status}"));
                        }
                        Ok((conn, rx))
                    };
                    let limit = (Instant::now() + Duration::from_secs(30)).min(deadline);
                    let err = match until(limit, attempt).await {
                        Some(Ok((conn, rx))) => {
                            smol::spawn(reader(i, rx, sh)).detach();
                            let _ = tx.try_send((i, Slot { node, conn }));
                            return;
                        }
                        Some(Err(e)) => e,
                        None => "no answer within 30 s".to_string(),
                    };
                    if Instant::now() >= deadline {
                        return;
                    }
                    retries.fetch_add(1, Ordering::Relaxed);
                    tries += 1;
                    {
                        let mut g = errors.lock().unwrap_or_else(|e| e.into_inner());
                        if g.len() < 5 && !err.starts_with("connect: Connection refused") {
                            g.push(format!("#{i}: {err}"));
                        }
                    }
                    let pause = 100 + (i as u64 * 7919 + tries * 104_729) % 500;
                    async_io::Timer::after(Duration::from_millis(pause)).await;
                }
            })
            .detach();
        }
        drop(tx);
        // When does the new server answer at all?
        let ready_s = {
            let addr = self.addr;
            let limit = (t0 + Duration::from_secs(120)).min(self.deadline);
            let mut ready = None;
            while Instant::now() < limit {
                if let Some(Ok(_)) = until(
                    Instant::now() + Duration::from_secs(5),
                    client::fetch_key(addr),
                )
                .await
                {
                    ready = Some(t0.elapsed().as_secs_f64());
                    break;
                }
                async_io::Timer::after(Duration::from_millis(20)).await;
            }
            ready
        };
        if let Some(r) = ready_s {
            self.say(&format!(
                "  new server answers GET /key {r:.2} s after the restart"
            ));
        }
        let want = nodes.len();
        let mut fresh = 0;
        let mut ended = 0;
        let mut last = t0;
        while fresh < want {
            match until(self.deadline, rx.recv()).await {
                None => {
                    self.say(&format!("{fresh}/{want} fresh maps when time ran out"));
                    break;
                }
                Some(Err(_)) => break,
                Some(Ok(Ev::First { i, at, id, .. })) => {
                    fresh += 1;
                    last = last.max(at);
                    self.ids[i] = id;
                    self.alive[i] = true;
                    if fresh % 2000 == 0 {
                        self.say(&format!(
                            "  {fresh} fresh maps {:.2} s after the restart",
                            (at - t0).as_secs_f64()
                        ));
                    }
                }
                Some(Ok(Ev::End { i, err })) => {
                    ended += 1;
                    if ended <= 5 {
                        self.say(&format!("  new stream #{i} ended: {err}"));
                    }
                }
                Some(Ok(Ev::Got { .. })) => {}
            }
        }
        let fresh_s = (last - t0).as_secs_f64();
        while let Ok((i, s)) = slots_rx.try_recv() {
            *self.slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
        }
        let retries = retries.load(Ordering::Relaxed);
        for e in errors.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            self.say(&format!("  reconnect failed (retried): {e}"));
        }
        self.say(&format!(
            "all {fresh}/{want} nodes had a fresh map {fresh_s:.2} s after the restart ({retries} failed attempts retried)"
        ));
        self.cpu_line("the storm", fresh_s, cpu0);
        let server_cpu = cpu0[0].and_then(|a| Some(self.server_cpu()? - a));
        let peak_rss = procfs::hwm_bytes(new_pid).ok();
        if let Some(p) = peak_rss {
            self.say(&format!(
                "  peak server RSS during the storm (VmHWM of the new process): {}",
                mib(p)
            ));
        }
        // Settle like after the first maps, then the RSS at rest.
        let quiet = self.until_quiet(sh).await.unwrap_or(0.0);
        self.drain_ends(rx);
        let rss_after = self.rss();
        if let Some(r) = rss_after {
            self.say(&format!(
                "  server RSS once quiet after the storm ({quiet:.1} s more): {}",
                mib(r)
            ));
        }
        self.f.storm = Some(Storm {
            nodes: want,
            ready_s,
            fresh_s,
            fresh,
            retries,
            peak_rss,
            rss_after,
            server_cpu,
        });
        fresh == want
    }

    fn summary(&self) {
        let f = &self.f;
        println!();
        println!("== summary (goals from the issue) ==");
        let na = || "n/a".to_string();
        println!(
            "registrations/s:                 {}",
            f.reg_per_s
                .map(|r| format!("{r:.0} ({} nodes)", f.registered))
                .unwrap_or_else(na)
        );
        println!(
            "all first maps after:            {}",
            f.first_maps_s
                .map(|s| format!("{s:.2} s ({} streams)", f.first_maps))
                .unwrap_or_else(na)
        );
        let idle = f.idle_rss;
        println!(
            "server RSS idle:                 {}  [goal <= 4 MiB: {}]",
            idle.map(mib).unwrap_or_else(na),
            idle.map(|r| verdict(r as f64 <= 4.0 * MIB)).unwrap_or("?")
        );
        let per = match (f.rss_connected, idle) {
            (Some(r), Some(i)) if f.connected > 0 => {
                Some(r.saturating_sub(i) as f64 / f.connected as f64)
            }
            _ => None,
        };
        println!(
            "server RSS with N connected:     {} ({} nodes)",
            f.rss_connected.map(mib).unwrap_or_else(na),
            f.connected
        );
        println!(
            "server RSS per connected node:   {}  [goal <= 24 KiB: {}]",
            per.map(|p| format!("{:.1} KiB", p / KIB))
                .unwrap_or_else(na),
            per.map(|p| verdict(p <= 24.0 * KIB)).unwrap_or("?")
        );
        let mut all = f.change_latencies.clone();
        all.sort_by(f64::total_cmp);
        let mut comp = f.change_completion.clone();
        comp.sort_by(f64::total_cmp);
        if !all.is_empty() {
            println!(
                "change -> stream latency:        p50 {} p99 {} max {} ({} deliveries, {} missed)",
                ms(pct(&all, 0.5)),
                ms(pct(&all, 0.99)),
                ms(pct(&all, 1.0)),
                all.len(),
                f.change_missed
            );
            println!(
                "change completion (all streams): median {} max {}  [goal < 1 s at N=10,000: {}]",
                ms(pct(&comp, 0.5)),
                ms(pct(&comp, 1.0)),
                verdict(f.change_missed == 0 && pct(&comp, 1.0) < 1.0)
            );
        }
        println!(
            "server CPU per change:           {}",
            f.cpu_per_change
                .map(|c| format!("{:.2} ms", c * 1000.0))
                .unwrap_or_else(na)
        );
        println!(
            "bytes per change (all streams):  {}",
            f.bytes_per_change
                .map(|b| format!("{:.1} KiB", b / KIB))
                .unwrap_or_else(na)
        );
        let limit = f.x25519_per_s.map(|x| x / 5.0);
        if let Some(h) = f.handshakes_per_s {
            println!(
                "Noise handshakes/s (wall clock): {h:.0} = {} of the limit {}",
                limit
                    .map(|l| format!("{:.0}%", 100.0 * h / l))
                    .unwrap_or_else(na),
                limit.map(|l| format!("{l:.0}/s")).unwrap_or_else(na),
            );
        }
        if let (Some(p), Some(l)) = (f.handshakes_per_server_cpu_s, limit) {
            println!(
                "  per server CPU-second:         {p:.0} = {:.0}% of the limit  [goal >= 50%: {}]",
                100.0 * p / l,
                verdict(p >= 0.5 * l)
            );
        }
        if let Some(st) = &f.storm {
            println!(
                "reconnect storm:                 {}/{} fresh maps {:.2} s after the restart (server answered after {}; {} failed attempts retried)  [goal <= 15 s: {}]",
                st.fresh,
                st.nodes,
                st.fresh_s,
                st.ready_s.map(|r| format!("{r:.2} s")).unwrap_or_else(na),
                st.retries,
                verdict(st.fresh == st.nodes && st.fresh_s <= 15.0)
            );
            println!(
                "  peak server RSS (VmHWM):       {}; {} once quiet; server CPU {}",
                st.peak_rss.map(mib).unwrap_or_else(na),
                st.rss_after.map(mib).unwrap_or_else(na),
                st.server_cpu
                    .map(|c| format!("{c:.2} s"))
                    .unwrap_or_else(na)
            );
        }
        if let Some(s) = &f.stopped {
            println!("{s}");
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip() {
        for k in [0, 1, 249, 250, 9999] {
            assert_eq!(marker(&marker_endpoint(k)), Some(k as u32));
        }
        assert_eq!(marker("198.51.100.1:41641"), None);
        assert_eq!(marker("203.0.113.5:80"), None);
    }

    #[test]
    fn percentiles() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(pct(&v, 0.5), 2.0);
        assert_eq!(pct(&v, 0.99), 4.0);
        assert_eq!(pct(&v, 1.0), 4.0);
    }
}
