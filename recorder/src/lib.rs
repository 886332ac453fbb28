//! Consulta's recorder: RTP packets of one consultation's tracks in, one Matroska/WebM file out,
//! written progressively to an append-only sink while the call runs.
//!
//! The crate is synchronous and does no I/O of its own beyond `Write` on the sink: the caller
//! owns sockets, threads and clocks, and passes its clock in (`arrival_ms`, `now_ms`).
//!
//! # Files
//! - `depack.rs`: RTP payloads → frames (Opus, VP8, VP9 spatial layer 0, H.264 mode 1).
//! - `h264.rs`: SPS size parsing and the `avcC` record; `bits.rs`: the checked bit reader.
//! - `mkv.rs`: the EBML writer (header, clusters, cues); its docs show the file layout.
//! - `clock.rs`: a track's RTP clock and sequence steps; `queue.rs`: the interleaving queue.
//! - `lib.rs` (this file): the API, per-track loss handling, the header and cluster policy.
//!
//! # Pipeline
//! ```text
//! push ─► sequence check ─► RTP clock ─► depacketizer ─► keyframe gate ─► queue (by time)
//!                                                                           │  released when
//!                                                                           ▼  older than clock - 250 ms
//!                                              sink ◄── cluster (in memory, written whole)
//! ```
//!
//! # Timing choices
//! - **Clock.** Each track is anchored at its first packet: its RTP time is mapped onto the
//!   caller's arrival clock, `t = first_arrival - start + (rtp - first_rtp) / rate`. Without
//!   RTCP sender reports this is the best cross-track alignment available; it is off by the
//!   first packet's network delay difference (tens of ms). A track whose RTP time drifts more
//!   than 5 s from arrival time (a sender restart, a new SSRC behind the same key) is re-anchored
//!   instead of leaving an hours-long hole in the file.
//! - **Header.** Written once every video track has a complete keyframe (so its size and
//!   `avcC` are known) and every audio track has a frame, or 3 s after `start_ms`, whichever
//!   comes first. Frames before that are queued (at most 3 s / 8 MiB).
//! - **Interleaving.** Frames complete at different times (a video frame when its last packet
//!   arrives), so they wait in a time-ordered queue and are written once the caller's clock is
//!   250 ms past them. That keeps blocks of all tracks in timestamp order in the file without
//!   buffering more than a fraction of a second.
//! - **Clusters.** One cluster is assembled in memory and written whole when it closes, so its
//!   size is known and the sink never seeks. A cluster closes when a block would be 1000 ms or
//!   more after its start, before a video keyframe once it is 500 ms old (so seeking lands on
//!   keyframes), or when `tick` shows that no further block can belong to it.
//! - **Loss.** On video, a gap in sequence numbers discards the frame it falls in, then every
//!   frame until the next keyframe (a decoder fed a frame whose reference is missing shows
//!   garbage); [`Outcome::keyframe_wanted`] asks the caller to request one, at most every 500 ms
//!   per track. Audio loss leaves a gap in time: Opus decoders conceal it.
//!
//! # Duration
//! The sink is append-only, so the Segment has an unknown size and Info has no Duration:
//! players and decoders handle that (it is what browsers' MediaRecorder produces), but ffprobe
//! and similar tools then report the duration as unknown. The header reserves an 11-byte Void
//! where a Duration fits; once the file is on disk, [`scan::scan`] finds it (and the end of the
//! last complete cluster, after a crash) and [`scan::patch_duration`] writes it.
//!
//! # Allocation
//! In steady state a packet costs no allocation: frames are assembled in per-track buffers that
//! are swapped (not copied) into the queue and recycled from a per-track pool once written; the
//! cluster buffer keeps its capacity from one cluster to the next.

#![forbid(unsafe_code)]

mod bits;
mod clock;
mod depack;
mod h264;
mod mkv;
mod queue;
pub mod scan;

use std::collections::HashMap;
use std::io::{self, Write};

