//! Limits on what one participant can make its worker do: remote ICE candidates it trickles
//! and producers (tracks) it publishes. Beyond a limit, more is ignored and counted, never an
//! error that closes the participant (a browser with many interfaces may trickle more than it
//! needs). The limits are per participant and fixed: a consultation needs a camera, a
//! microphone and perhaps a screen share. Event queue overflows are in `transport.rs` (`emit`).

use str0m::media::{MediaKind, Mid};
use str0m::Candidate;

use super::RouterHost;
use crate::transport::Wire;
use crate::PeerId;

/// Remote ICE candidates one participant may trickle per ICE session (an ICE restart opens a
/// new budget). Each is a candidate pair str0m checks: unbounded, a client makes the worker
/// send STUN checks anywhere, as often as it likes.
pub(crate) const MAX_REMOTE_CANDIDATES: u8 = 32;
/// Producers (incoming tracks) per participant; more media sections are not forwarded.
pub(crate) const MAX_PRODUCERS: usize = 4;

/// The remote candidates a participant has trickled in its current ICE session.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CandidateBudget {
    used: u8,
}

impl CandidateBudget {
    /// Takes one candidate from the budget; `false` when it is spent.
    pub fn take(&mut self) -> bool {
        if self.used >= MAX_REMOTE_CANDIDATES {
            return false;
        }
        self.used += 1;
        true
    }
}

impl<W: Wire> RouterHost<W> {
    /// A trickled remote candidate (`a=candidate:…` or without `a=`), within the budget.
    pub(super) fn remote_candidate(&mut self, peer: PeerId, candidate: &str) {
        let line = candidate.strip_prefix("a=").unwrap_or(candidate);
        let Ok(c) = Candidate::from_sdp_string(line) else {
            return;
        };
        let Some(t) = self.transports.get_mut(&peer) else {
            return;
        };
        if !t.candidates.take() {
            self.counters.candidates_refused += 1;
            tracing::debug!(peer, "remote candidate ignored: budget spent");
            return;
        }
        self.drive(peer, |t, io| {
            t.rtc.add_remote_candidate(c);
            t.drain(io)
        });
    }

    /// Whether `peer` may publish one more producer; counts a refusal.
    pub(super) fn may_produce(&mut self, peer: PeerId, mid: Mid, kind: MediaKind) -> bool {
        let Some(t) = self.transports.get(&peer) else {
            return false;
        };
        if t.producers.len() < MAX_PRODUCERS {
            return true;
        }
        self.counters.producers_refused += 1;
        tracing::debug!(peer, %mid, ?kind, "producer ignored: the participant has enough");
        false
    }
}

#[cfg(test)]
mod tests {

    use consulta_signaling::protocol::{ServerMessage, TrackKind};

    use super::*;
    use crate::router::Limits;
    use crate::transport::Advertised;
    use crate::{Command, JoinRequest, PeerEvent};

    use crate::router::tests::NullWire;

    fn host() -> RouterHost<NullWire> {
        let advertised = Advertised {
            udp: vec!["127.0.0.1:7882".parse().unwrap()],
            ..Default::default()
        };
        RouterHost::new(0, NullWire, advertised, Limits::default())
    }

    fn join(
        host: &mut RouterHost<NullWire>,
        peer: PeerId,
        identity: &str,
        queue: usize,
    ) -> tokio::sync::mpsc::Receiver<PeerEvent> {
        let (tx, rx) = tokio::sync::mpsc::channel(queue);
        host.on_command(Command::Join(JoinRequest {
            peer,
            room: "r".into(),
            identity: identity.into(),
            role: "guest".into(),
            events: tx,
        }));
        rx
    }

    #[test]
    fn trickled_candidates_beyond_the_budget_are_ignored_and_counted() {
        let mut host = host();
        let _a = join(&mut host, 1, "a", 64);
        for i in 0..40u16 {
            host.on_command(Command::Candidate {
                peer: 1,
                candidate: format!(
                    "a=candidate:{i} 1 udp 2130706431 192.0.2.1 {} typ host",
                    10000 + i
                ),
            });
        }
        assert_eq!(host.counters.candidates_refused, 8);
        assert_eq!(host.participants(), 1);
    }

    #[test]
    fn producers_beyond_four_are_not_forwarded() {
        let mut host = host();
        let _a = join(&mut host, 1, "a", 64);
        let mut b = join(&mut host, 2, "b", 64);
        for (i, kind) in [MediaKind::Audio, MediaKind::Video]
            .repeat(3)
            .iter()
            .enumerate()
        {
            host.add_producer(1, Mid::from(format!("m{i}").as_str()), *kind);
        }
        assert_eq!(host.transports[&1].producers.len(), MAX_PRODUCERS);
        assert_eq!(host.counters.producers_refused, 2);
        assert_eq!(host.transports[&2].consumers.len(), MAX_PRODUCERS);
        let mut published = 0;
        while let Ok(ev) = b.try_recv() {
            published += usize::from(matches!(
                ev,
                PeerEvent::Message(ServerMessage::TrackPublished { .. })
            ));
        }
        assert_eq!(published, MAX_PRODUCERS);
    }

    #[test]
    fn a_full_event_queue_drops_rebuildable_messages_and_keeps_the_receiver() {
        let mut host = host();
        let _a = join(&mut host, 1, "a", 64);
        // b's signaling reads nothing: its one slot holds `joined`.
        let mut b = join(&mut host, 2, "b", 1);
        for muted in [true, false, true] {
            host.on_command(Command::Mute {
                peer: 1,
                kind: TrackKind::Audio,
                muted,
            });
        }
        assert_eq!(host.participants(), 2, "b is still in the call");
        assert_eq!(host.counters.event_queue_overflows, 0);
        assert_eq!(host.counters.events_dropped, 3);
        assert!(matches!(
            b.try_recv(),
            Ok(PeerEvent::Message(ServerMessage::Joined { .. }))
        ));
    }
}
