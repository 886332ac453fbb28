//! Recorder-level tests: header timing, cluster policy, loss handling and clocks, checked by
//! reading the produced bytes back with a small EBML reader written for the tests.

use super::*;
use crate::mkv::id;

#[derive(Debug, Clone)]
enum Node {
    Master(u32, Vec<Node>),
    Leaf(u32, Vec<u8>),
}

impl Node {
    fn id(&self) -> u32 {
        match self {
            Node::Master(i, _) | Node::Leaf(i, _) => *i,
        }
    }
    fn children(&self) -> &[Node] {
        match self {
            Node::Master(_, c) => c,
            Node::Leaf(..) => &[],
        }
    }
    fn all(&self, wanted: u32) -> Vec<&Node> {
        self.children()
            .iter()
            .filter(|n| n.id() == wanted)
            .collect()
    }
    fn one(&self, wanted: u32) -> &Node {
        let v = self.all(wanted);
        assert_eq!(v.len(), 1, "expected one {wanted:#x} in {:#x}", self.id());
        v[0]
    }
    fn data(&self) -> &[u8] {
        match self {
            Node::Leaf(_, d) => d,
            Node::Master(..) => panic!("master element has no data"),
        }
    }
    fn uint(&self) -> u64 {
        self.data().iter().fold(0, |a, &b| (a << 8) | u64::from(b))
    }
    fn str(&self) -> String {
        String::from_utf8(self.data().to_vec()).unwrap()
    }
}

const MASTERS: &[u32] = &[
    id::EBML,
    id::SEGMENT,
    id::INFO,
    id::TRACKS,
    id::TRACK_ENTRY,
    id::VIDEO,
    id::AUDIO,
    id::CLUSTER,
    id::CUES,
    id::CUE_POINT,
    id::CUE_TRACK_POSITIONS,
];

fn read_vint(d: &[u8], keep_marker: bool) -> (u64, usize, bool) {
    let first = d[0];
    let len = first.leading_zeros() as usize + 1;
    assert!(len <= 8, "invalid vint");
    let mut v = u64::from(if keep_marker {
        first
    } else {
        first & (0xFFu16 >> len) as u8
    });
    for b in &d[1..len] {
        v = (v << 8) | u64::from(*b);
    }
    let unknown = !keep_marker && v == (1u64 << (7 * len)) - 1;
    (v, len, unknown)
}

