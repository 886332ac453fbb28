//! Consulta's media core: a selective forwarding unit on [str0m] (sans-IO WebRTC, RTP mode).
//!
//! Vocabulary (mediasoup's): a **Worker** is a thread that owns rooms; a **Router** is one room's
//! media graph; a **Transport** is one participant's WebRTC connection (a str0m `Rtc`); a
//! **Producer** is a track a participant sends; a **Consumer** is the copy of a Producer sent to
//! another participant.
//!
//! ```text
//!  UDP :7882 ──► demux thread ──(bounded, lossy)──► Worker ─ Transport ─► Producer
//!               5-tuple map,                          │                   │ forwarder (seq rewrite,
//!               ICE ufrag fallback                    │                   ▼ keyframe gate, PT map)
//!                                                     │     Consumer ─► Transport ─► socket.send_to
//!  signaling (tokio) ──Command (bounded)──────────────┘
//!                    ◄─PeerEvent (bounded per peer)── Worker
//! ```
//!
//! With a single worker there is no demux thread: the worker reads the socket itself (batched,
//! `recvmmsg`) and an eventfd wakes it for commands and ICE-TCP frames. Sends are batched per
//! worker round (`sendmmsg`, UDP GSO for a frame's packets to one subscriber).
//!
//! A room lives on exactly one worker, so forwarding never crosses threads and takes no lock.
//! The tokio side talks to workers only through [`SfuHandle`]: bounded channels of typed
//! [`Command`]s in, bounded per-participant channels of [`PeerEvent`]s out. A panic inside one
//! participant's `Rtc` is caught, counted, and closes only that participant.

pub mod bandwidth;
mod batch;
pub mod codecs;
mod demux;
pub mod dtls_identity;
pub mod forwarder;
pub mod layers;
pub mod pacer_probe;
mod poller;
pub mod publish_layers;
pub mod quality;
pub mod red;
pub mod router;
mod stats;
mod tcp;
#[doc(hidden)]
pub use tcp::fuzz_ice_tcp;
pub mod transport;
pub mod vp9;
mod worker;

/// Batched UDP sending (one `sendmmsg`, UDP GSO for runs to one destination), also used by the
/// load generator's synthetic participants.
pub use batch::{gso_supported, socket_memory, GroRecv, SendBatch, SocketMemory};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub use consulta_signaling::protocol::{ServerMessage, TrackKind};
pub use stats::{HistogramSnapshot, SfuStats, WorkerStats, CODEC_LABELS};
pub use stats::{
    BANDWIDTH_ESTIMATE_BUCKETS, CONNECT_BUCKETS, FORWARD_DELAY_BUCKETS, JITTER_BUCKETS,
    LOSS_BUCKETS, PACER_DELAY_BUCKETS, RTT_BUCKETS,
};

/// Identifies one participant session (one WebSocket, one `Rtc`). Never reused.
pub type PeerId = u64;

