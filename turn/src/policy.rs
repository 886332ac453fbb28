//! Which peer addresses a relay may talk to.
//!
//! A TURN relay is an open proxy for whoever holds a credential, so by default it refuses
//! every address that reaches *inside* the operator's network: loopback, RFC 1918, CGNAT, link
//! local, multicast, unspecified, broadcast and reserved IPv4; `::1`, `::`, ULA, link-local and
//! multicast IPv6; IPv4-mapped and NAT64 IPv6 addresses are judged by the IPv4 they embed.
//! Operators re-open ranges with `allowed_peer_ranges`; the SFU's own media addresses are always
//! allowed, but only at their exact port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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

/// True for addresses a relay must not reach unless an operator allows them.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_internal_v4(a),
        IpAddr::V6(a) => {
            if let Some(v4) = embedded_v4(a) {
                return is_internal_v4(v4);
            }
            let s = a.segments();
            a.is_unspecified()
                || a.is_loopback()
                || (s[0] & 0xfe00) == 0xfc00 // ULA fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || (s[0] & 0xff00) == 0xff00 // multicast
                || (s[0..6] == [0; 6]) // IPv4-compatible ::/96 (deprecated)
        }
    }
}

fn is_internal_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 0 // "this network", includes unspecified
        || o[0] == 10
        || o[0] == 127
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64/10
        || (o[0] == 169 && o[1] == 254)
        || (o[0] == 172 && (o[1] & 0xf0) == 16)
        || (o[0] == 192 && o[1] == 168)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 224 // multicast 224/4, reserved 240/4, broadcast
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`) or NAT64 (`64:ff9b::/96`) address.
fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = a.segments();
    let o = a.octets();
    let v4 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let mapped = s[0..5] == [0; 5] && s[5] == 0xffff;
    let nat64 = s[0..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if mapped || nat64 {
        Some(v4)
    } else {
        None
    }
}

/// The decision for one peer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerVerdict {
    /// Public, or inside an allowed range: any port.
    Allowed,
    /// Internal, but one of the always-allowed addresses has this IP: only those exact ports.
    ExactOnly,
    Refused,
}

/// Peer address policy: built-in internal ranges, the operator's allowed ranges, and the
/// always-allowed exact addresses (the SFU's media sockets).
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    allowed: Vec<Cidr>,
    always: Vec<SocketAddr>,
}

impl PeerPolicy {
    pub fn new(allowed: Vec<Cidr>, always: Vec<SocketAddr>) -> Self {
        PeerPolicy { allowed, always }
    }

    /// Parses `allowed` CIDR strings.
    pub fn from_strings(allowed: &[String], always: Vec<SocketAddr>) -> Result<Self, CidrError> {
        let allowed = allowed
            .iter()
            .map(|s| Cidr::parse(s))
            .collect::<Result<_, _>>()?;
        Ok(Self::new(allowed, always))
    }

    /// The verdict for a permission on `ip` (ports are not known yet).
    pub fn check_ip(&self, ip: IpAddr) -> PeerVerdict {
        if !is_internal(ip) || self.allowed.iter().any(|c| c.contains(ip)) {
            PeerVerdict::Allowed
        } else if self.always.iter().any(|a| a.ip() == ip) {
            PeerVerdict::ExactOnly
        } else {
            PeerVerdict::Refused
        }
    }

    /// Whether `addr` is one of the always-allowed exact addresses.
    pub fn is_always(&self, addr: SocketAddr) -> bool {
        self.always.contains(&addr)
    }

    /// Whether traffic to or from exactly `addr` is allowed.
    pub fn allows(&self, addr: SocketAddr) -> bool {
        match self.check_ip(addr.ip()) {
            PeerVerdict::Allowed => true,
            PeerVerdict::ExactOnly => self.is_always(addr),
            PeerVerdict::Refused => false,
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
    fn internal_ranges() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(is_internal(ip(s)), "{s} must be internal");
        }
        for s in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2001:db8::1",
            "2606:4700::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal(ip(s)), "{s} must be public");
        }
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
    fn always_allowed_is_exact() {
        let sfu: SocketAddr = "127.0.0.1:7882".parse().unwrap();
        let p = PeerPolicy::new(vec![], vec![sfu]);
        assert!(p.allows(sfu));
        assert!(!p.allows("127.0.0.1:5432".parse().unwrap()));
        assert_eq!(p.check_ip(ip("127.0.0.1")), PeerVerdict::ExactOnly);
        assert_eq!(p.check_ip(ip("10.0.0.1")), PeerVerdict::Refused);
        assert!(p.allows("8.8.8.8:53".parse().unwrap()));
        let p = PeerPolicy::from_strings(&["127.0.0.0/8".into()], vec![]).unwrap();
        assert!(p.allows("127.0.0.1:5432".parse().unwrap()));
    }
}
