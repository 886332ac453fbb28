//! Unit tests of the downlink state machine (synthetic estimates, losses and round trips).

use super::*;

pub(super) fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

/// A downlink estimated at 2.5 Mbit/s whose shortest round trip, reported at `t0`, is 5 ms.
pub(super) fn hd_with_base_rtt(t0: Instant) -> Downlink {
    let mut d = Downlink::default();
    d.on_estimate(t0, 2_500_000);
    d.on_feedback_rtt(t0, Duration::from_millis(5));
    d
}

#[test]
fn audio_is_budgeted_before_video() {
    let t0 = Instant::now();
    let mut d = Downlink::default();
    assert_eq!(d.video_budget_per_track(1, 1), None);
    d.on_estimate(t0, 500_000);
    // 85 % of 500k = 425k, minus 64k of audio.
    assert_eq!(d.video_budget_per_track(1, 1), Some(361_000));
    assert_eq!(
        d.video_budget_per_track(2, 2),
        Some((425_000 - 128_000) / 2)
    );
    d.on_estimate(t0, 50_000);
    assert_eq!(d.video_budget_per_track(1, 1), Some(0));
}

#[test]
fn pauses_after_a_sustained_low_budget_and_at_once_when_very_low() {
    let t0 = Instant::now();
    let mut d = Downlink::default();
    d.on_estimate(t0, 2_000_000);
    assert_eq!(d.poll(t0, 1, 1), Change::None);
    // 200k: 170k usable - 64k audio = 106k per video track: below 120k.
    d.on_estimate(t0, 200_000);
    assert_eq!(d.poll(at(t0, 100), 1, 1), Change::None);
    assert_eq!(d.poll(at(t0, 1_000), 1, 1), Change::None);
    // A brief recovery restarts the clock.
    d.on_estimate(t0, 400_000);
    assert_eq!(d.poll(at(t0, 1_200), 1, 1), Change::None);
    d.on_estimate(t0, 200_000);
    assert_eq!(d.poll(at(t0, 1_300), 1, 1), Change::None);
    assert_eq!(d.poll(at(t0, 2_200), 1, 1), Change::None);
    assert_eq!(d.poll(at(t0, 2_300), 1, 1), Change::PauseVideo);
    assert!(d.is_video_paused());
    assert_eq!(d.poll(at(t0, 2_400), 1, 1), Change::None);

    // Far below: no waiting.
    let mut e = Downlink::default();
    e.on_estimate(t0, 120_000);
    assert_eq!(e.poll(t0, 1, 1), Change::PauseVideo);
}

#[test]
fn resumes_only_with_headroom_held_for_a_while() {
    let t0 = Instant::now();
    let mut d = Downlink::default();
    d.on_estimate(t0, 100_000);
    assert_eq!(d.poll(t0, 1, 1), Change::PauseVideo);
    // Enough to pause-not, but not enough headroom to resume (needs 250k per track).
    d.on_estimate(t0, 350_000);
    assert_eq!(d.poll(at(t0, 5_000), 1, 1), Change::None);
    // 500k: 361k per track: the wait to resume starts, a trial padded up to the rate.
    d.on_estimate(t0, 500_000);
    assert_eq!(d.poll(at(t0, 6_000), 1, 1), Change::None);
    assert_eq!(
        d.bwe_target(at(t0, 6_000), 1, 1).0,
        64_000 + RESUME_ABOVE_BPS
    );
    // The link did not carry it (the estimate fell): no more padding, and no new wait
    // before the back-off.
    d.on_estimate(t0, 300_000);
    assert_eq!(d.poll(at(t0, 8_000), 1, 1), Change::None);
    assert_eq!(d.bwe_target(at(t0, 8_000), 1, 1).0, 0);
    d.on_estimate(t0, 500_000);
    assert_eq!(d.poll(at(t0, 8_100), 1, 1), Change::None);
    assert_eq!(d.poll(at(t0, 11_900), 1, 1), Change::None);
    assert_eq!(d.bwe_target(at(t0, 11_900), 1, 1).0, 0);
    // After it: the wait again, and video resumes when it held.
    assert_eq!(d.poll(at(t0, 12_000), 1, 1), Change::None);
    assert_eq!(d.poll(at(t0, 14_900), 1, 1), Change::None);
    assert_eq!(d.poll(at(t0, 15_000), 1, 1), Change::ResumeVideo);
    assert!(!d.is_video_paused());
    assert_eq!(d.bwe_target(at(t0, 15_000), 1, 1).0, 0);
    // A failure after a resume backs off from the first step again (4 s).
    d.on_estimate(t0, 100_000);
    assert_eq!(d.poll(at(t0, 16_000), 1, 1), Change::PauseVideo);
    d.on_estimate(t0, 500_000);
    assert_eq!(d.poll(at(t0, 17_000), 1, 1), Change::None);
    d.on_estimate(t0, 300_000);
    assert_eq!(d.poll(at(t0, 17_500), 1, 1), Change::None);
    d.on_estimate(t0, 500_000);
    assert_eq!(d.poll(at(t0, 21_400), 1, 1), Change::None);
    assert_eq!(d.bwe_target(at(t0, 21_400), 1, 1).0, 0);
    assert_eq!(d.poll(at(t0, 21_500), 1, 1), Change::None);
    assert_eq!(
        d.bwe_target(at(t0, 21_500), 1, 1).0,
        64_000 + RESUME_ABOVE_BPS
    );
}

