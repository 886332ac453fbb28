//! Negotiation: the client's one offer (and the one asked by `video-codec`), answers to the
//! server's offers, and the payload type maps of consumers that go live with them.

use consulta_signaling::protocol::{ErrorCode, LeaveReason, ServerMessage};
use str0m::media::{MediaKind, Mid};

use super::{mute, RouterHost};
use crate::forwarder::PtMap;
use crate::transport::{ConsumerState, Wire};
use crate::PeerId;

impl<W: Wire> RouterHost<W> {
    pub(super) fn offer(&mut self, peer: PeerId, sdp: &str) {
        let Some(t) = self.transports.get_mut(&peer) else {
            return;
        };
        // A client offers once, and again only when asked to change its codec.
        let again = t.codecs.reoffer_since.take().is_some();
        if t.offered && !again {
            t.emit(
                ServerMessage::error(
                    ErrorCode::AlreadyOffered,
                    "the client offers once; later changes come from the server",
                ),
                &mut self.outbox,
            );
            return;
        }
        let answer = self.drive(peer, |t, io| {
            let r = t.accept_offer(sdp);
            t.drain(io)?;
            Ok(r)
        });
        let Some(t) = self.transports.get(&peer) else {
            return;
        };
        let room = t.room;
        match answer {
            Some(Ok(answer)) => {
                // The room's codec choice, with what this offer tells, goes into the answer.
                self.learn_offer(peer, sdp, again);
                self.decide_codecs(room);
                let answer = self.direct_answer(peer, answer);
                let Some(t) = self.transports.get_mut(&peer) else {
                    return;
                };
                t.codecs.switch_due = false;
                t.emit(ServerMessage::Answer { sdp: answer }, &mut self.outbox);
                self.tell_codecs(room);
            }
            Some(Err(msg)) => {
                t.emit(
                    ServerMessage::error(ErrorCode::SdpInvalid, msg),
                    &mut self.outbox,
                );
                return;
            }
            None => return,
        }
        if again {
            // Its consumers' changes waited for this offer.
            self.negotiate(peer);
            return;
        }
        let Some(t) = self.transports.get(&peer) else {
            return;
        };
        // Subscribe the newcomer to everything already published in the room.
        let room = t.room;
        let mut wanted = Vec::new();
        for other in self
            .routers
            .get(&room)
            .map(|r| r.participants.as_slice())
            .unwrap_or(&[])
        {
            if *other == peer {
                continue;
            }
            if let Some(o) = self.transports.get(other) {
                for p in &o.producers {
                    wanted.push(mute::consumer_of(o, p.mid, p.kind));
                }
            }
        }
        let t = self.transports.get_mut(&peer).expect("checked above");
        for c in wanted {
            t.subscribe(c);
        }
        // Its new consumers of a codec it cannot decode start paused.
        self.decide_codecs(room);
        self.negotiate(peer);
    }

    pub(super) fn answer(&mut self, peer: PeerId, sdp: &str) {
        let Some(t) = self.transports.get_mut(&peer) else {
            return;
        };
        if !t.has_pending_offer() {
            t.emit(
                ServerMessage::error(
                    ErrorCode::NoPendingOffer,
                    "no offer from the server is outstanding",
                ),
                &mut self.outbox,
            );
            return;
        }
        let result = self.drive(peer, |t, io| {
            let r = t.accept_answer(sdp);
            t.drain(io)?;
            Ok(r)
        });
        let Some(t) = self.transports.get_mut(&peer) else {
            return;
        };
        match result {
            Some(Ok(())) => {}
            Some(Err((false, msg))) => {
                t.emit(
                    ServerMessage::error(ErrorCode::SdpInvalid, msg),
                    &mut self.outbox,
                );
                return;
            }
            Some(Err((true, msg))) => {
                // The negotiation state is lost: this session cannot go on.
                let m = ServerMessage::error(ErrorCode::SdpInvalid, msg);
                self.remove(peer, LeaveReason::Disconnected, Some(m));
                return;
            }
            None => return,
        }
        // Consumers in the answered offer go live; stopped ones go away.
        t.consumers.retain(|c| c.state != ConsumerState::Stopping);
        for c in t
            .consumers
            .iter_mut()
            .filter(|c| c.state == ConsumerState::Negotiating)
        {
            c.state = ConsumerState::Active;
        }
        self.map_payload_types(peer);
        let sources: Vec<(PeerId, Mid)> = self.transports[&peer]
            .consumers
            .iter()
            .filter(|c| {
                c.state == ConsumerState::Active
                    && c.kind == MediaKind::Video
                    && c.forwarder.is_waiting_keyframe()
            })
            .map(|c| (c.source, c.source_mid))
            .collect();
        for (source, mid) in sources {
            self.request_keyframe(source, mid);
        }
        // What it accepted to receive tells what it decodes; a codec change waited for this.
        self.learn_answer(peer);
        if let Some(room) = self.transports.get(&peer).map(|t| t.room) {
            self.update_codecs(room);
        }
        self.negotiate(peer);
    }

    /// Fills the payload type maps of `peer`'s active consumers from the publishers' codecs.
    pub(super) fn map_payload_types(&mut self, peer: PeerId) {
        let mut wanted: Vec<(usize, Vec<str0m::format::PayloadParams>)> = Vec::new();
        let Some(t) = self.transports.get(&peer) else {
            return;
        };
        for (i, c) in t.consumers.iter().enumerate() {
            if c.state != ConsumerState::Active {
                continue;
            }
            if let Some(src) = self.transports.get(&c.source) {
                let kind_is_audio = c.kind == MediaKind::Audio;
                let params = src
                    .rtc
                    .codec_config()
                    .params()
                    .iter()
                    .filter(|p| p.spec().codec.is_audio() == kind_is_audio)
                    .cloned()
                    .collect();
                wanted.push((i, params));
            }
        }
        let t = self.transports.get_mut(&peer).expect("checked above");
        for (i, params) in wanted {
            // Only what the subscriber accepted on this m-line: a payload type it did not is
            // a black tile (RTP arrives, nothing decodes), so such packets are not sent.
            let accepted: Vec<str0m::format::PayloadParams> = t.consumers[i]
                .mid
                .and_then(|m| t.rtc.media(m))
                .map(|m| {
                    let cfg = t.rtc.codec_config().params();
                    m.remote_pts()
                        .iter()
                        .filter_map(|pt| cfg.iter().find(|p| p.pt() == *pt))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let accepted = str0m::format::CodecConfig::new_from_payload_params(accepted);
            let mut map = PtMap::default();
            for p in params {
                let from = *p.pt();
                let matched = accepted.match_params(p);
                map.set(from, matched.map(|m| *m.pt()));
                // RED from the publisher: as RED where the subscriber took it, else its primary
                // block under the plain payload type.
                if let Some(red) = p.red() {
                    match matched.map(|m| (m.pt(), m.red())) {
                        Some((_, Some(to))) => map.set(*red, Some(*to)),
                        Some((to, None)) => map.set_red_unwrapped(*red, *to),
                        None => map.set(*red, None),
                    }
                }
            }
            t.consumers[i].pts = map;
        }
    }

    pub(super) fn negotiate(&mut self, peer: PeerId) {
        let lip_sync = self.limits.lip_sync;
        self.drive(peer, |t, io| {
            if t.negotiate(io.outbox, lip_sync) {
                t.drain(io)?;
            }
            Ok(())
        });
    }
}
