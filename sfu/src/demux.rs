//! The UDP receive thread: reads the shared media socket and hands each datagram to the worker
//! that owns its participant.
//!
//! Routing is one hash lookup on the source address. A datagram from an unknown address is routed
//! only if it is a STUN request whose USERNAME names a registered ICE ufrag; its address is then
//! learned. Workers register and forget participants through a bounded channel this thread drains
//! before it routes an unknown address, so no lock is shared with the workers. Buffers come from
//! a pool the workers refill: no allocation per datagram once warm. A full worker queue drops the
//! datagram and counts it.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver as ChanRx, Sender as ChanTx, TrySendError};
use str0m::net::Protocol;

use crate::PeerId;

/// Largest datagram accepted; anything longer is dropped (WebRTC stays under ~1200 bytes).
pub(crate) const MAX_DATAGRAM: usize = 2048;

pub(crate) type PacketBuf = Box<[u8; MAX_DATAGRAM]>;

/// One received datagram (or RFC 4571 frame) on its way to a worker.
pub(crate) struct RxPacket {
    pub peer: PeerId,
    pub proto: Protocol,
    pub source: SocketAddr,
    pub len: usize,
    pub at: Instant,
    pub buf: PacketBuf,
}

/// What reaches a worker besides commands.
pub(crate) enum WorkerInput {
    Packet(RxPacket),
    /// An ICE-TCP connection from `remote` was routed to this worker; frames for it go to `tx`.
    TcpOpened {
        remote: SocketAddr,
        tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    },
    TcpClosed {
        remote: SocketAddr,
    },
}

/// A worker's input queue; a worker that reads the socket itself also gets a wake, since it
/// waits on the socket rather than on the queue.
#[derive(Clone)]
pub(crate) struct WorkerTx {
    pub tx: ChanTx<WorkerInput>,
    pub waker: Option<Arc<crate::poller::Waker>>,
}

impl WorkerTx {
    pub fn try_send(&self, input: WorkerInput) -> Result<(), TrySendError<WorkerInput>> {
        self.tx.try_send(input)?;
        if let Some(w) = &self.waker {
            w.wake();
        }
        Ok(())
    }
}

/// ICE ufrag -> (worker, participant), for the ICE-TCP acceptor (read once per connection).
pub(crate) type IceDirectory = Arc<std::sync::Mutex<HashMap<String, (usize, PeerId)>>>;

/// Registration changes sent by workers.
pub(crate) enum DemuxUpdate {
    Register {
        ufrag: String,
        worker: usize,
        peer: PeerId,
    },
    Forget {
        peer: PeerId,
    },
}

#[derive(Default)]
pub(crate) struct DemuxStats {
    pub datagrams: AtomicU64,
    pub unroutable: AtomicU64,
    pub queue_drops: AtomicU64,
}

/// Recycled datagram buffers shared by the receive thread and the workers.
#[derive(Clone)]
pub(crate) struct BufferPool {
    free_tx: ChanTx<PacketBuf>,
    free_rx: ChanRx<PacketBuf>,
}

impl BufferPool {
    pub fn new(capacity: usize) -> Self {
        let (free_tx, free_rx) = crossbeam_channel::bounded(capacity);
        BufferPool { free_tx, free_rx }
    }

    pub fn take(&self) -> PacketBuf {
        self.free_rx
            .try_recv()
            .unwrap_or_else(|_| Box::new([0u8; MAX_DATAGRAM]))
    }

    /// Returns a buffer; beyond capacity it is freed.
    pub fn put(&self, buf: PacketBuf) {
        let _ = self.free_tx.try_send(buf);
    }
}

/// Bytes asked for each of the media socket's kernel queues.
pub(crate) const SOCKET_BUFFER: usize = 8 << 20;

