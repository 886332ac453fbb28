//! Issue 24, items 8 and 10, through a real `consulta serve`: joins a minute per participant
//! and per source address (the address from `X-Forwarded-For` only through a trusted proxy).

mod common;

use common::*;
use consulta_signaling::Role;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A signaling connection that says (through the proxy) it comes from `forwarded_for`.
async fn connect_from(server: &Server, forwarded_for: &str) -> Client {
    let mut req = format!("ws://{}/ws", server.http)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-forwarded-for", forwarded_for.parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws connects");
    Client { ws }
}

async fn join_from(server: &Server, from: &str, room: &str, identity: &str) -> (Client, Value) {
    let mut c = connect_from(server, from).await;
    c.send(json!({"type":"join","v":1,"token":token(room, identity, Role::Patient)}))
        .await;
    let first = loop {
        let m = c.recv().await.expect("an answer to the join");
        if m["type"] == "joined" || m["type"] == "error" {
            break m;
        }
    };
    (c, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_are_limited_per_participant_and_per_source_address() {
    let server = start_env(
        "",
        String::new,
        &[
            ("CONSULTA_HTTP_JOIN_LIMIT_PER_IDENTITY", "2"),
            ("CONSULTA_HTTP_JOIN_LIMIT_PER_IP", "4"),
            // The test client plays nginx on loopback.
            ("CONSULTA_HTTP_TRUSTED_PROXIES", "127.0.0.1"),
        ],
    );
    // One participant rejoining: the third join within the minute is refused, and says so.
    let home = "6.6.6.6, 198.51.100.1";
    let mut kept = Vec::new();
    for _ in 0..2 {
        let (c, m) = join_from(&server, home, "appt-j", "pt-1").await;
        assert_eq!(m["type"], "joined", "{m}");
        kept.push(c);
    }
    let (mut c, m) = join_from(&server, home, "appt-j", "pt-1").await;
    assert_eq!(
        (m["code"].as_str(), m["fatal"].as_bool()),
        (Some("rate_limited"), Some(true)),
        "{m}"
    );
    assert!(m["message"].as_str().unwrap().contains("retry in"), "{m}");
    assert!(c.closes().await, "a refused join's socket is closed");
    // The same identity in another consultation has its own budget.
    let (c, m) = join_from(&server, home, "appt-k", "pt-1").await;
    assert_eq!(m["type"], "joined", "{m}");
    kept.push(c);
    // One address (the proxy's rightmost entry; the forged left one does not count): four
    // joins a minute whoever joins, the fifth refused; another address is not affected.
    let (_c, m) = join_from(&server, home, "appt-k", "pt-2").await;
    assert_eq!(m["code"], "rate_limited", "{m}");
    let (c, m) = join_from(&server, "198.51.100.2", "appt-k", "pt-3").await;
    assert_eq!(m["type"], "joined", "{m}");
    kept.push(c);
    assert_eq!(
        metric(&server, "consulta_joins_refused_total{limit=\"identity\"}"),
        1.0
    );
    assert_eq!(
        metric(&server, "consulta_joins_refused_total{limit=\"address\"}"),
        1.0
    );
}
