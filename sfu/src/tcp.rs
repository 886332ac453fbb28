//! ICE-TCP (RFC 6544, passive candidates) with RFC 4571 framing: for browsers whose UDP is
//! blocked, media reaches the SFU over TCP straight, without TURN.
//!
//! The acceptor runs on the tokio runtime. A connection is routed once, by the ICE ufrag in the
//! USERNAME of its first STUN request (looked up in the shared [`IceDirectory`]); after that its
//! frames go to the owning worker's bounded input channel like UDP datagrams, and the worker
//! writes its transmits back through a bounded per-connection queue (full: dropped and counted,
//! as UDP would lose them). No lock is taken per frame.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::net::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::demux::{
    stun_local_ufrag, BufferPool, IceDirectory, RxPacket, WorkerInput, MAX_DATAGRAM,
};

/// Frames queued towards one TCP client before new ones are dropped.
const OUT_QUEUE: usize = 512;
/// A connection must send its first STUN request this soon.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent ICE-TCP connections accepted.
const MAX_CONNECTIONS: usize = 4096;

#[derive(Default)]
pub(crate) struct TcpStats {
    pub sessions: AtomicU64,
    pub open: AtomicU64,
    pub drops: AtomicU64,
    pub refused: AtomicU64,
}

pub(crate) struct TcpContext {
    pub workers: Vec<crate::demux::WorkerTx>,
    pub directory: IceDirectory,
    pub pool: BufferPool,
    pub stats: Arc<TcpStats>,
}

pub(crate) async fn accept_loop(listener: TcpListener, ctx: Arc<TcpContext>) {
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
            serve(stream, remote, &ctx).await;
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

async fn serve(stream: TcpStream, remote: SocketAddr, ctx: &TcpContext) {
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
        match read_frame(&mut rd, &mut buf[..MAX_DATAGRAM]).await {
            Ok(Some(n)) => len = n,
            _ => break,
        }
    }
    ctx.pool.put(buf);
    writer.abort();
    // Best effort: the worker also forgets connections of removed participants.
    let _ = input.try_send(WorkerInput::TcpClosed { remote });
    ctx.stats.open.fetch_sub(1, Ordering::Relaxed);
}
