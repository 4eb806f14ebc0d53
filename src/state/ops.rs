//! Admin operations on [`State`]. Each one validates, queues the change for
//! the store first (one atomic batch of the next group commit) and only
//! then changes memory, so a refused write leaves memory untouched. The
//! caller acknowledges only after the batch is durable (`Committer::wait`).
//!
//! The caller (admin handler, register handler) tells the hub what changed:
//! the returned record carries the id to notify about.
//!
//! Pre-auth keys look like `hskey-auth-<12 hex prefix>-<64 hex secret>`
//! (Headscale's format; never `tskey-client-…` and never containing `--TL`,
//! which the client would treat specially). Only the prefix and the
//! BLAKE2s-256 of the whole key string are stored.

use super::model::{Node, PreAuthKey, Unix, User};
use super::{now, Op, OpError, State};
use blake2::{Blake2s256, Digest};

/// Start of every pre-auth key.
pub const KEY_PREFIX: &str = "hskey-auth-";
const KEY_PREFIX_HEX: usize = 12;
pub(super) const KEY_SECRET_HEX: usize = 64;

/// Errors `validate_preauth_key` reports, worded as the client shows them.
pub const ERR_INVALID_KEY: &str = "invalid key";
pub const ERR_KEY_EXPIRED: &str = "authkey expired";
pub const ERR_KEY_USED: &str = "authkey already used";

impl State {
    // ----- users -------------------------------------------------------

    /// Creates a user. Names are unique, 1–63 characters of letters,
    /// digits, `-`, `_`, `.`, `@`, must start with a letter or digit and
    /// must not be all digits (a number names a user by ID).
    pub fn create_user(
        &mut self,
        name: &str,
        display_name: &str,
        email: &str,
    ) -> Result<User, OpError> {
        validate_user_name(name)?;
        if self.users.values().any(|u| u.name == name) {
            return Err(OpError::Conflict(format!("user {name:?} already exists")));
        }
        if !email.is_empty() && !email.contains('@') {
            return Err(OpError::Invalid(format!("invalid email {email:?}")));
        }
        let user = User {
            id: self.next_user_id,
            name: name.to_string(),
            display_name: display_name.to_string(),
            email: email.to_string(),
            created: now(),
            provider_id: String::new(),
            profile_pic_url: String::new(),
        };
        self.store.apply(&[Op::PutUser(&user)])?;
        self.next_user_id = user.id + 1;
        self.users.insert(user.id, user.clone());
        Ok(user)
    }

    fn user_id(&self, who: &str) -> Result<u64, OpError> {
        self.find_user(who)
            .map(|u| u.id)
            .ok_or_else(|| OpError::NotFound(format!("user {who:?} not found")))
    }

    /// Renames a user (by name or ID) to `new`.
    pub fn rename_user(&mut self, who: &str, new: &str) -> Result<User, OpError> {
        let id = self.user_id(who)?;
        validate_user_name(new)?;
        if self.users.values().any(|u| u.name == new && u.id != id) {
            return Err(OpError::Conflict(format!("user {new:?} already exists")));
        }
        let mut u = self.users[&id].clone();
        u.name = new.to_string();
        self.store.apply(&[Op::PutUser(&u)])?;
        self.users.insert(id, u.clone());
        Ok(u)
    }

    /// Deletes a user and its pre-auth keys. Refused while the user still
    /// owns nodes (as Headscale does): delete them first.
    pub fn destroy_user(&mut self, who: &str) -> Result<User, OpError> {
        let id = self.user_id(who)?;
        // Tagged nodes count too: they still reference their registering user.
        let owned = self.nodes.values().filter(|n| n.user == id).count();
        if owned > 0 {
            return Err(OpError::Invalid(format!(
                "user {who:?} still has {owned} node(s); delete them first"
            )));
        }
        let key_ids: Vec<u64> = self
            .keys
            .values()
            .filter(|k| k.user == id)
            .map(|k| k.id)
            .collect();
        let mut ops: Vec<Op> = key_ids.iter().map(|&k| Op::DelKey(k)).collect();
        ops.push(Op::DelUser(id));
        self.store.apply(&ops)?;
        for k in key_ids {
            self.keys.remove(&k);
        }
        Ok(self.users.remove(&id).expect("checked above"))
    }

