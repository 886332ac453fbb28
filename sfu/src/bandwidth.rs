//! What one subscriber's downlink can carry, as a pure state machine fed by str0m's send-side
//! bandwidth estimate (TWCC): the video budget left once audio is served, when the subscriber's
//! video must pause so that audio still gets through (audio-only fallback), when it may resume,
//! and the per-track bitrate its publishers are asked to keep under (a REMB cap, the single-
//! layer fallback while publishers send one layer). No sockets, no `Rtc`: unit-tested alone.
//!
//! Rules (LiveKit's and mediasoup's allocators are the model; the numbers are ours):
//! - audio is budgeted first: [`AUDIO_RESERVE_BPS`] per audio track, never paused here;
//! - only [`USABLE_PERCENT`] of the estimate is spent (retransmissions and loss need room);
//! - video pauses after [`PAUSE_AFTER`] below [`PAUSE_BELOW_BPS`] per video track or at once
//!   below half of it (neither while the link visibly carries the lowest layer: no queue, or a
//!   short one soon after none, [`FLOOR_CARRIED_HOLD`]), and at once when the lowest layer loses
//!   [`HEAVY_LOSS`] (receiver reports, or the TWCC feedback) or its queue grows past
//!   [`FLOOR_QUEUE_PAUSE`]: down fast;
//! - a fall of the estimate at the top layers, with no sign of congestion (loss, or a queue
//!   that lasts [`QUEUE_SIGN_ROUNDS`] rounds: one is a CPU hiccup), is held ([`FALL_HOLD`]);
//! - a link whose own signs of congestion stop for [`CLEARED_AFTER`] has cleared: the back-off
//!   of trials that failed on it is forgiven;
//! - a queue that grows by a step while the subscriber's own uplink stays short is congestion
//!   at once, whatever the estimate says ([`uplink`]);
//! - congestion takes every video track to its lowest layer at once, whose keyframe waits until
//!   the queue drained ([`DRAIN_MAX`], [`DRAIN_LONG_MAX`]): meanwhile audio flows alone;
//! - video resumes only after [`RESUME_AFTER`] at or above [`RESUME_ABOVE_BPS`]: up slowly, with
//!   headroom, so that a link at the edge does not flap; the wait is a trial (padded up to that
//!   rate), and a failed one backs off before the next;
//! - a publisher is capped only while the per-track budget is below [`UNCAPPED_PER_TRACK_BPS`]
//!   (what the SDK sends at 720p): a good link never lowers anyone's quality.

use std::time::{Duration, Instant};

use budget::usable;
use floor::settled_floor;
pub use floor::FLOOR_CARRIED_HOLD;
use lowest::Lowest;
use uplink::UplinkQueue;

