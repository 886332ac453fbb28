//! How long the queue of a participant's own uplink is, read off the audio it publishes, so that
//! the round trip of its TWCC feedback can speak for its downlink alone. That round trip holds
//! both queues (the feedback waits in the uplink's):
//! - a step down of the downlink shows first in the round trip: str0m's estimate stayed put for
//!   ~0.7 s after scenario c's step while the round trip grew from 20 ms to 675 ms, and the top
//!   layer filled the 150 kbit/s link all that time. A round trip that grows this fast while the
//!   uplink stays short is the downlink's ([`STEP_QUEUE`]);
//! - what the uplink holds ([`UplinkQueue::held`]) is not the downlink's: the congestion rules of
//!   [`Downlink`] judge the round trip's queue less it. In scenario d (the uplink shaped) the
//!   round trip grew 18 → 154 → 374 ms while the patient's audio stalled in its uplink and str0m's
//!   estimate wobbled down by a fifth: the round trip alone cut the patient's video on a clean
//!   downlink.
//!
//! Pure: fed per audio packet, a few integer operations.

use std::time::{Duration, Instant};

use super::Downlink;

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
/// Audio sent every this long (Opus' 20 ms frames, both browsers' default): the next packet
/// of a stalled uplink is late by the time since the newest one, less this.
pub const PTIME: Duration = Duration::from_millis(20);
/// Audio not heard for this long has stopped (muted, or a publisher without audio), not
/// stalled in the uplink: the uplink's queue is then unknown ([`UplinkQueue::held`]).
pub const AUDIO_GONE: Duration = Duration::from_secs(1);

/// The base the transit of the participant's audio is measured from rises by one part in this
/// many of the time since it was seen (2 %: 20 ms a second), so that a publisher's audio clock
/// that falls behind real time is not read as a queue: headless Firefox's fell ~12 ms a second
/// behind over its first ~10 s, and its transit over the lowest of 10 s windows read 120 ms of
/// queue on a clean uplink in scenario c (the rules that trust a short uplink stood aside). A
/// queue that lasts is not forgotten with it (a base over 1 s windows did forget scenario d's
/// ~380 ms after a second, and a round trip that was all the uplink's cut the patient's video):
/// it fades by 20 ms a second.
pub const BASE_CREEP: u32 = 50;

