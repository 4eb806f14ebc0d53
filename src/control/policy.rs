//! The live policy: loaded from `policy.path` (or the database), compiled
//! against the current topology, recompiled when the topology changes
//! (lazily, once per burst of changes) and reloaded when the file changes.
//! A rejected policy leaves the previous one in force.

use crate::control::{Change, Server, SharedServer};
use crate::policy::{self, Compiled, Policy, TopoNode, TopoUser, Topology};
use crate::state::State;
use log::{error, info};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What map sessions consult.
#[derive(Clone)]
pub enum View {
    /// No policy configured: everybody sees everybody, allow-all filter.
    AllowAll,
    Compiled(Arc<Compiled>),
}

pub struct Live {
    policy: Option<Arc<Policy>>,
    /// Source text of the policy in force (for `policy get`).
    pub text: Option<String>,
    compiled: Option<Arc<Compiled>>,
    /// Bumped on every recompile; sessions resend filters when it moves.
    pub generation: u64,
    file_mtime: Option<SystemTime>,
    /// The topology changed since the last compile.
    stale: bool,
    /// A compile is running (outside the lock).
    compiling: bool,
    /// A deferred recompile is scheduled.
    deferred: bool,
    last_compile: Option<Instant>,
    /// Recompiles are at least this far apart: twice the last compile's
    /// duration, so a burst of registrations cannot keep the server busy
    /// compiling (a 1000-node × 100-rule policy takes ~0.8 s here).
    min_interval: Duration,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            policy: None,
            text: None,
            compiled: None,
            generation: 0,
            file_mtime: None,
            stale: false,
            compiling: false,
            deferred: false,
            last_compile: None,
            min_interval: MIN_RECOMPILE,
        }
    }
}

/// Shortest gap between two recompiles.
const MIN_RECOMPILE: Duration = Duration::from_millis(50);

