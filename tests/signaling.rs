//! End-to-end signaling tests against a real `consulta serve` process: join tokens, error codes,
//! room capacity, reconnection, floods. (Media with real browsers: `tests/e2e/`.)

mod common;

use common::*;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use consulta_signaling::{JoinToken, Role};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn bad_input_gets_stable_codes_and_the_session_survives() {
    let server = start("");
    let mut c = Client::connect(&server, "").await;
    c.send_raw(Message::Text("{not json".into())).await;
    c.expect_error("bad_json").await;
    c.send(json!({"type":"dance"})).await;
    c.expect_error("unknown_type").await;
    c.send(json!({"kind":"x"})).await;
    c.expect_error("bad_message").await;
    c.send(json!({"type":"offer","sdp":"v=0"})).await;
    c.expect_error("not_joined").await;
    c.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    c.expect_error("bad_message").await;
    c.send(json!({"type":"offer","sdp":"a".repeat(70 * 1024)}))
        .await;
    let e = c.expect_error("message_too_large").await;
    assert_eq!(e["fatal"], false);
    c.send(json!({"type":"ping"})).await;
    c.expect("pong").await;
    // Joined: wrong order and bad SDP are refused without closing.
    c.send(json!({"type":"join","v":1,"token":token("appt-1","dr-a",Role::Doctor)}))
        .await;
    let joined = c.expect("joined").await;
    assert_eq!(joined["participant"]["identity"], "dr-a");
    assert_eq!(joined["participant"]["role"], "doctor");
    assert_eq!(joined["participants"].as_array().unwrap().len(), 0);
    c.send(json!({"type":"join","v":1,"token":token("appt-1","dr-a",Role::Doctor)}))
        .await;
    c.expect_error("already_joined").await;
    c.send(json!({"type":"answer","sdp":"v=0"})).await;
    c.expect_error("no_pending_offer").await;
    c.send(json!({"type":"offer","sdp":"this is not sdp"}))
        .await;
    c.expect_error("sdp_invalid").await;
    c.send(json!({"type":"ping"})).await;
    c.expect("pong").await;
}

#[tokio::test]
async fn tokens_are_checked() {
    let server = start("");
    let secret = SECRET.as_bytes();
    let expired = JoinToken::new("appt-1", "p", Role::Patient, now() - 120, 60)
        .unwrap()
        .sign(secret)
        .unwrap();
    let forged = JoinToken::new("appt-1", "p", Role::Patient, now(), 60)
        .unwrap()
        .sign(b"not-the-server-secret-at-all")
        .unwrap();
    for (tok, query, room, code) in [
        (expired, "", None, "token_expired"),
        (forged, "", None, "token_invalid"),
        ("garbage".to_owned(), "", None, "token_invalid"),
        (
            token("appt-1", "p", Role::Patient),
            "?room=appt-2",
            None,
            "token_room_mismatch",
        ),
        (
            token("appt-1", "p", Role::Patient),
            "",
            Some("appt-2"),
            "token_room_mismatch",
        ),
    ] {
        let mut c = Client::connect(&server, query).await;
        let mut join = json!({"type":"join","v":1,"token":tok});
        if let Some(r) = room {
            join["room"] = json!(r);
        }
        c.send(join).await;
        let e = c.expect_error(code).await;
        assert_eq!(e["fatal"], true);
        assert!(c.closes().await, "{code}: the socket closes");
    }
    let mut c = Client::connect(&server, "").await;
    c.send(json!({"type":"join","v":2,"token":token("appt-1","p",Role::Patient)}))
        .await;
    c.expect_error("unsupported_version").await;
    // The right room in the URL is fine.
    let mut c = Client::connect(&server, "?room=appt-1").await;
    c.send(json!({"type":"join","v":1,"token":token("appt-1","p",Role::Patient)}))
        .await;
    c.expect("joined").await;
}

