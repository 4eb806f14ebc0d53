//! Ephemeral nodes are deleted after `node.ephemeral.inactivity_timeout`
//! without a map stream. The timer a stream's end starts covers the usual
//! case; this sweeper covers the rest: nodes that registered and never
//! streamed, and nodes whose clients never came back after the server
//! crashed or was upgraded (no stream ended, so no timer was started).
//! A node counts as seen at the later of its last-seen time and the
//! server's start, so a restart gives every client the full timeout to
//! reconnect before its node goes.

use crate::control::{Change, SharedServer};
use crate::state::{now, Unix};
use std::sync::Arc;
use std::time::Duration;

/// Deletes every ephemeral node that has no map stream and was last seen
/// (or the server started) at least `timeout` before `t`. Returns the ids.
pub fn sweep(server: &crate::control::Server, started: Unix, t: Unix) -> Vec<u64> {
    let timeout = server.cfg.ephemeral_inactivity_timeout.as_secs() as Unix;
    let mut st = server.state();
    let stale: Vec<u64> = st
        .nodes
        .values()
        .filter(|n| n.ephemeral && !server.hub.is_online(n.id))
        .filter(|n| t - n.last_seen.max(n.created).max(started) >= timeout)
        .map(|n| n.id)
        .collect();
    let mut gone = Vec::new();
    for id in stale {
        match st.delete_node(id) {
            Ok(_) => gone.push(id),
            Err(e) => log::warn!("ephemeral sweep: deleting node {id}: {e}"),
        }
    }
    drop(st);
    if !gone.is_empty() {
        log::info!("ephemeral nodes {gone:?} removed after inactivity (sweep)");
        for &id in &gone {
            server.hub.notify(Change::NodeRemoved(id));
        }
        server.reelect_and_notify();
    }
    gone
}

/// Sweeps from the server's start on, every half timeout (1 s to 60 s).
pub fn spawn_sweeper(server: &SharedServer) {
    let started = now();
    let every = (server.cfg.ephemeral_inactivity_timeout / 2)
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    let weak = Arc::downgrade(server);
    smol::spawn(async move {
        loop {
            async_io::Timer::after(every).await;
            let Some(server) = weak.upgrade() else { return };
            sweep(&server, started, now());
        }
    })
    .detach();
}