impl Live {
    fn lock(m: &Mutex<Live>) -> std::sync::MutexGuard<'_, Live> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The server's state as the policy engine sees it (HA standbys' subnet
/// routes left out: only the elected primary carries a prefix).
pub fn topology_for(server: &Server, st: &State) -> Topology {
    let mut t = topology(st);
    t.settings.file_sharing = server.cfg.taildrop;
    for n in &mut t.nodes {
        if let Some(node) = st.nodes.get(&n.id) {
            let keep = server.routes_in_effect(node);
            n.approved_routes.retain(|r| keep.contains(&r.to_string()));
        }
    }
    t
}

/// The server's state as the policy engine sees it.
pub fn topology(st: &State) -> Topology {
    let users = st
        .users
        .values()
        .map(|u| TopoUser {
            id: u.id,
            name: u.name.clone(),
            email: (!u.email.is_empty()).then(|| u.email.clone()),
        })
        .collect();
    let nodes = st
        .nodes
        .values()
        .map(|n| TopoNode {
            id: n.id,
            name: n.given_name.clone(),
            user_id: (!n.is_tagged()).then_some(n.user),
            tags: n.tags.clone(),
            ipv4: n.ipv4,
            ipv6: n.ipv6,
            advertised_routes: n
                .advertised_routes
                .iter()
                .filter_map(|r| r.parse().ok())
                .collect(),
            approved_routes: n
                .approved_routes
                .iter()
                .filter_map(|r| r.parse().ok())
                .collect(),
        })
        .collect();
    Topology {
        users,
        nodes,
        settings: Default::default(),
    }
}

impl Server {
    /// The policy view to use now, recompiling if the topology changed.
    pub fn policy_view(&self) -> (View, u64) {
        // Topology changed: re-run the HA election first (it decides which
        // routes the compiler sees), then recompile if there is a policy.
        let dirty = self.hub.take_topology_dirty();
        let moved = if dirty { self.reelect() } else { Vec::new() };
        if dirty {
            Live::lock(&self.policy).stale = true;
        }
        self.maybe_recompile();
        for id in moved {
            self.hub.notify(Change::NodeUpsert(id));
        }
        let live = Live::lock(&self.policy);
        match (&live.policy, &live.compiled) {
            (Some(_), Some(c)) => (View::Compiled(c.clone()), live.generation),
            _ => (View::AllowAll, live.generation),
        }
    }

    /// Compiles now if the topology is stale and the last compile is far
    /// enough back; otherwise makes sure a deferred recompile will run.
    /// The compile itself runs outside the lock, so sessions keep serving
    /// the previous result meanwhile.
    fn maybe_recompile(&self) {
        let pol = {
            let mut live = Live::lock(&self.policy);
            let Some(pol) = live.policy.clone() else {
                return;
            };
            let first = live.compiled.is_none();
            if !live.stale && !first {
                return;
            }
            let due = live
                .last_compile
                .map_or(true, |t| t.elapsed() >= live.min_interval);
            if !first && (live.compiling || !due) {
                if !live.deferred {
                    live.deferred = true;
                    let wait = live
                        .last_compile
                        .map(|t| live.min_interval.saturating_sub(t.elapsed()))
                        .unwrap_or(MIN_RECOMPILE)
                        .max(MIN_RECOMPILE);
                    if let Some(me) = self.me.upgrade() {
                        smol::spawn(async move {
                            async_io::Timer::after(wait).await;
                            Live::lock(&me.policy).deferred = false;
                            let before = me.policy_view().1;
                            if Live::lock(&me.policy).generation != before
                                || !Live::lock(&me.policy).stale
                            {
                                // Sessions reconcile against the new result.
                                me.hub.notify(Change::PolicyRefresh);
                            } else {
                                me.maybe_recompile();
                            }
                        })
                        .detach();
                    }
                }
                return;
            }
            live.compiling = true;
            live.stale = false;
            pol
        };
        let topo = topology_for(self, &self.state());
        let t0 = Instant::now();
        let compiled = Arc::new(policy::compile(&pol, &topo));
        let took = t0.elapsed();
        let mut live = Live::lock(&self.policy);
        live.compiling = false;
        live.last_compile = Some(Instant::now());
        live.min_interval = (took * 2).clamp(MIN_RECOMPILE, Duration::from_secs(5));
        // A policy swapped in meanwhile wins over this result.
        if live.policy.as_ref().is_some_and(|p| Arc::ptr_eq(p, &pol)) {
            live.compiled = Some(compiled);
            live.generation += 1;
        }
    }

    /// Validates and activates a policy text; on error the previous policy
    /// stays in force. `None` removes the policy (allow-all).
    pub fn set_policy(&self, text: Option<&str>) -> Result<(), String> {
        let parsed = match text {
            Some(t) => {
                let topo = topology(&self.state());
                let p = policy::parse_and_check(t, &topo).map_err(|e| e.to_string())?;
                let c = policy::compile(&p, &topo);
                Some((Arc::new(p), Arc::new(c)))
            }
            None => None,
        };
        {
            let mut live = Live::lock(&self.policy);
            match parsed {
                Some((p, c)) => {
                    live.policy = Some(p);
                    live.compiled = Some(c);
                    live.stale = false;
                    live.last_compile = Some(Instant::now());
                    live.text = text.map(String::from);
                }
                None => {
                    live.policy = None;
                    live.compiled = None;
                    live.text = None;
                }
            }
            live.generation += 1;
        }
        self.hub.notify(Change::Everything);
        Ok(())
    }

    /// The parsed policy in force, if any.
    pub fn current_policy(&self) -> Option<Arc<Policy>> {
        Live::lock(&self.policy).policy.clone()
    }

    pub fn policy_text(&self) -> Option<String> {
        Live::lock(&self.policy).text.clone()
    }
}

/// Key of the policy in the database's meta table (`policy.mode: database`).
pub const META_POLICY: &str = "policy";

/// Loads the configured policy at start-up. A broken policy file at start
/// is an error: starting allow-all instead would open the tailnet.
pub fn load_initial(server: &Server) -> Result<(), String> {
    if server.cfg.policy_mode == "database" {
        let stored = server
            .state()
            .store
            .get_meta(META_POLICY)
            .map_err(|e| e.to_string())?;
        if let Some(bytes) = stored {
            let text =
                String::from_utf8(bytes).map_err(|_| "stored policy is not UTF-8".to_string())?;
            server
                .set_policy(Some(&text))
                .map_err(|e| format!("stored policy: {e}"))?;
        }
        return Ok(());
    }
    let Some(path) = &server.cfg.policy_path else {
        return Ok(());
    };
    let text = read_policy_file(path)?;
    server
        .set_policy(Some(&text))
        .map_err(|e| format!("policy.path {}: {e}", path.display()))?;
    Live::lock(&server.policy).file_mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    info!("policy loaded from {}", path.display());
    Ok(())
}

/// Largest policy file accepted.
pub const MAX_POLICY: u64 = 4 << 20;

fn read_policy_file(path: &std::path::Path) -> Result<String, String> {
    let md = std::fs::metadata(path).map_err(|e| format!("policy.path {}: {e}", path.display()))?;
    if md.len() > MAX_POLICY {
        return Err(format!(
            "policy.path {}: larger than {} bytes",
            path.display(),
            MAX_POLICY
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("policy.path {}: {e}", path.display()))
}

/// Re-reads the file when its modification time changes (or on request,
/// e.g. SIGHUP). Errors are logged; the previous policy stays in force.
pub fn reload_if_changed(server: &Server, force: bool) {
    if server.cfg.policy_mode == "database" {
        return;
    }
    let Some(path) = &server.cfg.policy_path else {
        return;
    };
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    {
        let live = Live::lock(&server.policy);
        if !force && mtime == live.file_mtime {
            return;
        }
    }
    Live::lock(&server.policy).file_mtime = mtime;
    match read_policy_file(path).and_then(|t| server.set_policy(Some(&t))) {
        Ok(()) => info!("policy reloaded from {}", path.display()),
        Err(e) => error!("policy reload rejected, previous policy stays in force: {e}"),
    }
}

/// Watches the policy file (polling its mtime once a second).
pub fn spawn_watcher(server: SharedServer) {
    if server.cfg.policy_path.is_none() || server.cfg.policy_mode == "database" {
        return;
    }
    let weak = Arc::downgrade(&server);
    drop(server);
    smol::spawn(async move {
        loop {
            async_io::Timer::after(Duration::from_secs(1)).await;
            let Some(server) = weak.upgrade() else { return };
            reload_if_changed(&server, false);
        }
    })
    .detach();
}