    // ----- pre-auth keys ----------------------------------------------

    /// Creates a pre-auth key owned by `user` (name or ID) and/or carrying
    /// `tags`; one of the two is required. `expiration_secs` is the lifetime
    /// from now (None = never expires). Returns the stored record and the
    /// full key, which is shown once and never stored.
    pub fn create_preauth_key(
        &mut self,
        user: Option<&str>,
        reusable: bool,
        ephemeral: bool,
        expiration_secs: Option<u64>,
        tags: Vec<String>,
    ) -> Result<(PreAuthKey, String), OpError> {
        let user_id = match user.filter(|u| !u.is_empty()) {
            Some(u) => self.user_id(u)?,
            None => 0,
        };
        let mut tags = tags;
        for t in &tags {
            validate_tag(t)?;
        }
        tags.sort();
        tags.dedup();
        if user_id == 0 && tags.is_empty() {
            return Err(OpError::Invalid(
                "a pre-auth key needs a user or at least one tag".into(),
            ));
        }
        let created = now();
        let expiration = match expiration_secs {
            None => 0,
            Some(s) => created.saturating_add(i64::try_from(s).unwrap_or(i64::MAX)),
        };
        let (prefix, secret) = loop {
            let p = random_hex(KEY_PREFIX_HEX / 2)?;
            if !self.keys.values().any(|k| k.prefix == p) {
                break (p, random_hex(KEY_SECRET_HEX / 2)?);
            }
        };
        let full = format!("{KEY_PREFIX}{prefix}-{secret}");
        let key = PreAuthKey {
            id: self.next_key_id,
            user: user_id,
            prefix,
            hash: hash_key(&full),
            reusable,
            ephemeral,
            used: false,
            created,
            expiration,
            tags,
            bcrypt: String::new(),
        };
        self.store.apply(&[Op::PutKey(&key)])?;
        self.next_key_id = key.id + 1;
        self.keys.insert(key.id, key.clone());
        Ok((key, full))
    }

    /// Lists pre-auth keys, all or those of one user (name or ID).
    pub fn list_preauth_keys(&self, user: Option<&str>) -> Result<Vec<PreAuthKey>, OpError> {
        let uid = match user.filter(|u| !u.is_empty()) {
            Some(u) => Some(self.user_id(u)?),
            None => None,
        };
        Ok(self
            .keys
            .values()
            .filter(|k| uid.map_or(true, |id| k.user == id))
            .cloned()
            .collect())
    }

    /// Finds a key by numeric ID, by its 12-hex prefix or by the full key,
    /// optionally requiring that it belongs to `user`.
    pub fn find_preauth_key(&self, user: Option<&str>, which: &str) -> Result<u64, OpError> {
        let uid = match user.filter(|u| !u.is_empty()) {
            Some(u) => Some(self.user_id(u)?),
            None => None,
        };
        let prefix = which
            .strip_prefix(KEY_PREFIX)
            .map(|rest| rest.split('-').next().unwrap_or(""))
            .unwrap_or(which);
        let found = which
            .parse::<u64>()
            .ok()
            .and_then(|id| self.keys.get(&id))
            .or_else(|| self.keys.values().find(|k| k.prefix == prefix));
        match found {
            Some(k) if uid.map_or(true, |id| id == k.user) => Ok(k.id),
            _ => Err(OpError::NotFound(format!(
                "pre-auth key {which:?} not found"
            ))),
        }
    }

