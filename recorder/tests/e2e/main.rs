//! End to end with real encoders and an independent decoder: ffmpeg encodes 3 s of test video
//! (VP8, VP9, H.264) and a 440 Hz tone (Opus); the test packetizes them into RTP as a browser
//! would, loses a few packets, records, and then asks ffprobe/ffmpeg whether the file holds the
//! expected streams, lasts 3 s and decodes without a single error.
//!
//! Skipped (with a message) when /usr/bin/ffmpeg is absent or lacks an encoder.

mod check;
mod packets;
mod source;

use std::collections::HashSet;
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use consulta_recorder::{Codec, Recorder, RtpIn, Summary, TrackSpec};

pub(crate) const FFMPEG: &str = "/usr/bin/ffmpeg";
pub(crate) const FFPROBE: &str = "/usr/bin/ffprobe";
/// Payload budget per RTP packet, like a browser's (~1200 minus headers).
pub(crate) const MTU: usize = 1000;
pub(crate) const START_MS: u64 = 50_000;

use check::*;
use packets::*;
use source::*;

/// Drops packet `part` of video frame `frame` and one audio packet, returning what was kept.
fn lose(pkts: Vec<Pkt>, video_key: u64, frame: usize, part: usize, audio_key: u64) -> Vec<Pkt> {
    let before = pkts.len();
    let kept: Vec<Pkt> = pkts
        .into_iter()
        .filter(|p| {
            !((p.key == video_key && p.frame == frame && p.part == part)
                || (p.key == audio_key && p.frame == 80))
        })
        .collect();
    assert_eq!(kept.len(), before - 2, "the chosen packets must exist");
    kept
}

/// After the start-up requests (frame 0), the only keyframe requests are `key`'s, the first of
/// them as soon as the gap shows (later in the damaged frame, or at the next one).
fn assert_loss_reported(rec: &Recorded, key: u64, lost_frame: usize) {
    let after_start: Vec<_> = rec
        .keyframe_requests
        .iter()
        .filter(|&&(_, f)| f > 0)
        .collect();
    assert!(
        !after_start.is_empty(),
        "no keyframe request after the loss"
    );
    assert!(after_start.iter().all(|&&(k, _)| k == key));
    let first = after_start[0].1;
    assert!(
        first == lost_frame || first == lost_frame + 1,
        "first request at frame {first}, loss in frame {lost_frame}"
    );
}

fn spec(key: u64, codec: Codec, name: &str) -> TrackSpec {
    TrackSpec {
        key,
        codec,
        name: name.into(),
    }
}

#[test]
fn vp8_and_opus_two_participants() {
    if !ffmpeg_with(&["libvpx", "libopus"]) {
        return;
    }
    let dir = TempDir::new("vp8");
    let video = vp8_source(&dir);
    let audio = opus_source(&dir);
    assert_eq!(video.len(), 90);
    assert!(video.iter().skip(45).take(3).any(|f| f.len() > MTU));

    // Doctor: loses the 2nd packet of frame 45 and audio packet 80. Patient: joins 150 ms
    // later, no loss.
    let mut pkts = vp8_packets(&video, 2, 40_000, 10);
    let lost_frame = (45..60).find(|&n| video[n].len() > MTU).unwrap();
    pkts.extend(opus_packets(&audio, 1, 5));
    pkts = lose(pkts, 2, lost_frame, 1, 1);
    pkts.extend(opus_packets(&audio, 3, 150));
    pkts.extend(vp8_packets(&video, 4, 65_000, 160));

    let file = dir.path("consultation.webm");
    let rec = record(
        &file,
        vec![
            spec(1, Codec::Opus, "doctor-audio"),
            spec(2, Codec::Vp8, "doctor-video"),
            spec(3, Codec::Opus, "patient-audio"),
            spec(4, Codec::Vp8, "patient-video"),
        ],
        pkts,
    );
    println!("summary: {:?}", rec.summary);
    let s = &rec.summary;
    // Frames from the damaged one up to the next keyframe (60) are gone, nothing else.
    assert_eq!(s.frames[&2], 90 - (60 - lost_frame as u64));
    assert_eq!(s.frames[&4], 90);
    assert_eq!(s.frames[&1], audio.len() as u64 - 1);
    assert_eq!(s.frames[&3], audio.len() as u64);
    assert_eq!(s.frames_dropped, 60 - lost_frame as u64);
    // Each video asks for a keyframe until its first one (frame 0); then the loss is reported
    // at once, on the doctor's video only.
    assert_eq!(&rec.keyframe_requests[..2], &[(2, 0), (4, 0)]);
    assert_loss_reported(&rec, 2, lost_frame);

    let p = probe(&file);
    assert_eq!(p.codecs, vec!["opus", "vp8", "opus", "vp8"]);
    assert_lasts_3s(&p, s);
    decodes_clean(&file);
    patched_duration(&file, s);
    let head = fs::read(&file).unwrap();
    assert!(head.windows(4).any(|w| w == b"webm"));
}

