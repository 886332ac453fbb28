//! The authenticated TURN requests (RFC 8656 §7–§11): Allocate, Refresh, CreatePermission,
//! ChannelBind, and how their answers are written.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::{
    credential_expiry, Authed, ClientAction, PendingAllocation, RelayRequest, ReplyTo, TurnServer,
    UDP,
};
use crate::allocation::{Allocation, AllocationId, ClientKey, TokenBucket};
use crate::counters::Counters;
use crate::per_ip::source_of;
use crate::policy::PeerVerdict;
use crate::stun::{attr, Class, Message, MessageWriter, PeerAddrs};

impl TurnServer {
    fn desired_lifetime(&self, requested: Option<u32>) -> Duration {
        let max = self.cfg.max_lifetime;
        let default = self.cfg.default_lifetime.min(max);
        match requested {
            None => default,
            Some(r) => Duration::from_secs(r as u64).min(max).max(default),
        }
    }

    fn family_matches(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.cfg.relay_ip.is_ipv4()
    }

    /// The quota check shared by Allocate and its completion: 486 when over the total, the
    /// user's or the client's source ([`source_of`]) share. A user's share counts only the
    /// allocations made with credentials that are still valid: one made with an expired
    /// credential can no longer be refreshed and dies with its lifetime, and a browser that
    /// restarts ICE with fresh credentials often cannot release it (its credential expired by
    /// the time it lets the old candidates go); fresh credentials come only from the server,
    /// and the per-source share still bounds them.
    fn over_quota(&self, now: Instant, username: &str, source: IpAddr) -> bool {
        let total = self.allocations.len() as u64 >= self.cfg.max_allocations as u64;
        let unix = self.unix(now);
        let mine: u32 = self
            .per_user
            .get(crate::auth::user_of(username))
            .map_or(0, |by_expiry| {
                by_expiry
                    .range(unix.saturating_add(1)..)
                    .map(|(_, n)| n)
                    .sum()
            });
        let this_ip = self.per_ip.get(&source).copied().unwrap_or(0);
        total
            || mine >= self.cfg.max_allocations_per_user
            || this_ip >= self.cfg.max_allocations_per_ip
    }