/// Bits per second reserved for each audio track (Opus with in-band FEC, plus RTP/SRTP/UDP).
pub const AUDIO_RESERVE_BPS: u64 = 64_000;
/// Share of the estimate that media may use.
pub const USABLE_PERCENT: u64 = 85;
/// Below this per video track (sustained), video pauses; but not the lowest layer while the
/// link visibly carries it (no queue, see [`Downlink::poll`]): with random loss, str0m's
/// loss-based estimate sinks toward what is sent, not what the link carries. Seen in scenario e
/// (500 kbit/s, 3 % loss): at the lowest layer (~150 kbit/s and audio) the estimate fell to
/// 209 kbit/s with round trips of 3-32 ms, and the patient's video paused for 7.7 s.
pub const PAUSE_BELOW_BPS: u64 = 120_000;
/// At or above this per video track (sustained, and carried by a trial), paused video resumes:
/// about the SDK's lowest layer (150 kbit/s) with room for its keyframes; a 400 kbit/s link
/// carries it, besides audio.
pub const RESUME_ABOVE_BPS: u64 = 250_000;
/// How long the budget must stay low before video pauses.
pub const PAUSE_AFTER: Duration = Duration::from_millis(1_000);
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
/// A video loss fraction (the subscriber's receiver reports) at or above this, on a subscriber
/// whose video is already at its lowest layer, pauses its video at once: the estimate can
/// stay far above a link whose queue is full (no delay trend left to see), while the link
/// drops this much.
pub const HEAVY_LOSS: f32 = 0.25;
/// A receiver report of a video track speaks for the link only while no transport-wide loss
/// (TWCC feedback, several a second) came within this long ([`Downlink::on_report_loss`]).
pub const TWCC_LOSS_FRESH: Duration = Duration::from_secs(1);
/// Loss reported this soon after the video reached its lowest layer may be of the layer before.
pub const FLOOR_SETTLE: Duration = Duration::from_millis(1_500);
/// A queue toward the subscriber this much longer than its shortest (the round trip of the
/// newest packet its TWCC feedback reports, less the lowest of the last [`RTT_BASE_WINDOW`]s),
/// and still growing while only its lowest layer flows, pauses its video at once: even that layer
/// does not fit, and audio waits (or is dropped) behind it. Measured in the weak-network
/// scenarios: a 150 kbit/s link with the lowest layer reached ~800 ms and grew; a 400 kbit/s one,
/// which carries it, stayed under ~450 ms (its queue's limit) and drained. A queue this long
/// while str0m's current estimate cannot carry even the lowest layer ([`OVERRUN_QUEUE`]'s
/// comparison) pauses too, without waiting for the packets sent at the floor to come back (a
/// round trip of ~0.8 s): in scenario c the current estimate fell to 115 kbit/s 0.6 s after the
/// cut to the lowest layer, which still concealed most of the audio until video paused. After
/// scenario b's step it stayed at 200–320 kbit/s, above the lowest layer's ~150 kbit/s.
pub const FLOOR_QUEUE_PAUSE: Duration = Duration::from_millis(500);
/// A queue this much longer than the shortest round trip, while str0m's estimate falls (it fell
/// below [`FALLING_PERCENT`] of its highest in the last second), is congestion: every video track
/// goes to its lowest layer at once, in one change rather than one layer at a time (each change
/// waits for a keyframe that has to cross the full queue; measured in scenario b, two changes
/// 0.1 s apart froze the video 1.9 s). The queue is the round trip's less what the subscriber's
/// uplink holds (its feedback waits there), known from its audio (`bandwidth/uplink.rs`); without
/// audio the estimate falling is what tells its downlink from its uplink.
pub const CONGESTED_QUEUE: Duration = Duration::from_millis(300);
/// See [`CONGESTED_QUEUE`].
pub const FALLING_PERCENT: u64 = 85;
/// Once congestion is found ([`Downlink::is_congested`]: the queue rules above, or heavy loss),
/// the subscriber's video waits for the link's queue to drain before the lowest layer starts:
/// the router asks for its keyframe only once the feedback shows a queue under [`QUEUE_SIGN`],
/// or this long after congestion was found ([`Downlink::is_draining`]). Audio alone empties a
/// full queue at nearly the link's rate (scenario a's, ~390 ms at 500 kbit/s, in ~0.45 s); the
/// lowest layer's keyframe and its flow sent into it keep audio waiting behind them longer, and
/// Chromium's jitter buffer may then hold the delay peak for ~10 s. Measured in scenario a (an
/// A/B in one hour, 6 runs each): the patient's jitter buffer 175–202 ms with the drain,
/// 187–277 ms without; the freeze at the step ~250 ms longer. This long bounds that freeze.
pub const DRAIN_MAX: Duration = Duration::from_millis(800);
/// A queue of [`FLOOR_QUEUE_PAUSE`] or more when [`DRAIN_MAX`] ends (the feedback still tells of
/// what was sent before the cut; scenario c's 150 kbit/s link queued ~0.8 s, a's and b's at most
/// ~0.4 s) drains up to this long: the lowest layer started into it kept it full until video
/// paused ~0.9 s later, and the patient concealed 16 % of a second more.
pub const DRAIN_LONG_MAX: Duration = Duration::from_millis(1_500);
/// A queue this much longer than the shortest round trip while str0m's current estimate (its
/// statistics; the event gives a mean over 3 s) cannot carry what the subscriber is sent now
/// (its video layers, [`Wanted::now_bps`], within [`USABLE_PERCENT`]) is congestion
/// too, a round or more before [`CONGESTED_QUEUE`] would see it: after the step of scenario b
/// (2.5 Mbit/s → 400 kbit/s, a third of what it was sent), the round trip grew by 60–90 ms every
/// 100 ms and reached the queue's limit (~430 ms) about 0.6 s after the step, dropping audio
/// from then on; this rule cut at round trips of 190–240 ms. Neither sign alone would do:
/// - an unshaped link's queue reached 46–55 ms with both cores busy, but the current estimate
///   of a browser whose CPU is starved dips to ~0.5 Mbit/s for a moment (see [`FALL_HOLD`]);
/// - a subscriber whose uplink is weak (scenario d) holds its feedback in that uplink's queue
///   (round trips of 250–370 ms on an unshaped downlink) while its current estimate wobbles by a
///   quarter, far above what it is sent.
pub const OVERRUN_QUEUE: Duration = Duration::from_millis(150);
/// How often the transport asks str0m for its statistics ([`Downlink::on_feedback`]): the
/// transport-wide loss (TWCC, over the last second), the round trip of its newest feedback and
/// its current estimate. A link that stepped down shows within a round or two; at 250 ms, the
/// queue of scenario b's step was full and dropping audio before the round that showed it
/// (three runs: 1–3 freezes after the step and 4.05–5.45 % concealed in its 10 s, against 0–1
/// and 3.87–3.95 % in two runs at 100 ms). Their cost: ~0.2 % of the server's samples under
/// `scripts/bench-vs-janus.sh`.
pub const STATS_INTERVAL: Duration = Duration::from_millis(100);
/// Statistics reports in a second ([`STATS_INTERVAL`]): the falling estimate is judged over
/// that many, and the transport takes the per-stream ones once in that many.
pub const STATS_PER_SECOND: usize = (1_000 / STATS_INTERVAL.as_millis()) as usize;
/// The shortest round trip is the lowest of this window and the one before.
pub const RTT_BASE_WINDOW: Duration = Duration::from_secs(10);
/// A cap below this is not asked for: no encoder makes usable video from less.
pub const MIN_CAP_BPS: u64 = 60_000;
/// After the path to the subscriber changed ([`Downlink::on_new_path`]), this long
/// its feedback speaks of the dead path: the first reports count what was sent into it as lost
/// (88 % in the roaming test) and str0m's estimate falls with them (to 60–200 kbit/s on a link
/// that was not shaped; its smoothed value keeps that for 3 s). Meanwhile loss and queues do not
/// cut or pause video, and the estimate does not fall below the one before the change.
pub const NEW_PATH_SETTLE: Duration = Duration::from_secs(4);
/// When str0m's estimator starts again after a path change (from the estimate before it, at
/// most [`HD_DESIRED_BPS`]): once the dead path's losses were reported to it.
pub const NEW_PATH_RESET_AFTER: Duration = Duration::from_secs(1);
/// A fall of str0m's estimate while the subscriber's feedback shows a link with no queue
/// (under [`QUEUE_SIGN`]) and no loss (under [`LOSS_SIGN`]), and its video is at the highest
/// layers it may take ([`Downlink::set_at_top`]), is held back this long: the budget keeps the
/// estimate before the fall. If no sign came by then, str0m's estimator starts again from it
/// ([`Downlink::take_estimator_reset`]). str0m's delay detector also reacts to a browser whose
/// CPU is starved (its feedback comes late): measured on an unshaped link with both cores
/// busy, its estimate fell to ~0.5 Mbit/s for under 0.4 s, and its event (the mean of the last
/// 3 s) stayed at 594 kbit/s long enough to take the subscriber from 720p to 360p for 6 s. A
/// link that really got weaker queues or drops what it is sent within a round trip, and the
/// first sign of it releases the hold. This long is the event's window (3 s) and the longest
/// dip seen with four browsers on two cores (str0m's current estimate under the top layer's
/// rate for ~1.5 s; a 3 s hold ran out while the mean still held the dip, and the doctor went
/// down a layer on a clean link).
pub const FALL_HOLD: Duration = Duration::from_secs(5);
/// A queue toward the subscriber at least this much longer than its shortest, for
/// [`QUEUE_SIGN_ROUNDS`] rounds, is a sign that its link is congested (see [`FALL_HOLD`]).
/// Round trips sampled on an unshaped link with both cores busy reached 46 ms (CPU scheduling);
/// a 400 kbit/s link that was sent 2.5 Mbit/s queued over 300 ms ([`CONGESTED_QUEUE`]).
pub const QUEUE_SIGN: Duration = Duration::from_millis(100);
/// A queue of [`QUEUE_SIGN`] is a sign of congestion only when this many feedback rounds in a
/// row ([`STATS_INTERVAL`]) show it. A busy machine's CPU hiccup delays the feedback of one
/// round: in the codec e2e calls (loopback, a busy loop beside them) single rounds of 50–93 ms,
/// the next one back under 30 ms; on the weak-network test's unshaped link a single 135 ms round
/// let str0m's fall from 2.1 Mbit/s to 280 kbit/s through, and the doctor, whose link was
/// clean, saw the patient at 320 and 640 wide for seconds. A link that is sent more than it
/// carries keeps its queue round after round (scenario b's step: 60–90 ms more every 100 ms,
/// up to ~430 ms). The congestion rules ([`CONGESTED_QUEUE`], [`OVERRUN_QUEUE`],
/// [`FLOOR_QUEUE_PAUSE`]) judge each round as it comes.
pub const QUEUE_SIGN_ROUNDS: u8 = 2;
/// A loss fraction (receiver reports or TWCC feedback) at or above this is a sign that the
/// link is congested (see [`FALL_HOLD`]). An unshaped link loses nothing: none of ~900 TWCC
/// reports of the unimpaired side in the weak-network scenarios reported any loss.
pub const LOSS_SIGN: f32 = 0.02;
/// str0m's current estimate unchanged to the bit this long, while the subscriber wants more
/// than it (its video constrained or paused) and its feedback showed no sign of congestion
/// ([`QUEUE_SIGN`], [`LOSS_SIGN`]) all that time, is stuck: str0m's estimator starts again from
/// it ([`Downlink::take_estimator_reset`]), and its first probes find what the link carries.
/// str0m holds its estimate when the application sends less than two thirds of it (it rises
/// no higher than 1.5× what is acknowledged), and it probes only while the cause it last gave
/// for the estimate allows: a cause taken during loss is kept until the estimate changes. Seen
/// in the weak-network scenario a: after 30 s of 3 % loss the patient's estimate stayed at
/// 394,370 bit/s for the 15 s after the link was unshaped (no loss, no queue), and the video
/// stayed at the lowest layer. Video paused this long, with no sign all that time, is as stuck
/// whatever str0m's estimate does: with only audio flowing it wanders by a few kbit/s a round
/// under 1.5× the audio (seen after scenario c was unshaped: 43–106 kbit/s for 7 s with no queue
/// and no loss; the probes of the paused state raised it by 2× at most, and the video was back
/// 13.4 s after the link was).
pub const STUCK_AFTER: Duration = Duration::from_secs(5);
/// At most one restart of a stuck estimator ([`STUCK_AFTER`]) in this long: each one probes
/// (at 3× and 6× the estimate), and a link that is as weak as it looked stays flat again.
pub const STUCK_RESTART_EVERY: Duration = Duration::from_secs(15);

