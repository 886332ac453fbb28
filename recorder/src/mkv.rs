//! A minimal EBML/Matroska writer: just what a live, append-only recording needs.
//!
//! File layout, in write order:
//!
//! ```text
//! EBML header (DocType webm | matroska)
//! Segment, size "unknown" (0x01FFFFFFFFFFFFFF): the sink cannot seek back to patch it
//!   Info      TimestampScale = 1 ms, MuxingApp/WritingApp, an 11-byte Void where a Duration
//!             fits (for callers that can seek back after the fact; never needed)
//!   Tracks    one TrackEntry per declared track
//!   Cluster   known size: a cluster is assembled in memory and written whole when it closes
//!   Cluster   ...
//!   Cues      written last, at `finish`, pointing back at clusters that start with a keyframe
//! ```
//!
//! There is no SeekHead and no Duration: both would need a position or a value that is only
//! known at the end, and the sink is append-only. Demuxers read an unknown-size segment linearly
//! and play it fine; tools such as ffprobe then report the duration as unknown (exactly as for a
//! browser's MediaRecorder file) unless the caller applies the optional Duration patch.
//!
//! Every element is written with a minimal-length size except the Segment; the writer never
//! needs to reserve room for a size it learns later because each Cluster is complete in memory
//! before its header is emitted.

use std::io::{self, Write};

use crate::Codec;

/// Element IDs, with their length marker bits included (as the spec lists them).
pub(crate) mod id {
    pub const EBML: u32 = 0x1A45_DFA3;
    pub const EBML_VERSION: u32 = 0x4286;
    pub const EBML_READ_VERSION: u32 = 0x42F7;
    pub const EBML_MAX_ID_LENGTH: u32 = 0x42F2;
    pub const EBML_MAX_SIZE_LENGTH: u32 = 0x42F3;
    pub const DOC_TYPE: u32 = 0x4282;
    pub const DOC_TYPE_VERSION: u32 = 0x4287;
    pub const DOC_TYPE_READ_VERSION: u32 = 0x4285;

    pub const SEGMENT: u32 = 0x1853_8067;

    pub const INFO: u32 = 0x1549_A966;
    pub const TIMESTAMP_SCALE: u32 = 0x2A_D7B1;
    pub const MUXING_APP: u32 = 0x4D80;
    pub const WRITING_APP: u32 = 0x5741;
    pub const DURATION: u32 = 0x4489;
    pub const VOID: u32 = 0xEC;

    pub const TRACKS: u32 = 0x1654_AE6B;
    pub const TRACK_ENTRY: u32 = 0xAE;
    pub const TRACK_NUMBER: u32 = 0xD7;
    pub const TRACK_UID: u32 = 0x73C5;
    pub const TRACK_TYPE: u32 = 0x83;
    pub const FLAG_LACING: u32 = 0x9C;
    pub const LANGUAGE: u32 = 0x22_B59C;
    pub const NAME: u32 = 0x536E;
    pub const CODEC_ID: u32 = 0x86;
    pub const CODEC_PRIVATE: u32 = 0x63A2;
    pub const CODEC_DELAY: u32 = 0x56AA;
    pub const SEEK_PRE_ROLL: u32 = 0x56BB;
    pub const VIDEO: u32 = 0xE0;
    pub const DEFAULT_DURATION: u32 = 0x23_E383;
    pub const PIXEL_WIDTH: u32 = 0xB0;
    pub const PIXEL_HEIGHT: u32 = 0xBA;
    pub const AUDIO: u32 = 0xE1;
    pub const SAMPLING_FREQUENCY: u32 = 0xB5;
    pub const CHANNELS: u32 = 0x9F;

    pub const CLUSTER: u32 = 0x1F43_B675;
    pub const TIMESTAMP: u32 = 0xE7;
    pub const SIMPLE_BLOCK: u32 = 0xA3;

