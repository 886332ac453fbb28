//! Interoperability with coturn's independent client: turnutils_uclient relays through this
//! server to turnutils_peer (an echo peer) over UDP, TCP and TLS, with credentials minted by
//! [`consulta_turn::credentials`]. Skipped, with a printed reason, only when coturn's tools are
//! not installed (`apt-get install -y coturn openssl`).

mod common;

use common::*;
use consulta_turn::credentials;

/// 50 messages of 120 bytes from one client (RTP and RTCP allocations, so 100 in all).
async fn relay_run(extra: &[&str], port: u16, peer_port: u16, user: &str, pass: &str) -> Report {
    let (port, peer_port) = (port.to_string(), peer_port.to_string());
    let mut args = extra.to_vec();
    args.extend([
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port,
        "-n",
        "50",
        "-m",
        "1",
        "-l",
        "120",
    ]);
    args.extend(["-u", user, "-w", pass, "-p", &port]);
    uclient(&args).await
}

fn assert_no_loss(what: &str, r: &Report) {
    assert!(r.success, "{what}: uclient failed:\n{}", r.output);
    assert_eq!(r.lost, Some(0), "{what}: lost packets:\n{}", r.output);
    assert_eq!(r.sent, Some(100), "{what}: sent:\n{}", r.output);
    assert_eq!(
        r.received, r.sent,
        "{what}: received != sent:\n{}",
        r.output
    );
    eprintln!(
        "{what}: sent {:?} received {:?} lost {:?}",
        r.sent, r.received, r.lost
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_tcp_and_tls_relay_without_loss() {
    if !tools_present("udp_tcp_and_tls_relay_without_loss") {
        return;
    }
    let dir = temp_dir("tls");
    let (cert, key) = self_signed_cert(&dir);
    let mut cfg = config(true);
    cfg.tls_port = free_tcp_port();
    cfg.tls_cert = Some(cert);
    cfg.tls_key = Some(key);
    let server = start(cfg).await;
    let h = &server.handle;
    let peer_port = free_udp_port();
    let _peer = peer(peer_port);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (user, pass) = credentials(SECRET, "patient-1", 600, unix_now());
    let tls_port = h.tls_addr.expect("TLS is on").port();
    let (udp, tcp, mut tls) = tokio::join!(
        relay_run(&[], h.udp_addr.port(), peer_port, &user, &pass),
        relay_run(&["-t"], h.tcp_addr.port(), peer_port, &user, &pass),
        relay_run(&["-t", "-S"], tls_port, peer_port, &user, &pass),
    );
    // uclient picks one of several TLS client contexts at random per connection, some of them
    // legacy ones that a modern server refuses (an alert in the handshake, before any TURN
    // traffic): such a run says nothing about the relay, so it is run once more.
    if tls.lost != Some(0) && tls.output.contains("alert handshake failure") {
        eprintln!("TLS: uclient offered a refused legacy handshake; running it again");
        tls = relay_run(&["-t", "-S"], tls_port, peer_port, &user, &pass).await;
    }
    assert_no_loss("UDP", &udp);
    assert_no_loss("TCP", &tcp);
    assert_no_loss("TLS", &tls);
    let n = h.counters();
    assert!(n.allocations_total >= 6, "{n:?}");
    assert!(
        n.to_peer_packets >= 300 && n.to_client_packets >= 300,
        "{n:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_expired_credential_fail() {
    if !tools_present("wrong_password_and_expired_credential_fail") {
        return;
    }
    let server = start(config(true)).await;
    let h = &server.handle;
    let peer_port = free_udp_port();
    let _peer = peer(peer_port);
    let port = h.udp_addr.port();
    let (user, _) = credentials(SECRET, "patient-2", 600, unix_now());
    // Correctly signed, but expired an hour ago.
    let (old_user, old_pass) = credentials(SECRET, "patient-3", 60, unix_now() - 3600);
    let (wrong, expired) = tokio::join!(
        relay_run(&[], port, peer_port, &user, "not-the-password"),
        relay_run(&[], port, peer_port, &old_user, &old_pass),
    );
    assert!(
        !wrong.success,
        "wrong password must fail:\n{}",
        wrong.output
    );
    assert!(
        wrong.output.contains("Cannot complete Allocation"),
        "{}",
        wrong.output
    );
    assert!(
        !expired.success,
        "expired credential must fail:\n{}",
        expired.output
    );
    let n = h.counters();
    assert!(n.auth_bad_integrity >= 1 && n.auth_expired >= 1, "{n:?}");
    assert_eq!(n.allocations_total, 0, "{n:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_peer_is_refused_by_default() {
    if !tools_present("loopback_peer_is_refused_by_default") {
        return;
    }
    let server = start(config(false)).await;
    let h = &server.handle;
    let peer_port = free_udp_port();
    let _peer = peer(peer_port);
    let (user, pass) = credentials(SECRET, "patient-4", 600, unix_now());
    let r = relay_run(&[], h.udp_addr.port(), peer_port, &user, &pass).await;
    let received = r.received.unwrap_or(0);
    assert!(
        !r.success || received == 0,
        "a loopback peer was reached:\n{}",
        r.output
    );
    let n = h.counters();
    assert!(n.permission_refusals >= 1, "{n:?}");
    assert_eq!(n.to_peer_packets, 0, "{n:?}");
}
