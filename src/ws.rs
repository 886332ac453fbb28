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
use consulta_signaling::{JoinToken, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::consultations::{Admission, Request as Svc, SessionControl};
use crate::server::AppState;

const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a closed session keeps reading, waiting for the client's answer to its close.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Events a worker may queue for one session before it is considered stuck.
const EVENT_QUEUE: usize = 256;
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
}

pub async fn run_session(socket: WebSocket, state: AppState, url_room: Option<String>) {
    let _open = crate::metrics::WsGuard::open();
    let (mut sink, mut stream) = socket.split();
    let started = Instant::now();
    let mut last_seen = Instant::now();
    let mut s = Session {
        entered: None,
        joined: None,
        reason: LeaveReason::Disconnected,
        worker_done: false,
    };
    let mut limiter = Limiter {
        tokens: RATE_BURST,
        last: Instant::now(),
        strikes: 0,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut shutdown = state.shutdown.clone();

    loop {
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
        tokio::select! {
            frame = stream.next() => {
                let Some(Ok(frame)) = frame else { break };
                last_seen = Instant::now();
                let text = match frame {
                    Message::Text(t) => t,
                    Message::Binary(_) => {
                        if send(&mut sink, &ServerMessage::error(ErrorCode::BadMessage, "binary frames are not part of the protocol")).await.is_err() { break }
                        continue;
                    }
                    Message::Close(_) => break,
                    _ => continue,
                };
                if !limiter.allow(Instant::now()) {
                    if limiter.strikes >= RATE_STRIKES {
                        let _ = send(&mut sink, &ServerMessage::Error { code: ErrorCode::RateLimited, message: "too many messages; closing".into(), fatal: true }).await;
                        break;
                    }
                    if limiter.strikes == 1 && send(&mut sink, &ServerMessage::error(ErrorCode::RateLimited, "more than 50 messages per second; messages are being dropped")).await.is_err() {
                        break;
                    }
                    continue;
                }
                match ClientMessage::parse(text.as_str()) {
                    Err((code, message)) => {
                        if send(&mut sink, &ServerMessage::error(code, message)).await.is_err() { break }
                    }
                    Ok(msg) => {
                        if let Flow::Close = on_client(msg, &state, url_room.as_deref(), &mut s, &mut sink).await { break }
                    }
                }
            }
            ev = event => {
                match ev {
                    Some(PeerEvent::Message(mut msg)) => {
                        if let ServerMessage::Joined { ice_servers, session_id, .. } = &mut msg {
                            *ice_servers = state.ice_servers(&format!("s{session_id}"));
                            if let Some(e) = &s.entered {
                                state.consultations.request(Svc::Joined {
                                    room: e.room.clone(), role: e.role.clone(), session: e.peer.to_string(),
                                }).await;
                            }
                        }
                        if send(&mut sink, &msg).await.is_err() { break }
                    }
                    Some(PeerEvent::Closed(msg)) => {
                        // The worker has already removed this participant.
                        s.worker_done = true;
                        if let ServerMessage::Error { code: ErrorCode::SessionReplaced, .. } = msg {
                            s.reason = LeaveReason::Replaced;
                        }
                        let _ = send(&mut sink, &msg).await;
                        break;
                    }
                    None => break,
                }
            }
            ctl = control => {
                let Some(ctl) = ctl else { continue };
                match ctl {
                    SessionControl::Admitted => {
                        if s.joined.is_none() {
                            if let Flow::Close = join_media(&state, &mut s, &mut sink).await { break }
                        }
                    }
                    SessionControl::Waiting { identity, role } => {
                        let participant = ParticipantInfo { identity, role, muted: Default::default() };
                        if send(&mut sink, &ServerMessage::ParticipantWaiting { participant }).await.is_err() { break }
                    }
                    SessionControl::Kick => {
                        s.reason = LeaveReason::Kicked;
                        let _ = send(&mut sink, &ServerMessage::error(ErrorCode::Kicked, "you were removed from the consultation")).await;
                        break;
                    }
                    SessionControl::Recording(state) => {
                        if send(&mut sink, &ServerMessage::Recording(state)).await.is_err() { break }
                    }
                    SessionControl::End => {
                        s.reason = LeaveReason::Ended;
                        let _ = send(&mut sink, &ServerMessage::error(ErrorCode::CallEnded, "the consultation was ended")).await;
                        break;
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if s.entered.is_none() && now.duration_since(started) > JOIN_TIMEOUT {
                    let _ = send(&mut sink, &ServerMessage::error(ErrorCode::JoinTimeout, "no join within 10 seconds")).await;
                    break;
                }
                if now.duration_since(last_seen) > IDLE_TIMEOUT {
                    let _ = send(&mut sink, &ServerMessage::error(ErrorCode::IdleTimeout, "nothing received for 60 seconds")).await;
                    break;
                }
            }
            _ = shutdown.changed() => {
                let _ = send(&mut sink, &ServerMessage::error(ErrorCode::ServerDraining, "the server is shutting down")).await;
                break;
            }
        }
    }
    if let (Some(j), Some(e)) = (&s.joined, &s.entered) {
        if !s.worker_done {
            leave(&state, j, e.peer, s.reason);
        }
    }
    if let Some(e) = &s.entered {
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

async fn on_client(
    msg: ClientMessage,
    state: &AppState,
    url_room: Option<&str>,
    s: &mut Session,
    sink: &mut (impl SinkExt<Message> + Unpin),
) -> Flow {
    match msg {
        ClientMessage::Ping => return flow(send(sink, &ServerMessage::Pong).await),
        ClientMessage::Join { .. } if s.entered.is_some() => {
            return flow(
                send(
                    sink,
                    &ServerMessage::error(
                        ErrorCode::AlreadyJoined,
                        "this session has joined already",
                    ),
                )
                .await,
            )
        }
        ClientMessage::Join { .. } if state.draining.load(std::sync::atomic::Ordering::Relaxed) => {
            let _ = send(
                sink,
                &ServerMessage::error(
                    ErrorCode::ServerDraining,
                    "the server is shutting down; join another server or retry",
                ),
            )
            .await;
            return Flow::Close;
        }
        ClientMessage::Join {
            v,
            token,
            room,
            client,
        } => return enter(state, url_room, s, sink, v, &token, room, client.sdk).await,
        ClientMessage::Leave if s.entered.is_some() => {
            s.reason = LeaveReason::Left;
            // The worker hears it before the client does: a client that then closes its peer
            // connection must not be taken for one that dropped (`disconnected`).
            if let (Some(j), Some(e)) = (&s.joined, &s.entered) {
                if !s.worker_done {
                    leave(state, j, e.peer, LeaveReason::Left);
                    s.worker_done = true;
                }
            }
            let _ = send(sink, &ServerMessage::Left).await;
            return Flow::Close;
        }
        ClientMessage::RecordingConsent { consent } if s.entered.is_some() => {
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
            return Flow::Continue;
        }
        _ => {}
    }
    let (Some(j), Some(e)) = (s.joined.as_ref(), s.entered.as_ref()) else {
        return flow(
            send(
                sink,
                &ServerMessage::error(
                    ErrorCode::NotJoined,
                    "send join first (or wait to be admitted)",
                ),
            )
            .await,
        );
    };
    let peer = e.peer;
    let cmd = match msg {
        ClientMessage::Offer { sdp } => Command::Offer { peer, sdp },
        ClientMessage::Answer { sdp } => Command::Answer { peer, sdp },
        ClientMessage::Candidate { candidate } => Command::Candidate { peer, candidate },
        ClientMessage::Mute { kind, muted } => Command::Mute { peer, kind, muted },
        ClientMessage::Admit { identity } => {
            if e.role != "doctor" {
                return flow(
                    send(
                        sink,
                        &ServerMessage::error(
                            ErrorCode::Forbidden,
                            "only a doctor admits participants",
                        ),
                    )
                    .await,
                );
            }
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
            if !ok {
                return flow(
                    send(
                        sink,
                        &ServerMessage::error(
                            ErrorCode::ParticipantNotWaiting,
                            "nobody by that identity is waiting",
                        ),
                    )
                    .await,
                );
            }
            return Flow::Continue;
        }
        ClientMessage::Ping
        | ClientMessage::Leave
        | ClientMessage::Join { .. }
        | ClientMessage::RecordingConsent { .. } => return Flow::Continue,
    };
    if state.sfu.send(j.lease.worker(), cmd).is_err() {
        let _ = send(sink, &busy()).await;
        return Flow::Close;
    }
    Flow::Continue
}

/// `join`: checks the token and the room, then enters (or waits in) the consultation.
#[allow(clippy::too_many_arguments)]
async fn enter(
    state: &AppState,
    url_room: Option<&str>,
    s: &mut Session,
    sink: &mut (impl SinkExt<Message> + Unpin),
    v: u32,
    token: &str,
    room: Option<String>,
    client_sdk: Option<String>,
) -> Flow {
    if v != PROTOCOL_VERSION {
        let _ = send(
            sink,
            &ServerMessage::error(
                ErrorCode::UnsupportedVersion,
                format!("this server speaks protocol version {PROTOCOL_VERSION}"),
            ),
        )
        .await;
        return Flow::Close;
    }
    let claims = match JoinToken::verify(token, &state.token_secret, crate::unix_now()) {
        Ok(c) => c,
        Err(e) => {
            let _ = send(
                sink,
                &ServerMessage::error(ErrorCode::from(e.clone()), e.to_string()),
            )
            .await;
            return Flow::Close;
        }
    };
    for wanted in [url_room, room.as_deref()].into_iter().flatten() {
        if wanted != claims.room {
            let _ = send(
                sink,
                &ServerMessage::error(
                    ErrorCode::TokenRoomMismatch,
                    "the token is for another room",
                ),
            )
            .await;
            return Flow::Close;
        }
    }
    let peer = state.sfu.next_peer_id();
    let (control_tx, control) = mpsc::channel(16);
    let role = claims.role.as_str().to_owned();
    let admission = state
        .consultations
        .ask(|reply| Svc::Enter {
            room: claims.room.clone(),
            identity: claims.identity.clone(),
            role: role.clone(),
            session: peer.to_string(),
            client_sdk,
            control: control_tx,
            reply,
        })
        .await;
    s.entered = Some(Entered {
        peer,
        room: claims.room,
        identity: claims.identity,
        role,
        control,
    });
    match admission {
        Some(Admission::Proceed) => join_media(state, s, sink).await,
        Some(Admission::Wait) => flow(send(sink, &ServerMessage::Waiting).await),
        Some(Admission::Closed) => {
            let _ = send(
                sink,
                &ServerMessage::error(ErrorCode::ConsultationClosed, "the consultation is closed"),
            )
            .await;
            Flow::Close
        }
        None => {
            let _ = send(
                sink,
                &ServerMessage::error(
                    ErrorCode::InternalError,
                    "the consultation service is not running",
                ),
            )
            .await;
            Flow::Close
        }
    }
}

/// Admitted: pins the room to a worker and joins the media side.
async fn join_media(
    state: &AppState,
    s: &mut Session,
    sink: &mut (impl SinkExt<Message> + Unpin),
) -> Flow {
    let Some(e) = &s.entered else {
        return Flow::Continue;
    };
    let lease = state.sfu.lease_room(&e.room);
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let req = JoinRequest {
        peer: e.peer,
        room: e.room.clone(),
        identity: e.identity.clone(),
        role: e.role.clone(),
        events: tx,
    };
    if state.sfu.send(lease.worker(), Command::Join(req)).is_err() {
        let _ = send(sink, &busy()).await;
        return Flow::Close;
    }
    tracing::debug!(peer = e.peer, "join accepted");
    s.joined = Some(Joined { lease, events: rx });
    Flow::Continue
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
