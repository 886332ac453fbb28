//! Routing without sockets: str0m client peers talk to a `RouterHost` through memory.
//! Negotiation, forwarding of audio and video, keyframe gating for late joiners, and leaving.

mod harness;

use consulta_sfu::router::Limits;
use consulta_sfu::ServerMessage;
use harness::{vp8_frame, Net};
use str0m::format::Codec;
use str0m::media::{MediaKind, MediaTime};

fn connected(net: &Net) -> bool {
    net.clients.iter().all(|c| c.connected)
}

#[test]
fn two_participants_exchange_audio_and_video() {
    let mut net = Net::new(5);
    let a = net.join("room-1", "doctor", true);
    let b = net.join("room-1", "patient", true);
    net.until(10, "both connected", connected);
    // Each side has been offered the other's two tracks.
    net.until(10, "consumer offers", |n| {
        n.clients.iter().all(|c| c.offered(2))
    });
    net.settle(20);
    for n in 0..30u32 {
        let key = n == 0;
        net.write(
            a,
            MediaKind::Video,
            Codec::Vp8,
            MediaTime::from_90khz(3000 * u64::from(n)),
            &vp8_frame(key, n, 900),
        );
        net.write(
            b,
            MediaKind::Video,
            Codec::Vp8,
            MediaTime::from_90khz(3000 * u64::from(n)),
            &vp8_frame(key, n, 700),
        );
        net.write(
            a,
            MediaKind::Audio,
            Codec::Opus,
            MediaTime::from_millis(20 * u64::from(n)),
            &[0xAA; 80],
        );
        net.settle(3);
    }
    net.until(5, "frames arrive", |n| {
        n.received(a, MediaKind::Video).len() >= 25 && n.received(b, MediaKind::Video).len() >= 25
    });
    // Frames arrive byte for byte, the first one a keyframe.
    let at_b = net.received(b, MediaKind::Video);
    assert_eq!(&*at_b[0].data, &vp8_frame(true, 0, 900)[..]);
    assert_eq!(&*at_b[10].data, &vp8_frame(false, 10, 900)[..]);
    let at_a = net.received(a, MediaKind::Video);
    assert_eq!(&*at_a[0].data, &vp8_frame(true, 0, 700)[..]);
    net.until(5, "audio arrives", |n| {
        n.received(b, MediaKind::Audio).len() >= 20
    });
    assert!(net
        .received(b, MediaKind::Audio)
        .iter()
        .all(|m| *m.data == [0xAA; 80][..]));
    // Nobody receives their own media.
    assert!(net.received(a, MediaKind::Audio).is_empty());
}

#[test]
fn every_subscriber_of_a_room_gets_each_frame_whole() {
    // The last subscriber of a packet is given its payload, the others copies: whichever way
    // the room is ordered, everyone gets every byte.
    let mut net = Net::new(5);
    let a = net.join("room-3", "doctor", true);
    let b = net.join("room-3", "patient", false);
    let c = net.join("room-3", "interpreter", true);
    net.until(10, "all connected", connected);
    net.settle(30);
    for n in 0..20u32 {
        for (from, size) in [(a, 900), (c, 600)] {
            net.write_vp8(from, n, n == 0, size);
        }
        net.settle(3);
    }
    // a's frames reach b and c; c's frames (c joined last) reach a and b.
    net.until(5, "frames arrive", |n| {
        [a, b, c]
            .iter()
            .all(|&i| n.received(i, MediaKind::Video).len() >= 18)
    });
    let frames = |sizes: &[usize], n: u32| -> Vec<Vec<u8>> {
        sizes.iter().map(|&s| vp8_frame(n == 0, n, s)).collect()
    };
    for (at, sizes) in [(a, vec![600]), (b, vec![900, 600]), (c, vec![900])] {
        let got = net.received(at, MediaKind::Video);
        for n in 0..10u32 {
            for want in frames(&sizes, n) {
                assert!(
                    got.iter().any(|m| *m.data == want[..]),
                    "participant {at} is missing frame {n} of {} bytes",
                    want.len()
                );
            }
        }
    }
}