/// A link that showed signs of congestion of its own (loss or a queue while no trial padded)
/// and then none for this long has cleared ([`Downlink::take_cleared`]). Seen in scenario e: a
/// trial that failed during the 30 s of 3 % loss held the next one back 10 s, and the patient
/// was 640 wide again only 12.7 s after the link was unshaped (its estimate fit the layer from
/// 3 s on). Random loss can look clear for a while: on scenario e's link (3 % loss, ~80
/// packets a second of the lowest layer and audio, a sign at 2 % of a second's packets), 30 s
/// hold a clear this long by chance in ~4 % of runs (simulated; 3 s: ~15 %). All it costs then
/// is one trial sooner.
pub const CLEARED_AFTER: Duration = Duration::from_secs(4);

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
    /// str0m's estimate as its event gives it (the mean of its changes over the last 3 s); while
    /// a fall of it is held back ([`FALL_HOLD`]), the estimate before the fall. Its current value
    /// was tried for layers and pauses, and was worse: after a burst of loss it sank to 204
    /// kbit/s on a 400 kbit/s link whose queue had emptied (a false pause in scenario b), and
    /// after a weak link recovered it held the layers down longer (scenario a: 640 wide again
    /// after 6.5–9.2 s, once not within 15 s, against 3.3–4.5 s). Steps down show in the queue.
    estimate: Option<u64>,
    /// Since when a fall is held back ([`FALL_HOLD`]; `estimate` keeps the value before it):
    /// until the estimate is back there, the link shows a sign of congestion, or the hold runs
    /// out.
    fall_since: Option<Instant>,
    /// A hold ran out with no sign of congestion, or the estimate is stuck ([`STUCK_AFTER`]):
    /// the bitrate str0m's estimator is to start again from ([`Downlink::take_estimator_reset`]).
    restart_from: Option<u64>,
    /// Since when str0m's current estimate has been what it is, and when a stuck one last made
    /// the estimator start again ([`STUCK_AFTER`]).
    current_since: Option<Instant>,
    stuck_restart_at: Option<Instant>,
    /// When the link last showed a sign of congestion ([`QUEUE_SIGN`], [`LOSS_SIGN`]), and the
    /// queue of its last round trip.
    sign_at: Option<Instant>,
    last_queue: Option<Duration>,
    /// Feedback rounds in a row whose queue was at least [`QUEUE_SIGN`] ([`QUEUE_SIGN_ROUNDS`]).
    queue_rounds: u8,
    /// When the link last showed a sign of its own (not while a trial padded, see
    /// [`Downlink::take_cleared`]).
    link_sign_at: Option<Instant>,
    /// Since when its video is paused (None: it flows).
    paused_since: Option<Instant>,
    /// Since when the budget has been on the other side of the pause/resume threshold.
    crossing_since: Option<Instant>,
    /// Since when its video has flowed under the estimate it wants (a constrained link), and
    /// that estimate as of the last [`Downlink::poll`] (None: no video).
    constrained_since: Option<Instant>,
    desired_bps: Option<u64>,
    /// What its video tracks would take one layer up, and what they take with the layer a
    /// subscriber waits to go up to (while one waits), bits/s: [`Downlink::set_wanted`].
    wanted: Option<Wanted>,
    /// Since when every video track it receives is at its lowest layer, and when the link last
    /// visibly carried it ([`FLOOR_CARRIED_HOLD`]).
    floor_since: Option<Instant>,
    floor_carried_at: Option<Instant>,
    /// Every video track it receives is at the highest layer it may take: a budget held up
    /// ([`FALL_HOLD`]) can only keep it there, not take anything up.
    at_top: bool,
    /// The lowest layer does not fit: heavy loss after it settled ([`FLOOR_SETTLE`]), or a queue
    /// that grows past [`FLOOR_QUEUE_PAUSE`]. Video pauses at the next poll.
    floor_fails: bool,
    /// When heavy loss was last reported, whatever the layer (not of a trial's padding).
    congested_at: Option<Instant>,
    /// When the TWCC feedback last gave a loss fraction ([`TWCC_LOSS_FRESH`]).
    twcc_loss_at: Option<Instant>,
    /// Since when the queue found congested drains ([`DRAIN_MAX`]); None once it is short.
    drain_since: Option<Instant>,
    /// When a step up was last padded for (its loss is the trial's, not the link's).
    trial_at: Option<Instant>,
    /// Round trips of the TWCC feedback: the lowest of the last two [`RTT_BASE_WINDOW`]s, and
    /// the last one.
    rtt_base: Lowest<Duration>,
    last_rtt: Option<Duration>,
    /// The participant's own uplink queue, and when the round trip's was last short
    /// ([`uplink::STEP_QUEUE`]).
    uplink: UplinkQueue,
    short_queue_at: Option<Instant>,
    /// str0m's current estimate (its statistics; the event gives a mean): after a step down it
    /// falls within a few hundred milliseconds, the event's seconds later ([`OVERRUN_QUEUE`]).
    current_estimate: Option<u64>,
    /// The estimate (as str0m reports it, see [`Downlink::reported`]) at the feedback reports
    /// of the last second ([`STATS_PER_SECOND`], newest first).
    recent_estimates: [Option<u64>; STATS_PER_SECOND],
    /// Resume trials that failed in a row, and when paused video may next wait to resume
    /// (see [`Downlink::poll`]).
    failed_resumes: u32,
    resume_retry_at: Option<Instant>,
    /// The path changed ([`Downlink::on_new_path`]): when, the estimate before (held as a floor
    /// until [`NEW_PATH_SETTLE`]), str0m's own since, and when its estimator is to restart
    /// (None once it did).
    new_path_at: Option<Instant>,
    held_estimate: Option<u64>,
    raw_estimate: Option<u64>,
    estimator_reset_at: Option<Instant>,
}