fn parse(mut d: &[u8]) -> Vec<Node> {
    let mut out = Vec::new();
    while !d.is_empty() {
        let (eid, il, _) = read_vint(d, true);
        let (size, sl, unknown) = read_vint(&d[il..], false);
        let body_start = il + sl;
        let end = if unknown {
            d.len()
        } else {
            body_start + size as usize
        };
        assert!(end <= d.len(), "element {eid:#x} overruns its parent");
        let body = &d[body_start..end];
        let eid = eid as u32;
        out.push(if MASTERS.contains(&eid) {
            Node::Master(eid, parse(body))
        } else {
            Node::Leaf(eid, body.to_vec())
        });
        d = &d[end..];
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
struct Block {
    track: u64,
    ts: i64,
    keyframe: bool,
    data: Vec<u8>,
}

struct File {
    doc_type: String,
    segment: Node,
}

impl File {
    fn read(bytes: &[u8]) -> File {
        let top = parse(bytes);
        assert_eq!(top.len(), 2, "EBML header and one Segment");
        assert_eq!(top[0].id(), id::EBML);
        File {
            doc_type: top[0].one(id::DOC_TYPE).str(),
            segment: top[1].clone(),
        }
    }
    fn tracks(&self) -> Vec<&Node> {
        self.segment.one(id::TRACKS).all(id::TRACK_ENTRY)
    }
    fn clusters(&self) -> Vec<&Node> {
        self.segment.all(id::CLUSTER)
    }
    fn blocks(&self) -> Vec<Block> {
        let mut out = Vec::new();
        for c in self.clusters() {
            let base = c.one(id::TIMESTAMP).uint() as i64;
            for b in c.all(id::SIMPLE_BLOCK) {
                let d = b.data();
                let (track, l, _) = read_vint(d, false);
                let rel = i16::from_be_bytes([d[l], d[l + 1]]);
                assert!(rel >= 0, "block before its cluster");
                out.push(Block {
                    track,
                    ts: base + i64::from(rel),
                    keyframe: d[l + 2] & 0x80 != 0,
                    data: d[l + 3..].to_vec(),
                });
            }
        }
        out
    }
}

fn spec(key: u64, codec: Codec, name: &str) -> TrackSpec {
    TrackSpec {
        key,
        codec,
        name: name.into(),
    }
}

fn pkt(key: u64, seq: u16, ts: u32, marker: bool, payload: &[u8], at: u64) -> RtpIn<'_> {
    RtpIn {
        key,
        seq,
        timestamp: ts,
        marker,
        payload,
        arrival_ms: at,
    }
}

/// A VP8 key frame of `w`x`h` in one packet (descriptor S=1).
fn vp8_key(w: u16, h: u16) -> Vec<u8> {
    let mut p = vec![0x10, 0x50, 0x01, 0x00, 0x9D, 0x01, 0x2A];
    p.extend_from_slice(&w.to_le_bytes());
    p.extend_from_slice(&h.to_le_bytes());
    p.extend_from_slice(&[0xAB; 20]);
    p
}

const VP8_DELTA: [u8; 6] = [0x10, 0x31, 0x02, 0x00, 0xCD, 0xEF];
const OPUS: [u8; 4] = [0xFC, 0xFF, 0xFE, 0x01];

const AUDIO: u64 = 10;
const VIDEO: u64 = 20;

#[test]
fn header_waits_for_keyframe_then_lists_tracks() {
    let mut r = Recorder::new(
        Vec::new(),
        vec![
            spec(AUDIO, Codec::Opus, "doctor-audio"),
            spec(VIDEO, Codec::Vp8, "doctor-video"),
        ],
        1000,
    );
    let key = vp8_key(1280, 720);
    for i in 0..20u16 {
        let at = 1000 + 20 * u64::from(i);
        r.push(&pkt(AUDIO, i, 960 * u32::from(i), true, &OPUS, at))
            .unwrap();
        if i < 5 {
            // Delta frames before the first keyframe: dropped, and a keyframe is asked for.
            let o = r
                .push(&pkt(VIDEO, i, 1800 * u32::from(i), true, &VP8_DELTA, at))
                .unwrap();
            assert_eq!(o.keyframe_wanted, (i == 0).then_some(VIDEO));
        } else if i == 5 {
            assert!(!r.header_written());
            let o = r.push(&pkt(VIDEO, 5, 9000, true, &key, at)).unwrap();
            assert_eq!(o.keyframe_wanted, None);
            assert!(r.header_written());
        }
    }
    let (bytes, summary) = r.finish(1400).unwrap();
    assert_eq!(summary.bytes as usize, bytes.len());
    assert_eq!(summary.frames[&AUDIO], 20);
    assert_eq!(summary.frames[&VIDEO], 1);
    assert_eq!(summary.frames_dropped, 5);

    let f = File::read(&bytes);
    assert_eq!(f.doc_type, "webm");
    let info = f.segment.one(id::INFO);
    assert_eq!(info.one(id::TIMESTAMP_SCALE).uint(), 1_000_000);
    assert_eq!(info.one(id::MUXING_APP).str(), "consulta");
    let t = f.tracks();
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].one(id::TRACK_NUMBER).uint(), 1);
    assert_eq!(t[0].one(id::TRACK_TYPE).uint(), 2);
    assert_eq!(t[0].one(id::CODEC_ID).str(), "A_OPUS");
    assert_eq!(t[0].one(id::NAME).str(), "doctor-audio");
    assert_eq!(t[0].one(id::CODEC_PRIVATE).data(), &mkv::opus_head());
    assert_eq!(t[0].one(id::CODEC_DELAY).uint(), 6_500_000);
    assert_eq!(t[0].one(id::SEEK_PRE_ROLL).uint(), 80_000_000);
    let audio = t[0].one(id::AUDIO);
    assert_eq!(
        audio.one(id::SAMPLING_FREQUENCY).data(),
        &48_000f64.to_be_bytes()
    );
    assert_eq!(audio.one(id::CHANNELS).uint(), 2);
    assert_eq!(t[1].one(id::TRACK_NUMBER).uint(), 2);
    assert_eq!(t[1].one(id::TRACK_TYPE).uint(), 1);
    assert_eq!(t[1].one(id::CODEC_ID).str(), "V_VP8");
    let v = t[1].one(id::VIDEO);
    assert_eq!(v.one(id::PIXEL_WIDTH).uint(), 1280);
    assert_eq!(v.one(id::PIXEL_HEIGHT).uint(), 720);
    assert_ne!(
        t[0].one(id::TRACK_UID).uint(),
        t[1].one(id::TRACK_UID).uint()
    );

    let blocks = f.blocks();
    assert_eq!(blocks.len(), 21);
    // Audio anchored at arrival 1000 → 0 ms; the keyframe arrived at 1100 → 100 ms.
    let video: Vec<_> = blocks.iter().filter(|b| b.track == 2).collect();
    assert_eq!(video[0].ts, 100);
    assert!(video[0].keyframe);
    assert_eq!(video[0].data, key[1..].to_vec());
    // Written in time order across tracks.
    assert!(blocks.windows(2).all(|w| w[0].ts <= w[1].ts));
    // The file was indexed: a cue points at the cluster holding the keyframe, by its offset
    // from the Segment's data (after the EBML header, the Segment ID and its 8-byte size).
    let cues = f.segment.one(id::CUES).all(id::CUE_POINT);
    assert_eq!(cues.len(), 1);
    assert_eq!(cues[0].one(id::CUE_TIME).uint(), 100);
    let pos = cues[0].one(id::CUE_TRACK_POSITIONS);
    assert_eq!(pos.one(id::CUE_TRACK).uint(), 2);
    let (ebml_size, ebml_size_len, _) = read_vint(&bytes[4..], false);
    let ebml_len = 4 + ebml_size_len + ebml_size as usize;
    assert_eq!(&bytes[ebml_len..ebml_len + 4], &[0x18, 0x53, 0x80, 0x67]);
    let cluster_at = ebml_len + 12 + pos.one(id::CUE_CLUSTER_POSITION).uint() as usize;
    assert_eq!(
        &bytes[cluster_at..cluster_at + 4],
        &[0x1F, 0x43, 0xB6, 0x75]
    );
    // The Duration lands on the Void reserved inside Info: the last block (380 ms) plus one
    // 20 ms frame.
    let scan = crate::scan::scan(&mut std::io::Cursor::new(&bytes)).unwrap();
    let at = scan.duration_slot.unwrap() as usize;
    assert_eq!(&bytes[at..at + 2], &[0xEC, 0x89]);
    let mut patched = std::io::Cursor::new(bytes.clone());
    assert!(crate::scan::patch_duration(&mut patched, &scan, scan.duration_ms).unwrap());
    let info = File::read(patched.get_ref()).segment.one(id::INFO).clone();
    let d = f64::from_be_bytes(info.one(id::DURATION).data().try_into().unwrap());
    assert_eq!(d, 400.0);
}

