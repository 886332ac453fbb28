//! A sans-IO harness shared by the core's tests: a TURN client that signs its requests, and
//! the server driven with in-memory packets at chosen times. No socket anywhere.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use consulta_turn::auth::{credentials, long_term_key};
use consulta_turn::policy::PeerPolicy;
use consulta_turn::server::{ClientAction, PendingAllocation};
use consulta_turn::stun::{attr, method, Class, IntegrityKind, Message, MessageWriter};
use consulta_turn::{ClientKey, ServerConfig, Transport, TurnServer};

pub const SECRET: &str = "s3cret";
pub const REALM: &str = "consulta.test";
pub const T0_UNIX: u64 = 1_700_000_000;
pub const PEER: &str = "203.0.113.9:5000";
pub const RELAY: &str = "198.51.100.1:50000";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The default policy (the SFU only, and no SFU address here) with `PEER`'s host allowed, as
/// an operator would configure `allowed_peer_ranges` for it.
pub fn config() -> ServerConfig {
    let mut c = bare_config();
    c.policy = PeerPolicy::from_strings(&["203.0.113.9/32".into()], vec![]).unwrap();
    c
}

/// Defaults only: no allowed range, no SFU address.
pub fn bare_config() -> ServerConfig {
    ServerConfig::new(REALM, vec![SECRET.into()], "198.51.100.1".parse().unwrap())
}

/// A TURN client speaking to the core directly.
pub struct Client {
    pub key: ClientKey,
    pub username: String,
    pub password: String,
    pub nonce: Vec<u8>,
    pub seq: u8,
}

impl Client {
    pub fn new(a: &str, transport: Transport, ttl: u64) -> Self {
        let (username, password) = credentials(SECRET, "alice", ttl, T0_UNIX);
        Client {
            key: ClientKey {
                addr: addr(a),
                transport,
            },
            username,
            password,
            nonce: Vec::new(),
            seq: 0,
        }
    }

    /// A client of user `user` (credential valid an hour).
    pub fn of(user: &str, a: &str, transport: Transport) -> Self {
        let mut c = Self::new(a, transport, 3600);
        (c.username, c.password) = credentials(SECRET, user, 3600, T0_UNIX);
        c
    }

    pub fn txid(&mut self) -> [u8; 12] {
        self.seq += 1;
        [self.seq; 12]
    }

    /// A request signed with this client's credentials (unless `signed` is false).
    pub fn request(
        &mut self,
        m: u16,
        signed: bool,
        attrs: impl FnOnce(&mut MessageWriter),
    ) -> Vec<u8> {
        let txid = self.txid();
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, m, Class::Request, txid);
        attrs(&mut w);
        if signed {
            w.bytes(attr::USERNAME, self.username.as_bytes())
                .bytes(attr::REALM, REALM.as_bytes())
                .bytes(attr::NONCE, &self.nonce);
            let key = long_term_key(&self.username, REALM, &self.password);
            w.integrity(IntegrityKind::Sha1, &key);
        }
        w.fingerprint();
        buf
    }

    pub fn key(&self) -> [u8; 16] {
        long_term_key(&self.username, REALM, &self.password)
    }
}

pub struct Harness {
    pub server: TurnServer,
    pub t0: Instant,
    pub out: Vec<u8>,
}

impl Harness {
    pub fn new(cfg: ServerConfig) -> Self {
        let t0 = Instant::now();
        Harness {
            server: TurnServer::new(cfg, [7; 32], t0, T0_UNIX),
            t0,
            out: Vec::new(),
        }
    }

    pub fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    /// Sends `bytes`, expects a reply, returns (class, error code).
    pub fn call(&mut self, now: u64, c: &ClientKey, bytes: &[u8]) -> (Class, Option<u16>) {
        let now = self.at(now);
        match self.server.handle_client(now, *c, bytes, &mut self.out) {
            ClientAction::Reply | ClientAction::ReplyAndClose(_) => {}
            other => panic!("expected a reply, got {other:?}"),
        }
        let m = Message::parse(&self.out).expect("reply parses");
        (m.class, m.attrs.error_code.map(|e| e.code))
    }

    pub fn reply(&self) -> Message<'_> {
        Message::parse(&self.out).unwrap()
    }

    /// Gets a nonce (401 challenge) then allocates; returns the pending allocation.
    pub fn start_allocate(&mut self, now: u64, c: &mut Client) -> Result<PendingAllocation, u16> {
        let req = c.request(method::ALLOCATE, false, |w| {
            w.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
        });
        let (_, code) = self.call(now, &c.key, &req);
        assert_eq!(code, Some(401));
        c.nonce = self.reply().attrs.nonce.unwrap().to_vec();
        let req = c.request(method::ALLOCATE, true, |w| {
            w.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
        });
        match self
            .server
            .handle_client(self.at(now), c.key, &req, &mut self.out)
        {
            ClientAction::BindRelay(p) => Ok(p),
            ClientAction::Reply => Err(self.reply().attrs.error_code.unwrap().code),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn allocate(&mut self, now: u64, c: &mut Client) -> u64 {
        let p = self.start_allocate(now, c).expect("allocate accepted");
        let id = self
            .server
            .complete_allocation(self.at(now), p, Some(addr(RELAY)), None, &mut self.out)
            .expect("allocation created");
        let m = self.reply();
        assert_eq!(m.class, Class::Success);
        assert_eq!(m.attrs.xor_relayed, Some(addr(RELAY)));
        assert_eq!(m.attrs.xor_mapped, Some(c.key.addr));
        assert_eq!(m.attrs.lifetime, Some(600));
        assert_eq!(
            m.verify_integrity(&c.key()),
            Some(true),
            "response is signed"
        );
        id
    }

    pub fn create_permission(&mut self, now: u64, c: &mut Client, peer: &str) -> Option<u16> {
        let req = c.request(method::CREATE_PERMISSION, true, |w| {
            w.xor_addr(attr::XOR_PEER_ADDRESS, addr(peer));
        });
        self.call(now, &c.key, &req).1
    }

    pub fn channel_bind(
        &mut self,
        now: u64,
        c: &mut Client,
        number: u16,
        peer: &str,
    ) -> Option<u16> {
        let req = c.request(method::CHANNEL_BIND, true, |w| {
            w.u32(attr::CHANNEL_NUMBER, (number as u32) << 16)
                .xor_addr(attr::XOR_PEER_ADDRESS, addr(peer));
        });
        self.call(now, &c.key, &req).1
    }

    pub fn send_indication(
        &mut self,
        now: u64,
        c: &Client,
        peer: &str,
        data: &[u8],
    ) -> Option<SocketAddr> {
        let mut buf = Vec::new();
        MessageWriter::new(&mut buf, method::SEND, Class::Indication, [9; 12])
            .xor_addr(attr::XOR_PEER_ADDRESS, addr(peer))
            .bytes(attr::DATA, data);
        match self
            .server
            .handle_client(self.at(now), c.key, &buf, &mut self.out)
        {
            ClientAction::ToPeer { peer, data: d, .. } => {
                assert_eq!(d, data);
                Some(peer)
            }
            ClientAction::None => None,
            other => panic!("unexpected {other:?}"),
        }
    }
}

impl Harness {
    pub fn server_nonce_for(&mut self, c: &Client) -> Vec<u8> {
        let mut probe = Client::new(&c.key.addr.to_string(), c.key.transport, 1);
        let req = probe.request(method::REFRESH, false, |_| {});
        self.call(0, &c.key, &req);
        self.reply().attrs.nonce.unwrap().to_vec()
    }
}
