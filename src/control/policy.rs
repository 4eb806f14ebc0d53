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
    /// Why what is in force is not the configured policy (it did not load
    /// or no longer compiles): logged, and shown by `policy get`.
    pub error: Option<String>,
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
            error: None,
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
    topology_of(st.users.values(), st.nodes.values())
}

/// The policy engine's view of these users and nodes (also used to check
/// a policy against a tailnet before it is imported).
pub fn topology_of<'a>(
    users: impl Iterator<Item = &'a crate::state::User>,
    nodes: impl Iterator<Item = &'a crate::state::Node>,
) -> Topology {
    let users = users
        .map(|u| TopoUser {
            id: u.id,
            name: u.name.clone(),
            email: (!u.email.is_empty()).then(|| u.email.clone()),
        })
        .collect();
    let nodes = nodes
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
        let (pol, first) = {
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
            (pol, first)
        };
        let topo = topology_for(self, &self.state());
        if first {
            // Never happens after `set_policy` (it installs a compiled
            // result), but a policy must not be served uncompiled.
            let c = policy::compile_bounded(&pol, &topo)
                .unwrap_or_else(|_| policy::compile(&Policy::deny_all(), &topo));
            self.install_compiled(&pol, Ok(c), Duration::ZERO);
            return;
        }
        // The compile runs on a blocking thread: on a one-core router a
        // long one would otherwise stall every map stream and DERP relay
        // on that executor thread. Sessions serve the previous result
        // until it is ready, then reconcile (PolicyRefresh).
        let Some(me) = self.me.upgrade() else {
            Live::lock(&self.policy).compiling = false;
            return;
        };
        smol::spawn(async move {
            let t0 = Instant::now();
            let p = pol.clone();
            let res = smol::unblock(move || policy::compile_bounded(&p, &topo)).await;
            if me.install_compiled(&pol, res, t0.elapsed()) {
                me.hub.notify(Change::PolicyRefresh);
            }
        })
        .detach();
    }

    /// Installs a recompile's result if `pol` is still the policy in force;
    /// a policy that no longer compiles (the tailnet grew past its budget)
    /// keeps the last good result and says so loudly.
    fn install_compiled(
        &self,
        pol: &Arc<Policy>,
        res: Result<Compiled, policy::PolicyError>,
        took: Duration,
    ) -> bool {
        crate::metrics::policy_compiled(took);
        let mut live = Live::lock(&self.policy);
        live.compiling = false;
        live.last_compile = Some(Instant::now());
        live.min_interval = (took * 2).clamp(MIN_RECOMPILE, Duration::from_secs(5));
        // A policy swapped in meanwhile wins over this result.
        if !live.policy.as_ref().is_some_and(|p| Arc::ptr_eq(p, pol)) {
            return false;
        }
        match res {
            Ok(c) => {
                let c = Arc::new(c);
                self.hub.set_view(Some(c.clone()));
                live.compiled = Some(c);
                live.generation += 1;
                if live
                    .error
                    .as_deref()
                    .is_some_and(|e| e.starts_with(NO_LONGER))
                {
                    info!("policy compiles again for this tailnet");
                    live.error = None;
                }
                true
            }
            Err(e) => {
                let msg = format!("{NO_LONGER}; the last good compile stays in force: {e}");
                if live.error.as_deref() != Some(msg.as_str()) {
                    error!("{msg}");
                }
                live.error = Some(msg);
                false
            }
        }
    }

    /// Parses, checks and compiles a policy text against the current
    /// tailnet, without holding the state lock while it works.
    fn prepare_policy(&self, text: &str) -> Result<(Arc<Policy>, Arc<Compiled>), String> {
        let topo = topology_for(self, &self.state());
        let p = policy::parse_and_check(text, &topo).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let c = policy::compile_bounded(&p, &topo).map_err(|e| e.to_string())?;
        crate::metrics::policy_compiled(t0.elapsed());
        Ok((Arc::new(p), Arc::new(c)))
    }

    /// `policy set` in database mode: checks and compiles the text first,
    /// then stores it (with `extra` ops in the same commit), then makes it
    /// the policy in force. A policy that would not compile is never stored.
    pub fn set_policy_stored(
        &self,
        text: &str,
        extra: Vec<crate::state::Op<'_>>,
    ) -> Result<(), SetPolicyError> {
        let prepared = self.prepare_policy(text).map_err(SetPolicyError::Invalid)?;
        let mut ops = vec![crate::state::Op::PutMeta(
            META_POLICY,
            text.as_bytes().to_vec(),
        )];
        ops.extend(extra);
        self.state()
            .store
            .apply(&ops)
            .map_err(|e| SetPolicyError::Storage(e.to_string()))?;
        self.install_policy(Some(prepared), Some(text));
        Ok(())
    }

    /// Validates and activates a policy text; on error the previous policy
    /// stays in force. `None` removes the policy (allow-all).
    pub fn set_policy(&self, text: Option<&str>) -> Result<(), String> {
        let prepared = match text {
            Some(t) => Some(self.prepare_policy(t)?),
            None => None,
        };
        self.install_policy(prepared, text);
        Ok(())
    }

    fn install_policy(&self, prepared: Option<(Arc<Policy>, Arc<Compiled>)>, text: Option<&str>) {
        {
            let mut live = Live::lock(&self.policy);
            match prepared {
                Some((p, c)) => {
                    live.policy = Some(p);
                    live.compiled = Some(c);
                    live.stale = false;
                    live.last_compile = Some(Instant::now());
                }
                None => {
                    live.policy = None;
                    live.compiled = None;
                }
            }
            live.text = text.map(String::from);
            live.error = None;
            live.generation += 1;
            // Under the same lock as `live`, so the hub never offers
            // patches by an older policy than a session may read.
            self.hub
                .set_view(live.policy.as_ref().and(live.compiled.clone()));
        }
        self.hub.notify(Change::Everything);
    }

    /// At start, a configured policy that cannot be used: the server runs
    /// deny-all (never allow-all) and says why in the log and in
    /// `policy get`, so the operator can fix it through the running server.
    fn fall_back_to_deny_all(&self, text: Option<&str>, why: String) {
        let topo = topology_for(self, &self.state());
        let deny = Arc::new(Policy::deny_all());
        let c = Arc::new(policy::compile(&deny, &topo));
        self.install_policy(Some((deny, c)), text);
        error!("{why}; NO TRAFFIC IS ALLOWED until a policy that works is set");
        Live::lock(&self.policy).error = Some(format!("{why}; no traffic is allowed"));
    }

    /// Why the policy in force is not the configured one, if it is not.
    pub fn policy_error(&self) -> Option<String> {
        Live::lock(&self.policy).error.clone()
    }

    /// The parsed policy in force, if any.
    pub fn current_policy(&self) -> Option<Arc<Policy>> {
        Live::lock(&self.policy).policy.clone()
    }

    pub fn policy_text(&self) -> Option<String> {
        Live::lock(&self.policy).text.clone()
    }
}

