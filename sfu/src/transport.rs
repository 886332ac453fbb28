//! A Transport: one participant's WebRTC connection (a str0m `Rtc` in RTP mode, ICE-lite) with the
//! Producers it publishes and the Consumers it receives.
//!
//! This module owns what can be done with one transport alone: building its `Rtc`, answering the
//! participant's offer, offering it the consumers the worker added, and draining its output. What
//! needs two transports at once (forwarding, keyframe requests) is the worker's job.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Instant;

use consulta_signaling::protocol::{
    MuteState, ParticipantInfo, ServerMessage, TrackInfo, TrackKind,
};
use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, TcpType, Transmit};
use str0m::rtp::RtpPacket;
use str0m::{Candidate, Event, IceConnectionState, Output, Rtc, RtcError};
use tokio::sync::mpsc::error::TrySendError;

use crate::bandwidth::Downlink;
use crate::forwarder::{Forwarder, KeyframeThrottle, PtMap};
use crate::router::quota::CandidateBudget;
use crate::stats::{LocalCounters, CONNECT_BUCKETS};
use crate::{PeerEvent, PeerId};

mod feedback;
use feedback::FeedbackCounts;

/// Minimum spacing of keyframe requests to one publisher track.
pub(crate) const KEYFRAME_INTERVAL: std::time::Duration = std::time::Duration::from_millis(400);

/// Per-stream statistics (loss, RTT, jitter, feedback counts) are taken every this many
/// reports: once a second, as the metrics and the quality assessment count them.
const STREAM_STATS_EVERY: u8 = crate::bandwidth::STATS_PER_SECOND as u8;

/// Why a transport is closed by the worker itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The `Rtc` closed (the peer closed DTLS).
    Disconnected,
    /// str0m refused to go on (an error out of `poll_output`).
    RtcError,
    /// A panic inside this participant's state.
    Panic,
    /// Its signaling session does not read its events.
    EventOverflow,
}

/// Things one drain found that need the worker (other transports or the router).
#[derive(Default)]
pub(crate) struct Outbox {
    pub rtp: Vec<(PeerId, RtpPacket)>,
    /// Keyframe requests from a subscriber, by its consumer mid.
    pub keyframe_requests: Vec<(PeerId, Mid)>,
    pub media_added: Vec<(PeerId, Mid, MediaKind)>,
    pub connected: Vec<PeerId>,
    /// ICE consent lost (`false`) or (re)gained (`true`).
    pub ice: Vec<(PeerId, bool)>,
    /// A new local ICE ufrag (an ICE restart offer) for the demux.
    pub ufrags: Vec<(PeerId, String)>,
    /// A publisher's incoming stream flows again after str0m saw it stop (its path was cut):
    /// its track and layer (None: every layer, the stream carries spatial layers).
    pub stream_resumed: Vec<(PeerId, Mid, Option<u8>)>,
    pub faults: Vec<(PeerId, Fault)>,
    /// Rebuildable messages dropped because a receiver's event queue was full.
    pub events_dropped: u64,
    /// Forwarded packets timed through str0m's pacer (sampled).
    pub pacer: crate::pacer_probe::PacerProbes,
    /// A subscriber's downlink was just found congested: layers are chosen at once.
    pub congested: bool,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.rtp.is_empty()
            && self.keyframe_requests.is_empty()
            && self.media_added.is_empty()
            && self.connected.is_empty()
            && self.ice.is_empty()
            && self.ufrags.is_empty()
            && self.stream_resumed.is_empty()
            && self.faults.is_empty()
    }
}

