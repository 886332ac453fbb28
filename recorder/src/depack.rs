//! Depacketizers: RTP payloads of one track in, whole frames out.
//!
//! One [`Depacketizer`] per track assembles frames into a buffer it owns and hands each complete
//! frame to a callback as `&mut Vec<u8>`; the callback may swap that buffer for a recycled one,
//! so in steady state a frame costs no allocation and no extra copy.
//!
//! Frame boundaries per codec:
//! - Opus: every packet is a frame.
//! - VP8 (RFC 7741): starts at S=1 with partition index 0, ends at the marker bit.
//! - VP9 (RFC 9628): starts at B, ends at E (or the marker); only spatial layer 0 is kept.
//! - H.264 (RFC 6184, packetization-mode 1): an access unit is every packet with one RTP
//!   timestamp, ended by the marker; single NAL, STAP-A and FU-A become 4-byte length-prefixed
//!   NAL units (the layout `avcC` with lengthSizeMinusOne = 3 describes).
//!
//! For every codec a timestamp change also ends the frame in progress (a lost or missing
//! marker must not glue two frames together). Loss is detected by the caller from sequence
//! numbers and passed in as [`PacketIn::lost_before`]; a frame with a hole in it is never
//! emitted. Whether the *next* frames are decodable (they may reference the lost one) is the
//! caller's keyframe gate, not this module's concern.

use crate::bits::BitReader;
use crate::Codec;

/// One packet, as the depacketizer needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PacketIn<'a> {
    pub ts: u32,
    pub marker: bool,
    pub payload: &'a [u8],
    /// Packets are missing between the previous accepted packet of this track and this one.
    pub lost_before: bool,
    /// The packet's time on the recording clock; a frame keeps its first packet's.
    pub time_ms: i64,
}

/// A complete frame; its bytes are the buffer passed next to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameInfo {
    pub ts: u32,
    /// Recording-clock time, fixed when the frame's first packet arrived (a later re-anchoring
    /// of the track's clock does not move a frame already under way).
    pub time_ms: i64,
    /// H.264: an IDR *and* parameter sets to decode it have been seen.
    pub keyframe: bool,
    /// Picture size, when the codec's keyframe header (or VP9's scalability structure) says.
    pub size: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Copy)]
struct Building {
    ts: u32,
    time_ms: i64,
    /// Something of this frame is known to be missing or malformed: drop it when it ends.
    broken: bool,
    keyframe: bool,
    size: Option<(u32, u32)>,
    /// H.264: the access unit holds at least one slice (a block of parameter sets alone is no
    /// frame).
    has_vcl: bool,
}

pub(crate) struct Depacketizer {
    codec: Codec,
    buf: Vec<u8>,
    cur: Option<Building>,
    /// Timestamp of the last frame discarded or missed: its stragglers are dropped silently (it
    /// has been counted once already).
    dead_ts: Option<u32>,
    /// H.264: offset of the length prefix of the NAL unit being rebuilt from FU-A fragments.
    fu_start: Option<usize>,
    /// H.264: latest SPS / PPS seen (whole NAL units), until `params_frozen`.
    pub sps: Vec<u8>,
    pub pps: Vec<u8>,
    /// Set by the recorder once the parameter sets describing the file are chosen.
    pub params_frozen: bool,
    /// Frames that could not be completed (loss, missing start, malformed payload).
    pub dropped: u64,
    /// Packets deliberately not used (VP9 spatial layers above 0).
    pub ignored: u64,
}

impl Depacketizer {
    pub fn new(codec: Codec) -> Self {
        Self {
            codec,
            buf: Vec::new(),
            cur: None,
            dead_ts: None,
            fu_start: None,
            sps: Vec::new(),
            pps: Vec::new(),
            params_frozen: false,
            dropped: 0,
            ignored: 0,
        }
    }