    /// Expires a key now (see [`State::find_preauth_key`] for `which`).
    pub fn expire_preauth_key(
        &mut self,
        user: Option<&str>,
        which: &str,
    ) -> Result<PreAuthKey, OpError> {
        let id = self.find_preauth_key(user, which)?;
        let mut k = self.keys[&id].clone();
        let t = now();
        if k.expiration == 0 || k.expiration > t {
            k.expiration = t;
        }
        self.store.apply(&[Op::PutKey(&k)])?;
        self.keys.insert(id, k.clone());
        Ok(k)
    }

    /// Deletes a key. Nodes it registered keep working.
    pub fn delete_preauth_key(&mut self, id: u64) -> Result<PreAuthKey, OpError> {
        if !self.keys.contains_key(&id) {
            return Err(OpError::NotFound(format!("pre-auth key {id} not found")));
        }
        self.store.apply(&[Op::DelKey(id)])?;
        Ok(self.keys.remove(&id).expect("checked above"))
    }

    /// Checks a key a client presented: it exists, has not expired and, if
    /// single-use, has not been used. Errors are [`ERR_INVALID_KEY`],
    /// [`ERR_KEY_EXPIRED`] and [`ERR_KEY_USED`] (as `OpError::Invalid`).
    /// The register handler then calls [`State::mark_preauth_key_used`].
    /// An imported key still carrying its bcrypt hash is invalid here until
    /// [`State::accept_imported_key`] (bcrypt never runs under the lock).
    pub fn validate_preauth_key(&self, secret: &str) -> Result<&PreAuthKey, OpError> {
        let invalid = || OpError::Invalid(ERR_INVALID_KEY.into());
        let hash = hash_key(secret);
        let key = match secret.strip_prefix(KEY_PREFIX) {
            Some(rest) => {
                let (prefix, _) = rest.split_once('-').ok_or_else(invalid)?;
                if prefix.len() != KEY_PREFIX_HEX {
                    return Err(invalid());
                }
                let key = self
                    .keys
                    .values()
                    .find(|k| k.prefix == prefix)
                    .ok_or_else(invalid)?;
                // A key imported from Headscale that still carries its
                // bcrypt hash is refused here: it is verified first,
                // without the lock (`imported.rs`), and then carries a
                // BLAKE2s of the whole key like tinyscale's own.
                if !key.bcrypt.is_empty() || !ct_eq(&key.hash, &hash) {
                    return Err(invalid());
                }
                key
            }
            // Headscale's legacy plaintext keys were hashed on import and
            // have no prefix: the hash alone finds them.
            None => self
                .keys
                .values()
                .find(|k| k.prefix.is_empty() && k.bcrypt.is_empty() && ct_eq(&k.hash, &hash))
                .ok_or_else(invalid)?,
        };
        if key.expiration != 0 && key.expiration <= now() {
            return Err(OpError::Invalid(ERR_KEY_EXPIRED.into()));
        }
        if !key.reusable && key.used {
            return Err(OpError::Invalid(ERR_KEY_USED.into()));
        }
        Ok(key)
    }

    /// Records that a key registered a node (persisted).
    pub fn mark_preauth_key_used(&mut self, id: u64) -> Result<(), OpError> {
        let mut k = self
            .keys
            .get(&id)
            .cloned()
            .ok_or_else(|| OpError::NotFound(format!("pre-auth key {id} not found")))?;
        if k.used {
            return Ok(());
        }
        k.used = true;
        self.store.apply(&[Op::PutKey(&k)])?;
        self.keys.insert(id, k);
        Ok(())
    }

    // ----- nodes -------------------------------------------------------

    fn node_ref(&self, id: u64) -> Result<&Node, OpError> {
        self.nodes
            .get(&id)
            .ok_or_else(|| OpError::NotFound(format!("node {id} not found")))
    }

    /// Inserts or replaces a node (persisted first). For the register
    /// handler: take the id from [`State::alloc_node_id`].
    pub fn put_node(&mut self, node: Node) -> Result<(), OpError> {
        self.store.apply(&[Op::PutNode(&node)])?;
        self.next_node_id = self.next_node_id.max(node.id + 1);
        self.nodes.insert(node.id, node);
        Ok(())
    }

