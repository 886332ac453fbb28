//! The sans-IO core driven with in-memory packets: authentication, policy, channels, relay,
//! lifetimes and quotas. No socket anywhere. The peer policy's tests (relay to the SFU only
//! by default) are in `tests/policy.rs`.

mod sans_io;

use consulta_turn::auth::credentials;
use consulta_turn::policy::PeerPolicy;
use consulta_turn::server::{ClientAction, PeerAction};
use consulta_turn::stun::{attr, method, ChannelData, Class, Message};
use consulta_turn::Transport;
use sans_io::*;

#[test]
fn binding_needs_no_credentials() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 3600);
    let req = c.request(method::BINDING, false, |_| {});
    assert_eq!(h.call(0, &c.key, &req), (Class::Success, None));
    assert_eq!(h.reply().attrs.xor_mapped, Some(c.key.addr));
    assert!(h.reply().attrs.fingerprint);
}

#[test]
fn allocate_challenges_then_succeeds() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 3600);
    h.allocate(0, &mut c);
    let n = h.server.counters().snapshot();
    assert_eq!(
        (
            n.auth_challenges,
            n.allocations_current,
            n.allocations_total
        ),
        (1, 1, 1)
    );
    assert_eq!(h.reply().attrs.realm, None);
}

#[test]
fn wrong_password_is_refused_and_counted() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 3600);
    c.password = "not-the-password".into();
    assert_eq!(h.start_allocate(0, &mut c).unwrap_err(), 401);
    assert_eq!(h.server.counters().snapshot().auth_bad_integrity, 1);
}

#[test]
fn expired_credential_is_refused() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 60);
    // Valid at first...
    h.allocate(0, &mut c);
    // ...but a Refresh after the credential's expiry gets 401, even with a fresh nonce.
    let mut late = Client::new("192.0.2.11:40000", Transport::Udp, 60);
    assert_eq!(h.start_allocate(61, &mut late).unwrap_err(), 401);
    let req = c.request(method::REFRESH, true, |_| {});
    assert_eq!(h.call(30, &c.key, &req), (Class::Success, None));
    let req = c.request(method::REFRESH, true, |_| {});
    assert_eq!(h.call(61, &c.key, &req).1, Some(401));
    assert_eq!(h.server.counters().snapshot().auth_expired, 2);
}

#[test]
fn credential_from_a_rotated_secret_is_accepted() {
    let mut cfg = config();
    cfg.secrets = vec!["new".into(), SECRET.into()];
    let mut h = Harness::new(cfg);
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 3600);
    h.allocate(0, &mut c);
    h.server.set_secrets(vec!["new".into()]);
    let req = c.request(method::REFRESH, true, |_| {});
    assert_eq!(
        h.call(1, &c.key, &req).1,
        Some(401),
        "removed secret no longer works"
    );
}

#[test]
fn stale_nonce_gets_438_and_a_fresh_one() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 7200);
    h.allocate(0, &mut c);
    let req = c.request(method::REFRESH, true, |_| {});
    assert_eq!(h.call(599, &c.key, &req), (Class::Success, None));
    let req = c.request(method::REFRESH, true, |_| {});
    assert_eq!(h.call(600, &c.key, &req).1, Some(438));
    let fresh = h.reply().attrs.nonce.unwrap().to_vec();
    assert_ne!(fresh, c.nonce);
    assert_eq!(h.reply().attrs.realm, Some(REALM));
    c.nonce = fresh;
    let req = c.request(method::REFRESH, true, |_| {});
    assert_eq!(h.call(600, &c.key, &req), (Class::Success, None));
    // A nonce minted for another address is stale too.
    let mut other = Client::new("192.0.2.99:1", Transport::Udp, 7200);
    other.nonce = c.nonce.clone();
    let req = other.request(method::ALLOCATE, true, |w| {
        w.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
    });
    assert_eq!(h.call(600, &other.key, &req).1, Some(438));
    assert_eq!(h.server.counters().snapshot().auth_stale_nonce, 2);
}

#[test]
fn allocate_checks_transport_and_mismatch() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 3600);
    let _ = h.start_allocate(0, &mut c); // fetch a nonce
    let req = c.request(method::ALLOCATE, true, |w| {
        w.u32(attr::REQUESTED_TRANSPORT, 6 << 24);
    });
    assert_eq!(h.call(0, &c.key, &req).1, Some(442));
    let req = c.request(method::ALLOCATE, true, |_| {});
    assert_eq!(h.call(0, &c.key, &req).1, Some(400));
    let req = c.request(method::ALLOCATE, true, |w| {
        w.u32(attr::REQUESTED_TRANSPORT, 17 << 24).u32(0x0031, 0);
    });
    assert_eq!(h.call(0, &c.key, &req).1, Some(420));
    assert_eq!(h.reply().attrs.unknown_attributes, Some(&[0x00, 0x31][..]));

    h.allocate(0, &mut c);
    let req = c.request(method::ALLOCATE, true, |w| {
        w.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
    });
    assert_eq!(h.call(0, &c.key, &req).1, Some(437));
    // Another client, no allocation: Refresh is a mismatch.
    let mut d = Client::new("192.0.2.10:40001", Transport::Udp, 3600);
    d.nonce = h.server_nonce_for(&d);
    let req = d.request(method::REFRESH, true, |_| {});
    assert_eq!(h.call(0, &d.key, &req).1, Some(437));
}

