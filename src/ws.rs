//! One participant's signaling session on `/ws`: the state machine from `join` to goodbye.
//!
//! ```text
//! connected ──join (token ok)──► entered ──admitted──► joined (media) ──leave/close──► gone
//!                                   │ waiting room: `waiting` until a doctor or the API admits
//! ```
//!
//! The session validates the join token, asks the consultation service to enter the room
//! (waiting room, closed consultations), pins the room to a media worker (`RoomLease`), turns
//! client frames into `Command`s for that worker and the worker's `PeerEvent`s into frames, and
//! reports presence to the consultation service. It enforces the protocol's limits (frame size,
//! message rate, join and idle timeouts) with stable error codes, and never logs tokens,
//! identities or SDP at info level.

use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use consulta_sfu::{Command, JoinRequest, PeerEvent, PeerId, RoomLease};
use consulta_signaling::protocol::{
    ClientMessage, ErrorCode, LeaveReason, ParticipantInfo, ServerMessage,
};
use consulta_signaling::PROTOCOL_VERSION;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::consultations::{Admission, Request as Svc, SessionControl};
use crate::server::AppState;

mod enter;
mod events;
use enter::{enter, join_media};

const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a closed session keeps reading, waiting for the client's answer to its close.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Events a worker may queue for one session before it is considered stuck.
const EVENT_QUEUE: usize = 256;
/// Pings a client that promised a heartbeat may miss before its connection is taken for lost.
const HEARTBEATS_MISSED: u32 = 4;
/// Messages kept for a held session before it is given up.
const HELD_MESSAGES: usize = 512;
/// How long past the grace period a held session waits for the worker's word before it ends.
const HELD_MARGIN: Duration = Duration::from_secs(10);
/// Token bucket: sustained messages per second and burst.
const RATE_PER_SEC: f64 = 50.0;
const RATE_BURST: f64 = 100.0;
/// Messages refused for rate in a row before the socket is closed.
const RATE_STRIKES: u32 = 200;

/// Who this session is, once its token is accepted.
struct Entered {
    peer: PeerId,
    room: String,
    identity: String,
    role: String,
    control: mpsc::Receiver<SessionControl>,
    /// Cluster mode: keeps the room hosted on this node while the session lives.
    _host: Option<crate::cluster::HostGuard>,
}

/// The media side of a session, once admitted.
struct Joined {
    lease: RoomLease,
    events: mpsc::Receiver<PeerEvent>,
}

struct Session {
    entered: Option<Entered>,
    joined: Option<Joined>,
    /// Why the session ends, for the worker and the call events.
    reason: LeaveReason,
    /// The worker removed this participant already.
    worker_done: bool,
    /// The consultation service was told the session is over (see `gone`).
    told_gone: bool,
    /// Set once in a call: the secret a resume must show, and where a resuming connection
    /// arrives.
    resume: Option<Resumable>,
    /// Set while the session has no connection (it waits for a resume).
    held: Option<Held>,
    /// The client's promised ping interval, if any.
    heartbeat: Option<Duration>,
    /// The address the connection comes from (see `JoinLimits::client_addr`).
    source: std::net::IpAddr,
}

/// One WebSocket of a session. A session in a call outlives the connection it started on: when
/// that one dies without a goodbye, a resume brings the next.
pub struct Link {
    sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
}

/// What the registry keeps of a session that can be resumed.
pub struct ResumeSlot {
    secret: String,
    takeover: mpsc::Sender<Link>,
}

/// Sessions that can be resumed, by session id (shared by every connection).
pub type ResumeRegistry =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<PeerId, ResumeSlot>>>;

struct Resumable {
    secret: String,
    takeover: mpsc::Receiver<Link>,
}

struct Held {
    since: Instant,
    /// What the worker and the consultation said meanwhile, for the next connection.
    pending: Vec<ServerMessage>,
}

struct Limiter {
    tokens: f64,
    last: Instant,
    strikes: u32,
}

impl Limiter {
    fn allow(&mut self, now: Instant) -> bool {
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * RATE_PER_SEC).min(RATE_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            true
        } else {
            self.strikes += 1;
            false
        }
    }
}

enum Flow {
    Continue,
    Close,
    /// This connection resumes another session: hand it over.
    Handover(mpsc::Sender<Link>),
}

