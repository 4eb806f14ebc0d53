//! `POST /machine/register` (protocol/register.md): pre-auth keys, restart
//! of a known node, node-key rotation, expiry and logout. Every answer is
//! HTTP 200 with a RegisterResponse carrying `Error` (empty when fine),
//! except malformed requests and unsupported versions (400).

use crate::control::{Change, Server};
use crate::http::h2srv::ConnCtx;
use crate::http::MIN_CAPVER;
use crate::keys::NodeKey;
use crate::state::imported::Unverified;
use crate::state::ops::ERR_INVALID_KEY;
use crate::state::{now, Node, Op, RegisterMethod, State};
use crate::tailcfg::{self, Hostinfo, RegisterRequest, RegisterResponse};
use crate::timefmt::{parse_rfc3339, rfc3339};
use log::{info, warn};

/// Handles one request; returns the status and the JSON body.
pub async fn handle(server: &Server, ctx: &ConnCtx, body: &[u8]) -> (u16, Vec<u8>) {
    let req: RegisterRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return (400, format!("invalid register request: {e}\n").into_bytes()),
    };
    if req.version < MIN_CAPVER as u32 {
        return (400, b"unsupported client version\n".to_vec());
    }
    if req.node_key.is_zero() {
        return (400, b"missing NodeKey\n".to_vec());
    }
    let commits = server.state().store.committer();
    let before = commits.queued();
    let mut checked = false;
    let mut resp = loop {
        match register(server, ctx, &req) {
            Outcome::Done(r) => break *r,
            Outcome::Wait(id) => break wait_followup(server, ctx, &req, &id).await,
            // Verified and accepted, then the request is judged again from
            // the start under the lock (the key may have been used or
            // deleted meanwhile). A second demand means it changed: refuse.
            Outcome::Verify(k) if !checked => {
                checked = true;
                if let Err(e) = check_imported(server, k).await {
                    break error_response(e);
                }
            }
            Outcome::Verify(_) => break error_response(ERR_INVALID_KEY),
        }
    };
    // Acknowledged only once durable: registrations queued meanwhile
    // share one fsync (group commit), awaited without the state lock.
    let after = commits.queued();
    if after > before {
        if let Err(e) = commits.wait_async(after).await {
            warn!("register: {e}");
            resp = error_response(format!("storage error: {e}"));
        }
    }
    if resp.error.is_empty() && resp.machine_authorized {
        ctx.set_identified();
        let id = server
            .state()
            .node_by_node_key(&req.node_key.0)
            .map(|n| n.id);
        if let Some(id) = id {
            server.auto_approve(id);
        }
    }
    match serde_json::to_vec(&resp) {
        Ok(v) => (200, v),
        Err(_) => (500, Vec::new()),
    }
}

enum Outcome {
    Done(Box<RegisterResponse>),
    /// Hold the request until pending registration `id` is approved.
    Wait(String),
    /// The request needs an imported key that still has its bcrypt hash:
    /// verify it without the state lock, then register again.
    Verify(Unverified),
}

/// Verifies an imported pre-auth key (tens of ms of bcrypt) without the
/// state lock, on a blocking thread, holding the [`crate::bcrypt::Slot`]
/// (taken: refused, so a flood of guesses at a known prefix cannot stall
/// the server, and not logged, so it cannot flood the log); on success the key gets
/// tinyscale's own hash and is checked like any other from then on.
async fn check_imported(server: &Server, k: Unverified) -> Result<(), String> {
    let Some(slot) = crate::bcrypt::Slot::take() else {
        return Err("too many auth key checks in progress; try again later".into());
    };
    let k = std::sync::Arc::new(k);
    let job = k.clone();
    let ok = crate::control::unblock_bool(Box::new(move || {
        let ok = job.verify();
        drop(slot);
        ok
    }))
    .await;
    if !ok {
        info!("register: rejected auth key: {ERR_INVALID_KEY}");
        return Err(ERR_INVALID_KEY.into());
    }
    server
        .state()
        .accept_imported_key(&k)
        .map_err(|e| format!("storage error: {e}"))
}

impl From<RegisterResponse> for Outcome {
    fn from(r: RegisterResponse) -> Self {
        Outcome::Done(Box::new(r))
    }
}