#[tokio::test]
async fn presence_capacity_and_replacement() {
    let server = start("max_publishers = 3");
    let (mut doctor, _) = Client::join(&server, "appt-9", "dr", Role::Doctor).await;
    let (mut patient, joined) = Client::join(&server, "appt-9", "pt", Role::Patient).await;
    assert_eq!(joined["participants"][0]["identity"], "dr");
    assert_eq!(joined["participants"][0]["role"], "doctor");
    let pj = doctor.expect("participant-joined").await;
    assert_eq!(pj["participant"]["identity"], "pt");
    assert_eq!(pj["participant"]["role"], "patient");

    // Mute is relayed.
    patient
        .send(json!({"type":"mute","kind":"audio","muted":true}))
        .await;
    let m = doctor.expect("mute").await;
    assert_eq!(
        (
            m["identity"].as_str(),
            m["kind"].as_str(),
            m["muted"].as_bool()
        ),
        (Some("pt"), Some("audio"), Some(true))
    );

    let (_guest, _) = Client::join(&server, "appt-9", "g", Role::Guest).await;
    doctor.expect("participant-joined").await;
    // A fourth participant exceeds max_publishers = 3.
    let mut extra = Client::connect(&server, "").await;
    extra
        .send(json!({"type":"join","v":1,"token":token("appt-9","g2",Role::Guest)}))
        .await;
    extra.expect_error("room_full").await;
    // Other rooms are unaffected.
    let (mut other, _) = Client::join(&server, "appt-10", "dr", Role::Doctor).await;

    // The patient reconnects: the old session is replaced, no ghost remains.
    let (_patient2, joined2) = Client::join(&server, "appt-9", "pt", Role::Patient).await;
    let others: Vec<&str> = joined2["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["identity"].as_str().unwrap())
        .collect();
    assert_eq!(others.len(), 2, "{others:?}");
    assert!(!others.contains(&"pt"));
    patient.expect_error("session_replaced").await;
    assert!(patient.closes().await);
    let left = doctor.expect("participant-left").await;
    assert_eq!(
        (left["identity"].as_str(), left["reason"].as_str()),
        (Some("pt"), Some("replaced"))
    );
    let again = doctor.expect("participant-joined").await;
    assert_eq!(again["participant"]["identity"], "pt");

    // Leaving is announced with its reason.
    let (mut visitor, _) = Client::join(&server, "appt-10", "pt", Role::Patient).await;
    other.expect("participant-joined").await;
    visitor.send(json!({"type":"leave"})).await;
    visitor.expect("left").await;
    let left = other.expect("participant-left").await;
    assert_eq!(
        (left["identity"].as_str(), left["reason"].as_str()),
        (Some("pt"), Some("left"))
    );
}

#[tokio::test]
async fn floods_are_limited_without_hurting_others() {
    let server = start("");
    let (mut calm, _) = Client::join(&server, "appt-3", "dr", Role::Doctor).await;
    let mut noisy = Client::connect(&server, "").await;
    for _ in 0..400 {
        noisy.send(json!({"type":"ping"})).await;
    }
    let mut saw_limit = false;
    while let Some(m) = noisy.recv().await {
        if m["code"] == "rate_limited" {
            saw_limit = true;
            break;
        }
    }
    assert!(saw_limit, "a flood is answered with rate_limited");
    calm.send(json!({"type":"ping"})).await;
    calm.expect("pong").await;
}

#[tokio::test]
async fn logs_are_json_without_tokens_identities_or_sdp() {
    let server = start("");
    let tok = token("appt-77", "maria-silva-cpf-123", Role::Patient);
    let mut c = Client::connect(&server, "").await;
    c.send(json!({"type":"join","v":1,"token":tok})).await;
    c.expect("joined").await;
    c.send(
        json!({"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=secret-sdp-body\r\n"}),
    )
    .await;
    c.expect_error("sdp_invalid").await;
    c.send(json!({"type":"leave"})).await;
    c.expect("left").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = std::fs::read_to_string(server.dir.join("server.log")).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.iter().any(|l| l.contains("participant joined")),
        "joins are logged: {log}"
    );
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
        for secret in [
            tok.as_str(),
            "maria-silva-cpf-123",
            "secret-sdp-body",
            "v=0",
        ] {
            assert!(!line.contains(secret), "the log leaks `{secret}`: {line}");
        }
    }
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_from_join_and_cli_relay_media() {
    if !installed("turnutils_uclient") || !installed("turnutils_peer") {
        eprintln!("SKIPPED: coturn's turnutils are not installed (apt-get install -y coturn)");
        return;
    }
    let ports = std::cell::Cell::new((0, 0));
    let server = start_with("", || {
        let (udp, tcp) = (free_udp(), free_tcp());
        ports.set((udp, tcp));
        format!(
            "[turn]\nenabled = true\nudp_port = {udp}\ntcp_port = {tcp}\ntls_port = 0\n\
             allowed_peer_ranges = [\"127.0.0.0/8\"]\nlegacy_channel_numbers = true\n"
        )
    });
    let ((udp, tcp), peer_port) = (ports.get(), free_udp());
    // The join response carries fresh credentials for this session.
    let (_c, joined) = Client::join(&server, "appt-turn", "dr", Role::Doctor).await;
    let ice = &joined["ice_servers"][0];
    let urls: Vec<&str> = ice["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            format!("turn:127.0.0.1:{udp}?transport=udp"),
            format!("turn:127.0.0.1:{tcp}?transport=tcp")
        ]
    );
    let username = ice["username"].as_str().unwrap().to_owned();
    let expiry: u64 = username.split(':').next().unwrap().parse().unwrap();
    assert!(expiry > now() + 3000, "default TTL is an hour: {username}");
    assert!(
        !username.contains("dr"),
        "no identity in TURN usernames: {username}"
    );
    let password = ice["credential"].as_str().unwrap().to_owned();
    // And the CLI mints the same kind.
    let out = Command::new(env!("CARGO_BIN_EXE_consulta"))
        .args([
            "turn-credentials",
            "--user",
            "cli-user",
            "--ttl",
            "600",
            "--config",
        ])
        .arg(server.config())
        .output()
        .unwrap();
    assert!(out.status.success());
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(cli["username"].as_str().unwrap().ends_with(":cli-user"));

    let mut peer = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (udp_s, tcp_s, peer_s) = (udp.to_string(), tcp.to_string(), peer_port.to_string());
    let base = [
        "-e",
        "127.0.0.1",
        "-r",
        &peer_s,
        "-n",
        "20",
        "-m",
        "1",
        "-l",
        "120",
        // Verbose: a failure shows every answer, the channel numbers uclient drew included (it
        // draws each at random, and a number drawn twice in one allocation is refused, 400).
        "-v",
    ];
    let join_creds = ["-u", &username, "-w", &password, "-p", &udp_s, "127.0.0.1"];
    let (ok, recv, lost, text) = uclient(&[&base[..], &join_creds[..]].concat());
    assert!(
        ok && recv == Some(40) && lost == Some(0),
        "UDP relay with the join credentials:\n{text}"
    );
    let cli_user = cli["username"].as_str().unwrap();
    let cli_pass = cli["credential"].as_str().unwrap();
    let tcp_args = [
        "-t",
        "-u",
        cli_user,
        "-w",
        cli_pass,
        "-p",
        &tcp_s,
        "127.0.0.1",
    ];
    let (ok, recv, lost, text) = uclient(&[&base[..], &tcp_args[..]].concat());
    assert!(
        ok && recv == Some(40) && lost == Some(0),
        "TCP relay with CLI credentials:\n{text}"
    );
    let wrong = [
        "-u",
        &username,
        "-w",
        "not-the-password",
        "-p",
        &udp_s,
        "127.0.0.1",
    ];
    let (ok, _, _, text) = uclient(&[&base[..], &wrong[..]].concat());
    assert!(!ok, "a wrong password is refused:\n{text}");
    let _ = peer.kill();
    let _ = peer.wait();
}

