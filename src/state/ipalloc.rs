//! IP allocation: one IPv4 from `prefixes.v4` and one IPv6 from
//! `prefixes.v6` per node, allocated independently.
//!
//! Strategy: sequential. Each family walks forward from just after the
//! highest address already handed out inside the prefix (so a freed address
//! is not reused at once, which keeps stale peer caches harmless), wraps to
//! the start of the prefix once, and fails only when the prefix is full.
//! Cost per call: O(log N), a look-up of the highest address in use in the
//! node index (`state::index`); only once the top of the prefix is used
//! and the scan wraps does it step over used addresses one by one.
//!
//! Never handed out: the prefix's network and last address, quad-100
//! (100.100.100.0/24 is reserved whole), the ChromeOS VM range
//! 100.115.92.0/23, fd7a:115c:a1e0::53, and the Tailscale-reserved IPv6
//! ranges fd7a:115c:a1e0:b1a::/64 (4via6),
//! fd7a:115c:a1e0:ab12:4843:cd96:6200::/104 (4-to-6) and
//! fd7a:115c:a1e0:efe3::/64.

use super::{Nodes, OpError, State};
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

const RESERVED_V4: [(Ipv4Addr, u8); 2] = [
    (Ipv4Addr::new(100, 100, 100, 0), 24),
    (Ipv4Addr::new(100, 115, 92, 0), 23),
];

const RESERVED_V6: [(Ipv6Addr, u8); 4] = [
    (Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53), 128),
    (Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0xb1a, 0, 0, 0, 0), 64),
    (
        Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0xab12, 0x4843, 0xcd96, 0x6200, 0),
        104,
    ),
    (
        Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0xefe3, 0, 0, 0, 0),
        64,
    ),
];

/// Picks a free IPv4 in `v4` and a free IPv6 in `v6` for a new node.
pub fn allocate(state: &State, v4: Ipv4Net, v6: Ipv6Net) -> Result<(Ipv4Addr, Ipv6Addr), OpError> {
    let net4 = v4.trunc();
    let net6 = v6.trunc();
    let b4 = (
        u32::from(net4.network()) as u128,
        32 - net4.prefix_len() as u32,
    );
    let b6 = (u128::from(net6.network()), 128 - net6.prefix_len() as u32);
    let r4: Vec<(u128, u128)> = RESERVED_V4
        .iter()
        .map(|&(a, l)| range(u32::from(a) as u128, 32 - l as u32))
        .collect();
    let r6: Vec<(u128, u128)> = RESERVED_V6
        .iter()
        .map(|&(a, l)| range(u128::from(a), 128 - l as u32))
        .collect();
    let a4 = pick(b4.0, b4.1, &V4(&state.nodes), &r4)
        .ok_or_else(|| OpError::Conflict(format!("no free IPv4 address left in {net4}")))?;
    let a6 = pick(b6.0, b6.1, &V6(&state.nodes), &r6)
        .ok_or_else(|| OpError::Conflict(format!("no free IPv6 address left in {net6}")))?;
    Ok((Ipv4Addr::from(a4 as u32), Ipv6Addr::from(a6)))
}

/// First and last address of a block of `2^host_bits` starting at `base`.
fn range(base: u128, host_bits: u32) -> (u128, u128) {
    let size_m1 = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    (base, base.saturating_add(size_m1))
}

/// The addresses in use, as the node index keeps them (sorted).
trait Used {
    /// The highest used address in `[lo, hi]`.
    fn highest(&self, lo: u128, hi: u128) -> Option<u128>;
    fn contains(&self, a: u128) -> bool;
}

/// The IPv4 addresses in use, from the node index.
struct V4<'a>(&'a Nodes);
/// The IPv6 addresses in use, from the node index.
struct V6<'a>(&'a Nodes);

impl Used for V4<'_> {
    fn highest(&self, lo: u128, hi: u128) -> Option<u128> {
        let lo = u32::try_from(lo).ok()?;
        let hi = u32::try_from(hi).unwrap_or(u32::MAX);
        self.0.highest_v4(lo, hi).map(u128::from)
    }
    fn contains(&self, a: u128) -> bool {
        u32::try_from(a).is_ok_and(|a| self.0.v4_used(a))
    }
}

impl Used for V6<'_> {
    fn highest(&self, lo: u128, hi: u128) -> Option<u128> {
        self.0.highest_v6(lo, hi)
    }
    fn contains(&self, a: u128) -> bool {
        self.0.v6_used(a)
    }
}

/// Sequential pick in the block `[base, base + 2^host_bits)`, excluding its
/// first and last address, the `used` ones and the `reserved` ranges.
///
/// Fast path: nothing above the highest used address is taken, so the
/// forward scan starts right after it: O(log N) with the sorted index.
/// Only once the top of the block is used does the scan wrap to the start
/// and step over used addresses one by one.
fn pick(base: u128, host_bits: u32, used: &impl Used, reserved: &[(u128, u128)]) -> Option<u128> {
    let (first, last) = range(base, host_bits);
    if last - first < 2 {
        return None;
    }
    let (lo, hi) = (first + 1, last - 1);
    let highest = used.highest(lo, hi);
    let start = match highest {
        Some(h) if h < hi => h + 1,
        _ => lo,
    };
    if highest.map_or(true, |h| h < hi) {
        // Nothing above `highest` is used: only reserved ranges to skip.
        if let Some(a) = scan(start, hi, &|_| false, reserved) {
            return Some(a);
        }
    }
    scan(lo, hi, &|a| used.contains(a), reserved)
}

