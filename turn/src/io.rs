//! The tokio shell around [`TurnServer`]: listeners (UDP, TCP, TLS), one UDP relay socket per
//! allocation, and a one-second timer. It owns every socket and task; the core owns every
//! decision.
//!
//! ```text
//!  UDP listener ─┐                                   ┌─► relay socket ──► peer
//!  TCP conn    ──┼─► lock core · handle_client · unlock ┤
//!  TLS conn    ──┘        (no await under the lock)   └─► reply to the client
//!  relay task (per allocation): peer ─► lock · handle_peer · unlock ─► client (UDP or stream queue)
//!  supervisor: every second handle_timeout, closes expired relays; on shutdown aborts all
//! ```
//!
//! The core sits behind one `std::sync::Mutex` held only for the pure, microsecond-long
//! `handle_*` calls, never across an await: simpler than a command channel and one hop
//! shorter per packet. Stream clients get a bounded send queue; when it is full, packets for
//! that client are dropped and counted (`client_queue_drops`), never buffered without bound.
//!
//! Stream connections are bounded three ways: a global cap, `max_connections_per_ip` per source
//! ([`PerIpLimit`]), and `auth_timeout`: a connection (TLS handshake included) that holds no
//! allocation by then — no successful authenticated Allocate — is closed, so unauthenticated
//! sockets cannot pile up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::allocation::{AllocationId, ClientKey, Transport};
pub use crate::config::{IceServer, TurnConfig, TurnError};
use crate::counters::{Counters, CountersSnapshot};
use crate::per_ip::PerIpLimit;
use crate::server::{ClientAction, PeerAction, PendingAllocation, RelayRequest, TurnServer};
use crate::stun::{frame_len, MAX_FRAME_LEN};

/// Frames queued towards one stream client before drops start.
const STREAM_QUEUE: usize = 512;
/// A TLS handshake must finish within this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Kernel buffer sizes (capped by net.core.rmem_max/wmem_max).
const LISTENER_BUFFER: usize = 4 << 20;
const RELAY_BUFFER: usize = 1 << 20;
/// Largest UDP payload.
const DATAGRAM_MAX: usize = 65_536;

struct Relay {
    socket: Arc<UdpSocket>,
    task: JoinHandle<()>,
}

struct Shared {
    core: TurnServer,
    relays: HashMap<AllocationId, Relay>,
    /// Ports held for a later Allocate with RESERVATION-TOKEN (EVEN-PORT with the R bit).
    reserved: HashMap<[u8; 8], (std::net::UdpSocket, Instant)>,
}

impl Shared {
    fn close_relay(&mut self, id: AllocationId) {
        if let Some(r) = self.relays.remove(&id) {
            r.task.abort();
        }
    }
}

struct Ctx {
    shared: Mutex<Shared>,
    counters: Arc<Counters>,
    relay_bind_ip: std::net::IpAddr,
    relay_advertised_ip: std::net::IpAddr,
    /// Open TCP/TLS connections per source, both listeners together.
    per_ip: Arc<PerIpLimit>,
    /// How long a stream connection may stay without an allocation.
    auth_timeout: Duration,
}

impl Ctx {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic under the lock is a bug in the core; keep serving with its state.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running TURN server.
pub struct TurnHandle {
    /// Where the UDP listener is bound.
    pub udp_addr: SocketAddr,
    /// Where the TCP listener is bound.
    pub tcp_addr: SocketAddr,
    /// Where the TLS listener is bound, if TLS is on.
    pub tls_addr: Option<SocketAddr>,
    ctx: Arc<Ctx>,
    supervisor: JoinHandle<()>,
}

impl TurnHandle {
    pub fn counters(&self) -> CountersSnapshot {
        self.ctx.counters.snapshot()
    }

    /// Refuses new allocations with credentials of `user` minted until now
    /// ([`crate::TurnServer::revoke`]).
    pub fn revoke(&self, user: &str) {
        self.ctx.lock().core.revoke(user, unix_now());
    }

    /// Replaces the accepted secrets (rotation) without a restart.
    pub fn set_secrets(&self, secrets: Vec<String>) {
        self.ctx.lock().core.set_secrets(secrets);
    }

