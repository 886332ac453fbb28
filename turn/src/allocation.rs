//! One TURN allocation: its relay address, lifetime, permissions, channel bindings and
//! bandwidth budget (RFC 8656 §2.2). Pure state; the server decides, this module remembers.
//!
//! Permissions and channels are short vectors scanned linearly: a consultation has a handful
//! of peers, and the caps ([`MAX_PERMISSIONS`], [`MAX_CHANNELS`]) keep the scan bounded.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::stun::{IntegrityKind, TransactionId};

/// Identifies one allocation for its whole life; a new allocation on the same 5-tuple gets a
/// new id, so a relay task of a deleted allocation can never feed its successor.
pub type AllocationId = u64;

pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
pub const MAX_PERMISSIONS: usize = 32;
pub const MAX_CHANNELS: usize = 32;

#[derive(Debug, Clone, Copy)]
pub struct Permission {
    pub ip: IpAddr,
    pub expires: Instant,
    /// Only some ports of this IP are allowed peers (the SFU's, or a range with ports): every
    /// packet's port is checked against the policy.
    pub port_checked: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Channel {
    pub number: u16,
    pub peer: SocketAddr,
    pub expires: Instant,
}

/// A byte budget refilled at `rate` bytes/s, holding at most one second's worth.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` 0 means unlimited.
    pub fn new(rate: u64, now: Instant) -> Self {
        TokenBucket {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Takes `n` bytes if the budget allows.
    pub fn take(&mut self, now: Instant, n: usize) -> bool {
        if self.rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let refill = (elapsed.saturating_mul(self.rate as u128) / 1_000_000_000) as u64;
        if refill > 0 {
            // Advance by the time the whole tokens stand for, so fractions are not lost at
            // high packet rates.
            let used_ns = (refill as u128 * 1_000_000_000 / self.rate as u128) as u64;
            self.last += Duration::from_nanos(used_ns);
            self.tokens = self.tokens.saturating_add(refill).min(self.rate);
            if self.tokens == self.rate {
                self.last = now;
            }
        }
        if self.tokens >= n as u64 {
            self.tokens -= n as u64;
            true
        } else {
            false
        }
    }
}

/// The 5-tuple side a client is known by: its address and the transport it came over (there
/// is one listener per transport, so the server side of the 5-tuple is implied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub addr: SocketAddr,
    pub transport: Transport,
}

/// The transport between client and server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Streams need ChannelData padded to 4 bytes.
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

#[derive(Debug)]
pub struct Allocation {
    pub id: AllocationId,
    pub relay: SocketAddr,
    pub username: String,
    pub expires: Instant,
    /// The Allocate transaction that created it: a retransmission gets the same answer.
    pub allocate_txid: TransactionId,
    pub integrity: IntegrityKind,
    pub permissions: Vec<Permission>,
    pub channels: Vec<Channel>,
    pub to_peer_budget: TokenBucket,
    pub to_client_budget: TokenBucket,
}

impl Allocation {
    /// The live permission covering `ip`, if any.
    pub fn permission(&self, ip: IpAddr, now: Instant) -> Option<&Permission> {
        self.permissions
            .iter()
            .find(|p| p.ip == ip && p.expires > now)
    }

    /// Installs or refreshes a permission; false when the table is full.
    pub fn permit(&mut self, ip: IpAddr, port_checked: bool, now: Instant) -> bool {
        let expires = now + PERMISSION_LIFETIME;
        if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
            p.expires = expires;
            p.port_checked = port_checked;
            return true;
        }
        self.permissions.retain(|p| p.expires > now);
        if self.permissions.len() >= MAX_PERMISSIONS {
            return false;
        }
        self.permissions.push(Permission {
            ip,
            expires,
            port_checked,
        });
        true
    }

    pub fn channel_by_number(&self, number: u16, now: Instant) -> Option<&Channel> {
        self.channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
    }

    pub fn channel_by_peer(&self, peer: SocketAddr, now: Instant) -> Option<&Channel> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
    }

    /// Binds or refreshes `number` to `peer`. False when either side is bound to something
    /// else (RFC 8656 §11.2: 400) or the table is full.
    pub fn bind_channel(&mut self, number: u16, peer: SocketAddr, now: Instant) -> bool {
        self.channels.retain(|c| c.expires > now);
        let expires = now + CHANNEL_LIFETIME;
        if let Some(c) = self.channels.iter_mut().find(|c| c.number == number) {
            if c.peer != peer {
                return false;
            }
            c.expires = expires;
            return true;
        }
        if self.channels.iter().any(|c| c.peer == peer) || self.channels.len() >= MAX_CHANNELS {
            return false;
        }
        self.channels.push(Channel {
            number,
            peer,
            expires,
        });
        true
    }

    /// Drops expired permissions and channels.
    pub fn expire(&mut self, now: Instant) {
        self.permissions.retain(|p| p.expires > now);
        self.channels.retain(|c| c.expires > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_limits_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        assert!(b.take(t0, 1000));
        assert!(!b.take(t0, 1));
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.take(t1, 500));
        assert!(!b.take(t1, 1));
        // Many small refills add up exactly.
        let mut t = t1;
        let mut sent = 0;
        for _ in 0..1000 {
            t += Duration::from_micros(1000);
            if b.take(t, 1) {
                sent += 1;
            }
        }
        assert_eq!(sent, 1000);
        let mut unlimited = TokenBucket::new(0, t0);
        assert!(unlimited.take(t0, usize::MAX));
    }
}