    pub const CUES: u32 = 0x1C53_BB6B;
    pub const CUE_POINT: u32 = 0xBB;
    pub const CUE_TIME: u32 = 0xB3;
    pub const CUE_TRACK_POSITIONS: u32 = 0xB7;
    pub const CUE_TRACK: u32 = 0xF7;
    pub const CUE_CLUSTER_POSITION: u32 = 0xF1;
}

/// The "unknown size" marker for a Segment whose end we cannot announce.
const UNKNOWN_SIZE: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];

/// Opus pre-skip in 48 kHz samples: libopus' encoder lookahead, what browsers use.
const OPUS_PRE_SKIP: u16 = 312;
/// The same delay in nanoseconds (312 / 48000 s), as WebM's CodecDelay wants it.
const OPUS_CODEC_DELAY_NS: u64 = 6_500_000;
/// 80 ms: Opus needs that much decoded audio before a seek point to converge.
const OPUS_SEEK_PRE_ROLL_NS: u64 = 80_000_000;
/// Video tracks' DefaultDuration: the shortest distance between two of their frames
/// ([`crate::VIDEO_MIN_SPACING_MS`]), not a frame rate: calls are variable frame rate. Without
/// it ffmpeg guesses a rate from the first frames (30 fps) and, decoding, puts two frames
/// captured 20 ms apart into one 1/30 s slot ("non monotonically increasing dts"); with it the
/// slot is 2 ms and every frame keeps its own.
pub(crate) const VIDEO_DEFAULT_DURATION_NS: u64 = crate::VIDEO_MIN_SPACING_MS as u64 * 1_000_000;

pub(crate) fn put_id(buf: &mut Vec<u8>, id: u32) {
    let bytes = id.to_be_bytes();
    let skip = match id {
        0..=0xFF => 3,
        0x100..=0xFFFF => 2,
        0x1_0000..=0xFF_FFFF => 1,
        _ => 0,
    };
    buf.extend_from_slice(bytes.get(skip..).unwrap_or(&bytes));
}

/// Encodes an EBML variable-length integer (element sizes and SimpleBlock track numbers) into
/// a stack buffer: the shortest form, where all-ones is reserved for "unknown" (hence the `- 1`).
fn vint(value: u64) -> ([u8; 8], usize) {
    let mut len = 1u32;
    while len < 8 && value >= (1u64 << (7 * len)) - 1 {
        len += 1;
    }
    let marked = value | (1u64 << (7 * len));
    let bytes = marked.to_be_bytes();
    let mut out = [0u8; 8];
    let n = len as usize;
    if let (Some(dst), Some(src)) = (out.get_mut(..n), bytes.get(8 - n..)) {
        dst.copy_from_slice(src);
    }
    (out, n)
}

pub(crate) fn put_vint(buf: &mut Vec<u8>, value: u64) {
    let (bytes, n) = vint(value);
    buf.extend_from_slice(bytes.get(..n).unwrap_or(&bytes));
}

pub(crate) fn put_uint(buf: &mut Vec<u8>, id: u32, value: u64) {
    put_id(buf, id);
    let bytes = value.to_be_bytes();
    let skip = (value.leading_zeros() / 8).min(7) as usize;
    let body = bytes.get(skip..).unwrap_or(&bytes);
    put_vint(buf, body.len() as u64);
    buf.extend_from_slice(body);
}

pub(crate) fn put_float(buf: &mut Vec<u8>, id: u32, value: f64) {
    put_id(buf, id);
    put_vint(buf, 8);
    buf.extend_from_slice(&value.to_be_bytes());
}

pub(crate) fn put_bytes(buf: &mut Vec<u8>, id: u32, value: &[u8]) {
    put_id(buf, id);
    put_vint(buf, value.len() as u64);
    buf.extend_from_slice(value);
}

pub(crate) fn put_str(buf: &mut Vec<u8>, id: u32, value: &str) {
    put_bytes(buf, id, value.as_bytes());
}

