//! Downlink allocation, the IO side of [`crate::bandwidth`]: every housekeeping round, each
//! subscriber's [`Downlink`](crate::bandwidth::Downlink) decides whether its video pauses
//! (audio-only fallback, `track-paused` with reason `bandwidth`) or resumes (at a keyframe,
//! `track-resumed`), and str0m is told what to probe for. Once a second, each publisher's video
//! track is asked by REMB to stay under what its most constrained (unpaused) subscriber can
//! take: the single-layer fallback while publishers send one layer. The same cap goes to the
//! publisher's SDK as `bitrate-cap` (browsers with transport-wide congestion control ignore
//! REMB; the SDK lowers its encoder's bitrate and resolution itself).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use consulta_signaling::protocol::{PauseReason, ServerMessage, TrackKind};
use str0m::bwe::Bitrate;
use str0m::media::{MediaKind, Mid};

use super::RouterHost;
use crate::bandwidth::Change;
use crate::forwarder::PauseCause;
use crate::transport::{ConsumerState, Transport, Wire};
use crate::PeerId;

/// How often publishers' caps are (re)sent: REMB is plain RTCP and may be lost.
const REMB_INTERVAL: Duration = Duration::from_secs(1);
/// What lifts a cap: more than any camera sends.
const UNCAPPED_REMB_BPS: u64 = 50_000_000;
/// Rounds in which the lifting REMB is repeated.
const LIFT_ROUNDS: u8 = 3;

/// The active audio and video tracks `t` receives (muted ones and ones it cannot decode carry
/// nothing and do not count; video paused for bandwidth does: it is what resumes).
pub(super) fn receiving(t: &Transport) -> (usize, usize) {
    let mut audio = 0;
    let mut video = 0;
    for c in &t.consumers {
        if c.state != ConsumerState::Active
            || c.forwarder.is_paused_for(PauseCause::Mute)
            || c.forwarder.is_paused_for(PauseCause::Codec)
        {
            continue;
        }
        match c.kind {
            MediaKind::Audio => audio += 1,
            MediaKind::Video => video += 1,
        }
    }
    (audio, video)
}

/// Caps are sent in steps of this much (no message for every wobble of an estimate).
const CAP_STEP_BPS: u64 = 25_000;

/// Whether a publisher whose last cap was `sent` should be told `wanted` now: `Some(new cap)`.
/// Down at once (by 10 % or more), up only by 25 % or more, lifted when nobody needs it.
fn cap_to_send(sent: Option<u64>, wanted: Option<u64>) -> Option<Option<u64>> {
    let wanted = wanted.map(|c| (c / CAP_STEP_BPS).max(1) * CAP_STEP_BPS);
    match (sent, wanted) {
        (None, None) => None,
        (Some(_), None) => Some(None),
        (None, Some(w)) => Some(Some(w)),
        (Some(s), Some(w)) if w * 10 <= s * 9 || w * 4 >= s * 5 => Some(Some(w)),
        _ => None,
    }
}