#[test]
fn late_joiner_starts_at_a_requested_keyframe() {
    let mut net = Net::new(5);
    let a = net.join("room-2", "doctor", true);
    net.until(10, "publisher connected", |n| n.clients[a].connected);
    // The publisher's stream is running before anyone subscribes.
    let mut n = 0u32;
    let mut send = |net: &mut Net, key: bool| {
        net.write_vp8(a, n, key, 800);
        n += 1;
        net.settle(2);
    };
    send(&mut net, true);
    for _ in 0..5 {
        send(&mut net, false);
    }
    let b = net.join("room-2", "patient", false);
    net.until(10, "subscriber connected", |n| n.clients[b].connected);
    net.settle(20);
    let requests_before = net.clients[a].keyframe_requests;
    for _ in 0..5 {
        send(&mut net, false);
    }
    // Delta frames alone are held back: the subscriber could not decode them.
    assert!(
        net.received(b, MediaKind::Video).is_empty(),
        "no frame before a keyframe"
    );
    net.until(5, "a keyframe request reaches the publisher", |n| {
        n.clients[a].keyframe_requests > requests_before
    });
    send(&mut net, true);
    for _ in 0..3 {
        send(&mut net, false);
    }
    net.until(5, "frames after the keyframe", |n| {
        n.received(b, MediaKind::Video).len() >= 4
    });
    let got = net.received(b, MediaKind::Video);
    assert_eq!(
        got[0].data[0] & 1,
        0,
        "the first forwarded frame is a keyframe"
    );
    assert_eq!(&*got[0].data, &vp8_frame(true, 11, 800)[..]);
    assert!(
        got.iter().all(|m| m.contiguous),
        "rebased numbering has no gaps"
    );
}

#[test]
fn a_stream_that_flows_again_after_a_gap_restarts_at_a_requested_keyframe() {
    // A network change cuts a publisher off for seconds: what it sends next refers to frames
    // the server never got. Subscribers must get the next keyframe (asked for at once), not
    // frames they cannot decode, with numbering that has no gap to repair.
    let mut net = Net::new(5);
    let a = net.join("room-g", "patient", true);
    let b = net.join("room-g", "doctor", false);
    net.until(10, "both connected", connected);
    net.settle(20);
    let mut n = 0u32;
    let mut send = |net: &mut Net, key: bool| {
        net.write_vp8(a, n, key, 700);
        n += 1;
        net.settle(2);
    };
    send(&mut net, true);
    for _ in 0..4 {
        send(&mut net, false);
    }
    net.until(5, "frames before the gap", |n| {
        n.received(b, MediaKind::Video).len() >= 5
    });
    // The path is cut for longer than str0m's 1.5 s pause threshold.
    let until = std::time::Instant::now() + std::time::Duration::from_millis(2_200);
    while std::time::Instant::now() < until {
        net.settle(5);
    }
    let requests_before = net.clients[a].keyframe_requests;
    for _ in 0..4 {
        send(&mut net, false);
    }
    net.until(5, "a keyframe request reaches the publisher", |n| {
        n.clients[a].keyframe_requests > requests_before
    });
    assert_eq!(
        net.received(b, MediaKind::Video).len(),
        5,
        "delta frames after the gap are held back"
    );
    send(&mut net, true);
    send(&mut net, false);
    net.until(5, "the keyframe after the gap", |n| {
        n.received(b, MediaKind::Video).len() >= 7
    });
    let got = net.received(b, MediaKind::Video);
    assert_eq!(&*got[5].data, &vp8_frame(true, 9, 700)[..]);
    assert!(
        got.iter().all(|m| m.contiguous),
        "numbering has no gap across the cut"
    );
}

#[test]
fn leaving_stops_tracks_and_is_announced() {
    let mut net = Net::new(5);
    let a = net.join("room-3", "doctor", true);
    let b = net.join("room-3", "patient", true);
    net.until(10, "both connected", connected);
    net.settle(20);
    net.leave(b);
    net.until(5, "participant-left", |n| {
        n.clients[a].messages.iter().any(|m| matches!(m, ServerMessage::ParticipantLeft { identity, .. } if identity == "patient"))
    });
    // The doctor is re-offered without the patient's tracks.
    net.until(5, "an offer without the patient's tracks", |n| {
        matches!(n.clients[a].messages.iter().rev().find(|m| matches!(m, ServerMessage::Offer { .. })), Some(ServerMessage::Offer { tracks, .. }) if tracks.is_empty())
    });
    assert_eq!(net.host.participants(), 1);
    net.leave(a);
    assert_eq!(net.host.rooms(), 0, "an empty room is dropped");
}

