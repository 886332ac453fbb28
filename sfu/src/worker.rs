//! A Worker: the thread around one [`RouterHost`]. It owns whole rooms, so forwarding never
//! crosses threads and takes no lock.
//!
//! Inputs arrive on two bounded channels (datagrams from the demux thread, commands from
//! signaling) plus the deadlines the `Rtc`s ask for. This thread must never block on anything but
//! its channels: no locks, no I/O besides `send_to` on the shared socket. Counters are published
//! to the shared [`WorkerStats`] every 100 ms, not per packet.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use crate::demux::{BufferPool, DemuxUpdate, IceDirectory, WorkerInput};
use crate::router::RouterHost;
use crate::stats::WorkerStats;
use crate::transport::{Advertised, NetWire};
use crate::Command;

const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// Datagrams handled back to back before timers and commands get a look.
const BATCH: usize = 64;
/// Datagrams handled before what they forwarded is sent, at the end of a sender's run (direct
/// mode; see [`Runs`]).
const SEND_AFTER: usize = 8;
/// Datagrams handled before what they forwarded is sent, whatever the run.
const SEND_MAX: usize = 16;

pub(crate) struct WorkerContext {
    pub index: usize,
    pub socket: Arc<UdpSocket>,
    pub advertised: Advertised,
    pub limits: crate::router::Limits,
    pub directory: IceDirectory,
    pub commands: Receiver<Command>,
    pub packets: Receiver<WorkerInput>,
    pub demux: Sender<DemuxUpdate>,
    pub pool: BufferPool,
    pub stats: Arc<WorkerStats>,
    pub stopping: Arc<AtomicBool>,
    /// The only worker reads the socket itself; `None` when a receive thread hands datagrams
    /// over.
    pub direct: Option<Direct>,
    /// See [`crate::SfuConfig::fault_panic_room`].
    pub fault: Option<Fault>,
    /// See [`crate::SfuConfig::batch_window`].
    pub batch_window: Duration,
}

/// How long a worker that woke at `woke` and has done what was ready sleeps before it looks
/// for input again ([`crate::SfuConfig::batch_window`]): what is left of the window, or
/// nothing once the round's work took the whole window (a busy worker never sleeps).
fn rest(window: Duration, woke: Instant, now: Instant) -> Option<Duration> {
    window
        .checked_sub(now.saturating_duration_since(woke))
        .filter(|d| !d.is_zero())
}

/// Fault injection for tests ([`crate::SfuConfig::fault_panic_room`], `room` or
/// `room@seconds`): the worker that gets the first join of `room` panics that many seconds
/// later (5 by default) in its housekeeping, outside the per-participant guard; once per
/// process, so the room's participants can join again on another worker.
pub(crate) struct Fault {
    room: String,
    after: Duration,
    at: std::cell::Cell<Option<Instant>>,
}

static FAULT_FIRED: AtomicBool = AtomicBool::new(false);

impl Fault {
    pub(crate) fn parse(spec: &str) -> Fault {
        let (room, after) = match spec.rsplit_once('@') {
            Some((room, secs)) => match secs.parse::<f64>() {
                Ok(s) if s.is_finite() && s >= 0.0 => (room, Duration::from_secs_f64(s)),
                _ => (spec, Duration::from_secs(5)),
            },
            None => (spec, Duration::from_secs(5)),
        };
        Fault {
            room: room.to_owned(),
            after,
            at: std::cell::Cell::new(None),
        }
    }

    fn on_command(&self, cmd: &Command) {
        if let Command::Join(j) = cmd {
            if j.room == self.room && self.at.get().is_none() {
                self.at.set(Some(Instant::now() + self.after));
            }
        }
    }

    fn check(&self, now: Instant, worker: usize) {
        if self.at.get().is_some_and(|t| now >= t) && !FAULT_FIRED.swap(true, Ordering::SeqCst) {
            panic!(
                "fault injection: media worker {worker} fails (CONSULTA_FAULT_PANIC_WORKER_ROOM)"
            );
        }
    }
}

