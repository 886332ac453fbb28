//! Simulcast without sockets: a publisher sends three VP8 layers (each with its own timestamp
//! base); a subscriber gets one layer at a time, the highest flowing, and when that layer stops
//! it changes over to the next at its keyframe with sequence numbers and timestamps continuous;
//! a subscriber that shows the video small gets the lowest layer, and keeps getting every frame
//! of it while the publisher pauses and resumes its top layer.

mod harness;

use consulta_sfu::Command;
use harness::{vp8_frame, Net};
use str0m::media::{MediaKind, MediaTime};

const RIDS: [&str; 3] = ["q", "h", "f"];
/// Frame sizes tell the layers apart at the subscriber.
const SIZES: [usize; 3] = [300, 700, 1100];
/// Each layer's RTP timestamps start elsewhere, as a browser's do.
const BASES: [u64; 3] = [0, 45_000_000, 90_000_000];

fn layer_of(len: usize) -> usize {
    SIZES
        .iter()
        .position(|s| *s == len)
        .expect("a frame of one layer")
}

/// A simulcast doctor and a patient that receives it, connected, the patient's offer applied.
fn call(room: &str) -> (Net, usize, usize) {
    let mut net = Net::new(5);
    let doctor = net.join_simulcast(room, "doctor", &RIDS);
    let patient = net.join(room, "patient", false);
    net.until_offered(patient, 2);
    (net, doctor, patient)
}

/// Sends `frames` frames on each of `layers` (frame counter `n`, a keyframe every 30th), with
/// a housekeeping round after each.
fn send(net: &mut Net, doctor: usize, n: &mut u32, layers: &[usize], frames: u32) {
    for _ in 0..frames {
        for &l in layers {
            let key = n.is_multiple_of(30);
            let t = MediaTime::from_90khz(BASES[l] + 3000 * u64::from(*n));
            net.write_layer(doctor, RIDS[l], t, &vp8_frame(key, *n, SIZES[l]));
        }
        *n += 1;
        net.settle(3);
        net.host.housekeeping(std::time::Instant::now());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_subscriber_gets_one_layer_and_changes_over_continuously_when_it_stops() {
    let (mut net, doctor, patient) = call("room-sim");
    assert!(
        net.clients[doctor]
            .answers
            .iter()
            .any(|sdp| sdp.contains("a=simulcast:recv q;h;f")),
        "the server takes the three layers"
    );
    let mut n = 0u32;
    // All three layers flow: the patient gets the highest one only.
    send(&mut net, doctor, &mut n, &[0, 1, 2], 60);
    net.settle(20);
    let got = net.received(patient, MediaKind::Video);
    assert!(got.len() >= 50, "frames of the top layer: {}", got.len());
    assert!(got.iter().all(|m| layer_of(m.data.len()) == 2));
    let before = got.len();
    let last_time = got.last().unwrap().time;
    // The top layer stops (the publisher's uplink dropped it): after a second the patient
    // changes over to the middle layer at its next keyframe.
    send(&mut net, doctor, &mut n, &[0, 1], 150);
    net.settle(20);
    let got = net.received(patient, MediaKind::Video);
    let after: Vec<_> = got[before..].iter().collect();
    assert!(!after.is_empty(), "frames after the change");
    assert!(after.iter().all(|m| layer_of(m.data.len()) == 1));
    assert_eq!(
        &after[0].data[..3],
        &vp8_frame(true, 0, SIZES[1])[..3],
        "the change starts at a keyframe"
    );
    // Timestamps continue from the top layer's (within the wall-clock time between them),
    // although the middle layer's base is 45 M ticks (500 s) away.
    let jump = after[0].time.as_micros() as i64 - last_time.as_micros() as i64;
    assert!(
        (1..3_000_000).contains(&jump),
        "timestamp step at the change: {jump} us"
    );
    for w in after.windows(2) {
        assert!(w[1].time > w[0].time, "timestamps keep increasing");
    }
    // Nothing was lost on the way: every middle-layer frame from the keyframe on arrived.
    let first = u32::from_be_bytes(after[0].data[SIZES[1] - 4..].try_into().unwrap());
    let numbers: Vec<u32> = after
        .iter()
        .map(|m| u32::from_be_bytes(m.data[SIZES[1] - 4..].try_into().unwrap()))
        .collect();
    assert_eq!(
        numbers,
        (first..first + numbers.len() as u32).collect::<Vec<_>>()
    );
}

#[test]
fn a_subscriber_showing_the_video_small_gets_the_lowest_layer() {
    let (mut net, doctor, patient) = call("room-size");
    let mut n = 0u32;
    send(&mut net, doctor, &mut n, &[0, 1, 2], 60);
    net.settle(20);
    let before = net.received(patient, MediaKind::Video).len();
    assert!(
        net.received(patient, MediaKind::Video)
            .iter()
            .all(|m| layer_of(m.data.len()) == 2),
        "the top layer first"
    );
    // The patient shows the doctor in a 320x180 tile (the SDK's ladder: 180p is layer 0).
    let peer = net.clients[patient].peer;
    net.host.on_command(Command::VideoSize {
        peer,
        identity: "doctor".into(),
        size: Some((320, 180)),
    });
    send(&mut net, doctor, &mut n, &[0, 1, 2], 90);
    net.settle(20);
    let got = net.received(patient, MediaKind::Video);
    let after: Vec<usize> = got[before..]
        .iter()
        .map(|m| layer_of(m.data.len()))
        .collect();
    let changed = after
        .iter()
        .position(|&l| l == 0)
        .expect("the lowest layer after the size");
    assert!(
        after[changed..].iter().all(|&l| l == 0),
        "only the lowest layer from the change on: {after:?}"
    );
    assert!(after.len() - changed >= 30, "{after:?}");
    // The publisher is not told yet: the wish must hold 8 s before its layers pause.
    assert!(!net.clients[doctor].messages.iter().any(|m| matches!(
        m,
        consulta_signaling::protocol::ServerMessage::PublishLayers { .. }
    )));
}

#[test]
fn a_layer_that_pauses_and_resumes_does_not_restart_those_on_another_layer() {
    let (mut net, doctor, patient) = call("room-stall");
    // The patient shows the doctor small: the lowest layer.
    let peer = net.clients[patient].peer;
    net.host.on_command(Command::VideoSize {
        peer,
        identity: "doctor".into(),
        size: Some((320, 180)),
    });
    let mut n = 0u32;
    send(&mut net, doctor, &mut n, &[0, 1, 2], 60);
    let before = net.received(patient, MediaKind::Video).len();
    // The doctor's browser pauses its top layer for longer than str0m's pause threshold (1.5 s),
    // then sends it again (as when its estimate falls and recovers).
    send(&mut net, doctor, &mut n, &[0, 1], 150);
    send(&mut net, doctor, &mut n, &[0, 1, 2], 60);
    net.settle(20);
    let got = net.received(patient, MediaKind::Video);
    let after: Vec<u32> = got[before..]
        .iter()
        .inspect(|m| assert_eq!(layer_of(m.data.len()), 0, "the lowest layer only"))
        .map(|m| u32::from_be_bytes(m.data[SIZES[0] - 4..].try_into().unwrap()))
        .collect();
    // Every frame of the lowest layer arrived: it never waited for a keyframe again (a restart
    // would drop frames until the next one, up to 29 frames later).
    assert!(after.len() >= 200, "{} frames", after.len());
    let first = after[0];
    assert_eq!(
        after,
        (first..first + after.len() as u32).collect::<Vec<_>>(),
        "no frame of the lowest layer dropped"
    );
}