    pub(super) fn allocate<'a>(
        &mut self,
        now: Instant,
        client: ClientKey,
        m: &Message,
        a: Authed,
        out: &mut Vec<u8>,
    ) -> ClientAction<'a> {
        let to = ReplyTo::of(m);
        if let Some(existing) = self.allocations.get(&client) {
            if existing.allocate_txid == m.transaction_id {
                // A retransmission: the same answer again.
                let (relay, left) = (
                    existing.relay,
                    existing.expires.saturating_duration_since(now),
                );
                allocate_success(out, to, relay, client.addr, left, None, &a.key);
            } else {
                error(out, to, 437, Some(&a));
            }
            return ClientAction::Reply;
        }
        match m.attrs.requested_transport {
            None => {
                error(out, to, 400, Some(&a));
                return ClientAction::Reply;
            }
            Some(UDP) => {}
            Some(_) => {
                error(out, to, 442, Some(&a));
                return ClientAction::Reply;
            }
        }
        let family_ok = match m.attrs.requested_address_family {
            None => self.cfg.relay_ip.is_ipv4(),
            Some(0x01) => self.cfg.relay_ip.is_ipv4(),
            Some(0x02) => self.cfg.relay_ip.is_ipv6(),
            Some(_) => false,
        };
        if !family_ok {
            error(out, to, 440, Some(&a));
            return ClientAction::Reply;
        }
        let relay = match (m.attrs.even_port, m.attrs.reservation_token) {
            (Some(_), Some(_)) => {
                error(out, to, 400, Some(&a));
                return ClientAction::Reply;
            }
            (Some(reserve), None) => RelayRequest::Even { reserve },
            (None, Some(token)) => RelayRequest::Reserved(token),
            (None, None) => RelayRequest::Any,
        };
        if self.is_revoked(a.username) {
            Counters::inc(&self.counters.revoked_refusals);
            error(out, to, 403, Some(&a));
            return ClientAction::Reply;
        }
        if self.over_quota(now, a.username, source_of(client.addr.ip())) {
            Counters::inc(&self.counters.quota_refusals);
            error(out, to, 486, Some(&a));
            return ClientAction::Reply;
        }
        ClientAction::BindRelay(PendingAllocation {
            relay,
            client,
            to,
            username: a.username.to_owned(),
            key: a.key,
            lifetime: self.desired_lifetime(m.attrs.lifetime),
        })
    }

    /// Finishes an Allocate once the shell opened (or failed to open, `None`) its relay socket,
    /// and reserved the next port under `reservation` if it was asked to. `out` gets the reply;
    /// returns the new allocation's id when one was created (otherwise the shell closes the
    /// socket).
    pub fn complete_allocation(
        &mut self,
        now: Instant,
        p: PendingAllocation,
        relay: Option<SocketAddr>,
        reservation: Option<[u8; 8]>,
        out: &mut Vec<u8>,
    ) -> Option<AllocationId> {
        let a = Authed {
            username: &p.username,
            key: p.key,
        };
        let Some(relay) = relay else {
            Counters::inc(&self.counters.relay_bind_failures);
            error(out, p.to, 508, Some(&a));
            return None;
        };
        // Another task may have allocated for this 5-tuple or this user meanwhile.
        if self.allocations.contains_key(&p.client) {
            error(out, p.to, 437, Some(&a));
            return None;
        }
        if self.over_quota(now, &p.username, source_of(p.client.addr.ip())) {
            Counters::inc(&self.counters.quota_refusals);
            error(out, p.to, 486, Some(&a));
            return None;
        }
        allocate_success(
            out,
            p.to,
            relay,
            p.client.addr,
            p.lifetime,
            reservation,
            &p.key,
        );
        let id = self.next_id;
        self.next_id += 1;
        *self
            .per_user
            .entry(crate::auth::user_of(&p.username).to_owned())
            .or_default()
            .entry(credential_expiry(&p.username))
            .or_insert(0) += 1;
        *self
            .per_ip
            .entry(source_of(p.client.addr.ip()))
            .or_insert(0) += 1;
        let rate = self.cfg.max_bandwidth;
        self.allocations.insert(
            p.client,
            Allocation {
                id,
                relay,
                username: p.username,
                expires: now + p.lifetime,
                allocate_txid: p.to.txid,
                integrity: p.to.integrity,
                permissions: Vec::new(),
                channels: Vec::new(),
                to_peer_budget: TokenBucket::new(rate, now),
                to_client_budget: TokenBucket::new(rate, now),
            },
        );
        Counters::inc(&self.counters.allocations_current);
        Counters::inc(&self.counters.allocations_total);
        Some(id)
    }

    /// The allocation of `client` if it belongs to the authenticated user; else `out` gets 437
    /// or 441.
    fn own_allocation(
        &mut self,
        client: ClientKey,
        to: ReplyTo,
        a: &Authed,
        out: &mut Vec<u8>,
    ) -> Option<&mut Allocation> {
        let Some(alloc) = self.allocations.get_mut(&client) else {
            error(out, to, 437, Some(a));
            return None;
        };
        if alloc.username != a.username {
            Counters::inc(&self.counters.auth_wrong_credentials);
            error(out, to, 441, Some(a));
            return None;
        }
        Some(alloc)
    }

    pub(super) fn refresh<'a>(
        &mut self,
        now: Instant,
        client: ClientKey,
        m: &Message,
        a: &Authed,
        out: &mut Vec<u8>,
    ) -> ClientAction<'a> {
        let to = ReplyTo::of(m);
        let lifetime = match m.attrs.lifetime {
            Some(0) => Duration::ZERO,
            requested => self.desired_lifetime(requested),
        };
        let Some(alloc) = self.own_allocation(client, to, a, out) else {
            return ClientAction::Reply;
        };
        alloc.expires = now + lifetime;
        let id = alloc.id;
        let mut w = MessageWriter::new(out, to.method, Class::Success, to.txid);
        w.u32(attr::LIFETIME, lifetime.as_secs() as u32);
        finish(&mut w, to, Some(a));
        if lifetime.is_zero() {
            self.remove(&client);
            return ClientAction::ReplyAndClose(id);
        }
        ClientAction::Reply
    }

    /// Checks a peer against family and policy; `Ok(port_checked)`, or `Err(code)` to refuse.
    /// `exact`: the request names the peer's port too (ChannelBind), so the port must be
    /// allowed; a CreatePermission only needs some allowed port on the IP.
    fn check_peer(&self, peer: SocketAddr, exact: bool) -> Result<bool, u16> {
        if !self.family_matches(peer.ip()) {
            return Err(443);
        }
        match self.cfg.policy.check_ip(peer.ip()) {
            PeerVerdict::Allowed => Ok(false),
            PeerVerdict::SomePorts if !exact || self.cfg.policy.allows(peer) => Ok(true),
            _ => {
                Counters::inc(&self.counters.permission_refusals);
                Err(403)
            }
        }
    }

    pub(super) fn create_permission<'a>(
        &mut self,
        now: Instant,
        client: ClientKey,
        m: &Message,
        a: &Authed,
        out: &mut Vec<u8>,
    ) -> ClientAction<'a> {
        let to = ReplyTo::of(m);
        let peers = m.attrs.xor_peers;
        if peers.is_empty() {
            error(out, to, 400, Some(a));
            return ClientAction::Reply;
        }
        if self.own_allocation(client, to, a, out).is_none() {
            return ClientAction::Reply;
        }
        // All or nothing: one refused peer refuses the request.
        let mut verdicts = [false; PeerAddrs::CAP];
        for (i, peer) in peers.iter().enumerate() {
            match self.check_peer(peer, false) {
                Ok(port_checked) => verdicts[i] = port_checked,
                Err(code) => {
                    error(out, to, code, Some(a));
                    return ClientAction::Reply;
                }
            }
        }
        let alloc = self.allocations.get_mut(&client).expect("checked above");
        let installed = peers
            .iter()
            .zip(verdicts)
            .all(|(peer, port_checked)| alloc.permit(peer.ip(), port_checked, now));
        if !installed {
            error(out, to, 508, Some(a));
            return ClientAction::Reply;
        }
        let mut w = MessageWriter::new(out, to.method, Class::Success, to.txid);
        finish(&mut w, to, Some(a));
        ClientAction::Reply
    }

    pub(super) fn channel_bind<'a>(
        &mut self,
        now: Instant,
        client: ClientKey,
        m: &Message,
        a: &Authed,
        out: &mut Vec<u8>,
    ) -> ClientAction<'a> {
        let to = ReplyTo::of(m);
        let (Some(number), Some(peer)) = (m.attrs.channel_number, m.attrs.xor_peers.first()) else {
            error(out, to, 400, Some(a));
            return ClientAction::Reply;
        };
        let last = if self.cfg.legacy_channel_numbers {
            0x7FFF
        } else {
            0x4FFF
        };
        if !(0x4000..=last).contains(&number) {
            error(out, to, 400, Some(a));
            return ClientAction::Reply;
        }
        if self.own_allocation(client, to, a, out).is_none() {
            return ClientAction::Reply;
        }
        let port_checked = match self.check_peer(peer, true) {
            Ok(e) => e,
            Err(code) => {
                error(out, to, code, Some(a));
                return ClientAction::Reply;
            }
        };
        let alloc = self.allocations.get_mut(&client).expect("checked above");
        if !alloc.bind_channel(number, peer, now) || !alloc.permit(peer.ip(), port_checked, now) {
            error(out, to, 400, Some(a));
            return ClientAction::Reply;
        }
        let mut w = MessageWriter::new(out, to.method, Class::Success, to.txid);
        finish(&mut w, to, Some(a));
        ClientAction::Reply
    }
}

