//! The node table with the lookups a registration needs kept as indexes,
//! so that registering the N-th node costs O(log N) instead of a pass over
//! every node: by node key, by machine key, by DNS name (`given_name`), and
//! the addresses in use.
//!
//! [`Nodes`] reads like the `BTreeMap<u64, Node>` it wraps (it derefs to
//! it); every write goes through [`Nodes::insert`], [`Nodes::remove`] or
//! [`Nodes::update`], which keep the indexes in step. The indexes live only
//! in memory: [`State::load`](super::State::load) rebuilds them from the
//! tables, and every writer of the table (register, map updates, admin
//! operations) already writes memory in the same place it queues the store
//! batch, so they cannot drift from redb.
//!
//! Compact on purpose (memory per node counts): a key or a name is indexed
//! by a 64-bit keyed SipHash of it plus the node id (16 bytes per entry),
//! never a copy; a hit is confirmed against the node itself, so a hash
//! collision costs one extra comparison, never a wrong answer. Addresses
//! are kept as integers with a use count (two nodes may share one after an
//! import).

use super::model::Node;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Bound::Included;

/// Every index is this one map type, so the B-tree code is linked once
/// (binary size counts as much as memory here): a key of two words and a
/// 32-bit value.
type Idx = BTreeMap<(u64, u64), u32>;

#[derive(Default)]
pub struct Nodes {
    map: BTreeMap<u64, Node>,
    hasher: RandomState,
    /// (hash of the node key, id).
    node_keys: Idx,
    /// (hash of the machine key, id).
    machine_keys: Idx,
    /// (hash of the DNS name, id).
    names: Idx,
    /// (IPv4 address, id).
    v4: Idx,
    /// (upper, lower half of the IPv6 address) → nodes holding it.
    v6: Idx,
    /// (id, 0) of every node serving a subnet route (approved and
    /// advertised, not an exit route): the HA election's candidates, so it
    /// need not walk every node each time a session starts or ends.
    routers: Idx,
    /// (hash of a DNS name base `b` that collided, 0) → `h`: every `b-1` …
    /// `b-(h-1)` is taken, so the search for a free `b-i` starts at `h`
    /// instead of 1 (many nodes reporting one hostname stay O(log N) each).
    /// Lowered when such a name is freed.
    name_hint: Idx,
    /// Steps of the suffix-hint walk in `link` (tests: it must not grow
    /// with the number of nodes when nodes are rewritten).
    #[cfg(test)]
    hint_steps: u64,
}

impl std::ops::Deref for Nodes {
    type Target = BTreeMap<u64, Node>;
    fn deref(&self) -> &BTreeMap<u64, Node> {
        &self.map
    }
}

impl FromIterator<Node> for Nodes {
    /// Builds the table in one go (full B-tree leaves, as a collected
    /// `BTreeMap`), then the indexes.
    fn from_iter<I: IntoIterator<Item = Node>>(iter: I) -> Self {
        let map: BTreeMap<u64, Node> = iter.into_iter().map(|n| (n.id, n)).collect();
        let mut out = Nodes::default();
        for n in map.values() {
            out.link(n, true);
        }
        out.map = map;
        out
    }
}

/// What of a node the indexes look at (to skip reindexing when an update
/// leaves it alone, e.g. `last_seen`).
type Indexed = (
    [u8; 32],
    [u8; 32],
    String,
    Option<Ipv4Addr>,
    Option<Ipv6Addr>,
    bool,
);

fn indexed(n: &Node) -> Indexed {
    (
        n.node_key,
        n.machine_key,
        n.given_name.clone(),
        n.ipv4,
        n.ipv6,
        n.serves_subnet(),
    )
}

fn same_indexed(a: &Node, b: &Indexed) -> bool {
    a.node_key == b.0
        && a.machine_key == b.1
        && a.given_name == b.2
        && a.ipv4 == b.3
        && a.ipv6 == b.4
        && a.serves_subnet() == b.5
}

