//! Cluster mode with real processes: two or three `consulta serve` nodes sharing a PostgreSQL
//! database and a Redis key prefix (the machine's Redis, or a private `redis-server` the test
//! can stop), joined over real WebSockets.
//!
//! Covers: joins land on the room's node with at most one redirect; simultaneous first joins of
//! a room through different nodes pick one node; a node killed with SIGKILL has its rooms taken
//! over and its sessions closed once (`server_lost`), with one `started` and one `ended`; the
//! control API acts on a room through any node, also while Redis is stopped; Redis stopped
//! keeps calls and places new rooms; SIGTERM drains (new rooms elsewhere, no keys left).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use consulta_signaling::Role;
use serde_json::{json, Value};

const KEY: &str = "test-api-key-0123456789";

fn database() -> String {
    let db = format!("consulta_cluster_{}_{}", std::process::id(), free_tcp());
    psql("test", &format!("CREATE DATABASE {db}")).expect("create the test database");
    db
}

fn db_url(db: &str) -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    format!("postgres://{user}@127.0.0.1:5432/{db}")
}

fn prefix() -> String {
    format!("consulta-test-{}-{}:", std::process::id(), free_tcp())
}

/// A private Redis the test may stop (SIGSTOP) or kill.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_on(free_tcp())
    }

    /// A Redis on `port` (again, after one there was killed), empty.
    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let r = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis_cli(r.port, &["PING"]).as_deref() != Some("PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A webhook receiver that answers 200 and keeps the event id of each delivery.
struct Hooks {
    url: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Hooks {
    fn start() -> Hooks {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hooks", l.local_addr().unwrap());
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let id = loop {
                    let n = c.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let header = |name: &str| {
                        head.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim()
                                .eq_ignore_ascii_case(name)
                                .then(|| v.trim().to_owned())
                        })
                    };
                    let len: usize = header("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break header("x-consulta-event-id");
                    }
                };
                if let Some(id) = id {
                    g.lock().unwrap().push(id);
                }
                // A receiver that takes its time: a node still sending a batch must not see it
                // sent again by another node meanwhile.
                std::thread::sleep(Duration::from_millis(50));
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Hooks { url, got }
    }

    /// Every event stored in `db` was delivered exactly once.
    fn each_event_once(&self, db: &str) -> Result<(), String> {
        let stored: Vec<String> = psql(db, "SELECT id FROM call_events ORDER BY id")
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        let mut got = self.got.lock().unwrap().clone();
        got.sort();
        let mut unique = got.clone();
        unique.dedup();
        if got.len() != unique.len() {
            return Err(format!(
                "{} deliveries of {} events",
                got.len(),
                unique.len()
            ));
        }
        if unique != stored {
            return Err(format!(
                "{} delivered, {} stored",
                unique.len(),
                stored.len()
            ));
        }
        Ok(())
    }
}

/// Starts node `id` in cluster mode and waits for its health.
fn node(id: &str, db: &str, redis: &str, prefix: &str) -> Server {
    node_with(id, db, redis, prefix, "")
}