/// The transit of the participant's own audio (its arrival at the server less its RTP time),
/// over the lowest one seen, risen since by [`BASE_CREEP`]: the queue it met on the way.
#[derive(Debug, Clone, Default)]
pub struct UplinkQueue {
    /// The first packet's arrival: transits are counted from it (microseconds).
    epoch: Option<Instant>,
    /// The lowest transit (risen since) and when it was seen.
    base: Option<(Instant, i64)>,
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
        if self.lowest(arrived).is_none_or(|b| transit <= b) {
            self.base = Some((arrived, transit));
        }
        self.recent[self.next] = Some((arrived, transit));
        self.next = (self.next + 1) % RECENT;
    }

    /// The base at `now`: the lowest transit seen, risen by [`BASE_CREEP`] since.
    fn lowest(&self, now: Instant) -> Option<i64> {
        let (at, transit) = self.base?;
        let risen = now.saturating_duration_since(at) / BASE_CREEP;
        Some(transit.saturating_add(i64::try_from(risen.as_micros()).unwrap_or(i64::MAX)))
    }

    /// The queue a packet of this `transit` met, over the base at `now`.
    fn over_base(&self, now: Instant, transit: i64) -> Option<Duration> {
        let queue = transit.saturating_sub(self.lowest(now)?);
        Some(Duration::from_micros(u64::try_from(queue).unwrap_or(0)))
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
        self.over_base(now, longest)
    }

    /// How much the uplink holds at `now`, at least: the longest queue its newest packets met
    /// ([`UplinkQueue::queue`]), or how late the next packet is ([`PTIME`] after the newest),
    /// whichever is longer. Unknown without audio within [`AUDIO_GONE`].
    pub fn held(&self, now: Instant) -> Option<Duration> {
        let (at, transit) = self.recent[(self.next + RECENT - 1) % RECENT]?;
        let since = now.saturating_duration_since(at);
        if since >= AUDIO_GONE {
            return None;
        }
        let late = i64::try_from(since.saturating_sub(PTIME).as_micros()).unwrap_or(i64::MAX);
        let waiting = self.over_base(now, transit.saturating_add(late))?;
        Some(self.queue(now).map_or(waiting, |q| q.max(waiting)))
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

    /// What the participant's own uplink holds at `now`, if known ([`UplinkQueue::held`]).
    pub fn uplink_held(&self, now: Instant) -> Option<Duration> {
        self.uplink.held(now)
    }

    /// The part of a round trip's `queue` at `at` that is the downlink's: less what the uplink
    /// holds (its feedback waited there too), all of it while the uplink is unknown.
    pub(super) fn downlink_share(&self, at: Instant, queue: Duration) -> Duration {
        queue.saturating_sub(self.uplink.held(at).unwrap_or_default())
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
        for i in 0..30u64 {
            u.on_audio(t1 + MS * (30 * i as u32), 2_000_000 + 20_000 * i);
        }
        let last = t1 + MS * (30 * 29);
        // 290 ms, less what the base rose since the first of them (2 % of 870 ms).
        assert_eq!(u.queue(last), Some(Duration::from_micros(290_000 - 17_400)));
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
    fn a_stalled_uplink_holds_at_least_how_late_its_next_packet_is() {
        let t0 = Instant::now();
        let mut u = UplinkQueue::default();
        assert_eq!(u.held(t0), None);
        feed(&mut u, t0, 10, |_| 3 * MS);
        let newest = t0 + MS * 183;
        assert_eq!(u.held(newest), Some(Duration::ZERO));
        // Nothing more arrives: the next packet is late by the time since the newest, less
        // PTIME, before its queue is known.
        assert_eq!(u.queue(newest + MS * 150), None);
        // (Less 2 % of the time since the base was seen: BASE_CREEP.)
        let us = Duration::from_micros;
        assert_eq!(u.held(newest + MS * 150), Some(us(130_000 - 3_000)));
        assert_eq!(u.held(newest + MS * 999), Some(us(979_000 - 19_980)));
        // A second without audio: it stopped, it did not stall.
        assert_eq!(u.held(newest + AUDIO_GONE), None);
        // What stalled arrives in a bunch: the queue its packets met.
        for i in 10..14u64 {
            u.on_audio(t0 + MS * 600, 1_000_000 + 20_000 * i);
        }
        assert_eq!(u.held(t0 + MS * 600), Some(us(397_000 - 8_340)));
    }

    #[test]
    fn an_audio_clock_that_lags_real_time_is_not_a_queue() {
        // Headless Firefox's audio clock lost ~12 ms a second over its first ~10 s: 20 ms of
        // audio every 20.24 ms.
        let t0 = Instant::now();
        let mut u = UplinkQueue::default();
        let at = |i: u64| t0 + Duration::from_micros(20_240 * i);
        for i in 0..500u64 {
            u.on_audio(at(i), 20_000 * i);
        }
        assert!(u.is_short(at(499)), "{:?}", u.queue(at(499)));
    }

    #[test]
    fn a_queue_that_lasts_fades_by_the_base_creep() {
        let t0 = Instant::now();
        let mut u = UplinkQueue::default();
        feed(&mut u, t0, 10, |_| Duration::ZERO);
        // From 200 ms on, every packet waits 380 ms (a full queue that lasts), or the
        // publisher's RTP time jumped back as much (a new time base): the same to the server.
        let queue = |u: &UplinkQueue, at| u.queue(at).unwrap().as_millis();
        let mut at = t0;
        for i in 10..=160u64 {
            at = t0 + MS * (20 * i as u32 + 380);
            u.on_audio(at, 1_000_000 + 20_000 * i);
            if i == 60 {
                assert_eq!(queue(&u, at), 380 - 28, "a second on: 2 % of 1,400 ms less");
            }
        }
        assert_eq!(
            queue(&u, at),
            380 - 68,
            "three seconds on: 2 % of 3,400 ms less"
        );
        // It is forgotten in 19 s.
        for i in 161..=1_200u64 {
            at = t0 + MS * (20 * i as u32 + 380);
            u.on_audio(at, 1_000_000 + 20_000 * i);
        }
        assert_eq!(u.queue(at), Some(Duration::ZERO));
    }
}
