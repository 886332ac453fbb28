//! Unit tests of the depacketizers: Opus, VP8, VP9 (spatial layer 0) and H.264 payloads in,
//! frames out; lost packets, missing markers, broken access units and keyframe headers.

use super::*;

fn run(d: &mut Depacketizer, pkts: &[(u32, bool, Vec<u8>, bool)]) -> Vec<(FrameInfo, Vec<u8>)> {
    let mut out = Vec::new();
    for (ts, marker, payload, lost) in pkts {
        let p = PacketIn {
            ts: *ts,
            marker: *marker,
            payload,
            lost_before: *lost,
            time_ms: i64::from(*ts),
        };
        d.push(&p, &mut |info, buf| out.push((*info, buf.clone())));
    }
    out
}

/// A real libvpx 320x240 key frame's first 16 bytes.
const VP8_KEY_320X240: [u8; 16] = [
    0xb0, 0x5a, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00, 0x00, 0x07, 0x08, 0x85, 0x85, 0x88,
];
/// A real libvpx-vp9 352x288 key frame, profile 0, and the same size in profile 1 (4:4:4).
const VP9_KEY_352X288: [u8; 16] = [
    0x82, 0x49, 0x83, 0x42, 0x00, 0x15, 0xf0, 0x11, 0xf6, 0x08, 0x38, 0x24, 0x1c, 0x18, 0x4a, 0x00,
];
const VP9_KEY_P1_352X288: [u8; 16] = [
    0xa2, 0x49, 0x83, 0x42, 0x00, 0x02, 0xbe, 0x02, 0x3e, 0xc1, 0x07, 0x04, 0x83, 0x83, 0x09, 0x40,
];

#[test]
fn vp8_descriptor_variants() {
    // Minimal: X=0, S=1, PID=0.
    let d = vp8_descriptor(&[0x10, 0xAA]).unwrap();
    assert_eq!((d.start, d.picture_id, d.header_len), (true, None, 1));
    // X=1, I with a 7-bit PictureID.
    let d = vp8_descriptor(&[0x90, 0x80, 0x15, 0xAA]).unwrap();
    assert_eq!((d.start, d.picture_id, d.header_len), (true, Some(0x15), 3));
    // X=1, I with a 15-bit PictureID, L, T and K: 6 bytes.
    let d = vp8_descriptor(&[0x90, 0xF0, 0x81, 0x23, 0x07, 0x40, 0xAA]).unwrap();
    assert_eq!(
        (d.start, d.picture_id, d.header_len),
        (true, Some(0x0123), 6)
    );
    // K alone still takes the TID/KEYIDX byte.
    let d = vp8_descriptor(&[0x80, 0x10, 0x05, 0xAA]).unwrap();
    assert_eq!((d.start, d.header_len), (false, 3));
    // S=1 but partition 1: not a frame start.
    assert!(!vp8_descriptor(&[0x11, 0xAA]).unwrap().start);
    // Truncated descriptors.
    assert_eq!(vp8_descriptor(&[]), None);
    assert_eq!(vp8_descriptor(&[0x90]), None);
    assert_eq!(vp8_descriptor(&[0x90, 0x80, 0x81]), None);
    assert_eq!(vp8_descriptor(&[0x90, 0x70]), None);
}

#[test]
fn vp8_keyframe_header() {
    assert_eq!(vp8_keyframe_size(&VP8_KEY_320X240), Some((320, 240)));
    assert_eq!(vp8_keyframe_size(&VP8_KEY_320X240[..9]), None);
    assert_eq!(
        vp8_keyframe_size(&[0xb0, 0x5a, 0x00, 0x9d, 0x01, 0x2b]),
        None
    );
}

#[test]
fn vp8_frames_across_packets() {
    let mut d = Depacketizer::new(Codec::Vp8);
    let mut first = vec![0x90, 0x80, 0x81, 0x00];
    first.extend_from_slice(&VP8_KEY_320X240[..8]);
    let mut second = vec![0x80, 0x80, 0x81, 0x00];
    second.extend_from_slice(&VP8_KEY_320X240[8..]);
    let frames = run(
        &mut d,
        &[
            (3000, false, first, false),
            (3000, true, second, false),
            // A delta frame in one packet (frame tag bit 0 = 1).
            (6000, true, vec![0x10, 0x01, 0x02], false),
        ],
    );
    assert_eq!(frames.len(), 2);
    assert_eq!(
        frames[0].0,
        FrameInfo {
            ts: 3000,
            time_ms: 3000,
            keyframe: true,
            size: Some((320, 240))
        }
    );
    assert_eq!(frames[0].1, VP8_KEY_320X240.to_vec());
    assert_eq!(frames[1].1, vec![0x01, 0x02]);
    assert!(!frames[1].0.keyframe);
}

