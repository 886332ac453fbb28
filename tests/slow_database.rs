//! A slow (not failed) PostgreSQL under a real `consulta serve`: every chunk between them held
//! by a proxy, so each call event takes the database a second or more. Joins and leaves must not
//! wait on it: events go to the journal at the disk's pace (the writer's queue stays empty), and
//! once the database is fast again every event is stored exactly once.

mod common;

use std::time::Duration;

use common::*;
use consulta_signaling::Role;
use serde_json::json;

fn count(db: &str, sql: &str) -> i64 {
    psql(db, sql)
        .unwrap_or_else(|| panic!("{sql}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_database_fills_the_journal_not_the_queue_and_loses_nothing() {
    if psql("test", "SELECT 1").is_none() {
        panic!("PostgreSQL on 127.0.0.1:5432 (database `test`) is required");
    }
    let db = format!("consulta_slow_{}_{}", std::process::id(), free_tcp());
    psql("test", &format!("CREATE DATABASE {db}")).expect("create the test database");
    let proxy = Proxy::start("127.0.0.1:5432");
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let server = start_full(
        "",
        &format!(
            "[database]\nurl = \"postgres://{user}@127.0.0.1:{}/{db}\"\n",
            proxy.port
        ),
    );
    let room = "appt-slow-db";
    // The room's policy is read (and cached) while the database is fast.
    let (mut host, _) = Client::join(&server, room, "dr-host", Role::Doctor).await;
    wait_for("the first events stored", 20, || {
        metric(&server, "consulta_events_written_total") >= 2.0
    })
    .await;

    // Every chunk held 150 ms each way: a round trip of 300 ms, an event's transaction over a
    // second (still under the writer's 3 s timeout: slow, not failed).
    proxy.slow(Duration::from_millis(150));
    const GUESTS: usize = 12;
    for i in 0..GUESTS {
        let (mut c, _) = Client::join(&server, room, &format!("dr-{i}"), Role::Doctor).await;
        c.send(json!({"type": "leave"})).await;
        c.expect("left").await;
    }
    // Two events each, made in a few hundred milliseconds while the database takes one a
    // second or more: they are journaled at once, not queued for the database.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let queued = metric(&server, "consulta_events_queue_depth");
    let pending = metric(&server, "consulta_events_journal_pending");
    assert_eq!(
        queued, 0.0,
        "events queued behind the slow database ({pending} in the journal)"
    );
    assert!(
        pending >= 5.0,
        "the database was not slow enough to test anything: {pending} pending"
    );

    proxy.slow(Duration::ZERO);
    host.send(json!({"type": "leave"})).await;
    host.expect("left").await;
    wait_for("the journal applied", 60, || {
        metric(&server, "consulta_events_journal_pending") == 0.0
            && metric(&server, "consulta_events_queue_depth") == 0.0
    })
    .await;
    let joined = count(
        &db,
        &format!("SELECT COUNT(*) FROM call_events WHERE consultation_id = '{room}' AND type = 'participant_joined'"),
    );
    let left = count(
        &db,
        &format!("SELECT COUNT(*) FROM call_events WHERE consultation_id = '{room}' AND type = 'participant_left'"),
    );
    assert_eq!((joined, left), (GUESTS as i64 + 1, GUESTS as i64 + 1));
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM sessions WHERE left_at IS NULL"),
        0
    );
    // Stored in the order they happened.
    let order = psql(
        &db,
        &format!("SELECT string_agg(type, ',' ORDER BY seq) FROM call_events WHERE consultation_id = '{room}' AND type LIKE 'participant_%'"),
    )
    .unwrap();
    let expected: Vec<&str> = std::iter::once("participant_joined")
        .chain((0..GUESTS).flat_map(|_| ["participant_joined", "participant_left"]))
        .chain(std::iter::once("participant_left"))
        .collect();
    assert_eq!(order, expected.join(","));
    let journal = server.dir.join("data").join("events.journal");
    assert!(
        !journal.exists(),
        "the journal is removed once all of it is stored"
    );
}
