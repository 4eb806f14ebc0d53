//! Fan-out of state changes to connected map sessions.
//!
//! Each streaming map session subscribes with a set of pending changes and
//! a wake-up signal. A change is recorded in every session that needs it
//! without blocking, and coalesces with what the session has not read yet:
//! a node that changed ten times while the session was busy is one entry,
//! so a slow session costs neither an unbounded backlog nor a full resync
//! (design.md, performance principles), and its memory stays bounded by
//! the number of nodes.

use crate::policy::Compiled;
use crate::tailcfg::SharedRaw;
use smol::channel::{self, Receiver, Sender};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// What changed; map sessions turn this into deltas for their node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A node was added or changed in a way peers must see in full.
    NodeUpsert(u64),
    /// A node was deleted.
    NodeRemoved(u64),
    /// Only patchable fields changed (endpoints, DERP, disco key, online).
    NodePatch(u64),
    /// Peers need the full node again, but nothing the policy or routing
    /// depends on changed (Hostinfo churn).
    NodeInfo(u64),
    /// A user's profile changed.
    UserChanged(u64),
    /// Policy, DNS or DERP configuration changed: resend everything.
    Everything,
    /// The policy was recompiled after topology changes: sessions reconcile
    /// visibility and filters (in proportion to what each node sees).
    PolicyRefresh,
}

struct Slot {
    seq: u64,
    inbox: Arc<Inbox>,
    known: Arc<Known>,
}

/// Where the hub leaves a session's changes: what is pending, and the
/// session's waker. A waker slot rather than a channel: waking a session
/// that waits costs no allocation and no channel bookkeeping, which adds
/// up when one change reaches 10,000 sessions.
#[derive(Default)]
struct Inbox(Mutex<Mailbox>);