impl<W: Wire> RouterHost<W> {
    pub(super) fn allocate(&mut self, now: Instant) {
        let mut changes: Vec<(PeerId, Change)> = Vec::new();
        let mut targets: Vec<(PeerId, (u64, u64))> = Vec::new();
        let mut resets: Vec<(PeerId, u64)> = Vec::new();
        for t in self.transports.values_mut().filter(|t| t.connected) {
            if let Some(init) = t.downlink.take_estimator_reset(now) {
                resets.push((t.id, init));
            }
            let (audio, video) = receiving(t);
            let change = t.downlink.poll(now, audio, video);
            // A track that starts while the subscriber is paused is paused too.
            let newly_active = t.downlink.is_video_paused()
                && t.consumers.iter().any(|c| {
                    c.kind == MediaKind::Video
                        && c.state == ConsumerState::Active
                        && !c.forwarder.is_paused_for(PauseCause::Bandwidth)
                });
            if change != Change::None || newly_active {
                changes.push((t.id, change));
            }
            let target = t.downlink.bwe_target(now, audio, video);
            if target != t.bwe_target {
                targets.push((t.id, target));
            }
        }
        for (peer, change) in changes {
            self.apply(peer, change);
        }
        // What str0m's estimator learned is set aside: of a dead path, a fall with no sign of
        // congestion, or a stuck estimate (see `Downlink::take_estimator_reset`).
        for (peer, init) in resets {
            tracing::debug!(peer, init, "downlink estimator restarted");
            self.drive(peer, |t, io| {
                t.rtc.bwe().reset(Bitrate::bps(init));
                t.drain(io)
            });
        }
        for (peer, (min, desired)) in targets {
            self.drive(peer, |t, io| {
                t.bwe_target = (min, desired);
                t.rtc
                    .bwe()
                    .set_bitrate(Bitrate::bps(min), Bitrate::bps(desired));
                t.drain(io)
            });
        }
        if self.next_remb.is_none_or(|at| now >= at) {
            self.next_remb = Some(now + REMB_INTERVAL);
            self.send_caps();
            // Once a second: each video subscriber's estimate, and who is paused for it.
            for t in self.transports.values().filter(|t| t.connected) {
                if receiving(t).1 == 0 {
                    continue;
                }
                if let Some(bps) = t.downlink.estimate() {
                    self.counters
                        .bandwidth_estimate
                        .observe(&crate::stats::BANDWIDTH_ESTIMATE_BUCKETS, bps as f64);
                }
                if t.downlink.is_video_paused() {
                    self.counters.bandwidth_paused_seconds += REMB_INTERVAL.as_secs();
                }
            }
        }
    }

    /// Pauses or resumes `sub`'s video for bandwidth, telling it which tracks.
    fn apply(&mut self, sub: PeerId, change: Change) {
        let Some(t) = self.transports.get_mut(&sub) else {
            return;
        };
        let pause = t.downlink.is_video_paused();
        let mut told: Vec<(String, bool)> = Vec::new();
        let mut keyframes: Vec<(PeerId, Mid)> = Vec::new();
        for c in t
            .consumers
            .iter_mut()
            .filter(|c| c.kind == MediaKind::Video && c.state == ConsumerState::Active)
        {
            if pause && !c.forwarder.is_paused_for(PauseCause::Bandwidth) {
                c.forwarder.pause(PauseCause::Bandwidth);
                told.push((c.source_identity.clone(), true));
                if let Some(mid) = c.mid {
                    super::forward::forget_sent(&mut t.rtc, mid, self.limits.nack_history);
                }
            } else if !pause && c.forwarder.is_paused_for(PauseCause::Bandwidth) {
                if c.forwarder.resume(PauseCause::Bandwidth) {
                    keyframes.push((c.source, c.source_mid));
                }
                told.push((c.source_identity.clone(), false));
            }
        }
        match change {
            Change::PauseVideo => {
                self.counters.bandwidth_pauses += 1;
                tracing::info!(worker = self.index, peer = sub, estimate = ?t.downlink.estimate(), "video paused: downlink too weak");
            }
            Change::ResumeVideo => {
                self.counters.bandwidth_resumes += 1;
                tracing::info!(worker = self.index, peer = sub, estimate = ?t.downlink.estimate(), "video resumed: downlink recovered");
            }
            Change::None => {}
        }
        for (identity, paused) in told {
            let msg = video_pause_notice(identity, PauseReason::Bandwidth, paused);
            t.emit(msg, &mut self.outbox);
        }
        for (source, mid) in keyframes {
            self.request_keyframe(source, mid);
        }
    }