/// Logs the queues the kernel granted the media socket; a receive queue capped below what was
/// asked is worth knowing before a busy hour (consulta_udp_receive_drops_total counts the cost).
fn report_buffers(socket: &UdpSocket) {
    let Ok(m) = crate::batch::socket_memory(socket) else {
        return;
    };
    // The kernel reports twice what it granted (its bookkeeping overhead).
    let (receive, send) = (m.receive_buffer / 2, m.send_buffer / 2);
    if receive < SOCKET_BUFFER as u64 {
        tracing::info!(
            granted = receive,
            asked = SOCKET_BUFFER,
            "the kernel capped the media socket's receive buffer; for busy servers raise \
             net.core.rmem_max (see docs/operations.md)"
        );
    } else {
        tracing::debug!(receive, send, "media socket buffers");
    }
}

pub(crate) fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Large kernel buffers absorb bursts (keyframes from several publishers at once) and the
    // moments the worker is not on a CPU. The kernel caps them at net.core.rmem_max/wmem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    let socket: UdpSocket = socket.into();
    report_buffers(&socket);
    // Kernel receive timestamps: a packet's time in the server counts from its arrival, not
    // from when a thread got to it. Without them the time of the read is used.
    if let Err(e) = crate::batch::enable_rx_timestamps(&socket) {
        tracing::debug!(error = %e, "no kernel receive timestamps");
    }
    // Runs of datagrams from one source arrive whole and are split by the reader.
    if let Err(e) = crate::batch::enable_gro(&socket) {
        tracing::debug!(error = %e, "no UDP GRO");
    }
    // Lets the thread notice shutdown and registrations while the socket is idle.
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(socket)
}

#[derive(Clone, Copy)]
pub(crate) struct Route {
    pub worker: usize,
    pub peer: PeerId,
}

/// The routing tables (pure; the thread loop is in [`Receiver::run`]).
#[derive(Default)]
pub(crate) struct RouteTable {
    by_addr: crate::FastMap<SocketAddr, Route>,
    by_ufrag: HashMap<String, Route>,
    /// What to forget when a participant goes.
    owned: HashMap<PeerId, (String, Vec<SocketAddr>)>,
}

impl RouteTable {
    pub fn apply(&mut self, update: DemuxUpdate) {
        match update {
            DemuxUpdate::Register {
                ufrag,
                worker,
                peer,
            } => {
                // An ICE restart registers the participant's new ufrag: the old one goes, the
                // addresses it was learned from stay until the participant goes.
                let owned = self.owned.entry(peer).or_default();
                if !owned.0.is_empty() && owned.0 != ufrag {
                    self.by_ufrag.remove(&owned.0);
                }
                owned.0 = ufrag.clone();
                self.by_ufrag.insert(ufrag, Route { worker, peer });
            }
            DemuxUpdate::Forget { peer } => {
                if let Some((ufrag, addrs)) = self.owned.remove(&peer) {
                    self.by_ufrag.remove(&ufrag);
                    for a in addrs {
                        if self.by_addr.get(&a).map(|r| r.peer) == Some(peer) {
                            self.by_addr.remove(&a);
                        }
                    }
                }
            }
        }
    }

    pub(crate) fn lookup(&self, source: &SocketAddr) -> Option<Route> {
        self.by_addr.get(source).copied()
    }

    /// Routes a datagram from an unknown address by its STUN USERNAME, learning the address.
    pub(crate) fn learn(&mut self, source: SocketAddr, datagram: &[u8]) -> Option<Route> {
        let ufrag = stun_local_ufrag(datagram)?;
        let route = *self.by_ufrag.get(ufrag)?;
        if let Some((_, addrs)) = self.owned.get_mut(&route.peer) {
            // A participant can reach us from a few addresses (interfaces, NAT rebinding);
            // keep the set small so a hostile client cannot grow it.
            if addrs.len() >= 8 {
                let old = addrs.remove(0);
                self.by_addr.remove(&old);
            }
            addrs.push(source);
        }
        self.by_addr.insert(source, route);
        Some(route)
    }
}