    /// Feeds one packet; calls `emit` for each frame it completes (at most two: the previous
    /// frame ended by a timestamp change, and this packet's own frame).
    pub fn push<F: FnMut(&FrameInfo, &mut Vec<u8>)>(&mut self, p: &PacketIn<'_>, emit: &mut F) {
        if p.lost_before {
            self.discard();
        }
        if self.cur.is_some_and(|b| b.ts != p.ts) {
            self.complete(emit);
        }
        match self.codec {
            Codec::Opus => self.push_opus(p, emit),
            Codec::Vp8 => self.push_vp8(p, emit),
            Codec::Vp9 => self.push_vp9(p, emit),
            Codec::H264 => self.push_h264(p, emit),
        }
    }

    /// Drops the frame in progress, if any (loss, or the recording ends).
    pub fn discard(&mut self) {
        if let Some(b) = self.cur.take() {
            self.dropped += 1;
            self.dead_ts = Some(b.ts);
        }
        self.fu_start = None;
        self.buf.clear();
    }

    fn complete<F: FnMut(&FrameInfo, &mut Vec<u8>)>(&mut self, emit: &mut F) {
        let Some(b) = self.cur.take() else {
            return;
        };
        // An FU-A whose end fragment never came leaves a truncated NAL behind.
        let unfinished_fu = self.fu_start.take().is_some();
        let empty = self.buf.is_empty() || (self.codec == Codec::H264 && !b.has_vcl);
        if b.broken || unfinished_fu || empty {
            self.dropped += 1;
            self.dead_ts = Some(b.ts);
        } else {
            // The size fields may lie past the first packet; read them from the whole frame.
            let size = match (b.keyframe, b.size, self.codec) {
                (true, None, Codec::Vp8) => vp8_keyframe_size(&self.buf),
                (true, None, Codec::Vp9) => vp9_keyframe_size(&self.buf),
                _ => b.size,
            };
            // An IDR is no entry point if its SPS/PPS never arrived: no decoder could use it.
            let keyframe = b.keyframe
                && (self.codec != Codec::H264 || !(self.sps.is_empty() || self.pps.is_empty()));
            let info = FrameInfo {
                ts: b.ts,
                time_ms: b.time_ms,
                keyframe,
                size,
            };
            emit(&info, &mut self.buf);
        }
        self.buf.clear();
    }

    fn start(&mut self, p: &PacketIn<'_>, keyframe: bool, size: Option<(u32, u32)>) {
        if self.cur.is_some() {
            // A second start with the same timestamp: the first attempt never finished.
            self.discard();
        }
        self.buf.clear();
        self.fu_start = None;
        self.dead_ts = None;
        self.cur = Some(Building {
            ts: p.ts,
            time_ms: p.time_ms,
            broken: false,
            keyframe,
            size,
            has_vcl: false,
        });
    }

    /// A packet that belongs to no frame we are building (its start was lost): count the frame
    /// once.
    fn orphan(&mut self, ts: u32) {
        if self.dead_ts != Some(ts) {
            self.dropped += 1;
            self.dead_ts = Some(ts);
        }
    }

    fn malformed(&mut self, ts: u32) {
        match self.cur.as_mut() {
            Some(b) if b.ts == ts => b.broken = true,
            _ => self.orphan(ts),
        }
    }

    fn push_opus<F: FnMut(&FrameInfo, &mut Vec<u8>)>(&mut self, p: &PacketIn<'_>, emit: &mut F) {
        if p.payload.is_empty() {
            self.dropped += 1;
            return;
        }
        self.buf.clear();
        self.buf.extend_from_slice(p.payload);
        let info = FrameInfo {
            ts: p.ts,
            time_ms: p.time_ms,
            keyframe: true,
            size: None,
        };
        emit(&info, &mut self.buf);
        self.buf.clear();
    }

    fn push_vp8<F: FnMut(&FrameInfo, &mut Vec<u8>)>(&mut self, p: &PacketIn<'_>, emit: &mut F) {
        let Some(d) = vp8_descriptor(p.payload) else {
            self.malformed(p.ts);
            return;
        };
        let data = p.payload.get(d.header_len..).unwrap_or(&[]);
        if d.start {
            // Frame tag, first bit: 0 = key frame (RFC 6386 §9.1).
            let keyframe = data.first().is_some_and(|b| b & 0x01 == 0);
            self.start(p, keyframe, None);
        } else if self.cur.is_none() {
            self.orphan(p.ts);
            return;
        }
        self.buf.extend_from_slice(data);
        if p.marker {
            self.complete(emit);
        }
    }

