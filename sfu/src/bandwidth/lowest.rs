//! The lowest value seen over the current [`RTT_BASE_WINDOW`] and the one before: the base the
//! queue toward a subscriber is measured from (its round trip). A base older than two windows
//! is forgotten, so a path that lengthened for good is not read as a queue for long. (The
//! transit of its own audio has a base of its own that rises steadily, `uplink.rs`: an audio
//! clock may drift.)

use std::time::Instant;

use super::RTT_BASE_WINDOW;

#[derive(Debug, Clone, Copy, Default)]
pub struct Lowest<T> {
    /// The lowest of the current window and of the one before.
    lows: [Option<T>; 2],
    /// When the current window started.
    since: Option<Instant>,
}

impl<T: Ord + Copy> Lowest<T> {
    /// Notes `v` seen at `at` and returns the lowest of the two windows (`v` itself at first).
    pub fn observe(&mut self, at: Instant, v: T) -> T {
        let since = *self.since.get_or_insert(at);
        if at.saturating_duration_since(since) >= RTT_BASE_WINDOW {
            self.lows = [None, self.lows[0]];
            self.since = Some(at);
        }
        self.lows[0] = Some(self.lows[0].map_or(v, |l| l.min(v)));
        self.lowest().unwrap_or(v)
    }

    /// The lowest of the two windows, if anything was seen.
    pub fn lowest(&self) -> Option<T> {
        self.lows.iter().flatten().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_lowest_of_two_windows_and_forgotten_after_them() {
        let t0 = Instant::now();
        let mut l = Lowest::default();
        assert_eq!(l.lowest(), None);
        assert_eq!(l.observe(t0, 30), 30);
        assert_eq!(l.observe(t0 + Duration::from_secs(1), 10), 10);
        assert_eq!(
            l.observe(t0 + RTT_BASE_WINDOW, 50),
            10,
            "the window before still counts"
        );
        assert_eq!(
            l.observe(t0 + RTT_BASE_WINDOW * 2, 40),
            40,
            "two windows on: forgotten"
        );
        assert_eq!(l.lowest(), Some(40));
    }
}