fn auth_url(server: &Server, id: &str) -> String {
    format!(
        "{}/register/{id}",
        server.cfg.server_url.trim_end_matches('/')
    )
}

/// Starts an interactive registration and answers with its AuthURL.
fn start_interactive(
    server: &Server,
    ctx: &ConnCtx,
    req: &RegisterRequest,
    hostinfo: &Hostinfo,
) -> Outcome {
    let r = crate::control::interactive::Request {
        machine_key: ctx.machine_key,
        node_key: req.node_key.0,
        old_node_key: req.old_node_key.0,
        hostinfo: hostinfo.clone(),
        ephemeral: req.ephemeral,
        version: req.version,
        source: ctx.peer,
    };
    match server.pending.start(r) {
        Ok(id) => {
            info!("register: interactive login pending as {id}");
            RegisterResponse {
                auth_url: auth_url(server, &id),
                ..Default::default()
            }
            .into()
        }
        Err(e) => error_response(e).into(),
    }
}

/// A follow-up: wait for approval, then answer success; an unknown or
/// expired registration gets a fresh AuthURL.
async fn wait_followup(
    server: &Server,
    ctx: &ConnCtx,
    req: &RegisterRequest,
    id: &str,
) -> RegisterResponse {
    // Held for approval: the HTTP/2 driver's identify deadline waits for
    // a request in flight; the connection still counts against the caps.
    if let Some(node_id) = server.pending.wait(id, &ctx.machine_key).await {
        let st = server.state();
        if let Some(n) = st.nodes.get(&node_id) {
            if n.node_key == req.node_key.0 {
                return success(server, &st, n);
            }
        }
    }
    let hostinfo = req.hostinfo.clone().unwrap_or_default();
    match start_interactive(server, ctx, req, &hostinfo) {
        Outcome::Done(r) => *r,
        _ => error_response("registration failed"),
    }
}

fn error_response(msg: impl Into<String>) -> RegisterResponse {
    RegisterResponse {
        error: msg.into(),
        ..Default::default()
    }
}

/// The success answer for `node`.
fn success(server: &Server, st: &State, n: &Node) -> RegisterResponse {
    let p = crate::control::netmap::profile_for(&server.cfg, st, n, true);
    RegisterResponse {
        user: tailcfg::User {
            id: p.id,
            display_name: p.display_name.clone(),
            profile_pic_url: p.profile_pic_url.clone(),
            created: rfc3339(
                st.users
                    .get(&n.user)
                    .map(|u| u.created)
                    .unwrap_or(n.created),
            ),
        },
        login: tailcfg::Login {
            id: p.id,
            provider: String::new(),
            login_name: p.login_name,
            display_name: p.display_name,
            profile_pic_url: p.profile_pic_url,
        },
        node_key_expired: false,
        machine_authorized: true,
        auth_url: String::new(),
        error: String::new(),
    }
}