    /// The id the next new node gets (not reserved until `put_node`).
    pub fn alloc_node_id(&self) -> u64 {
        self.next_node_id
    }

    /// Deletes a node; its addresses become free.
    pub fn delete_node(&mut self, id: u64) -> Result<Node, OpError> {
        self.node_ref(id)?;
        self.store.apply(&[Op::DelNode(id)])?;
        Ok(self.nodes.remove(&id).expect("checked above"))
    }

    /// Sets a node's DNS name (`given_name`): a valid DNS label (lowercased),
    /// unique among nodes.
    pub fn rename_node(&mut self, id: u64, new_name: &str) -> Result<Node, OpError> {
        self.node_ref(id)?;
        let name = new_name.to_ascii_lowercase();
        if !is_dns_label(&name) {
            return Err(OpError::Invalid(format!(
                "invalid node name {new_name:?}: use 1-63 letters, digits and '-', \
                 not starting or ending with '-'"
            )));
        }
        if self.nodes.name_taken(&name, id) {
            return Err(OpError::Conflict(format!(
                "node name {name:?} is already in use"
            )));
        }
        let mut n = self.nodes[&id].clone();
        n.given_name = name;
        self.store.apply(&[Op::PutNode(&n)])?;
        self.nodes.insert(id, n.clone());
        Ok(n)
    }

    /// Expires a node's key now: the client must log in again.
    pub fn expire_node(&mut self, id: u64) -> Result<Node, OpError> {
        self.set_node_expiry(id, now())
    }

    /// Sets a node's key expiry (Unix seconds; 0 = never).
    pub fn set_node_expiry(&mut self, id: u64, expiry: Unix) -> Result<Node, OpError> {
        let mut n = self.node_ref(id)?.clone();
        n.expiry = expiry;
        self.store.apply(&[Op::PutNode(&n)])?;
        self.nodes.insert(id, n.clone());
        Ok(n)
    }

    /// Replaces a node's tags (each `tag:name`). An empty list makes a
    /// tagged node user-owned again, which needs an owning user.
    pub fn set_node_tags(&mut self, id: u64, tags: Vec<String>) -> Result<Node, OpError> {
        let mut n = self.node_ref(id)?.clone();
        let mut tags = tags;
        for t in &tags {
            validate_tag(t)?;
        }
        tags.sort();
        tags.dedup();
        if tags.is_empty() && !self.users.contains_key(&n.user) {
            return Err(OpError::Invalid(format!(
                "node {id} has no owning user: it must keep at least one tag"
            )));
        }
        n.tags = tags;
        self.store.apply(&[Op::PutNode(&n)])?;
        self.nodes.insert(id, n.clone());
        Ok(n)
    }

    /// Sets the routes approved for a node (canonical CIDR prefixes: one
    /// with host bits set is refused with the prefix it probably meant, as
    /// `tailscale set --advertise-routes` does, rather than silently widened
    /// or narrowed). An exit route (`0.0.0.0/0` or `::/0`) approves its twin too, since
    /// clients advertise both.
    pub fn set_approved_routes(&mut self, id: u64, routes: Vec<String>) -> Result<Node, OpError> {
        let mut n = self.node_ref(id)?.clone();
        let mut out: Vec<String> = Vec::new();
        for r in &routes {
            let net: ipnet::IpNet = r.trim().parse().map_err(|_| {
                OpError::Invalid(format!("invalid route {r:?}: want a CIDR prefix"))
            })?;
            if net.trunc() != net {
                return Err(OpError::Invalid(format!(
                    "invalid route {r:?}: host bits set; did you mean {}?",
                    net.trunc()
                )));
            }
            out.push(net.to_string());
        }
        for (a, b) in [("0.0.0.0/0", "::/0"), ("::/0", "0.0.0.0/0")] {
            if out.iter().any(|r| r == a) && !out.iter().any(|r| r == b) {
                out.push(b.to_string());
            }
        }
        out.sort();
        out.dedup();
        n.approved_routes = out;
        self.store.apply(&[Op::PutNode(&n)])?;
        self.nodes.insert(id, n.clone());
        Ok(n)
    }

