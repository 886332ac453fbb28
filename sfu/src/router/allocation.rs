//! Downlink allocation, the IO side of [`crate::bandwidth`]: every housekeeping round, each
//! subscriber's [`Downlink`](crate::bandwidth::Downlink) decides whether its video pauses
//! (audio-only fallback, `track-paused` with reason `bandwidth`) or resumes (at a keyframe,
//! `track-resumed`), and str0m is told what to probe for. Once a second, each publisher's video
//! track is asked by REMB to stay under what its most constrained (unpaused) subscriber can
//! take: the single-layer fallback while publishers send one layer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use consulta_signaling::protocol::{PauseReason, ServerMessage, TrackKind};
use str0m::bwe::Bitrate;
use str0m::media::{MediaKind, Mid};

use super::RouterHost;
use crate::bandwidth::Change;
use crate::forwarder::PauseCause;
use crate::transport::{ConsumerState, Transport, Wire, BWE_INITIAL_BPS};
use crate::PeerId;

/// How often publishers' caps are (re)sent: REMB is plain RTCP and may be lost.
const REMB_INTERVAL: Duration = Duration::from_secs(1);
/// What lifts a cap: more than any camera sends.
const UNCAPPED_REMB_BPS: u64 = 50_000_000;
/// Rounds in which the lifting REMB is repeated.
const LIFT_ROUNDS: u8 = 3;

/// The active audio and video tracks `t` receives (muted ones carry nothing and do not count;
/// video paused for bandwidth does: it is what resumes).
fn receiving(t: &Transport) -> (usize, usize) {
    let mut audio = 0;
    let mut video = 0;
    for c in &t.consumers {
        if c.state != ConsumerState::Active || c.forwarder.is_paused_for(PauseCause::Mute) {
            continue;
        }
        match c.kind {
            MediaKind::Audio => audio += 1,
            MediaKind::Video => video += 1,
        }
    }
    (audio, video)
}

impl<W: Wire> RouterHost<W> {
    pub(super) fn allocate(&mut self, now: Instant) {
        let mut changes: Vec<(PeerId, Change)> = Vec::new();
        let mut targets: Vec<(PeerId, (u64, u64))> = Vec::new();
        for t in self.transports.values_mut().filter(|t| t.connected) {
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
            // Probe for HD on every video track it receives.
            let min = t.downlink.probe_target(audio, video);
            let desired = BWE_INITIAL_BPS * video.max(1) as u64;
            let target = (min, desired.max(min));
            if target != t.bwe_target {
                targets.push((t.id, target));
            }
        }
        for (peer, change) in changes {
            self.apply(peer, change);
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
            let (kind, reason) = (TrackKind::Video, PauseReason::Bandwidth);
            let msg = if paused {
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
            };
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
