//! A media worker thread that dies (a panic outside the per-participant guard, injected with
//! `CONSULTA_FAULT_PANIC_WORKER_ROOM`) under a real `consulta serve` with two workers: its
//! room's participants are told `media_lost` and can join again at once (the room moves to the
//! live worker), a room on the other worker is untouched, `/readyz` answers 503 and the
//! metric counts the dead worker, and the call events say why the sessions ended, once.

mod common;

use std::time::Duration;

use common::*;
use consulta_signaling::Role;
use serde_json::{json, Value};

const KEY: &str = "test-api-key-0123456789";

/// Messages until an error (or the socket closes: None).
async fn next_error(c: &mut Client) -> Option<Value> {
    loop {
        let m = c.recv_within(Duration::from_secs(15)).await?;
        if m["type"] == "error" {
            return Some(m);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_sends_its_calls_to_the_live_one_and_the_server_reports_not_ready() {
    let room = "appt-worker-dies";
    let server = start_env(
        "",
        || format!("[api]\nkeys = [\"{KEY}\"]\n"),
        &[("CONSULTA_FAULT_PANIC_WORKER_ROOM", &format!("{room}@2"))],
    );
    assert!(http_status(&server, "/readyz").contains("200"));
    let (mut doctor, _) = Client::join(&server, room, "dr-ana", Role::Doctor).await;
    let (mut patient, _) = Client::join(&server, room, "pt-joao", Role::Patient).await;
    doctor.expect("participant-joined").await;
    // Another room, placed on the other (least loaded) worker.
    let other = "appt-other-worker";
    let (mut bystander, _) = Client::join(&server, other, "dr-bia", Role::Doctor).await;

    // Two seconds after the first join its worker panics: both are told, and their sockets
    // close.
    for c in [&mut doctor, &mut patient] {
        let e = next_error(c)
            .await
            .expect("an error before the socket closes");
        assert_eq!(e["code"], "media_lost", "{e}");
        assert_eq!(e["fatal"], false, "{e}");
        assert!(c.closes().await, "the socket closes after media_lost");
    }
    assert_eq!(metric(&server, "consulta_media_workers_dead"), 1.0);
    let ready = http_status(&server, "/readyz");
    assert!(ready.contains("503"), "{ready}");

    // They join again: the room now lives on the live worker.
    let (mut doctor, _) = Client::join(&server, room, "dr-ana", Role::Doctor).await;
    let (_patient, _) = Client::join(&server, room, "pt-joao", Role::Patient).await;
    let p = doctor.expect("participant-joined").await;
    assert_eq!(p["participant"]["identity"], "pt-joao");

    // The other worker's room never noticed.
    bystander.send(json!({"type": "ping"})).await;
    bystander.expect("pong").await;

    // The call events: both sessions ended with media_lost, once; the call did not end.
    let mut evs = Vec::new();
    for _ in 0..50 {
        evs = call_events(&server, KEY, room);
        if evs
            .iter()
            .filter(|e| e["type"] == "participant_joined")
            .count()
            == 4
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left: Vec<&Value> = evs
        .iter()
        .filter(|e| e["type"] == "participant_left")
        .collect();
    assert_eq!(left.len(), 2, "{evs:?}");
    assert!(
        left.iter().all(|e| e["payload"]["reason"] == "media_lost"),
        "{left:?}"
    );
    assert_eq!(
        evs.iter()
            .filter(|e| e["type"] == "participant_joined")
            .count(),
        4
    );
    assert!(!evs.iter().any(|e| e["type"] == "ended"), "{evs:?}");
    let log = std::fs::read_to_string(server.dir.join("server.log")).unwrap();
    assert!(log.contains("a media worker panicked"), "{log}");
}
