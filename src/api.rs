//! The control API (`/api/v1`, see docs/api.md): what the Laravel app uses to create a
//! consultation, mint join tokens, act on participants, end the call and read its events.
//!
//! Every route needs `Authorization: Bearer <key>` of a key holding the route's scope
//! ([`crate::api_keys`]), within the per-key and per-address rate limits. Errors are
//! `{code, message}` with a 4xx for
//! anything the caller sent wrong (bad JSON, wrong types, unknown ids, oversized bodies); a 503
//! only when the database is unreachable. Handlers never block: they await the store or the
//! consultation service, both bounded.

use axum::extract::rejection::JsonRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, MatchedPath, Path, Query, Request, State,
};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use consulta_signaling::token::validate_id;
use consulta_signaling::{JoinToken, Role};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api_keys::Grant;
use crate::consultations::{Presence, Request as Svc};
use crate::events::EventView;
use crate::rate_limit::RateLimiter;
use crate::server::AppState;
use crate::store::{Consultation, Policy, StoreError};

const MAX_BODY: usize = 64 * 1024;
const OPENAPI: &str = include_str!("openapi.json");

/// An API error: a status and a stable code.
pub struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "code": self.1, "message": self.2 }))).into_response()
    }
}

fn bad(code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, code, msg.into())
}

fn not_found(code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, code, msg.into())
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "database unavailable for the API");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the database is unreachable; retry".into(),
        )
    }
}

/// JSON bodies with our error codes instead of axum's plain-text rejections.
pub struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send Content-Type: application/json".into(),
            )),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(bad("bad_json", e.body_text())),
            Err(JsonRejection::JsonDataError(e)) => Err(bad("invalid_body", e.body_text())),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("bodies are limited to {MAX_BODY} bytes"),
                ))
            }
            Err(e) => Err(bad("bad_request", e.body_text())),
        }
    }
}

pub fn routes(state: AppState) -> Router<AppState> {
    let protected = Router::new()
        .route("/consultations", post(create).get(list))
        .route("/consultations/{id}", get(fetch))
        .route("/consultations/{id}/tokens", post(mint_token))
        .route("/consultations/{id}/participants", get(participants))
        .route(
            "/consultations/{id}/participants/{identity}/admit",
            post(admit),
        )
        .route(
            "/consultations/{id}/participants/{identity}/kick",
            post(kick),
        )
        .route(
            "/consultations/{id}/participants/{identity}/mute",
            post(mute),
        )
        .route("/consultations/{id}/recording", get(recording_status))
        .route("/consultations/{id}/recording/start", post(recording_start))
        .route("/consultations/{id}/recording/stop", post(recording_stop))
        .route("/consultations/{id}/end", post(end))
        .route("/consultations/{id}/close", post(close))
        .route("/consultations/{id}/events", get(events))
        // The key is checked here before a live-room call goes to its node (cluster mode).
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::cluster::forward::to_owner,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    Router::new()
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(protected)
        .merge(crate::cluster::forward::routes())
        .fallback(|| async { not_found("not_found", "no such API path") })
}

/// The control API's request budgets: one bucket per key, one per source address.
pub struct Limits {
    per_key: std::sync::Mutex<RateLimiter<usize>>,
    per_ip: std::sync::Mutex<RateLimiter<std::net::IpAddr>>,
}

impl Limits {
    pub fn new(cfg: &crate::config::ApiConfig) -> Limits {
        Limits {
            // A burst is at least one second's worth of the rate.
            per_key: std::sync::Mutex::new(RateLimiter::new(
                cfg.rate_limit_per_key,
                cfg.rate_limit_burst.max(cfg.rate_limit_per_key),
            )),
            per_ip: std::sync::Mutex::new(RateLimiter::new(
                cfg.rate_limit_per_ip,
                cfg.rate_limit_burst.max(cfg.rate_limit_per_ip),
            )),
        }
    }
}