/// See [`Downlink::set_wanted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// Every video track as it is now (bits/s).
    pub now_bps: u64,
    /// Every video track one layer up (bits/s).
    pub next_bps: u64,
    /// Every video track as it will be once a subscriber that waits to go up does (None: none
    /// waits).
    pub trial_bps: Option<u64>,
}

impl Downlink {
    /// A new estimate from str0m's event at `now`, in bits per second. A fall while the link
    /// shows no sign of congestion is held back ([`FALL_HOLD`]).
    pub fn on_estimate(&mut self, now: Instant, bps: u64) {
        self.raw_estimate = Some(bps);
        let reported = self.held_estimate.map_or(bps, |h| h.max(bps));
        self.estimate = Some(self.trusted(now, reported));
    }

    /// str0m's estimate as its event gave it last, with the new path's floor: what the budget
    /// uses but while a fall is held back.
    fn reported(&self) -> Option<u64> {
        let raw = self.raw_estimate?;
        Some(self.held_estimate.map_or(raw, |h| h.max(raw)))
    }

    /// The estimate to budget with when str0m reports `reported` at `now`.
    fn trusted(&mut self, now: Instant, reported: u64) -> u64 {
        let Some(before) = self.estimate else {
            return reported;
        };
        let quiet = self.at_top
            && !self.is_video_paused()
            && self.last_queue.is_some()
            && !self.queued()
            && self
                .sign_at
                .is_none_or(|t| now.saturating_duration_since(t) >= FALL_HOLD);
        // A fall to what still carries the video it wants changes nothing: held, it would
        // only restart the estimator (and its probes) every FALL_HOLD on a clean link whose
        // estimate sinks toward what it is sent.
        let harmless = self.desired_bps.is_some_and(|d| reported >= d);
        if !quiet || reported >= before || harmless {
            self.fall_since = None;
            return reported;
        }
        let since = *self.fall_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= FALL_HOLD {
            // No sign of congestion for all that time: the fall is the estimator's, which climbs
            // back only slowly (seen: from 0.6 to 1.3 Mbit/s in 5 s on a clean link). It starts
            // again from the estimate before the fall, and a link that cannot carry that shows
            // it by a queue or loss, which str0m's estimate then follows.
            self.fall_since = None;
            self.restart_from = Some(before);
        }
        before
    }

