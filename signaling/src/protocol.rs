//! The signaling wire protocol, version 1 (see `docs/protocol.md`).
//!
//! Client frames are parsed by [`ClientMessage::parse`], which sorts bad input into the stable
//! error codes of [`ErrorCode`]: not JSON, unknown type, wrong fields. Server frames are built as
//! [`ServerMessage`] values and serialized once.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version this server speaks (`join.v`).
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest text frame a client may send.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Media kind of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    Audio,
    Video,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    #[serde(default)]
    pub sdk: Option<String>,
    #[serde(default)]
    pub ua: Option<String>,
    /// Milliseconds between the client's pings once in a call: a client that promises a
    /// heartbeat and goes silent for three of them has lost its connection (a half-open one
    /// after a network change reports no error), and is held for its resume.
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
}

/// A message from the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    Join {
        v: u32,
        token: String,
        room: Option<String>,
        client: ClientInfo,
    },
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Candidate {
        candidate: String,
    },
    Mute {
        kind: TrackKind,
        muted: bool,
    },
    /// A doctor admits a participant from the waiting room.
    Admit {
        identity: String,
    },
    /// The participant gives (`true`) or withdraws (`false`) consent to be recorded.
    RecordingConsent {
        consent: bool,
    },
    /// A new WebSocket takes over a session that lost its own (network change, proxy restart):
    /// `session_id` and `secret` come from that session's `joined`.
    Resume {
        v: u32,
        session_id: String,
        secret: String,
    },
    /// The client's ICE path broke (or its network changed): the server offers an ICE restart.
    RestartIce,
    /// A subscriber shows `identity`'s video at this size (device pixels; 0×0: hidden), or has
    /// no preference (`None`): the server forwards no layer much larger than that.
    VideoSize {
        identity: String,
        size: Option<(u32, u32)>,
    },
    /// A publisher's simulcast layers' heights in pixels, lowest first (the order of its
    /// `sendEncodings`), so that subscribers' sizes map to layers.
    VideoLayers {
        heights: Vec<u32>,
    },
    Ping,
    Leave,
}

#[derive(Deserialize)]
struct JoinFields {
    v: u32,
    token: String,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    client: Option<ClientInfo>,
}
#[derive(Deserialize)]
struct SdpFields {
    sdp: String,
}
#[derive(Deserialize)]
struct CandidateFields {
    candidate: String,
}
#[derive(Deserialize)]
struct AdmitFields {
    identity: String,
}
#[derive(Deserialize)]
struct ConsentFields {
    consent: bool,
}
#[derive(Deserialize)]
struct ResumeFields {
    v: u32,
    session_id: String,
    secret: String,
}
#[derive(Deserialize)]
struct VideoSizeFields {
    identity: String,
    #[serde(default)]
    width: Option<u32>,
    #[serde(default)]
    height: Option<u32>,
}
#[derive(Deserialize)]
struct VideoLayersFields {
    heights: Vec<u32>,
}

/// Largest video size (either side, pixels) a subscriber may state.
pub const MAX_VIDEO_SIDE: u32 = 16_384;
/// Most simulcast layers a publisher may list.
pub const MAX_VIDEO_LAYERS: usize = 3;

#[derive(Deserialize)]
struct MuteFields {
    kind: TrackKind,
    muted: bool,
}

