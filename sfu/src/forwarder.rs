//! Forwarding decisions for one Consumer, as pure state machines fed by events (packets, pauses,
//! keyframe requests). No sockets, no `Rtc`: unit-tested on their own and benchmarked.
//!
//! - [`Forwarder`] decides per packet whether it goes out and under which sequence number. A video
//!   consumer starts (and resumes) at a keyframe; outgoing sequence numbers are rebased so each
//!   subscriber sees a gap-free stream starting below 65536 (no ROC to signal), whatever the
//!   publisher's history or the packets skipped while waiting. Packets left out of a stream
//!   (the spatial layers of a VP9 picture above the subscriber's, [`Forwarder::skip`]) take
//!   no number either.
//! - [`KeyframeThrottle`] limits PLI/FIR towards a publisher while guaranteeing a late request is
//!   sent when the window ends (a late joiner gets its keyframe within one window).
//! - [`PtMap`] caches the publisher-PT -> subscriber-PT mapping of a consumer.
//! - [`is_keyframe_start`] recognises the first packet of a keyframe for VP8, VP9, H264, AV1.

use std::time::{Duration, Instant};

use str0m::format::Codec;

/// What to do with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send with this (extended) outgoing sequence number.
    Forward(u64),
    /// Video consumer waits for a keyframe.
    WaitKeyframe,
    /// Older than the first packet forwarded (e.g. a late retransmission): cannot be numbered.
    TooOld,
    /// The consumer is paused.
    Paused,
}

/// Why a consumer is paused; several can hold at once, and it resumes when none does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseCause {
    /// The publisher muted (or was muted).
    Mute = 1,
    /// The subscriber's downlink cannot carry this track now (audio-only fallback).
    Bandwidth = 2,
    /// The subscriber cannot decode the codec the publisher sends (see `codecs.rs`).
    Codec = 4,
}

/// Per-consumer sequence rewriting and keyframe gating.
#[derive(Debug, Clone)]
pub struct Forwarder {
    video: bool,
    waiting_keyframe: bool,
    /// Bits of [`PauseCause`].
    paused: u8,
    /// (first incoming seq of the current run, its outgoing seq).
    base: Option<(u64, u64)>,
    /// Highest outgoing sequence number sent so far.
    highest_out: Option<u64>,
    first_out: u64,
    /// Each packet of the run is preceded by a copy slot (see [`Forwarder::set_copies`]).
    copies: bool,
    /// Highest incoming sequence number of the current run (forwarded or skipped).
    highest_in: Option<u64>,
    /// The runs before the current one in this source, ended by skipped packets (newest at
    /// `(older_next - 1) % OLDER_RUNS`), so a late packet of one (a retransmission from the
    /// publisher) keeps its slot.
    older: [(u64, u64); OLDER_RUNS],
    older_len: u8,
    older_next: u8,
}

/// How many runs ended by skipped packets a late packet is looked up in: a VP9 subscriber below
/// the top spatial layer starts one run a picture, so ~0.5 s at 30 fps (a retransmission from
/// the publisher comes one round trip after the loss).
const OLDER_RUNS: usize = 16;

impl Forwarder {
    /// `first_out` is the first outgoing sequence number (keep it well below 65536).
    pub fn new(video: bool, first_out: u16) -> Self {
        Forwarder {
            video,
            waiting_keyframe: video,
            paused: 0,
            base: None,
            highest_out: None,
            first_out: u64::from(first_out),
            copies: false,
            highest_in: None,
            older: [(0, 0); OLDER_RUNS],
            older_len: 0,
            older_next: 0,
        }
    }

    /// Starts a new source or resumes after a gap: no run to number on from.
    fn clear_runs(&mut self) {
        self.base = None;
        self.highest_in = None;
        self.older_len = 0;
    }

    pub fn is_waiting_keyframe(&self) -> bool {
        self.waiting_keyframe && self.paused == 0
    }

    pub fn is_paused(&self) -> bool {
        self.paused != 0
    }

    pub fn is_paused_for(&self, cause: PauseCause) -> bool {
        self.paused & cause as u8 != 0
    }