#[test]
fn without_video_nothing_pauses() {
    let t0 = Instant::now();
    let mut d = Downlink::default();
    d.on_estimate(t0, 10_000);
    assert_eq!(d.poll(t0, 1, 0), Change::None);
    assert_eq!(d.publisher_cap(1, 0), None);
}

#[test]
fn publishers_are_capped_only_on_a_constrained_unpaused_link() {
    let t0 = Instant::now();
    let mut d = Downlink::default();
    assert_eq!(d.publisher_cap(1, 1), None);
    d.on_estimate(t0, 3_200_000);
    assert_eq!(d.publisher_cap(1, 1), None, "HD fits");
    assert_eq!(d.publisher_cap(1, 2), Some((2_720_000 - 64_000) / 2));
    d.on_estimate(t0, 600_000);
    assert_eq!(d.publisher_cap(1, 1), Some(510_000 - 64_000));
    assert_eq!(d.publisher_cap(1, 2), Some((510_000 - 64_000) / 2));
    d.on_estimate(t0, 100_000);
    assert_eq!(d.poll(t0, 1, 1), Change::PauseVideo);
    assert_eq!(
        d.publisher_cap(1, 1),
        None,
        "a paused subscriber caps nobody"
    );
}

#[test]
fn heavy_loss_at_the_lowest_layer_pauses_at_once_and_loss_before_it_does_not() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let mut d = Downlink::default();
    // The estimate stays high (a full queue shows no delay trend).
    d.on_estimate(t0, 400_000);
    // Heavy loss while not at the floor (the layer before the change): nothing.
    d.on_loss(at(0), 0.5);
    assert_eq!(d.poll(at(0), 1, 1), Change::None);
    d.set_at_floor(at(100), true);
    // Too soon after the floor: still the layer before.
    d.on_loss(at(1_000), 0.5);
    assert_eq!(d.poll(at(1_000), 1, 1), Change::None);
    // Settled at the floor, light loss: nothing.
    d.on_loss(at(2_200), 0.05);
    assert_eq!(d.poll(at(2_200), 1, 1), Change::None);
    // Settled, heavy: paused at once.
    d.on_loss(at(3_200), 0.4);
    assert_eq!(d.poll(at(3_200), 1, 1), Change::PauseVideo);
    // Loss while a step up is padded for is the trial's: it neither congests nor pauses.
    let mut f = Downlink::default();
    f.on_estimate(t0, 400_000);
    f.set_at_floor(t0, true);
    f.set_wanted(
        at(2_000),
        Some(Wanted {
            now_bps: 150_000,
            next_bps: 500_000,
            trial_bps: Some(500_000),
        }),
    );
    f.on_loss(at(2_500), 0.4);
    assert!(!f.is_congested(at(2_500)));
    assert_eq!(f.poll(at(2_500), 1, 1), Change::None);
    // Heavy loss at any layer: congested for a while.
    f.on_loss(at(4_000), 0.4);
    assert!(f.is_congested(at(4_000)));
    assert!(!f.is_congested(at(6_000)));
    // Leaving the floor forgets it.
    let mut e = Downlink::default();
    e.on_estimate(t0, 400_000);
    e.set_at_floor(t0, true);
    e.on_loss(at(2_500), 0.4);
    e.set_at_floor(at(2_600), false);
    assert_eq!(e.poll(at(2_700), 1, 1), Change::None);
}