/// The maps looked up for every datagram: by source address, participant and room. foldhash
/// instead of std's SipHash: a few multiplies per small key where SipHash runs its rounds. It
/// cut the instructions of the receiving half of the forwarding path by 4 % (16,118 to 15,451,
/// medians by `scripts/callgrind-forwarding.sh` when it counted only that half; the whole path
/// is ~27,300). It is seeded per process, so keys a client chooses (its source address) cannot
/// be aimed at one bucket from outside.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Media settings the SFU needs (a slice of the binary's config).
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// UDP port shared by every participant.
    pub udp_port: u16,
    /// ICE-TCP port (passive TCP candidates); 0 turns ICE-TCP off. Needs a tokio runtime.
    pub tcp_port: u16,
    /// Address the UDP socket binds to.
    pub bind_ip: IpAddr,
    /// Addresses advertised as ICE host candidates (the first is the primary).
    pub public_ips: Vec<IpAddr>,
    /// Worker threads; each owns whole rooms.
    pub workers: usize,
    /// Most participants (each publishing) a room admits.
    pub max_publishers: usize,
    /// Nice value of the worker threads (0: unchanged).
    pub worker_nice: i32,
    /// CPUs the workers are pinned to, worker `i` on `worker_cpus[i % len]`; empty: not pinned.
    pub worker_cpus: Vec<usize>,
    /// Sent video packets kept per subscribed track to answer NACKs (0: no retransmission).
    pub nack_history: usize,
    /// Addresses of the built-in TURN relays (for the path metrics); empty without TURN.
    pub relay_ips: Vec<IpAddr>,
    /// How long a participant whose signaling or ICE path is lost is held for its return
    /// before it leaves (reason `lost`).
    pub reconnect_grace: std::time::Duration,
    /// Send-side bandwidth estimation toward subscribers, driving the audio-only fallback and
    /// the publishers' caps (`media.bandwidth_estimation`).
    pub bandwidth_estimation: bool,
    /// A participant's audio and video in one stream toward subscribers, which browsers then
    /// play in sync (`media.lip_sync`; off: each in its own stream).
    pub lip_sync: bool,
    /// How long a media worker lets datagrams and deadlines gather: after the work that was
    /// ready, it sleeps until this long after it woke, so one wake handles the whole window
    /// (fewer wakes, system calls and context switches per packet) at the cost of up to this
    /// much more time in the server (`media.batch_window_us`; zero: wake for every datagram).
    pub batch_window: std::time::Duration,
    /// Fault injection for tests (`CONSULTA_FAULT_PANIC_WORKER_ROOM`, never in the TOML):
    /// `room` or `room@seconds`; see `worker::Fault`.
    pub fault_panic_room: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    #[error("cannot bind the media UDP socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("media configuration is invalid: {0}")]
    Config(String),
    #[error("the media worker is overloaded")]
    Busy,
    #[error("the media worker has stopped")]
    Stopped,
    #[error("cannot start a media thread: {0}")]
    Thread(std::io::Error),
}

/// Joins a participant into a room on the worker that hosts it.
pub struct JoinRequest {
    pub peer: PeerId,
    pub room: String,
    pub identity: String,
    pub role: String,
    /// Where the worker sends this participant's events; bounded. If it is full the worker
    /// closes the participant rather than wait.
    pub events: tokio::sync::mpsc::Sender<PeerEvent>,
}

/// What the signaling side asks of a worker.
pub enum Command {
    Join(JoinRequest),
    /// The participant's one offer (its published tracks).
    Offer {
        peer: PeerId,
        sdp: String,
    },
    /// The answer to the server's latest offer.
    Answer {
        peer: PeerId,
        sdp: String,
    },
    /// A trickled remote ICE candidate (`a=candidate` value).
    Candidate {
        peer: PeerId,
        candidate: String,
    },
    Mute {
        peer: PeerId,
        kind: TrackKind,
        muted: bool,
    },
    /// The control API mutes a participant's track (the server stops forwarding it, and the
    /// participant cannot unmute it) or, with `muted: false`, lifts that mute.
    ForceMute {
        room: String,
        identity: String,
        kind: TrackKind,
        muted: bool,
    },
    /// Starts (`Some`) or stops (`None`) tapping a room's media for the recorder. Starting asks
    /// every video publisher of the room for a keyframe.
    Record {
        room: String,
        tap: Option<RecordTap>,
    },
    /// The recorder lost video and needs a keyframe from this publisher (throttled like any).
    RequestKeyframe {
        peer: PeerId,
        mid: str0m::media::Mid,
    },
    /// The participant's signaling connection is lost: hold it for the grace period and tell
    /// the room it is reconnecting.
    Hold {
        peer: PeerId,
    },
    /// A new signaling connection took the session over: the worker answers with `resumed`
    /// (who is in the room now) and offers again what was outstanding.
    Resume {
        peer: PeerId,
    },
    /// The client asks for an ICE restart (its path broke or its network changed).
    RestartIce {
        peer: PeerId,
    },
    /// The subscriber shows `identity`'s video at `size` (device pixels; `None`: no
    /// preference): no layer much taller is forwarded to it.
    VideoSize {
        peer: PeerId,
        identity: String,
        size: Option<(u32, u32)>,
    },
    /// The publisher's simulcast layers' heights, lowest first.
    VideoLayers {
        peer: PeerId,
        heights: Vec<u32>,
    },
    /// The participant left or its socket closed.
    Leave {
        peer: PeerId,
        reason: consulta_signaling::protocol::LeaveReason,
    },
}

/// The recorder's end of a room tap: a bounded queue. When it is full the worker drops the
/// packet and counts it in `dropped`; forwarding never waits for the recorder.
#[derive(Clone)]
pub struct RecordTap {
    pub tx: crossbeam_channel::Sender<TapEvent>,
    pub dropped: Arc<AtomicU64>,
}

