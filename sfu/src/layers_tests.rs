//! Unit tests of the layer selector and the changeover (synthetic inputs, no sockets).

use super::*;

fn three(bps: [u64; 3]) -> Layers {
    Layers {
        count: 3,
        bps,
        active: [true; 3],
    }
}

const RATES: [u64; 3] = [150_000, 500_000, 1_700_000];

#[test]
fn starts_at_the_best_layer_that_fits_and_the_top_without_an_estimate() {
    let t0 = Instant::now();
    let mut s = Selector::default();
    let c = s.poll(t0, Some(700_000), &three(RATES)).unwrap();
    assert_eq!((c.layer, c.reason), (1, Reason::Start));
    // The start is a choice with headroom too: 520 kbit/s carries layer 1 but not 20 % over.
    let mut s = Selector::default();
    assert_eq!(s.poll(t0, Some(520_000), &three(RATES)).unwrap().layer, 0);
    let mut s = Selector::default();
    assert_eq!(s.poll(t0, None, &three(RATES)).unwrap().layer, 2);
    // Nothing fits: the lowest (the allocator pauses the video if even that is too much).
    let mut s = Selector::default();
    assert_eq!(s.poll(t0, Some(50_000), &three(RATES)).unwrap().layer, 0);
}

#[test]
fn goes_down_at_once_and_up_only_after_headroom_held() {
    let t0 = Instant::now();
    let mut s = Selector::default();
    s.poll(t0, Some(3_000_000), &three(RATES));
    assert_eq!(s.target(), Some(2));
    // The budget falls under the top layer: down at once, straight past a layer that fits
    // without headroom.
    let c = s
        .poll(
            t0 + Duration::from_millis(100),
            Some(550_000),
            &three(RATES),
        )
        .unwrap();
    assert_eq!((c.layer, c.up, c.reason), (0, false, Reason::Bandwidth));
    // Layer 1 fits, but without 20 % headroom: stay.
    let t = t0 + Duration::from_secs(1);
    assert_eq!(s.poll(t, Some(550_000), &three(RATES)), None);
    assert_eq!(s.poll(t + UP_AFTER * 2, Some(550_000), &three(RATES)), None);
    // With headroom: only after UP_AFTER of it.
    let t = t0 + Duration::from_secs(10);
    assert_eq!(s.poll(t, Some(700_000), &three(RATES)), None);
    assert_eq!(s.poll(t + UP_AFTER / 2, Some(700_000), &three(RATES)), None);
    let c = s.poll(t + UP_AFTER, Some(700_000), &three(RATES)).unwrap();
    assert_eq!((c.layer, c.up, c.reason), (1, true, Reason::Headroom));
}

#[test]
fn a_layer_that_still_fits_is_kept_and_up_goes_one_layer_at_a_time() {
    let t0 = Instant::now();
    let mut s = Selector::default();
    s.poll(t0, Some(700_000), &three(RATES));
    assert_eq!(s.target(), Some(1));
    // 510 kbit/s still carries layer 1 (not with headroom): it stays.
    assert_eq!(s.poll(t0, Some(510_000), &three(RATES)), None);
    // A probe that overshoots: 10 Mbit/s for long enough moves one layer up, then one more.
    let mut s = Selector::default();
    s.poll(t0, Some(200_000), &three(RATES));
    assert_eq!(s.target(), Some(0));
    assert_eq!(s.poll(t0, Some(10_000_000), &three(RATES)), None);
    let c = s
        .poll(t0 + UP_AFTER, Some(10_000_000), &three(RATES))
        .unwrap();
    assert_eq!((c.layer, c.up), (1, true));
    assert_eq!(s.poll(t0 + UP_AFTER, Some(10_000_000), &three(RATES)), None);
    let c = s
        .poll(t0 + UP_AFTER * 2, Some(10_000_000), &three(RATES))
        .unwrap();
    assert_eq!(c.layer, 2);
}