#[test]
fn a_track_is_offered_once_whatever_the_join_order() {
    let mut net = Net::new(5);
    // The patient joins, the doctor's tracks appear, then the patient offers.
    let a = net.join("room-4", "doctor", true);
    let b = net.join_only("room-4", "patient");
    net.until(10, "doctor connected", |n| n.clients[a].connected);
    net.settle(10);
    net.offer(b, true);
    net.until(10, "both connected", connected);
    net.settle(30);
    for i in [a, b] {
        let last = net.clients[i]
            .messages
            .iter()
            .rev()
            .find_map(|m| match m {
                ServerMessage::Offer { tracks, .. } => Some(tracks.clone()),
                _ => None,
            })
            .expect("an offer");
        assert_eq!(last.len(), 2, "one audio and one video track: {last:?}");
    }
}

/// Forwards one frame from `a` but loses its packet to `b` on the way; returns the frame.
fn lose_one_frame_to(net: &mut Net, a: usize, b: usize, n: u32) -> Vec<u8> {
    let frame = net.write_vp8(a, n, false, 900);
    net.deliver_from(a, std::time::Instant::now());
    assert_eq!(
        net.lose_queued_rtp(b, None, 900),
        1,
        "one video packet to the subscriber was dropped"
    );
    frame
}

/// Runs `a` → `b` with `nack_history`, loses one packet, and says whether its frame arrived
/// within a second of the frames after it.
fn lost_frame_arrives(nack_history: usize) -> bool {
    let mut net = Net::with_limits(Limits {
        nack_history,
        ..Limits::default()
    });
    let a = net.join("room-nack", "doctor", true);
    let b = net.join("room-nack", "patient", false);
    net.until(10, "both connected", connected);
    net.settle(30);
    let send = |net: &mut Net, n: u32| {
        net.write_vp8(a, n, n == 0, 900);
        net.settle(3);
    };
    for n in 0..10 {
        send(&mut net, n);
    }
    net.until(5, "frames before the loss", |n| {
        n.received(b, MediaKind::Video).len() >= 10
    });
    let lost = lose_one_frame_to(&mut net, a, b, 10);
    for n in 11..40 {
        send(&mut net, n);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    net.until(5, "frames after the loss", |n| {
        n.received(b, MediaKind::Video)
            .iter()
            .any(|m| *m.data == vp8_frame(false, 39, 900)[..])
    });
    // A repair comes within a few NACK rounds; give it a second more on a busy machine.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let arrived = net
            .received(b, MediaKind::Video)
            .iter()
            .any(|m| *m.data == lost[..]);
        if arrived || std::time::Instant::now() > deadline {
            return arrived;
        }
        net.settle(5);
        net.host.housekeeping(std::time::Instant::now());
    }
}

#[test]
fn a_lost_packet_is_retransmitted_from_the_nack_history() {
    assert!(
        lost_frame_arrives(500),
        "the subscriber's NACK is answered from the history"
    );
}

#[test]
fn without_nack_history_a_lost_packet_stays_lost() {
    assert!(
        !lost_frame_arrives(0),
        "nack_history = 0: nothing to retransmit"
    );
}

/// The stream ids (`a=msid:<stream> <track>`) of the sections the server sends on in its last
/// offer to client `i` (others' tracks), with their media kind (`m=audio`, `m=video`).
fn offered_streams(net: &Net, i: usize) -> Vec<(String, String)> {
    let sdp = net.clients[i].offers.last().expect("an offer");
    let mut streams = Vec::new();
    for section in sdp.split("\r\nm=").skip(1) {
        let kind = section.split(' ').next().unwrap_or_default();
        let msid = section.lines().find_map(|l| l.strip_prefix("a=msid:"));
        if let (true, Some(msid)) = (section.contains("a=sendonly"), msid) {
            let stream = msid.split(' ').next().unwrap_or_default();
            streams.push((kind.to_string(), stream.to_string()));
        }
    }
    streams
}

#[test]
fn audio_and_video_share_a_stream_only_with_lip_sync() {
    for lip_sync in [false, true] {
        let mut net = Net::with_limits(Limits {
            lip_sync,
            ..Limits::default()
        });
        net.join("room-ls", "doctor", true);
        let b = net.join("room-ls", "patient", true);
        net.until(10, "both connected", connected);
        net.until(10, "consumer offers", |n| n.clients[b].offered(2));
        let streams = offered_streams(&net, b);
        let of = |kind: &str| {
            streams
                .iter()
                .filter(|(k, _)| k == kind)
                .map(|(_, s)| s.clone())
                .collect::<Vec<_>>()
        };
        let (audio, video) = (of("audio"), of("video"));
        assert_eq!((audio.len(), video.len()), (1, 1), "{streams:?}");
        // One stream: the browser delays audio to play it with a late video. Two: it does not.
        assert_eq!(
            audio[0] == video[0],
            lip_sync,
            "lip_sync {lip_sync}: {streams:?}"
        );
    }
}