/// A track this participant sends.
pub(crate) struct Producer {
    pub mid: Mid,
    pub kind: MediaKind,
    /// Its SSRCs (one per simulcast layer) and their rates.
    pub layers: crate::router::simulcast::ProducerLayers,
    /// Codec by payload type, from the negotiated parameters (a RED payload type maps to the
    /// codec of its primary block).
    pub codecs: [Option<Codec>; 128],
    /// Bit `pt` set: payload type `pt` is RED (RFC 2198) around the codec in `codecs`.
    pub red: u128,
    pub throttle: KeyframeThrottle,
    /// The codec of the first packet (for the track gauges).
    pub codec: Option<Codec>,
    /// RTCP feedback sent upstream so far.
    pub feedback: FeedbackCounts,
    /// The layers (bit per layer; bit 0 without simulcast) whose incoming stream str0m saw stop
    /// (no packets for a while) and that have not flowed since.
    pub stalled: u8,
    /// The bitrate cap asked of this track (REMB) for its constrained subscribers.
    pub remb: RembState,
}

/// What was last asked of a publisher's track by REMB.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RembState {
    /// The cap in force (bits per second), if any.
    pub cap: Option<u64>,
    /// Rounds left in which an uncapped REMB is sent after a cap is lifted (one may be lost).
    pub lifting: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConsumerState {
    /// Waiting for the next server offer.
    ToOpen,
    /// In the outstanding offer.
    Negotiating,
    /// Answered: packets flow.
    Active,
    /// Its producer is gone; to be stopped in the next offer.
    ToStop,
    /// Being stopped in the outstanding offer.
    Stopping,
}

/// A copy of another participant's Producer that this participant receives.
pub(crate) struct Consumer {
    pub source: PeerId,
    pub source_mid: Mid,
    pub source_identity: String,
    pub kind: MediaKind,
    pub mid: Option<Mid>,
    pub state: ConsumerState,
    pub forwarder: Forwarder,
    pub pts: PtMap,
    /// When the housekeeping last asked the publisher for a keyframe for this consumer.
    pub asked_keyframe: Option<Instant>,
    /// RTCP feedback from the subscriber so far.
    pub feedback: FeedbackCounts,
    /// Which simulcast layer this subscriber should get, and the changeover to it.
    pub selector: crate::layers::Selector,
    pub switch: crate::layers::Switch,
    /// The size (device pixels) at which the subscriber shows this video, if it said
    /// (`video-size`): its selector's maximum layer follows it.
    pub video_size: Option<(u32, u32)>,
}

impl Consumer {
    /// Its path was cut: video waits for a keyframe (of any layer up to its target, see
    /// [`crate::layers::Switch::restart`]), numbered on without a gap.
    pub fn restart(&mut self) {
        self.forwarder.restart();
        self.switch.restart();
    }

    pub fn new(source: PeerId, source_mid: Mid, source_identity: String, kind: MediaKind) -> Self {
        // Start each subscriber's numbering somewhere different, far below the 16-bit wrap.
        let first = 1000 + (fastrand_u16() % 20000);
        Consumer {
            source,
            source_mid,
            source_identity,
            kind,
            mid: None,
            state: ConsumerState::ToOpen,
            forwarder: Forwarder::new(kind == MediaKind::Video, first),
            pts: PtMap::default(),
            asked_keyframe: None,
            feedback: FeedbackCounts::default(),
            selector: Default::default(),
            switch: Default::default(),
            video_size: None,
        }
    }
}

fn fastrand_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() as u16
}

