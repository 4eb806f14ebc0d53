//! API keys for the REST API on the main listener (Headscale's format:
//! `hskey-api-<12-char prefix>-<64-char secret>`). Only the prefix and a
//! BLAKE2s hash of the whole key are stored; the key is shown once, at
//! creation. The admin socket needs no key: its peer is checked by uid.
//!
//! Keys are few (one per UI or script), so they live together in one meta
//! value of the database (postcard), rewritten durably on every change.
//!
//! The table and its checks live with the store (its schema upgrades
//! rewrite the table); the API room serves them (`api::apikey` re-exports
//! this module).
//!
//! Keys imported from Headscale (`tinyscale migrate`) keep Headscale's
//! bcrypt hash of their secret instead (schema 4 added the field), so
//! `hskey-api-…` keys and Headscale's legacy `<7-char prefix>.<secret>`
//! keys keep working without their secrets ever being known here.

use super::{now, Op, OpError, Store, StoreError, Unix};
use blake2::{Blake2s256, Digest};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

pub const KEY_PREFIX: &str = "hskey-api-";
const PREFIX_LEN: usize = 12;
const SECRET_LEN: usize = 64;
/// Default lifetime of a new key (Headscale's: 90 days).
pub const DEFAULT_LIFETIME: i64 = 90 * 24 * 3600;
/// Meta key of the table.
pub(crate) const META_API_KEYS: &str = "api_keys";
/// More keys than any installation needs; bounds the table's size.
const MAX_KEYS: usize = 256;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiKey {
    pub id: u64,
    pub prefix: String,
    pub hash: [u8; 32],
    pub created: Unix,
    /// 0 = never (only keys created with an explicit zero time).
    pub expiration: Unix,
    /// bcrypt hash of the secret for a key imported from Headscale; empty
    /// for tinyscale's own keys, which are checked against `hash`.
    pub bcrypt: String,
}

impl ApiKey {
    /// The form listings show and `expire`/`delete` accept.
    pub fn masked(&self) -> String {
        format!("{KEY_PREFIX}{}-***", self.prefix)
    }

    pub fn is_expired(&self, t: Unix) -> bool {
        self.expiration != 0 && self.expiration <= t
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Table {
    next_id: u64,
    keys: Vec<ApiKey>,
}

/// Serialises read-modify-write of the table (the store has no lock of
/// its own for a meta value).
static WRITE: Mutex<()> = Mutex::new(());

fn load(store: &Store) -> Result<Table, OpError> {
    match store.get_meta(META_API_KEYS).map_err(OpError::Storage)? {
        None => Ok(Table::default()),
        Some(b) => postcard::from_bytes(&b)
            .map_err(|e| OpError::Storage(StoreError(format!("api key table: {e}")))),
    }
}

fn save(store: &Store, t: &Table) -> Result<(), OpError> {
    let b = postcard::to_stdvec(t)
        .map_err(|e| OpError::Storage(StoreError(format!("api key table: {e}"))))?;
    store
        .apply(&[Op::PutMeta(META_API_KEYS, b)])
        .map_err(OpError::Storage)
}

fn hash(full: &str) -> [u8; 32] {
    Blake2s256::digest(full.as_bytes()).into()
}

fn random_text(n: usize) -> Result<String, OpError> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b)
        .map_err(|e| OpError::Storage(StoreError(format!("no randomness: {e}"))))?;
    // 62 symbols: rejecting bytes ≥ 248 would be exact; the 0.8 % bias of
    // a plain modulo over 64 chars (≈ 380 bits) costs nothing that matters.
    Ok(b.iter()
        .map(|x| ALPHABET[*x as usize % ALPHABET.len()] as char)
        .collect())
}

/// Creates a key expiring at `expiration` (None = the default lifetime);
/// returns it and the full key text, which is not stored anywhere.
pub fn create(store: &Store, expiration: Option<Unix>) -> Result<(ApiKey, String), OpError> {
    let _g = WRITE.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = load(store)?;
    if t.keys.len() >= MAX_KEYS {
        return Err(OpError::Invalid(format!(
            "too many API keys ({MAX_KEYS}); delete some first"
        )));
    }
    let created = now();
    let prefix = random_text(PREFIX_LEN)?;
    let full = format!("{KEY_PREFIX}{prefix}-{}", random_text(SECRET_LEN)?);
    t.next_id = t
        .next_id
        .max(t.keys.iter().map(|k| k.id).max().unwrap_or(0))
        + 1;
    let k = ApiKey {
        id: t.next_id,
        prefix,
        hash: hash(&full),
        created,
        expiration: expiration.unwrap_or(created + DEFAULT_LIFETIME),
        bcrypt: String::new(),
    };
    t.keys.push(k.clone());
    save(store, &t)?;
    Ok((k, full))
}