/// What the worker hands the recorder: a track once (before its first packet), then packets.
#[derive(Debug)]
pub enum TapEvent {
    Track {
        /// The worker's key of this track in this recording (publisher and track index).
        key: u64,
        peer: PeerId,
        mid: str0m::media::Mid,
        identity: String,
        role: String,
        kind: TrackKind,
        codec: Option<str0m::format::Codec>,
    },
    Packet {
        key: u64,
        seq: u16,
        timestamp: u32,
        marker: bool,
        /// Shared with the forwarded copies: no copy per packet.
        payload: Arc<[u8]>,
        arrival: std::time::Instant,
    },
}

/// What a worker tells one participant's signaling session.
#[derive(Debug)]
pub enum PeerEvent {
    /// A protocol message to forward to the client as is.
    Message(ServerMessage),
    /// The worker dropped this participant (replaced, failed ICE, internal error); the message is
    /// sent to the client and the socket closed.
    Closed(ServerMessage),
}

struct WorkerLink {
    commands: crossbeam_channel::Sender<Command>,
    stats: Arc<WorkerStats>,
    /// Set when the worker waits on the socket itself (one worker): commands must wake it.
    waker: Option<Arc<poller::Waker>>,
}

struct Inner {
    workers: Vec<WorkerLink>,
    /// room id -> (worker index, live sessions). Locked briefly; never across an await.
    rooms: Mutex<HashMap<String, (usize, usize)>>,
    next_peer: AtomicU64,
    local_addr: SocketAddr,
    /// The media socket, for the kernel's view of its queues (`SO_MEMINFO`) at scrape time.
    socket: Arc<UdpSocket>,
    tcp_port: u16,
    demux_stats: Arc<demux::DemuxStats>,
    tcp_stats: Arc<tcp::TcpStats>,
    stopping: Arc<AtomicBool>,
}

/// A cheap, clonable handle the tokio side uses to reach the workers.
#[derive(Clone)]
pub struct SfuHandle(Arc<Inner>);

/// The running media core: a demux thread and N worker threads.
pub struct Sfu {
    handle: SfuHandle,
    threads: Vec<JoinHandle<()>>,
}

/// Holds a room on its worker while a session lives; dropping it releases the room.
pub struct RoomLease {
    inner: Arc<Inner>,
    room: String,
    worker: usize,
}

impl RoomLease {
    pub fn worker(&self) -> usize {
        self.worker
    }
}

impl Drop for RoomLease {
    fn drop(&mut self) {
        let mut rooms = self.inner.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = rooms.get_mut(&self.room) {
            entry.1 -= 1;
            if entry.1 == 0 {
                rooms.remove(&self.room);
            }
        }
    }
}