pub(crate) struct Transport {
    pub id: PeerId,
    pub room: u64,
    pub identity: String,
    pub role: String,
    pub muted: MuteState,
    /// The tracks the control API muted: the participant cannot unmute them.
    pub forced: MuteState,
    pub rtc: Rtc,
    pub ufrag: String,
    events: tokio::sync::mpsc::Sender<PeerEvent>,
    /// The participant's one offer has been answered.
    pub offered: bool,
    pending: Option<SdpPendingOffer>,
    pub producers: Vec<Producer>,
    pub consumers: Vec<Consumer>,
    /// The deadline this transport is registered under in the worker's timer heap.
    pub scheduled: Instant,
    /// The `Rtc`'s latest requested deadline.
    pub next_timeout: Instant,
    /// ICE and DTLS are up.
    pub connected: bool,
    /// Transport and source of the latest datagram, for the path metrics.
    pub last_proto: Protocol,
    pub last_source: Option<SocketAddr>,
    /// Which of its paths are lost, and since when (the reconnect grace period runs from it).
    pub lost: LostPaths,
    /// An ICE restart goes into the next offer.
    pub restart_ice: bool,
    /// An ICE restart was offered and ICE has not connected since: when it does, media both
    /// ways restarts at keyframes (the old path may have been dead for seconds).
    pub ice_restarted: bool,
    /// Where its packets came from when the last ICE restart was offered: a path that comes
    /// back from elsewhere is a new one (`Downlink::on_new_path`).
    pub restart_source: Option<SocketAddr>,
    /// What its downlink carries (str0m's estimate) and whether its video is paused for it.
    pub downlink: Downlink,
    /// The video bitrate cap last sent to this publisher (`bitrate-cap`), if any.
    pub cap_sent: Option<u64>,
    /// The (minimum, desired) bitrates last given to str0m's estimator.
    pub bwe_target: (u64, u64),
    /// Remote candidates trickled in this ICE session (bounded: see `router/quota.rs`).
    pub candidates: CandidateBudget,
    /// The outstanding offer as sent, offered again when a new connection resumes the session
    /// (the first copy may have died with the old one).
    pub last_offer: Option<ServerMessage>,
    /// Its connection quality, as the room is told it (see `quality.rs`).
    pub quality: crate::quality::Quality,
    /// Its simulcast layers' heights, lowest first, as it stated them (`video-layers`; empty:
    /// not stated, the SDK's ladder is assumed).
    pub video_heights: Vec<u32>,
    /// Its video codecs and the one it is to send (see `router/codecs.rs`).
    pub codecs: crate::router::codecs::CodecState,
    /// str0m's statistics reports so far, modulo [`STREAM_STATS_EVERY`] (0: this report's
    /// per-stream statistics are taken).
    stats_tick: u8,
    created: Instant,
}

/// Whether a message may be dropped when its receiver's queue is full: it only updates a
/// state (a track's mute or pause, a new track that the next offer lists anyway, an advisory
/// cap) that a later message or a rejoin brings again. A slow receiver loses an update rather
/// than its call; `joined`, offers, answers and leaves are never dropped.
fn rebuildable(msg: &ServerMessage) -> bool {
    matches!(
        msg,
        ServerMessage::Mute { .. }
            | ServerMessage::TrackPublished { .. }
            | ServerMessage::TrackPaused { .. }
            | ServerMessage::TrackResumed { .. }
            | ServerMessage::BitrateCap { .. }
            | ServerMessage::Quality { .. }
    )
}

/// A participant's lost paths: it is reconnecting while either is lost.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LostPaths {
    pub signaling: bool,
    pub ice: bool,
    pub since: Option<Instant>,
}

impl LostPaths {
    pub fn any(&self) -> bool {
        self.signaling || self.ice
    }
}

/// Where transmits go: the worker's UDP socket and ICE-TCP connections, or memory in tests and
/// benchmarks.
pub trait Wire {
    fn send(&self, to: SocketAddr, data: &[u8]) -> std::io::Result<usize>;

