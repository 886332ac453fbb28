//! Consultation semantics (no SFU has these; they are ours): who is present, the waiting room,
//! when a consultation really started (doctor and patient both in) and ended (ended through the
//! API, or the room stayed empty), and no-shows after the scheduled start.
//!
//! One task owns this state. Signaling sessions and the API talk to it through a bounded queue;
//! it turns what happens into call events for the [`EventSink`] and never touches the database
//! on its own path except to read a consultation's policy once (cached). When the policy cannot
//! be read (database down or slow), joins are held in the waiting room and the read is retried:
//! nobody is admitted under a default policy (fail closed).
//!
//! Sessions and admissions are keyed by (identity, role): a token of another role never takes
//! over a session (`IdentityInUse`), and a second session of the same identity and role passes
//! the waiting room again when the policy has one.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use consulta_signaling::protocol::RecordingState;

mod admission;
pub mod orphans;
mod recording;

use crate::events::{EventFactory, EventSink};
use crate::store::{Policy, Store};

/// What a session is told to do by the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionControl {
    /// Waiting-room admission came through.
    Admitted,
    /// (To doctors) someone waits to be admitted.
    Waiting {
        identity: String,
        role: String,
    },
    Kick,
    /// The call was ended through the API.
    End,
    /// The recording state changed (or, after joining, what it is).
    Recording(RecordingState),
    /// The room now lives on another node (cluster mode, after a split): go there.
    Moved {
        url: String,
        node: String,
    },
}

pub enum Admission {
    Proceed,
    /// Wait for `SessionControl::Admitted` on the session's control channel.
    Wait,
    Closed,
    /// The identity is in the consultation with another role.
    IdentityInUse,
}

pub enum Request {
    /// A session with a valid token asks to enter `room`.
    Enter {
        room: String,
        identity: String,
        role: String,
        session: String,
        client_sdk: Option<String>,
        control: mpsc::Sender<SessionControl>,
        reply: oneshot::Sender<Admission>,
    },
    /// The media side accepted the session.
    Joined {
        room: String,
        role: String,
        session: String,
    },
    /// The session ended (after `Enter`, whether or not it joined).
    Gone {
        room: String,
        identity: String,
        session: String,
        reason: String,
    },
    Admit {
        room: String,
        identity: String,
        by: String,
        reply: oneshot::Sender<bool>,
    },
    Kick {
        room: String,
        identity: String,
        reply: oneshot::Sender<bool>,
    },
    End {
        room: String,
        close: bool,
        reply: oneshot::Sender<()>,
    },
    Presence {
        room: String,
        reply: oneshot::Sender<Presence>,
    },
    /// A participant gives or withdraws consent to be recorded.
    Consent {
        room: String,
        identity: String,
        session: String,
        consent: bool,
    },
    /// The API starts (`start`) or stops recording; `Err(code)` when it cannot.
    Record {
        room: String,
        start: bool,
        reply: oneshot::Sender<Result<RecordingState, &'static str>>,
    },
    RecordingStatus {
        room: String,
        reply: oneshot::Sender<RecordingState>,
    },
    /// A recording stopped on its own (spool full, disk error).
    RecordingStopped {
        room: String,
        id: String,
        reason: &'static str,
    },
    /// Something the media side saw that the consultation's record keeps: a video paused for
    /// want of a shared codec (`track_paused`/`track_resumed`), a participant's connection poor
    /// for a while (`poor_connection`).
    MediaEvent {
        room: String,
        event: &'static str,
        payload: serde_json::Value,
    },
    /// Cluster mode: another node holds the room now; this node's sessions of it move there.
    Move {
        room: String,
        url: String,
        node: String,
    },
    /// Cluster mode: this node took the room over from a node that died. Its sessions still
    /// open in the database end with `participant_left` reason `server_lost`, once.
    TakeOver { room: String, from: String },
    /// Whether this node has the room in memory (sessions, a running call, timers).
    Live {
        room: String,
        reply: oneshot::Sender<bool>,
    },
    /// The API created a consultation: remember its policy and schedule.
    Created {
        room: String,
        policy: Policy,
        scheduled_start: Option<i64>,
    },
}

/// Who is in a room now.
#[derive(Debug, Default, Clone)]
pub struct Presence {
    /// Closed through the API (the store may not show it yet).
    pub closed: bool,
    pub present: Vec<(String, String)>,
    pub waiting: Vec<(String, String)>,
    pub admitted: Vec<String>,
}

