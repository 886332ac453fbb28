//! What one subscriber's downlink can carry, as a pure state machine fed by str0m's send-side
//! bandwidth estimate (TWCC): the video budget left once audio is served, when the subscriber's
//! video must pause so that audio still gets through (audio-only fallback), when it may resume,
//! and the per-track bitrate its publishers are asked to keep under (a REMB cap, the single-
//! layer fallback while publishers send one layer). No sockets, no `Rtc`: unit-tested alone.
//!
//! Rules (LiveKit's and mediasoup's allocators are the model; the numbers are ours):
//! - audio is budgeted first: [`AUDIO_RESERVE_BPS`] per audio track, never paused here;
//! - only [`USABLE_PERCENT`] of the estimate is spent (retransmissions and loss need room);
//! - video pauses after [`PAUSE_AFTER`] below [`PAUSE_BELOW_BPS`] per video track, at once below
//!   half of it: down fast;
//! - video resumes only after [`RESUME_AFTER`] at or above [`RESUME_ABOVE_BPS`]: up slowly, with
//!   headroom, so that a link at the edge does not flap;
//! - a publisher is capped only while the per-track budget is below [`UNCAPPED_PER_TRACK_BPS`]
//!   (what the SDK sends at 720p): a good link never lowers anyone's quality.

use std::time::{Duration, Instant};

/// Bits per second reserved for each audio track (Opus with in-band FEC, plus RTP/SRTP/UDP).
pub const AUDIO_RESERVE_BPS: u64 = 64_000;
/// Share of the estimate that media may use.
pub const USABLE_PERCENT: u64 = 85;
/// Below this per video track (sustained), video pauses.
pub const PAUSE_BELOW_BPS: u64 = 150_000;
/// At or above this per video track (sustained), paused video resumes.
pub const RESUME_ABOVE_BPS: u64 = 300_000;
/// How long the budget must stay low before video pauses.
pub const PAUSE_AFTER: Duration = Duration::from_millis(1_500);
/// How long the budget must stay high before paused video resumes.
pub const RESUME_AFTER: Duration = Duration::from_secs(3);
/// A per-track budget at or above this (the SDK's 720p maximum) does not cap publishers.
pub const UNCAPPED_PER_TRACK_BPS: u64 = 2_500_000;
/// What the estimator probes for per video track received: HD.
pub const HD_DESIRED_BPS: u64 = 3_200_000;
/// While video is paused, how often the desired rate steps (every other step is a rise, and a
/// rise asks str0m for a probe).
pub const PROBE_EVERY: Duration = Duration::from_millis(1_500);
const PROBE_BUMP_BPS: u64 = 1_000;
/// A cap below this is not asked for: no encoder makes usable video from less.
pub const MIN_CAP_BPS: u64 = 60_000;

/// What the router does after [`Downlink::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// Pause this subscriber's video (its audio keeps flowing).
    PauseVideo,
    /// Resume it (at a keyframe).
    ResumeVideo,
}

/// One subscriber's downlink.
#[derive(Debug, Clone, Default)]
pub struct Downlink {
    estimate: Option<u64>,
    /// Since when its video is paused (None: it flows).
    paused_since: Option<Instant>,
    /// Since when the budget has been on the other side of the pause/resume threshold.
    crossing_since: Option<Instant>,
    /// Since when its video has flowed under the estimate it wants (a constrained link).
    constrained_since: Option<Instant>,
}

impl Downlink {
    /// A new estimate from str0m, in bits per second.
    pub fn on_estimate(&mut self, bps: u64) {
        self.estimate = Some(bps);
    }

    pub fn estimate(&self) -> Option<u64> {
        self.estimate
    }

    pub fn is_video_paused(&self) -> bool {
        self.paused_since.is_some()
    }

