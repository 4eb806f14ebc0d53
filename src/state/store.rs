//! redb persistence: one table per kind of record, values postcard-encoded
//! model structs, plus a `meta` table holding the schema version and the
//! id counters.
//!
//! Every `apply` is one atomic batch, queued for the group-commit thread
//! (`commit.rs`), which writes all queued batches in one transaction with
//! `Durability::Immediate` (one fsync); a caller acknowledges its change
//! only after waiting for that, so an acknowledged change survives a crash.
//! The server process is the only writer.
//!
//! Schema versioning: `meta["schema_version"]` (u32, little endian). A
//! database written by a newer tinyscale is refused with a clear error; an
//! older one is brought forward by [`migrate`] inside one transaction.

use super::commit::Committer;
use super::model::{Node, PreAuthKey, User};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Version of the on-disk layout. Bump it whenever a model struct or a table
/// changes, and teach [`migrate`] to convert the previous version.
pub const SCHEMA_VERSION: u32 = 4;

const USERS: TableDefinition<u64, &[u8]> = TableDefinition::new("users");
const KEYS: TableDefinition<u64, &[u8]> = TableDefinition::new("preauth_keys");
const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Meta keys owned by the store itself; `PutMeta` may not overwrite them.
pub const META_SCHEMA_VERSION: &str = "schema_version";
pub const META_NEXT_USER_ID: &str = "next_user_id";
pub const META_NEXT_KEY_ID: &str = "next_key_id";
pub const META_NEXT_NODE_ID: &str = "next_node_id";
const RESERVED_META: [&str; 4] = [
    META_SCHEMA_VERSION,
    META_NEXT_USER_ID,
    META_NEXT_KEY_ID,
    META_NEXT_NODE_ID,
];

#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for StoreError {}

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError(format!("{what}: {e}"))
}

