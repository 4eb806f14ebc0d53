//! `POST /machine/map` (protocol/map.md): the streaming long poll (a full
//! map, then deltas and keep-alives), lite updates of endpoints / hostinfo /
//! disco key, and one-shot full maps.

use crate::control::hub::{IdSet, Known, Subscription};
use crate::control::netmap::{self, peer_json, render_node, to_raw};
use crate::control::policy::View;
use crate::control::{Change, Server, SharedServer};
use crate::http::h2conn::Responder;
use crate::http::h2srv::{self, ConnCtx};
use crate::http::MIN_CAPVER;
use crate::keys::{DiscoKey, NodeKey};
use crate::state::{now, Node, Op};
use crate::tailcfg::{self, MapRequest, MapResponse, PeerChange, SharedRaw};
use crate::timefmt::rfc3339;
use crate::wire::mapframe;
use async_io::Timer;
use futures_lite::future::{self, FutureExt};
use log::{debug, info};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// Keep-alive base interval; the client's watchdog fires after 120 s.
const KEEPALIVE: Duration = Duration::from_secs(50);
/// How long a node may be gone before peers are told it is offline.
const OFFLINE_GRACE: Duration = Duration::from_secs(10);
/// Full maps built or being sent at once. A full map is O(peers): ~1.5 MB
/// at 2,000 allow-all peers, and it stays in memory until the client has
/// read it, so when every node reconnects at once (a server restart) the
/// peak is this many maps instead of one per node.
pub const FULL_MAPS_IN_FLIGHT: usize = 16;
/// A slow reader gives its full-map slot up after this and finishes its
/// map without one, so stalled clients cannot hold every other node back.
const FULL_MAP_SLOT_HOLD: Duration = Duration::from_secs(5);

pub async fn handle(
    server: SharedServer,
    ctx: Arc<ConnCtx>,
    body: Vec<u8>,
    mut respond: Responder,
) -> io::Result<()> {
    let parsed = serde_json::from_slice::<MapRequest>(&body);
    drop(body); // not kept alive for the life of a long poll
    let req: MapRequest = match parsed {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("invalid map request: {e}\n").into_bytes();
            return h2srv::reply(&mut respond, 400, "text/plain", msg).await;
        }
    };
    if req.version < MIN_CAPVER as u32 {
        let msg = b"unsupported client version\n".to_vec();
        return h2srv::reply(&mut respond, 400, "text/plain", msg).await;
    }
    let found = {
        let st = server.state();
        st.node_by_node_key(&req.node_key.0)
            .filter(|n| n.machine_key == ctx.machine_key)
            .map(|n| (n.id, n.is_expired(now())))
    };
    let Some((node_id, expired)) = found else {
        let msg = b"node not found\n".to_vec();
        return h2srv::reply(&mut respond, 404, "text/plain", msg).await;
    };
    if expired {
        // As on register: an expired node key is authorised for nothing.
        return Box::pin(answer_expired(&server, node_id, &req, respond)).await;
    }
    ctx.set_identified();
    let commits = server.state().store.committer();
    let durable = apply_update(&server, node_id, &req);
    let zstd = req.compress == "zstd";
    if !req.stream {
        if durable && commits.wait_async(commits.queued()).await.is_err() {
            let msg = b"storage error\n".to_vec();
            return h2srv::reply(&mut respond, 500, "text/plain", msg).await;
        }
        if req.omit_peers {
            // Lite update: stored and fanned out above; the body is ignored.
            return h2srv::reply(&mut respond, 200, "text/plain", Vec::new()).await;
        }
        // One-shot full map: it takes a full-map slot like a stream's
        // first map, so a loop of them cannot build maps without bound.
        respond.start(200, "application/octet-stream", false)?;
        let no_cache = &mut None;
        let known = &Known::default();
        Box::pin(send_full_map(
            &server,
            &mut respond,
            node_id,
            known,
            no_cache,
            false,
            zstd,
        ))
        .await?;
        return respond.send(&[], true).await;
    }
    let (sub, was_online) = server.hub.subscribe(node_id);
    if !was_online {
        server.hub.notify(Change::NodePatch(node_id));
        server.reelect_and_notify();
    }
    info!("map: node {node_id} streaming (capver {})", req.version);
    let keep_alive = req.keep_alive;
    drop(req);
    let result = stream(&server, &sub, &mut respond, zstd, keep_alive).await;
    if server.hub.unsubscribe(node_id, sub.seq) {
        went_offline(server.clone(), node_id, sub.seq);
    }
    debug!("map: node {node_id} stream ended: {result:?}");
    result
}

