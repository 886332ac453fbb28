//! The subscriber's video at its lowest layer: since when it is there, and whether the link
//! visibly carries it, in which case a low estimate alone does not pause it (see
//! [`PAUSE_BELOW_BPS`](super::PAUSE_BELOW_BPS)); a growing queue or heavy loss still does.

use std::time::{Duration, Instant};

use super::{settled, Downlink, FLOOR_QUEUE_PAUSE, QUEUE_SIGN};

/// A floor the link visibly carried (no queue, [`QUEUE_SIGN`]) counts as carried this long
/// after, while its queue stays under [`FLOOR_QUEUE_PAUSE`]: one burst of the lowest layer (a
/// keyframe) queues for a second or two. Seen with a Firefox patient on a 300 kbit/s link with
/// 3 % loss: after 22 s of the lowest layer at 30 fps, a burst of ~350 kbit/s for a second
/// queued 80–225 ms while str0m's loss-based estimate was 166–250 kbit/s (under the pause
/// budget), and video paused for 13 s on a link that carried it.
pub const FLOOR_CARRIED_HOLD: Duration = Duration::from_secs(3);

impl Downlink {
    /// Whether every video track the subscriber receives is at its lowest layer now.
    pub fn set_at_floor(&mut self, now: Instant, at_floor: bool) {
        if !at_floor {
            self.floor_since = None;
            self.floor_fails = false;
            self.floor_carried_at = None;
        } else if self.floor_since.is_none() {
            self.floor_since = Some(now);
        }
    }

    /// A feedback round at `at` found `queue`: settled at the floor with no queue, the link
    /// visibly carries it. Not while video is paused: audio alone says nothing of the floor.
    pub(super) fn note_floor_queue(&mut self, at: Instant, queue: Duration) {
        if settled_floor(self.floor_since, at) && queue < QUEUE_SIGN && !self.is_video_paused() {
            self.floor_carried_at = Some(at);
        }
    }

    /// Whether the link visibly carries the lowest layer at `now`: every video track has been at
    /// it for [`FLOOR_SETTLE`](super::FLOOR_SETTLE), and fresh feedback
    /// ([`TWCC_LOSS_FRESH`](super::TWCC_LOSS_FRESH)) shows no queue, or one under
    /// [`FLOOR_QUEUE_PAUSE`] within [`FLOOR_CARRIED_HOLD`] of a round that showed none.
    pub(super) fn floor_carried(&self, now: Instant) -> bool {
        let lately = self
            .floor_carried_at
            .is_some_and(|t| now.saturating_duration_since(t) < FLOOR_CARRIED_HOLD);
        settled_floor(self.floor_since, now)
            && self
                .last_queue
                .is_some_and(|q| q < QUEUE_SIGN || (lately && q < FLOOR_QUEUE_PAUSE))
            && self.twcc_fresh(now)
    }
}

/// Whether the video has been at its lowest layer for [`FLOOR_SETTLE`](super::FLOOR_SETTLE) at
/// `at` (loss is its own).
pub(super) fn settled_floor(floor_since: Option<Instant>, at: Instant) -> bool {
    floor_since.is_some() && settled(floor_since, at)
}
