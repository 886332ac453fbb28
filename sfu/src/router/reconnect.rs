//! Reconnection: a participant whose signaling connection or ICE path is lost is held, not
//! removed, for [`Limits::reconnect_grace`](super::Limits). The room hears it is reconnecting;
//! its consumers and producers keep their state. A new signaling connection resumes the session
//! (`Command::Resume`), the client restarts ICE (`Command::RestartIce`) from its new address,
//! and the room hears it is back. Past the grace period it leaves with reason `lost`, once.
//!
//! What must never happen here: a participant removed while one of its paths is merely late, or
//! a second `participant-left` for one that already left.

use std::time::Instant;

use consulta_signaling::protocol::{ErrorCode, LeaveReason, PauseReason, ServerMessage};
use str0m::media::{MediaKind, Mid};

use super::allocation::video_pause_notice;
use super::RouterHost;
use crate::forwarder::PauseCause;
use crate::transport::{ConsumerState, Wire};
use crate::PeerId;

/// The two paths a participant can lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// Its WebSocket (told by the signaling side).
    Signaling,
    /// ICE consent (told by str0m).
    Ice,
}

impl<W: Wire> RouterHost<W> {
    /// Marks one of `peer`'s paths lost or back; the room is told when the participant starts or
    /// stops reconnecting.
    pub(super) fn set_lost(&mut self, peer: PeerId, path: Path, lost: bool) {
        let Some(t) = self.transports.get_mut(&peer) else {
            return;
        };
        let was = t.lost;
        match path {
            Path::Signaling => t.lost.signaling = lost,
            Path::Ice => t.lost.ice = lost,
        }
        let (room, identity) = (t.room, t.identity.clone());
        match (was.any(), t.lost.any()) {
            (false, true) => {
                t.lost.since = Some(Instant::now());
                self.counters.reconnects_started += 1;
                tracing::info!(worker = self.index, peer, ?path, "participant reconnecting");
                self.broadcast(
                    room,
                    peer,
                    ServerMessage::ParticipantReconnecting { identity },
                );
            }
            (true, false) => {
                t.lost.since = None;
                self.counters.reconnects_completed += 1;
                tracing::info!(worker = self.index, peer, "participant reconnected");
                self.broadcast(
                    room,
                    peer,
                    ServerMessage::ParticipantReconnected { identity },
                );
            }
            _ => {}
        }
        if path != Path::Ice || lost {
            return;
        }
        let Some(t) = self.transports.get_mut(&peer) else {
            return;
        };
        let restarted = std::mem::take(&mut t.ice_restarted);
        if !(was.ice || restarted) {
            return;
        }
        // Restarted onto another address (a network change): what its downlink learned of the
        // old path does not hold. Back on the same one (consent regained on a weak link), the
        // losses were the link's.
        if restarted && t.last_source != t.restart_source {
            t.downlink.on_new_path(Instant::now());
        }
        self.restart_at_keyframes(peer);
    }

    /// `peer`'s path was cut (its ICE came back, or restarted on a new network): media was cut
    /// off mid-frame both ways, so what it receives and what the room receives from it restart
    /// at keyframes, with sequence numbers that continue without a gap.
    pub(super) fn restart_at_keyframes(&mut self, peer: PeerId) {
        let Some(t) = self.transports.get_mut(&peer) else {
            return;
        };
        for c in &mut t.consumers {
            c.restart();
        }
        let own: Vec<Mid> = t.producers.iter().map(|p| p.mid).collect();
        self.request_keyframes_for(peer);
        for mid in own {
            self.restart_track(peer, mid, None);
        }
    }

    /// A publisher's track flows again after a gap (str0m saw the stream stop): every consumer
    /// of it waits for a keyframe, asked for now, rather than forward frames that reference
    /// what was lost (the subscribers would ask for repairs of packets the server never got,
    /// and decode nothing until their own keyframe request, seconds later). `layer`: only one
    /// simulcast layer had the gap, and only those forwarded that layer restart.
    pub(super) fn restart_track(&mut self, publisher: PeerId, mid: Mid, layer: Option<u8>) {
        let mut any = false;
        for t in self.transports.values_mut() {
            for c in &mut t.consumers {
                if c.source == publisher
                    && c.source_mid == mid
                    && c.kind == MediaKind::Video
                    && layer.is_none_or(|l| c.switch.current().unwrap_or(0) == l)
                {
                    c.restart();
                    any = true;
                }
            }
        }
        if any {
            self.counters.track_restarts += 1;
            self.request_keyframe(publisher, mid);
        }
    }

    /// A new signaling connection took the session over: tells it who is in the room now,
    /// states again whether each video it receives is paused (a `track-paused` or
    /// `track-resumed` written to the old connection just before it died never arrived: a
    /// patient whose weak link dropped the WebSocket kept a frozen tile with no "paused"
    /// notice), and offers again what the old connection may have lost.
    pub(super) fn resume(&mut self, peer: PeerId) {
        let Some(t) = self.transports.get(&peer) else {
            // Already removed: its `Closed` is in the session's queue.
            return;
        };
        let participants = self.participants_info(t.room, peer);
        t.emit(
            ServerMessage::Resumed {
                session_id: peer.to_string(),
                participants,
            },
            &mut self.outbox,
        );
        for c in t
            .consumers
            .iter()
            .filter(|c| c.kind == MediaKind::Video && c.state == ConsumerState::Active)
        {
            let paused = [
                (PauseCause::Codec, PauseReason::Codec),
                (PauseCause::Bandwidth, PauseReason::Bandwidth),
            ]
            .into_iter()
            .find(|(cause, _)| c.forwarder.is_paused_for(*cause));
            let reason = paused.map_or(PauseReason::Bandwidth, |(_, r)| r);
            let msg = video_pause_notice(c.source_identity.clone(), reason, paused.is_some());
            t.emit(msg, &mut self.outbox);
        }
        if let Some(offer) = t.last_offer.clone() {
            t.emit(offer, &mut self.outbox);
        }
        self.set_lost(peer, Path::Signaling, false);
    }

    /// Offers `peer` an ICE restart now, or after the outstanding offer is answered.
    pub(super) fn restart_ice(&mut self, peer: PeerId) {
        let Some(t) = self.transports.get_mut(&peer) else {
            return;
        };
        if !t.offered {
            // Its first offer has not been answered: ICE starts with it anyway.
            return;
        }
        t.restart_ice = true;
        self.counters.ice_restarts += 1;
        self.negotiate(peer);
    }

    /// Removes the participants whose grace period ran out.
    pub(super) fn expire_lost(&mut self, now: Instant) {
        let grace = self.limits.reconnect_grace;
        let expired: Vec<PeerId> = self
            .transports
            .values()
            .filter(|t| t.lost.since.is_some_and(|s| now.duration_since(s) >= grace))
            .map(|t| t.id)
            .collect();
        for peer in expired {
            self.counters.reconnects_expired += 1;
            self.remove(
                peer,
                LeaveReason::Lost,
                Some(ServerMessage::error(
                    ErrorCode::ConnectionLost,
                    "the connection was lost and did not come back in time",
                )),
            );
        }
    }
}