#[test]
fn a_growing_queue_at_the_floor_pauses_at_once_and_a_draining_one_does_not() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let ms = Duration::from_millis;
    // A short round trip sets the base; above the floor a long queue is not ours to judge
    // (the subscriber's own uplink may hold the feedback).
    let mut d = hd_with_base_rtt(t0);
    d.on_feedback_rtt(at(250), ms(600));
    d.on_feedback_rtt(at(500), ms(800));
    assert_eq!(d.poll(at(500), 1, 1), Change::None);
    // The floor from 1 s: packets sent before it met the layer above's queue.
    d.set_at_floor(at(1_000), true);
    d.on_feedback_rtt(at(1_250), ms(820));
    d.on_feedback_rtt(at(1_500), ms(830));
    assert_eq!(d.poll(at(1_500), 1, 1), Change::None);
    // Sent at the floor, and still growing past the threshold: paused.
    d.on_feedback_rtt(at(1_750), ms(700));
    assert_eq!(d.poll(at(1_750), 1, 1), Change::None);
    d.on_feedback_rtt(at(2_000), ms(760));
    assert_eq!(d.poll(at(2_000), 1, 1), Change::PauseVideo);

    // At the floor, before its own packets come back: a long queue and a current estimate
    // that cannot carry even the lowest layer pause at once; either alone does not.
    let floor = Wanted {
        now_bps: 150_000,
        next_bps: 500_000,
        trial_bps: None,
    };
    let mut o = hd_with_base_rtt(t0);
    o.set_at_floor(at(1_000), true);
    o.set_wanted(at(1_000), Some(floor));
    o.on_feedback(at(1_100), None, Some(ms(800)), Some(300_000));
    assert_eq!(
        o.poll(at(1_100), 1, 1),
        Change::None,
        "an estimate that carries it"
    );
    o.on_feedback(at(1_200), None, Some(ms(400)), Some(115_000));
    assert_eq!(
        o.poll(at(1_200), 1, 1),
        Change::None,
        "a queue under the threshold"
    );
    o.on_feedback(at(1_300), None, Some(ms(740)), Some(115_000));
    assert_eq!(o.poll(at(1_300), 1, 1), Change::PauseVideo);

    // A link that carries the floor: its queue drains, and nothing pauses.
    let mut b = hd_with_base_rtt(t0);
    b.set_at_floor(at(1_000), true);
    for (t, rtt) in [
        (1_250, 450),
        (1_500, 440),
        (1_750, 300),
        (2_000, 150),
        (2_250, 160),
    ] {
        b.on_feedback_rtt(at(t), ms(rtt));
        assert_eq!(b.poll(at(t), 1, 1), Change::None);
    }
    // The base is the lowest round trip of the last two windows: a path whose round trip
    // is long (satellite, 600 ms) is not a queue.
    let mut s = Downlink::default();
    s.on_estimate(t0, 2_500_000);
    s.set_at_floor(at(0), true);
    for t in (1_000..30_000).step_by(250) {
        s.on_feedback_rtt(at(t), ms(600 + (t % 500) / 50));
        assert_eq!(s.poll(at(t), 1, 1), Change::None);
    }
}

#[test]
fn a_long_queue_while_the_estimate_falls_is_congestion() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let ms = Duration::from_millis;
    let mut d = hd_with_base_rtt(t0);
    // A long queue with a steady estimate: the subscriber's uplink may hold its feedback.
    d.on_feedback_rtt(at(250), ms(400));
    assert!(!d.is_congested(at(250)));
    // The estimate falls: the queue is the downlink's.
    d.on_estimate(at(400), 2_000_000);
    d.on_feedback_rtt(at(500), ms(420));
    assert!(d.is_congested(at(500)));
    // A short queue while it falls is not (str0m's estimate goes down and up on its own).
    let mut e = hd_with_base_rtt(t0);
    e.on_estimate(at(100), 1_500_000);
    e.on_feedback_rtt(at(200), ms(200));
    assert!(!e.is_congested(at(200)));
    // Over a second of feedback reports later (one every 100 ms) the fall is forgotten.
    for t in (300..=1_300).step_by(100) {
        e.on_feedback_rtt(at(t), ms(10));
    }
    e.on_feedback_rtt(at(1_400), ms(400));
    assert!(!e.is_congested(at(1_400)));

    // str0m's current estimate falls below what the subscriber's video takes before its
    // event's mean falls: with the queue past OVERRUN_QUEUE, that is congestion too, a round or
    // more before CONGESTED_QUEUE would show it.
    let sent = |d: &mut Downlink| {
        let top = Wanted {
            now_bps: 1_150_000,
            next_bps: 1_150_000,
            trial_bps: None,
        };
        d.set_wanted(t0, Some(top));
    };
    let mut f = hd_with_base_rtt(t0);
    sent(&mut f);
    f.on_feedback(at(100), Some(0.0), Some(ms(15)), Some(2_600_000));
    f.on_feedback(at(200), Some(0.0), Some(ms(140)), Some(2_600_000));
    assert!(
        !f.is_congested(at(200)),
        "a short queue with a steady estimate"
    );
    f.on_feedback(at(300), Some(0.0), Some(ms(250)), Some(1_500_000));
    assert!(
        !f.is_congested(at(300)),
        "a queue, and an estimate that carries what is sent"
    );
    f.on_feedback(at(400), Some(0.0), Some(ms(120)), Some(850_000));
    assert!(
        !f.is_congested(at(400)),
        "an estimate under what is sent, and a short queue"
    );
    f.on_feedback(at(500), Some(0.0), Some(ms(180)), Some(850_000));
    assert!(f.is_congested(at(500)));
    assert_eq!(
        f.estimate(),
        Some(2_500_000),
        "the event's estimate had not fallen"
    );
    // Without knowing what is sent (one layer), only CONGESTED_QUEUE's rule is left.
    let mut g = hd_with_base_rtt(t0);
    g.on_feedback(at(100), Some(0.0), Some(ms(250)), Some(300_000));
    assert!(!g.is_congested(at(100)));
}

