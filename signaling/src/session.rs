//! The signaling session's state machine, pure: which client message a session takes in which
//! phase, what it answers, and how the phase moves. The server's session task (`src/ws.rs`)
//! does the IO each [`Gate`] names; the fuzz target `session` drives this machine with
//! arbitrary frames and server-side happenings and checks its invariants.
//!
//! ```text
//! Connected ──join accepted──► Waiting ──admitted──► InCall
//!     │  └──────────join accepted, admitted at once──────┘
//!     └─ resume: the connection is handed to the live session (this one closes)
//! any phase ── leave (once entered) / a fatal error / the connection or media ends ──► Closed
//! ```

use crate::protocol::{ClientMessage, ErrorCode, PROTOCOL_VERSION};

/// The refusal of a message of another protocol version.
pub const UNSUPPORTED_VERSION: &str = "this server speaks protocol version 1";

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The socket is open; no join (or resume) yet.
    Connected,
    /// Joined the consultation, not the call: the waiting room, or admitted with the media
    /// join still to come.
    Waiting,
    /// In the call: media messages go to the worker.
    InCall,
    /// Over; the socket closes. Nothing else is taken.
    Closed,
}

/// What the server knows besides the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Context {
    /// The server refuses new joins (single node, draining).
    pub refuses_joins: bool,
    /// The session's role is doctor (admits from the waiting room).
    pub doctor: bool,
}

/// What the session does with a client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Pong,
    /// Send this error; the session closes when the code is fatal.
    Refuse(ErrorCode, &'static str),
    /// Check the token and enter the consultation (the outcome comes back through
    /// [`Session::entered`] or [`Session::refused`]).
    Enter,
    /// Hand this connection to the session it names, or refuse and close.
    Resume,
    /// Leave the consultation and close.
    Leave,
    /// Record the participant's recording consent.
    Consent,
    /// Admit someone from the waiting room.
    Admit,
    /// Pass it to the media worker (offer, answer, candidate, ICE restart, mute).
    Media,
    /// The session is closed: drop it.
    Ignore,
}

/// One session's phase, moved by what happens to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    phase: Phase,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            phase: Phase::Connected,
        }
    }
}

impl Session {
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the session has entered the consultation (waiting or in the call).
    pub fn entered(&self) -> bool {
        matches!(self.phase, Phase::Waiting | Phase::InCall)
    }

    /// Decides what `msg` gets, and moves to [`Phase::Closed`] when the answer ends the
    /// session (a leave, a fatal refusal, a resume handed elsewhere).
    pub fn on_client(&mut self, msg: &ClientMessage, cx: Context) -> Gate {
        let gate = gate(self.phase, msg, cx);
        match gate {
            Gate::Leave | Gate::Resume => self.phase = Phase::Closed,
            Gate::Refuse(code, _) if code.is_fatal() => self.phase = Phase::Closed,
            _ => {}
        }
        gate
    }

    /// The join was accepted: in the call at once, or in the waiting room.
    pub fn entered_consultation(&mut self, in_call: bool) {
        if self.phase == Phase::Connected {
            self.phase = if in_call {
                Phase::InCall
            } else {
                Phase::Waiting
            };
        }
    }

    /// Admitted from the waiting room (its media join succeeded).
    pub fn admitted(&mut self) {
        if self.phase == Phase::Waiting {
            self.phase = Phase::InCall;
        }
    }

    /// The join was refused (bad token, full room, ...) or the session ended for any other
    /// reason (kicked, call ended, connection or media lost, replaced).
    pub fn close(&mut self) {
        self.phase = Phase::Closed;
    }
}