/// The whole answer to a map request whose node key has expired (by
/// `nodes expire`, its expiry date, or a logout): nothing it reports is
/// stored or fanned out (no Hostinfo, routes, endpoints; no auto-approval);
/// a lite update gets an empty 200, anything else one message with its
/// own node (whose past KeyExpiry makes a real client ask for a login),
/// no peers, a packet filter that admits nothing, and the end of the body.
async fn answer_expired(
    server: &Server,
    node_id: u64,
    req: &MapRequest,
    mut respond: Responder,
) -> io::Result<()> {
    debug!("map: node {node_id} has an expired key: self node only");
    if req.omit_peers && !req.stream {
        return h2srv::reply(&mut respond, 200, "text/plain", Vec::new()).await;
    }
    let t = now();
    let msg = {
        let st = server.state();
        st.nodes.get(&node_id).map(|me| {
            let mut filters = BTreeMap::new();
            filters.insert("base".to_string(), to_raw(&Vec::<()>::new()));
            MapResponse {
                node: Some(to_raw(&render_node(server, me, true, t))),
                packet_filters: Some(filters),
                control_time: Some(rfc3339(t)),
                ..Default::default()
            }
        })
    };
    let Some(msg) = msg else {
        return h2srv::reply(&mut respond, 404, "text/plain", Vec::new()).await;
    };
    respond.start(200, "application/octet-stream", false)?;
    respond
        .send(&frame(&msg, req.compress == "zstd"), true)
        .await
}

/// Stores what a MapRequest reports and tells whoever must know.
/// Returns whether it queued a change that must be durable before the
/// request is answered.
fn apply_update(server: &Server, id: u64, req: &MapRequest) -> bool {
    let mut st = server.state();
    let Some(old) = st.nodes.get(&id).cloned() else {
        return false;
    };
    let mut n = old.clone();
    if !req.disco_key.is_zero() {
        n.disco_key = req.disco_key.0;
    }
    if let Some(eps) = &req.endpoints {
        // Tolerant: skip anything that is not an ip:port string.
        n.endpoints = eps
            .iter()
            .filter(|s| s.parse::<std::net::SocketAddr>().is_ok())
            .cloned()
            .collect();
    }
    n.cap = req.version;
    if let Some(h) = &req.hostinfo {
        crate::control::register::apply_hostinfo(&mut n, h);
    }
    if n == old {
        return false;
    }
    let patch_only = Node {
        endpoints: old.endpoints.clone(),
        disco_key: old.disco_key,
        home_derp: old.home_derp,
        cap: old.cap,
        ..n.clone()
    } == old;
    n.last_seen = now();
    let routes_changed = n.advertised_routes != old.advertised_routes;
    // Endpoints, DERP home, disco key and Hostinfo churn (NetInfo,
    // versions) are soft state the client resends on every poll: no fsync
    // per change for them, so a node looping updates costs no disk
    // writes. Advertised routes (auto-approval) are stored durably.
    let soft = patch_only || !routes_changed;
    let stored = if soft {
        st.store.apply_relaxed(&[Op::PutNode(&n)])
    } else {
        st.store.apply(&[Op::PutNode(&n)])
    };
    if let Err(e) = stored {
        log::warn!("map: storing update of node {id}: {e}");
        return false;
    }
    st.nodes.insert(id, n);
    drop(st);
    if patch_only {
        server.hub.notify(Change::NodePatch(id));
    } else if routes_changed {
        server.hub.notify(Change::NodeUpsert(id));
    } else {
        // Hostinfo churn (NetInfo, versions): peers need the node again,
        // the policy does not need recompiling; at most once per window.
        server.churn.node_info(server, id);
    }
    if routes_changed {
        server.auto_approve(id);
    }
    !soft
}

/// After a stream ends: peers learn the node is offline after a grace
/// period; an ephemeral node is deleted after the inactivity timeout.
fn went_offline(server: SharedServer, id: u64, _seq: u64) {
    let ephemeral = {
        let mut st = server.state();
        st.nodes
            .update(id, |n| {
                n.last_seen = now();
                n.ephemeral
            })
            .unwrap_or(false)
    };
    // What follows, in time order: peers learn the node is offline after
    // the grace period; an ephemeral node is deleted after the inactivity
    // timeout, which may be the shorter of the two.
    let mut steps = vec![(OFFLINE_GRACE, false)];
    if ephemeral {
        steps.push((server.cfg.ephemeral_inactivity_timeout, true));
        steps.sort();
    }
    // Holds the server weakly: a server shutting down (or restarting in the
    // same process) must not be kept alive for the grace period.
    let weak = std::sync::Arc::downgrade(&server);
    drop(server);
    smol::spawn(async move {
        let mut waited = Duration::ZERO;
        for (at, delete) in steps {
            Timer::after(at.saturating_sub(waited)).await;
            waited = at;
            let Some(server) = weak.upgrade() else { return };
            if server.hub.is_online(id) {
                return;
            }
            if !delete {
                server.hub.notify(Change::NodePatch(id));
                server.reelect_and_notify();
                continue;
            }
            let deleted = {
                let mut st = server.state();
                st.nodes.get(&id).is_some_and(|n| n.ephemeral) && st.delete_node(id).is_ok()
            };
            if deleted {
                info!("ephemeral node {id} removed after inactivity");
                server.hub.notify(Change::NodeRemoved(id));
                server.reelect_and_notify();
            }
            return;
        }
    })
    .detach();
}

