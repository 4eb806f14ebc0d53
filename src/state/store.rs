//! redb persistence. PLACEHOLDER interface: replaced by the real redb store.

use super::model::{Node, PreAuthKey, User};

#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for StoreError {}

/// One change; `Store::apply` commits a batch atomically and durably.
pub enum Op<'a> {
    PutUser(&'a User),
    DelUser(u64),
    PutKey(&'a PreAuthKey),
    DelKey(u64),
    PutNode(&'a Node),
    DelNode(u64),
    PutMeta(&'a str, Vec<u8>),
}

#[derive(Default)]
pub struct Snapshot {
    pub users: Vec<User>,
    pub keys: Vec<PreAuthKey>,
    pub nodes: Vec<Node>,
    pub next_user_id: u64,
    pub next_key_id: u64,
    pub next_node_id: u64,
}

pub struct Store {}

impl Store {
    pub fn open(_path: &std::path::Path) -> Result<Store, StoreError> {
        Ok(Store {})
    }
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot::default())
    }
    pub fn apply(&self, _ops: &[Op<'_>]) -> Result<(), StoreError> {
        Ok(())
    }
    pub fn get_meta(&self, _key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
}