/// Marks the worker dead when its thread unwinds. Declared after the router, so it runs before
/// the router's rooms are dropped: their sessions, told then, already see a dead worker (no
/// room placed on it again, `/readyz` failing).
struct DeadOnPanic<'a>(&'a WorkerStats);

impl Drop for DeadOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.alive.store(false, Ordering::Relaxed);
            self.0.dead.store(true, Ordering::Relaxed);
        }
    }
}

/// Hands a command to the router (and the fault injection, when on).
fn on_command(host: &mut RouterHost<NetWire>, ctx: &WorkerContext, cmd: Command) {
    if let Some(f) = &ctx.fault {
        f.on_command(&cmd);
    }
    host.on_command(cmd);
}

/// What the only worker needs to read the socket itself.
pub(crate) struct Direct {
    /// Counts into the receive stats, as the receive thread would.
    pub stats: Arc<crate::demux::DemuxStats>,
    /// Wakes the worker while it waits on the socket (commands, ICE-TCP frames).
    pub waker: Arc<crate::poller::Waker>,
    /// What it waits on: the socket and the waker.
    pub poller: crate::poller::Poller,
}

pub(crate) fn run(mut ctx: WorkerContext) {
    if let Some(direct) = ctx.direct.take() {
        return run_direct(ctx, direct);
    }
    ctx.stats.alive.store(true, Ordering::Relaxed);
    let wire = NetWire::new(ctx.socket.clone());
    let mut host = RouterHost::new(ctx.index, wire, ctx.advertised.clone(), ctx.limits);
    let _dead = DeadOnPanic(&ctx.stats);
    // Demux updates that did not fit the channel; retried every tick.
    let mut backlog: Vec<DemuxUpdate> = Vec::new();
    let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
    let mut busy = Duration::ZERO;
    let mut last_woke = Instant::now();
    while !ctx.stopping.load(Ordering::Relaxed) {
        let now = Instant::now();
        let deadline = host
            .next_deadline()
            .map_or(next_housekeeping, |t| t.min(next_housekeeping));
        // Under load input is already queued: take it without registering with the channels
        // (select! locks both wakers every time).
        let mut ready = false;
        // Commands first (see `run_direct`).
        if let Ok(cmd) = ctx.commands.try_recv() {
            on_command(&mut host, &ctx, cmd);
            ready = true;
        }
        for _ in 0..BATCH {
            let Ok(p) = ctx.packets.try_recv() else { break };
            on_input(&mut host, &ctx, p);
            ready = true;
        }
        // When this round's work began (after waiting), for the busy ratio.
        let woke = if ready {
            now
        } else {
            // Let the datagrams and deadlines of the batch window gather (see `rest`).
            if let Some(d) = rest(ctx.batch_window, last_woke, now) {
                std::thread::sleep(d);
            }
            select! {
            recv(ctx.commands) -> cmd => {
                let woke = Instant::now();
                match cmd {
                    Ok(cmd) => on_command(&mut host, &ctx, cmd),
                    Err(_) => break,
                }
                woke
            },
            recv(ctx.packets) -> p => {
                let woke = Instant::now();
                if let Ok(p) = p {
                    on_input(&mut host, &ctx, p);
                    for _ in 0..BATCH {
                        let Ok(p) = ctx.packets.try_recv() else { break };
                        on_input(&mut host, &ctx, p);
                    }
                }
                woke
            },
            default(deadline.saturating_duration_since(now)) => Instant::now(),
            }
        };
        let housekept = end_round(&mut host, &ctx, &mut next_housekeeping, |u| {
            if let Err(e) = ctx.demux.try_send(u) {
                backlog.push(e.into_inner());
            }
        });
        if housekept {
            for u in std::mem::take(&mut backlog) {
                if let Err(e) = ctx.demux.try_send(u) {
                    backlog.push(e.into_inner());
                }
            }
        }
        account_busy(&ctx, &mut busy, woke.elapsed());
        last_woke = woke;
    }
    ctx.stats.alive.store(false, Ordering::Relaxed);
}