#[test]
fn vp8_loss_and_missing_marker() {
    let mut d = Depacketizer::new(Codec::Vp8);
    let frames = run(
        &mut d,
        &[
            (100, false, vec![0x10, 0x01, 0xA0], false),
            // The middle packet of the frame is missing: the frame is discarded.
            (100, true, vec![0x00, 0xA2], true),
            // Marker lost: the timestamp change still ends this frame.
            (200, false, vec![0x10, 0x01, 0xB0], false),
            (200, false, vec![0x00, 0xB1], false),
            (300, true, vec![0x10, 0x01, 0xC0], false),
            // Continuation with no start: counted once, not emitted.
            (400, false, vec![0x00, 0xD1], true),
            (400, true, vec![0x00, 0xD2], false),
        ],
    );
    let got: Vec<_> = frames.iter().map(|(i, b)| (i.ts, b.clone())).collect();
    assert_eq!(
        got,
        vec![(200, vec![0x01, 0xB0, 0xB1]), (300, vec![0x01, 0xC0])]
    );
    assert_eq!(d.dropped, 2);
}

#[test]
fn vp9_descriptor_with_ss_and_flexible_mode() {
    // Non-flexible key frame start: I (15-bit), L (+TL0PICIDX), B, V with 3 spatial layers
    // (Y: sizes) and 2 picture groups (G) with 1 and 2 references.
    let pkt = [
        0xAA, // I=1 P=0 L=1 F=0 B=1 E=0 V=1 Z=0
        0x81, 0x02, // PictureID 0x0102
        0x00, // TID 0, U 0, SID 0, D 0
        0x07, // TL0PICIDX
        0x58, // N_S=2 (3 layers), Y=1, G=1
        0x01, 0x40, 0x00, 0xB4, // 320x180
        0x02, 0x80, 0x01, 0x68, // 640x360
        0x05, 0x00, 0x02, 0xD0, // 1280x720
        0x02, // N_G = 2
        0x04, 0x01, // R=1, one P_DIFF
        0x28, 0x01, 0x02, // R=2, two P_DIFFs
        0xEE, // payload
    ];
    let d = vp9_descriptor(&pkt).unwrap();
    assert!(d.begin && !d.end && !d.inter && !d.flexible);
    assert_eq!(d.picture_id, Some(0x0102));
    assert_eq!(d.ss_size, Some((320, 180)));
    assert_eq!(d.header_len, pkt.len() - 1);

    // Flexible mode, inter frame, layer byte without TL0PICIDX, three P_DIFFs, E bit.
    let pkt = [0xF4, 0x05, 0x02, 0x03, 0x05, 0x04, 0xEE];
    let d = vp9_descriptor(&pkt).unwrap();
    assert!(d.flexible && d.inter && d.end && !d.begin);
    assert_eq!(d.sid, 1);
    assert_eq!(d.picture_id, Some(5));
    assert_eq!(d.header_len, 6);
    // A fourth P_DIFF is not allowed.
    assert_eq!(vp9_descriptor(&[0xD0, 0x05, 0x03, 0x03, 0x03, 0x02]), None);
    // Truncations.
    assert_eq!(vp9_descriptor(&[]), None);
    assert_eq!(vp9_descriptor(&[0x80]), None);
    assert_eq!(vp9_descriptor(&[0x02, 0x10, 0x01, 0x40]), None);
    assert_eq!(vp9_descriptor(&[0x02, 0x08, 0x01, 0x0C]), None);
}

#[test]
fn vp9_uncompressed_header_size() {
    assert_eq!(vp9_keyframe_size(&VP9_KEY_352X288), Some((352, 288)));
    assert_eq!(vp9_keyframe_size(&VP9_KEY_P1_352X288), Some((352, 288)));
    assert_eq!(vp9_keyframe_size(&VP9_KEY_352X288[..6]), None);
    // frame_type = 1 (inter).
    assert_eq!(vp9_keyframe_size(&[0x86, 0x49, 0x83, 0x42]), None);
}

#[test]
fn vp9_frames_layer0_only() {
    let mut d = Depacketizer::new(Codec::Vp9);
    let mut key_b = vec![0x08]; // B, no SS: the size comes from the frame header
    key_b.extend_from_slice(&VP9_KEY_352X288[..8]);
    let mut key_e = vec![0x04];
    key_e.extend_from_slice(&VP9_KEY_352X288[8..]);
    let frames = run(
        &mut d,
        &[
            (90, false, key_b, false),
            (90, false, key_e, false),
            // Spatial layer 1 of the same picture (L=1, SID=1): skipped.
            (90, true, vec![0x2C, 0x02, 0x00, 0x99], false),
            // Inter frame, single packet, SS given with Y.
            (
                180,
                true,
                vec![0x4E, 0x10, 0x00, 0x10, 0x00, 0x20, 0x55],
                false,
            ),
        ],
    );
    assert_eq!(frames.len(), 2);
    assert_eq!(
        frames[0].0,
        FrameInfo {
            ts: 90,
            time_ms: 90,
            keyframe: true,
            size: Some((352, 288))
        }
    );
    assert_eq!(frames[0].1, VP9_KEY_352X288.to_vec());
    assert_eq!(frames[1].1, vec![0x55]);
    assert!(!frames[1].0.keyframe);
    assert_eq!(d.ignored, 1);
}

