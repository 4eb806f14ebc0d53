//! `GET /metrics` on `metrics_listen_addr`: the counters of
//! [`crate::metrics`] and the gauges the control plane knows when scraped.

use crate::control::{Server, SharedServer};
use crate::http;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// The control plane's figures, read at each scrape.
fn gauges(server: &Server) -> crate::metrics::Gauges {
    let (nodes, online) = server.node_counts();
    crate::metrics::Gauges {
        nodes,
        online,
        policy_generation: server.policy_view().1,
        derp: server.derp.as_ref().map(|d| {
            let s = d.stats();
            let get = |c: &crate::atomic64::AtomicU64| c.load(Relaxed);
            crate::metrics::DerpGauges {
                clients: d.connected_keys().len(),
                relayed: get(&s.packets_forwarded),
                dropped_unknown_dst: get(&s.packets_dropped_unknown_dst),
                dropped_queue_full: get(&s.packets_dropped_queue_full),
            }
        }),
    }
}

/// Serves `GET /metrics` on `addr` until the process ends; a failed bind
/// is logged (metrics are not worth refusing to start for).
pub(super) fn spawn(server: &SharedServer, addr: std::net::SocketAddr) {
    let l = match async_io::Async::<std::net::TcpListener>::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            log::warn!("metrics_listen_addr {addr}: {e} (no /metrics)");
            return;
        }
    };
    log::info!("metrics on http://{addr}/metrics");
    let weak = std::sync::Arc::downgrade(server);
    smol::spawn(async move {
        loop {
            let mut s = match l.accept().await {
                Ok((s, _)) => s,
                Err(_) => {
                    async_io::Timer::after(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(server) = weak.upgrade() else { return };
            smol::spawn(async move {
                let _ = scrape(&server, &mut s).await;
            })
            .detach();
        }
    })
    .detach();
}

async fn scrape(
    server: &Server,
    s: &mut async_io::Async<std::net::TcpStream>,
) -> std::io::Result<()> {
    use futures_lite::AsyncWriteExt;
    let mut buf = Vec::new();
    let head = http::read_head(s, &mut buf);
    let Some(h) = http::timeout(Duration::from_secs(10), head).await? else {
        return Ok(());
    };
    let (status, body) = if h.method == "GET" && h.path == "/metrics" {
        ("200 OK", crate::metrics::render(&gauges(server)))
    } else {
        ("404 Not Found", "not found\n".to_string())
    };
    let out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(out.as_bytes()).await?;
    s.flush().await
}