    /// Waits until every task has stopped after the shutdown signal.
    pub async fn stopped(self) {
        let _ = self.supervisor.await;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Binds the listeners and spawns the server's tasks. `always_allowed` are addresses peers may
/// have even when internal (the SFU's media sockets). The server stops when `shutdown` turns
/// true or its sender is dropped.
pub async fn start(
    config: TurnConfig,
    always_allowed: Vec<SocketAddr>,
    shutdown: watch::Receiver<bool>,
) -> Result<TurnHandle, TurnError> {
    let core_config = config.server_config(always_allowed)?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) if config.tls_port != 0 => Some(crate::tls::acceptor(c, k)?),
        _ => None,
    };
    let udp_bind = SocketAddr::new(config.listen_ip, config.udp_port);
    let udp = Arc::new(UdpSocket::from_std(udp_socket(udp_bind, LISTENER_BUFFER)?)?);
    let tcp = TcpListener::bind((config.listen_ip, config.tcp_port)).await?;
    let tls_listener = match tls {
        Some(acc) => Some((
            TcpListener::bind((config.listen_ip, config.tls_port)).await?,
            acc,
        )),
        None => None,
    };
    let core = TurnServer::new(core_config, rand::random(), Instant::now(), unix_now());
    let counters = core.counters().clone();
    let ctx = Arc::new(Ctx {
        shared: Mutex::new(Shared {
            core,
            relays: HashMap::new(),
            reserved: HashMap::new(),
        }),
        counters,
        relay_bind_ip: config.relay_bind_ip(),
        relay_advertised_ip: config.relay_advertised_ip(),
        per_ip: PerIpLimit::new(config.max_connections_per_ip),
        auth_timeout: Duration::from_secs(config.auth_timeout),
    });
    let max_conns = (config.max_allocations as usize).saturating_mul(2).max(16);
    let udp_addr = udp.local_addr()?;
    let tcp_addr = tcp.local_addr()?;
    let mut listeners = vec![
        tokio::spawn(udp_listener(ctx.clone(), udp.clone())),
        tokio::spawn(stream_listener(ctx.clone(), tcp, None, max_conns)),
    ];
    let mut tls_addr = None;
    if let Some((l, acc)) = tls_listener {
        tls_addr = Some(l.local_addr()?);
        listeners.push(tokio::spawn(stream_listener(
            ctx.clone(),
            l,
            Some(acc),
            max_conns,
        )));
    }
    tracing::info!(%udp_addr, %tcp_addr, ?tls_addr, relay = %config.relay_advertised_ip(), "turn server listening");
    let supervisor = tokio::spawn(supervise(ctx.clone(), shutdown, listeners));
    Ok(TurnHandle {
        udp_addr,
        tcp_addr,
        tls_addr,
        ctx,
        supervisor,
    })
}

/// Expires allocations once a second; on shutdown stops listeners and relays.
async fn supervise(
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
    listeners: Vec<JoinHandle<()>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut expired = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                expired.clear();
                let mut g = ctx.lock();
                g.core.handle_timeout(Instant::now(), &mut expired);
                for &(_, id) in &expired {
                    g.close_relay(id);
                }
                let now = Instant::now();
                g.reserved.retain(|_, (_, until)| *until > now);
            }
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    for l in &listeners {
        l.abort();
    }
    for l in listeners {
        let _ = l.await;
    }
    let mut g = ctx.lock();
    for (_, r) in g.relays.drain() {
        r.task.abort();
    }
    tracing::info!("turn server stopped");
}

/// Where packets for one client go: its UDP address via the listener socket, or its stream's
/// bounded queue.
#[derive(Clone, Copy)]
enum Sink<'a> {
    Udp(&'a Arc<UdpSocket>, SocketAddr),
    Stream(&'a mpsc::Sender<Vec<u8>>),
}

/// A [`Sink`] a relay task can keep.
enum ClientSink {
    Udp(Arc<UdpSocket>, SocketAddr),
    Stream(mpsc::Sender<Vec<u8>>),
}

impl ClientSink {
    fn as_sink(&self) -> Sink<'_> {
        match self {
            ClientSink::Udp(s, a) => Sink::Udp(s, *a),
            ClientSink::Stream(tx) => Sink::Stream(tx),
        }
    }
}

impl Sink<'_> {
    fn keep(&self) -> ClientSink {
        match *self {
            Sink::Udp(s, a) => ClientSink::Udp(s.clone(), a),
            Sink::Stream(tx) => ClientSink::Stream(tx.clone()),
        }
    }

    async fn send(&self, bytes: &[u8], counters: &Counters) {
        match *self {
            Sink::Udp(s, to) => send_udp(s, bytes, to).await,
            Sink::Stream(tx) => {
                if tx.try_send(bytes.to_vec()).is_err() {
                    Counters::inc(&counters.client_queue_drops);
                }
            }
        }
    }
}

/// Sends without a poll round when the socket has room (nearly always), else waits for room.
async fn send_udp(s: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    match s.try_send_to(bytes, to) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            let _ = s.send_to(bytes, to).await;
        }
        _ => {}
    }
}

