//! Target `session`: the signaling session's state machine
//! (`consulta_signaling::session`) driven by a program of steps, each either a client text
//! frame (parsed as the server parses it) or something the server side reports (the join
//! accepted, admitted from the waiting room, the session ended, the server starting to drain,
//! the role). A join the machine lets in is decided by the server before the next frame, as
//! `src/ws/enter.rs` does (accepted or refused). After every step the machine's invariants are
//! checked against the phase it had:
//! a closed session takes nothing; media and admissions only in the call; one accepted join;
//! a fatal refusal, a leave or a handed-over resume closes it; refusals are valid JSON frames.

use consulta_signaling::protocol::{ClientMessage, ServerMessage};
use consulta_signaling::session::{Context, Gate, Phase, Session};

use crate::Input;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mut s = Session::default();
    let mut cx = Context::default();
    let mut enters = 0u32;
    let mut steps = 0;
    while !input.is_empty() && steps < 256 {
        steps += 1;
        let before = s.phase();
        match input.u8() % 6 {
            0 | 1 => {
                let text = String::from_utf8_lossy(input.long()).into_owned();
                let Ok(msg) = ClientMessage::parse(&text) else {
                    continue;
                };
                let gate = s.on_client(&msg, cx);
                check(before, s.phase(), &msg, gate, cx);
                if gate == Gate::Enter {
                    enters += 1;
                    assert_eq!(enters, 1, "a second join was let in");
                    // The server decides a join before it reads the next frame (src/ws/enter.rs
                    // awaits it): the session is in the consultation or closed by then.
                    match input.u8() % 3 {
                        0 => {
                            s.close();
                            assert_eq!(s.phase(), Phase::Closed);
                        }
                        n => {
                            s.entered_consultation(n == 2);
                            assert!(s.entered(), "an accepted join enters the consultation");
                        }
                    }
                }
            }
            2 => {
                let in_call = input.bool();
                s.entered_consultation(in_call);
                let expected = match (before, in_call) {
                    (Phase::Connected, true) => Phase::InCall,
                    (Phase::Connected, false) => Phase::Waiting,
                    (other, _) => other,
                };
                assert_eq!(s.phase(), expected);
            }
            3 => {
                s.admitted();
                let expected = if before == Phase::Waiting {
                    Phase::InCall
                } else {
                    before
                };
                assert_eq!(s.phase(), expected);
            }
            4 => {
                s.close();
                assert_eq!(s.phase(), Phase::Closed);
            }
            _ => {
                cx.refuses_joins = input.bool();
                cx.doctor = input.bool();
            }
        }
    }
}

fn check(before: Phase, after: Phase, msg: &ClientMessage, gate: Gate, cx: Context) {
    if before == Phase::Closed {
        assert_eq!(gate, Gate::Ignore, "a closed session took {msg:?}");
        assert_eq!(after, Phase::Closed);
        return;
    }
    let entered = matches!(before, Phase::Waiting | Phase::InCall);
    match gate {
        Gate::Media | Gate::Admit => assert_eq!(before, Phase::InCall, "{gate:?} outside the call"),
        Gate::Enter => assert!(before == Phase::Connected && !cx.refuses_joins),
        Gate::Consent => assert!(entered),
        Gate::Leave => assert!(entered),
        Gate::Resume => assert_eq!(before, Phase::Connected),
        Gate::Pong => assert!(matches!(msg, ClientMessage::Ping)),
        Gate::Refuse(code, text) => {
            assert!(!text.is_empty());
            let frame = ServerMessage::error(code, text).to_json();
            let v: serde_json::Value = serde_json::from_str(&frame).expect("error frames are JSON");
            assert_eq!(v["code"], code.as_str());
            assert_eq!(after == Phase::Closed, code.is_fatal(), "{code:?}");
        }
        Gate::Ignore => {}
    }
    match gate {
        Gate::Leave | Gate::Resume => assert_eq!(after, Phase::Closed),
        Gate::Refuse(..) => {}
        _ => assert_eq!(after, before, "{gate:?} moved the phase"),
    }
}
