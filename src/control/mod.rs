//! The control plane: register, map sessions, lite updates and the hub that
//! fans changes out to connected map sessions. Requests reach it from the
//! transport through [`crate::http::h2srv::Handler`] (see `endpoints`); the
//! planes above it (API, page, OIDC, ACME) call into it, never the reverse.
//! The top-level room (`crate::app`) builds it and binds its listeners.

pub mod churn;
pub mod derpmap;
mod endpoints;
pub mod ephemeral;
pub mod hub;
pub mod interactive;
pub mod map;
pub mod netmap;
pub mod policy;
pub mod register;
pub mod routes;
pub mod signals;

use crate::config::Config;
use crate::state::State;
use std::sync::{Arc, Mutex, MutexGuard};

pub use hub::{Change, Hub};

/// Everything a connection handler or the admin plane needs.
pub struct Server {
    pub cfg: Config,
    pub state: Mutex<State>,
    pub hub: Hub,
    /// Our Noise static private key (X25519).
    pub noise_private: [u8; 32],
    pub noise_public: [u8; 32],
    /// The policy in force and its compiled form.
    pub policy: Mutex<policy::Live>,
    /// The embedded DERP relay (when enabled).
    pub derp: Option<Arc<crate::derp::server::DerpServer>>,
    /// TLS for the second listener, and the self-signed pin if any.
    pub tls: Option<crate::http::tls::Tls>,
    /// The port the TLS listener is bound to, once it is: the embedded
    /// DERP region is offered only then (see `derpmap::merge`).
    pub tls_port: std::sync::OnceLock<u16>,
    /// The merged DERP map (None until the sources were read once).
    pub derp_map: Mutex<Option<crate::tailcfg::SharedRaw>>,
    /// Interactive registrations waiting for approval.
    pub pending: interactive::Registry,
    /// Extra DNS records from `dns.extra_records_path`.
    pub dns_extra: Mutex<Vec<(String, String, String)>>,
    /// Last good document of each DERP map source.
    pub derp_last_good: Mutex<std::collections::HashMap<String, crate::tailcfg::DerpMap>>,
    /// A handle on itself for tasks spawned from `&self` methods.
    pub me: std::sync::Weak<Server>,
    /// Nodes whose key expiry peers have been told of, by the expiry
    /// watcher or by the operation that expired them, so each expiry is
    /// announced once.
    pub expiry_announced: Mutex<std::collections::BTreeSet<u64>>,
    /// Full maps being built or sent at once (see `map::send_full_map`).
    pub full_maps: smol::lock::Semaphore,
    /// Per-node rate limit on Hostinfo fan-out.
    pub churn: churn::Churn,
    /// Connections that have not identified a node yet (caps in config).
    pub admission: Arc<crate::http::admission::Admission>,
    /// Elected primary router per subnet prefix.
    pub primaries: Mutex<std::collections::BTreeMap<String, u64>>,
    /// The admin page's sessions and login links.
    pub web: crate::session::WebState,
}

impl Server {
    /// Registered nodes, and how many of them hold a map stream (the status
    /// page and `/metrics` both show these).
    pub fn node_counts(&self) -> (usize, usize) {
        let st = self.state();
        let online = st
            .nodes
            .keys()
            .filter(|id| self.hub.is_online(**id))
            .count();
        (st.nodes.len(), online)
    }

    /// Locks the state; a poisoned lock (a panic elsewhere) is recovered
    /// because every mutation is applied to the store before memory.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that an operation has just expired node `id` and announces
    /// it (itself or through the caller), so the expiry watcher does not
    /// announce the same expiry a second time.
    pub fn mark_expiry_announced(&self, id: u64) {
        self.expiry_announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
    }

    /// The embedded relay as clients can reach it, or None when it is
    /// disabled or its TLS listener is not bound.
    pub fn derp_served(&self) -> Option<derpmap::Served> {
        let port = *self.tls_port.get()?;
        self.derp.as_ref()?;
        // Until the first ACME certificate is in, TLS handshakes fail.
        if self.tls.as_ref().is_some_and(|t| !t.ready()) {
            return None;
        }
        Some(derpmap::Served {
            port,
            cert_name: self
                .tls
                .as_ref()
                .and_then(|t| t.pin.clone())
                .unwrap_or_default(),
        })
    }
}

pub type SharedServer = Arc<Server>;

