//! Attacks on a live server, one after another: the built binary runs as a
//! child process (so its memory can be read from /proc) with RLIMIT_NOFILE
//! 1024 soft *and* hard, so raising the soft limit at start cannot help and
//! only the server's own bounds keep it alive. Every attack comes from
//! 127.0.0.1; while it runs, a protocol-level client from 127.0.0.2 (another
//! source address for the per-source caps) registers and gets its first
//! map, and the CLI answers over the admin socket. After each attack the
//! server must still run and its peak RSS (VmHWM, reset before each attack
//! through /proc/PID/clear_refs) must be under [`RSS_BOUND_KIB`].
//!
//! `benches/hostile.sh` runs this test and prints the table it reports:
//! each attack's peak RSS and the legitimate client's time to first map.
//! (Times are reported, never asserted; generous deadlines only catch hangs.)
//!

mod attacks;
mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tinyscale::client::{self, Node};

/// Peak RSS allowed during any attack (the issue's goal: 64 MiB)...
const RSS_BOUND_KIB: u64 = 64 * 1024;
/// ... and the policy attack's: a 0.8 MiB policy of 25 ACLs × 1,200 ×
/// 1,200 addresses, accepted, peaked at ~85 MiB in a debug build (71 MiB
/// release) until cc02a7e stopped the compile holding all 30,000 expanded
/// grants and their spare Vec capacity at once; now 59 MiB debug, 46 MiB
/// release. The goal is asserted for a release build; a debug build gets a
/// little more room (its peak sits close to the goal).
const POLICY_RSS_BOUND_KIB: u64 = if cfg!(debug_assertions) {
    80 * 1024
} else {
    RSS_BOUND_KIB
};
/// The legitimate client's source address.
const LEGIT: &str = "127.0.0.2";
/// The server's caps, as configured below (the defaults).
const PER_SOURCE: usize = 16;

