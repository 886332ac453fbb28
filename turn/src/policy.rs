//! Which peer addresses a relay may talk to.
//!
//! The TURN server embedded in an SFU has one legitimate peer: the SFU's own media sockets. A
//! relay that reaches anything else is a UDP proxy for whoever ever held a credential (from the
//! clinic's address, to the internet or into the clinic's network), so the policy is an allow
//! list and nothing else:
//!
//! * the SFU's media addresses (`always`), at their exact IP **and port**;
//! * the operator's `allowed_peer_ranges` ([`PeerRange`]): a CIDR range, optionally limited to
//!   a port range (`10.0.0.0/8`, `203.0.113.5/32:5000-5100`, `[2001:db8::/32]:3478`).
//!
//! Everything else — public or private, any port — is refused (403, as coturn answers for a
//! denied peer). TURN permissions are per IP (RFC 8656 §9), so an IP whose allowed ports are
//! limited gets a [`PeerVerdict::SomePorts`] permission and the server checks the port of every
//! packet, channel binding and Send indication against [`PeerPolicy::allows`].

use std::net::{IpAddr, SocketAddr};

/// A CIDR range such as `10.0.0.0/8` or `fc00::/7`; a bare address is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cidr {
    V4 { net: u32, prefix: u8 },
    V6 { net: u128, prefix: u8 },
}

/// A CIDR string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR range {0:?}")]
pub struct CidrError(pub String);

fn mask4(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    }
}

fn mask6(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix as u32)
    }
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, CidrError> {
        let err = || CidrError(s.to_owned());
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| err())?)),
            None => (s.trim(), None),
        };
        match ip.parse::<IpAddr>().map_err(|_| err())? {
            IpAddr::V4(a) => {
                let prefix = prefix.unwrap_or(32);
                if prefix > 32 {
                    return Err(err());
                }
                Ok(Cidr::V4 {
                    net: u32::from(a) & mask4(prefix),
                    prefix,
                })
            }
            IpAddr::V6(a) => {
                let prefix = prefix.unwrap_or(128);
                if prefix > 128 {
                    return Err(err());
                }
                Ok(Cidr::V6 {
                    net: u128::from(a) & mask6(prefix),
                    prefix,
                })
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (Cidr::V4 { net, prefix }, IpAddr::V4(a)) => u32::from(a) & mask4(prefix) == net,
            (Cidr::V6 { net, prefix }, IpAddr::V6(a)) => u128::from(a) & mask6(prefix) == net,
            _ => false,
        }
    }
}

/// An allowed peer range: a CIDR range and the ports allowed in it (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRange {
    pub cidr: Cidr,
    pub ports: (u16, u16),
}

/// A `allowed_peer_ranges` entry that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid peer range {0:?}: expected CIDR[:PORT[-PORT]], e.g. \"10.0.0.0/8:5000-5100\"")]
pub struct PeerRangeError(pub String);

impl From<CidrError> for PeerRangeError {
    fn from(e: CidrError) -> Self {
        PeerRangeError(e.0)
    }
}

const ALL_PORTS: (u16, u16) = (0, u16::MAX);

fn parse_ports(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (lo.trim().parse().ok()?, hi.trim().parse().ok()?),
        None => {
            let p = s.trim().parse().ok()?;
            (p, p)
        }
    };
    (lo <= hi).then_some((lo, hi))
}

impl PeerRange {
    /// Parses `CIDR`, `CIDR:PORTS`, `IPv4:PORTS` or `[IPv6 CIDR]:PORTS`, where PORTS is a port
    /// or an inclusive range `LOW-HIGH`. Without ports, every port of the range is allowed.
    pub fn parse(s: &str) -> Result<Self, PeerRangeError> {
        let err = || PeerRangeError(s.to_owned());
        let t = s.trim();
        let (cidr, ports) = if let Some(rest) = t.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(err)?;
            let ports = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(err)?),
            };
            (inside, ports)
        } else if let Some((ip, after)) = t.split_once('/') {
            // The prefix length is digits only, so a colon after it starts the ports.
            match after.split_once(':') {
                Some((prefix, ports)) => (&t[..ip.len() + 1 + prefix.len()], Some(ports)),
                None => (t, None),
            }
        } else if t.parse::<IpAddr>().is_ok() {
            (t, None)
        } else {
            // "a.b.c.d:PORTS" (an IPv6 address with ports needs brackets).
            let (ip, ports) = t.rsplit_once(':').ok_or_else(err)?;
            (ip, Some(ports))
        };
        let cidr = Cidr::parse(cidr).map_err(|_| err())?;
        let ports = match ports {
            None => ALL_PORTS,
            Some(p) => parse_ports(p).ok_or_else(err)?,
        };
        Ok(PeerRange { cidr, ports })
    }

    /// A range with every port.
    pub fn any_port(cidr: Cidr) -> Self {
        PeerRange {
            cidr,
            ports: ALL_PORTS,
        }
    }

    fn all_ports(&self) -> bool {
        self.ports == ALL_PORTS
    }

    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.cidr.contains(addr.ip()) && (self.ports.0..=self.ports.1).contains(&addr.port())
    }
}

/// The decision for a permission on one IP (RFC 8656 permissions carry no port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerVerdict {
    /// An allowed range covers this IP on every port.
    Allowed,
    /// Some ports of this IP are allowed (an SFU address, or a range with ports): the port of
    /// every packet, binding and Send indication is checked with [`PeerPolicy::allows`].
    SomePorts,
    Refused,
}

/// Peer address policy: the SFU's exact media addresses and the operator's allowed ranges.
/// The default refuses every peer.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    allowed: Vec<PeerRange>,
    always: Vec<SocketAddr>,
}