use clock::{seq_step, RtpClock, SeqStep};
use depack::{Depacketizer, FrameInfo, PacketIn};
use queue::{FrameQueue, Queued};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Opus,
    Vp8,
    Vp9,
    H264,
}

impl Codec {
    fn is_video(self) -> bool {
        self != Codec::Opus
    }

    fn clock_rate(self) -> i64 {
        if self.is_video() {
            90_000
        } else {
            48_000
        }
    }
}

#[derive(Debug, Clone)]
pub struct TrackSpec {
    /// Caller's identifier of the track (unique within a recorder).
    pub key: u64,
    pub codec: Codec,
    /// E.g. "doctor-audio"; written as the Matroska track Name.
    pub name: String,
}

/// One received RTP packet of a track (the RTP header already parsed by the caller; SRTP
/// removed).
#[derive(Debug, Clone, Copy)]
pub struct RtpIn<'a> {
    pub key: u64,
    /// RTP sequence number.
    pub seq: u16,
    /// RTP timestamp (48 kHz for Opus, 90 kHz for video).
    pub timestamp: u32,
    pub marker: bool,
    /// RTP payload (after header and extensions, padding removed).
    pub payload: &'a [u8],
    /// Caller's monotonic clock in milliseconds at arrival.
    pub arrival_ms: u64,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// The recorder needs a keyframe on this track (after loss, or video has not started yet).
    /// The caller asks the sender (throttled on its side).
    pub keyframe_wanted: Option<u64>,
}

#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Last block timestamp - first, over all tracks (ms).
    pub duration_ms: u64,
    /// Bytes written to the sink.
    pub bytes: u64,
    /// Frames written per track key (every declared key is present, possibly with 0).
    pub frames: HashMap<u64, u64>,
    /// Frames discarded (incomplete after loss, before first keyframe, queue overflow, ...).
    pub frames_dropped: u64,
    /// Packets deliberately unused: VP9 spatial layers above 0, packets of omitted tracks.
    pub packets_ignored: u64,
    /// H.264 tracks left out of the file because no SPS had arrived when the header was due.
    pub tracks_omitted: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("unknown track {0}")]
    UnknownTrack(u64),
}

/// Header is written this long after `start_ms` even if some track has not started.
const HEADER_TIMEOUT_MS: u64 = 3_000;
/// Least distance between two frames of a video track, in ms (the track's DefaultDuration;
/// see `mkv::VIDEO_DEFAULT_DURATION_NS`). A frame closer than that to the one before is late.
pub const VIDEO_MIN_SPACING_MS: i64 = 2;

/// Bounds of the queue while the header is pending.
const PREHEADER_MAX_SPAN_MS: i64 = 3_000;
/// Bound of the queue at any time (beyond it frames are written early or, pre-header, dropped).
const QUEUE_MAX_BYTES: usize = 8 << 20;
/// A frame is written once the caller's clock is this far past its timestamp.
const INTERLEAVE_HOLD_MS: i64 = 250;
const CLUSTER_MAX_MS: i64 = 1_000;
const CLUSTER_KEYFRAME_MIN_MS: i64 = 500;
const KEYFRAME_REQUEST_INTERVAL_MS: u64 = 500;
const DEFAULT_VIDEO_SIZE: (u32, u32) = (640, 480);
/// Recycled frame buffers kept per track: enough for the interleaving window.
const POOL_PER_TRACK: usize = 32;

/// Per-track state the frame callback needs (kept apart from the depacketizer, which is
/// borrowed while it calls back).
struct TrackState {
    key: u64,
    codec: Codec,
    /// Matroska track number, assigned when the header is written (0 before, and if omitted).
    number: u64,
    omitted: bool,
    seq: Option<u16>,
    clock: RtpClock,
    need_keyframe: bool,
    last_keyframe_request: Option<u64>,
    /// Video: a keyframe has been accepted. Audio: a frame has.
    ready: bool,
    /// The first keyframe was just accepted: freeze H.264 parameter sets after this packet.
    freeze_pending: bool,
    size: Option<(u32, u32)>,
    last_block_ms: Option<i64>,
    /// The earliest time this track's next block may have: video VIDEO_MIN_SPACING_MS after the last,
    /// audio the end of the last frame (overlapping audio is rejected by muxers).
    next_free_ms: Option<i64>,
    /// Video: a late frame was dropped at write time; frames already queued after it are
    /// dropped too until a keyframe (they reference it).
    skip_to_keyframe: bool,
    frames_written: u64,
    pool: Vec<Vec<u8>>,
}

