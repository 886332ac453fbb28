//! Unit tests of what a downlink tells str0m's estimator and when it sets the estimate aside:
//! probes and padding (the minimum and desired rates), falls held back, stuck estimates
//! restarted, and a link that cleared (synthetic estimates, losses and round trips).

use super::tests::{at, hd_with_base_rtt};
use super::*;

#[test]
fn probes_without_padding_while_paused() {
    let t0 = Instant::now();
    let mut d = Downlink::default();
    assert_eq!(d.bwe_target(t0, 1, 1), (0, HD_DESIRED_BPS));
    assert_eq!(
        d.bwe_target(t0, 1, 1),
        crate::transport::BWE_INITIAL_TARGET,
        "what a new transport starts with"
    );
    assert_eq!(d.bwe_target(t0, 2, 3), (0, 3 * HD_DESIRED_BPS));
    d.on_estimate(t0, 100_000);
    assert_eq!(d.poll(t0, 1, 1), Change::PauseVideo);
    // No minimum (nothing to pad up to); the desired rate is what resuming needs with headroom
    // (not HD: a probe of HD fills a weak link's queue), and rises every other step.
    let resume = (64_000 + RESUME_ABOVE_BPS) * 120 / 85;
    let targets: Vec<u64> = [0, 1_600, 3_100, 4_600]
        .iter()
        .map(|&ms| d.bwe_target(at(t0, ms), 1, 1))
        .inspect(|&(min, _)| assert_eq!(min, 0))
        .map(|(_, desired)| desired)
        .collect();
    assert_eq!(
        targets,
        vec![resume, resume + 1_000, resume, resume + 1_000]
    );
}

#[test]
fn a_constrained_link_is_probed_every_six_seconds_and_a_good_one_never() {
    let t0 = Instant::now();
    let mut d = Downlink::default();
    d.on_estimate(t0, 400_000);
    assert_eq!(d.poll(t0, 1, 1), Change::None);
    let desired = |d: &Downlink, ms| d.bwe_target(at(t0, ms), 1, 1).1;
    assert_eq!(desired(&d, 0), HD_DESIRED_BPS);
    assert_eq!(desired(&d, 2_900), HD_DESIRED_BPS);
    assert_eq!(desired(&d, 3_100), HD_DESIRED_BPS + 1_000);
    assert_eq!(desired(&d, 6_100), HD_DESIRED_BPS);
    // A link that carries HD is not probed.
    d.on_estimate(t0, HD_DESIRED_BPS + 1);
    assert_eq!(d.poll(at(t0, 7_000), 1, 1), Change::None);
    assert_eq!(desired(&d, 9_100), HD_DESIRED_BPS);
}

#[test]
fn the_desired_rate_follows_the_next_layer_and_a_step_up_is_padded_for_first() {
    let t0 = Instant::now();
    let mut d = Downlink::default();
    d.on_estimate(t0, 2_000_000);
    assert_eq!(d.poll(t0, 1, 1), Change::None);
    // One layer up takes 500 kbit/s: desired is where it fits with 20 % headroom once 85 %
    // of the estimate is usable and audio is served: (64k + 600k) / 0.85.
    let next = |trial| {
        Some(Wanted {
            now_bps: 150_000,
            next_bps: 500_000,
            trial_bps: trial,
        })
    };
    d.set_wanted(t0, next(None));
    assert_eq!(d.bwe_target(t0, 1, 1), (0, 781_176));
    // A subscriber waits to go up: str0m pads to the rate after the step.
    d.set_wanted(t0, next(Some(500_000)));
    assert_eq!(d.bwe_target(t0, 1, 1), (564_000, 781_176));
    // Paused video is not padded for, and what resuming needs is probed for (what finds a
    // recovered link).
    d.on_estimate(t0, 100_000);
    assert_eq!(d.poll(t0, 1, 1), Change::PauseVideo);
    assert_eq!(
        d.bwe_target(t0, 1, 1),
        (0, (64_000 + RESUME_ABOVE_BPS) * 120 / 85)
    );
    // Unknown layers while paused: the same, what resuming needs.
    d.set_wanted(t0, None);
    assert_eq!(
        d.bwe_target(t0, 1, 1),
        (0, (64_000 + RESUME_ABOVE_BPS) * 120 / 85)
    );
}

