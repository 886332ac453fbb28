//! Per-source limits: how many TCP/TLS connections one client address may hold open.
//!
//! A source is an IPv4 address or an IPv6 /64 (one subscriber's prefix: counting single IPv6
//! addresses would let one host pick a fresh address per connection). The allocation quota
//! per source in the sans-IO core uses the same [`source_of`]. The IO shell asks
//! [`PerIpLimit::try_acquire`] after `accept`; the returned [`IpSlot`] gives the place back
//! when the connection's task ends, however it ends.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// The address a per-source limit counts `ip` under: itself for IPv4, its /64 for IPv6
/// (IPv4-mapped IPv6 addresses count as their IPv4 address).
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(a) & !((1u128 << 64) - 1))),
        },
    }
}

/// Open connections per source, at most `max` each.
#[derive(Debug)]
pub(crate) struct PerIpLimit {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One connection's place in its source's count; released on drop.
#[derive(Debug)]
pub(crate) struct IpSlot {
    limit: Arc<PerIpLimit>,
    source: IpAddr,
}

impl PerIpLimit {
    pub(crate) fn new(max: u32) -> Arc<Self> {
        Arc::new(PerIpLimit {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        // The map stays consistent whatever panicked while holding it (only += and -=).
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection from `ip`, or `None` when its source has `max` open.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let source = source_of(ip);
        let mut open = self.lock();
        let n = open.entry(source).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            limit: self.clone(),
            source,
        })
    }

    /// Connections open now from `ip`'s source.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> u32 {
        self.lock().get(&source_of(ip)).copied().unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.limit.lock();
        if let Some(n) = open.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sources() {
        assert_eq!(source_of(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(source_of(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(source_of(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn limit_per_source_and_release_on_drop() {
        let l = PerIpLimit::new(2);
        let a = l.try_acquire(ip("192.0.2.1")).unwrap();
        let _b = l.try_acquire(ip("192.0.2.1")).unwrap();
        assert!(
            l.try_acquire(ip("192.0.2.1")).is_none(),
            "third from one IP"
        );
        let _other = l.try_acquire(ip("192.0.2.2")).unwrap();
        let _v6 = l.try_acquire(ip("2001:db8::1")).unwrap();
        let _v6b = l.try_acquire(ip("2001:db8::2")).unwrap();
        assert!(
            l.try_acquire(ip("2001:db8::3")).is_none(),
            "one IPv6 /64 is one source"
        );
        drop(a);
        assert_eq!(l.open(ip("192.0.2.1")), 1);
        assert!(l.try_acquire(ip("192.0.2.1")).is_some());
    }
}