struct Track {
    name: String,
    depack: Depacketizer,
    st: TrackState,
}

/// Keyframe gate and hand-off to the queue for one completed frame.
fn accept_frame(
    st: &mut TrackState,
    track: usize,
    info: &FrameInfo,
    buf: &mut Vec<u8>,
    queue: &mut FrameQueue,
    dropped: &mut u64,
) {
    if st.codec.is_video() {
        if !info.keyframe && st.need_keyframe {
            *dropped += 1;
            return;
        }
        if info.keyframe {
            st.need_keyframe = false;
            if !st.ready {
                st.ready = true;
                st.size = info.size;
                st.freeze_pending = true;
            }
        }
    } else {
        st.ready = true;
    }
    let ts_ms = info.time_ms.max(0);
    let mut data = st.pool.pop().unwrap_or_default();
    data.clear();
    std::mem::swap(&mut data, buf);
    queue.insert(Queued {
        track,
        ts_ms,
        keyframe: info.keyframe,
        data,
    });
}

/// Milliseconds from `base` to `t` as a signed value, saturating.
fn rel_ms(t: u64, base: u64) -> i64 {
    let d = i128::from(t) - i128::from(base);
    i64::try_from(d).unwrap_or(if d < 0 { i64::MIN } else { i64::MAX })
}

/// How far a late audio frame may be moved forward before it is dropped instead.
const MAX_AUDIO_SHIFT_MS: i64 = 100;

/// How long an Opus packet plays, in whole ms (at least 1), from its TOC byte (RFC 6716 3.1).
fn opus_duration_ms(packet: &[u8]) -> i64 {
    let Some(&toc) = packet.first() else {
        return 20;
    };
    let config = toc >> 3;
    // Frame length in tenths of a millisecond.
    let frame = match config {
        0..=11 => [100, 200, 400, 600][usize::from(config % 4)],
        12..=15 => [100, 200][usize::from(config % 2)],
        _ => [25, 50, 100, 200][usize::from(config % 4)],
    };
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => i64::from(packet.get(1).map_or(1, |c| (c & 0x3F).max(1))),
    };
    // RFC 6716 caps a packet at 120 ms.
    (frame * frames / 10).clamp(1, 120)
}

/// A stable, non-zero TrackUID per key (SplitMix64 is a bijection, so distinct keys never
/// collide).
fn track_uid(key: u64) -> u64 {
    let mut z = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z.max(1)
}

/// Records one consultation into one Matroska/WebM stream. See the crate docs for the timing
/// model.
pub struct Recorder<W: Write> {
    out: W,
    failed: bool,
    bytes: u64,
    start_ms: u64,
    clock_ms: u64,
    tracks: Vec<Track>,
    header_written: bool,
    segment_data_start: u64,
    video_in_file: bool,
    queue: FrameQueue,
    cluster: mkv::Cluster,
    last_cluster_ms: u64,
    cues: Vec<mkv::CuePoint>,
    first_block_ms: Option<i64>,
    last_block_ms: Option<i64>,
    frames_dropped: u64,
    packets_ignored: u64,
    tracks_omitted: u64,
}