#[test]
fn heavy_transport_wide_loss_congests_and_pauses_at_the_settled_floor() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let mut d = Downlink::default();
    d.on_estimate(t0, 2_500_000);
    // Light loss (a lossy link that carries what it is sent): nothing.
    d.on_loss(at(0), 0.05);
    assert!(!d.is_congested(at(0)));
    // A link that stepped down drops most of the flood: congested at once, for a while.
    d.on_loss(at(250), 0.3);
    assert!(d.is_congested(at(250)));
    assert!(!d.is_congested(at(1_800)));
    // At the floor, before it settled (the window still holds the layer above): no pause.
    d.set_at_floor(at(2_000), true);
    d.on_loss(at(3_000), 0.9);
    assert!(d.is_congested(at(3_000)));
    assert_eq!(d.poll(at(3_000), 1, 1), Change::None);
    // Settled: light loss does not pause, heavy loss does, at once.
    d.on_loss(at(3_500), 0.1);
    assert_eq!(d.poll(at(3_500), 1, 1), Change::None);
    d.on_loss(at(3_750), 0.3);
    assert_eq!(d.poll(at(3_750), 1, 1), Change::PauseVideo);
    // A trial's padding is lost on purpose: not the link's.
    let mut f = Downlink::default();
    f.on_estimate(t0, 400_000);
    let trial = Wanted {
        now_bps: 150_000,
        next_bps: 500_000,
        trial_bps: Some(500_000),
    };
    f.set_wanted(at(0), Some(trial));
    f.on_loss(at(1_000), 0.5);
    assert!(!f.is_congested(at(1_000)));
    // Nor while video is paused (only audio flows).
    let mut p = Downlink::default();
    p.on_estimate(t0, 50_000);
    assert_eq!(p.poll(at(0), 1, 1), Change::PauseVideo);
    p.on_loss(at(100), 0.5);
    assert!(!p.is_congested(at(100)));
}

#[test]
fn a_new_path_sets_aside_the_dead_paths_loss_queue_and_estimate_fall() {
    let t0 = Instant::now();
    let mut d = hd_with_base_rtt(t0);
    assert_eq!(d.take_estimator_reset(t0), None, "no path change yet");
    d.on_new_path(at(t0, 1_000));
    // The first feedback reports what was sent into the dead path as lost, with long round
    // trips; str0m's estimate falls with it.
    d.on_feedback(
        at(t0, 1_300),
        Some(0.88),
        Some(Duration::from_millis(900)),
        None,
    );
    d.on_loss(at(t0, 1_400), 0.6);
    d.on_estimate(at(t0, 1_400), 200_000);
    assert!(!d.is_congested(at(t0, 1_400)));
    assert_eq!(
        d.estimate(),
        Some(2_500_000),
        "held at the estimate before the change"
    );
    assert_eq!(d.poll(at(t0, 1_500), 1, 1), Change::None);
    // str0m's estimator starts again once, a second after the change, from the one before.
    assert_eq!(d.take_estimator_reset(at(t0, 1_900)), None);
    assert_eq!(d.take_estimator_reset(at(t0, 2_000)), Some(2_500_000));
    assert_eq!(d.take_estimator_reset(at(t0, 2_500)), None);
    // A rise passes at once.
    d.on_estimate(at(t0, 2_500), 3_000_000);
    assert_eq!(d.estimate(), Some(3_000_000));
    d.on_estimate(at(t0, 2_600), 900_000);
    // Settled: the estimate is str0m's again, and loss counts.
    assert_eq!(d.poll(at(t0, 5_000), 1, 1), Change::None);
    assert_eq!(d.estimate(), Some(900_000));
    d.on_loss(at(t0, 5_100), 0.5);
    assert!(d.is_congested(at(t0, 5_100)));
    // The new path's round trip is its own base, not a queue over the old path's.
    let mut q = hd_with_base_rtt(t0);
    q.set_at_floor(t0, true);
    q.on_new_path(at(t0, 1_000));
    for ms in [5_000, 5_250, 5_500] {
        q.on_feedback_rtt(at(t0, ms), Duration::from_millis(700));
    }
    assert_eq!(
        q.poll(at(t0, 5_600), 1, 1),
        Change::None,
        "a long path is not a queue"
    );
    // Without an estimate before, str0m's starts again from HD.
    let mut n = Downlink::default();
    n.on_new_path(t0);
    assert_eq!(n.take_estimator_reset(at(t0, 1_000)), Some(HD_DESIRED_BPS));
}