fn register(server: &Server, ctx: &ConnCtx, req: &RegisterRequest) -> Outcome {
    let t = now();
    let mut st = server.state();
    let hostinfo = req.hostinfo.clone().unwrap_or_default();
    let expiry_req = req.expiry.as_deref().and_then(parse_rfc3339).unwrap_or(0);
    let by_key = st.node_by_node_key(&req.node_key.0).map(|n| n.id);
    if !req.followup.is_empty() && by_key.is_none() {
        drop(st);
        return match crate::control::interactive::id_from_url(&req.followup) {
            Some(id) => Outcome::Wait(id.to_string()),
            None => start_interactive(server, ctx, req, &hostinfo),
        };
    }

    if let Some(id) = by_key {
        let n = st.nodes[&id].clone();
        if n.machine_key != ctx.machine_key {
            return error_response("node key belongs to a different machine").into();
        }
        // Logout is checked before any auth key handling (trap 14).
        if expiry_req != 0 && expiry_req < t {
            return logout(server, &mut st, n, t).into();
        }
        if expiry_req > t {
            // SetExpirySooner: shortening only.
            if n.expiry != 0 && expiry_req > n.expiry {
                return error_response("extending key is not allowed").into();
            }
            let mut n2 = n.clone();
            n2.expiry = expiry_req;
            return commit_node(server, &mut st, n2, None, Change::NodeUpsert(id)).into();
        }
        if !n.is_expired(t) {
            // Known node restarting: success even if its auth key is spent.
            let mut n2 = n.clone();
            apply_hostinfo(&mut n2, &hostinfo);
            if n2 != n {
                if let Err(e) = st.store.apply(&[Op::PutNode(&n2)]) {
                    return error_response(format!("storage error: {e}")).into();
                }
                st.nodes.insert(id, n2.clone());
                drop(st);
                server.hub.notify(Change::NodeUpsert(id));
                st = server.state();
            }
            let n2 = st.nodes.get(&id).cloned().unwrap_or(n2);
            return success(server, &st, &n2).into();
        }
        // Expired: re-authenticate with a key, else tell it to rotate.
        match req
            .auth
            .as_ref()
            .map(|a| a.auth_key.as_str())
            .filter(|k| !k.is_empty())
        {
            Some(secret) => return reauth(server, &mut st, n, secret, req, &hostinfo, t),
            None => {
                return RegisterResponse {
                    node_key_expired: true,
                    machine_authorized: false,
                    ..Default::default()
                }
                .into()
            }
        }
    }

    // Rotation: unknown NodeKey, known OldNodeKey of the same machine.
    if !req.old_node_key.is_zero() {
        if let Some(n) = st.node_by_node_key(&req.old_node_key.0).cloned() {
            if n.machine_key == ctx.machine_key {
                return match req
                    .auth
                    .as_ref()
                    .map(|a| a.auth_key.as_str())
                    .filter(|k| !k.is_empty())
                {
                    Some(secret) => reauth(server, &mut st, n, secret, req, &hostinfo, t),
                    None if !n.is_expired(t) => {
                        // Seamless renewal of a valid node: the old key proves it.
                        let mut n2 = n;
                        n2.old_node_key = n2.node_key;
                        n2.node_key = req.node_key.0;
                        apply_hostinfo(&mut n2, &hostinfo);
                        let id = n2.id;
                        commit_node(server, &mut st, n2, None, Change::NodeUpsert(id)).into()
                    }
                    None => {
                        drop(st);
                        start_interactive(server, ctx, req, &hostinfo)
                    }
                };
            }
        }
    }

    let Some(secret) = req
        .auth
        .as_ref()
        .map(|a| a.auth_key.as_str())
        .filter(|k| !k.is_empty())
    else {
        drop(st);
        return start_interactive(server, ctx, req, &hostinfo);
    };
    if let Some(k) = st.unverified_imported_key(secret) {
        return Outcome::Verify(k);
    }
    let key = match st.validate_preauth_key(secret) {
        Ok(k) => k.clone(),
        Err(e) => {
            info!("register: rejected auth key: {e}");
            return error_response(e.to_string()).into();
        }
    };
    if let Err(e) = check_request_tags(&key.tags, &hostinfo) {
        return error_response(e).into();
    }
    // The same machine logging in again (state kept, new node key) keeps
    // its node, IPs and name if the owner is unchanged.
    if let Some(n) = st.node_by_machine_key(&ctx.machine_key).cloned() {
        if n.user == key.user && n.tags == key.tags {
            return reauth(server, &mut st, n, secret, req, &hostinfo, t);
        }
    }
    let n = match new_node(
        server,
        &st,
        NewNode {
            machine_key: ctx.machine_key,
            node_key: req.node_key.0,
            user: key.user,
            tags: key.tags.clone(),
            hostinfo: &hostinfo,
            ephemeral: req.ephemeral || key.ephemeral,
            version: req.version,
            auth_key: key.id,
        },
        t,
    ) {
        Ok(n) => n,
        Err(e) => return error_response(e).into(),
    };
    let id = n.id;
    info!(
        "register: new node {} {} ({:?}, {:?})",
        n.id,
        n.given_name,
        n.ipv4,
        NodeKey(n.node_key)
    );
    commit_node(server, &mut st, n, Some(key), Change::NodeUpsert(id)).into()
}