#[test]
fn header_timeout_declares_silent_tracks_and_omits_h264_without_sps() {
    let mut r = Recorder::new(
        Vec::new(),
        vec![
            spec(AUDIO, Codec::Opus, "a"),
            spec(VIDEO, Codec::Vp9, "v"),
            spec(30, Codec::H264, "h"),
        ],
        0,
    );
    for i in 0..100u16 {
        r.push(&pkt(
            AUDIO,
            i,
            960 * u32::from(i),
            true,
            &OPUS,
            20 * u64::from(i),
        ))
        .unwrap();
        r.tick(20 * u64::from(i)).unwrap();
    }
    assert!(!r.header_written());
    r.tick(2_999).unwrap();
    assert!(!r.header_written());
    r.tick(3_000).unwrap();
    assert!(r.header_written());
    // The H264 track is out of the file now; its packets are ignored.
    let o = r
        .push(&pkt(30, 0, 0, true, &[0x65, 0x88, 0x80], 3_010))
        .unwrap();
    assert_eq!(o.keyframe_wanted, None);
    let (bytes, s) = r.finish(3_100).unwrap();
    assert_eq!(s.tracks_omitted, 1);
    assert_eq!(s.packets_ignored, 1);
    assert_eq!(s.frames[&30], 0);
    assert_eq!(s.frames[&AUDIO], 100);

    let f = File::read(&bytes);
    assert_eq!(f.doc_type, "webm");
    let t = f.tracks();
    assert_eq!(t.len(), 2);
    assert_eq!(t[1].one(id::CODEC_ID).str(), "V_VP9");
    let v = t[1].one(id::VIDEO);
    assert_eq!(
        (
            v.one(id::PIXEL_WIDTH).uint(),
            v.one(id::PIXEL_HEIGHT).uint()
        ),
        (640, 480)
    );
    assert!(f.blocks().iter().all(|b| b.track == 1));
}

