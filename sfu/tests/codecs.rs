//! Room-level codec choice without sockets: a publisher sends the codec every other participant
//! decodes, is moved to another when someone joins who lacks it (and back when they leave), and
//! a subscriber that shares no codec with it gets `track-paused` with reason `codec` instead of
//! packets it cannot decode.

mod harness;

use consulta_sfu::{Command, ServerMessage};
use consulta_signaling::protocol::PauseReason;
use harness::{vp8_frame, Net};
use str0m::format::Codec;
use str0m::media::{MediaKind, MediaTime};

fn connected(net: &Net) -> bool {
    net.clients.iter().all(|c| c.connected)
}

/// An Annex B H264 access unit: SPS, PPS and IDR for a keyframe, else one non-IDR slice.
fn h264_frame(keyframe: bool, n: u32, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len + 32);
    if keyframe {
        f.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0xda, 0x01, 0x40]);
        f.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
        f.extend_from_slice(&[0, 0, 0, 1, 0x65]);
    } else {
        f.extend_from_slice(&[0, 0, 0, 1, 0x41]);
    }
    let body = (n as u8).wrapping_add(1) | 0x80;
    f.extend(std::iter::repeat_n(body, len));
    f
}

/// Writes `frames` frames of `codec` from client `i`, starting with a keyframe, from frame `at`.
fn publish(net: &mut Net, i: usize, codec: Codec, at: u32, frames: u32) {
    for n in at..at + frames {
        let key = n == at;
        let data = match codec {
            Codec::Vp8 => vp8_frame(key, n, 900),
            Codec::H264 => h264_frame(key, n, 900),
            other => panic!("no frames for {other:?}"),
        };
        let time = MediaTime::from_90khz(3000 * u64::from(n));
        net.write(i, MediaKind::Video, codec, time, &data);
        net.settle(3);
    }
}

fn video_codecs_received(net: &Net, i: usize) -> Vec<Codec> {
    net.received(i, MediaKind::Video)
        .iter()
        .map(|m| m.params.spec().codec)
        .collect()
}

fn told_codecs(net: &Net, i: usize) -> Vec<String> {
    net.clients[i]
        .messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::VideoCodec { codec } => Some(codec.clone()),
            _ => None,
        })
        .collect()
}

/// The codec name of the first payload type of the answer's video line.
fn first_video_codec(sdp: &str) -> String {
    let line = sdp
        .lines()
        .find(|l| l.starts_with("m=video"))
        .expect("a video line");
    let pt = line.split_whitespace().nth(3).expect("a payload type");
    let rtpmap = format!("a=rtpmap:{pt} ");
    let codec = sdp
        .lines()
        .find_map(|l| l.strip_prefix(&rtpmap))
        .expect("its rtpmap");
    codec.split('/').next().unwrap().to_owned()
}

/// Takes client `i`'s session over by a new signaling connection (`Command::Resume`) and returns
/// the `track-paused` / `track-resumed` sent after `resumed`.
fn stated_after_resume(net: &mut Net, i: usize) -> Vec<ServerMessage> {
    let before = net.clients[i].messages.len();
    let peer = net.clients[i].peer;
    net.host.on_command(Command::Resume { peer });
    net.settle(5);
    let after = &net.clients[i].messages[before..];
    let resumed = after
        .iter()
        .position(|m| matches!(m, ServerMessage::Resumed { .. }))
        .expect("resumed");
    after[resumed..]
        .iter()
        .filter(|m| {
            matches!(
                m,
                ServerMessage::TrackPaused { .. } | ServerMessage::TrackResumed { .. }
            )
        })
        .cloned()
        .collect()
}

