//! Connection quality, applied (the assessment is `crate::quality`): each participant's level
//! goes to everyone in its room (itself included) when it changes; a newcomer hears everyone's.

use std::time::Instant;

use consulta_signaling::protocol::ServerMessage;
use str0m::media::MediaKind;

use super::RouterHost;
use crate::forwarder::PauseCause;
use crate::quality::Link;
use crate::transport::{ConsumerState, Wire};
use crate::PeerId;

impl<W: Wire> RouterHost<W> {
    pub(super) fn assess_quality(&mut self, now: Instant) {
        let mut told: Vec<(u64, PeerId, ServerMessage, bool)> = Vec::new();
        for t in self.transports.values_mut().filter(|t| t.offered) {
            let receives_video = t.consumers.iter().any(|c| {
                c.kind == MediaKind::Video
                    && c.state == ConsumerState::Active
                    && !c.forwarder.is_paused_for(PauseCause::Mute)
                    && !c.forwarder.is_paused_for(PauseCause::Codec)
            });
            let link = Link {
                lost: t.lost.any(),
                video_paused: t.downlink.is_video_paused(),
                // The estimate, when it tells of its link (see `quality_estimate`).
                estimate: t.downlink.quality_estimate(now).filter(|_| receives_video),
            };
            let first = t.quality.level().is_none();
            let report = t.quality.poll(now, link);
            let Some(level) = t.quality.level() else {
                continue;
            };
            if report.level.is_some() || report.poor_for.is_some() {
                let msg = ServerMessage::Quality {
                    identity: t.identity.clone(),
                    level,
                    poor_for: report.poor_for.map(|d| d.as_secs()),
                };
                told.push((t.room, t.id, msg, first));
            }
        }
        for (room, peer, msg, first) in told {
            let members = self
                .routers
                .get(&room)
                .map(|r| r.participants.clone())
                .unwrap_or_default();
            for q in &members {
                if let Some(tq) = self.transports.get(q) {
                    tq.emit(msg.clone(), &mut self.outbox);
                }
            }
            if !first {
                continue;
            }
            // A newcomer hears where everyone else stands.
            let Some(t) = self.transports.get(&peer) else {
                continue;
            };
            for q in members.iter().filter(|q| **q != peer) {
                let Some(tq) = self.transports.get(q) else {
                    continue;
                };
                if let Some(level) = tq.quality.level() {
                    let m = ServerMessage::Quality {
                        identity: tq.identity.clone(),
                        level,
                        poor_for: None,
                    };
                    t.emit(m, &mut self.outbox);
                }
            }
        }
    }
}
