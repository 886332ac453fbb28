//! What one subscriber's downlink asks of str0m's estimator: the minimum rate it pads up to (a
//! trial of a step up, or of resuming; none otherwise) and the desired rate its probes look for
//! (the next layers with headroom, stepped by a hair so that str0m probes again); and when its
//! estimate tells how weak its link is (its connection quality).

use std::time::{Duration, Instant};

use super::{
    Downlink, AUDIO_RESERVE_BPS, HD_DESIRED_BPS, PROBE_BUMP_BPS, PROBE_EVERY, RESUME_ABOVE_BPS,
    USABLE_PERCENT,
};

/// How long after the link's last sign of congestion ([`QUEUE_SIGN`](super::QUEUE_SIGN),
/// [`LOSS_SIGN`](super::LOSS_SIGN)) its estimate still tells its connection quality
/// ([`Downlink::quality_estimate`]).
pub const QUALITY_SIGN_WINDOW: Duration = Duration::from_secs(10);

impl Downlink {
    /// Whether its video flows under the estimate it wants (as of the last [`Downlink::poll`]).
    pub fn is_constrained(&self) -> bool {
        self.constrained_since.is_some()
    }

    /// The estimate that tells the subscriber's connection quality at `now`, if any: only while
    /// its video flows under the rate it wants and the link showed a sign of congestion within
    /// [`QUALITY_SIGN_WINDOW`]. A subscriber sent little (a publisher whose uplink is weak, or
    /// one that is still ramping up) has an application-limited estimate: str0m's stays near
    /// what is sent, under 300 kbit/s on a clean link (seen: a doctor told `poor` ~2 s before
    /// a Firefox patient's link was shaped, while it waited for the patient's next layer).
    pub fn quality_estimate(&self, now: Instant) -> Option<u64> {
        let congested_lately = self
            .sign_at
            .is_some_and(|t| now.saturating_duration_since(t) < QUALITY_SIGN_WINDOW);
        if self.is_constrained() && congested_lately {
            self.estimate
        } else {
            None
        }
    }

    /// The estimate (bits/s) at which the video it wants fits with the selector's headroom.
    pub(super) fn desired(&self, audio_tracks: usize, video_tracks: usize) -> u64 {
        let audio = AUDIO_RESERVE_BPS * audio_tracks as u64;
        match self.wanted {
            // Paused: what resuming needs, with the selector's headroom. Only audio flows, and
            // the probes of this desired rate are what finds a link that recovered; probes of
            // HD filled a weak link's queue every few seconds (audio waited behind them).
            _ if self.is_video_paused() => {
                let video = RESUME_ABOVE_BPS * video_tracks as u64;
                (audio + video).saturating_mul(crate::layers::UP_HEADROOM_PERCENT) / USABLE_PERCENT
            }
            Some(w) => {
                let video = w
                    .next_bps
                    .saturating_mul(crate::layers::UP_HEADROOM_PERCENT)
                    / 100;
                (audio + video).saturating_mul(100) / USABLE_PERCENT
            }
            _ => HD_DESIRED_BPS * video_tracks as u64,
        }
    }

    /// The (minimum, desired) rates for str0m's estimator. The minimum is none (str0m pads up to
    /// it, in packets of a few dozen bytes), but for a trial: of a step up
    /// ([`Downlink::set_wanted`]), or of resuming paused video (while it waits
    /// [`RESUME_AFTER`](super::RESUME_AFTER), str0m pads up to [`RESUME_ABOVE_BPS`] per video
    /// track, so an estimate that only a lucky probe raised falls before video floods the
    /// link). The desired rate is what the next layers need with headroom, else HD on every
    /// video track; while video is paused, what resuming needs, stepped up by a hair every
    /// [`PROBE_EVERY`] (a rise above the estimate makes str0m send a short probe), so a link
    /// that recovered is found without saturating one that did not.
    pub fn bwe_target(&self, now: Instant, audio_tracks: usize, video_tracks: usize) -> (u64, u64) {
        let audio = AUDIO_RESERVE_BPS * audio_tracks.max(1) as u64;
        let trial = self.wanted.and_then(|w| w.trial_bps);
        let min = match trial {
            Some(video) if !self.is_video_paused() => audio + video,
            // Paused video waiting to resume: a trial of the rate that resuming is judged by.
            _ if self.is_video_paused() && self.crossing_since.is_some() => {
                audio + RESUME_ABOVE_BPS * video_tracks.max(1) as u64
            }
            // Audio alone pads to nothing more: with a minimum of audio's reserve (64 kbit/s,
            // more than Opus with RED sends), str0m sent ~30 padding packets a second, 33 kbit/s
            // on the wire, to a subscriber whose video paused on a 150 kbit/s link (scenario c),
            // which audio, its RTCP and that padding then filled (a standing queue of 0.5-0.8 s).
            // str0m still pads up to its own 50 kbit/s, less what media sends.
            _ => 0,
        };
        // Congested, or draining the queue it left: no higher than what flows now. After a large
        // drop str0m probes at 85 % of the estimate before it, capped at twice the desired rate:
        // with the next layers' rate (or HD) desired, such a probe fills the congested link.
        let desired = match self.wanted {
            Some(w) if self.is_congested(now) || self.is_draining(now) => audio + w.now_bps,
            _ => self.desired(audio_tracks, video_tracks.max(1)),
        }
        .max(min);
        // Paused: a probe every other PROBE_EVERY. Flowing under the wanted rate: every fourth,
        // so that an estimate that fell with a burst of loss finds the link's rate again
        // (str0m probes only when the desired rate rises; the application-limited estimate
        // otherwise stays near what is sent).
        let (since, every) = match (self.paused_since, self.constrained_since) {
            (Some(since), _) => (Some(since), PROBE_EVERY),
            (None, Some(since)) => (Some(since), PROBE_EVERY * 2),
            _ => (None, PROBE_EVERY),
        };
        let bump = since.map_or(0, |since| {
            let steps = now.duration_since(since).as_millis() / every.as_millis();
            (steps % 2) as u64 * PROBE_BUMP_BPS
        });
        (min, desired + bump)
    }
}