    fn push_vp9<F: FnMut(&FrameInfo, &mut Vec<u8>)>(&mut self, p: &PacketIn<'_>, emit: &mut F) {
        let Some(d) = vp9_descriptor(p.payload) else {
            self.malformed(p.ts);
            return;
        };
        if d.sid > 0 {
            // Higher spatial layers need layer 0 plus inter-layer prediction to decode; a WebM
            // track holds one layer, and layer 0 is the one always present.
            self.ignored += 1;
            return;
        }
        let data = p.payload.get(d.header_len..).unwrap_or(&[]);
        if d.begin {
            let keyframe = !d.inter;
            self.start(p, keyframe, d.ss_size.filter(|_| keyframe));
        } else if self.cur.is_none() {
            self.orphan(p.ts);
            return;
        }
        self.buf.extend_from_slice(data);
        if d.end || p.marker {
            self.complete(emit);
        }
    }

    fn push_h264<F: FnMut(&FrameInfo, &mut Vec<u8>)>(&mut self, p: &PacketIn<'_>, emit: &mut F) {
        if self.cur.is_none() {
            if self.dead_ts == Some(p.ts) {
                return;
            }
            // H.264 packets carry no "first packet of the access unit" flag; after a gap we
            // cannot tell whether this AU's head is missing, so it is not trusted.
            self.start(p, false, None);
            if let Some(b) = self.cur.as_mut() {
                b.broken = p.lost_before;
            }
        }
        if !self.h264_packet(p.payload) {
            if let Some(b) = self.cur.as_mut() {
                b.broken = true;
            }
        }
        if p.marker {
            self.complete(emit);
        }
    }

    /// Appends the NAL units of one RTP payload. Returns false if the payload is malformed.
    fn h264_packet(&mut self, payload: &[u8]) -> bool {
        let Some(&indicator) = payload.first() else {
            return false;
        };
        match indicator & 0x1F {
            1..=23 => {
                self.add_nal(payload);
                true
            }
            24 => {
                // STAP-A: [16-bit size][NAL] repeated.
                let mut rest = payload.get(1..).unwrap_or(&[]);
                while !rest.is_empty() {
                    let (Some(&hi), Some(&lo)) = (rest.first(), rest.get(1)) else {
                        return false;
                    };
                    let size = usize::from(u16::from_be_bytes([hi, lo]));
                    let Some(nal) = rest.get(2..2 + size) else {
                        return false;
                    };
                    if nal.is_empty() {
                        return false;
                    }
                    self.add_nal(nal);
                    rest = rest.get(2 + size..).unwrap_or(&[]);
                }
                true
            }
            28 => {
                // FU-A: indicator, then S E R Type, then a fragment of the NAL's payload.
                let Some(&fu) = payload.get(1) else {
                    return false;
                };
                let frag = payload.get(2..).unwrap_or(&[]);
                let (first, last) = (fu & 0x80 != 0, fu & 0x40 != 0);
                if first {
                    if self.fu_start.is_some() {
                        return false;
                    }
                    let nal_header = (indicator & 0xE0) | (fu & 0x1F);
                    self.fu_start = Some(self.buf.len());
                    self.buf.extend_from_slice(&[0, 0, 0, 0, nal_header]);
                } else if self.fu_start.is_none() {
                    return false;
                }
                self.buf.extend_from_slice(frag);
                if last {
                    if let Some(start) = self.fu_start.take() {
                        self.finish_fu(start);
                    }
                }
                true
            }
            // STAP-B, MTAP, FU-B are not allowed in mode 1; 0, 30, 31 are undefined.
            _ => false,
        }
    }

    fn add_nal(&mut self, nal: &[u8]) {
        let Some(&header) = nal.first() else {
            return;
        };
        let nal_type = header & 0x1F;
        self.note_nal(nal_type, Some(nal));
        if nal_type == 9 {
            // Access unit delimiters carry nothing Matroska needs; block boundaries are AUs.
            return;
        }
        let Ok(len) = u32::try_from(nal.len()) else {
            return;
        };
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(nal);
    }