impl PeerPolicy {
    pub fn new(allowed: Vec<PeerRange>, always: Vec<SocketAddr>) -> Self {
        PeerPolicy { allowed, always }
    }

    /// Parses `allowed_peer_ranges` strings (see [`PeerRange::parse`]).
    pub fn from_strings(
        allowed: &[String],
        always: Vec<SocketAddr>,
    ) -> Result<Self, PeerRangeError> {
        let allowed = allowed
            .iter()
            .map(|s| PeerRange::parse(s))
            .collect::<Result<_, _>>()?;
        Ok(Self::new(allowed, always))
    }

    /// The verdict for a permission on `ip` (ports are not known yet).
    pub fn check_ip(&self, ip: IpAddr) -> PeerVerdict {
        let mut some = self.always.iter().any(|a| a.ip() == ip);
        for r in self.allowed.iter().filter(|r| r.cidr.contains(ip)) {
            if r.all_ports() {
                return PeerVerdict::Allowed;
            }
            some = true;
        }
        if some {
            PeerVerdict::SomePorts
        } else {
            PeerVerdict::Refused
        }
    }

    /// Whether traffic to or from exactly `addr` (IP and port) is allowed.
    pub fn allows(&self, addr: SocketAddr) -> bool {
        self.always.contains(&addr) || self.allowed.iter().any(|r| r.contains(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(c.contains(ip("127.9.9.9")));
        assert!(!c.contains(ip("128.0.0.1")));
        assert!(!c.contains(ip("::1")));
        let c = Cidr::parse("fc00::/7").unwrap();
        assert!(c.contains(ip("fd00::5")));
        assert!(Cidr::parse("10.0.0.1").unwrap().contains(ip("10.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense/8").is_err());
    }

    #[test]
    fn peer_range_parse() {
        let all = |s: &str| PeerRange::any_port(Cidr::parse(s).unwrap());
        assert_eq!(PeerRange::parse("10.0.0.0/8").unwrap(), all("10.0.0.0/8"));
        assert_eq!(
            PeerRange::parse(" 203.0.113.5 ").unwrap(),
            all("203.0.113.5")
        );
        assert_eq!(PeerRange::parse("2001:db8::1").unwrap(), all("2001:db8::1"));
        assert_eq!(PeerRange::parse("fc00::/7").unwrap(), all("fc00::/7"));
        let r = PeerRange::parse("203.0.113.5/32:5000-5100").unwrap();
        assert_eq!(r.ports, (5000, 5100));
        assert!(r.contains(sa("203.0.113.5:5050")));
        assert!(!r.contains(sa("203.0.113.5:5101")));
        assert!(!r.contains(sa("203.0.113.6:5050")));
        assert_eq!(
            PeerRange::parse("192.0.2.1:3478").unwrap().ports,
            (3478, 3478)
        );
        let r = PeerRange::parse("[2001:db8::/32]:3478").unwrap();
        assert!(r.contains(sa("[2001:db8::9]:3478")));
        assert!(!r.contains(sa("[2001:db8::9]:3479")));
        assert_eq!(PeerRange::parse("[fc00::/7]").unwrap(), all("fc00::/7"));
        assert_eq!(PeerRange::parse("fc00::/7:1-2").unwrap().ports, (1, 2));
        for bad in [
            "",
            "bogus",
            "10.0.0.0/33",
            "10.0.0.0/8:",
            "10.0.0.0/8:6000-5000",
            "10.0.0.0/8:70000",
            "10.0.0.0/8:a-b",
            "[fc00::/7",
            "[fc00::/7]5000",
            "1.2.3.4:",
        ] {
            assert!(PeerRange::parse(bad).is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn default_refuses_everything() {
        let p = PeerPolicy::default();
        for a in [
            "203.0.113.50:5000",
            "8.8.8.8:53",
            "10.1.2.3:1",
            "127.0.0.1:3480",
        ] {
            assert!(!p.allows(sa(a)), "{a}");
            assert_eq!(p.check_ip(sa(a).ip()), PeerVerdict::Refused, "{a}");
        }
    }

    #[test]
    fn sfu_addresses_are_exact() {
        let sfu = sa("203.0.113.7:7882");
        let p = PeerPolicy::new(vec![], vec![sfu]);
        assert!(p.allows(sfu));
        assert!(!p.allows(sa("203.0.113.7:5432")));
        assert_eq!(p.check_ip(ip("203.0.113.7")), PeerVerdict::SomePorts);
        assert_eq!(p.check_ip(ip("203.0.113.8")), PeerVerdict::Refused);
        assert!(!p.allows(sa("8.8.8.8:53")), "public is not open any more");
    }

    #[test]
    fn ranges_with_and_without_ports() {
        let p = PeerPolicy::from_strings(
            &["127.0.0.0/8".into(), "10.0.0.0/8:5000-5001".into()],
            vec![sa("10.9.9.9:7882")],
        )
        .unwrap();
        assert!(p.allows(sa("127.0.0.1:5432")));
        assert_eq!(p.check_ip(ip("127.0.0.1")), PeerVerdict::Allowed);
        assert_eq!(p.check_ip(ip("10.1.2.3")), PeerVerdict::SomePorts);
        assert!(p.allows(sa("10.1.2.3:5001")));
        assert!(!p.allows(sa("10.1.2.3:5002")));
        assert!(p.allows(sa("10.9.9.9:7882")));
        assert!(p.allows(sa("10.9.9.9:5000")));
        assert!(!p.allows(sa("10.9.9.9:7883")));
        assert!(PeerPolicy::from_strings(&["10.0.0.0/8:x".into()], vec![]).is_err());
    }
}