#[derive(Clone)]
pub struct Consultations {
    tx: mpsc::Sender<Request>,
}

impl Consultations {
    pub async fn request(&self, r: Request) {
        let _ = self.tx.send(r).await;
    }

    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }
}

/// Timings of `[consultation]`.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub empty_room_end: Duration,
    pub no_show_after: Duration,
}

struct Session {
    identity: String,
    role: String,
    control: mpsc::Sender<SessionControl>,
    /// When it entered the consultation (the waiting room included).
    entered_at: Instant,
    /// When its media joined the room (after admission).
    joined_at: Option<Instant>,
    /// In the waiting room, for a doctor or the API to admit.
    waiting: bool,
    /// Held because the policy could not be read; decided once it can.
    held: bool,
    /// Consents to being recorded.
    consent: bool,
    /// Has been told the recording state.
    told_recording: bool,
}

#[derive(Default)]
struct Room {
    policy: Option<Policy>,
    closed: bool,
    scheduled_start: Option<i64>,
    sessions: HashMap<String, Session>,
    /// (identity, role) admitted from the waiting room (or not subject to it).
    admitted: HashSet<(String, String)>,
    /// The policy could not be read; when the last try failed.
    policy_unreadable: Option<Instant>,
    /// Identities of each role ever present.
    seen_roles: HashSet<String>,
    started: bool,
    ended: bool,
    empty_since: Option<Instant>,
    no_show_reported: bool,
    /// Recording asked (`Some(true)`) or stopped (`Some(false)`) through the API; `None`
    /// follows the policy.
    api_recording: Option<bool>,
    /// The running recording's id.
    recording: Option<String>,
    /// Why recording cannot run now although wanted (`spool_full`, ...) and since when;
    /// cleared by the API, when the spool has room again, or after a minute.
    recording_blocked: Option<(&'static str, Instant)>,
    /// What participants were last told.
    told: Option<RecordingState>,
    /// The reason of the last `recording_failed` event, until a recording starts or is no
    /// longer wanted.
    recording_failed: Option<&'static str>,
}

impl Room {
    fn present(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values().filter(|s| s.joined_at.is_some())
    }
}

pub fn start(
    store: Store,
    sink: EventSink,
    factory: std::sync::Arc<EventFactory>,
    timings: Timings,
    sfu: consulta_sfu::SfuHandle,
    recordings: crate::recording::Recordings,
) -> Consultations {
    let (tx, rx) = mpsc::channel(1024);
    let service = Service {
        store,
        sink,
        factory,
        timings,
        rooms: HashMap::new(),
        sfu,
        recordings,
        me: tx.clone(),
        closed_here: HashMap::new(),
    };
    tokio::spawn(service.run(rx));
    Consultations { tx }
}

struct Service {
    store: Store,
    sink: EventSink,
    factory: std::sync::Arc<EventFactory>,
    timings: Timings,
    rooms: HashMap<String, Room>,
    sfu: consulta_sfu::SfuHandle,
    recordings: crate::recording::Recordings,
    /// This service's own queue, for recorder threads to report back.
    me: mpsc::Sender<Request>,
    /// Consultations closed here, until the store is seen to say so (its `ended` event may
    /// still be queued or journaled): a room forgotten meanwhile is never reopened by a
    /// policy read that predates the close.
    closed_here: HashMap<String, Instant>,
}

impl Service {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => {
                    let room = match &r {
                        Request::Enter { room, .. }
                        | Request::Joined { room, .. }
                        | Request::Gone { room, .. }
                        | Request::Consent { room, .. }
                        | Request::End { room, .. }
                        | Request::Created { room, .. }
                        | Request::RecordingStopped { room, .. } => Some(room.clone()),
                        _ => None,
                    };
                    self.handle(r).await;
                    if let Some(room) = room {
                        self.reconcile(&room).await;
                    }
                }
                    None => break,
                },
                _ = tick.tick() => self.timers().await,
            }
        }
    }

    /// Ends the dead node's sessions of `room` that the database still has open.
    async fn take_over(&mut self, room: &str, from: &str) {
        let read = tokio::time::timeout(Duration::from_secs(3), self.store.open_sessions(room));
        let open = match read.await {
            Ok(Ok(open)) => open,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the sessions of a room taken over; they stay open");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    "the database did not answer for a room taken over; its sessions stay open"
                );
                return;
            }
        };
        let live: HashSet<String> = self
            .rooms
            .get(room)
            .map(|r| r.sessions.keys().cloned().collect())
            .unwrap_or_default();
        for (session, identity, role) in open {
            if live.contains(&session) {
                continue;
            }
            let payload = json!({
                "session_id": session, "identity": identity, "role": role,
                "reason": "server_lost", "node": from,
            });
            let ev = self
                .factory
                .make_once(room, "participant_left", &session, payload);
            self.sink.send(ev).await;
        }
    }

    async fn emit(&self, room: &str, kind: &str, payload: serde_json::Value) {
        self.sink.send(self.factory.make(room, kind, payload)).await;
    }

    async fn handle(&mut self, r: Request) {
        match r {
            Request::Created {
                room,
                policy,
                scheduled_start,
            } => {
                let entry = self.rooms.entry(room.clone()).or_default();
                entry.policy = Some(policy);
                entry.scheduled_start = scheduled_start;
                entry.policy_unreadable = None;
                self.release_held(&room);
            }
            Request::Enter {
                room,
                identity,
                role,
                session,
                client_sdk,
                control,
                reply,
            } => {
                // Unreadable a moment ago: try again, but not more often than the timer does (each
                // try may cost this task a second).
                let stale = self
                    .room(&room)
                    .await
                    .policy_unreadable
                    .is_some_and(|t| t.elapsed() >= admission::POLICY_RETRY);
                if stale {
                    let read = self.read_policy(&room).await;
                    self.apply_policy(&room, read).await;
                }
                let r = self.room(&room).await;
                if r.closed {
                    let _ = reply.send(Admission::Closed);
                    return;
                }
                if r.sessions
                    .values()
                    .any(|s| s.identity == identity && s.role != role)
                {
                    let _ = reply.send(Admission::IdentityInUse);
                    return;
                }
                let held = r.policy_unreadable.is_some();
                let waiting_room = r.policy.as_ref().is_some_and(|p| p.waiting_room);
                // A second session of the same identity and role would replace the one in the
                // call: with a waiting room, it is admitted again first.
                let replacing = r.sessions.values().any(|s| s.identity == identity);
                let key = (identity.clone(), role.clone());
                let must_wait = held
                    || (waiting_room
                        && role != "doctor"
                        && (replacing || !r.admitted.contains(&key)));
                let entry = Session {
                    identity: identity.clone(),
                    role: role.clone(),
                    control,
                    entered_at: Instant::now(),
                    joined_at: None,
                    waiting: must_wait && !held,
                    held,
                    consent: false,
                    told_recording: false,
                };
                r.sessions.insert(session.clone(), entry);
                if held {
                    tracing::warn!(room = %room, "consultation policy unreadable: join held until it can be read");
                    let _ = reply.send(Admission::Wait);
                } else if must_wait {
                    let _ = reply.send(Admission::Wait);
                    for d in r.present().filter(|s| s.role == "doctor") {
                        let _ = d.control.try_send(SessionControl::Waiting {
                            identity: identity.clone(),
                            role: role.clone(),
                        });
                    }
                } else {
                    r.admitted.insert(key);
                    let _ = reply.send(Admission::Proceed);
                }
                // Joined the consultation (into the waiting room when `waiting`).
                let payload = json!({ "identity": identity, "role": role, "session_id": session, "client_sdk": client_sdk, "waiting": must_wait });
                self.emit(&room, "participant_joined", payload).await;
            }
            Request::MediaEvent {
                room,
                event,
                payload,
            } => self.emit(&room, event, payload).await,
            Request::Joined {
                room,
                role,
                session,
            } => {
                let r = self.room(&room).await;
                if let Some(s) = r.sessions.get_mut(&session) {
                    s.joined_at = Some(Instant::now());
                }
                if role == "doctor" {
                    // A doctor arriving learns who is already waiting.
                    if let Some(me) = r.sessions.get(&session) {
                        for w in r.sessions.values().filter(|w| w.waiting) {
                            let _ = me.control.try_send(SessionControl::Waiting {
                                identity: w.identity.clone(),
                                role: w.role.clone(),
                            });
                        }
                    }
                }
                r.seen_roles.insert(role.clone());
                r.empty_since = None;
                r.ended = false;
                let both = ["doctor", "patient"]
                    .iter()
                    .all(|want| r.present().any(|s| s.role == *want));
                let start = both && !r.started;
                if start {
                    r.started = true;
                }
                let doctor = r
                    .present()
                    .find(|s| s.role == "doctor")
                    .map(|s| s.identity.clone());
                let patient = r
                    .present()
                    .find(|s| s.role == "patient")
                    .map(|s| s.identity.clone());
                if start {
                    self.emit(
                        &room,
                        "started",
                        json!({ "doctor": doctor, "patient": patient }),
                    )
                    .await;
                }
            }
            Request::Gone {
                room,
                identity,
                session,
                reason,
            } => {
                let Some(r) = self.rooms.get_mut(&room) else {
                    return;
                };
                let Some(s) = r.sessions.remove(&session) else {
                    return;
                };
                if s.joined_at.is_some() && r.present().next().is_none() {
                    r.empty_since = Some(Instant::now());
                }
                let payload = json!({ "identity": identity, "role": s.role, "session_id": session, "reason": reason, "seconds": s.entered_at.elapsed().as_secs() });
                self.emit(&room, "participant_left", payload).await;
            }
            Request::Admit {
                room,
                identity,
                by,
                reply,
            } => {
                let r = self.room(&room).await;
                let mut waiting = Vec::new();
                for s in r
                    .sessions
                    .values_mut()
                    .filter(|s| s.identity == identity && s.waiting)
                {
                    s.waiting = false;
                    r.admitted.insert((s.identity.clone(), s.role.clone()));
                    waiting.push(s.control.clone());
                }
                let was_waiting = !waiting.is_empty();
                for c in waiting {
                    let _ = c.try_send(SessionControl::Admitted);
                }
                let _ = reply.send(was_waiting);
                if was_waiting {
                    self.emit(&room, "admitted", json!({ "identity": identity, "by": by }))
                        .await;
                }
            }
            Request::Move { room, url, node } => {
                if let Some(r) = self.rooms.get(&room) {
                    for s in r.sessions.values() {
                        let _ = s.control.try_send(SessionControl::Moved {
                            url: url.clone(),
                            node: node.clone(),
                        });
                    }
                }
            }
            Request::TakeOver { room, from } => self.take_over(&room, &from).await,
            Request::Live { room, reply } => {
                let _ = reply.send(self.rooms.contains_key(&room));
            }
            Request::Kick {
                room,
                identity,
                reply,
            } => {
                let controls: Vec<_> = self
                    .rooms
                    .get(&room)
                    .map(|r| {
                        r.sessions
                            .values()
                            .filter(|s| s.identity == identity)
                            .map(|s| s.control.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                let found = !controls.is_empty();
                for c in controls {
                    let _ = c.try_send(SessionControl::Kick);
                }
                let _ = reply.send(found);
                if found {
                    if let Some(r) = self.rooms.get_mut(&room) {
                        r.admitted.retain(|(i, _)| *i != identity);
                    }
                    self.emit(&room, "kicked", json!({ "identity": identity }))
                        .await;
                }
            }
            Request::End { room, close, reply } => {
                let r = self.room(&room).await;
                let controls: Vec<_> = r.sessions.values().map(|s| s.control.clone()).collect();
                let was_running = r.started && !r.ended;
                r.ended = true;
                r.started = false;
                if close {
                    r.closed = true;
                }
                for c in controls {
                    let _ = c.try_send(SessionControl::End);
                }
                if was_running || close {
                    let reason = if close { "closed" } else { "api" };
                    self.emit(&room, "ended", json!({ "reason": reason })).await;
                }
                if close {
                    self.closed_here.insert(room.clone(), Instant::now());
                }
                let _ = reply.send(());
            }
            Request::Consent {
                room,
                identity,
                session,
                consent,
            } => {
                let Some(r) = self.rooms.get_mut(&room) else {
                    return;
                };
                let Some(s) = r.sessions.get_mut(&session) else {
                    return;
                };
                if s.consent == consent {
                    return;
                }
                s.consent = consent;
                self.emit(
                    &room,
                    "recording_consent",
                    json!({ "identity": identity, "session_id": session, "consent": consent }),
                )
                .await;
            }
            Request::Record { room, start, reply } => {
                let r = self.room(&room).await;
                let policy = r.policy.as_ref().map_or("off", |p| p.recording.as_str());
                if start && policy == "off" {
                    let _ = reply.send(Err("recording_not_allowed"));
                    return;
                }
                if r.closed {
                    let _ = reply.send(Err("consultation_closed"));
                    return;
                }
                r.api_recording = Some(start);
                r.recording_blocked = None;
                self.reconcile(&room).await;
                let state = self
                    .rooms
                    .get(&room)
                    .map(|r| r.recording_state())
                    .unwrap_or_default();
                let _ = reply.send(Ok(state));
            }
            Request::RecordingStatus { room, reply } => {
                let state = self.room(&room).await.recording_state();
                let _ = reply.send(state);
            }
            Request::RecordingStopped { room, id, reason } => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    if r.recording.as_deref() == Some(id.as_str()) {
                        r.recording_blocked = Some((reason, Instant::now()));
                    }
                }
            }
            Request::Presence { room, reply } => {
                let p = self
                    .rooms
                    .get(&room)
                    .map(|r| Presence {
                        closed: r.closed,
                        present: r
                            .present()
                            .map(|s| (s.identity.clone(), s.role.clone()))
                            .collect(),
                        waiting: r
                            .sessions
                            .values()
                            .filter(|s| s.waiting || s.held)
                            .map(|s| (s.identity.clone(), s.role.clone()))
                            .collect(),
                        admitted: {
                            let mut ids: Vec<String> =
                                r.admitted.iter().map(|(i, _)| i.clone()).collect();
                            ids.sort();
                            ids.dedup();
                            ids
                        },
                    })
                    .unwrap_or_else(|| Presence {
                        closed: self.closed_here.contains_key(&room),
                        ..Presence::default()
                    });
                let _ = reply.send(p);
            }
        }
    }

    async fn timers(&mut self) {
        self.confirm_closed().await;
        // Rooms holding joins because their policy was unreadable try again, the longest
        // waiting first; one failure ends the round (the database is still away, and each try
        // may cost this task a second).
        let mut retry: Vec<(std::time::Instant, String)> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.sessions.values().any(|s| s.held))
            .filter_map(|(n, r)| {
                r.policy_unreadable
                    .filter(|t| t.elapsed() >= admission::POLICY_RETRY)
                    .map(|t| (t, n.clone()))
            })
            .collect();
        retry.sort();
        for (_, n) in retry {
            let read = self.read_policy(&n).await;
            if !self.apply_policy(&n, read).await {
                break;
            }
            tracing::info!(room = %n, "consultation policy readable again: held joins decided");
            self.release_held(&n);
        }
        let names: Vec<String> = self.rooms.keys().cloned().collect();
        for n in names {
            self.reconcile(&n).await;
        }
        let now = Instant::now();
        let now_ms = crate::unix_millis();
        let mut out = Vec::new();
        for (name, r) in &mut self.rooms {
            if r.started
                && !r.ended
                && r.empty_since
                    .is_some_and(|t| now.duration_since(t) >= self.timings.empty_room_end)
            {
                r.ended = true;
                r.started = false;
                out.push((name.clone(), "ended", json!({ "reason": "empty_room" })));
            }
            if let Some(start) = r.scheduled_start {
                if !r.no_show_reported
                    && now_ms >= start + self.timings.no_show_after.as_millis() as i64
                {
                    r.no_show_reported = true;
                    for role in ["doctor", "patient"] {
                        if !r.seen_roles.contains(role) {
                            out.push((name.clone(), "no_show", json!({ "role": role })));
                        }
                    }
                }
            }
        }
        // Forget idle rooms that are over.
        self.rooms.retain(|_, r| {
            r.recording.is_some()
                || (r.api_recording == Some(true) && !r.ended && !r.closed)
                || !r.sessions.is_empty()
                || (r.started && !r.ended)
                || (r.scheduled_start.is_some() && !r.no_show_reported)
        });
        for (room, kind, payload) in out {
            if kind == "no_show" {
                // Once per consultation and role, whichever node or run notices it.
                let role = payload["role"].as_str().unwrap_or_default().to_owned();
                let ev = self.factory.make_once(&room, kind, &role, payload);
                self.sink.send(ev).await;
            } else {
                self.emit(&room, kind, payload).await;
            }
        }
    }
}
