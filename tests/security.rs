//! Issue 24's attacks through the public interfaces of a real `consulta serve` and the CLI: ids
//! that name paths, API keys without the scope, the control API on its own listener, rate
//! limits, token lifetimes, sessions of another role. docs/security.md says what each defends.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use consulta_signaling::Role;
use serde_json::{json, Value};

const KEY: &str = "test-api-key-0123456789";

/// One HTTP/1.0 request to `addr` with an optional bearer key and JSON body; returns (status,
/// head, JSON body or Null).
fn request(
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
    extra: &[(&str, &str)],
) -> (u16, String, Value) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let text = body.map(|b| b.to_string());
    if text.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    http_request(addr, method, path, &headers, text.as_deref())
}

fn code(v: &Value) -> Option<&str> {
    v["code"].as_str()
}

/// `consulta` with `args`, the test secret in the environment; (success, stdout, stderr).
fn cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = std::env::temp_dir().join(format!("consulta-sec-cli-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_consulta"))
        .args(args)
        .env("CONSULTA_AUTH_TOKEN_SECRET", SECRET)
        .env("CONSULTA_DATA_DIR", &dir)
        .envs(env.iter().copied())
        .output()
        .expect("consulta runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_token_refuses_ids_that_name_paths() {
    for (room, identity) in [
        ("../x", "ana"),
        ("a/b", "ana"),
        ("a..b", "ana"),
        ("appt-1", "../../etc/passwd"),
        ("appt-1", ".ana"),
    ] {
        let (ok, out, err) = cli(
            &[
                "token",
                "--room",
                room,
                "--identity",
                identity,
                "--role",
                "guest",
            ],
            &[],
        );
        assert!(!ok, "{room} {identity}: minted {out}");
        assert!(err.contains("A-Z a-z 0-9"), "{err}");
    }
    let (ok, out, err) = cli(
        &[
            "token",
            "--room",
            "appt-1",
            "--identity",
            "dr.ana:1",
            "--role",
            "doctor",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim().split('.').count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_ids_and_identities_that_name_paths() {
    let server = start_full("", &format!("[api]\nkeys = [\"{KEY}\"]\n"));
    let addr = server.http.clone();
    for id in ["../x", "a/b", "a..b", ".x", "x y"] {
        let (s, _, b) = request(
            &addr,
            "POST",
            "/api/v1/consultations",
            Some(KEY),
            Some(&json!({ "id": id })),
            &[],
        );
        assert_eq!((s, code(&b)), (400, Some("invalid_id")), "{id}");
    }
    let (s, _, b) = request(
        &addr,
        "POST",
        "/api/v1/consultations",
        Some(KEY),
        Some(&json!({ "id": "appt-7" })),
        &[],
    );
    assert_eq!(s, 201, "{b}");
    for identity in ["../x", "a/b", "..", "-x"] {
        let (s, _, b) = request(
            &addr,
            "POST",
            "/api/v1/consultations/appt-7/tokens",
            Some(KEY),
            Some(&json!({ "identity": identity, "role": "patient" })),
            &[],
        );
        assert_eq!((s, code(&b)), (400, Some("invalid_identity")), "{identity}");
    }
    // Percent-encoded in a path segment, the same.
    let (s, _, b) = request(
        &addr,
        "POST",
        "/api/v1/consultations/appt-7/participants/..%2F..%2Fx/kick",
        Some(KEY),
        None,
        &[],
    );
    assert_eq!((s, code(&b)), (400, Some("invalid_identity")));
    let (s, _, b) = request(
        &addr,
        "GET",
        "/api/v1/consultations/..%2Fx",
        Some(KEY),
        None,
        &[],
    );
    assert_eq!((s, code(&b)), (400, Some("invalid_id")));
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_act_within_their_scopes() {
    let (minter, reader, admin) = (
        "minter-key-0123456789",
        "reader-key-0123456789",
        "admin-key-0123456789",
    );
    let tail = format!(
        "[api]\nkeys = [\"{KEY}\"]\nkey_hashes = [\"{} tokens:mint\", \"{} events:read\", \"{} consultations:write participants:write recordings:write\"]\n",
        sha256_hex(minter),
        sha256_hex(reader),
        sha256_hex(admin)
    );
    let server = start_full("", &tail);
    let addr = server.http.clone();
    let call = |key: &str, method: &str, path: &str, body: Option<Value>| {
        let (s, _, b) = request(
            &addr,
            method,
            &format!("/api/v1{path}"),
            Some(key),
            body.as_ref(),
            &[],
        );
        (s, b)
    };
    // The config holds no usable key: its hashes are not keys.
    let (s, b) = call(&sha256_hex(minter), "GET", "/consultations", None);
    assert_eq!((s, code(&b)), (401, Some("unauthorized")));
    let create = Some(json!({ "id": "appt-9" }));
    for key in [minter, reader] {
        let (s, b) = call(key, "POST", "/consultations", create.clone());
        assert_eq!((s, code(&b)), (403, Some("insufficient_scope")), "{key}");
        assert!(b["message"]
            .as_str()
            .unwrap()
            .contains("consultations:write"));
    }
    let (s, b) = call(admin, "POST", "/consultations", create);
    assert_eq!(s, 201, "{b}");
    let mint = Some(json!({ "identity": "pat-1", "role": "patient" }));
    for key in [reader, admin] {
        let (s, b) = call(key, "POST", "/consultations/appt-9/tokens", mint.clone());
        assert_eq!((s, code(&b)), (403, Some("insufficient_scope")), "{key}");
    }
    let (s, b) = call(minter, "POST", "/consultations/appt-9/tokens", mint.clone());
    assert_eq!(s, 201, "{b}");
    // A plain [api] keys entry keeps every scope.
    let (s, b) = call(KEY, "POST", "/consultations/appt-9/tokens", mint);
    assert_eq!(s, 201, "{b}");
    let (s, b) = call(reader, "GET", "/consultations/appt-9/events", None);
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(minter, "GET", "/consultations/appt-9/events", None);
    assert_eq!((s, code(&b)), (403, Some("insufficient_scope")));
    let (s, b) = call(minter, "GET", "/consultations/appt-9", None);
    assert_eq!((s, code(&b)), (403, Some("insufficient_scope")));
    for (method, path) in [
        ("POST", "/consultations/appt-9/participants/pat-1/kick"),
        ("POST", "/consultations/appt-9/participants/pat-1/admit"),
        ("POST", "/consultations/appt-9/recording/start"),
        ("POST", "/consultations/appt-9/end"),
        ("POST", "/consultations/appt-9/close"),
    ] {
        for key in [minter, reader] {
            let (s, b) = call(key, method, path, None);
            assert_eq!(
                (s, code(&b)),
                (403, Some("insufficient_scope")),
                "{key} {path}"
            );
        }
    }
    let (s, b) = call(admin, "POST", "/consultations/appt-9/close", None);
    assert_eq!(s, 200, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_on_its_own_listener_and_ws_url_from_config() {
    let api_port = free_tcp();
    let api_addr = format!("127.0.0.1:{api_port}");
    let server = start_env(
        "",
        || format!("[api]\nkeys = [\"{KEY}\"]\nlisten = \"127.0.0.1:{api_port}\"\n"),
        &[(
            "CONSULTA_HTTP_PUBLIC_URL",
            "https://consulta.example.com.br",
        )],
    );
    // The public listener has no control API any more.
    let (s, _, _) = request(
        &server.http,
        "POST",
        "/api/v1/consultations",
        Some(KEY),
        Some(&json!({ "id": "appt-1" })),
        &[],
    );
    assert_eq!(s, 404);
    let (s, _, _) = request(&server.http, "GET", "/api/v1/openapi.json", None, None, &[]);
    assert_eq!(s, 404);
    // Its own listener has.
    let (s, _, b) = request(
        &api_addr,
        "POST",
        "/api/v1/consultations",
        Some(KEY),
        Some(&json!({ "id": "appt-1" })),
        &[],
    );
    assert_eq!(s, 201, "{b}");
    // ws_url comes from [http] public_url, whatever the request says about its host.
    let (s, _, b) = request(
        &api_addr,
        "POST",
        "/api/v1/consultations/appt-1/tokens",
        Some(KEY),
        Some(&json!({ "identity": "pat-1", "role": "patient" })),
        &[
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Proto", "http"),
        ],
    );
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["ws_url"], "wss://consulta.example.com.br/ws");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_url_ignores_forwarded_host_without_public_url() {
    let server = start_full("", &format!("[api]\nkeys = [\"{KEY}\"]\n"));
    let (s, _, _) = request(
        &server.http,
        "POST",
        "/api/v1/consultations",
        Some(KEY),
        Some(&json!({ "id": "appt-2" })),
        &[],
    );
    assert_eq!(s, 201);
    let (s, _, b) = request(
        &server.http,
        "POST",
        "/api/v1/consultations/appt-2/tokens",
        Some(KEY),
        Some(&json!({ "identity": "pat-1", "role": "patient" })),
        &[("X-Forwarded-Host", "evil.example")],
    );
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["ws_url"], format!("ws://{}/ws", server.http));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_rate_limits_per_key_and_per_address() {
    let other = "other-key-0123456789";
    let tail = format!(
        "[api]\nkeys = [\"{KEY}\", \"{other}\"]\nrate_limit_per_key = 1\nrate_limit_per_ip = 1000\nrate_limit_burst = 3\n"
    );
    let server = start_full("", &tail);
    let get = |key: &str| {
        request(
            &server.http,
            "GET",
            "/api/v1/consultations",
            Some(key),
            None,
            &[],
        )
    };
    for _ in 0..3 {
        assert_eq!(get(KEY).0, 200);
    }
    let (s, head, b) = get(KEY);
    assert_eq!((s, code(&b)), (429, Some("rate_limited")));
    assert!(
        head.to_ascii_lowercase().contains("retry-after: "),
        "{head}"
    );
    // Another key has its own budget.
    assert_eq!(get(other).0, 200);
    drop(server);

    // Per address: guessing keys spends the budget too.
    let tail = format!(
        "[api]\nkeys = [\"{KEY}\"]\nrate_limit_per_key = 1000\nrate_limit_per_ip = 1\nrate_limit_burst = 3\n"
    );
    let server = start_full("", &tail);
    for _ in 0..3 {
        let (s, _, _) = request(
            &server.http,
            "GET",
            "/api/v1/consultations",
            Some("guess-0123456789abcdef"),
            None,
            &[],
        );
        assert_eq!(s, 401);
    }
    let (s, _, b) = request(
        &server.http,
        "GET",
        "/api/v1/consultations",
        Some(KEY),
        None,
        &[],
    );
    assert_eq!((s, code(&b)), (429, Some("rate_limited")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_another_role_never_takes_over_a_session() {
    let server = start("");
    let (mut doctor, _) = Client::join(&server, "appt-r", "dr-1", Role::Doctor).await;
    // The doctor's identity with a patient token: refused, the doctor stays.
    let mut intruder = Client::connect(&server, "").await;
    intruder
        .send(json!({"type":"join","v":1,"token":token("appt-r","dr-1",Role::Patient)}))
        .await;
    let e = intruder.expect_error("identity_in_use").await;
    assert_eq!(e["fatal"], true);
    assert!(intruder.closes().await);
    let (_patient, _) = Client::join(&server, "appt-r", "pt-1", Role::Patient).await;
    let m = doctor.expect("participant-joined").await;
    assert_eq!(m["participant"]["identity"], "pt-1", "{m}");
    // The same identity and role still replaces (a reconnect without resume).
    let (_doctor2, _) = Client::join(&server, "appt-r", "dr-1", Role::Doctor).await;
    doctor.expect_error("session_replaced").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_passes_the_waiting_room_again() {
    let server = start_full("", &format!("[api]\nkeys = [\"{KEY}\"]\n"));
    let (s, _, b) = request(
        &server.http,
        "POST",
        "/api/v1/consultations",
        Some(KEY),
        Some(&json!({ "id": "appt-w", "policy": { "waiting_room": true } })),
        &[],
    );
    assert_eq!(s, 201, "{b}");
    let (mut doctor, _) = Client::join(&server, "appt-w", "dr-1", Role::Doctor).await;
    let mut patient = Client::connect(&server, "").await;
    patient
        .send(json!({"type":"join","v":1,"token":token("appt-w","pt-1",Role::Patient)}))
        .await;
    patient.expect("waiting").await;
    doctor.expect("participant-waiting").await;
    doctor.send(json!({"type":"admit","identity":"pt-1"})).await;
    patient.expect("joined").await;
    // Someone else holding the patient's link joins: it waits, the doctor is told, and the
    // patient in the call stays until the doctor admits the newcomer.
    let mut second = Client::connect(&server, "").await;
    second
        .send(json!({"type":"join","v":1,"token":token("appt-w","pt-1",Role::Patient)}))
        .await;
    second.expect("waiting").await;
    let w = doctor.expect("participant-waiting").await;
    assert_eq!(w["participant"]["identity"], "pt-1", "{w}");
    doctor.send(json!({"type":"admit","identity":"pt-1"})).await;
    second.expect("joined").await;
    patient.expect_error("session_replaced").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_is_held_while_the_policy_cannot_be_read() {
    if psql("test", "SELECT 1").is_none() {
        panic!("PostgreSQL on 127.0.0.1:5432 (database `test`) is required");
    }
    let db = format!("consulta_sec_{}_{}", std::process::id(), free_tcp());
    psql("test", &format!("CREATE DATABASE {db}")).expect("create the test database");
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let direct = format!("postgres://{user}@127.0.0.1:5432/{db}");
    let (ok, _, err) = cli(&["migrate"], &[("CONSULTA_DATABASE_URL", &direct)]);
    assert!(ok, "{err}");
    // A consultation with a waiting room, written while the database answers.
    psql(
        &db,
        "INSERT INTO consultations (id, status, max_participants, waiting_room, recording, created_at) VALUES ('appt-db', 'scheduled', 5, 1, 'off', 0)",
    )
    .expect("insert the consultation");
    let proxy = Proxy::start("127.0.0.1:5432");
    proxy.cut();
    let server = start_full(
        "",
        &format!(
            "[database]\nurl = \"postgres://{user}@127.0.0.1:{}/{db}\"\n",
            proxy.port
        ),
    );
    // The database is unreachable: the doctor is held, not admitted under a default policy.
    let mut doctor = Client::connect(&server, "").await;
    doctor
        .send(json!({"type":"join","v":1,"token":token("appt-db","dr-1",Role::Doctor)}))
        .await;
    doctor.expect("waiting").await;
    let mut patient = Client::connect(&server, "").await;
    patient
        .send(json!({"type":"join","v":1,"token":token("appt-db","pt-1",Role::Patient)}))
        .await;
    patient.expect("waiting").await;
    // Once the policy can be read: the doctor is admitted, the patient goes on waiting (the
    // policy has a waiting room) and the doctor hears of it.
    proxy.restore();
    let joined = tokio::time::timeout(Duration::from_secs(15), doctor.expect("joined")).await;
    assert!(
        joined.is_ok(),
        "the doctor was not admitted once the policy was readable"
    );
    doctor.expect("participant-waiting").await;
    let early = tokio::time::timeout(Duration::from_secs(2), patient.expect("joined")).await;
    assert!(early.is_err(), "the patient skipped the waiting room");
    drop(server);
    let _ = psql(
        "test",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_of_a_kicked_participant_stop_working() {
    if !installed("turnutils_uclient") || !installed("turnutils_peer") {
        eprintln!("SKIPPED: coturn's turnutils are not installed (apt-get install -y coturn)");
        return;
    }
    let udp = std::cell::Cell::new(0);
    let server = start_with("", || {
        let (u, t) = (free_udp(), free_tcp());
        udp.set(u);
        format!(
            "[api]\nkeys = [\"{KEY}\"]\n[turn]\nenabled = true\nudp_port = {u}\ntcp_port = {t}\n\
             tls_port = 0\nallowed_peer_ranges = [\"127.0.0.0/8\"]\nlegacy_channel_numbers = true\n"
        )
    });
    let (s, _, b) = request(
        &server.http,
        "POST",
        "/api/v1/consultations",
        Some(KEY),
        Some(&json!({ "id": "appt-t" })),
        &[],
    );
    assert_eq!(s, 201, "{b}");
    let (mut patient, joined) = Client::join(&server, "appt-t", "pt-1", Role::Patient).await;
    let ice = &joined["ice_servers"][0];
    let (user, pass) = (
        ice["username"].as_str().unwrap().to_owned(),
        ice["credential"].as_str().unwrap().to_owned(),
    );
    // The username names neither the consultation nor the person.
    assert!(!user.contains("pt-1") && !user.contains("appt-t"), "{user}");
    let peer_port = free_udp();
    let mut peer = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (peer_s, udp_s) = (peer_port.to_string(), udp.get().to_string());
    let args = [
        "-e",
        "127.0.0.1",
        "-r",
        &peer_s,
        "-n",
        "5",
        "-m",
        "1",
        "-l",
        "120",
        "-u",
        &user,
        "-w",
        &pass,
        "-p",
        &udp_s,
        "127.0.0.1",
    ];
    let (ok, _, _, text) = uclient(&args);
    assert!(
        ok,
        "the participant's credentials work while it is in the call:\n{text}"
    );
    let (s, _, b) = request(
        &server.http,
        "POST",
        "/api/v1/consultations/appt-t/participants/pt-1/kick",
        Some(KEY),
        None,
        &[],
    );
    assert_eq!(s, 200, "{b}");
    patient.expect_error("kicked").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, _, _, text) = uclient(&args);
    assert!(
        !ok,
        "a kicked participant's credentials still allocate:\n{text}"
    );
    assert!(metric(&server, "consulta_turn_refusals_total{reason=\"revoked\"}") >= 1.0);
    let _ = peer.kill();
    let _ = peer.wait();
}

#[test]
fn cli_token_refuses_lifetimes_above_the_maximum() {
    let args = |ttl: &'static str| {
        [
            "token",
            "--room",
            "appt-1",
            "--identity",
            "pt-1",
            "--role",
            "patient",
            "--ttl",
            ttl,
        ]
    };
    let (ok, out, _) = cli(&args("90000"), &[]);
    assert!(!ok, "a 25-hour token was minted: {out}");
    // (The default lifetime may not exceed the maximum either.)
    let max = [
        ("CONSULTA_AUTH_MAX_TOKEN_TTL", "600"),
        ("CONSULTA_AUTH_TOKEN_TTL", "300"),
    ];
    let (ok, out, _) = cli(&args("601"), &max);
    assert!(!ok, "minted past max_token_ttl: {out}");
    let (ok, _, err) = cli(&args("600"), &max);
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_check_token_lifetime_and_key_id() {
    let new_secret = "rotated-secret-0123456789";
    let server = start_env(
        "",
        || "max_token_ttl = 3600\n".to_owned(),
        &[(
            "CONSULTA_AUTH_TOKEN_SECRETS",
            "k2:rotated-secret-0123456789",
        )],
    );
    let join = |token: String| {
        let server = &server;
        async move {
            let mut c = Client::connect(server, "").await;
            c.send(json!({"type":"join","v":1,"token":token})).await;
            c.recv().await.unwrap()
        }
    };
    let claims = |ttl: u64| {
        consulta_signaling::JoinToken::new("appt-k", "pt-1", Role::Patient, now(), ttl).unwrap()
    };
    // A token living longer than [auth] max_token_ttl, correctly signed: refused.
    let long = claims(7200).sign(SECRET.as_bytes()).unwrap();
    let m = join(long).await;
    assert_eq!(
        (m["type"].as_str(), m["code"].as_str()),
        (Some("error"), Some("token_invalid")),
        "{m}"
    );
    // Signed before the rotation (no kid, token_secret) and after it (kid k2): both join.
    let m = join(claims(600).sign(SECRET.as_bytes()).unwrap()).await;
    assert_eq!(m["type"], "joined", "{m}");
    let k2 = claims(600)
        .sign_with_kid(new_secret.as_bytes(), Some("k2"))
        .unwrap();
    let m = join(k2).await;
    assert_eq!(m["type"], "joined", "{m}");
    // A kid the server does not know, or the new secret without its kid: refused.
    let unknown = claims(600)
        .sign_with_kid(new_secret.as_bytes(), Some("k9"))
        .unwrap();
    assert_eq!(join(unknown).await["code"], "token_invalid");
    let no_kid = claims(600).sign(new_secret.as_bytes()).unwrap();
    assert_eq!(join(no_kid).await["code"], "token_invalid");
}

#[test]
fn config_check_refuses_sse_c_over_http_and_plain_http_webhooks() {
    let key = (
        "CONSULTA_RECORDING_ENCRYPTION_KEY",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    );
    let bucket = ("CONSULTA_S3_BUCKET", "consulta-recordings");
    let check = ["config", "check"];
    let (ok, _, err) = cli(
        &check,
        &[
            key,
            bucket,
            ("CONSULTA_S3_ENDPOINT", "http://192.168.1.10:3900"),
        ],
    );
    assert!(!ok && err.contains("SSE-C"), "{err}");
    let (ok, _, err) = cli(
        &check,
        &[
            key,
            bucket,
            ("CONSULTA_S3_ENDPOINT", "https://pc1.lan:3901"),
        ],
    );
    assert!(ok, "{err}");
    let hooks = [
        ("CONSULTA_WEBHOOKS_URLS", "http://app.lan/webhooks/consulta"),
        ("CONSULTA_WEBHOOKS_SECRET", "hook-secret-0123456789"),
    ];
    let (ok, _, err) = cli(&check, &hooks);
    assert!(!ok && err.contains("allow_http"), "{err}");
    let (ok, _, err) = cli(
        &check,
        &[hooks[0], hooks[1], ("CONSULTA_WEBHOOKS_ALLOW_HTTP", "true")],
    );
    assert!(ok, "{err}");
}
