//! Subnet routes and exit nodes: which approved routes are served, HA
//! primary election, and autoApprovers.
//!
//! A prefix can be routed to only one peer (WireGuard cryptokey routing),
//! so among the online nodes that advertise an approved subnet route one is
//! the primary. The primary stays primary while it is online (no flapping
//! back when a lower-ID router returns); when it goes offline the lowest-ID
//! online candidate takes over and every client is told.

use crate::control::{Change, Server};
use crate::state::{Node, Op};
use log::info;
use std::collections::{BTreeMap, BTreeSet};

pub use crate::state::model::is_exit;

/// Routes both advertised by the node and approved for it.
pub fn served(n: &Node) -> impl Iterator<Item = &String> {
    n.served()
}

impl Server {
    /// Runs the HA election; returns the nodes whose primary routes changed.
    pub fn reelect(&self) -> Vec<u64> {
        let st = self.state();
        let now = crate::state::now();
        let mut candidates: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        // Most nodes route nothing: the table's index of subnet routers
        // makes a session's start or end cost a pass over the routers, not
        // over every node (10,000 session starts after a restart).
        for n in st.nodes.routers() {
            if n.is_expired(now) || !self.hub.is_online(n.id) {
                continue;
            }
            for r in served(n).filter(|r| !is_exit(r)) {
                candidates.entry(r.clone()).or_default().push(n.id);
            }
        }
        drop(st);
        let mut prim = self.primaries.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = BTreeMap::new();
        for (route, ids) in candidates {
            let keep = prim.get(&route).filter(|p| ids.contains(p)).copied();
            let chosen = keep.unwrap_or_else(|| ids.iter().copied().min().unwrap_or(0));
            next.insert(route, chosen);
        }
        let mut changed = BTreeSet::new();
        for (r, id) in prim.iter() {
            if next.get(r) != Some(id) {
                changed.insert(*id);
                if let Some(n) = next.get(r) {
                    changed.insert(*n);
                    info!("route {r}: primary moves from node {id} to node {n}");
                } else {
                    info!("route {r}: no router online (was node {id})");
                }
            }
        }
        for (r, id) in next.iter() {
            if !prim.contains_key(r) {
                changed.insert(*id);
            }
        }
        *prim = next;
        changed.into_iter().collect()
    }

    /// Re-elects and tells clients about routers whose routes moved.
    pub fn reelect_and_notify(&self) {
        for id in self.reelect() {
            self.hub.notify(Change::NodeUpsert(id));
        }
    }

    /// Is `node` the primary for subnet `route`?
    pub fn is_primary(&self, node: u64, route: &str) -> bool {
        self.primaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(route)
            == Some(&node)
    }

    /// Routes of `n` that peers should be given: exit routes when approved,
    /// subnet routes only where `n` is the elected primary.
    pub fn routes_in_effect(&self, n: &Node) -> Vec<String> {
        served(n)
            .filter(|r| is_exit(r) || self.is_primary(n.id, r))
            .cloned()
            .collect()
    }

    /// Approves advertised routes the policy's autoApprovers allow; returns
    /// true if the node changed (already persisted and announced).
    pub fn auto_approve(&self, node_id: u64) -> bool {
        let Some(pol) = self.current_policy() else {
            return false;
        };
        let (pending, topo) = {
            let st = self.state();
            let Some(n) = st.nodes.get(&node_id) else {
                return false;
            };
            let pending: Vec<String> = n
                .advertised_routes
                .iter()
                .filter(|r| !n.approved_routes.contains(r))
                .cloned()
                .collect();
            if pending.is_empty() {
                return false;
            }
            (pending, crate::control::policy::topology(&st))
        };
        let approve: Vec<String> = pending
            .into_iter()
            .filter(|r| {
                r.parse()
                    .is_ok_and(|net| crate::policy::auto_approves(&pol, &topo, node_id, &net))
            })
            .collect();
        if approve.is_empty() {
            return false;
        }
        let mut st = self.state();
        let Some(mut n) = st.nodes.get(&node_id).cloned() else {
            return false;
        };
        for r in approve {
            if !n.approved_routes.contains(&r) {
                info!("route {r} of node {node_id} auto-approved by policy");
                n.approved_routes.push(r);
            }
        }
        if st.store.apply(&[Op::PutNode(&n)]).is_err() {
            return false;
        }
        st.nodes.insert(node_id, n);
        drop(st);
        self.hub.notify(Change::NodeUpsert(node_id));
        true
    }
}

/// Announces key expiry as it happens: a node whose key just expired gets
/// its self node with the past `KeyExpiry` (the client goes to NeedsLogin)
/// and its peers see it `Expired` (no endpoints, no DERP).
pub fn spawn_expiry_watcher(server: crate::control::SharedServer) {
    // A weak handle: the watcher must not keep a stopped server alive.
    let weak = std::sync::Arc::downgrade(&server);
    drop(server);
    smol::spawn(async move {
        loop {
            async_io::Timer::after(std::time::Duration::from_secs(5)).await;
            let Some(server) = weak.upgrade() else { return };
            let t = crate::state::now();
            let expired: BTreeSet<u64> = server
                .state()
                .nodes
                .values()
                .filter(|n| n.is_expired(t))
                .map(|n| n.id)
                .collect();
            let fresh: Vec<u64> = {
                let mut announced = server
                    .expiry_announced
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let fresh = expired.difference(&announced).copied().collect();
                // Re-authenticated or deleted nodes leave the set.
                *announced = expired;
                fresh
            };
            for id in fresh {
                info!("node {id}: key expired");
                server.hub.notify(Change::NodeUpsert(id));
            }
        }
    })
    .detach();
}