impl<W: Write> Recorder<W> {
    /// Starts a recording of these tracks into `out`. Nothing is written until the header can
    /// be. A key listed twice is declared once (the first spec wins).
    pub fn new(out: W, tracks: Vec<TrackSpec>, start_ms: u64) -> Self {
        let mut list: Vec<Track> = Vec::with_capacity(tracks.len());
        for spec in tracks {
            if list.iter().any(|t| t.st.key == spec.key) {
                continue;
            }
            list.push(Track {
                name: spec.name,
                depack: Depacketizer::new(spec.codec),
                st: TrackState {
                    key: spec.key,
                    codec: spec.codec,
                    number: 0,
                    omitted: false,
                    seq: None,
                    clock: RtpClock::new(spec.codec.clock_rate()),
                    need_keyframe: spec.codec.is_video(),
                    last_keyframe_request: None,
                    ready: false,
                    freeze_pending: false,
                    size: None,
                    last_block_ms: None,
                    next_free_ms: None,
                    skip_to_keyframe: false,
                    frames_written: 0,
                    pool: Vec::new(),
                },
            });
        }
        Self {
            out,
            failed: false,
            bytes: 0,
            start_ms,
            clock_ms: start_ms,
            tracks: list,
            header_written: false,
            segment_data_start: 0,
            video_in_file: false,
            queue: FrameQueue::default(),
            cluster: mkv::Cluster::default(),
            last_cluster_ms: 0,
            cues: Vec::new(),
            first_block_ms: None,
            last_block_ms: None,
            frames_dropped: 0,
            packets_ignored: 0,
            tracks_omitted: 0,
        }
    }

    pub fn header_written(&self) -> bool {
        self.header_written
    }

    /// The sink, e.g. to ask a file sink why a write failed.
    pub fn sink(&self) -> &W {
        &self.out
    }

    pub fn push(&mut self, pkt: &RtpIn<'_>) -> Result<Outcome, RecorderError> {
        let idx = self
            .tracks
            .iter()
            .position(|t| t.st.key == pkt.key)
            .ok_or(RecorderError::UnknownTrack(pkt.key))?;
        self.check_failed()?;
        self.clock_ms = self.clock_ms.max(pkt.arrival_ms);
        let outcome = self.ingest(idx, pkt);
        self.advance()?;
        Ok(outcome)
    }

    /// Call periodically (e.g. every 100 ms) with the caller's clock; lets the header be written
    /// after the gathering timeout even if some track never sent anything, and flushes finished
    /// clusters.
    pub fn tick(&mut self, now_ms: u64) -> Result<(), RecorderError> {
        self.check_failed()?;
        self.clock_ms = self.clock_ms.max(now_ms);
        self.advance()
    }

    /// Ends the file: frames still being assembled are dropped (they are incomplete), queued
    /// frames and the last cluster are written, then Cues (no seeking needed: they go last and
    /// point backwards). Returns the sink and the summary.
    pub fn finish(mut self, now_ms: u64) -> Result<(W, Summary), RecorderError> {
        self.check_failed()?;
        self.clock_ms = self.clock_ms.max(now_ms);
        for t in &mut self.tracks {
            t.depack.discard();
        }
        if !self.header_written {
            self.write_header()?;
        }
        self.release(None)?;
        self.close_cluster()?;
        if !self.cues.is_empty() {
            let cues = mkv::cues(&self.cues);
            self.write_out(&cues)?;
        }
        let r = self.out.flush();
        self.io(r)?;

        let mut summary = Summary {
            duration_ms: match (self.first_block_ms, self.last_block_ms) {
                (Some(a), Some(b)) => u64::try_from(b.saturating_sub(a)).unwrap_or(0),
                _ => 0,
            },
            bytes: self.bytes,
            frames: HashMap::with_capacity(self.tracks.len()),
            frames_dropped: self.frames_dropped,
            packets_ignored: self.packets_ignored,
            tracks_omitted: self.tracks_omitted,
        };
        for t in &self.tracks {
            summary.frames.insert(t.st.key, t.st.frames_written);
            summary.frames_dropped += t.depack.dropped;
            summary.packets_ignored += t.depack.ignored;
        }
        Ok((self.out, summary))
    }

