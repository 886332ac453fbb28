//! An in-memory network of str0m client peers ("browsers") around one `RouterHost`: no sockets,
//! no threads. Used by the routing tests and the forwarding benchmark.

#![allow(dead_code)]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use consulta_sfu::router::{Limits, RouterHost};
use consulta_sfu::transport::{Advertised, Wire};
use consulta_sfu::{Command, JoinRequest, PeerEvent, PeerId, ServerMessage};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaData, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

pub const SERVER: &str = "127.0.0.1:7882";

/// Server transmits, kept for delivery (or only counted, for benchmarks).
#[derive(Default)]
pub struct MemWire {
    pub queue: RefCell<Vec<(SocketAddr, Vec<u8>)>>,
    pub keep: std::cell::Cell<bool>,
    pub sent: std::cell::Cell<u64>,
}

impl Wire for MemWire {
    fn send(&self, to: SocketAddr, data: &[u8]) -> std::io::Result<usize> {
        self.sent.set(self.sent.get() + 1);
        if self.keep.get() {
            self.queue.borrow_mut().push((to, data.to_vec()));
        }
        Ok(data.len())
    }
}

pub struct Client {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    pub peer: PeerId,
    pub identity: String,
    pub events: tokio::sync::mpsc::Receiver<PeerEvent>,
    pub messages: Vec<ServerMessage>,
    /// The server's answers to this client's offers, as sent.
    pub answers: Vec<String>,
    /// The server's offers to this client, as sent.
    pub offers: Vec<String>,
    pub closed: Option<ServerMessage>,
    pub pending: Option<SdpPendingOffer>,
    pub media: Vec<MediaData>,
    pub keyframe_requests: usize,
    pub connected: bool,
    pub audio_mid: Option<Mid>,
    pub video_mid: Option<Mid>,
    pub outbox: Vec<(SocketAddr, Vec<u8>)>,
}

pub struct Net {
    pub host: RouterHost<&'static MemWire>,
    pub wire: &'static MemWire,
    pub clients: Vec<Client>,
    next_port: u16,
}

impl Client {
    /// Whether the server has offered this client `tracks` tracks of others in one offer.
    pub fn offered(&self, tracks: usize) -> bool {
        self.messages
            .iter()
            .any(|m| matches!(m, ServerMessage::Offer { tracks: t, .. } if t.len() == tracks))
    }
}

impl Wire for &'static MemWire {
    fn send(&self, to: SocketAddr, data: &[u8]) -> std::io::Result<usize> {
        (**self).send(to, data)
    }
}

impl Net {
    pub fn new(max_publishers: usize) -> Net {
        Net::with_limits(Limits {
            max_publishers,
            ..Limits::default()
        })
    }

    pub fn with_limits(limits: Limits) -> Net {
        let wire: &'static MemWire = Box::leak(Box::default());
        wire.keep.set(true);
        Net {
            host: RouterHost::new(
                0,
                wire,
                Advertised {
                    udp: vec![SERVER.parse().unwrap()],
                    ..Default::default()
                },
                limits,
            ),
            wire,
            clients: Vec::new(),
            next_port: 40000,
        }
    }

    /// Joins a client and sends its offer; returns its index. `publish` adds sendonly audio and
    /// video; otherwise the offer holds a data channel only.
    pub fn join(&mut self, room: &str, identity: &str, publish: bool) -> usize {
        let i = self.join_only(room, identity);
        self.offer(i, publish);
        i
    }

    /// Joins a client without offering yet.
    pub fn join_only(&mut self, room: &str, identity: &str) -> usize {
        self.join_configured(room, identity, None)
    }

    /// Joins a publishing client whose only video codecs are `video`, in that order of
    /// preference, and sends its offer. On `video-codec` it offers again (an ICE restart, as a
    /// str0m client cannot offer without a change).
    pub fn join_with_codecs(&mut self, room: &str, identity: &str, video: &[Codec]) -> usize {
        let i = self.join_configured(room, identity, Some(video));
        self.offer(i, true);
        i
    }

    fn join_configured(&mut self, room: &str, identity: &str, video: Option<&[Codec]>) -> usize {
        self.join_built(room, identity, video, false)
    }

