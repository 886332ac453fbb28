//! Messages from the media side that are also call events: a video paused for want of a shared
//! codec (bandwidth pauses come and go with the network and are only counted in metrics), and a
//! participant's connection poor for a while. Each is recorded by one session only: the
//! subscriber's for a pause, the participant's own for its connection.

use consulta_signaling::protocol::{PauseReason, QualityLevel, ServerMessage, TrackKind};
use serde_json::json;

use crate::consultations::Request;

/// The call event `msg` is for the session of `identity` in `room`, if any.
pub(super) fn call_event(msg: &ServerMessage, room: &str, identity: &str) -> Option<Request> {
    let kind = |k: &TrackKind| {
        if *k == TrackKind::Audio {
            "audio"
        } else {
            "video"
        }
    };
    let (event, payload) = match msg {
        ServerMessage::TrackPaused {
            identity: publisher,
            kind: k,
            reason: PauseReason::Codec,
        } => (
            "track_paused",
            json!({"identity": identity, "publisher": publisher, "kind": kind(k), "reason": "codec"}),
        ),
        ServerMessage::TrackResumed {
            identity: publisher,
            kind: k,
            reason: PauseReason::Codec,
        } => (
            "track_resumed",
            json!({"identity": identity, "publisher": publisher, "kind": kind(k), "reason": "codec"}),
        ),
        ServerMessage::Quality {
            identity: who,
            level,
            poor_for: Some(secs),
        } if who == identity => {
            let level = if *level == QualityLevel::Lost {
                "lost"
            } else {
                "poor"
            };
            (
                "poor_connection",
                json!({"identity": identity, "level": level, "seconds": secs}),
            )
        }
        _ => return None,
    };
    Some(Request::MediaEvent {
        room: room.to_owned(),
        event,
        payload,
    })
}
