//! Mutes through the in-memory network: a muted track is not forwarded to subscribers that
//! join after the mute, and a mute forced by the control API sticks until the API lifts it.

mod harness;

use consulta_sfu::{Command, ServerMessage};
use consulta_signaling::protocol::ErrorCode;
use harness::Net;
use str0m::format::Codec;
use str0m::media::{MediaKind, MediaTime};

/// Publisher `a` sends `frames` video frames (the first a keyframe) and as many audio frames.
fn publish(net: &mut Net, a: usize, from: u32, frames: u32) {
    for n in from..from + frames {
        net.write_vp8(a, n, n == from, 600);
        net.write(
            a,
            MediaKind::Audio,
            Codec::Opus,
            MediaTime::from_millis(20 * u64::from(n)),
            &[0xAB; 60],
        );
        net.settle(3);
    }
}

/// A room with publisher "doctor" muted (`force`: by the API) before "patient" joins.
fn muted_before_join(force: bool) -> (Net, usize, usize) {
    let mut net = Net::new(5);
    let a = net.join("mute-room", "doctor", true);
    net.until(10, "publisher connected", |n| n.clients[a].connected);
    let peer = net.clients[a].peer;
    net.host.on_command(if force {
        Command::ForceMute {
            room: "mute-room".into(),
            identity: "doctor".into(),
            kind: consulta_sfu::TrackKind::Video,
            muted: true,
        }
    } else {
        Command::Mute {
            peer,
            kind: consulta_sfu::TrackKind::Video,
            muted: true,
        }
    });
    let b = net.join("mute-room", "patient", false);
    net.until(10, "subscriber connected", |n| n.clients[b].connected);
    net.until(10, "the subscriber is offered both tracks", |n| {
        n.clients[b].offered(2)
    });
    net.settle(20);
    (net, a, b)
}

fn assert_video_withheld(net: &mut Net, a: usize, b: usize) {
    publish(net, a, 0, 10);
    net.until(5, "audio arrives", |n| {
        n.received(b, MediaKind::Audio).len() >= 5
    });
    net.settle(10);
    assert!(
        net.received(b, MediaKind::Video).is_empty(),
        "a muted track reaches a subscriber that joined after the mute"
    );
}

#[test]
fn a_client_mute_applies_to_subscribers_that_join_later() {
    let (mut net, a, b) = muted_before_join(false);
    assert_video_withheld(&mut net, a, b);
    let peer = net.clients[a].peer;
    net.host.on_command(Command::Mute {
        peer,
        kind: consulta_sfu::TrackKind::Video,
        muted: false,
    });
    publish(&mut net, a, 10, 5);
    net.until(5, "video after the unmute", |n| {
        !n.received(b, MediaKind::Video).is_empty()
    });
}

#[test]
fn a_forced_mute_applies_to_later_subscribers_and_only_the_api_lifts_it() {
    let (mut net, a, b) = muted_before_join(true);
    assert_video_withheld(&mut net, a, b);
    // The muted client's own unmute is refused, with a stable code.
    let peer = net.clients[a].peer;
    net.host.on_command(Command::Mute {
        peer,
        kind: consulta_sfu::TrackKind::Video,
        muted: false,
    });
    net.settle(5);
    assert!(net.clients[a].messages.iter().any(|m| matches!(
        m,
        ServerMessage::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    )));
    assert!(!net.clients[b]
        .messages
        .iter()
        .any(|m| matches!(m, ServerMessage::Mute { muted: false, .. })));
    publish(&mut net, a, 10, 5);
    assert!(net.received(b, MediaKind::Video).is_empty());
    // The API lifts it.
    net.host.on_command(Command::ForceMute {
        room: "mute-room".into(),
        identity: "doctor".into(),
        kind: consulta_sfu::TrackKind::Video,
        muted: false,
    });
    publish(&mut net, a, 20, 5);
    net.until(5, "video after the API unmute", |n| {
        !n.received(b, MediaKind::Video).is_empty()
    });
    assert!(net.clients[b]
        .messages
        .iter()
        .any(|m| matches!(m, ServerMessage::Mute { muted: false, .. })));
}
