//! A small IP set: sorted, merged inclusive ranges per address family.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpSet {
    pub v4: Vec<(u32, u32)>,
    pub v6: Vec<(u128, u128)>,
}

fn norm<T: Copy + Ord + num_like::One>(v: &mut Vec<(T, T)>) {
    if v.len() < 2 {
        return;
    }
    v.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(v.len());
    for &(a, b) in v.iter() {
        if let Some(last) = out.last_mut() {
            if T::adjacent_or_overlap(last.1, a) {
                if b > last.1 {
                    last.1 = b;
                }
                continue;
            }
        }
        out.push((a, b));
    }
    *v = out;
}

mod num_like {
    pub trait One {
        fn adjacent_or_overlap(end: Self, start: Self) -> bool;
    }
    impl One for u32 {
        fn adjacent_or_overlap(end: u32, start: u32) -> bool {
            start <= end.saturating_add(1) || end == u32::MAX
        }
    }
    impl One for u128 {
        fn adjacent_or_overlap(end: u128, start: u128) -> bool {
            start <= end.saturating_add(1) || end == u128::MAX
        }
    }
}

pub fn v4_range(n: &Ipv4Net) -> (u32, u32) {
    let n = n.trunc();
    (u32::from(n.network()), u32::from(n.broadcast()))
}

pub fn v6_range(n: &Ipv6Net) -> (u128, u128) {
    let n = n.trunc();
    (u128::from(n.network()), u128::from(n.broadcast()))
}

fn contains_sorted<T: Copy + Ord>(v: &[(T, T)], x: T) -> bool {
    // first range with start > x, step back one
    let idx = v.partition_point(|r| r.0 <= x);
    idx > 0 && v[idx - 1].1 >= x
}

fn overlaps_sorted<T: Copy + Ord>(v: &[(T, T)], a: T, b: T) -> bool {
    let idx = v.partition_point(|r| r.0 <= b);
    idx > 0 && v[idx - 1].1 >= a
}

fn covers_sorted<T: Copy + Ord>(v: &[(T, T)], a: T, b: T) -> bool {
    let idx = v.partition_point(|r| r.0 <= a);
    idx > 0 && v[idx - 1].1 >= b
}

impl IpSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn all() -> Self {
        IpSet {
            v4: vec![(0, u32::MAX)],
            v6: vec![(0, u128::MAX)],
        }
    }

    pub fn from_net(n: &IpNet) -> Self {
        let mut s = IpSet::new();
        s.add_net(n);
        s
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn add_net(&mut self, n: &IpNet) {
        match n {
            IpNet::V4(n) => self.v4.push(v4_range(n)),
            IpNet::V6(n) => self.v6.push(v6_range(n)),
        }
        self.normalize();
    }

    pub fn add_addr(&mut self, a: IpAddr) {
        match a {
            IpAddr::V4(a) => {
                let x = u32::from(a);
                self.v4.push((x, x));
            }
            IpAddr::V6(a) => {
                let x = u128::from(a);
                self.v6.push((x, x));
            }
        }
        self.normalize();
    }

    /// Add without normalising; call [`IpSet::normalize`] afterwards.
    pub fn push_addr(&mut self, a: IpAddr) {
        match a {
            IpAddr::V4(a) => {
                let x = u32::from(a);
                self.v4.push((x, x));
            }
            IpAddr::V6(a) => {
                let x = u128::from(a);
                self.v6.push((x, x));
            }
        }
    }

    pub fn normalize(&mut self) {
        norm(&mut self.v4);
        norm(&mut self.v6);
    }

    pub fn union_with(&mut self, o: &IpSet) {
        self.v4.extend_from_slice(&o.v4);
        self.v6.extend_from_slice(&o.v6);
        self.normalize();
    }

    pub fn remove_v4(&mut self, a: u32, b: u32) {
        let mut out = Vec::new();
        for &(x, y) in &self.v4 {
            if y < a || x > b {
                out.push((x, y));
                continue;
            }
            if x < a {
                out.push((x, a - 1));
            }
            if y > b {
                out.push((b + 1, y));
            }
        }
        self.v4 = out;
    }

    pub fn contains(&self, a: IpAddr) -> bool {
        match a {
            IpAddr::V4(a) => contains_sorted(&self.v4, u32::from(a)),
            IpAddr::V6(a) => contains_sorted(&self.v6, u128::from(a)),
        }
    }

    pub fn overlaps_net(&self, n: &IpNet) -> bool {
        match n {
            IpNet::V4(n) => {
                let (a, b) = v4_range(n);
                overlaps_sorted(&self.v4, a, b)
            }
            IpNet::V6(n) => {
                let (a, b) = v6_range(n);
                overlaps_sorted(&self.v6, a, b)
            }
        }
    }

    pub fn covers_net(&self, n: &IpNet) -> bool {
        match n {
            IpNet::V4(n) => {
                let (a, b) = v4_range(n);
                covers_sorted(&self.v4, a, b)
            }
            IpNet::V6(n) => {
                let (a, b) = v6_range(n);
                covers_sorted(&self.v6, a, b)
            }
        }
    }

    /// Is every address of `self` inside `o`?
    pub fn is_subset_of(&self, o: &IpSet) -> bool {
        self.v4.iter().all(|&(a, b)| covers_sorted(&o.v4, a, b))
            && self.v6.iter().all(|&(a, b)| covers_sorted(&o.v6, a, b))
    }

    /// Render one string per range: bare address, CIDR when the range is
    /// exactly a prefix, else `a-b` (the spelling SaaS uses in `SrcIPs`).
    pub fn strings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for &(a, b) in &self.v4 {
            out.push(render_v4(a, b));
        }
        for &(a, b) in &self.v6 {
            out.push(render_v6(a, b));
        }
        out
    }

    /// Minimal prefix decomposition, IPv4 first.
    pub fn prefixes(&self) -> Vec<IpNet> {
        let mut out = Vec::new();
        for &(a, b) in &self.v4 {
            v4_prefixes(a, b, &mut out);
        }
        for &(a, b) in &self.v6 {
            v6_prefixes(a, b, &mut out);
        }
        out
    }
}