    /// Bits per second each video track may use, or None without an estimate yet.
    pub fn video_budget_per_track(&self, audio_tracks: usize, video_tracks: usize) -> Option<u64> {
        let estimate = self.estimate?;
        let usable = estimate.saturating_mul(USABLE_PERCENT) / 100;
        let video = usable.saturating_sub(AUDIO_RESERVE_BPS.saturating_mul(audio_tracks as u64));
        Some(video / video_tracks.max(1) as u64)
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

    /// Decides whether the subscriber's video pauses or resumes now.
    pub fn poll(&mut self, now: Instant, audio_tracks: usize, video_tracks: usize) -> Change {
        let wanted = HD_DESIRED_BPS * video_tracks as u64;
        let constrained = video_tracks > 0
            && !self.is_video_paused()
            && self.estimate.is_some_and(|e| e < wanted);
        if !constrained {
            self.constrained_since = None;
        } else if self.constrained_since.is_none() {
            self.constrained_since = Some(now);
        }
        if video_tracks == 0 {
            self.crossing_since = None;
            return Change::None;
        }
        let Some(per) = self.video_budget_per_track(audio_tracks, video_tracks) else {
            return Change::None;
        };
        if !self.is_video_paused() {
            if per >= PAUSE_BELOW_BPS {
                self.crossing_since = None;
                return Change::None;
            }
            let since = *self.crossing_since.get_or_insert(now);
            if per < PAUSE_BELOW_BPS / 2 || now.duration_since(since) >= PAUSE_AFTER {
                self.paused_since = Some(now);
                self.crossing_since = None;
                return Change::PauseVideo;
            }
        } else {
            if per < RESUME_ABOVE_BPS {
                self.crossing_since = None;
                return Change::None;
            }
            let since = *self.crossing_since.get_or_insert(now);
            if now.duration_since(since) >= RESUME_AFTER {
                self.paused_since = None;
                self.crossing_since = None;
                return Change::ResumeVideo;
            }
        }
        Change::None
    }

    /// The (minimum, desired) rates for str0m's estimator. The minimum is audio's: padding up to
    /// more would fill the very link that is too weak. The desired rate is HD on every video
    /// track; while video is paused, it steps up by a hair every [`PROBE_EVERY`] (a rise above
    /// the estimate makes str0m send a short probe), so a link that recovered is found without
    /// saturating one that did not.
    pub fn bwe_target(&self, now: Instant, audio_tracks: usize, video_tracks: usize) -> (u64, u64) {
        let min = AUDIO_RESERVE_BPS * audio_tracks.max(1) as u64;
        let desired = HD_DESIRED_BPS * video_tracks.max(1) as u64;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn audio_is_budgeted_before_video() {
        let mut d = Downlink::default();
        assert_eq!(d.video_budget_per_track(1, 1), None);
        d.on_estimate(500_000);
        // 85 % of 500k = 425k, minus 64k of audio.
        assert_eq!(d.video_budget_per_track(1, 1), Some(361_000));
        assert_eq!(
            d.video_budget_per_track(2, 2),
            Some((425_000 - 128_000) / 2)
        );
        d.on_estimate(50_000);
        assert_eq!(d.video_budget_per_track(1, 1), Some(0));
    }

    #[test]
    fn pauses_after_a_sustained_low_budget_and_at_once_when_very_low() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(2_000_000);
        assert_eq!(d.poll(t0, 1, 1), Change::None);
        // 250k: 212k usable - 64k audio = 148k per video track: below 150k.
        d.on_estimate(250_000);
        assert_eq!(d.poll(at(t0, 100), 1, 1), Change::None);
        assert_eq!(d.poll(at(t0, 1_000), 1, 1), Change::None);
        // A brief recovery restarts the clock.
        d.on_estimate(400_000);
        assert_eq!(d.poll(at(t0, 1_200), 1, 1), Change::None);
        d.on_estimate(250_000);
        assert_eq!(d.poll(at(t0, 1_300), 1, 1), Change::None);
        assert_eq!(d.poll(at(t0, 2_700), 1, 1), Change::None);
        assert_eq!(d.poll(at(t0, 2_800), 1, 1), Change::PauseVideo);
        assert!(d.is_video_paused());
        assert_eq!(d.poll(at(t0, 2_900), 1, 1), Change::None);

        // Far below: no waiting.
        let mut e = Downlink::default();
        e.on_estimate(120_000);
        assert_eq!(e.poll(t0, 1, 1), Change::PauseVideo);
    }

    #[test]
    fn resumes_only_with_headroom_held_for_a_while() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(100_000);
        assert_eq!(d.poll(t0, 1, 1), Change::PauseVideo);
        // Enough to pause-not, but not enough headroom to resume (needs 300k per track).
        d.on_estimate(350_000);
        assert_eq!(d.poll(at(t0, 5_000), 1, 1), Change::None);
        // 500k: 361k per track.
        d.on_estimate(500_000);
        assert_eq!(d.poll(at(t0, 6_000), 1, 1), Change::None);
        d.on_estimate(300_000);
        assert_eq!(d.poll(at(t0, 8_000), 1, 1), Change::None);
        d.on_estimate(500_000);
        assert_eq!(d.poll(at(t0, 8_100), 1, 1), Change::None);
        assert_eq!(d.poll(at(t0, 11_000), 1, 1), Change::None);
        assert_eq!(d.poll(at(t0, 11_100), 1, 1), Change::ResumeVideo);
        assert!(!d.is_video_paused());
    }

