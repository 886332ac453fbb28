//! The recorder thread of one running recording: tapped RTP in, a spooled WebM out.
//!
//! It waits a short moment after the first track appears so the tracks of everyone present
//! make it into the file's header, then hands packets to `consulta-recorder`. A track that
//! shows up later (someone starts publishing) closes the file and opens the next one with every
//! track. Losing video makes it ask the publisher for a keyframe, through the worker's
//! throttle. It never blocks the worker: the tap is a bounded queue the worker drops into.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consulta_recorder::{Codec, Recorder, RtpIn, TrackSpec};
use consulta_sfu::{SfuHandle, TapEvent, TrackKind};
use serde_json::json;

use super::spool::{Meta, SpoolFile};
use super::upload::Notice;
use super::{RecordingStats, Settings, StopNotice};

/// How long after the first track the header waits for the others.
const GATHER: Duration = Duration::from_millis(1500);
/// Packets held while gathering (beyond: dropped and counted).
const GATHER_MAX: usize = 8192;

pub struct Context {
    pub room: String,
    pub first_id: String,
    pub settings: Arc<Settings>,
    pub stats: Arc<RecordingStats>,
    pub sfu: SfuHandle,
    pub worker: usize,
    pub rx: crossbeam_channel::Receiver<TapEvent>,
    pub uploader: tokio::sync::mpsc::UnboundedSender<Notice>,
    pub on_stop: StopNotice,
}

struct Track {
    peer: consulta_sfu::PeerId,
    mid: str0m::media::Mid,
    identity: String,
    role: String,
    kind: TrackKind,
    codec: Codec,
}

struct Held {
    key: u64,
    seq: u16,
    timestamp: u32,
    marker: bool,
    payload: Arc<[u8]>,
    arrival: u64,
}

struct Segment {
    meta: Meta,
    rec: Recorder<SpoolFile>,
    keys: Vec<u64>,
}

fn codec_of(c: Option<str0m::format::Codec>) -> Option<Codec> {
    use str0m::format::Codec as S;
    match c? {
        S::Opus => Some(Codec::Opus),
        S::Vp8 => Some(Codec::Vp8),
        S::Vp9 => Some(Codec::Vp9),
        S::H264 => Some(Codec::H264),
        _ => None,
    }
}

pub fn run(ctx: Context) {
    let epoch = Instant::now();
    let ms = |t: Instant| t.saturating_duration_since(epoch).as_millis() as u64;
    ctx.stats.active.fetch_add(1, Ordering::Relaxed);
    // Declared before the file so that, unwinding, the file is closed (its buffer flushed)
    // before the uploader is told to repair it.
    let mut guard = Unwinding {
        ctx: &ctx,
        file: None,
    };
    let mut tracks: BTreeMap<u64, Track> = BTreeMap::new();
    let mut held: Vec<Held> = Vec::new();
    let mut gather_until: Option<u64> = None;
    let mut current: Option<Segment> = None;
    let mut next_id = Some(ctx.first_id.clone());
    let mut rotate = false;
    let mut stop_reason: Option<&'static str> = None;
    loop {
        match ctx.rx.recv_timeout(Duration::from_millis(100)) {
            Ok(TapEvent::Track {
                key,
                peer,
                mid,
                identity,
                role,
                kind,
                codec,
            }) => {
                let Some(codec) = codec_of(codec) else {
                    tracing::warn!(?codec, "a track's codec cannot be recorded; it is left out");
                    continue;
                };
                tracks.insert(
                    key,
                    Track {
                        peer,
                        mid,
                        identity,
                        role,
                        kind,
                        codec,
                    },
                );
                if current.is_some() {
                    rotate = true;
                }
            }
            Ok(TapEvent::Packet {
                key,
                seq,
                timestamp,
                marker,
                payload,
                arrival,
            }) => {
                let arrival = ms(arrival);
                match current.as_mut() {
                    Some(seg) if seg.keys.contains(&key) => {
                        let pkt = RtpIn {
                            key,
                            seq,
                            timestamp,
                            marker,
                            payload: &payload,
                            arrival_ms: arrival,
                        };
                        match seg.rec.push(&pkt) {
                            Ok(out) => {
                                if let Some(k) = out.keyframe_wanted {
                                    ask_keyframe(&ctx, &tracks, k);
                                }
                            }
                            Err(e) => {
                                stop_reason = Some(failure(&ctx, seg, &e));
                                break;
                            }
                        }
                    }
                    _ if tracks.contains_key(&key) => {
                        if held.len() < GATHER_MAX {
                            held.push(Held {
                                key,
                                seq,
                                timestamp,
                                marker,
                                payload,
                                arrival,
                            });
                        } else {
                            ctx.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
        let now = ms(Instant::now());
        // The recorder's clock follows packet arrivals while they flow; the wall clock only
        // when the queue is idle (a backlog of older packets must not find the clock ahead).
        let idle = ctx.rx.is_empty();
        if current.is_none() && !tracks.is_empty() && gather_until.is_none() {
            gather_until = Some(now + GATHER.as_millis() as u64);
        }
        let open_now = match (&current, gather_until) {
            (None, Some(t)) => now >= t,
            (Some(_), _) => rotate,
            _ => false,
        };
        if open_now {
            if let Some(seg) = current.take() {
                close(&ctx, seg, now);
                guard.file = None;
            }
            rotate = false;
            let id = next_id.take().unwrap_or_else(super::recording_id);
            // The file's time zero is the first packet it holds.
            let start = held.iter().map(|h| h.arrival).min().unwrap_or(now);
            match open(&ctx, &id, &tracks, start) {
                Ok(mut seg) => {
                    for h in held.drain(..) {
                        let pkt = RtpIn {
                            key: h.key,
                            seq: h.seq,
                            timestamp: h.timestamp,
                            marker: h.marker,
                            payload: &h.payload,
                            arrival_ms: h.arrival,
                        };
                        if let Err(e) = seg.rec.push(&pkt) {
                            stop_reason = Some(failure(&ctx, &seg, &e));
                            break;
                        }
                    }
                    for (k, t) in &tracks {
                        if t.kind == TrackKind::Video {
                            ask_keyframe(&ctx, &tracks, *k);
                        }
                    }
                    guard.file = Some(seg.meta.id.clone());
                    current = Some(seg);
                    if stop_reason.is_some() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot open a recording file in the spool");
                    stop_reason = Some("spool_error");
                    break;
                }
            }
        }
        if let (Some(seg), true) = (current.as_mut(), idle) {
            if let Err(e) = seg.rec.tick(now) {
                stop_reason = Some(failure(&ctx, seg, &e));
                break;
            }
        }
    }
    if let Some(seg) = current.take() {
        close(&ctx, seg, ms(Instant::now()));
    }
    guard.file = None;
    drop(guard);
    ctx.stats.active.fetch_sub(1, Ordering::Relaxed);
    if let Some(reason) = stop_reason {
        (ctx.on_stop)(ctx.room.clone(), ctx.first_id.clone(), reason);
    }
}

/// A bug in the recorder must not lose the call: if the thread panics, the file it was
/// writing goes to the uploader as if the server had crashed (cut at its last complete
/// cluster, Duration patched, uploaded), and the consultation hears the recording stopped.
struct Unwinding<'a> {
    ctx: &'a Context,
    file: Option<String>,
}

impl Drop for Unwinding<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        tracing::error!("the recorder failed; what it wrote is repaired and uploaded");
        if let Some(id) = self.file.take() {
            let _ = self.ctx.uploader.send(Notice::Closed(id));
        }
        self.ctx.stats.active.fetch_sub(1, Ordering::Relaxed);
        (self.ctx.on_stop)(
            self.ctx.room.clone(),
            self.ctx.first_id.clone(),
            "recorder_error",
        );
    }
}

/// What a failed write means: the spool is full, or the disk failed.
fn failure(ctx: &Context, seg: &Segment, e: &consulta_recorder::RecorderError) -> &'static str {
    if seg.rec.sink().full {
        ctx.stats.spool_full.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            limit = ctx.settings.max_spool_bytes,
            "recording spool is full (recording.max_spool_bytes): the recording stops; check the S3 store"
        );
        "spool_full"
    } else {
        tracing::error!(error = %e, "cannot write the recording spool; the recording stops");
        "spool_error"
    }
}

