//! Interactive registration (protocol/register.md §3.2): a client without
//! an auth key gets an AuthURL on our server_url; its follow-up request is
//! held until an administrator approves it (`tinyscale auth register
//! --auth-id ID --user U`) or the pending registration expires.

use crate::control::{Change, Server};
use crate::http::admission::source_of;
use crate::state::{now, Node, Op};
use log::info;
use smol::channel::{self, Receiver, Sender};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How long a pending registration waits for approval.
pub const PENDING_TTL: Duration = Duration::from_secs(15 * 60);
/// Upper bound on simultaneously pending registrations: anybody who can
/// reach the server can start one. Each holds a decoded Hostinfo (≤ 16 KiB
/// of JSON) and one held request: ≤ a few MB in all.
pub const MAX_PENDING: usize = 256;
/// A source's share of [`MAX_PENDING`] (the IPv4 address or the IPv6 /64:
/// [`source_of`]), so that one host cannot fill the registry and lock
/// every real login out for [`PENDING_TTL`].
pub const MAX_PENDING_PER_SOURCE: usize = 16;

#[derive(Clone, Debug)]
pub struct Request {
    pub machine_key: [u8; 32],
    pub node_key: [u8; 32],
    pub old_node_key: [u8; 32],
    pub hostinfo: crate::tailcfg::Hostinfo,
    pub ephemeral: bool,
    pub version: u32,
    /// Where it came from (None: in-process callers).
    pub source: Option<std::net::IpAddr>,
}

struct Pending {
    req: Request,
    expires: i64,
    /// Some(node id) once approved.
    done: Option<u64>,
    /// Closed on approval: wakes every held follow-up.
    tx: Sender<()>,
    rx: Receiver<()>,
}

#[derive(Default)]
pub struct Registry {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a pending registration, or updates the one this machine key
    /// already has (one per machine key: a client that varies its node key
    /// replaces its own login, it does not add logins); returns its ID.
    pub fn start(&self, req: Request) -> Result<String, String> {
        self.start_with_ttl(req, PENDING_TTL)
    }

    /// [`Registry::start`] with a chosen lifetime (tests use a zero one to
    /// see how an expired registration is refused).
    pub fn start_with_ttl(&self, req: Request, ttl: Duration) -> Result<String, String> {
        let t = now();
        let mut g = self.lock();
        g.retain(|_, p| p.expires > t || p.done.is_some() && p.expires + 60 > t);
        if let Some((id, p)) = g
            .iter_mut()
            .find(|(_, p)| p.done.is_none() && p.req.machine_key == req.machine_key)
        {
            // Same login, newest details; its lifetime is not extended.
            p.req = req;
            return Ok(id.clone());
        }
        if g.len() >= MAX_PENDING {
            return Err("too many pending registrations; try again later".into());
        }
        if let Some(src) = req.source.map(source_of) {
            let same = |p: &&Pending| p.req.source.map(source_of) == Some(src);
            if g.values().filter(same).count() >= MAX_PENDING_PER_SOURCE {
                return Err(
                    "too many pending registrations from this address; try again later".into(),
                );
            }
        }
        let id = crate::keys::to_hex(&crate::keys::random32()[..12]);
        let (tx, rx) = channel::bounded(1);
        g.insert(
            id.clone(),
            Pending {
                req,
                expires: t + ttl.as_secs() as i64,
                done: None,
                tx,
                rx,
            },
        );
        Ok(id)
    }

    /// What the registration page shows: Some(expired?) if it exists.
    pub fn status(&self, id: &str) -> Option<(bool, Option<u64>)> {
        let g = self.lock();
        g.get(id)
            .map(|p| (p.done.is_none() && p.expires <= now(), p.done))
    }

    /// The hostname a pending registration reported (for the OIDC
    /// confirmation page).
    pub fn hostname(&self, id: &str) -> Option<String> {
        let g = self.lock();
        let p = g.get(id)?;
        Some(p.req.hostinfo.hostname.clone())
    }

    /// Holds a follow-up until approval or expiry. None = unknown or
    /// expired (the client then gets a fresh AuthURL).
    pub async fn wait(&self, id: &str, machine_key: &[u8; 32]) -> Option<u64> {
        let (rx, expires) = {
            let g = self.lock();
            let p = g.get(id)?;
            if &p.req.machine_key != machine_key {
                return None;
            }
            if let Some(n) = p.done {
                return Some(n);
            }
            (p.rx.clone(), p.expires)
        };
        let left = (expires - now()).max(0) as u64;
        use futures_lite::FutureExt;
        let _ = async { rx.recv().await.ok() }
            .or(async {
                async_io::Timer::after(Duration::from_secs(left)).await;
                None
            })
            .await;
        self.lock().get(id).and_then(|p| p.done)
    }