pub(super) fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthenticated",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        508 => "Insufficient Capacity",
        _ => "Server Error",
    }
}

/// Adds MESSAGE-INTEGRITY(-SHA256) when the request was authenticated, and FINGERPRINT when
/// the request had one.
pub(super) fn finish(w: &mut MessageWriter, to: ReplyTo, a: Option<&Authed>) {
    if let Some(a) = a {
        w.integrity(to.integrity, &a.key);
    }
    if to.fingerprint {
        w.fingerprint();
    }
}

pub(super) fn error(out: &mut Vec<u8>, to: ReplyTo, code: u16, a: Option<&Authed>) {
    let mut w = MessageWriter::new(out, to.method, Class::Error, to.txid);
    w.error_code(code, reason(code));
    finish(&mut w, to, a);
}

fn allocate_success(
    out: &mut Vec<u8>,
    to: ReplyTo,
    relay: SocketAddr,
    mapped: SocketAddr,
    lifetime: Duration,
    reservation: Option<[u8; 8]>,
    key: &[u8; 16],
) {
    let mut w = MessageWriter::new(out, to.method, Class::Success, to.txid);
    w.xor_addr(attr::XOR_RELAYED_ADDRESS, relay)
        .u32(attr::LIFETIME, lifetime.as_secs() as u32)
        .xor_addr(attr::XOR_MAPPED_ADDRESS, mapped);
    if let Some(token) = reservation {
        w.bytes(attr::RESERVATION_TOKEN, &token);
    }
    let a = Authed {
        username: "",
        key: *key,
    };
    finish(&mut w, to, Some(&a));
}
