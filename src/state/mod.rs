//! Authoritative in-memory state, written through to redb before any change
//! is acknowledged. One writer: the server process (the CLI goes through the
//! admin socket).
//!
//! Locking: one `std::sync::Mutex<State>` held only for short, non-async
//! critical sections. Map sessions read what they need and release it before
//! writing to the network.

pub mod apikey;
pub mod commit;
pub mod imported;
pub mod index;
pub mod ipalloc;
pub mod model;
pub mod ops;
pub mod store;

use std::collections::BTreeMap;

pub use index::Nodes;
pub use model::{Node, PreAuthKey, RegisterMethod, Unix, User};
pub use store::{Op, Store, StoreError};

/// Everything the server knows, mirrored in redb.
pub struct State {
    pub users: BTreeMap<u64, User>,
    pub keys: BTreeMap<u64, PreAuthKey>,
    /// Indexed by key, name and address (see [`index`]).
    pub nodes: Nodes,
    pub next_user_id: u64,
    pub next_key_id: u64,
    pub next_node_id: u64,
    pub store: Store,
}

/// Errors an operation reports to its caller (admin API, register handler).
#[derive(Debug)]
pub enum OpError {
    NotFound(String),
    Invalid(String),
    Conflict(String),
    Storage(StoreError),
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpError::NotFound(s) | OpError::Invalid(s) | OpError::Conflict(s) => f.write_str(s),
            OpError::Storage(e) => write!(f, "storage error: {e}"),
        }
    }
}

impl std::error::Error for OpError {}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::Storage(e)
    }
}

impl State {
    /// Loads everything from the store.
    pub fn load(store: Store) -> Result<State, StoreError> {
        let snap = store.load()?;
        let users: BTreeMap<_, _> = snap.users.into_iter().map(|u| (u.id, u)).collect();
        let keys: BTreeMap<_, _> = snap.keys.into_iter().map(|k| (k.id, k)).collect();
        let nodes: Nodes = snap.nodes.into_iter().collect();
        let next = |m: u64, stored: u64| stored.max(m + 1).max(1);
        Ok(State {
            next_user_id: next(users.keys().last().copied().unwrap_or(0), snap.next_user_id),
            next_key_id: next(keys.keys().last().copied().unwrap_or(0), snap.next_key_id),
            next_node_id: next(nodes.keys().last().copied().unwrap_or(0), snap.next_node_id),
            users,
            keys,
            nodes,
            store,
        })
    }

    /// Finds a user by numeric ID or by name.
    pub fn find_user(&self, name_or_id: &str) -> Option<&User> {
        if let Ok(id) = name_or_id.parse::<u64>() {
            if let Some(u) = self.users.get(&id) {
                return Some(u);
            }
        }
        self.users.values().find(|u| u.name == name_or_id)
    }

    /// O(log N) (index); the lowest id if several nodes have the key.
    pub fn node_by_node_key(&self, key: &[u8; 32]) -> Option<&Node> {
        self.nodes.by_node_key(key)
    }

    /// O(log N) (index); the lowest id if several nodes have the key.
    pub fn node_by_machine_key(&self, key: &[u8; 32]) -> Option<&Node> {
        self.nodes.by_machine_key(key)
    }
}

/// Current wall-clock time in Unix seconds.
pub fn now() -> Unix {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
