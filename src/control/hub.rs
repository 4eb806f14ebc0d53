//! Fan-out of state changes to connected map sessions.
//!
//! Each streaming map session subscribes with a bounded queue. A change is
//! offered to every session without blocking; a session whose queue is full
//! is flagged for a resync and later gets one fresh full map instead of an
//! unbounded backlog (design.md, performance principles).

use crate::tailcfg::SharedRaw;
use smol::channel::{self, Receiver, Sender, TrySendError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What changed; map sessions turn this into deltas for their node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A node was added or changed in a way peers must see in full.
    NodeUpsert(u64),
    /// A node was deleted.
    NodeRemoved(u64),
    /// Only patchable fields changed (endpoints, DERP, disco key, online).
    NodePatch(u64),
    /// Peers need the full node again, but nothing the policy or routing
    /// depends on changed (Hostinfo churn).
    NodeInfo(u64),
    /// A user's profile changed.
    UserChanged(u64),
    /// Policy, DNS or DERP configuration changed: resend everything.
    Everything,
    /// The policy was recompiled after topology changes: sessions reconcile
    /// visibility and filters (in proportion to what each node sees).
    PolicyRefresh,
}

/// Deltas a session may have queued before it is resynced instead.
const QUEUE: usize = 64;

struct Slot {
    seq: u64,
    tx: Sender<Change>,
    resync: Arc<AtomicBool>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<u64, Slot>,
    next_seq: u64,
    /// Serialised peer `Node` JSON by node ID, valid until the node changes.
    peer_cache: HashMap<u64, SharedRaw>,
}

pub struct Hub {
    inner: Mutex<Inner>,
    /// Set when nodes or users changed: the policy must be recompiled.
    topology_dirty: AtomicBool,
    /// Signalled (coalesced, capacity 1) when a node was added, changed in
    /// full or removed: the DERP relay re-checks its connected keys at once
    /// instead of at its next periodic sweep, so a deleted, expired or
    /// rotated key stops relaying when the change is made.
    keys_changed: (Sender<()>, Receiver<()>),
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            inner: Mutex::default(),
            topology_dirty: AtomicBool::new(false),
            keys_changed: channel::bounded(1),
        }
    }
}

/// A streaming session's end of the hub.
pub struct Subscription {
    pub node_id: u64,
    pub seq: u64,
    pub rx: Receiver<Change>,
    pub resync: Arc<AtomicBool>,
}

impl Subscription {
    /// True once, after the queue overflowed.
    pub fn take_resync(&self) -> bool {
        self.resync.swap(false, Ordering::AcqRel)
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the node's streaming session, replacing (and thereby
    /// ending) an older one. Returns whether the node was already online.
    pub fn subscribe(&self, node_id: u64) -> (Subscription, bool) {
        let (tx, rx) = channel::bounded(QUEUE);
        let resync = Arc::new(AtomicBool::new(false));
        let mut g = self.lock();
        g.next_seq += 1;
        let seq = g.next_seq;
        let old = g.sessions.insert(
            node_id,
            Slot {
                seq,
                tx,
                resync: resync.clone(),
            },
        );
        g.peer_cache.remove(&node_id);
        if let Some(old) = &old {
            old.tx.close();
        }
        (
            Subscription {
                node_id,
                seq,
                rx,
                resync,
            },
            old.is_some(),
        )
    }

    /// Removes the session if it is still the node's current one.
    pub fn unsubscribe(&self, node_id: u64, seq: u64) -> bool {
        let mut g = self.lock();
        if g.sessions.get(&node_id).is_some_and(|s| s.seq == seq) {
            g.sessions.remove(&node_id);
            g.peer_cache.remove(&node_id);
            true
        } else {
            false
        }
    }

    /// Ends the node's session (deleted node, expired key).
    pub fn disconnect(&self, node_id: u64) {
        if let Some(s) = self.lock().sessions.remove(&node_id) {
            s.tx.close();
        }
    }

    pub fn is_online(&self, node_id: u64) -> bool {
        self.lock().sessions.contains_key(&node_id)
    }

    pub fn online_count(&self) -> usize {
        self.lock().sessions.len()
    }

    /// True once after the topology changed (and clears the flag).
    pub fn take_topology_dirty(&self) -> bool {
        self.topology_dirty.swap(false, Ordering::AcqRel)
    }

    /// Wakes when node keys may have changed (see `keys_changed`).
    pub fn key_changes(&self) -> Receiver<()> {
        self.keys_changed.1.clone()
    }

    /// Offers `c` to every connected session.
    pub fn notify(&self, c: Change) {
        if !matches!(
            c,
            Change::NodePatch(_) | Change::NodeInfo(_) | Change::PolicyRefresh
        ) {
            self.topology_dirty.store(true, Ordering::Release);
        }
        if matches!(
            c,
            Change::NodeUpsert(_) | Change::NodeRemoved(_) | Change::Everything
        ) {
            // Full = a check is already pending; nothing is lost.
            let _ = self.keys_changed.0.try_send(());
        }
        let mut g = self.lock();
        match &c {
            Change::NodeUpsert(id)
            | Change::NodeRemoved(id)
            | Change::NodePatch(id)
            | Change::NodeInfo(id) => {
                g.peer_cache.remove(id);
            }
            Change::UserChanged(_) | Change::Everything => g.peer_cache.clear(),
            Change::PolicyRefresh => {}
        }
        for s in g.sessions.values() {
            match s.tx.try_send(c.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => s.resync.store(true, Ordering::Release),
                Err(TrySendError::Closed(_)) => {}
            }
        }
    }

    pub fn cached_peer(&self, id: u64) -> Option<SharedRaw> {
        self.lock().peer_cache.get(&id).cloned()
    }

    pub fn cache_peer(&self, id: u64, raw: SharedRaw) {
        self.lock().peer_cache.insert(id, raw);
    }
}
