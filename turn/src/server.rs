//! The sans-IO TURN server: every decision of RFC 8656 and RFC 8489 long-term authentication,
//! with no socket, task or clock inside.
//!
//! The IO shell feeds it bytes with the time they arrived and gets back what to do:
//!
//! ```text
//!  client bytes ──► handle_client ──► Reply (bytes in `out`) | ToPeer{allocation, peer, data}
//!                                 └─► BindRelay(pending) ──► shell binds a UDP socket ──►
//!                                      complete_allocation ──► Reply (+ allocation id)
//!  peer bytes   ──► handle_peer   ──► ToClient (Data indication or ChannelData in `out`)
//!  once a second ─► handle_timeout ──► expired allocations (shell closes their relays)
//! ```
//!
//! Replies are written into a caller-owned buffer and relayed payloads are borrowed from the
//! input, so the relay path allocates nothing. Counters live in [`Counters`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::allocation::{Allocation, AllocationId, ClientKey};
use crate::auth::{self, NonceCheck, NonceMinter, UsernameCheck};
use crate::counters::Counters;
use crate::per_ip::source_of;
use crate::policy::PeerPolicy;
use crate::stun::{
    attr, method, write_channel_data, ChannelData, Class, IntegrityKind, Message, MessageWriter,
    TransactionId,
};

mod requests;

use requests::{error, finish, reason};

/// The protocol number of UDP in REQUESTED-TRANSPORT.
const UDP: u8 = 17;
/// Data larger than this is not wrapped in a Data indication (it would overflow the 16-bit
/// STUN length with an IPv6 peer address).
const MAX_INDICATION_DATA: usize = 65_000;

/// The policy and limits of a [`TurnServer`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub realm: String,
    /// REST API secrets; any of them is accepted (rotation).
    pub secrets: Vec<String>,
    /// The relay address family decides which peers and REQUESTED-ADDRESS-FAMILY are served.
    pub relay_ip: IpAddr,
    pub policy: PeerPolicy,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub nonce_ttl: Duration,
    /// Allocations alive at once per user (the part of the REST username after the expiry):
    /// fresh credentials for the same participant share it.
    pub max_allocations_per_user: u32,
    /// Lifetime of minted credentials: a revocation refuses every credential of the user
    /// minted before it, i.e. expiring up to this long after it.
    pub credential_ttl: Duration,
    /// Allocations alive at once from one client source (an IPv4 address or an IPv6 /64,
    /// [`crate::per_ip::source_of`]), all its ports and transports together.
    pub max_allocations_per_ip: u32,
    pub max_allocations: u32,
    /// Bytes per second per allocation in each direction; 0 = unlimited.
    pub max_bandwidth: u64,
    /// Accept channel numbers 0x5000–0x7FFF as RFC 5766 did (RFC 8656 reserves them; some
    /// older clients, e.g. coturn's turnutils_uclient, pick from the whole old range).
    pub legacy_channel_numbers: bool,
}

impl ServerConfig {
    /// Defaults of RFC 8656 and coturn: 600 s lifetime (max 3600 s), 10 minute nonces.
    pub fn new(realm: &str, secrets: Vec<String>, relay_ip: IpAddr) -> Self {
        ServerConfig {
            realm: realm.to_owned(),
            secrets,
            relay_ip,
            policy: PeerPolicy::default(),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            nonce_ttl: Duration::from_secs(600),
            max_allocations_per_user: 10,
            credential_ttl: Duration::from_secs(3600),
            max_allocations_per_ip: 16,
            max_allocations: 1000,
            max_bandwidth: 4_000_000,
            legacy_channel_numbers: false,
        }
    }
}

/// What the shell must do after [`TurnServer::handle_client`].
#[derive(Debug)]
pub enum ClientAction<'a> {
    /// Nothing (dropped, counted, or an indication that needs no answer).
    None,
    /// Send `out` to the client.
    Reply,
    /// Send `data` from the allocation's relay socket to `peer`.
    ToPeer {
        allocation: AllocationId,
        peer: SocketAddr,
        data: &'a [u8],
    },
    /// Open a relay socket, then call [`TurnServer::complete_allocation`].
    BindRelay(PendingAllocation),
    /// Send `out` to the client, then close the allocation's relay.
    ReplyAndClose(AllocationId),
}