#[test]
fn a_fall_at_the_top_layers_without_queue_or_loss_is_held_until_a_sign_or_for_the_events_window() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let ms = Duration::from_millis;
    // A clean link whose subscriber's CPU is starved: round trips of up to 46 ms, no loss,
    // and str0m's estimate dips.
    let mut d = hd_with_base_rtt(t0);
    d.set_at_top(true);
    d.on_feedback_rtt(at(50), ms(46));
    d.on_estimate(at(100), 594_000);
    assert_eq!(d.estimate(), Some(2_500_000), "held");
    d.on_loss(at(500), 0.01);
    d.on_feedback_rtt(at(1_000), ms(30));
    d.on_estimate(at(1_500), 1_200_000);
    assert_eq!(
        d.estimate(),
        Some(2_500_000),
        "still below what it was: held"
    );
    assert_eq!(d.poll(at(1_500), 1, 1), Change::None);
    // Back where it was: the hold ends, and a later dip is held again.
    d.on_estimate(at(2_000), 2_600_000);
    assert_eq!(d.estimate(), Some(2_600_000));
    d.on_estimate(at(4_000), 700_000);
    assert_eq!(d.estimate(), Some(2_600_000), "a new dip, held");
    // A fall with no sign for FALL_HOLD is the estimator's: it starts again from the
    // estimate before, once, and the budget keeps that.
    d.on_estimate(at(8_000), 650_000);
    assert_eq!(d.estimate(), Some(2_600_000), "within FALL_HOLD of the dip");
    assert_eq!(d.take_estimator_reset(at(8_000)), None);
    d.on_estimate(at(9_000), 650_000);
    assert_eq!(d.estimate(), Some(2_600_000));
    assert_eq!(d.take_estimator_reset(at(9_000)), Some(2_600_000));
    assert_eq!(d.take_estimator_reset(at(9_100)), None);
    // Its mean still holds the dip for a while: held anew.
    d.on_estimate(at(9_500), 1_500_000);
    assert_eq!(d.estimate(), Some(2_600_000));
    // A sign while held (a queue two rounds in a row): the fall passes, and no reset.
    d.on_feedback_rtt(at(9_900), ms(300));
    d.on_feedback_rtt(at(10_000), ms(300));
    assert_eq!(d.estimate(), Some(1_500_000));
    assert_eq!(d.take_estimator_reset(at(15_000)), None);

    // A queue that lasts lets a held fall through as soon as it is a sign (QUEUE_SIGN_ROUNDS).
    let mut q = hd_with_base_rtt(t0);
    q.set_at_top(true);
    q.on_estimate(at(100), 400_000);
    assert_eq!(q.estimate(), Some(2_500_000));
    q.on_feedback_rtt(at(200), ms(150));
    assert_eq!(q.estimate(), Some(2_500_000), "one round of queue: held");
    q.on_feedback_rtt(at(300), ms(220));
    assert_eq!(q.estimate(), Some(400_000));
    // So does loss, and a fall soon after a sign is not held at all.
    let mut l = hd_with_base_rtt(t0);
    l.set_at_top(true);
    l.on_estimate(at(100), 1_000_000);
    l.on_loss(at(200), LOSS_SIGN);
    assert_eq!(l.estimate(), Some(1_000_000));
    l.on_estimate(at(2_000), 400_000);
    assert_eq!(l.estimate(), Some(400_000));
    // Without round trips to judge the link by, nothing is held.
    let mut n = Downlink::default();
    n.set_at_top(true);
    n.on_estimate(t0, 2_500_000);
    n.on_estimate(at(100), 400_000);
    assert_eq!(n.estimate(), Some(400_000));
    // Below the top layers, a held budget could take a layer up on a link that just got
    // weaker: nothing is held, and a hold ends when a layer goes down.
    let mut b = hd_with_base_rtt(t0);
    b.on_estimate(at(100), 400_000);
    assert_eq!(b.estimate(), Some(400_000));
    let mut e = hd_with_base_rtt(t0);
    e.set_at_top(true);
    e.on_estimate(at(100), 400_000);
    assert_eq!(e.estimate(), Some(2_500_000));
    e.set_at_top(false);
    assert_eq!(e.estimate(), Some(400_000));
}