/// Start of the error kept when a topology change makes the policy too
/// large to compile.
const NO_LONGER: &str = "the policy no longer compiles for this tailnet";

/// Why `policy set` failed.
#[derive(Debug)]
pub enum SetPolicyError {
    /// The text does not parse, its tests fail, or it is too large.
    Invalid(String),
    Storage(String),
}

/// Key of the policy in the database's meta table (`policy.mode: database`).
pub const META_POLICY: &str = "policy";

/// Loads the configured policy at start-up. One that cannot be used
/// (unreadable, invalid, too large to compile) does not stop the start: a
/// server that cannot start cannot be fixed through its API, so it runs
/// deny-all instead and says so (see `fall_back_to_deny_all`).
pub fn load_initial(server: &Server) -> Result<(), String> {
    if server.cfg.policy_mode == "database" {
        let stored = server
            .state()
            .store
            .get_meta(META_POLICY)
            .map_err(|e| e.to_string())?;
        if let Some(bytes) = stored {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if let Err(e) = server.set_policy(Some(&text)) {
                server.fall_back_to_deny_all(Some(&text), format!("stored policy: {e}"));
            }
        }
        return Ok(());
    }
    let Some(path) = &server.cfg.policy_path else {
        return Ok(());
    };
    Live::lock(&server.policy).file_mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let res = read_policy_file(path).and_then(|text| {
        server
            .set_policy(Some(&text))
            .map_err(|e| format!("policy.path {}: {e}", path.display()))
    });
    match res {
        Ok(()) => info!("policy loaded from {}", path.display()),
        Err(e) => server.fall_back_to_deny_all(None, e),
    }
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
            // Parsing and compiling are CPU work: off the executor.
            smol::unblock(move || reload_if_changed(&server, false)).await;
        }
    })
    .detach();
}
