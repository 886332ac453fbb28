//! A Router host: the routing logic of one worker — rooms (Routers), their Transports, and the
//! forwarding between them — with no thread, channel or socket of its own.
//!
//! Every input mutates exactly one `Rtc` and is followed by a full drain of it (str0m's
//! contract); what a drain finds that concerns other transports lands in the [`Outbox`] and is
//! processed right after. Each call into a participant's state runs under `catch_unwind`: a panic
//! closes that participant only. Output goes through a [`Wire`]: the worker's UDP socket in
//! production, memory in tests and benchmarks. The thread around it is in `worker.rs`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// How often a subscriber that still waits for a keyframe asks again.
const KEYFRAME_RETRY: Duration = Duration::from_secs(1);

use consulta_signaling::protocol::{ErrorCode, LeaveReason, ServerMessage};
use str0m::media::{MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::Input;

use crate::demux::DemuxUpdate;
use crate::forwarder::{KeyframeThrottle, PauseCause};
use crate::stats::{codec_index, LocalCounters, TrackCounts};
use crate::transport::{
    far_future, new_rtc, track_kind, Advertised, Consumer, ConsumerState, Fault, Io, Outbox,
    Producer, Transport, Wire, KEYFRAME_INTERVAL,
};
use crate::{Command, JoinRequest, PeerId};

mod allocation;
pub(crate) mod codecs;
mod forward;
mod limits;
mod mute;
mod negotiation;
mod preference;
mod quality;
pub(crate) mod quota;
mod reconnect;
pub(crate) mod simulcast;
use mute::MuteBy;
use reconnect::Path;

pub use limits::Limits;

/// One room's media graph: who is in it. Producers and consumers hang off the transports.
struct Router {
    name: String,
    participants: Vec<PeerId>,
    recording: Option<Recording>,
}

/// A room being recorded: the tap and the tracks already announced to the recorder.
struct Recording {
    tap: crate::RecordTap,
    announced: Vec<u64>,
}

/// The rooms of one worker and everything needed to route their media.
pub struct RouterHost<W: Wire> {
    index: usize,
    wire: W,
    advertised: Advertised,
    limits: Limits,
    transports: crate::FastMap<PeerId, Transport>,
    routers: crate::FastMap<u64, Router>,
    router_by_name: HashMap<String, u64>,
    next_router: u64,
    timers: BinaryHeap<Reverse<(Instant, PeerId)>>,
    outbox: Outbox,
    pub(crate) counters: LocalCounters,
    /// Registrations for the demux thread, collected by the worker shell.
    pub(crate) demux_updates: Vec<DemuxUpdate>,
    /// When each packet forwarded this round arrived (one entry per copy, bounded), so the
    /// worker can observe the time it spent in the server once the round's sends are out.
    pub(crate) forwarded_arrivals: Vec<Instant>,
    /// When publishers' REMB caps are next sent (see `allocation.rs`).
    next_remb: Option<Instant>,
}

/// Copies per round whose time in the server is observed (beyond: not sampled).
const FORWARD_SAMPLES: usize = 4096;

impl<W: Wire> RouterHost<W> {
    pub fn new(index: usize, wire: W, advertised: Advertised, limits: Limits) -> Self {
        RouterHost {
            index,
            wire,
            advertised,
            limits,
            transports: Default::default(),
            routers: Default::default(),
            router_by_name: HashMap::new(),
            next_router: 1,
            timers: BinaryHeap::new(),
            outbox: Outbox::default(),
            counters: LocalCounters::default(),
            demux_updates: Vec::new(),
            forwarded_arrivals: Vec::with_capacity(FORWARD_SAMPLES),
            next_remb: None,
        }
    }

    /// The wire, to add and remove ICE-TCP connections.
    pub fn wire_mut(&mut self) -> &mut W {
        &mut self.wire
    }

    pub fn rooms(&self) -> usize {
        self.routers.len()
    }

    pub fn participants(&self) -> usize {
        self.transports.len()
    }

    /// Producers and consumers now, by direction, kind and codec.
    pub(crate) fn track_counts(&self) -> TrackCounts {
        let mut t = TrackCounts::default();
        let kind = |k: MediaKind| usize::from(k == MediaKind::Video);
        for tr in self.transports.values() {
            for p in &tr.producers {
                t[0][kind(p.kind)][codec_index(p.codec)] += 1;
            }
            for c in tr
                .consumers
                .iter()
                .filter(|c| c.state == ConsumerState::Active)
            {
                let codec = self
                    .transports
                    .get(&c.source)
                    .and_then(|s| s.producers.iter().find(|p| p.mid == c.source_mid))
                    .and_then(|p| p.codec);
                t[1][kind(c.kind)][codec_index(codec)] += 1;
            }
        }
        t
    }

    // ---- inputs -------------------------------------------------------------------------

    /// One datagram from `source` for participant `peer`, received at `at`.
    pub fn on_datagram(
        &mut self,
        peer: PeerId,
        proto: Protocol,
        source: SocketAddr,
        data: &[u8],
        at: Instant,
    ) {
        self.counters.packets_in += 1;
        self.counters.bytes_in += data.len() as u64;
        let destination = match proto {
            Protocol::Udp => self.advertised.udp[0],
            _ => match self.advertised.tcp.first() {
                Some(a) => *a,
                None => return,
            },
        };
        if let Ok(contents) = data.try_into() {
            let input = Input::Receive(
                at,
                Receive {
                    proto,
                    source,
                    destination,
                    contents,
                },
            );
            self.drive(peer, |t, io| {
                t.last_proto = proto;
                t.last_source = Some(source);
                t.rtc.handle_input(input)?;
                t.drain(io)
            });
        }
        self.process_outbox();
    }

    pub fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, id))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(tr) = self.transports.get_mut(&id) else {
                continue;
            };
            if tr.scheduled != t {
                continue; // superseded by an earlier deadline that already fired
            }
            tr.scheduled = far_future(now);
            self.drive(id, |tr, io| {
                tr.rtc.handle_input(Input::Timeout(now))?;
                tr.drain(io)
            });
        }
        self.process_outbox();
    }

    pub fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Join(req) => self.join(req),
            Command::Offer { peer, sdp } => self.offer(peer, &sdp),
            Command::Answer { peer, sdp } => self.answer(peer, &sdp),
            Command::Candidate { peer, candidate } => self.remote_candidate(peer, &candidate),
            Command::Mute { peer, kind, muted } => self.mute(peer, kind, muted, MuteBy::Client),
            Command::ForceMute {
                room,
                identity,
                kind,
                muted,
            } => {
                let peer = self
                    .router_by_name
                    .get(&room)
                    .and_then(|r| self.routers.get(r))
                    .and_then(|r| {
                        r.participants.iter().copied().find(|p| {
                            self.transports
                                .get(p)
                                .is_some_and(|t| t.identity == identity)
                        })
                    });
                if let Some(peer) = peer {
                    self.mute(peer, kind, muted, MuteBy::Api);
                }
            }
            Command::Record { room, tap } => self.record(&room, tap),
            Command::RequestKeyframe { peer, mid } => self.request_keyframe(peer, mid),
            Command::Hold { peer } => self.set_lost(peer, Path::Signaling, true),
            Command::Resume { peer } => self.resume(peer),
            Command::RestartIce { peer } => self.restart_ice(peer),
            Command::VideoSize {
                peer,
                identity,
                size,
            } => self.video_size(peer, &identity, size),
            Command::VideoLayers { peer, heights } => {
                if let Some(t) = self.transports.get_mut(&peer) {
                    t.video_heights = heights;
                }
            }
            Command::Leave { peer, reason } => self.remove(peer, reason, None),
        }
        self.process_outbox();
    }

    // ---- commands -----------------------------------------------------------------------

    /// The participants of `room` but `peer` (a copy: the caller then mutates transports).
    fn others_in(&self, room: u64, peer: PeerId) -> Vec<PeerId> {
        self.routers
            .get(&room)
            .map(|r| {
                r.participants
                    .iter()
                    .copied()
                    .filter(|q| *q != peer)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts or stops the recorder's tap on a room.
    fn record(&mut self, room: &str, tap: Option<crate::RecordTap>) {
        let Some(id) = self.router_by_name.get(room).copied() else {
            return;
        };
        let Some(router) = self.routers.get_mut(&id) else {
            return;
        };
        let starting = tap.is_some();
        router.recording = tap.map(|tap| Recording {
            tap,
            announced: Vec::new(),
        });
        if starting {
            // The recording starts at a keyframe of every video track.
            let video: Vec<(PeerId, Mid)> = router
                .participants
                .iter()
                .filter_map(|p| self.transports.get(p))
                .flat_map(|t| {
                    t.producers
                        .iter()
                        .filter(|p| p.kind == MediaKind::Video)
                        .map(move |p| (t.id, p.mid))
                })
                .collect();
            for (peer, mid) in video {
                self.request_keyframe(peer, mid);
            }
        }
    }

    fn join(&mut self, req: JoinRequest) {
        let now = Instant::now();
        // The same identity again replaces its old session: no ghost participant.
        let previous = self
            .router_by_name
            .get(&req.room)
            .and_then(|id| self.routers.get(id))
            .and_then(|r| {
                r.participants.iter().copied().find(|p| {
                    self.transports
                        .get(p)
                        .is_some_and(|t| t.identity == req.identity)
                })
            });
        // A mute forced by the API outlives the session it was made on.
        let forced = previous
            .and_then(|p| self.transports.get(&p))
            .map(|t| t.forced)
            .unwrap_or_default();
        if let Some(old) = previous {
            self.remove(
                old,
                LeaveReason::Replaced,
                Some(ServerMessage::error(
                    ErrorCode::SessionReplaced,
                    "this identity joined again on another connection",
                )),
            );
        }
        let room_id = self.router_for(&req.room);
        let occupants = self.routers[&room_id].participants.len();
        if occupants >= self.limits.max_publishers {
            let _ = req
                .events
                .try_send(crate::PeerEvent::Closed(ServerMessage::error(
                    ErrorCode::RoomFull,
                    format!(
                        "the room already holds {} participants",
                        self.limits.max_publishers
                    ),
                )));
            self.drop_router_if_empty(room_id);
            return;
        }
        let transport = match new_rtc(
            &self.advertised,
            self.limits.nack_history,
            self.limits.bwe,
            now,
        ) {
            Ok(rtc) => {
                let mut t = Transport::new(
                    req.peer,
                    room_id,
                    req.identity,
                    req.role,
                    req.events.clone(),
                    rtc,
                    now,
                );
                mute::carry_forced(&mut t, forced);
                t
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot create transport");
                let _ = req
                    .events
                    .try_send(crate::PeerEvent::Closed(ServerMessage::error(
                        ErrorCode::InternalError,
                        "cannot create the media transport",
                    )));
                self.drop_router_if_empty(room_id);
                return;
            }
        };
        self.register_demux(DemuxUpdate::Register {
            ufrag: transport.ufrag.clone(),
            worker: self.index,
            peer: req.peer,
        });
        let others = self.participants_info(room_id, req.peer);
        let info = transport.info();
        transport.emit(
            ServerMessage::Joined {
                v: consulta_signaling::PROTOCOL_VERSION,
                session_id: req.peer.to_string(),
                participant: info.clone(),
                participants: others,
                ice_servers: Vec::new(),
                resume_secret: None,
                node: None,
                reconnect_grace: Some(self.limits.reconnect_grace.as_secs()),
            },
            &mut self.outbox,
        );
        self.broadcast(
            room_id,
            req.peer,
            ServerMessage::ParticipantJoined { participant: info },
        );
        self.routers
            .get_mut(&room_id)
            .expect("router exists")
            .participants
            .push(req.peer);
        self.transports.insert(req.peer, transport);
        self.counters.joins += 1;
        tracing::info!(
            worker = self.index,
            peer = req.peer,
            room = %self.routers[&room_id].name,
            role = %self.transports[&req.peer].role,
            "participant joined"
        );
    }

    fn router_for(&mut self, name: &str) -> u64 {
        if let Some(id) = self.router_by_name.get(name) {
            return *id;
        }
        let id = self.next_router;
        self.next_router += 1;
        self.router_by_name.insert(name.to_owned(), id);
        self.routers.insert(
            id,
            Router {
                name: name.to_owned(),
                participants: Vec::new(),
                recording: None,
            },
        );
        id
    }

    fn drop_router_if_empty(&mut self, id: u64) {
        if self
            .routers
            .get(&id)
            .is_some_and(|r| r.participants.is_empty())
        {
            if let Some(r) = self.routers.remove(&id) {
                self.router_by_name.remove(&r.name);
            }
        }
    }

    /// Runs one mutation of a participant's `Rtc` and drains it: a panic or error is isolated to
    /// that participant, and its next deadline is scheduled. `None` if it failed or is gone.
    fn drive<R>(
        &mut self,
        peer: PeerId,
        f: impl FnOnce(&mut Transport, &mut Io<W>) -> Result<R, str0m::RtcError>,
    ) -> Option<R> {
        let t = self.transports.get_mut(&peer)?;
        let io = &mut Io {
            wire: &self.wire,
            counters: &mut self.counters,
            outbox: &mut self.outbox,
        };
        let r = guarded(t, io, f);
        schedule(&mut self.timers, t);
        r
    }

    /// Removes a participant: its consumers elsewhere are stopped and the room is told.
    fn remove(&mut self, peer: PeerId, reason: LeaveReason, tell: Option<ServerMessage>) {
        let Some(mut t) = self.transports.remove(&peer) else {
            return;
        };
        self.register_demux(DemuxUpdate::Forget { peer });
        if let Some(msg) = tell {
            t.close_with(msg);
        }
        t.rtc.disconnect();
        self.counters.leaves += 1;
        tracing::info!(worker = self.index, peer, reason = ?reason, "participant left");
        let room = t.room;
        if let Some(r) = self.routers.get_mut(&room) {
            r.participants.retain(|p| *p != peer);
        }
        for q in self.others_in(room, peer) {
            let Some(tq) = self.transports.get_mut(&q) else {
                continue;
            };
            tq.consumers
                .retain(|c| !(c.source == peer && c.state == ConsumerState::ToOpen));
            for c in tq.consumers.iter_mut().filter(|c| c.source == peer) {
                if matches!(c.state, ConsumerState::Negotiating | ConsumerState::Active) {
                    c.state = ConsumerState::ToStop;
                }
            }
            for p in &t.producers {
                tq.emit(
                    ServerMessage::TrackUnpublished {
                        identity: t.identity.clone(),
                        kind: track_kind(p.kind),
                    },
                    &mut self.outbox,
                );
            }
            tq.emit(
                ServerMessage::ParticipantLeft {
                    identity: t.identity.clone(),
                    reason,
                },
                &mut self.outbox,
            );
            self.negotiate(q);
        }
        // The room may go back to a codec the one who left could not decode.
        self.update_codecs(room);
        self.drop_router_if_empty(room);
    }

    fn broadcast(&mut self, room: u64, except: PeerId, msg: ServerMessage) {
        let Some(r) = self.routers.get(&room) else {
            return;
        };
        for p in &r.participants {
            if *p != except {
                if let Some(t) = self.transports.get(p) {
                    t.emit(msg.clone(), &mut self.outbox);
                }
            }
        }
    }

    fn register_demux(&mut self, u: DemuxUpdate) {
        self.demux_updates.push(u);
    }

    // ---- what drains found ----------------------------------------------------------------

    fn process_outbox(&mut self) {
        // Handling one kind can produce more (a forwarded write drains a subscriber, which may
        // ask for a keyframe); loop until quiet.
        while !self.outbox.is_empty() {
            // Before the packets: str0m reports a stream flowing again ahead of its first packet.
            for (peer, mid, layer) in std::mem::take(&mut self.outbox.stream_resumed) {
                self.restart_track(peer, mid, layer);
            }
            let mut rtp = std::mem::take(&mut self.outbox.rtp);
            for (src, pkt) in rtp.drain(..) {
                self.forward(src, pkt);
            }
            // Keep the allocation for the next round.
            if self.outbox.rtp.is_empty() {
                self.outbox.rtp = rtp;
            }
            for (peer, mid, kind) in std::mem::take(&mut self.outbox.media_added) {
                self.add_producer(peer, mid, kind);
            }
            for (sub, mid) in std::mem::take(&mut self.outbox.keyframe_requests) {
                // Not while its congested queue drains: the layer it goes to waits for that.
                let source = self
                    .transports
                    .get(&sub)
                    .filter(|t| !t.downlink.is_draining(Instant::now()))
                    .and_then(|t| t.consumers.iter().find(|c| c.mid == Some(mid)))
                    .map(|c| (c.source, c.source_mid));
                if let Some((source, smid)) = source {
                    self.request_keyframe(source, smid);
                }
            }
            for peer in std::mem::take(&mut self.outbox.connected) {
                if let Some(t) = self.transports.get_mut(&peer) {
                    t.connected = true;
                    let relayed = t
                        .last_source
                        .is_some_and(|a| self.advertised.relay_ips.contains(&a.ip()));
                    match (t.last_proto, relayed) {
                        (_, true) => self.counters.ice_connected_relay += 1,
                        (Protocol::Udp, false) => self.counters.ice_connected += 1,
                        _ => self.counters.ice_connected_tcp += 1,
                    }
                }
                self.request_keyframes_for(peer);
            }
            for (peer, up) in std::mem::take(&mut self.outbox.ice) {
                self.set_lost(peer, Path::Ice, !up);
            }
            for (peer, ufrag) in std::mem::take(&mut self.outbox.ufrags) {
                self.register_demux(DemuxUpdate::Register {
                    ufrag,
                    worker: self.index,
                    peer,
                });
            }
            for (peer, fault) in std::mem::take(&mut self.outbox.faults) {
                let (reason, msg) = match fault {
                    Fault::Disconnected => (LeaveReason::Disconnected, None),
                    Fault::EventOverflow => (LeaveReason::Disconnected, None),
                    Fault::RtcError | Fault::Panic => (
                        LeaveReason::Disconnected,
                        Some(ServerMessage::error(
                            ErrorCode::InternalError,
                            "the media session failed and was closed",
                        )),
                    ),
                };
                match fault {
                    Fault::Panic => self.counters.peer_panics += 1,
                    Fault::EventOverflow => self.counters.event_queue_overflows += 1,
                    _ => {}
                }
                let msg = msg.or(Some(ServerMessage::error(
                    ErrorCode::InternalError,
                    "media connection lost",
                )));
                self.remove(peer, reason, msg);
            }
        }
        // A downlink found congested: its layers and str0m's targets now, not at the next
        // housekeeping (up to 100 ms on, while the top layer fills the link).
        if std::mem::take(&mut self.outbox.congested) {
            let now = Instant::now();
            self.select_layers(now);
            if self.limits.bwe {
                self.allocate(now);
            }
            self.process_outbox();
        }
        self.counters.events_dropped += std::mem::take(&mut self.outbox.events_dropped);
    }

    fn add_producer(&mut self, peer: PeerId, mid: Mid, kind: MediaKind) {
        let Some(t) = self.transports.get_mut(&peer) else {
            return;
        };
        if t.producers.iter().any(|p| p.mid == mid) {
            return;
        }
        if !self.may_produce(peer, mid, kind) {
            return;
        }
        let Some(t) = self.transports.get_mut(&peer) else {
            return;
        };
        let (codecs, red) = t.codec_table();
        t.producers.push(Producer {
            mid,
            kind,
            layers: Default::default(),
            codecs,
            red,
            throttle: KeyframeThrottle::new(KEYFRAME_INTERVAL),
            codec: None,
            feedback: Default::default(),
            stalled: 0,
            remb: Default::default(),
        });
        let (room, identity) = (t.room, t.identity.clone());
        // A track muted before it was published starts paused for everyone.
        let muted = mute::is_muted(t, kind);
        for q in self.others_in(room, peer) {
            let Some(tq) = self.transports.get_mut(&q) else {
                continue;
            };
            let mut c = Consumer::new(peer, mid, identity.clone(), kind);
            if muted {
                c.forwarder.pause(PauseCause::Mute);
            }
            tq.subscribe(c);
            tq.emit(
                ServerMessage::TrackPublished {
                    identity: identity.clone(),
                    kind: track_kind(kind),
                },
                &mut self.outbox,
            );
            self.negotiate(q);
        }
        if kind == MediaKind::Video {
            // Its new consumers for subscribers that cannot decode its codec start paused.
            self.decide_codecs(room);
        }
    }

    /// Who is in `room` but `peer`, as the room's participants see each other.
    fn participants_info(
        &self,
        room: u64,
        peer: PeerId,
    ) -> Vec<consulta_signaling::protocol::ParticipantInfo> {
        self.routers
            .get(&room)
            .map(|r| r.participants.as_slice())
            .unwrap_or(&[])
            .iter()
            .filter(|p| **p != peer)
            .filter_map(|p| self.transports.get(p).map(|t| t.info()))
            .collect()
    }

    // ---- periodic -------------------------------------------------------------------------

    pub fn housekeeping(&mut self, now: Instant) {
        self.outbox.pacer.expire(now);
        // Keyframe requests held back by the throttle, and subscribers still waiting for one.
        let mut due: Vec<(PeerId, Mid)> = Vec::new();
        for t in self.transports.values_mut() {
            for p in &mut t.producers {
                if p.throttle.poll(now) {
                    due.push((t.id, p.mid));
                }
            }
        }
        for (peer, mid) in due {
            self.send_keyframe_request(peer, mid);
        }
        // Subscribers still waiting for a keyframe ask again, once a second, once connected.
        let mut waiting: Vec<(PeerId, Mid)> = Vec::new();
        for t in self
            .transports
            .values_mut()
            .filter(|t| t.connected && !t.downlink.is_draining(now))
        {
            for c in &mut t.consumers {
                let due = c
                    .asked_keyframe
                    .is_none_or(|a| now.duration_since(a) >= KEYFRAME_RETRY);
                if c.state == ConsumerState::Active && c.forwarder.is_waiting_keyframe() && due {
                    c.asked_keyframe = Some(now);
                    waiting.push((c.source, c.source_mid));
                }
            }
        }
        for (s, m) in waiting {
            self.request_keyframe(s, m);
        }
        self.expire_lost(now);
        self.expire_reoffers(now);
        self.assess_quality(now);
        if self.limits.bwe {
            self.allocate(now);
        }
        self.select_layers(now);
        let dead: Vec<PeerId> = self
            .transports
            .values()
            .filter(|t| !t.rtc.is_alive())
            .map(|t| t.id)
            .collect();
        for peer in dead {
            self.remove(
                peer,
                LeaveReason::Disconnected,
                Some(ServerMessage::error(
                    ErrorCode::InternalError,
                    "media connection lost",
                )),
            );
        }
        self.process_outbox();
    }

    /// The earliest deadline an `Rtc` asked for.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }
}

/// Registers the transport's newest deadline if it is earlier than the one already queued.
fn schedule(timers: &mut BinaryHeap<Reverse<(Instant, PeerId)>>, t: &mut Transport) {
    if t.next_timeout < t.scheduled {
        t.scheduled = t.next_timeout;
        timers.push(Reverse((t.next_timeout, t.id)));
    }
}

/// Runs `f` on one transport, isolating panics and str0m errors to it.
fn guarded<R, W: Wire>(
    t: &mut Transport,
    io: &mut Io<W>,
    f: impl FnOnce(&mut Transport, &mut Io<W>) -> Result<R, str0m::RtcError>,
) -> Option<R> {
    let id = t.id;
    match catch_unwind(AssertUnwindSafe(|| f(t, io))) {
        Ok(Ok(r)) => Some(r),
        Ok(Err(e)) => {
            tracing::warn!(peer = id, error = %e, "media session error");
            io.outbox.faults.push((id, Fault::RtcError));
            None
        }
        Err(_) => {
            tracing::error!(peer = id, "panic in a media session; closing it");
            io.outbox.faults.push((id, Fault::Panic));
            None
        }
    }
}

#[cfg(test)]
mod tests;
