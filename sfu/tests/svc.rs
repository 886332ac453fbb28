//! VP9 spatial layers without sockets: a publisher sends each picture as three spatial layers
//! of one stream (RTP written packet by packet, with the VP9 descriptor a browser's `L3T3_KEY`
//! encoder writes); a subscriber that shows the video small gets layer 0 of every picture, with
//! no hole in its numbering and the marker on layer 0's packet; a subscriber that joins
//! mid-stream starts at a keyframe picture with every layer.

mod harness;

use std::time::{Duration, Instant};

use consulta_sfu::Command;
use harness::Net;
use str0m::format::Codec;
use str0m::media::MediaKind;
use str0m::rtp::{RtpWrite, SeqNo};

/// Payload bytes of each spatial layer's frame: they tell the layers apart at the subscriber.
const LAYER_BYTES: [usize; 3] = [200, 500, 900];
/// A keyframe picture every `KEY_EVERY` pictures.
const KEY_EVERY: u32 = 30;

/// A VP9 doctor and a patient that receives it, connected, the patient's offer applied.
fn call(room: &str) -> (Net, usize, usize) {
    let mut net = Net::new(5);
    let doctor = net.join_with_codecs(room, "doctor", &[Codec::Vp9]);
    let patient = net.join(room, "patient", false);
    net.until_offered(patient, 2);
    (net, doctor, patient)
}

/// One packet of spatial layer `sid` of picture `n`: the whole frame of its layer (B and E),
/// non-flexible mode with a 15-bit picture id and layer indices; a keyframe picture's layer 0
/// is not inter-picture predicted and carries the scalability structure (three layers).
fn packet(n: u32, sid: usize) -> Vec<u8> {
    let key = n.is_multiple_of(KEY_EVERY);
    // I|P|L|F|B|E|V|Z
    let mut b0 = 0x80 | 0x20 | 0x08 | 0x04;
    if !key {
        b0 |= 0x40;
    }
    if key && sid == 0 {
        b0 |= 0x02;
    }
    let pid = (n & 0x7FFF) as u16;
    // TID 0, U 0, SID, D (the upper layers of a keyframe picture depend on the one below).
    let layer = ((sid as u8) << 1) | u8::from(key && sid > 0);
    let mut p = vec![b0, 0x80 | (pid >> 8) as u8, pid as u8, layer, n as u8];
    if key && sid == 0 {
        p.push(2 << 5); // N_S = 2: three spatial layers, no resolutions, no picture groups
    }
    let frame = p.len();
    p.resize(frame + LAYER_BYTES[sid], sid as u8);
    let len = p.len();
    p[len - 4..].copy_from_slice(&n.to_be_bytes());
    p
}

/// Writes pictures `from..to` (all three layers of each, lowest first, the marker on the top
/// layer's packet), a housekeeping round after each; `seq` is the publisher's next sequence
/// number.
fn send(net: &mut Net, doctor: usize, seq: &mut u64, pictures: std::ops::Range<u32>) {
    let pt = net.video_pt(doctor, Codec::Vp9);
    for n in pictures {
        let c = &mut net.clients[doctor];
        let mid = c.video_mid.expect("video published");
        let mut api = c.rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).expect("the video stream");
        for sid in 0..3 {
            let rtp = RtpWrite::new(
                pt,
                SeqNo::from(*seq),
                3000 * n,
                Instant::now(),
                packet(n, sid),
            )
            .marker(sid == 2)
            .nackable(true);
            tx.write_rtp(rtp);
            *seq += 1;
        }
        net.settle(3);
        net.host.housekeeping(Instant::now());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The picture number and the layers of a frame the patient received: its length tells which
/// layers it holds (the depacketizer joins the packets from a frame's first to the marker).
fn picture(data: &[u8]) -> (u32, usize) {
    let n = u32::from_be_bytes(data[data.len() - 4..].try_into().unwrap());
    (n, data.len())
}

#[test]
fn a_subscriber_showing_the_video_small_gets_layer_0_of_every_picture() {
    let (mut net, doctor, patient) = call("room-svc");
    let mut seq = 1000u64;
    send(&mut net, doctor, &mut seq, 0..60);
    net.settle(20);
    let first: Vec<_> = net
        .received(patient, MediaKind::Video)
        .iter()
        .map(|m| picture(&m.data))
        .collect();
    assert!(
        first.len() >= 50,
        "pictures before the size: {}",
        first.len()
    );
    let whole: usize = LAYER_BYTES.iter().sum();
    assert!(
        first.iter().all(|&(_, len)| len == whole),
        "the whole picture first: {first:?}"
    );
    let before = first.len();

    // The patient shows the doctor in a 320x180 tile: layer 0 (the default ladder's 180p), from
    // the next picture on, without a keyframe.
    let peer = net.clients[patient].peer;
    let size = |net: &mut Net, size| {
        net.host.on_command(Command::VideoSize {
            peer,
            identity: "doctor".into(),
            size,
        })
    };
    size(&mut net, Some((320, 180)));
    // Up to a picture between two keyframes, where the late subscriber below joins.
    send(&mut net, doctor, &mut seq, 60..155);
    net.settle(20);
    let got: Vec<_> = net.received(patient, MediaKind::Video)[before..]
        .iter()
        .map(|m| (picture(&m.data), m.contiguous))
        .collect();
    let small = got
        .iter()
        .position(|&((_, len), _)| len == LAYER_BYTES[0])
        .expect("layer 0 after the size");
    assert!(small <= 2, "layer 0 from the next pictures on: {got:?}");
    let numbers: Vec<u32> = got[small..].iter().map(|&((n, _), _)| n).collect();
    let first_small = numbers[0];
    // Every picture's layer 0 arrived, none held back for a hole in the numbering (the layers
    // above take no sequence numbers) and each ended by the marker the server set.
    assert_eq!(
        numbers,
        (first_small..155).collect::<Vec<_>>(),
        "layer 0 of every picture"
    );
    assert!(
        got[small..]
            .iter()
            .all(|&((_, len), contiguous)| len == LAYER_BYTES[0] && contiguous),
        "only layer 0, contiguous: {got:?}"
    );

    // A subscriber that joins mid-stream (pictures 155..179 are not keyframes) starts at the
    // next keyframe picture with every layer (its estimate is still str0m's first one: no
    // feedback yet), and loses no picture after it. (Going back up after the small tile waits
    // for `UP_AFTER` of headroom in str0m's estimate of this in-memory link, which its delay
    // detector lowers when the machine is loaded: not checked here; `layers_tests.rs` checks
    // that going up waits for a keyframe picture.)
    let late = net.join("room-svc", "late", false);
    net.until_offered(late, 2);
    send(&mut net, doctor, &mut seq, 155..240);
    net.settle(20);
    let got: Vec<_> = net
        .received(late, MediaKind::Video)
        .iter()
        .map(|m| (picture(&m.data), m.contiguous))
        .collect();
    let &((first, len), _) = got.first().expect("pictures for the late subscriber");
    assert_eq!(first, 180, "starts at the next keyframe picture: {got:?}");
    assert_eq!(len, whole, "with every layer");
    let numbers: Vec<u32> = got.iter().map(|&((n, _), _)| n).collect();
    assert_eq!(numbers, (first..240).collect::<Vec<_>>(), "no picture lost");
    assert!(got.iter().all(|&(_, contiguous)| contiguous));
}