/// Which peers one viewer may see, per the policy in force.
struct Vis {
    all: bool,
    me: u64,
    peers: Vec<u64>,
}

impl Vis {
    fn new(view: &View, me: u64) -> Vis {
        match view {
            View::AllowAll => Vis {
                all: true,
                me,
                peers: vec![],
            },
            View::Compiled(c) => Vis {
                all: false,
                me,
                peers: c.peers(me),
            },
        }
    }
    fn sees(&self, peer: u64) -> bool {
        peer != self.me && (self.all || self.peers.binary_search(&peer).is_ok())
    }

    /// The session's visibility for policy generation `gen`, computed once
    /// per generation instead of once per message (it allocates and sorts
    /// the peer list).
    fn cached<'a>(cache: &'a mut Option<(u64, Vis)>, view: &View, gen: u64, me: u64) -> &'a Vis {
        if !matches!(cache, Some((g, _)) if *g == gen) {
            *cache = Some((gen, Vis::new(view, me)));
        }
        &cache.as_ref().expect("just set").1
    }
}

/// A peer's JSON for this viewer: the shared cached render unless the
/// policy gives this viewer a different view of the peer's routes.
fn peer_for(server: &Server, view: &View, viewer: u64, n: &Node, t: i64) -> SharedRaw {
    if let View::Compiled(c) = view {
        if !n.approved_routes.is_empty() || c.peer_cap_map(n.id).is_some() {
            let mut node = render_node(server, n, false, t);
            node.allowed_ips = c
                .peer_allowed_ips(viewer, n.id)
                .iter()
                .map(|p| p.to_string())
                .collect();
            node.primary_routes = c
                .peer_primary_routes(viewer, n.id)
                .iter()
                .map(|p| p.to_string())
                .collect();
            node.cap_map = c
                .peer_cap_map(n.id)
                .and_then(|v| serde_json::from_value(v).ok());
            return to_raw(&node);
        }
    }
    peer_json(server, n, t)
}

/// The self node, with the policy's CapMap and routes.
fn self_for(server: &Server, view: &View, n: &Node, t: i64) -> SharedRaw {
    let mut node = render_node(server, n, true, t);
    if let View::Compiled(c) = view {
        node.cap_map = serde_json::from_value(c.cap_map(n.id)).ok();
        node.primary_routes = c
            .primary_routes(n.id)
            .iter()
            .map(|p| p.to_string())
            .collect();
    }
    to_raw(&node)
}

fn filters_for(view: &View, id: u64) -> BTreeMap<String, SharedRaw> {
    let mut filters = BTreeMap::new();
    let f = match view {
        View::AllowAll => netmap::allow_all_filter(),
        View::Compiled(c) => to_raw(&c.packet_filter(id)),
    };
    filters.insert("base".to_string(), f);
    filters
}

fn ssh_for(server: &Server, view: &View, id: u64) -> Option<SharedRaw> {
    match view {
        View::AllowAll => None,
        View::Compiled(c) => c
            .ssh_policy_with_url(id, &server.cfg.server_url)
            .map(|v| to_raw(&v)),
    }
}

fn frame(m: &MapResponse, zstd: bool) -> Vec<u8> {
    let json = serde_json::to_vec(m).unwrap_or_else(|_| b"{}".to_vec());
    let mut out = Vec::with_capacity(json.len() + 16);
    mapframe::emit_message(&json, zstd, &mut out);
    out
}