#[tokio::test]
async fn sigterm_drains_calls_in_progress_then_exits() {
    let mut server = start("");
    let (mut call, _) = Client::join(&server, "appt-drain", "dr", Role::Doctor).await;
    assert!(http_status(&server, "/readyz").contains(" 200"));
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No new joins, and load balancers are told.
    let mut late = Client::connect(&server, "").await;
    late.send(json!({"type":"join","v":1,"token":token("appt-drain","pt",Role::Patient)}))
        .await;
    late.expect_error("server_draining").await;
    assert!(http_status(&server, "/readyz").contains(" 503"));
    // The consultation in progress goes on...
    call.send(json!({"type":"ping"})).await;
    call.expect("pong").await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "still serving the call"
    );
    // ...and once it ends, the server exits cleanly.
    call.send(json!({"type":"leave"})).await;
    call.expect("left").await;
    drop(call);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the server exits after its last call"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "clean exit: {status:?}");
}

/// A server that stops reading (SIGSTOP) while datagrams keep coming: the kernel drops what its
/// socket's queue cannot hold, and /metrics says how many, exactly.
#[tokio::test]
async fn kernel_drops_on_the_media_socket_are_counted() {
    let server = start("");
    let queue = metric(
        &server,
        "consulta_udp_socket_buffer_bytes{direction=\"receive\"}",
    );
    assert!(queue > 0.0, "the receive queue is reported: {queue}");
    assert!(
        metric(
            &server,
            "consulta_udp_socket_buffer_bytes{direction=\"send\"}"
        ) > 0.0
    );
    assert_eq!(metric(&server, "consulta_udp_receive_drops_total"), 0.0);
    let unroutable0 = metric(&server, "consulta_udp_unroutable_total");
    let pid = server.child.id().to_string();
    let signal = |s: &str| {
        assert!(Command::new("kill")
            .args([s, &pid])
            .status()
            .unwrap()
            .success())
    };
    // More than the queue holds, whatever it is (each datagram costs the queue more than its
    // payload). Not STUN, DTLS or RTP: the server reads and discards what it gets to.
    let sent = (queue / 500.0) as u64 + 2000;
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = format!("127.0.0.1:{}", udp_port(&server));
    signal("-STOP");
    for _ in 0..sent {
        tx.send_to(&[0xEEu8; 1000], &to).unwrap();
    }
    signal("-CONT");
    let mut seen = (0.0, 0.0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.0 + seen.1 < sent as f64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen = (
            metric(&server, "consulta_udp_receive_drops_total"),
            metric(&server, "consulta_udp_unroutable_total") - unroutable0,
        );
    }
    let (dropped, read) = seen;
    assert!(dropped > 0.0, "the kernel dropped some: {seen:?} of {sent}");
    assert!(read > 0.0, "the queued ones were read: {seen:?} of {sent}");
    assert_eq!(dropped + read, sent as f64, "every datagram accounted for");
}