pub fn render_v4(a: u32, b: u32) -> String {
    if a == b {
        return Ipv4Addr::from(a).to_string();
    }
    let size = (b - a) as u64 + 1;
    if size.is_power_of_two() && (a as u64) % size == 0 {
        let len = 32 - size.trailing_zeros();
        return format!("{}/{}", Ipv4Addr::from(a), len);
    }
    format!("{}-{}", Ipv4Addr::from(a), Ipv4Addr::from(b))
}

pub fn render_v6(a: u128, b: u128) -> String {
    if a == b {
        return Ipv6Addr::from(a).to_string();
    }
    let diff = b - a;
    if diff == u128::MAX {
        return "::/0".to_string();
    }
    let size = diff + 1;
    if size.is_power_of_two() && a % size == 0 {
        let len = 128 - size.trailing_zeros();
        return format!("{}/{}", Ipv6Addr::from(a), len);
    }
    format!("{}-{}", Ipv6Addr::from(a), Ipv6Addr::from(b))
}

fn v4_prefixes(mut a: u32, b: u32, out: &mut Vec<IpNet>) {
    loop {
        // largest block starting at a and not exceeding b
        let mut len: u32 = if a == 0 { 0 } else { 32 - a.trailing_zeros() };
        loop {
            let size: u64 = 1u64 << (32 - len);
            if a as u64 + size - 1 <= b as u64 {
                break;
            }
            len += 1;
        }
        out.push(IpNet::V4(
            Ipv4Net::new(Ipv4Addr::from(a), len as u8).unwrap(),
        ));
        let size: u64 = 1u64 << (32 - len);
        let next = a as u64 + size;
        if next > b as u64 {
            break;
        }
        a = next as u32;
    }
}

fn v6_prefixes(mut a: u128, b: u128, out: &mut Vec<IpNet>) {
    loop {
        let mut len: u32 = if a == 0 { 0 } else { 128 - a.trailing_zeros() };
        loop {
            let last = if len == 0 {
                u128::MAX
            } else {
                a + ((1u128 << (128 - len)) - 1)
            };
            if last <= b {
                break;
            }
            len += 1;
        }
        out.push(IpNet::V6(
            Ipv6Net::new(Ipv6Addr::from(a), len as u8).unwrap(),
        ));
        let last = if len == 0 {
            u128::MAX
        } else {
            a + ((1u128 << (128 - len)) - 1)
        };
        if last >= b {
            break;
        }
        a = last + 1;
    }
}

/// One contiguous range of addresses (what a single filter-rule `IP`
/// string denotes), cheap to copy and test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    Empty,
    All,
    V4(u32, u32),
    V6(u128, u128),
}

impl Span {
    /// The span of a set that is a single range (or everything).
    pub fn from_set(s: &IpSet) -> Span {
        if s.v4 == [(0, u32::MAX)] && s.v6 == [(0, u128::MAX)] {
            return Span::All;
        }
        if let Some(&(a, b)) = s.v4.first() {
            return Span::V4(a, b);
        }
        if let Some(&(a, b)) = s.v6.first() {
            return Span::V6(a, b);
        }
        Span::Empty
    }

    pub fn from_addr(ip: IpAddr) -> Span {
        match ip {
            IpAddr::V4(a) => Span::V4(u32::from(a), u32::from(a)),
            IpAddr::V6(a) => Span::V6(u128::from(a), u128::from(a)),
        }
    }

    pub fn from_net(n: &IpNet) -> Span {
        match n {
            IpNet::V4(n) => {
                let (a, b) = v4_range(n);
                Span::V4(a, b)
            }
            IpNet::V6(n) => {
                let (a, b) = v6_range(n);
                Span::V6(a, b)
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Span::All, _) => true,
            (Span::V4(a, b), IpAddr::V4(x)) => (*a..=*b).contains(&u32::from(x)),
            (Span::V6(a, b), IpAddr::V6(x)) => (*a..=*b).contains(&u128::from(x)),
            _ => false,
        }
    }