#[test]
fn loopback_peer_refused_by_default_allowed_by_range() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 3600);
    h.allocate(0, &mut c);
    for peer in [
        "127.0.0.1:3480",
        "10.0.0.1:1",
        "192.168.1.1:1",
        "100.64.0.1:1",
        "169.254.0.1:1",
    ] {
        assert_eq!(h.create_permission(0, &mut c, peer), Some(403), "{peer}");
    }
    assert_eq!(
        h.channel_bind(0, &mut c, 0x4000, "127.0.0.1:3480"),
        Some(403)
    );
    assert_eq!(h.send_indication(0, &c, "127.0.0.1:3480", b"x"), None);
    assert_eq!(h.server.counters().snapshot().permission_refusals, 6);

    let mut cfg = config();
    cfg.relay_ip = "127.0.0.1".parse().unwrap();
    cfg.policy = PeerPolicy::from_strings(&["127.0.0.0/8".into()], vec![]).unwrap();
    let mut h = Harness::new(cfg);
    let mut c = Client::new("127.0.0.1:40000", Transport::Udp, 3600);
    h.allocate(0, &mut c);
    assert_eq!(h.create_permission(0, &mut c, "127.0.0.1:3480"), None);
    assert_eq!(
        h.send_indication(0, &c, "127.0.0.1:3480", b"x"),
        Some(addr("127.0.0.1:3480"))
    );
    assert_eq!(h.create_permission(0, &mut c, "10.0.0.1:3480"), Some(403));
}

#[test]
fn always_allowed_sfu_address_is_exact() {
    let sfu = addr("10.1.1.1:7882");
    let mut cfg = config();
    cfg.policy = PeerPolicy::new(vec![], vec![sfu]);
    let mut h = Harness::new(cfg);
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 3600);
    h.allocate(0, &mut c);
    assert_eq!(h.create_permission(0, &mut c, "10.1.1.1:9"), None);
    assert_eq!(h.send_indication(0, &c, "10.1.1.1:7882", b"x"), Some(sfu));
    assert_eq!(
        h.send_indication(0, &c, "10.1.1.1:5432", b"x"),
        None,
        "other port"
    );
    assert_eq!(
        h.channel_bind(0, &mut c, 0x4001, "10.1.1.1:5432"),
        Some(403)
    );
    assert_eq!(h.channel_bind(0, &mut c, 0x4001, "10.1.1.1:7882"), None);
    // Inbound from another port of that host is dropped too.
    let id = h.server.allocation(&c.key).unwrap().id;
    let a = h
        .server
        .handle_peer(h.at(1), c.key, id, addr("10.1.1.1:5432"), b"y", &mut h.out);
    assert_eq!(a, PeerAction::Drop);
}