#[test]
fn a_dip_ends_the_wait_for_going_up_and_the_next_waits_a_back_off() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let mut s = Selector::default();
    s.poll(t0, Some(200_000), &three(RATES));
    assert_eq!(s.target(), Some(0));
    assert_eq!(s.poll(t0, Some(700_000), &three(RATES)), None);
    assert_eq!(s.waiting_up(), Some(1));
    // A dip in the middle of the wait: the trial failed.
    assert_eq!(s.poll(at(2_000), Some(300_000), &three(RATES)), None);
    assert_eq!(s.waiting_up(), None);
    // Headroom again at once: no new wait (no padding) before the back-off.
    assert_eq!(s.poll(at(2_500), Some(700_000), &three(RATES)), None);
    assert_eq!(s.waiting_up(), None);
    assert_eq!(s.poll(at(5_900), Some(700_000), &three(RATES)), None);
    assert_eq!(s.waiting_up(), None);
    // After it, the usual wait.
    assert_eq!(s.poll(at(6_000), Some(700_000), &three(RATES)), None);
    assert_eq!(s.waiting_up(), Some(1));
    assert_eq!(s.poll(at(8_900), Some(700_000), &three(RATES)), None);
    let c = s.poll(at(9_000), Some(700_000), &three(RATES)).unwrap();
    assert_eq!((c.layer, c.up, c.reason), (1, true, Reason::Headroom));
}

#[test]
fn failed_trials_in_a_row_back_off_longer_up_to_a_maximum_and_going_up_resets_it() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let mut s = Selector::default();
    s.poll(t0, Some(200_000), &three(RATES));
    // Each trial: a wait starts when it may, then the estimate falls back 1 s into it.
    let fail_from = |s: &mut Selector, ms: u64| {
        assert_eq!(s.poll(at(ms), Some(700_000), &three(RATES)), None);
        assert_eq!(s.waiting_up(), Some(1), "a wait starts at {ms} ms");
        assert_eq!(s.poll(at(ms + 1_000), Some(300_000), &three(RATES)), None);
    };
    fail_from(&mut s, 0); // back-off 4 s: the next from 5 s
    assert_eq!(s.poll(at(4_900), Some(700_000), &three(RATES)), None);
    assert_eq!(s.waiting_up(), None);
    fail_from(&mut s, 5_000); // 8 s: from 14 s
    assert_eq!(s.poll(at(13_900), Some(700_000), &three(RATES)), None);
    assert_eq!(s.waiting_up(), None);
    fail_from(&mut s, 14_000); // 16 s, held to the maximum of 10 s: from 25 s
    assert_eq!(s.poll(at(24_900), Some(700_000), &three(RATES)), None);
    assert_eq!(s.waiting_up(), None);
    fail_from(&mut s, 25_000); // still 10 s: from 36 s
    assert_eq!(s.poll(at(35_900), Some(700_000), &three(RATES)), None);
    assert_eq!(s.waiting_up(), None);
    // This one holds: up, and the back-off starts over.
    assert_eq!(s.poll(at(36_000), Some(700_000), &three(RATES)), None);
    let c = s.poll(at(39_000), Some(700_000), &three(RATES)).unwrap();
    assert_eq!((c.layer, c.up), (1, true));
    assert_eq!(s.poll(at(39_100), Some(2_500_000), &three(RATES)), None);
    assert_eq!(s.waiting_up(), Some(2));
    assert_eq!(s.poll(at(39_500), Some(700_000), &three(RATES)), None);
    assert_eq!(s.poll(at(43_400), Some(2_500_000), &three(RATES)), None);
    assert_eq!(
        s.waiting_up(),
        None,
        "4 s after this first failure, not yet"
    );
    assert_eq!(s.poll(at(43_500), Some(2_500_000), &three(RATES)), None);
    assert_eq!(s.waiting_up(), Some(2));
}

#[test]
fn a_layer_that_stops_flowing_is_left_and_the_preferred_maximum_holds() {
    let t0 = Instant::now();
    let mut s = Selector::default();
    s.poll(t0, None, &three(RATES));
    let mut gone = three(RATES);
    gone.active[2] = false;
    let c = s.poll(t0, None, &gone).unwrap();
    assert_eq!((c.layer, c.reason), (1, Reason::LayerGone));
    s.set_max(0);
    let c = s.poll(t0, None, &three(RATES)).unwrap();
    assert_eq!((c.layer, c.reason), (0, Reason::Preference));
    // One layer only (no simulcast): always 0.
    let one = Layers {
        count: 1,
        bps: [2_000_000, 0, 0],
        active: [true, false, false],
    };
    let mut s = Selector::default();
    assert_eq!(s.poll(t0, Some(100_000), &one).unwrap().layer, 0);
    assert_eq!(s.poll(t0 + UP_AFTER * 2, Some(100_000), &one), None);
}

