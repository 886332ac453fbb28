//! Target `recorder`: RTP packets of up to four tracks (Opus, VP8, VP9, H.264) through the
//! recorder's depacketizers and its streaming WebM writer, with fuzzed payloads, loss,
//! reordering, timestamp jumps and clock ticks. Oracle: the finished file is one the crate's
//! own reader (`scan`) reads to its last byte, and its Duration can be patched in.

use std::io::Cursor;

use consulta_recorder::scan::{patch_duration, scan};
use consulta_recorder::{Codec, Recorder, RtpIn, TrackSpec};

use crate::Input;

const CODECS: [Codec; 4] = [Codec::Opus, Codec::Vp8, Codec::Vp9, Codec::H264];

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mask = input.u8();
    let tracks: Vec<TrackSpec> = CODECS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0 || mask & 0xF == 0)
        .map(|(i, &codec)| TrackSpec {
            key: i as u64,
            codec,
            name: format!("t{i}"),
        })
        .collect();
    let keys: Vec<u64> = tracks.iter().map(|t| t.key).collect();
    let mut rec = Recorder::new(Vec::new(), tracks, 1_000);
    let mut seq = [0u16; 4];
    let mut ts = [0u32; 4];
    let mut now = 1_000u64;
    while !input.is_empty() {
        let op = input.u8();
        if op & 0xF0 == 0xF0 {
            now += u64::from(input.u16());
            rec.tick(now).expect("an in-memory sink never fails");
            continue;
        }
        let key = keys[usize::from(op) % keys.len()];
        let t = key as usize;
        // Mostly in order; the flags bring loss, duplicates, reordering and jumps.
        seq[t] = match op >> 4 & 3 {
            0 => seq[t].wrapping_add(1),
            1 => seq[t].wrapping_add(input.u8().into()),
            2 => seq[t].wrapping_sub(input.u8().into()),
            _ => input.u16(),
        };
        ts[t] = match op >> 6 {
            0 => ts[t],
            1 => ts[t].wrapping_add(u32::from(input.u16())),
            2 => ts[t].wrapping_sub(u32::from(input.u8())),
            _ => input.u32(),
        };
        now += u64::from(input.u8() & 0x1F);
        let marker = input.bool();
        let payload = input.long();
        rec.push(&RtpIn {
            key,
            seq: seq[t],
            timestamp: ts[t],
            marker,
            payload,
            arrival_ms: now,
        })
        .expect("an in-memory sink never fails");
    }
    let (file, summary) = rec
        .finish(now + 1_000)
        .expect("an in-memory sink never fails");
    assert_eq!(summary.bytes, file.len() as u64);
    if file.is_empty() {
        return;
    }
    let mut f = Cursor::new(file);
    let s = scan(&mut f).expect("reading memory never fails");
    assert_eq!(
        s.complete_len,
        f.get_ref().len() as u64,
        "a finished file is complete"
    );
    assert!(s.has_tracks);
    assert!(patch_duration(&mut f, &s, s.duration_ms).expect("in memory"));
    let again = scan(&mut f).expect("reading memory never fails");
    assert_eq!(again.complete_len, s.complete_len);
    assert_eq!(again.duration_ms, s.duration_ms);
    assert!(again.duration_at.is_some());
}
