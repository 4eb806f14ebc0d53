//! The control plane: register, map sessions, lite updates and the hub that
//! fans changes out to connected map sessions.

pub mod churn;
pub mod derpmap;
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
    /// OpenID Connect login (`oidc.issuer` set).
    #[cfg(feature = "oidc")]
    pub oidc: Option<crate::oidc::Oidc>,
    /// ACME certificates (`tls_letsencrypt_hostname` set).
    #[cfg(feature = "acme")]
    pub acme: Option<Arc<crate::acme::Manager>>,
    /// The admin page's sessions and login links.
    pub web: crate::web::Web,
}

impl Server {
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
        #[cfg(feature = "acme")]
        if self.acme.as_ref().is_some_and(|m| m.validity().is_none()) {
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

/// Loads the store and the Noise key and builds the shared server.
pub fn build_server(cfg: Config) -> std::io::Result<SharedServer> {
    use std::io::{Error, ErrorKind};
    let _ = ErrorKind::Other;
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
    #[cfg(feature = "oidc")]
    let oidc = crate::oidc::from_config(&cfg)?;
    #[cfg(not(feature = "oidc"))]
    if let Some(o) = cfg.oidc.as_ref() {
        let msg = "oidc.issuer is set but this tinyscale was built without the `oidc` feature";
        if o.only_start_if_oidc_is_available {
            return Err(Error::other(format!(
                "{msg}; rebuild with --features oidc, or set oidc.only_start_if_oidc_is_available: false to approve logins with `tinyscale auth register`"
            )));
        }
        log::warn!("{msg}; logins are approved with `tinyscale auth register`");
    }
    #[cfg(not(feature = "acme"))]
    if cfg.acme.is_some() {
        return Err(Error::other(
            "tls_letsencrypt_hostname is set but this tinyscale was built without the `acme` feature; rebuild with --features acme, or use tls_cert_path/tls_key_path",
        ));
    }
    #[cfg(feature = "acme")]
    let acme = match &cfg.acme {
        Some(a) => Some(crate::acme::Manager::new(a.clone())?),
        None => None,
    };
    let tls = match cfg.tls_listen_addr {
        #[cfg(feature = "acme")]
        Some(_) if acme.is_some() => acme
            .as_ref()
            .map(|m| -> std::io::Result<_> {
                Ok(crate::http::tls::Tls {
                    acceptor: crate::acme::acceptor(m)?,
                    pin: None,
                })
            })
            .transpose()?,
        Some(_) => Some(crate::http::tls::load_or_generate(
            cfg.tls_cert_path.as_deref(),
            cfg.tls_key_path.as_deref(),
            &cfg.data_dir,
            tls_names(&cfg),
        )?),
        None => None,
    };
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
            web: crate::web::Web::default(),
            primaries: Mutex::new(Default::default()),
            churn: Default::default(),
            expiry_announced: Mutex::new(Default::default()),
            full_maps: smol::lock::Semaphore::new(map::FULL_MAPS_IN_FLIGHT),
            me,
            derp_last_good: Mutex::new(Default::default()),
            dns_extra: Mutex::new(Vec::new()),
            #[cfg(feature = "oidc")]
            oidc,
            #[cfg(feature = "acme")]
            acme,
        }
    });
    policy::load_initial(&server).map_err(Error::other)?;
    Ok(server)
}

/// Names the generated certificate is valid for: the control host and the
/// DERP addresses clients dial.
fn tls_names(cfg: &Config) -> Vec<String> {
    let mut v = vec![netmap::server_host(cfg)];
    v.extend(cfg.derp_ipv4.iter().cloned());
    v.extend(cfg.derp_ipv6.iter().cloned());
    if let Some(a) = cfg.tls_listen_addr.filter(|a| !a.ip().is_unspecified()) {
        v.push(a.ip().to_string());
    }
    v.sort();
    v.dedup();
    v.retain(|s| !s.is_empty() && s != "none");
    v
}

/// Creates `dir` (and parents) readable by the owner only.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

