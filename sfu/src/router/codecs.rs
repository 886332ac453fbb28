//! Room-level codec choice, applied (the decision itself is [`crate::codecs`]): what each
//! participant decodes is learnt from its negotiations; each publisher is told (`video-codec`)
//! to send the codec every other participant of its room decodes, and offers again; a subscriber
//! that cannot decode any codec the publisher can send gets `track-paused` with reason `codec`.
//!
//! While a publisher is asked to offer again, the server's own offers to it wait (no glare):
//! until its offer arrives, or [`REOFFER_WAIT`] passes.

use std::time::{Duration, Instant};

use consulta_signaling::protocol::{PauseReason, ServerMessage};
use str0m::format::{Codec, PayloadParams};
use str0m::media::{MediaKind, Mid};

use super::allocation::video_pause_notice;
use super::RouterHost;
use crate::codecs::{self, CodecSet};
use crate::forwarder::PauseCause;
use crate::transport::{ConsumerState, Transport, Wire};
use crate::PeerId;

/// How long the server's offers to a publisher wait for the offer asked by `video-codec`.
pub(crate) const REOFFER_WAIT: Duration = Duration::from_secs(5);

/// One participant's video codecs, as negotiated, and what it was told to send.
#[derive(Debug, Default)]
pub(crate) struct CodecState {
    /// Video codecs it can send, in its order of preference (its first offer's).
    pub prefs: Vec<Codec>,
    /// Its negotiated video m-lines (its own and the ones it receives on).
    pub video_mids: Vec<Mid>,
    /// Video codecs it decodes (union over `video_mids`); empty while unknown.
    pub decodes: CodecSet,
    /// Video codecs it will not send: asked for one, it offered again without them.
    pub unsendable: CodecSet,
    /// The codec it is to send (its answers list it first).
    pub directed: Option<Codec>,
    /// `directed` changed after its first answer and it has not been told yet.
    pub switch_due: bool,
    /// When it was told to offer again; the server's offers to it wait meanwhile.
    pub reoffer_since: Option<Instant>,
}

/// The negotiated payload parameters of `mid`, in the remote's order (empty for audio).
fn negotiated(t: &Transport, mid: Mid) -> Vec<PayloadParams> {
    let Some(m) = t.rtc.media(mid) else {
        return Vec::new();
    };
    if m.kind() != MediaKind::Video {
        return Vec::new();
    }
    let params = t.rtc.codec_config().params();
    m.remote_pts()
        .iter()
        .filter_map(|pt| params.iter().find(|p| p.pt() == *pt))
        .cloned()
        .collect()
}

/// The video m-lines of an SDP: (mid, whether its author sends on it).
pub(crate) fn video_sections(sdp: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut video = false;
    let mut mid: Option<String> = None;
    let mut sends = true;
    let mut flush = |video: bool, mid: &mut Option<String>, sends: bool| {
        if let (true, Some(m)) = (video, mid.take()) {
            out.push((m, sends));
        }
    };
    for line in sdp.lines() {
        let line = line.trim_end();
        if line.starts_with("m=") {
            flush(video, &mut mid, sends);
            video = line.starts_with("m=video ");
            sends = true;
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.to_owned());
        } else if line == "a=recvonly" || line == "a=inactive" {
            sends = false;
        }
    }
    flush(video, &mut mid, sends);
    out
}

/// The payload types of `codec` negotiated with `t`, shareable forms first: its answers and the
/// server's offers list them first, so the browser sends that codec, in its common floor
/// (Chrome sends the first codec of an offer it answers, too).
pub(crate) fn payload_types(t: &Transport, codec: Codec) -> Vec<u8> {
    let mut pts: Vec<(bool, u8)> = Vec::new();
    for mid in &t.codecs.video_mids {
        for p in negotiated(t, *mid) {
            let pt = *p.pt();
            if p.spec().codec == codec && !pts.iter().any(|(_, x)| *x == pt) {
                pts.push((!codecs::shareable(&p), pt));
            }
        }
    }
    pts.sort_by_key(|(rest, _)| *rest);
    pts.into_iter().map(|(_, pt)| pt).collect()
}