    /// Every registration still waiting for approval: (ID, Hostinfo,
    /// expiry), soonest to expire first (the admin page lists them).
    pub fn list(&self) -> Vec<(String, crate::tailcfg::Hostinfo, i64)> {
        let t = now();
        let g = self.lock();
        let mut v: Vec<_> = g
            .iter()
            .filter(|(_, p)| p.done.is_none() && p.expires > t)
            .map(|(id, p)| (id.clone(), p.req.hostinfo.clone(), p.expires))
            .collect();
        v.sort_by_key(|e| e.2);
        v
    }

    /// The machine a pending (not yet approved) registration is for.
    pub fn machine_key(&self, id: &str) -> Option<[u8; 32]> {
        let g = self.lock();
        g.get(id)
            .filter(|p| p.done.is_none() && p.expires > now())
            .map(|p| p.req.machine_key)
    }

    /// Drops a pending registration (`auth reject`): its held follow-up
    /// wakes to nothing and the client is sent a fresh login URL.
    pub fn reject(&self, id: &str) -> bool {
        let mut g = self.lock();
        match g.get(id) {
            Some(p) if p.done.is_none() => {
                p.tx.close();
                g.remove(id);
                true
            }
            _ => false,
        }
    }

    fn take_for_approval(&self, id: &str) -> Result<Request, String> {
        let g = self.lock();
        match g.get(id) {
            None => Err(format!("registration {id} not found")),
            Some(p) if p.done.is_some() => Err(format!("registration {id} is already approved")),
            Some(p) if p.expires <= now() => {
                Err(format!("registration {id} has expired; log in again"))
            }
            Some(p) => Ok(p.req.clone()),
        }
    }

    fn complete(&self, id: &str, node: u64) {
        if let Some(p) = self.lock().get_mut(id) {
            p.done = Some(node);
            p.tx.close();
        }
    }
}

/// Who a registration is approved for, decided while the state is locked.
pub(crate) struct Approval {
    pub user: u64,
    /// A user record to write in the same batch as the node (a user created
    /// or updated by an OIDC login), so a failure leaves neither behind.
    pub write_user: Option<crate::state::User>,
    /// The node's key expiry; None = the `node.expiry` default.
    pub expiry: Option<i64>,
    /// What authorised it (CLI or OIDC), shown by `nodes list`.
    pub method: crate::state::RegisterMethod,
}

/// Approves pending registration `id` for user `user` (name or ID):
/// creates the node, or re-authenticates this machine's existing node
/// (same ID, IPs and name). Returns the node.
pub fn approve(server: &Server, id: &str, user: &str) -> Result<Node, String> {
    approve_with(server, id, |st| {
        let uid = st
            .find_user(user)
            .map(|u| u.id)
            .ok_or_else(|| format!("user {user:?} not found"))?;
        Ok(Approval {
            user: uid,
            write_user: None,
            expiry: None,
            method: crate::state::RegisterMethod::Cli,
        })
    })
}