fn halves(a: Ipv6Addr) -> (u64, u64) {
    let a = u128::from(a);
    ((a >> 64) as u64, a as u64)
}

/// Keys of `idx` in `[(lo, 0), (hi, u64::MAX)]`.
fn span(idx: &Idx, lo: u64, hi: u64) -> impl DoubleEndedIterator<Item = (u64, u64)> + '_ {
    idx.range((Included((lo, 0)), Included((hi, u64::MAX))))
        .map(|(&k, _)| k)
}

impl Nodes {
    fn h(&self, bytes: &[u8]) -> u64 {
        self.hasher.hash_one(bytes)
    }

    /// Inserts or replaces node `id` (`node.id` must be `id`).
    pub fn insert(&mut self, id: u64, node: Node) -> Option<Node> {
        debug_assert_eq!(id, node.id);
        let Some(old) = self.map.remove(&id) else {
            self.link(&node, true);
            self.map.insert(id, node);
            return None;
        };
        // A replacement (a map request's endpoints, a re-registration)
        // usually keeps every indexed field: nothing to do then, and the
        // name index is touched only if the name changed (see `link`).
        if !same_indexed(&node, &indexed(&old)) {
            let name = old.given_name != node.given_name;
            self.unlink(&old, name);
            self.link(&node, name);
        }
        self.map.insert(id, node);
        Some(old)
    }

    /// Removes node `id`; its key, name and addresses become free.
    pub fn remove(&mut self, id: &u64) -> Option<Node> {
        let old = self.map.remove(id)?;
        self.unlink(&old, true);
        Some(old)
    }

    /// Changes node `id` in place, reindexing only if an indexed field
    /// changed. `None` if there is no such node.
    pub fn update<R>(&mut self, id: u64, f: impl FnOnce(&mut Node) -> R) -> Option<R> {
        let n = self.map.get_mut(&id)?;
        let before = indexed(n);
        let r = f(n);
        if !same_indexed(n, &before) {
            let n = self.map.remove(&id)?;
            let mut old = n.clone();
            // (`unlink` takes the router entry out by id alone.)
            (
                old.node_key,
                old.machine_key,
                old.given_name,
                old.ipv4,
                old.ipv6,
                _,
            ) = before;
            let name = old.given_name != n.given_name;
            self.unlink(&old, name);
            self.link(&n, name);
            self.map.insert(id, n);
        }
        Some(r)
    }

    /// Adds `n` to the indexes; to the name index only if `name`. Relinking
    /// an unchanged name would cost O(N): `unlink` lowers the suffix hint
    /// to the freed `b-i`, and linking `b-i` again walks the hint up past
    /// every taken `b-…` (10,000 nodes named `b-1` … `b-10000` made each
    /// map request a pass over all of them).
    fn link(&mut self, n: &Node, name: bool) {
        let (k, m) = (self.h(&n.node_key), self.h(&n.machine_key));
        self.node_keys.insert((k, n.id), 0);
        self.machine_keys.insert((m, n.id), 0);
        if let Some(a) = n.ipv4 {
            self.v4.insert((u32::from(a) as u64, n.id), 0);
        }
        if let Some(a) = n.ipv6 {
            *self.v6.entry(halves(a)).or_default() += 1;
        }
        if n.serves_subnet() {
            self.routers.insert((n.id, 0), 0);
        }
        if !name {
            return;
        }
        let g = self.h(n.given_name.as_bytes());
        self.names.insert((g, n.id), 0);
        // A name `b-i` taken where the search for base `b` would start:
        // move the start past every taken `b-…`.
        if let Some((base, i)) = split_suffix(&n.given_name) {
            let bh = self.h(base.as_bytes());
            if i == self.name_suffix_start(base) {
                // By the name index alone (the table may not hold the
                // nodes yet, see `from_iter`): a 64-bit hash collision
                // could only move the start past a free name, never hand
                // out a taken one.
                let mut next = i + 1;
                while {
                    #[cfg(test)]
                    {
                        self.hint_steps += 1;
                    }
                    let h = self.h(format!("{base}-{next}").as_bytes());
                    span(&self.names, h, h).next().is_some()
                } {
                    next += 1;
                }
                self.name_hint
                    .insert((bh, 0), u32::try_from(next).unwrap_or(u32::MAX));
            }
        }
    }