pub use crate::secretfile::load_or_create_key;

/// The embedded DERP server's private key: `derp.server.private_key_path`,
/// else next to the Noise key.
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

/// Starts every listener and serves until the process ends.
pub fn run_forever(server: SharedServer) -> std::io::Result<()> {
    if std::env::var_os("SMOL_THREADS").is_none() {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        std::env::set_var("SMOL_THREADS", n.to_string());
    }
    // Headscale's TLS: `listen_addr: 0.0.0.0:443` with a certificate makes that one listener
    // HTTPS. Ours would bind the plain listener and then fail the TLS bind of the same socket, so
    // when both name one socket the TLS listener serves everything (control, API, pages, DERP).
    let single = server.tls.is_some()
        && server
            .cfg
            .tls_listen_addr
            .is_some_and(|t| same_socket(t, server.cfg.listen_addr));
    let listener = if single {
        None
    } else {
        Some(crate::http::bind(&server)?)
    };
    if let Some(addr) = server.cfg.stun_listen_addr {
        if server.cfg.derp_server_enabled {
            start_stun(addr);
        }
    }
    start_admin(&server)?;
    if let Some(addr) = server.cfg.metrics_listen_addr {
        crate::metrics::spawn(&server, addr);
    }
    let tls = start_tls(&server);
    #[cfg(feature = "acme")]
    let _http01 = start_acme_http01(&server);
    spawn_background(&server);
    signals::spawn(&server);
    match listener {
        Some(listener) => {
            println!(
                "tinyscale listening on {}; server_url {}",
                server.cfg.listen_addr, server.cfg.server_url
            );
            let _tls = tls;
            smol::block_on(crate::http::accept_loop(server, listener));
        }
        None => {
            // The only listener: without it there is no server (start_tls said why).
            let tls = tls.ok_or_else(|| {
                std::io::Error::other(format!(
                    "listen_addr {} (HTTPS, the same socket as tls_listen_addr) could not be bound",
                    server.cfg.listen_addr
                ))
            })?;
            println!(
                "tinyscale listening on {} (HTTPS); server_url {}",
                server.cfg.listen_addr, server.cfg.server_url
            );
            smol::block_on(tls);
        }
    }
    Ok(())
}

