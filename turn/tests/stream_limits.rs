//! The TCP listener's limits with real sockets on loopback (issue 24, item 3): a connection
//! that does not authenticate within `auth_timeout` is closed, an authenticated one is not, and
//! one source IP cannot hold more than `max_connections_per_ip` connections. Bounds on time are
//! generous: they tell "closed by the timeout" from "never closed", nothing finer.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use consulta_turn::auth::{credentials, long_term_key};
use consulta_turn::stun::{attr, method, Class, IntegrityKind, Message, MessageWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one STUN message; `None` when the connection closes or `wait` passes first.
async fn read_message(s: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 20];
    tokio::time::timeout(wait, s.read_exact(&mut buf))
        .await
        .ok()?
        .ok()?;
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    buf.resize(20 + len, 0);
    tokio::time::timeout(wait, s.read_exact(&mut buf[20..]))
        .await
        .ok()?
        .ok()?;
    Some(buf)
}

/// How long until the server closes `s` (reading and discarding), or `None` after `limit`.
async fn closed_after(s: &mut TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 512];
    loop {
        let left = limit.checked_sub(since.elapsed())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn binding(txid: u8) -> Vec<u8> {
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, method::BINDING, Class::Request, [txid; 12]);
    buf
}

/// Whether the server answers a Binding request on `s`.
async fn answers(s: &mut TcpStream) -> bool {
    if s.write_all(&binding(1)).await.is_err() {
        return false;
    }
    match read_message(s, Duration::from_secs(3)).await {
        Some(m) => Message::parse(&m).is_ok_and(|m| m.class == Class::Success),
        None => false,
    }
}

/// Allocates over `s` with a valid credential (401 round trip first).
async fn allocate(s: &mut TcpStream) {
    let (user, pass) = credentials(SECRET, "patient", 600, unix_now());
    let mut req = Vec::new();
    MessageWriter::new(&mut req, method::ALLOCATE, Class::Request, [2; 12])
        .u32(attr::REQUESTED_TRANSPORT, 17 << 24);
    s.write_all(&req).await.unwrap();
    let challenge = read_message(s, Duration::from_secs(3)).await.unwrap();
    let nonce = Message::parse(&challenge)
        .unwrap()
        .attrs
        .nonce
        .unwrap()
        .to_vec();
    let mut req = Vec::new();
    let key = long_term_key(&user, REALM, &pass);
    MessageWriter::new(&mut req, method::ALLOCATE, Class::Request, [3; 12])
        .u32(attr::REQUESTED_TRANSPORT, 17 << 24)
        .bytes(attr::USERNAME, user.as_bytes())
        .bytes(attr::REALM, REALM.as_bytes())
        .bytes(attr::NONCE, &nonce)
        .integrity(IntegrityKind::Sha1, &key);
    s.write_all(&req).await.unwrap();
    let reply = read_message(s, Duration::from_secs(3)).await.unwrap();
    let m = Message::parse(&reply).unwrap();
    assert_eq!(
        m.class,
        Class::Success,
        "allocated: {:?}",
        m.attrs.error_code
    );
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_closed_after_auth_timeout() {
    let mut cfg = config(true);
    cfg.auth_timeout = 1;
    let server = start(cfg).await;
    let at = server.handle.tcp_addr;
    let t0 = Instant::now();
    let mut silent = connect(at).await;
    // Unauthenticated requests (Binding) are answered but do not count as authentication.
    let mut chatty = connect(at).await;
    assert!(answers(&mut chatty).await);
    let mut authed = connect(at).await;
    allocate(&mut authed).await;

    let limit = Duration::from_secs(10);
    let silent_closed = closed_after(&mut silent, t0, limit).await;
    let chatty_closed = closed_after(&mut chatty, t0, limit).await;
    for (what, closed) in [("silent", silent_closed), ("chatty", chatty_closed)] {
        let after =
            closed.unwrap_or_else(|| panic!("{what} connection still open after {limit:?}"));
        assert!(
            after >= Duration::from_millis(900),
            "{what} closed early: {after:?}"
        );
    }
    // The authenticated one outlives the timeout and is still served.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        answers(&mut authed).await,
        "authenticated connection closed"
    );
    let n = server.handle.counters();
    assert_eq!((n.auth_timeouts, n.allocations_current), (2, 1), "{n:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_are_limited() {
    let mut cfg = config(true);
    cfg.max_connections_per_ip = 2;
    cfg.auth_timeout = 60;
    let server = start(cfg).await;
    let at = server.handle.tcp_addr;
    let mut first = connect(at).await;
    let mut second = connect(at).await;
    assert!(answers(&mut first).await && answers(&mut second).await);
    // The third from 127.0.0.1 is closed at once, unanswered.
    let mut third = connect(at).await;
    let t = Instant::now();
    let _ = third.write_all(&binding(9)).await;
    assert!(
        closed_after(&mut third, t, Duration::from_secs(5))
            .await
            .is_some(),
        "third connection from one IP was kept"
    );
    assert!(answers(&mut first).await, "the first two stay served");
    assert_eq!(server.handle.counters().connection_refusals, 1);
    // Closing one gives its place back (once the server has seen the close).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect(at).await;
        if answers(&mut again).await {
            break;
        }
        assert!(Instant::now() < deadline, "no place freed after a close");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answers(&mut second).await);
}