/// [`node`] with `tail` appended to its config (whole sections).
fn node_with(id: &str, db: &str, redis: &str, prefix: &str, tail: &str) -> Server {
    let http = format!("127.0.0.1:{}", free_tcp());
    let dir = std::env::temp_dir().join(format!(
        "consulta-cluster-{}-{}",
        std::process::id(),
        free_tcp()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = format!(
        "data_dir = \"{data}\"\n\
         [http]\nlisten = \"{http}\"\ndrain_timeout = 2\njoin_limit_per_ip = 0\njoin_limit_per_identity = 0\n\
         [media]\nudp_port = {udp}\ntcp_port = {tcp}\nworkers = 1\nreconnect_grace = 2\n\
         [auth]\ntoken_secret = \"{SECRET}\"\n\
         [api]\nkeys = [\"{KEY}\"]\n\
         [database]\nurl = \"{db}\"\n\
         [consultation]\nempty_room_end = 2\nno_show_after = 3\n\
         {cluster}{tail}",
        cluster = if redis.is_empty() {
            String::new()
        } else {
            format!(
                "[cluster]\nredis_url = \"{redis}\"\nnode_id = \"{id}\"\nadvertise_url = \"http://{http}\"\n\
                 internal_url = \"http://{http}\"\nkey_prefix = \"{prefix}\"\ndrain_timeout = 4\n"
            )
        },
        data = dir.join("data").display(),
        udp = free_udp(),
        tcp = free_tcp(),
        db = db_url(db),
    );
    std::fs::write(dir.join("consulta.toml"), cfg).unwrap();
    let mut server = Server {
        child: Command::new("true").spawn().unwrap(),
        http,
        dir,
    };
    restart(&mut server);
    // Registered (and seen by the others) after a heartbeat or two.
    std::thread::sleep(Duration::from_millis(1500));
    server
}

/// (Re)starts `server`'s process on its config and data, and waits for its health.
fn restart(server: &mut Server) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(server.dir.join("server.log"))
        .unwrap();
    server.child = Command::new(env!("CARGO_BIN_EXE_consulta"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(server.dir.join("consulta.toml"))
        .env("CONSULTA_LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("consulta starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http_ok(&server.http, "/healthz") {
        assert!(
            Instant::now() < deadline,
            "the server did not become healthy: {}",
            std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn http_ok(addr: &str, path: &str) -> bool {
    std::net::TcpStream::connect(addr).is_ok()
        && http_request(addr, "GET", path, &[], None).0 == 200
}

async fn ws(url: &str) -> Option<Client> {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
    Some(Client { ws })
}

/// Joins `room` through `url`, following `moved`: the client, its `joined` and the redirects.
async fn join_follow(
    url: &str,
    room: &str,
    identity: &str,
    role: Role,
) -> Option<(Client, Value, u32)> {
    let mut url = url.to_owned();
    for hops in 0..4 {
        let mut c = ws(&url).await?;
        c.send(json!({"type":"join","v":1,"token":token(room, identity, role)}))
            .await;
        loop {
            let m = c.recv().await?;
            match m["type"].as_str() {
                Some("joined") => return Some((c, m, hops)),
                Some("moved") => {
                    url = m["url"].as_str().expect("moved names a url").to_owned();
                    break;
                }
                Some("error") => return None,
                _ => {}
            }
        }
    }
    panic!("more than 3 redirects for {room}");
}

fn ws_url(server: &Server) -> String {
    format!("ws://{}/ws", server.http)
}

fn count(db: &str, sql: &str) -> i64 {
    psql(db, sql).and_then(|s| s.parse().ok()).unwrap_or(-1)
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn api(server: &Server, method: &str, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {KEY}");
    let (status, _, body) = http_request(
        &server.http,
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some("{}"),
    );
    (status, body)
}

fn keys(prefix: &str) -> Vec<String> {
    redis_cli(6379, &["--scan", "--pattern", &format!("{prefix}*")])
        .map(|s| {
            s.lines()
                .map(str::to_owned)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

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
    assert_eq!(count(&db, ended), 1, "one ended");
    assert_eq!(count(&db, lost), 2, "each lost session closed once");
    // Every session stored is closed exactly once.
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM sessions WHERE left_at IS NULL"),
        0
    );
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
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM call_events WHERE type = 'ended'"),
        1
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM sessions WHERE left_at IS NULL"),
        0
    );
    let lost = "SELECT COUNT(*) FROM call_events WHERE type = 'participant_left' AND payload LIKE '%server_lost%'";
    assert_eq!(count(&db, lost), 2);
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
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM call_events WHERE type = 'ended'"),
        1
    );
    assert_eq!(count(&db, no_show), 2);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM sessions WHERE left_at IS NULL"),
        0
    );
    let restarted = "SELECT COUNT(*) FROM call_events WHERE type = 'participant_left' AND payload LIKE '%server_restart%'";
    assert_eq!(count(&db, restarted), 2);
}

fn time_rfc3339(unix: i64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{unix}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn api_body(server: &Server, path: &str, body: &str) -> (u16, Value) {
    let auth = format!("Bearer {KEY}");
    let (status, _, v) = http_request(
        &server.http,
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(body),
    );
    (status, v)
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