    fn check_failed(&self) -> Result<(), RecorderError> {
        if self.failed {
            // The file ends in a partial element; appending more would only hide that.
            return Err(RecorderError::Io(io::Error::other(
                "an earlier write to the recording failed",
            )));
        }
        Ok(())
    }

    fn io<T>(&mut self, r: io::Result<T>) -> Result<T, RecorderError> {
        r.map_err(|e| {
            self.failed = true;
            RecorderError::Io(e)
        })
    }

    fn write_out(&mut self, bytes: &[u8]) -> Result<(), RecorderError> {
        let r = self.out.write_all(bytes);
        self.io(r)?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    fn now_rel(&self) -> i64 {
        rel_ms(self.clock_ms, self.start_ms)
    }

    /// Sequence, clock and depacketizing for one packet of track `idx`.
    fn ingest(&mut self, idx: usize, pkt: &RtpIn<'_>) -> Outcome {
        let now_rel = rel_ms(pkt.arrival_ms, self.start_ms);
        let Self {
            tracks,
            queue,
            frames_dropped,
            packets_ignored,
            ..
        } = self;
        let Some(Track { depack, st, .. }) = tracks.get_mut(idx) else {
            return Outcome::default();
        };
        if st.omitted {
            *packets_ignored += 1;
            return Outcome::default();
        }
        let lost_before = match seq_step(st.seq, pkt.seq) {
            SeqStep::Old => return Outcome::default(),
            SeqStep::First | SeqStep::Next => false,
            SeqStep::Gap => true,
        };
        st.seq = Some(pkt.seq);
        let time_ms = st.clock.observe(pkt.timestamp, now_rel);
        if lost_before && st.codec.is_video() {
            st.need_keyframe = true;
        }

        let p = PacketIn {
            ts: pkt.timestamp,
            marker: pkt.marker,
            payload: pkt.payload,
            lost_before,
            time_ms,
        };
        depack.push(&p, &mut |info, buf| {
            accept_frame(st, idx, info, buf, queue, frames_dropped);
        });

        if st.freeze_pending {
            st.freeze_pending = false;
            // The first keyframe's parameter sets describe the file (avcC, pixel size).
            depack.params_frozen = true;
            if st.codec == Codec::H264 {
                st.size = h264::parse_sps(&depack.sps).map(|s| (s.width, s.height));
            }
        }

        let mut out = Outcome::default();
        if st.codec.is_video() && st.need_keyframe {
            let due = st
                .last_keyframe_request
                .is_none_or(|t| pkt.arrival_ms.saturating_sub(t) >= KEYFRAME_REQUEST_INTERVAL_MS);
            if due {
                st.last_keyframe_request = Some(pkt.arrival_ms);
                out.keyframe_wanted = Some(st.key);
            }
        }
        out
    }

    /// Header decision, then writing whatever the clock has released.
    fn advance(&mut self) -> Result<(), RecorderError> {
        if !self.header_written {
            self.bound_preheader_queue();
            let timed_out = self.clock_ms.saturating_sub(self.start_ms) >= HEADER_TIMEOUT_MS;
            let all_ready = self.tracks.iter().all(|t| t.st.ready);
            if !(timed_out || all_ready) {
                return Ok(());
            }
            self.write_header()?;
        }
        let upto = self.now_rel().saturating_sub(INTERLEAVE_HOLD_MS);
        self.release(Some(upto))?;
        if self.cluster.is_open() {
            let start = i64::try_from(self.cluster.timestamp_ms()).unwrap_or(i64::MAX);
            if upto.saturating_sub(start) >= CLUSTER_MAX_MS {
                // Every block still to come is past this cluster's end: write it now, so a
                // quiet call still reaches the disk.
                self.close_cluster()?;
            }
        }
        Ok(())
    }

    /// Keeps the pre-header queue within 3 s / 8 MiB by dropping its oldest frames. Dropping a
    /// video frame breaks that track's chain until its next keyframe, so those go too.
    fn bound_preheader_queue(&mut self) {
        while self.queue.bytes > QUEUE_MAX_BYTES || self.queue.span_ms() > PREHEADER_MAX_SPAN_MS {
            let Some(f) = self.queue.pop_front() else {
                break;
            };
            self.frames_dropped += 1;
            let Some(t) = self.tracks.get_mut(f.track) else {
                continue;
            };
            if t.st.codec.is_video() {
                let (removed, keyframe_left) = self.queue.cut_until_keyframe(f.track);
                self.frames_dropped += removed;
                if !keyframe_left {
                    t.st.need_keyframe = true;
                }
            }
        }
    }

    fn write_header(&mut self) -> Result<(), RecorderError> {
        let mut next_number = 1u64;
        let mut avccs: Vec<Option<Vec<u8>>> = Vec::with_capacity(self.tracks.len());
        for t in &mut self.tracks {
            let mut avcc = None;
            if t.st.codec == Codec::H264 {
                t.depack.params_frozen = true;
                avcc = if t.depack.sps.is_empty() {
                    None
                } else {
                    h264::avcc(&t.depack.sps, &t.depack.pps)
                };
                if avcc.is_none() {
                    // Without an SPS there is no avcC, and a Matroska AVC track without one
                    // is unplayable: leave the track out rather than spoil the file.
                    t.st.omitted = true;
                    self.tracks_omitted += 1;
                    avccs.push(None);
                    continue;
                }
                if t.st.size.is_none() {
                    t.st.size = h264::parse_sps(&t.depack.sps).map(|s| (s.width, s.height));
                }
            }
            t.st.number = next_number;
            next_number += 1;
            avccs.push(avcc);
        }

        let headers: Vec<mkv::TrackHeader<'_>> = self
            .tracks
            .iter()
            .zip(&avccs)
            .filter(|(t, _)| !t.st.omitted)
            .map(|(t, avcc)| mkv::TrackHeader {
                number: t.st.number,
                uid: track_uid(t.st.key),
                codec: t.st.codec,
                name: &t.name,
                size: t.st.size.unwrap_or(DEFAULT_VIDEO_SIZE),
                codec_private: avcc.as_deref(),
            })
            .collect();
        let doc_type = if headers.iter().any(|h| h.codec == Codec::H264) {
            "matroska"
        } else {
            "webm"
        };
        self.video_in_file = headers.iter().any(|h| h.codec.is_video());
        let (bytes, layout) = mkv::header(doc_type, &headers);
        drop(headers);

        let omitted: Vec<usize> = (0..self.tracks.len())
            .filter(|&i| self.tracks.get(i).is_some_and(|t| t.st.omitted))
            .collect();
        for i in omitted {
            self.frames_dropped += self.queue.remove_track(i);
        }

        self.segment_data_start = self.bytes + layout.segment_data_start;
        self.write_out(&bytes)?;
        let r = self.out.flush();
        self.io(r)?;
        self.header_written = true;
        Ok(())
    }

    /// Writes queued frames up to `upto` (all with `None`), or more if the queue is too big.
    fn release(&mut self, upto: Option<i64>) -> Result<(), RecorderError> {
        loop {
            let over = self.queue.bytes > QUEUE_MAX_BYTES;
            let Some(front) = self.queue.frames.front() else {
                break;
            };
            if !over && upto.is_some_and(|u| front.ts_ms > u) {
                break;
            }
            let Some(f) = self.queue.pop_front() else {
                break;
            };
            let r = self.write_block(f.track, f.ts_ms, f.keyframe, &f.data);
            if let Some(t) = self.tracks.get_mut(f.track) {
                if t.st.pool.len() < POOL_PER_TRACK {
                    t.st.pool.push(f.data);
                }
            }
            r?;
        }
        Ok(())
    }

    fn write_block(
        &mut self,
        track: usize,
        ts_ms: i64,
        keyframe: bool,
        data: &[u8],
    ) -> Result<(), RecorderError> {
        let (number, video, next_free) = match self.tracks.get(track) {
            Some(t) if t.st.number != 0 => (t.st.number, t.st.codec.is_video(), t.st.next_free_ms),
            _ => {
                self.frames_dropped += 1;
                return Ok(());
            }
        };
        // A late frame (after a backlog, a retransmission) cannot go back in time: it moves
        // forward, after the end of the track's last block (video: VIDEO_MIN_SPACING_MS after it; audio: after
        // its whole frame, since overlapping audio is rejected by decoders). Audio that would
        // move more than MAX_AUDIO_SHIFT_MS is dropped instead (Opus conceals the gap), so a
        // burst of late frames cannot push the sound away from the picture.
        // Clusters never go back in time either: the floor is the latest cluster's start.
        let earliest = next_free
            .unwrap_or(0)
            .max(i64::try_from(self.last_cluster_ms).unwrap_or(i64::MAX));
        if !video && earliest - ts_ms > MAX_AUDIO_SHIFT_MS {
            self.frames_dropped += 1;
            return Ok(());
        }
        // Late video is not moved either: two frames a millisecond apart share a frame slot
        // for decoders (ffmpeg rejects the file). It is dropped, and so is everything that
        // references it until the next keyframe, which is asked for.
        if video {
            if let Some(t) = self.tracks.get_mut(track) {
                if keyframe {
                    t.st.skip_to_keyframe = false;
                }
                if ts_ms < earliest || t.st.skip_to_keyframe {
                    if !t.st.skip_to_keyframe {
                        t.st.skip_to_keyframe = true;
                        t.st.need_keyframe = true;
                    }
                    self.frames_dropped += 1;
                    return Ok(());
                }
            }
        }
        let mut ts = ts_ms.max(next_free.unwrap_or(0)).max(0);
        let video_key = video && keyframe;
        if self.cluster.is_open() {
            let start = i64::try_from(self.cluster.timestamp_ms()).unwrap_or(i64::MAX);
            let rel = ts.saturating_sub(start);
            if rel >= CLUSTER_MAX_MS
                || (video_key && rel >= CLUSTER_KEYFRAME_MIN_MS)
                || rel > i64::from(i16::MAX)
            {
                self.close_cluster()?;
            }
        }
        if !self.cluster.is_open() {
            // Cluster times never go backwards, even if this track lags the others.
            let start = u64::try_from(ts).unwrap_or(0).max(self.last_cluster_ms);
            self.cluster.open(start);
            self.last_cluster_ms = start;
        }
        let start = i64::try_from(self.cluster.timestamp_ms()).unwrap_or(i64::MAX);
        ts = ts.max(start);
        let rel = i16::try_from(ts.saturating_sub(start)).unwrap_or(i16::MAX);
        self.cluster
            .add_block(number, rel, keyframe || !video, data);
        if self.cluster.cue.is_none() && (video_key || !self.video_in_file) {
            // Index video keyframes (audio-only files: every cluster), one per cluster.
            self.cluster.cue = Some((u64::try_from(ts).unwrap_or(0), number));
        }

        if let Some(t) = self.tracks.get_mut(track) {
            t.st.last_block_ms = Some(ts);
            let length = if video {
                VIDEO_MIN_SPACING_MS
            } else {
                opus_duration_ms(data)
            };
            t.st.next_free_ms = Some(ts + length);
            t.st.frames_written += 1;
        }
        self.first_block_ms = Some(self.first_block_ms.map_or(ts, |f| f.min(ts)));
        self.last_block_ms = Some(self.last_block_ms.map_or(ts, |l| l.max(ts)));
        Ok(())
    }

    fn close_cluster(&mut self) -> Result<(), RecorderError> {
        if !self.cluster.is_open() {
            return Ok(());
        }
        if let Some((time_ms, track)) = self.cluster.cue {
            self.cues.push(mkv::CuePoint {
                time_ms,
                track,
                cluster_pos: self.bytes.saturating_sub(self.segment_data_start),
            });
        }
        let r = self.cluster.write_to(&mut self.out);
        let n = self.io(r)?;
        self.bytes += n;
        let r = self.out.flush();
        self.io(r)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
