//! Prometheus metrics on `metrics_listen_addr` (Headscale's key; default
//! 127.0.0.1:9090, empty disables): `GET /metrics` in the text format.
//!
//! Counters are process-wide atomics bumped by one-line hooks at the call
//! sites (map sessions, full maps, Noise handshakes, policy compiles, HTTP
//! answers); gauges that the server already knows (nodes, DERP clients,
//! policy generation) and the process's RSS and open files are read when
//! scraped. Names follow Headscale's where the concept exists
//! (`headscale_mapresponse_sent_total{status,type}`,
//! `headscale_mapresponse_ended_total{reason}`, `headscale_nodestore_nodes`,
//! `http_requests_total{code}`); ours are prefixed `tinyscale_`.
//! Gauges kept as two counters (opened/closed) need no atomic subtraction,
//! which the 32-bit stand-in in [`crate::atomic64`] does not have.

use crate::atomic64::AtomicU64;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

struct Counters {
    sessions_opened: AtomicU64,
    sessions_closed: AtomicU64,
    full_started: AtomicU64,
    full_done: AtomicU64,
    sent_delta: AtomicU64,
    sent_keepalive: AtomicU64,
    noise_ok: AtomicU64,
    noise_failed: AtomicU64,
    policy_compiles: AtomicU64,
    policy_compile_micros: AtomicU64,
    policy_last_compile_micros: AtomicU64,
    /// Answers by status: HTTP_CODES[i], the last slot counts the rest.
    http: [AtomicU64; HTTP_CODES.len() + 1],
}

const HTTP_CODES: [u16; 12] = [101, 200, 204, 302, 400, 401, 403, 404, 405, 413, 500, 501];

static C: Counters = Counters {
    sessions_opened: AtomicU64::new(0),
    sessions_closed: AtomicU64::new(0),
    full_started: AtomicU64::new(0),
    full_done: AtomicU64::new(0),
    sent_delta: AtomicU64::new(0),
    sent_keepalive: AtomicU64::new(0),
    noise_ok: AtomicU64::new(0),
    noise_failed: AtomicU64::new(0),
    policy_compiles: AtomicU64::new(0),
    policy_compile_micros: AtomicU64::new(0),
    policy_last_compile_micros: AtomicU64::new(0),
    http: [const { AtomicU64::new(0) }; HTTP_CODES.len() + 1],
};

/// Held for the life of a streaming map session.
pub struct Session(());

/// Call at the start of a map stream; the session counts as connected
/// until the guard drops.
pub fn session() -> Session {
    C.sessions_opened.fetch_add(1, Relaxed);
    Session(())
}

impl Drop for Session {
    fn drop(&mut self) {
        C.sessions_closed.fetch_add(1, Relaxed);
    }
}

/// Held while a full map is built and written.
pub struct FullMap(());

pub fn full_map() -> FullMap {
    C.full_started.fetch_add(1, Relaxed);
    FullMap(())
}

impl Drop for FullMap {
    fn drop(&mut self) {
        C.full_done.fetch_add(1, Relaxed);
    }
}

/// A delta (peer changes) was sent.
pub fn sent_delta() {
    C.sent_delta.fetch_add(1, Relaxed);
}

/// A keep-alive was sent.
pub fn sent_keepalive() {
    C.sent_keepalive.fetch_add(1, Relaxed);
}

/// A Noise handshake finished (`ok`) or was refused.
pub fn noise_handshake(ok: bool) {
    if ok { &C.noise_ok } else { &C.noise_failed }.fetch_add(1, Relaxed);
}

/// A policy compile took `d`.
pub fn policy_compiled(d: Duration) {
    let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
    C.policy_compiles.fetch_add(1, Relaxed);
    C.policy_compile_micros.fetch_add(us, Relaxed);
    C.policy_last_compile_micros.store(us, Relaxed);
}

/// An HTTP answer with `status` was written.
pub fn http_answer(status: u16) {
    let i = HTTP_CODES
        .iter()
        .position(|c| *c == status)
        .unwrap_or(HTTP_CODES.len());
    C.http[i].fetch_add(1, Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Relaxed)
}

/// What the server knows when scraped (read by the top-level room, which
/// serves `/metrics`).
pub struct Gauges {
    /// Nodes known, and those with a connected map session.
    pub nodes: usize,
    pub online: usize,
    /// Policy compiles in force since start.
    pub policy_generation: u64,
    /// The embedded DERP relay, when enabled.
    pub derp: Option<DerpGauges>,
}

