//! Real outages of the database under a real `consulta serve` (issue 26, item 4): a PostgreSQL
//! server of the test's own (initdb and pg_ctl from the installed PostgreSQL, on a free port, in
//! a temp dir) is stopped with `pg_ctl stop -m immediate` in the middle of a call and started
//! again. Unlike tests/api.rs's TCP proxy, the server really goes away: its connections die with
//! it, new ones are refused, and it comes back after crash recovery.
//!
//! Asserted on the database itself: every event the call made is stored exactly once (counted by
//! type, by event id, and per session), every session is closed once, and the call itself never
//! noticed (joins and leaves during the outage are answered at once).
//!
//! Without the PostgreSQL binaries (or a way to run them as a non-root user) the tests print why
//! and skip.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use consulta_signaling::Role;
use serde_json::json;

/// A PostgreSQL server owned by one test: its own cluster in a temp dir, on a free port.
struct OwnPostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// Run the server as this user (initdb refuses root).
    user: Option<&'static str>,
}

impl OwnPostgres {
    /// initdb + start; `Err` says why it cannot run here (the test then skips).
    fn start() -> Result<OwnPostgres, String> {
        let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| format!("no /usr/lib/postgresql ({e})"))?
            .flatten()
            .map(|d| d.path().join("bin"))
            .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
            .collect();
        bins.sort_by_key(|b| {
            let v = b.parent().and_then(|v| v.file_name());
            v.and_then(|v| v.to_str()?.parse::<u32>().ok())
        });
        let bin = bins
            .pop()
            .ok_or("no initdb/pg_ctl under /usr/lib/postgresql")?;
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let user = root.then_some("postgres");
        let dir =
            std::env::temp_dir().join(format!("consulta-pg-{}-{}", std::process::id(), free_tcp()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        if let Some(u) = user {
            let ok = Command::new("chown").args([u]).arg(&dir).status();
            if !ok.is_ok_and(|s| s.success()) {
                return Err(format!("cannot give {} to the {u} user", dir.display()));
            }
        }
        let pg = OwnPostgres {
            dir,
            bin,
            port: free_tcp(),
            user,
        };
        let data = pg.data();
        let init = pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        if !init {
            return Err(format!(
                "initdb failed (as {}): see {}",
                user.unwrap_or("this user"),
                pg.dir.display()
            ));
        }
        pg.start_again();
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs a PostgreSQL tool (as the server's user); true when it succeeded.
    fn run(&self, tool: &str, args: &[&str]) -> bool {
        let exe = self.bin.join(tool);
        let mut cmd = match self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tools.log"))
            .unwrap();
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts the server (again) on the same port and data; waits until it accepts queries.
    fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        let data = self.data();
        assert!(
            self.run(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-o",
                    &opts,
                    "-l",
                    log.to_str().unwrap(),
                    "-w",
                    "-t",
                    "30",
                    "start"
                ]
            ),
            "pg_ctl start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.psql("postgres", "SELECT 1").as_deref() != Some("1") {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not accept queries"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An outage: the server stops at once, without a checkpoint (crash recovery at the next
    /// start), and its clients' connections die.
    fn stop_immediate(&self) {
        assert!(self.try_stop_immediate(), "pg_ctl stop -m immediate");
    }

    fn try_stop_immediate(&self) -> bool {
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn psql(&self, db: &str, sql: &str) -> Option<String> {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tAc", sql])
            .arg("-p")
            .arg(self.port.to_string())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn count(&self, db: &str, sql: &str) -> i64 {
        self.psql(db, sql)
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            self.try_stop_immediate();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The test's own PostgreSQL with a database `consulta`, or `None` (printed) when this machine
/// cannot run one.
fn own_postgres() -> Option<OwnPostgres> {
    match OwnPostgres::start() {
        Ok(pg) => {
            assert!(pg.psql("postgres", "CREATE DATABASE consulta").is_some());
            Some(pg)
        }
        Err(why) => {
            eprintln!("SKIPPED: no PostgreSQL of the test's own: {why}");
            None
        }
    }
}

fn config(pg: &OwnPostgres) -> String {
    format!(
        "[database]\nurl = \"{}\"\n[consultation]\nempty_room_end = 2\n",
        pg.url("consulta")
    )
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Counts of the room's events by type, as "type=n" sorted.
fn by_type(pg: &OwnPostgres, room: &str) -> String {
    pg.psql(
        "consulta",
        &format!(
            "SELECT string_agg(type || '=' || n, ' ' ORDER BY type) FROM \
             (SELECT type, COUNT(*) AS n FROM call_events WHERE consultation_id = '{room}' GROUP BY type) t"
        ),
    )
    .unwrap_or_default()
}

/// What every test asserts at the end: no event id twice, no session closed twice or never, no
/// session joined twice.
fn assert_exactly_once(pg: &OwnPostgres, room: &str, sessions: i64) {
    let dup_ids = pg
        .psql(
            "consulta",
            "SELECT id, COUNT(*) FROM call_events GROUP BY id HAVING COUNT(*) > 1",
        )
        .unwrap();
    assert_eq!(dup_ids, "", "event ids stored twice");
    let per_session = |kind: &str| {
        pg.psql(
            "consulta",
            &format!(
                "SELECT COALESCE(string_agg(s || ':' || n, ' '), '') FROM (SELECT payload::json->>'session_id' AS s, \
                 COUNT(*) AS n FROM call_events WHERE consultation_id = '{room}' AND type = '{kind}' \
                 GROUP BY 1 HAVING COUNT(*) <> 1) t"
            ),
        )
        .unwrap()
    };
    assert_eq!(
        per_session("participant_joined"),
        "",
        "sessions joined twice"
    );
    assert_eq!(per_session("participant_left"), "", "sessions left twice");
    let q = |cond: &str| {
        pg.count(
            "consulta",
            &format!("SELECT COUNT(*) FROM sessions WHERE consultation_id = '{room}' {cond}"),
        )
    };
    assert_eq!(q(""), sessions, "sessions");
    assert_eq!(q("AND left_at IS NULL"), 0, "sessions never closed");
}

/// The test's own PostgreSQL, a server on it, and a doctor and a patient in `room`'s call
/// (stored as started, both sessions open); `None` when no PostgreSQL can run here.
async fn call_on_own_postgres(room: &str) -> Option<(OwnPostgres, Server, Client, Client)> {
    let pg = own_postgres()?;
    let server = start_full("", &config(&pg));
    let (doctor, _) = Client::join(&server, room, "dr", Role::Doctor).await;
    let (patient, _) = Client::join(&server, room, "pt", Role::Patient).await;
    wait_until("started and both sessions stored", 15, || {
        by_type(&pg, room).contains("started=1")
            && pg.count(
                "consulta",
                "SELECT COUNT(*) FROM sessions WHERE left_at IS NULL",
            ) == 2
    });
    Some((pg, server, doctor, patient))
}

/// `kill -9` of the server process.
fn kill(server: &mut Server) {
    server.child.kill().unwrap();
    let _ = server.child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_mid_call_and_started_again_every_event_lands_once() {
    let room = "pg-outage";
    let Some((pg, server, mut doctor, mut patient)) = call_on_own_postgres(room).await else {
        return;
    };

    pg.stop_immediate();
    assert!(
        pg.psql("postgres", "SELECT 1").is_none(),
        "the database is down"
    );
    // The call goes on: people come and go, each answered at once (within 5 s, Client::expect).
    let t0 = Instant::now();
    let (mut guest, _) = Client::join(&server, room, "gu", Role::Guest).await;
    // The doctor is told (after the patient's own earlier join).
    while doctor.expect("participant-joined").await["participant"]["identity"] != "gu" {}
    guest.send(json!({"type":"leave"})).await;
    guest.expect("left").await;
    patient.send(json!({"type":"leave"})).await;
    patient.expect("left").await;
    let (mut patient, joined) = Client::join(&server, room, "pt", Role::Patient).await;
    assert!(
        joined["participants"].to_string().contains("\"dr\""),
        "the doctor is still in the call: {joined}"
    );
    let during = t0.elapsed();
    assert!(
        during < Duration::from_secs(10),
        "joins and leaves took {during:?} with the database down"
    );
    // Four events (guest joined and left, patient left and joined again) wait in the journal.
    wait_until("the outage's events journaled", 20, || {
        metric(&server, "consulta_events_journal_pending") >= 4.0
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        metric(&server, "consulta_events_journal_pending"),
        4.0,
        "exactly the outage's events are journaled"
    );

    pg.start_again();
    wait_until("the journal replayed", 30, || {
        metric(&server, "consulta_events_journal_pending") == 0.0
    });
    assert!(metric(&server, "consulta_events_replayed_total") >= 4.0);
    doctor.send(json!({"type":"leave"})).await;
    doctor.expect("left").await;
    patient.send(json!({"type":"leave"})).await;
    patient.expect("left").await;
    wait_until("ended", 20, || by_type(&pg, room).contains("ended=1"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        by_type(&pg, room),
        "created=1 ended=1 participant_joined=4 participant_left=4 started=1"
    );
    assert_exactly_once(&pg, room, 4);
    println!(
        "joins/leaves during the outage answered in {during:?}; {} events replayed",
        metric(&server, "consulta_events_replayed_total")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_while_postgres_is_down_replays_its_journal_and_closes_the_call_once() {
    let room = "pg-outage-crash";
    let Some((pg, mut server, _doctor, _patient)) = call_on_own_postgres(room).await else {
        return;
    };
    pg.stop_immediate();
    let (_guest, _) = Client::join(&server, room, "gu", Role::Guest).await;
    wait_until("the guest's join journaled", 20, || {
        metric(&server, "consulta_events_journal_pending") >= 1.0
    });
    // A crash with the event only in the journal; the database comes back while the server is
    // gone, and the server after it.
    kill(&mut server);
    pg.start_again();
    restart(&mut server);
    // The journal goes in first; then the sessions no process holds are closed and the call,
    // empty, ends.
    wait_until("ended (server_restart)", 40, || {
        by_type(&pg, room).contains("ended=1")
    });
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        by_type(&pg, room),
        "created=1 ended=1 participant_joined=3 participant_left=3 started=1"
    );
    let reasons = pg
        .psql(
            "consulta",
            &format!(
                "SELECT string_agg(DISTINCT payload::json->>'reason', ',') FROM call_events \
                 WHERE consultation_id = '{room}' AND type IN ('participant_left', 'ended')"
            ),
        )
        .unwrap();
    assert_eq!(reasons, "server_restart");
    assert_exactly_once(&pg, room, 3);
    assert!(
        std::fs::read_to_string(server.dir.join("data").join("events.journal"))
            .unwrap_or_default()
            .trim()
            .is_empty()
    );
}

/// Starts `server`'s process again on its config and data (same ports); waits for its health.
fn restart(server: &mut Server) {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(server.dir.join("server.log"))
        .unwrap();
    server.child = Command::new(env!("CARGO_BIN_EXE_consulta"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(server.config())
        .env("CONSULTA_LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("consulta starts");
    wait_until("health after the restart", 20, || {
        std::net::TcpStream::connect(&server.http).is_ok()
            && http_status(server, "/healthz").contains("200")
    });
}

/// A single node killed mid-call and its participants back within seconds, before the orphan
/// sweep sees the room unheld twice: the killed process's sessions are still closed once
/// (before the fix they stayed open for good), and the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_and_rejoined_at_once_closes_the_old_sessions_once() {
    let room = "quick-rejoin";
    let Some((pg, mut server, doctor, patient)) = call_on_own_postgres(room).await else {
        return;
    };
    kill(&mut server);
    drop((doctor, patient));
    restart(&mut server);
    let (mut doctor, _) = Client::join(&server, room, "dr", Role::Doctor).await;
    let (mut patient, _) = Client::join(&server, room, "pt", Role::Patient).await;
    let closed = "SELECT COUNT(*) FROM call_events WHERE type = 'participant_left' \
                  AND payload::json->>'reason' = 'server_restart'";
    wait_until("the killed process's sessions closed", 20, || {
        pg.count("consulta", closed) == 2
    });
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(pg.count("consulta", closed), 2, "closed once");
    assert_eq!(
        pg.count(
            "consulta",
            "SELECT COUNT(*) FROM sessions WHERE left_at IS NULL"
        ),
        2,
        "the new sessions stay open"
    );
    assert_eq!(
        by_type(&pg, room),
        "created=1 participant_joined=4 participant_left=2 started=1",
        "not ended, started once"
    );
    doctor.send(json!({"type":"leave"})).await;
    doctor.expect("left").await;
    patient.send(json!({"type":"leave"})).await;
    patient.expect("left").await;
    wait_until("ended", 20, || by_type(&pg, room).contains("ended=1"));
    assert_exactly_once(&pg, room, 4);
}

/// A single node killed while someone waited alone (the call never started) and nobody came
/// back: that session is closed once too (`server_restart`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_with_a_call_not_started_closes_its_session_once() {
    let Some(pg) = own_postgres() else { return };
    let mut server = start_full("", &config(&pg));
    let room = "alone-room";
    let (doctor, _) = Client::join(&server, room, "dr", Role::Doctor).await;
    wait_until("the session stored", 15, || {
        pg.count(
            "consulta",
            "SELECT COUNT(*) FROM sessions WHERE left_at IS NULL",
        ) == 1
    });
    kill(&mut server);
    drop(doctor);
    restart(&mut server);
    let closed = "SELECT COUNT(*) FROM call_events WHERE type = 'participant_left' \
                  AND payload::json->>'reason' = 'server_restart'";
    wait_until("the killed process's session closed", 20, || {
        pg.count("consulta", closed) == 1
    });
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        by_type(&pg, room),
        "created=1 participant_joined=1 participant_left=1"
    );
    assert_exactly_once(&pg, room, 1);
}
