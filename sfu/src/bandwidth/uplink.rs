//! How long the queue of a participant's own uplink is, read off the audio it publishes, so that
//! the round trip of its TWCC feedback can speak for its downlink alone. That round trip holds
//! both queues (the feedback waits in the uplink's), which is why the congestion rules of
//! [`Downlink`] wait for str0m's estimate to fall (a one-way measure) before they trust a long
//! one; that estimate stayed put for ~0.7 s after scenario c's step while the round trip grew
//! from 20 ms to 675 ms, and the top layer filled the 150 kbit/s link all that time. With the
//! uplink's queue measured, a round trip that grows this fast while the uplink stays short is the
//! downlink's ([`STEP_QUEUE`]). Pure: fed per audio packet, a few integer operations.

use std::time::{Duration, Instant};

use super::{Downlink, Lowest};

/// The uplink's queue is known only from [`RECENT`] audio packets that all came within this
/// long of the feedback round: audio flows every 20 ms, and a muted publisher, or one whose
/// packets stopped or bunched (a stalled uplink), leaves the round trip to the other rules.
pub const UPLINK_FRESH: Duration = Duration::from_millis(100);
/// How many of the newest audio packets speak for the uplink (all of them must be short).
pub const RECENT: usize = 4;
/// An uplink queue under this is short: the round trip's queue is the downlink's.
pub const UPLINK_SHORT: Duration = Duration::from_millis(50);
/// A round trip's queue under this is short: where [`STEP_QUEUE`] measures its growth from.
pub const SHORT_QUEUE: Duration = Duration::from_millis(50);
/// A queue toward the subscriber of [`super::OVERRUN_QUEUE`] or more, still growing, that was
/// short ([`SHORT_QUEUE`]) at most this long before, while its uplink is short too
/// ([`UPLINK_SHORT`]), is congestion: the link carries well under what it is sent (the queue
/// grew by 100 ms or more in this long), a step down, not a layer that overruns a little.
pub const STEP_QUEUE: Duration = Duration::from_millis(400);

/// The transit of the participant's own audio (its arrival at the server less its RTP time),
/// over the lowest of the last two windows ([`Lowest`]): the queue it met on the way.
#[derive(Debug, Clone, Default)]
pub struct UplinkQueue {
    /// The first packet's arrival: transits are counted from it (microseconds).
    epoch: Option<Instant>,
    /// The lowest transit lately.
    base: Lowest<i64>,
    /// The newest [`RECENT`] packets' arrivals and transits (a ring; `next` is the oldest).
    recent: [Option<(Instant, i64)>; RECENT],
    next: usize,
}

impl UplinkQueue {
    /// An audio packet of the participant arrived at `arrived`, with its extended RTP time in
    /// microseconds (str0m's `RtpPacket::time`). A clock that does not keep pace with real
    /// time (or a new time base) only makes the queue look longer: the rule then stands aside.
    pub fn on_audio(&mut self, arrived: Instant, rtp_micros: u64) {
        let epoch = *self.epoch.get_or_insert(arrived);
        let since = i64::try_from(arrived.saturating_duration_since(epoch).as_micros());
        let transit = since
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(rtp_micros).unwrap_or(i64::MAX));
        self.base.observe(arrived, transit);
        self.recent[self.next] = Some((arrived, transit));
        self.next = (self.next + 1) % RECENT;
    }

    /// The longest queue the newest [`RECENT`] packets met, if they all came within
    /// [`UPLINK_FRESH`] of `now`.
    pub fn queue(&self, now: Instant) -> Option<Duration> {
        let mut longest = i64::MIN;
        for r in &self.recent {
            let (at, transit) = (*r)?;
            if now.saturating_duration_since(at) > UPLINK_FRESH {
                return None;
            }
            longest = longest.max(transit);
        }
        let base = self.base.lowest()?;
        Some(Duration::from_micros(
            u64::try_from(longest.saturating_sub(base)).unwrap_or(0),
        ))
    }

    /// Whether the uplink is known to be short at `now` ([`UPLINK_SHORT`]).
    pub fn is_short(&self, now: Instant) -> bool {
        self.queue(now).is_some_and(|q| q < UPLINK_SHORT)
    }
}