    /// Takes `n` out of the indexes; out of the name index only if `name`.
    fn unlink(&mut self, n: &Node, name: bool) {
        let (k, m) = (self.h(&n.node_key), self.h(&n.machine_key));
        self.node_keys.remove(&(k, n.id));
        self.machine_keys.remove(&(m, n.id));
        self.routers.remove(&(n.id, 0));
        if let Some(a) = n.ipv4 {
            self.v4.remove(&(u32::from(a) as u64, n.id));
        }
        if let Some(a) = n.ipv6 {
            let k = halves(a);
            if let Some(c) = self.v6.get_mut(&k) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    self.v6.remove(&k);
                }
            }
        }
        if !name {
            return;
        }
        let g = self.h(n.given_name.as_bytes());
        self.names.remove(&(g, n.id));
        if let Some((base, i)) = split_suffix(&n.given_name) {
            let bh = self.h(base.as_bytes());
            if let Some(h) = self.name_hint.get_mut(&(bh, 0)) {
                if i < u64::from(*h) {
                    *h = i as u32;
                }
            }
        }
    }

    /// The nodes serving a subnet route, lowest id first.
    pub fn routers(&self) -> impl Iterator<Item = &Node> + '_ {
        self.routers.keys().filter_map(|(id, _)| self.map.get(id))
    }

    /// Ids whose `idx` entry has hash `h`, lowest id first.
    fn ids(idx: &Idx, h: u64) -> impl Iterator<Item = u64> + '_ {
        span(idx, h, h).map(|(_, id)| id)
    }

    /// The node (lowest id if several) whose current node key is `key`.
    pub fn by_node_key(&self, key: &[u8; 32]) -> Option<&Node> {
        Self::ids(&self.node_keys, self.h(key))
            .filter_map(|id| self.map.get(&id))
            .find(|n| &n.node_key == key)
    }

    /// The node (lowest id if several) of machine key `key`.
    pub fn by_machine_key(&self, key: &[u8; 32]) -> Option<&Node> {
        Self::ids(&self.machine_keys, self.h(key))
            .filter_map(|id| self.map.get(&id))
            .find(|n| &n.machine_key == key)
    }

    /// Does a node other than `except` (0: none) have DNS name `name`?
    pub fn name_taken(&self, name: &str, except: u64) -> bool {
        Self::ids(&self.names, self.h(name.as_bytes()))
            .filter(|&id| id != except)
            .filter_map(|id| self.map.get(&id))
            .any(|n| n.given_name == name)
    }

    /// The first `i` worth trying for a free `base-i` (see `name_hint`).
    pub fn name_suffix_start(&self, base: &str) -> u64 {
        self.name_hint
            .get(&(self.h(base.as_bytes()), 0))
            .map_or(1, |&h| u64::from(h))
    }

    /// The highest IPv4 address in use in `[lo, hi]` (as integers).
    pub fn highest_v4(&self, lo: u32, hi: u32) -> Option<u32> {
        span(&self.v4, lo.into(), hi.into())
            .next_back()
            .map(|(a, _)| a as u32)
    }

    pub fn v4_used(&self, a: u32) -> bool {
        span(&self.v4, a.into(), a.into()).next().is_some()
    }

    /// The highest IPv6 address in use in `[lo, hi]` (as integers).
    pub fn highest_v6(&self, lo: u128, hi: u128) -> Option<u128> {
        let k = |a: u128| ((a >> 64) as u64, a as u64);
        self.v6
            .range((Included(k(lo)), Included(k(hi))))
            .next_back()
            .map(|(&(h, l), _)| (u128::from(h) << 64) | u128::from(l))
    }

    pub fn v6_used(&self, a: u128) -> bool {
        self.v6.contains_key(&((a >> 64) as u64, a as u64))
    }

    /// Entries per index (tests).
    #[cfg(test)]
    pub fn index_entries(&self) -> [usize; 7] {
        [
            self.node_keys.len(),
            self.machine_keys.len(),
            self.names.len(),
            self.v4.len(),
            self.v6.len(),
            self.name_hint.len(),
            self.routers.len(),
        ]
    }
}