/// A complete snapshot for `id`; fills `known` with the peers sent.
fn full_map(
    server: &Server,
    id: u64,
    known: &Known,
    vis_cache: &mut Option<(u64, Vis)>,
    resync: bool,
) -> Option<MapResponse> {
    let (view, gen) = server.policy_view();
    let t = now();
    let st = server.state();
    let me = st.nodes.get(&id)?;
    let vis = Vis::cached(vis_cache, &view, gen, id);
    let mut profiles = BTreeMap::new();
    let p = netmap::profile_for(&server.cfg, &st, me, true);
    profiles.insert(p.id, p);
    let mut peers = Vec::new();
    let mut now_known = Vec::new();
    // Under a compiled policy only the viewer's peer list (~100 nodes in
    // autogroup:self) is looked up, instead of a visibility check against
    // every node of the tailnet: O(N) per map was O(N²) when every node
    // comes online at once (first maps, a restart). Both go in ascending
    // ID order, so the map is the same.
    let candidates: Box<dyn Iterator<Item = &Node>> = if vis.all {
        Box::new(st.nodes.values())
    } else {
        Box::new(vis.peers.iter().filter_map(|p| st.nodes.get(p)))
    };
    for n in candidates {
        if !vis.sees(n.id) {
            continue;
        }
        peers.push(peer_for(server, &view, id, n, t));
        now_known.push(n.id);
        let p = netmap::profile_for(&server.cfg, &st, n, false);
        profiles.entry(p.id).or_insert(p);
    }
    let now_known: IdSet = now_known.into_iter().collect();
    let previously = known.replace(now_known);
    let self_node = self_for(server, &view, me, t);
    drop(st);
    let peers_empty = peers.is_empty();
    Some(MapResponse {
        node: Some(self_node),
        derp_map: Some(crate::control::derpmap::current(server)),
        // A non-empty Peers replaces the set; an empty one means "no
        // change" (trap 10), so vanished peers go in PeersRemoved.
        peers: (!peers_empty).then_some(peers),
        // With no peers left, every peer known before is one that vanished.
        peers_removed: (peers_empty && resync && !previously.is_empty())
            .then(|| previously.iter().collect()),
        dns_config: netmap::dns_config(server).map(|d| to_raw(&d)),
        domain: netmap::dns_suffix(&server.cfg),
        collect_services: Some(false),
        packet_filters: Some(filters_for(&view, id)),
        ssh_policy: ssh_for(server, &view, id),
        user_profiles: profiles.into_values().collect(),
        control_time: Some(rfc3339(t)),
        debug: Some(tailcfg::Debug {
            disable_log_tail: true,
        }),
        ..Default::default()
    })
}

fn patch_for(server: &Server, n: &Node, t: i64) -> PeerChange {
    let online = server.hub.is_online(n.id);
    PeerChange {
        node_id: n.id,
        derp_region: Some(if n.home_derp > 0 {
            n.home_derp
        } else {
            server.cfg.derp_region_id as i32
        }),
        cap: (n.cap > 0).then_some(n.cap),
        endpoints: Some(if n.is_expired(t) {
            vec![]
        } else {
            n.endpoints.clone()
        }),
        key: Some(NodeKey(n.node_key)),
        disco_key: (n.disco_key != [0; 32]).then_some(DiscoKey(n.disco_key)),
        online: Some(online),
        last_seen: (!online && n.last_seen != 0).then(|| rfc3339(n.last_seen)),
        key_expiry: Some(rfc3339(n.expiry)),
    }
}

/// The framed message that carries only node `n`'s patch, as every
/// session that already has `n` as a peer gets it (see [`delta`]): from
/// the hub's cache, or built and cached. Call with the state lock held
/// (as for [`peer_json`]), so a render cached here is never older than
/// the node's last announced change.
fn shared_patch(server: &Server, n: &Node, t: i64, zstd: bool) -> Arc<[u8]> {
    if let Some(b) = server.hub.cached_patch(n.id, zstd) {
        return b;
    }
    let m = MapResponse {
        peers_changed_patch: Some(vec![patch_for(server, n, t)]),
        ..Default::default()
    };
    let b: Arc<[u8]> = frame(&m, zstd).into();
    server.hub.cache_patch(n.id, zstd, b.clone());
    b
}

/// A delta for one session: a message of its own, or framed bytes shared
/// with every session that is sent the identical message. Lives on the
/// stack for one message, so the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Delta {
    Own(MapResponse),
    Shared(Arc<[u8]>),
}