pub fn list(store: &Store) -> Result<Vec<ApiKey>, OpError> {
    Ok(load(store)?.keys)
}

/// Index of the key named by `which`: the masked form, the bare prefix,
/// the full key or the numeric id.
fn find(t: &Table, which: &str) -> Option<usize> {
    let w = which.trim();
    let bare = w.strip_prefix(KEY_PREFIX).unwrap_or(w);
    let bare = bare.strip_suffix("-***").unwrap_or(bare);
    let bare = bare.get(..PREFIX_LEN).unwrap_or(bare);
    t.keys
        .iter()
        .position(|k| k.prefix == bare || k.id.to_string() == w)
}

/// Expires a key now (kept in listings, refused for authentication).
pub fn expire(store: &Store, which: &str) -> Result<ApiKey, OpError> {
    let _g = WRITE.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = load(store)?;
    let i = find(&t, which).ok_or_else(|| not_found(which))?;
    let t_now = now();
    if !t.keys[i].is_expired(t_now) {
        t.keys[i].expiration = t_now;
    }
    let k = t.keys[i].clone();
    save(store, &t)?;
    Ok(k)
}

pub fn delete(store: &Store, which: &str) -> Result<ApiKey, OpError> {
    let _g = WRITE.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = load(store)?;
    let i = find(&t, which).ok_or_else(|| not_found(which))?;
    let k = t.keys.remove(i);
    save(store, &t)?;
    Ok(k)
}

fn not_found(which: &str) -> OpError {
    OpError::NotFound(format!("API key {which:?} not found"))
}

/// Headscale's legacy API keys: `<7-char prefix>.<secret>`.
const LEGACY_PREFIX_LEN: usize = 7;

/// What checking a presented key takes: decided from the table, or an
/// imported key's bcrypt verification, which is slow (tens of ms) and is
/// run without the state lock ([`Imported::verify`], then [`accept`]).
pub enum Check {
    Decided(bool),
    Bcrypt(Imported),
}

/// An imported, unexpired key whose bcrypt hash a presented key must match.
pub struct Imported {
    id: u64,
    bcrypt: String,
    full: String,
    secret_at: usize,
}

impl Imported {
    /// Checks the secret against Headscale's bcrypt hash of it.
    pub fn verify(&self) -> bool {
        let secret = self.full.get(self.secret_at..).unwrap_or("");
        crate::bcrypt::verify(self.bcrypt.as_bytes(), secret.as_bytes())
    }
}

/// Looks `full` up: a known prefix, the hash of the whole text matching
/// (compared in constant time) and not expired. An imported key still
/// carrying its bcrypt hash is left to [`Imported::verify`].
pub fn check(store: &Store, full: &str) -> Check {
    let full = full.trim();
    let (prefix, secret) = match full.strip_prefix(KEY_PREFIX) {
        Some(rest) => match rest.split_once('-') {
            Some((p, s)) if p.len() == PREFIX_LEN && s.len() == SECRET_LEN => (p, s),
            _ => return Check::Decided(false),
        },
        // Headscale's legacy keys have 7-character prefixes, tinyscale's
        // 12: a legacy text only ever finds an imported key.
        None => match full.split_once('.') {
            Some((p, s)) if p.len() == LEGACY_PREFIX_LEN && !s.is_empty() => (p, s),
            _ => return Check::Decided(false),
        },
    };
    let Ok(t) = load(store) else {
        return Check::Decided(false);
    };
    let Some(k) = t.keys.iter().find(|k| k.prefix == prefix) else {
        return Check::Decided(false);
    };
    if k.is_expired(now()) {
        return Check::Decided(false);
    }
    if !k.bcrypt.is_empty() {
        return Check::Bcrypt(Imported {
            id: k.id,
            bcrypt: k.bcrypt.clone(),
            full: full.to_string(),
            secret_at: full.len() - secret.len(),
        });
    }
    let h = hash(full);
    let mut d = 0u8;
    for (x, y) in k.hash.iter().zip(&h) {
        d |= x ^ y;
    }
    Check::Decided(std::hint::black_box(d) == 0)
}

