//! Cluster mode with real processes: two or three `consulta serve` nodes sharing a PostgreSQL
//! database and a Redis key prefix (the machine's Redis, or a private `redis-server` the test
//! can stop), joined over real WebSockets.
//!
//! Covers: joins land on the room's node with at most one redirect; simultaneous first joins of
//! a room through different nodes pick one node; a node killed with SIGKILL has its rooms taken
//! over and its sessions closed once (`server_lost`), with one `started` and one `ended`; the
//! control API acts on a room through any node, also while Redis is stopped; Redis stopped
//! keeps calls and places new rooms; SIGTERM drains (new rooms elsewhere, no keys left).

#[path = "../common/mod.rs"]
mod common;
mod harness;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use consulta_signaling::Role;
use serde_json::{json, Value};

use harness::*;
// The harness's own (seconds and a label) over `common`'s.
use harness::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_land_on_the_rooms_node_and_first_joins_race_to_one_node() {
    let db = database();
    let p = prefix();
    let redis = "redis://127.0.0.1:6379";
    let hooks = Hooks::start();
    let tail = format!(
        "[webhooks]\nurls = [\"{}\"]\nsecret = \"hook-secret-0123456789\"\nallow_http = true\n",
        hooks.url
    );
    let nodes = [
        node_with("n1", &db, redis, &p, &tail),
        node_with("n2", &db, redis, &p, &tail),
        node_with("n3", &db, redis, &p, &tail),
    ];
    // 100 joins to 10 rooms, each through the next node in turn.
    let mut owner: std::collections::HashMap<String, String> = Default::default();
    let mut redirects = 0;
    for i in 0..100 {
        let room = format!("room-{}", i % 10);
        let via = &nodes[i % 3];
        let (mut c, joined, hops) = join_follow(&ws_url(via), &room, &format!("g{i}"), Role::Guest)
            .await
            .expect("joined");
        assert!(hops <= 1, "join {i} took {hops} redirects");
        redirects += hops;
        let node = joined["node"]
            .as_str()
            .expect("joined names its node")
            .to_owned();
        let first = owner.entry(room.clone()).or_insert_with(|| node.clone());
        assert_eq!(*first, node, "{room} served by two nodes");
        c.send(json!({"type":"leave"})).await;
    }
    assert!(redirects > 0, "three nodes and never a redirect");
    let used: std::collections::HashSet<_> = owner.values().collect();
    assert!(used.len() >= 2, "every room on one node: {owner:?}");
    // 50 rounds of simultaneous first joins of one room through every node.
    for round in 0..50 {
        let room = format!("race-{round}");
        let joins = nodes.iter().enumerate().map(|(i, n)| {
            let (url, room) = (ws_url(n), room.clone());
            tokio::spawn(async move {
                let (mut c, joined, _) = join_follow(&url, &room, &format!("r{i}"), Role::Guest)
                    .await
                    .expect("joined");
                c.send(json!({"type":"leave"})).await;
                joined["node"].as_str().unwrap().to_owned()
            })
        });
        let served: Vec<String> = futures_util::future::join_all(joins)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert!(
            served.iter().all(|n| *n == served[0]),
            "round {round}: {served:?}"
        );
    }
    let status = Command::new(env!("CARGO_BIN_EXE_consulta"))
        .args(["cluster", "status"])
        .env("CONSULTA_CLUSTER_REDIS_URL", redis)
        .env("CONSULTA_CLUSTER_KEY_PREFIX", &p)
        .env("CONSULTA_CLUSTER_ADVERTISE_URL", "http://x")
        .env("CONSULTA_CLUSTER_INTERNAL_URL", "http://x")
        .env("CONSULTA_DATABASE_URL", db_url(&db))
        .env("CONSULTA_AUTH_TOKEN_SECRET", SECRET)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    for id in ["n1", "n2", "n3"] {
        assert!(text.contains(id), "cluster status lacks {id}: {text}");
    }
    // Three nodes send from one outbox: each event once.
    let mut last = Err(String::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        last = hooks.each_event_once(&db);
        if last.is_ok() || last.as_ref().is_err_and(|e| e.contains("deliveries of")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    last.expect("each webhook once");
    // SIGTERM everywhere: every node leaves the registry and its rooms.
    for n in &nodes {
        Command::new("kill")
            .args(["-TERM", &n.child.id().to_string()])
            .status()
            .unwrap();
    }
    wait_for("no keys left under the prefix", 20, || keys(&p).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_room_is_taken_over_and_its_sessions_closed_once() {
    let db = database();
    let p = prefix();
    let redis = "redis://127.0.0.1:6379";
    let mut a = node("a", &db, redis, &p);
    let b = node("b", &db, redis, &p);
    let room = "kill-room";
    let (_d, dj, _) = join_follow(&ws_url(&a), room, "doc", Role::Doctor)
        .await
        .unwrap();
    assert_eq!(dj["node"], "a");
    let (_p, pj, _) = join_follow(&ws_url(&b), room, "pat", Role::Patient)
        .await
        .unwrap();
    assert_eq!(
        pj["node"], "a",
        "the patient's join through b went to the room's node"
    );
    let started = "SELECT COUNT(*) FROM call_events WHERE type = 'started'";
    wait_for("started", 10, || count(&db, started) == 1);
    wait_for("both sessions stored", 10, || {
        count(&db, "SELECT COUNT(*) FROM sessions WHERE left_at IS NULL") == 2
    });
    a.child.kill().unwrap();
    let killed = Instant::now();
    // Both come back through b (as an SDK does through the public URL) until it takes over.
    let mut back = Vec::new();
    for (identity, role) in [("doc", Role::Doctor), ("pat", Role::Patient)] {
        loop {
            assert!(
                killed.elapsed() < Duration::from_secs(10),
                "{identity} not back in 10 s"
            );
            if let Some((c, j, _)) = join_follow(&ws_url(&b), room, identity, role).await {
                assert_eq!(j["node"], "b");
                back.push(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    eprintln!(
        "both back on b {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let lost = "SELECT COUNT(*) FROM call_events WHERE type = 'participant_left' AND payload LIKE '%server_lost%'";
    wait_for("the dead node's sessions closed", 10, || {
        count(&db, lost) == 2
    });
    for mut c in back {
        c.send(json!({"type":"leave"})).await;
    }
    let ended = "SELECT COUNT(*) FROM call_events WHERE type = 'ended'";
    wait_for("ended", 15, || count(&db, ended) == 1);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(&db, started), 1, "one started");
    assert_closed_once(&db, "server_lost");
    let joined = count(
        &db,
        "SELECT COUNT(*) FROM call_events WHERE type = 'participant_joined'",
    );
    let left = count(
        &db,
        "SELECT COUNT(*) FROM call_events WHERE type = 'participant_left'",
    );
    assert_eq!((joined, left), (4, 4), "joins and leaves pair up");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_keeps_calls_places_rooms_and_the_api_still_reaches_the_owner() {
    let db = database();
    let p = prefix();
    let r = Redis::start();
    let a = node("a", &db, &r.url(), &p);
    let b = node("b", &db, &r.url(), &p);
    let room = "redis-room";
    let (mut doc, j, _) = join_follow(&ws_url(&a), room, "doc", Role::Doctor)
        .await
        .unwrap();
    assert_eq!(j["node"], "a");
    wait_for("the consultation stored", 10, || {
        count(
            &db,
            &format!("SELECT COUNT(*) FROM consultations WHERE id = '{room}'"),
        ) == 1
    });
    for (how, stop, resume) in [("SIGSTOP", "-STOP", "-CONT"), ("killed", "-KILL", "")] {
        r.signal(stop);
        std::thread::sleep(Duration::from_secs(2));
        // The running call does not notice; both nodes stay ready.
        doc.send(json!({"type":"ping"})).await;
        doc.expect("pong").await;
        assert!(
            http_ok(&a.http, "/readyz") && http_ok(&b.http, "/readyz"),
            "{how}: /readyz"
        );
        // A second participant of the known room reaches its node through b (peers asked).
        let guest_id = format!("guest{}", stop.trim_start_matches('-').to_lowercase());
        let (mut guest, gj, _) = join_follow(&ws_url(&b), room, &guest_id, Role::Guest)
            .await
            .unwrap_or_else(|| panic!("{how}: join of a hosted room"));
        assert_eq!(
            gj["node"], "a",
            "{how}: the room's node found without Redis"
        );
        // A new consultation starts where the join arrives.
        let fresh = format!("fresh-{}", stop.trim_start_matches('-').to_lowercase());
        let (_f, fj, _) = join_follow(&ws_url(&b), &fresh, "x", Role::Guest)
            .await
            .unwrap_or_else(|| panic!("{how}: a new room"));
        assert_eq!(fj["node"], "b");
        // A kick through the node that does not host the room is forwarded to the one that does.
        let (status, body) = api(
            &b,
            "POST",
            &format!("/api/v1/consultations/{room}/participants/{guest_id}/kick"),
        );
        assert_eq!(status, 200, "{how}: kick through b: {body}");
        let kicked = guest.expect("error").await;
        assert_eq!(kicked["code"], "kicked");
        if resume.is_empty() {
            break;
        }
        r.signal(resume);
        wait_for("Redis answering again", 10, || {
            redis_cli(r.port, &["PING"]).as_deref() == Some("PONG")
        });
        wait_for("the room key back", 10, || {
            redis_cli(r.port, &["GET", &format!("{p}room:{room}")])
                .is_some_and(|v| v.starts_with("a "))
        });
    }
    // Redis comes back empty (it was killed): every hosted room names its host within 10 s.
    let r2 = Redis::start_on(r.port);
    let back = Instant::now();
    wait_for("hosted rooms reclaimed", 12, || {
        redis_cli(r2.port, &["GET", &format!("{p}room:{room}")])
            .is_some_and(|v| v.starts_with("a "))
            && redis_cli(r2.port, &["GET", &format!("{p}room:fresh-kill")])
                .is_some_and(|v| v.starts_with("b "))
    });
    eprintln!(
        "rooms reclaimed {:.1} s after Redis came back",
        back.elapsed().as_secs_f64()
    );
    doc.send(json!({"type":"ping"})).await;
    doc.expect("pong").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_keeps_its_rooms_and_sends_new_ones_elsewhere() {
    let db = database();
    let p = prefix();
    let redis = "redis://127.0.0.1:6379";
    let a = node("a", &db, redis, &p);
    let b = node("b", &db, redis, &p);
    let (mut doc, j, _) = join_follow(&ws_url(&a), "kept", "doc", Role::Doctor)
        .await
        .unwrap();
    assert_eq!(j["node"], "a");
    Command::new("kill")
        .args(["-TERM", &a.child.id().to_string()])
        .status()
        .unwrap();
    wait_for("a not ready", 5, || !http_ok(&a.http, "/readyz"));
    // Its room still takes joins; a new room goes to b.
    let (_g, gj, _) = join_follow(&ws_url(&a), "kept", "guest", Role::Guest)
        .await
        .unwrap();
    assert_eq!(gj["node"], "a");
    let (_n, nj, hops) = join_follow(&ws_url(&a), "new-room", "x", Role::Guest)
        .await
        .unwrap();
    assert_eq!((nj["node"].as_str(), hops), (Some("b"), 1));
    // At the drain timeout a's sessions end and a leaves the registry and its rooms.
    let _ = doc.expect("error").await;
    wait_for("a gone from Redis", 15, || {
        keys(&p).iter().all(|k| !k.ends_with("node:a"))
            && redis_cli(6379, &["GET", &format!("{p}room:kept")])
                .is_none_or(|v| !v.starts_with("a "))
    });
    Command::new("kill")
        .args(["-TERM", &b.child.id().to_string()])
        .status()
        .unwrap();
    wait_for("no keys left under the prefix", 20, || keys(&p).is_empty());
}

#[test]
fn cluster_mode_refuses_sqlite() {
    let out = Command::new(env!("CARGO_BIN_EXE_consulta"))
        .args(["config", "check"])
        .env("CONSULTA_CLUSTER_REDIS_URL", "redis://127.0.0.1:6379")
        .env("CONSULTA_CLUSTER_ADVERTISE_URL", "http://127.0.0.1:7880")
        .env("CONSULTA_CLUSTER_INTERNAL_URL", "http://127.0.0.1:7880")
        .env("CONSULTA_AUTH_TOKEN_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PostgreSQL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_split_while_redis_was_down_is_merged_into_the_larger_side() {
    let db = database();
    let p = prefix();
    let r = Redis::start();
    let a = node("a", &db, &r.url(), &p);
    let room = "split-room";
    let (_doc, j, _) = join_follow(&ws_url(&a), room, "doc", Role::Doctor)
        .await
        .unwrap();
    assert_eq!(j["node"], "a");
    let (_pat, _, _) = join_follow(&ws_url(&a), room, "pat", Role::Patient)
        .await
        .unwrap();
    let port = r.port;
    drop(r);
    // b starts while Redis is down: it knows no peer, so it hosts the room itself.
    let b = node("b", &db, &format!("redis://127.0.0.1:{port}"), &p);
    let (mut guest, gj, _) = join_follow(&ws_url(&b), room, "guest", Role::Guest)
        .await
        .unwrap();
    assert_eq!(gj["node"], "b", "split: b hosts the room too");
    // Redis returns: the side with fewer participants (b, 1 against 2) is moved to a.
    let _r2 = Redis::start_on(port);
    let moved = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match guest.recv_within(Duration::from_secs(15)).await {
                Some(m) if m["type"] == "moved" => return m,
                Some(_) => continue,
                None => panic!("b's session closed without `moved`"),
            }
        }
    })
    .await
    .expect("`moved` within 15 s of Redis's return");
    assert_eq!(moved["node"], "a");
    let url = moved["url"].as_str().unwrap();
    let (_g, again, hops) = join_follow(url, room, "guest", Role::Guest).await.unwrap();
    assert_eq!((again["node"].as_str(), hops), (Some("a"), 0));
    assert!(
        redis_cli(port, &["GET", &format!("{p}room:{room}")]).is_some_and(|v| v.starts_with("a "))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_s_call_that_nobody_rejoins_still_ends_once() {
    let db = database();
    let p = prefix();
    let redis = "redis://127.0.0.1:6379";
    let mut a = node("a", &db, redis, &p);
    let _b = node("b", &db, redis, &p);
    let room = "orphan-room";
    let (_d, _, _) = join_follow(&ws_url(&a), room, "doc", Role::Doctor)
        .await
        .unwrap();
    let (_p, pj, _) = join_follow(&ws_url(&a), room, "pat", Role::Patient)
        .await
        .unwrap();
    assert_eq!(pj["node"], "a");
    wait_for("started and both sessions stored", 10, || {
        count(
            &db,
            "SELECT COUNT(*) FROM call_events WHERE type = 'started'",
        ) == 1
            && count(&db, "SELECT COUNT(*) FROM sessions WHERE left_at IS NULL") == 2
    });
    a.child.kill().unwrap();
    // Nobody comes back: b finds the call held by no node and ends it from the database.
    let ended =
        "SELECT COUNT(*) FROM call_events WHERE type = 'ended' AND payload LIKE '%server_lost%'";
    wait_for("ended (server_lost)", 30, || count(&db, ended) == 1);
    std::thread::sleep(Duration::from_secs(6));
    assert_closed_once(&db, "server_lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_interrupted_by_a_restart_ends_once_and_a_no_show_survives_the_restart() {
    let db = database();
    // One node, no cluster: timers of consultations no process holds come from the database.
    let mut s = node("single", &db, "", "");
    let room = "restart-room";
    let (_d, _, _) = join_follow(&ws_url(&s), room, "doc", Role::Doctor)
        .await
        .unwrap();
    let (_p, _, _) = join_follow(&ws_url(&s), room, "pat", Role::Patient)
        .await
        .unwrap();
    // A scheduled consultation whose no-show time passes while the server is down.
    let start = time_rfc3339(now() as i64 + 1);
    let (status, body) = api_body(
        &s,
        "/api/v1/consultations",
        &json!({"id": "noshow-room", "scheduled_start": start}).to_string(),
    );
    assert_eq!(status, 201, "{body}");
    wait_for("started and both sessions stored", 10, || {
        count(
            &db,
            "SELECT COUNT(*) FROM call_events WHERE type = 'started'",
        ) == 1
            && count(&db, "SELECT COUNT(*) FROM sessions WHERE left_at IS NULL") == 2
    });
    s.child.kill().unwrap();
    let _ = s.child.wait();
    std::thread::sleep(Duration::from_secs(5));
    restart(&mut s);
    let ended =
        "SELECT COUNT(*) FROM call_events WHERE type = 'ended' AND payload LIKE '%server_restart%'";
    wait_for("ended (server_restart)", 30, || count(&db, ended) == 1);
    let no_show = "SELECT COUNT(*) FROM call_events WHERE type = 'no_show' AND consultation_id = 'noshow-room'";
    wait_for("no_show for doctor and patient", 15, || {
        count(&db, no_show) == 2
    });
    // Another restart writes none of them again.
    s.child.kill().unwrap();
    let _ = s.child.wait();
    restart(&mut s);
    std::thread::sleep(Duration::from_secs(8));
    assert_closed_once(&db, "server_restart");
    assert_eq!(count(&db, no_show), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_every_session_s_end_before_the_process_exits() {
    let db = database();
    let mut s = node("single", &db, "", "");
    let mut clients = Vec::new();
    // Many sessions end at once: their events are still on their way when the drain ends.
    for i in 0..40 {
        let (c, _, _) = join_follow(
            &ws_url(&s),
            &format!("term-{}", i % 10),
            &format!("g{i}"),
            Role::Guest,
        )
        .await
        .unwrap();
        clients.push(c);
    }
    wait_for("every session stored", 10, || {
        count(&db, "SELECT COUNT(*) FROM sessions WHERE left_at IS NULL") == 40
    });
    Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    let exited = s.child.wait().unwrap();
    assert!(exited.success(), "{exited:?}");
    // Everything the sessions' ends produced is in the database once the process is gone:
    // nothing was left in the writer's queue (and this run's journal is empty).
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM sessions WHERE left_at IS NULL"),
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM call_events WHERE type = 'participant_left'"
        ),
        40
    );
    let journal = s.dir.join("data").join("events.journal");
    assert!(std::fs::read_to_string(journal)
        .unwrap_or_default()
        .trim()
        .is_empty());
    // Started again, it finds nothing to close or end.
    restart(&mut s);
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM call_events WHERE type = 'participant_left'"
        ),
        40
    );
}