impl Sfu {
    /// Binds the media socket and starts the demux and worker threads.
    pub fn start(cfg: SfuConfig) -> Result<Sfu, SfuError> {
        if cfg.workers == 0 || cfg.workers > 256 {
            return Err(SfuError::Config("workers must be between 1 and 256".into()));
        }
        if cfg.public_ips.is_empty() {
            return Err(SfuError::Config("at least one public ip is needed".into()));
        }
        if cfg.max_publishers == 0 {
            return Err(SfuError::Config("max_publishers must be at least 1".into()));
        }
        if !cfg.worker_cpus.is_empty() {
            let allowed = allowed_cpus().map_err(SfuError::Thread)?;
            if let Some(cpu) = cfg.worker_cpus.iter().find(|c| !allowed.contains(c)) {
                return Err(SfuError::Config(format!(
                    "media.worker_cpus: CPU {cpu} is not one this process may run on ({})",
                    cpu_list(&allowed)
                )));
            }
        }
        let addr = SocketAddr::new(cfg.bind_ip, cfg.udp_port);
        let socket = demux::bind_udp(addr).map_err(|source| SfuError::Bind { addr, source })?;
        let local_addr = socket
            .local_addr()
            .map_err(|source| SfuError::Bind { addr, source })?;
        let socket = Arc::new(socket);
        let udp_socket = socket.clone();
        // ICE-TCP: bound now so a taken port fails the start, served on the tokio runtime.
        let tcp_listener = if cfg.tcp_port != 0 {
            let addr = SocketAddr::new(cfg.bind_ip, cfg.tcp_port);
            let l = std::net::TcpListener::bind(addr)
                .map_err(|source| SfuError::Bind { addr, source })?;
            l.set_nonblocking(true)
                .map_err(|source| SfuError::Bind { addr, source })?;
            Some(l)
        } else {
            None
        };
        let tcp_port = match &tcp_listener {
            Some(l) => l.local_addr().map(|a| a.port()).unwrap_or(cfg.tcp_port),
            None => 0,
        };
        let directory: demux::IceDirectory = Default::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let (demux_tx, demux_rx) = crossbeam_channel::bounded(4096);
        let pool = demux::BufferPool::new(4096);

        let on = |port: u16| -> Vec<SocketAddr> {
            cfg.public_ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect()
        };
        let advertised = transport::Advertised {
            udp: on(local_addr.port()),
            tcp: if tcp_port == 0 {
                Vec::new()
            } else {
                on(tcp_port)
            },
            relay_ips: cfg.relay_ips.clone(),
            // One DTLS certificate, made here (not per join on a worker) and shared by every
            // worker's transports.
            dtls: dtls_identity::DtlsIdentity::generate().map_err(SfuError::Config)?,
        };
        let mut links = Vec::new();
        let mut packet_senders = Vec::new();
        let mut threads = Vec::new();
        let demux_stats = Arc::new(demux::DemuxStats::default());
        // One worker reads the socket itself: no receive thread, no hand-over per datagram.
        let one_worker = cfg.workers == 1;
        for index in 0..cfg.workers {
            let (cmd_tx, cmd_rx) = crossbeam_channel::bounded(1024);
            let (pkt_tx, pkt_rx) = crossbeam_channel::bounded(2048);
            let stats = Arc::new(WorkerStats::default());
            let direct = if one_worker {
                let waker = poller::Waker::new().map_err(SfuError::Thread)?;
                let poller = poller::Poller::new(&socket, &waker).map_err(SfuError::Thread)?;
                Some(worker::Direct {
                    stats: demux_stats.clone(),
                    waker: Arc::new(waker),
                    poller,
                })
            } else {
                None
            };
            let waker = direct.as_ref().map(|d| d.waker.clone());
            let ctx = worker::WorkerContext {
                index,
                socket: socket.clone(),
                advertised: advertised.clone(),
                limits: router::Limits {
                    max_publishers: cfg.max_publishers,
                    nack_history: cfg.nack_history,
                    reconnect_grace: cfg.reconnect_grace,
                    bwe: cfg.bandwidth_estimation,
                    lip_sync: cfg.lip_sync,
                },
                directory: directory.clone(),
                commands: cmd_rx,
                packets: pkt_rx,
                demux: demux_tx.clone(),
                pool: pool.clone(),
                stats: stats.clone(),
                stopping: stopping.clone(),
                direct,
                fault: cfg.fault_panic_room.as_deref().map(worker::Fault::parse),
                batch_window: cfg.batch_window,
            };
            let nice = cfg.worker_nice;
            let cpu = (!cfg.worker_cpus.is_empty())
                .then(|| cfg.worker_cpus[index % cfg.worker_cpus.len()]);
            let own_stats = stats.clone();
            let t = std::thread::Builder::new()
                .name(format!("consulta-worker-{index}"))
                .spawn(move || {
                    set_thread_nice(nice);
                    if let Some(cpu) = cpu {
                        if let Err(error) = pin_thread(cpu) {
                            tracing::warn!(cpu, %error, "cannot pin a media worker to its CPU; it runs unpinned");
                        }
                    }
                    // A panic outside the per-participant guard (see `router`) ends the thread:
                    // unwinding drops its rooms, which ends their sessions (`media_lost`: they
                    // join again), and the worker is marked dead: no room is placed on it again
                    // and /readyz fails.
                    let run = std::panic::AssertUnwindSafe(|| worker::run(ctx));
                    if std::panic::catch_unwind(run).is_err() {
                        own_stats.alive.store(false, Ordering::Relaxed);
                        own_stats.dead.store(true, Ordering::Relaxed);
                        tracing::error!(
                            worker = index,
                            "a media worker panicked; its calls join again on the other workers"
                        );
                    }
                })
                .map_err(SfuError::Thread)?;
            threads.push(t);
            links.push(WorkerLink {
                commands: cmd_tx,
                stats,
                waker: waker.clone(),
            });
            packet_senders.push(demux::WorkerTx { tx: pkt_tx, waker });
        }
        let tcp_stats = Arc::new(tcp::TcpStats::default());
        if let Some(l) = tcp_listener {
            let handle = tokio::runtime::Handle::try_current()
                .map_err(|_| SfuError::Config("ICE-TCP needs a tokio runtime".into()))?;
            let ctx = Arc::new(tcp::TcpContext {
                workers: packet_senders.clone(),
                directory,
                pool: pool.clone(),
                stats: tcp_stats.clone(),
            });
            handle.spawn(async move {
                match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => tcp::accept_loop(l, ctx).await,
                    Err(e) => tracing::error!(error = %e, "ICE-TCP listener failed"),
                }
            });
        }
        if !one_worker {
            let rx = demux::Receiver::new(
                socket,
                packet_senders,
                demux_rx,
                pool,
                demux_stats.clone(),
                stopping.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("consulta-udp-rx".into())
                    .spawn(move || rx.run())
                    .map_err(SfuError::Thread)?,
            );
        }
        let inner = Inner {
            workers: links,
            rooms: Mutex::new(HashMap::new()),
            next_peer: AtomicU64::new(first_peer_id()),
            local_addr,
            socket: udp_socket,
            tcp_port,
            demux_stats,
            tcp_stats,
            stopping,
        };
        Ok(Sfu {
            handle: SfuHandle(Arc::new(inner)),
            threads,
        })
    }

    pub fn handle(&self) -> SfuHandle {
        self.handle.clone()
    }

    /// Stops every thread (rooms are dropped without goodbye; signaling drains first).
    pub fn shutdown(self) {
        self.handle.0.stopping.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

impl SfuHandle {
    /// A fresh participant session id.
    /// A fresh peer id, also the session id the browser and the database see: unique across
    /// restarts and across the nodes of a cluster (see [`first_peer_id`]).
    pub fn next_peer_id(&self) -> PeerId {
        self.0.next_peer.fetch_add(1, Ordering::Relaxed)
    }

    /// The media socket's bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.0.local_addr
    }

    /// Pins `room` to a worker (the least loaded live one if the room is new, or if its worker
    /// died) for the lease's life.
    pub fn lease_room(&self, room: &str) -> RoomLease {
        let mut rooms = self.0.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let dead = |w: usize| self.0.workers[w].stats.dead.load(Ordering::Relaxed);
        let least_loaded = |rooms: &HashMap<String, (usize, usize)>| {
            let mut load = vec![0usize; self.0.workers.len()];
            for (w, n) in rooms.values() {
                load[*w] += n;
            }
            (0..load.len())
                .filter(|w| !dead(*w))
                .min_by_key(|i| load[*i])
                .unwrap_or(0)
        };
        let worker = match rooms.get(room).copied() {
            Some((w, n)) if !dead(w) => {
                rooms.insert(room.to_owned(), (w, n + 1));
                w
            }
            Some((_, n)) => {
                // Its worker died: the room starts again on a live one (the old sessions'
                // leases still count until they are dropped).
                let w = least_loaded(&rooms);
                rooms.insert(room.to_owned(), (w, n + 1));
                w
            }
            None => {
                let w = least_loaded(&rooms);
                rooms.insert(room.to_owned(), (w, 1));
                w
            }
        };
        RoomLease {
            inner: self.0.clone(),
            room: room.to_owned(),
            worker,
        }
    }

    /// The worker hosting `room` now, if any session holds it.
    pub fn room_worker(&self, room: &str) -> Option<usize> {
        let rooms = self.0.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.get(room).map(|(w, _)| *w)
    }

    /// Sends a command to a worker without waiting; a full queue is `Busy`.
    pub fn send(&self, worker: usize, cmd: Command) -> Result<(), SfuError> {
        let link = self.0.workers.get(worker).ok_or(SfuError::Stopped)?;
        link.commands.try_send(cmd).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => SfuError::Busy,
            crossbeam_channel::TrySendError::Disconnected(_) => SfuError::Stopped,
        })?;
        if let Some(w) = &link.waker {
            w.wake();
        }
        Ok(())
    }

    /// The ICE-TCP port, 0 when off.
    pub fn tcp_port(&self) -> u16 {
        self.0.tcp_port
    }

    /// Workers that died of a panic (their rooms moved to the others).
    pub fn workers_dead(&self) -> usize {
        self.0
            .workers
            .iter()
            .filter(|w| w.stats.dead.load(Ordering::Relaxed))
            .count()
    }

    /// Whether every worker thread is still running.
    pub fn workers_alive(&self) -> bool {
        self.0
            .workers
            .iter()
            .all(|w| w.stats.alive.load(Ordering::Relaxed))
    }

    /// A snapshot of the counters (published by each worker every 100 ms).
    pub fn stats(&self) -> SfuStats {
        let mut s = SfuStats::collect(
            self.0.workers.iter().map(|w| &*w.stats),
            &self.0.demux_stats,
        );
        self.0.tcp_stats.export(&mut s);
        // One getsockopt per scrape; an error (not Linux) leaves zeros.
        s.udp_socket = batch::socket_memory(&*self.0.socket).unwrap_or_default();
        s
    }
}