    /// Joins a client whose Opus is offered with RED (RFC 2198) when `red`, with str0m's video
    /// codecs, and sends its offer (`publish` as in [`Net::join`]).
    pub fn join_red(&mut self, room: &str, identity: &str, red: bool, publish: bool) -> usize {
        let i = self.join_built(room, identity, None, red);
        self.offer(i, publish);
        i
    }

    fn join_built(
        &mut self,
        room: &str,
        identity: &str,
        video: Option<&[Codec]>,
        red: bool,
    ) -> usize {
        let now = Instant::now();
        let addr: SocketAddr = format!("127.0.0.1:{}", self.next_port).parse().unwrap();
        self.next_port += 1;
        let mut builder = Rtc::builder().enable_opus(true, red);
        if let Some(video) = video {
            builder = builder.clear_codecs().enable_opus(true, false);
            for c in video {
                builder = match c {
                    Codec::Vp8 => builder.enable_vp8(true),
                    Codec::H264 => builder.enable_h264(true),
                    Codec::Vp9 => builder.enable_vp9(true),
                    Codec::Av1 => builder.enable_av1(true),
                    other => panic!("no such client codec {other:?}"),
                };
            }
        }
        let mut rtc = builder.build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let peer = 1000 + self.clients.len() as u64;
        self.host.on_command(Command::Join(JoinRequest {
            peer,
            room: room.into(),
            identity: identity.into(),
            role: "patient".into(),
            events: tx,
        }));
        self.clients.push(Client {
            rtc,
            addr,
            peer,
            identity: identity.into(),
            events: rx,
            messages: Vec::new(),
            answers: Vec::new(),
            offers: Vec::new(),
            closed: None,
            pending: None,
            media: Vec::new(),
            keyframe_requests: 0,
            connected: false,
            audio_mid: None,
            video_mid: None,
            outbox: Vec::new(),
        });
        self.clients.len() - 1
    }

    /// Sends client `i`'s one offer.
    pub fn offer(&mut self, i: usize, publish: bool) {
        let c = &mut self.clients[i];
        let peer = c.peer;
        let mut change = c.rtc.sdp_api();
        if publish {
            c.audio_mid =
                Some(change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
            c.video_mid =
                Some(change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None));
        } else {
            change.add_channel("consulta".into());
        }
        let (offer, pending) = change.apply().expect("an offer");
        c.pending = Some(pending);
        let sdp = offer.to_sdp_string();
        self.host.on_command(Command::Offer { peer, sdp });
    }

