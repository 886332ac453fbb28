//! ICE-TCP (RFC 6544, passive candidates) with RFC 4571 framing: for browsers whose UDP is
//! blocked, media reaches the SFU over TCP straight, without TURN.
//!
//! The acceptor runs on the tokio runtime. A connection is routed once, by the ICE ufrag in the
//! USERNAME of its first STUN request (looked up in the shared [`IceDirectory`]); after that its
//! frames go to the owning worker's bounded input channel like UDP datagrams, and the worker
//! writes its transmits back through a bounded per-connection queue (full: dropped and counted,
//! as UDP would lose them). No lock is taken per frame.
//!
//! A connection is closed when it sends nothing for [`IDLE_TIMEOUT`]: a live ICE agent sends a
//! consent check (RFC 7675) every few seconds, so only abandoned or hostile sockets go quiet.
//! [`TcpStats`] counts refused and idle-closed connections for the metrics endpoint.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::net::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::demux::{
    stun_local_ufrag, BufferPool, IceDirectory, PacketBuf, RxPacket, WorkerInput, MAX_DATAGRAM,
};

/// Frames queued towards one TCP client before new ones are dropped.
const OUT_QUEUE: usize = 512;
/// A connection must send its first STUN request this soon.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent ICE-TCP connections accepted.
const MAX_CONNECTIONS: usize = 4096;
/// A routed connection that sends no frame for this long is closed. Browsers send an ICE
/// consent check every ~5 s (RFC 7675, plus RTCP while media flows), so 30 s of silence means
/// the peer is gone or is only holding the socket.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
pub(crate) struct TcpStats {
    pub sessions: AtomicU64,
    pub open: AtomicU64,
    pub drops: AtomicU64,
    /// Connections closed at accept: `MAX_CONNECTIONS` were open.
    pub refused: AtomicU64,
    /// Routed connections closed after [`IDLE_TIMEOUT`] without a frame.
    pub idle_closed: AtomicU64,
}

impl TcpStats {
    /// Copies the counters into an SFU snapshot.
    pub(crate) fn export(&self, s: &mut crate::SfuStats) {
        s.ice_tcp_sessions = self.sessions.load(Ordering::Relaxed);
        s.ice_tcp_open = self.open.load(Ordering::Relaxed);
        s.ice_tcp_drops = self.drops.load(Ordering::Relaxed);
        s.ice_tcp_refused = self.refused.load(Ordering::Relaxed);
        s.ice_tcp_idle_closed = self.idle_closed.load(Ordering::Relaxed);
    }
}

pub(crate) struct TcpContext {
    pub workers: Vec<crate::demux::WorkerTx>,
    pub directory: IceDirectory,
    pub pool: BufferPool,
    pub stats: Arc<TcpStats>,
}

pub(crate) async fn accept_loop(listener: TcpListener, ctx: Arc<TcpContext>) {
    accept_with_idle_timeout(listener, ctx, IDLE_TIMEOUT).await
}

/// [`accept_loop`] with the idle timeout as a parameter (tests use a short one).
async fn accept_with_idle_timeout(listener: TcpListener, ctx: Arc<TcpContext>, idle: Duration) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            serve(stream, remote, &ctx, idle).await;
        });
    }
}

/// Reads one RFC 4571 frame into `buf`; `Ok(None)` at a clean end of stream.
async fn read_frame(
    r: &mut (impl AsyncReadExt + Unpin),
    buf: &mut [u8],
) -> std::io::Result<Option<usize>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::from(u16::from_be_bytes(len));
    if len > buf.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    r.read_exact(&mut buf[..len]).await?;
    Ok(Some(len))
}