#[test]
fn channel_bind_and_channel_data_both_ways() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 3600);
    let id = h.allocate(0, &mut c);
    assert_eq!(h.channel_bind(0, &mut c, 0x3FFF, PEER), Some(400));
    assert_eq!(
        h.channel_bind(0, &mut c, 0x5000, PEER),
        Some(400),
        "RFC 8656 range"
    );
    assert_eq!(h.channel_bind(0, &mut c, 0x4001, PEER), None);
    assert_eq!(
        h.channel_bind(0, &mut c, 0x4001, PEER),
        None,
        "refresh is fine"
    );
    assert_eq!(
        h.channel_bind(0, &mut c, 0x4002, PEER),
        Some(400),
        "peer already bound"
    );
    assert_eq!(
        h.channel_bind(0, &mut c, 0x4001, "203.0.113.9:5001"),
        Some(400)
    );

    // Client → peer: the payload is borrowed from the input.
    let frame = [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c', 0x00];
    match h.server.handle_client(h.at(1), c.key, &frame, &mut h.out) {
        ClientAction::ToPeer {
            allocation,
            peer,
            data,
        } => {
            assert_eq!((allocation, peer, data), (id, addr(PEER), &b"abc"[..]));
        }
        other => panic!("{other:?}"),
    }
    // Unbound channel: dropped.
    let frame = [0x40, 0x09, 0x00, 0x01, b'a'];
    assert!(matches!(
        h.server.handle_client(h.at(1), c.key, &frame, &mut h.out),
        ClientAction::None
    ));

    // Peer → client over UDP: unpadded ChannelData.
    let a = h
        .server
        .handle_peer(h.at(1), c.key, id, addr(PEER), b"hello", &mut h.out);
    assert_eq!(a, PeerAction::ToClient);
    assert_eq!(
        h.out,
        [0x40, 0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o']
    );
    // A stale id (a deleted allocation's relay task) is ignored.
    let a = h
        .server
        .handle_peer(h.at(1), c.key, id + 1, addr(PEER), b"x", &mut h.out);
    assert_eq!(a, PeerAction::Drop);
    let n = h.server.counters().snapshot();
    assert_eq!(
        (
            n.to_peer_packets,
            n.to_peer_bytes,
            n.to_client_packets,
            n.to_client_bytes
        ),
        (1, 3, 1, 5)
    );
}

#[test]
fn data_indication_without_channel_and_padding_over_tcp() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.10:40000", Transport::Tcp, 3600);
    let id = h.allocate(0, &mut c);
    let other = addr("203.0.113.50:1");
    assert_eq!(
        h.server
            .handle_peer(h.at(0), c.key, id, other, b"x", &mut h.out),
        PeerAction::Drop
    );
    assert_eq!(h.create_permission(0, &mut c, PEER), None);
    assert_eq!(
        h.server
            .handle_peer(h.at(0), c.key, id, addr(PEER), b"hey", &mut h.out),
        PeerAction::ToClient
    );
    let m = Message::parse(&h.out).unwrap();
    assert_eq!((m.method, m.class), (method::DATA, Class::Indication));
    assert_eq!(m.attrs.xor_peers.first(), Some(addr(PEER)));
    assert_eq!(m.attrs.data, Some(&b"hey"[..]));
    assert_eq!(h.channel_bind(0, &mut c, 0x4000, PEER), None);
    h.server
        .handle_peer(h.at(0), c.key, id, addr(PEER), b"hey", &mut h.out);
    assert_eq!(h.out.len(), 8, "ChannelData padded to 4 on streams");
    assert_eq!(ChannelData::parse(&h.out).unwrap().data, b"hey");
    assert_eq!(h.server.client_closed(c.key), Some(id));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn permissions_and_channels_expire() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 7200);
    h.allocate(0, &mut c);
    let req = c.request(method::REFRESH, true, |w| {
        w.u32(attr::LIFETIME, 3600);
    });
    assert_eq!(h.call(0, &c.key, &req), (Class::Success, None));
    assert_eq!(h.create_permission(0, &mut c, PEER), None);
    assert_eq!(h.send_indication(299, &c, PEER, b"x"), Some(addr(PEER)));
    assert_eq!(
        h.send_indication(300, &c, PEER, b"x"),
        None,
        "permission lasts 300 s"
    );
    // A channel binding installs the permission again (300 s) and lasts 600 s.
    assert_eq!(h.channel_bind(300, &mut c, 0x4000, PEER), None);
    let frame = [0x40, 0x00, 0x00, 0x01, b'a', 0, 0, 0];
    let relayed = |h: &mut Harness, t: u64| {
        matches!(
            h.server.handle_client(h.at(t), c.key, &frame, &mut h.out),
            ClientAction::ToPeer { .. }
        )
    };
    assert!(relayed(&mut h, 599));
    assert!(
        !relayed(&mut h, 600),
        "the permission lapsed although the channel is bound"
    );
    let mut c2 = Client {
        nonce: c.nonce.clone(),
        ..Client::new("192.0.2.10:40000", Transport::Udp, 7200)
    };
    c2.seq = 100;
    assert_eq!(
        h.channel_bind(700, &mut c2, 0x4000, PEER),
        Some(438),
        "nonce expired meanwhile"
    );
    c2.nonce = h.reply().attrs.nonce.unwrap().to_vec();
    assert_eq!(h.channel_bind(700, &mut c2, 0x4000, PEER), None);
    assert!(relayed(&mut h, 999));
    assert!(!relayed(&mut h, 1300), "channel expired after 600 s");
}

#[test]
fn refresh_sets_lifetime_and_zero_deletes() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 7200);
    let id = h.allocate(0, &mut c);
    let req = c.request(method::REFRESH, true, |w| {
        w.u32(attr::LIFETIME, 100_000);
    });
    assert_eq!(h.call(1, &c.key, &req), (Class::Success, None));
    assert_eq!(
        h.reply().attrs.lifetime,
        Some(3600),
        "capped at max_lifetime"
    );
    let req = c.request(method::REFRESH, true, |w| {
        w.u32(attr::LIFETIME, 0);
    });
    match h.server.handle_client(h.at(2), c.key, &req, &mut h.out) {
        ClientAction::ReplyAndClose(closed) => assert_eq!(closed, id),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.reply().attrs.lifetime, Some(0));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.counters().snapshot().allocations_current, 0);
    let req = c.request(method::REFRESH, true, |_| {});
    assert_eq!(h.call(3, &c.key, &req).1, Some(437));
}