#[test]
fn one_round_of_queue_is_a_cpu_hiccup_not_a_sign() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let ms = Duration::from_millis;
    // The doctor's clean link on a busy machine: one round's feedback comes 135 ms late, and
    // str0m's estimate falls with it (seen: 2.1 Mbit/s to 280 kbit/s).
    let mut d = hd_with_base_rtt(t0);
    d.set_at_top(true);
    d.on_feedback_rtt(at(100), ms(140));
    d.on_estimate(at(150), 280_000);
    assert_eq!(
        d.estimate(),
        Some(2_500_000),
        "a fall during the hiccup is held"
    );
    d.on_feedback_rtt(at(200), ms(8));
    d.on_estimate(at(300), 300_000);
    assert_eq!(d.estimate(), Some(2_500_000), "held after it");
    // Hiccups every other round are never a sign: the hold runs out and str0m's estimator
    // starts again from the estimate before the fall.
    for t in (300..=5_300).step_by(100) {
        let rtt = if t % 200 == 0 { ms(140) } else { ms(8) };
        d.on_feedback_rtt(at(t), rtt);
        d.on_estimate(at(t), 300_000);
    }
    assert_eq!(d.estimate(), Some(2_500_000));
    assert_eq!(d.take_estimator_reset(at(5_300)), Some(2_500_000));
    assert!(
        !d.take_cleared(at(20_000)),
        "no sign of its own: nothing cleared"
    );
}

/// Feeds `d` a clean report (no loss, a 5 ms round trip, str0m's `current` estimate) every
/// 100 ms of `ms` after `t0`, and asserts that none restarts the estimator.
fn no_restart_in(d: &mut Downlink, t0: Instant, ms: std::ops::Range<u64>, current: Option<u64>) {
    for t in ms.step_by(100) {
        let at = t0 + Duration::from_millis(t);
        d.on_feedback(at, Some(0.0), Some(Duration::from_millis(5)), current);
        assert_eq!(d.take_estimator_reset(at), None, "restarted at {t} ms");
    }
}

#[test]
fn an_estimate_stuck_without_a_sign_of_congestion_restarts_the_estimator_from_it() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let ms = Duration::from_millis;
    // A patient at the lowest layer on a lossy link (scenario a), wanting the next layer.
    let at_floor = || {
        let mut d = Downlink::default();
        d.on_estimate(t0, 394_370);
        d.set_wanted(
            t0,
            Some(Wanted {
                now_bps: 150_000,
                next_bps: 487_000,
                trial_bps: None,
            }),
        );
        assert_eq!(d.poll(t0, 1, 1), Change::None);
        d
    };
    let mut d = at_floor();
    let stuck = Some(394_370);
    // 3 % loss for 10 s: a sign every round, so nothing is stuck.
    for t in (0..10_000).step_by(100) {
        d.on_feedback(at(t), Some(0.03), Some(ms(5)), stuck);
        assert_eq!(d.take_estimator_reset(at(t)), None, "lossy at {t} ms");
    }
    // Unshaped: no loss, no queue, and str0m's estimate does not move. The last loss was
    // reported at 9.9 s.
    no_restart_in(&mut d, t0, 10_000..14_900, stuck);
    d.on_feedback(at(14_900), Some(0.0), Some(ms(5)), stuck);
    assert_eq!(d.take_estimator_reset(at(14_900)), stuck, "stuck for 5 s");
    assert_eq!(d.take_estimator_reset(at(15_000)), None, "once");
    // Flat again: not before STUCK_RESTART_EVERY.
    no_restart_in(&mut d, t0, 15_000..29_900, stuck);
    d.on_feedback(at(29_900), Some(0.0), Some(ms(5)), stuck);
    assert_eq!(d.take_estimator_reset(at(29_900)), stuck);

    // An estimate that moves is not stuck, nor one with a queue, nor one that carries what
    // the subscriber wants.
    let mut moving = at_floor();
    for t in (0..8_000).step_by(100) {
        let current = 394_000 + (t / 100) % 2 * 1_000;
        moving.on_feedback(at(t), Some(0.0), Some(ms(5)), Some(current));
        assert_eq!(moving.take_estimator_reset(at(t)), None);
    }
    let mut queued = at_floor();
    queued.on_feedback(at(0), Some(0.0), Some(ms(5)), stuck);
    for t in (100..8_000).step_by(100) {
        queued.on_feedback(at(t), Some(0.0), Some(ms(150)), stuck);
        assert_eq!(queued.take_estimator_reset(at(t)), None);
    }
    let mut enough = hd_with_base_rtt(t0);
    enough.set_wanted(t0, d.wanted);
    assert_eq!(enough.poll(t0, 1, 1), Change::None);
    no_restart_in(&mut enough, t0, 0..8_000, Some(2_500_000));
}