    /// The link showed a sign of congestion at `at`: a fall held back is let through.
    fn on_sign(&mut self, at: Instant) {
        self.sign_at = Some(at);
        if self.loss_counts(at) {
            self.link_sign_at = Some(at);
        }
        self.restart_from = None;
        self.release_fall();
    }

    /// A fall held back passes: the estimate is str0m's again.
    fn release_fall(&mut self) {
        if self.fall_since.take().is_some() {
            self.estimate = self.reported();
        }
    }

    /// The path to the subscriber changed (an ICE restart onto a new address): see
    /// [`NEW_PATH_SETTLE`]. What was learned of the old path's round trips and losses is
    /// forgotten.
    pub fn on_new_path(&mut self, now: Instant) {
        self.new_path_at = Some(now);
        self.held_estimate = self.estimate;
        self.raw_estimate = self.estimate;
        self.estimator_reset_at = Some(now + NEW_PATH_RESET_AFTER);
        self.congested_at = None;
        self.drain_since = None;
        self.floor_fails = false;
        self.floor_carried_at = None;
        self.rtt_base = Lowest::default();
        self.last_rtt = None;
        self.last_queue = None;
        (self.uplink, self.short_queue_at) = (UplinkQueue::default(), None);
        self.queue_rounds = 0;
        self.fall_since = None;
        self.restart_from = None;
        self.recent_estimates = [None; STATS_PER_SECOND];
        self.current_estimate = None;
        self.current_since = None;
    }

    /// Whether `at` is within [`NEW_PATH_SETTLE`] of a path change.
    fn settling(&self, at: Instant) -> bool {
        self.new_path_at
            .is_some_and(|t| at.saturating_duration_since(t) < NEW_PATH_SETTLE)
    }