impl ClientMessage {
    /// Parses one text frame; the error is what the client is told.
    pub fn parse(text: &str) -> Result<Self, (ErrorCode, String)> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err((
                ErrorCode::MessageTooLarge,
                format!("messages are limited to {MAX_MESSAGE_BYTES} bytes"),
            ));
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| (ErrorCode::BadJson, format!("not valid JSON: {e}")))?;
        let ty = value
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                (
                    ErrorCode::BadMessage,
                    "a message needs a string field `type`".to_owned(),
                )
            })?
            .to_owned();
        fn fields<T: serde::de::DeserializeOwned>(
            ty: &str,
            v: Value,
        ) -> Result<T, (ErrorCode, String)> {
            serde_json::from_value(v)
                .map_err(|e| (ErrorCode::BadMessage, format!("bad `{ty}` message: {e}")))
        }
        Ok(match ty.as_str() {
            "join" => {
                let f: JoinFields = fields(&ty, value)?;
                ClientMessage::Join {
                    v: f.v,
                    token: f.token,
                    room: f.room,
                    client: f.client.unwrap_or_default(),
                }
            }
            "offer" => ClientMessage::Offer {
                sdp: fields::<SdpFields>(&ty, value)?.sdp,
            },
            "answer" => ClientMessage::Answer {
                sdp: fields::<SdpFields>(&ty, value)?.sdp,
            },
            "candidate" => ClientMessage::Candidate {
                candidate: fields::<CandidateFields>(&ty, value)?.candidate,
            },
            "mute" => {
                let f: MuteFields = fields(&ty, value)?;
                ClientMessage::Mute {
                    kind: f.kind,
                    muted: f.muted,
                }
            }
            "admit" => ClientMessage::Admit {
                identity: fields::<AdmitFields>(&ty, value)?.identity,
            },
            "recording-consent" => ClientMessage::RecordingConsent {
                consent: fields::<ConsentFields>(&ty, value)?.consent,
            },
            "resume" => {
                let f: ResumeFields = fields(&ty, value)?;
                ClientMessage::Resume {
                    v: f.v,
                    session_id: f.session_id,
                    secret: f.secret,
                }
            }
            "restart-ice" => ClientMessage::RestartIce,
            "video-size" => {
                let f: VideoSizeFields = fields(&ty, value)?;
                let bad = |m: &str| {
                    Err((
                        ErrorCode::BadMessage,
                        format!("bad `video-size` message: {m}"),
                    ))
                };
                let size = match (f.width, f.height) {
                    (None, None) => None,
                    (Some(w), Some(h)) if w <= MAX_VIDEO_SIDE && h <= MAX_VIDEO_SIDE => {
                        Some((w, h))
                    }
                    (Some(_), Some(_)) => {
                        return bad(&format!("width and height are at most {MAX_VIDEO_SIDE}"))
                    }
                    _ => return bad("give both width and height, or neither"),
                };
                ClientMessage::VideoSize {
                    identity: f.identity,
                    size,
                }
            }
            "video-layers" => {
                let f: VideoLayersFields = fields(&ty, value)?;
                let ok = !f.heights.is_empty()
                    && f.heights.len() <= MAX_VIDEO_LAYERS
                    && f.heights.iter().all(|h| (1..=MAX_VIDEO_SIDE).contains(h))
                    && f.heights.windows(2).all(|w| w[0] <= w[1]);
                if !ok {
                    return Err((
                        ErrorCode::BadMessage,
                        format!(
                            "bad `video-layers` message: `heights` lists 1 to {MAX_VIDEO_LAYERS} \
                             heights from 1 to {MAX_VIDEO_SIDE}, lowest first"
                        ),
                    ));
                }
                ClientMessage::VideoLayers { heights: f.heights }
            }
            "ping" => ClientMessage::Ping,
            "leave" => ClientMessage::Leave,
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err((
                    ErrorCode::UnknownType,
                    format!("unknown message type `{shown}`"),
                ));
            }
        })
    }
}

/// Mute state of a participant's tracks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MuteState {
    pub audio: bool,
    pub video: bool,
}

/// A participant as others see it. Never carries names or addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub identity: String,
    pub role: String,
    pub muted: MuteState,
}

/// One track the server sends in a session, by transceiver mid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub mid: String,
    pub identity: String,
    pub kind: TrackKind,
}

