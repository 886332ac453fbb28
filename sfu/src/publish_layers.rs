//! Which simulcast layers a publisher sends, as pure state machines (no sockets, no `Rtc`):
//!
//! - [`max_layer_for`] maps the size at which a subscriber shows a video (its element, in
//!   device pixels) to the highest layer worth sending it: the lowest layer at least about as
//!   tall, so a thumbnail never takes the 720p layer.
//! - [`PublishedLayers`] decides, from the highest layer any subscriber (or the recorder) may
//!   take, which layers the publisher keeps sending: layers above it are paused at the
//!   publisher (`publish-layers`), which frees its uplink and its encoder. A higher wish
//!   resumes them at once; a lower one pauses only after it held for [`LOWER_AFTER`], so a
//!   tile resized back and forth or a subscriber rejoining does not flap the encoder.
//!
//! The lowest layer is never paused: it is what a subscriber falls back to on a weak link and
//! what a new subscriber starts on.

use std::time::{Duration, Instant};

use crate::layers::MAX_LAYERS;

/// A lower wish must hold this long before layers above it are paused.
pub const LOWER_AFTER: Duration = Duration::from_secs(8);
/// A layer is taken for a shown height while it is at least this share of it (percent): a
/// 180p layer serves a 200-pixel-high tile.
pub const COVER_PERCENT: u32 = 85;
/// Heights assumed when the publisher did not state its layers: the SDK's ladder for a 720p
/// camera (quarter, half and full size).
const DEFAULT_HEIGHTS: [[u32; MAX_LAYERS]; MAX_LAYERS] =
    [[720, 0, 0], [360, 720, 0], [180, 360, 720]];

/// The highest layer worth forwarding to a subscriber that shows the video `size` (width,
/// height in device pixels; `None`: no preference, the top). `heights` are the publisher's
/// layers' heights, lowest first (empty or of another length than `count`: the default
/// ladder). A hidden video (0 high) takes the lowest layer.
pub fn max_layer_for(size: Option<(u32, u32)>, heights: &[u32], count: u8) -> u8 {
    let count = usize::from(count.clamp(1, MAX_LAYERS as u8));
    let top = (count - 1) as u8;
    let Some((_, shown)) = size else {
        return top;
    };
    let ladder = if heights.len() == count {
        heights
    } else {
        &DEFAULT_HEIGHTS[count - 1][..count]
    };
    let want = u64::from(shown) * u64::from(COVER_PERCENT);
    ladder
        .iter()
        .position(|&h| u64::from(h) * 100 >= want)
        .map_or(top, |l| l as u8)
}

/// What one publisher track was asked to send, and a pending lowering.
#[derive(Debug, Clone, Default)]
pub struct PublishedLayers {
    /// The highest layer the publisher was told to send (`None`: not told, it sends all).
    sent: Option<u8>,
    /// Since when the wish has been below `sent`, and the highest wish seen since.
    lower_since: Option<(Instant, u8)>,
}

impl PublishedLayers {
    /// The highest layer the publisher sends now (`count - 1` until it is told otherwise).
    pub fn max_layer(&self, count: u8) -> u8 {
        let top = count.clamp(1, MAX_LAYERS as u8) - 1;
        self.sent.map_or(top, |s| s.min(top))
    }

    /// With `wanted` the highest layer any subscriber or the recorder may take (`None`: nobody
    /// receives this track), returns the highest layer the publisher should now be told to
    /// send, when that changes.
    pub fn poll(&mut self, now: Instant, wanted: Option<u8>, count: u8) -> Option<u8> {
        let top = count.clamp(1, MAX_LAYERS as u8) - 1;
        if top == 0 {
            // One layer: nothing to pause.
            self.lower_since = None;
            return None;
        }
        let wanted = wanted.unwrap_or(0).min(top);
        let current = self.max_layer(count);
        if wanted >= current {
            self.lower_since = None;
            if wanted > current {
                self.sent = Some(wanted);
                return Some(wanted);
            }
            return None;
        }
        let (since, highest) = self.lower_since.get_or_insert((now, wanted));
        *highest = (*highest).max(wanted);
        if now.saturating_duration_since(*since) < LOWER_AFTER {
            return None;
        }
        let to = *highest;
        self.lower_since = None;
        self.sent = Some(to);
        Some(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shown_size_maps_to_the_lowest_layer_about_as_tall() {
        let sdk = [180, 360, 720];
        assert_eq!(max_layer_for(None, &sdk, 3), 2);
        assert_eq!(max_layer_for(Some((320, 180)), &sdk, 3), 0);
        assert_eq!(max_layer_for(Some((356, 200)), &sdk, 3), 0, "within 85 %");
        assert_eq!(max_layer_for(Some((427, 240)), &sdk, 3), 1);
        assert_eq!(max_layer_for(Some((1280, 720)), &sdk, 3), 2);
        assert_eq!(
            max_layer_for(Some((3840, 2160)), &sdk, 3),
            2,
            "the top at most"
        );
        assert_eq!(max_layer_for(Some((0, 0)), &sdk, 3), 0, "hidden");
        // A 1080p camera's ladder, as its publisher stated it.
        assert_eq!(max_layer_for(Some((960, 540)), &[270, 540, 1080], 3), 1);
        // Unstated or not matching the layers seen: the default ladder.
        assert_eq!(max_layer_for(Some((640, 360)), &[], 3), 1);
        assert_eq!(max_layer_for(Some((640, 360)), &[180, 360, 720], 2), 0);
        assert_eq!(max_layer_for(Some((640, 360)), &[], 1), 0);
    }

    #[test]
    fn layers_pause_only_after_the_lower_wish_held_and_resume_at_once() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut p = PublishedLayers::default();
        assert_eq!(p.poll(at(0), Some(2), 3), None, "it sends all already");
        assert_eq!(p.poll(at(100), Some(0), 3), None);
        assert_eq!(p.poll(at(4_000), Some(1), 3), None);
        assert_eq!(p.poll(at(8_000), Some(0), 3), None);
        assert_eq!(
            p.poll(at(8_100), Some(0), 3),
            Some(1),
            "the highest wish of the hold"
        );
        assert_eq!(p.max_layer(3), 1);
        assert_eq!(p.poll(at(8_200), Some(2), 3), Some(2), "up at once");
        // A lower wish that does not hold is forgotten.
        assert_eq!(p.poll(at(9_000), Some(0), 3), None);
        assert_eq!(p.poll(at(12_000), Some(2), 3), None);
        assert_eq!(p.poll(at(18_000), Some(0), 3), None, "a new hold starts");
        assert_eq!(p.poll(at(26_000), Some(0), 3), Some(0));
    }

    #[test]
    fn nobody_watching_keeps_only_the_lowest_and_one_layer_is_left_alone() {
        let t0 = Instant::now();
        let mut p = PublishedLayers::default();
        assert_eq!(p.poll(t0, None, 3), None);
        assert_eq!(p.poll(t0 + LOWER_AFTER, None, 3), Some(0));
        assert_eq!(p.poll(t0 + LOWER_AFTER, Some(2), 3), Some(2));
        let mut one = PublishedLayers::default();
        assert_eq!(one.poll(t0, None, 1), None);
        assert_eq!(one.poll(t0 + LOWER_AFTER * 2, None, 1), None);
        assert_eq!(one.max_layer(1), 0);
    }
}
