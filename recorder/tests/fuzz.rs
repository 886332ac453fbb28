//! No input may panic the recorder: 100k packets of random bytes for every codec, once fully
//! random and once with plausible first bytes (valid-looking descriptors and NAL headers) so the
//! depacketizers get past their first checks and into reassembly, SPS parsing and muxing.

use consulta_recorder::{Codec, Recorder, RtpIn, TrackSpec};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const CODECS: [Codec; 4] = [Codec::Opus, Codec::Vp8, Codec::Vp9, Codec::H264];

/// First bytes that steer a payload into the interesting paths of each depacketizer.
fn plausible_prefix(codec: Codec, rng: &mut Rng) -> Vec<u8> {
    let pick = |rng: &mut Rng, options: &[&[u8]]| {
        options[rng.below(options.len() as u64) as usize].to_vec()
    };
    match codec {
        Codec::Opus => vec![],
        // S=1 start; continuation; with a key frame tag and start code.
        Codec::Vp8 => pick(
            rng,
            &[
                &[0x10],
                &[0x00],
                &[0x90, 0x80, 0x81],
                &[0x10, 0x50, 0x01, 0x00, 0x9D, 0x01, 0x2A],
            ],
        ),
        // B|E|V key start, continuation, flexible inter, upper spatial layer.
        Codec::Vp9 => pick(
            rng,
            &[
                &[0x0E, 0x10],
                &[0x00],
                &[0x5C, 0x03],
                &[0x2C, 0x02, 0x00],
                &[0x0C, 0x82, 0x49, 0x83, 0x42],
            ],
        ),
        // SPS, PPS, IDR, STAP-A, FU-A start/middle/end.
        Codec::H264 => pick(
            rng,
            &[
                &[0x67, 0x42, 0xC0, 0x1F],
                &[0x68],
                &[0x65],
                &[0x78, 0x00],
                &[0x7C, 0x85],
                &[0x7C, 0x05],
                &[0x7C, 0x45],
                &[0x67, 0x64, 0x00, 0x28],
            ],
        ),
    }
}

fn run(seed: u64, plausible: bool) {
    let mut rng = Rng(seed);
    let tracks = CODECS
        .iter()
        .enumerate()
        .map(|(i, &codec)| TrackSpec {
            key: i as u64,
            codec,
            name: format!("t{i}"),
        })
        .collect();
    let mut rec = Recorder::new(std::io::sink(), tracks, 1_000);
    let mut seq = [0u16; 4];
    let mut ts = [0u32; 4];
    let mut now = 1_000u64;
    let mut payload = Vec::with_capacity(1500);
    let mut keyframes_wanted = 0u64;
    for n in 0..100_000u32 {
        let t = rng.below(4) as usize;
        // Mostly in order, sometimes lost, duplicated, reordered or wildly off.
        seq[t] = match rng.below(20) {
            0 => seq[t].wrapping_add(rng.below(5) as u16 + 2),
            1 => seq[t],
            2 => seq[t].wrapping_sub(rng.below(3) as u16 + 1),
            3 if rng.below(50) == 0 => rng.next() as u16,
            _ => seq[t].wrapping_add(1),
        };
        ts[t] = match rng.below(10) {
            0..=3 => ts[t],
            4 if rng.below(100) == 0 => rng.next() as u32,
            _ => ts[t].wrapping_add(rng.below(6000) as u32),
        };
        now += rng.below(3);
        payload.clear();
        if plausible {
            payload.extend(plausible_prefix(CODECS[t], &mut rng));
        }
        let max_len = if rng.below(10) == 0 { 1400 } else { 64 };
        let len = rng.below(max_len) as usize;
        payload.extend((0..len).map(|_| rng.next() as u8));
        let out = rec
            .push(&RtpIn {
                key: t as u64,
                seq: seq[t],
                timestamp: ts[t],
                marker: rng.below(3) == 0,
                payload: &payload,
                arrival_ms: now,
            })
            .expect("an in-memory sink never fails");
        keyframes_wanted += u64::from(out.keyframe_wanted.is_some());
        if n % 50 == 0 {
            rec.tick(now).unwrap();
        }
    }
    assert!(rec.header_written());
    let (_, summary) = rec.finish(now + 1_000).unwrap();
    // Opus takes any non-empty payload that does not overlap the one before it. Here 40% of
    // the packets repeat the previous timestamp and random TOC bytes claim up to 120 ms each,
    // so most overlap and are dropped (overlapping audio made ffmpeg reject real recordings);
    // thousands still become blocks.
    assert!(summary.frames[&0] > 1_000, "{summary:?}");
    assert!(summary.bytes > 100_000);
    assert!(keyframes_wanted > 0);
    // Whatever the timestamps did, re-anchoring keeps the file's timeline near the call's.
    let call_ms = now - 1_000;
    assert!(
        summary.duration_ms <= call_ms + 10_000,
        "{} ms for a {call_ms} ms call",
        summary.duration_ms
    );
    println!("seed {seed:#x}, plausible {plausible}: {summary:?}");
}

#[test]
fn random_payloads_never_panic() {
    run(0x9E37_79B9_7F4A_7C15, false);
}

#[test]
fn plausible_payloads_never_panic() {
    run(0xD1B5_4A32_D192_ED03, true);
}

/// `CONSULTA_FUZZ_SEEDS=N cargo test --release --test fuzz` tries N more seeds of each kind.
#[test]
fn more_seeds_on_request() {
    let n: u64 = std::env::var("CONSULTA_FUZZ_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for i in 1..=n {
        let seed = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        run(seed, false);
        run(seed, true);
    }
}