#[derive(Default)]
struct Mailbox {
    pending: Pending,
    /// The session task waiting for changes, if it waits.
    waker: Option<Waker>,
    /// The session was replaced or disconnected: it ends once it has read
    /// what is pending.
    closed: bool,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, Mailbox> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn add(&self, c: &Change) {
        let mut m = self.lock();
        m.pending.add(c);
        let w = m.waker.take();
        drop(m);
        if let Some(w) = w {
            w.wake();
        }
    }
    fn close(&self) {
        let mut m = self.lock();
        m.closed = true;
        let w = m.waker.take();
        drop(m);
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// Changes a session has not read yet, coalesced by kind and node.
#[derive(Default)]
struct Pending {
    /// Something was added since the last drain.
    any: bool,
    everything: bool,
    policy_refresh: bool,
    removed: IdSet,
    upsert: IdSet,
    info: IdSet,
    patch: IdSet,
    users: IdSet,
}

impl Pending {
    fn add(&mut self, c: &Change) {
        self.any = true;
        match *c {
            Change::Everything => self.everything = true,
            Change::PolicyRefresh => self.policy_refresh = true,
            Change::NodeRemoved(x) => {
                self.removed.insert(x);
            }
            Change::NodeUpsert(x) => {
                self.upsert.insert(x);
            }
            Change::NodeInfo(x) => {
                self.info.insert(x);
            }
            Change::NodePatch(x) => {
                self.patch.insert(x);
            }
            Change::UserChanged(u) => {
                self.users.insert(u);
            }
        }
    }

    /// The coalesced changes in an order a session can apply one by one:
    /// removals, then full upserts, Hostinfo changes and patches (a node in
    /// a stronger set is not repeated in a weaker one). Sessions read each
    /// node's current state, so only what changed matters, not how often.
    fn drain(&mut self) -> Vec<Change> {
        let p = std::mem::take(self);
        let mut v = Vec::new();
        if p.everything {
            v.push(Change::Everything);
        }
        v.extend(p.removed.iter().map(Change::NodeRemoved));
        v.extend(p.upsert.iter().map(Change::NodeUpsert));
        v.extend(
            p.info
                .iter()
                .filter(|x| !p.upsert.contains(*x))
                .map(Change::NodeInfo),
        );
        v.extend(
            p.patch
                .iter()
                .filter(|x| !p.upsert.contains(*x) && !p.info.contains(*x))
                .map(Change::NodePatch),
        );
        v.extend(p.users.iter().map(Change::UserChanged));
        if p.policy_refresh {
            v.push(Change::PolicyRefresh);
        }
        v
    }
}

/// The peers a session has told its node about. The hub reads it to offer
/// a patch (endpoints, DERP, online) only to sessions whose node has that
/// peer, instead of waking every session in the tailnet for it; the session
/// updates it while it holds the state lock, so a change committed after the
/// session read the state is always offered to it. Each call locks briefly
/// and never while another lock is taken (the hub locks Slot → Known; the
/// session holds the state lock around it).
#[derive(Default)]
pub struct Known(Mutex<IdSet>);

impl Known {
    fn set(&self) -> MutexGuard<'_, IdSet> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn contains(&self, id: u64) -> bool {
        self.set().contains(id)
    }
    pub fn insert(&self, id: u64) -> bool {
        self.set().insert(id)
    }
    pub fn remove(&self, id: u64) -> bool {
        self.set().remove(id)
    }
    /// Replaces the whole set; returns the previous one.
    pub fn replace(&self, new: IdSet) -> IdSet {
        std::mem::replace(&mut *self.set(), new)
    }
    pub fn snapshot(&self) -> Vec<u64> {
        self.set().iter().collect()
    }
}

/// A set of node IDs kept as the non-zero 64-bit words of a bitmap, sorted
/// by `id / 64`. Every session holds one (what its node knows), and in an
/// allow-all tailnet each knows every node: node IDs are handed out in
/// sequence, so at 10,000 nodes this is ~157 words (2.5 KB) per session
/// where a `BTreeSet` took ~120 KB, about 1.2 GB across the tailnet. A
/// sparse set costs at most 16 bytes an ID.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct IdSet(Vec<(u64, u64)>);

impl IdSet {
    fn word(&self, id: u64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&(id >> 6), |w| w.0)
    }
    pub fn contains(&self, id: u64) -> bool {
        self.word(id)
            .is_ok_and(|i| self.0[i].1 & (1 << (id & 63)) != 0)
    }
    /// Adds `id`; false if it was there already.
    pub fn insert(&mut self, id: u64) -> bool {
        let bit = 1 << (id & 63);
        match self.word(id) {
            Ok(i) => {
                let had = self.0[i].1 & bit != 0;
                self.0[i].1 |= bit;
                !had
            }
            Err(i) => {
                self.0.insert(i, (id >> 6, bit));
                true
            }
        }
    }
    /// Takes `id` out; false if it was not there.
    pub fn remove(&mut self, id: u64) -> bool {
        let bit = 1 << (id & 63);
        let Ok(i) = self.word(id) else { return false };
        if self.0[i].1 & bit == 0 {
            return false;
        }
        self.0[i].1 &= !bit;
        if self.0[i].1 == 0 {
            self.0.remove(i);
        }
        true
    }
    /// The IDs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().flat_map(|&(key, mut bits)| {
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                Some(key << 6 | b)
            })
        })
    }
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.iter().map(|w| w.1.count_ones() as usize).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<u64> for IdSet {
    fn from_iter<I: IntoIterator<Item = u64>>(ids: I) -> IdSet {
        let mut s = IdSet::default();
        for id in ids {
            // Ascending input (the usual case) appends.
            match s.0.last_mut() {
                Some(w) if w.0 == id >> 6 => w.1 |= 1 << (id & 63),
                Some(w) if w.0 < id >> 6 => s.0.push((id >> 6, 1 << (id & 63))),
                None => s.0.push((id >> 6, 1 << (id & 63))),
                Some(_) => {
                    s.insert(id);
                }
            }
        }
        s.0.shrink_to_fit();
        s
    }
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<u64, Slot>,
    next_seq: u64,
    /// What sessions send of a node, by node ID, valid until the node
    /// changes (every change of a node is announced through `notify`, after
    /// the state was updated; renders are made under the state lock).
    rendered: HashMap<u64, Rendered>,
    /// The compiled policy in force (None: allow-all), kept in step with
    /// the one sessions use: a node's patch is offered only to the sessions
    /// of its policy peers (~100 in a 10,000-node autogroup:self tailnet)
    /// instead of asking every session whether it knows the node, which
    /// made the 10,000 "came online" patches after a restart 10⁸ checks.
    view: Option<Arc<Compiled>>,
}

/// A node's renders that every viewer gets alike.
#[derive(Default)]
struct Rendered {
    /// Its peer `Node` JSON.
    peer: Option<SharedRaw>,
    /// The complete framed map message that carries only its patch
    /// (`PeersChangedPatch`), plain and zstd-framed: what a tagged node's
    /// endpoint change sends to thousands of sessions, encoded once.
    patch: [Option<Arc<[u8]>>; 2],
}