    fn finish_fu(&mut self, start: usize) {
        let body_len = self.buf.len().saturating_sub(start + 4);
        let Ok(len) = u32::try_from(body_len) else {
            return;
        };
        if let Some(prefix) = self.buf.get_mut(start..start + 4) {
            prefix.copy_from_slice(&len.to_be_bytes());
        }
        let nal_type = self.buf.get(start + 4).map_or(0, |h| h & 0x1F);
        if matches!(nal_type, 7 | 8) && !self.params_frozen {
            // Parameter sets fragmented over FU-A: rare, but they must not be missed.
            let nal = self.buf.get(start + 4..).unwrap_or(&[]);
            let target = if nal_type == 7 {
                &mut self.sps
            } else {
                &mut self.pps
            };
            target.clear();
            target.extend_from_slice(nal);
        }
        self.note_nal(nal_type, None);
        if nal_type == 9 {
            self.buf.truncate(start);
        }
    }

    /// Keyframe / slice bookkeeping and parameter-set capture for one whole NAL unit.
    fn note_nal(&mut self, nal_type: u8, nal: Option<&[u8]>) {
        if let Some(b) = self.cur.as_mut() {
            if nal_type == 5 {
                b.keyframe = true;
            }
            if (1..=5).contains(&nal_type) {
                b.has_vcl = true;
            }
        }
        if let (Some(nal), false) = (nal, self.params_frozen) {
            match nal_type {
                7 => {
                    self.sps.clear();
                    self.sps.extend_from_slice(nal);
                }
                8 => {
                    self.pps.clear();
                    self.pps.extend_from_slice(nal);
                }
                _ => {}
            }
        }
    }
}

/// The parts of a VP8 payload descriptor (RFC 7741 §4.2) the recorder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vp8Descriptor {
    /// S=1 and PID=0: the first packet of a frame.
    pub start: bool,
    pub picture_id: Option<u16>,
    pub header_len: usize,
}

/// A 7- or 15-bit PictureID (M bit first) at `*i`, as VP8 and VP9 descriptors carry it.
fn read_picture_id(p: &[u8], i: &mut usize) -> Option<u16> {
    let m = *p.get(*i)?;
    *i += 1;
    if m & 0x80 == 0 {
        return Some(u16::from(m));
    }
    let lo = *p.get(*i)?;
    *i += 1;
    Some((u16::from(m & 0x7F) << 8) | u16::from(lo))
}

pub(crate) fn vp8_descriptor(p: &[u8]) -> Option<Vp8Descriptor> {
    let b0 = *p.first()?;
    let mut i = 1;
    let mut picture_id = None;
    if b0 & 0x80 != 0 {
        let x = *p.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            picture_id = Some(read_picture_id(p, &mut i)?);
        }
        if x & 0x40 != 0 {
            p.get(i)?; // TL0PICIDX
            i += 1;
        }
        if x & 0x30 != 0 {
            p.get(i)?; // TID | Y | KEYIDX
            i += 1;
        }
    }
    Some(Vp8Descriptor {
        start: b0 & 0x10 != 0 && b0 & 0x07 == 0,
        picture_id,
        header_len: i,
    })
}

/// Width and height from a VP8 key frame's header (RFC 6386 §9.1): 3-byte frame tag, start code
/// 9d 01 2a, then 14-bit width and height (the top 2 bits are scaling).
pub(crate) fn vp8_keyframe_size(frame: &[u8]) -> Option<(u32, u32)> {
    if frame.get(3..6)? != [0x9D, 0x01, 0x2A] {
        return None;
    }
    let w = u16::from_le_bytes([*frame.get(6)?, *frame.get(7)?]) & 0x3FFF;
    let h = u16::from_le_bytes([*frame.get(8)?, *frame.get(9)?]) & 0x3FFF;
    (w > 0 && h > 0).then_some((u32::from(w), u32::from(h)))
}

/// The parts of a VP9 payload descriptor (RFC 9628 §4.2) the recorder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vp9Descriptor {
    pub begin: bool,
    pub end: bool,
    /// P: the frame references earlier frames.
    pub inter: bool,
    pub flexible: bool,
    pub picture_id: Option<u16>,
    pub sid: u8,
    /// Spatial layer 0's size from the scalability structure, when present.
    pub ss_size: Option<(u32, u32)>,
    pub header_len: usize,
}