#[test]
fn congestion_drains_until_the_queue_is_short_or_for_at_most_drain_max_or_longer_for_a_long_queue()
{
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let ms = Duration::from_millis;
    let sent = Wanted {
        now_bps: 1_150_000,
        next_bps: 1_150_000,
        trial_bps: None,
    };
    let mut d = hd_with_base_rtt(t0);
    d.set_wanted(t0, Some(sent));
    d.on_feedback(at(100), Some(0.0), Some(ms(120)), Some(2_600_000));
    assert!(!d.is_draining(at(100)), "a queue is not congestion yet");
    // The step: the queue grows past OVERRUN_QUEUE while the current estimate falls under what
    // is sent. Congested, and draining from then on.
    d.on_feedback(at(300), Some(0.0), Some(ms(300)), Some(600_000));
    assert!(d.is_congested(at(300)) && d.is_draining(at(300)));
    // The queue still long (what was sent before the cut), congested again in the same episode:
    // the drain keeps its start.
    d.on_feedback(at(400), Some(0.0), Some(ms(390)), Some(500_000));
    d.on_feedback(at(500), Some(0.0), Some(ms(300)), Some(450_000));
    assert!(d.is_draining(at(500)));
    d.on_feedback(at(600), Some(0.0), Some(ms(160)), Some(450_000));
    assert!(d.is_draining(at(600)), "still over QUEUE_SIGN");
    // Short again: drained, though still congested (the lowest layer's keyframe may come).
    d.on_feedback(at(700), Some(0.0), Some(ms(60)), Some(450_000));
    assert!(d.is_congested(at(700)) && !d.is_draining(at(700)));

    // A queue that stays long: the drain ends DRAIN_MAX after it began, whatever the feedback.
    let mut e = hd_with_base_rtt(t0);
    e.set_wanted(t0, Some(sent));
    e.on_feedback(at(300), Some(0.0), Some(ms(300)), Some(600_000));
    for t in (400..=1_200).step_by(100) {
        e.on_feedback(at(t), Some(0.0), Some(ms(400)), Some(450_000));
    }
    assert!(e.is_draining(at(300) + DRAIN_MAX - ms(1)));
    assert!(!e.is_draining(at(300) + DRAIN_MAX));
    // A queue of FLOOR_QUEUE_PAUSE or more (a far slower link): up to DRAIN_LONG_MAX.
    e.on_feedback(at(1_300), Some(0.0), Some(ms(800)), Some(450_000));
    assert!(e.is_draining(at(300) + DRAIN_MAX));
    assert!(e.is_draining(at(300) + DRAIN_LONG_MAX - ms(1)));
    assert!(!e.is_draining(at(300) + DRAIN_LONG_MAX));
    // ... and no longer once it fell under that (though not yet under QUEUE_SIGN).
    e.on_feedback(at(1_400), Some(0.0), Some(ms(400)), Some(450_000));
    assert!(!e.is_draining(at(1_400)));

    // A cut to the lowest layer by the budget: congestion if the queue is already long.
    let mut g = hd_with_base_rtt(t0);
    g.set_wanted(t0, Some(sent));
    g.on_feedback(at(100), Some(0.0), Some(ms(120)), Some(2_600_000));
    assert!(
        !g.on_cut_to_floor(at(150)) && !g.is_congested(at(150)),
        "a short queue"
    );
    g.on_feedback(at(200), Some(0.0), Some(ms(215)), Some(2_600_000));
    assert!(
        !g.is_congested(at(200)),
        "the queue rules alone do not see it yet"
    );
    assert!(g.on_cut_to_floor(at(250)) && g.is_congested(at(250)));
    assert!(g.is_draining(at(250) + DRAIN_MAX - ms(1)));

    // Heavy transport-wide loss is congestion too, and drains the same way.
    let mut f = hd_with_base_rtt(t0);
    f.on_feedback(at(2_000), Some(0.4), Some(ms(200)), Some(600_000));
    assert!(f.is_congested(at(2_000)) && f.is_draining(at(2_000)));
    // A new path forgets it.
    f.on_new_path(at(2_100));
    assert!(!f.is_draining(at(2_100)));
}

#[test]
fn a_receiver_reports_heavy_loss_pauses_only_without_fresh_transport_wide_loss() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let ms = Duration::from_millis;
    // Settled at the floor of a 500 kbit/s link with 3 % random loss: the TWCC feedback counts
    // 8 % this second, and a report sent with a NACK says 1 of 2 packets was lost.
    let mut d = Downlink::default();
    d.on_estimate(t0, 426_000);
    d.set_at_floor(t0, true);
    for t in (2_000..=3_000).step_by(100) {
        d.on_feedback(at(t), Some(0.08), Some(ms(6)), Some(426_000));
    }
    d.on_report_loss(at(3_050), 0.498);
    assert!(!d.is_congested(at(3_050)));
    assert_eq!(d.poll(at(3_050), 1, 1), Change::None);
    d.on_report_loss(at(3_100), 0.333);
    assert_eq!(d.poll(at(3_100), 1, 1), Change::None);
    // The transport-wide loss itself heavy: paused at once.
    d.on_feedback(at(3_200), Some(0.3), Some(ms(6)), Some(426_000));
    assert_eq!(d.poll(at(3_200), 1, 1), Change::PauseVideo);

    // No TWCC feedback for a second (or none at all): the reports are all there is.
    let mut e = Downlink::default();
    e.on_estimate(t0, 426_000);
    e.set_at_floor(t0, true);
    e.on_feedback(at(1_000), Some(0.08), Some(ms(6)), Some(426_000));
    e.on_report_loss(at(2_000) + TWCC_LOSS_FRESH, 0.498);
    assert!(e.is_congested(at(2_000) + TWCC_LOSS_FRESH));
    assert_eq!(e.poll(at(3_100), 1, 1), Change::PauseVideo);
}

