//! Entering a consultation: `join` (token, room, version and limits checked, then admitted or
//! held in the waiting room) and, once admitted, joining the media side on the room's worker.

use super::*;

/// `join`: checks the token and the room, then enters (or waits in) the consultation.
#[allow(clippy::too_many_arguments)]
pub(super) async fn enter(
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
        let _ = send(sink, &unsupported_version()).await;
        return Flow::Close;
    }
    let claims = match state.token_keys.verify(token, crate::unix_now()) {
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
    // Before the consultation service or a worker spends anything on this join.
    let now = Instant::now();
    if let Err(refused) = state
        .join_limits
        .check(&claims.room, &claims.identity, s.source, now)
    {
        let _ = send(sink, &refused.to_message()).await;
        return Flow::Close;
    }
    // Cluster mode: the room lives on one node; a join that reached another goes there.
    let mut host = None;
    if let Some(cluster) = &state.cluster {
        match cluster.locate(&claims.room).await {
            crate::cluster::Placement::Local {
                epoch,
                took_over_from,
                fresh,
            } => {
                host = Some(cluster.host(&claims.room, epoch));
                // A room this node just came to hold: sessions of it still open in the database
                // belong to a process that is gone (a dead owner, or one whose room lease lapsed
                // with its own); they are closed once.
                if fresh {
                    state
                        .consultations
                        .request(Svc::TakeOver {
                            room: claims.room.clone(),
                            from: took_over_from.unwrap_or_default(),
                        })
                        .await;
                }
            }
            crate::cluster::Placement::Moved { url, node } => {
                let _ = send(sink, &ServerMessage::Moved { url, node }).await;
                return Flow::Close;
            }
            crate::cluster::Placement::Refused => {
                let _ = send(
                    sink,
                    &ServerMessage::error(
                        ErrorCode::ServerDraining,
                        "the server is shutting down and no other node takes new rooms; retry",
                    ),
                )
                .await;
                return Flow::Close;
            }
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
        _host: host,
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
        Some(Admission::IdentityInUse) => {
            let _ = send(
                sink,
                &ServerMessage::error(
                    ErrorCode::IdentityInUse,
                    "this identity is in the consultation with another role",
                ),
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
pub(super) async fn join_media(
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
    // From now on a lost connection can be resumed, by whoever shows this secret.
    let secret = new_resume_secret();
    let (takeover_tx, takeover) = mpsc::channel(1);
    state
        .resumable
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            e.peer,
            ResumeSlot {
                secret: secret.clone(),
                takeover: takeover_tx,
            },
        );
    s.resume = Some(Resumable { secret, takeover });
    s.joined = Some(Joined { lease, events: rx });
    Flow::Continue
}
