//! Issue 24, items 8 and 10, through a real `consulta serve`: joins a minute per participant
//! and per source address (the address from `X-Forwarded-For` only through a trusted proxy); a
//! closed consultation that the store does not show closed yet is not reopened by a join; a
//! `required` recording that cannot start is told to the participants and recorded as a call
//! event. (A join held while the policy cannot be read: tests/security.rs.)

mod common;

use std::time::Duration;

use common::*;
use consulta_signaling::Role;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const KEY: &str = "test-api-key-0123456789";

fn api(server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Bearer {KEY}");
    let mut headers = vec![("Authorization", auth.as_str())];
    let text = body.map(|b| b.to_string());
    if text.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    let (s, _, v) = http_request(
        &server.http,
        method,
        &format!("/api/v1{path}"),
        &headers,
        text.as_deref(),
    );
    (s, v)
}

fn event_types(server: &Server, id: &str) -> Vec<Value> {
    let (s, b) = api(server, "GET", &format!("/consultations/{id}/events"), None);
    assert_eq!(s, 200, "{b}");
    b["items"].as_array().unwrap().clone()
}

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

/// A fresh PostgreSQL database; dropped by the caller.
fn database() -> (String, String) {
    if psql("test", "SELECT 1").is_none() {
        panic!("PostgreSQL on 127.0.0.1:5432 (database `test`) is required");
    }
    let db = format!("consulta_fc_{}_{}", std::process::id(), free_tcp());
    psql("test", &format!("CREATE DATABASE {db}")).expect("create the test database");
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    (db.clone(), format!("postgres://{user}@127.0.0.1:5432/{db}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_consultation_never_reopens_while_the_store_lags() {
    let (db, url) = database();
    let server = start_full(
        "",
        &format!("[api]\nkeys = [\"{KEY}\"]\n[database]\nurl = \"{url}\"\n"),
    );
    let (s, b) = api(
        &server,
        "POST",
        "/consultations",
        Some(json!({ "id": "appt-c" })),
    );
    assert_eq!(s, 201, "{b}");
    let (mut doctor, _) = Client::join(&server, "appt-c", "dr-1", Role::Doctor).await;
    // From now on the store lags: the `ended` event of the close cannot be written (it is
    // journaled), so the database still shows the consultation open.
    psql(
        &db,
        "CREATE FUNCTION lag() RETURNS trigger AS $$ BEGIN IF NEW.kind = 'ended' THEN \
         RAISE EXCEPTION 'the store lags'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER lag BEFORE INSERT ON call_events FOR EACH ROW EXECUTE FUNCTION lag();",
    )
    .expect("install the trigger");
    let (s, b) = api(&server, "POST", "/consultations/appt-c/close", None);
    assert_eq!((s, b["status"].as_str()), (200, Some("closed")), "{b}");
    doctor.expect_error("call_ended").await;
    drop(doctor);
    // The empty room is forgotten (a second or two); the database still says it is open.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = psql(&db, "SELECT status FROM consultations WHERE id = 'appt-c'");
    assert_ne!(status.as_deref().map(str::trim), Some("closed"));
    // A link handed out before the close: refused, not admitted under what the store says.
    let mut patient = Client::connect(&server, "").await;
    patient
        .send(json!({"type":"join","v":1,"token":token("appt-c","pt-1",Role::Patient)}))
        .await;
    let m = patient.recv().await.expect("an answer to the join");
    assert_eq!(
        m["code"], "consultation_closed",
        "the consultation reopened: {m}"
    );
    // Nor is a new link minted for it.
    let (s, b) = api(
        &server,
        "POST",
        "/consultations/appt-c/tokens",
        Some(json!({ "identity": "pt-2", "role": "patient" })),
    );
    assert_eq!(
        (s, b["code"].as_str()),
        (409, Some("consultation_closed")),
        "{b}"
    );
    drop(server);
    let _ = psql(
        "test",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_recording_that_cannot_start_is_told_and_recorded() {
    // A spool already fuller than its limit allows a recording to start.
    let spool = std::env::temp_dir().join(format!("consulta-fc-spool-{}", free_tcp()));
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(spool.join("left-over.webm"), vec![0u8; 4096]).unwrap();
    let server = start_full(
        "",
        &format!(
            "[api]\nkeys = [\"{KEY}\"]\n[recording]\nspool_dir = \"{}\"\nmax_spool_bytes = 5242880\npart_size = 5242880\n",
            spool.display()
        ),
    );
    let (s, b) = api(
        &server,
        "POST",
        "/consultations",
        Some(json!({ "id": "appt-rec", "policy": { "recording": "required" } })),
    );
    assert_eq!(s, 201, "{b}");
    let (mut doctor, _) = Client::join(&server, "appt-rec", "dr-1", Role::Doctor).await;
    let (mut patient, _) = Client::join(&server, "appt-rec", "pt-1", Role::Patient).await;
    for c in [&mut doctor, &mut patient] {
        c.send(json!({"type":"recording-consent","consent":true}))
            .await;
    }
    // Each participant hears that the recording the policy requires is not running, and why.
    for c in [&mut doctor, &mut patient] {
        let told = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let m = c.expect("recording").await;
                if m["reason"] == "spool_full" {
                    return m;
                }
            }
        })
        .await
        .expect("told that the spool is full");
        assert_eq!(
            (&told["active"], &told["requested"]),
            (&json!(false), &json!(true)),
            "{told}"
        );
    }
    // The call's record says so, once.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let failed = loop {
        let evs = event_types(&server, "appt-rec");
        let failed: Vec<Value> = evs
            .into_iter()
            .filter(|e| e["type"] == "recording_failed")
            .collect();
        if !failed.is_empty() || std::time::Instant::now() > deadline {
            break failed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["payload"]["reason"], "spool_full", "{failed:?}");
    assert_eq!(failed[0]["payload"]["policy"], "required", "{failed:?}");
    drop(server);
    let _ = std::fs::remove_dir_all(&spool);
}