#[test]
fn a_late_joiner_without_the_codec_moves_the_publisher_and_leaving_moves_it_back() {
    let mut net = Net::new(5);
    let doctor = net.join_with_codecs("room-c", "doctor", &[Codec::H264, Codec::Vp8]);
    let chrome = net.join("room-c", "chrome", true);
    net.until(10, "both connected", connected);
    net.settle(20);
    // Everyone decodes H264: the doctor's preference stands.
    assert_eq!(first_video_codec(&net.clients[doctor].answers[0]), "H264");
    assert!(told_codecs(&net, doctor).is_empty());
    publish(&mut net, doctor, Codec::H264, 0, 10);
    net.until(5, "H264 frames at chrome", |n| {
        video_codecs_received(n, chrome).len() >= 8
    });
    assert!(video_codecs_received(&net, chrome)
        .iter()
        .all(|c| *c == Codec::H264));

    // A participant that decodes only VP8 joins: the doctor is told to send VP8 and offers
    // again; the answer lists VP8 first.
    let firefox = net.join_with_codecs("room-c", "firefox", &[Codec::Vp8]);
    net.until(10, "firefox connected", connected);
    net.until(5, "the doctor told to send VP8", |n| {
        told_codecs(n, doctor) == ["VP8"] && n.clients[doctor].answers.len() == 2
    });
    net.settle(20);
    assert_eq!(first_video_codec(&net.clients[doctor].answers[1]), "VP8");
    // Until the doctor's encoder switches, firefox gets nothing it cannot decode.
    publish(&mut net, doctor, Codec::H264, 10, 3);
    assert!(video_codecs_received(&net, firefox).is_empty());
    let before = video_codecs_received(&net, chrome).len();
    publish(&mut net, doctor, Codec::Vp8, 13, 10);
    net.until(5, "VP8 frames at both", |n| {
        video_codecs_received(n, firefox).len() >= 8
            && video_codecs_received(n, chrome).len() >= before + 8
    });
    assert!(video_codecs_received(&net, firefox)
        .iter()
        .all(|c| *c == Codec::Vp8));
    assert!(!net.clients[firefox].messages.iter().any(|m| matches!(
        m,
        ServerMessage::TrackPaused {
            reason: PauseReason::Codec,
            ..
        }
    )));

    // It leaves: the doctor may send its preferred codec again.
    net.leave(firefox);
    net.until(5, "the doctor told to send H264 again", |n| {
        told_codecs(n, doctor) == ["VP8", "H264"]
    });
    // A resumed session is told its video flows (the old connection may have lost that).
    let stated = stated_after_resume(&mut net, chrome);
    assert!(
        matches!(
            stated.as_slice(),
            [ServerMessage::TrackResumed { identity, .. }] if identity == "doctor"
        ),
        "{stated:?}"
    );
}

#[test]
fn a_subscriber_sharing_no_codec_with_the_publisher_is_told_and_sent_nothing() {
    let mut net = Net::new(5);
    let phone = net.join_with_codecs("room-d", "phone", &[Codec::H264]);
    let firefox = net.join_with_codecs("room-d", "firefox", &[Codec::Vp8]);
    net.until(10, "both connected", connected);
    net.settle(20);
    publish(&mut net, phone, Codec::H264, 0, 10);
    publish(&mut net, firefox, Codec::Vp8, 0, 10);
    net.until(5, "firefox video paused for codec", |n| {
        n.clients[firefox].messages.iter().any(|m| {
            matches!(
                m,
                ServerMessage::TrackPaused {
                    identity,
                    kind: consulta_signaling::protocol::TrackKind::Video,
                    reason: PauseReason::Codec,
                } if identity == "phone"
            )
        })
    });
    assert!(video_codecs_received(&net, firefox).is_empty());
    // Firefox's signaling connection is taken over by a new one (the old one may have lost the
    // message): after `resumed` the pause is stated again.
    let stated = stated_after_resume(&mut net, firefox);
    assert!(
        matches!(
            stated.as_slice(),
            [ServerMessage::TrackPaused {
                identity,
                kind: consulta_signaling::protocol::TrackKind::Video,
                reason: PauseReason::Codec,
            }] if identity == "phone"
        ),
        "{stated:?}"
    );
    // Nobody can help the phone either: it sends H264, the only codec it has.
    assert!(told_codecs(&net, phone).is_empty());
    // Audio still flows both ways.
    for n in 0..10u32 {
        net.write(
            phone,
            MediaKind::Audio,
            Codec::Opus,
            MediaTime::from_millis(20 * u64::from(n)),
            &[0xAB; 60],
        );
        net.settle(2);
    }
    net.until(5, "audio at firefox", |n| {
        n.received(firefox, MediaKind::Audio).len() >= 8
    });
}