/// What a brand-new node is made of (pre-auth key or interactive approval).
pub(crate) struct NewNode<'a> {
    pub machine_key: [u8; 32],
    pub node_key: [u8; 32],
    pub user: u64,
    pub tags: Vec<String>,
    pub hostinfo: &'a Hostinfo,
    pub ephemeral: bool,
    pub version: u32,
    pub auth_key: u64,
}

/// Builds a new node: next ID, fresh addresses, a unique DNS label, the
/// default expiry, and what its Hostinfo reports. Not yet stored.
pub(crate) fn new_node(
    server: &Server,
    st: &State,
    f: NewNode<'_>,
    t: i64,
) -> Result<Node, String> {
    let (v4, v6) = crate::state::ipalloc::allocate(st, server.cfg.prefix_v4, server.cfg.prefix_v6)
        .map_err(|e| e.to_string())?;
    let hostname = f.hostinfo.hostname.clone();
    let mut n = Node {
        id: st.alloc_node_id(),
        machine_key: f.machine_key,
        node_key: f.node_key,
        old_node_key: [0; 32],
        disco_key: [0; 32],
        user: f.user,
        expiry: default_expiry(server, !f.tags.is_empty(), t),
        tags: f.tags,
        ipv4: Some(v4),
        ipv6: Some(v6),
        given_name: st.unique_given_name(&hostname, 0),
        hostname,
        hostinfo: String::new(),
        endpoints: vec![],
        home_derp: 0,
        cap: f.version,
        created: t,
        last_seen: t,
        ephemeral: f.ephemeral,
        auth_key: f.auth_key,
        advertised_routes: vec![],
        approved_routes: vec![],
        register_method: if f.auth_key != 0 {
            RegisterMethod::AuthKey
        } else {
            RegisterMethod::Unknown
        },
    };
    apply_hostinfo(&mut n, f.hostinfo);
    Ok(n)
}

/// A node's key lifetime from now: none for tagged nodes, else `node.expiry`.
pub(crate) fn default_expiry(server: &Server, tagged: bool, t: i64) -> i64 {
    if tagged || server.cfg.node_expiry.is_zero() {
        0
    } else {
        t + server.cfg.node_expiry.as_secs() as i64
    }
}

/// Requested tags must be among those the key grants (until the policy's
/// tagOwners can say more).
fn check_request_tags(granted: &[String], hostinfo: &Hostinfo) -> Result<(), String> {
    let req = &hostinfo.request_tags;
    let bad: Vec<&String> = req.iter().filter(|t| !granted.contains(t)).collect();
    if bad.is_empty() {
        Ok(())
    } else {
        let list: Vec<&str> = bad.iter().map(|s| s.as_str()).collect();
        Err(format!(
            "requested tags [{}] are invalid or not permitted",
            list.join(" ")
        ))
    }
}

/// Re-authentication with an auth key: same node ID, IPs and name; new
/// node key and expiry.
fn reauth(
    server: &Server,
    st: &mut std::sync::MutexGuard<'_, State>,
    n: Node,
    secret: &str,
    req: &RegisterRequest,
    hostinfo: &Hostinfo,
    t: i64,
) -> Outcome {
    if let Some(k) = st.unverified_imported_key(secret) {
        return Outcome::Verify(k);
    }
    let key = match st.validate_preauth_key(secret) {
        Ok(k) => k.clone(),
        Err(e) => return error_response(e.to_string()).into(),
    };
    if let Err(e) = check_request_tags(&key.tags, hostinfo) {
        return error_response(e).into();
    }
    let mut n2 = n.clone();
    if n2.node_key != req.node_key.0 {
        n2.old_node_key = n2.node_key;
        n2.node_key = req.node_key.0;
    }
    n2.user = key.user;
    n2.tags = key.tags.clone();
    n2.expiry = default_expiry(server, !key.tags.is_empty(), t);
    n2.auth_key = key.id;
    n2.register_method = RegisterMethod::AuthKey;
    n2.ephemeral = n.ephemeral || req.ephemeral || key.ephemeral;
    apply_hostinfo(&mut n2, hostinfo);
    let id = n2.id;
    commit_node(server, st, n2, Some(key), Change::NodeUpsert(id)).into()
}

