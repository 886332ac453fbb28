//! Target `layers`: the simulcast changeover (`consulta_sfu::layers::Switch`) over a program of
//! target changes, cuts and packets (fuzzed layer, keyframe flag, RTP timestamp, arrival step, VP8
//! payload), and RED's primary-block parser (`consulta_sfu::red::primary_offset`) over each
//! payload. Checked after every step:
//! - a packet is forwarded only on the layer being forwarded, and a change happens only at a
//!   keyframe of the target layer; after a cut, nothing is forwarded until that keyframe;
//! - rewriting a VP8 descriptor never changes the payload's length nor anything past it;
//! - within one layer, outgoing timestamps keep the spacing of the incoming ones;
//! - RED's primary block starts within the payload.

use std::time::{Duration, Instant};

use consulta_sfu::layers::{Admit, Switch};

use crate::Input;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mut sw = Switch::default();
    let mut now = Instant::now();
    // (incoming, outgoing) timestamp of the last packet forwarded, and its layer.
    let mut last: Option<(u8, u32, u32)> = None;
    // A cut of a flowing layer is in force.
    let mut cut = false;
    while !input.is_empty() {
        let op = input.u8();
        if op % 4 == 0 {
            sw.set_target(input.u8() % 3);
            continue;
        }
        if op % 16 == 1 {
            sw.cut();
            cut |= sw.current().is_some_and(|c| c > sw.target());
            assert_eq!(sw.is_switching(), cut || sw.current() != Some(sw.target()));
            continue;
        }
        let layer = input.u8() % 3;
        let keyframe = input.bool();
        let ts = input.u32();
        now += Duration::from_millis(u64::from(input.u8()));
        let payload = input.short();
        if let Some(off) = consulta_sfu::red::primary_offset(payload) {
            assert!(off <= payload.len());
        }
        let before = sw.current();
        let target = sw.target();
        let admit = sw.admit(layer, keyframe);
        match admit {
            Admit::Skip => {
                assert!(cut || before != Some(layer), "a packet of the forwarded layer skipped");
                continue;
            }
            Admit::Switched => {
                assert!(keyframe && layer == target, "a change not at the target's keyframe");
                assert!(before.is_some() && (cut || before != Some(layer)));
                cut = false;
            }
            Admit::Forward => {
                assert!(!cut, "forwarded during a cut");
                assert!(before == Some(layer) || (before.is_none() && keyframe && layer == target));
            }
        }
        assert_eq!(sw.current(), Some(layer));
        let switched = admit == Admit::Switched;
        let out = sw.timestamp(ts, now);
        if let Some((l, in_ts, out_ts)) = last {
            if l == layer && !switched {
                assert_eq!(out.wrapping_sub(out_ts), ts.wrapping_sub(in_ts), "timestamp spacing");
            }
        }
        last = Some((layer, ts, out));
        let mut p = payload.to_vec();
        if sw.rewrites() {
            sw.rewrite_vp8(&mut p, switched);
            // The descriptor is at most 6 bytes: what follows is never touched.
            assert_eq!(p.len(), payload.len());
            if p.len() > 6 {
                assert_eq!(p[6..], payload[6..]);
            }
        } else {
            sw.note_vp8(&p);
        }
    }
}
