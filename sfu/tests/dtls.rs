//! The SFU's DTLS identity: one certificate made when the SFU starts (`Advertised::dtls`),
//! presented by every transport a worker builds (issue 24, item 10: no certificate generated
//! per join on the media thread), with media still flowing through each.

mod harness;

use harness::{vp8_frame, Net};
use str0m::format::Codec;
use str0m::media::{MediaKind, MediaTime};

/// The fingerprint client `i` took from the server's SDP (`a=fingerprint`): the certificate
/// the server's transport must then present in the DTLS handshake.
fn fingerprint(net: &mut Net, i: usize) -> String {
    let rtc = net.clients[i].rtc.direct_api();
    rtc.remote_dtls_fingerprint()
        .map(|f| f.to_string())
        .expect("the server's SDP carried a fingerprint")
}

#[test]
fn transports_of_one_worker_share_its_certificate_and_media_flows() {
    let mut net = Net::new(5);
    let a = net.join("room-1", "doctor", true);
    let b = net.join("room-1", "patient", true);
    // A third participant in another room of the same worker.
    let c = net.join("room-2", "doctor", true);
    net.until(10, "all connected", |n| {
        n.clients.iter().all(|c| c.connected)
    });
    let (fa, fb, fc) = (
        fingerprint(&mut net, a),
        fingerprint(&mut net, b),
        fingerprint(&mut net, c),
    );
    assert!(
        fa == fb && fb == fc,
        "every transport of the worker presents one fingerprint: {fa} {fb} {fc}"
    );
    // DTLS completed with that shared certificate: media flows both ways.
    net.until(10, "consumer offers", |n| {
        [a, b].iter().all(|&i| n.clients[i].offered(2))
    });
    net.settle(20);
    for n in 0..20u32 {
        let t = MediaTime::from_90khz(3000 * u64::from(n));
        net.write(
            a,
            MediaKind::Video,
            Codec::Vp8,
            t,
            &vp8_frame(n == 0, n, 900),
        );
        net.write(
            b,
            MediaKind::Video,
            Codec::Vp8,
            t,
            &vp8_frame(n == 0, n, 700),
        );
        net.settle(3);
    }
    net.until(5, "frames arrive", |n| {
        n.received(a, MediaKind::Video).len() >= 15 && n.received(b, MediaKind::Video).len() >= 15
    });
    assert_eq!(
        &*net.received(b, MediaKind::Video)[0].data,
        &vp8_frame(true, 0, 900)[..]
    );
}