/// The 19-byte `OpusHead` (RFC 7845 §5.1) that WebM stores as the Opus CodecPrivate.
pub(crate) fn opus_head() -> [u8; 19] {
    let [p0, p1] = OPUS_PRE_SKIP.to_le_bytes();
    let [r0, r1, r2, r3] = 48_000u32.to_le_bytes();
    [
        b'O', b'p', b'u', b's', b'H', b'e', b'a', b'd', 1, // version
        2, // channels: browsers negotiate stereo-capable Opus
        p0, p1, // pre-skip
        r0, r1, r2, r3, // original input rate, informational
        0, 0, // output gain
        0, // channel mapping family 0: mono/stereo, no mapping table
    ]
}

/// What the header needs to know about one declared track.
pub(crate) struct TrackHeader<'a> {
    pub number: u64,
    pub uid: u64,
    pub codec: Codec,
    pub name: &'a str,
    /// Video only.
    pub size: (u32, u32),
    /// H264 only: the avcC record.
    pub codec_private: Option<&'a [u8]>,
}

pub(crate) fn codec_id(codec: Codec) -> &'static str {
    match codec {
        Codec::Opus => "A_OPUS",
        Codec::Vp8 => "V_VP8",
        Codec::Vp9 => "V_VP9",
        Codec::H264 => "V_MPEG4/ISO/AVC",
    }
}

/// Size of a Duration element with an 8-byte float: ID (2) + size (1) + value (8). The header
/// reserves exactly this much as a Void element, so that a caller whose sink *can* seek may
/// overwrite it afterwards (see `scan::patch_duration`).
pub(crate) const DURATION_ELEMENT_LEN: usize = 11;

pub(crate) fn duration_element(ms: f64) -> [u8; DURATION_ELEMENT_LEN] {
    let [_, _, i0, i1] = id::DURATION.to_be_bytes();
    let [a, b, c, d, e, f, g, h] = ms.to_be_bytes();
    // Two-byte ID, size 8 (0x88), big-endian float64.
    [i0, i1, 0x88, a, b, c, d, e, f, g, h]
}

/// Where the header was laid out: offsets from its first byte.
pub(crate) struct HeaderLayout {
    /// Start of the Segment's data (Cues positions are relative to it).
    pub segment_data_start: u64,
}