/// How every round ends, in both modes: timers, housekeeping, the new ICE registrations (to
/// `route`), the round's batched sends, and the counters every [`HOUSEKEEPING`]. Returns
/// whether housekeeping ran.
fn end_round(
    host: &mut RouterHost<NetWire>,
    ctx: &WorkerContext,
    next_housekeeping: &mut Instant,
    mut route: impl FnMut(DemuxUpdate),
) -> bool {
    let now = Instant::now();
    host.fire_timers(now);
    let housekeep = now >= *next_housekeeping;
    if housekeep {
        if let Some(f) = &ctx.fault {
            f.check(now, ctx.index);
        }
        host.housekeeping(now);
        *next_housekeeping = now + HOUSEKEEPING;
    }
    for u in host.demux_updates.drain(..) {
        update_directory(&ctx.directory, &u, ctx.index);
        route(u);
    }
    // Everything this round produced goes out before the thread may wait again.
    send_queued(host);
    if housekeep {
        ctx.stats
            .rooms
            .store(host.rooms() as u64, Ordering::Relaxed);
        ctx.stats
            .participants
            .store(host.participants() as u64, Ordering::Relaxed);
        ctx.stats.set_tracks(&host.track_counts());
        ctx.stats.set_layer_consumers(&host.layer_consumers());
        ctx.stats.publish(&mut host.counters);
    }
    housekeep
}

/// Sends what the last datagrams forwarded. str0m sends a written RTP packet only after a
/// timeout has stamped it (the subscriber's deadline is then already due), so the due timers
/// run first; then one `sendmmsg`.
fn release_forwarded(host: &mut RouterHost<NetWire>) {
    host.fire_timers(Instant::now());
    send_queued(host);
}

/// Hands the queued datagrams to the kernel (one `sendmmsg`) and observes how long each
/// forwarded copy was in the server.
fn send_queued(host: &mut RouterHost<NetWire>) {
    host.counters.send_errors += host.wire_mut().flush();
    let sent = Instant::now();
    for arrived in host.forwarded_arrivals.drain(..) {
        host.counters.forward_delay.observe_duration(
            &crate::stats::FORWARD_DELAY_BUCKETS,
            sent.saturating_duration_since(arrived),
        );
    }
}

/// Adds a round's working time to the busy counter, published every 10 ms of work.
fn account_busy(ctx: &WorkerContext, busy: &mut Duration, round: Duration) {
    *busy += round;
    if *busy >= Duration::from_millis(10) {
        ctx.stats
            .busy_nanos
            .fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
        *busy = Duration::ZERO;
    }
}