    /// Once per path change, [`NEW_PATH_RESET_AFTER`] it, when a fall held back ran out with no
    /// sign of congestion ([`FALL_HOLD`]), and when the estimate is stuck ([`STUCK_AFTER`]): the
    /// bitrate str0m's estimator should start again from (the router calls `Rtc::bwe().reset`).
    pub fn take_estimator_reset(&mut self, now: Instant) -> Option<u64> {
        if let Some(bps) = self.restart_from.take() {
            return Some(bps.min(HD_DESIRED_BPS));
        }
        if self.estimator_reset_at.is_none_or(|at| now < at) {
            return None;
        }
        self.estimator_reset_at = None;
        Some(
            self.held_estimate
                .map_or(HD_DESIRED_BPS, |e| e.min(HD_DESIRED_BPS)),
        )
    }

    /// Whether the link, which showed signs of congestion of its own (not a trial's), has shown
    /// none for [`CLEARED_AFTER`] at `now`: once per such change. The router then forgives its
    /// selectors' failed trials ([`crate::layers::Selector::forgive`]): their back-off was
    /// earned on the impaired link.
    pub fn take_cleared(&mut self, now: Instant) -> bool {
        let quiet = self
            .sign_at
            .is_some_and(|s| now.saturating_duration_since(s) >= CLEARED_AFTER);
        quiet && self.link_sign_at.take().is_some()
    }

    pub fn estimate(&self) -> Option<u64> {
        self.estimate
    }

    /// What the subscriber's video would take (from its layer selectors); None: not known (one
    /// layer, or no rates yet), HD is wanted. The desired rate of the estimator follows it, so
    /// probes are the size of the next step, not of HD (on a weak link a probe of HD fills its
    /// queue and delays audio). While a subscriber waits to go up, the estimator's minimum is
    /// the rate after that step: str0m pads up to it, so the link proves it carries the higher
    /// layer before the change (an estimate that only a lucky probe raised falls again).
    pub fn set_wanted(&mut self, now: Instant, wanted: Option<Wanted>) {
        if wanted.is_some_and(|w| w.trial_bps.is_some()) {
            self.trial_at = Some(now);
        }
        self.wanted = wanted;
    }

    /// Whether heavy loss was reported within [`FLOOR_SETTLE`], or a long queue while the
    /// estimate falls ([`CONGESTED_QUEUE`]): a link far below what it is sent, which str0m's
    /// estimate may take seconds to show (a full queue has no delay trend); the router takes
    /// every video track of this subscriber to its lowest layer at once.
    pub fn is_congested(&self, now: Instant) -> bool {
        self.congested_at
            .is_some_and(|at| now.saturating_duration_since(at) < FLOOR_SETTLE)
    }

    /// Congestion was found at `at`: a new episode starts the drain ([`DRAIN_MAX`]).
    fn congested(&mut self, at: Instant) {
        if !self.is_congested(at) {
            self.drain_since = Some(at);
        }
        self.congested_at = Some(at);
    }

    /// The router cut the video to its lowest layer at `at` because the budget fell, not for
    /// congestion: with a queue of [`OVERRUN_QUEUE`] or more it is congestion all the same (in
    /// scenario c the event fell while the queue was 210 ms, a round before the queue rules saw
    /// it, and the lowest layer started at once into the full queue). Whether it drains now.
    pub fn on_cut_to_floor(&mut self, at: Instant) -> bool {
        if self.last_queue.is_some_and(|q| q >= OVERRUN_QUEUE) && self.loss_counts(at) {
            self.congested(at);
        }
        self.is_draining(at)
    }

    /// Whether the queue found congested still drains at `now` ([`DRAIN_MAX`], [`DRAIN_LONG_MAX`]):
    /// the router holds back the keyframe of the layer its video goes to until it has.
    pub fn is_draining(&self, now: Instant) -> bool {
        let long = self.last_queue.is_some_and(|q| q >= FLOOR_QUEUE_PAUSE);
        let max = if long { DRAIN_LONG_MAX } else { DRAIN_MAX };
        self.drain_since
            .is_some_and(|since| now.saturating_duration_since(since) < max)
    }

    /// Whether str0m's current estimate cannot carry the video layers the subscriber is sent
    /// now within [`USABLE_PERCENT`] (see [`OVERRUN_QUEUE`]; audio and the rest of the estimate
    /// are the margin).
    fn overrun(&self) -> bool {
        let (Some(current), Some(w)) = (self.current_estimate, self.wanted) else {
            return false;
        };
        usable(current) < w.now_bps
    }

    /// Whether every video track the subscriber receives is at the highest layer it may take
    /// now (nothing left to go up to): only then is a fall of the estimate held back
    /// ([`FALL_HOLD`]); below it, a held budget could take a layer up on a link that just
    /// got weaker (seen in scenario b: up one layer on a 400 kbit/s link, then cut again).
    pub fn set_at_top(&mut self, at_top: bool) {
        self.at_top = at_top;
        if !at_top {
            self.release_fall();
        }
    }