/// Serialises EBML header, Segment start, Info and Tracks.
pub(crate) fn header(doc_type: &str, tracks: &[TrackHeader<'_>]) -> (Vec<u8>, HeaderLayout) {
    let mut out = Vec::with_capacity(512);

    let mut ebml = Vec::with_capacity(64);
    put_uint(&mut ebml, id::EBML_VERSION, 1);
    put_uint(&mut ebml, id::EBML_READ_VERSION, 1);
    put_uint(&mut ebml, id::EBML_MAX_ID_LENGTH, 4);
    put_uint(&mut ebml, id::EBML_MAX_SIZE_LENGTH, 8);
    put_str(&mut ebml, id::DOC_TYPE, doc_type);
    // v4 for CodecDelay/SeekPreRoll; any v2 reader can still play the file.
    put_uint(&mut ebml, id::DOC_TYPE_VERSION, 4);
    put_uint(&mut ebml, id::DOC_TYPE_READ_VERSION, 2);
    put_bytes(&mut out, id::EBML, &ebml);

    put_id(&mut out, id::SEGMENT);
    out.extend_from_slice(&UNKNOWN_SIZE);
    let segment_data_start = out.len() as u64;

    let mut info = Vec::with_capacity(64);
    put_uint(&mut info, id::TIMESTAMP_SCALE, 1_000_000);
    put_str(&mut info, id::MUXING_APP, "consulta");
    put_str(&mut info, id::WRITING_APP, "consulta");
    // Void of 11 bytes (ID, size 9, nine zero bytes): room for the Duration (see `scan`).
    put_bytes(&mut info, id::VOID, &[0; DURATION_ELEMENT_LEN - 2]);
    put_bytes(&mut out, id::INFO, &info);

    let mut list = Vec::with_capacity(256);
    for t in tracks {
        let mut e = Vec::with_capacity(128);
        put_uint(&mut e, id::TRACK_NUMBER, t.number);
        put_uint(&mut e, id::TRACK_UID, t.uid);
        let video = t.codec != Codec::Opus;
        put_uint(&mut e, id::TRACK_TYPE, if video { 1 } else { 2 });
        put_uint(&mut e, id::FLAG_LACING, 0);
        // The default would be "eng", which would be a claim we cannot make.
        put_str(&mut e, id::LANGUAGE, "und");
        put_str(&mut e, id::NAME, t.name);
        put_str(&mut e, id::CODEC_ID, codec_id(t.codec));
        if t.codec == Codec::Opus {
            put_bytes(&mut e, id::CODEC_PRIVATE, &opus_head());
            put_uint(&mut e, id::CODEC_DELAY, OPUS_CODEC_DELAY_NS);
            put_uint(&mut e, id::SEEK_PRE_ROLL, OPUS_SEEK_PRE_ROLL_NS);
            let mut a = Vec::with_capacity(16);
            put_float(&mut a, id::SAMPLING_FREQUENCY, 48_000.0);
            put_uint(&mut a, id::CHANNELS, 2);
            put_bytes(&mut e, id::AUDIO, &a);
        } else {
            if let Some(cp) = t.codec_private {
                put_bytes(&mut e, id::CODEC_PRIVATE, cp);
            }
            put_uint(&mut e, id::DEFAULT_DURATION, VIDEO_DEFAULT_DURATION_NS);
            let mut v = Vec::with_capacity(16);
            put_uint(&mut v, id::PIXEL_WIDTH, u64::from(t.size.0));
            put_uint(&mut v, id::PIXEL_HEIGHT, u64::from(t.size.1));
            put_bytes(&mut e, id::VIDEO, &v);
        }
        put_bytes(&mut list, id::TRACK_ENTRY, &e);
    }
    put_bytes(&mut out, id::TRACKS, &list);

    (out, HeaderLayout { segment_data_start })
}

/// One index entry: a cluster that begins with a keyframe of `track`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CuePoint {
    pub time_ms: u64,
    pub track: u64,
    /// Offset of the Cluster element from the start of the Segment's data.
    pub cluster_pos: u64,
}

pub(crate) fn cues(points: &[CuePoint]) -> Vec<u8> {
    let mut body = Vec::with_capacity(points.len() * 20);
    let mut cp = Vec::with_capacity(32);
    let mut pos = Vec::with_capacity(16);
    for p in points {
        cp.clear();
        pos.clear();
        put_uint(&mut cp, id::CUE_TIME, p.time_ms);
        put_uint(&mut pos, id::CUE_TRACK, p.track);
        put_uint(&mut pos, id::CUE_CLUSTER_POSITION, p.cluster_pos);
        put_bytes(&mut cp, id::CUE_TRACK_POSITIONS, &pos);
        put_bytes(&mut body, id::CUE_POINT, &cp);
    }
    let mut out = Vec::with_capacity(body.len() + 12);
    put_bytes(&mut out, id::CUES, &body);
    out
}

/// The cluster being filled. Its buffer keeps its capacity from one cluster to the next.
#[derive(Debug, Default)]
pub(crate) struct Cluster {
    body: Vec<u8>,
    timestamp_ms: u64,
    open: bool,
    /// (time, track number) of the first keyframe worth indexing in this cluster.
    pub cue: Option<(u64, u64)>,
}

impl Cluster {
    pub fn is_open(&self) -> bool {
        self.open
    }

    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    pub fn open(&mut self, timestamp_ms: u64) {
        self.body.clear();
        put_uint(&mut self.body, id::TIMESTAMP, timestamp_ms);
        self.timestamp_ms = timestamp_ms;
        self.open = true;
        self.cue = None;
    }

    /// `relative_ms` is the block time minus the cluster time; the caller keeps it in range.
    pub fn add_block(&mut self, track: u64, relative_ms: i16, keyframe: bool, data: &[u8]) {
        let (track_vint, track_len) = vint(track);
        put_id(&mut self.body, id::SIMPLE_BLOCK);
        put_vint(&mut self.body, (track_len + 3 + data.len()) as u64);
        self.body
            .extend_from_slice(track_vint.get(..track_len).unwrap_or(&[]));
        self.body.extend_from_slice(&relative_ms.to_be_bytes());
        // 0x80: keyframe. No lacing, never invisible, never discardable.
        self.body.push(if keyframe { 0x80 } else { 0x00 });
        self.body.extend_from_slice(data);
    }