/// Turns a batch of changes into one delta message (None if nothing to say).
#[allow(clippy::too_many_arguments)]
fn delta(
    server: &Server,
    id: u64,
    changes: &[Change],
    known: &Known,
    vis_cache: &mut Option<(u64, Vis)>,
    seen_gen: &mut u64,
    sent: &mut Sent,
    zstd: bool,
) -> Option<Delta> {
    let (view, gen) = server.policy_view();
    let t = now();
    let st = server.state();
    let me = st.nodes.get(&id)?;
    let vis = Vis::cached(vis_cache, &view, gen, id);
    // The fan-out case: the only change is a patch (endpoints, DERP home,
    // online) of a peer this session already has, under the policy it last
    // saw. What the slow path below sends for it is `PeersChangedPatch`
    // with that one patch, whose content depends on the peer alone: not on
    // the viewer, its capability version (nothing rendered here varies by
    // it) or what else the viewer knows. Only the framing differs between
    // sessions (zstd or plain), so the message is built once per change
    // and framing, and thousands of sessions send the same bytes.
    if let [Change::NodePatch(x)] = changes {
        if *x != id && gen == *seen_gen && known.contains(*x) {
            if let Some(n) = st.nodes.get(x).filter(|n| vis.sees(n.id)) {
                return Some(Delta::Shared(shared_patch(server, n, t, zstd)));
            }
        }
    }
    let mut m = MapResponse::default();
    let mut changed: BTreeMap<u64, SharedRaw> = BTreeMap::new();
    let mut removed = BTreeSet::new();
    let mut patches: BTreeMap<u64, PeerChange> = BTreeMap::new();
    let mut profiles = BTreeMap::new();
    for c in changes {
        match c {
            Change::NodeUpsert(x) if *x == id => m.node = Some(self_for(server, &view, me, t)),
            Change::NodeInfo(x) if *x == id => m.node = Some(self_for(server, &view, me, t)),
            Change::NodeUpsert(x) | Change::NodePatch(x) | Change::NodeInfo(x) => {
                match st.nodes.get(x) {
                    Some(n) if vis.sees(n.id) => {
                        let full = !matches!(c, Change::NodePatch(_)) || !known.contains(*x);
                        if full {
                            patches.remove(x);
                            changed.insert(*x, peer_for(server, &view, id, n, t));
                            let p = netmap::profile_for(&server.cfg, &st, n, false);
                            profiles.insert(p.id, p);
                        } else if !changed.contains_key(x) {
                            patches.insert(*x, patch_for(server, n, t));
                        }
                        removed.remove(x);
                        known.insert(*x);
                    }
                    _ => {
                        if known.remove(*x) {
                            removed.insert(*x);
                        }
                        changed.remove(x);
                        patches.remove(x);
                    }
                }
            }
            Change::NodeRemoved(x) => {
                if known.remove(*x) {
                    removed.insert(*x);
                }
                changed.remove(x);
                patches.remove(x);
            }
            Change::UserChanged(_) => {
                for n in st
                    .nodes
                    .values()
                    .filter(|n| n.id == id || known.contains(n.id))
                {
                    let p = netmap::profile_for(&server.cfg, &st, n, n.id == id);
                    profiles.insert(p.id, p);
                }
            }
            Change::Everything => return None, // handled by the caller
            Change::PolicyRefresh => {}        // the generation check below
        }
    }
    if gen != *seen_gen {
        // The policy was recompiled: reconcile visibility (work in
        // proportion to what this node sees, not to the tailnet), and
        // resend the filter, SSH policy and self node if they changed.
        *seen_gen = gen;
        if !vis.all {
            for &p in &vis.peers {
                if known.contains(p) {
                    continue;
                }
                if let Some(n) = st.nodes.get(&p) {
                    changed.insert(p, peer_for(server, &view, id, n, t));
                    let pr = netmap::profile_for(&server.cfg, &st, n, false);
                    profiles.insert(pr.id, pr);
                    known.insert(p);
                    removed.remove(&p);
                }
            }
        }
        let gone: Vec<u64> = known
            .snapshot()
            .into_iter()
            .filter(|k| !vis.sees(*k) || !st.nodes.contains_key(k))
            .collect();
        for g in gone {
            known.remove(g);
            removed.insert(g);
            changed.remove(&g);
            patches.remove(&g);
        }
        let filters = filters_for(&view, id);
        let fkey = Digest::of(filters.get("base").map(|f| f.get()));
        if fkey != sent.filter {
            sent.filter = fkey;
            m.packet_filters = Some(filters);
        }
        let ssh = ssh_for(server, &view, id);
        let skey = Digest::of(ssh.as_ref().map(|f| f.get()));
        if skey != sent.ssh {
            sent.ssh = skey;
            m.ssh_policy = ssh;
        }
        let node = self_for(server, &view, me, t);
        let nkey = Digest::of(Some(node.get()));
        if nkey != sent.node {
            sent.node = nkey;
            m.node = Some(node);
        }
    }
    drop(st);
    if !changed.is_empty() {
        m.peers_changed = Some(changed.into_values().collect());
    }
    if !removed.is_empty() {
        m.peers_removed = Some(removed.into_iter().collect());
    }
    if !patches.is_empty() {
        m.peers_changed_patch = Some(patches.into_values().collect());
    }
    m.user_profiles = profiles.into_values().collect();
    let empty = m.node.is_none()
        && m.packet_filters.is_none()
        && m.peers_changed.is_none()
        && m.peers_removed.is_none()
        && m.peers_changed_patch.is_none()
        && m.user_profiles.is_empty();
    (!empty).then_some(Delta::Own(m))
}

/// What this session last sent of the per-node policy outputs, so a
/// recompile that did not change them costs no message.
#[derive(Default)]
struct Sent {
    filter: Digest,
    ssh: Digest,
    node: Digest,
}