/// Loads the store and the Noise key and builds the shared server. `tls`
/// gives the TLS listener's certificate (the top-level room's choice: a
/// file, a generated one, ACME); it is called once the database and the
/// Noise key are loaded.
pub fn build_server(
    cfg: Config,
    tls: impl FnOnce(&Config) -> std::io::Result<Option<crate::http::tls::Tls>>,
) -> std::io::Result<SharedServer> {
    use std::io::Error;
    if let Some(dir) = cfg.database_path.parent() {
        create_private_dir(dir)?;
    }
    let store = crate::state::Store::open(&cfg.database_path)
        .map_err(|e| Error::other(format!("database {}: {e}", cfg.database_path.display())))?;
    let state = State::load(store).map_err(|e| Error::other(format!("loading database: {e}")))?;
    let noise_private = load_or_create_key(&cfg.noise_private_key_path).map_err(|e| {
        Error::new(
            e.kind(),
            format!(
                "noise.private_key_path {}: {e}",
                cfg.noise_private_key_path.display()
            ),
        )
    })?;
    let noise_public = crate::keys::x25519_public(&noise_private);
    let tls = tls(&cfg)?;
    let derp = if cfg.derp_server_enabled {
        let key_path = derp_key_path(&cfg);
        let key = load_or_create_key(&key_path)
            .map_err(|e| Error::new(e.kind(), format!("DERP key {}: {e}", key_path.display())))?;
        Some(Arc::new(crate::derp::server::DerpServer::new(key)))
    } else {
        None
    };
    let server = Arc::new_cyclic(|weak: &std::sync::Weak<Server>| {
        // Only nodes registered here (with a current key) may use the relay.
        let me = weak.clone();
        let weak = weak.clone();
        let derp = derp.map(|d| {
            let verify: crate::derp::server::VerifyFn =
                Arc::new(move |k: &crate::wire::derp::Key| {
                    let Some(s) = weak.upgrade() else {
                        return false;
                    };
                    let st = s.state();
                    st.node_by_node_key(k)
                        .is_some_and(|n| !n.is_expired(crate::state::now()))
                });
            let d = Arc::try_unwrap(d).map(|d| d.with_verify(verify));
            Arc::new(d.unwrap_or_else(|_| unreachable!("fresh Arc")))
        });
        Server {
            admission: crate::http::admission::Admission::new(
                cfg.max_unidentified,
                cfg.max_unidentified_per_source,
            ),
            cfg,
            state: Mutex::new(state),
            hub: Hub::default(),
            noise_private,
            noise_public,
            policy: Mutex::new(policy::Live::default()),
            derp,
            tls,
            tls_port: std::sync::OnceLock::new(),
            derp_map: Mutex::new(None),
            pending: interactive::Registry::default(),
            web: Default::default(),
            primaries: Mutex::new(Default::default()),
            churn: Default::default(),
            expiry_announced: Mutex::new(Default::default()),
            full_maps: smol::lock::Semaphore::new(map::FULL_MAPS_IN_FLIGHT),
            me,
            derp_last_good: Mutex::new(Default::default()),
            dns_extra: Mutex::new(Vec::new()),
        }
    });
    policy::load_initial(&server).map_err(Error::other)?;
    Ok(server)
}

pub use crate::secretfile::create_private_dir;
pub use crate::secretfile::load_or_create_key;

/// The embedded DERP server's private key: `derp.server.private_key_path`,
/// else next to the Noise key.
/// Runs a yes/no job that blocks (a database read, a bcrypt check) on
/// the blocking thread pool. Not generic on purpose: each distinct
/// `smol::unblock` closure adds ~2.5 KB of aarch64 code (the task for its
/// future), so the small jobs share this one instantiation.
pub async fn unblock_bool(f: Box<dyn FnOnce() -> bool + Send>) -> bool {
    smol::unblock(f).await
}

pub fn derp_key_path(cfg: &Config) -> std::path::PathBuf {
    match &cfg.derp_private_key_path {
        Some(p) => p.clone(),
        None => cfg
            .noise_private_key_path
            .with_file_name("derp_server_private.key"),
    }
}

/// The key in a `privkey:<64 hex>` file (Headscale's format too; the prefix
/// is optional).
pub fn parse_key_file(s: &str) -> Option<[u8; 32]> {
    crate::secretfile::parse_key(s.as_bytes())
}

/// Writes `key` as a `privkey:<hex>` file, mode 0600, atomically (see
/// [`crate::secretfile::write_atomic`]); creates the directory owner-only.
pub fn write_new_key(path: &std::path::Path, key: &[u8; 32]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    crate::secretfile::write_atomic(
        path,
        format!("privkey:{}\n", crate::keys::to_hex(key)).as_bytes(),
    )
}

/// Tasks that bind nothing: policy file watcher, DERP map sources, key
/// expiry announcements, extra DNS records file.
pub fn spawn_background(server: &SharedServer) {
    policy::spawn_watcher(server.clone());
    derpmap::spawn_refresher(server.clone());
    routes::spawn_expiry_watcher(server.clone());
    netmap::spawn_extra_records_watcher(server.clone());
    ephemeral::spawn_sweeper(server);
    spawn_derp_sweeper(server);
}

/// The relay admits only current node keys when a client connects; this
/// task also drops connections whose node was deleted, expired or rotated
/// its key since: at once when the hub reports a node change, and every
/// 15 s for what no change announces (a key expiring on its own).
fn spawn_derp_sweeper(server: &SharedServer) {
    if server.derp.is_none() {
        return;
    }
    let weak = Arc::downgrade(server);
    let changes = server.hub.key_changes();
    smol::spawn(async move {
        use futures_lite::FutureExt;
        loop {
            let changed = async { changes.recv().await.is_ok() };
            let tick = async {
                async_io::Timer::after(std::time::Duration::from_secs(15)).await;
                true
            };
            if !changed.or(tick).await {
                return;
            }
            let Some(server) = weak.upgrade() else { return };
            let Some(derp) = server.derp.clone() else {
                return;
            };
            let t = crate::state::now();
            // Each relay client looked up in the node-key index: O(D log N)
            // per check, not a set of all N keys (this runs after every
            // registration burst).
            let connected = derp.connected_keys();
            let stale: Vec<_> = {
                let st = server.state();
                connected
                    .into_iter()
                    .filter(|k| st.node_by_node_key(k).map_or(true, |n| n.is_expired(t)))
                    .collect()
            };
            for k in stale {
                log::info!("DERP: closing a connection whose node key is no longer valid");
                derp.close_client(&k);
            }
        }
    })
    .detach();
}