/// The one approval path (CLI and OIDC): `decide` names the owner once the
/// registration is known to be pending; the node (and the owner, if new or
/// changed) are stored in one batch, then the held follow-up is released.
pub(crate) fn approve_with(
    server: &Server,
    id: &str,
    decide: impl FnOnce(&crate::state::State) -> Result<Approval, String>,
) -> Result<Node, String> {
    let t = now();
    // State before pending (never the other way round anywhere): two
    // approvals of one registration cannot both pass the check.
    let mut st = server.state();
    let req = server.pending.take_for_approval(id)?;
    let a = decide(&st)?;
    let uid = a.user;
    // The node key may have been registered by another machine since the
    // login started (a pre-auth key, another approval): never take it over.
    if st
        .node_by_node_key(&req.node_key)
        .is_some_and(|n| n.machine_key != req.machine_key)
    {
        return Err(format!(
            "registration {id}: its node key is in use by another machine; log in again"
        ));
    }
    let existing = st
        .nodes
        .values()
        .find(|n| {
            n.machine_key == req.machine_key
                && (n.node_key == req.old_node_key || n.node_key == req.node_key || n.user == uid)
        })
        .cloned();
    let expiry = a
        .expiry
        .unwrap_or_else(|| crate::control::register::default_expiry(server, false, t));
    let node = match existing {
        Some(mut n) => {
            if n.node_key != req.node_key {
                n.old_node_key = n.node_key;
                n.node_key = req.node_key;
            }
            n.user = uid;
            n.tags.clear();
            // Authorised by this approval now (CLI or OIDC), not by the
            // pre-auth key it once used: `nodes list` shows no spent key.
            n.auth_key = 0;
            n.register_method = a.method;
            n.expiry = expiry;
            n.ephemeral = req.ephemeral;
            crate::control::register::apply_hostinfo(&mut n, &req.hostinfo);
            n
        }
        None => {
            let mut n = crate::control::register::new_node(
                server,
                &st,
                crate::control::register::NewNode {
                    machine_key: req.machine_key,
                    node_key: req.node_key,
                    user: uid,
                    tags: vec![],
                    hostinfo: &req.hostinfo,
                    ephemeral: req.ephemeral,
                    version: req.version,
                    auth_key: 0,
                },
                t,
            )?;
            n.expiry = expiry;
            n.register_method = a.method;
            n
        }
    };
    let mut ops = Vec::new();
    if let Some(u) = a.write_user.as_ref() {
        ops.push(Op::PutUser(u));
    }
    ops.push(Op::PutNode(&node));
    st.store
        .apply(&ops)
        .map_err(|e| format!("storage error: {e}"))?;
    drop(ops);
    if let Some(u) = a.write_user {
        st.next_user_id = st.next_user_id.max(u.id + 1);
        st.users.insert(u.id, u);
    }
    st.next_node_id = st.next_node_id.max(node.id + 1);
    st.nodes.insert(node.id, node.clone());
    drop(st);
    server.pending.complete(id, node.id);
    server.hub.notify(Change::NodeUpsert(node.id));
    info!(
        "registration {id} approved: node {} {} for user {uid}",
        node.id, node.given_name
    );
    Ok(node)
}

/// The registration ID in an AuthURL (`…/register/<id>`).
pub fn id_from_url(url: &str) -> Option<&str> {
    let id = url.rsplit_once("/register/")?.1;
    let id = id.split(['?', '#', '/']).next()?;
    (!id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then_some(id)
}

/// The small page an AuthURL shows.
pub fn page(server: &Server, id: &str) -> (u16, String) {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let body = match server.pending.status(id) {
        None => "<p>This registration is unknown or has expired. Run <code>tailscale up</code> again.</p>".to_string(),
        Some((true, _)) => "<p>This registration has expired. Run <code>tailscale up</code> again.</p>".to_string(),
        Some((false, Some(_))) => "<p>This machine is registered. You can close this page.</p>".to_string(),
        Some((false, None)) => format!(
            "<p>An administrator approves this machine on the server with:</p>\n<pre>tinyscale auth register --auth-id {} --user USERNAME</pre>{}",
            esc(id),
            if server.cfg.web_enabled {
                format!("\n<p>or, logged in to the admin page, <a href=\"/admin/#pending/{0}\">approves it there</a>.</p>", esc(id))
            } else {
                String::new()
            }
        ),
    };
    let status = if server.pending.status(id).is_some() {
        200
    } else {
        404
    };
    (
        status,
        format!("<!doctype html><html><head><meta charset=\"utf-8\"><title>tinyscale: register a machine</title></head><body><h1>tinyscale</h1>\n{body}\n</body></html>\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(machine: u8, source: &str) -> Request {
        Request {
            machine_key: [machine; 32],
            node_key: [machine; 32],
            old_node_key: [0; 32],
            hostinfo: Default::default(),
            ephemeral: false,
            version: 0,
            source: Some(source.parse().unwrap()),
        }
    }

    #[test]
    fn pending_logins_are_capped_per_ipv6_64() {
        let r = Registry::default();
        // Every login from another address of one /64: one source.
        for i in 0..MAX_PENDING_PER_SOURCE {
            r.start(req(i as u8, &format!("2001:db8:5:6::{:x}", i + 1)))
                .unwrap();
        }
        let err = r.start(req(200, "2001:db8:5:6:ffff::1")).unwrap_err();
        assert!(err.contains("from this address"), "{err}");
        // The next /64 and an IPv4 address still get in.
        r.start(req(201, "2001:db8:5:7::1")).unwrap();
        r.start(req(202, "192.0.2.9")).unwrap();
    }

    #[test]
    fn ids_from_urls() {
        assert_eq!(
            super::id_from_url("http://10.0.0.1:8080/register/abc123"),
            Some("abc123")
        );
        assert_eq!(
            super::id_from_url("https://x/register/abc?x=1"),
            Some("abc")
        );
        assert_eq!(super::id_from_url("https://x/register/"), None);
        assert_eq!(super::id_from_url("https://x/register/<script>"), None);
        assert_eq!(super::id_from_url("nonsense"), None);
    }
}