    /// A loss fraction reported at `at`: of one of its video tracks (receiver reports, once a
    /// second about the second before), or of everything sent to it in the last second (its
    /// transport-wide feedback, TWCC, several times a second: a link that stepped down shows
    /// within a few hundred milliseconds, so the layer that floods it is cut sooner and the
    /// audio queued behind waits less). Heavy loss congests the link; at the lowest layer, once
    /// [`FLOOR_SETTLE`] has passed (the window then holds only packets sent at the floor), it
    /// means even that layer does not fit and video pauses: on a 150 kbit/s link the lowest
    /// layer and audio overflow the queue, and every second it lasts conceals half the audio
    /// (measured in the weak-network scenario c).
    pub fn on_loss(&mut self, at: Instant, fraction: f32) {
        if fraction >= LOSS_SIGN && !self.settling(at) {
            self.on_sign(at);
        }
        if !self.loss_counts(at) || fraction < HEAVY_LOSS || self.settling(at) {
            return;
        }
        self.congested(at);
        if settled_floor(self.floor_since, at) {
            self.floor_fails = true;
        }
    }

    /// A loss fraction from a receiver report of one of its video tracks, at `at`. A browser
    /// sends one with every NACK too, over the few packets since the report before: 1 of 2
    /// lost reads as 50 %. Seen in scenario a (3 % random loss): reports of 0.498 and 0.333
    /// at the lowest layer while the TWCC feedback of the same second counted 6–11 %, and
    /// video paused for 3 s on a link that carried it. So while the transport-wide loss is
    /// known ([`TWCC_LOSS_FRESH`]), which counts every packet sent over the last second, only
    /// it judges heavy loss; a report is then a sign of congestion, no more. Without TWCC
    /// feedback the reports are all there is ([`Downlink::on_loss`]).
    pub fn on_report_loss(&mut self, at: Instant, fraction: f32) {
        if !self.twcc_fresh(at) {
            self.on_loss(at, fraction);
        } else if fraction >= LOSS_SIGN && !self.settling(at) {
            self.on_sign(at);
        }
    }

    /// Whether TWCC feedback came within [`TWCC_LOSS_FRESH`] of `at`.
    pub fn twcc_fresh(&self, at: Instant) -> bool {
        self.twcc_loss_at
            .is_some_and(|t| at.saturating_duration_since(t) < TWCC_LOSS_FRESH)
    }

    /// What str0m's statistics say of the subscriber's TWCC feedback, several times a second:
    /// its loss and round trip ([`Downlink::on_feedback_rtt`], [`Downlink::on_loss`]), and its
    /// current estimate (bits/s).
    pub fn on_feedback(
        &mut self,
        at: Instant,
        loss: Option<f32>,
        rtt: Option<Duration>,
        current: Option<u64>,
    ) {
        if self.settling(at) {
            return;
        }
        if current != self.current_estimate {
            self.current_since = Some(at);
        }
        self.current_estimate = current;
        if let Some(rtt) = rtt {
            self.on_feedback_rtt(at, rtt);
        }
        if let Some(loss) = loss {
            self.twcc_loss_at = Some(at);
            self.on_loss(at, loss);
        }
        if self.stuck(at) {
            self.restart_from = self.current_estimate;
            self.stuck_restart_at = Some(at);
        }
    }

    /// Whether str0m's current estimate is stuck at `at` ([`STUCK_AFTER`]).
    fn stuck(&self, at: Instant) -> bool {
        let wants_more = self.is_video_paused() || self.constrained_since.is_some();
        let long_ago = |t: Instant| at.saturating_duration_since(t) >= STUCK_AFTER;
        let unchanged = wants_more && self.current_since.is_some_and(long_ago);
        (unchanged || self.paused_since.is_some_and(long_ago))
            && self.current_estimate.is_some()
            && self.sign_at.is_none_or(long_ago)
            && self.last_queue.is_some_and(|q| q < QUEUE_SIGN)
            && self
                .stuck_restart_at
                .is_none_or(|t| at.saturating_duration_since(t) >= STUCK_RESTART_EVERY)
    }

    /// The round trip of the newest packet the subscriber's TWCC feedback reported, at `at`
    /// (str0m's statistics, several times a second): how long the queue toward it is, over the
    /// shortest one seen lately, less what the subscriber's own uplink holds (its feedback
    /// waits there; known from its audio, `bandwidth/uplink.rs`). Without its audio a long
    /// round trip alone says nothing of the downlink:
    /// - while str0m's estimate (one-way delay) falls, a queue over [`CONGESTED_QUEUE`] is
    ///   congestion (every video track to its lowest layer at once), and so is one that grew
    ///   past [`OVERRUN_QUEUE`] within [`uplink::STEP_QUEUE`] while the uplink's stayed short;
    /// - at the lowest layer (for a packet sent there), a queue over [`FLOOR_QUEUE_PAUSE`] that
    ///   still grows means even that layer does not fit (video pauses).
    pub fn on_feedback_rtt(&mut self, at: Instant, rtt: Duration) {
        let queue = self.queue(at, rtt);
        let queue = self.downlink_share(at, queue);
        let growing = self.last_rtt.is_some_and(|last| rtt >= last);
        self.last_rtt = Some(rtt);
        self.last_queue = Some(queue);
        self.note_floor_queue(at, queue);
        if queue >= QUEUE_SIGN {
            self.queue_rounds = self.queue_rounds.saturating_add(1);
            if self.queued() {
                self.on_sign(at);
            }
        } else {
            self.queue_rounds = 0;
            self.drain_since = None;
        }
        // What str0m reports, not what a hold kept: a queue this long lets a fall through.
        self.recent_estimates.rotate_right(1);
        self.recent_estimates[0] = self.reported();
        let falling = fell(&self.recent_estimates);
        let step = self.stepped_down(at, queue, growing);
        if ((falling && queue >= CONGESTED_QUEUE)
            || (self.overrun() && queue >= OVERRUN_QUEUE)
            || step)
            && self.loss_counts(at)
        {
            self.congested(at);
        }
        // The packet it reports was sent at the floor (about `at - rtt`): the queue it met is
        // the lowest layer's, not what the layer before left.
        let sent_at_floor = self
            .floor_since
            .is_some_and(|since| at.checked_sub(rtt).is_some_and(|sent| sent >= since));
        // At the floor already, str0m's current estimate may say at once that even it does not
        // fit (see `FLOOR_QUEUE_PAUSE`), before the packets sent there come back.
        let floor_overrun = self.floor_since.is_some() && self.overrun();
        if ((sent_at_floor && growing) || floor_overrun)
            && queue >= FLOOR_QUEUE_PAUSE
            && self.loss_counts(at)
        {
            self.floor_fails = true;
        }
    }