/// A message to the browser.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage {
    Joined {
        v: u32,
        session_id: String,
        participant: ParticipantInfo,
        participants: Vec<ParticipantInfo>,
        ice_servers: Vec<Value>,
        /// Proves a later `resume` comes from this session (filled in by the signaling side).
        #[serde(skip_serializing_if = "Option::is_none")]
        resume_secret: Option<String>,
        /// Seconds the server holds this session after its connection is lost.
        #[serde(skip_serializing_if = "Option::is_none")]
        reconnect_grace: Option<u64>,
        /// The cluster node serving the call (`[cluster] node_id`; absent on a single node).
        #[serde(skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    /// The room lives on another node (cluster mode): join again at `url`, that node's
    /// WebSocket. Sent in answer to `join` (then the socket closes), or during a call when the
    /// room is merged into another node after a split; the SDK follows it.
    Moved {
        url: String,
        node: String,
    },
    /// The session was taken over by this connection (`resume`). Worker events that arrived
    /// while it was away follow; `participants` is who is in the room now.
    Resumed {
        session_id: String,
        participants: Vec<ParticipantInfo>,
    },
    /// Fresh TURN credentials (the previous ones expire soon): the client applies them and
    /// restarts ICE.
    IceServers {
        ice_servers: Vec<Value>,
    },
    /// A participant's connection was lost; the server holds its place for the grace period.
    ParticipantReconnecting {
        identity: String,
    },
    /// A participant that was reconnecting is back (signaling and media).
    ParticipantReconnected {
        identity: String,
    },
    Answer {
        sdp: String,
    },
    Offer {
        sdp: String,
        tracks: Vec<TrackInfo>,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        identity: String,
        reason: LeaveReason,
    },
    TrackPublished {
        identity: String,
        kind: TrackKind,
    },
    TrackUnpublished {
        identity: String,
        kind: TrackKind,
    },
    Mute {
        identity: String,
        kind: TrackKind,
        muted: bool,
    },
    /// The server stopped forwarding one of `identity`'s tracks to this subscriber (its
    /// publisher still sends it): `bandwidth` when this subscriber's downlink cannot carry it
    /// now (its audio keeps flowing); `codec` when it cannot decode any codec the publisher can
    /// send. `track-resumed` follows when it flows again.
    TrackPaused {
        identity: String,
        kind: TrackKind,
        reason: PauseReason,
    },
    TrackResumed {
        identity: String,
        kind: TrackKind,
        reason: PauseReason,
    },
    /// Sent to a publisher: keep your video under `max_bitrate` bits per second (a subscriber's
    /// downlink is weak), or send as you like again (`null`). The SDK lowers its encodings'
    /// `maxBitrate` and, for low caps, its resolution, so frames keep flowing.
    BitrateCap {
        kind: TrackKind,
        max_bitrate: Option<u64>,
    },
    /// Sent to a publisher of simulcast video: send layers up to `max_layer` (0: the lowest)
    /// and pause those above, which no subscriber watches (they are smaller on screen, or
    /// there are none); a higher `max_layer` resumes them.
    PublishLayers {
        kind: TrackKind,
        max_layer: u8,
    },
    /// Sent to a publisher: send video in `codec` (`VP8`, `VP9`, `H264`, `AV1`, `H265`), the one
    /// every participant of the room decodes. The client puts that codec first in its sender's
    /// codec preferences and offers again (the server holds its own offers until that offer);
    /// the server's answer lists the codec first.
    VideoCodec {
        codec: String,
    },
    /// A participant's connection quality (this one's too), sent to everyone in the room when it
    /// changes: measured by the server on its uplink and downlink (loss, RTT, bandwidth
    /// estimate). `poor_for` (seconds) is set once when it has been `poor` or worse that long.
    Quality {
        identity: String,
        level: QualityLevel,
        #[serde(skip_serializing_if = "Option::is_none")]
        poor_for: Option<u64>,
    },
    /// The session is in the waiting room until a doctor admits it.
    Waiting,
    /// Someone waits to be admitted (sent to doctors).
    ParticipantWaiting {
        participant: ParticipantInfo,
    },
    /// The consultation's recording state, sent on every change and once after joining.
    Recording(RecordingState),
    Pong,
    Left,
    Error {
        code: ErrorCode,
        message: String,
        fatal: bool,
    },
}

impl ServerMessage {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            fatal: code.is_fatal(),
        }
    }

    pub fn to_json(&self) -> String {
        // Serializing these plain types cannot fail.
        serde_json::to_string(self).expect("server messages serialize")
    }
}

/// Whether the consultation is being recorded, and why not when it is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RecordingState {
    /// Media is being recorded now.
    pub active: bool,
    /// Recording is wanted (policy `required`, or started through the API).
    pub requested: bool,
    /// Identities present that have not consented (recording waits for them).
    pub waiting_for: Vec<String>,
    /// Why it is not recording although requested (`consent`, `spool_full`, `unavailable`), or
    /// why it stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A participant's connection quality, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QualityLevel {
    Excellent,
    Good,
    Poor,
    /// Its connection is lost (the server holds its place while it reconnects).
    Lost,
}

