//! Join budgets (issue 24, item 10; docs/security.md): how many joins (a `join` whose token
//! verified) one identity of a consultation and one source address may make a minute
//! (`[http] join_limit_per_identity`, `join_limit_per_ip`), and which address a signaling
//! WebSocket comes from: its TCP peer, or, only when that peer is a configured trusted proxy
//! (`[http] trusted_proxies`), the address that proxy appended to `X-Forwarded-For`.
//!
//! `ws.rs` asks before a join reaches the consultation service or a media worker, so a refused
//! join costs neither a policy read nor a transport. The buckets are [`RateLimiter`]s (bounded
//! maps); nothing here logs an identity or an address.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use consulta_signaling::protocol::{ErrorCode, ServerMessage};

use crate::config::HttpConfig;
use crate::rate_limit::RateLimiter;

/// The join budgets of the signaling listener and the proxies it believes.
pub struct JoinLimits {
    per_identity: Mutex<RateLimiter<(String, String)>>,
    per_source: Mutex<RateLimiter<IpAddr>>,
    trusted: Vec<Cidr>,
}

/// Why a join was refused, and when the budget has room again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Identity(Duration),
    Address(Duration),
}

impl Refused {
    /// The `rate_limited` message the client gets.
    pub fn message(self) -> String {
        let (whose, wait) = match self {
            Refused::Identity(w) => ("this participant", w),
            Refused::Address(w) => ("this network address", w),
        };
        let secs = (wait.as_secs_f64().ceil() as u64).max(1);
        format!("too many joins from {whose}; retry in {secs} s")
    }

    /// What the client is told before its socket is closed: `rate_limited`, fatal.
    pub fn to_message(self) -> ServerMessage {
        ServerMessage::Error {
            code: ErrorCode::RateLimited,
            message: self.message(),
            fatal: true,
        }
    }

    /// The metric label.
    pub fn limit(self) -> &'static str {
        match self {
            Refused::Identity(_) => "identity",
            Refused::Address(_) => "address",
        }
    }
}

impl JoinLimits {
    /// From `[http]`; an entry of `trusted_proxies` that is not an address or CIDR range is
    /// an error.
    pub fn new(cfg: &HttpConfig) -> Result<JoinLimits, String> {
        let trusted = cfg
            .trusted_proxies
            .iter()
            .map(|s| Cidr::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JoinLimits {
            per_identity: Mutex::new(RateLimiter::per_minute(cfg.join_limit_per_identity)),
            per_source: Mutex::new(RateLimiter::per_minute(cfg.join_limit_per_ip)),
            trusted,
        })
    }

    /// Takes one join from the budgets of `source` and of `identity` in `room`; a refusal is
    /// counted (`consulta_joins_refused_total`). The address is checked first: joins refused
    /// for it do not spend the identity's budget.
    pub fn check(
        &self,
        room: &str,
        identity: &str,
        source: IpAddr,
        now: Instant,
    ) -> Result<(), Refused> {
        let verdict = self
            .per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(&source_key(source), now)
            .map_err(Refused::Address)
            .and_then(|()| {
                self.per_identity
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .check(&(room.to_owned(), identity.to_owned()), now)
                    .map_err(Refused::Identity)
            });
        if let Err(r) = verdict {
            crate::metrics::SIGNALING.join_refused(r.limit());
        }
        verdict
    }

    /// The address a connection comes from: `peer` itself unless it is a trusted proxy; then,
    /// reading `X-Forwarded-For` (all its headers joined by commas, in order) from the right,
    /// the first address that is not a trusted proxy. Everything left of that is written by
    /// the client and never believed; a header that cannot be read gives the last trusted hop.
    pub fn client_addr(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let mut hop = peer.to_canonical();
        if !self.is_trusted(hop) {
            return hop;
        }
        for part in forwarded_for.unwrap_or_default().rsplit(',') {
            let part = part.trim();
            let parsed = part
                .parse::<IpAddr>()
                .ok()
                .or_else(|| part.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()));
            let Some(ip) = parsed.map(|ip| ip.to_canonical()) else {
                return hop;
            };
            hop = ip;
            if !self.is_trusted(ip) {
                return ip;
            }
        }
        hop
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }
}