/// A VP8 payload descriptor with a 15-bit picture id and TL0PICIDX, then `body`.
fn vp8(pid: u16, tl0: u8, body: u8) -> Vec<u8> {
    vec![0x90, 0xC0, 0x80 | (pid >> 8) as u8, pid as u8, tl0, body]
}

fn pid_of(p: &[u8]) -> u16 {
    (u16::from(p[2] & 0x7F) << 8) | u16::from(p[3])
}

#[test]
fn switches_at_the_target_keyframe_with_continuous_timestamps_and_picture_ids() {
    let t0 = Instant::now();
    let mut sw = Switch::default();
    sw.set_target(2);
    // Packets of other layers, and the target's non-keyframes, wait.
    assert_eq!(sw.admit(0, true), Admit::Skip);
    assert_eq!(sw.admit(2, false), Admit::Skip);
    assert_eq!(sw.admit(2, true), Admit::Forward);
    assert_eq!(sw.timestamp(1_000, t0), 1_000);
    assert!(!sw.rewrites(), "the first layer is sent as it is");
    sw.note_vp8(&vp8(500, 7, 1));
    // 33 ms later the next frame of layer 2.
    let t1 = t0 + Duration::from_millis(33);
    assert_eq!(sw.admit(2, false), Admit::Forward);
    assert_eq!(sw.timestamp(3_970, t1), 3_970);
    sw.note_vp8(&vp8(501, 8, 2));
    // Down to layer 0: layer 2 flows until layer 0's keyframe.
    sw.set_target(0);
    assert!(sw.is_switching());
    assert_eq!(sw.admit(0, false), Admit::Skip);
    assert_eq!(sw.admit(2, false), Admit::Forward);
    assert_eq!(sw.admit(0, true), Admit::Switched);
    assert!(!sw.is_switching());
    assert!(sw.rewrites());
    // Layer 0 has its own timestamp base and picture ids; they continue from layer 2's.
    let t2 = t1 + Duration::from_millis(40);
    let ts = sw.timestamp(4_000_000_000, t2);
    assert_eq!(ts, 3_970 + 40 * 90);
    let mut p = vp8(20_000, 200, 3);
    sw.rewrite_vp8(&mut p, true);
    assert_eq!(pid_of(&p), 502);
    assert_eq!(p[4], 9);
    assert_eq!(p[5], 3, "the payload itself is untouched");
    // The frame after keeps the same offsets, and layer 2 is no longer sent.
    assert_eq!(sw.admit(2, true), Admit::Skip);
    assert_eq!(sw.admit(0, false), Admit::Forward);
    assert_eq!(sw.timestamp(4_000_002_970, t2), 3_970 + 40 * 90 + 2_970);
    let mut p = vp8(20_001, 201, 4);
    sw.rewrite_vp8(&mut p, false);
    assert_eq!((pid_of(&p), p[4]), (503, 10));
    // Picture ids wrap at 15 bits.
    let mut p = vp8(0x7FFF, 0, 5);
    sw.rewrite_vp8(&mut p, false);
    assert!(pid_of(&p) <= 0x7FFF);
}

#[test]
fn a_late_packet_does_not_pull_the_clock_back_and_short_descriptors_are_left_alone() {
    let t0 = Instant::now();
    let mut sw = Switch::default();
    sw.set_target(0);
    sw.admit(0, true);
    sw.timestamp(90_000, t0);
    sw.timestamp(87_000, t0 + Duration::from_millis(5)); // a late packet of the frame before
    sw.set_target(1);
    sw.admit(1, true);
    let out = sw.timestamp(5, t0 + Duration::from_millis(10));
    assert_eq!(out, 90_000 + 900);
    // Descriptors cut short, or without picture id: nothing panics or changes.
    for p in [&[0x90u8][..], &[0x90, 0x80], &[0x10, 0xAA], &[]] {
        let mut q = p.to_vec();
        sw.rewrite_vp8(&mut q, true);
        assert_eq!(q, p);
    }
}