fn h264_key_au() -> (Vec<Vec<u8>>, Vec<u8>) {
    let sps = vec![0x67, 0x42, 0xC0, 0x1F, 0xAA];
    let pps = vec![0x68, 0xCE, 0x3C, 0x80];
    let idr: Vec<u8> = std::iter::once(0x65).chain(1..=10u8).collect();
    let mut stap = vec![0x78]; // NRI 3, type 24
    for n in [&sps, &pps] {
        stap.extend_from_slice(&(n.len() as u16).to_be_bytes());
        stap.extend_from_slice(n);
    }
    let fu1 = [&[0x7C, 0x85][..], &idr[1..4]].concat(); // S, type 5
    let fu2 = [&[0x7C, 0x05][..], &idr[4..8]].concat();
    let fu3 = [&[0x7C, 0x45][..], &idr[8..]].concat(); // E
    let mut expected = Vec::new();
    for n in [&sps, &pps, &idr] {
        expected.extend_from_slice(&(n.len() as u32).to_be_bytes());
        expected.extend_from_slice(n);
    }
    (vec![stap, fu1, fu2, fu3], expected)
}

#[test]
fn h264_stap_a_and_fu_a_reassembly() {
    let mut d = Depacketizer::new(Codec::H264);
    let (pkts, expected) = h264_key_au();
    let mut input: Vec<_> = pkts
        .iter()
        .enumerate()
        .map(|(i, p)| (1000, i == pkts.len() - 1, p.clone(), false))
        .collect();
    // An AUD, then a non-IDR slice as a single NAL unit.
    input.push((4000, false, vec![0x09, 0xF0], false));
    input.push((4000, true, vec![0x41, 0x9A, 0x01], false));
    let frames = run(&mut d, &input);
    assert_eq!(frames.len(), 2);
    assert!(frames[0].0.keyframe);
    assert_eq!(frames[0].1, expected);
    assert_eq!(d.sps, vec![0x67, 0x42, 0xC0, 0x1F, 0xAA]);
    assert_eq!(d.pps, vec![0x68, 0xCE, 0x3C, 0x80]);
    assert!(!frames[1].0.keyframe);
    assert_eq!(frames[1].1, vec![0, 0, 0, 3, 0x41, 0x9A, 0x01]);
}

#[test]
fn h264_broken_access_units_are_dropped() {
    let (pkts, _) = h264_key_au();
    // Lose the middle FU-A fragment.
    let mut d = Depacketizer::new(Codec::H264);
    let frames = run(
        &mut d,
        &[
            (1000, false, pkts[0].clone(), false),
            (1000, false, pkts[1].clone(), false),
            (1000, true, pkts[3].clone(), true),
        ],
    );
    assert!(frames.is_empty());
    assert_eq!(d.dropped, 1);
    // FU-A end never arrives, marker on a later packet of the same AU.
    let mut d = Depacketizer::new(Codec::H264);
    let frames = run(
        &mut d,
        &[
            (1000, false, pkts[1].clone(), false),
            (1000, true, vec![0x41, 0x9A], false),
        ],
    );
    assert!(frames.is_empty());
    // Parameter sets alone are no frame; a truncated STAP-A is malformed.
    let mut d = Depacketizer::new(Codec::H264);
    let frames = run(
        &mut d,
        &[
            (1000, true, pkts[0].clone(), false),
            (2000, true, vec![0x78, 0x00, 0x09, 0x41], false),
        ],
    );
    assert!(frames.is_empty());
    assert_eq!(d.dropped, 2);
}

#[test]
fn opus_is_one_frame_per_packet() {
    let mut d = Depacketizer::new(Codec::Opus);
    let frames = run(
        &mut d,
        &[
            (0, true, vec![0xFC, 1, 2], false),
            (960, false, vec![], false),
            (1920, false, vec![0xFC, 3], true),
        ],
    );
    assert_eq!(frames.len(), 2);
    assert!(frames.iter().all(|(i, _)| i.keyframe));
    assert_eq!(frames[1].1, vec![0xFC, 3]);
    assert_eq!(d.dropped, 1);
}