/// Gives the calling thread a nice value (Linux: per thread). Refused (no CAP_SYS_NICE for a
/// negative value): a warning, and the thread runs at the default priority.
fn set_thread_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    if let Err(error) = thread_nice(nice) {
        tracing::warn!(
            nice,
            %error,
            "cannot set the media workers' priority (media.worker_nice needs CAP_SYS_NICE); running at the default"
        );
    }
}

/// Parses a Linux CPU list as `taskset -c` and systemd's `CPUAffinity=` write it: numbers and
/// ranges separated by commas (`"1"`, `"0,2"`, `"2-3,6"`). Empty or blank: no CPUs.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |n: &str| {
            n.trim()
                .parse::<usize>()
                .ok()
                .filter(|c| *c < MAX_CPUS)
                .ok_or_else(|| {
                    format!(
                        "{part:?} is not a CPU number (0 to {}) or a range a-b",
                        MAX_CPUS - 1
                    )
                })
        };
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(part)?, num(part)?),
        };
        if a > b {
            return Err(format!("{part:?}: a range goes from low to high"));
        }
        for c in a..=b {
            if cpus.contains(&c) {
                return Err(format!("CPU {c} is listed twice"));
            }
            cpus.push(c);
        }
    }
    Ok(cpus)
}

/// The CPUs `sched_setaffinity` can name (glibc's `CPU_SETSIZE`).
const MAX_CPUS: usize = 1024;

