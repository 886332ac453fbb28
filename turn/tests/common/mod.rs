//! Helpers to drive coturn's independent tools (turnutils_uclient, turnutils_peer, turnserver)
//! against this crate's server. Needs `apt-get install -y coturn openssl`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use consulta_turn::{TurnConfig, TurnHandle};
use tokio::process::{Child, Command};

pub const SECRET: &str = "integration-secret";
pub const REALM: &str = "consulta.test";

/// True when coturn's client tools are installed; otherwise prints why the test is skipped.
pub fn tools_present(test: &str) -> bool {
    let found = ["turnutils_uclient", "turnutils_peer"].iter().all(|t| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false)
    });
    if !found {
        eprintln!("SKIPPED {test}: turnutils_uclient/turnutils_peer not installed (apt-get install -y coturn)");
    }
    found
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A free port (bound then released; good enough on a quiet test machine).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn config(allow_loopback: bool) -> TurnConfig {
    TurnConfig {
        enabled: true,
        udp_port: 0,
        tcp_port: 0,
        tls_port: 0,
        realm: REALM.into(),
        secrets: vec![SECRET.into()],
        allowed_peer_ranges: if allow_loopback {
            vec!["127.0.0.0/8".into()]
        } else {
            vec![]
        },
        // turnutils_uclient picks channel numbers from RFC 5766's whole range.
        legacy_channel_numbers: true,
        ..TurnConfig::default()
    }
}

pub struct Server {
    pub handle: TurnHandle,
    _stop: tokio::sync::watch::Sender<bool>,
}

pub async fn start(config: TurnConfig) -> Server {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let handle = consulta_turn::start(config, Vec::new(), rx)
        .await
        .expect("turn server starts");
    Server {
        handle,
        _stop: stop,
    }
}

/// `turnutils_peer`, an echo peer on 127.0.0.1:`port`; killed when dropped.
pub fn peer(port: u16) -> Child {
    Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("turnutils_peer starts")
}

/// What turnutils_uclient reported.
#[derive(Debug, Default)]
pub struct Report {
    pub success: bool,
    pub sent: Option<u64>,
    pub received: Option<u64>,
    pub lost: Option<u64>,
    pub transmit_secs: Option<u64>,
    pub output: String,
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.rfind(key)? + key.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Runs `turnutils_uclient ARGS... 127.0.0.1` and parses its summary.
pub async fn uclient(args: &[&str]) -> Report {
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(args).arg("127.0.0.1").kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("uclient finishes within 180 s")
        .expect("uclient runs");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The final summary line has no "msz=" (the per-second progress lines do).
    let summary = output
        .lines()
        .rfind(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))
        .unwrap_or("");
    Report {
        success: out.status.success(),
        sent: number_after(summary, "tot_send_msgs="),
        received: number_after(summary, "tot_recv_msgs="),
        lost: number_after(&output, "Total lost packets"),
        transmit_secs: number_after(&output, "Total transmit time is"),
        output,
    }
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let d = std::env::temp_dir().join(format!(
        "consulta-turn-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A self-signed P-256 certificate for CN=localhost: (cert.pem, key.pem).
pub fn self_signed_cert(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs (apt-get install -y openssl)");
    assert!(status.success(), "openssl made a certificate");
    (cert, key)
}