/// One change; `Store::apply` commits a batch atomically and durably.
pub enum Op<'a> {
    PutUser(&'a User),
    DelUser(u64),
    PutKey(&'a PreAuthKey),
    DelKey(u64),
    PutNode(&'a Node),
    DelNode(u64),
    PutMeta(&'a str, Vec<u8>),
    /// Explicitly raises the persisted id counters (never lowers them).
    /// `Put*` ops already raise them past the id they carry.
    BumpNextIds {
        user: u64,
        key: u64,
        node: u64,
    },
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

pub struct Store {
    db: std::sync::Arc<Database>,
    /// Every write goes through the group-commit thread (see `commit`).
    commits: std::sync::Arc<Committer>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// An [`Op`] encoded, as the commit thread takes it.
pub(super) enum Owned {
    Put(TableDefinition<'static, u64, &'static [u8]>, u64, Vec<u8>),
    Del(TableDefinition<'static, u64, &'static [u8]>, u64),
    Meta(String, Vec<u8>),
    Bump { user: u64, key: u64, node: u64 },
}

/// Encodes a batch, refusing reserved meta keys before anything is queued.
fn own(ops: &[Op<'_>]) -> Result<Vec<Owned>, StoreError> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let one = match op {
            Op::PutUser(u) => {
                out.push(Owned::Bump {
                    user: u.id + 1,
                    key: 0,
                    node: 0,
                });
                Owned::Put(USERS, u.id, encode(*u)?)
            }
            Op::DelUser(id) => Owned::Del(USERS, *id),
            Op::PutKey(k) => {
                out.push(Owned::Bump {
                    user: 0,
                    key: k.id + 1,
                    node: 0,
                });
                Owned::Put(KEYS, k.id, encode(*k)?)
            }
            Op::DelKey(id) => Owned::Del(KEYS, *id),
            Op::PutNode(n) => {
                out.push(Owned::Bump {
                    user: 0,
                    key: 0,
                    node: n.id + 1,
                });
                Owned::Put(NODES, n.id, encode(*n)?)
            }
            Op::DelNode(id) => Owned::Del(NODES, *id),
            Op::PutMeta(k, v) => {
                if k.is_empty() || RESERVED_META.contains(k) {
                    return Err(StoreError(format!("meta key {k:?} is reserved")));
                }
                Owned::Meta(k.to_string(), v.clone())
            }
            Op::BumpNextIds { user, key, node } => Owned::Bump {
                user: *user,
                key: *key,
                node: *node,
            },
        };
        out.push(one);
    }
    Ok(out)
}

/// redb's page cache (read + write), see [`Store::open`].
const CACHE_BYTES: usize = 256 << 10;

impl Store {
    /// Opens (creating if needed) the database at `path`. A directory that
    /// has to be created is made owner-only (0700); a new database file is
    /// created 0600.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(|e| {
                StoreError(format!(
                    "creating database directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        create_private_file(path)
            .map_err(|e| StoreError(format!("creating database {}: {e}", path.display())))?;
        crate::secretfile::check_private(path, "database", crate::secretfile::Loose::Fix)
            .map_err(|e| StoreError(e.to_string()))?;
        // The server keeps its whole state in memory and reads the file only
        // at start-up, so redb's page cache (1 GiB by default, filled with
        // every page written) would only duplicate it: at 1000 nodes it held
        // ~10 MiB. A small cache keeps writes batched per transaction.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| StoreError(format!("opening database {}: {e}", path.display())))?;
        let db = std::sync::Arc::new(db);
        init_schema(&db)?;
        let (commits, thread) = Committer::start(db.clone())?;
        Ok(Store {
            db,
            commits,
            thread: Some(thread),
        })
    }

    /// The group-commit queue, for waiting outside the state lock.
    pub fn committer(&self) -> std::sync::Arc<Committer> {
        self.commits.clone()
    }

    /// Waits until everything queued so far is written, so a read sees it.
    fn settle(&self) -> Result<(), StoreError> {
        self.commits.settle(self.commits.queued())
    }
}

fn init_schema(db: &Database) -> Result<(), StoreError> {
    {
        let mut txn = db.begin_write().map_err(err("begin write"))?;
        txn.set_durability(Durability::Immediate);
        let found = {
            let meta = txn.open_table(META).map_err(err("open meta"))?;
            let v = meta
                .get(META_SCHEMA_VERSION)
                .map_err(err("read schema version"))?;
            v.map(|g| g.value().to_vec())
        };
        let version = match found {
            None => None,
            Some(b) => {
                Some(u32::from_le_bytes(b.as_slice().try_into().map_err(
                    |_| StoreError("database schema_version is corrupt".into()),
                )?))
            }
        };
        match version {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError(format!(
                    "database schema version {v} is newer than this tinyscale supports \
                     ({SCHEMA_VERSION}); run a newer tinyscale or restore a backup"
                )));
            }
            Some(v) if v == SCHEMA_VERSION => {}
            other => {
                // Brand-new database (None) or an older layout.
                migrate(&txn, other.unwrap_or(0))?;
            }
        }
        // Make sure every table exists so read transactions can open them.
        txn.open_table(USERS).map_err(err("open users"))?;
        txn.open_table(KEYS).map_err(err("open keys"))?;
        txn.open_table(NODES).map_err(err("open nodes"))?;
        {
            let mut meta = txn.open_table(META).map_err(err("open meta"))?;
            meta.insert(META_SCHEMA_VERSION, &SCHEMA_VERSION.to_le_bytes()[..])
                .map_err(err("write schema version"))?;
        }
        txn.commit().map_err(err("commit"))?;
    }
    Ok(())
}

impl Store {
    /// Reads everything.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        self.settle()?;
        let txn = self.db.begin_read().map_err(err("begin read"))?;
        let mut snap = Snapshot {
            users: read_all(&txn.open_table(USERS).map_err(err("open users"))?, "user")?,
            keys: read_all(&txn.open_table(KEYS).map_err(err("open keys"))?, "key")?,
            nodes: read_all(&txn.open_table(NODES).map_err(err("open nodes"))?, "node")?,
            ..Snapshot::default()
        };
        let meta = txn.open_table(META).map_err(err("open meta"))?;
        let counter = |k: &str| -> Result<u64, StoreError> {
            Ok(meta
                .get(k)
                .map_err(err("read meta"))?
                .and_then(|g| g.value().try_into().ok().map(u64::from_le_bytes))
                .unwrap_or(0))
        };
        snap.next_user_id = counter(META_NEXT_USER_ID)?;
        snap.next_key_id = counter(META_NEXT_KEY_ID)?;
        snap.next_node_id = counter(META_NEXT_NODE_ID)?;
        Ok(snap)
    }

    /// Queues `ops` as one atomic batch for the next durable group commit
    /// and returns at once (callers hold the state lock). The change may
    /// be acknowledged only after `committer().wait(ticket)`, with the lock
    /// released; `ticket()` after this call covers it.
    pub fn apply(&self, ops: &[Op<'_>]) -> Result<(), StoreError> {
        self.commits.enqueue(own(ops)?, true).map(drop)
    }

    /// Like [`Store::apply`] but nobody waits for the disk: for changes
    /// that may be lost in a crash without harm, such as endpoints, DERP
    /// home and last-seen times. They reach the disk with the next durable
    /// commit, at the latest after 256 relaxed commits or 5 s.
    pub fn apply_relaxed(&self, ops: &[Op<'_>]) -> Result<(), StoreError> {
        self.commits.enqueue(own(ops)?, false).map(drop)
    }

    /// A ticket covering every change queued so far.
    pub fn ticket(&self) -> u64 {
        self.commits.queued()
    }

    /// Makes everything queued so far durable (blocking).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.commits.wait(self.commits.queued())
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.settle()?;
        let txn = self.db.begin_read().map_err(err("begin read"))?;
        let meta = txn.open_table(META).map_err(err("open meta"))?;
        let v = meta.get(key).map_err(err("read meta"))?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    /// Writes one (non-reserved) meta value durably.
    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.apply(&[Op::PutMeta(key, value.to_vec())])?;
        self.flush()
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .get_meta(META_SCHEMA_VERSION)?
            .and_then(|b| b.as_slice().try_into().ok().map(u32::from_le_bytes))
            .unwrap_or(0))
    }
}

/// Meta keys a backup made with `--with-keys` carries the server keys
/// under; `restore` writes them to their files and removes them.
pub const META_BACKUP_NOISE_KEY: &str = "backup.noise_private_key";
pub const META_BACKUP_DERP_KEY: &str = "backup.derp_private_key";

impl Store {
    /// A read transaction: a consistent snapshot holding every commit made
    /// before it began, for [`write_backup`]. Taking it is cheap, so the
    /// caller can hold the state lock just for this and copy without it.
    pub fn begin_backup(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.settle()?;
        self.db.begin_read().map_err(err("begin read"))
    }

    /// Deletes a meta value (durably), returning what it held.
    pub fn take_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.settle()?;
        let mut txn = self.db.begin_write().map_err(err("begin write"))?;
        txn.set_durability(Durability::Immediate);
        let old = {
            let mut meta = txn.open_table(META).map_err(err("open meta"))?;
            let v = meta.remove(key).map_err(err("delete meta"))?;
            v.map(|g| g.value().to_vec())
        };
        txn.commit().map_err(err("commit"))?;
        Ok(old)
    }
}

/// Writes every table of `snap` into a new database file `dest` (which must
/// not exist; created 0600), plus `extra` meta values, durably.
pub fn write_backup(
    snap: &redb::ReadTransaction,
    dest: &Path,
    extra: &[(&str, Vec<u8>)],
) -> Result<(), StoreError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(dest)
        .map_err(|e| StoreError(format!("creating {}: {e}", dest.display())))?;
    let result = (|| {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(dest)
            .map_err(err("creating backup database"))?;
        let mut txn = db.begin_write().map_err(err("begin write"))?;
        txn.set_durability(Durability::Immediate);
        for def in [USERS, KEYS, NODES] {
            let from = snap.open_table(def).map_err(err("open table"))?;
            let mut to = txn.open_table(def).map_err(err("open table"))?;
            for row in from.iter().map_err(err("iterate"))? {
                let (k, v) = row.map_err(err("read row"))?;
                to.insert(k.value(), v.value()).map_err(err("write row"))?;
            }
        }
        {
            let from = snap.open_table(META).map_err(err("open meta"))?;
            let mut to = txn.open_table(META).map_err(err("open meta"))?;
            for row in from.iter().map_err(err("iterate"))? {
                let (k, v) = row.map_err(err("read row"))?;
                to.insert(k.value(), v.value()).map_err(err("write meta"))?;
            }
            for (k, v) in extra {
                to.insert(*k, v.as_slice()).map_err(err("write meta"))?;
            }
        }
        txn.commit().map_err(err("commit"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

impl Drop for Store {
    /// Everything queued is made durable when the store goes away.
    fn drop(&mut self) {
        self.commits.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes a group of batches in one transaction (the commit thread).
pub(super) fn write_batch(db: &Database, ops: &[Owned], durable: bool) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(err("begin write"))?;
    txn.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    });
    {
        let mut meta = txn.open_table(META).map_err(err("open meta"))?;
        let (mut nu, mut nk, mut nn) = (0u64, 0u64, 0u64);
        for op in ops {
            match op {
                Owned::Put(t, id, v) => {
                    let mut table = txn.open_table(*t).map_err(err("open table"))?;
                    table.insert(*id, v.as_slice()).map_err(err("write"))?;
                }
                Owned::Del(t, id) => {
                    let mut table = txn.open_table(*t).map_err(err("open table"))?;
                    table.remove(*id).map_err(err("delete"))?;
                }
                Owned::Meta(k, v) => {
                    meta.insert(k.as_str(), v.as_slice())
                        .map_err(err("write meta"))?;
                }
                Owned::Bump { user, key, node } => {
                    nu = nu.max(*user);
                    nk = nk.max(*key);
                    nn = nn.max(*node);
                }
            }
        }
        for (name, n) in [
            (META_NEXT_USER_ID, nu),
            (META_NEXT_KEY_ID, nk),
            (META_NEXT_NODE_ID, nn),
        ] {
            if n == 0 {
                continue;
            }
            let cur = meta
                .get(name)
                .map_err(err("read meta"))?
                .and_then(|g| g.value().try_into().ok().map(u64::from_le_bytes))
                .unwrap_or(0);
            if n > cur {
                meta.insert(name, &n.to_le_bytes()[..])
                    .map_err(err("write meta"))?;
            }
        }
    }
    txn.commit().map_err(err("commit"))
}

/// Brings a database at schema version `from` (0 = brand new) up to
/// [`SCHEMA_VERSION`] inside the caller's transaction. Add one arm per old
/// version; each arm rewrites the tables it changed.
fn migrate(txn: &redb::WriteTransaction, from: u32) -> Result<(), StoreError> {
    let mut v = from;
    while v < SCHEMA_VERSION {
        match v {
            // 0 → 1: new database, tables are created by the caller.
            0 => {}
            // 1 → 2: users gained `provider_id` and `profile_pic_url` (OIDC).
            1 => migrate_users_v1(txn)?,
            // 2 → 3: nodes gained `register_method` (appended last).
            2 => migrate_nodes_v2(txn)?,
            // 3 → 4: pre-auth keys and API keys gained `bcrypt` (appended
            // last) for keys imported from Headscale.
            3 => migrate_keys_v3(txn)?,
            other => {
                return Err(StoreError(format!(
                    "no migration from database schema version {other}"
                )))
            }
        }
        v += 1;
    }
    Ok(())
}

/// The user record of schema 1, before OIDC identities.
#[derive(serde::Deserialize)]
struct UserV1 {
    id: u64,
    name: String,
    display_name: String,
    email: String,
    created: super::model::Unix,
}

/// Rewrites every user row in the current layout. A row that already
/// decodes completely as the current layout is kept (an unversioned early
/// database may hold either).
fn migrate_users_v1(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut table = txn.open_table(USERS).map_err(err("open users"))?;
    let mut rewrite = Vec::new();
    for row in table.iter().map_err(err("iterate"))? {
        let (k, v) = row.map_err(err("read row"))?;
        if matches!(postcard::take_from_bytes::<User>(v.value()), Ok((_, rest)) if rest.is_empty())
        {
            continue;
        }
        let old: UserV1 = postcard::from_bytes(v.value())
            .map_err(|e| StoreError(format!("migrating user {}: {e}", k.value())))?;
        rewrite.push(User {
            id: old.id,
            name: old.name,
            display_name: old.display_name,
            email: old.email,
            created: old.created,
            provider_id: String::new(),
            profile_pic_url: String::new(),
        });
    }
    for u in rewrite {
        table
            .insert(u.id, encode(&u)?.as_slice())
            .map_err(err("write user"))?;
    }
    Ok(())
}

/// Appends one zero byte to every row of `def` (a field added last whose
/// default postcard-encodes as 0: enum variant 0, an empty string),
/// checking that each row then decodes whole as `T`.
fn append_zero_byte<T: DeserializeOwned>(
    txn: &redb::WriteTransaction,
    def: TableDefinition<u64, &[u8]>,
    what: &str,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(def).map_err(err("open table"))?;
    let mut rewrite = Vec::new();
    for row in table.iter().map_err(err("iterate"))? {
        let (k, v) = row.map_err(err("read row"))?;
        let mut bytes = v.value().to_vec();
        bytes.push(0);
        match postcard::take_from_bytes::<T>(&bytes) {
            Ok((_, [])) => rewrite.push((k.value(), bytes)),
            _ => {
                return Err(StoreError(format!(
                    "migrating {what} {}: not a record of the previous schema",
                    k.value()
                )))
            }
        }
    }
    for (id, bytes) in rewrite {
        table
            .insert(id, bytes.as_slice())
            .map_err(err("write row"))?;
    }
    Ok(())
}

/// Schema 2 → 3: `RegisterMethod::Unknown` appended to every node row.
fn migrate_nodes_v2(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    append_zero_byte::<Node>(txn, NODES, "node")
}

/// Schema 3 → 4: an empty `bcrypt` appended to every pre-auth key row and
/// to every key of the API key table.
fn migrate_keys_v3(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    append_zero_byte::<PreAuthKey>(txn, KEYS, "pre-auth key")?;
    let mut meta = txn.open_table(META).map_err(err("open meta"))?;
    let old = meta
        .get(super::apikey::META_API_KEYS)
        .map_err(err("read meta"))?
        .map(|g| g.value().to_vec());
    if let Some((k, v)) = super::apikey::upgrade_v3(old.as_deref())? {
        meta.insert(k, v.as_slice()).map_err(err("write meta"))?;
    }
    Ok(())
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(v).map_err(err("encode"))
}

fn read_all<T: DeserializeOwned>(
    table: &redb::ReadOnlyTable<u64, &[u8]>,
    what: &str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for row in table.iter().map_err(err("iterate"))? {
        let (k, v) = row.map_err(err("read row"))?;
        let item = postcard::from_bytes(v.value())
            .map_err(|e| StoreError(format!("decoding {what} {}: {e}", k.value())))?;
        out.push(item);
    }
    Ok(out)
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    // Parents we have to create get 0700 too; that is stricter than needed
    // but never wrong for a data directory.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    match o.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).unwrap();
        std::env::temp_dir()
            .join(format!(
                "tinyscale-store-{name}-{:016x}",
                u64::from_le_bytes(b)
            ))
            .join("sub")
            .join("db.redb")
    }

    #[test]
    fn a_database_readable_by_others_is_made_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let path = tmp("loose");
        drop(Store::open(&path).unwrap());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Store::open(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }

    fn user(id: u64, name: &str) -> User {
        User {
            id,
            name: name.into(),
            display_name: format!("{name} display"),
            email: String::new(),
            created: 1_700_000_000,
            provider_id: String::new(),
            profile_pic_url: String::new(),
        }
    }

    fn node(id: u64) -> Node {
        Node {
            id,
            machine_key: [1; 32],
            node_key: [2; 32],
            old_node_key: [0; 32],
            disco_key: [3; 32],
            user: 1,
            tags: vec!["tag:x".into()],
            ipv4: Some("100.64.0.1".parse().unwrap()),
            ipv6: Some("fd7a:115c:a1e0::1".parse().unwrap()),
            hostname: "host".into(),
            given_name: "host".into(),
            hostinfo: "{}".into(),
            endpoints: vec!["1.2.3.4:41641".into()],
            home_derp: 999,
            cap: 100,
            created: 1,
            expiry: 0,
            last_seen: 5,
            ephemeral: false,
            auth_key: 7,
            advertised_routes: vec![],
            approved_routes: vec![],
            register_method: Default::default(),
        }
    }

    fn key(id: u64) -> PreAuthKey {
        PreAuthKey {
            id,
            user: 1,
            prefix: "0123456789ab".into(),
            hash: [9; 32],
            reusable: true,
            ephemeral: false,
            used: false,
            created: 3,
            expiration: 0,
            tags: vec![],
            bcrypt: String::new(),
        }
    }

    #[test]
    fn round_trip_and_reopen() {
        let p = tmp("rt");
        {
            let s = Store::open(&p).unwrap();
            assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
            let (u, k, n) = (user(1, "alice"), key(4), node(9));
            s.apply(&[Op::PutUser(&u), Op::PutKey(&k), Op::PutNode(&n)])
                .unwrap();
            s.put_meta("policy", b"{}").unwrap();
            let snap = s.load().unwrap();
            assert_eq!(snap.users, vec![u.clone()]);
            assert_eq!(snap.keys, vec![k.clone()]);
            assert_eq!(snap.nodes, vec![n.clone()]);
            assert_eq!(
                (snap.next_user_id, snap.next_key_id, snap.next_node_id),
                (2, 5, 10)
            );
        }
        let s = Store::open(&p).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.users, vec![user(1, "alice")]);
        assert_eq!(snap.nodes, vec![node(9)]);
        assert_eq!(s.get_meta("policy").unwrap().as_deref(), Some(&b"{}"[..]));
        // Deleting the record keeps the counter: ids are never reused.
        s.apply(&[Op::DelNode(9), Op::DelUser(1)]).unwrap();
        let snap = s.load().unwrap();
        assert!(snap.nodes.is_empty() && snap.users.is_empty());
        assert_eq!(snap.next_node_id, 10);
        s.apply(&[Op::BumpNextIds {
            user: 50,
            key: 0,
            node: 3,
        }])
        .unwrap();
        let snap = s.load().unwrap();
        assert_eq!((snap.next_user_id, snap.next_node_id), (50, 10));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(m & 0o777, 0o600);
            let m = std::fs::metadata(p.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o700);
        }
        drop(s);
        let _ = std::fs::remove_dir_all(p.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn batch_is_atomic() {
        let p = tmp("atomic");
        let s = Store::open(&p).unwrap();
        let u = user(1, "alice");
        s.apply(&[Op::PutUser(&u)]).unwrap();
        let u2 = user(2, "bob");
        // The reserved meta key fails the batch after the user was written
        // inside the transaction: nothing of it may persist.
        let e = s.apply(&[
            Op::PutUser(&u2),
            Op::DelUser(1),
            Op::PutMeta(META_SCHEMA_VERSION, vec![9, 9, 9, 9]),
        ]);
        assert!(e.is_err());
        let snap = s.load().unwrap();
        assert_eq!(snap.users, vec![u]);
        assert_eq!(snap.next_user_id, 2);
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        drop(s);
        let _ = std::fs::remove_dir_all(p.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn relaxed_commits() {
        let p = tmp("relaxed");
        {
            let s = Store::open(&p).unwrap();
            for i in 1..=300u64 {
                s.apply_relaxed(&[Op::PutUser(&user(i, &format!("u{i}")))])
                    .unwrap();
            }
            // Visible to a reader at once, durable after a flush.
            assert_eq!(s.load().unwrap().users.len(), 300);
            s.flush().unwrap();
        }
        let s = Store::open(&p).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.users.len(), 300);
        assert_eq!(snap.next_user_id, 301);
        drop(s);
        let _ = std::fs::remove_dir_all(p.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn unversioned_database_is_migrated() {
        let p = tmp("v0");
        {
            let s = Store::open(&p).unwrap();
            s.apply(&[Op::PutUser(&user(1, "old"))]).unwrap();
            // Pretend an early build wrote it: no schema_version at all.
            let mut txn = s.db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.remove(META_SCHEMA_VERSION).unwrap();
            }
            txn.set_durability(Durability::Immediate);
            txn.commit().unwrap();
            assert_eq!(s.schema_version().unwrap(), 0);
        }
        let s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.load().unwrap().users, vec![user(1, "old")]);
        drop(s);
        let _ = std::fs::remove_dir_all(p.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn schema_1_users_gain_oidc_fields() {
        #[derive(serde::Serialize)]
        struct UserV1<'a> {
            id: u64,
            name: &'a str,
            display_name: &'a str,
            email: &'a str,
            created: i64,
        }
        let p = tmp("v1");
        {
            let s = Store::open(&p).unwrap();
            let mut txn = s.db.begin_write().unwrap();
            txn.set_durability(Durability::Immediate);
            {
                let mut users = txn.open_table(USERS).unwrap();
                let old = UserV1 {
                    id: 7,
                    name: "amy",
                    display_name: "Amy",
                    email: "amy@example.com",
                    created: 1_700_000_000,
                };
                users
                    .insert(7, postcard::to_stdvec(&old).unwrap().as_slice())
                    .unwrap();
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(META_SCHEMA_VERSION, &1u32.to_le_bytes()[..])
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let u = &s.load().unwrap().users[0];
        assert_eq!(
            (u.id, u.name.as_str(), u.email.as_str()),
            (7, "amy", "amy@example.com")
        );
        assert_eq!(
            (u.provider_id.as_str(), u.profile_pic_url.as_str()),
            ("", "")
        );
        drop(s);
        let _ = std::fs::remove_dir_all(p.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn schema_2_nodes_gain_register_method() {
        let p = tmp("v2");
        let old = node(3);
        {
            let s = Store::open(&p).unwrap();
            let mut txn = s.db.begin_write().unwrap();
            txn.set_durability(Durability::Immediate);
            {
                // A schema 2 row: today's encoding without the last field.
                let mut bytes = postcard::to_stdvec(&old).unwrap();
                assert_eq!(bytes.pop(), Some(0));
                let mut nodes = txn.open_table(NODES).unwrap();
                nodes.insert(3, bytes.as_slice()).unwrap();
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(META_SCHEMA_VERSION, &2u32.to_le_bytes()[..])
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let nodes = s.load().unwrap().nodes;
        assert_eq!(nodes, vec![old]);
        assert_eq!(
            nodes[0].register_method,
            super::super::RegisterMethod::Unknown
        );
        drop(s);
        let _ = std::fs::remove_dir_all(p.parent().unwrap().parent().unwrap());
    }

    /// A database as schema 1 wrote it (users without OIDC fields, nodes
    /// without `register_method`, keys without `bcrypt`, no `api_keys`
    /// table) is brought to the current schema in one open.
    #[test]
    fn schema_1_database_upgrades_in_one_step() {
        #[derive(serde::Serialize)]
        struct UserV1<'a> {
            id: u64,
            name: &'a str,
            display_name: &'a str,
            email: &'a str,
            created: i64,
        }
        let p = tmp("v1full");
        let (n, k) = (node(5), key(6));
        {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let db = redb::Builder::new().create(&p).unwrap();
            let mut txn = db.begin_write().unwrap();
            txn.set_durability(Durability::Immediate);
            {
                let mut users = txn.open_table(USERS).unwrap();
                let u = UserV1 {
                    id: 1,
                    name: "ann",
                    display_name: "Ann",
                    email: "",
                    created: 9,
                };
                users
                    .insert(1, postcard::to_stdvec(&u).unwrap().as_slice())
                    .unwrap();
                let mut nodes = txn.open_table(NODES).unwrap();
                let mut nb = postcard::to_stdvec(&n).unwrap();
                assert_eq!(nb.pop(), Some(0), "register_method is the last byte");
                nodes.insert(5, nb.as_slice()).unwrap();
                let mut keys = txn.open_table(KEYS).unwrap();
                let mut kb = postcard::to_stdvec(&k).unwrap();
                assert_eq!(kb.pop(), Some(0), "bcrypt is the last byte");
                keys.insert(6, kb.as_slice()).unwrap();
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(META_SCHEMA_VERSION, &1u32.to_le_bytes()[..])
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let snap = s.load().unwrap();
        assert_eq!(snap.users.len(), 1);
        assert_eq!(snap.users[0].name, "ann");
        assert_eq!(snap.nodes, vec![n]);
        assert_eq!(snap.keys, vec![k]);
        drop(s);
        let _ = std::fs::remove_dir_all(p.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn schema_3_keys_gain_bcrypt() {
        let p = tmp("v3");
        let k = key(2);
        {
            let s = Store::open(&p).unwrap();
            let mut txn = s.db.begin_write().unwrap();
            txn.set_durability(Durability::Immediate);
            {
                let mut bytes = postcard::to_stdvec(&k).unwrap();
                assert_eq!(bytes.pop(), Some(0));
                let mut keys = txn.open_table(KEYS).unwrap();
                keys.insert(2, bytes.as_slice()).unwrap();
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(META_SCHEMA_VERSION, &3u32.to_le_bytes()[..])
                    .unwrap();
                // Schema 3's API key table (meta "api_keys").
                #[derive(serde::Serialize)]
                struct KeyV3 {
                    id: u64,
                    prefix: &'static str,
                    hash: [u8; 32],
                    created: i64,
                    expiration: i64,
                }
                let t = (
                    9u64,
                    vec![KeyV3 {
                        id: 9,
                        prefix: "abcdefghijkl",
                        hash: [5; 32],
                        created: 1,
                        expiration: 0,
                    }],
                );
                meta.insert("api_keys", postcard::to_stdvec(&t).unwrap().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.load().unwrap().keys, vec![k]);
        let api = crate::state::apikey::list(&s).unwrap();
        assert_eq!(api.len(), 1);
        assert_eq!((api[0].id, api[0].prefix.as_str()), (9, "abcdefghijkl"));
        assert_eq!((api[0].hash, api[0].bcrypt.as_str()), ([5; 32], ""));
        drop(s);
        let _ = std::fs::remove_dir_all(p.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn backup_copies_every_table() {
        let p = tmp("bk");
        let s = Store::open(&p).unwrap();
        s.apply(&[
            Op::PutUser(&user(1, "u")),
            Op::PutKey(&key(2)),
            Op::PutNode(&node(4)),
            Op::PutMeta("policy", b"{}".to_vec()),
        ])
        .unwrap();
        let snap = s.begin_backup().unwrap();
        // Written after the snapshot began: not in the backup.
        s.apply(&[Op::PutUser(&user(9, "late"))]).unwrap();
        let dest = p.with_file_name("backup.redb");
        write_backup(&snap, &dest, &[(META_BACKUP_NOISE_KEY, vec![7; 32])]).unwrap();
        assert!(
            write_backup(&snap, &dest, &[]).is_err(),
            "must not overwrite"
        );
        drop(snap);
        let b = Store::open(&dest).unwrap();
        let got = b.load().unwrap();
        assert_eq!(got.users, vec![user(1, "u")]);
        assert_eq!(got.keys, vec![key(2)]);
        assert_eq!(got.nodes, vec![node(4)]);
        assert_eq!(got.next_node_id, 5);
        assert_eq!(b.get_meta("policy").unwrap().as_deref(), Some(&b"{}"[..]));
        assert_eq!(
            b.take_meta(META_BACKUP_NOISE_KEY).unwrap(),
            Some(vec![7; 32])
        );
        assert_eq!(b.get_meta(META_BACKUP_NOISE_KEY).unwrap(), None);
        drop((s, b));
        let _ = std::fs::remove_dir_all(p.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn refuses_newer_schema() {
        let p = tmp("newer");
        {
            let s = Store::open(&p).unwrap();
            let mut txn = s.db.begin_write().unwrap();
            txn.set_durability(Durability::Immediate);
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(META_SCHEMA_VERSION, &(SCHEMA_VERSION + 1).to_le_bytes()[..])
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let before = std::fs::read(&p).unwrap();
        let e = Store::open(&p).err().expect("must refuse").to_string();
        assert!(e.contains("newer than this tinyscale supports"), "{e}");
        // Nothing written: the file is byte for byte what it was.
        assert!(
            std::fs::read(&p).unwrap() == before,
            "refused database was modified"
        );
        let _ = std::fs::remove_dir_all(p.parent().unwrap().parent().unwrap());
    }
}