/// A UDP socket with large kernel buffers, so bursts queue in the kernel rather than drop.
fn udp_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// What to do once the lock is released.
enum Next<'a> {
    Nothing,
    Reply,
    Peer(Arc<UdpSocket>, SocketAddr, &'a [u8]),
    Bind(PendingAllocation),
}

/// One datagram or frame from a client: decide under the lock, then do the IO.
async fn on_client_bytes(
    ctx: &Arc<Ctx>,
    key: ClientKey,
    data: &[u8],
    out: &mut Vec<u8>,
    sink: Sink<'_>,
) {
    let next = {
        let mut g = ctx.lock();
        match g.core.handle_client(Instant::now(), key, data, out) {
            ClientAction::None => Next::Nothing,
            ClientAction::Reply => Next::Reply,
            ClientAction::ToPeer {
                allocation,
                peer,
                data,
            } => match g.relays.get(&allocation) {
                Some(r) => Next::Peer(r.socket.clone(), peer, data),
                None => Next::Nothing,
            },
            ClientAction::BindRelay(p) => Next::Bind(p),
            ClientAction::ReplyAndClose(id) => {
                g.close_relay(id);
                Next::Reply
            }
        }
    };
    match next {
        Next::Nothing => {}
        Next::Reply => sink.send(out, &ctx.counters).await,
        Next::Peer(socket, peer, data) => send_udp(&socket, data, peer).await,
        Next::Bind(p) => {
            open_relay(ctx, p, out, sink.keep());
            sink.send(out, &ctx.counters).await;
        }
    }
}

/// Opens the relay socket of an accepted Allocate and starts its task; `out` gets the answer.
fn open_relay(ctx: &Arc<Ctx>, p: PendingAllocation, out: &mut Vec<u8>, sink: ClientSink) {
    let key = p.client();
    let mut g = ctx.lock();
    let (socket, token) = match bind_relay(ctx.relay_bind_ip, p.relay_request(), &mut g.reserved) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(error = %e, "turn relay socket");
            g.core
                .complete_allocation(Instant::now(), p, None, None, out);
            return;
        }
    };
    let advertised = socket
        .local_addr()
        .ok()
        .map(|local| SocketAddr::new(ctx.relay_advertised_ip, local.port()));
    let socket = match socket
        .set_nonblocking(true)
        .and_then(|()| UdpSocket::from_std(socket))
    {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::warn!(error = %e, "turn relay socket");
            g.core
                .complete_allocation(Instant::now(), p, None, None, out);
            return;
        }
    };
    let Some(id) = g
        .core
        .complete_allocation(Instant::now(), p, advertised, token, out)
    else {
        if let Some(t) = token {
            g.reserved.remove(&t);
        }
        return;
    };
    let task = tokio::spawn(relay_task(ctx.clone(), socket.clone(), key, id, sink));
    g.relays.insert(id, Relay { socket, task });
}

/// How long a reserved port waits for its Allocate (RFC 8656 §7.2: about 30 s).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// Binds a relay socket as requested: any port, an even port (optionally holding the next one
/// under a fresh token), or the port held under a token.
fn bind_relay(
    ip: std::net::IpAddr,
    req: RelayRequest,
    reserved: &mut HashMap<[u8; 8], (std::net::UdpSocket, Instant)>,
) -> std::io::Result<(std::net::UdpSocket, Option<[u8; 8]>)> {
    let no_port = || std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no suitable port");
    match req {
        RelayRequest::Any => Ok((udp_socket(SocketAddr::new(ip, 0), RELAY_BUFFER)?, None)),
        RelayRequest::Reserved(token) => match reserved.remove(&token) {
            Some((s, until)) if until > Instant::now() => Ok((s, None)),
            _ => Err(no_port()),
        },
        RelayRequest::Even { reserve } => {
            if reserve && reserved.len() >= 1024 {
                return Err(no_port());
            }
            // Ephemeral ports are random: about one try in two is even.
            for _ in 0..64 {
                let s = udp_socket(SocketAddr::new(ip, 0), RELAY_BUFFER)?;
                let port = s.local_addr()?.port();
                if port % 2 != 0 {
                    continue;
                }
                if !reserve {
                    return Ok((s, None));
                }
                if let Ok(next) = udp_socket(SocketAddr::new(ip, port + 1), RELAY_BUFFER) {
                    let token: [u8; 8] = rand::random();
                    reserved.insert(token, (next, Instant::now() + RESERVATION_LIFETIME));
                    return Ok((s, Some(token)));
                }
            }
            Err(no_port())
        }
    }
}

