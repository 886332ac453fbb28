//! Unit tests of batched UDP I/O against real loopback sockets: receive batches and GRO runs,
//! send batches with GSO, arrival times, and the kernel's drop counter.

use super::*;

#[test]
fn the_kernel_counts_what_a_full_receive_queue_dropped() {
    use socket2::{Domain, Protocol, Socket, Type};
    let rx = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    // The smallest queue the kernel allows: a few datagrams.
    rx.set_recv_buffer_size(1).unwrap();
    rx.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let rx: UdpSocket = rx.into();
    rx.set_nonblocking(true).unwrap();
    let before = socket_memory(&rx).unwrap();
    assert_eq!(before.drops, 0);
    assert!(before.receive_buffer > 0 && before.receive_buffer < 65_536);
    assert!(before.send_buffer > 0);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = rx.local_addr().unwrap();
    const SENT: u64 = 200;
    for _ in 0..SENT {
        tx.send_to(&[7u8; 1000], to).unwrap();
    }
    // Loopback delivers within send_to, unless the kernel deferred it to ksoftirqd.
    let mut queued = 0u64;
    let mut buf = [0u8; 2048];
    let waited = std::time::Instant::now();
    let after = loop {
        while rx.recv_from(&mut buf).is_ok() {
            queued += 1;
        }
        let m = socket_memory(&rx).unwrap();
        if queued + m.drops >= SENT || waited.elapsed() > std::time::Duration::from_secs(5) {
            break m;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // Loopback loses nothing else: every datagram was either queued or counted as dropped.
    assert!(queued > 0, "some datagrams fit the queue");
    assert!(after.drops > 0, "the rest were dropped");
    assert_eq!(queued + after.drops, SENT);
}

#[test]
fn a_batch_goes_out_and_comes_back_in_order() {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    b.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let to = b.local_addr().unwrap();
    let mut out = SendBatch::default();
    for i in 0..40u8 {
        out.push(to, &[i; 100][..usize::from(i) + 1]);
    }
    // A destination nobody can reach is skipped, the rest still go.
    out.push("255.255.255.255:9".parse().unwrap(), b"nowhere");
    out.push(to, b"last");
    out.flush(&a);
    let mut rx = RecvBatch::new(&b);
    let mut got = Vec::new();
    while got.len() < 41 {
        let n = rx.recv(&b).unwrap();
        for i in 0..n {
            let (len, from) = rx.get(i);
            assert_eq!(from, Some(a.local_addr().unwrap()));
            got.push(rx.buf(i)[..len].to_vec());
        }
    }
    for (i, d) in got.iter().take(40).enumerate() {
        assert_eq!(d.len(), i + 1);
        assert!(d.iter().all(|x| usize::from(*x) == i));
    }
    assert_eq!(got[40], b"last");
    assert_eq!(out.errors, 1);
}

#[test]
fn arrival_is_when_the_kernel_received_the_datagram_not_when_it_was_read() {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    enable_rx_timestamps(&b).unwrap();
    let mut rx = RecvBatch::new(&b);
    // The kernel switches timestamping on a moment after the first socket asks (a deferred
    // static key): until then it stamps datagrams when they are read. A few tries.
    let mut ages = Vec::new();
    for _ in 0..10 {
        // Read before the send: on loopback the datagram arrives inside `send_to`, and the
        // thread may be preempted before it could read the clock after it.
        let sending = std::time::Instant::now();
        a.send_to(b"early", b.local_addr().unwrap()).unwrap();
        // Read well after it arrived.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(rx.recv_now(&b).unwrap(), 1);
        let clocks = Clocks::now();
        let at = rx.arrival(0, &clocks);
        // Never before the datagram was sent (clock conversion within a millisecond).
        assert!(
            at + std::time::Duration::from_millis(1) >= sending,
            "arrived {:?} before the send began",
            sending.duration_since(at)
        );
        let age = clocks.mono.duration_since(at);
        ages.push(age);
        if age >= std::time::Duration::from_millis(40) {
            break;
        }
    }
    assert!(
        ages.last()
            .is_some_and(|a| *a >= std::time::Duration::from_millis(40)),
        "arrivals before the read: {ages:?}"
    );
    // Without the socket option: the time of the read.
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.send_to(b"plain", c.local_addr().unwrap()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(rx.recv_now(&c).unwrap(), 1);
    let clocks = Clocks::now();
    assert_eq!(rx.arrival(0, &clocks), clocks.mono);
}

/// Sends, in one `sendmmsg` with GSO where the kernel has it, a run of six (five of 1000
/// bytes and a shorter last one: a run's last datagram may be shorter) and a single of 1200
/// (a longer one starts the next message). Returns them in order.
fn send_run_and_single(from: &UdpSocket, to: SocketAddr) -> Vec<Vec<u8>> {
    let mut out = SendBatch::with_gso(gso_supported(from));
    let mut sent: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000]).collect();
    sent.push(vec![9; 300]);
    sent.push(vec![7; 1200]);
    for d in &sent {
        out.push(to, d);
    }
    out.flush(from);
    assert_eq!(out.errors, 0);
    sent
}

#[test]
fn runs_received_whole_are_split_into_their_datagrams() {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let gro = enable_gro(&b).is_ok();
    enable_rx_timestamps(&b).unwrap();
    b.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut rx = RecvBatch::new(&b);
    let to = b.local_addr().unwrap();
    // The run of six and the single, then a datagram too big for a buffer.
    let sent = send_run_and_single(&a, to);
    a.send_to(&[1; MAX_DATAGRAM + 10], to).unwrap();
    let pool = BufferPool::new(4);
    let (mut got, mut oversized, mut messages) = (Vec::new(), 0, 0);
    while got.len() + oversized < sent.len() + 1 {
        let n = rx.recv(&b).unwrap();
        let clocks = Clocks::now();
        for i in 0..n {
            let (len, from) = rx.get(i);
            assert_eq!(from, Some(a.local_addr().unwrap()));
            assert!(rx.arrival(i, &clocks) <= clocks.mono);
            if len >= MAX_DATAGRAM {
                oversized += 1;
                continue;
            }
            assert_eq!(rx.buf(i).len(), len);
            let taken = rx.take(i, &pool);
            assert_eq!(&taken[..len], rx.buf(i));
            got.push(rx.buf(i).to_vec());
        }
        assert!(!rx.was_full());
        messages += rx.messages;
    }
    assert_eq!(got, sent);
    assert_eq!(oversized, 1);
    // With GRO the run of six came as one message, and no datagram lost its bytes.
    assert_eq!(messages, if gro { 3 } else { 8 });
}

#[test]
fn a_gso_run_is_read_whole_and_split_into_its_datagrams() {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rx = GroRecv::new(&b);
    let gso = gso_supported(&a);
    let to = b.local_addr().unwrap();
    let sent = send_run_and_single(&a, to);
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while got.len() < sent.len() && std::time::Instant::now() < deadline {
        match rx.read(&b) {
            Ok(()) => {
                while let Some((n, from)) = rx.next_datagram() {
                    assert_eq!(from, a.local_addr().unwrap());
                    assert_eq!(rx.data().len(), n);
                    got.push(rx.data().to_vec());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, sent);
    if gso && rx.gro {
        // The six of the run in one read, the seventh in another.
        assert_eq!(rx.reads, 2);
    } else {
        assert_eq!(rx.reads, sent.len() as u64);
    }
    // Nothing more: the read says so, and the old datagrams are gone.
    assert_eq!(rx.read(&b).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    assert!(rx.next_datagram().is_none());
}

#[test]
fn runs_to_one_destination_go_as_one_gso_send_and_arrive_as_datagrams() {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    for s in [&b, &c] {
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
    }
    if !gso_supported(&a) {
        eprintln!("no UDP GSO in this kernel; skipped");
        return;
    }
    let mut out = SendBatch::with_gso(true);
    // A frame of 5 packets to b (the last shorter), one to c, 3 more to b.
    for i in 0..5u8 {
        let len = if i == 4 { 300 } else { 1100 };
        out.push(b.local_addr().unwrap(), &vec![i; len]);
    }
    out.push(c.local_addr().unwrap(), b"audio");
    for i in 5..8u8 {
        out.push(b.local_addr().unwrap(), &[i; 900]);
    }
    out.flush(&a);
    assert_eq!(out.errors, 0);
    assert_eq!(out.gso_datagrams, 8);
    let mut rx = RecvBatch::new(&b);
    let mut got = Vec::new();
    while got.len() < 8 {
        let n = rx.recv(&b).unwrap();
        for i in 0..n {
            let (len, _) = rx.get(i);
            got.push(rx.buf(i)[..len].to_vec());
        }
    }
    let sizes: Vec<usize> = got.iter().map(|d| d.len()).collect();
    assert_eq!(sizes, [1100, 1100, 1100, 1100, 300, 900, 900, 900]);
    for (i, d) in got.iter().enumerate() {
        assert!(d.iter().all(|x| usize::from(*x) == i), "datagram {i}");
    }
    let mut buf = [0u8; 64];
    let (n, _) = c.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"audio");
}

/// A device that cannot segment refuses a GSO send with EIO (the error is given here; no
/// device of this machine refuses): the run goes out as single datagrams, nothing is
/// counted lost, and GSO stays off for the next flushes.
#[test]
fn a_gso_run_refused_with_eio_goes_as_single_datagrams_and_gso_stays_off() {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    b.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let to = b.local_addr().unwrap();
    let mut out = SendBatch::with_gso(true);
    out.push(to, b"first");
    for i in 0..3u8 {
        out.push(to, &[i; 700]);
    }
    // A lone datagram, then a run of three: one GSO message, built as flush builds it.
    out.group();
    let k = out.segs.iter().position(|s| *s > 0).expect("a GSO message");
    out.refused(&a, k, &io::Error::from_raw_os_error(libc::EIO));
    assert!(out.gso_failed);
    assert_eq!(out.errors, 0);
    let mut buf = [0u8; 2048];
    let mut sizes = Vec::new();
    for _ in 0..out.counts[k] {
        let (n, _) = b.recv_from(&mut buf).unwrap();
        sizes.push(n);
    }
    assert!(sizes.iter().all(|n| *n == 700), "{sizes:?}");
    out.msgs.clear();
    out.data.clear();
    // The next flush makes no GSO message.
    for i in 0..3u8 {
        out.push(to, &[i; 700]);
    }
    let before = out.gso_datagrams;
    out.flush(&a);
    assert_eq!(out.gso_datagrams, before);
    assert_eq!(out.counts, [1, 1, 1]);
    // Any other refusal drops the message and counts its datagrams.
    out.refused(&a, 0, &io::Error::from_raw_os_error(libc::EAGAIN));
    assert_eq!(out.errors, 1);
}