    /// Stops forwarding for `cause`.
    pub fn pause(&mut self, cause: PauseCause) {
        self.paused |= cause as u8;
    }

    /// Lifts `cause`; when no cause is left, forwarding resumes: video waits for the next
    /// keyframe, numbering continues without a gap. Returns whether it resumed.
    pub fn resume(&mut self, cause: PauseCause) -> bool {
        let was = self.paused;
        self.paused &= !(cause as u8);
        if was != 0 && self.paused == 0 {
            self.waiting_keyframe = self.video;
            self.clear_runs();
            return true;
        }
        false
    }

    /// The path was cut (either side's network changed): video waits for the next keyframe, as
    /// what follows a gap cannot be decoded; numbering continues without a gap, so the subscriber
    /// does not ask for packets that never reached the server.
    pub fn restart(&mut self) {
        if self.video && self.paused == 0 {
            self.waiting_keyframe = true;
        }
    }

    /// The source changed (another simulcast layer, with its own sequence numbers): the next
    /// packet starts a new run, numbered on from the last one sent.
    pub fn rebase(&mut self) {
        self.clear_runs();
    }

    /// Leaves out one packet of the stream (`seq`, the publisher's extended sequence number)
    /// without a hole: the packets after it are numbered one lower, those before keep their
    /// numbers (also when they come late: the run they belong to is remembered). A late packet
    /// left out changes nothing (its slot, if it had one, stays a hole the subscriber may NACK);
    /// neither does one while no run is going. Video only (copy slots are audio's).
    pub fn skip(&mut self, seq: u64) {
        let Some((in_first, out_first)) = self.base else {
            return;
        };
        if self.copies || seq < in_first || self.highest_in.is_some_and(|h| seq <= h) {
            return;
        }
        self.highest_in = Some(seq);
        // The next run starts after `seq`, numbered from the slot `seq` would have taken.
        let next = (seq + 1, out_first + (seq - in_first));
        if seq > in_first {
            // The run holds packets (or slots for lost ones): keep it for late arrivals.
            let at = usize::from(self.older_next);
            self.older[at] = (in_first, out_first);
            self.older_next = ((at + 1) % OLDER_RUNS) as u8;
            self.older_len = (usize::from(self.older_len) + 1).min(OLDER_RUNS) as u8;
        }
        self.base = Some(next);
    }

    /// The outgoing number of a late packet older than the current run, from the run it
    /// belongs to (None: older than every run remembered).
    fn older_slot(&self, seq: u64) -> Option<u64> {
        let mut at = usize::from(self.older_next);
        for _ in 0..self.older_len {
            at = (at + OLDER_RUNS - 1) % OLDER_RUNS;
            let (in_first, out_first) = self.older[at];
            if seq >= in_first {
                return Some(out_first + (seq - in_first));
            }
        }
        None
    }

    /// Numbers each packet after a slot of its own for a copy of the packet before it (RED's
    /// redundancy for a subscriber without RED: [`crate::red::newest_redundant`]), so that the
    /// copy reaches the subscriber under a sequence number of its own: one numbered as the
    /// original would be dropped by SRTP's replay check whenever the original arrived, and the
    /// subscriber's transport-wide feedback would report it lost. A change starts a new run at
    /// the next packet, numbered on without a gap; the copy's number is [`Verdict::Forward`]'s
    /// less one, and it must always be sent (a missing one is a gap the subscriber counts as
    /// loss).
    pub fn set_copies(&mut self, copies: bool) {
        if copies != self.copies {
            self.copies = copies;
            self.clear_runs();
        }
    }

    /// Whether the packets of the current run have a copy slot before them.
    pub fn has_copies(&self) -> bool {
        self.copies
    }

