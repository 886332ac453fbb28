//! Relay throughput against coturn's `turnserver`, with the same turnutils_uclient command:
//!
//! ```sh
//! cargo test --release -p consulta-turn --test throughput -- --ignored --nocapture
//! ```
//!
//! `TURN_BENCH_ARGS` overrides the load (default `-z 0 -n 20000 -m 10 -l 160`: 10 clients, each
//! with an RTP and an RTCP allocation, sending 160-byte messages back to back). Each message
//! crosses the relay twice (to the echo peer and back), so relayed packets = 2 × received.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use tokio::process::Command;

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 14th field overall.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

struct Run {
    received: u64,
    lost: u64,
    transmit_secs: u64,
    wall: Duration,
    cpu_secs: f64,
}

async fn bench(port: u16, peer_port: u16, server_pid: u32) -> Run {
    let load = std::env::var("TURN_BENCH_ARGS").unwrap_or("-z 0 -n 20000 -m 10 -l 160".into());
    let (port, peer_port) = (port.to_string(), peer_port.to_string());
    let mut args: Vec<&str> = load.split_whitespace().collect();
    args.extend([
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port,
        "-W",
        SECRET,
        "-u",
        "bench",
        "-p",
        &port,
    ]);
    eprintln!("  turnutils_uclient {} 127.0.0.1", args.join(" "));
    let (c0, t0) = (cpu_ticks(server_pid), Instant::now());
    let r = uclient(&args).await;
    let (c1, wall) = (cpu_ticks(server_pid), t0.elapsed());
    assert!(r.success, "{}", r.output);
    Run {
        received: r.received.unwrap_or(0),
        lost: r.lost.unwrap_or(u64::MAX),
        transmit_secs: r.transmit_secs.unwrap_or(0),
        wall,
        cpu_secs: (c1 - c0) as f64 / 100.0,
    }
}

fn print(name: &str, r: &Run) {
    let relayed = 2 * r.received;
    eprintln!(
        "{name}: received {} msgs, lost {}, uclient transmit time {} s, wall {:.1} s, \
         {:.0} relayed packets/s (over transmit time), server CPU {:.2} s = {:.1} µs/packet",
        r.received,
        r.lost,
        r.transmit_secs,
        r.wall.as_secs_f64(),
        relayed as f64 / r.transmit_secs.max(1) as f64,
        r.cpu_secs,
        r.cpu_secs * 1e6 / relayed.max(1) as f64,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn relay_throughput_vs_coturn() {
    if !tools_present("relay_throughput_vs_coturn") {
        return;
    }
    let peer_port = free_udp_port();
    let _peer = peer(peer_port);

    let mut cfg = config(true);
    cfg.max_allocations_per_user = 1000;
    cfg.max_allocations_per_ip = 1000;
    cfg.max_connections_per_ip = 1000;
    cfg.max_bandwidth_per_allocation = 0;
    let ours = start(cfg).await;

    let dir = temp_dir("coturn");
    let coturn_port = free_udp_port();
    let mut coturn = Command::new("turnserver")
        .args([
            "-n",
            "--listening-ip",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
        ])
        .args(["--listening-port", &coturn_port.to_string()])
        .args([
            "--use-auth-secret",
            "--static-auth-secret",
            SECRET,
            "--realm",
            REALM,
        ])
        .args([
            "--allow-loopback-peers",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--no-stdout-log",
        ])
        .arg("--userdb")
        .arg(dir.join("turndb"))
        .arg("--pidfile")
        .arg(dir.join("turnserver.pid"))
        .arg("--log-file")
        .arg(dir.join("turn.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("turnserver starts (apt-get install -y coturn)");
    tokio::time::sleep(Duration::from_secs(1)).await;

    eprintln!("consulta-turn (in-process, 2 tokio workers):");
    let a = bench(ours.handle.udp_addr.port(), peer_port, std::process::id()).await;
    print("consulta-turn", &a);
    let n = ours.handle.counters();
    eprintln!("  counters: {n:?}");
    eprintln!("coturn turnserver {}:", coturn_port);
    let b = bench(coturn_port, peer_port, coturn.id().unwrap_or(0)).await;
    print("coturn", &b);
    let _ = coturn.kill().await;
    let _ = std::fs::remove_dir_all(dir);
    // uclient's own socket overflows on a 2-core machine at full blast (kernel "receive buffer
    // errors"), for coturn as well: judge the server by what it dropped itself.
    assert_eq!(n.to_peer_packets, n.to_client_packets, "{n:?}");
    assert_eq!(
        n.bandwidth_drops + n.no_permission_drops + n.client_queue_drops,
        0,
        "{n:?}"
    );
}