/// What the shell must do after [`TurnServer::handle_peer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAction {
    Drop,
    /// Send `out` to the allocation's client.
    ToClient,
}

/// An accepted Allocate waiting for its relay socket.
#[derive(Debug)]
pub struct PendingAllocation {
    client: ClientKey,
    to: ReplyTo,
    username: String,
    key: [u8; 16],
    lifetime: Duration,
    relay: RelayRequest,
}

impl PendingAllocation {
    pub fn client(&self) -> ClientKey {
        self.client
    }

    /// Which relay port the client asked for.
    pub fn relay_request(&self) -> RelayRequest {
        self.relay
    }
}

/// The relay port an Allocate asks for (RFC 8656 §14.6, §14.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRequest {
    Any,
    /// EVEN-PORT; with `reserve`, also hold the next port and answer a RESERVATION-TOKEN.
    Even {
        reserve: bool,
    },
    /// RESERVATION-TOKEN: the port reserved by an earlier Allocate (508 when unknown).
    Reserved([u8; 8]),
}

/// Enough of a request to answer it.
#[derive(Debug, Clone, Copy)]
struct ReplyTo {
    method: u16,
    txid: TransactionId,
    fingerprint: bool,
    integrity: IntegrityKind,
}

impl ReplyTo {
    fn of(m: &Message) -> Self {
        ReplyTo {
            method: m.method,
            txid: m.transaction_id,
            fingerprint: m.attrs.fingerprint,
            integrity: m.integrity_kind().unwrap_or(IntegrityKind::Sha1),
        }
    }
}

/// A request whose credentials verified.
struct Authed<'a> {
    username: &'a str,
    key: [u8; 16],
}

/// When a username's credential expires (unix seconds); never for a name without an expiry.
pub(crate) fn credential_expiry(username: &str) -> u64 {
    crate::auth::expiry_of(username).unwrap_or(u64::MAX)
}

/// The TURN server state: allocations by client 5-tuple, quotas, nonces and counters.
pub struct TurnServer {
    cfg: ServerConfig,
    allocations: HashMap<ClientKey, Allocation>,
    /// Allocations per user (the participant part of a REST username), by credential expiry.
    per_user: HashMap<String, std::collections::BTreeMap<u64, u32>>,
    per_ip: HashMap<IpAddr, u32>,
    /// Users whose credentials minted before the given unix time are refused.
    revoked: HashMap<String, u64>,
    nonces: NonceMinter,
    counters: Arc<Counters>,
    anchor: Instant,
    anchor_unix: u64,
    next_id: AllocationId,
    txid_state: u64,
}

impl TurnServer {
    /// `nonce_key` must be random (it also seeds indication transaction ids); `now` and
    /// `unix_now` anchor the wall clock used for credential and nonce expiry.
    pub fn new(cfg: ServerConfig, nonce_key: [u8; 32], now: Instant, unix_now: u64) -> Self {
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&nonce_key[..8]);
        TurnServer {
            nonces: NonceMinter::new(nonce_key, cfg.nonce_ttl.as_secs()),
            cfg,
            allocations: HashMap::new(),
            per_user: HashMap::new(),
            per_ip: HashMap::new(),
            revoked: HashMap::new(),
            counters: Arc::new(Counters::default()),
            anchor: now,
            anchor_unix: unix_now,
            next_id: 1,
            txid_state: u64::from_le_bytes(seed) | 1,
        }
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Replaces the accepted secrets (rotation); existing allocations keep running and must
    /// authenticate their next request with a credential from the new list.
    pub fn set_secrets(&mut self, secrets: Vec<String>) {
        self.cfg.secrets = secrets;
    }

