//! A participant that leaves and joins again at once, under a real `consulta serve`: the server
//! has stored its `participant_left` before the client hears `left`, so the next join's
//! `participant_joined` always follows it in the consultation's log (a CI run once found a
//! leave stored after the next join: the session told the consultation service only after
//! its socket was closed).

mod common;

use common::*;
use consulta_signaling::Role;
use serde_json::json;

const KEY: &str = "test-api-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_is_stored_before_the_client_hears_left() {
    let room = "appt-leave-order";
    // Forty joins of one participant in a few seconds: the join limits (a defence against
    // floods, see docs/security.md) are off here.
    let server = start_env(
        "",
        || format!("[api]\nkeys = [\"{KEY}\"]\n"),
        &[
            ("CONSULTA_HTTP_JOIN_LIMIT_PER_IDENTITY", "0"),
            ("CONSULTA_HTTP_JOIN_LIMIT_PER_IP", "0"),
        ],
    );
    let (_host, _) = Client::join(&server, room, "dr-host", Role::Doctor).await;
    const CYCLES: usize = 40;
    for _ in 0..CYCLES {
        let (mut c, _) = Client::join(&server, room, "dr-again", Role::Doctor).await;
        c.send(json!({"type": "leave"})).await;
        c.expect("left").await;
    }
    let mut seen = Vec::new();
    wait_for("every leave stored", 20, || {
        seen = call_events(&server, KEY, room)
            .into_iter()
            .filter(|e| e["payload"]["identity"] == "dr-again")
            .collect();
        seen.len() >= 2 * CYCLES
    })
    .await;
    let order: Vec<(String, String)> = seen
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["payload"]["session_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(order.len(), 2 * CYCLES, "{order:?}");
    for pair in order.chunks(2) {
        assert_eq!(pair[0].0, "participant_joined", "{order:?}");
        assert_eq!(pair[1].0, "participant_left", "{order:?}");
        assert_eq!(
            pair[0].1, pair[1].1,
            "a leave of another session: {order:?}"
        );
    }
}
