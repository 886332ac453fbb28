//! The control API, call events and webhooks against a real `consulta serve`: SQLite (the
//! default) and PostgreSQL on 127.0.0.1:5432 (a fresh database per run), including a database
//! outage in the middle of a call.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use consulta_signaling::Role;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const KEY: &str = "test-api-key-0123456789";
const HOOK_SECRET: &str = "hook-secret-0123456789";

/// One HTTP/1.0 request; returns (status, JSON body or Null).
fn http(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Value) {
    let (status, _, body) = http_request(&server.http, method, path, headers, body);
    (status, body)
}

fn api(server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Bearer {KEY}");
    let text = body.map(|b| b.to_string());
    let mut h = vec![("Authorization", auth.as_str())];
    if text.is_some() {
        h.push(("Content-Type", "application/json"));
    }
    http(
        server,
        method,
        &format!("/api/v1{path}"),
        &h,
        text.as_deref(),
    )
}

/// Deliveries a receiver accepted: (lower-cased headers, body).
type Deliveries = Arc<Mutex<Vec<(HashMap<String, String>, String)>>>;

/// A webhook receiver: answers 500 while `down`, records what it gets.
struct Receiver {
    url: String,
    down: Arc<AtomicBool>,
    got: Deliveries,
}

fn receiver() -> Receiver {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks", l.local_addr().unwrap());
    let down = Arc::new(AtomicBool::new(true));
    let got: Deliveries = Arc::new(Mutex::new(Vec::new()));
    let (d, g) = (down.clone(), got.clone());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let (head, body) = loop {
                let n = c.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break (String::new(), String::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((h, b)) = text.split_once("\r\n\r\n") {
                    let len = h
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if b.len() >= len {
                        break (h.to_owned(), b[..len].to_owned());
                    }
                }
            };
            let headers: HashMap<String, String> = head
                .lines()
                .skip(1)
                .filter_map(|l| {
                    l.split_once(':')
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                })
                .collect();
            let ok = !d.load(Ordering::SeqCst);
            if ok {
                g.lock().unwrap().push((headers, body));
            }
            let status = if ok {
                "200 OK"
            } else {
                "500 Internal Server Error"
            };
            let _ = c.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    Receiver { url, down, got }
}

fn events(server: &Server, id: &str) -> Vec<Value> {
    let (status, body) = api(server, "GET", &format!("/consultations/{id}/events"), None);
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}

fn types(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

fn position(types: &[String], t: &str) -> usize {
    types
        .iter()
        .position(|x| x == t)
        .unwrap_or_else(|| panic!("no `{t}` event in {types:?}"))
}

fn settings(db: &str, hooks: &str) -> String {
    format!(
        "[api]\nkeys = [\"{KEY}\"]\n[consultation]\nempty_room_end = 1\n{db}\n[webhooks]\nurls = [\"{hooks}\"]\nsecret = \"{HOOK_SECRET}\"\nallow_http = true\n"
    )
}

async fn join_with(server: &Server, token: &str) -> Client {
    let mut c = Client::connect(server, "").await;
    c.send(json!({"type":"join","v":1,"token":token})).await;
    c
}

/// The consultation flow the Laravel app drives, on any database; returns the consultation id.
async fn consultation_flow(server: &Server, id: &str) {
    let (status, c) = api(
        server,
        "POST",
        "/consultations",
        Some(
            json!({"id": id, "scheduled_start": "2030-01-01T10:00:00Z", "policy": {"waiting_room": true}}),
        ),
    );
    assert_eq!(status, 201, "{c}");
    assert_eq!(c["status"], "scheduled");
    assert_eq!(c["policy"]["waiting_room"], true);
    assert_eq!(c["scheduled_start"], "2030-01-01T10:00:00.000Z");
    let mint = |identity: &str, role: &str| {
        let (status, t) = api(
            server,
            "POST",
            &format!("/consultations/{id}/tokens"),
            Some(json!({"identity": identity, "role": role})),
        );
        assert_eq!(status, 201, "{t}");
        assert!(t["ws_url"].as_str().unwrap().starts_with("ws://"));
        t["token"].as_str().unwrap().to_owned()
    };
    let (dr_token, pt_token) = (mint("dr-ana", "doctor"), mint("pt-joao", "patient"));

    // Waiting room: the patient waits, the doctor is told and admits.
    let mut patient = join_with(server, &pt_token).await;
    patient.expect("waiting").await;
    let mut doctor = join_with(server, &dr_token).await;
    doctor.expect("joined").await;
    let w = doctor.expect("participant-waiting").await;
    assert_eq!(w["participant"]["identity"], "pt-joao");
    let (_, parts) = api(
        server,
        "GET",
        &format!("/consultations/{id}/participants"),
        None,
    );
    assert!(
        parts["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["identity"] == "pt-joao" && p["waiting"] == true),
        "{parts}"
    );
    doctor
        .send(json!({"type":"admit","identity":"pt-joao"}))
        .await;
    let joined = patient.expect("joined").await;
    assert_eq!(joined["participants"][0]["identity"], "dr-ana");
    doctor.expect("participant-joined").await;
    let (_, parts) = api(
        server,
        "GET",
        &format!("/consultations/{id}/participants"),
        None,
    );
    let present: HashSet<&str> = parts["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["present"] == true)
        .map(|p| p["identity"].as_str().unwrap())
        .collect();
    assert_eq!(present, HashSet::from(["dr-ana", "pt-joao"]), "{parts}");

    // Both leave; the empty room ends the call.
    patient.send(json!({"type":"leave"})).await;
    patient.expect("left").await;
    doctor.send(json!({"type":"leave"})).await;
    doctor.expect("left").await;
    let mut last = Vec::new();
    wait_for("the ended event", 15, || {
        last = types(&events(server, id));
        last.iter().any(|t| t == "ended")
    })
    .await;
    assert_eq!(
        last,
        [
            "created",
            "participant_joined",
            "participant_joined",
            "admitted",
            "started",
            "participant_left",
            "participant_left",
            "ended"
        ],
        "the call's events, in order"
    );
    for (a, b) in [
        ("created", "participant_joined"),
        ("participant_joined", "admitted"),
        ("admitted", "started"),
        ("started", "participant_left"),
        ("participant_left", "ended"),
    ] {
        assert!(
            position(&last, a) < position(&last, b),
            "{a} before {b}: {last:?}"
        );
    }
    assert_eq!(
        last.iter().filter(|t| *t == "participant_joined").count(),
        2,
        "{last:?}"
    );
    assert_eq!(
        last.iter().filter(|t| *t == "participant_left").count(),
        2,
        "{last:?}"
    );
    let (_, c) = api(server, "GET", &format!("/consultations/{id}"), None);
    assert_eq!(c["status"], "ended", "{c}");
    assert!(
        c["started_at"].is_string() && c["ended_at"].is_string(),
        "{c}"
    );
}

fn check_webhooks(r: &Receiver, evs: &[Value]) {
    let got = r.got.lock().unwrap();
    for (headers, body) in got.iter() {
        let ts = &headers["x-consulta-timestamp"];
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
        mac.update(format!("{ts}.{body}").as_bytes());
        let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(
            headers["x-consulta-signature"], expected,
            "signature of {body}"
        );
        let ev: Value = serde_json::from_str(body).unwrap();
        assert_eq!(headers["x-consulta-event-id"], ev["id"].as_str().unwrap());
    }
    for e in evs {
        let id = e["id"].as_str().unwrap();
        let n = got
            .iter()
            .filter(|(h, _)| h["x-consulta-event-id"] == id)
            .count();
        assert_eq!(n, 1, "event {} delivered {n} times", e["type"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_bad_input_with_codes() {
    let server = start_full("", &settings("", "http://127.0.0.1:9/none"));
    let (s, b) = http(&server, "GET", "/api/v1/consultations", &[], None);
    assert_eq!((s, b["code"].as_str()), (401, Some("unauthorized")));
    let (s, b) = http(
        &server,
        "GET",
        "/api/v1/consultations",
        &[("Authorization", "Bearer wrong-key-0123456789")],
        None,
    );
    assert_eq!((s, b["code"].as_str()), (401, Some("unauthorized")));
    let (s, b) = http(&server, "GET", "/api/v1/openapi.json", &[], None);
    assert_eq!((s, b["openapi"].as_str()), (200, Some("3.0.3")));
    let auth = format!("Bearer {KEY}");
    let post = |body: &str, ct: Option<&str>| {
        let mut h = vec![("Authorization", auth.as_str())];
        if let Some(ct) = ct {
            h.push(("Content-Type", ct));
        }
        http(&server, "POST", "/api/v1/consultations", &h, Some(body))
    };
    let json_ct = Some("application/json");
    for (body, ct, status, code) in [
        ("{nope", json_ct, 400, "bad_json"),
        (r#"{"id": 5}"#, json_ct, 400, "invalid_body"),
        (r#"{"id": "a b"}"#, json_ct, 400, "invalid_id"),
        (
            r#"{"id": "x", "surprise": 1}"#,
            json_ct,
            400,
            "invalid_body",
        ),
        (
            r#"{"id": "x", "scheduled_start": "tomorrow"}"#,
            json_ct,
            400,
            "invalid_time",
        ),
        (
            r#"{"id": "x", "policy": {"max_participants": 99}}"#,
            json_ct,
            400,
            "invalid_policy",
        ),
        (r#"{"id": "x"}"#, None, 415, "unsupported_media_type"),
    ] {
        let (s, b) = post(body, ct);
        assert_eq!((s, b["code"].as_str()), (status, Some(code)), "{body}");
    }
    let big = format!(r#"{{"id": "x", "pad": "{}"}}"#, "a".repeat(70_000));
    let (s, b) = post(&big, json_ct);
    assert_eq!((s, b["code"].as_str()), (413, Some("body_too_large")));
    let (s, _) = post(r#"{"id": "dup-1"}"#, json_ct);
    assert_eq!(s, 201);
    let (s, b) = post(r#"{"id": "dup-1"}"#, json_ct);
    assert_eq!((s, b["code"].as_str()), (409, Some("consultation_exists")));
    for (method, path, body, status, code) in [
        (
            "GET",
            "/consultations/unknown",
            None,
            404,
            "consultation_not_found",
        ),
        (
            "POST",
            "/consultations/unknown/tokens",
            Some(json!({"identity":"a","role":"doctor"})),
            404,
            "consultation_not_found",
        ),
        (
            "POST",
            "/consultations/dup-1/tokens",
            Some(json!({"identity":"a","role":"nurse"})),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/consultations/dup-1/tokens",
            Some(json!({"identity":"a","role":"doctor","ttl":0})),
            400,
            "invalid_ttl",
        ),
        (
            "POST",
            "/consultations/dup-1/participants/nobody/kick",
            None,
            404,
            "participant_not_present",
        ),
        (
            // `muted: false` (lifting an API mute) is understood, not refused as unknown.
            "POST",
            "/consultations/dup-1/participants/nobody/mute",
            Some(json!({"kind":"audio","muted":false})),
            404,
            "participant_not_present",
        ),
        (
            "POST",
            "/consultations/dup-1/participants/nobody/admit",
            None,
            404,
            "participant_not_waiting",
        ),
        ("GET", "/consultations?limit=0", None, 400, "invalid_query"),
        ("GET", "/nowhere", None, 404, "not_found"),
    ] {
        let (s, b) = api(&server, method, path, body);
        assert_eq!(
            (s, b["code"].as_str()),
            (status, Some(code)),
            "{method} {path}"
        );
    }
    // Closing refuses further tokens.
    let (s, c) = api(&server, "POST", "/consultations/dup-1/close", None);
    assert_eq!((s, c["status"].as_str()), (200, Some("closed")));
    let (s, b) = api(
        &server,
        "POST",
        "/consultations/dup-1/tokens",
        Some(json!({"identity":"a","role":"doctor"})),
    );
    assert_eq!((s, b["code"].as_str()), (409, Some("consultation_closed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consultation_on_sqlite_with_waiting_room_and_webhooks_after_receiver_outage() {
    let hooks = receiver();
    let server = start_full("", &settings("", &hooks.url));
    consultation_flow(&server, "appt-sqlite").await;
    // The receiver was down all along: nothing delivered yet, deliveries pending in the outbox.
    assert!(hooks.got.lock().unwrap().is_empty());
    hooks.down.store(false, Ordering::SeqCst);
    let evs = events(&server, "appt-sqlite");
    let all_delivered = || {
        let got = hooks.got.lock().unwrap();
        let ids: HashSet<String> = got
            .iter()
            .map(|(h, _)| h["x-consulta-event-id"].clone())
            .collect();
        evs.iter().all(|e| ids.contains(e["id"].as_str().unwrap()))
    };
    let deadline = Instant::now() + Duration::from_secs(45);
    while !all_delivered() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default();
            panic!(
                "not every event delivered: got {} of {}\n{}",
                hooks.got.lock().unwrap().len(),
                evs.len(),
                log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check_webhooks(&hooks, &evs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_mid_call_loses_no_event_and_duplicates_none() {
    if psql("test", "SELECT 1").is_none() {
        panic!("PostgreSQL on 127.0.0.1:5432 (database `test`) is required");
    }
    let db = format!("consulta_test_{}_{}", std::process::id(), free_tcp());
    psql("test", &format!("CREATE DATABASE {db}")).expect("create the test database");
    let proxy = Proxy::start("127.0.0.1:5432");
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let url = format!(
        "[database]\nurl = \"postgres://{user}@127.0.0.1:{}/{db}\"",
        proxy.port
    );
    let hooks = receiver();
    hooks.down.store(false, Ordering::SeqCst);
    let server = start_full("", &settings(&url, &hooks.url));

    // A full consultation on PostgreSQL.
    consultation_flow(&server, "appt-pg").await;

    // A second call: the database goes away while people come and go.
    let (s, _) = api(
        &server,
        "POST",
        "/consultations",
        Some(json!({"id": "appt-outage"})),
    );
    assert_eq!(s, 201);
    let mint = |identity: &str, role: &str| {
        let (_, t) = api(
            &server,
            "POST",
            "/consultations/appt-outage/tokens",
            Some(json!({"identity": identity, "role": role})),
        );
        t["token"].as_str().unwrap().to_owned()
    };
    let (dr, pt, gu) = (
        mint("dr-b", "doctor"),
        mint("pt-b", "patient"),
        mint("gu-b", "guest"),
    );
    let mut doctor = join_with(&server, &dr).await;
    doctor.expect("joined").await;
    proxy.cut();
    let mut patient = join_with(&server, &pt).await;
    patient.expect("joined").await;
    let mut guest = join_with(&server, &gu).await;
    guest.expect("joined").await;
    guest.send(json!({"type":"leave"})).await;
    guest.expect("left").await;
    patient.send(json!({"type":"leave"})).await;
    patient.expect("left").await;
    wait_for("events journaled while the database is down", 20, || {
        metric(&server, "consulta_events_journal_pending") >= 4.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore();
    doctor.send(json!({"type":"leave"})).await;
    doctor.expect("left").await;
    wait_for("the journal replayed", 30, || {
        metric(&server, "consulta_events_journal_pending") == 0.0
    })
    .await;
    let mut evs = Vec::new();
    wait_for("the ended event", 15, || {
        evs = events(&server, "appt-outage");
        types(&evs).iter().any(|t| t == "ended")
    })
    .await;
    let t = types(&evs);
    assert_eq!(
        t.iter().filter(|x| *x == "participant_joined").count(),
        3,
        "{t:?}"
    );
    assert_eq!(
        t.iter().filter(|x| *x == "participant_left").count(),
        3,
        "{t:?}"
    );
    assert_eq!(t.iter().filter(|x| *x == "started").count(), 1, "{t:?}");
    assert!(position(&t, "started") < position(&t, "ended"));
    // Exactly once, in PostgreSQL itself.
    let counts = psql(&db, "SELECT COUNT(*) || '/' || COUNT(DISTINCT id) FROM call_events WHERE consultation_id = 'appt-outage'").unwrap();
    let (all, distinct) = counts.split_once('/').unwrap();
    assert_eq!(all, distinct, "no duplicates");
    assert_eq!(all.parse::<usize>().unwrap(), evs.len());
    assert!(metric(&server, "consulta_events_replayed_total") >= 4.0);
    drop(server);
    let _ = psql(
        "test",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
}

/// Issue 22: a participant whose connection is lost is held; a resume continues the same
/// session (no leave/join in the call events); a wrong secret, an unknown or an ended session is
/// refused; past the grace period it leaves once, with reason `lost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_resumes_without_churn_and_expires_as_lost_once() {
    let server = start_full(
        "reconnect_grace = 2",
        &settings("", "http://127.0.0.1:9/none"),
    );
    let id = "appt-roaming";
    let (status, c) = api(&server, "POST", "/consultations", Some(json!({ "id": id })));
    assert_eq!(status, 201, "{c}");
    let (mut doctor, _) = Client::join(&server, id, "dr-ana", Role::Doctor).await;
    let (patient, joined) = Client::join(&server, id, "pt-joao", Role::Patient).await;
    doctor.expect("participant-joined").await;
    assert_eq!(joined["reconnect_grace"], 2);
    let session = joined["session_id"].as_str().unwrap().to_owned();
    let secret = joined["resume_secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64, "256 random bits");
    let resume = |session: &str, secret: &str| json!({"type": "resume", "v": 1, "session_id": session, "secret": secret});

    // The patient's connection dies without a goodbye (its TCP connection is just dropped).
    drop(patient);
    let r = doctor.expect("participant-reconnecting").await;
    assert_eq!(r["identity"], "pt-joao");
    // Only the session's own secret resumes it.
    for (s, k) in [
        (session.as_str(), "0".repeat(64)),
        (session.as_str(), String::new()),
        ("999999", secret.clone()),
        ("not-a-number", secret.clone()),
    ] {
        let mut thief = Client::connect(&server, "").await;
        thief.send(resume(s, &k)).await;
        thief.expect_error("resume_refused").await;
        assert!(thief.closes().await);
    }
    let mut patient = Client::connect(&server, "").await;
    patient.send(resume(&session, &secret)).await;
    let resumed = patient.expect("resumed").await;
    assert_eq!(resumed["session_id"], session.as_str());
    assert_eq!(resumed["participants"][0]["identity"], "dr-ana");
    assert_eq!(
        doctor.expect("participant-reconnected").await["identity"],
        "pt-joao"
    );

    // A network change leaves the old connection half-open: a resume takes it over anyway.
    let mut moved = Client::connect(&server, "").await;
    moved.send(resume(&session, &secret)).await;
    moved.expect("resumed").await;
    assert!(patient.closes().await, "the replaced connection is closed");
    // Signaling goes on over the new connection.
    moved
        .send(json!({"type":"mute","kind":"audio","muted":true}))
        .await;
    let m = doctor.expect("mute").await;
    assert_eq!(
        (m["identity"].as_str(), m["muted"].as_bool()),
        (Some("pt-joao"), Some(true))
    );

    // Gone for good: after the 2 s grace period it leaves once, as `lost`.
    drop(moved);
    doctor.expect("participant-reconnecting").await;
    let left = doctor.expect("participant-left").await;
    assert_eq!(
        (left["identity"].as_str(), left["reason"].as_str()),
        (Some("pt-joao"), Some("lost"))
    );
    let mut late = Client::connect(&server, "").await;
    late.send(resume(&session, &secret)).await;
    late.expect_error("resume_refused").await;
    // No second leave follows.
    let more = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match doctor.ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "participant-left" {
                        return v;
                    }
                }
                Some(Ok(_)) => {}
                _ => panic!("the doctor's connection closed"),
            }
        }
    })
    .await;
    assert!(more.is_err(), "a second participant-left: {more:?}");

    // The call events: one join and one leave (reason lost) for the patient, nothing between.
    let mut patient_events = Vec::new();
    wait_for("the patient's participant_left event", 10, || {
        patient_events = events(&server, id)
            .into_iter()
            .filter(|e| e["payload"]["identity"] == "pt-joao")
            .filter(|e| e["type"] == "participant_joined" || e["type"] == "participant_left")
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_owned(),
                    e["payload"]["reason"].clone(),
                )
            })
            .collect();
        patient_events.len() >= 2
    })
    .await;
    assert_eq!(
        patient_events,
        [
            ("participant_joined".to_owned(), Value::Null),
            ("participant_left".to_owned(), json!("lost"))
        ]
    );
    assert_eq!(metric(&server, "consulta_reconnects_expired_total"), 1.0);
    assert_eq!(metric(&server, "consulta_ws_resumes_total"), 2.0);
}