    /// Refuses new allocations with any credential of `user` minted up to `unix_now` (a
    /// kicked participant, an ended call); credentials minted later work. Allocations already
    /// made run until they expire or their client leaves.
    pub fn revoke(&mut self, user: &str, unix_now: u64) {
        let ttl = self.cfg.credential_ttl.as_secs();
        // Entries whose credentials have all expired are of no use any more.
        self.revoked
            .retain(|_, at| at.saturating_add(ttl) > unix_now);
        self.revoked.insert(user.to_owned(), unix_now);
    }

    /// Whether `username` is a credential minted before its user was revoked.
    pub(crate) fn is_revoked(&self, username: &str) -> bool {
        let Some(at) = self.revoked.get(crate::auth::user_of(username)) else {
            return false;
        };
        let expiry = crate::auth::expiry_of(username).unwrap_or(0);
        expiry <= at.saturating_add(self.cfg.credential_ttl.as_secs())
    }

    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    pub fn allocation(&self, client: &ClientKey) -> Option<&Allocation> {
        self.allocations.get(client)
    }

    fn unix(&self, now: Instant) -> u64 {
        self.anchor_unix + now.saturating_duration_since(self.anchor).as_secs()
    }

    /// Handles one datagram (UDP) or one frame (TCP/TLS) from a client.
    pub fn handle_client<'a>(
        &mut self,
        now: Instant,
        client: ClientKey,
        data: &'a [u8],
        out: &mut Vec<u8>,
    ) -> ClientAction<'a> {
        out.clear();
        match data.first().map(|b| b >> 6) {
            Some(0) => match Message::parse(data) {
                Ok(m) => self.handle_message(now, client, &m, out),
                Err(_) => self.malformed(),
            },
            Some(1) => match ChannelData::parse(data) {
                Ok(cd) => self.channel_data_from_client(now, client, cd),
                Err(_) => self.malformed(),
            },
            _ => self.malformed(),
        }
    }

    fn malformed<'a>(&self) -> ClientAction<'a> {
        Counters::inc(&self.counters.malformed_packets);
        ClientAction::None
    }

    fn handle_message<'a>(
        &mut self,
        now: Instant,
        client: ClientKey,
        m: &Message<'a>,
        out: &mut Vec<u8>,
    ) -> ClientAction<'a> {
        match (m.class, m.method) {
            (Class::Request, method::BINDING) => {
                let to = ReplyTo::of(m);
                if !m.attrs.unknown_required.as_slice().is_empty() {
                    self.unknown_attributes(out, to, m, None);
                } else {
                    let mut w = MessageWriter::new(out, to.method, Class::Success, to.txid);
                    w.xor_addr(attr::XOR_MAPPED_ADDRESS, client.addr);
                    finish(&mut w, to, None);
                }
                ClientAction::Reply
            }
            (Class::Indication, method::SEND) => self.send_indication(now, client, m),
            (
                Class::Request,
                method::ALLOCATE
                | method::REFRESH
                | method::CREATE_PERMISSION
                | method::CHANNEL_BIND,
            ) => {
                let Some(authed) = self.authenticate(now, client, m, out) else {
                    return ClientAction::Reply;
                };
                let to = ReplyTo::of(m);
                if !m.attrs.unknown_required.as_slice().is_empty() {
                    self.unknown_attributes(out, to, m, Some(&authed));
                    return ClientAction::Reply;
                }
                match m.method {
                    method::ALLOCATE => self.allocate(now, client, m, authed, out),
                    method::REFRESH => self.refresh(now, client, m, &authed, out),
                    method::CREATE_PERMISSION => {
                        self.create_permission(now, client, m, &authed, out)
                    }
                    _ => self.channel_bind(now, client, m, &authed, out),
                }
            }
            (Class::Request, _) => {
                error(out, ReplyTo::of(m), 400, None);
                ClientAction::Reply
            }
            _ => ClientAction::None,
        }
    }

    fn unknown_attributes(&self, out: &mut Vec<u8>, to: ReplyTo, m: &Message, a: Option<&Authed>) {
        let mut w = MessageWriter::new(out, to.method, Class::Error, to.txid);
        w.error_code(420, reason(420))
            .unknown_attributes(m.attrs.unknown_required.as_slice());
        finish(&mut w, to, a);
    }

    /// RFC 8489 §9.2.4, long-term credentials. On failure `out` holds the error reply.
    fn authenticate<'m>(
        &mut self,
        now: Instant,
        client: ClientKey,
        m: &Message<'m>,
        out: &mut Vec<u8>,
    ) -> Option<Authed<'m>> {
        let to = ReplyTo::of(m);
        let c = self.counters.clone();
        if m.integrity_kind().is_none() {
            Counters::inc(&c.auth_challenges);
            self.challenge(out, to, 401, client.addr, now);
            return None;
        }
        let (Some(username), Some(_realm), Some(nonce)) =
            (m.attrs.username, m.attrs.realm, m.attrs.nonce)
        else {
            Counters::inc(&c.auth_malformed);
            error(out, to, 400, None);
            return None;
        };
        let unix = self.unix(now);
        match auth::check_username(username, unix) {
            UsernameCheck::Valid => {}
            UsernameCheck::Expired => {
                Counters::inc(&c.auth_expired);
                self.challenge(out, to, 401, client.addr, now);
                return None;
            }
            UsernameCheck::Malformed => {
                Counters::inc(&c.auth_malformed);
                self.challenge(out, to, 401, client.addr, now);
                return None;
            }
        }
        let Some(key) = self.verify_with_secrets(m, username) else {
            Counters::inc(&c.auth_bad_integrity);
            self.challenge(out, to, 401, client.addr, now);
            return None;
        };
        if self.nonces.check(nonce, client.addr, unix) == NonceCheck::Stale {
            Counters::inc(&c.auth_stale_nonce);
            self.challenge(out, to, 438, client.addr, now);
            return None;
        }
        Some(Authed { username, key })
    }

    fn verify_with_secrets(&self, m: &Message, username: &str) -> Option<[u8; 16]> {
        let mut pw = [0u8; 28];
        self.cfg.secrets.iter().find_map(|s| {
            let password = auth::rest_password_into(s.as_bytes(), username, &mut pw);
            let key = auth::long_term_key(username, &self.cfg.realm, password);
            (m.verify_integrity(&key) == Some(true)).then_some(key)
        })
    }

    /// 401 or 438 with REALM and a fresh NONCE.
    fn challenge(
        &self,
        out: &mut Vec<u8>,
        to: ReplyTo,
        code: u16,
        client: SocketAddr,
        now: Instant,
    ) {
        let nonce = self.nonces.mint(client, self.unix(now));
        let mut w = MessageWriter::new(out, to.method, Class::Error, to.txid);
        w.error_code(code, reason(code))
            .bytes(attr::REALM, self.cfg.realm.as_bytes())
            .bytes(attr::NONCE, &nonce);
        finish(&mut w, to, None);
    }

    /// Whether a packet to or from `peer` may pass `alloc`'s permissions.
    fn permitted(alloc: &Allocation, policy: &PeerPolicy, peer: SocketAddr, now: Instant) -> bool {
        match alloc.permission(peer.ip(), now) {
            Some(p) => !p.port_checked || policy.allows(peer),
            None => false,
        }
    }

    fn send_indication<'a>(
        &mut self,
        now: Instant,
        client: ClientKey,
        m: &Message<'a>,
    ) -> ClientAction<'a> {
        let (Some(peer), Some(data)) = (m.attrs.xor_peers.first(), m.attrs.data) else {
            return self.malformed();
        };
        self.relay_to_peer(now, client, peer, data)
    }

    fn channel_data_from_client<'a>(
        &mut self,
        now: Instant,
        client: ClientKey,
        cd: ChannelData<'a>,
    ) -> ClientAction<'a> {
        let peer = self
            .allocations
            .get(&client)
            .and_then(|a| a.channel_by_number(cd.number, now))
            .map(|c| c.peer);
        match peer {
            Some(peer) => self.relay_to_peer(now, client, peer, cd.data),
            None => {
                Counters::inc(&self.counters.no_permission_drops);
                ClientAction::None
            }
        }
    }

    fn relay_to_peer<'a>(
        &mut self,
        now: Instant,
        client: ClientKey,
        peer: SocketAddr,
        data: &'a [u8],
    ) -> ClientAction<'a> {
        let c = &self.counters;
        let Some(alloc) = self.allocations.get_mut(&client) else {
            Counters::inc(&c.no_permission_drops);
            return ClientAction::None;
        };
        if !Self::permitted(alloc, &self.cfg.policy, peer, now) {
            Counters::inc(&c.no_permission_drops);
            return ClientAction::None;
        }
        if !alloc.to_peer_budget.take(now, data.len()) {
            Counters::inc(&c.bandwidth_drops);
            return ClientAction::None;
        }
        Counters::inc(&c.to_peer_packets);
        Counters::add(&c.to_peer_bytes, data.len() as u64);
        ClientAction::ToPeer {
            allocation: alloc.id,
            peer,
            data,
        }
    }

    /// Handles a datagram from `peer` on the relay socket of allocation `id` (owned by
    /// `client`). On [`PeerAction::ToClient`], `out` holds ChannelData or a Data indication.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        client: ClientKey,
        id: AllocationId,
        peer: SocketAddr,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> PeerAction {
        let c = &self.counters;
        let Some(alloc) = self.allocations.get_mut(&client).filter(|a| a.id == id) else {
            return PeerAction::Drop;
        };
        if !Self::permitted(alloc, &self.cfg.policy, peer, now) {
            Counters::inc(&c.no_permission_drops);
            return PeerAction::Drop;
        }
        if !alloc.to_client_budget.take(now, data.len()) {
            Counters::inc(&c.bandwidth_drops);
            return PeerAction::Drop;
        }
        if let Some(ch) = alloc.channel_by_peer(peer, now) {
            write_channel_data(out, ch.number, data, client.transport.is_stream());
        } else if data.len() <= MAX_INDICATION_DATA {
            // Indication ids need only be unique, not secret: xorshift.
            let mut x = self.txid_state;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.txid_state = x;
            let mut txid = [0u8; 12];
            txid[..8].copy_from_slice(&x.to_le_bytes());
            MessageWriter::new(out, method::DATA, Class::Indication, txid)
                .xor_addr(attr::XOR_PEER_ADDRESS, peer)
                .bytes(attr::DATA, data);
        } else {
            Counters::inc(&c.malformed_packets);
            return PeerAction::Drop;
        }
        Counters::inc(&c.to_client_packets);
        Counters::add(&c.to_client_bytes, data.len() as u64);
        PeerAction::ToClient
    }

    /// A stream client disconnected: its allocation goes too (RFC 8656 §3.1).
    pub fn client_closed(&mut self, client: ClientKey) -> Option<AllocationId> {
        self.remove(&client)
    }

    /// Expires allocations, permissions and channels. Appends `(client, id)` of each deleted
    /// allocation to `expired` so the shell closes their relays. Call about once a second.
    pub fn handle_timeout(&mut self, now: Instant, expired: &mut Vec<(ClientKey, AllocationId)>) {
        let start = expired.len();
        for (k, a) in self.allocations.iter_mut() {
            if a.expires <= now {
                expired.push((*k, a.id));
            } else {
                a.expire(now);
            }
        }
        for &(k, _) in &expired[start..] {
            self.remove(&k);
        }
    }

    fn remove(&mut self, client: &ClientKey) -> Option<AllocationId> {
        let a = self.allocations.remove(client)?;
        let user = crate::auth::user_of(&a.username);
        if let Some(by_expiry) = self.per_user.get_mut(user) {
            let expiry = credential_expiry(&a.username);
            if let Some(n) = by_expiry.get_mut(&expiry) {
                *n -= 1;
                if *n == 0 {
                    by_expiry.remove(&expiry);
                }
            }
            if by_expiry.is_empty() {
                self.per_user.remove(user);
            }
        }
        let source = source_of(client.addr.ip());
        if let Some(n) = self.per_ip.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&source);
            }
        }
        Counters::dec(&self.counters.allocations_current);
        Some(a.id)
    }
}