fn logout(
    server: &Server,
    st: &mut std::sync::MutexGuard<'_, State>,
    n: Node,
    t: i64,
) -> RegisterResponse {
    let id = n.id;
    if n.ephemeral {
        if let Err(e) = st.delete_node(id) {
            return error_response(e.to_string());
        }
        server.hub.disconnect(id);
        server.hub.notify(Change::NodeRemoved(id));
        return RegisterResponse {
            node_key_expired: true,
            ..Default::default()
        };
    }
    let mut n2 = n;
    n2.expiry = t;
    match st.store.apply(&[Op::PutNode(&n2)]) {
        Ok(()) => {
            st.nodes.insert(id, n2);
            server.hub.disconnect(id);
            server.mark_expiry_announced(id);
            server.hub.notify(Change::NodeUpsert(id));
            RegisterResponse {
                node_key_expired: true,
                ..Default::default()
            }
        }
        Err(e) => error_response(format!("storage error: {e}")),
    }
}

/// Persists the node (and marks a single-use key used) in one batch, then
/// updates memory and tells the hub.
fn commit_node(
    server: &Server,
    st: &mut std::sync::MutexGuard<'_, State>,
    n: Node,
    key: Option<crate::state::PreAuthKey>,
    change: Change,
) -> RegisterResponse {
    let mut key = key;
    if let Some(k) = key.as_mut() {
        k.used = true;
    }
    let mut ops = vec![Op::PutNode(&n)];
    if let Some(k) = key.as_ref() {
        ops.push(Op::PutKey(k));
    }
    if let Err(e) = st.store.apply(&ops) {
        warn!("register: storage error: {e}");
        return error_response(format!("storage error: {e}"));
    }
    drop(ops);
    if let Some(k) = key {
        st.keys.insert(k.id, k);
    }
    st.next_node_id = st.next_node_id.max(n.id + 1);
    st.nodes.insert(n.id, n.clone());
    let resp = success(server, st, &n);
    server.hub.notify(change);
    resp
}

/// Copies what the client reports in Hostinfo onto the node.
/// Copies what the client reports in Hostinfo onto the node; the stored
/// Hostinfo is the decoded one (known fields only, ≤ MAX_HOSTINFO).
pub fn apply_hostinfo(n: &mut Node, hostinfo: &Hostinfo) {
    if hostinfo.is_empty() {
        return;
    }
    if !hostinfo.hostname.is_empty() {
        n.hostname = hostinfo.hostname.clone();
    }
    let d = hostinfo.preferred_derp();
    if d > 0 {
        n.home_derp = d;
    }
    n.advertised_routes = hostinfo.routable_ips.clone();
    n.hostinfo = merged_hostinfo(&n.hostinfo, hostinfo);
}

/// The Hostinfo to store: the new one replaces the old (a Go client sends
/// its whole Hostinfo each time and omits empty fields, so an absent
/// `RoutableIPs`, `RequestTags` or `Services` means none), except the
/// fields that a later Hostinfo may leave out without meaning "cleared",
/// carried over from `old_json`: what describes the build and machine
/// (they cannot change while a client runs), and `NetInfo`, which Go
/// clients since 1.66 send only when it changed (Headscale keeps the
/// previous NetInfo for this reason). tailscale-rs reports its version
/// only in the RegisterRequest's Hostinfo and sends a nearly empty one
/// with its map requests.
fn merged_hostinfo(old_json: &str, new: &Hostinfo) -> String {
    fn is_default<T: Default + PartialEq>(v: &T) -> bool {
        *v == T::default()
    }
    let old: Hostinfo = serde_json::from_str(old_json).unwrap_or_default();
    let mut out = new.clone();
    macro_rules! kept_when_absent {
        ($($f:ident),*) => {$(
            if is_default(&out.$f) {
                out.$f = old.$f;
            }
        )*};
    }
    kept_when_absent!(
        net_info,
        ipn_version,
        os,
        os_version,
        container,
        env,
        distro,
        distro_version,
        distro_code_name,
        app,
        desktop,
        package,
        device_model,
        machine,
        go_arch,
        go_arch_var,
        go_version,
        cloud,
        userspace,
        userspace_router
    );
    serde_json::to_string(&out).unwrap_or_default()
}