impl<W: Wire> RouterHost<W> {
    /// `peer`'s offer `sdp` was accepted: records its video m-lines and, from the first offer,
    /// its order of preference. An offer made again after `video-codec` (`again`) shows what it
    /// will send: codecs left out of it are not asked again.
    pub(super) fn learn_offer(&mut self, peer: PeerId, sdp: &str, again: bool) {
        let Some(t) = self.transports.get_mut(&peer) else {
            return;
        };
        for (mid, sends) in video_sections(sdp) {
            let mid = Mid::from(mid.as_str());
            if sends {
                let params = negotiated(t, mid);
                if t.codecs.prefs.is_empty() {
                    t.codecs.prefs = codecs::preference_order(params.iter());
                }
                if again {
                    let offered = codecs::all_of(params.iter());
                    for c in codecs::VIDEO_CODECS {
                        if !offered.contains(c) {
                            t.codecs.unsendable.insert(c);
                        }
                    }
                }
            }
            if !t.codecs.video_mids.contains(&mid) {
                t.codecs.video_mids.push(mid);
            }
        }
        relearn(t);
    }

    /// `peer` answered: the video m-lines it receives on tell more of what it decodes.
    pub(super) fn learn_answer(&mut self, peer: PeerId) {
        let Some(t) = self.transports.get_mut(&peer) else {
            return;
        };
        let mids: Vec<Mid> = t
            .consumers
            .iter()
            .filter(|c| c.kind == MediaKind::Video)
            .filter_map(|c| c.mid)
            .collect();
        for mid in mids {
            if !t.codecs.video_mids.contains(&mid) {
                t.codecs.video_mids.push(mid);
            }
        }
        relearn(t);
    }

    /// Chooses each publisher's codec in `room` again, tells the ones that must change, and
    /// pauses (or resumes) video for subscribers that cannot decode it.
    pub(super) fn update_codecs(&mut self, room: u64) {
        self.decide_codecs(room);
        self.tell_codecs(room);
    }

    /// Chooses each publisher's codec in `room` again and pauses (or resumes) video for
    /// subscribers that cannot decode it; the publishers are told by [`Self::tell_codecs`].
    pub(super) fn decide_codecs(&mut self, room: u64) {
        let Some(r) = self.routers.get(&room) else {
            return;
        };
        let members = r.participants.clone();
        let mut decided: Vec<(PeerId, Codec)> = Vec::new();
        for p in &members {
            let Some(t) = self.transports.get(p) else {
                continue;
            };
            let receivers: Vec<CodecSet> = members
                .iter()
                .filter(|q| *q != p)
                .filter_map(|q| self.transports.get(q))
                .map(|q| q.codecs.decodes)
                .collect();
            let s = &t.codecs;
            let send = codecs::candidates(&s.prefs, s.unsendable);
            if let Some(c) = codecs::choose(&send, &receivers) {
                decided.push((*p, c));
            }
        }
        for (p, codec) in &decided {
            let Some(t) = self.transports.get_mut(p) else {
                continue;
            };
            if t.codecs.directed != Some(*codec) {
                if let Some(old) = t.codecs.directed {
                    self.counters.codec_switches += 1;
                    tracing::info!(
                        worker = self.index,
                        peer = p,
                        from = codecs::codec_name(old),
                        to = codecs::codec_name(*codec),
                        "publisher's video codec changes for its room"
                    );
                }
                t.codecs.directed = Some(*codec);
                // Before its first answer, that answer carries the choice.
                t.codecs.switch_due = t.offered;
            }
        }
        for (p, codec) in decided {
            self.pause_undecodable(&members, p, codec);
        }
    }

    /// Tells the publishers of `room` whose codec changed (see [`Self::tell_codec`]).
    pub(super) fn tell_codecs(&mut self, room: u64) {
        let members = self
            .routers
            .get(&room)
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        let now = Instant::now();
        for p in members {
            self.tell_codec(p, now);
        }
    }

    /// Tells `peer` its codec when it changed and no negotiation is in flight.
    pub(super) fn tell_codec(&mut self, peer: PeerId, now: Instant) {
        let Some(t) = self.transports.get_mut(&peer) else {
            return;
        };
        let s = &t.codecs;
        if !s.switch_due || !t.offered || t.has_pending_offer() || s.reoffer_since.is_some() {
            return;
        }
        let Some(codec) = s.directed else {
            return;
        };
        t.codecs.switch_due = false;
        t.codecs.reoffer_since = Some(now);
        t.emit(
            ServerMessage::VideoCodec {
                codec: codecs::codec_name(codec).to_owned(),
            },
            &mut self.outbox,
        );
    }