    #[test]
    fn without_video_nothing_pauses() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(10_000);
        assert_eq!(d.poll(t0, 1, 0), Change::None);
        assert_eq!(d.publisher_cap(1, 0), None);
    }

    #[test]
    fn publishers_are_capped_only_on_a_constrained_unpaused_link() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        assert_eq!(d.publisher_cap(1, 1), None);
        d.on_estimate(3_200_000);
        assert_eq!(d.publisher_cap(1, 1), None, "HD fits");
        assert_eq!(d.publisher_cap(1, 2), Some((2_720_000 - 64_000) / 2));
        d.on_estimate(600_000);
        assert_eq!(d.publisher_cap(1, 1), Some(510_000 - 64_000));
        assert_eq!(d.publisher_cap(1, 2), Some((510_000 - 64_000) / 2));
        d.on_estimate(100_000);
        assert_eq!(d.poll(t0, 1, 1), Change::PauseVideo);
        assert_eq!(
            d.publisher_cap(1, 1),
            None,
            "a paused subscriber caps nobody"
        );
    }

    #[test]
    fn probes_without_padding_while_paused() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        assert_eq!(d.bwe_target(t0, 1, 1), (64_000, HD_DESIRED_BPS));
        assert_eq!(d.bwe_target(t0, 2, 3), (128_000, 3 * HD_DESIRED_BPS));
        d.on_estimate(100_000);
        assert_eq!(d.poll(t0, 1, 1), Change::PauseVideo);
        // The minimum stays audio's; the desired rate rises every other step.
        let targets: Vec<u64> = [0, 1_600, 3_100, 4_600]
            .iter()
            .map(|&ms| d.bwe_target(at(t0, ms), 1, 1))
            .inspect(|&(min, _)| assert_eq!(min, 64_000))
            .map(|(_, desired)| desired)
            .collect();
        assert_eq!(
            targets,
            vec![
                HD_DESIRED_BPS,
                HD_DESIRED_BPS + 1_000,
                HD_DESIRED_BPS,
                HD_DESIRED_BPS + 1_000
            ]
        );
    }

    #[test]
    fn a_constrained_link_is_probed_every_six_seconds_and_a_good_one_never() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(400_000);
        assert_eq!(d.poll(t0, 1, 1), Change::None);
        let desired = |d: &Downlink, ms| d.bwe_target(at(t0, ms), 1, 1).1;
        assert_eq!(desired(&d, 0), HD_DESIRED_BPS);
        assert_eq!(desired(&d, 2_900), HD_DESIRED_BPS);
        assert_eq!(desired(&d, 3_100), HD_DESIRED_BPS + 1_000);
        assert_eq!(desired(&d, 6_100), HD_DESIRED_BPS);
        // A link that carries HD is not probed.
        d.on_estimate(HD_DESIRED_BPS + 1);
        assert_eq!(d.poll(at(t0, 7_000), 1, 1), Change::None);
        assert_eq!(desired(&d, 9_100), HD_DESIRED_BPS);
    }
}