#[test]
fn paused_video_waits_to_resume_only_when_the_current_estimate_agrees() {
    // Scenario c's run: video paused on a 150 kbit/s link while str0m's event (a mean) still
    // said 537-570 kbit/s and its current estimate 58-83 kbit/s.
    let t0 = Instant::now();
    let mut d = Downlink::default();
    d.on_estimate(t0, 100_000);
    assert_eq!(d.poll(t0, 1, 1), Change::PauseVideo);
    d.on_estimate(at(t0, 100), 570_000);
    d.on_feedback(at(t0, 100), Some(0.0), None, Some(83_000));
    for ms in (200..=6_000).step_by(100) {
        assert_eq!(d.poll(at(t0, ms), 1, 1), Change::None, "at {ms} ms");
        // No trial: str0m is not asked to pad the weak link up to the resume rate.
        assert_eq!(d.bwe_target(at(t0, ms), 1, 1).0, 0, "at {ms} ms");
    }
    // The link recovered: the current estimate (its probes) rises first, and the wait starts
    // once both carry the resume rate, with the trial padded for.
    d.on_feedback(at(t0, 6_100), Some(0.0), None, Some(750_000));
    assert_eq!(d.poll(at(t0, 6_100), 1, 1), Change::None);
    assert_eq!(
        d.bwe_target(at(t0, 6_100), 1, 1).0,
        64_000 + RESUME_ABOVE_BPS
    );
    assert_eq!(d.poll(at(t0, 9_000), 1, 1), Change::None);
    assert_eq!(d.poll(at(t0, 9_100), 1, 1), Change::ResumeVideo);

    // A current estimate that falls during the wait ends it, as a falling event does.
    d.on_estimate(at(t0, 9_200), 100_000);
    assert_eq!(d.poll(at(t0, 9_200), 1, 1), Change::PauseVideo);
    d.on_estimate(at(t0, 9_300), 600_000);
    d.on_feedback(at(t0, 9_300), Some(0.0), None, Some(600_000));
    assert_eq!(d.poll(at(t0, 9_300), 1, 1), Change::None);
    d.on_feedback(at(t0, 9_400), Some(0.0), None, Some(90_000));
    assert_eq!(d.poll(at(t0, 9_400), 1, 1), Change::None);
    assert_eq!(d.bwe_target(at(t0, 9_400), 1, 1).0, 0);
    // Failed: the next wait (and its padding) only after the back-off, as a failed trial's.
    d.on_feedback(at(t0, 9_500), Some(0.0), None, Some(600_000));
    let retry = at(t0, 9_400) + crate::layers::trial_backoff(1);
    let before = retry - Duration::from_millis(100);
    assert_eq!(d.poll(before, 1, 1), Change::None);
    assert_eq!(d.bwe_target(before, 1, 1).0, 0);
    assert_eq!(d.poll(retry, 1, 1), Change::None);
    assert_eq!(d.bwe_target(retry, 1, 1).0, 64_000 + RESUME_ABOVE_BPS);
}

#[test]
fn a_low_estimate_does_not_pause_a_floor_the_link_visibly_carries() {
    // Scenario e: settled at the floor of a 500 kbit/s link with 3 % random loss, str0m's
    // loss-based estimate sank to 209 kbit/s (under the pause budget) while the round trips
    // showed no queue. The floor flows: video stays.
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let ms = Duration::from_millis;
    // At the floor from t0 of a link estimated at 426 kbit/s, with a shortest round trip of 4 ms.
    let at_floor = || {
        let mut d = Downlink::default();
        d.on_estimate(t0, 426_000);
        d.on_feedback(t0, Some(0.03), Some(ms(4)), Some(426_000));
        d.set_at_floor(t0, true);
        d
    };
    let mut d = at_floor();
    d.on_estimate(at(2_000), 209_000);
    for t in (2_000..=8_000).step_by(100) {
        d.on_feedback(at(t), Some(0.035), Some(ms(4 + t % 30)), Some(190_000));
        assert_eq!(d.poll(at(t), 1, 1), Change::None, "at {t} ms");
    }
    // Its feedback stops: the estimate is all there is, and it pauses.
    assert_eq!(d.poll(at(9_100), 1, 1), Change::None);
    assert_eq!(d.poll(at(10_200), 1, 1), Change::PauseVideo);

    // The same estimate with a queue: paused after PAUSE_AFTER, as before.
    let mut q = at_floor();
    q.on_estimate(at(2_000), 209_000);
    let queued = Some(ms(4) + QUEUE_SIGN);
    q.on_feedback(at(2_000), Some(0.03), queued, Some(190_000));
    assert_eq!(q.poll(at(2_000), 1, 1), Change::None);
    q.on_feedback(at(3_000), Some(0.03), queued, Some(190_000));
    assert_eq!(q.poll(at(3_000), 1, 1), Change::PauseVideo);

    // Not yet settled at the floor (its feedback may be of the layer above): as before too.
    let mut s = at_floor();
    s.on_estimate(t0, 100_000);
    assert_eq!(s.poll(t0, 1, 1), Change::PauseVideo);
}

