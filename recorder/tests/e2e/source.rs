//! Test media from ffmpeg: a 3 s test pattern and tone encoded, read back into frames (IVF,
//! Ogg Opus, H.264 Annex B) from a scratch directory removed afterwards.

use super::*;

pub(crate) fn ffmpeg_with(encoders: &[&str]) -> bool {
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

pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("consulta-recorder-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub(crate) fn path(&self, f: &str) -> PathBuf {
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

pub(crate) fn run_ffmpeg(args: &[&str]) {
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

/// Frames of an IVF file (32-byte header, then 12-byte frame headers).
pub(crate) fn read_ivf(path: &Path) -> Vec<Vec<u8>> {
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
pub(crate) fn read_ogg_opus(path: &Path) -> Vec<Vec<u8>> {
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
pub(crate) fn read_annexb_access_units(path: &Path) -> Vec<Vec<Vec<u8>>> {
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

/// Encodes 3 s of a 640x360 test pattern at 30 fps (a keyframe every second, 1 Mbit/s) with
/// `codec` (ffmpeg's video codec options) into `out`, a file of ffmpeg format `format`.
pub(crate) fn encode_test_video(out: &Path, codec: &[&str], format: &str) {
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
pub(crate) fn vp8_source(dir: &TempDir) -> Vec<Vec<u8>> {
    libvpx_source(dir, "libvpx", &["-auto-alt-ref", "0"])
}

/// The 3 s test pattern from a libvpx encoder (`libvpx` or `libvpx-vp9`) at real-time settings
/// with no frame lag, plus `extra` options, read back from IVF.
pub(crate) fn libvpx_source(dir: &TempDir, encoder: &str, extra: &[&str]) -> Vec<Vec<u8>> {
    let ivf = dir.path("video.ivf");
    let mut args = vec!["-c:v", encoder, "-deadline", "realtime", "-cpu-used", "8"];
    args.extend(["-lag-in-frames", "0"]);
    args.extend_from_slice(extra);
    encode_test_video(&ivf, &args, "ivf");
    read_ivf(&ivf)
}

pub(crate) fn opus_source(dir: &TempDir) -> Vec<Vec<u8>> {
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
