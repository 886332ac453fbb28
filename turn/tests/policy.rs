//! The peer policy through the sans-IO core: a relay reaches the SFU's exact media addresses
//! and the configured `allowed_peer_ranges`, nothing else — not a public address, not a private
//! one, not the SFU's host on another port (issue 24, item 1).

mod sans_io;

use consulta_turn::policy::PeerPolicy;
use consulta_turn::server::{ClientAction, PeerAction};
use consulta_turn::Transport;
use sans_io::*;

/// The SFU's media address, public-looking like a real deployment's.
const SFU: &str = "198.51.100.7:7882";

/// A frame of ChannelData on `number` carrying "a" (padded for streams).
fn channel_frame(number: u16) -> [u8; 8] {
    let n = number.to_be_bytes();
    [n[0], n[1], 0x00, 0x01, b'a', 0, 0, 0]
}

fn relays_channel(h: &mut Harness, c: &Client, number: u16) -> bool {
    let frame = channel_frame(number);
    matches!(
        h.server.handle_client(h.at(1), c.key, &frame, &mut h.out),
        ClientAction::ToPeer { .. }
    )
}

/// The defaults with the SFU's address, as `consulta_turn::start` gets it from the binary.
fn sfu_only() -> Harness {
    let mut cfg = bare_config();
    cfg.policy = PeerPolicy::new(vec![], vec![addr(SFU)]);
    Harness::new(cfg)
}

#[test]
fn public_and_private_peers_are_refused_by_default() {
    let mut h = sfu_only();
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 3600);
    let id = h.allocate(0, &mut c);
    for peer in [
        "203.0.113.50:5000",
        "8.8.8.8:53",
        "10.1.2.3:5000",
        "192.168.1.1:5000",
        "127.0.0.1:3480",
    ] {
        assert_eq!(h.create_permission(0, &mut c, peer), Some(403), "{peer}");
        assert_eq!(h.channel_bind(0, &mut c, 0x4000, peer), Some(403), "{peer}");
        assert_eq!(h.send_indication(0, &c, peer, b"x"), None, "{peer}");
        let a = h
            .server
            .handle_peer(h.at(0), c.key, id, addr(peer), b"y", &mut h.out);
        assert_eq!(a, PeerAction::Drop, "{peer} inbound");
    }
    let n = h.server.counters().snapshot();
    assert_eq!(n.permission_refusals, 10, "{n:?}");
    assert_eq!(n.to_peer_packets + n.to_client_packets, 0, "{n:?}");
}

#[test]
fn the_sfu_is_allowed_at_its_exact_port_only() {
    let mut h = sfu_only();
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 3600);
    let id = h.allocate(0, &mut c);
    // A permission is per IP; the SFU's IP hosts an allowed peer, so it is installed...
    assert_eq!(h.create_permission(0, &mut c, "198.51.100.7:9"), None);
    assert_eq!(h.send_indication(0, &c, SFU, b"x"), Some(addr(SFU)));
    // ...but every packet's port is checked.
    assert_eq!(h.send_indication(0, &c, "198.51.100.7:7883", b"x"), None);
    assert_eq!(h.send_indication(0, &c, "198.51.100.7:53", b"x"), None);
    let a = h.server.handle_peer(
        h.at(0),
        c.key,
        id,
        addr("198.51.100.7:53"),
        b"y",
        &mut h.out,
    );
    assert_eq!(a, PeerAction::Drop, "inbound from another port");
    let a = h
        .server
        .handle_peer(h.at(0), c.key, id, addr(SFU), b"y", &mut h.out);
    assert_eq!(a, PeerAction::ToClient);
    // A channel names the port: the SFU's is bound, another port is refused.
    assert_eq!(
        h.channel_bind(0, &mut c, 0x4001, "198.51.100.7:7883"),
        Some(403)
    );
    assert_eq!(h.channel_bind(0, &mut c, 0x4002, SFU), None);
    assert!(relays_channel(&mut h, &c, 0x4002));
    assert!(
        !relays_channel(&mut h, &c, 0x4001),
        "refused bind relays nothing"
    );
    // A neighbour of the SFU is not the SFU.
    assert_eq!(
        h.create_permission(0, &mut c, "198.51.100.8:7882"),
        Some(403)
    );
}

#[test]
fn configured_ranges_are_allowed_with_their_ports() {
    let mut cfg = bare_config();
    cfg.policy = PeerPolicy::from_strings(
        &["203.0.113.0/24".into(), "10.0.0.0/8:5000-5001".into()],
        vec![addr(SFU)],
    )
    .unwrap();
    let mut h = Harness::new(cfg);
    let mut c = Client::new("192.0.2.10:40000", Transport::Tcp, 3600);
    h.allocate(0, &mut c);
    // A range without ports: any port of any address in it.
    assert_eq!(h.create_permission(0, &mut c, "203.0.113.50:5000"), None);
    for peer in ["203.0.113.50:5000", "203.0.113.50:1"] {
        assert_eq!(h.send_indication(0, &c, peer, b"x"), Some(addr(peer)));
    }
    assert_eq!(h.channel_bind(0, &mut c, 0x4000, "203.0.113.50:6000"), None);
    // A range with ports: those ports only.
    assert_eq!(h.create_permission(0, &mut c, "10.1.2.3:6000"), None);
    assert_eq!(
        h.send_indication(0, &c, "10.1.2.3:5001", b"x"),
        Some(addr("10.1.2.3:5001"))
    );
    assert_eq!(h.send_indication(0, &c, "10.1.2.3:6000", b"x"), None);
    assert_eq!(
        h.channel_bind(0, &mut c, 0x4001, "10.1.2.3:6000"),
        Some(403)
    );
    assert_eq!(h.channel_bind(0, &mut c, 0x4001, "10.1.2.3:5000"), None);
    // Outside every range: still refused; the SFU still allowed.
    assert_eq!(
        h.create_permission(0, &mut c, "203.0.114.1:5000"),
        Some(403)
    );
    assert_eq!(h.create_permission(0, &mut c, "11.1.2.3:5000"), Some(403));
    assert_eq!(h.create_permission(0, &mut c, SFU), None);
    assert_eq!(h.send_indication(0, &c, SFU, b"x"), Some(addr(SFU)));
}

#[test]
fn one_refused_peer_refuses_the_whole_create_permission() {
    let mut h = sfu_only();
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 3600);
    h.allocate(0, &mut c);
    let req = c.request(consulta_turn::stun::method::CREATE_PERMISSION, true, |w| {
        w.xor_addr(consulta_turn::stun::attr::XOR_PEER_ADDRESS, addr(SFU))
            .xor_addr(
                consulta_turn::stun::attr::XOR_PEER_ADDRESS,
                addr("203.0.113.50:5000"),
            );
    });
    assert_eq!(h.call(0, &c.key, &req).1, Some(403));
    assert_eq!(
        h.send_indication(0, &c, SFU, b"x"),
        None,
        "nothing installed"
    );
}
