//! Randomized robustness: hundreds of thousands of mutated STUN, TURN and ChannelData messages
//! through the parsers ([`fuzz_parse`]) and through the whole sans-IO server. Nothing may
//! panic. A fixed-seed xorshift keeps failures reproducible without extra crates.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use consulta_turn::auth::{credentials, long_term_key, NonceMinter};
use consulta_turn::policy::PeerPolicy;
use consulta_turn::stun::{
    attr, fuzz_parse, method, write_channel_data, Class, IntegrityKind, Message, MessageWriter,
};
use consulta_turn::{ClientKey, ServerConfig, Transport, TurnServer};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Well-formed messages of every kind the server reads, signed where it matters.
fn seeds(nonce: &[u8]) -> Vec<Vec<u8>> {
    let (user, pass) = credentials("s", "u", 3600, 1_700_000_000);
    let key = long_term_key(&user, "r", &pass);
    let peer4: SocketAddr = "203.0.113.1:9".parse().unwrap();
    let peer6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
    let mut out = Vec::new();
    let methods = [
        method::BINDING,
        method::ALLOCATE,
        method::REFRESH,
        method::CREATE_PERMISSION,
        method::CHANNEL_BIND,
        method::SEND,
        method::DATA,
    ];
    for (i, &m) in methods.iter().enumerate() {
        let class = if m == method::SEND || m == method::DATA {
            Class::Indication
        } else {
            Class::Request
        };
        let mut b = Vec::new();
        let mut w = MessageWriter::new(&mut b, m, class, [i as u8; 12]);
        w.u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .u32(attr::LIFETIME, 600)
            .u32(attr::CHANNEL_NUMBER, 0x4001 << 16)
            .xor_addr(attr::XOR_PEER_ADDRESS, peer4)
            .xor_addr(attr::XOR_PEER_ADDRESS, peer6)
            .bytes(attr::DATA, b"payload!")
            .bytes(attr::EVEN_PORT, &[0x80])
            .bytes(attr::SOFTWARE, b"fuzz")
            .error_code(438, "Stale Nonce")
            .unknown_attributes(&[1, 2, 3])
            .bytes(attr::USERNAME, user.as_bytes())
            .bytes(attr::REALM, b"r")
            .bytes(attr::NONCE, nonce)
            .integrity(
                if i % 2 == 0 {
                    IntegrityKind::Sha1
                } else {
                    IntegrityKind::Sha256
                },
                &key,
            )
            .fingerprint();
        out.push(b);
    }
    let mut cd = Vec::new();
    write_channel_data(&mut cd, 0x4001, b"channel data", true);
    out.push(cd);
    out
}

fn mutate(rng: &mut XorShift, seed: &[u8], buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(seed);
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                buf[i] ^= 1 << rng.below(8);
            }
            1 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                buf[i] = rng.next() as u8;
            }
            2 => buf.truncate(rng.below(buf.len() + 1)),
            3 => {
                let i = rng.below(buf.len() + 1);
                let n = rng.below(12);
                for _ in 0..n {
                    buf.insert(i, rng.next() as u8);
                }
            }
            // Length fields are where parsers die: the header's, or an attribute's.
            4 if buf.len() >= 4 => {
                let v = (rng.next() as u16).to_be_bytes();
                buf[2..4].copy_from_slice(&v);
            }
            5 if buf.len() >= 24 => {
                let at = 20 + 4 * rng.below((buf.len() - 20) / 4);
                if at + 4 <= buf.len() {
                    let v = (rng.below(80) as u16).to_be_bytes();
                    buf[at + 2..at + 4].copy_from_slice(&v);
                }
            }
            _ => {
                // Keep the header consistent so the attribute walk is reached.
                if buf.len() >= 20 {
                    let len = (((buf.len() - 20) & !3) as u16).to_be_bytes();
                    buf[2..4].copy_from_slice(&len);
                    let keep = 20 + ((buf.len() - 20) & !3);
                    buf.truncate(keep);
                }
            }
        }
    }
}

#[test]
fn parsers_never_panic_on_mutated_messages() {
    let seeds = seeds(b"0000000000000000ffffffffffffffff");
    for s in &seeds {
        assert!(
            s.len() < 20 || Message::parse(s).is_ok() || s[0] & 0xC0 != 0,
            "seed parses"
        );
    }
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut buf = Vec::new();
    let mut parsed = 0;
    for i in 0..300_000 {
        mutate(&mut rng, &seeds[i % seeds.len()], &mut buf);
        fuzz_parse(&buf);
        parsed += Message::parse(&buf).is_ok() as u32;
    }
    // The mutations must not all be rejected at the header, or this test tests nothing.
    assert!(parsed > 10_000, "only {parsed} mutated messages parsed");
    // Pure noise too.
    for len in 0..2_000 {
        buf.clear();
        buf.extend((0..len % 300).map(|_| rng.next() as u8));
        fuzz_parse(&buf);
    }
}

#[test]
fn server_never_panics_on_mutated_traffic() {
    let mut cfg = ServerConfig::new("r", vec!["s".into()], "198.51.100.1".parse().unwrap());
    cfg.legacy_channel_numbers = true;
    // The seeds' peer is the SFU, the only peer the default policy allows (at its port).
    cfg.policy = PeerPolicy::new(vec![], vec!["203.0.113.1:9".parse().unwrap()]);
    let t0 = Instant::now();
    let mut server = TurnServer::new(cfg, [1; 32], t0, 1_700_000_000);
    // Seeds carry a nonce the server accepts from 192.0.2.0:1000, so unmutated ones allocate,
    // permit and bind, and the mutated traffic after them reaches live allocations.
    let nonce =
        NonceMinter::new([1; 32], 600).mint("192.0.2.0:1000".parse().unwrap(), 1_700_000_000);
    let seeds = seeds(&nonce);
    let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut expired = Vec::new();
    let relay: SocketAddr = "198.51.100.1:50000".parse().unwrap();
    for i in 0..100_000u64 {
        let seed = &seeds[i as usize % seeds.len()];
        if rng.below(4) == 0 {
            buf.clone_from(seed);
        } else {
            mutate(&mut rng, seed, &mut buf);
        }
        let now = t0 + Duration::from_millis(i * 3);
        let transport = [Transport::Udp, Transport::Tcp, Transport::Tls][rng.below(3)];
        let key = ClientKey {
            addr: SocketAddr::from(([192, 0, 2, rng.below(4) as u8], 1000)),
            transport,
        };
        use consulta_turn::server::ClientAction;
        if let ClientAction::BindRelay(p) = server.handle_client(now, key, &buf, &mut out) {
            let ok = rng.below(4) != 0;
            server.complete_allocation(now, p, ok.then_some(relay), None, &mut out);
        }
        let peer = SocketAddr::from(([203, 0, 113, 1], 9));
        server.handle_peer(now, key, rng.below(3) as u64, peer, &buf, &mut out);
        if i % 1000 == 0 {
            server.handle_timeout(now, &mut expired);
        }
    }
    let n = server.counters().snapshot();
    assert!(
        n.allocations_total > 0 && n.to_peer_packets > 0,
        "fuzzing reached no allocation: {n:?}"
    );
}