#[test]
fn a_layer_far_over_the_budget_is_cut_and_one_just_over_flows_until_the_keyframe() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    // 1.7 Mbit/s against 800 kbit/s (a step down of the link, the estimate still falling): cut,
    // and straight to the lowest layer, though layer 1 fits the budget of the moment.
    let mut s = Selector::default();
    s.poll(t0, Some(3_000_000), &three(RATES));
    let c = s.poll(at(100), Some(800_000), &three(RATES)).unwrap();
    assert_eq!((c.layer, c.reason, c.cut), (0, Reason::Bandwidth, true));
    // 1.7 Mbit/s against 1.3 Mbit/s: over, but not by half: no cut.
    let mut s = Selector::default();
    s.poll(t0, Some(3_000_000), &three(RATES));
    let c = s.poll(at(100), Some(1_300_000), &three(RATES)).unwrap();
    assert_eq!((c.layer, c.reason, c.cut), (1, Reason::Bandwidth, false));
    // A second fall before layer 1's keyframe came: layer 2 still fills the link, and is far
    // over (1.7 Mbit/s against 450 kbit/s, though layer 1 alone would not be).
    s.set_forwarded(Some(2));
    let c = s.poll(at(150), Some(450_000), &three(RATES)).unwrap();
    assert_eq!((c.layer, c.reason, c.cut), (0, Reason::Bandwidth, true));
    let mut s = Selector::default();
    s.poll(t0, Some(3_000_000), &three(RATES));
    s.poll(at(100), Some(1_300_000), &three(RATES));
    // Other reasons never cut.
    let mut gone = three(RATES);
    gone.active[1] = false;
    assert!(!s.poll(at(200), Some(1_300_000), &gone).unwrap().cut);
}

#[test]
fn a_cut_layer_stops_at_once_and_the_target_keyframe_ends_the_cut() {
    let t0 = Instant::now();
    let mut sw = Switch::default();
    // Nothing flows yet: nothing to cut (the first keyframe starts the layer as usual).
    assert!(!sw.cut());
    sw.set_target(2);
    assert_eq!(sw.admit(2, true), Admit::Forward);
    sw.timestamp(1_000, t0);
    sw.set_target(0);
    // It says when it cuts (the router then drops the stream's retransmissions), once.
    assert!(sw.cut());
    assert!(!sw.cut());
    assert!(sw.is_switching());
    // Layer 2 no longer flows, not even its keyframes; layer 0 waits for its keyframe.
    assert_eq!(sw.admit(2, false), Admit::Skip);
    assert_eq!(sw.admit(2, true), Admit::Skip);
    assert_eq!(sw.admit(0, false), Admit::Skip);
    assert_eq!(sw.admit(0, true), Admit::Switched);
    assert!(!sw.is_switching());
    assert_eq!(sw.admit(0, false), Admit::Forward);
    let t1 = t0 + Duration::from_millis(300);
    assert_eq!(sw.timestamp(77, t1), 1_000 + 300 * 90);
    // Going up, the layer that flows fits: it is not cut, and flows until the target's keyframe.
    sw.set_target(1);
    assert!(!sw.cut());
    assert_eq!(sw.admit(0, false), Admit::Forward);
    assert_eq!(sw.admit(1, true), Admit::Switched);
    // Cut, then the target comes back to the current layer: still only from a keyframe, as a
    // change (its skipped packets are not missed by the subscriber).
    sw.set_target(0);
    sw.cut();
    sw.set_target(1);
    assert!(sw.is_switching());
    assert_eq!(sw.admit(1, false), Admit::Skip);
    assert_eq!(sw.admit(1, true), Admit::Switched);
    assert!(!sw.is_switching());
}