    /// Sends one RFC 4571 frame on the ICE-TCP connection from `to`.
    fn send_tcp(&self, _to: SocketAddr, _data: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// The production wire: the shared UDP socket plus this worker's ICE-TCP connections. UDP
/// datagrams are queued and sent in batches ([`NetWire::flush`], after every round of the
/// worker, or when the batch is full).
pub struct NetWire {
    pub udp: Arc<UdpSocket>,
    pub tcp: HashMap<SocketAddr, tokio::sync::mpsc::Sender<Vec<u8>>>,
    pub(crate) batch: std::cell::RefCell<crate::batch::SendBatch>,
}

impl NetWire {
    pub fn new(udp: Arc<UdpSocket>) -> Self {
        let gso = crate::batch::gso_supported(&udp);
        NetWire {
            udp,
            tcp: HashMap::new(),
            batch: std::cell::RefCell::new(crate::batch::SendBatch::with_gso(gso)),
        }
    }

    /// Sends the queued datagrams; returns how many the kernel refused since the last call.
    pub fn flush(&mut self) -> u64 {
        let b = self.batch.get_mut();
        b.flush(&self.udp);
        std::mem::take(&mut b.errors)
    }
}

impl Wire for NetWire {
    fn send(&self, to: SocketAddr, data: &[u8]) -> std::io::Result<usize> {
        let mut b = self.batch.borrow_mut();
        if b.is_full() {
            b.flush(&self.udp);
        }
        b.push(to, data);
        Ok(data.len())
    }

    fn send_tcp(&self, to: SocketAddr, data: &[u8]) -> std::io::Result<usize> {
        let conn = self.tcp.get(&to).ok_or(std::io::ErrorKind::NotConnected)?;
        // A full queue loses the frame, as a congested UDP path would.
        conn.try_send(data.to_vec())
            .map_err(|_| std::io::ErrorKind::WouldBlock)?;
        Ok(data.len())
    }
}

/// The server's ICE candidates: UDP host addresses and ICE-TCP passive ones (maybe none).
#[derive(Debug, Clone, Default)]
pub struct Advertised {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    /// Addresses of the built-in TURN server's relays: media from them is relayed.
    pub relay_ips: Vec<std::net::IpAddr>,
    /// The certificate every transport presents (its fingerprint is in each SDP): one per
    /// process, shared by the workers.
    pub dtls: crate::dtls_identity::DtlsIdentity,
}

/// Where str0m's estimate toward a subscriber starts: one HD video track and its audio fit
/// uncapped (see `bandwidth::UNCAPPED_PER_TRACK_BPS`).
pub(crate) const BWE_INITIAL_BPS: u64 = crate::bandwidth::HD_DESIRED_BPS;
/// The (minimum, desired) rates str0m's estimator starts with, until the first allocation asks
/// for its own: what `Downlink::bwe_target` asks for a new downlink with one video track (no
/// padding, HD desired).
pub(crate) const BWE_INITIAL_TARGET: (u64, u64) = (0, BWE_INITIAL_BPS);

/// Timeouts already due that one drain handles itself before leaving the rest to the timers.
const MAX_IMMEDIATE_TIMEOUTS: u32 = 64;

/// The parts of the worker a drain needs.
pub(crate) struct Io<'a, W: Wire> {
    pub wire: &'a W,
    pub counters: &'a mut LocalCounters,
    pub outbox: &'a mut Outbox,
}

/// The str0m peer of one participant: ICE-lite with the server's candidates, RTP mode,
/// `nack_history` sent video packets kept per track for retransmissions.
pub fn new_rtc(
    advertised: &Advertised,
    nack_history: usize,
    bwe: bool,
    now: Instant,
) -> Result<Rtc, String> {
    let mut rtc = Rtc::builder()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .set_stats_interval(Some(crate::bandwidth::STATS_INTERVAL))
        // What is kept to retransmit is most of a participant's memory: str0m's default
        // (1000 packets, 3 s at 2.5 Mbit/s) held ~2.4 MB per 1:1 consultation.
        .set_send_buffer_video(nack_history)
        // Starts where an HD call is: a good link is never capped while the estimate settles.
        .enable_bwe(bwe.then(|| Bitrate::bps(BWE_INITIAL_BPS)))
        // Redundant audio (RFC 2198) where the browser offers it: a lossy downlink recovers an
        // isolated audio loss from the next packet (audio first; see `red.rs`).
        .enable_opus(true, true)
        // The worker's certificate: str0m would generate a key pair per Rtc, ~1 ms per join on
        // this (the media) thread.
        .set_dtls_cert(advertised.dtls.cert())
        .build(now);
    if bwe {
        let (min, desired) = BWE_INITIAL_TARGET;
        rtc.bwe()
            .set_bitrate(Bitrate::bps(min), Bitrate::bps(desired));
    }
    for addr in &advertised.udp {
        let c = Candidate::host(*addr, "udp")
            .map_err(|e| format!("bad candidate address {addr}: {e}"))?;
        rtc.add_local_candidate(c);
    }
    for addr in &advertised.tcp {
        let c = Candidate::builder()
            .tcp()
            .host(*addr)
            .tcptype(TcpType::Passive)
            .build()
            .map_err(|e| format!("bad candidate address {addr}: {e}"))?;
        rtc.add_local_candidate(c);
    }
    Ok(rtc)
}

impl Transport {
    /// A participant's transport around its `rtc` (see [`new_rtc`]).
    pub fn new(
        id: PeerId,
        room: u64,
        identity: String,
        role: String,
        events: tokio::sync::mpsc::Sender<PeerEvent>,
        mut rtc: Rtc,
        now: Instant,
    ) -> Self {
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        Transport {
            id,
            room,
            identity,
            role,
            muted: MuteState::default(),
            forced: MuteState::default(),
            rtc,
            ufrag,
            events,
            offered: false,
            pending: None,
            producers: Vec::new(),
            consumers: Vec::new(),
            scheduled: far_future(now),
            next_timeout: now,
            connected: false,
            last_proto: Protocol::Udp,
            last_source: None,
            lost: LostPaths::default(),
            restart_ice: false,
            ice_restarted: false,
            restart_source: None,
            downlink: Downlink::default(),
            cap_sent: None,
            bwe_target: BWE_INITIAL_TARGET,
            last_offer: None,
            candidates: CandidateBudget::default(),
            codecs: Default::default(),
            quality: Default::default(),
            video_heights: Vec::new(),
            stats_tick: 0,
            created: now,
        }
    }

