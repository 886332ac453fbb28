//! The control API on any node: calls that act on a live room (admit, kick, mute, end, close,
//! recording, presence) are forwarded over the LAN to the node that hosts the room
//! (`[cluster] internal_url`); database-only calls answer where they arrive. Also the peer
//! lookup `GET /api/v1/cluster/rooms/{room}` that lets a node find a room's host while Redis
//! is down, signed with the join-token secret every node shares (no API key needed between
//! nodes, nothing revealed to anyone else).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde_json::json;

use super::placement::NodeInfo;
use super::Cluster;
use crate::server::AppState;

/// Marks a request a node forwarded: the receiver serves it itself (no forwarding loops).
pub const FORWARDED: &str = "x-consulta-forwarded";
/// `<unix seconds>.<hex HMAC-SHA256 of "peer:<room>:<seconds>">` on peer lookups.
const PEER_AUTH: &str = "x-consulta-peer";
/// How old a signed lookup may be.
const PEER_AUTH_WINDOW: u64 = 30;
/// Largest body forwarded (the API's own limit).
const MAX_BODY: usize = 64 * 1024;

fn sign(key: &[u8], room: &str, at: u64) -> String {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(format!("peer:{room}:{at}").as_bytes());
    format!("{at}.{}", hex::encode(mac.finalize().into_bytes()))
}

fn verify(key: &[u8], room: &str, header: &str, now: u64) -> bool {
    let Some((at, _)) = header.split_once('.') else {
        return false;
    };
    let Ok(at) = at.parse::<u64>() else {
        return false;
    };
    if now.abs_diff(at) > PEER_AUTH_WINDOW {
        return false;
    }
    let want = sign(key, room, at);
    want.len() == header.len()
        && want
            .bytes()
            .zip(header.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Whether `peer` says it hosts `room` (false on any failure).
pub async fn peer_hosts(cluster: &Cluster, peer: &NodeInfo, room: &str, timeout: Duration) -> bool {
    let url = format!(
        "{}/api/v1/cluster/rooms/{room}",
        peer.internal_url.trim_end_matches('/')
    );
    let auth = sign(&cluster.0.peer_key, room, crate::unix_now());
    let req = cluster
        .0
        .http
        .get(url)
        .header(PEER_AUTH, auth)
        .timeout(timeout);
    let Ok(resp) = req.send().await else {
        return false;
    };
    if !resp.status().is_success() {
        return false;
    }
    let Ok(body) = resp.bytes().await else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("hosted").and_then(|h| h.as_bool()))
        .unwrap_or(false)
}

/// The peer lookup route (outside the API-key layer; it checks its own signature).
pub fn routes() -> Router<AppState> {
    Router::new().route("/cluster/rooms/{room}", get(room_hosted))
}

async fn room_hosted(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(cluster) = &state.cluster else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"code": "not_found", "message": "cluster mode is off"})),
        )
            .into_response();
    };
    let signed = headers
        .get(PEER_AUTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|h| verify(&cluster.0.peer_key, &room, h, crate::unix_now()));
    if !signed {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"code": "unauthorized", "message": "peer lookups are signed by nodes"})),
        )
            .into_response();
    }
    Json(json!({ "hosted": cluster.hosts(&room), "node": cluster.node_id() })).into_response()
}

/// The room a control API path acts on live, if it does: `consultations/{id}/` followed by
/// `end`, `close`, `recording…` or `participants…`.
fn live_room(path: &str) -> Option<&str> {
    let rest = path.split("consultations/").nth(1)?;
    let (id, action) = rest.split_once('/')?;
    let live = matches!(action, "end" | "close" | "participants")
        || action.starts_with("recording")
        || action.starts_with("participants/");
    (live && !id.is_empty()).then_some(id)
}

/// Middleware on the authenticated API routes: a live-room call for a room hosted on another
/// node goes there; its answer comes back as is. When that node cannot be reached the call is
/// served here (its database effects still happen).
pub async fn to_owner(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(cluster) = state.cluster.clone() else {
        return next.run(req).await;
    };
    if req.headers().contains_key(FORWARDED) {
        return next.run(req).await;
    }
    let path = req.uri().path().to_owned();
    let Some(room) = live_room(&path).map(str::to_owned) else {
        return next.run(req).await;
    };
    let Some(owner) = cluster.remote_owner(&room).await else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({"code": "body_too_large", "message": "bodies are limited to 65536 bytes"})),
        )
            .into_response();
    };
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let url = format!(
        "{}/api/v1/consultations/{}{query}",
        owner.internal_url.trim_end_matches('/'),
        path.split("consultations/").nth(1).unwrap_or_default()
    );
    let mut out = cluster
        .0
        .http
        .request(parts.method.clone(), url)
        .header(FORWARDED, cluster.node_id())
        .body(bytes.clone());
    for name in [
        axum::http::header::AUTHORIZATION,
        axum::http::header::CONTENT_TYPE,
    ] {
        if let Some(v) = parts.headers.get(&name) {
            out = out.header(name, v);
        }
    }
    match out.send().await {
        Ok(resp) => {
            cluster
                .stats()
                .forwarded
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let status = resp.status();
            let ctype = resp
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .cloned();
            let body = resp.bytes().await.unwrap_or_default();
            let mut r = (status, body).into_response();
            if let Some(c) = ctype {
                r.headers_mut().insert(axum::http::header::CONTENT_TYPE, c);
            }
            r.headers_mut().insert(
                "x-consulta-node",
                HeaderValue::from_str(&owner.id).unwrap_or(HeaderValue::from_static("?")),
            );
            r
        }
        Err(e) => {
            tracing::warn!(node = %owner.id, error = %e, "the room's node did not answer a forwarded API call; serving it here");
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_room_paths() {
        assert_eq!(live_room("/consultations/c1/end"), Some("c1"));
        assert_eq!(
            live_room("/api/v1/consultations/c1/participants/p1/kick"),
            Some("c1")
        );
        assert_eq!(live_room("/consultations/c1/recording/start"), Some("c1"));
        assert_eq!(live_room("/consultations/c1/participants"), Some("c1"));
        assert_eq!(live_room("/consultations/c1/tokens"), None);
        assert_eq!(live_room("/consultations/c1/events"), None);
        assert_eq!(live_room("/consultations/c1"), None);
        assert_eq!(live_room("/consultations"), None);
    }

    #[test]
    fn peer_lookups_are_signed_and_fresh() {
        let key = b"shared-secret-0123456789";
        let h = sign(key, "room1", 1000);
        assert!(verify(key, "room1", &h, 1010));
        assert!(!verify(key, "room2", &h, 1010));
        assert!(!verify(key, "room1", &h, 1100));
        assert!(!verify(b"other-secret-0123456789", "room1", &h, 1000));
        assert!(!verify(key, "room1", "1000.00", 1000));
    }
}
