//! What each video track of one subscriber may use of its downlink's estimate: the budget its
//! layers are chosen by, the one paused video is judged by to resume, and the cap its
//! publishers are asked to keep under ([`USABLE_PERCENT`], audio first).

use super::{Downlink, AUDIO_RESERVE_BPS, MIN_CAP_BPS, UNCAPPED_PER_TRACK_BPS, USABLE_PERCENT};

impl Downlink {
    /// Bits per second each video track may use, or None without an estimate yet.
    pub fn video_budget_per_track(&self, audio_tracks: usize, video_tracks: usize) -> Option<u64> {
        Some(per_track(self.estimate?, audio_tracks, video_tracks))
    }

    /// What paused video is judged by to resume ([`RESUME_ABOVE_BPS`](super::RESUME_ABOVE_BPS)): the budget of str0m's
    /// current estimate where that is lower than its event's, a mean that lags a fall (scenario
    /// c: 537–570 against 58–83 kbit/s 2–4 s after the step; the resume trial's padding flooded
    /// the link). A link that recovers raises the current one first (its probes).
    pub(super) fn resume_budget_per_track(
        &self,
        audio_tracks: usize,
        video_tracks: usize,
    ) -> Option<u64> {
        let estimate = self.estimate?;
        let lowest = self.current_estimate.map_or(estimate, |c| c.min(estimate));
        Some(per_track(lowest, audio_tracks, video_tracks))
    }

    /// The cap to ask of each publisher of video this subscriber receives: None when the
    /// subscriber does not constrain them (no estimate, a good link, or its video paused).
    pub fn publisher_cap(&self, audio_tracks: usize, video_tracks: usize) -> Option<u64> {
        if self.is_video_paused() || video_tracks == 0 {
            return None;
        }
        let per = self.video_budget_per_track(audio_tracks, video_tracks)?;
        (per < UNCAPPED_PER_TRACK_BPS).then_some(per.max(MIN_CAP_BPS))
    }
}

/// What media may use of an estimate of `bps` ([`USABLE_PERCENT`]).
pub(super) fn usable(bps: u64) -> u64 {
    bps.saturating_mul(USABLE_PERCENT) / 100
}

/// What each video track may use of an estimate of `bps` once audio is served.
fn per_track(bps: u64, audio_tracks: usize, video_tracks: usize) -> u64 {
    let video = usable(bps).saturating_sub(AUDIO_RESERVE_BPS.saturating_mul(audio_tracks as u64));
    video / video_tracks.max(1) as u64
}