pub async fn run_session(
    socket: WebSocket,
    state: AppState,
    url_room: Option<String>,
    source: std::net::IpAddr,
) {
    let _open = crate::metrics::WsGuard::open();
    let (sink, stream) = socket.split();
    let mut link = Some(Link { sink, stream });
    let started = Instant::now();
    let mut last_seen = Instant::now();
    let mut s = Session {
        entered: None,
        joined: None,
        reason: LeaveReason::Disconnected,
        worker_done: false,
        told_gone: false,
        resume: None,
        held: None,
        heartbeat: None,
        source,
    };
    let mut limiter = Limiter {
        tokens: RATE_BURST,
        last: Instant::now(),
        strikes: 0,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut shutdown = state.shutdown.clone();
    // Fresh TURN credentials are pushed before the ones handed out expire.
    let mut ice_issued = Instant::now();

    loop {
        let frame = async {
            match link.as_mut() {
                Some(l) => l.stream.next().await,
                None => std::future::pending().await,
            }
        };
        let event = async {
            match s.joined.as_mut() {
                Some(j) => j.events.recv().await,
                None => std::future::pending().await,
            }
        };
        let control = async {
            match s.entered.as_mut() {
                Some(e) => e.control.recv().await,
                None => std::future::pending().await,
            }
        };
        let takeover = async {
            match s.resume.as_mut() {
                Some(r) => r.takeover.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = frame => {
                let Some(l) = link.as_mut() else { continue };
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        if send(&mut l.sink, &ServerMessage::error(ErrorCode::BadMessage, "binary frames are not part of the protocol")).await.is_err() {
                            if hold(&state, &mut s, &mut link) { continue }
                            break;
                        }
                        continue;
                    }
                    // A normal close (1000: the SDK is done) or a page that goes away (1001:
                    // its tab closed) is a goodbye. Any other close is not: 4000 is the SDK
                    // dropping a socket it gave up on while it reconnects; it is held like a
                    // connection that died.
                    Some(Ok(Message::Close(frame))) => {
                        if frame.is_none_or(|f| matches!(f.code, 1000 | 1001)) { break }
                        if hold(&state, &mut s, &mut link) { continue }
                        break;
                    }
                    Some(Ok(_)) => continue,
                    // The connection died without a goodbye: a network change, a proxy restart.
                    Some(Err(_)) | None => {
                        if hold(&state, &mut s, &mut link) { continue }
                        break;
                    }
                };
                last_seen = Instant::now();
                if !limiter.allow(Instant::now()) {
                    if limiter.strikes >= RATE_STRIKES {
                        let _ = send(&mut l.sink, &ServerMessage::Error { code: ErrorCode::RateLimited, message: "too many messages; closing".into(), fatal: true }).await;
                        break;
                    }
                    if limiter.strikes == 1 && send(&mut l.sink, &ServerMessage::error(ErrorCode::RateLimited, "more than 50 messages per second; messages are being dropped")).await.is_err() {
                        break;
                    }
                    continue;
                }
                match ClientMessage::parse(text.as_str()) {
                    Err((code, message)) => {
                        if send(&mut l.sink, &ServerMessage::error(code, message)).await.is_err() { break }
                    }
                    Ok(msg) => {
                        match on_client(msg, &state, url_room.as_deref(), &mut s, &mut l.sink).await {
                            Flow::Continue => {}
                            Flow::Close => break,
                            Flow::Handover(to) => {
                                // This connection now serves the session it resumed.
                                let Some(l) = link.take() else { return };
                                if let Err(e) = to.try_send(l) {
                                    let mut l = match e {
                                        mpsc::error::TrySendError::Full(l) | mpsc::error::TrySendError::Closed(l) => l,
                                    };
                                    let _ = send(&mut l.sink, &resume_refused()).await;
                                    let _ = l.sink.close().await;
                                }
                                return;
                            }
                        }
                    }
                }
            }
            new = takeover => {
                let Some(new) = new else { continue };
                // The old connection (dead, or half-open after a network change) is dropped.
                link = Some(new);
                last_seen = Instant::now();
                let buffered = s.held.take().map(|h| h.pending).unwrap_or_default();
                let (Some(e), Some(j)) = (&s.entered, &s.joined) else { continue };
                tracing::info!(peer = e.peer, "session resumed on a new connection");
                crate::metrics::SIGNALING.resumed();
                let peer = e.peer;
                // What the worker said while the session was away goes first, then fresh TURN
                // credentials, then the worker's `resumed` and any offer it repeats.
                let mut failed = false;
                if let Some(l) = link.as_mut() {
                    for msg in buffered {
                        if send(&mut l.sink, &msg).await.is_err() { failed = true; break }
                    }
                }
                if !failed && state.turn.is_some() {
                    ice_issued = Instant::now();
                    let msg = ServerMessage::IceServers { ice_servers: state.ice_servers(&e.room, &e.identity) };
                    if let Some(l) = link.as_mut() {
                        failed = send(&mut l.sink, &msg).await.is_err();
                    }
                }
                if state.sfu.send(j.lease.worker(), Command::Resume { peer }).is_err() {
                    if let Some(l) = link.as_mut() { let _ = send(&mut l.sink, &busy()).await; }
                    break;
                }
                if failed && !hold(&state, &mut s, &mut link) { break }
            }
            ev = event => {
                match ev {
                    Some(PeerEvent::Message(mut msg)) => {
                        if let ServerMessage::Joined { ice_servers, resume_secret, node, .. } = &mut msg {
                            *node = state.cluster.as_ref().map(|c| c.node_id().to_owned());
                            if let Some(e) = &s.entered { *ice_servers = state.ice_servers(&e.room, &e.identity); }
                            ice_issued = Instant::now();
                            *resume_secret = s.resume.as_ref().map(|r| r.secret.clone());
                            if let Some(e) = &s.entered {
                                state.consultations.request(Svc::Joined {
                                    room: e.room.clone(), role: e.role.clone(), session: e.peer.to_string(),
                                }).await;
                            }
                        }
                        if let Some(r) = s.entered.as_ref().and_then(|e| events::call_event(&msg, &e.room, &e.identity)) {
                            state.consultations.request(r).await;
                        }
                        if !deliver(&state, &mut s, &mut link, msg).await { break }
                    }
                    Some(PeerEvent::Closed(msg)) => {
                        // The worker has already removed this participant.
                        s.worker_done = true;
                        if let ServerMessage::Error { code, .. } = &msg {
                            match code {
                                ErrorCode::SessionReplaced => s.reason = LeaveReason::Replaced,
                                ErrorCode::ConnectionLost => s.reason = LeaveReason::Lost,
                                _ => {}
                            }
                        }
                        if let Some(l) = link.as_mut() { let _ = send(&mut l.sink, &msg).await; }
                        break;
                    }
                    // The worker is gone without closing this participant: it panicked (see
                    // `consulta_sfu::Sfu`). The client joins again; the room moves to a live
                    // worker.
                    None => {
                        if !s.worker_done {
                            s.worker_done = true;
                            s.reason = LeaveReason::MediaLost;
                            if let Some(l) = link.as_mut() {
                                let _ = send(&mut l.sink, &ServerMessage::error(ErrorCode::MediaLost, "the media worker of this call failed; join again")).await;
                            }
                        }
                        break;
                    }
                }
            }
            ctl = control => {
                let Some(ctl) = ctl else { continue };
                match ctl {
                    SessionControl::Admitted => {
                        if s.joined.is_none() {
                            let Some(l) = link.as_mut() else { break };
                            if let Flow::Close = join_media(&state, &mut s, &mut l.sink).await { break }
                        }
                    }
                    SessionControl::Waiting { identity, role } => {
                        let participant = ParticipantInfo { identity, role, muted: Default::default() };
                        if !deliver(&state, &mut s, &mut link, ServerMessage::ParticipantWaiting { participant }).await { break }
                    }
                    SessionControl::Kick => {
                        s.reason = LeaveReason::Kicked;
                        if let Some(l) = link.as_mut() { let _ = send(&mut l.sink, &ServerMessage::error(ErrorCode::Kicked, "you were removed from the consultation")).await; }
                        break;
                    }
                    SessionControl::Recording(rec) => {
                        if !deliver(&state, &mut s, &mut link, ServerMessage::Recording(rec)).await { break }
                    }
                    SessionControl::Moved { url, node } => {
                        s.reason = LeaveReason::Moved;
                        if let Some(l) = link.as_mut() { let _ = send(&mut l.sink, &ServerMessage::Moved { url, node }).await; }
                        break;
                    }
                    SessionControl::End => {
                        s.reason = LeaveReason::Ended;
                        if let Some(l) = link.as_mut() { let _ = send(&mut l.sink, &ServerMessage::error(ErrorCode::CallEnded, "the consultation was ended")).await; }
                        break;
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if s.entered.is_none() && now.duration_since(started) > JOIN_TIMEOUT {
                    if let Some(l) = link.as_mut() { let _ = send(&mut l.sink, &ServerMessage::error(ErrorCode::JoinTimeout, "no join within 10 seconds")).await; }
                    break;
                }
                match (&s.held, link.as_mut()) {
                    (Some(h), _) => {
                        // The worker ends a held session after the grace period; this is the
                        // net under it (a worker that never answers).
                        if now.duration_since(h.since) > state.reconnect_grace + HELD_MARGIN {
                            s.reason = LeaveReason::Lost;
                            break;
                        }
                    }
                    (None, Some(l)) => {
                        let silent = now.duration_since(last_seen);
                        if s.heartbeat.is_some_and(|hb| silent > hb * HEARTBEATS_MISSED) && s.resume.is_some() {
                            // Half-open after a network change: hold it; the client resumes.
                            if hold(&state, &mut s, &mut link) { continue }
                            break;
                        }
                        if silent > IDLE_TIMEOUT {
                            let _ = send(&mut l.sink, &ServerMessage::error(ErrorCode::IdleTimeout, "nothing received for 60 seconds")).await;
                            break;
                        }
                        if s.joined.is_some() {
                            if let Some(ttl) = state.turn.as_ref().map(|t| t.config.credential_ttl) {
                                if now.duration_since(ice_issued) >= renew_after(ttl) {
                                    ice_issued = now;
                                    let msg = ServerMessage::IceServers { ice_servers: s.entered.as_ref().map(|e| state.ice_servers(&e.room, &e.identity)).unwrap_or_default() };
                                    if send(&mut l.sink, &msg).await.is_err() && !hold(&state, &mut s, &mut link) { break }
                                }
                            }
                        }
                    }
                    (None, None) => break,
                }
            }
            _ = shutdown.changed() => {
                if let Some(l) = link.as_mut() { let _ = send(&mut l.sink, &ServerMessage::error(ErrorCode::ServerDraining, "the server is shutting down")).await; }
                break;
            }
        }
    }
    if let Some(e) = &s.entered {
        state
            .resumable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&e.peer);
    }
    if let (Some(j), Some(e)) = (&s.joined, &s.entered) {
        if !s.worker_done {
            leave(&state, j, e.peer, s.reason);
        }
    }
    gone(&state, &mut s).await;
    let Some(Link {
        mut sink,
        mut stream,
    }) = link
    else {
        return;
    };
    let _ = sink.close().await;
    // Read what the client still sends until it answers the close, for a moment at most: a
    // socket closed with unread data is reset by the kernel, and a reset drops what was not yet
    // delivered to the client, the error that says why it was closed included.
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Sends a worker or consultation message to the client, or keeps it for the next connection
/// while the session is held. False when the session must end (held with too much pending).
async fn deliver(
    state: &AppState,
    s: &mut Session,
    link: &mut Option<Link>,
    msg: ServerMessage,
) -> bool {
    if let Some(l) = link.as_mut() {
        if send(&mut l.sink, &msg).await.is_ok() {
            return true;
        }
        // The connection died under this message: it is the first one the next gets.
        if !hold(state, s, link) {
            return false;
        }
    }
    let Some(h) = s.held.as_mut() else {
        return false;
    };
    if h.pending.len() >= HELD_MESSAGES {
        tracing::warn!("a held session queued too much; ending it");
        s.reason = LeaveReason::Lost;
        return false;
    }
    h.pending.push(msg);
    true
}

/// The connection is lost: a session in a call is held for the reconnect grace period (the
/// worker tells the room it is reconnecting). False when it cannot be held and must end.
fn hold(state: &AppState, s: &mut Session, link: &mut Option<Link>) -> bool {
    *link = None;
    if s.held.is_some() {
        return true;
    }
    let (Some(e), Some(j)) = (&s.entered, &s.joined) else {
        return false;
    };
    if s.worker_done || s.resume.is_none() || state.reconnect_grace.is_zero() {
        return false;
    }
    if state
        .sfu
        .send(j.lease.worker(), Command::Hold { peer: e.peer })
        .is_err()
    {
        return false;
    }
    tracing::info!(
        peer = e.peer,
        "signaling connection lost; holding the session"
    );
    s.held = Some(Held {
        since: Instant::now(),
        pending: Vec::new(),
    });
    true
}

/// When TURN credentials valid `ttl` seconds are renewed: five minutes before they expire, or
/// half-way through a short lifetime.
fn renew_after(ttl: u64) -> Duration {
    Duration::from_secs(ttl - (ttl / 2).min(300))
}

fn unsupported_version() -> ServerMessage {
    ServerMessage::error(
        ErrorCode::UnsupportedVersion,
        consulta_signaling::session::UNSUPPORTED_VERSION,
    )
}

fn resume_refused() -> ServerMessage {
    ServerMessage::error(
        ErrorCode::ResumeRefused,
        "no session to resume: it ended, or the secret does not match; join again",
    )
}

async fn on_client(
    msg: ClientMessage,
    state: &AppState,
    url_room: Option<&str>,
    s: &mut Session,
    sink: &mut (impl SinkExt<Message> + Unpin),
) -> Flow {
    use consulta_signaling::session::{gate, Context, Gate, Phase};
    let phase = match (&s.entered, &s.joined) {
        (None, _) => Phase::Connected,
        (Some(_), None) => Phase::Waiting,
        (Some(_), Some(_)) => Phase::InCall,
    };
    let cx = Context {
        // In cluster mode a draining node still serves the rooms it hosts; `enter` decides.
        refuses_joins: state.cluster.is_none()
            && state.draining.load(std::sync::atomic::Ordering::Relaxed),
        doctor: s.entered.as_ref().is_some_and(|e| e.role == "doctor"),
    };
    match (gate(phase, &msg, cx), msg) {
        (Gate::Ignore, _) => Flow::Continue,
        (Gate::Pong, _) => flow(send(sink, &ServerMessage::Pong).await),
        (Gate::Refuse(code, text), _) => {
            let sent = send(sink, &ServerMessage::error(code, text)).await;
            if code.is_fatal() {
                Flow::Close
            } else {
                flow(sent)
            }
        }
        (
            Gate::Enter,
            ClientMessage::Join {
                v,
                token,
                room,
                client,
            },
        ) => {
            // A heartbeat faster than 0.5 s or slower than 10 s is not one to judge by.
            s.heartbeat = client
                .heartbeat_ms
                .filter(|ms| (500..=10_000).contains(ms))
                .map(Duration::from_millis);
            enter(state, url_room, s, sink, v, &token, room, client.sdk).await
        }
        (
            Gate::Resume,
            ClientMessage::Resume {
                session_id, secret, ..
            },
        ) => match find_resumable(state, &session_id, &secret) {
            Some(to) => Flow::Handover(to),
            None => {
                let _ = send(sink, &resume_refused()).await;
                Flow::Close
            }
        },
        (Gate::Leave, _) => {
            s.reason = LeaveReason::Left;
            // The worker hears it before the client does: a client that then closes its peer
            // connection must not be taken for one that dropped (`disconnected`).
            if let (Some(j), Some(e)) = (&s.joined, &s.entered) {
                if !s.worker_done {
                    leave(state, j, e.peer, LeaveReason::Left);
                    s.worker_done = true;
                }
            }
            gone(state, s).await;
            let _ = send(sink, &ServerMessage::Left).await;
            Flow::Close
        }
        (Gate::Consent, ClientMessage::RecordingConsent { consent }) => {
            // Consent counts in the waiting room too: it is asked before the call is joined.
            if let Some(e) = s.entered.as_ref() {
                state
                    .consultations
                    .request(Svc::Consent {
                        room: e.room.clone(),
                        identity: e.identity.clone(),
                        session: e.peer.to_string(),
                        consent,
                    })
                    .await;
            }
            Flow::Continue
        }
        (Gate::Admit, ClientMessage::Admit { identity }) => {
            let Some(e) = s.entered.as_ref() else {
                return Flow::Continue;
            };
            let (room, by) = (e.room.clone(), e.identity.clone());
            let ok = state
                .consultations
                .ask(|reply| Svc::Admit {
                    room,
                    identity,
                    by,
                    reply,
                })
                .await
                .unwrap_or(false);
            if ok {
                return Flow::Continue;
            }
            flow(
                send(
                    sink,
                    &ServerMessage::error(
                        ErrorCode::ParticipantNotWaiting,
                        "nobody by that identity is waiting",
                    ),
                )
                .await,
            )
        }
        (Gate::Media, msg) => {
            let (Some(j), Some(e)) = (s.joined.as_ref(), s.entered.as_ref()) else {
                return Flow::Continue;
            };
            let peer = e.peer;
            let cmd = match msg {
                ClientMessage::Offer { sdp } => Command::Offer { peer, sdp },
                ClientMessage::Answer { sdp } => Command::Answer { peer, sdp },
                ClientMessage::Candidate { candidate } => Command::Candidate { peer, candidate },
                ClientMessage::RestartIce => Command::RestartIce { peer },
                ClientMessage::Mute { kind, muted } => Command::Mute { peer, kind, muted },
                ClientMessage::VideoSize { identity, size } => Command::VideoSize {
                    peer,
                    identity,
                    size,
                },
                ClientMessage::VideoLayers { heights } => Command::VideoLayers { peer, heights },
                _ => return Flow::Continue,
            };
            if state.sfu.send(j.lease.worker(), cmd).is_err() {
                let _ = send(sink, &busy()).await;
                return Flow::Close;
            }
            Flow::Continue
        }
        // A gate always comes with the message it was decided for.
        _ => Flow::Continue,
    }
}

/// 256 random bits, hex: what a resume must show besides the session id (the join token may
/// be shared or leaked; this secret went only to the session's own connection).
fn new_resume_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

/// The session `session_id` if it is live and `secret` is its own (compared in constant time).
fn find_resumable(state: &AppState, session_id: &str, secret: &str) -> Option<mpsc::Sender<Link>> {
    let peer: PeerId = session_id.parse().ok()?;
    let slots = state.resumable.lock().unwrap_or_else(|p| p.into_inner());
    let slot = slots.get(&peer)?;
    constant_time_eq(slot.secret.as_bytes(), secret.as_bytes()).then(|| slot.takeover.clone())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Tells the worker the participant is gone. The queue may be momentarily full: retry briefly in
/// the background so no ghost participant stays behind.
fn leave(state: &AppState, j: &Joined, peer: PeerId, reason: LeaveReason) {
    let (sfu, worker) = (state.sfu.clone(), j.lease.worker());
    if sfu.send(worker, Command::Leave { peer, reason }).is_ok() {
        return;
    }
    tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if sfu.send(worker, Command::Leave { peer, reason }).is_ok() {
                return;
            }
        }
        tracing::error!(peer, "could not deliver a leave to the media worker");
    });
}