    /// Asks each publisher's video track, by REMB, to stay under what its most constrained
    /// unpaused subscriber can take; lifts caps no longer needed.
    fn send_caps(&mut self) {
        let mut caps: HashMap<(PeerId, Mid), u64> = HashMap::new();
        for t in self.transports.values().filter(|t| t.connected) {
            let (audio, video) = receiving(t);
            let Some(cap) = t.downlink.publisher_cap(audio, video) else {
                continue;
            };
            for c in t.consumers.iter().filter(|c| {
                c.kind == MediaKind::Video
                    && c.state == ConsumerState::Active
                    && !c.forwarder.is_paused()
            }) {
                let e = caps.entry((c.source, c.source_mid)).or_insert(cap);
                *e = (*e).min(cap);
            }
        }
        let mut remb: Vec<(PeerId, Mid, u64)> = Vec::new();
        for t in self.transports.values_mut() {
            // A simulcast track is never capped: its constrained subscribers get a lower layer.
            for p in t.producers.iter().filter(|p| p.layers.is_simulcast()) {
                caps.remove(&(t.id, p.mid));
            }
            let cap = t
                .producers
                .iter()
                .filter_map(|p| caps.get(&(t.id, p.mid)))
                .min()
                .copied();
            if let Some(max_bitrate) = cap_to_send(t.cap_sent, cap) {
                t.cap_sent = max_bitrate;
                self.counters.bitrate_caps_sent += 1;
                t.emit(
                    ServerMessage::BitrateCap {
                        kind: TrackKind::Video,
                        max_bitrate,
                    },
                    &mut self.outbox,
                );
            }
            for p in t
                .producers
                .iter_mut()
                .filter(|p| p.kind == MediaKind::Video)
            {
                match caps.get(&(t.id, p.mid)) {
                    Some(&cap) => {
                        p.remb.cap = Some(cap);
                        p.remb.lifting = 0;
                        remb.push((t.id, p.mid, cap));
                    }
                    None if p.remb.cap.take().is_some() || p.remb.lifting > 0 => {
                        p.remb.lifting = if p.remb.lifting == 0 {
                            LIFT_ROUNDS - 1
                        } else {
                            p.remb.lifting - 1
                        };
                        remb.push((t.id, p.mid, UNCAPPED_REMB_BPS));
                    }
                    None => {}
                }
            }
        }
        for (publisher, mid, bps) in remb {
            self.counters.remb_sent += 1;
            self.drive(publisher, |t, io| {
                if let Some(rx) = t.rtc.direct_api().stream_rx_by_mid(mid, None) {
                    rx.request_remb(Bitrate::bps(bps));
                }
                t.drain(io)
            });
        }
    }
}

/// The notice that one of a subscriber's video tracks is paused (`paused`) or flows again, for
/// `reason`: what the allocation, the codec choice and a resumed session tell the subscriber.
pub(super) fn video_pause_notice(
    identity: String,
    reason: PauseReason,
    paused: bool,
) -> ServerMessage {
    let kind = TrackKind::Video;
    if paused {
        ServerMessage::TrackPaused {
            identity,
            kind,
            reason,
        }
    } else {
        ServerMessage::TrackResumed {
            identity,
            kind,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cap_to_send;

    #[test]
    fn caps_go_down_at_once_and_up_only_by_a_step_worth_it() {
        assert_eq!(cap_to_send(None, None), None);
        assert_eq!(cap_to_send(None, Some(437_123)), Some(Some(425_000)));
        assert_eq!(cap_to_send(Some(425_000), Some(430_000)), None, "a wobble");
        assert_eq!(
            cap_to_send(Some(425_000), Some(380_000)),
            Some(Some(375_000))
        );
        assert_eq!(
            cap_to_send(Some(425_000), Some(500_000)),
            None,
            "up by less than 25 %"
        );
        assert_eq!(
            cap_to_send(Some(400_000), Some(520_000)),
            Some(Some(500_000))
        );
        assert_eq!(cap_to_send(Some(400_000), None), Some(None), "lifted");
        assert_eq!(cap_to_send(None, Some(3)), Some(Some(25_000)));
    }
}