    /// A DNS label derived from `hostname` that no other node uses:
    /// sanitised, then the smallest free `-1`, `-2`, … appended on
    /// collision. For the register handler; O(log N) (name index).
    pub fn unique_given_name(&self, hostname: &str, except_node: u64) -> String {
        let mut base: String = hostname
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        base = base.trim_matches('-').to_string();
        base.truncate(55);
        let base = base.trim_end_matches('-').to_string();
        let base = if base.is_empty() {
            "node".to_string()
        } else {
            base
        };
        let taken = |s: &str| self.nodes.name_taken(s, except_node);
        if !taken(&base) {
            return base;
        }
        // The smallest free suffix: every one below the index's hint is
        // taken (by any node: with `except_node` its own may be free).
        let start = if except_node == 0 {
            self.nodes.name_suffix_start(&base)
        } else {
            1
        };
        (start..)
            .map(|i| format!("{base}-{i}"))
            .find(|s| !taken(s))
            .expect("infinite")
    }
}

/// `tag:` followed by a letter, then letters, digits and `-`.
pub fn validate_tag(t: &str) -> Result<(), OpError> {
    let ok = t.strip_prefix("tag:").is_some_and(|n| {
        let mut c = n.chars();
        c.next().is_some_and(|f| f.is_ascii_alphabetic())
            && c.all(|x| x.is_ascii_alphanumeric() || x == '-')
    });
    if ok {
        Ok(())
    } else {
        Err(OpError::Invalid(format!(
            "invalid tag {t:?}: tags look like tag:name (a letter, then letters, digits, '-')"
        )))
    }
}

pub(crate) fn validate_user_name(name: &str) -> Result<(), OpError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && !name.chars().all(|c| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(OpError::Invalid(format!(
            "invalid user name {name:?}: use 1-63 letters, digits, '-', '_', '.', '@', \
             starting with a letter or digit, not all digits"
        )))
    }
}

/// RFC 1123 label, lowercase.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(crate) fn hash_key(full: &str) -> [u8; 32] {
    Blake2s256::digest(full.as_bytes()).into()
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut d = 0u8;
    for (x, y) in a.iter().zip(b) {
        d |= x ^ y;
    }
    std::hint::black_box(d) == 0
}