/// The local (server) ufrag of a STUN Binding request: USERNAME is "server:client".
pub(crate) fn stun_local_ufrag(d: &[u8]) -> Option<&str> {
    // STUN: first two bits zero, magic cookie at 4..8, 20-byte header.
    if d.len() < 20 || d[0] & 0xC0 != 0 || d[4..8] != [0x21, 0x12, 0xA4, 0x42] {
        return None;
    }
    let body_len = u16::from_be_bytes([d[2], d[3]]) as usize;
    let end = (20 + body_len).min(d.len());
    let mut at = 20;
    while at + 4 <= end {
        let ty = u16::from_be_bytes([d[at], d[at + 1]]);
        let len = u16::from_be_bytes([d[at + 2], d[at + 3]]) as usize;
        let value = d.get(at + 4..at + 4 + len)?;
        if ty == 0x0006 {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next().filter(|u| !u.is_empty());
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

pub(crate) struct Receiver {
    socket: Arc<UdpSocket>,
    workers: Vec<WorkerTx>,
    updates: ChanRx<DemuxUpdate>,
    pool: BufferPool,
    stats: Arc<DemuxStats>,
    stopping: Arc<AtomicBool>,
    table: RouteTable,
}

impl Receiver {
    pub fn new(
        socket: Arc<UdpSocket>,
        workers: Vec<WorkerTx>,
        updates: ChanRx<DemuxUpdate>,
        pool: BufferPool,
        stats: Arc<DemuxStats>,
        stopping: Arc<AtomicBool>,
    ) -> Self {
        Receiver {
            socket,
            workers,
            updates,
            pool,
            stats,
            stopping,
            table: RouteTable::default(),
        }
    }

    pub fn run(mut self) {
        let mut batch = crate::batch::RecvBatch::new(&self.socket);
        let (mut datagrams, mut unroutable, mut drops) = (0u64, 0u64, 0u64);
        let mut last_publish = Instant::now();
        while !self.stopping.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now.duration_since(last_publish) >= Duration::from_millis(100) {
                self.stats
                    .datagrams
                    .fetch_add(std::mem::take(&mut datagrams), Ordering::Relaxed);
                self.stats
                    .unroutable
                    .fetch_add(std::mem::take(&mut unroutable), Ordering::Relaxed);
                self.stats
                    .queue_drops
                    .fetch_add(std::mem::take(&mut drops), Ordering::Relaxed);
                last_publish = now;
            }
            let n = match batch.recv(&self.socket) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    self.drain_updates();
                    continue;
                }
                Err(e) => {
                    // ICMP errors (port unreachable from a gone peer) surface here; keep going.
                    tracing::debug!(error = %e, "udp receive error");
                    continue;
                }
            };
            let clocks = crate::batch::Clocks::now();
            for i in 0..n {
                datagrams += 1;
                let at = batch.arrival(i, &clocks);
                let (len, source) = batch.get(i);
                let Some(source) = source else {
                    unroutable += 1;
                    continue;
                };
                if len >= MAX_DATAGRAM {
                    unroutable += 1;
                    continue;
                }
                let route = match self.table.lookup(&source) {
                    Some(r) => Some(r),
                    None => {
                        self.drain_updates();
                        self.table.learn(source, &batch.buf(i)[..len])
                    }
                };
                let Some(route) = route else {
                    unroutable += 1;
                    continue;
                };
                let packet = RxPacket {
                    peer: route.peer,
                    proto: Protocol::Udp,
                    source,
                    len,
                    at,
                    buf: batch.take(i, &self.pool),
                };
                match self.workers[route.worker].try_send(WorkerInput::Packet(packet)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(WorkerInput::Packet(p)))
                    | Err(TrySendError::Disconnected(WorkerInput::Packet(p))) => {
                        drops += 1;
                        self.pool.put(p.buf);
                    }
                    Err(_) => drops += 1,
                }
            }
        }
    }

    fn drain_updates(&mut self) {
        while let Ok(u) = self.updates.try_recv() {
            self.table.apply(u);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun_with_username(username: &str) -> Vec<u8> {
        let mut attr = vec![0x00, 0x06];
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        // A PRIORITY attribute before USERNAME, as browsers may order them.
        let mut body = vec![0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4];
        body.extend(attr);
        let mut d = vec![0x00, 0x01];
        d.extend_from_slice(&(body.len() as u16).to_be_bytes());
        d.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        d.extend_from_slice(&[7; 12]);
        d.extend(body);
        d
    }

    #[test]
    fn reads_local_ufrag_from_stun_username() {
        assert_eq!(
            stun_local_ufrag(&stun_with_username("srvA:cliB")),
            Some("srvA")
        );
        assert_eq!(stun_local_ufrag(&stun_with_username(":x")), None);
        assert_eq!(stun_local_ufrag(b"\x80\x60 not stun at all......"), None);
        // Truncated attribute.
        let d = stun_with_username("srvA:cliB");
        assert_eq!(stun_local_ufrag(&d[..d.len() - 8]), None);
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut seed = 0x1234_5678u32;
        for n in 0..5000 {
            let mut d = stun_with_username("abcd:efgh");
            let len = d.len();
            for _ in 0..(n % 7 + 1) {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let i = (seed as usize) % len;
                d[i] = (seed >> 24) as u8;
            }
            let cut = (seed as usize >> 8) % (len + 1);
            let _ = stun_local_ufrag(&d[..cut]);
        }
    }

    #[test]
    fn learns_addresses_and_forgets_peers() {
        let mut t = RouteTable::default();
        t.apply(DemuxUpdate::Register {
            ufrag: "srvA".into(),
            worker: 1,
            peer: 7,
        });
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        assert!(t.lookup(&a).is_none());
        // Not STUN: unknown addresses stay unroutable.
        assert!(t.learn(a, b"\x80\x60rtp-ish payload.....").is_none());
        let r = t.learn(a, &stun_with_username("srvA:cliB")).unwrap();
        assert_eq!((r.worker, r.peer), (1, 7));
        assert_eq!(t.lookup(&a).unwrap().peer, 7);
        // Unknown ufrag.
        let b: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        assert!(t.learn(b, &stun_with_username("nope:cliB")).is_none());
        t.apply(DemuxUpdate::Forget { peer: 7 });
        assert!(t.lookup(&a).is_none());
        assert!(t.learn(a, &stun_with_username("srvA:cliB")).is_none());
    }

    #[test]
    fn an_ice_restart_replaces_the_ufrag_and_learns_the_new_address() {
        let mut t = RouteTable::default();
        let reg = |u: &str| DemuxUpdate::Register {
            ufrag: u.into(),
            worker: 0,
            peer: 3,
        };
        t.apply(reg("old"));
        let wifi: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        t.learn(wifi, &stun_with_username("old:c")).unwrap();
        t.apply(reg("new"));
        // The phone's new address reaches the participant through its new ufrag only.
        let lte: SocketAddr = "10.9.0.7:6000".parse().unwrap();
        assert!(t.learn(lte, &stun_with_username("old:c")).is_none());
        assert_eq!(t.learn(lte, &stun_with_username("new:c")).unwrap().peer, 3);
        assert_eq!(t.lookup(&wifi).unwrap().peer, 3);
        // Leaving forgets every address and the current ufrag.
        t.apply(DemuxUpdate::Forget { peer: 3 });
        assert!(t.lookup(&wifi).is_none() && t.lookup(&lte).is_none());
        assert!(t.by_ufrag.is_empty());
    }

    #[test]
    fn address_set_per_peer_is_bounded() {
        let mut t = RouteTable::default();
        t.apply(DemuxUpdate::Register {
            ufrag: "u".into(),
            worker: 0,
            peer: 1,
        });
        for port in 0..100u16 {
            let a = SocketAddr::from(([10, 0, 0, 1], 1000 + port));
            t.learn(a, &stun_with_username("u:c")).unwrap();
        }
        assert_eq!(t.by_addr.len(), 8);
    }
}