    /// Decides for one incoming packet (`seq` is the publisher's extended sequence number).
    pub fn on_packet(&mut self, seq: u64, keyframe_start: bool) -> Verdict {
        if self.paused != 0 {
            return Verdict::Paused;
        }
        if self.waiting_keyframe {
            if !keyframe_start {
                return Verdict::WaitKeyframe;
            }
            self.waiting_keyframe = false;
            self.clear_runs();
        }
        let (in_first, out_first) = *self.base.get_or_insert_with(|| {
            let out = self.highest_out.map_or(self.first_out, |h| h + 1);
            (seq, out)
        });
        let out = if seq < in_first {
            match self.older_slot(seq) {
                Some(out) => out,
                None => return Verdict::TooOld,
            }
        } else {
            if self.highest_in.is_none_or(|h| seq > h) {
                self.highest_in = Some(seq);
            }
            match self.copies {
                true => out_first + 2 * (seq - in_first) + 1,
                false => out_first + (seq - in_first),
            }
        };
        if self.highest_out.is_none_or(|h| out > h) {
            self.highest_out = Some(out);
        }
        Verdict::Forward(out)
    }
}

/// Throttles keyframe requests towards one publisher track.
#[derive(Debug, Clone)]
pub struct KeyframeThrottle {
    interval: Duration,
    last: Option<Instant>,
    pending: bool,
}

impl KeyframeThrottle {
    pub fn new(interval: Duration) -> Self {
        KeyframeThrottle {
            interval,
            last: None,
            pending: false,
        }
    }

    /// A request arrives; true means send it to the publisher now. Otherwise it is remembered
    /// and [`poll`](Self::poll) releases it when the window ends.
    pub fn request(&mut self, now: Instant) -> bool {
        match self.last {
            Some(t) if now.duration_since(t) < self.interval => {
                self.pending = true;
                false
            }
            _ => {
                self.last = Some(now);
                self.pending = false;
                true
            }
        }
    }

    /// True when a remembered request is due now.
    pub fn poll(&mut self, now: Instant) -> bool {
        if self.pending
            && self
                .last
                .is_none_or(|t| now.duration_since(t) >= self.interval)
        {
            self.pending = false;
            self.last = Some(now);
            return true;
        }
        false
    }
}

/// Publisher payload type -> subscriber payload type for one consumer, filled lazily; plus which
/// publisher payload types are RED that this subscriber did not negotiate: those are sent as
/// their primary block alone (see [`crate::red`]).
#[derive(Debug, Clone)]
pub struct PtMap {
    map: [u8; 128],
    unwrap_red: u128,
}

impl Default for PtMap {
    fn default() -> Self {
        PtMap {
            map: [PtMap::UNKNOWN; 128],
            unwrap_red: 0,
        }
    }
}

impl PtMap {
    const UNKNOWN: u8 = 0xFF;
    const UNSUPPORTED: u8 = 0xFE;

    /// `Some(Some(pt))` mapped, `Some(None)` known unsupported, `None` not looked up yet.
    pub fn get(&self, from: u8) -> Option<Option<u8>> {
        match self.map[usize::from(from & 0x7F)] {
            PtMap::UNKNOWN => None,
            PtMap::UNSUPPORTED => Some(None),
            pt => Some(Some(pt)),
        }
    }

    pub fn set(&mut self, from: u8, to: Option<u8>) {
        self.map[usize::from(from & 0x7F)] = to.map_or(PtMap::UNSUPPORTED, |p| p & 0x7F);
        self.unwrap_red &= !(1u128 << (from & 0x7F));
    }

    /// `from` is RED the subscriber does not take: its primary block goes out as `to`.
    pub fn set_red_unwrapped(&mut self, from: u8, to: u8) {
        self.set(from, Some(to));
        self.unwrap_red |= 1u128 << (from & 0x7F);
    }

    /// Whether packets of `from` are sent as their RED primary block alone.
    pub fn unwraps_red(&self, from: u8) -> bool {
        self.unwrap_red & (1u128 << (from & 0x7F)) != 0
    }
}

