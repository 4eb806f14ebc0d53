//! Reading a Headscale database (schemas of 0.23 … 0.29) into tinyscale's
//! model, read-only. Columns are read by name: tables that went through
//! Headscale's migrations have their columns in a different order than
//! fresh ones, and older schemas lack some (`tags` was `forced_tags`,
//! `pre_auth_keys` had only a plaintext `key`, `api_keys` had no `user_id`).
//!
//! Facts this relies on (Headscale's hscontrol/db/schema.sql and types):
//! keys are text `mkey:<hex>`, `nodekey:<hex>`, `discokey:<hex>`; addresses
//! are text; `endpoints`, `approved_routes`, `tags` and `host_info` are JSON
//! text with Go field names; times are text (`2006-01-02 15:04:05.999+07:00`,
//! the zero time for "never"); rows with `deleted_at` set are soft-deleted.
//! IDs are kept, so scripts that name nodes or users by ID keep working.

use super::sqlite::{Db, Table, Value};
use crate::keys::{from_hex, DiscoKey, MachineKey, NodeKey};
use crate::state::apikey::ApiKey;
use crate::state::{Node, PreAuthKey, RegisterMethod, Unix, User};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What a Headscale database holds, in tinyscale's terms, plus every row
/// that could not be taken and why.
#[derive(Default, Debug)]
pub struct Import {
    pub users: Vec<User>,
    pub keys: Vec<PreAuthKey>,
    pub nodes: Vec<Node>,
    pub api_keys: Vec<ApiKey>,
    /// The policy of `policy.mode: database` (the newest live row).
    pub policy: Option<String>,
    /// `"<table> <id>: <reason>"` for each row left behind.
    pub skipped: Vec<String>,
    /// Rows changed on the way in (renamed users, expired revoked keys).
    pub notes: Vec<String>,
    /// Soft-deleted rows ignored.
    pub deleted: usize,
}

