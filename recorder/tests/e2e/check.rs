//! The recording and the checks: packets fed into a recorder in arrival order, and
//! ffprobe/ffmpeg asked what the file holds and whether it decodes clean.

use super::*;

pub(crate) struct Recorded {
    pub(crate) summary: Summary,
    pub(crate) keyframe_requests: Vec<(u64, usize)>,
}

/// Feeds packets in arrival order (ticking every 100 ms) into a recorder writing to `file`.
pub(crate) fn record(file: &Path, tracks: Vec<TrackSpec>, mut pkts: Vec<Pkt>) -> Recorded {
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
pub(crate) fn json_values<'a>(json: &'a str, key: &str) -> Vec<&'a str> {
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

pub(crate) struct Probe {
    pub(crate) codecs: Vec<String>,
    /// Per stream: last packet end - first packet start, in seconds.
    pub(crate) packet_spans: Vec<(String, f64)>,
}

pub(crate) fn probe(file: &Path) -> Probe {
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

pub(crate) fn decodes_clean(file: &Path) {
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
pub(crate) fn patched_duration(file: &Path, summary: &Summary) -> f64 {
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

pub(crate) fn assert_lasts_3s(p: &Probe, summary: &Summary) {
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