fn random_hex(bytes: usize) -> Result<String, OpError> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b)
        .map_err(|e| OpError::Storage(super::StoreError(format!("no randomness: {e}"))))?;
    Ok(crate::keys::to_hex(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Store;

    fn state() -> (State, std::path::PathBuf) {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).unwrap();
        let dir =
            std::env::temp_dir().join(format!("tinyscale-ops-{:016x}", u64::from_le_bytes(b)));
        let s = State::load(Store::open(&dir.join("db.redb")).unwrap()).unwrap();
        (s, dir)
    }

    fn node(id: u64, user: u64, name: &str) -> Node {
        Node {
            id,
            machine_key: [id as u8; 32],
            node_key: [id as u8 + 1; 32],
            user,
            hostname: name.into(),
            given_name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn users() {
        let (mut s, dir) = state();
        let a = s
            .create_user("alice", "Alice", "alice@example.com")
            .unwrap();
        assert_eq!(a.id, 1);
        assert!(matches!(
            s.create_user("alice", "", ""),
            Err(OpError::Conflict(_))
        ));
        assert!(matches!(
            s.create_user("123", "", ""),
            Err(OpError::Invalid(_))
        ));
        assert!(matches!(
            s.create_user("a b", "", ""),
            Err(OpError::Invalid(_))
        ));
        let b = s.create_user("bob", "", "").unwrap();
        assert!(s.rename_user("bob", "alice").is_err());
        assert_eq!(s.rename_user("2", "robert").unwrap().name, "robert");
        s.put_node(node(1, b.id, "laptop")).unwrap();
        assert!(s.destroy_user("robert").is_err());
        s.delete_node(1).unwrap();
        s.create_preauth_key(Some("robert"), false, false, None, vec![])
            .unwrap();
        s.destroy_user("robert").unwrap();
        assert!(s.keys.is_empty());
        assert!(s.find_user("robert").is_none());
        // Reload: ids keep counting up.
        let State { store, .. } = s;
        let mut s = State::load(store).unwrap();
        assert_eq!(s.create_user("carol", "", "").unwrap().id, 3);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn keys() {
        let (mut s, dir) = state();
        s.create_user("alice", "", "").unwrap();
        assert!(s
            .create_preauth_key(None, false, false, None, vec![])
            .is_err());
        assert!(s
            .create_preauth_key(None, false, false, None, vec!["tag:1x".into()])
            .is_err());
        let (k, full) = s
            .create_preauth_key(Some("alice"), false, false, Some(3600), vec![])
            .unwrap();
        assert!(full.starts_with("hskey-auth-") && !full.contains("--TL"));
        assert_eq!(full.len(), 11 + 12 + 1 + 64);
        assert_eq!(s.validate_preauth_key(&full).unwrap().id, k.id);
        let mut wrong = full.clone();
        wrong.pop();
        wrong.push('x');
        assert_eq!(
            s.validate_preauth_key(&wrong).unwrap_err().to_string(),
            "invalid key"
        );
        assert_eq!(
            s.validate_preauth_key("nope").unwrap_err().to_string(),
            "invalid key"
        );
        s.mark_preauth_key_used(k.id).unwrap();
        assert_eq!(
            s.validate_preauth_key(&full).unwrap_err().to_string(),
            "authkey already used"
        );
        let (k2, full2) = s
            .create_preauth_key(None, true, true, None, vec!["tag:web".into()])
            .unwrap();
        s.mark_preauth_key_used(k2.id).unwrap();
        assert!(s.validate_preauth_key(&full2).is_ok());
        s.expire_preauth_key(None, &k2.prefix).unwrap();
        assert_eq!(
            s.validate_preauth_key(&full2).unwrap_err().to_string(),
            "authkey expired"
        );
        assert_eq!(s.list_preauth_keys(Some("alice")).unwrap().len(), 1);
        assert_eq!(s.list_preauth_keys(None).unwrap().len(), 2);
        assert!(s
            .expire_preauth_key(Some("alice"), &k2.id.to_string())
            .is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn nodes() {
        let (mut s, dir) = state();
        s.put_node(node(1, 1, "a")).unwrap();
        s.put_node(node(2, 1, "b")).unwrap();
        assert!(s.rename_node(1, "b").is_err());
        assert!(s.rename_node(1, "-x").is_err());
        assert_eq!(s.rename_node(1, "Web-1").unwrap().given_name, "web-1");
        assert_eq!(s.unique_given_name("B", 0), "b-1");
        assert_eq!(s.unique_given_name("My Laptop!", 0), "my-laptop");
        assert!(s.expire_node(2).unwrap().is_expired(now()));
        assert!(matches!(s.delete_node(9), Err(OpError::NotFound(_))));
        assert_eq!(s.alloc_node_id(), 3);
        let n = s
            .set_node_tags(1, vec!["tag:web".into(), "tag:web".into()])
            .unwrap();
        assert_eq!(n.tags, vec!["tag:web".to_string()]);
        assert!(s.set_node_tags(1, vec!["web".into()]).is_err());
        // User 1 does not exist here: the node must keep a tag.
        assert!(s.set_node_tags(1, vec![]).is_err());
        let n = s
            .set_approved_routes(2, vec!["10.1.2.0/24".into(), "0.0.0.0/0".into()])
            .unwrap();
        assert_eq!(n.approved_routes, vec!["0.0.0.0/0", "10.1.2.0/24", "::/0"]);
        let e = s
            .set_approved_routes(2, vec!["10.1.2.3/24".into()])
            .unwrap_err();
        assert!(e.to_string().contains("did you mean 10.1.2.0/24"), "{e}");
        assert_eq!(
            s.nodes[&2].approved_routes.len(),
            3,
            "refusal changed nothing"
        );
        assert!(s.set_approved_routes(2, vec!["nope".into()]).is_err());
        assert!(s
            .set_approved_routes(2, vec![])
            .unwrap()
            .approved_routes
            .is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The indexes behind key, name and address look-ups follow every
    /// writer (put, delete, rename, in-place update) and are rebuilt when
    /// the state is loaded again from the store.
    #[test]
    fn indexes_follow_writes_and_reload() {
        let (mut s, dir) = state();
        let v4: ipnet::Ipv4Net = "100.64.0.0/10".parse().unwrap();
        let v6: ipnet::Ipv6Net = "fd7a:115c:a1e0::/48".parse().unwrap();
        let add = |s: &mut State, id: u64| {
            let (a4, a6) = crate::state::ipalloc::allocate(s, v4, v6).unwrap();
            let mut n = node(id, 1, "web");
            n.given_name = s.unique_given_name("Web", 0);
            (n.ipv4, n.ipv6) = (Some(a4), Some(a6));
            s.put_node(n.clone()).unwrap();
            n
        };
        let names: Vec<String> = (1..=4).map(|i| add(&mut s, i).given_name).collect();
        assert_eq!(names, ["web", "web-1", "web-2", "web-3"]);
        assert_eq!(s.nodes[&4].ipv4, Some("100.64.0.4".parse().unwrap()));
        // A freed name is handed out again, the smallest first.
        s.delete_node(3).unwrap();
        s.rename_node(2, "db").unwrap();
        assert_eq!(s.unique_given_name("web", 0), "web-1");
        assert_eq!(add(&mut s, 5).given_name, "web-1");
        assert_eq!(add(&mut s, 6).given_name, "web-2");
        assert_eq!(add(&mut s, 7).given_name, "web-4");
        assert!(matches!(s.rename_node(1, "db"), Err(OpError::Conflict(_))));
        assert_eq!(
            s.rename_node(2, "db").unwrap().given_name,
            "db",
            "its own name"
        );
        // Keys: a node key moved by an in-place update is found by the new
        // one only; a deleted node by neither.
        let k5 = s.nodes[&5].node_key;
        s.nodes.update(5, |n| n.node_key = [0xee; 32]);
        assert!(s.node_by_node_key(&k5).is_none());
        assert_eq!(s.node_by_node_key(&[0xee; 32]).unwrap().id, 5);
        let n5 = s.nodes[&5].clone();
        s.put_node(n5).unwrap();
        assert!(s.node_by_machine_key(&[3; 32]).is_none(), "deleted");
        assert_eq!(s.node_by_machine_key(&[4; 32]).unwrap().id, 4);
        // Addresses continue after the highest one in use.
        assert_eq!(s.nodes[&7].ipv4, Some("100.64.0.7".parse().unwrap()));
        s.delete_node(7).unwrap();
        let (a4, _) = crate::state::ipalloc::allocate(&s, v4, v6).unwrap();
        assert_eq!(a4, "100.64.0.7".parse::<std::net::Ipv4Addr>().unwrap());
        // Rebuilt from the tables on load.
        let State { store, .. } = s;
        let s = State::load(store).unwrap();
        assert_eq!(s.node_by_node_key(&[0xee; 32]).unwrap().id, 5);
        assert!(s.node_by_node_key(&k5).is_none());
        assert_eq!(s.node_by_machine_key(&[6; 32]).unwrap().id, 6);
        assert_eq!(s.unique_given_name("web", 0), "web-4");
        assert_eq!(s.unique_given_name("db", 0), "db-1");
        assert_eq!(s.unique_given_name("db", 2), "db", "except its holder");
        let (a4, _) = crate::state::ipalloc::allocate(&s, v4, v6).unwrap();
        assert_eq!(a4, "100.64.0.7".parse::<std::net::Ipv4Addr>().unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }
}
