//! The cluster tests' harness: nodes (`consulta serve` processes with `[cluster]` on one
//! database and Redis prefix), a private `redis-server` a test may stop, a webhook receiver, and
//! helpers for WebSocket joins, the control API, database counts and Redis keys.

use super::*;

pub(crate) const KEY: &str = "test-api-key-0123456789";

pub(crate) fn database() -> String {
    let db = format!("consulta_cluster_{}_{}", std::process::id(), free_tcp());
    psql("test", &format!("CREATE DATABASE {db}")).expect("create the test database");
    db
}

pub(crate) fn db_url(db: &str) -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    format!("postgres://{user}@127.0.0.1:5432/{db}")
}

pub(crate) fn prefix() -> String {
    format!("consulta-test-{}-{}:", std::process::id(), free_tcp())
}

/// A private Redis the test may stop (SIGSTOP) or kill.
pub(crate) struct Redis {
    pub(crate) child: Child,
    pub(crate) port: u16,
}

impl Redis {
    pub(crate) fn start() -> Redis {
        Redis::start_on(free_tcp())
    }

    /// A Redis on `port` (again, after one there was killed), empty.
    pub(crate) fn start_on(port: u16) -> Redis {
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

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) fn signal(&self, sig: &str) {
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

pub(crate) fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
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
pub(crate) struct Hooks {
    pub(crate) url: String,
    pub(crate) got: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Hooks {
    pub(crate) fn start() -> Hooks {
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
    pub(crate) fn each_event_once(&self, db: &str) -> Result<(), String> {
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
pub(crate) fn node(id: &str, db: &str, redis: &str, prefix: &str) -> Server {
    node_with(id, db, redis, prefix, "")
}

/// [`node`] with `tail` appended to its config (whole sections).
pub(crate) fn node_with(id: &str, db: &str, redis: &str, prefix: &str, tail: &str) -> Server {
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
pub(crate) fn restart(server: &mut Server) {
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

pub(crate) fn http_ok(addr: &str, path: &str) -> bool {
    std::net::TcpStream::connect(addr).is_ok()
        && http_request(addr, "GET", path, &[], None).0 == 200
}

pub(crate) async fn ws(url: &str) -> Option<Client> {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
    Some(Client { ws })
}

/// Joins `room` through `url`, following `moved`: the client, its `joined` and the redirects.
pub(crate) async fn join_follow(
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

pub(crate) fn ws_url(server: &Server) -> String {
    format!("ws://{}/ws", server.http)
}

pub(crate) fn count(db: &str, sql: &str) -> i64 {
    psql(db, sql).and_then(|s| s.parse().ok()).unwrap_or(-1)
}

/// The test's one call (a doctor and a patient) was closed once: one `ended` in the database,
/// no session left open, and both participants left with `reason` (`server_lost`,
/// `server_restart`). Other consultations of the test must have no call.
pub(crate) fn assert_closed_once(db: &str, reason: &str) {
    let ended = "SELECT COUNT(*) FROM call_events WHERE type = 'ended'";
    assert_eq!(count(db, ended), 1, "one ended");
    let open = "SELECT COUNT(*) FROM sessions WHERE left_at IS NULL";
    assert_eq!(count(db, open), 0, "every session closed");
    let left = format!(
        "SELECT COUNT(*) FROM call_events WHERE type = 'participant_left' AND payload LIKE '%{reason}%'"
    );
    assert_eq!(count(db, &left), 2, "each session closed once ({reason})");
}

pub(crate) fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn api(server: &Server, method: &str, path: &str) -> (u16, Value) {
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

pub(crate) fn keys(prefix: &str) -> Vec<String> {
    redis_cli(6379, &["--scan", "--pattern", &format!("{prefix}*")])
        .map(|s| {
            s.lines()
                .map(str::to_owned)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn time_rfc3339(unix: i64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{unix}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub(crate) fn api_body(server: &Server, path: &str, body: &str) -> (u16, Value) {
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