/// The single worker: waits on the socket and its wake, reads datagrams in batches and routes
/// them itself. Same work as [`run`] plus the receive thread's, without handing each datagram
/// from one thread to another.
fn run_direct(
    ctx: WorkerContext,
    Direct {
        stats: demux_stats,
        waker,
        poller,
    }: Direct,
) {
    ctx.stats.alive.store(true, Ordering::Relaxed);
    let wire = NetWire::new(ctx.socket.clone());
    let mut host = RouterHost::new(ctx.index, wire, ctx.advertised.clone(), ctx.limits);
    let _dead = DeadOnPanic(&ctx.stats);
    let mut table = crate::demux::RouteTable::default();
    let mut rx = crate::batch::RecvBatch::new(&ctx.socket);
    let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
    let mut busy = Duration::ZERO;
    let (mut datagrams, mut unroutable) = (0u64, 0u64);
    // What the last wait found ready; before the first one, everything may be.
    let mut ready = crate::poller::Ready::ALL;
    while !ctx.stopping.load(Ordering::Relaxed) {
        let round = Instant::now();
        let mut worked = false;
        // A wake is cleared before the queues are read, so none is lost; the eventfd is read
        // only when the wait saw it set. Commands go first: a participant's `Leave` is queued
        // before the browser is told it left, so it is handled before the datagrams its
        // closing connection sends next.
        if ready.woken {
            waker.reset();
        }
        while let Ok(cmd) = ctx.commands.try_recv() {
            on_command(&mut host, &ctx, cmd);
            worked = true;
        }
        // Then datagrams, when the wait saw some: a few batches, then the other inputs get
        // their turn. `pending`: the last batch filled every slot, so more are likely queued.
        let mut pending = false;
        if ready.socket {
            for _ in 0..4 {
                let n = match rx.recv_now(&ctx.socket) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(error = %e, "udp receive error");
                        0
                    }
                };
                if n == 0 {
                    break;
                }
                worked = true;
                let clocks = crate::batch::Clocks::now();
                let mut runs = Runs::default();
                for i in 0..n {
                    datagrams += 1;
                    let at = rx.arrival(i, &clocks);
                    let (len, source) = rx.get(i);
                    let Some(source) = source.filter(|_| len < crate::demux::MAX_DATAGRAM) else {
                        unroutable += 1;
                        continue;
                    };
                    let route = match table.lookup(&source) {
                        Some(r) => Some(r),
                        None => table.learn(source, &rx.buf(i)[..len]),
                    };
                    // What the sender's run before this datagram forwarded leaves first: a
                    // packet's wait for the others is part of the delay the SFU adds.
                    if runs.release_before(route.map(|r| r.peer)) {
                        release_forwarded(&mut host);
                    }
                    match route {
                        Some(r) => host.on_datagram(
                            r.peer,
                            str0m::net::Protocol::Udp,
                            source,
                            &rx.buf(i)[..len],
                            at,
                        ),
                        None => unroutable += 1,
                    }
                }
                release_forwarded(&mut host);
                pending = rx.was_full();
                if !pending {
                    break;
                }
            }
        }
        for _ in 0..BATCH {
            let Ok(p) = ctx.packets.try_recv() else { break };
            on_input(&mut host, &ctx, p);
            worked = true;
        }
        if end_round(&mut host, &ctx, &mut next_housekeeping, |u| table.apply(u)) {
            demux_stats
                .datagrams
                .fetch_add(std::mem::take(&mut datagrams), Ordering::Relaxed);
            demux_stats
                .unroutable
                .fetch_add(std::mem::take(&mut unroutable), Ordering::Relaxed);
        }
        if worked {
            account_busy(&ctx, &mut busy, round.elapsed());
        }
        // The socket was not drained: read on at once. Otherwise wait; a datagram that came
        // meanwhile ends the wait at once, and a wait that ends on a deadline reads nothing.
        ready = if pending {
            crate::poller::Ready {
                socket: true,
                woken: false,
            }
        } else {
            // Let the datagrams and deadlines of the batch window gather (see `rest`): the wait
            // below then finds them ready and returns at once.
            if let Some(d) = rest(ctx.batch_window, round, Instant::now()) {
                std::thread::sleep(d);
            }
            let deadline = host
                .next_deadline()
                .map_or(next_housekeeping, |t| t.min(next_housekeeping));
            poller.wait(deadline.saturating_duration_since(Instant::now()))
        };
    }
    ctx.stats.alive.store(false, Ordering::Relaxed);
}

/// When what a receive batch forwarded is sent (direct mode): once [`SEND_AFTER`] datagrams
/// were handled, at the end of the current run of datagrams from one peer — a publisher's
/// burst, one frame's packets, often one `UDP_GRO` message — and after [`SEND_MAX`] in any case
/// (a keyframe). A subscriber written to during a run then gets one str0m timeout and output
/// poll for the whole run (str0m sends a written packet only after a timeout), and one
/// `sendmmsg` carries it. Sending every 8 datagrams split most video frames in two; sending at
/// every change of sender made ~40 % more `sendmmsg` calls when batches interleave many
/// senders.
#[derive(Default)]
struct Runs {
    peer: Option<crate::PeerId>,
    /// Datagrams handled since the last release.
    unsent: usize,
}