/// Why a track is paused for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PauseReason {
    /// The subscriber's downlink cannot carry it now.
    Bandwidth,
    /// The subscriber cannot decode any codec the publisher can send.
    Codec,
}

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaveReason {
    Left,
    Disconnected,
    Replaced,
    Kicked,
    Ended,
    /// Its connection was lost and it did not come back within the reconnect grace period.
    Lost,
    /// Sent to the node that holds its room (cluster mode); it joins again there.
    Moved,
    /// The media worker holding its call failed; it joins again (on a working one).
    #[serde(rename = "media_lost")]
    MediaLost,
}

/// Stable error codes of the signaling protocol (see `docs/protocol.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    BadMessage,
    UnknownType,
    UnsupportedVersion,
    MessageTooLarge,
    RateLimited,
    NotJoined,
    AlreadyJoined,
    AlreadyOffered,
    NoPendingOffer,
    SdpInvalid,
    TokenInvalid,
    TokenExpired,
    TokenRoomMismatch,
    RoomFull,
    SessionReplaced,
    JoinTimeout,
    IdleTimeout,
    ServerBusy,
    ServerDraining,
    ConsultationClosed,
    Kicked,
    CallEnded,
    Forbidden,
    ParticipantNotWaiting,
    InternalError,
    /// A `resume` names no live session, or its secret is wrong.
    ResumeRefused,
    /// The participant's connection was lost and did not come back within the grace period.
    ConnectionLost,
    /// The token's identity is in the consultation with another role: a session is never
    /// taken over by a token of another role.
    IdentityInUse,
    /// The media worker holding the call failed. Not fatal: the server closes the socket next,
    /// and the client joins again (the SDK does), on a worker that works.
    MediaLost,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 30] = [
        ErrorCode::BadJson,
        ErrorCode::BadMessage,
        ErrorCode::UnknownType,
        ErrorCode::UnsupportedVersion,
        ErrorCode::MessageTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::NotJoined,
        ErrorCode::AlreadyJoined,
        ErrorCode::AlreadyOffered,
        ErrorCode::NoPendingOffer,
        ErrorCode::SdpInvalid,
        ErrorCode::TokenInvalid,
        ErrorCode::TokenExpired,
        ErrorCode::TokenRoomMismatch,
        ErrorCode::RoomFull,
        ErrorCode::SessionReplaced,
        ErrorCode::JoinTimeout,
        ErrorCode::IdleTimeout,
        ErrorCode::ServerBusy,
        ErrorCode::ServerDraining,
        ErrorCode::ConsultationClosed,
        ErrorCode::Kicked,
        ErrorCode::CallEnded,
        ErrorCode::Forbidden,
        ErrorCode::ParticipantNotWaiting,
        ErrorCode::InternalError,
        ErrorCode::ResumeRefused,
        ErrorCode::ConnectionLost,
        ErrorCode::IdentityInUse,
        ErrorCode::MediaLost,
    ];

    /// Whether the server closes the socket after sending this error.
    pub fn is_fatal(self) -> bool {
        use ErrorCode::*;
        matches!(
            self,
            UnsupportedVersion
                | TokenInvalid
                | TokenExpired
                | TokenRoomMismatch
                | RoomFull
                | SessionReplaced
                | JoinTimeout
                | IdleTimeout
                | ServerBusy
                | ServerDraining
                | ConsultationClosed
                | Kicked
                | CallEnded
                | InternalError
                | ResumeRefused
                | ConnectionLost
                | IdentityInUse
        )
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadJson => "bad_json",
            BadMessage => "bad_message",
            UnknownType => "unknown_type",
            UnsupportedVersion => "unsupported_version",
            MessageTooLarge => "message_too_large",
            RateLimited => "rate_limited",
            NotJoined => "not_joined",
            AlreadyJoined => "already_joined",
            AlreadyOffered => "already_offered",
            NoPendingOffer => "no_pending_offer",
            SdpInvalid => "sdp_invalid",
            TokenInvalid => "token_invalid",
            TokenExpired => "token_expired",
            TokenRoomMismatch => "token_room_mismatch",
            RoomFull => "room_full",
            SessionReplaced => "session_replaced",
            JoinTimeout => "join_timeout",
            IdleTimeout => "idle_timeout",
            ServerBusy => "server_busy",
            ServerDraining => "server_draining",
            ConsultationClosed => "consultation_closed",
            Kicked => "kicked",
            CallEnded => "call_ended",
            Forbidden => "forbidden",
            ParticipantNotWaiting => "participant_not_waiting",
            InternalError => "internal_error",
            ResumeRefused => "resume_refused",
            ConnectionLost => "connection_lost",
            IdentityInUse => "identity_in_use",
            MediaLost => "media_lost",
        }
    }
}