/// True when `full` is a current key ([`check`], bcrypt run here).
pub fn validate(store: &Store, full: &str) -> bool {
    match check(store, full) {
        Check::Decided(ok) => ok,
        Check::Bcrypt(k) => k.verify(),
    }
}

/// After [`Imported::verify`] said yes: the key gets tinyscale's own hash
/// of the whole text, so bcrypt runs once per key, not once per request.
/// A key changed or deleted meanwhile is left alone.
pub fn accept(store: &Store, k: &Imported) -> Result<(), OpError> {
    let _g = WRITE.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = load(store)?;
    let Some(key) = t
        .keys
        .iter_mut()
        .find(|x| x.id == k.id && x.bcrypt == k.bcrypt)
    else {
        return Ok(());
    };
    key.bcrypt.clear();
    key.hash = hash(&k.full);
    save(store, &t)
}

/// The meta value holding `keys` (imported from Headscale) as the whole
/// table, for the import's one transaction.
pub fn import_table(keys: &[ApiKey]) -> Result<(&'static str, Vec<u8>), OpError> {
    let t = Table {
        next_id: keys.iter().map(|k| k.id).max().unwrap_or(0),
        keys: keys.to_vec(),
    };
    let b = postcard::to_stdvec(&t)
        .map_err(|e| OpError::Storage(StoreError(format!("api key table: {e}"))))?;
    Ok((META_API_KEYS, b))
}

/// Schema 3 → 4: the stored table gains `bcrypt` (empty) on every key.
/// Returns the meta key and the rewritten value, if there is a table.
pub(crate) fn upgrade_v3(
    old: Option<&[u8]>,
) -> Result<Option<(&'static str, Vec<u8>)>, StoreError> {
    #[derive(Deserialize)]
    struct KeyV3 {
        id: u64,
        prefix: String,
        hash: [u8; 32],
        created: Unix,
        expiration: Unix,
    }
    #[derive(Deserialize)]
    struct TableV3 {
        next_id: u64,
        keys: Vec<KeyV3>,
    }
    let Some(old) = old else { return Ok(None) };
    let v3: TableV3 = postcard::from_bytes(old)
        .map_err(|e| StoreError(format!("migrating the api key table: {e}")))?;
    let t = Table {
        next_id: v3.next_id,
        keys: v3
            .keys
            .into_iter()
            .map(|k| ApiKey {
                id: k.id,
                prefix: k.prefix,
                hash: k.hash,
                created: k.created,
                expiration: k.expiration,
                bcrypt: String::new(),
            })
            .collect(),
    };
    let b = postcard::to_stdvec(&t).map_err(|e| StoreError(format!("api key table: {e}")))?;
    Ok(Some((META_API_KEYS, b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_validate_expire_delete() {
        let dir = std::env::temp_dir().join(format!("ts-apikey-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir.join("db.redb")).unwrap();
        let (k, full) = create(&store, None).unwrap();
        assert_eq!(full.len(), KEY_PREFIX.len() + PREFIX_LEN + 1 + SECRET_LEN);
        assert!(full.starts_with(&format!("{KEY_PREFIX}{}-", k.prefix)));
        assert!(validate(&store, &full));
        assert!(validate(&store, &format!(" {full}\n")));
        // One changed character of the secret, a wrong prefix, the masked form.
        let mut bad = full.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'a' { b'b' } else { b'a' };
        assert!(!validate(&store, std::str::from_utf8(&bad).unwrap()));
        assert!(!validate(&store, &k.masked()));
        assert!(!validate(&store, ""));
        assert!(k.expiration - k.created == DEFAULT_LIFETIME);
        // The stored table holds no key text.
        let raw = store.get_meta(META_API_KEYS).unwrap().unwrap();
        let secret = &full[full.len() - SECRET_LEN..];
        assert!(!raw.windows(SECRET_LEN).any(|w| w == secret.as_bytes()));

        let (k2, full2) = create(&store, Some(now() + 60)).unwrap();
        assert_eq!(k2.id, k.id + 1);
        expire(&store, &k.masked()).unwrap();
        assert!(!validate(&store, &full));
        assert!(validate(&store, &full2));
        delete(&store, &k2.id.to_string()).unwrap();
        assert!(!validate(&store, &full2));
        assert_eq!(list(&store).unwrap().len(), 1);
        assert!(matches!(delete(&store, "nope"), Err(OpError::NotFound(_))));
        // Ids are not reused after a delete.
        let (k3, _) = create(&store, None).unwrap();
        assert_eq!(k3.id, k2.id + 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
