//! Mutes: who decided a track is muted, and what that means for its consumers.
//!
//! A participant mutes and unmutes its own tracks; the control API can force a mute, which
//! sticks until the API lifts it: the participant's own unmute is refused meanwhile. A muted
//! track's consumers are paused ([`PauseCause::Mute`]), including consumers created after the
//! mute (a subscriber that joins later never receives it). The decision ([`decide`]) is pure; the
//! [`RouterHost`] methods here only apply it.

use consulta_signaling::protocol::{ErrorCode, MuteState, ServerMessage, TrackKind};
use str0m::media::{MediaKind, Mid};

use super::RouterHost;
use crate::forwarder::PauseCause;
use crate::transport::{Consumer, Transport, Wire};
use crate::PeerId;

/// Who asks for a mute change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MuteBy {
    /// The participant itself (its `mute` message).
    Client,
    /// The control API (a forced mute, or lifting one).
    Api,
}

/// Applies a mute request to a participant's state; returns the track's new muted state, or
/// `None` when the request is refused (the client unmuting a track the API muted).
pub(crate) fn decide(
    muted: &mut MuteState,
    forced: &mut MuteState,
    kind: TrackKind,
    want: bool,
    by: MuteBy,
) -> Option<bool> {
    let (m, f) = match kind {
        TrackKind::Audio => (&mut muted.audio, &mut forced.audio),
        TrackKind::Video => (&mut muted.video, &mut forced.video),
    };
    match by {
        MuteBy::Api => *f = want,
        MuteBy::Client if *f && !want => return None,
        MuteBy::Client => {}
    }
    *m = want;
    Some(want)
}

/// A new session of a participant the API muted stays muted (a rejoin does not undo it).
pub(crate) fn carry_forced(t: &mut Transport, forced: MuteState) {
    t.forced = forced;
    t.muted.audio |= forced.audio;
    t.muted.video |= forced.video;
}

/// Whether `source`'s track of `kind` is muted now.
pub(crate) fn is_muted(source: &Transport, kind: MediaKind) -> bool {
    match kind {
        MediaKind::Audio => source.muted.audio,
        MediaKind::Video => source.muted.video,
    }
}

/// A new consumer of `source`'s producer `mid`: paused from the start when the track is muted.
pub(crate) fn consumer_of(source: &Transport, mid: Mid, kind: MediaKind) -> Consumer {
    let mut c = Consumer::new(source.id, mid, source.identity.clone(), kind);
    if is_muted(source, kind) {
        c.forwarder.pause(PauseCause::Mute);
    }
    c
}

impl<W: Wire> RouterHost<W> {
    /// A participant's track muted or unmuted: the room is told, and a muted track stops being
    /// forwarded (its consumers pause; video resumes at a keyframe). A mute `by` the API is
    /// told to the participant's own client too, and sticks until the API lifts it.
    pub(super) fn mute(&mut self, peer: PeerId, kind: TrackKind, want: bool, by: MuteBy) {
        let Some(t) = self.transports.get_mut(&peer) else {
            return;
        };
        let Some(muted) = decide(&mut t.muted, &mut t.forced, kind, want, by) else {
            self.counters.unmutes_refused += 1;
            tracing::debug!(
                peer,
                ?kind,
                "unmute refused: the track is muted by the server"
            );
            t.emit(
                ServerMessage::error(
                    ErrorCode::Forbidden,
                    "this track was muted by the server and cannot be unmuted by the participant",
                ),
                &mut self.outbox,
            );
            return;
        };
        let media = match kind {
            TrackKind::Audio => MediaKind::Audio,
            TrackKind::Video => MediaKind::Video,
        };
        let (room, identity) = (t.room, t.identity.clone());
        let msg = ServerMessage::Mute {
            identity,
            kind,
            muted,
        };
        if by == MuteBy::Api {
            t.emit(msg.clone(), &mut self.outbox);
        }
        for q in self.others_in(room, peer) {
            if let Some(tq) = self.transports.get_mut(&q) {
                for c in tq
                    .consumers
                    .iter_mut()
                    .filter(|c| c.source == peer && c.kind == media)
                {
                    if muted {
                        c.forwarder.pause(PauseCause::Mute);
                    } else {
                        c.forwarder.resume(PauseCause::Mute);
                    }
                }
            }
        }
        self.broadcast(room, peer, msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forced_mute_sticks_until_the_api_lifts_it() {
        let (mut m, mut f) = (MuteState::default(), MuteState::default());
        let a = TrackKind::Audio;
        assert_eq!(decide(&mut m, &mut f, a, true, MuteBy::Api), Some(true));
        assert!(m.audio && f.audio && !m.video);
        // The client cannot undo it; muting again is harmless.
        assert_eq!(decide(&mut m, &mut f, a, false, MuteBy::Client), None);
        assert!(m.audio);
        assert_eq!(decide(&mut m, &mut f, a, true, MuteBy::Client), Some(true));
        assert!(f.audio);
        // The other kind is the client's to change.
        assert_eq!(
            decide(&mut m, &mut f, TrackKind::Video, true, MuteBy::Client),
            Some(true)
        );
        assert_eq!(
            decide(&mut m, &mut f, TrackKind::Video, false, MuteBy::Client),
            Some(false)
        );
        // The API lifts it; then the client is free again.
        assert_eq!(decide(&mut m, &mut f, a, false, MuteBy::Api), Some(false));
        assert!(!m.audio && !f.audio);
        assert_eq!(decide(&mut m, &mut f, a, true, MuteBy::Client), Some(true));
        assert_eq!(
            decide(&mut m, &mut f, a, false, MuteBy::Client),
            Some(false)
        );
    }
}