fn ask_keyframe(ctx: &Context, tracks: &BTreeMap<u64, Track>, key: u64) {
    if let Some(t) = tracks.get(&key) {
        let _ = ctx.sfu.send(
            ctx.worker,
            consulta_sfu::Command::RequestKeyframe {
                peer: t.peer,
                mid: t.mid,
            },
        );
    }
}

fn open(
    ctx: &Context,
    id: &str,
    tracks: &BTreeMap<u64, Track>,
    now: u64,
) -> std::io::Result<Segment> {
    let h264 = tracks.values().any(|t| t.codec == Codec::H264);
    let meta = Meta {
        id: id.to_owned(),
        consultation: ctx.room.clone(),
        ext: if h264 { "mkv" } else { "webm" }.into(),
        state: "recording".into(),
        created_at: crate::unix_millis(),
        tracks: tracks
            .values()
            .map(|t| {
                json!({
                    "identity": t.identity,
                    "role": t.role,
                    "kind": t.kind,
                    "codec": format!("{:?}", t.codec).to_lowercase(),
                })
            })
            .collect(),
        upload_id: None,
        parts: Vec::new(),
        size: None,
        duration_ms: None,
        sha256: None,
    };
    meta.save(&ctx.settings.spool_dir)?;
    let file = SpoolFile::create(
        &meta.data_path(&ctx.settings.spool_dir),
        ctx.stats.clone(),
        ctx.settings.max_spool_bytes,
    )?;
    let specs = tracks
        .iter()
        .map(|(k, t)| TrackSpec {
            key: *k,
            codec: t.codec,
            name: format!(
                "{}-{}",
                t.role,
                match t.kind {
                    TrackKind::Audio => "audio",
                    TrackKind::Video => "video",
                }
            ),
        })
        .collect();
    let _ = ctx.uploader.send(Notice::Opened(meta.id.clone()));
    Ok(Segment {
        keys: tracks.keys().copied().collect(),
        rec: Recorder::new(file, specs, now),
        meta,
    })
}

/// Ends a file and hands it to the uploader (or drops it when nothing was recorded).
fn close(ctx: &Context, seg: Segment, now: u64) {
    let dir = &ctx.settings.spool_dir;
    let wrote_header = seg.rec.header_written();
    let id = seg.meta.id.clone();
    match seg.rec.finish(now) {
        Ok((mut file, summary)) => {
            ctx.stats
                .frames_dropped
                .fetch_add(summary.frames_dropped, Ordering::Relaxed);
            if let Err(e) = file.sync() {
                tracing::error!(error = %e, "cannot flush the recording spool");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "recording file ended early; keeping what is complete")
        }
    }
    if !wrote_header {
        // Nothing was recorded (no media arrived): no empty object.
        let data = seg.meta.data_path(dir);
        let size = std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
        let _ = std::fs::remove_file(&data);
        let _ = std::fs::remove_file(Meta::meta_path(dir, &id));
        ctx.stats.release_spool(size);
        return;
    }
    let _ = ctx.uploader.send(Notice::Closed(id));
}
