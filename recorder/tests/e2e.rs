//! End to end with real encoders and an independent decoder: ffmpeg encodes 3 s of test video
//! (VP8, VP9, H.264) and a 440 Hz tone (Opus); the test packetizes them into RTP as a browser
//! would, loses a few packets, records, and then asks ffprobe/ffmpeg whether the file holds the
//! expected streams, lasts 3 s and decodes without a single error.
//!
//! Skipped (with a message) when /usr/bin/ffmpeg is absent or lacks an encoder.

use std::collections::HashSet;
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use consulta_recorder::{Codec, Recorder, RtpIn, Summary, TrackSpec};

const FFMPEG: &str = "/usr/bin/ffmpeg";
const FFPROBE: &str = "/usr/bin/ffprobe";
/// Payload budget per RTP packet, like a browser's (~1200 minus headers).
const MTU: usize = 1000;
const START_MS: u64 = 50_000;

fn ffmpeg_with(encoders: &[&str]) -> bool {
    if !Path::new(FFMPEG).exists() || !Path::new(FFPROBE).exists() {
        eprintln!("SKIPPED: {FFMPEG} or {FFPROBE} is not installed");
        return false;
    }
    let out = Command::new(FFMPEG)
        .args(["-hide_banner", "-encoders"])
        .output()
        .expect("run ffmpeg -encoders");
    let list = String::from_utf8_lossy(&out.stdout);
    for e in encoders {
        if !list.split_whitespace().any(|w| w == *e) {
            eprintln!("SKIPPED: ffmpeg has no {e} encoder");
            return false;
        }
    }
    true
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("consulta-recorder-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // CONSULTA_RECORDER_KEEP=1 keeps the recordings for a look with other tools.
        let keep = std::env::var_os("CONSULTA_RECORDER_KEEP").is_some();
        if std::thread::panicking() || keep {
            eprintln!("keeping {} for inspection", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

fn run_ffmpeg(args: &[&str]) {
    let out = Command::new(FFMPEG)
        .args(["-v", "error", "-y"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------- media sources ----------

/// Frames of an IVF file (32-byte header, then 12-byte frame headers).
fn read_ivf(path: &Path) -> Vec<Vec<u8>> {
    let d = fs::read(path).unwrap();
    assert_eq!(&d[..4], b"DKIF");
    let header_len = u16::from_le_bytes([d[6], d[7]]) as usize;
    let mut pos = header_len;
    let mut frames = Vec::new();
    while pos + 12 <= d.len() {
        let size = u32::from_le_bytes(d[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 12;
        frames.push(d[pos..pos + size].to_vec());
        pos += size;
    }
    frames
}

/// Opus packets of an Ogg file, minus the OpusHead and OpusTags header packets.
fn read_ogg_opus(path: &Path) -> Vec<Vec<u8>> {
    let d = fs::read(path).unwrap();
    let mut pos = 0;
    let mut packets = Vec::new();
    let mut cur = Vec::new();
    while pos + 27 <= d.len() {
        assert_eq!(&d[pos..pos + 4], b"OggS");
        let nsegs = d[pos + 26] as usize;
        let table = &d[pos + 27..pos + 27 + nsegs];
        let mut body = pos + 27 + nsegs;
        for &len in table {
            cur.extend_from_slice(&d[body..body + len as usize]);
            body += len as usize;
            if len < 255 {
                packets.push(std::mem::take(&mut cur));
            }
        }
        pos = body;
    }
    assert!(packets[0].starts_with(b"OpusHead"));
    assert!(packets[1].starts_with(b"OpusTags"));
    packets.split_off(2)
}

/// Access units of an Annex B H.264 stream; x264 with one thread writes one slice per picture,
/// so a picture ends at its slice.
fn read_annexb_access_units(path: &Path) -> Vec<Vec<Vec<u8>>> {
    let d = fs::read(path).unwrap();
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= d.len() {
        if d[i] == 0 && d[i + 1] == 0 && d[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(d.len(), |&n| n - 3);
        while end > s && d[end - 1] == 0 {
            end -= 1; // the 4-byte start code's leading zero, or trailing_zero_8bits
        }
        nals.push(d[s..end].to_vec());
    }
    let mut aus = Vec::new();
    let mut cur = Vec::new();
    for nal in nals {
        let t = nal[0] & 0x1F;
        if t == 9 {
            continue;
        }
        cur.push(nal);
        if t == 1 || t == 5 {
            aus.push(std::mem::take(&mut cur));
        }
    }
    aus
}

// ---------- RTP packetizers (the sender side) ----------

#[derive(Clone)]
struct Pkt {
    key: u64,
    seq: u16,
    ts: u32,
    marker: bool,
    payload: Vec<u8>,
    arrival_ms: u64,
    /// (frame index, packet index within the frame), for picking losses.
    frame: usize,
    part: usize,
}

fn vp8_packets(frames: &[Vec<u8>], key: u64, seq0: u16, delay_ms: u64) -> Vec<Pkt> {
    let mut out = Vec::new();
    let mut seq = seq0;
    for (n, f) in frames.iter().enumerate() {
        let pid = (n as u16 + 1234) & 0x7FFF;
        let chunks: Vec<_> = f.chunks(MTU).collect();
        for (j, c) in chunks.iter().enumerate() {
            // X=1, S on the first packet; I=1 with a 15-bit PictureID.
            let mut p = vec![if j == 0 { 0x90 } else { 0x80 }, 0x80];
            p.extend_from_slice(&(0x8000 | pid).to_be_bytes());
            p.extend_from_slice(c);
            out.push(Pkt {
                key,
                seq,
                ts: (n as u32) * 3000 + 777_000,
                marker: j == chunks.len() - 1,
                payload: p,
                arrival_ms: START_MS + delay_ms + (n as u64 * 1000) / 30 + j as u64 / 3,
                frame: n,
                part: j,
            });
            seq = seq.wrapping_add(1);
        }
    }
    out
}

fn vp9_is_key(frame: &[u8]) -> bool {
    // Profile 0: frame_marker(2) profile(2) show_existing_frame(1) frame_type(1).
    frame[0] & 0xC0 == 0x80 && frame[0] & 0x0C == 0
}

fn vp9_packets(frames: &[Vec<u8>], key: u64, size: (u16, u16), delay_ms: u64) -> Vec<Pkt> {
    let mut out = Vec::new();
    let mut seq = 65_500u16; // wraps during the call
    for (n, f) in frames.iter().enumerate() {
        let pid = (n as u16 + 32_000) & 0x7FFF;
        let is_key = vp9_is_key(f);
        let chunks: Vec<_> = f.chunks(MTU).collect();
        for (j, c) in chunks.iter().enumerate() {
            let first = j == 0;
            let last = j == chunks.len() - 1;
            let mut b0 = 0x80; // I
            if !is_key {
                b0 |= 0x40; // P
            }
            if first {
                b0 |= 0x08; // B
            }
            if last {
                b0 |= 0x04; // E
            }
            if first && is_key {
                b0 |= 0x02; // V: scalability structure on key frames
            }
            let mut p = vec![b0];
            p.extend_from_slice(&(0x8000 | pid).to_be_bytes());
            if first && is_key {
                p.push(0x10); // N_S = 0 (one layer), Y = 1
                p.extend_from_slice(&size.0.to_be_bytes());
                p.extend_from_slice(&size.1.to_be_bytes());
            }
            p.extend_from_slice(c);
            out.push(Pkt {
                key,
                seq,
                ts: (n as u32)
                    .wrapping_mul(3000)
                    .wrapping_add(u32::MAX - 60_000),
                marker: last,
                payload: p,
                arrival_ms: START_MS + delay_ms + (n as u64 * 1000) / 30,
                frame: n,
                part: j,
            });
            seq = seq.wrapping_add(1);
        }
    }
    out
}

fn h264_packets(aus: &[Vec<Vec<u8>>], key: u64, delay_ms: u64) -> Vec<Pkt> {
    let mut out = Vec::new();
    let mut seq = 100u16;
    for (n, au) in aus.iter().enumerate() {
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        let mut stap: Vec<&Vec<u8>> = Vec::new();
        let flush = |stap: &mut Vec<&Vec<u8>>, payloads: &mut Vec<Vec<u8>>| match stap.len() {
            0 => {}
            1 => payloads.push(stap.remove(0).clone()),
            _ => {
                let nri = stap.iter().map(|n| n[0] & 0x60).max().unwrap();
                let mut p = vec![nri | 24];
                for nal in stap.drain(..) {
                    p.extend_from_slice(&(nal.len() as u16).to_be_bytes());
                    p.extend_from_slice(nal);
                }
                payloads.push(p);
            }
        };
        for nal in au {
            if nal.len() > MTU {
                flush(&mut stap, &mut payloads);
                let (hdr, body) = (nal[0], &nal[1..]);
                let parts: Vec<_> = body.chunks(MTU).collect();
                for (j, part) in parts.iter().enumerate() {
                    let mut fu = hdr & 0x1F;
                    if j == 0 {
                        fu |= 0x80;
                    }
                    if j == parts.len() - 1 {
                        fu |= 0x40;
                    }
                    let mut p = vec![(hdr & 0xE0) | 28, fu];
                    p.extend_from_slice(part);
                    payloads.push(p);
                }
            } else {
                let pending: usize = stap.iter().map(|n| n.len() + 2).sum();
                if pending + nal.len() + 3 > MTU {
                    flush(&mut stap, &mut payloads);
                }
                stap.push(nal);
            }
        }
        flush(&mut stap, &mut payloads);
        let count = payloads.len();
        for (j, p) in payloads.into_iter().enumerate() {
            out.push(Pkt {
                key,
                seq,
                ts: (n as u32) * 3000,
                marker: j == count - 1,
                payload: p,
                arrival_ms: START_MS + delay_ms + (n as u64 * 1000) / 30,
                frame: n,
                part: j,
            });
            seq = seq.wrapping_add(1);
        }
    }
    out
}

fn opus_packets(frames: &[Vec<u8>], key: u64, delay_ms: u64) -> Vec<Pkt> {
    frames
        .iter()
        .enumerate()
        .map(|(n, f)| Pkt {
            key,
            seq: (n as u16).wrapping_add(9_000),
            ts: (n as u32) * 960 + 12_345,
            marker: n == 0,
            payload: f.clone(),
            // A little jitter: audio never arrives on an exact grid.
            arrival_ms: START_MS + delay_ms + n as u64 * 20 + (n as u64 * 7) % 5,
            frame: n,
            part: 0,
        })
        .collect()
}

// ---------- the recording and the checks ----------

struct Recorded {
    summary: Summary,
    keyframe_requests: Vec<(u64, usize)>,
}

/// Feeds packets in arrival order (ticking every 100 ms) into a recorder writing to `file`.
fn record(file: &Path, tracks: Vec<TrackSpec>, mut pkts: Vec<Pkt>) -> Recorded {
    pkts.sort_by_key(|p| p.arrival_ms);
    let sink = BufWriter::new(fs::File::create(file).unwrap());
    let mut rec = Recorder::new(sink, tracks, START_MS);
    let mut next_tick = START_MS;
    let mut keyframe_requests = Vec::new();
    for p in &pkts {
        while next_tick <= p.arrival_ms {
            rec.tick(next_tick).unwrap();
            next_tick += 100;
        }
        let o = rec
            .push(&RtpIn {
                key: p.key,
                seq: p.seq,
                timestamp: p.ts,
                marker: p.marker,
                payload: &p.payload,
                arrival_ms: p.arrival_ms,
            })
            .unwrap();
        if let Some(k) = o.keyframe_wanted {
            keyframe_requests.push((k, p.frame));
        }
    }
    let end = pkts.last().map_or(START_MS, |p| p.arrival_ms) + 500;
    let (sink, summary) = rec.finish(end).unwrap();
    drop(sink.into_inner().unwrap());
    assert_eq!(fs::metadata(file).unwrap().len(), summary.bytes);
    Recorded {
        summary,
        keyframe_requests,
    }
}

/// `"key": value` pairs of ffprobe's JSON (flat enough for what is checked here).
fn json_values<'a>(json: &'a str, key: &str) -> Vec<&'a str> {
    let pat = format!("\"{key}\": ");
    json.match_indices(&pat)
        .map(|(i, _)| {
            let rest = &json[i + pat.len()..];
            if let Some(quoted) = rest.strip_prefix('"') {
                &quoted[..quoted.find('"').unwrap_or(quoted.len())]
            } else {
                let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
                rest[..end].trim()
            }
        })
        .collect()
}

struct Probe {
    codecs: Vec<String>,
    /// Per stream: last packet end - first packet start, in seconds.
    packet_spans: Vec<(String, f64)>,
}

fn probe(file: &Path) -> Probe {
    let out = Command::new(FFPROBE)
        .args([
            "-v",
            "error",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
        ])
        .arg(file)
        .output()
        .unwrap();
    let json = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "ffprobe: {stderr}"
    );
    println!("ffprobe -show_streams -show_format of {}:", file.display());
    for key in [
        "codec_name",
        "width",
        "height",
        "sample_rate",
        "channels",
        "duration",
        "format_name",
        "nb_streams",
    ] {
        println!("  {key}: {:?}", json_values(&json, key));
    }
    let codecs = json_values(&json, "codec_name")
        .into_iter()
        .map(String::from)
        .collect();

    // The segment has no Duration element (the sink cannot seek back to write one), so the
    // stream/format "duration" fields may be absent: then the packets tell how long it lasts.
    let out = Command::new(FFPROBE)
        .args([
            "-v",
            "error",
            "-show_entries",
            "packet=stream_index,pts_time,duration_time",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut spans: Vec<(f64, f64)> = Vec::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let f: Vec<&str> = line.split(',').collect();
        let idx: usize = f[0].parse().unwrap();
        let pts: f64 = f[1].parse().unwrap();
        let dur: f64 = f.get(2).and_then(|d| d.parse().ok()).unwrap_or(0.0);
        if spans.len() <= idx {
            spans.resize(idx + 1, (f64::MAX, f64::MIN));
        }
        let s = &mut spans[idx];
        s.0 = s.0.min(pts);
        s.1 = s.1.max(pts + dur);
    }
    let mut packet_spans = Vec::new();
    for (i, (a, b)) in spans.iter().enumerate() {
        let name = json_values(&json, "codec_name")
            .get(i)
            .map_or(String::new(), |s| s.to_string());
        println!("  packets of stream {i} ({name}): {a:.3} s .. {b:.3} s");
        packet_spans.push((name, b - a));
    }
    let durations = json_values(&json, "duration");
    for d in &durations {
        let d: f64 = d.parse().unwrap();
        assert!((d - 3.0).abs() <= 0.5, "duration field {d}");
    }
    println!(
        "  duration fields present: {}",
        if durations.is_empty() {
            "none (no Duration element)"
        } else {
            "yes"
        }
    );
    Probe {
        codecs,
        packet_spans,
    }
}

fn decodes_clean(file: &Path) {
    let out = Command::new(FFMPEG)
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stderr.is_empty() && stdout.is_empty(),
        "ffmpeg decode of {}: status {:?}\n{stderr}{stdout}",
        file.display(),
        out.status
    );
    println!("ffmpeg -v error -i FILE -f null -: exit 0, no output");
}

/// Applies the optional Duration patch to a copy of the recording; ffprobe must then report a
/// format duration of 3 s.
fn patched_duration(file: &Path, summary: &Summary) -> f64 {
    let mut bytes = std::io::Cursor::new(fs::read(file).unwrap());
    let scan = consulta_recorder::scan::scan(&mut bytes).unwrap();
    assert!(
        scan.duration_slot.is_some(),
        "the header reserves a Void for the Duration"
    );
    assert!(
        (summary.duration_ms..=summary.duration_ms + 200).contains(&scan.duration_ms),
        "scan {} ms vs recorder {} ms",
        scan.duration_ms,
        summary.duration_ms
    );
    assert!(consulta_recorder::scan::patch_duration(&mut bytes, &scan, scan.duration_ms).unwrap());
    let copy = file.with_extension("patched.mkv");
    fs::write(&copy, bytes.into_inner()).unwrap();
    let out = Command::new(FFPROBE)
        .args(["-v", "error", "-show_format", "-of", "json"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success() && out.stderr.is_empty());
    let json = String::from_utf8(out.stdout).unwrap();
    let d: f64 = json_values(&json, "duration")[0].parse().unwrap();
    println!("  after the optional Duration patch: format duration {d}");
    assert!((d - 3.0).abs() <= 0.5, "patched duration {d}");
    decodes_clean(&copy);
    d
}

fn assert_lasts_3s(p: &Probe, summary: &Summary) {
    for (name, span) in &p.packet_spans {
        assert!(
            (span - 3.0).abs() <= 0.5,
            "{name} stream lasts {span:.3} s, not 3 s"
        );
    }
    assert!(
        summary.duration_ms.abs_diff(3000) <= 500,
        "summary duration {}",
        summary.duration_ms
    );
}

/// Encodes 3 s of a 640x360 test pattern at 30 fps (a keyframe every second, 1 Mbit/s) with
/// `codec` (ffmpeg's video codec options) into `out`, a file of ffmpeg format `format`.
fn encode_test_video(out: &Path, codec: &[&str], format: &str) {
    let mut args = vec![
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=640x360:rate=30",
        "-t",
        "3",
        "-pix_fmt",
        "yuv420p",
    ];
    args.extend_from_slice(codec);
    args.extend_from_slice(&["-g", "30", "-b:v", "1M", "-f", format]);
    args.push(out.to_str().unwrap());
    run_ffmpeg(&args);
}

/// 3 s of 640x360 VP8 at 30 fps from libvpx (real-time settings, a keyframe every second).
fn vp8_source(dir: &TempDir) -> Vec<Vec<u8>> {
    libvpx_source(dir, "libvpx", &["-auto-alt-ref", "0"])
}

/// The 3 s test pattern from a libvpx encoder (`libvpx` or `libvpx-vp9`) at real-time settings
/// with no frame lag, plus `extra` options, read back from IVF.
fn libvpx_source(dir: &TempDir, encoder: &str, extra: &[&str]) -> Vec<Vec<u8>> {
    let ivf = dir.path("video.ivf");
    let mut args = vec!["-c:v", encoder, "-deadline", "realtime", "-cpu-used", "8"];
    args.extend(["-lag-in-frames", "0"]);
    args.extend_from_slice(extra);
    encode_test_video(&ivf, &args, "ivf");
    read_ivf(&ivf)
}

fn opus_source(dir: &TempDir) -> Vec<Vec<u8>> {
    let ogg = dir.path("tone.ogg");
    run_ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=3",
        "-c:a",
        "libopus",
        "-frame_duration",
        "20",
        "-b:a",
        "32k",
        "-f",
        "ogg",
        ogg.to_str().unwrap(),
    ]);
    let frames = read_ogg_opus(&ogg);
    assert!((148..=152).contains(&frames.len()), "{}", frames.len());
    frames
}

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
