//! Per-node rate limit on Hostinfo fan-out. A Hostinfo change (NetInfo,
//! versions, …) sends the node again to every peer, up to the Hostinfo cap
//! per peer; a client looping lite updates would make the server do that
//! on every request. At most one such fan-out per node per [`INTERVAL`]:
//! changes inside the window are folded into one notice at its end, which
//! carries the latest state (sessions read the node when they send it).

use crate::control::{Change, Server};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shortest gap between two Hostinfo fan-outs of one node.
pub const INTERVAL: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Churn {
    /// Per node: when its last fan-out went out, and whether a deferred
    /// one is scheduled.
    last: Mutex<HashMap<u64, (Instant, bool)>>,
}

impl Churn {
    /// Announces a Hostinfo change of `id` now, or once at the end of the
    /// current window.
    pub fn node_info(&self, server: &Server, id: u64) {
        let now = Instant::now();
        let wait = {
            let mut m = self.last.lock().unwrap_or_else(|e| e.into_inner());
            // Forget nodes whose window has long passed (bounded by nodes).
            if m.len() > 64 {
                m.retain(|_, (t, pending)| *pending || now.duration_since(*t) < INTERVAL);
            }
            match m.get_mut(&id) {
                Some((_, true)) => return,
                Some((t, pending)) if now.duration_since(*t) < INTERVAL => {
                    *pending = true;
                    INTERVAL - now.duration_since(*t)
                }
                _ => {
                    m.insert(id, (now, false));
                    Duration::ZERO
                }
            }
        };
        if wait.is_zero() {
            server.hub.notify(Change::NodeInfo(id));
            return;
        }
        let Some(me) = server.me.upgrade() else {
            return;
        };
        let weak = std::sync::Arc::downgrade(&me);
        drop(me);
        smol::spawn(async move {
            async_io::Timer::after(wait).await;
            let Some(server) = weak.upgrade() else { return };
            server
                .churn
                .last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, (Instant::now(), false));
            server.hub.notify(Change::NodeInfo(id));
        })
        .detach();
    }
}