#[test]
fn h264_track_gets_avcc_and_matroska_doctype() {
    // SPS/PPS of a real 1280x720 x264 baseline stream, then an IDR slice.
    let sps: &[u8] = &[
        0x67, 0x42, 0xc0, 0x1f, 0xd9, 0x00, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
        0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x24, 0x80,
    ];
    let pps: &[u8] = &[0x68, 0xcb, 0x83, 0xcb, 0x20];
    let mut stap = vec![0x78];
    for n in [sps, pps] {
        stap.extend_from_slice(&(n.len() as u16).to_be_bytes());
        stap.extend_from_slice(n);
    }
    let mut r = Recorder::new(Vec::new(), vec![spec(VIDEO, Codec::H264, "v")], 0);
    r.push(&pkt(VIDEO, 7, 90, false, &stap, 5)).unwrap();
    r.push(&pkt(VIDEO, 8, 90, true, &[0x65, 0x88, 0x84], 6))
        .unwrap();
    assert!(r.header_written());
    r.push(&pkt(VIDEO, 9, 3090, true, &[0x41, 0x9a, 0x02], 40))
        .unwrap();
    let (bytes, _) = r.finish(100).unwrap();
    let f = File::read(&bytes);
    assert_eq!(f.doc_type, "matroska");
    let t = f.tracks();
    assert_eq!(t[0].one(id::CODEC_ID).str(), "V_MPEG4/ISO/AVC");
    assert_eq!(
        t[0].one(id::CODEC_PRIVATE).data(),
        h264::avcc(sps, pps).unwrap().as_slice()
    );
    let v = t[0].one(id::VIDEO);
    assert_eq!(v.one(id::PIXEL_WIDTH).uint(), 1280);
    assert_eq!(v.one(id::PIXEL_HEIGHT).uint(), 720);
    let blocks = f.blocks();
    assert_eq!(blocks.len(), 2);
    assert!(blocks[0].keyframe && !blocks[1].keyframe);
    // Length-prefixed: SPS, PPS, IDR.
    assert_eq!(&blocks[0].data[..4], &[0, 0, 0, 25]);
    assert_eq!(&blocks[1].data, &[0, 0, 0, 3, 0x41, 0x9a, 0x02]);
}