#[test]
fn rates_are_the_target_and_the_next_layer_up() {
    let t0 = Instant::now();
    let mut s = Selector::default();
    assert_eq!(s.rates(&three(RATES)), None);
    s.poll(t0, Some(200_000), &three(RATES));
    assert_eq!(s.rates(&three(RATES)), Some((150_000, 500_000)));
    assert_eq!(s.waiting_up(), None);
    // Headroom for layer 1: it is waited for.
    s.poll(t0, Some(700_000), &three(RATES));
    assert_eq!(s.waiting_up(), Some(1));
    // A layer that does not flow is stepped over; at the top, the next is the target itself.
    let mut gone = three(RATES);
    gone.active[1] = false;
    assert_eq!(s.rates(&gone), Some((150_000, 1_700_000)));
    let mut s = Selector::default();
    s.poll(t0, None, &three(RATES));
    assert_eq!(s.rates(&three(RATES)), Some((1_700_000, 1_700_000)));
}

#[test]
fn congestion_takes_the_lowest_layer_at_once_with_a_cut() {
    let t0 = Instant::now();
    let mut s = Selector::default();
    s.poll(t0, Some(3_000_000), &three(RATES));
    let c = s.on_congestion(&three(RATES)).unwrap();
    assert_eq!(
        (c.layer, c.up, c.reason, c.cut),
        (0, false, Reason::Bandwidth, true)
    );
    assert_eq!(s.target(), Some(0));
    // Already there: nothing (once is enough, however long the congestion lasts).
    assert_eq!(s.on_congestion(&three(RATES)), None);
}

#[test]
fn a_consumer_congested_before_its_first_choice_starts_at_the_lowest_layer() {
    let t0 = Instant::now();
    let mut s = Selector::default();
    let c = s.on_congestion(&three(RATES)).unwrap();
    assert_eq!(
        (c.layer, c.up, c.reason, c.cut),
        (0, false, Reason::Start, true)
    );
    assert_eq!(s.target(), Some(0));
    assert_eq!(s.on_congestion(&three(RATES)), None);
    // The lowest that flows; none flowing yet: no choice.
    let mut s = Selector::default();
    let mut low_gone = three(RATES);
    low_gone.active[0] = false;
    assert_eq!(s.on_congestion(&low_gone).unwrap().layer, 1);
    let mut s = Selector::default();
    let mut none = three(RATES);
    none.active = [false; 3];
    assert_eq!(s.on_congestion(&none), None);
    assert_eq!(s.target(), None);
    // After a congested start, up only with headroom held, as after any fall.
    let mut s = Selector::default();
    s.on_congestion(&three(RATES));
    assert_eq!(s.poll(t0, Some(3_000_000), &three(RATES)), None);
    assert_eq!(s.waiting_up(), Some(1));
}

#[test]
fn a_restart_takes_the_first_keyframe_of_any_layer_up_to_the_target_then_the_target() {
    let t0 = Instant::now();
    let mut sw = Switch::default();
    // Before any layer flowed there is nothing to restart.
    sw.restart();
    assert!(!sw.is_restarting());
    sw.set_target(1);
    assert_eq!(sw.admit(1, true), Admit::Forward);
    assert_eq!(sw.timestamp(9_000, t0), 9_000);
    sw.note_vp8(&vp8(100, 4, 1));
    // The path was cut: the target (layer 1) is slow to send its keyframe, and layer 2's is
    // above the target.
    sw.restart();
    assert!(sw.is_restarting());
    assert_eq!(
        sw.admit(1, false),
        Admit::Forward,
        "the forwarder drops it: no keyframe"
    );
    assert_eq!(sw.admit(2, true), Admit::Skip);
    // Layer 0's keyframe restores the picture, numbered on from layer 1's.
    let t1 = t0 + Duration::from_millis(2_000);
    assert_eq!(sw.admit(0, true), Admit::Switched);
    assert!(!sw.is_restarting());
    assert_eq!(sw.current(), Some(0));
    assert!(sw.is_switching(), "the target's keyframe is still awaited");
    assert_eq!(sw.timestamp(50, t1), 9_000 + 2_000 * 90);
    let mut p = vp8(7_000, 90, 2);
    sw.rewrite_vp8(&mut p, true);
    assert_eq!((pid_of(&p), p[4]), (101, 5));
    // Then the target's keyframe, as any change up.
    assert_eq!(sw.admit(1, false), Admit::Skip);
    assert_eq!(sw.admit(0, false), Admit::Forward);
    assert_eq!(sw.admit(1, true), Admit::Switched);
    assert!(!sw.is_switching());
    // A restart whose first keyframe is the current layer's: no change of layer.
    sw.restart();
    assert_eq!(sw.admit(1, true), Admit::Forward);
    assert!(!sw.is_restarting());
    assert_eq!(sw.admit(0, true), Admit::Skip);
}

