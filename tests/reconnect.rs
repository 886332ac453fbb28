//! How a signaling connection ends decides whether the session ends: a normal close (1000, the
//! SDK's goodbye) or a page going away (1001, its tab closed) ends it; any other close (4000:
//! the SDK dropping a socket it gave up on while it reconnects) is held like a connection that
//! died.

mod common;

use common::*;
use consulta_signaling::Role;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

async fn close_with(c: &mut Client, code: CloseCode) {
    c.send_raw(Message::Close(Some(CloseFrame {
        code,
        reason: "test".into(),
    })))
    .await;
}

#[tokio::test]
async fn a_goodbye_close_ends_the_session_other_closes_are_held() {
    let server = start("reconnect_grace = 30");
    let room = "appt-close-codes";
    let (mut doctor, _) = Client::join(&server, room, "dr-ana", Role::Doctor).await;
    let (mut patient, joined) = Client::join(&server, room, "pt-joao", Role::Patient).await;
    doctor.expect("participant-joined").await;
    let (session, secret) = (
        joined["session_id"].as_str().unwrap().to_owned(),
        joined["resume_secret"].as_str().unwrap().to_owned(),
    );

    for code in [CloseCode::Library(4000), CloseCode::Library(4999)] {
        close_with(&mut patient, code).await;
        let r = doctor.expect("participant-reconnecting").await;
        assert_eq!(r["identity"], "pt-joao", "close {code:?} is held");
        patient = Client::connect(&server, "").await;
        patient
            .send(json!({"type": "resume", "v": 1, "session_id": session, "secret": secret}))
            .await;
        patient.expect("resumed").await;
        doctor.expect("participant-reconnected").await;
    }

    // The SDK's goodbye: the session ends at once.
    close_with(&mut patient, CloseCode::Normal).await;
    let left = doctor.expect("participant-left").await;
    assert_eq!(left["identity"], "pt-joao");
    let mut late = Client::connect(&server, "").await;
    late.send(json!({"type": "resume", "v": 1, "session_id": session, "secret": secret}))
        .await;
    late.expect_error("resume_refused").await;

    // A tab that closes says "going away": it ends at once too.
    let (mut guest, _) = Client::join(&server, room, "pt-maria", Role::Patient).await;
    doctor.expect("participant-joined").await;
    close_with(&mut guest, CloseCode::Away).await;
    let left = doctor.expect("participant-left").await;
    assert_eq!(left["identity"], "pt-maria");
}
