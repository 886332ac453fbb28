//! Target `turn_server`: the sans-IO TURN core (`TurnServer`) driven by a sequence of
//! operations — raw client datagrams/frames, requests that the harness signs with valid
//! long-term credentials and a fresh nonce (so mutations reach allocations, permissions and
//! channels instead of stopping at MESSAGE-INTEGRITY), peer datagrams on relays, relay binds
//! that succeed or fail, closed stream clients and the passing of time.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use consulta_turn::auth::{credentials, long_term_key, NonceMinter};
use consulta_turn::policy::PeerPolicy;
use consulta_turn::server::ClientAction;
use consulta_turn::stun::{attr, method, Class, IntegrityKind, MessageWriter};
use consulta_turn::{ClientKey, ServerConfig, Transport, TurnServer};

use crate::Input;

const UNIX0: u64 = 1_700_000_000;
const NONCE_KEY: [u8; 32] = [7; 32];
const METHODS: [u16; 8] = [
    method::BINDING,
    method::ALLOCATE,
    method::REFRESH,
    method::CREATE_PERMISSION,
    method::CHANNEL_BIND,
    method::SEND,
    method::DATA,
    0x00B,
];
const ATTRS: [u16; 16] = [
    attr::REQUESTED_TRANSPORT,
    attr::LIFETIME,
    attr::CHANNEL_NUMBER,
    attr::XOR_PEER_ADDRESS,
    attr::DATA,
    attr::EVEN_PORT,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::RESERVATION_TOKEN,
    attr::DONT_FRAGMENT,
    attr::SOFTWARE,
    attr::ERROR_CODE,
    attr::UNKNOWN_ATTRIBUTES,
    attr::USERNAME,
    attr::NONCE,
    attr::PRIORITY,
    0x7FFF,
];
/// Peers: the SFU (always allowed), an allowed range, a refused one, IPv6.
const PEERS: [&str; 4] = [
    "203.0.113.1:9",
    "198.18.0.5:4000",
    "10.0.0.1:80",
    "[2001:db8::1]:9",
];

struct Credential {
    username: String,
    key: [u8; 16],
}

fn credential() -> &'static [Credential; 2] {
    static C: OnceLock<[Credential; 2]> = OnceLock::new();
    C.get_or_init(|| {
        [("s", "alice"), ("old", "bob")].map(|(secret, user)| {
            let (username, pass) = credentials(secret, user, 3600, UNIX0);
            let key = long_term_key(&username, "r", &pass);
            Credential { username, key }
        })
    })
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mut cfg = ServerConfig::new(
        "r",
        vec!["s".into(), "old".into()],
        "198.51.100.1".parse().unwrap(),
    );
    cfg.legacy_channel_numbers = input.bool();
    cfg.max_allocations_per_user = 3;
    cfg.max_allocations_per_ip = 4;
    cfg.max_bandwidth = if input.bool() { 0 } else { 20_000 };
    cfg.policy = PeerPolicy::from_strings(
        &["198.18.0.0/15".into()],
        vec!["203.0.113.1:9".parse().unwrap()],
    )
    .expect("a valid policy");
    let t0 = Instant::now();
    let mut server = TurnServer::new(cfg, NONCE_KEY, t0, UNIX0);
    let minter = NonceMinter::new(NONCE_KEY, 600);
    let mut now = t0;
    let mut out = Vec::new();
    let mut msg = Vec::new();
    let mut expired = Vec::new();
    let mut relays = 0u16;
    while !input.is_empty() {
        let op = input.u8();
        let who = input.u8();
        let client = ClientKey {
            addr: SocketAddr::from(([192, 0, 2, who & 3], 1000 + u16::from(who >> 6))),
            transport: [Transport::Udp, Transport::Tcp, Transport::Tls][usize::from(who >> 2) % 3],
        };
        let unix = UNIX0 + now.duration_since(t0).as_secs();
        let action = match op % 6 {
            0 => server.handle_client(now, client, input.long(), &mut out),
            1 | 2 => {
                signed(&mut input, &minter, client.addr, unix, &mut msg);
                server.handle_client(now, client, &msg, &mut out)
            }
            3 => {
                let peer: SocketAddr = input.pick(&PEERS).parse().unwrap();
                let id = u64::from(input.u8() % 4);
                server.handle_peer(now, client, id, peer, input.long(), &mut out);
                ClientAction::None
            }
            4 => {
                now += Duration::from_millis(u64::from(input.u16()) * 50);
                server.handle_timeout(now, &mut expired);
                expired.clear();
                ClientAction::None
            }
            _ => {
                server.client_closed(client);
                ClientAction::None
            }
        };
        if let ClientAction::BindRelay(p) = action {
            let bound = input.u8();
            relays = relays.wrapping_add(2);
            let relay = (bound & 3 != 0).then(|| SocketAddr::from(([198, 51, 100, 1], relays)));
            let reservation = (bound & 4 != 0).then_some([bound; 8]);
            server.complete_allocation(now, p, relay, reservation, &mut out);
        }
    }
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("{:?}", server.counters().snapshot());
    }
}

/// A request or indication with fuzzed attributes, then USERNAME, REALM, NONCE,
/// MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT as a real client computes them (each may be
/// spoiled by a flag).
fn signed(
    input: &mut Input,
    minter: &NonceMinter,
    client: SocketAddr,
    unix: u64,
    out: &mut Vec<u8>,
) {
    out.clear();
    let m = input.pick(&METHODS);
    let flags = input.u8();
    let class = if flags & 1 == 0 {
        Class::Request
    } else {
        Class::Indication
    };
    let mut txid = [0u8; 12];
    txid.copy_from_slice(&[input.u8(); 12]);
    let mut w = MessageWriter::new(out, m, class, txid);
    for _ in 0..input.u8() % 8 {
        let t = input.pick(&ATTRS);
        match t {
            attr::XOR_PEER_ADDRESS => {
                let peer = input.pick(&PEERS).parse().unwrap();
                w.xor_addr(t, peer);
            }
            attr::LIFETIME | attr::REQUESTED_TRANSPORT | attr::CHANNEL_NUMBER => {
                w.u32(t, input.u32());
            }
            _ => {
                w.bytes(t, input.short());
            }
        }
    }
    let cred = &credential()[usize::from(flags >> 1 & 1)];
    if flags & 4 == 0 {
        w.bytes(attr::USERNAME, cred.username.as_bytes());
    }
    if flags & 8 == 0 {
        w.bytes(attr::REALM, b"r");
    }
    if flags & 16 == 0 {
        // A stale nonce sometimes: minted long ago.
        let at = if flags & 32 == 0 { unix } else { unix - 3600 };
        w.bytes(attr::NONCE, &minter.mint(client, at));
    }
    let kind = if flags & 64 == 0 {
        IntegrityKind::Sha1
    } else {
        IntegrityKind::Sha256
    };
    w.integrity(kind, &cred.key);
    if flags & 128 == 0 {
        w.fingerprint();
    }
}
