//! Admission of connections that have not yet identified a node.
//!
//! Anybody who can reach the listener can open a socket; until a request
//! proves which node it is (a register or map request for a node we know),
//! a connection is charged to a global count and to a per-source-address
//! count. Past either cap a new connection is closed at once, before any
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

/// Counts per source address and in total.
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
    /// This source address holds its share already.
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
        let ip = canonical(ip);
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
        let ip = canonical(ip);
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

/// An IPv4 peer on a dual-stack socket arrives as `::ffff:a.b.c.d`; it is
/// the same source as `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
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
}