#[test]
fn a_queue_that_steps_up_while_the_uplink_is_short_is_congestion_at_once() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let ms = Duration::from_millis;
    // The subscriber's own audio, every 20 ms until `to`, each delayed by `uplink(t)` ms.
    let audio = |d: &mut Downlink, from: u64, to: u64, uplink: &dyn Fn(u64) -> u64| {
        for t in (from..=to).step_by(20) {
            d.on_own_audio(at(t + uplink(t)), t * 1_000);
        }
    };
    // Scenario c's step: the round trip grows 20 -> 120 -> 230 ms in two rounds while str0m's
    // estimate stays put (it did for ~0.7 s) and the uplink stays short.
    let rounds = |d: &mut Downlink| {
        d.on_feedback(at(100), Some(0.0), Some(ms(20)), Some(2_600_000));
        d.on_feedback(at(200), Some(0.0), Some(ms(120)), Some(2_600_000));
        let second = d.is_congested(at(200));
        d.on_feedback(at(300), Some(0.0), Some(ms(230)), Some(2_600_000));
        (second, d.is_congested(at(300)))
    };
    let mut d = hd_with_base_rtt(t0);
    audio(&mut d, 0, 300, &|_| 2);
    assert_eq!(
        rounds(&mut d),
        (false, true),
        "congested once past OVERRUN_QUEUE"
    );
    // Cut to the lowest layer: str0m is asked for no more than that flows (its probes are
    // capped at twice it), until the congestion and its drain are over.
    let floor = Wanted {
        now_bps: 150_000,
        next_bps: 500_000,
        trial_bps: None,
    };
    d.set_wanted(at(300), Some(floor));
    assert_eq!(d.bwe_target(at(300), 1, 1), (0, 214_000));
    assert!(d.bwe_target(at(3_000), 1, 1).1 > 500_000);
    // The same rounds without the subscriber's audio (muted): the uplink is not known, and
    // the round trip alone says nothing of the downlink.
    let mut m = hd_with_base_rtt(t0);
    assert_eq!(rounds(&mut m), (false, false));
    // The uplink's queue grows with the round trip (scenario d: the feedback waits there).
    let mut u = hd_with_base_rtt(t0);
    audio(&mut u, 0, 300, &|t| t.saturating_sub(100));
    assert_eq!(rounds(&mut u), (false, false));
    // A queue that grows slowly (a layer that overruns a little) is left to the other rules.
    let mut s = hd_with_base_rtt(t0);
    audio(&mut s, 0, 1_000, &|_| 2);
    for (t, rtt) in [
        (100, 20),
        (200, 60),
        (400, 100),
        (600, 130),
        (800, 160),
        (1_000, 190),
    ] {
        s.on_feedback(at(t), Some(0.0), Some(ms(rtt)), Some(2_600_000));
        assert!(!s.is_congested(at(t)), "{rtt} ms at {t} ms");
    }
}

#[test]
fn a_queue_the_subscribers_uplink_holds_is_not_its_downlinks() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let ms = Duration::from_millis;
    // Scenario d (the patient's uplink shaped, its downlink clean): str0m's estimate fell from
    // 2.84 to 2.24 Mbit/s (a fifth, "falling") while the round trip grew 18 -> 154 -> 374 ms.
    // `audio(d, from, to)` feeds the subscriber's own audio sent from `from` to `to` ms.
    let rounds = |d: &mut Downlink, audio: &dyn Fn(&mut Downlink, u64, u64)| {
        audio(d, 0, 1_000);
        d.on_estimate(at(1_000), 2_840_000);
        d.on_feedback(at(1_000), Some(0.0), Some(ms(18)), Some(2_800_000));
        audio(d, 1_000, 1_100);
        d.on_estimate(at(1_100), 2_240_000);
        d.on_feedback(at(1_100), Some(0.0), Some(ms(154)), Some(2_200_000));
        let middle = d.is_congested(at(1_100));
        audio(d, 1_100, 1_200);
        d.on_feedback(at(1_200), Some(0.0), Some(ms(374)), Some(2_200_000));
        (middle, d.is_congested(at(1_200)))
    };
    // What arrived from `from` to `to` of audio sent every 20 ms, each sent at `t` ms and
    // delayed by `queue(t)` ms on the way.
    let arrivals = |d: &mut Downlink, from: u64, to: u64, queue: &dyn Fn(u64) -> u64| {
        for t in (0..=1_200).step_by(20) {
            let arrived = t + queue(t);
            if (from..to).contains(&arrived) {
                d.on_own_audio(at(arrived), t * 1_000);
            }
        }
    };
    // The patient's audio stalls in its uplink from 760 ms on and arrives in a bunch from
    // 1,130 ms, having waited ~370 ms: the round trip's queue is the uplink's.
    let stalled =
        |d: &mut Downlink, from, to| arrivals(d, from, to, &|t| if t < 760 { 2 } else { 370 });
    let mut d = hd_with_base_rtt(t0);
    assert_eq!(rounds(&mut d, &stalled), (false, false));
    // The same round trips with a short uplink are the downlink's: congestion.
    let mut s = hd_with_base_rtt(t0);
    assert_eq!(
        rounds(&mut s, &|d: &mut Downlink, from, to| arrivals(
            d,
            from,
            to,
            &|_| 2
        )),
        (false, true)
    );
    // Without the subscriber's audio (none for a second: it stopped) the round trip is all
    // there is, as before.
    let mut m = hd_with_base_rtt(t0);
    let gone =
        |d: &mut Downlink, from, to| arrivals(d, from, to, &|t| if t < 100 { 2 } else { 5_000 });
    assert_eq!(rounds(&mut m, &gone), (false, true));
}