impl Downlink {
    /// An audio packet this participant publishes arrived (see [`UplinkQueue::on_audio`]).
    pub fn on_own_audio(&mut self, arrived: Instant, rtp_micros: u64) {
        self.uplink.on_audio(arrived, rtp_micros);
    }

    /// The participant's own uplink queue at `now`, if known ([`UplinkQueue::queue`]).
    pub fn uplink_queue(&self, now: Instant) -> Option<Duration> {
        self.uplink.queue(now)
    }

    /// Whether the round trip's `queue` at `at`, grown since the last round, is a step down of
    /// the downlink ([`STEP_QUEUE`]); notes when it was last short.
    pub(super) fn stepped_down(&mut self, at: Instant, queue: Duration, growing: bool) -> bool {
        if queue < SHORT_QUEUE {
            self.short_queue_at = Some(at);
            return false;
        }
        growing
            && queue >= super::OVERRUN_QUEUE
            && self
                .short_queue_at
                .is_some_and(|t| at.saturating_duration_since(t) <= STEP_QUEUE)
            && self.uplink.is_short(at)
    }
}

#[cfg(test)]
mod tests {
    use super::super::RTT_BASE_WINDOW;
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Packets every 20 ms of RTP time, each delayed by `queue(i)` on the way.
    fn feed(u: &mut UplinkQueue, t0: Instant, n: u64, queue: impl Fn(u64) -> Duration) {
        for i in 0..n {
            u.on_audio(t0 + MS * (20 * i as u32) + queue(i), 1_000_000 + 20_000 * i);
        }
    }

    #[test]
    fn a_steady_uplink_is_short_and_a_growing_queue_is_measured() {
        let t0 = Instant::now();
        let mut u = UplinkQueue::default();
        feed(&mut u, t0, 50, |_| 5 * MS);
        assert_eq!(u.queue(t0 + MS * 985), Some(Duration::ZERO));
        assert!(u.is_short(t0 + MS * 985));
        // The next second, each packet waits 10 ms longer than the one before.
        let t1 = t0 + Duration::from_secs(1);
        for i in 0..50u64 {
            u.on_audio(t1 + MS * (30 * i as u32), 2_000_000 + 20_000 * i);
        }
        let last = t1 + MS * (30 * 49);
        assert_eq!(u.queue(last), Some(MS * 490));
        assert!(!u.is_short(last));
    }

    #[test]
    fn without_fresh_audio_the_uplink_is_not_known() {
        let t0 = Instant::now();
        let mut u = UplinkQueue::default();
        assert_eq!(u.queue(t0), None);
        feed(&mut u, t0, 10, |_| MS);
        let last = t0 + MS * 181;
        assert!(u.is_short(last));
        assert!(!u.is_short(last + UPLINK_FRESH + MS));
    }

    #[test]
    fn a_stalled_uplink_is_long_until_the_newest_packets_are_all_short() {
        let t0 = Instant::now();
        let mut u = UplinkQueue::default();
        feed(&mut u, t0, 10, |_| Duration::ZERO);
        // The uplink stalls from 200 ms to 370 ms: what was sent meanwhile arrives in a bunch
        // at its end (170, 150, ... 10 ms late), what follows on time.
        for i in 10..=22u64 {
            let at = (t0 + MS * (20 * i as u32)).max(t0 + MS * 370);
            u.on_audio(at, 1_000_000 + 20_000 * i);
            assert_eq!(
                u.is_short(at),
                i >= 20,
                "packet {i}: queue {:?}",
                u.queue(at)
            );
        }
    }

    #[test]
    fn the_shortest_transit_is_forgotten_after_two_windows() {
        let t0 = Instant::now();
        let mut u = UplinkQueue::default();
        feed(&mut u, t0, 10, |_| Duration::ZERO);
        // The publisher's RTP time jumps back by 300 ms (a new time base): transits look 300 ms
        // longer until the windows with the old base are gone.
        let mut at = t0 + MS * 200;
        let mut rtp = 1_000_000 + 20_000 * 10 - 300_000;
        while at < t0 + RTT_BASE_WINDOW * 2 + MS * 500 {
            u.on_audio(at, rtp);
            at += MS * 20;
            rtp += 20_000;
        }
        assert_eq!(u.queue(at - MS * 20), Some(Duration::ZERO));
    }
}