#[test]
fn allocations_expire_on_timeout() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 7200);
    let id = h.allocate(0, &mut c);
    let mut expired = Vec::new();
    h.server.handle_timeout(h.at(599), &mut expired);
    assert!(expired.is_empty());
    h.server.handle_timeout(h.at(600), &mut expired);
    assert_eq!(expired, vec![(c.key, id)]);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn quotas_per_user_and_total() {
    let mut cfg = config();
    cfg.max_allocations_per_user = 2;
    cfg.max_allocations = 3;
    let mut h = Harness::new(cfg);
    for port in 1..=2 {
        let mut c = Client::new(&format!("192.0.2.10:{port}"), Transport::Udp, 3600);
        h.allocate(0, &mut c);
    }
    let mut third = Client::new("192.0.2.10:3", Transport::Udp, 3600);
    assert_eq!(h.start_allocate(0, &mut third).unwrap_err(), 486);
    // Another user still fits the total...
    let mut bob = Client::new("192.0.2.10:4", Transport::Udp, 3600);
    (bob.username, bob.password) = credentials(SECRET, "bob", 3600, T0_UNIX);
    h.allocate(0, &mut bob);
    // ...and then the total is reached.
    let mut carol = Client::new("192.0.2.10:5", Transport::Udp, 3600);
    (carol.username, carol.password) = credentials(SECRET, "carol", 3600, T0_UNIX);
    assert_eq!(h.start_allocate(0, &mut carol).unwrap_err(), 486);
    assert_eq!(h.server.counters().snapshot().quota_refusals, 2);
}

#[test]
fn bandwidth_budget_drops_excess() {
    let mut cfg = config();
    cfg.max_bandwidth = 1000;
    let mut h = Harness::new(cfg);
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 3600);
    h.allocate(0, &mut c);
    assert_eq!(h.create_permission(0, &mut c, PEER), None);
    let big = [0u8; 600];
    assert!(h.send_indication(0, &c, PEER, &big).is_some());
    assert!(h.send_indication(0, &c, PEER, &big).is_none());
    assert!(
        h.send_indication(1, &c, PEER, &big).is_some(),
        "refilled after a second"
    );
    assert_eq!(h.server.counters().snapshot().bandwidth_drops, 1);
}

#[test]
fn other_users_cannot_touch_an_allocation() {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.10:40000", Transport::Udp, 3600);
    h.allocate(0, &mut c);
    (c.username, c.password) = credentials(SECRET, "mallory", 3600, T0_UNIX);
    assert_eq!(h.create_permission(0, &mut c, PEER), Some(441));
}

#[test]
fn allocations_per_source_ip() {
    let mut cfg = config();
    cfg.max_allocations_per_ip = 2;
    let mut h = Harness::new(cfg);
    // Two users, two ports and two transports of one IP share its quota.
    let mut a = Client::new("192.0.2.10:1", Transport::Udp, 3600);
    h.allocate(0, &mut a);
    let mut b = Client::of("bob", "192.0.2.10:2", Transport::Tcp);
    h.allocate(0, &mut b);
    let mut c = Client::of("carol", "192.0.2.10:3", Transport::Tls);
    assert_eq!(
        h.start_allocate(0, &mut c).unwrap_err(),
        486,
        "third from the IP"
    );
    // Another IP is not affected.
    let mut d = Client::of("dave", "192.0.2.11:3", Transport::Udp);
    h.allocate(0, &mut d);
    // A closed allocation gives its place back.
    assert!(h.server.client_closed(b.key).is_some());
    h.allocate(0, &mut c);
    assert_eq!(h.server.counters().snapshot().quota_refusals, 1);

    // IPv6 clients (of an IPv4 relay) count per /64.
    let mut cfg = config();
    cfg.max_allocations_per_ip = 1;
    let mut h = Harness::new(cfg);
    let mut e = Client::new("[2001:db8:1:2::1]:1", Transport::Udp, 3600);
    h.allocate(0, &mut e);
    let mut f = Client::of("frank", "[2001:db8:1:2::ffff]:1", Transport::Udp);
    assert_eq!(h.start_allocate(0, &mut f).unwrap_err(), 486, "same /64");
    let mut g = Client::new("[2001:db8:1:3::1]:1", Transport::Udp, 3600);
    assert!(h.start_allocate(0, &mut g).is_ok(), "another /64");
}
