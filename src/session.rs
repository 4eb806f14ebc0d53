//! Browser sessions for the admin page: one-time login links minted by the
//! owner (`tinyscale web login`, over the admin socket) and the sessions
//! they open.
//!
//! A leaf room: the control plane's `Server` holds the state ([`WebState`]),
//! the API room and the page (`crate::web`) use it, and it imports neither.
//!
//! Everything lives in memory: a restart logs every browser out, which is
//! the safe failure. Nothing here can be created by an unauthenticated
//! peer except by redeeming a link, so both tables are bounded by what the
//! owner asks for (and capped anyway). Tokens are kept as SHA-256 digests,
//! so a memory dump or a debug print shows no usable secret, and a lookup
//! compares digests, not the secret itself.

use crate::state::now;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// The page's server-side state, one per server.
pub struct WebState {
    pub sessions: Sessions,
    pub started: Instant,
}

impl Default for WebState {
    fn default() -> Self {
        WebState {
            sessions: Sessions::default(),
            started: Instant::now(),
        }
    }
}

/// A login link works this long, once.
pub const LINK_TTL: i64 = 5 * 60;
/// A session lasts this long from login (no sliding renewal: a stolen
/// cookie is good for at most this).
pub const SESSION_TTL: i64 = 12 * 3600;
/// Unused links kept at once (the oldest is dropped first).
pub const MAX_LINKS: usize = 16;
/// Sessions kept at once (the oldest is dropped first).
pub const MAX_SESSIONS: usize = 32;
/// The cookie's name.
pub const COOKIE: &str = "tinyscale_session";

type Digest = [u8; 32];

#[derive(Clone, Debug)]
pub struct Session {
    /// Sent back in `X-CSRF-Token` on every state-changing request: a
    /// cross-site page can make the browser send the cookie, but cannot
    /// read this.
    pub csrf: String,
    pub expires: i64,
}

#[derive(Default)]
struct Inner {
    /// Digest of an unused link token → when it stops working.
    links: HashMap<Digest, i64>,
    sessions: HashMap<Digest, Session>,
}

#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
}

fn digest(token: &str) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn token() -> String {
    crate::keys::to_hex(&crate::keys::random32())
}

/// Drops expired entries, then the soonest-expiring ones until `max - 1`
/// are left, so that one more fits.
fn make_room<V>(m: &mut HashMap<Digest, V>, max: usize, expiry: impl Fn(&V) -> i64) {
    let t = now();
    m.retain(|_, v| expiry(v) > t);
    while m.len() >= max {
        let Some(k) = m.iter().min_by_key(|(_, v)| expiry(v)).map(|(k, _)| *k) else {
            break;
        };
        m.remove(&k);
    }
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mints a one-time login link token.
    pub fn new_link(&self) -> String {
        let t = token();
        let mut g = self.lock();
        make_room(&mut g.links, MAX_LINKS, |e| *e);
        g.links.insert(digest(&t), now() + LINK_TTL);
        t
    }

    /// Redeems a link token: the link is spent whether or not it was still
    /// good; a fresh session's (cookie token, session) on success.
    pub fn redeem(&self, link: &str) -> Option<(String, Session)> {
        let mut g = self.lock();
        let expires = g.links.remove(&digest(link))?;
        if expires <= now() {
            return None;
        }
        make_room(&mut g.sessions, MAX_SESSIONS, |s| s.expires);
        let (t, s) = (
            token(),
            Session {
                csrf: crate::keys::to_hex(&crate::keys::random32()[..16]),
                expires: now() + SESSION_TTL,
            },
        );
        g.sessions.insert(digest(&t), s.clone());
        Some((t, s))
    }

    /// The live session a cookie token names.
    pub fn get(&self, cookie: &str) -> Option<Session> {
        let g = self.lock();
        g.sessions
            .get(&digest(cookie))
            .filter(|s| s.expires > now())
            .cloned()
    }

    /// Ends one session (log out).
    pub fn revoke(&self, cookie: &str) -> bool {
        self.lock().sessions.remove(&digest(cookie)).is_some()
    }

    /// Ends every session and spends every unused link; returns how many
    /// sessions were live.
    pub fn revoke_all(&self) -> usize {
        let mut g = self.lock();
        let t = now();
        let n = g.sessions.values().filter(|s| s.expires > t).count();
        g.sessions.clear();
        g.links.clear();
        n
    }

    /// Live sessions (for the status page).
    pub fn live(&self) -> usize {
        let t = now();
        self.lock()
            .sessions
            .values()
            .filter(|s| s.expires > t)
            .count()
    }

    /// Test hook: makes every session expire now.
    #[doc(hidden)]
    pub fn expire_all_now(&self) {
        for s in self.lock().sessions.values_mut() {
            s.expires = now() - 1;
        }
    }
}

/// Compares two tokens in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_opens_one_session_once() {
        let s = Sessions::default();
        let link = s.new_link();
        let (cookie, sess) = s.redeem(&link).expect("first use works");
        assert_eq!(s.get(&cookie).map(|x| x.csrf), Some(sess.csrf));
        assert!(s.redeem(&link).is_none(), "a replayed link is refused");
        assert!(s.get("forged").is_none());
        assert!(s.revoke(&cookie));
        assert!(s.get(&cookie).is_none());
    }

    #[test]
    fn expired_sessions_and_capped_tables() {
        let s = Sessions::default();
        let links: Vec<String> = (0..MAX_LINKS + 5).map(|_| s.new_link()).collect();
        assert_eq!(s.lock().links.len(), MAX_LINKS);
        let (c, _) = s.redeem(links.last().unwrap()).unwrap();
        s.expire_all_now();
        assert!(s.get(&c).is_none(), "an expired session is refused");
        for _ in 0..MAX_SESSIONS + 3 {
            let l = s.new_link();
            s.redeem(&l).unwrap();
        }
        assert!(s.lock().sessions.len() <= MAX_SESSIONS);
        assert_eq!(s.revoke_all(), MAX_SESSIONS);
        assert_eq!(s.live(), 0);
    }

    #[test]
    fn cookies_and_comparison() {
        assert_eq!(
            cookie("a=1; tinyscale_session=xyz; b=2", COOKIE),
            Some("xyz")
        );
        assert_eq!(cookie("a=1", COOKIE), None);
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