impl Runs {
    /// Called before a datagram from `peer` (`None`: unroutable) is handled: whether what the
    /// datagrams before it forwarded must be sent first.
    fn release_before(&mut self, peer: Option<crate::PeerId>) -> bool {
        let release = (self.unsent >= SEND_AFTER && peer != self.peer) || self.unsent >= SEND_MAX;
        if release {
            self.unsent = 0;
        }
        self.peer = peer;
        self.unsent += 1;
        release
    }
}

fn on_input(host: &mut RouterHost<NetWire>, ctx: &WorkerContext, input: WorkerInput) {
    match input {
        WorkerInput::Packet(p) => {
            host.on_datagram(p.peer, p.proto, p.source, &p.buf[..p.len], p.at);
            ctx.pool.put(p.buf);
        }
        WorkerInput::TcpOpened { remote, tx } => {
            host.wire_mut().tcp.insert(remote, tx);
        }
        WorkerInput::TcpClosed { remote } => {
            host.wire_mut().tcp.remove(&remote);
        }
    }
}

/// Mirrors a registration into the directory the ICE-TCP acceptor reads.
fn update_directory(directory: &IceDirectory, u: &DemuxUpdate, worker: usize) {
    let mut dir = directory.lock().unwrap_or_else(|e| e.into_inner());
    match u {
        DemuxUpdate::Register { ufrag, peer, .. } => {
            // After an ICE restart only the newest ufrag names the participant.
            dir.retain(|_, v| v.1 != *peer);
            dir.insert(ufrag.clone(), (worker, *peer));
        }
        DemuxUpdate::Forget { peer } => dir.retain(|_, v| v.1 != *peer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Indexes of the datagrams before which the forwarded packets are sent.
    fn releases(senders: &[Option<crate::PeerId>]) -> Vec<usize> {
        let mut runs = Runs::default();
        (0..senders.len())
            .filter(|&i| runs.release_before(senders[i]))
            .collect()
    }

    #[test]
    fn a_worker_rests_for_what_is_left_of_the_batch_window() {
        let woke = Instant::now();
        let ms = Duration::from_millis;
        // Woke 0.3 ms ago: 0.7 ms left of a 1 ms window.
        assert_eq!(
            rest(ms(1), woke, woke + Duration::from_micros(300)),
            Some(Duration::from_micros(700))
        );
        // A round that took the whole window, or longer: no rest.
        assert_eq!(rest(ms(1), woke, woke + ms(1)), None);
        assert_eq!(rest(ms(1), woke, woke + ms(5)), None);
        // Window 0: never.
        assert_eq!(rest(Duration::ZERO, woke, woke), None);
    }

    #[test]
    fn a_run_from_one_sender_is_not_split() {
        // A 10-packet frame from peer 1, 3 packets from peer 2, one from 1 again: the frame goes
        // out whole, the rest with the batch.
        let mut senders = vec![Some(1); 10];
        senders.extend([Some(2); 3]);
        senders.push(Some(1));
        assert_eq!(releases(&senders), [10]);
        // Two short runs: nothing before the end of the batch.
        let mut senders = vec![Some(1); 5];
        senders.extend([Some(2); 5]);
        assert_eq!(releases(&senders), Vec::<usize>::new());
        // Unroutable datagrams end a run too.
        let mut senders = vec![Some(1); SEND_AFTER];
        senders.push(None);
        assert_eq!(releases(&senders), [SEND_AFTER]);
    }

    #[test]
    fn interleaved_senders_are_sent_every_send_after_datagrams() {
        let senders: Vec<_> = (0..20).map(|i| Some(i % 2)).collect();
        assert_eq!(releases(&senders), [SEND_AFTER, 2 * SEND_AFTER]);
    }

    #[test]
    fn a_long_run_is_sent_every_send_max_datagrams() {
        let senders = vec![Some(3); 2 * SEND_MAX + 1];
        assert_eq!(releases(&senders), [SEND_MAX, 2 * SEND_MAX]);
        // A run that began before the count reached SEND_AFTER is cut at SEND_MAX.
        let mut senders = vec![Some(1); SEND_AFTER - 1];
        senders.extend(vec![Some(2); SEND_MAX]);
        assert_eq!(releases(&senders), [SEND_MAX]);
    }
}