    /// The answer to `peer`'s offer, with its directed codec first.
    pub(super) fn direct_answer(&self, peer: PeerId, answer: String) -> String {
        let Some(t) = self.transports.get(&peer) else {
            return answer;
        };
        match t.codecs.directed {
            Some(c) => codecs::put_first(&answer, &payload_types(t, c)),
            None => answer,
        }
    }

    /// Publishers that did not offer again in time: the server's offers go on.
    pub(super) fn expire_reoffers(&mut self, now: Instant) {
        let late: Vec<PeerId> = self
            .transports
            .values_mut()
            .filter(|t| {
                t.codecs
                    .reoffer_since
                    .is_some_and(|s| now.duration_since(s) >= REOFFER_WAIT)
            })
            .map(|t| {
                t.codecs.reoffer_since = None;
                t.id
            })
            .collect();
        for peer in late {
            tracing::info!(worker = self.index, peer, "no offer after video-codec");
            self.negotiate(peer);
        }
    }

    /// Pauses `publisher`'s video for the members that cannot decode `codec`, resumes it for the
    /// ones that can again, and tells each subscriber whose state changed.
    fn pause_undecodable(&mut self, members: &[PeerId], publisher: PeerId, codec: Codec) {
        let Some(identity) = self.transports.get(&publisher).map(|t| t.identity.clone()) else {
            return;
        };
        let mut keyframe: Vec<Mid> = Vec::new();
        for q in members.iter().filter(|q| **q != publisher) {
            let Some(tq) = self.transports.get_mut(q) else {
                continue;
            };
            let d = tq.codecs.decodes;
            let blocked = !d.is_empty() && !d.contains(codec);
            let mut told: Option<ServerMessage> = None;
            // Only answered consumers: the answer tells what the subscriber decodes on them (its
            // offer may list fewer codecs than it decodes).
            for c in tq.consumers.iter_mut().filter(|c| {
                c.source == publisher
                    && c.kind == MediaKind::Video
                    && c.state == ConsumerState::Active
            }) {
                let paused = c.forwarder.is_paused_for(PauseCause::Codec);
                if blocked && !paused {
                    c.forwarder.pause(PauseCause::Codec);
                } else if !blocked && paused {
                    if c.forwarder.resume(PauseCause::Codec) {
                        keyframe.push(c.source_mid);
                    }
                } else {
                    continue;
                }
                told = Some(video_pause_notice(
                    identity.clone(),
                    PauseReason::Codec,
                    blocked,
                ));
            }
            if let Some(m) = told {
                if matches!(m, ServerMessage::TrackPaused { .. }) {
                    self.counters.codec_pauses += 1;
                    tracing::info!(
                        worker = self.index,
                        publisher,
                        subscriber = q,
                        codec = codecs::codec_name(codec),
                        decodes = ?d.names(),
                        "no shared video codec: video paused for this subscriber"
                    );
                }
                tq.emit(m, &mut self.outbox);
            }
        }
        for mid in keyframe {
            self.request_keyframe(publisher, mid);
        }
    }
}

/// What `t` decodes: the union of its negotiated video m-lines' shareable codecs.
fn relearn(t: &mut Transport) {
    let mut d = CodecSet::default();
    for mid in &t.codecs.video_mids {
        d = d.union(CodecSet::of(negotiated(t, *mid).iter()));
    }
    t.codecs.decodes = d;
    tracing::debug!(peer = t.id, decodes = ?d.names(), prefs = ?t.codecs.prefs, "video codecs");
}

#[cfg(test)]
mod tests {
    use super::video_sections;

    #[test]
    fn video_sections_name_each_video_mid_and_whether_it_sends() {
        let sdp = "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\na=sendonly\r\n\
                   m=video 9 X 96 97\r\na=mid:1\r\na=sendonly\r\n\
                   m=video 9 X 96\r\na=mid:p7\r\na=recvonly\r\n\
                   m=application 9 X webrtc-datachannel\r\na=mid:2\r\n";
        assert_eq!(
            video_sections(sdp),
            vec![("1".to_owned(), true), ("p7".to_owned(), false)]
        );
        assert!(video_sections("").is_empty());
    }
}