    /// Writes the Cluster element (header then buffered body) and closes it.
    /// Returns the number of bytes written.
    pub fn write_to<W: Write>(&mut self, w: &mut W) -> io::Result<u64> {
        let (size, size_len) = vint(self.body.len() as u64);
        let size = size.get(..size_len).unwrap_or(&size);
        self.open = false;
        w.write_all(&id::CLUSTER.to_be_bytes())?;
        w.write_all(size)?;
        w.write_all(&self.body)?;
        let n = (4 + size.len() + self.body.len()) as u64;
        self.body.clear();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vint_lengths() {
        let enc = |v: u64| {
            let mut b = Vec::new();
            put_vint(&mut b, v);
            b
        };
        assert_eq!(enc(0), vec![0x80]);
        assert_eq!(enc(126), vec![0xFE]);
        // 127 would be all ones in one byte (reserved for "unknown"), so it takes two.
        assert_eq!(enc(127), vec![0x40, 0x7F]);
        assert_eq!(enc(16_382), vec![0x7F, 0xFE]);
        assert_eq!(enc(16_383), vec![0x20, 0x3F, 0xFF]);
        assert_eq!(enc(1 << 40).len(), 6);
    }

    #[test]
    fn ids_and_uints() {
        let mut b = Vec::new();
        put_id(&mut b, id::SEGMENT);
        put_id(&mut b, id::TIMESTAMP_SCALE);
        put_id(&mut b, id::CODEC_DELAY);
        put_id(&mut b, id::SIMPLE_BLOCK);
        assert_eq!(
            b,
            vec![0x18, 0x53, 0x80, 0x67, 0x2A, 0xD7, 0xB1, 0x56, 0xAA, 0xA3]
        );
        let mut u = Vec::new();
        put_uint(&mut u, id::TIMESTAMP, 0);
        put_uint(&mut u, id::TIMESTAMP, 1000);
        assert_eq!(u, vec![0xE7, 0x81, 0x00, 0xE7, 0x82, 0x03, 0xE8]);
    }

    #[test]
    fn opus_head_layout() {
        let h = opus_head();
        assert_eq!(&h[..8], b"OpusHead");
        assert_eq!(h[8], 1);
        assert_eq!(h[9], 2);
        assert_eq!(&h[10..12], &[0x38, 0x01]);
        assert_eq!(&h[12..16], &48_000u32.to_le_bytes());
        assert_eq!(&h[16..], &[0, 0, 0]);
    }

    #[test]
    fn duration_slot_is_a_void_a_duration_can_replace() {
        let (h, _) = header("webm", &[]);
        let at = h.windows(2).position(|w| w == [0xEC, 0x89]).unwrap();
        assert!(h[at + 2..at + DURATION_ELEMENT_LEN].iter().all(|&b| b == 0));
        let d = duration_element(3000.0);
        assert_eq!(&d[..3], &[0x44, 0x89, 0x88]);
        assert_eq!(&d[3..], &3000f64.to_be_bytes());
    }

    #[test]
    fn cluster_block_bytes() {
        let mut c = Cluster::default();
        c.open(5000);
        c.add_block(2, 17, true, &[0xAA, 0xBB]);
        let mut out = Vec::new();
        let n = c.write_to(&mut out).unwrap();
        assert_eq!(n as usize, out.len());
        assert_eq!(
            out,
            vec![
                0x1F, 0x43, 0xB6, 0x75, 0x8C, // Cluster, size 12
                0xE7, 0x82, 0x13, 0x88, // Timestamp 5000
                0xA3, 0x86, 0x82, 0x00, 0x11, 0x80, 0xAA, 0xBB, // SimpleBlock
            ]
        );
        assert!(!c.is_open());
    }
}