/// First free address in `[from, to]`. Each step either returns or skips a
/// used address or a whole reserved range, so the loop runs at most
/// `used + reserved.len() + 1` times.
fn scan(
    from: u128,
    to: u128,
    used: &dyn Fn(u128) -> bool,
    reserved: &[(u128, u128)],
) -> Option<u128> {
    let mut a = from;
    loop {
        if a > to {
            return None;
        }
        if let Some(&(_, end)) = reserved.iter().find(|(s, e)| (*s..=*e).contains(&a)) {
            a = end.checked_add(1)?;
            continue;
        }
        if used(a) {
            a = a.checked_add(1)?;
            continue;
        }
        return Some(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    impl Used for BTreeSet<u128> {
        fn highest(&self, lo: u128, hi: u128) -> Option<u128> {
            self.range(lo..=hi).next_back().copied()
        }
        fn contains(&self, a: u128) -> bool {
            BTreeSet::contains(self, &a)
        }
    }

    /// A used set as the index keeps it (IPv6 form: any u128).
    fn set(v: &[u128]) -> BTreeSet<u128> {
        v.iter().copied().collect()
    }

    fn v4(s: &str) -> u128 {
        u32::from(s.parse::<Ipv4Addr>().unwrap()) as u128
    }

    #[test]
    fn skips_network_used_and_reserved() {
        let r: Vec<_> = RESERVED_V4
            .iter()
            .map(|&(a, l)| range(u32::from(a) as u128, 32 - l as u32))
            .collect();
        let base = v4("100.64.0.0");
        assert_eq!(pick(base, 22, &set(&[]), &r), Some(v4("100.64.0.1")));
        assert_eq!(
            pick(base, 22, &set(&[v4("100.64.0.1"), v4("100.64.0.2")]), &r),
            Some(v4("100.64.0.3"))
        );
        // Walks forward from the highest used address, not into a hole.
        assert_eq!(
            pick(base, 22, &set(&[v4("100.64.0.5")]), &r),
            Some(v4("100.64.0.6"))
        );
        // Quad-100 /24 and ChromeOS /23 are skipped.
        let b = v4("100.100.99.255");
        assert_eq!(
            pick(v4("100.100.0.0"), 16, &set(&[b]), &r),
            Some(v4("100.100.101.0"))
        );
        assert_eq!(
            pick(v4("100.115.0.0"), 16, &set(&[v4("100.115.91.255")]), &r),
            Some(v4("100.115.94.0"))
        );
        // Wraps around once the top is used, then reports exhaustion.
        let net = v4("10.0.0.0");
        assert_eq!(
            pick(net, 2, &set(&[v4("10.0.0.2")]), &r),
            Some(v4("10.0.0.1"))
        );
        assert_eq!(
            pick(net, 2, &set(&[v4("10.0.0.1"), v4("10.0.0.2")]), &r),
            None
        );
        assert_eq!(pick(net, 1, &set(&[]), &r), None);
        // The node index answers the same (IPv4 and IPv6).
        let node = |id: u64, a: u128| crate::state::Node {
            id,
            node_key: [id as u8; 32],
            ipv4: Some(Ipv4Addr::from(a as u32)),
            ipv6: Some(Ipv6Addr::from(a << 64)),
            ..Default::default()
        };
        let ns: Nodes = [node(1, v4("100.64.0.5")), node(2, v4("10.0.0.2"))]
            .into_iter()
            .collect();
        assert_eq!(pick(base, 22, &V4(&ns), &r), Some(v4("100.64.0.6")));
        assert_eq!(pick(net, 2, &V4(&ns), &r), Some(v4("10.0.0.1")));
        let r6: Vec<(u128, u128)> = Vec::new();
        assert_eq!(
            pick(v4("10.0.0.0") << 64, 66, &V6(&ns), &r6),
            Some((v4("10.0.0.2") << 64) + 1)
        );
    }

    #[test]
    fn v6_reserved() {
        let r: Vec<_> = RESERVED_V6
            .iter()
            .map(|&(a, l)| range(u128::from(a), 128 - l as u32))
            .collect();
        let base = u128::from("fd7a:115c:a1e0::".parse::<Ipv6Addr>().unwrap());
        let arr = [base + 0x52];
        let used = set(&arr);
        assert_eq!(pick(base, 80, &used, &r), Some(base + 0x54));
        let b1a = u128::from("fd7a:115c:a1e0:b1a::".parse::<Ipv6Addr>().unwrap());
        let arr = [b1a - 1];
        let used = set(&arr);
        assert_eq!(pick(base, 80, &used, &r), Some(b1a + (1u128 << 64)));
    }
}