pub(crate) fn vp9_descriptor(p: &[u8]) -> Option<Vp9Descriptor> {
    let b0 = *p.first()?;
    let has_pid = b0 & 0x80 != 0;
    let inter = b0 & 0x40 != 0;
    let has_layers = b0 & 0x20 != 0;
    let flexible = b0 & 0x10 != 0;
    let begin = b0 & 0x08 != 0;
    let end = b0 & 0x04 != 0;
    let has_ss = b0 & 0x02 != 0;
    let mut i = 1;

    let mut picture_id = None;
    if has_pid {
        picture_id = Some(read_picture_id(p, &mut i)?);
    }

    let mut sid = 0;
    if has_layers {
        // TID(3) U(1) SID(3) D(1)
        let l = *p.get(i)?;
        i += 1;
        sid = (l >> 1) & 0x07;
        if !flexible {
            p.get(i)?; // TL0PICIDX
            i += 1;
        }
    }

    if flexible && inter {
        // Up to three reference indices, P_DIFF(7) N(1), N meaning "another follows".
        let mut n = 0;
        loop {
            let d = *p.get(i)?;
            i += 1;
            n += 1;
            if d & 0x01 == 0 {
                break;
            }
            if n == 3 {
                return None;
            }
        }
    }

    let mut ss_size = None;
    if has_ss {
        // N_S(3) Y(1) G(1) RSV(3)
        let s = *p.get(i)?;
        i += 1;
        let layers = usize::from(s >> 5) + 1;
        if s & 0x10 != 0 {
            for layer in 0..layers {
                let w = u16::from_be_bytes([*p.get(i)?, *p.get(i + 1)?]);
                let h = u16::from_be_bytes([*p.get(i + 2)?, *p.get(i + 3)?]);
                i += 4;
                if layer == 0 && w > 0 && h > 0 {
                    ss_size = Some((u32::from(w), u32::from(h)));
                }
            }
        }
        if s & 0x08 != 0 {
            let groups = *p.get(i)?;
            i += 1;
            for _ in 0..groups {
                // TID(3) U(1) R(2) RSV(2), then R reference P_DIFFs.
                let g = *p.get(i)?;
                i += 1;
                let refs = usize::from((g >> 2) & 0x03);
                if refs > 0 {
                    p.get(i + refs - 1)?;
                }
                i += refs;
            }
        }
    }

    Some(Vp9Descriptor {
        begin,
        end,
        inter,
        flexible,
        picture_id,
        sid,
        ss_size,
        header_len: i,
    })
}

/// Frame size from a VP9 key frame's uncompressed header (VP9 bitstream spec §6.2).
pub(crate) fn vp9_keyframe_size(frame: &[u8]) -> Option<(u32, u32)> {
    let mut r = BitReader::new(frame);
    if r.bits(2)? != 2 {
        return None; // frame_marker
    }
    let low = r.bit()?;
    let high = r.bit()?;
    let profile = (high << 1) | low;
    if profile == 3 {
        r.bit()?; // reserved_zero
    }
    if r.bit()? == 1 {
        return None; // show_existing_frame: no header follows
    }
    if r.bit()? != 0 {
        return None; // frame_type 1: not a key frame
    }
    r.bit()?; // show_frame
    r.bit()?; // error_resilient_mode
    if r.bits(24)? != 0x49_8342 {
        return None; // frame_sync_code
    }
    if profile >= 2 {
        r.bit()?; // ten_or_twelve_bit
    }
    let color_space = r.bits(3)?;
    if color_space != 7 {
        r.bit()?; // color_range
        if profile == 1 || profile == 3 {
            r.bits(3)?; // subsampling_x, subsampling_y, reserved_zero
        }
    } else if profile == 1 || profile == 3 {
        r.bit()?; // reserved_zero (sRGB is always 4:4:4)
    }
    let w = r.bits(16)? + 1;
    let h = r.bits(16)? + 1;
    Some((w, h))
}

#[cfg(test)]
#[path = "depack_tests.rs"]
mod tests;