/// What `msg` gets in `phase` (see [`Session::on_client`], which also moves the phase).
pub fn gate(phase: Phase, msg: &ClientMessage, cx: Context) -> Gate {
    let entered = matches!(phase, Phase::Waiting | Phase::InCall);
    match msg {
        _ if phase == Phase::Closed => Gate::Ignore,
        ClientMessage::Ping => Gate::Pong,
        ClientMessage::Join { .. } if entered => {
            Gate::Refuse(ErrorCode::AlreadyJoined, "this session has joined already")
        }
        ClientMessage::Join { .. } if cx.refuses_joins => Gate::Refuse(
            ErrorCode::ServerDraining,
            "the server is shutting down; join another server or retry",
        ),
        ClientMessage::Join { .. } => Gate::Enter,
        ClientMessage::Resume { .. } if entered => Gate::Refuse(
            ErrorCode::AlreadyJoined,
            "this connection serves a session already",
        ),
        ClientMessage::Resume { v, .. } if *v != PROTOCOL_VERSION => {
            Gate::Refuse(ErrorCode::UnsupportedVersion, UNSUPPORTED_VERSION)
        }
        ClientMessage::Resume { .. } => Gate::Resume,
        ClientMessage::Leave if entered => Gate::Leave,
        ClientMessage::RecordingConsent { .. } if entered => Gate::Consent,
        _ if phase != Phase::InCall => Gate::Refuse(
            ErrorCode::NotJoined,
            "send join first (or wait to be admitted)",
        ),
        ClientMessage::Admit { .. } if !cx.doctor => {
            Gate::Refuse(ErrorCode::Forbidden, "only a doctor admits participants")
        }
        ClientMessage::Admit { .. } => Gate::Admit,
        ClientMessage::Offer { .. }
        | ClientMessage::Answer { .. }
        | ClientMessage::Candidate { .. }
        | ClientMessage::RestartIce
        | ClientMessage::VideoSize { .. }
        | ClientMessage::VideoLayers { .. }
        | ClientMessage::Mute { .. } => Gate::Media,
        // Decided above for a session in the call (it has entered).
        ClientMessage::Leave | ClientMessage::RecordingConsent { .. } => Gate::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TrackKind;

    fn parse(s: &str) -> ClientMessage {
        ClientMessage::parse(s).unwrap()
    }

    #[test]
    fn media_is_taken_only_in_the_call() {
        let offer = parse(r#"{"type":"offer","sdp":"v=0"}"#);
        let mut s = Session::default();
        let cx = Context::default();
        assert!(matches!(
            s.on_client(&offer, cx),
            Gate::Refuse(ErrorCode::NotJoined, _)
        ));
        assert_eq!(
            s.on_client(&parse(r#"{"type":"join","v":1,"token":"t"}"#), cx),
            Gate::Enter
        );
        s.entered_consultation(false);
        assert_eq!(s.phase(), Phase::Waiting);
        assert!(matches!(
            s.on_client(&offer, cx),
            Gate::Refuse(ErrorCode::NotJoined, _)
        ));
        assert_eq!(
            s.on_client(&parse(r#"{"type":"recording-consent","consent":true}"#), cx),
            Gate::Consent
        );
        s.admitted();
        assert_eq!(s.on_client(&offer, cx), Gate::Media);
        let mute = ClientMessage::Mute {
            kind: TrackKind::Audio,
            muted: true,
        };
        assert_eq!(s.on_client(&mute, cx), Gate::Media);
    }

    #[test]
    fn a_second_join_is_refused_and_a_leave_closes() {
        let join = parse(r#"{"type":"join","v":1,"token":"t"}"#);
        let mut s = Session::default();
        let cx = Context::default();
        assert_eq!(s.on_client(&join, cx), Gate::Enter);
        s.entered_consultation(true);
        assert!(matches!(
            s.on_client(&join, cx),
            Gate::Refuse(ErrorCode::AlreadyJoined, _)
        ));
        assert_eq!(s.phase(), Phase::InCall, "not fatal");
        assert_eq!(s.on_client(&parse(r#"{"type":"leave"}"#), cx), Gate::Leave);
        assert_eq!(s.phase(), Phase::Closed);
        assert_eq!(s.on_client(&join, cx), Gate::Ignore);
        s.entered_consultation(true);
        assert_eq!(s.phase(), Phase::Closed, "closed stays closed");
    }

    #[test]
    fn draining_refuses_joins_fatally_and_only_doctors_admit() {
        let mut s = Session::default();
        let cx = Context {
            refuses_joins: true,
            doctor: false,
        };
        assert!(matches!(
            s.on_client(&parse(r#"{"type":"join","v":1,"token":"t"}"#), cx),
            Gate::Refuse(ErrorCode::ServerDraining, _)
        ));
        assert_eq!(s.phase(), Phase::Closed);
        let mut s = Session::default();
        s.entered_consultation(true);
        let admit = parse(r#"{"type":"admit","identity":"pt"}"#);
        assert!(matches!(
            s.on_client(&admit, Context::default()),
            Gate::Refuse(ErrorCode::Forbidden, _)
        ));
        let doctor = Context {
            refuses_joins: false,
            doctor: true,
        };
        assert_eq!(s.on_client(&admit, doctor), Gate::Admit);
    }

    #[test]
    fn the_version_refusal_names_this_version() {
        assert_eq!(
            UNSUPPORTED_VERSION,
            format!("this server speaks protocol version {PROTOCOL_VERSION}")
        );
    }

    #[test]
    fn a_resume_hands_over_and_a_wrong_version_is_fatal() {
        let mut s = Session::default();
        let resume = parse(r#"{"type":"resume","v":1,"session_id":"1","secret":"s"}"#);
        assert_eq!(s.on_client(&resume, Context::default()), Gate::Resume);
        assert_eq!(s.phase(), Phase::Closed);
        let mut s = Session::default();
        let old = parse(r#"{"type":"resume","v":9,"session_id":"1","secret":"s"}"#);
        assert!(matches!(
            s.on_client(&old, Context::default()),
            Gate::Refuse(ErrorCode::UnsupportedVersion, _)
        ));
        assert_eq!(s.phase(), Phase::Closed);
    }
}