#[test]
fn spatial_layers_go_down_at_the_next_picture_and_up_at_a_keyframe_picture() {
    let mut s = Switch::default();
    s.set_target(1);
    // Nothing before the first keyframe picture.
    assert_eq!(s.admit_spatial(0, true, false), Admit::Skip);
    assert!(s.is_switching());
    // A keyframe picture: layers 0 and 1 go, 2 is left out; layer 1's frame ends the picture.
    assert_eq!(s.admit_spatial(0, true, true), Admit::Forward);
    assert_eq!(s.admit_spatial(1, false, false), Admit::Forward);
    assert!(s.ends_picture(1, true));
    assert!(!s.ends_picture(0, true));
    assert_eq!(s.admit_spatial(2, false, false), Admit::Skip);
    assert!(!s.is_switching());
    // Down: the rest of this picture keeps its layers, the next has layer 0 alone.
    s.set_target(0);
    assert!(!s.is_switching(), "going down asks for no keyframe");
    assert_eq!(s.admit_spatial(1, false, false), Admit::Forward);
    assert_eq!(s.admit_spatial(0, true, false), Admit::Forward);
    assert_eq!(s.current(), Some(0));
    assert_eq!(s.admit_spatial(1, false, false), Admit::Skip);
    assert!(s.ends_picture(0, true));
    // Up: only at a keyframe picture, asked for meanwhile.
    s.set_target(2);
    assert!(s.is_switching());
    assert_eq!(s.admit_spatial(0, true, false), Admit::Forward);
    assert_eq!(s.admit_spatial(2, false, false), Admit::Skip);
    assert_eq!(s.admit_spatial(0, true, true), Admit::Forward);
    assert_eq!(s.admit_spatial(1, false, false), Admit::Forward);
    assert_eq!(s.admit_spatial(2, false, false), Admit::Forward);
    assert!(!s.is_switching());
    // A cut (a congested downlink): nothing until the next keyframe picture, asked for.
    s.set_target(0);
    assert!(s.cut());
    assert!(!s.cut(), "cut once");
    assert!(s.is_switching());
    assert_eq!(s.admit_spatial(0, true, false), Admit::Skip);
    assert_eq!(s.admit_spatial(2, false, false), Admit::Skip);
    assert_eq!(s.admit_spatial(0, true, true), Admit::Forward);
    assert_eq!(s.admit_spatial(1, false, false), Admit::Skip);
    assert_eq!(s.current(), Some(0));
    assert!(!s.is_switching());
    // Nothing to cut at or below the target.
    assert!(!s.cut());
    // A restart (the path was cut) ends at the next keyframe picture.
    s.set_target(2);
    assert_eq!(s.admit_spatial(0, true, true), Admit::Forward);
    s.restart();
    assert!(s.is_restarting());
    assert_eq!(s.admit_spatial(0, true, true), Admit::Forward);
    assert!(!s.is_restarting());
}

#[test]
fn a_cleared_link_forgives_the_back_off_of_failed_trials() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let mut s = Selector::default();
    s.poll(t0, Some(200_000), &three(RATES));
    for from in [0, 5_000, 14_000] {
        assert_eq!(s.poll(at(from), Some(700_000), &three(RATES)), None);
        assert_eq!(s.poll(at(from + 1_000), Some(300_000), &three(RATES)), None);
    }
    // Three failures: held back until 25 s.
    assert_eq!(s.poll(at(16_000), Some(700_000), &three(RATES)), None);
    assert_eq!(s.waiting_up(), None);
    s.forgive();
    assert_eq!(s.poll(at(16_100), Some(700_000), &three(RATES)), None);
    assert_eq!(s.waiting_up(), Some(1));
    let c = s.poll(at(19_100), Some(700_000), &three(RATES)).unwrap();
    assert_eq!((c.layer, c.up), (1, true));
}