struct Server {
    child: common::Serve,
    addr: SocketAddr,
    cfg: PathBuf,
    dir: PathBuf,
    log: PathBuf,
    key: String,
    legit_n: usize,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the CLI (with a deadline); returns (success, stdout + stderr).
fn cli(cfg: &Path, args: &[&str]) -> (bool, String) {
    let (code, out, err) = common::cli(cfg, args);
    (code == 0, out + &err)
}

fn start() -> Server {
    let dir = common::tempdir("hostile");
    let port = common::free_port();
    let (mut child, cfg) = common::serve_with(
        &dir,
        &format!(
            "server_url: http://127.0.0.1:{port}\nlisten_addr: 127.0.0.1:{port}\ndata_dir: {d}\n\
             unix_socket: {d}/admin.sock\ntls_listen_addr: \"\"\n\
             derp:\n  server:\n    enabled: true\n    stun_listen_addr: \"\"\n\
             dns:\n  base_domain: hostile.test\npolicy:\n  mode: database\nlog:\n  level: info\n",
            d = dir.display()
        ),
        |cmd| common::limit_nofile(cmd, 1024),
    );
    let log = dir.join("serve.log");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t0 = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!("server exited ({st}):\n{}", read(&log));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, out) = cli(&cfg, &["users", "create", "legit"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(
        &cfg,
        &[
            "preauthkeys",
            "create",
            "--user",
            "legit",
            "--reusable",
            "-o",
            "json",
        ],
    );
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("key JSON");
    let key = v["key"].as_str().expect("key").to_string();
    Server {
        child,
        addr,
        cfg,
        dir,
        log,
        key,
        legit_n: 0,
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    read(Path::new(&format!("/proc/{pid}/status")))
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn assert_alive(&mut self, during: &str) {
        if let Ok(Some(st)) = self.child.0.try_wait() {
            panic!(
                "server died during {during} ({st}); log:\n{}",
                read(&self.log)
            );
        }
    }

    /// A node from [`LEGIT`]: register with a pre-auth key, stream its map;
    /// returns the time to its first map. Then the CLI must list it.
    fn legit_joins(&mut self, during: &str) -> Duration {
        self.legit_n += 1;
        let name = format!("legit{}", self.legit_n);
        let node = Node::new(&name);
        let from: Option<IpAddr> = Some(LEGIT.parse().unwrap());
        let (addr, key) = (self.addr, self.key.clone());
        let t0 = Instant::now();
        let got = smol::block_on(futures_lite::FutureExt::or(
            async {
                let server_pub = client::fetch_key_from(addr, from).await?;
                let mut conn =
                    client::connect_from(addr, &server_pub, &node.machine_private, from).await?;
                let r = conn.register(&node.register_request(Some(&key))).await?;
                if !r.error.is_empty() || !r.machine_authorized {
                    return Err(std::io::Error::other(format!("register: {r:?}")));
                }
                let mut s = conn.map(&node.map_request(true, &[])).await?;
                let first = s.next().await?;
                Ok(first.is_some_and(|m| m.get("Node").is_some()))
            },
            async {
                async_io::Timer::after(Duration::from_secs(30)).await;
                Err(std::io::Error::other("no first map within 30 s"))
            },
        ));
        let took = t0.elapsed();
        match got {
            Ok(true) => {}
            Ok(false) => panic!("{during}: the first message has no Node"),
            Err(e) => panic!(
                "{during}: the legitimate client failed: {e}; log tail:\n{}",
                tail(&read(&self.log), 20)
            ),
        }
        let (ok, out) = cli(&self.cfg, &["nodes", "list", "-o", "json"]);
        assert!(ok && out.contains(&name), "{during}: nodes list: {out}");
        took
    }

    fn reset_peak(&self) {
        // "5" resets VmHWM to the current RSS (Linux ≥ 4.0).
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5")
            .expect("reset the server's peak RSS");
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn connect(addr: SocketAddr) -> Option<TcpStream> {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()
}

/// What one attack reports.
struct Figures {
    name: &'static str,
    peak_kib: u64,
    first_map: Duration,
    note: String,
}

/// Runs `attack` on a thread until it returns or `stop` is set; the legit
/// client joins `settle` into it; returns the figures.
fn run(
    s: &mut Server,
    name: &'static str,
    settle: Duration,
    attack: impl FnOnce(SocketAddr, Arc<AtomicBool>) -> String + Send + 'static,
) -> Figures {
    s.reset_peak();
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, st) = (s.addr, stop.clone());
    let h = std::thread::spawn(move || attack(addr, st));
    std::thread::sleep(settle);
    s.assert_alive(name);
    let first_map = s.legit_joins(name);
    stop.store(true, Ordering::SeqCst);
    let note = h.join().expect("attack thread");
    s.assert_alive(name);
    let peak_kib = status_kib(s.pid(), "VmHWM:");
    println!(
        "hostile: {name}: peak RSS {:.1} MiB, legit first map {:.0} ms; {note}",
        peak_kib as f64 / 1024.0,
        first_map.as_secs_f64() * 1e3
    );
    Figures {
        name,
        peak_kib,
        first_map,
        note,
    }
}

/// Thousands of slow HTTP/1 requests: a head, then a body announced as
/// 60,000 bytes and sent one byte per second. Admitted ones must be closed
/// by the whole-body deadline (10 s), refused ones at once.
fn slow_http(addr: SocketAddr, stop: Arc<AtomicBool>) -> String {
    let t0 = Instant::now();
    let mut socks = attacks::open_slow_requests(addr, 3000);
    let opened = socks.len();
    let opened_in = t0.elapsed();
    // Trickle until 16 s after the last one was opened.
    let end = Instant::now() + Duration::from_secs(16);
    while Instant::now() < end {
        attacks::trickle(&mut socks);
        std::thread::sleep(Duration::from_secs(1));
    }
    let open = socks
        .iter_mut()
        .map(attacks::still_open)
        .filter(|o| *o)
        .count();
    let _ = stop;
    assert_eq!(
        open, 0,
        "{open} of {opened} slow requests still open 16 s after the last was opened"
    );
    format!(
        "{opened} connections opened in {:.1} s, all closed by the server within 16 s",
        opened_in.as_secs_f64()
    )
}

/// Idle Noise connections (a valid handshake, then silence; a new machine
/// key each) and half-open ones (a request head that never ends).
fn idle_noise(addr: SocketAddr, stop: Arc<AtomicBool>) -> String {
    let server_pub = smol::block_on(client::fetch_key(addr)).expect("key");
    let mut idle = Vec::new();
    let mut refused = 0;
    let t0 = Instant::now();
    for _ in 0..300 {
        let machine = tinyscale::keys::random32();
        match smol::block_on(client::connect_noise(
            addr,
            &server_pub,
            &machine,
            client::CAPVER,
        )) {
            Ok(n) => idle.push(n),
            Err(_) => refused += 1,
        }
    }
    let mut half = Vec::new();
    for _ in 0..300 {
        if let Some(mut c) = connect(addr) {
            let _ = c.write_all(b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nUpgrade: tailsc");
            half.push(c);
        }
    }
    assert!(
        !idle.is_empty() && idle.len() <= PER_SOURCE,
        "{} idle Noise connections admitted from one address (cap {PER_SOURCE})",
        idle.len()
    );
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // The unidentified deadline (30 s) closes every idle one.
    std::thread::sleep(Duration::from_secs(33).saturating_sub(t0.elapsed()));
    let open = idle
        .iter()
        .map(|n| n.get_ref().get_ref().try_clone().expect("dup the socket"))
        .map(|mut c| attacks::still_open(&mut c))
        .filter(|open| *open)
        .count();
    assert_eq!(open, 0, "idle Noise connections open after 33 s");
    format!(
        "{} idle Noise connections admitted (all closed by 33 s), {refused} refused; {} half-open heads",
        idle.len(),
        half.len()
    )
}

/// On each of 16 connections (the per-source cap), 64 HTTP/2 streams that
/// announce 1 MiB register bodies and send 64 KiB of each (the initial
/// stream window), then nothing: what the server buffers is bounded by its
/// HTTP/2 limits (streams, per-connection body budget), whatever they are.
fn unfinished_bodies(addr: SocketAddr, stop: Arc<AtomicBool>) -> String {
    use futures_lite::{AsyncWriteExt, FutureExt};
    use tinyscale::wire::{h2 as w, hpack};
    let server_pub = smol::block_on(client::fetch_key(addr)).expect("key");
    let mut held = Vec::new();
    let (mut written, mut cut) = (0usize, 0);
    for _ in 0..16 {
        let machine = tinyscale::keys::random32();
        let Ok(mut n) = smol::block_on(client::connect_noise(
            addr,
            &server_pub,
            &machine,
            client::CAPVER,
        )) else {
            continue;
        };
        let mut out = w::PREFACE.to_vec();
        w::emit_settings(&[], &mut out);
        for i in 0..64u32 {
            let mut block = Vec::new();
            for (k, v) in [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/machine/register"),
                (":authority", "x"),
                ("content-length", "1048576"),
            ] {
                hpack::encode_literal(k, v, &mut block);
            }
            w::emit_headers(1 + 2 * i, &block, false, &mut out);
            for _ in 0..4 {
                w::emit_data(1 + 2 * i, &[b' '; 16_384], false, &mut out);
            }
        }
        // The server may stop reading (flow control) or close: 2 s each.
        let sent = smol::block_on(
            async {
                n.write_all(&out).await?;
                n.flush().await
            }
            .or(async {
                async_io::Timer::after(Duration::from_secs(2)).await;
                Err(std::io::Error::other("stalled"))
            }),
        );
        match sent {
            Ok(()) => written += out.len(),
            Err(_) => cut += 1,
        }
        held.push(n);
    }
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    format!(
        "{} connections x 64 streams x 64 KiB of 1 MiB bodies: {} MiB written in full on {}, {cut} stalled or closed by the server",
        held.len(),
        written >> 20,
        held.len() - cut
    )
}

/// Interactive registrations (no auth key) with a ~15 KiB Hostinfo and a
/// new node key each time, on new connections with new machine keys; every
/// third with a 512 KiB Hostinfo, which must be refused (400). The
/// registry keeps one login per machine key and 16 per source address:
/// later machine keys from this address get an error, not an AuthURL.
fn interactive_flood(addr: SocketAddr, stop: Arc<AtomicBool>) -> String {
    let server_pub = smol::block_on(client::fetch_key(addr)).expect("key");
    let big_keys: Vec<String> = (0..14)
        .map(|i| format!("ssh-ed25519 {i}{}", "A".repeat(1000)))
        .collect();
    let (mut sent, mut urls, mut too_large, mut refused, mut full) = (0, 0, 0, 0, 0);
    let mut machines = 0;
    // Past the per-source share (16), whatever `stop` says.
    while machines < 24 || !stop.load(Ordering::SeqCst) && machines < 200 {
        let node = Node::new("flood");
        let Ok(mut conn) =
            smol::block_on(client::connect(addr, &server_pub, &node.machine_private))
        else {
            refused += 1;
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        machines += 1;
        for i in 0..3 {
            let n = Node::new(&format!("flood{sent}"));
            let mut rr = n.register_request(None);
            let mut h = n.hostinfo(&[]);
            h.ssh_host_keys = big_keys.clone();
            rr.hostinfo = (i != 2).then_some(h);
            let mut body = serde_json::to_vec(&rr).unwrap();
            if i == 2 {
                // Under the 1 MiB body cap, over Hostinfo's 16 KiB.
                let pad = format!(
                    ",\"Hostinfo\":{{\"Hostname\":\"{}\"}}}}",
                    "h".repeat(512 << 10)
                );
                body.truncate(body.len() - 1);
                body.extend_from_slice(pad.as_bytes());
            }
            sent += 1;
            match smol::block_on(conn.post_json("/machine/register", body)) {
                Ok((400, _)) => too_large += 1,
                Ok((200, b)) if String::from_utf8_lossy(&b).contains("/register/") => urls += 1,
                Ok((200, b)) if String::from_utf8_lossy(&b).contains("too many pending") => {
                    full += 1
                }
                _ => {}
            }
        }
    }
    assert!(too_large > 0, "no 512 KiB Hostinfo was refused");
    assert!(
        machines > 16 && full > 0,
        "{machines} machine keys, {full} refused as too many pending: the per-source share was not reached"
    );
    format!("{sent} registrations from {machines} machine keys: {urls} AuthURLs, {full} refused (too many pending from this address), {too_large} refused as too large, {refused} connections refused")
}

/// DERP upgrades whose first frame announces a large payload within the
/// frame types' general bounds: 1 MiB - 1 as NotePreferred (bound 1 MiB)
/// and 200 KiB as ClientInfo (bound 256 KiB). Each must be closed at once,
/// from the header alone (not at the 10 s handshake deadline, holding a
/// zero-filled buffer of that size until then).
fn derp_big_first_frames(addr: SocketAddr, stop: Arc<AtomicBool>) -> String {
    let mut closed_fast = 0;
    let mut slowest = Duration::ZERO;
    let mut tried = 0;
    while !stop.load(Ordering::SeqCst) && tried < 400 {
        tried += 1;
        let Some(mut c) = connect(addr) else { continue };
        let _ = c.write_all(
            b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n",
        );
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // The 101 head and the ServerKey frame (5 + 8 + 32 bytes).
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        let complete = loop {
            match c.read(&mut b) {
                Ok(0) | Err(_) => break false,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                if got.len() >= i + 4 + 45 {
                    break true;
                }
            }
        };
        if !complete {
            continue; // refused by the per-source cap
        }
        let (ty, len) = if tried % 2 == 0 {
            (7u8, (1u32 << 20) - 1)
        } else {
            (2u8, 200 << 10)
        };
        let mut frame = vec![ty];
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&[0u8; 100]);
        let t0 = Instant::now();
        let _ = c.write_all(&frame);
        let closed = matches!(c.read(&mut b), Ok(0) | Err(_));
        let took = t0.elapsed();
        slowest = slowest.max(took);
        if closed && took < Duration::from_secs(3) {
            closed_fast += 1;
        } else {
            panic!("a DERP connection announcing a 1 MiB first frame stayed open {took:?}");
        }
    }
    format!("{closed_fast} of {tried} upgrades got to the first frame, each closed at once (slowest {slowest:?})")
}

/// `policy set` of policies whose ACLs have huge source × destination
/// lists: 40 ACLs of 1,200 × 1,200 addresses (1.3 MiB: the CLI refuses it
/// with a message naming policy.path, the admin socket taking 1 MiB), 25
/// of them (0.8 MiB) and one of 2,000 × 2,000: each is compiled under the
/// policy bound and refused naming the rule, or accepted at the cost of the
/// sum of the lists; either way the CLI answers.
fn huge_policy(cfg: PathBuf) -> impl FnOnce(SocketAddr, Arc<AtomicBool>) -> String {
    move |_addr, _stop| {
        let addrs = |n: usize, base: u8, port: &str| -> String {
            (0..n)
                .map(|i| format!("\"10.{base}.{}.{}{port}\"", i / 250, i % 250 + 1))
                .collect::<Vec<_>>()
                .join(",")
        };
        let acl = |n: usize| {
            format!(
                "{{\"action\":\"accept\",\"src\":[{}],\"dst\":[{}]}}",
                addrs(n, 1, ""),
                addrs(n, 2, ":*")
            )
        };
        let mut notes = Vec::new();
        for (rules, n) in [(40, 1200), (25, 1200), (1, 2000)] {
            let text = format!(
                "{{\"acls\":[{}]}}",
                (0..rules).map(|_| acl(n)).collect::<Vec<_>>().join(",")
            );
            let file = cfg.with_file_name(format!("huge-{rules}x{n}.hujson"));
            std::fs::write(&file, &text).unwrap();
            let t0 = Instant::now();
            let (ok, out) = cli(&cfg, &["policy", "set", "--file", file.to_str().unwrap()]);
            if rules == 40 {
                // Over the admin socket's 1 MiB: the CLI says what to do.
                assert!(!ok && out.contains("policy.path"), "{out}");
            }
            let first = out
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(160)
                .collect::<String>();
            notes.push(format!(
                "{rules} ACLs of {n}x{n} ({} KiB): {} in {:.1} s ({first})",
                text.len() >> 10,
                if ok { "accepted" } else { "refused" },
                t0.elapsed().as_secs_f64()
            ));
        }
        // Back to no policy for the attacks after this one.
        let allow = cfg.with_file_name("allow.hujson");
        std::fs::write(
            &allow,
            r#"{"acls":[{"action":"accept","src":["*"],"dst":["*:*"]}]}"#,
        )
        .unwrap();
        let (ok, out) = cli(&cfg, &["policy", "set", "--file", allow.to_str().unwrap()]);
        assert!(ok, "an allow-all policy after the huge ones: {out}");
        notes.join("; ")
    }
}

#[test]
fn attacks_on_a_live_server_leave_it_serving() {
    // The attackers hold thousands of sockets in this process.
    tinyscale::debug::procfs::raise_nofile(16_384).expect("raise this test's open-files limit");
    let mut s = start();
    s.assert_alive("start");
    let log = read(&s.log);
    assert!(
        log.contains("open files: soft limit 1024"),
        "the start-up log names the open-files limit:\n{log}"
    );
    let baseline = s.legit_joins("no attack");
    println!(
        "hostile: baseline: RSS {:.1} MiB, legit first map {:.0} ms",
        status_kib(s.pid(), "VmRSS:") as f64 / 1024.0,
        baseline.as_secs_f64() * 1e3
    );
    let policy = huge_policy(s.cfg.clone());
    let mut all = vec![
        run(
            &mut s,
            "slow HTTP/1 requests",
            Duration::from_secs(3),
            slow_http,
        ),
        run(
            &mut s,
            "idle and half-open Noise",
            Duration::from_secs(3),
            idle_noise,
        ),
        run(
            &mut s,
            "64 streams of unfinished 1 MiB bodies per connection",
            Duration::from_secs(3),
            unfinished_bodies,
        ),
        run(
            &mut s,
            "interactive registrations, big Hostinfo, new node keys",
            Duration::from_secs(4),
            interactive_flood,
        ),
        run(
            &mut s,
            "DERP upgrades announcing 1 MiB first frames",
            Duration::from_secs(2),
            derp_big_first_frames,
        ),
        run(
            &mut s,
            "policy with huge source x destination lists",
            Duration::from_millis(500),
            policy,
        ),
    ];
    // A real interactive login from another address still gets its URL.
    let node = Node::new("interactive");
    let from: Option<IpAddr> = Some(LEGIT.parse().unwrap());
    let r = smol::block_on(async {
        let server_pub = client::fetch_key_from(s.addr, from).await?;
        let mut c = client::connect_from(s.addr, &server_pub, &node.machine_private, from).await?;
        c.register(&node.register_request(None)).await
    })
    .expect("interactive register from the legit address");
    assert!(r.auth_url.contains("/register/"), "{r:?}");
    s.assert_alive("the end");
    println!("hostile: | attack | peak RSS (MiB) | legit first map (ms) |");
    for f in all.drain(..) {
        println!(
            "hostile: | {} | {:.1} | {:.0} |",
            f.name,
            f.peak_kib as f64 / 1024.0,
            f.first_map.as_secs_f64() * 1e3
        );
        let bound = if f.name.starts_with("policy") {
            POLICY_RSS_BOUND_KIB
        } else {
            RSS_BOUND_KIB
        };
        assert!(
            f.peak_kib <= bound,
            "{}: peak RSS {} KiB over the {bound} KiB bound ({})",
            f.name,
            f.peak_kib,
            f.note
        );
    }
}
