//! Pre-auth keys carried over from Headscale (`tinyscale migrate`), stored
//! as Headscale stored them: a public prefix plus a bcrypt hash of the
//! secret (API keys: [`super::apikey`]).
//!
//! bcrypt is slow on purpose (tens of ms at Headscale's cost 10), and
//! anybody who knows a key's prefix can make us run it: it never runs
//! under the state lock. The register handler looks the key up under the
//! lock ([`State::unverified_imported_key`]), verifies it without the lock
//! and off the executor threads ([`Unverified::verify`], one
//! [`crate::bcrypt::Slot`] each), then takes the lock again and replaces
//! the bcrypt hash by tinyscale's own hash ([`State::accept_imported_key`]);
//! [`State::validate_preauth_key`] then checks the key like any other
//! (expired, used) under that lock. bcrypt runs once per key, not once per
//! registration.

use super::ops::{hash_key, KEY_PREFIX, KEY_SECRET_HEX};
use super::{now, Op, OpError, State};

/// An imported key that a presented secret names, still to be verified.
pub struct Unverified {
    pub id: u64,
    bcrypt: String,
    presented: String,
}

impl Unverified {
    /// Checks the presented secret against the key's bcrypt hash (the part
    /// after the prefix, as Headscale hashed it). Slow: call it without
    /// the state lock.
    pub fn verify(&self) -> bool {
        let tail = self
            .presented
            .strip_prefix(KEY_PREFIX)
            .and_then(|r| r.split_once('-'))
            .map_or("", |(_, t)| t);
        tail.len() == KEY_SECRET_HEX
            && crate::bcrypt::verify(self.bcrypt.as_bytes(), tail.as_bytes())
    }
}

impl State {
    /// The imported key whose prefix `secret` carries, if it still has its
    /// bcrypt hash and could still register a node (not expired, not used
    /// up: a dead key is not worth a verification and stays "invalid").
    pub fn unverified_imported_key(&self, secret: &str) -> Option<Unverified> {
        let (prefix, _) = secret.strip_prefix(KEY_PREFIX)?.split_once('-')?;
        let k = self.keys.values().find(|k| k.prefix == prefix)?;
        let dead = k.expiration != 0 && k.expiration <= now() || !k.reusable && k.used;
        if k.bcrypt.is_empty() || dead {
            return None;
        }
        Some(Unverified {
            id: k.id,
            bcrypt: k.bcrypt.clone(),
            presented: secret.to_string(),
        })
    }

    /// After [`Unverified::verify`] said yes: replaces the key's bcrypt
    /// hash by tinyscale's own hash of the whole key. A key deleted or
    /// changed since the lookup is left as it is (the caller's
    /// [`State::validate_preauth_key`] then judges it).
    pub fn accept_imported_key(&mut self, v: &Unverified) -> Result<(), OpError> {
        let Some(mut k) = self.keys.get(&v.id).cloned() else {
            return Ok(());
        };
        if k.bcrypt != v.bcrypt {
            return Ok(());
        }
        k.bcrypt.clear();
        k.hash = hash_key(&v.presented);
        self.store.apply(&[Op::PutKey(&k)])?;
        self.keys.insert(v.id, k);
        Ok(())
    }
}