/// Tells the consultation service the session is over (its `participant_left`), once. A
/// session that leaves says so before its client hears `left`: a join that client makes next is
/// then stored after this leave, and is not taken for a second session of the same identity.
async fn gone(state: &AppState, s: &mut Session) {
    if s.told_gone {
        return;
    }
    let Some(e) = &s.entered else { return };
    s.told_gone = true;
    // Removed from the call: its TURN credentials stop making allocations.
    if matches!(s.reason, LeaveReason::Kicked | LeaveReason::Ended) {
        state.revoke_turn(&e.room, &e.identity);
    }
    let reason = serde_json::to_value(s.reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    state
        .consultations
        .request(Svc::Gone {
            room: e.room.clone(),
            identity: e.identity.clone(),
            session: e.peer.to_string(),
            reason,
        })
        .await;
}

fn busy() -> ServerMessage {
    ServerMessage::error(
        ErrorCode::ServerBusy,
        "the media server is overloaded; try again",
    )
}

fn flow<E>(r: Result<(), E>) -> Flow {
    if r.is_ok() {
        Flow::Continue
    } else {
        Flow::Close
    }
}

async fn send<S: SinkExt<Message> + Unpin>(
    sink: &mut S,
    msg: &ServerMessage,
) -> Result<(), S::Error> {
    if let ServerMessage::Error { code, .. } = msg {
        crate::metrics::SIGNALING.error_sent(*code);
    }
    sink.send(Message::Text(msg.to_json().into())).await
}