    /// Joins a client that publishes VP8 video as simulcast layers `rids` (low to high) and
    /// audio, and sends its offer.
    pub fn join_simulcast(&mut self, room: &str, identity: &str, rids: &[&str]) -> usize {
        let i = self.join_only(room, identity);
        let c = &mut self.clients[i];
        let peer = c.peer;
        let mut sim = str0m::media::Simulcast::new();
        for rid in rids {
            sim.add_send_layer(str0m::media::SimulcastLayer::new(rid));
        }
        let mut change = c.rtc.sdp_api();
        c.audio_mid =
            Some(change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
        c.video_mid =
            Some(change.add_media(MediaKind::Video, Direction::SendOnly, None, None, Some(sim)));
        let (offer, pending) = change.apply().expect("an offer");
        c.pending = Some(pending);
        let sdp = offer.to_sdp_string();
        self.host.on_command(Command::Offer { peer, sdp });
        i
    }

    /// Writes one VP8 frame on simulcast layer `rid` of client `i`.
    pub fn write_layer(&mut self, i: usize, rid: &str, time: MediaTime, data: &[u8]) {
        let pt = self.video_pt(i, Codec::Vp8);
        let c = &mut self.clients[i];
        let mid = c.video_mid.expect("video published");
        let w = c
            .rtc
            .writer(mid)
            .expect("writer")
            .rid(str0m::media::Rid::from(rid));
        w.write(pt, Instant::now(), time, data.to_vec()).unwrap();
        drain_client(c, Instant::now());
    }

    /// The payload type client `i` sends its video in with `codec`.
    pub fn video_pt(&mut self, i: usize, codec: Codec) -> Pt {
        let c = &mut self.clients[i];
        let mid = c.video_mid.expect("video published");
        c.rtc
            .writer(mid)
            .expect("writer")
            .payload_params()
            .find(|p| p.spec().codec == codec)
            .expect("codec negotiated")
            .pt()
    }

    /// Settles until every client is connected and `subscriber` was offered `tracks` tracks of
    /// others (its answer applied).
    pub fn until_offered(&mut self, subscriber: usize, tracks: usize) {
        self.until(10, "all connected", |n| {
            n.clients.iter().all(|c| c.connected)
        });
        self.until(10, "the consumer offer", |n| {
            n.clients[subscriber].offered(tracks)
        });
        self.settle(20);
    }

    pub fn leave(&mut self, i: usize) {
        let peer = self.clients[i].peer;
        self.host.on_command(Command::Leave {
            peer,
            reason: consulta_signaling::protocol::LeaveReason::Left,
        });
    }

    /// Moves signaling and packets until nothing is left to move (or `max` rounds).
    pub fn settle(&mut self, max: usize) {
        for _ in 0..max {
            if !self.step() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// One round of signaling, timers and packets in both directions; whether anything moved.
    pub fn step(&mut self) -> bool {
        self.step_at(Instant::now())
    }

    /// [`Net::step`] at `now`, for a caller that keeps its own clock (never going back).
    pub fn step_at(&mut self, now: Instant) -> bool {
        let mut moved = false;
        self.host.fire_timers(now);
        // Signaling.
        for i in 0..self.clients.len() {
            while let Ok(ev) = self.clients[i].events.try_recv() {
                moved = true;
                self.on_event(i, ev);
            }
        }
        // Client output.
        for i in 0..self.clients.len() {
            drain_client(&mut self.clients[i], now);
            moved |= self.deliver_from(i, now);
        }
        // Server output.
        let queued = std::mem::take(&mut *self.wire.queue.borrow_mut());
        for (to, data) in queued {
            moved = true;
            if let Some(c) = self.clients.iter_mut().find(|c| c.addr == to) {
                let input = Input::Receive(
                    now,
                    Receive {
                        proto: Protocol::Udp,
                        source: SERVER.parse().unwrap(),
                        destination: to,
                        contents: data.as_slice().try_into().unwrap(),
                    },
                );
                if c.rtc.is_alive() {
                    c.rtc.handle_input(input).unwrap();
                    drain_client(c, now);
                }
            }
        }
        moved
    }

    /// Settles until `cond` holds; panics after `secs`.
    pub fn until(&mut self, secs: u64, what: &str, mut cond: impl FnMut(&Net) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.settle(5);
            self.host.housekeeping(Instant::now());
        }
    }

    fn on_event(&mut self, i: usize, ev: PeerEvent) {
        let c = &mut self.clients[i];
        match ev {
            PeerEvent::Message(ServerMessage::Answer { sdp }) => {
                c.answers.push(sdp.clone());
                let answer = SdpAnswer::from_sdp_string(&sdp).unwrap();
                let pending = c.pending.take().expect("client offered");
                c.rtc.sdp_api().accept_answer(pending, answer).unwrap();
            }
            PeerEvent::Message(ServerMessage::Offer { sdp, tracks }) => {
                let offer = SdpOffer::from_sdp_string(&sdp).unwrap();
                let answer = c.rtc.sdp_api().accept_offer(offer).unwrap();
                c.offers.push(sdp);
                c.messages.push(ServerMessage::Offer {
                    sdp: String::new(),
                    tracks,
                });
                let peer = c.peer;
                self.host.on_command(Command::Answer {
                    peer,
                    sdp: answer.to_sdp_string(),
                });
            }
            PeerEvent::Message(m @ ServerMessage::VideoCodec { .. }) => {
                c.messages.push(m);
                let mut change = c.rtc.sdp_api();
                change.ice_restart(true);
                let (offer, pending) = change.apply().expect("an offer");
                c.pending = Some(pending);
                let peer = c.peer;
                let sdp = offer.to_sdp_string();
                self.host.on_command(Command::Offer { peer, sdp });
            }
            PeerEvent::Message(m) => c.messages.push(m),
            PeerEvent::Closed(m) => c.closed = Some(m),
        }
    }

    /// Writes one frame from client `i`.
    pub fn write(&mut self, i: usize, kind: MediaKind, codec: Codec, time: MediaTime, data: &[u8]) {
        let c = &mut self.clients[i];
        let mid = if kind == MediaKind::Audio {
            c.audio_mid
        } else {
            c.video_mid
        }
        .expect("publishes");
        let w = c.rtc.writer(mid).expect("writer");
        let pt = w
            .payload_params()
            .find(|p| p.spec().codec == codec)
            .expect("codec negotiated")
            .pt();
        w.write(pt, Instant::now(), time, data.to_vec()).unwrap();
        drain_client(c, Instant::now());
    }

    /// Writes VP8 frame `n` of `len` bytes (timestamp 3000·n at 90 kHz) from client `i`;
    /// returns the frame.
    pub fn write_vp8(&mut self, i: usize, n: u32, keyframe: bool, len: usize) -> Vec<u8> {
        let frame = vp8_frame(keyframe, n, len);
        let time = MediaTime::from_90khz(3000 * u64::from(n));
        self.write(i, MediaKind::Video, Codec::Vp8, time, &frame);
        frame
    }

    /// Hands client `i`'s queued datagrams to the server, received at `now`; whether there
    /// were any.
    pub fn deliver_from(&mut self, i: usize, now: Instant) -> bool {
        let out = std::mem::take(&mut self.clients[i].outbox);
        let (peer, addr) = (self.clients[i].peer, self.clients[i].addr);
        for (_, data) in &out {
            self.host.on_datagram(peer, Protocol::Udp, addr, data, now);
        }
        !out.is_empty()
    }

    /// Loses on the way the RTP datagrams queued for client `to` whose payload type is `pt` (any
    /// when `None`) and that are longer than `min_len`, waiting up to 500 ms for one (the pacer
    /// may hold a packet for a few milliseconds); returns how many were lost.
    pub fn lose_queued_rtp(&mut self, to: usize, pt: Option<u8>, min_len: usize) -> usize {
        let to = self.clients[to].addr;
        // SRTP leaves the RTP header in clear: version 2, and not one of RTCP's types 200..=206.
        let rtp = |d: &[u8]| {
            d.len() > min_len
                && d[0] >> 6 == 2
                && !(200..=206).contains(&d[1])
                && pt.is_none_or(|pt| d[1] & 0x7F == pt)
        };
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            self.host.fire_timers(Instant::now());
            let queued = self.wire.queue.borrow();
            if queued.iter().any(|(dst, d)| *dst == to && rtp(d)) || Instant::now() > deadline {
                break;
            }
            drop(queued);
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut queue = self.wire.queue.borrow_mut();
        let before = queue.len();
        queue.retain(|(dst, d)| !(*dst == to && rtp(d)));
        before - queue.len()
    }

    pub fn received(&self, i: usize, kind: MediaKind) -> Vec<&MediaData> {
        self.clients[i]
            .media
            .iter()
            .filter(|m| m.params.spec().codec.kind() == kind)
            .collect()
    }
}

fn drain_client(c: &mut Client, now: Instant) {
    loop {
        match c.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                if t <= now {
                    c.rtc.handle_input(Input::Timeout(now)).unwrap();
                    continue;
                }
                return;
            }
            Ok(Output::Transmit(t)) => c.outbox.push((t.destination, t.contents.to_vec())),
            Ok(Output::Event(e)) => match e {
                Event::MediaData(m) => c.media.push(m),
                Event::KeyframeRequest(_) => c.keyframe_requests += 1,
                Event::Connected => c.connected = true,
                _ => {}
            },
            Err(e) => panic!("client rtc failed: {e}"),
        }
    }
}

/// A VP8 frame: keyframes have bit 0 of the first byte clear.
pub fn vp8_frame(keyframe: bool, n: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0] = if keyframe { 0x10 } else { 0x11 };
    if keyframe {
        f[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
    }
    f[len - 4..].copy_from_slice(&n.to_be_bytes());
    f
}