/// The embedded relay's figures.
pub struct DerpGauges {
    pub clients: usize,
    pub relayed: u64,
    pub dropped_unknown_dst: u64,
    pub dropped_queue_full: u64,
}

/// The text exposition of every metric.
pub fn render(g: &Gauges) -> String {
    let mut o = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    let opened = get(&C.sessions_opened);
    let closed = get(&C.sessions_closed);
    let full = get(&C.full_done);
    metric(
        "headscale_mapresponse_sent_total",
        "counter",
        "Map responses sent, by type.",
        &[
            (r#"{status="ok",type="full"}"#, full as f64),
            (r#"{status="ok",type="change"}"#, get(&C.sent_delta) as f64),
            (
                r#"{status="ok",type="keepalive"}"#,
                get(&C.sent_keepalive) as f64,
            ),
        ],
    );
    metric(
        "headscale_mapresponse_ended_total",
        "counter",
        "Streaming map sessions that ended.",
        &[(r#"{reason="closed"}"#, closed as f64)],
    );
    let (nodes, online) = (g.nodes, g.online);
    metric(
        "headscale_nodestore_nodes",
        "gauge",
        "Nodes known to the server.",
        &[("", nodes as f64)],
    );
    metric(
        "tinyscale_nodes_online",
        "gauge",
        "Nodes with a connected map session.",
        &[("", online as f64)],
    );
    metric(
        "tinyscale_map_sessions",
        "gauge",
        "Streaming map sessions connected now.",
        &[("", opened.saturating_sub(closed) as f64)],
    );
    metric(
        "tinyscale_full_maps_in_flight",
        "gauge",
        "Full maps being built or written now.",
        &[("", get(&C.full_started).saturating_sub(full) as f64)],
    );
    metric(
        "tinyscale_noise_handshakes_total",
        "counter",
        "Noise (ts2021) handshakes, by result.",
        &[
            (r#"{result="ok"}"#, get(&C.noise_ok) as f64),
            (r#"{result="failed"}"#, get(&C.noise_failed) as f64),
        ],
    );
    metric(
        "tinyscale_policy_generation",
        "gauge",
        "Policy compiles in force since start (moves on every recompile).",
        &[("", g.policy_generation as f64)],
    );
    metric(
        "tinyscale_policy_compiles_total",
        "counter",
        "Policy compiles.",
        &[("", get(&C.policy_compiles) as f64)],
    );
    metric(
        "tinyscale_policy_compile_seconds_total",
        "counter",
        "Time spent compiling the policy.",
        &[("", get(&C.policy_compile_micros) as f64 / 1e6)],
    );
    metric(
        "tinyscale_policy_last_compile_seconds",
        "gauge",
        "Duration of the last policy compile.",
        &[("", get(&C.policy_last_compile_micros) as f64 / 1e6)],
    );
    if let Some(d) = g.derp.as_ref() {
        metric(
            "tinyscale_derp_clients",
            "gauge",
            "Clients connected to the embedded DERP relay.",
            &[("", d.clients as f64)],
        );
        metric(
            "tinyscale_derp_packets_relayed_total",
            "counter",
            "Packets the DERP relay delivered to a destination queue.",
            &[("", d.relayed as f64)],
        );
        metric(
            "tinyscale_derp_packets_dropped_total",
            "counter",
            "Packets the DERP relay dropped, by reason.",
            &[
                (r#"{reason="unknown_dst"}"#, d.dropped_unknown_dst as f64),
                (r#"{reason="queue_full"}"#, d.dropped_queue_full as f64),
            ],
        );
    }
    let codes: Vec<(String, f64)> = HTTP_CODES
        .iter()
        .map(|c| c.to_string())
        .chain(std::iter::once("other".to_string()))
        .zip(&C.http)
        .map(|(c, n)| (format!("{{code=\"{c}\"}}"), get(n) as f64))
        .filter(|(_, n)| *n > 0.0)
        .collect();
    let codes: Vec<(&str, f64)> = codes.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    metric(
        "http_requests_total",
        "counter",
        "HTTP/1 answers (front door and API), by status.",
        &codes,
    );
    let pid = std::process::id();
    if let Ok(rss) = crate::procfs::rss_bytes(pid) {
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident set size.",
            &[("", rss as f64)],
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metric(
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            &[("", fds.count() as f64)],
        );
    }
    o
}