    /// Whether the queue has been at least [`QUEUE_SIGN`] for [`QUEUE_SIGN_ROUNDS`] rounds in a
    /// row: a sign of congestion, not a CPU hiccup.
    fn queued(&self) -> bool {
        self.queue_rounds >= QUEUE_SIGN_ROUNDS
    }

    /// How much longer `rtt` is than the shortest round trip of this [`RTT_BASE_WINDOW`] and the
    /// one before (which it updates).
    fn queue(&mut self, at: Instant, rtt: Duration) -> Duration {
        rtt.saturating_sub(self.rtt_base.observe(at, rtt))
    }

    /// Loss reported at `at` is the link's: video flows, and no trial padded within
    /// [`FLOOR_SETTLE`] (a trial's losses are its own).
    fn loss_counts(&self, at: Instant) -> bool {
        !self.is_video_paused() && settled(self.trial_at, at)
    }

    pub fn is_video_paused(&self) -> bool {
        self.paused_since.is_some()
    }

    /// Decides whether the subscriber's video pauses or resumes now.
    pub fn poll(&mut self, now: Instant, audio_tracks: usize, video_tracks: usize) -> Change {
        if self.held_estimate.is_some() && !self.settling(now) {
            // Settled on the new path: str0m's estimate as it is.
            self.held_estimate = None;
            self.estimate = self.raw_estimate.or(self.estimate);
        }
        let wanted = self.desired(audio_tracks, video_tracks);
        self.desired_bps = (video_tracks > 0).then_some(wanted);
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
        let per = if self.is_video_paused() {
            self.resume_budget_per_track(audio_tracks, video_tracks)
        } else {
            self.video_budget_per_track(audio_tracks, video_tracks)
        };
        let Some(per) = per else {
            return Change::None;
        };
        if !self.is_video_paused() {
            if self.floor_fails {
                // The lowest layer does not get through, whatever the estimate says.
                self.floor_fails = false;
                self.paused_since = Some(now);
                self.crossing_since = None;
                return Change::PauseVideo;
            }
            if per >= PAUSE_BELOW_BPS || self.floor_carried(now) {
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
                if self.crossing_since.take().is_some() {
                    self.resume_failed(now);
                }
                return Change::None;
            }
            if self.resume_retry_at.is_some_and(|r| now < r) {
                return Change::None;
            }
            let since = *self.crossing_since.get_or_insert(now);
            if now.duration_since(since) >= RESUME_AFTER {
                self.paused_since = None;
                self.crossing_since = None;
                self.failed_resumes = 0;
                self.resume_retry_at = None;
                return Change::ResumeVideo;
            }
        }
        Change::None
    }

    /// A wait to resume ended because the budget fell back: the link did not carry the padding
    /// of the trial (a lucky probe had raised the estimate). The next wait starts after a
    /// back-off, as the selector's trials do ([`crate::layers::trial_backoff`]).
    fn resume_failed(&mut self, now: Instant) {
        self.failed_resumes = self.failed_resumes.saturating_add(1);
        self.resume_retry_at = Some(now + crate::layers::trial_backoff(self.failed_resumes));
    }
}

/// Whether the newest of `estimates` (newest first) is below [`FALLING_PERCENT`] of the highest.
fn fell(estimates: &[Option<u64>]) -> bool {
    let Some(Some(newest)) = estimates.first() else {
        return false;
    };
    let highest = estimates.iter().flatten().fold(*newest, |a, b| a.max(*b));
    newest.saturating_mul(100) < highest.saturating_mul(FALLING_PERCENT)
}

/// Whether [`FLOOR_SETTLE`] has passed at `at` since `since` (or nothing happened).
fn settled(since: Option<Instant>, at: Instant) -> bool {
    since.is_none_or(|t| at.saturating_duration_since(t) >= FLOOR_SETTLE)
}

mod budget;
mod floor;
mod lowest;
mod target;
mod uplink;

#[cfg(test)]
#[path = "bandwidth_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "bandwidth_estimator_tests.rs"]
mod estimator_tests;