async fn serve(stream: TcpStream, remote: SocketAddr, ctx: &TcpContext, idle: Duration) {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = ctx.pool.take();
    // Route by the first STUN request's ufrag.
    let first = tokio::time::timeout(FIRST_FRAME_TIMEOUT, read_frame(&mut rd, &mut buf[..])).await;
    let Ok(Ok(Some(len))) = first else { return };
    let route = stun_local_ufrag(&buf[..len]).and_then(|u| {
        let dir = ctx.directory.lock().unwrap_or_else(|e| e.into_inner());
        dir.get(u).copied()
    });
    let Some((worker, peer)) = route else { return };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    let input = &ctx.workers[worker];
    if input
        .try_send(WorkerInput::TcpOpened { remote, tx })
        .is_err()
    {
        return;
    }
    ctx.stats.sessions.fetch_add(1, Ordering::Relaxed);
    ctx.stats.open.fetch_add(1, Ordering::Relaxed);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            let Ok(len) = u16::try_from(frame.len()) else {
                continue;
            };
            if wr.write_all(&len.to_be_bytes()).await.is_err()
                || wr.write_all(&frame).await.is_err()
            {
                break;
            }
        }
    });
    let mut len = len;
    loop {
        let next = ctx.pool.take();
        let packet = RxPacket {
            peer,
            proto: Protocol::Tcp,
            source: remote,
            len,
            at: Instant::now(),
            buf: std::mem::replace(&mut buf, next),
        };
        if let Err(e) = input.try_send(WorkerInput::Packet(packet)) {
            ctx.stats.drops.fetch_add(1, Ordering::Relaxed);
            if let WorkerInput::Packet(p) = e.into_inner() {
                ctx.pool.put(p.buf);
            }
        }
        match tokio::time::timeout(idle, read_frame(&mut rd, &mut buf[..MAX_DATAGRAM])).await {
            Ok(Ok(Some(n))) => len = n,
            Ok(_) => break,
            Err(_) => {
                ctx.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    ctx.pool.put(buf);
    writer.abort();
    // Best effort: the worker also forgets connections of removed participants.
    let _ = input.try_send(WorkerInput::TcpClosed { remote });
    ctx.stats.open.fetch_sub(1, Ordering::Relaxed);
}

/// Fuzzing entry (target `ice_tcp` of `fuzz/`): reads `stream` as an ICE-TCP connection's
/// bytes, arriving `chunk` bytes at a time, with the connection's own framing and routing code:
/// RFC 4571 frames into a packet buffer, the first one routed by its STUN USERNAME. Panics if a
/// frame overruns its buffer or the frames read do not re-frame to the bytes consumed.
#[doc(hidden)]
pub fn fuzz_ice_tcp(stream: &[u8], chunk: usize) {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    /// A reader that hands out at most `chunk` bytes per read, as TCP segments would.
    struct Chunked<'a>(&'a [u8], usize);
    impl tokio::io::AsyncRead for Chunked<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self.1.max(1).min(self.0.len()).min(buf.remaining());
            let (head, rest) = self.0.split_at(n);
            buf.put_slice(head);
            self.0 = rest;
            Poll::Ready(Ok(()))
        }
    }

    let mut reader = Chunked(stream, chunk);
    let mut cx = Context::from_waker(Waker::noop());
    let mut buf: PacketBuf = Box::new([0u8; MAX_DATAGRAM]);
    let mut reframed = Vec::with_capacity(stream.len());
    let mut first = true;
    loop {
        // The reader never waits: one poll finishes the frame.
        let Poll::Ready(read) = std::pin::pin!(read_frame(&mut reader, &mut buf[..])).poll(&mut cx)
        else {
            unreachable!("an in-memory read is never pending")
        };
        let Ok(Some(len)) = read else { break };
        assert!(
            len <= MAX_DATAGRAM,
            "frame of {len} bytes overran the buffer"
        );
        if first {
            let _ = stun_local_ufrag(&buf[..len]);
            first = false;
        }
        reframed.extend_from_slice(&(len as u16).to_be_bytes());
        reframed.extend_from_slice(&buf[..len]);
    }
    assert_eq!(
        &stream[..reframed.len()],
        &reframed[..],
        "frames differ from the stream"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demux::WorkerTx;

    /// A framed STUN Binding request whose USERNAME is "`ufrag`:client".
    fn framed_binding(ufrag: &str) -> Vec<u8> {
        let username = format!("{ufrag}:client");
        let padded = username.len().div_ceil(4) * 4;
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&[0x00, 0x06]);
        m.extend_from_slice(&(username.len() as u16).to_be_bytes());
        m.extend_from_slice(username.as_bytes());
        m.resize(20 + 4 + padded, 0);
        let mut framed = (m.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&m);
        framed
    }

    #[test]
    fn fuzz_entry_reframes_whole_and_cut_streams() {
        let mut stream = framed_binding("srv");
        stream.extend_from_slice(&framed_binding("other"));
        // Any segment size; cut anywhere, including inside a length prefix.
        for chunk in [1, 2, 7, 1500] {
            for cut in 0..=stream.len() {
                fuzz_ice_tcp(&stream[..cut], chunk);
            }
        }
        // A frame longer than a packet buffer ends the connection.
        fuzz_ice_tcp(&[0xFF, 0xFF, 0, 1], 3);
    }

    #[tokio::test]
    async fn idle_connection_is_closed_and_counted() {
        let (tx, rx) = crossbeam_channel::bounded(64);
        let directory = IceDirectory::default();
        directory.lock().unwrap().insert("srv".into(), (0, 1));
        let ctx = Arc::new(TcpContext {
            workers: vec![WorkerTx { tx, waker: None }],
            directory,
            pool: BufferPool::new(8),
            stats: Arc::new(TcpStats::default()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let idle = Duration::from_millis(300);
        let acceptor = tokio::spawn(accept_with_idle_timeout(listener, ctx.clone(), idle));

        let mut live = TcpStream::connect(at).await.unwrap();
        let mut quiet = TcpStream::connect(at).await.unwrap();
        live.write_all(&framed_binding("srv")).await.unwrap();
        quiet.write_all(&framed_binding("srv")).await.unwrap();
        // The live one keeps talking more often than the timeout...
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(900) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            live.write_all(&framed_binding("srv")).await.unwrap();
        }
        // ...the quiet one is closed by the server well within a generous bound.
        let mut b = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(10), quiet.read(&mut b)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        assert!(t0.elapsed() >= Duration::from_millis(300));
        // The live one is still open: nothing to read, no EOF.
        let open = tokio::time::timeout(Duration::from_millis(100), live.read(&mut b)).await;
        assert!(open.is_err(), "live connection closed: {open:?}");
        let mut s = crate::SfuStats::default();
        ctx.stats.export(&mut s);
        assert_eq!((s.ice_tcp_sessions, s.ice_tcp_idle_closed), (2, 1), "{s:?}");
        assert_eq!(s.ice_tcp_open, 1);
        // Both were routed to worker 0, and the live one's frames reached it.
        let frames = rx
            .try_iter()
            .filter(|i| matches!(i, WorkerInput::Packet(_)))
            .count();
        assert!(frames >= 5, "{frames} frames reached the worker");
        acceptor.abort();
    }
}
