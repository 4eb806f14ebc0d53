//! Pre-auth keys carried over from Headscale (`tinyscale migrate`), stored
//! as Headscale stored them: a public prefix plus a bcrypt hash of the
//! secret (API keys: [`super::apikey`]).

use super::ops::hash_key;
use super::{Op, OpError, State};

impl State {
    /// After an imported pre-auth key was presented and verified once,
    /// replaces its bcrypt hash by tinyscale's own hash of the whole key:
    /// bcrypt runs under the state lock, so it should run once per key, not
    /// once per registration.
    pub fn rehash_imported_key(&mut self, id: u64, presented: &str) -> Result<(), OpError> {
        let Some(mut k) = self.keys.get(&id).cloned() else {
            return Ok(());
        };
        if k.bcrypt.is_empty() {
            return Ok(());
        }
        k.bcrypt.clear();
        k.hash = hash_key(presented);
        self.store.apply(&[Op::PutKey(&k)])?;
        self.keys.insert(id, k);
        Ok(())
    }
}