impl Sent {
    fn from_map(m: &MapResponse) -> Sent {
        Sent {
            filter: Digest::of(
                m.packet_filters
                    .as_ref()
                    .and_then(|f| f.get("base"))
                    .map(|f| f.get()),
            ),
            ssh: Digest::of(m.ssh_policy.as_ref().map(|f| f.get())),
            node: Digest::of(m.node.as_ref().map(|f| f.get())),
        }
    }
}

/// A fingerprint of a JSON text a session sent: its length and SipHash.
/// A session keeps 16 bytes per item instead of a copy of the text (its
/// packet filter is kilobytes under autogroup:self, per connected node).
/// The texts are the server's own rendering of the policy, not a peer's.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
struct Digest(usize, u64);

impl Digest {
    fn of(json: Option<&str>) -> Digest {
        use std::hash::{Hash, Hasher};
        let Some(s) = json else {
            return Digest::default();
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        s.hash(&mut h);
        Digest(s.len() + 1, h.finish())
    }
}

/// Builds a full map and sends it while holding a full-map slot (for at
/// most `FULL_MAP_SLOT_HOLD`). None if the node is gone.
async fn send_full_map(
    server: &Server,
    tx: &mut Responder,
    id: u64,
    known: &Known,
    vis_cache: &mut Option<(u64, Vis)>,
    resync: bool,
    zstd: bool,
) -> io::Result<Option<Sent>> {
    let slot = server.full_maps.acquire().await;
    let _in_flight = crate::metrics::full_map();
    let _burst = Burst::enter();
    let Some(m) = full_map(server, id, known, vis_cache, resync) else {
        return Ok(None);
    };
    let sent = Sent::from_map(&m);
    let bytes = frame(&m, zstd);
    drop(m);
    let mut send = std::pin::pin!(tx.send(&bytes, false));
    let within = async { Some(send.as_mut().await) }
        .or(async {
            Timer::after(FULL_MAP_SLOT_HOLD).await;
            None
        })
        .await;
    drop(slot);
    match within {
        Some(r) => r?,
        None => send.await?,
    }
    Ok(Some(sent))
}

/// Full maps being built or sent, and how many were since memory was last
/// handed back (see [`Burst`]).
static MAPS_IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static MAPS_SINCE_TRIM: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// A burst this large ends with freed memory handed back.
const TRIM_AFTER_MAPS: usize = 256;

/// Held while a full map is built and sent. When every node comes online
/// at once (first start, a restart) thousands of ~80 KB maps wait for slow
/// readers at the same time; glibc keeps what they freed in its heap
/// (28.9-30.8 KiB of RSS per streaming node at 10,000 nodes afterwards
/// instead of ~17), so the last map of a burst of at least
/// `TRIM_AFTER_MAPS` asks it to return free pages to the kernel. musl (the
/// router builds) has no such call: measured on the static x86_64 musl
/// build, 19.5 KiB per streaming node after the first maps, but 250 MiB
/// still resident once quiet after a 10,000-node reconnect storm (peak
/// 285 MiB); what would lower that is a smaller burst (fewer maps waiting
/// at once), not a trim.
struct Burst;

impl Burst {
    fn enter() -> Burst {
        use std::sync::atomic::Ordering::Relaxed;
        MAPS_IN_FLIGHT.fetch_add(1, Relaxed);
        MAPS_SINCE_TRIM.fetch_add(1, Relaxed);
        Burst
    }
}

impl Drop for Burst {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        if MAPS_IN_FLIGHT.fetch_sub(1, Relaxed) == 1
            && MAPS_SINCE_TRIM.load(Relaxed) >= TRIM_AFTER_MAPS
        {
            MAPS_SINCE_TRIM.store(0, Relaxed);
            release_freed_memory();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_memory() {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: glibc's malloc_trim takes the allocator's own locks and only
    // returns whole free pages; no memory we hold is touched.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

enum Event {
    Changes(Vec<Change>),
    KeepAlive,
    Closed,
}

/// The session's next event. One poll function over state that lives as
/// long as the session (the hub's inbox, the stream's close waker, one
/// keep-alive timer): waiting again after a message registers nothing new
/// (a fresh timer per message was a reactor registration per stream per
/// change).
async fn next_event(sub: &Subscription, tx: &Responder, ka: &mut Timer) -> Event {
    future::poll_fn(|cx| {
        if let Poll::Ready(c) = sub.poll_changes(cx) {
            return Poll::Ready(c.map_or(Event::Closed, Event::Changes));
        }
        if tx.poll_closed(cx).is_ready() {
            return Poll::Ready(Event::Closed);
        }
        if Pin::new(&mut *ka).poll(cx).is_ready() {
            return Poll::Ready(Event::KeepAlive);
        }
        Poll::Pending
    })
    .await
}

async fn stream(
    server: &SharedServer,
    sub: &Subscription,
    tx: &mut Responder,
    zstd: bool,
    keep_alive: bool,
) -> io::Result<()> {
    let id = sub.node_id;
    let _session = crate::metrics::session();
    tx.start(200, "application/octet-stream", false)?;
    let known = &*sub.known;
    let mut vis_cache = None;
    let mut seen_gen = server.policy_view().1;
    // Full maps are boxed: their state (the message, the slot, the timer)
    // exists only while one is sent, not in every idle stream's future.
    let first = send_full_map(server, tx, id, known, &mut vis_cache, false, zstd);
    let Some(mut sent) = Box::pin(first).await? else {
        return Ok(());
    };
    // 50 s plus a per-session jitter, so keep-alives of many nodes do not
    // align (picked once: no random-number syscall per message).
    let jitter = Duration::from_millis(u64::from(crate::keys::random32()[0]) * 35);
    let ka_msg = frame(
        &MapResponse {
            keep_alive: true,
            ..Default::default()
        },
        zstd,
    );
    // 50 s plus jitter, so keep-alives of many nodes do not align; sent
    // when nothing else was for that long.
    let ka = if keep_alive {
        KEEPALIVE + jitter
    } else {
        Duration::from_secs(3600)
    };
    let mut timer = Timer::after(ka);
    let mut last_event = Instant::now();
    loop {
        let ev = next_event(sub, tx, &mut timer).await;
        match ev {
            Event::Closed => {
                // Replaced or disconnected: end the body cleanly.
                tx.end();
                return Ok(());
            }
            Event::KeepAlive => {
                let due = last_event + ka;
                if due > Instant::now() {
                    // Something else happened since the timer was set.
                    timer.set_at(due);
                    continue;
                }
                timer.set_after(ka);
                crate::metrics::sent_keepalive();
                tx.send(&ka_msg, false).await?
            }
            Event::Changes(changes) if changes.contains(&Change::Everything) => {
                seen_gen = server.policy_view().1;
                let full = send_full_map(server, tx, id, known, &mut vis_cache, true, zstd);
                match Box::pin(full).await? {
                    Some(s) => sent = s,
                    None => {
                        tx.end();
                        return Ok(()); // deleted
                    }
                }
            }
            Event::Changes(changes) => {
                let msg = delta(
                    server,
                    id,
                    &changes,
                    known,
                    &mut vis_cache,
                    &mut seen_gen,
                    &mut sent,
                    zstd,
                );
                if let Some(m) = msg {
                    crate::metrics::sent_delta();
                    match m {
                        Delta::Shared(b) => tx.send(&b, false).await?,
                        Delta::Own(m) => tx.send(&frame(&m, zstd), false).await?,
                    }
                } else if !server.state().nodes.contains_key(&id) {
                    tx.end();
                    return Ok(()); // deleted
                }
            }
        }
        last_event = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::mapframe;

    fn server(tag: &str) -> (SharedServer, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "tinyscale-map-{tag}-{}-{}",
            std::process::id(),
            crate::keys::to_hex(&crate::keys::random32()[..4])
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = crate::config::Config::defaults(&dir);
        let server = crate::control::build_server(cfg, |_| Ok(None)).unwrap();
        {
            let mut st = server.state();
            let u = st.create_user("alice", "", "").unwrap();
            for id in 1..=4u64 {
                st.put_node(Node {
                    id,
                    user: u.id,
                    node_key: [id as u8; 32],
                    machine_key: [0x40 + id as u8; 32],
                    given_name: format!("n{id}"),
                    ipv4: Some(std::net::Ipv4Addr::new(100, 64, 0, id as u8)),
                    endpoints: vec![format!("192.0.2.{id}:41641")],
                    cap: 100 + id as u32,
                    ..Default::default()
                })
                .unwrap();
            }
        }
        (server, dir)
    }

    /// What `delta` returns for viewer `id` given one change.
    fn one(server: &Server, id: u64, c: Change, known: &Known, zstd: bool) -> Delta {
        let mut seen = server.policy_view().1;
        let mut vis = None;
        let mut sent = Sent::default();
        delta(
            server,
            id,
            &[c],
            known,
            &mut vis,
            &mut seen,
            &mut sent,
            zstd,
        )
        .expect("a message")
    }

    fn json(b: &[u8], zstd: bool) -> serde_json::Value {
        let (body, used) = mapframe::split_message(b).unwrap().unwrap();
        assert_eq!(used, b.len(), "one whole message");
        let mut out = Vec::new();
        if zstd {
            mapframe::decode_zstd_raw(body, &mut out).unwrap();
        } else {
            assert_ne!(body[..4], mapframe::ZSTD_MAGIC, "plain JSON");
            out = body.to_vec();
        }
        serde_json::from_slice(&out).unwrap()
    }

    fn shared(d: Delta) -> Arc<[u8]> {
        match d {
            Delta::Shared(b) => b,
            Delta::Own(m) => panic!("expected shared bytes, got {m:?}"),
        }
    }

    #[test]
    fn patch_bytes_are_shared_per_framing_and_match_the_per_session_render() {
        let (server, dir) = server("shared");
        // Sessions of nodes 1 and 2 (zstd, capver 101 and 102) and node 4
        // (plain) know node 3; a patch of 3 is the same message for all.
        let known = |ids: &[u64]| {
            let k = Known::default();
            for &i in ids {
                k.insert(i);
            }
            k
        };
        let (k1, k2, k4) = (known(&[3]), known(&[2, 3]), known(&[1, 3]));
        let a = shared(one(&server, 1, Change::NodePatch(3), &k1, true));
        let b = shared(one(&server, 2, Change::NodePatch(3), &k2, true));
        let c = shared(one(&server, 4, Change::NodePatch(3), &k4, false));
        assert!(Arc::ptr_eq(&a, &b), "identical messages share one encoding");
        assert!(
            !Arc::ptr_eq(&a, &c) && a[..] != c[..],
            "zstd and plain differ"
        );
        // Byte for byte what each session would have framed itself.
        let own = |zstd| {
            let st = server.state();
            let n = &st.nodes[&3];
            let m = MapResponse {
                peers_changed_patch: Some(vec![patch_for(&server, n, now())]),
                ..Default::default()
            };
            frame(&m, zstd)
        };
        assert_eq!(a[..], own(true)[..]);
        assert_eq!(c[..], own(false)[..]);
        let j = json(&a, true);
        assert_eq!(j, json(&c, false));
        assert_eq!(j["PeersChangedPatch"][0]["NodeID"], 3);
        assert_eq!(j["PeersChangedPatch"][0]["Endpoints"][0], "192.0.2.3:41641");
        assert_eq!(j["PeersChangedPatch"][0]["Online"], false);

        // A session that does not know 3 yet gets the full node, its own.
        let k = known(&[]);
        match one(&server, 1, Change::NodePatch(3), &k, true) {
            Delta::Own(m) => {
                assert!(m.peers_changed.is_some() && m.peers_changed_patch.is_none());
                assert!(k.contains(3), "now known");
            }
            Delta::Shared(_) => panic!("an unknown peer needs the full node"),
        }
        // The node's own session is not sent its patch.
        let k3 = known(&[1]);
        let (mut seen, mut vis, mut sent) = (server.policy_view().1, None, Sent::default());
        let own3 = delta(
            &server,
            3,
            &[Change::NodePatch(3)],
            &k3,
            &mut vis,
            &mut seen,
            &mut sent,
            true,
        );
        assert!(own3.is_none());

        // The node changes: announced, the next message carries the change.
        {
            let mut st = server.state();
            let mut n = st.nodes[&3].clone();
            n.endpoints = vec!["198.51.100.7:1".into()];
            st.put_node(n).unwrap();
        }
        server.hub.notify(Change::NodePatch(3));
        let d = shared(one(&server, 2, Change::NodePatch(3), &k2, true));
        assert!(!Arc::ptr_eq(&a, &d));
        assert_eq!(
            json(&d, true)["PeersChangedPatch"][0]["Endpoints"][0],
            "198.51.100.7:1"
        );
        // It comes online (its stream opens): the render says so.
        let (_sub, _) = server.hub.subscribe(3);
        let e = shared(one(&server, 2, Change::NodePatch(3), &k2, true));
        assert_eq!(json(&e, true)["PeersChangedPatch"][0]["Online"], true);
        let f = shared(one(&server, 1, Change::NodePatch(3), &k1, true));
        assert!(Arc::ptr_eq(&e, &f));

        // Two changes at once, or a policy generation the session has not
        // seen, take the per-session path.
        let (mut seen, mut vis, mut sent) = (server.policy_view().1, None, Sent::default());
        let two = [Change::NodePatch(3), Change::NodePatch(2)];
        let m = delta(
            &server,
            1,
            &two,
            &known(&[2, 3]),
            &mut vis,
            &mut seen,
            &mut sent,
            true,
        );
        assert!(matches!(m, Some(Delta::Own(_))));
        let mut stale = seen.wrapping_sub(1);
        let m = delta(
            &server,
            1,
            &[Change::NodePatch(3)],
            &k1,
            &mut None,
            &mut stale,
            &mut sent,
            true,
        );
        assert!(!matches!(m, Some(Delta::Shared(_))));
        drop(server);
        let _ = std::fs::remove_dir_all(dir);
    }
}