/// Whether two listen addresses name one socket: the same port on the same address, or on
/// addresses that overlap because one of them is the unspecified address.
fn same_socket(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn start_stun(addr: std::net::SocketAddr) {
    match crate::derp::stun::spawn_stun(addr) {
        Ok(s) => {
            log::info!("STUN on {}", s.local_addr());
            s.detach();
        }
        Err(e) => log::warn!("STUN on {addr}: {e} (clients will take longer to find direct paths)"),
    }
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
    #[cfg(feature = "acme")]
    if let Some(m) = &server.acme {
        crate::acme::spawn_renewer(m);
        if m.validity().is_none() {
            // Offer the relay once the first certificate is in.
            let weak = Arc::downgrade(server);
            smol::spawn(async move {
                loop {
                    async_io::Timer::after(std::time::Duration::from_secs(1)).await;
                    let Some(server) = weak.upgrade() else { return };
                    if server.acme.as_ref().is_some_and(|m| m.validity().is_some()) {
                        derpmap::refresh(&server).await;
                        return;
                    }
                }
            })
            .detach();
        }
    }
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
            let stale: Vec<_> = {
                let st = server.state();
                let current: std::collections::HashSet<[u8; 32]> = st
                    .nodes
                    .values()
                    .filter(|n| !n.is_expired(t))
                    .map(|n| n.node_key)
                    .collect();
                derp.connected_keys()
                    .into_iter()
                    .filter(|k| !current.contains(k))
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

/// Binds the TLS listener (when configured) and serves it on a task that
/// runs as long as the returned handle is kept.
fn start_tls(server: &SharedServer) -> Option<smol::Task<()>> {
    let (Some(addr), Some(tls)) = (server.cfg.tls_listen_addr, server.tls.as_ref()) else {
        return None;
    };
    match async_io::Async::<std::net::TcpListener>::bind(addr) {
        Ok(l) => {
            let port = l
                .get_ref()
                .local_addr()
                .map(|a| a.port())
                .unwrap_or(addr.port());
            let _ = server.tls_port.set(port);
            log::info!("TLS (DERP, HTTPS control) on {addr} (port {port})");
            Some(smol::spawn(crate::http::accept_loop_tls(
                server.clone(),
                l,
                tls.acceptor.clone(),
            )))
        }
        Err(e) => {
            let relay = if server.derp.is_some() {
                "the DERP map offers no embedded region"
            } else {
                "no DERP relay"
            };
            log::warn!("tls_listen_addr {addr}: {e} ({relay}; no HTTPS control fallback)");
            if server.derp.is_some() {
                // Said where a new user looks, not only in the log.
                eprintln!("tinyscale: tls_listen_addr {addr}: {e}: no embedded DERP relay is offered to clients (bind a port you may use, e.g. tls_listen_addr: 0.0.0.0:8443, or run with CAP_NET_BIND_SERVICE)");
            }
            None
        }
    }
}

/// The HTTP-01 listener (`tls_letsencrypt_listen`) when ACME validates
/// over HTTP; it answers challenge tokens and nothing else.
#[cfg(feature = "acme")]
fn start_acme_http01(server: &SharedServer) -> Option<smol::Task<()>> {
    let m = server.acme.as_ref()?;
    if m.cfg.challenge != crate::config::AcmeChallenge::Http01 {
        return None;
    }
    let addr = m.cfg.listen;
    match async_io::Async::<std::net::TcpListener>::bind(addr) {
        Ok(l) => {
            log::info!("ACME HTTP-01 on {addr}");
            Some(smol::spawn(crate::http::accept_loop_http01(m.clone(), l)))
        }
        Err(e) => {
            log::warn!("tls_letsencrypt_listen {addr}: {e} (HTTP-01 validation will fail; TLS-ALPN-01 needs no port 80)");
            None
        }
    }
}

/// A server without its admin socket would leave the CLI talking to
/// whatever else listens at that path: failing to bind it is fatal.
fn start_admin(server: &SharedServer) -> std::io::Result<()> {
    crate::api::spawn(server.clone()).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("admin socket {}: {e}", server.cfg.unix_socket.display()),
        )
    })
}

/// Binds the control listener and serves it on smol's executor; returns
/// the bound address (tests and benchmarks bind port 0).
pub fn start_background(
    server: &SharedServer,
) -> std::io::Result<(std::net::SocketAddr, smol::Task<()>)> {
    let listener = crate::http::bind(server)?;
    let addr = listener.get_ref().local_addr()?;
    let tls = start_tls(server);
    #[cfg(feature = "acme")]
    let http01 = start_acme_http01(server);
    spawn_background(server);
    let server = server.clone();
    Ok((
        addr,
        // The TLS task lives (and is cancelled) with the control listener's.
        smol::spawn(async move {
            let _tls = tls;
            #[cfg(feature = "acme")]
            let _http01 = http01;
            crate::http::accept_loop(server, listener).await
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::same_socket;

    #[test]
    fn one_socket_or_two() {
        let a = |s: &str| s.parse().unwrap();
        // Headscale's `listen_addr: 0.0.0.0:443` against our default tls_listen_addr.
        assert!(same_socket(a("0.0.0.0:443"), a("0.0.0.0:443")));
        assert!(same_socket(a("192.0.2.1:443"), a("0.0.0.0:443")));
        assert!(same_socket(a("[::]:443"), a("192.0.2.1:443")));
        assert!(!same_socket(a("0.0.0.0:8080"), a("0.0.0.0:443")));
        assert!(!same_socket(a("192.0.2.1:443"), a("192.0.2.2:443")));
        // Port 0 is a fresh port for each bind.
        assert!(!same_socket(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }
}