    pub fn info(&self) -> ParticipantInfo {
        ParticipantInfo {
            identity: self.identity.clone(),
            role: self.role.clone(),
            muted: self.muted,
        }
    }

    /// Queues a message for the participant. When the queue is full, a rebuildable message
    /// (see [`rebuildable`]) is dropped and counted; any other faults the transport.
    pub fn emit(&self, msg: ServerMessage, outbox: &mut Outbox) {
        match self.events.try_send(PeerEvent::Message(msg)) {
            Ok(()) => {}
            Err(TrySendError::Full(PeerEvent::Message(m))) if rebuildable(&m) => {
                outbox.events_dropped += 1;
            }
            Err(TrySendError::Full(_)) => outbox.faults.push((self.id, Fault::EventOverflow)),
            // The session is gone; its Leave is on the way.
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// Tells the session it is closed (best effort: the socket closes either way).
    pub fn close_with(&self, msg: ServerMessage) {
        let _ = self.events.try_send(PeerEvent::Closed(msg));
    }

    /// Answers the participant's offer.
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, String> {
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| format!("offer does not parse: {e}"))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| format!("offer refused: {e}"))?;
        self.offered = true;
        Ok(crate::codecs::keep_offer_codec_order(
            sdp,
            &answer.to_sdp_string(),
        ))
    }