fn rate_limited(wait: std::time::Duration, whose: &str) -> Response {
    let secs = wait.as_secs() + 1;
    let mut r = ApiError(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests from this {whose}; retry in {secs} s"),
    )
    .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// Rate limits (the address first, so guessing keys costs budget too), the key, its scope.
async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let now = std::time::Instant::now();
    // The TCP peer, never a forwarded-for header: behind a proxy every caller shares its
    // address, which is why the API belongs on its own listener (`[api] listen`).
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<std::net::SocketAddr>>() {
        let verdict = state
            .api_limits
            .per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(&peer.ip(), now);
        if let Err(wait) = verdict {
            return rate_limited(wait, "address");
        }
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(Grant { key, scopes }) = given.and_then(|k| state.api_keys.authenticate(k)) else {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <api key>` is needed".into(),
        )
        .into_response();
    };
    let verdict = state
        .api_limits
        .per_key
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .check(&key, now);
    if let Err(wait) = verdict {
        return rate_limited(wait, "API key");
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("", |m| m.as_str());
    let needed = crate::api_keys::required(req.method(), route);
    if !needed.iter().any(|s| scopes.has(*s)) {
        let names: Vec<&str> = needed.iter().map(|s| s.as_str()).collect();
        return ApiError(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!(
                "this API key lacks the scope this route needs ({})",
                names.join(" or ")
            ),
        )
        .into_response();
    }
    next.run(req).await
}

fn view(c: &Consultation, present: usize) -> Value {
    json!({
        "id": c.id,
        "status": c.status,
        "scheduled_start": c.scheduled_start.map(crate::rfc3339),
        "scheduled_end": c.scheduled_end.map(crate::rfc3339),
        "policy": c.policy,
        "created_at": crate::rfc3339(c.created_at),
        "started_at": c.started_at.map(crate::rfc3339),
        "ended_at": c.ended_at.map(crate::rfc3339),
        "participants_present": present,
    })
}

fn check_id(id: &str) -> Result<(), ApiError> {
    validate_id(id, "id").map_err(|_| bad("invalid_id", ID_RULE))
}

fn check_identity(identity: &str) -> Result<(), ApiError> {
    validate_id(identity, "identity").map_err(|_| bad("invalid_identity", ID_RULE))
}

/// What ids and identities look like (docs/api.md): nothing that can name a path.
const ID_RULE: &str =
    "ids and identities are 1-128 of A-Z a-z 0-9 . _ : - starting with a letter or digit, without ..";

async fn load(state: &AppState, id: &str) -> Result<Consultation, ApiError> {
    check_id(id)?;
    state
        .store
        .consultation(id)
        .await?
        .ok_or_else(|| not_found("consultation_not_found", format!("no consultation {id}")))
}

async fn presence(state: &AppState, id: &str) -> Presence {
    state
        .consultations
        .ask(|reply| Svc::Presence {
            room: id.to_owned(),
            reply,
        })
        .await
        .unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    id: String,
    #[serde(default)]
    scheduled_start: Option<String>,
    #[serde(default)]
    scheduled_end: Option<String>,
    #[serde(default)]
    policy: Option<Policy>,
}

async fn create(
    State(state): State<AppState>,
    Body(b): Body<CreateBody>,
) -> Result<Response, ApiError> {
    check_id(&b.id)?;
    let parse = |what: &str, v: &Option<String>| -> Result<Option<i64>, ApiError> {
        v.as_deref()
            .map(|s| {
                crate::parse_rfc3339(s)
                    .ok_or_else(|| bad("invalid_time", format!("{what} must be an RFC 3339 time")))
            })
            .transpose()
    };
    let (start, end) = (
        parse("scheduled_start", &b.scheduled_start)?,
        parse("scheduled_end", &b.scheduled_end)?,
    );
    if let (Some(s), Some(e)) = (start, end) {
        if e <= s {
            return Err(bad(
                "invalid_time",
                "scheduled_end must be after scheduled_start",
            ));
        }
    }
    let policy = b.policy.unwrap_or_default();
    if !(1..=16).contains(&policy.max_participants) {
        return Err(bad(
            "invalid_policy",
            "policy.max_participants must be between 1 and 16",
        ));
    }
    if !matches!(policy.recording.as_str(), "off" | "on_request" | "required") {
        return Err(bad(
            "invalid_policy",
            "policy.recording must be off, on_request or required",
        ));
    }
    let c = Consultation {
        id: b.id.clone(),
        status: "scheduled".into(),
        scheduled_start: start,
        scheduled_end: end,
        policy: policy.clone(),
        created_at: crate::unix_millis(),
        started_at: None,
        ended_at: None,
    };
    match state.store.create_consultation(&c).await {
        Ok(()) => {}
        Err(StoreError::Exists) => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "consultation_exists",
                format!("consultation {} exists", c.id),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    state
        .consultations
        .request(Svc::Created {
            room: c.id.clone(),
            policy: policy.clone(),
            scheduled_start: start,
        })
        .await;
    let payload = json!({ "scheduled_start": start.map(crate::rfc3339), "scheduled_end": end.map(crate::rfc3339), "policy": policy });
    state
        .events
        .send(state.event_factory.make(&c.id, "created", payload))
        .await;
    Ok((StatusCode::CREATED, Json(view(&c, 0))).into_response())
}

async fn fetch(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = load(&state, &id).await?;
    let n = presence(&state, &id).await.present.len();
    Ok(Json(view(&c, n)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    limit: Option<i64>,
    after: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| bad("invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(bad("invalid_query", "limit must be between 1 and 200"));
    }
    if let Some(s) = &q.status {
        if !matches!(s.as_str(), "scheduled" | "active" | "ended" | "closed") {
            return Err(bad(
                "invalid_query",
                "status must be scheduled, active, ended or closed",
            ));
        }
    }
    let items = state
        .store
        .consultations(q.status.as_deref(), q.after.as_deref().unwrap_or(""), limit)
        .await?;
    let next = if items.len() as i64 == limit {
        items.last().map(|c| c.id.clone())
    } else {
        None
    };
    Ok(Json(
        json!({ "items": items.iter().map(|c| view(c, 0)).collect::<Vec<_>>(), "next_after": next }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    identity: String,
    role: Role,
    #[serde(default)]
    ttl: Option<u64>,
}

async fn mint_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(b): Body<TokenBody>,
) -> Result<Response, ApiError> {
    let c = load(&state, &id).await?;
    check_identity(&b.identity)?;
    if c.status == "closed" || presence(&state, &id).await.closed {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "consultation_closed",
            "the consultation is closed".into(),
        ));
    }
    let ttl = b.ttl.unwrap_or(state.token_ttl);
    let max = state.token_keys.max_ttl();
    if !(1..=max).contains(&ttl) {
        return Err(bad(
            "invalid_ttl",
            format!("ttl must be between 1 and {max} seconds ([auth] max_token_ttl)"),
        ));
    }
    let claims = JoinToken::new(&id, &b.identity, b.role, crate::unix_now(), ttl)
        .map_err(|e| bad("invalid_identity", e.to_string()))?;
    let token = state
        .token_keys
        .sign(&claims)
        .map_err(|e| bad("invalid_token", e.to_string()))?;
    // The configured public URL: Host and X-Forwarded-* are the caller's to choose, and a
    // ws_url pointing elsewhere would hand the patient's token to whoever that is.
    let body = json!({ "token": token, "expires_at": crate::rfc3339(claims.exp as i64 * 1000), "ws_url": &*state.ws_url });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn participants(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    load(&state, &id).await?;
    let rows = state.store.participants(&id).await?;
    let p = presence(&state, &id).await;
    let mut items: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "identity": r.identity, "role": r.role,
                "present": p.present.iter().any(|(i, _)| *i == r.identity),
                "waiting": p.waiting.iter().any(|(i, _)| *i == r.identity),
                "admitted": p.admitted.contains(&r.identity),
                "first_joined_at": r.first_joined_at.map(crate::rfc3339),
                "last_left_at": r.last_left_at.map(crate::rfc3339),
                "sessions": r.sessions,
            })
        })
        .collect();
    // Who is here or waiting now but not in the table yet (never joined, or its event is still
    // on its way to the database).
    for (identity, role) in p
        .present
        .iter()
        .chain(p.waiting.iter())
        .filter(|(i, _)| !rows.iter().any(|r| r.identity == *i))
    {
        let present = p.present.iter().any(|(i, _)| i == identity);
        items.push(json!({ "identity": identity, "role": role, "present": present, "waiting": !present,
            "admitted": p.admitted.contains(identity), "first_joined_at": null, "last_left_at": null, "sessions": 0 }));
    }
    Ok(Json(json!({ "items": items })))
}

/// Asks the consultation service to act on one participant; `missing` when nobody matched.
async fn act_on(
    state: &AppState,
    id: &str,
    identity: &str,
    make: impl FnOnce(tokio::sync::oneshot::Sender<bool>) -> Svc,
    missing: (&'static str, &str),
) -> Result<(), ApiError> {
    load(state, id).await?;
    check_identity(identity)?;
    if state.consultations.ask(make).await.unwrap_or(false) {
        Ok(())
    } else {
        Err(not_found(missing.0, format!("{identity} {}", missing.1)))
    }
}

async fn admit(
    State(state): State<AppState>,
    Path((id, identity)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (room, who) = (id.clone(), identity.clone());
    let make = |reply| Svc::Admit {
        room,
        identity: who,
        by: "api".into(),
        reply,
    };
    act_on(
        &state,
        &id,
        &identity,
        make,
        ("participant_not_waiting", "is not in the waiting room"),
    )
    .await?;
    Ok(Json(json!({ "admitted": identity })))
}

async fn kick(
    State(state): State<AppState>,
    Path((id, identity)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (room, who) = (id.clone(), identity.clone());
    let make = |reply| Svc::Kick {
        room,
        identity: who,
        reply,
    };
    act_on(
        &state,
        &id,
        &identity,
        make,
        ("participant_not_present", "is not in the consultation"),
    )
    .await?;
    Ok(Json(json!({ "kicked": identity })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    kind: consulta_signaling::protocol::TrackKind,
    /// `false` lifts a mute made through the API (the participant may then unmute itself).
    #[serde(default = "yes")]
    muted: bool,
}

fn yes() -> bool {
    true
}

async fn mute(
    State(state): State<AppState>,
    Path((id, identity)): Path<(String, String)>,
    Body(b): Body<MuteBody>,
) -> Result<Json<Value>, ApiError> {
    load(&state, &id).await?;
    check_identity(&identity)?;
    let p = presence(&state, &id).await;
    if !p.present.iter().any(|(i, _)| *i == identity) {
        return Err(not_found(
            "participant_not_present",
            format!("{identity} is not in the consultation"),
        ));
    }
    let lease = state.sfu.lease_room(&id);
    let cmd = consulta_sfu::Command::ForceMute {
        room: id.clone(),
        identity: identity.clone(),
        kind: b.kind,
        muted: b.muted,
    };
    state.sfu.send(lease.worker(), cmd).map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_busy",
            "the media server is overloaded; retry".into(),
        )
    })?;
    let kind = match b.kind {
        consulta_signaling::protocol::TrackKind::Audio => "audio",
        consulta_signaling::protocol::TrackKind::Video => "video",
    };
    let event = if b.muted { "muted" } else { "unmuted" };
    state
        .events
        .send(
            state
                .event_factory
                .make(&id, event, json!({ "identity": identity, "kind": kind })),
        )
        .await;
    Ok(Json(json!({ event: identity, "kind": kind })))
}

async fn recording_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    load(&state, &id).await?;
    let room = id.clone();
    let s = state
        .consultations
        .ask(|reply| Svc::RecordingStatus { room, reply })
        .await
        .unwrap_or_default();
    Ok(Json(json!(s)))
}

async fn record(state: AppState, id: String, start: bool) -> Result<Json<Value>, ApiError> {
    load(&state, &id).await?;
    let room = id.clone();
    let answer = state
        .consultations
        .ask(|reply| Svc::Record { room, start, reply })
        .await
        .ok_or_else(|| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_busy",
                "the consultation service is not answering; retry".into(),
            )
        })?;
    match answer {
        Ok(s) => Ok(Json(json!(s))),
        Err("recording_not_allowed") => Err(ApiError(
            StatusCode::CONFLICT,
            "recording_not_allowed",
            "this consultation's policy.recording is off".into(),
        )),
        Err(code) => Err(ApiError(
            StatusCode::CONFLICT,
            code,
            "the consultation is closed".into(),
        )),
    }
}

async fn recording_start(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    record(state, id, true).await
}

async fn recording_stop(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    record(state, id, false).await
}

async fn finish(state: AppState, id: String, close: bool) -> Result<Json<Value>, ApiError> {
    load(&state, &id).await?;
    state
        .consultations
        .ask(|reply| Svc::End {
            room: id.clone(),
            close,
            reply,
        })
        .await;
    // The ended event is on its way to the store; answer with what it will say.
    let mut c = load(&state, &id).await?;
    c.status = if close {
        "closed".into()
    } else if c.status == "closed" {
        c.status
    } else {
        "ended".into()
    };
    Ok(Json(view(&c, 0)))
}

async fn end(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    finish(state, id, false).await
}

async fn close(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    finish(state, id, true).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| bad("invalid_query", e.body_text()))?;
    load(&state, &id).await?;
    let limit = q.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(bad("invalid_query", "limit must be between 1 and 1000"));
    }
    let items = state.store.events(&id, q.after.unwrap_or(0), limit).await?;
    let next = if items.len() as i64 == limit {
        items.last().map(|e| e.seq)
    } else {
        None
    };
    let views: Vec<EventView> = items.iter().map(EventView::from).collect();
    Ok(Json(json!({ "items": views, "next_after": next })))
}
