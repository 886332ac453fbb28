//! Target `signaling`: the WebSocket text-frame parser (`ClientMessage::parse`) over arbitrary
//! text, and the server's error frame built from what the parser reports (it quotes the client's
//! input back, so it must stay valid JSON whatever the input was).

use consulta_signaling::protocol::{ClientMessage, ServerMessage};

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match ClientMessage::parse(&text) {
        Ok(m) => {
            // Parsing is a function of the text.
            assert_eq!(ClientMessage::parse(&text).ok(), Some(m));
        }
        Err((code, message)) => {
            let frame = ServerMessage::error(code, message).to_json();
            let v: serde_json::Value = serde_json::from_str(&frame).expect("error frames are JSON");
            assert_eq!(v["type"], "error");
        }
    }
}