/// Whether `payload` (an RTP payload) starts a keyframe. Codecs without a detector never gate.
pub fn is_keyframe_start(codec: Codec, payload: &[u8]) -> bool {
    use str0m::format::detect_vp8_keyframe;
    use str0m::format::{detect_av1_keyframe, detect_h264_keyframe, detect_h264_nalu};
    const H264_SPS: u8 = 7;
    match codec {
        Codec::Vp8 => detect_vp8_keyframe(payload),
        // VP9 descriptor I|P|L|F|B|E|V|Z: not inter-predicted (P=0) and beginning a frame (B=1);
        // with spatial layers, the lowest layer's frame, which begins the picture.
        Codec::Vp9 => match crate::vp9::vp9_layer(payload) {
            Some(l) => l.keyframe,
            None => payload
                .first()
                .is_some_and(|b| b & 0x40 == 0 && b & 0x08 != 0),
        },
        // Start at the SPS when it travels ahead of the IDR, so the decoder gets both.
        Codec::H264 => detect_h264_nalu(payload, H264_SPS) || detect_h264_keyframe(payload),
        Codec::Av1 => detect_av1_keyframe(payload),
        _ => true,
    }
}

/// Whether keyframe gating applies to this codec.
pub fn gates_on_keyframes(codec: Codec) -> bool {
    matches!(codec, Codec::Vp8 | Codec::Vp9 | Codec::H264 | Codec::Av1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_waits_for_keyframe_then_numbers_without_gaps() {
        let mut f = Forwarder::new(true, 100);
        assert_eq!(f.on_packet(70_000, false), Verdict::WaitKeyframe);
        assert_eq!(f.on_packet(70_001, false), Verdict::WaitKeyframe);
        assert_eq!(f.on_packet(70_002, true), Verdict::Forward(100));
        assert_eq!(f.on_packet(70_003, false), Verdict::Forward(101));
        // Loss on the publisher side stays visible to the subscriber (it can NACK).
        assert_eq!(f.on_packet(70_005, false), Verdict::Forward(103));
        // A late retransmission within the run keeps its slot.
        assert_eq!(f.on_packet(70_004, false), Verdict::Forward(102));
        // Older than the first forwarded packet.
        assert_eq!(f.on_packet(70_001, false), Verdict::TooOld);
    }

    #[test]
    fn audio_flows_at_once() {
        let mut f = Forwarder::new(false, 1);
        assert_eq!(f.on_packet(5, false), Verdict::Forward(1));
        assert_eq!(f.on_packet(6, false), Verdict::Forward(2));
    }

    #[test]
    fn with_copies_each_packet_follows_a_slot_for_the_copy_of_the_one_before() {
        let mut f = Forwarder::new(false, 1);
        f.set_copies(true);
        assert_eq!(f.on_packet(5, false), Verdict::Forward(2)); // its copy slot: 1
        assert!(f.has_copies());
        assert_eq!(f.on_packet(6, false), Verdict::Forward(4));
        // A loss upstream leaves the slots of the lost packet (its copy comes in the next).
        assert_eq!(f.on_packet(8, false), Verdict::Forward(8));
        // A late one keeps its slot.
        assert_eq!(f.on_packet(7, false), Verdict::Forward(6));
        // Switched off: a new run, numbered on from the last one sent, without slots.
        f.set_copies(false);
        assert!(!f.has_copies());
        assert_eq!(f.on_packet(9, false), Verdict::Forward(9));
        assert_eq!(f.on_packet(10, false), Verdict::Forward(10));
        // Switching to what it is changes nothing.
        f.set_copies(false);
        assert_eq!(f.on_packet(11, false), Verdict::Forward(11));
        // Switched on: the first slot follows the last number sent.
        f.set_copies(true);
        assert_eq!(f.on_packet(12, false), Verdict::Forward(13));
        assert_eq!(f.on_packet(13, false), Verdict::Forward(15));
    }

    #[test]
    fn pause_and_resume_continue_numbering() {
        let mut f = Forwarder::new(true, 10);
        assert_eq!(f.on_packet(1, true), Verdict::Forward(10));
        assert_eq!(f.on_packet(2, false), Verdict::Forward(11));
        f.pause(PauseCause::Mute);
        assert_eq!(f.on_packet(3, false), Verdict::Paused);
        assert!(!f.is_waiting_keyframe());
        assert!(f.resume(PauseCause::Mute));
        assert!(f.is_waiting_keyframe());
        assert_eq!(f.on_packet(500, false), Verdict::WaitKeyframe);
        assert_eq!(f.on_packet(501, true), Verdict::Forward(12));
        assert_eq!(f.on_packet(502, false), Verdict::Forward(13));
    }

    #[test]
    fn a_track_paused_for_two_causes_resumes_when_both_are_lifted() {
        let mut f = Forwarder::new(true, 10);
        assert_eq!(f.on_packet(1, true), Verdict::Forward(10));
        f.pause(PauseCause::Bandwidth);
        f.pause(PauseCause::Mute);
        // Unmuting does not undo the bandwidth pause.
        assert!(!f.resume(PauseCause::Mute));
        assert_eq!(f.on_packet(2, true), Verdict::Paused);
        assert!(f.is_paused_for(PauseCause::Bandwidth));
        assert!(f.resume(PauseCause::Bandwidth));
        assert!(!f.is_paused());
        assert_eq!(f.on_packet(3, true), Verdict::Forward(11));
        // Lifting a cause that does not hold changes nothing.
        assert!(!f.resume(PauseCause::Mute));
    }

    #[test]
    fn restart_after_a_gap_waits_for_a_keyframe_and_numbers_without_a_gap() {
        let mut f = Forwarder::new(true, 10);
        assert_eq!(f.on_packet(1, true), Verdict::Forward(10));
        assert_eq!(f.on_packet(2, false), Verdict::Forward(11));
        // The publisher's path was cut: packets 3..=500 never arrived.
        f.restart();
        assert!(f.is_waiting_keyframe());
        assert_eq!(f.on_packet(501, false), Verdict::WaitKeyframe);
        assert_eq!(f.on_packet(502, true), Verdict::Forward(12));
        assert_eq!(f.on_packet(503, false), Verdict::Forward(13));
        // Audio never waits.
        let mut a = Forwarder::new(false, 1);
        assert_eq!(a.on_packet(7, false), Verdict::Forward(1));
        a.restart();
        assert_eq!(a.on_packet(90, false), Verdict::Forward(84));
        // A paused consumer stays paused (resume decides what comes next).
        let mut p = Forwarder::new(true, 1);
        p.pause(PauseCause::Mute);
        p.restart();
        assert!(!p.is_waiting_keyframe());
    }

    #[test]
    fn skipped_packets_take_no_number_and_late_ones_keep_their_slot() {
        let mut f = Forwarder::new(true, 10);
        // A picture: its lower layers (1, 2) go out, its top layer (3, 4) is left out.
        assert_eq!(f.on_packet(1, true), Verdict::Forward(10));
        assert_eq!(f.on_packet(2, false), Verdict::Forward(11));
        f.skip(3);
        f.skip(4);
        // The next picture numbers on without a gap; 6 is lost upstream and keeps its slot.
        assert_eq!(f.on_packet(5, false), Verdict::Forward(12));
        assert_eq!(f.on_packet(7, false), Verdict::Forward(14));
        f.skip(8);
        assert_eq!(f.on_packet(9, false), Verdict::Forward(15));
        // Retransmissions from the publisher, late: each in the slot of its run.
        assert_eq!(f.on_packet(6, false), Verdict::Forward(13));
        assert_eq!(f.on_packet(2, false), Verdict::Forward(11));
        // A late packet left out changes nothing; nor does one already seen.
        f.skip(4);
        f.skip(7);
        assert_eq!(f.on_packet(10, false), Verdict::Forward(16));
        // Older than every run remembered.
        assert_eq!(f.on_packet(0, false), Verdict::TooOld);
        // A packet lost just before a skipped one keeps its slot too.
        assert_eq!(f.on_packet(12, false), Verdict::Forward(18));
        f.skip(13);
        assert_eq!(f.on_packet(14, false), Verdict::Forward(19));
        assert_eq!(f.on_packet(11, false), Verdict::Forward(17));
        // A new source (or a keyframe after a pause) forgets the runs.
        f.rebase();
        assert_eq!(f.on_packet(900, false), Verdict::Forward(20));
        assert_eq!(f.on_packet(14, false), Verdict::TooOld);
        // Skips before anything was forwarded do nothing.
        let mut g = Forwarder::new(true, 1);
        g.skip(5);
        assert_eq!(g.on_packet(6, true), Verdict::Forward(1));
    }

    #[test]
    fn runs_remembered_are_bounded() {
        let mut f = Forwarder::new(true, 0);
        assert_eq!(f.on_packet(0, true), Verdict::Forward(0));
        // Pictures of two packets, one forwarded and one left out, far more than remembered.
        for i in 0..100u64 {
            assert_eq!(f.on_packet(2 * i + 1, false), Verdict::Forward(i + 1));
            f.skip(2 * i + 2);
        }
        // The last OLDER_RUNS runs are found, older ones are too old.
        assert_eq!(f.on_packet(199, false), Verdict::Forward(100));
        assert_eq!(f.on_packet(2 * 90 + 1, false), Verdict::Forward(91));
        assert_eq!(f.on_packet(3, false), Verdict::TooOld);
    }

    #[test]
    fn throttle_sends_first_and_releases_late_request() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(Duration::from_millis(500));
        assert!(k.request(t0));
        assert!(!k.request(t0 + Duration::from_millis(100)));
        assert!(!k.request(t0 + Duration::from_millis(200)));
        assert!(!k.poll(t0 + Duration::from_millis(499)));
        assert!(k.poll(t0 + Duration::from_millis(500)));
        // Released once only.
        assert!(!k.poll(t0 + Duration::from_millis(2000)));
        assert!(k.request(t0 + Duration::from_millis(2000)));
    }

    #[test]
    fn pt_map_remembers_mapped_and_unsupported() {
        let mut m = PtMap::default();
        assert_eq!(m.get(96), None);
        m.set(96, Some(98));
        m.set(111, None);
        assert_eq!(m.get(96), Some(Some(98)));
        assert_eq!(m.get(111), Some(None));
    }

    #[test]
    fn pt_map_marks_red_to_unwrap_until_mapped_plainly() {
        let mut m = PtMap::default();
        m.set_red_unwrapped(63, 111);
        assert_eq!(m.get(63), Some(Some(111)));
        assert!(m.unwraps_red(63));
        assert!(!m.unwraps_red(111));
        m.set(63, Some(63));
        assert!(!m.unwraps_red(63));
    }

    #[test]
    fn detects_keyframe_starts() {
        // VP8: descriptor S=1 PID=0 (0x10), then payload header with P=0.
        assert!(is_keyframe_start(
            Codec::Vp8,
            &[0x10, 0x00, 0x9d, 0x01, 0x2a]
        ));
        assert!(!is_keyframe_start(Codec::Vp8, &[0x10, 0x01, 0x00, 0x00]));
        assert!(!is_keyframe_start(Codec::Vp8, &[0x00, 0x00, 0x9d]));
        // H264: SPS single NAL, STAP-A with SPS, FU-A start of IDR, non-IDR slice.
        assert!(is_keyframe_start(Codec::H264, &[0x67, 0x42]));
        assert!(is_keyframe_start(
            Codec::H264,
            &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68]
        ));
        assert!(is_keyframe_start(Codec::H264, &[0x7c, 0x85, 0x00]));
        assert!(!is_keyframe_start(Codec::H264, &[0x41, 0x9a]));
        assert!(!is_keyframe_start(Codec::H264, &[0x7c, 0x05, 0x00])); // FU-A middle
                                                                       // VP9: P=0 with B=1 vs P=1.
        assert!(is_keyframe_start(Codec::Vp9, &[0x80 | 0x08, 0x01, 0x02]));
        assert!(!is_keyframe_start(Codec::Vp9, &[0x80 | 0x04, 0x01])); // keyframe, not its start
        assert!(!is_keyframe_start(Codec::Vp9, &[0x40 | 0x08, 0x00]));
        // AV1: N bit.
        assert!(is_keyframe_start(Codec::Av1, &[0x08]));
        assert!(!is_keyframe_start(Codec::Av1, &[0x10]));
        // Audio never gates.
        assert!(is_keyframe_start(Codec::Opus, &[]));
        for codec in [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1] {
            for len in 0..6 {
                let _ = is_keyframe_start(codec, &[0xFF; 8][..len]);
                let _ = is_keyframe_start(codec, &[0x00; 8][..len]);
            }
        }
    }
}