    pub fn overlaps_net(&self, n: &IpNet) -> bool {
        match (self, n) {
            (Span::All, _) => true,
            (Span::V4(a, b), IpNet::V4(n)) => {
                let (x, y) = v4_range(n);
                x <= *b && *a <= y
            }
            (Span::V6(a, b), IpNet::V6(n)) => {
                let (x, y) = v6_range(n);
                x <= *b && *a <= y
            }
            _ => false,
        }
    }

    pub fn is_subset_of(&self, s: &IpSet) -> bool {
        match self {
            Span::Empty => true,
            Span::All => s.v4 == [(0, u32::MAX)] && s.v6 == [(0, u128::MAX)],
            Span::V4(a, b) => covers_sorted(&s.v4, *a, *b),
            Span::V6(a, b) => covers_sorted(&s.v6, *a, *b),
        }
    }

    /// Append to `s` without normalising.
    pub fn add_to(&self, s: &mut IpSet) {
        match self {
            Span::Empty => {}
            Span::All => {
                s.v4.push((0, u32::MAX));
                s.v6.push((0, u128::MAX));
            }
            Span::V4(a, b) => s.v4.push((*a, *b)),
            Span::V6(a, b) => s.v6.push((*a, *b)),
        }
    }
}

/// Render a prefix the way filter rules do: bare address for /32 and /128.
pub fn render_net(n: &IpNet) -> String {
    let n = n.trunc();
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

/// Parse a filter-rule IP string (`*`, CIDR, `a-b`, bare address).
pub fn parse_rule_ip(s: &str) -> Option<IpSet> {
    if s == "*" {
        return Some(IpSet::all());
    }
    if let Some((a, b)) = s.split_once('-') {
        let a: IpAddr = a.parse().ok()?;
        let b: IpAddr = b.parse().ok()?;
        let mut set = IpSet::new();
        match (a, b) {
            (IpAddr::V4(a), IpAddr::V4(b)) => set.v4.push((u32::from(a), u32::from(b))),
            (IpAddr::V6(a), IpAddr::V6(b)) => set.v6.push((u128::from(a), u128::from(b))),
            _ => return None,
        }
        return Some(set);
    }
    if let Ok(n) = s.parse::<IpNet>() {
        return Some(IpSet::from_net(&n));
    }
    let a: IpAddr = s.parse().ok()?;
    let mut set = IpSet::new();
    set.add_addr(a);
    Some(set)
}

/// Tailscale's wildcard source set: CGNAT minus the ChromeOS VM range,
/// plus the Tailscale ULA /48.
pub fn wildcard_set() -> IpSet {
    let mut s = IpSet::new();
    s.add_net(&"100.64.0.0/10".parse().unwrap());
    s.add_net(&"fd7a:115c:a1e0::/48".parse().unwrap());
    let (a, b) = v4_range(&"100.115.92.0/23".parse().unwrap());
    s.remove_v4(a, b);
    s
}

/// "The internet": all IPv4 except private, CGNAT and link-local ranges, and
/// 2000::/3.
pub fn internet_set() -> IpSet {
    let mut s = IpSet::new();
    s.v4.push((0, u32::MAX));
    for n in [
        "10.0.0.0/8",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
    ] {
        let (a, b) = v4_range(&n.parse().unwrap());
        s.remove_v4(a, b);
    }
    s.add_net(&"2000::/3".parse().unwrap());
    s
}

pub fn is_exit_route(n: &IpNet) -> bool {
    n.prefix_len() == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_renders_like_saas() {
        assert_eq!(
            wildcard_set().strings(),
            vec![
                "100.64.0.0-100.115.91.255",
                "100.115.94.0-100.127.255.255",
                "fd7a:115c:a1e0::/48"
            ]
        );
    }

    #[test]
    fn internet_renders_like_saas() {
        assert_eq!(
            internet_set().strings(),
            vec![
                "0.0.0.0-9.255.255.255",
                "11.0.0.0-100.63.255.255",
                "100.128.0.0-169.253.255.255",
                "169.255.0.0-172.15.255.255",
                "172.32.0.0-192.167.255.255",
                "192.169.0.0-255.255.255.255",
                "2000::/3"
            ]
        );
    }

    #[test]
    fn prefixes_and_ranges() {
        let mut s = IpSet::new();
        s.add_addr("100.64.0.1".parse().unwrap());
        s.add_addr("100.64.0.2".parse().unwrap());
        assert_eq!(s.strings(), vec!["100.64.0.1-100.64.0.2"]);
        let p: Vec<String> = s.prefixes().iter().map(render_net).collect();
        assert_eq!(p, vec!["100.64.0.1", "100.64.0.2"]);
        let all = IpSet::all();
        let p: Vec<String> = all.prefixes().iter().map(|n| n.to_string()).collect();
        assert_eq!(p, vec!["0.0.0.0/0", "::/0"]);
        assert!(internet_set().is_subset_of(&all));
        assert!(!all.is_subset_of(&internet_set()));
        assert!(parse_rule_ip("10.0.0.0-10.0.0.9")
            .unwrap()
            .contains("10.0.0.5".parse().unwrap()));
    }
}