/// Writes CPUs back as a list (`0-3,6`).
fn cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// The CPUs this process may run on (its affinity, e.g. a container's cpuset), ascending.
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel fills at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((0..MAX_CPUS)
            .filter(|c| libc::CPU_ISSET(*c, &set))
            .collect())
    }
}

/// Pins the calling thread to one CPU: the scheduler no longer moves it (and its warm caches)
/// to the CPU of whichever thread woke it.
pub fn pin_thread(cpu: usize) -> std::io::Result<()> {
    if cpu >= MAX_CPUS {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: as in `allowed_cpus`; `cpu` < MAX_CPUS.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets the calling thread's nice value (Linux: per thread). A negative value needs
/// CAP_SYS_NICE; a positive one (yielding to other threads) never does.
pub fn thread_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: plain syscalls on the calling thread's own id.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Where this process's peer ids start: the microseconds since the Unix epoch at start. A
/// restart begins past every id the previous run gave out (it used far fewer than one a
/// microsecond), and nodes of a cluster started apart never meet; ids stay below 2^53, exact
/// as JavaScript numbers, until the year 2255.
fn first_peer_id() -> PeerId {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
        .max(1)
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_taskset() {
        assert_eq!(parse_cpu_list(""), Ok(vec![]));
        assert_eq!(parse_cpu_list(" 1 "), Ok(vec![1]));
        assert_eq!(parse_cpu_list("0,2"), Ok(vec![0, 2]));
        assert_eq!(parse_cpu_list("2-4,7"), Ok(vec![2, 3, 4, 7]));
        for bad in ["x", "1-", "3-1", "1,1", "0-2,2", "-1", "1024", "1.5"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} is refused");
        }
        assert_eq!(cpu_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(cpu_list(&[]), "");
    }

    #[test]
    fn a_pinned_thread_runs_on_its_cpu_only() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        let cpu = *allowed.last().unwrap();
        let seen = std::thread::spawn(move || {
            pin_thread(cpu).unwrap();
            allowed_cpus().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen, vec![cpu]);
        // This thread is untouched.
        assert_eq!(allowed_cpus().unwrap(), allowed);
        assert!(pin_thread(MAX_CPUS).is_err());
    }
}