impl From<crate::TokenError> for ErrorCode {
    fn from(e: crate::TokenError) -> Self {
        match e {
            crate::TokenError::Expired => ErrorCode::TokenExpired,
            _ => ErrorCode::TokenInvalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_type() {
        let j = ClientMessage::parse(r#"{"type":"join","v":1,"token":"t","room":"r"}"#).unwrap();
        assert_eq!(
            j,
            ClientMessage::Join {
                v: 1,
                token: "t".into(),
                room: Some("r".into()),
                client: ClientInfo::default()
            }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"offer","sdp":"x"}"#).unwrap(),
            ClientMessage::Offer { sdp: "x".into() }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"answer","sdp":"y"}"#).unwrap(),
            ClientMessage::Answer { sdp: "y".into() }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"mute","kind":"video","muted":true}"#).unwrap(),
            ClientMessage::Mute {
                kind: TrackKind::Video,
                muted: true
            }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"ping"}"#).unwrap(),
            ClientMessage::Ping
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"resume","v":1,"session_id":"7","secret":"s"}"#)
                .unwrap(),
            ClientMessage::Resume {
                v: 1,
                session_id: "7".into(),
                secret: "s".into()
            }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"restart-ice"}"#).unwrap(),
            ClientMessage::RestartIce
        );
        assert_eq!(
            ClientMessage::parse(
                r#"{"type":"video-size","identity":"dr","width":320,"height":180}"#
            )
            .unwrap(),
            ClientMessage::VideoSize {
                identity: "dr".into(),
                size: Some((320, 180))
            }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"video-size","identity":"dr"}"#).unwrap(),
            ClientMessage::VideoSize {
                identity: "dr".into(),
                size: None
            }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"video-layers","heights":[180,360,720]}"#).unwrap(),
            ClientMessage::VideoLayers {
                heights: vec![180, 360, 720]
            }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"leave","extra":1}"#).unwrap(),
            ClientMessage::Leave
        );
        assert!(matches!(
            ClientMessage::parse(
                r#"{"type":"candidate","candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0"}"#
            ),
            Ok(ClientMessage::Candidate { .. })
        ));
    }

    #[test]
    fn sorts_bad_input_into_codes() {
        let code = |s: &str| ClientMessage::parse(s).unwrap_err().0;
        assert_eq!(code("{nope"), ErrorCode::BadJson);
        assert_eq!(code(""), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type":7}"#), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type":"join","v":"1"}"#), ErrorCode::BadMessage);
        assert_eq!(
            code(r#"{"type":"mute","kind":"smell","muted":true}"#),
            ErrorCode::BadMessage
        );
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        for bad in [
            r#"{"type":"video-size","identity":"dr","width":320}"#,
            r#"{"type":"video-size","identity":"dr","width":320,"height":99999}"#,
            r#"{"type":"video-size","width":320,"height":180}"#,
            r#"{"type":"video-size","identity":"dr","width":-1,"height":180}"#,
            r#"{"type":"video-layers","heights":[]}"#,
            r#"{"type":"video-layers","heights":[720,360]}"#,
            r#"{"type":"video-layers","heights":[0,360]}"#,
            r#"{"type":"video-layers","heights":[90,180,360,720]}"#,
        ] {
            assert_eq!(code(bad), ErrorCode::BadMessage, "{bad}");
        }
        let big = format!(
            r#"{{"type":"offer","sdp":"{}"}}"#,
            "a".repeat(MAX_MESSAGE_BYTES)
        );
        assert_eq!(code(&big), ErrorCode::MessageTooLarge);
    }

    #[test]
    fn server_messages_have_wire_names() {
        let m = ServerMessage::error(ErrorCode::TokenRoomMismatch, "x").to_json();
        assert_eq!(
            m,
            r#"{"type":"error","code":"token_room_mismatch","message":"x","fatal":true}"#
        );
        let m = ServerMessage::ParticipantLeft {
            identity: "p".into(),
            reason: LeaveReason::Left,
        }
        .to_json();
        assert_eq!(
            m,
            r#"{"type":"participant-left","identity":"p","reason":"left"}"#
        );
        for c in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                Value::String(c.as_str().into())
            );
        }
    }
}