#[test]
fn clusters_close_on_time_and_before_late_keyframes() {
    let mut r = Recorder::new(
        Vec::new(),
        vec![spec(AUDIO, Codec::Opus, "a"), spec(VIDEO, Codec::Vp8, "v")],
        0,
    );
    let key = vp8_key(320, 240);
    let mut vseq = 0u16;
    // 10 s: audio every 20 ms, video every 40 ms with a keyframe every 720 ms.
    for i in 0..500u32 {
        let at = u64::from(i) * 20;
        r.push(&pkt(AUDIO, i as u16, i * 960, true, &OPUS, at))
            .unwrap();
        if i % 2 == 0 {
            let payload: &[u8] = if (i / 2) % 18 == 0 { &key } else { &VP8_DELTA };
            r.push(&pkt(VIDEO, vseq, i * 1800, true, payload, at))
                .unwrap();
            vseq = vseq.wrapping_add(1);
        }
        if i % 5 == 0 {
            r.tick(at).unwrap();
        }
    }
    let (bytes, s) = r.finish(10_000).unwrap();
    assert_eq!(s.frames[&AUDIO], 500);
    assert_eq!(s.frames[&VIDEO], 250);
    assert_eq!(s.frames_dropped, 0);
    assert!(
        (9_900..=10_000).contains(&s.duration_ms),
        "{}",
        s.duration_ms
    );

    let f = File::read(&bytes);
    let mut prev_start = -1;
    for c in f.clusters() {
        let start = c.one(id::TIMESTAMP).uint() as i64;
        assert!(start > prev_start);
        prev_start = start;
        let blocks: Vec<_> = c.all(id::SIMPLE_BLOCK);
        assert!(!blocks.is_empty());
    }
    let blocks = f.blocks();
    for track in [1, 2] {
        let ts: Vec<_> = blocks
            .iter()
            .filter(|b| b.track == track)
            .map(|b| b.ts)
            .collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]));
    }
    // Every cluster spans less than 1000 ms, and a keyframe that comes 500 ms or more into a
    // cluster opens the next one.
    for c in f.clusters() {
        let start = c.one(id::TIMESTAMP).uint() as i64;
        let file = File {
            doc_type: String::new(),
            segment: Node::Master(id::SEGMENT, vec![(*c).clone()]),
        };
        for b in file.blocks() {
            assert!(b.ts - start < 1000);
            if b.track == 2 && b.keyframe {
                assert!(
                    b.ts - start < 500,
                    "late keyframe inside cluster at {start}"
                );
            }
        }
    }
    // Keyframes at 0, 720, 1440, ... each open a cluster (720 ms > 500 ms).
    let starts: Vec<_> = f
        .clusters()
        .iter()
        .map(|c| c.one(id::TIMESTAMP).uint())
        .collect();
    assert!(
        starts.contains(&720) && starts.contains(&1440),
        "{starts:?}"
    );
}

#[test]
fn loss_discards_until_keyframe_and_throttles_requests() {
    let mut r = Recorder::new(Vec::new(), vec![spec(VIDEO, Codec::Vp8, "v")], 0);
    let key = vp8_key(320, 240);
    let mut wanted = Vec::new();
    let mut seq = 0u16;
    for i in 0..60u32 {
        let at = u64::from(i) * 33;
        // Packets 10 and 11 are lost; the sender answers the request at frame 40 only.
        if i == 10 || i == 11 {
            seq += 1;
            continue;
        }
        let payload: &[u8] = if i == 0 || i == 40 { &key } else { &VP8_DELTA };
        let o = r
            .push(&pkt(VIDEO, seq, i * 3000, true, payload, at))
            .unwrap();
        seq += 1;
        if o.keyframe_wanted.is_some() {
            wanted.push(i);
        }
    }
    // Asked at the loss (frame 12), then no more often than every 500 ms (~15 frames).
    assert_eq!(wanted, vec![12, 28]);
    let (bytes, s) = r.finish(2_000).unwrap();
    // 58 received: 12..=39 (28 frames) discarded waiting for the keyframe.
    assert_eq!(s.frames[&VIDEO], 58 - 28);
    assert_eq!(s.frames_dropped, 28);
    let blocks = File::read(&bytes).blocks();
    let first_after_gap = blocks.iter().find(|b| b.ts > 11 * 33).unwrap();
    assert!(first_after_gap.keyframe);
}

#[test]
fn sequence_and_timestamp_wrap_are_seamless() {
    let mut r = Recorder::new(Vec::new(), vec![spec(AUDIO, Codec::Opus, "a")], 0);
    let mut ts = u32::MAX - 960 * 50;
    let mut seq = u16::MAX - 30;
    for i in 0..100u64 {
        r.push(&pkt(AUDIO, seq, ts, true, &OPUS, i * 20)).unwrap();
        // A duplicate and a stale packet are ignored.
        r.push(&pkt(AUDIO, seq, ts, true, &OPUS, i * 20)).unwrap();
        r.push(&pkt(AUDIO, seq.wrapping_sub(5), ts, true, &OPUS, i * 20))
            .unwrap();
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(960);
    }
    let (bytes, s) = r.finish(2_000).unwrap();
    assert_eq!(s.frames[&AUDIO], 100);
    let ts: Vec<_> = File::read(&bytes).blocks().iter().map(|b| b.ts).collect();
    let expected: Vec<i64> = (0..100).map(|i| i * 20).collect();
    assert_eq!(ts, expected);
}