    /// Applies the answer to the server's outstanding offer.
    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), (bool, String)> {
        let answer = SdpAnswer::from_sdp_string(sdp)
            .map_err(|e| (false, format!("answer does not parse: {e}")))?;
        let pending = self
            .pending
            .take()
            .ok_or((false, "no offer is outstanding".to_owned()))?;
        self.last_offer = None;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| (true, format!("answer refused: {e}")))?;
        Ok(())
    }

    /// Adds a consumer unless this participant already receives that track.
    pub fn subscribe(&mut self, c: Consumer) -> bool {
        let live =
            |x: &Consumer| !matches!(x.state, ConsumerState::ToStop | ConsumerState::Stopping);
        if self
            .consumers
            .iter()
            .any(|x| x.source == c.source && x.source_mid == c.source_mid && live(x))
        {
            return false;
        }
        self.consumers.push(c);
        true
    }

    pub fn has_pending_offer(&self) -> bool {
        self.pending.is_some()
    }

    /// Offers what changed in the consumers, when no offer is outstanding. With `lip_sync` a
    /// publisher's audio and video share one stream id (msid), which the browser plays in sync;
    /// without, each kind has its own.
    pub fn negotiate(&mut self, outbox: &mut Outbox, lip_sync: bool) -> bool {
        // While it was asked to offer again (a codec change), its offer comes first.
        if !self.offered || self.pending.is_some() || self.codecs.reoffer_since.is_some() {
            return false;
        }
        if !self.restart_ice
            && !self
                .consumers
                .iter()
                .any(|c| matches!(c.state, ConsumerState::ToOpen | ConsumerState::ToStop))
        {
            return false;
        }
        let mut change = self.rtc.sdp_api();
        if std::mem::take(&mut self.restart_ice) {
            // Local candidates stay: the server's addresses did not change, the client's did.
            let creds = change.ice_restart(true);
            self.candidates = CandidateBudget::default();
            // The client checks the new ufrag as soon as it has our offer, before its answer
            // is back: the demux must route those checks already.
            outbox.ufrags.push((self.id, creds.ufrag.clone()));
            self.ufrag = creds.ufrag;
            self.ice_restarted = true;
            self.restart_source = self.last_source;
        }
        for c in &mut self.consumers {
            match c.state {
                ConsumerState::ToOpen => {
                    let kind = c.kind;
                    let mid = change.add_media(
                        kind,
                        Direction::SendOnly,
                        Some(match kind {
                            _ if lip_sync => format!("p{}", c.source),
                            MediaKind::Audio => format!("p{}a", c.source),
                            MediaKind::Video => format!("p{}v", c.source),
                        }),
                        None,
                        None,
                    );
                    c.mid = Some(mid);
                    c.state = ConsumerState::Negotiating;
                }
                ConsumerState::ToStop => {
                    if let Some(mid) = c.mid {
                        change.stop_media(mid);
                    }
                    c.state = ConsumerState::Stopping;
                }
                _ => {}
            }
        }
        let Some((offer, pending)) = change.apply() else {
            return false;
        };
        self.pending = Some(pending);
        let tracks = self
            .consumers
            .iter()
            .filter(|c| matches!(c.state, ConsumerState::Negotiating | ConsumerState::Active))
            .filter_map(|c| {
                Some(TrackInfo {
                    mid: c.mid?.to_string(),
                    identity: c.source_identity.clone(),
                    kind: track_kind(c.kind),
                })
            })
            .collect();
        let mut sdp = offer.to_sdp_string();
        if let Some(c) = self.codecs.directed {
            sdp = crate::codecs::put_first(&sdp, &crate::router::codecs::payload_types(self, c));
        }
        let msg = ServerMessage::Offer { sdp, tracks };
        self.last_offer = Some(msg.clone());
        self.emit(msg, outbox);
        true
    }

    /// The negotiated codec of each payload type this transport receives, and which payload
    /// types are RED around it (bit per payload type).
    pub fn codec_table(&self) -> ([Option<Codec>; 128], u128) {
        let mut t = [None; 128];
        let mut red = 0u128;
        for p in self.rtc.codec_config().params() {
            t[usize::from(*p.pt() & 0x7F)] = Some(p.spec().codec);
            if let Some(r) = p.red() {
                t[usize::from(*r & 0x7F)] = Some(p.spec().codec);
                red |= 1u128 << (*r & 0x7F);
            }
        }
        (t, red)
    }

    /// Drains the `Rtc` until it asks for a timeout: transmits go out, events to the outbox.
    pub fn drain<W: Wire>(&mut self, io: &mut Io<W>) -> Result<(), RtcError> {
        // str0m's pacer (bandwidth estimation) asks for a timeout "now" after every packet it
        // releases: those are handled here rather than through the worker's timer heap.
        let mut immediate = 0;
        loop {
            // Matched where str0m returned it: `?` and by-value bindings would each copy the
            // 520-byte `Output` (its largest variant is an event carrying an RTP packet).
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    if immediate < MAX_IMMEDIATE_TIMEOUTS {
                        let now = Instant::now();
                        if t <= now {
                            immediate += 1;
                            self.rtc.handle_input(str0m::Input::Timeout(now))?;
                            continue;
                        }
                    }
                    self.next_timeout = t;
                    return Ok(());
                }
                Ok(Output::Transmit(ref t)) => send(io, t),
                Ok(Output::Event(e)) => self.on_event(e, io),
                Err(e) => return Err(e),
            }
        }
    }

    fn on_event<W: Wire>(&mut self, e: Event, io: &mut Io<W>) {
        let outbox = &mut *io.outbox;
        let c = &mut *io.counters;
        match e {
            Event::RtpPacket(p) => outbox.rtp.push((self.id, p)),
            Event::KeyframeRequest(r) => outbox.keyframe_requests.push((self.id, r.mid)),
            // A stream's first packets also "unpause" it: only one that stopped restarts. Each
            // simulcast layer is a stream of its own: the browser pauses its top layer when its
            // estimate falls, which must not restart those who receive another layer.
            Event::StreamPaused(s) => {
                if let Some(p) = self.producers.iter_mut().find(|p| p.mid == s.mid) {
                    let layer = p.layers.layer_of(s.ssrc).unwrap_or(0);
                    let bit = 1u8 << layer;
                    let was = p.stalled & bit != 0;
                    if s.paused {
                        p.stalled |= bit;
                    } else {
                        p.stalled &= !bit;
                    }
                    if was && !s.paused {
                        // Spatial layers share the stream: all of its consumers restart.
                        let layer = (!p.layers.spatial).then_some(layer);
                        outbox.stream_resumed.push((self.id, s.mid, layer));
                    }
                }
            }
            Event::MediaAdded(m) => {
                if matches!(m.direction, Direction::RecvOnly | Direction::SendRecv) {
                    outbox.media_added.push((self.id, m.mid, m.kind));
                }
            }
            Event::Connected => {
                // The path is classified by the worker, which knows the TURN relay addresses.
                c.time_to_connect
                    .observe_duration(&CONNECT_BUCKETS, self.created.elapsed());
                outbox.connected.push(self.id);
            }
            // Consent lost: held for the reconnect grace period (the client restarts ICE).
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                c.ice_disconnected += 1;
                outbox.ice.push((self.id, false));
            }
            Event::IceConnectionStateChange(
                IceConnectionState::Connected | IceConnectionState::Completed,
            ) => outbox.ice.push((self.id, true)),
            Event::Closed => {
                c.ice_disconnected += 1;
                outbox.faults.push((self.id, Fault::Disconnected))
            }
            Event::EgressBitrateEstimate(_)
            | Event::PeerStats(_)
            | Event::MediaIngressStats(_)
            | Event::MediaEgressStats(_) => outbox.congested |= self.on_feedback(e, c),
            _ => {}
        }
    }
}

fn send<W: Wire>(io: &mut Io<W>, t: &Transmit) {
    let sent = match t.proto {
        Protocol::Udp => io.wire.send(t.destination, &t.contents),
        _ => io.wire.send_tcp(t.destination, &t.contents),
    };
    match sent {
        Ok(n) => {
            io.counters.packets_out += 1;
            io.counters.bytes_out += n as u64;
            if io.outbox.pacer.pending() > 0 {
                if let Some(d) = io.outbox.pacer.transmitted(&t.contents, Instant::now()) {
                    io.counters
                        .pacer_delay
                        .observe_duration(&crate::stats::PACER_DELAY_BUCKETS, d);
                }
            }
        }
        Err(_) => io.counters.send_errors += 1,
    }
}

pub(crate) fn track_kind(kind: MediaKind) -> TrackKind {
    if kind == MediaKind::Audio {
        TrackKind::Audio
    } else {
        TrackKind::Video
    }
}

pub(crate) fn far_future(now: Instant) -> Instant {
    now + std::time::Duration::from_secs(86_400 * 365)
}