#[test]
fn the_estimate_tells_quality_only_after_a_sign_of_congestion() {
    let t0 = Instant::now();
    let mut d = Downlink::default();
    // Video flows under the HD it wants: str0m's application-limited estimate on a clean link.
    d.on_estimate(t0, 600_000);
    assert_eq!(d.poll(t0, 1, 1), Change::None);
    assert!(d.is_constrained());
    assert_eq!(
        d.quality_estimate(at(t0, 1_000)),
        None,
        "no sign: not the link's"
    );
    // Loss over LOSS_SIGN: the link is weak, its estimate tells how weak.
    d.on_loss(at(t0, 2_000), 0.03);
    assert_eq!(d.quality_estimate(at(t0, 2_000)), Some(600_000));
    let window = target::QUALITY_SIGN_WINDOW.as_millis() as u64;
    assert_eq!(
        d.quality_estimate(at(t0, 2_000 + window - 1)),
        Some(600_000)
    );
    assert_eq!(
        d.quality_estimate(at(t0, 2_000 + window)),
        None,
        "signs long gone"
    );
    // Not constrained (HD fits): never the estimate, even right after a sign.
    d.on_estimate(at(t0, 20_000), 2 * HD_DESIRED_BPS);
    assert_eq!(d.poll(at(t0, 20_000), 1, 1), Change::None);
    d.on_loss(at(t0, 20_100), 0.03);
    assert_eq!(d.quality_estimate(at(t0, 20_100)), None);
}

#[test]
fn a_burst_queued_at_a_floor_the_link_carried_does_not_pause_it() {
    // A Firefox patient on 300 kbit/s with 3 % loss: the lowest layer flowed at 30 fps for 22 s
    // with no queue, then a burst queued 80-225 ms for ~2 s while str0m's loss-based estimate
    // was 166-250 kbit/s, under the pause budget. Video paused (13 s) on a link that carried it.
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let ms = Duration::from_millis;
    let run = |carried_first: bool, queue_ms: u64| {
        let mut d = Downlink::default();
        d.on_estimate(t0, 426_000);
        d.on_feedback(t0, Some(0.02), Some(ms(5)), Some(426_000));
        d.set_at_floor(t0, true);
        d.on_estimate(at(2_000), 190_000);
        if carried_first {
            // Settled at the floor, no queue: the link visibly carries it.
            for t in (1_600..=2_000).step_by(100) {
                d.on_feedback(at(t), Some(0.02), Some(ms(5 + t % 20)), Some(190_000));
                assert_eq!(d.poll(at(t), 1, 1), Change::None, "at {t} ms");
            }
        } else {
            // Paused at the floor with no queue: audio alone flowed, which says nothing of it.
            d.paused_since = Some(at(1_500));
            d.on_feedback(at(1_900), Some(0.0), Some(ms(5)), Some(190_000));
            d.paused_since = None;
        }
        // The burst's queue, round after round.
        let mut paused = None;
        for t in (2_100..=7_000).step_by(100) {
            d.on_feedback(at(t), Some(0.02), Some(ms(5 + queue_ms)), Some(190_000));
            if d.poll(at(t), 1, 1) == Change::PauseVideo {
                paused = Some(t);
                break;
            }
        }
        paused
    };
    // Carried, then a queue of 225 ms: held FLOOR_CARRIED_HOLD after the last short round, then
    // the estimate pauses it as before (PAUSE_AFTER).
    let hold = FLOOR_CARRIED_HOLD.as_millis() as u64;
    let paused = run(true, 225).expect("a queue that lasts pauses in the end");
    assert!(
        paused >= 2_000 + hold,
        "paused at {paused} ms, within the hold"
    );
    // Never seen carried: the low estimate pauses after PAUSE_AFTER, as before.
    let first = 2_100 + PAUSE_AFTER.as_millis() as u64;
    assert_eq!(run(false, 225), Some(first));
    // A queue past FLOOR_QUEUE_PAUSE is not held either.
    let long = FLOOR_QUEUE_PAUSE.as_millis() as u64 + 50;
    assert!(
        run(true, long).is_some_and(|t| t < 2_000 + hold),
        "a long queue is not held"
    );
}
