//! Admission of connections that have not yet identified a node.
//!
//! Anybody who can reach the listener can open a socket; until a request
//! proves which node it is (a register or map request for a node we know),
//! a connection is charged to a global count and to a per-source-address
//! count ([`source_of`]: the IPv4 address or the IPv6 /64). Past either cap a new connection is closed at once, before any
//! buffer is allocated for it: one host cannot exhaust file descriptors
//! (the soft RLIMIT_NOFILE is 1024 under systemd) nor the memory of a
//! router, and other sources keep getting in until the global cap.
//!
//! A [`Permit`] is the charge: dropped when the connection closes, or
//! released early by [`Permit::release`] when the connection identifies
//! a node (from then on the node's own bounds apply). How long a
//! connection may stay unidentified is the HTTP/1 deadlines' and the
//! HTTP/2 driver's business (`h2srv::IDENTIFY_DEADLINE`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts per source ([`source_of`]) and in total.
pub struct Admission {
    max_total: usize,
    max_per_source: usize,
    inner: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Why a connection was refused (for the rate-limited log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The global cap on unidentified connections is reached.
    Total,
    /// This source holds its share already.
    Source,
}

impl Admission {
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_total,
            max_per_source,
            inner: Mutex::new(Counts::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Charges one unidentified connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refused> {
        let ip = source_of(ip);
        let mut c = self.lock();
        if c.total >= self.max_total {
            return Err(Refused::Total);
        }
        let n = c.by_source.entry(ip).or_insert(0);
        if *n >= self.max_per_source {
            return Err(Refused::Source);
        }
        *n += 1;
        c.total += 1;
        Ok(Permit {
            adm: Some((self.clone(), ip)),
        })
    }

    /// Unidentified connections held now (total, from `ip`).
    pub fn held(&self, ip: IpAddr) -> (usize, usize) {
        let c = self.lock();
        let ip = source_of(ip);
        (c.total, c.by_source.get(&ip).copied().unwrap_or(0))
    }

    fn give_back(&self, ip: IpAddr) {
        let mut c = self.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&ip);
            }
        }
    }
}

/// The source a peer is charged to by every per-source cap (unidentified
/// connections here, pending interactive logins, OIDC login flows): its
/// IPv4 address, or its IPv6 /64. A host on IPv6 is handed a whole /64 (a
/// /56 or /48 often), so per exact address it could spread one flood over
/// 2^64 sources; the /64 is the smallest block a site gets. An IPv4 peer
/// on a dual-stack socket arrives as `::ffff:a.b.c.d`: the same source as
/// `a.b.c.d`.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

/// One unidentified connection's charge; given back on drop or release.
pub struct Permit {
    adm: Option<(Arc<Admission>, IpAddr)>,
}

impl Permit {
    /// The connection identified a node: stop charging it.
    pub fn release(&mut self) {
        if let Some((a, ip)) = self.adm.take() {
            a.give_back(ip);
        }
    }

    /// Still charged (not identified, not released)?
    pub fn is_held(&self) -> bool {
        self.adm.is_some()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_source_and_in_total() {
        let a = Admission::new(3, 2);
        let x: IpAddr = "192.0.2.1".parse().unwrap();
        let y: IpAddr = "192.0.2.2".parse().unwrap();
        let z: IpAddr = "192.0.2.3".parse().unwrap();
        let p1 = a.admit(x).unwrap();
        let mut p2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).err(), Some(Refused::Source));
        // A v4-mapped v6 peer is the same source.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(a.admit(mapped).err(), Some(Refused::Source));
        let _p3 = a.admit(y).unwrap();
        assert_eq!(a.admit(z).err(), Some(Refused::Total));
        // Identifying gives the charge back; so does closing.
        p2.release();
        assert!(!p2.is_held());
        assert_eq!(a.held(x), (2, 1));
        let _p4 = a.admit(z).unwrap();
        drop(p1);
        drop(p2);
        assert_eq!(a.held(x), (2, 0));
        let _p5 = a.admit(x).unwrap();
        assert_eq!(a.held(x), (3, 1));
    }

    #[test]
    fn a_source_is_the_ipv4_address_or_the_ipv6_64() {
        let s = |t: &str| source_of(t.parse().unwrap()).to_string();
        assert_eq!(s("192.0.2.7"), "192.0.2.7");
        assert_eq!(s("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(s("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(s("2001:db8:1:2::1"), "2001:db8:1:2::");
        assert_eq!(s("2001:db8:1:3::1"), "2001:db8:1:3::");
        assert_eq!(s("::1"), "::");
        assert_eq!(s("fe80::1:2:3:4"), "fe80::");
    }

    #[test]
    fn addresses_in_one_ipv6_64_share_a_cap() {
        let a = Admission::new(10, 2);
        let ip = |t: &str| -> IpAddr { t.parse().unwrap() };
        let _p1 = a.admit(ip("2001:db8:0:1::1")).unwrap();
        let _p2 = a.admit(ip("2001:db8:0:1:ffff:ffff:ffff:fffe")).unwrap();
        // A third address of the same /64 is the same source.
        assert_eq!(
            a.admit(ip("2001:db8:0:1:1234::9")).err(),
            Some(Refused::Source)
        );
        assert_eq!(a.held(ip("2001:db8:0:1::42")), (2, 2));
        // The neighbouring /64 is another source.
        let _p3 = a.admit(ip("2001:db8:0:2::1")).unwrap();
        assert_eq!(a.held(ip("2001:db8:0:2::1")), (3, 1));
    }
}