/// Reads the database at `path` without writing anything. Refuses while a
/// non-empty `-wal` file says Headscale is running or did not stop cleanly:
/// the main file alone would then be missing its latest writes.
pub fn read(path: &Path) -> Result<Import, String> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        return Err(format!(
            "{} is not empty: Headscale is still running or did not stop cleanly; \
             stop it (it checkpoints its write-ahead log on exit) and try again",
            Path::new(&wal).display()
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let db = Db::open(file).map_err(|e| format!("{}: {e}", path.display()))?;
    from_db(&db).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads an opened database (also used by tests and the fuzz target).
pub fn from_db<S: super::sqlite::Source>(db: &Db<S>) -> Result<Import, String> {
    let table = |name: &str| -> Result<Table, String> {
        db.table(name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no table {name:?}: not a Headscale database"))
    };
    let mut imp = Import::default();
    let users = table("users")?;
    read_users(&users, &mut imp);
    let keys = table("pre_auth_keys")?;
    read_keys(&keys, &mut imp);
    // Every key's user, also of keys that could not be imported: a node
    // that lost its user_id (a Headscale 0.27 bug its later migration
    // repairs the same way) is given the user of the key it registered with.
    let key_users: BTreeMap<u64, u64> = keys
        .rows
        .iter()
        .map(|r| (id_of(keys.get(r, "id")), id_of(keys.get(r, "user_id"))))
        .collect();
    if let Some(api) = db.table("api_keys").map_err(|e| e.to_string())? {
        read_api_keys(&api, &mut imp);
    }
    let nodes = table("nodes")?;
    read_nodes(&nodes, &key_users, &mut imp);
    if let Some(p) = db.table("policies").map_err(|e| e.to_string())? {
        imp.policy = p
            .rows
            .iter()
            .filter(|r| matches!(p.get(r, "deleted_at"), Value::Null))
            .max_by_key(|r| r.rowid)
            .and_then(|r| p.get(r, "data").as_str())
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string);
    }
    Ok(imp)
}

/// Headscale's text times: `2024-01-01 00:00:00.123+00:00` (or RFC 3339);
/// NULL, empty and Go's zero time are 0 ("unset").
pub fn time(v: &Value) -> Option<Unix> {
    match v {
        Value::Null => Some(0),
        Value::Int(i) => Some(*i),
        Value::Text(s) if s.is_empty() => Some(0),
        Value::Text(s) => {
            let mut t = s.trim().replacen(' ', "T", 1);
            if let Some(i) = t.find(' ') {
                // "… +0000 UTC" style suffixes: keep the offset only.
                t.truncate(i);
            }
            if t.len() == 19 {
                t.push('Z');
            }
            crate::timefmt::parse_rfc3339(&t)
        }
        _ => None,
    }
}

fn text(t: &Table, r: &super::sqlite::Row, c: &str) -> String {
    t.get(r, c).as_str().unwrap_or("").to_string()
}

/// A JSON array of strings; NULL or empty is an empty list.
fn string_list(v: &Value) -> Result<Vec<String>, String> {
    match v.as_str().map(str::trim) {
        None | Some("") | Some("null") => Ok(vec![]),
        Some(s) => serde_json::from_str(s).map_err(|e| format!("not a JSON list of strings: {e}")),
    }
}

fn id_of(v: &Value) -> u64 {
    v.as_int().and_then(|i| u64::try_from(i).ok()).unwrap_or(0)
}

fn read_users(t: &Table, imp: &mut Import) {
    let mut names = BTreeSet::new();
    for r in &t.rows {
        if !matches!(t.get(r, "deleted_at"), Value::Null) {
            imp.deleted += 1;
            continue;
        }
        let id = id_of(t.get(r, "id"));
        let mut name = text(t, r, "name");
        if id == 0 || name.is_empty() {
            imp.skipped.push(format!("user {id}: no id or no name"));
            continue;
        }
        // Headscale allows one name per provider; tinyscale names are
        // unique, so a second "alice" becomes "alice-<id>".
        if !names.insert(name.clone()) {
            let new = format!("{name}-{id}");
            imp.notes.push(format!(
                "user {id}: name {name:?} is taken, imported as {new:?}"
            ));
            name = new;
            names.insert(name.clone());
        }
        imp.users.push(User {
            id,
            name,
            display_name: text(t, r, "display_name"),
            email: text(t, r, "email"),
            created: time(t.get(r, "created_at")).unwrap_or(0),
            provider_id: text(t, r, "provider_identifier"),
            profile_pic_url: text(t, r, "profile_pic_url"),
        });
    }
}

fn read_keys(t: &Table, imp: &mut Import) {
    let users: BTreeSet<u64> = imp.users.iter().map(|u| u.id).collect();
    for r in &t.rows {
        let id = id_of(t.get(r, "id"));
        let skip = |why: String| format!("pre-auth key {id}: {why}");
        let tags = match string_list(t.get(r, "tags")) {
            Ok(v) => v,
            Err(e) => {
                imp.skipped.push(skip(format!("tags: {e}")));
                continue;
            }
        };
        let mut user = id_of(t.get(r, "user_id"));
        if user != 0 && !users.contains(&user) {
            user = 0;
        }
        if user == 0 && tags.is_empty() {
            imp.skipped
                .push(skip("neither a (live) user nor tags".into()));
            continue;
        }
        let prefix = text(t, r, "prefix");
        let hash = t.get(r, "hash").as_bytes().unwrap_or(&[]).to_vec();
        let legacy = text(t, r, "key");
        let (prefix, hash32, bcrypt) = if !prefix.is_empty() && !hash.is_empty() {
            let h = String::from_utf8_lossy(&hash).into_owned();
            if let Err(e) = super::bcrypt::Hash::parse(h.as_bytes()) {
                imp.skipped.push(skip(e));
                continue;
            }
            (prefix, [0u8; 32], h)
        } else if !legacy.is_empty() {
            // A legacy plaintext key: stored hashed from now on.
            (
                String::new(),
                crate::state::ops::hash_key(&legacy),
                String::new(),
            )
        } else {
            imp.skipped.push(skip("no key, prefix or hash".into()));
            continue;
        };
        let mut expiration = time(t.get(r, "expiration")).unwrap_or(0);
        let revoked = time(t.get(r, "revoked")).unwrap_or(0);
        if revoked != 0 && (expiration == 0 || revoked < expiration) {
            expiration = revoked;
            imp.notes
                .push(format!("pre-auth key {id}: revoked, imported as expired"));
        }
        imp.keys.push(PreAuthKey {
            id,
            user,
            prefix,
            hash: hash32,
            reusable: t.get(r, "reusable").truthy(),
            ephemeral: t.get(r, "ephemeral").truthy(),
            used: t.get(r, "used").truthy(),
            created: time(t.get(r, "created_at")).unwrap_or(0),
            expiration,
            tags,
            bcrypt,
        });
    }
}

fn read_api_keys(t: &Table, imp: &mut Import) {
    for r in &t.rows {
        let id = id_of(t.get(r, "id"));
        let prefix = text(t, r, "prefix");
        let hash = String::from_utf8_lossy(t.get(r, "hash").as_bytes().unwrap_or(&[])).into_owned();
        if prefix.is_empty() {
            imp.skipped.push(format!("api key {id}: no prefix"));
            continue;
        }
        if let Err(e) = super::bcrypt::Hash::parse(hash.as_bytes()) {
            imp.skipped.push(format!("api key {id}: {e}"));
            continue;
        }
        imp.api_keys.push(ApiKey {
            id,
            prefix,
            hash: [0; 32],
            created: time(t.get(r, "created_at")).unwrap_or(0),
            expiration: time(t.get(r, "expiration")).unwrap_or(0),
            bcrypt: hash,
        });
    }
}

fn read_nodes(t: &Table, key_users: &BTreeMap<u64, u64>, imp: &mut Import) {
    let users: BTreeSet<u64> = imp.users.iter().map(|u| u.id).collect();
    let keys: BTreeMap<u64, bool> = imp.keys.iter().map(|k| (k.id, k.ephemeral)).collect();
    // 0.28 renamed `forced_tags` to `tags` (and tagged nodes lost user_id).
    let tags_col = if t.has_column("tags") {
        "tags"
    } else {
        "forced_tags"
    };
    let mut names = BTreeSet::new();
    for r in &t.rows {
        if !matches!(t.get(r, "deleted_at"), Value::Null) {
            imp.deleted += 1;
            continue;
        }
        let id = id_of(t.get(r, "id"));
        let original = text(t, r, "given_name");
        match node(t, r, id, tags_col, &users, &keys, key_users) {
            Ok(n) if !names.insert(n.given_name.clone()) => imp.skipped.push(format!(
                "node {id}: name {:?} is already taken by another node",
                n.given_name
            )),
            Ok(n) => {
                if !original.is_empty() && n.given_name != original {
                    imp.notes.push(format!(
                        "node {id}: given name {original:?} imported as {:?}",
                        n.given_name
                    ));
                }
                imp.nodes.push(n);
            }
            Err(e) => imp.skipped.push(format!("node {id}: {e}")),
        }
    }
}

/// `s` as a DNS label: lowercase, anything but a-z and 0-9 becomes '-',
/// no leading or trailing '-', at most 63 bytes.
fn dns_label(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(63)
        .collect();
    mapped.trim_matches('-').to_string()
}

fn node(
    t: &Table,
    r: &super::sqlite::Row,
    id: u64,
    tags_col: &str,
    users: &BTreeSet<u64>,
    keys: &BTreeMap<u64, bool>,
    key_users: &BTreeMap<u64, u64>,
) -> Result<Node, String> {
    let key = |col: &str, prefix: &str| -> Result<[u8; 32], String> {
        let s = text(t, r, col);
        if s.is_empty() {
            return Ok([0; 32]);
        }
        s.strip_prefix(prefix)
            .and_then(from_hex::<32>)
            .ok_or_else(|| format!("{col} {s:?} is not {prefix}<64 hex>"))
    };
    let machine_key = key("machine_key", MachineKey::PREFIX)?;
    let node_key = key("node_key", NodeKey::PREFIX)?;
    if machine_key == [0; 32] || node_key == [0; 32] {
        return Err("no machine key or node key".into());
    }
    let disco_key = key("disco_key", DiscoKey::PREFIX)?;
    let tags = string_list(t.get(r, tags_col)).map_err(|e| format!("{tags_col}: {e}"))?;
    let auth_key = id_of(t.get(r, "auth_key_id"));
    let mut user = id_of(t.get(r, "user_id"));
    if user == 0 && tags.is_empty() {
        user = key_users.get(&auth_key).copied().unwrap_or(0);
    }
    let user = if users.contains(&user) { user } else { 0 };
    if user == 0 && tags.is_empty() {
        return Err("neither a (live) user nor tags".into());
    }
    let ip = |col: &str| -> Result<Option<String>, String> {
        let s = text(t, r, col);
        Ok((!s.is_empty()).then_some(s))
    };
    let ipv4 = ip("ipv4")?
        .map(|s| {
            s.parse()
                .map_err(|_| format!("ipv4 {s:?} is not an IPv4 address"))
        })
        .transpose()?;
    let ipv6 = ip("ipv6")?
        .map(|s| {
            s.parse()
                .map_err(|_| format!("ipv6 {s:?} is not an IPv6 address"))
        })
        .transpose()?;
    if ipv4.is_none() && ipv6.is_none() {
        return Err("no address".into());
    }
    let hostname = text(t, r, "hostname");
    let mut given_name = dns_label(&text(t, r, "given_name"));
    if given_name.is_empty() {
        given_name = dns_label(&hostname);
    }
    if !crate::state::ops::is_dns_label(&given_name) {
        return Err(format!("given name {given_name:?} is not a DNS label"));
    }
    let hostinfo_text = text(t, r, "host_info");
    let hostinfo: serde_json::Value = match hostinfo_text.trim() {
        "" | "null" => serde_json::json!({}),
        s => serde_json::from_str(s).map_err(|e| format!("host_info: {e}"))?,
    };
    if !hostinfo.is_object() {
        return Err("host_info is not a JSON object".into());
    }
    let home_derp = hostinfo
        .pointer("/NetInfo/PreferredDERP")
        .and_then(serde_json::Value::as_i64)
        .and_then(|d| i32::try_from(d).ok())
        .unwrap_or(0);
    let register_method = match text(t, r, "register_method").as_str() {
        "authkey" => RegisterMethod::AuthKey,
        "cli" => RegisterMethod::Cli,
        "oidc" => RegisterMethod::Oidc,
        _ => RegisterMethod::Unknown,
    };
    Ok(Node {
        id,
        machine_key,
        node_key,
        old_node_key: [0; 32],
        disco_key,
        user,
        tags,
        ipv4,
        ipv6,
        hostname,
        given_name,
        advertised_routes: serde_json::from_value::<crate::tailcfg::Hostinfo>(hostinfo.clone())
            .unwrap_or_default()
            .routable_ips,
        hostinfo: hostinfo.to_string(),
        endpoints: string_list(t.get(r, "endpoints")).map_err(|e| format!("endpoints: {e}"))?,
        home_derp,
        cap: 0,
        created: time(t.get(r, "created_at")).unwrap_or(0),
        expiry: time(t.get(r, "expiry")).unwrap_or(0),
        last_seen: time(t.get(r, "last_seen")).unwrap_or(0),
        ephemeral: keys.get(&auth_key).copied().unwrap_or(false),
        auth_key,
        approved_routes: string_list(t.get(r, "approved_routes"))
            .map_err(|e| format!("approved_routes: {e}"))?,
        register_method,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let t = |s: &str| time(&Value::Text(s.into()));
        assert_eq!(t("0001-01-01 00:00:00+00:00"), Some(0));
        assert_eq!(t("1970-01-01 00:01:00+00:00"), Some(60));
        assert_eq!(t("1970-01-01 02:00:00.123456789+01:00"), Some(3600));
        assert_eq!(t("1970-01-01 00:00:10"), Some(10));
        assert_eq!(t("1970-01-01T00:00:10Z"), Some(10));
        assert_eq!(time(&Value::Null), Some(0));
        assert_eq!(t("yesterday"), None);
    }
}