#[test]
fn a_fall_that_still_carries_the_top_layers_is_not_held_nor_restarted() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    // A doctor on a clean link at the top layer (1.1 Mbit/s): str0m's estimate sinks from
    // 5.6 Mbit/s toward what it is sent.
    let mut d = Downlink::default();
    d.on_estimate(t0, 5_600_000);
    d.on_feedback_rtt(t0, Duration::from_millis(5));
    d.set_at_top(true);
    let top = Wanted {
        now_bps: 1_100_000,
        next_bps: 1_100_000,
        trial_bps: None,
    };
    d.set_wanted(t0, Some(top));
    assert_eq!(d.poll(t0, 1, 1), Change::None);
    d.on_estimate(at(100), 2_400_000);
    assert_eq!(
        d.estimate(),
        Some(2_400_000),
        "still carries 1.1 Mbit/s with headroom"
    );
    for t in (200..8_000).step_by(100) {
        d.on_feedback(
            at(t),
            Some(0.0),
            Some(Duration::from_millis(5)),
            Some(2_400_000),
        );
        d.on_estimate(at(t), 2_400_000);
        assert_eq!(d.take_estimator_reset(at(t)), None, "no restart at {t} ms");
    }
    // A fall below what the top layer needs is held as before.
    d.on_estimate(at(8_000), 600_000);
    assert_eq!(d.estimate(), Some(2_400_000), "held");
}

#[test]
fn a_link_whose_own_signs_stop_has_cleared_once() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let ms = Duration::from_millis;
    let mut d = Downlink::default();
    d.on_estimate(t0, 426_000);
    assert!(
        !d.take_cleared(at(10_000)),
        "never impaired: nothing cleared"
    );
    // 3 % loss for 10 s, then none.
    for t in (0..=10_000).step_by(100) {
        d.on_feedback(at(t), Some(0.03), Some(ms(5)), Some(426_000));
    }
    for t in (10_100..=20_000).step_by(100) {
        d.on_feedback(at(t), Some(0.0), Some(ms(5)), Some(426_000));
        let cleared = d.take_cleared(at(t));
        assert_eq!(
            cleared,
            t == 10_000 + CLEARED_AFTER.as_millis() as u64,
            "at {t} ms"
        );
    }

    // Signs only while a trial padded (its own): the link did not clear, it was never impaired.
    let mut p = Downlink::default();
    p.on_estimate(t0, 426_000);
    let trial = Wanted {
        now_bps: 150_000,
        next_bps: 500_000,
        trial_bps: Some(500_000),
    };
    p.set_wanted(at(1_000), Some(trial));
    p.on_feedback(at(1_500), Some(0.05), Some(ms(5)), Some(426_000));
    p.on_feedback(
        at(1_600),
        Some(0.0),
        Some(ms(5) + QUEUE_SIGN),
        Some(426_000),
    );
    assert!(!p.take_cleared(at(9_000)));
}

#[test]
fn video_paused_without_a_sign_restarts_the_estimator_however_its_estimate_wanders() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let ms = Duration::from_millis;
    // Audio alone: str0m's estimate wanders under 1.5× it, round by round (scenario c).
    let wandering = |t: u64| Some(43_000 + (t / 100) % 7 * 9_000);
    let mut d = Downlink::default();
    d.on_estimate(t0, 100_000);
    assert_eq!(d.poll(t0, 1, 1), Change::PauseVideo);
    // 5 % loss for 10 s: a sign every round.
    for t in (0..10_000).step_by(100) {
        d.on_feedback(at(t), Some(0.05), Some(ms(5)), wandering(t));
        assert_eq!(d.take_estimator_reset(at(t)), None, "lossy at {t} ms");
    }
    // Unshaped: no loss, no queue; the last sign was at 9.9 s.
    for t in (10_000..14_900).step_by(100) {
        d.on_feedback(at(t), Some(0.0), Some(ms(5)), wandering(t));
        assert_eq!(d.take_estimator_reset(at(t)), None, "at {t} ms");
    }
    d.on_feedback(at(14_900), Some(0.0), Some(ms(5)), wandering(14_900));
    assert_eq!(d.take_estimator_reset(at(14_900)), wandering(14_900));

    // Paused for less than STUCK_AFTER: not yet, however long the link was clean before.
    let mut p = Downlink::default();
    p.on_estimate(t0, 100_000);
    for t in (0..4_900).step_by(100) {
        p.on_feedback(at(t), Some(0.0), Some(ms(5)), wandering(t));
    }
    assert_eq!(p.poll(at(4_900), 1, 1), Change::PauseVideo);
    for t in (4_900..9_900).step_by(100) {
        p.on_feedback(at(t), Some(0.0), Some(ms(5)), wandering(t));
        assert_eq!(p.take_estimator_reset(at(t)), None, "paused at {t} ms");
    }
    p.on_feedback(at(9_900), Some(0.0), Some(ms(5)), wandering(9_900));
    assert_eq!(p.take_estimator_reset(at(9_900)), wandering(9_900));
}