#[test]
fn sender_restart_is_reanchored() {
    let mut r = Recorder::new(Vec::new(), vec![spec(AUDIO, Codec::Opus, "a")], 0);
    for i in 0..50u32 {
        r.push(&pkt(
            AUDIO,
            i as u16,
            1_000 + i * 960,
            true,
            &OPUS,
            u64::from(i) * 20,
        ))
        .unwrap();
    }
    // New SSRC behind the same key: random sequence and timestamp bases.
    for i in 0..50u32 {
        let at = 1_000 + u64::from(i) * 20;
        r.push(&pkt(
            AUDIO,
            40_000 + i as u16,
            2_000_000_000 + i * 960,
            true,
            &OPUS,
            at,
        ))
        .unwrap();
    }
    let (bytes, s) = r.finish(3_000).unwrap();
    assert!(s.duration_ms < 2_100, "{}", s.duration_ms);
    let ts: Vec<_> = File::read(&bytes).blocks().iter().map(|b| b.ts).collect();
    assert_eq!(ts.len(), 100);
    assert_eq!(ts[50], 1_000);
}

#[test]
fn preheader_queue_is_bounded() {
    let mut r = Recorder::new(
        Vec::new(),
        vec![spec(AUDIO, Codec::Opus, "a"), spec(VIDEO, Codec::Vp8, "v")],
        0,
    );
    // Video starts, audio stays silent; 1 MiB key frames overflow 8 MiB before 3 s.
    let mut big = vp8_key(320, 240);
    big.resize(1 << 20, 0x11);
    for i in 0..20u32 {
        r.push(&pkt(
            VIDEO,
            i as u16,
            i * 9000,
            true,
            &big,
            u64::from(i) * 100,
        ))
        .unwrap();
        assert!(!r.header_written());
        assert!(r.queue.bytes <= QUEUE_MAX_BYTES);
    }
    let (_, s) = r.finish(2_100).unwrap();
    assert_eq!(s.frames[&VIDEO] + s.frames_dropped, 20);
    assert!(s.frames_dropped >= 12);
}

#[test]
fn unknown_track_and_write_failure() {
    struct Failing;
    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut r = Recorder::new(Failing, vec![spec(AUDIO, Codec::Opus, "a")], 0);
    assert!(matches!(
        r.push(&pkt(99, 0, 0, true, &OPUS, 0)),
        Err(RecorderError::UnknownTrack(99))
    ));
    assert!(matches!(
        r.push(&pkt(AUDIO, 0, 0, true, &OPUS, 0)),
        Err(RecorderError::Io(_))
    ));
    assert!(matches!(r.tick(10), Err(RecorderError::Io(_))));
    assert!(r.finish(20).is_err());
}