/// Carries a peer's datagrams back to the allocation's client.
async fn relay_task(
    ctx: Arc<Ctx>,
    socket: Arc<UdpSocket>,
    key: ClientKey,
    id: AllocationId,
    sink: ClientSink,
) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    let mut out = Vec::with_capacity(2048);
    let sink = sink.as_sink();
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        // Drain the queue before waiting again: one wake-up per burst, not per datagram.
        loop {
            let (n, peer) = match socket.try_recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => continue,
            };
            let action =
                ctx.lock()
                    .core
                    .handle_peer(Instant::now(), key, id, peer, &buf[..n], &mut out);
            if action == PeerAction::ToClient {
                sink.send(&out, &ctx.counters).await;
            }
        }
    }
}

async fn udp_listener(ctx: Arc<Ctx>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    let mut out = Vec::with_capacity(2048);
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        loop {
            let (n, from) = match socket.try_recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => continue,
            };
            let key = ClientKey {
                addr: from,
                transport: Transport::Udp,
            };
            on_client_bytes(&ctx, key, &buf[..n], &mut out, Sink::Udp(&socket, from)).await;
        }
    }
}

/// Accepts TCP (or TLS when `tls` is set) connections, at most `max_conns` at once and
/// `max_connections_per_ip` per source. Dropping this task (abort) drops the `JoinSet` and so
/// every connection.
async fn stream_listener(
    ctx: Arc<Ctx>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    max_conns: usize,
) {
    let limit = Arc::new(Semaphore::new(max_conns));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "turn accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = ctx.per_ip.try_acquire(addr.ip()) else {
            Counters::inc(&ctx.counters.connection_refusals);
            continue; // dropping the stream closes it
        };
        let _ = stream.set_nodelay(true);
        let now = tokio::time::Instant::now();
        let auth_deadline = now + ctx.auth_timeout;
        let ctx = ctx.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            let _permit = permit;
            let _slot = slot;
            match tls {
                None => serve_stream(ctx, stream, addr, Transport::Tcp, auth_deadline).await,
                Some(acc) => {
                    let until = auth_deadline.min(now + TLS_HANDSHAKE_TIMEOUT);
                    match tokio::time::timeout_at(until, acc.accept(stream)).await {
                        Ok(Ok(s)) => {
                            serve_stream(ctx, s, addr, Transport::Tls, auth_deadline).await;
                        }
                        Ok(Err(_)) => {}
                        Err(_) => Counters::inc(&ctx.counters.auth_timeouts),
                    }
                }
            }
        });
    }
}

/// One TCP/TLS client: frames in, replies and relayed data out through a bounded queue. When
/// the connection ends, so does its allocation. Closed at `auth_deadline` unless it has an
/// allocation by then.
async fn serve_stream<S>(
    ctx: Arc<Ctx>,
    stream: S,
    addr: SocketAddr,
    transport: Transport,
    auth_deadline: tokio::time::Instant,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let key = ClientKey { addr, transport };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
    let writer = async move {
        // Coalesce queued frames into one write (one TLS record, one syscall).
        let mut batch = Vec::with_capacity(64 * 1024);
        while let Some(first) = rx.recv().await {
            batch.clear();
            batch.extend_from_slice(&first);
            while batch.len() < 60 * 1024 {
                match rx.try_recv() {
                    Ok(b) => batch.extend_from_slice(&b),
                    Err(_) => break,
                }
            }
            if wr.write_all(&batch).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
    };
    let sink = Sink::Stream(&tx);
    let reader = async {
        let mut buf = vec![0u8; MAX_FRAME_LEN + 16 * 1024];
        let mut filled = 0;
        let mut out = Vec::with_capacity(2048);
        let mut authenticated = false;
        loop {
            let read = rd.read(&mut buf[filled..]);
            let read = if authenticated {
                read.await
            } else {
                match tokio::time::timeout_at(auth_deadline, read).await {
                    Ok(r) => r,
                    Err(_) => {
                        Counters::inc(&ctx.counters.auth_timeouts);
                        return;
                    }
                }
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => filled += n,
            }
            let mut start = 0;
            loop {
                match frame_len(&buf[start..filled]) {
                    Ok(Some(len)) if filled - start >= len => {
                        on_client_bytes(&ctx, key, &buf[start..start + len], &mut out, sink).await;
                        start += len;
                    }
                    Ok(_) => break,
                    Err(_) => {
                        Counters::inc(&ctx.counters.malformed_packets);
                        return;
                    }
                }
            }
            buf.copy_within(start..filled, 0);
            filled -= start;
            // Only an Allocate that succeeded creates an allocation, so having one means the
            // client proved its credentials; from then on the connection may be quiet.
            if !authenticated {
                authenticated = ctx.lock().core.allocation(&key).is_some();
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
    }
    let mut g = ctx.lock();
    if let Some(id) = g.core.client_closed(key) {
        g.close_relay(id);
    }
}
