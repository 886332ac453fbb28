//! One participant's signaling session on `/ws`: the state machine from `join` to goodbye.
//!
//! The session validates the join token, pins the room to a worker (`RoomLease`), turns client
//! frames into `Command`s for that worker and the worker's `PeerEvent`s into frames. It enforces
//! the protocol's limits (frame size, message rate, join and idle timeouts) with stable error
//! codes. It never logs tokens, identities or SDP at info level.

use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use consulta_sfu::{Command, JoinRequest, PeerEvent, PeerId, RoomLease};
use consulta_signaling::protocol::{ClientMessage, ErrorCode, LeaveReason, ServerMessage};
use consulta_signaling::{JoinToken, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::server::AppState;

const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Events a worker may queue for one session before it is considered stuck.
const EVENT_QUEUE: usize = 256;
/// Token bucket: sustained messages per second and burst.
const RATE_PER_SEC: f64 = 50.0;
const RATE_BURST: f64 = 100.0;
/// Messages refused for rate in a row before the socket is closed.
const RATE_STRIKES: u32 = 200;

struct Joined {
    peer: PeerId,
    lease: RoomLease,
    events: mpsc::Receiver<PeerEvent>,
    left: bool,
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
    let mut joined: Option<Joined> = None;
    let mut limiter = Limiter {
        tokens: RATE_BURST,
        last: Instant::now(),
        strikes: 0,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut shutdown = state.shutdown.clone();

    loop {
        let event = async {
            match joined.as_mut() {
                Some(j) => j.events.recv().await,
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
                        let flow = on_client(msg, &state, url_room.as_deref(), &mut joined, &mut sink).await;
                        if matches!(flow, Flow::Close) { break }
                    }
                }
            }
            ev = event => {
                match ev {
                    Some(PeerEvent::Message(mut msg)) => {
                        if let ServerMessage::Joined { ice_servers, session_id, .. } = &mut msg {
                            *ice_servers = state.ice_servers(&format!("s{session_id}"));
                        }
                        if send(&mut sink, &msg).await.is_err() { break }
                    }
                    Some(PeerEvent::Closed(msg)) => {
                        // The worker has already removed this participant.
                        if let Some(j) = joined.as_mut() { j.left = true; }
                        let _ = send(&mut sink, &msg).await;
                        break;
                    }
                    None => break,
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if joined.is_none() && now.duration_since(started) > JOIN_TIMEOUT {
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
    if let Some(j) = joined {
        if !j.left {
            leave(&state, &j, LeaveReason::Disconnected);
        }
    }
    let _ = sink.close().await;
}

async fn on_client(
    msg: ClientMessage,
    state: &AppState,
    url_room: Option<&str>,
    joined: &mut Option<Joined>,
    sink: &mut (impl SinkExt<Message> + Unpin),
) -> Flow {
    let reply = |m: ServerMessage| m;
    match (msg, joined.as_mut()) {
        (ClientMessage::Ping, _) => flow(send(sink, &ServerMessage::Pong).await),
        (ClientMessage::Join { .. }, None)
            if state.draining.load(std::sync::atomic::Ordering::Relaxed) =>
        {
            let _ = send(
                sink,
                &ServerMessage::error(
                    ErrorCode::ServerDraining,
                    "the server is shutting down; join another server or retry",
                ),
            )
            .await;
            Flow::Close
        }
        (ClientMessage::Join { v, token, room, .. }, None) => {
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
            let claims = match JoinToken::verify(&token, &state.token_secret, crate::unix_now()) {
                Ok(c) => c,
                Err(e) => {
                    let code = ErrorCode::from(e.clone());
                    let _ = send(sink, &ServerMessage::error(code, e.to_string())).await;
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
            let lease = state.sfu.lease_room(&claims.room);
            let peer = state.sfu.next_peer_id();
            let (tx, rx) = mpsc::channel(EVENT_QUEUE);
            let req = JoinRequest {
                peer,
                room: claims.room,
                identity: claims.identity,
                role: claims.role.as_str().to_owned(),
                events: tx,
            };
            if state.sfu.send(lease.worker(), Command::Join(req)).is_err() {
                let _ = send(sink, &busy()).await;
                return Flow::Close;
            }
            tracing::debug!(peer, "join accepted");
            *joined = Some(Joined {
                peer,
                lease,
                events: rx,
                left: false,
            });
            Flow::Continue
        }
        (ClientMessage::Join { .. }, Some(_)) => flow(
            send(
                sink,
                &reply(ServerMessage::error(
                    ErrorCode::AlreadyJoined,
                    "this session has joined already",
                )),
            )
            .await,
        ),
        (_, None) => flow(
            send(
                sink,
                &ServerMessage::error(ErrorCode::NotJoined, "send join first"),
            )
            .await,
        ),
        (ClientMessage::Leave, Some(j)) => {
            leave(state, j, LeaveReason::Left);
            j.left = true;
            let _ = send(sink, &ServerMessage::Left).await;
            Flow::Close
        }
        (msg, Some(j)) => {
            let peer = j.peer;
            let cmd = match msg {
                ClientMessage::Offer { sdp } => Command::Offer { peer, sdp },
                ClientMessage::Answer { sdp } => Command::Answer { peer, sdp },
                ClientMessage::Candidate { candidate } => Command::Candidate { peer, candidate },
                ClientMessage::Mute { kind, muted } => Command::Mute { peer, kind, muted },
                ClientMessage::Ping | ClientMessage::Leave | ClientMessage::Join { .. } => {
                    return Flow::Continue
                }
            };
            if state.sfu.send(j.lease.worker(), cmd).is_err() {
                let _ = send(sink, &busy()).await;
                return Flow::Close;
            }
            Flow::Continue
        }
    }
}

/// Tells the worker the participant is gone. The queue may be momentarily full: retry briefly in
/// the background so no ghost participant stays behind.
fn leave(state: &AppState, j: &Joined, reason: LeaveReason) {
    let (sfu, worker, peer) = (state.sfu.clone(), j.lease.worker(), j.peer);
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