/// An IPv4 address, or an IPv6 address's /64 (a subscriber's prefix; a host picks any address
/// in it at will), as the TURN server counts sources.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// An address range: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy)]
struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("http.trusted_proxies: {s:?} is not an IP address or CIDR range");
        let (addr, bits) = match s.trim().split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let net = addr.parse::<IpAddr>().map_err(|_| bad())?.to_canonical();
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(bad());
        }
        Ok(Cidr { net, bits })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let mask = |width: u32| -> u128 {
            let bits = u32::from(self.bits);
            if bits == 0 {
                0
            } else {
                (u128::MAX << (width - bits)) & (u128::MAX >> (128 - width))
            }
        };
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = mask(32);
                u128::from(u32::from(n)) & m == u128::from(u32::from(a)) & m
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = mask(128);
                u128::from(n) & m == u128::from(a) & m
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(identity: u32, ip: u32, trusted: &[&str]) -> JoinLimits {
        JoinLimits::new(&HttpConfig {
            join_limit_per_identity: identity,
            join_limit_per_ip: ip,
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
            ..HttpConfig::default()
        })
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn joins_per_identity_and_per_address_a_minute() {
        let t0 = Instant::now();
        let l = limits(3, 5, &[]);
        let home = ip("198.51.100.7");
        for _ in 0..3 {
            assert_eq!(l.check("appt-1", "pt-1", home, t0), Ok(()));
        }
        let refused = l.check("appt-1", "pt-1", home, t0).unwrap_err();
        assert!(matches!(refused, Refused::Identity(w) if w > Duration::from_secs(19)));
        assert!(
            refused.message().contains("retry in 20 s"),
            "{}",
            refused.message()
        );
        // The same identity in another consultation has a budget of its own; the address's
        // fifth join of the minute is its last.
        assert_eq!(l.check("appt-2", "pt-1", home, t0), Ok(()));
        assert!(matches!(
            l.check("appt-3", "dr-9", home, t0),
            Err(Refused::Address(_))
        ));
        // Another address (an IPv6 /64 counts as one) is not affected.
        let v6 = ip;
        for i in 0..5 {
            let who = format!("p{i}");
            assert_eq!(l.check("appt-4", &who, v6("2001:db8:1:2::10"), t0), Ok(()));
        }
        assert!(l.check("appt-4", "p9", v6("2001:db8:1:2::99"), t0).is_err());
        assert!(l.check("appt-4", "p9", v6("2001:db8:1:3::1"), t0).is_ok());
        // A minute refills the budgets.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(l.check("appt-1", "pt-1", home, later), Ok(()));
        // 0 turns a limit off.
        let off = limits(0, 0, &[]);
        for _ in 0..1000 {
            assert_eq!(off.check("appt-1", "pt-1", home, t0), Ok(()));
        }
    }

    #[test]
    fn forwarded_for_only_from_a_trusted_proxy() {
        let direct = limits(10, 10, &[]);
        // Without trusted proxies the header is the caller's own word: ignored.
        assert_eq!(
            direct.client_addr(ip("203.0.113.9"), Some("198.51.100.1")),
            ip("203.0.113.9")
        );
        let l = limits(10, 10, &["127.0.0.1", "10.0.0.0/8", "::1"]);
        assert_eq!(
            l.client_addr(ip("203.0.113.9"), Some("198.51.100.1")),
            ip("203.0.113.9"),
            "an untrusted peer's header is ignored"
        );
        // nginx appends the visitor's address: the rightmost untrusted entry is the client, a
        // forged entry left of it changes nothing.
        assert_eq!(
            l.client_addr(ip("127.0.0.1"), Some("6.6.6.6, 198.51.100.1")),
            ip("198.51.100.1")
        );
        assert_eq!(
            l.client_addr(ip("::ffff:10.1.2.3"), Some("198.51.100.1, 10.0.0.5")),
            ip("198.51.100.1"),
            "a chain of trusted proxies is walked"
        );
        assert_eq!(l.client_addr(ip("::1"), None), ip("::1"));
        assert_eq!(
            l.client_addr(ip("127.0.0.1"), Some("garbage")),
            ip("127.0.0.1")
        );
        assert_eq!(
            l.client_addr(ip("127.0.0.1"), Some("[2001:db8::1]:443")),
            ip("2001:db8::1")
        );
        assert!(JoinLimits::new(&HttpConfig {
            trusted_proxies: vec!["10.0.0.0/33".into()],
            ..HttpConfig::default()
        })
        .is_err());
        assert!(JoinLimits::new(&HttpConfig {
            trusted_proxies: vec!["nginx".into()],
            ..HttpConfig::default()
        })
        .is_err());
    }
}
