//! One track's timing: its RTP timestamps mapped onto the recording clock (anchored at the first
//! packet, re-anchored after a jump), and the sequence-number step that tells loss from
//! reordering.

/// RTP time this far from arrival time means the sender's timeline changed: re-anchor.
const REANCHOR_MS: u64 = 5_000;
/// A sequence number this far behind the last one is a restarted stream, not a late packet.
const SEQ_RESTART_DISTANCE: i16 = 3_000;

/// Maps one track's RTP timestamps onto the recording clock (ms since `start_ms`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RtpClock {
    rate: i64,
    started: bool,
    anchor_ms: i64,
    first: i64,
    last: i64,
}

impl RtpClock {
    pub(crate) fn new(rate: i64) -> Self {
        Self {
            rate,
            started: false,
            anchor_ms: 0,
            first: 0,
            last: 0,
        }
    }

    /// The 64-bit RTP time nearest to the last one seen with these low 32 bits.
    pub(crate) fn unwrap(&self, ts: u32) -> i64 {
        let low = self.last as u32; // truncation intended: the low 32 bits
        self.last
            .saturating_add(i64::from(ts.wrapping_sub(low) as i32))
    }

    pub(crate) fn ms_at(&self, unwrapped: i64) -> i64 {
        let ticks = unwrapped.saturating_sub(self.first);
        self.anchor_ms
            .saturating_add(ticks.saturating_mul(1000).div_euclid(self.rate))
    }

    /// Takes in one packet's timestamp; returns its time on the recording clock.
    pub(crate) fn observe(&mut self, ts: u32, now_ms: i64) -> i64 {
        if !self.started {
            self.started = true;
            self.anchor_ms = now_ms;
            self.first = i64::from(ts);
            self.last = self.first;
            return now_ms;
        }
        let u = self.unwrap(ts);
        if self.ms_at(u).saturating_sub(now_ms).unsigned_abs() > REANCHOR_MS {
            self.anchor_ms = now_ms;
            self.first = u;
        }
        self.last = u;
        self.ms_at(u)
    }
}

pub(crate) enum SeqStep {
    First,
    Next,
    Gap,
    Old,
}

pub(crate) fn seq_step(last: Option<u16>, seq: u16) -> SeqStep {
    let Some(last) = last else {
        return SeqStep::First;
    };
    match seq.wrapping_sub(last) as i16 {
        1 => SeqStep::Next,
        d if d <= 0 && d > -SEQ_RESTART_DISTANCE => SeqStep::Old,
        _ => SeqStep::Gap,
    }
}