pub struct Hub {
    inner: Mutex<Inner>,
    /// Set when nodes or users changed: the policy must be recompiled.
    topology_dirty: AtomicBool,
    /// Signalled (coalesced, capacity 1) when a node was added, changed in
    /// full or removed: the DERP relay re-checks its connected keys at once
    /// instead of at its next periodic sweep, so a deleted, expired or
    /// rotated key stops relaying when the change is made.
    keys_changed: (Sender<()>, Receiver<()>),
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            inner: Mutex::default(),
            topology_dirty: AtomicBool::new(false),
            keys_changed: channel::bounded(1),
        }
    }
}

/// A streaming session's end of the hub.
pub struct Subscription {
    pub node_id: u64,
    pub seq: u64,
    inbox: Arc<Inbox>,
    pub known: Arc<Known>,
}

impl Subscription {
    /// Waits for changes and takes all that are pending (never an empty
    /// batch); None once the session was replaced or disconnected and
    /// nothing is left to read.
    pub async fn changes(&self) -> Option<Vec<Change>> {
        std::future::poll_fn(|cx| self.poll_changes(cx)).await
    }

    pub fn poll_changes(&self, cx: &mut Context<'_>) -> Poll<Option<Vec<Change>>> {
        let mut m = self.inbox.lock();
        if m.pending.any {
            return Poll::Ready(Some(m.pending.drain()));
        }
        if m.closed {
            return Poll::Ready(None);
        }
        if !m.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            m.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Takes what is pending without waiting (empty if nothing is).
    pub fn take(&self) -> Vec<Change> {
        self.inbox.lock().pending.drain()
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the node's streaming session, replacing (and thereby
    /// ending) an older one. Returns whether the node was already online.
    pub fn subscribe(&self, node_id: u64) -> (Subscription, bool) {
        let inbox = Arc::new(Inbox::default());
        let known = Arc::new(Known::default());
        let mut g = self.lock();
        g.next_seq += 1;
        let seq = g.next_seq;
        let old = g.sessions.insert(
            node_id,
            Slot {
                seq,
                inbox: inbox.clone(),
                known: known.clone(),
            },
        );
        // Online changed: its renders say so.
        g.rendered.remove(&node_id);
        if let Some(old) = &old {
            old.inbox.close();
        }
        (
            Subscription {
                node_id,
                seq,
                inbox,
                known,
            },
            old.is_some(),
        )
    }

    /// Removes the session if it is still the node's current one.
    pub fn unsubscribe(&self, node_id: u64, seq: u64) -> bool {
        let mut g = self.lock();
        if g.sessions.get(&node_id).is_some_and(|s| s.seq == seq) {
            g.sessions.remove(&node_id);
            g.rendered.remove(&node_id);
            true
        } else {
            false
        }
    }

    /// Ends the node's session (deleted node, expired key).
    pub fn disconnect(&self, node_id: u64) {
        let mut g = self.lock();
        if let Some(s) = g.sessions.remove(&node_id) {
            g.rendered.remove(&node_id);
            s.inbox.close();
        }
    }

    pub fn is_online(&self, node_id: u64) -> bool {
        self.lock().sessions.contains_key(&node_id)
    }

    pub fn online_count(&self) -> usize {
        self.lock().sessions.len()
    }

    /// True once after the topology changed (and clears the flag).
    pub fn take_topology_dirty(&self) -> bool {
        self.topology_dirty.swap(false, Ordering::AcqRel)
    }

    /// Wakes when node keys may have changed (see `keys_changed`).
    pub fn key_changes(&self) -> Receiver<()> {
        self.keys_changed.1.clone()
    }

    /// Offers `c` to every connected session that needs it: a patch or a
    /// Hostinfo change of node X only to X's own session and the sessions
    /// that know X (visibility itself changes only through a node upsert or
    /// a policy refresh, which go to everyone).
    pub fn notify(&self, c: Change) {
        if !matches!(
            c,
            Change::NodePatch(_) | Change::NodeInfo(_) | Change::PolicyRefresh
        ) {
            self.topology_dirty.store(true, Ordering::Release);
        }
        if matches!(
            c,
            Change::NodeUpsert(_) | Change::NodeRemoved(_) | Change::Everything
        ) {
            // Full = a check is already pending; nothing is lost.
            let _ = self.keys_changed.0.try_send(());
        }
        let mut g = self.lock();
        match &c {
            Change::NodeUpsert(id)
            | Change::NodeRemoved(id)
            | Change::NodePatch(id)
            | Change::NodeInfo(id) => {
                g.rendered.remove(id);
            }
            Change::UserChanged(_) | Change::Everything => g.rendered.clear(),
            Change::PolicyRefresh => {}
        }
        let x = match c {
            Change::NodePatch(x) | Change::NodeInfo(x) => x,
            _ => {
                for s in g.sessions.values() {
                    s.inbox.add(&c);
                }
                return;
            }
        };
        // A patch: X's own session and the sessions that know X. Those are
        // among X's policy peers (visibility is symmetric), or anyone under
        // allow-all. A session may still know X from an older policy that
        // showed it X; then a policy refresh is pending for it, which drops
        // X from its view, so skipping the patch loses nothing.
        if let Some(s) = g.sessions.get(&x) {
            s.inbox.add(&c);
        }
        let offer = |s: &Slot| {
            if s.known.contains(x) {
                s.inbox.add(&c);
            }
        };
        match &g.view {
            Some(view) => view
                .peers_unsorted(x)
                .filter(|&p| p != x)
                .filter_map(|p| g.sessions.get(&p))
                .for_each(offer),
            None => g
                .sessions
                .iter()
                .filter(|(&node, _)| node != x)
                .for_each(|(_, s)| offer(s)),
        }
    }

    /// The compiled policy sessions use from now on (None: allow-all); see
    /// [`Inner::view`]. Set whenever the policy in force changes, before a
    /// session can see the new one.
    pub fn set_view(&self, view: Option<Arc<Compiled>>) {
        self.lock().view = view;
    }

    pub fn cached_peer(&self, id: u64) -> Option<SharedRaw> {
        self.lock().rendered.get(&id)?.peer.clone()
    }

    pub fn cache_peer(&self, id: u64, raw: SharedRaw) {
        self.lock().rendered.entry(id).or_default().peer = Some(raw);
    }

    /// The framed patch message of node `id` (see [`Rendered::patch`]),
    /// zstd-framed or plain as the session negotiated.
    pub fn cached_patch(&self, id: u64, zstd: bool) -> Option<Arc<[u8]>> {
        self.lock().rendered.get(&id)?.patch[usize::from(zstd)].clone()
    }

    pub fn cache_patch(&self, id: u64, zstd: bool, msg: Arc<[u8]>) {
        self.lock().rendered.entry(id).or_default().patch[usize::from(zstd)] = Some(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_go_only_to_sessions_that_know_the_node() {
        let hub = Hub::default();
        let (a, _) = hub.subscribe(1);
        let (b, _) = hub.subscribe(2);
        let (c, _) = hub.subscribe(3);
        a.known.insert(3);
        // A patch of 3: its own session and a (which has 3), not b.
        hub.notify(Change::NodePatch(3));
        assert_eq!(a.take(), vec![Change::NodePatch(3)]);
        assert!(b.take().is_empty(), "b does not know node 3");
        assert_eq!(c.take(), vec![Change::NodePatch(3)]);
        hub.notify(Change::NodeInfo(3));
        assert!(!a.take().is_empty() && b.take().is_empty());
        // Upserts, removals and refreshes can change who sees what: everyone.
        for ch in [
            Change::NodeUpsert(3),
            Change::NodeRemoved(3),
            Change::PolicyRefresh,
            Change::Everything,
        ] {
            hub.notify(ch.clone());
            assert_eq!(b.take(), vec![ch]);
        }
        // Once b has been told about 3, it gets 3's patches too.
        b.known.insert(3);
        hub.notify(Change::NodePatch(3));
        assert_eq!(b.take(), vec![Change::NodePatch(3)]);
    }

    /// Two users, autogroup:self: users' nodes see only each other.
    fn two_users_view() -> Arc<Compiled> {
        use crate::policy::{TopoNode, TopoUser, Topology};
        let node = |id: u64, user: u64| TopoNode {
            id,
            name: format!("n{id}"),
            user_id: Some(user),
            tags: vec![],
            ipv4: Some(std::net::Ipv4Addr::new(100, 64, 0, id as u8)),
            ipv6: None,
            advertised_routes: vec![],
            approved_routes: vec![],
        };
        let user = |id: u64| TopoUser {
            id,
            name: format!("u{id}"),
            email: None,
        };
        let topo = Topology {
            users: vec![user(1), user(2)],
            nodes: vec![node(1, 1), node(2, 1), node(3, 2), node(4, 2)],
            settings: Default::default(),
        };
        let pol = crate::policy::Policy::parse(
            r#"{"acls": [{"action": "accept", "src": ["autogroup:member"],
                          "dst": ["autogroup:self:*"]}]}"#,
        )
        .expect("policy");
        Arc::new(crate::policy::compile(&pol, &topo))
    }

    #[test]
    fn with_a_policy_patches_go_to_policy_peers_that_know_the_node() {
        let hub = Hub::default();
        let s: Vec<Subscription> = (1..=4).map(|id| hub.subscribe(id).0).collect();
        // Everyone knows everyone (allow-all so far).
        for sub in &s {
            for id in 1..=4 {
                sub.known.insert(id);
            }
        }
        hub.set_view(Some(two_users_view()));
        hub.notify(Change::NodePatch(1));
        let got: Vec<bool> = s.iter().map(|x| !x.take().is_empty()).collect();
        // 1 itself and its user's node 2; 3 and 4 are not its policy peers
        // (their pending refresh drops node 1 from what they know).
        assert_eq!(got, [true, true, false, false]);
        // A peer that does not know node 1 (yet) is not offered its patch.
        s[1].known.remove(1);
        hub.notify(Change::NodeInfo(1));
        let got: Vec<bool> = s.iter().map(|x| !x.take().is_empty()).collect();
        assert_eq!(got, [true, false, false, false]);
        // Back to allow-all: anyone who knows node 1.
        hub.set_view(None);
        hub.notify(Change::NodePatch(1));
        let got: Vec<bool> = s.iter().map(|x| !x.take().is_empty()).collect();
        assert_eq!(got, [true, false, true, true]);
        // Upserts go to everyone whatever the policy.
        hub.set_view(Some(two_users_view()));
        hub.notify(Change::NodeUpsert(1));
        assert!(s.iter().all(|x| x.take() == vec![Change::NodeUpsert(1)]));
    }

    #[test]
    fn unread_changes_coalesce() {
        let hub = Hub::default();
        let (s, _) = hub.subscribe(1);
        for x in [7, 5, 7, 9] {
            s.known.insert(x);
        }
        // Thousands of changes while the session is busy: bounded, no loss.
        for round in 0..1000 {
            hub.notify(Change::NodePatch(7));
            hub.notify(Change::NodePatch(5));
            hub.notify(Change::NodeInfo(9));
            if round == 500 {
                hub.notify(Change::NodeUpsert(5));
                hub.notify(Change::NodeRemoved(8));
                hub.notify(Change::UserChanged(2));
            }
        }
        hub.notify(Change::PolicyRefresh);
        let got = smol::block_on(s.changes()).expect("open");
        assert_eq!(
            got,
            vec![
                Change::NodeRemoved(8),
                Change::NodeUpsert(5),
                Change::NodeInfo(9),
                Change::NodePatch(7),
                Change::UserChanged(2),
                Change::PolicyRefresh,
            ]
        );
        assert!(s.take().is_empty(), "all taken at once");
        // A replaced session ends once it has read what was pending.
        hub.notify(Change::NodePatch(7));
        let (_newer, was_online) = hub.subscribe(1);
        assert!(was_online);
        assert_eq!(
            smol::block_on(s.changes()),
            Some(vec![Change::NodePatch(7)])
        );
        assert_eq!(smol::block_on(s.changes()), None);
    }

    #[test]
    fn id_set_agrees_with_btreeset() {
        use std::collections::BTreeSet;
        // Deterministic mix of dense runs, sparse IDs and word boundaries.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut model = BTreeSet::new();
        let mut s = IdSet::default();
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = match step % 4 {
                0 => x % 200,
                1 => 60 + x % 10,
                2 => x % 100_000,
                _ => u64::MAX - x % 130,
            };
            if x & (1 << 40) == 0 {
                assert_eq!(s.insert(id), model.insert(id), "insert {id}");
            } else {
                assert_eq!(s.remove(id), model.remove(&id), "remove {id}");
            }
            assert_eq!(s.contains(id), model.contains(&id));
        }
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            model.iter().copied().collect::<Vec<_>>()
        );
        assert_eq!(s.len(), model.len());
        assert!(s.0.iter().all(|w| w.1 != 0), "no empty words kept");
        // Built from any order, the same set.
        let built: IdSet = model.iter().rev().copied().collect();
        assert_eq!(built, s);
        let built: IdSet = model.iter().copied().collect();
        assert_eq!(built, s);
        // Dense IDs: one word per 64.
        let dense: IdSet = (1..=10_000).collect();
        assert_eq!(dense.0.len(), 157);
        assert_eq!(dense.len(), 10_000);
    }

    #[test]
    fn node_changes_wake_the_derp_key_check() {
        let hub = Hub::default();
        let rx = hub.key_changes();
        hub.notify(Change::NodePatch(1));
        assert!(rx.try_recv().is_err(), "endpoints do not change keys");
        hub.notify(Change::NodeUpsert(1));
        hub.notify(Change::NodeRemoved(2));
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err(), "coalesced into one check");
    }
}