/// `media.worker_cpus`: each worker thread runs on its CPU only; a CPU the process may not use
/// stops the start with the key's name.
#[tokio::test]
async fn media_workers_are_pinned_to_the_configured_cpus() {
    let allowed = consulta_sfu::allowed_cpus().unwrap();
    let cpu = *allowed.last().unwrap();
    // Two workers on one CPU: both threads pinned there.
    let server = start(&format!("worker_cpus = \"{cpu}\""));
    // A thread's (or process's) `Cpus_allowed_list` from its /proc status file.
    let cpus_allowed = |status: std::path::PathBuf| {
        std::fs::read_to_string(status).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|l| l.trim().to_owned())
        })
    };
    // (worker thread?, CPUs) of every thread; names are cut to 15 characters.
    let task = format!("/proc/{}/task", server.child.id());
    let threads: Vec<(bool, String)> = std::fs::read_dir(&task)
        .unwrap()
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            Some((
                comm.trim() == "consulta-worker",
                cpus_allowed(t.path().join("status"))?,
            ))
        })
        .collect();
    let workers: Vec<&String> = threads.iter().filter(|t| t.0).map(|t| &t.1).collect();
    assert_eq!(
        workers,
        vec![&cpu.to_string(), &cpu.to_string()],
        "{threads:?}"
    );
    // The other threads keep every CPU.
    let all = cpus_allowed("/proc/self/status".into()).unwrap();
    assert!(
        threads.iter().filter(|t| !t.0).all(|t| t.1 == all),
        "{threads:?}"
    );
    // A pinned worker serves joins (`joined` comes from the worker).
    let _joined = Client::join(&server, "appt-pin", "dr", Role::Doctor).await;
    drop(server);

    let err = serve_refused("worker_cpus = \"1023\"");
    assert!(
        err.contains("media.worker_cpus: CPU 1023 is not one this process may run on"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_short_run_completes_without_loss() {
    let server = start("");
    // The server's CPU time as /proc gives it, read here on both sides of the run: the report
    // reads the same counters at its window's edges, inside this span.
    let server_pid = server.child.id();
    let (http, pid) = (server.http.clone(), server_pid.to_string());
    let cpu_before = proc_cpu_seconds_of(server_pid);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_consulta-bench"))
            .args(["--url", &format!("ws://{http}/ws")])
            .args(["--metrics", &format!("http://{http}/metrics")])
            .args([
                "--secret",
                SECRET,
                "--rooms",
                "2",
                "--participants",
                "2",
                "--duration",
                "4",
            ])
            .args(["--server-pid", &pid])
            .output()
            .expect("consulta-bench runs")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(r["errors"], json!([]), "{r}");
    assert!(r["frames_received"].as_u64().unwrap() > 100, "{r}");
    assert!(r["audio_frames_received"].as_u64().unwrap() > 100, "{r}");
    assert_eq!(r["frames_lost"], 0, "{r}");
    assert!(
        r["server"]["rtp_forwarded"].as_f64().unwrap() > 1000.0,
        "{r}"
    );
    assert!(r["server"]["cpu_seconds"].as_f64().is_some(), "{r}");
    // Memory from /proc as the window ended, and the process's peak, never below it.
    let rss = r["server"]["rss_bytes"].as_u64().expect("server RSS");
    let peak = r["server"]["rss_peak_bytes"]
        .as_u64()
        .expect("server peak RSS");
    assert!(rss > 1_000_000 && peak >= rss, "{r}");
    // What the report says of the server's CPU matches /proc, read independently: its window's
    // CPU time is inside what the process spent over the whole run (user and system time only
    // grow, so no timing enters the check). Memory has no such bound: VmHWM can fall when the
    // allocator returns pages with madvise, so the report's peak is checked above only against
    // its own RSS.
    let cpu_after = proc_cpu_seconds_of(server_pid);
    let cpu = r["server"]["cpu_seconds"].as_f64().unwrap();
    assert!(
        cpu > 0.0 && cpu <= cpu_after - cpu_before + 1e-6,
        "report {cpu} s against /proc {cpu_before} -> {cpu_after} s: {r}"
    );
    let per_packet = r["server"]["cpu_us_per_forwarded_packet"].as_f64().unwrap();
    let forwarded = r["server"]["rtp_forwarded"].as_f64().unwrap();
    assert!(
        (per_packet - cpu * 1e6 / forwarded).abs() < 1e-6 * per_packet,
        "cpu_us_per_forwarded_packet is not cpu_seconds / rtp_forwarded: {r}"
    );
    assert!(r["generator"]["cpu_seconds"].as_f64().is_some(), "{r}");
    assert_eq!(r["generator"]["datagrams_refused"], 0, "{r}");
    assert!(r["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["jitter_ms"]["max"].as_f64().is_some(), "{r}");
    // The server's own forwarding delay histogram was filled and read over the window.
    let in_server = r["server"]["forward_delay_ms"]["p50"].as_f64();
    assert!(in_server.is_some_and(|ms| ms > 0.0), "{r}");
}

/// User plus system CPU seconds of a process from `/proc/<pid>/stat` (fields 14 and 15, in
/// clock ticks of `getconf CLK_TCK`).
fn proc_cpu_seconds_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // The command name may hold spaces: fields count from the closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let tck = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    let tck: f64 = String::from_utf8_lossy(&tck.stdout).trim().parse().unwrap();
    ticks / tck
}