#[test]
fn h264_and_opus() {
    if !ffmpeg_with(&["libx264", "libopus"]) {
        return;
    }
    let dir = TempDir::new("h264");
    let es = dir.path("video.h264");
    encode_test_video(
        &es,
        &[
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-bf",
            "0",
            "-threads",
            "1",
        ],
        "h264",
    );
    let aus = read_annexb_access_units(&es);
    let audio = opus_source(&dir);
    assert_eq!(aus.len(), 90);
    // Chrome-like keyframes: SPS, PPS (and x264's SEI), IDR.
    let types: HashSet<u8> = aus[0].iter().map(|n| n[0] & 0x1F).collect();
    assert!(types.contains(&7) && types.contains(&8) && types.contains(&5));

    let mut pkts = h264_packets(&aus, 2, 10);
    let lost_frame = (40..60)
        .find(|&n| pkts.iter().filter(|p| p.frame == n).count() > 2)
        .unwrap();
    pkts.extend(opus_packets(&audio, 1, 5));
    pkts = lose(pkts, 2, lost_frame, 1, 1);

    let file = dir.path("consultation.mkv");
    let rec = record(
        &file,
        vec![
            spec(1, Codec::Opus, "doctor-audio"),
            spec(2, Codec::H264, "doctor-video"),
        ],
        pkts,
    );
    println!("summary: {:?}", rec.summary);
    let s = &rec.summary;
    assert_eq!(s.frames[&2], 90 - (60 - lost_frame as u64));
    assert_eq!(s.frames[&1], audio.len() as u64 - 1);
    assert_loss_reported(&rec, 2, lost_frame);

    let p = probe(&file);
    assert_eq!(p.codecs, vec!["opus", "h264"]);
    assert_lasts_3s(&p, s);
    decodes_clean(&file);
    patched_duration(&file, s);
}

#[test]
fn vp9_and_opus() {
    if !ffmpeg_with(&["libvpx-vp9", "libopus"]) {
        return;
    }
    let dir = TempDir::new("vp9");
    let video = libvpx_source(&dir, "libvpx-vp9", &[]);
    let audio = opus_source(&dir);
    assert_eq!(video.len(), 90);
    assert!(vp9_is_key(&video[0]) && vp9_is_key(&video[30]) && !vp9_is_key(&video[1]));

    let mut pkts = vp9_packets(&video, 2, (640, 360), 10);
    let lost_frame = (40..60)
        .find(|&n| pkts.iter().filter(|p| p.frame == n).count() > 1)
        .unwrap();
    pkts.extend(opus_packets(&audio, 1, 5));
    pkts = lose(pkts, 2, lost_frame, 0, 1);

    let file = dir.path("consultation.webm");
    let rec = record(
        &file,
        vec![
            spec(1, Codec::Opus, "doctor-audio"),
            spec(2, Codec::Vp9, "doctor-video"),
        ],
        pkts,
    );
    println!("summary: {:?}", rec.summary);
    let s = &rec.summary;
    assert_eq!(s.frames[&2], 90 - (60 - lost_frame as u64));
    assert_loss_reported(&rec, 2, lost_frame);

    let p = probe(&file);
    assert_eq!(p.codecs, vec!["opus", "vp9"]);
    assert_lasts_3s(&p, s);
    decodes_clean(&file);
    patched_duration(&file, s);
}

/// Cameras (and Chrome under load) do not capture on an exact grid: some frames come 20 ms
/// after the one before, others 45 ms. The file must still decode with `ffmpeg -f null`, whose
/// encoder clock is the stream's guessed frame rate: two frames must never fall into one slot.
#[test]
fn video_with_irregular_capture_times_decodes_clean() {
    if !ffmpeg_with(&["libvpx", "libopus"]) {
        return;
    }
    let dir = TempDir::new("vfr");
    let video = vp8_source(&dir);
    let audio = opus_source(&dir);
    // 30 frames a second, but every tenth frame was captured early: 13 to 23 ms after the
    // one before it (as seen from Chrome under load), the next one correspondingly late.
    let ticks = |n: usize| -> u32 {
        let early = match n % 10 {
            5 => 900 + 90 * (n as u32 % 3) * 5,
            _ => 0,
        };
        n as u32 * 3000 - early
    };
    let mut pkts: Vec<Pkt> = vp8_packets(&video, 2, 100, 10)
        .into_iter()
        .map(|mut p| {
            p.ts = 777_000 + ticks(p.frame);
            p.arrival_ms = START_MS + 10 + u64::from(ticks(p.frame)) / 90 + p.part as u64 / 3;
            p
        })
        .collect();
    pkts.extend(opus_packets(&audio, 1, 5));
    let file = dir.path("vfr.webm");
    let rec = record(
        &file,
        vec![
            spec(1, Codec::Opus, "doctor-audio"),
            spec(2, Codec::Vp8, "doctor-video"),
        ],
        pkts,
    );
    // Every frame is kept, at its own time.
    assert_eq!(rec.summary.frames[&2], video.len() as u64);
    let p = probe(&file);
    assert_eq!(p.codecs, vec!["opus", "vp8"]);
    decodes_clean(&file);
}