/// `"web-12"` → `("web", 12)`: a name as `unique_given_name` makes it on a
/// collision (digits without a leading zero after the last `-`).
pub(crate) fn split_suffix(name: &str) -> Option<(&str, u64)> {
    let (base, digits) = name.rsplit_once('-')?;
    if base.is_empty()
        || digits.is_empty()
        || digits.starts_with('0')
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((base, digits.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn node(id: u64, name: &str) -> Node {
        Node {
            id,
            machine_key: [id as u8; 32],
            node_key: [(id as u8).wrapping_add(100); 32],
            given_name: name.into(),
            ipv4: Some(Ipv4Addr::new(100, 64, 0, id as u8)),
            ipv6: Some(Ipv6Addr::from(
                (0xfd7a_115c_a1e0_u128 << 80) | (id as u128) << 70,
            )),
            ..Default::default()
        }
    }

    /// The indexes agree with a scan over the table.
    fn check(ns: &Nodes) {
        for n in ns.values() {
            let by_nk = ns.values().find(|m| m.node_key == n.node_key).unwrap();
            assert_eq!(ns.by_node_key(&n.node_key).unwrap().id, by_nk.id);
            let by_mk = ns
                .values()
                .find(|m| m.machine_key == n.machine_key)
                .unwrap();
            assert_eq!(ns.by_machine_key(&n.machine_key).unwrap().id, by_mk.id);
            assert!(ns.name_taken(&n.given_name, 0));
        }
        for n in ns.values() {
            let (a4, a6) = (n.ipv4.map(u32::from), n.ipv6.map(u128::from));
            assert!(a4.map_or(true, |a| ns.v4_used(a) && ns.highest_v4(a, a) == Some(a)));
            assert!(a6.map_or(true, |a| ns.v6_used(a) && ns.highest_v6(a, a) == Some(a)));
        }
        let v4: BTreeSet<u32> = ns.values().filter_map(|n| n.ipv4.map(u32::from)).collect();
        assert_eq!(ns.highest_v4(0, u32::MAX), v4.last().copied());
        let v6: BTreeSet<u128> = ns.values().filter_map(|n| n.ipv6.map(u128::from)).collect();
        assert_eq!(ns.highest_v6(0, u128::MAX), v6.last().copied());
        assert_eq!(ns.index_entries()[4], v6.len());
        let [a, b, c, d, ..] = ns.index_entries();
        assert_eq!([a, b, c, d], [ns.len(); 4]);
        let routers: Vec<u64> = ns.routers().map(|n| n.id).collect();
        let scan: Vec<u64> = ns
            .values()
            .filter(|n| n.serves_subnet())
            .map(|n| n.id)
            .collect();
        assert_eq!(routers, scan);
    }

    #[test]
    fn rewriting_nodes_does_not_walk_the_name_suffixes() {
        // Names as collisions make them: b-1 … b-2000.
        let mut ns: Nodes = (1..=2000).map(|i| node(i, &format!("b-{i}"))).collect();
        let built = ns.hint_steps;
        // Every node rewritten as a map request does (endpoints), then by
        // update (last_seen), then with a new node key (key rotation).
        for i in 1..=2000 {
            let mut n = ns[&i].clone();
            n.endpoints = vec!["192.0.2.1:41641".into()];
            ns.insert(i, n);
            ns.update(i, |n| n.last_seen += 1);
            ns.update(i, |n| n.node_key[1] ^= 0xff);
        }
        check(&ns);
        assert_eq!(ns.hint_steps, built, "no walk for an unchanged name");
        assert_eq!(ns.name_suffix_start("b"), 2001);
        // A real rename still moves the hint both ways.
        ns.update(7, |n| n.given_name = "x".into());
        assert_eq!(ns.name_suffix_start("b"), 7);
        ns.update(7, |n| n.given_name = "b-7".into());
        assert_eq!(ns.name_suffix_start("b"), 2001);
        check(&ns);
    }

    #[test]
    fn routers_follow_advertised_and_approved_routes() {
        let mut ns: Nodes = [node(1, "a"), node(2, "b"), node(3, "c")]
            .into_iter()
            .collect();
        let subnet = || vec!["10.0.0.0/24".to_string()];
        let exit = || vec!["0.0.0.0/0".to_string(), "::/0".to_string()];
        ns.update(2, |n| n.advertised_routes = subnet());
        check(&ns);
        assert_eq!(ns.routers().count(), 0, "advertised, not approved");
        ns.update(2, |n| n.approved_routes = subnet());
        check(&ns);
        assert_eq!(ns.routers().map(|n| n.id).collect::<Vec<_>>(), [2]);
        // An exit node alone is no candidate in the subnet election.
        ns.update(3, |n| {
            (n.advertised_routes, n.approved_routes) = (exit(), exit())
        });
        check(&ns);
        assert_eq!(ns.routers().count(), 1);
        let mut n = node(4, "d");
        (n.advertised_routes, n.approved_routes) = (subnet(), subnet());
        ns.insert(4, n);
        check(&ns);
        assert_eq!(ns.routers().map(|n| n.id).collect::<Vec<_>>(), [2, 4]);
        // No longer advertised (the client withdrew it), then removed.
        ns.update(2, |n| n.advertised_routes.clear());
        check(&ns);
        ns.remove(&4);
        check(&ns);
        assert_eq!(ns.routers().count(), 0);
    }

    #[test]
    fn follows_insert_replace_update_remove() {
        let mut ns: Nodes = [node(1, "a"), node(2, "b")].into_iter().collect();
        check(&ns);
        assert!(ns.by_node_key(&[0; 32]).is_none());
        // Replace: the old key and name are free, the new ones found.
        let mut n = node(1, "c");
        n.node_key = [7; 32];
        n.ipv4 = Some(Ipv4Addr::new(100, 64, 0, 2));
        n.ipv6 = ns[&2].ipv6;
        ns.insert(1, n);
        check(&ns);
        assert!(ns.by_node_key(&[101; 32]).is_none());
        assert!(!ns.name_taken("a", 0));
        assert!(ns.name_taken("c", 0) && !ns.name_taken("c", 1));
        let two = u32::from(Ipv4Addr::new(100, 64, 0, 2));
        assert_eq!(ns.highest_v4(0, two), Some(two));
        assert!(!ns.v4_used(two - 1));
        // An update of an unindexed field keeps everything; of a key reindexes.
        assert_eq!(ns.update(2, |n| n.last_seen = 5), Some(()));
        check(&ns);
        ns.update(2, |n| n.node_key = [9; 32]).unwrap();
        check(&ns);
        assert_eq!(ns.by_node_key(&[9; 32]).unwrap().id, 2);
        assert!(ns.by_node_key(&[102; 32]).is_none());
        assert!(ns.update(3, |_| ()).is_none());
        ns.remove(&1);
        check(&ns);
        assert!(ns.by_node_key(&[7; 32]).is_none() && !ns.name_taken("c", 0));
        assert!(ns.v4_used(two) && !ns.v4_used(two - 1));
        assert!(
            ns.v6_used(ns[&2].ipv6.unwrap().into()),
            "still held by node 2"
        );
        assert_eq!(ns.highest_v4(0, u32::MAX), Some(two));
        // Two nodes of one machine key: the lowest id, as a scan finds it.
        let mut n = node(5, "e");
        n.machine_key = [2; 32];
        ns.insert(5, n);
        check(&ns);
        assert_eq!(ns.by_machine_key(&[2; 32]).unwrap().id, 2);
        ns.remove(&2);
        assert_eq!(ns.by_machine_key(&[2; 32]).unwrap().id, 5);
    }

    #[test]
    fn suffix_hint_moves_both_ways() {
        assert_eq!(split_suffix("web-12"), Some(("web", 12)));
        assert_eq!(split_suffix("a-b-3"), Some(("a-b", 3)));
        for s in ["web", "web-", "-3", "web-03", "web-3x"] {
            assert_eq!(split_suffix(s), None, "{s}");
        }
        let mut ns = Nodes::default();
        assert_eq!(ns.name_suffix_start("web"), 1);
        ns.insert(1, node(1, "web"));
        ns.insert(3, node(3, "web-2"));
        assert_eq!(ns.name_suffix_start("web"), 1, "web-1 is still free");
        ns.insert(2, node(2, "web-1"));
        assert_eq!(ns.name_suffix_start("web"), 3, "1 and 2 taken");
        ns.insert(4, node(4, "web-3"));
        assert_eq!(ns.name_suffix_start("web"), 4);
        ns.remove(&3);
        assert_eq!(ns.name_suffix_start("web"), 2, "web-2 freed");
        // Built in one go (as on load): the same start.
        let again: Nodes = ns.values().cloned().collect();
        assert_eq!(again.name_suffix_start("web"), 2);
        let out_of_order: Nodes = [node(1, "web-2"), node(2, "web-1")].into_iter().collect();
        assert_eq!(out_of_order.name_suffix_start("web"), 3);
        // A rename away from a suffixed name frees it too.
        ns.update(2, |n| n.given_name = "other".into());
        assert_eq!(ns.name_suffix_start("web"), 1);
    }

    /// Heap bytes the indexes add per node (glibc's in-use byte count,
    /// before and after building them), printed, not asserted. Run alone:
    /// `cargo test --release --lib index_bytes_per_node -- --ignored --nocapture`.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    #[ignore]
    fn index_bytes_per_node() {
        #[repr(C)]
        struct MallInfo2 {
            f: [usize; 10],
        }
        extern "C" {
            fn mallinfo2() -> MallInfo2;
        }
        // uordblks: bytes in use (all arenas).
        let in_use = || unsafe { mallinfo2() }.f[7];
        const N: u64 = 100_000;
        let mk = |i: u64| {
            let mut n = node(i, &format!("host-{}", i * 7919 % 1_000_003));
            n.node_key[..8].copy_from_slice(&i.to_le_bytes());
            n.machine_key[8..16].copy_from_slice(&i.to_le_bytes());
            n.ipv4 = Some(Ipv4Addr::from(0x6440_0000 + i as u32));
            n.ipv6 = Some(Ipv6Addr::from(0xfd7a_115c_a1e0_u128 << 80 | i as u128));
            n
        };
        let a = in_use();
        let plain: BTreeMap<u64, Node> = (1..=N).map(|i| (i, mk(i))).collect();
        let b = in_use();
        drop(plain);
        let c = in_use();
        let indexed: Nodes = (1..=N).map(mk).collect();
        let d = in_use();
        let per = |x: usize, y: usize| y.saturating_sub(x) as f64 / N as f64;
        println!(
            "{N} nodes: table {:.1} B/node, table + indexes {:.1} B/node: indexes {:.1} B/node",
            per(a, b),
            per(c, d),
            per(c, d) - per(a, b)
        );
        drop(indexed);
    }
}