/// A backlog of old packets arriving after the clock moved on (a starved recorder thread) is
/// clamped forward, but a track's block times stay strictly increasing: muxers and decoders
/// reject equal timestamps within a stream.
#[test]
fn late_frames_keep_block_times_strictly_increasing() {
    let mut r = Recorder::new(
        Vec::new(),
        vec![spec(AUDIO, Codec::Opus, "a"), spec(VIDEO, Codec::Vp8, "v")],
        0,
    );
    let key = vp8_key(64, 48);
    r.push(&pkt(VIDEO, 1, 0, true, &key, 0)).unwrap();
    r.push(&pkt(AUDIO, 1, 0, false, &OPUS, 0)).unwrap();
    // The clock runs 2 s ahead (tick) while packets of the first 2 s are still queued. Audio
    // of that time is taken first (clusters move on), then the video arrives: every video
    // frame lands before the open cluster and is moved forward.
    r.tick(2_000).unwrap();
    for i in 1..100u16 {
        let at = u64::from(i) * 20;
        r.push(&pkt(AUDIO, 1 + i, u32::from(i) * 960, false, &OPUS, at))
            .unwrap();
    }
    for i in 1..60u16 {
        let at = u64::from(i) * 33;
        r.push(&pkt(
            VIDEO,
            1 + i,
            u32::from(i) * 3000,
            true,
            &VP8_DELTA,
            at,
        ))
        .unwrap();
    }
    // Now the other way round: video of the next second first, then its audio, late.
    for i in 60..90u16 {
        let at = 2_000 + u64::from(i) * 33;
        r.push(&pkt(
            VIDEO,
            1 + i,
            u32::from(i) * 3000,
            true,
            &VP8_DELTA,
            at,
        ))
        .unwrap();
    }
    r.tick(5_200).unwrap();
    for i in 100..150u16 {
        let at = 5_200 + u64::from(i - 100) * 20;
        r.push(&pkt(AUDIO, 1 + i, u32::from(i) * 960, false, &OPUS, at))
            .unwrap();
    }
    let (bytes, summary) = r.finish(8_000).unwrap();
    assert!(
        summary.frames_dropped > 0,
        "audio later than 100 ms is dropped, not moved"
    );
    let f = File::read(&bytes);
    // Audio never overlaps: blocks at least one 20 ms frame apart.
    let audio: Vec<i64> = f
        .blocks()
        .iter()
        .filter(|b| b.track == 1)
        .map(|b| b.ts)
        .collect();
    assert!(audio.windows(2).all(|w| w[1] - w[0] >= 20), "{audio:?}");
    for track in [1, 2] {
        let times: Vec<i64> = f
            .blocks()
            .iter()
            .filter(|b| b.track == track)
            .map(|b| b.ts)
            .collect();
        assert!(
            times.windows(2).all(|w| w[1] > w[0]),
            "track {track} not strictly increasing: {times:?}"
        );
    }
    // Audio mostly survives; the late video deltas (no keyframe came) are all left out rather
    // than squeezed a millisecond apart.
    assert!(audio.len() > 50, "{} audio blocks", audio.len());
    let video = f.blocks().iter().filter(|b| b.track == 2).count();
    assert_eq!(video, 1, "only the first keyframe: late deltas are dropped");
    assert!(summary.frames_dropped >= 59, "{summary:?}");
}

/// A file cut by a crash: the scan finds where the last complete cluster ends and how long the
/// recording is, and the Duration lands in the Void the header reserved.
#[test]
fn scan_repairs_a_cut_file_and_patches_its_duration() {
    let mut r = Recorder::new(
        Vec::new(),
        vec![spec(AUDIO, Codec::Opus, "a"), spec(VIDEO, Codec::Vp8, "v")],
        0,
    );
    let key = vp8_key(64, 48);
    r.push(&pkt(VIDEO, 1, 0, true, &key, 0)).unwrap();
    for i in 0..150u16 {
        let at = u64::from(i) * 20;
        r.push(&pkt(AUDIO, 1 + i, u32::from(i) * 960, false, &OPUS, at))
            .unwrap();
    }
    r.tick(4_000).unwrap();
    let (whole, _) = r.finish(4_000).unwrap();
    let full = crate::scan::scan(&mut std::io::Cursor::new(&whole)).unwrap();
    assert_eq!(full.complete_len, whole.len() as u64);
    assert!(full.has_tracks && full.clusters >= 3, "{full:?}");
    assert!((2_980..=3_020).contains(&full.duration_ms), "{full:?}");
    assert!(full.duration_slot.is_some() && full.duration_at.is_none());

    // Cut near the end: into the Cues (written last) or the last cluster.
    let cut = &whole[..whole.len() - 60];
    let s = crate::scan::scan(&mut std::io::Cursor::new(cut)).unwrap();
    assert!(s.complete_len < cut.len() as u64, "{s:?}");
    assert!(s.clusters < full.clusters || s.complete_len < full.complete_len);
    let mut repaired = std::io::Cursor::new(cut[..s.complete_len as usize].to_vec());
    assert!(crate::scan::patch_duration(&mut repaired, &s, s.duration_ms).unwrap());
    let f = File::read(repaired.get_ref());
    let info = f.segment.one(id::INFO);
    let d = f64::from_be_bytes(info.one(id::DURATION).data().try_into().unwrap());
    assert_eq!(d, s.duration_ms as f64);
    assert!(!f.blocks().is_empty());
}
