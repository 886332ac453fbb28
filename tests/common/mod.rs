//! Shared by the integration tests: a real `consulta serve` process on free ports, a WebSocket
//! signaling client, tokens.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use consulta_signaling::{JoinToken, Role};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

pub const SECRET: &str = "test-secret-0123456789abcdef";

pub struct Server {
    pub child: Child,
    pub http: String,
    pub dir: std::path::PathBuf,
}

impl Server {
    pub fn config(&self) -> std::path::PathBuf {
        self.dir.join("consulta.toml")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
pub fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn start(extra: &str) -> Server {
    start_full(extra, "")
}

/// A fresh directory holding a test `consulta.toml` (free ports, two workers, `extra` in
/// `[media]`, `tail` appended as whole sections); returns it and the HTTP address.
fn write_config(extra: &str, tail: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!(
        "consulta-sig-{}-{}",
        std::process::id(),
        free_tcp()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let http = format!("127.0.0.1:{}", free_tcp());
    let cfg = format!(
        "data_dir = \"{}\"\n[http]\nlisten = \"{http}\"\n[media]\nudp_port = {}\ntcp_port = {}\nworkers = 2\n{extra}\n[auth]\ntoken_secret = \"{SECRET}\"\n",
        dir.join("data").display(),
        free_udp(),
        free_tcp()
    );
    std::fs::write(dir.join("consulta.toml"), format!("{cfg}{tail}")).unwrap();
    (dir, http)
}

/// Runs `consulta serve` with `extra` in `[media]`, which must refuse to start; returns what
/// it said on stderr.
pub fn serve_refused(extra: &str) -> String {
    let (dir, _) = write_config(extra, "");
    let out = Command::new(env!("CARGO_BIN_EXE_consulta"))
        .args(["serve", "--config"])
        .arg(dir.join("consulta.toml"))
        .output()
        .expect("consulta runs");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the server started: {err}");
    err
}

/// `media` goes into `[media]`; `tail` is appended (whole sections).
///
/// The ports come from binding port 0 and letting go, so another test running at the same time
/// can take one before the server binds it. When the server exits because an address is in
/// use, it is started again on fresh ports (up to three times); any other early exit, or no
/// health within 20 s, fails with the server's log.
pub fn start_full(extra: &str, tail: &str) -> Server {
    start_with(extra, || tail.to_owned())
}

/// [`start_full`] with the sections appended made by `tail` for each attempt, so that ports
/// they name (a TURN listener's) are picked afresh too.
pub fn start_with(extra: &str, tail: impl Fn() -> String) -> Server {
    start_env(extra, tail, &[])
}

/// [`start_with`] with `env` (e.g. `CONSULTA_HTTP_PUBLIC_URL`) set for the server process.
pub fn start_env(extra: &str, tail: impl Fn() -> String, env: &[(&str, &str)]) -> Server {
    for attempt in 1..=3 {
        match try_start(extra, &tail(), env) {
            Ok(server) => return server,
            Err(log) if attempt < 3 && log.contains("Address already in use") => continue,
            Err(log) => panic!("server did not become healthy (attempt {attempt}), {log}"),
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// One start on fresh ports: the server once healthy, or its log once it has exited or the
/// deadline passed (then it is killed).
fn try_start(extra: &str, tail: &str, env: &[(&str, &str)]) -> Result<Server, String> {
    let (dir, http) = write_config(extra, tail);
    let cfg_path = dir.join("consulta.toml");
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_consulta"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&cfg_path)
        .env("CONSULTA_LOG_LEVEL", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("consulta starts");
    let mut server = Server { child, http, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Health counts only once this server says it serves: until then, a port it could not
        // bind may be answered by another test's server.
        let exited = server.child.try_wait().unwrap().is_some();
        let serving = std::fs::read_to_string(server.dir.join("server.log"))
            .is_ok_and(|log| log.contains("consulta is serving"));
        if serving && !exited {
            if let Ok(mut s) = TcpStream::connect(&server.http) {
                let _ = write!(s, "GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n");
                let mut body = String::new();
                let _ = s.read_to_string(&mut body);
                if body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200") {
                    return Ok(server);
                }
            }
        }
        if exited || Instant::now() >= deadline {
            let _ = server.child.kill();
            let _ = server.child.wait();
            let log = std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default();
            let why = if exited {
                "it exited"
            } else {
                "no health within 20 s"
            };
            return Err(format!("{why}:\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One sample of the server's /metrics: `name` with its labels as exposed, e.g.
/// `consulta_media_packets_total{direction="in"}`. NaN when absent.
pub fn metric(server: &Server, name: &str) -> f64 {
    let mut s = TcpStream::connect(&server.http).unwrap();
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name} "))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// The `[media] udp_port` the server was started with.
pub fn udp_port(server: &Server) -> u16 {
    std::fs::read_to_string(server.config())
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("udp_port = ")?.parse().ok())
        .expect("udp_port in the test config")
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn token(room: &str, identity: &str, role: Role) -> String {
    JoinToken::new(room, identity, role, now(), 600)
        .unwrap()
        .sign(SECRET.as_bytes())
        .unwrap()
}

pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Client {
    pub ws: WsStream,
}

impl Client {
    pub async fn connect(server: &Server, query: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws{query}", server.http))
            .await
            .expect("ws connects");
        Client { ws }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// Next JSON message, or None when the socket closes.
    pub async fn recv(&mut self) -> Option<Value> {
        self.recv_within(Duration::from_secs(5)).await
    }

    /// [`Client::recv`] waiting up to `limit`.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(limit, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("a message within {limit:?}"));
            match m {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                _ => continue,
            }
        }
    }

    /// Skips messages until one of type `ty`.
    pub async fn expect(&mut self, ty: &str) -> Value {
        loop {
            let m = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("socket closed while waiting for {ty}"));
            if m["type"] == ty {
                return m;
            }
        }
    }

    pub async fn expect_error(&mut self, code: &str) -> Value {
        let m = self.expect("error").await;
        assert_eq!(m["code"], code, "{m}");
        m
    }

    pub async fn join(server: &Server, room: &str, identity: &str, role: Role) -> (Client, Value) {
        let mut c = Client::connect(server, "").await;
        c.send(json!({"type":"join","v":1,"token":token(room, identity, role)}))
            .await;
        let joined = c.expect("joined").await;
        (c, joined)
    }

    pub async fn closes(&mut self) -> bool {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match self.ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or(false)
    }
}

pub fn http_status(server: &Server, path: &str) -> String {
    let mut s = TcpStream::connect(&server.http).unwrap();
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines().next().unwrap_or_default().to_owned()
}

/// A TCP proxy to PostgreSQL that can cut the database off (connections reset, new ones refused)
/// or make it slow (every chunk held for a while each way).
pub struct Proxy {
    pub port: u16,
    down: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    pub fn start(target: &'static str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (d, cs, dl) = (down.clone(), conns.clone(), delay_ms.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                if d.load(Ordering::SeqCst) {
                    let _ = c.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(up) = TcpStream::connect(target) else {
                    continue;
                };
                cs.lock()
                    .unwrap()
                    .extend([c.try_clone().unwrap(), up.try_clone().unwrap()]);
                for (mut a, mut b) in [(c.try_clone().unwrap(), up.try_clone().unwrap()), (up, c)] {
                    let dl = dl.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = a.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            let ms = dl.load(Ordering::SeqCst);
                            if ms > 0 {
                                std::thread::sleep(Duration::from_millis(ms));
                            }
                            if b.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = b.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            port,
            down,
            conns,
            delay_ms,
        }
    }

    /// Holds every chunk `delay` before passing it on, both ways (zero: full speed again).
    pub fn slow(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

pub fn psql(db: &str, sql: &str) -> Option<String> {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-d", db, "-tAc", sql])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub fn installed(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Runs coturn's client against our TURN; returns (exit ok, received, lost).
pub fn uclient(args: &[&str]) -> (bool, Option<u64>, Option<u64>, String) {
    let out = Command::new("turnutils_uclient")
        .args(args)
        .output()
        .expect("turnutils_uclient runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let num_after = |key: &str| {
        text.rfind(key).and_then(|i| {
            let digits: String = text[i + key.len()..]
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(|c| c.is_ascii_digit())
                .collect();
            digits.parse().ok()
        })
    };
    (
        out.status.success(),
        num_after("tot_recv_msgs="),
        num_after("Total lost packets"),
        text,
    )
}

/// One HTTP/1.0 request to `addr`; returns (status, head, JSON body or Null).
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        status,
        head.to_owned(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// Polls `f` every 200 ms until it holds; fails after `secs` naming `what`.
pub async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A consultation's call events through the control API (`GET /api/v1/consultations/{room}/
/// events`, up to 1000), with an API key the server was started with.
pub fn call_events(server: &Server, key: &str, room: &str) -> Vec<serde_json::Value> {
    let auth = format!("Bearer {key}");
    let (status, _, body) = http_request(
        &server.http,
        "GET",
        &format!("/api/v1/consultations/{room}/events?limit=1000"),
        &[("Authorization", auth.as_str())],
        None,
    );
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}
