//! `consulta-bench`: a load generator of synthetic consultations against a running Consulta.
//!
//! Each participant is a real WebRTC peer (str0m, one UDP socket) that joins through the real
//! signaling (`/ws`, join tokens), publishes synthetic HD video (a VP8-shaped frame pattern with
//! periodic keyframes at the configured bitrate) and Opus-sized audio every 20 ms, and subscribes
//! to everyone else. Every frame carries its send time and a counter, so receivers measure
//! one-way latency and lost frames. The server's CPU time and RSS come from /proc, its forwarded
//! packet count from /metrics, so the report's µs per forwarded packet can be checked against
//! both. The report is JSON on stdout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use consulta_signaling::{JoinToken, Role};
use futures_util::SinkExt;
use serde_json::{json, Value};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime};
use str0m::{Candidate, Rtc};
use tokio_tungstenite::tungstenite::Message;

mod churn;
mod janus;
mod media;
mod probe;
mod report;

use probe::{proc_cpu_seconds, proc_status_bytes, proc_udp_drops, quantile_ms, scrape};
use report::{markdown, summary, summary_us_as_ms};

#[derive(Parser, Clone)]
#[command(
    name = "consulta-bench",
    about = "Synthetic consultations against a Consulta server"
)]
struct Args {
    /// Signaling URL.
    #[arg(long, default_value = "ws://127.0.0.1:7880/ws")]
    url: String,
    /// Metrics URL (for forwarded packets); empty to skip.
    #[arg(long, default_value = "http://127.0.0.1:7880/metrics")]
    metrics: String,
    /// The server's join-token secret ([auth] token_secret).
    #[arg(long, env = "CONSULTA_AUTH_TOKEN_SECRET")]
    secret: String,
    /// Concurrent consultations.
    #[arg(long, default_value_t = 2)]
    rooms: usize,
    /// Participants per consultation (2-5).
    #[arg(long, default_value_t = 2)]
    participants: usize,
    /// Seconds of media after everyone joined.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Video bitrate per publisher, kbit/s.
    #[arg(long, default_value_t = 2500)]
    video_kbps: u64,
    /// Server process id, for CPU time and RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Ramp to find capacity: `START:STEP:MAX` consultations; each level runs `--duration`
    /// seconds and the ramp stops at the first level with frame loss ≥ 0.1% or errors.
    #[arg(long)]
    ramp: Option<String>,
    /// Also write a human report (Markdown, with a chart) to this file.
    #[arg(long)]
    report_md: Option<std::path::PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
    /// What `--url` is: `consulta` (its /ws signaling) or `janus` (Janus VideoRoom over its
    /// WebSocket API, e.g. ws://127.0.0.1:8188; see scripts/bench-vs-janus.sh).
    #[arg(long, default_value = "consulta")]
    target: String,
    /// Local address of the synthetic participants' UDP sockets.
    #[arg(long, default_value = "127.0.0.1")]
    bind_ip: std::net::IpAddr,
    /// Threads running the synthetic participants (each its own single-threaded runtime; a
    /// consultation's participants share one). Default: one per CPU.
    #[arg(long)]
    threads: Option<usize>,
    /// Nice value of those threads (0-19). The generator shares the machine with the server
    /// it measures; by default it yields the CPU to it (10), so that the server's numbers are
    /// its own rather than the scheduler's. 0: the same priority.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    nice: i32,
    /// Churn during the window: every SECONDS one participant of a random consultation leaves
    /// and joins again (never two of one consultation at once). Consulta target only.
    #[arg(long, value_name = "SECONDS")]
    churn_every: Option<f64>,
    /// Publish video as three simulcast layers, as the browser SDK does: rids q, h and f at
    /// 1/16, 1/5 and all of `--video-kbps` (the SDK's 180p, 360p and 720p), one frame of each
    /// per tick; the server forwards one layer per subscriber (the top one: Janus is asked for
    /// its substream 2).
    #[arg(long)]
    simulcast: bool,
}

/// The simulcast layers of `--simulcast`, low to high: rid and share of `--video-kbps` (1/n).
const LAYERS: [(&str, usize); 3] = [("q", 16), ("h", 5), ("f", 1)];

/// How often a participant pings the server's signaling: well inside its 60 s idle timeout.
const PING_EVERY: Duration = Duration::from_secs(20);

/// The loss a level may have and still count as within capacity.
const MAX_LOSS: f64 = 0.001;

#[derive(Default)]
struct Stats {
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    frames_lost: AtomicU64,
    bytes_received: AtomicU64,
    audio_received: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    /// Each received video frame's RFC 3550 jitter estimate for its stream, µs.
    jitter_us: Mutex<Vec<u64>>,
    /// RTP packets (SRTP, not RTCP) received by all subscribers: what the server forwarded.
    rtp_received: AtomicU64,
    /// Datagrams the participants' own sockets refused to send (full buffers).
    send_refused: AtomicU64,
    /// Participants receiving media (everyone has joined when it reaches the total).
    receiving: AtomicU64,
    /// Set once the measured window is over: participants stop sending and leave.
    stop: std::sync::atomic::AtomicBool,
    join_ms: Mutex<Vec<u64>>,
    first_media_ms: Mutex<Vec<u64>>,
    errors: Mutex<Vec<String>>,
    churn: churn::Churn,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A VP8-shaped frame: bit 0 of byte 0 clear on keyframes; send time and counter inside.
fn video_frame(buf: &mut Vec<u8>, key: bool, len: usize, sender: u32, n: u32) {
    buf.clear();
    buf.resize(len.max(32), 0x5a);
    buf[0] = if key { 0x10 } else { 0x11 };
    if key {
        buf[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
    }
    buf[8..16].copy_from_slice(&now_us().to_be_bytes());
    buf[16..20].copy_from_slice(&sender.to_be_bytes());
    buf[20..24].copy_from_slice(&n.to_be_bytes());
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !(2..=5).contains(&args.participants) {
        bail!("--participants must be 2 to 5");
    }
    if !matches!(args.target.as_str(), "consulta" | "janus") {
        bail!("--target is consulta or janus");
    }
    if let Some(s) = args.churn_every {
        if !(s.is_finite() && s > 0.0) {
            bail!("--churn-every is a number of seconds above 0");
        }
        if args.target != "consulta" {
            bail!("--churn-every works with --target consulta only");
        }
    }
    let levels: Vec<usize> = match &args.ramp {
        None => vec![args.rooms],
        Some(r) => {
            let parts: Vec<usize> = r
                .split(':')
                .map(|x| x.trim().parse())
                .collect::<Result<_, _>>()
                .context("--ramp is START:STEP:MAX (numbers of consultations)")?;
            let [start, step, max] = parts[..] else {
                bail!("--ramp is START:STEP:MAX");
            };
            if start == 0 || step == 0 || max < start {
                bail!("--ramp needs START >= 1, STEP >= 1, MAX >= START");
            }
            (start..=max).step_by(step).collect()
        }
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    let shards = shards(threads, args.nice)?;
    let mut reports = Vec::new();
    let mut capacity = None;
    for (i, rooms) in levels.iter().enumerate() {
        let report = run_level(&args, &shards, *rooms, i).await?;
        let ok = report["frame_loss_ratio"].as_f64().unwrap_or(1.0) < MAX_LOSS
            && report["errors"].as_array().is_some_and(|e| e.is_empty());
        reports.push(report);
        if !ok {
            break;
        }
        capacity = Some(*rooms);
        if i + 1 < levels.len() {
            // Let the server settle (sessions closed) before the next level.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    let out = if args.ramp.is_some() {
        json!({
            "mode": "ramp",
            "participants_per_room": args.participants,
            "video_kbps": args.video_kbps,
            "max_loss": MAX_LOSS,
            "capacity_rooms": capacity,
            "levels": reports,
        })
    } else {
        reports.pop().unwrap_or(Value::Null)
    };
    if let Some(path) = &args.report_md {
        let levels = out["levels"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![out.clone()]);
        std::fs::write(path, markdown(&args, &levels, capacity))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Threads for the synthetic participants, each driving a single-threaded runtime: a
/// participant's socket, timers and signaling wake only its own thread (tokio's work-stealing
/// scheduler cost the generator a fifth more CPU, taken from the server it measures).
fn shards(n: usize, nice: i32) -> Result<Vec<tokio::runtime::Handle>> {
    (0..n)
        .map(|i| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            // Runs until the process exits.
            std::thread::Builder::new()
                .name(format!("participants-{i}"))
                .spawn(move || {
                    if let Err(e) = consulta_sfu::thread_nice(nice) {
                        eprintln!("consulta-bench: cannot set nice {nice}: {e}");
                    }
                    rt.block_on(std::future::pending::<()>())
                })?;
            Ok(handle)
        })
        .collect()
}

/// One fixed load: `rooms` consultations join, media flows, and a window of `--duration`
/// seconds is measured once everyone receives media (joins and DTLS handshakes excluded).
async fn run_level(
    args: &Args,
    shards: &[tokio::runtime::Handle],
    rooms: usize,
    level: usize,
) -> Result<Value> {
    let churn_every = args.churn_every.map(Duration::from_secs_f64);
    let stats = Arc::new(Stats {
        churn: churn::Churn::new(churn_every, rooms, args.participants),
        ..Stats::default()
    });
    let started = Instant::now();
    let total = (rooms * args.participants) as u64;
    let mut tasks = Vec::new();
    for r in 0..rooms {
        for p in 0..args.participants {
            let (args, stats) = (args.clone(), stats.clone());
            let role = match p {
                0 => Role::Doctor,
                1 => Role::Patient,
                _ => Role::Guest,
            };
            tasks.push(shards[r % shards.len()].spawn(async move {
                let room = format!("bench-{}-{level}-{r}", std::process::id());
                let id = (r * 10 + p) as u32;
                let res = if args.target == "janus" {
                    // Janus rooms are numbers.
                    let room = 1_000_000 + (level * 10_000 + r) as u64;
                    janus::participant(&args, room, id, &stats).await
                } else {
                    // A participant churned out joins again as a fresh peer.
                    loop {
                        let res = participant(&args, &room, id, role, &stats).await;
                        if res.is_err()
                            || stats.stop.load(Ordering::Relaxed)
                            || !stats.churn.on_left(id)
                        {
                            break res;
                        }
                    }
                };
                if let Err(e) = res {
                    stats
                        .errors
                        .lock()
                        .unwrap()
                        .push(format!("{room}/{id}: {e:#}"));
                }
            }));
        }
    }
    // Everyone joined and receives media (or 30 s passed), then one second of warm-up.
    let join_deadline = Instant::now() + Duration::from_secs(30);
    while stats.receiving.load(Ordering::Relaxed) < total && Instant::now() < join_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let joined_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The measured window starts now: counters from zero, server CPU and forwarded packets.
    stats.latencies_us.lock().unwrap().clear();
    stats.jitter_us.lock().unwrap().clear();
    for c in [
        &stats.frames_sent,
        &stats.frames_received,
        &stats.frames_lost,
        &stats.bytes_received,
        &stats.audio_received,
        &stats.rtp_received,
        &stats.send_refused,
    ] {
        c.store(0, Ordering::Relaxed);
    }
    let cpu0 = args.server_pid.and_then(proc_cpu_seconds);
    let gen0 = proc_cpu_seconds(std::process::id());
    let drops0 = args.server_pid.and_then(proc_udp_drops);
    let gen_drops0 = proc_udp_drops(std::process::id());
    let scrape0 = scrape(&args.metrics).await;
    let churner = tokio::spawn({
        let stats = stats.clone();
        async move { stats.churn.run(&stats.stop).await }
    });
    let window = Instant::now();
    let mut last_print = Instant::now();
    while window.elapsed() < Duration::from_secs(args.duration) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !args.quiet && last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            progress(rooms, &stats, window.elapsed().as_secs(), args.duration);
        }
    }
    let elapsed = window.elapsed().as_secs_f64();
    let cpu = match (cpu0, args.server_pid.and_then(proc_cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    // Memory as the window ends, while every participant is still in: read after the
    // participants have gone, it shows a server that has already freed their state.
    let rss = args.server_pid.and_then(|p| proc_status_bytes(p, "VmRSS:"));
    let rss_peak = args.server_pid.and_then(|p| proc_status_bytes(p, "VmHWM:"));
    let gen = match (gen0, proc_cpu_seconds(std::process::id())) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    // Where datagrams were lost inside the machine, if anywhere: the server's sockets or the
    // participants' (the generator fell behind). A socket closed meanwhile takes its count
    // with it: that reads as none rather than as a wrap.
    let grew = |before: Option<u64>, after: Option<u64>| Some(after?.saturating_sub(before?));
    let drops = grew(drops0, args.server_pid.and_then(proc_udp_drops));
    let gen_drops = grew(gen_drops0, proc_udp_drops(std::process::id()));
    let scrape1 = scrape(&args.metrics).await;
    let fwd = match (&scrape0, &scrape1) {
        (Some(a), Some(b)) => Some(b.forwarded - a.forwarded),
        _ => None,
    };
    // The server's own view of its forwarding delay over the window (Consulta only).
    let in_server = match (&scrape0, &scrape1) {
        (Some(a), Some(b)) => b.delay_since(a),
        _ => Vec::new(),
    };
    let in_server_pct = |q: f64| quantile_ms(&in_server, q);
    // Frames still in flight at the end of the window arrive during this grace period.
    stats.stop.store(true, Ordering::Relaxed);
    churner.abort();
    for t in tasks {
        let _ = t.await;
    }
    if !args.quiet {
        eprintln!();
    }
    let received = stats.frames_received.load(Ordering::Relaxed);
    let lost = stats.frames_lost.load(Ordering::Relaxed);
    let rtp = stats.rtp_received.load(Ordering::Relaxed);
    let report = json!({
        "rooms": rooms,
        "participants_per_room": args.participants,
        "streams_forwarded": rooms * args.participants * (args.participants - 1) * 2,
        "seconds": elapsed,
        "join_phase_seconds": joined_s,
        "video_kbps": args.video_kbps,
        "simulcast": args.simulcast,
        "frames_sent": stats.frames_sent.load(Ordering::Relaxed),
        "frames_received": received,
        "frames_lost": lost,
        "frame_loss_ratio": if received + lost > 0 { lost as f64 / (received + lost) as f64 } else { 0.0 },
        "audio_frames_received": stats.audio_received.load(Ordering::Relaxed),
        "bytes_received": stats.bytes_received.load(Ordering::Relaxed),
        "receive_kbps": stats.bytes_received.load(Ordering::Relaxed) as f64 * 8.0 / 1000.0 / elapsed,
        "latency_ms": summary_us_as_ms(&stats.latencies_us.lock().unwrap()),
        // Interarrival jitter of the video streams (RFC 3550 estimator over the send times inside
        // the frames), over every frame received in the window.
        "jitter_ms": summary_us_as_ms(&stats.jitter_us.lock().unwrap()),
        "join_ms": summary(&stats.join_ms.lock().unwrap()),
        "first_media_ms": summary(&stats.first_media_ms.lock().unwrap()),
        "server": {
            "cpu_seconds": cpu,
            "cpu_percent_of_one_core": cpu.map(|c| c * 100.0 / elapsed),
            "rss_bytes": rss,
            "rss_peak_bytes": rss_peak,
            "rtp_forwarded": fwd,
            // From the kernel's receive timestamp to the send call, per forwarded copy
            // (consulta_forward_delay_seconds): the delay the SFU adds, without the generator's.
            "forward_delay_ms": { "p50": in_server_pct(0.5), "p99": in_server_pct(0.99) },
            "cpu_us_per_forwarded_packet": match (cpu, fwd) { (Some(c), Some(f)) if f > 0.0 => Some(c * 1e6 / f), _ => None },
            // The same from the receiving side (works for any server): CPU per RTP packet
            // that reached a subscriber.
            "cpu_us_per_received_packet": match cpu { Some(c) if rtp > 0 => Some(c * 1e6 / rtp as f64), _ => None },
            // Datagrams the kernel dropped at the server's full socket queues over the window
            // (from /proc, for any server): loss the server's reading caused.
            "udp_receive_drops": drops,
        },
        // The load generator itself, on the same machine: what it leaves of the cores.
        "generator": {
            "cpu_seconds": gen,
            "cpu_percent_of_one_core": gen.map(|c| c * 100.0 / elapsed),
            // Losses of its own making, if any: datagrams its sockets refused to send.
            "datagrams_refused": stats.send_refused.load(Ordering::Relaxed),
            // ...and datagrams dropped at its participants' full socket queues: loss the
            // generator caused by falling behind, not the server.
            "udp_receive_drops": gen_drops,
        },
        "target": args.target,
        "rtp_packets_received": rtp,
        "churn": {
            "every_seconds": args.churn_every,
            "left": stats.churn.left.load(Ordering::Relaxed),
            "rejoined": stats.churn.rejoined.load(Ordering::Relaxed),
        },
        "errors": *stats.errors.lock().unwrap(),
    });
    Ok(report)
}

/// One status line on stderr, rewritten in place.
fn progress(rooms: usize, stats: &Stats, t: u64, of: u64) {
    let rx = stats.frames_received.load(Ordering::Relaxed);
    let lost = stats.frames_lost.load(Ordering::Relaxed);
    let width = 30usize;
    let done = (t as usize * width / of.max(1) as usize).min(width);
    eprint!(
        "\r{rooms:>4} consultations [{}{}] {t:>3}/{of}s  frames {rx}  lost {lost}   ",
        "#".repeat(done),
        ".".repeat(width - done)
    );
}

async fn send(ws: &mut media::WsSink, v: Value) -> Result<()> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .context("signaling send")
}

async fn participant(args: &Args, room: &str, id: u32, role: Role, stats: &Stats) -> Result<()> {
    let t0 = Instant::now();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let token = JoinToken::new(room, &format!("bench-{id}"), role, now, 3600)?
        .sign(args.secret.as_bytes())?;
    let (ws, _) = tokio_tungstenite::connect_async(&args.url)
        .await
        .context("signaling connect")?;
    let (mut ws, mut signals) = media::split_ws(ws);
    send(&mut ws, json!({"type":"join","v":1,"token":token})).await?;
    let mut udp = media::MediaSocket::bind(args.bind_ip)?;
    let mut rtc = Rtc::builder().build(Instant::now());
    rtc.add_local_candidate(Candidate::host(udp.local, "udp")?);
    let mut change = rtc.sdp_api();
    let audio = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let layers = args.simulcast.then(|| {
        let mut sim = str0m::media::Simulcast::new();
        for (rid, _) in LAYERS {
            sim.add_send_layer(str0m::media::SimulcastLayer::new(rid));
        }
        sim
    });
    let video = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, layers);
    let (offer, pending) = change.apply().context("an offer")?;
    let mut pending = Some(pending);
    let mut offered = false;
    let mut frame = Vec::with_capacity(16 * 1024);
    let frame_len = (args.video_kbps * 1000 / 8 / 30) as usize;
    let (mut vn, mut an) = (0u32, 0u32);
    let mut inbox = media::Inbox::new(stats, t0);
    let (mut video_tick, mut audio_tick) = media::capture_ticks(id);
    // One timer for the Rtc's deadlines, moved rather than made anew each turn.
    let wake = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(wake);
    // After the window: stop sending, let the last frames arrive, leave.
    let mut leave_at: Option<Instant> = None;
    // The server closes a WebSocket that says nothing for 60 s (`idle_timeout`): runs longer
    // than that (a soak) lost every participant that had not been churned.
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        if leave_at.is_none() && (stats.stop.load(Ordering::Relaxed) || stats.churn.asked(id)) {
            leave_at = Some(Instant::now() + Duration::from_millis(500));
        }
        let sending = leave_at.is_none();
        // Drain the Rtc: transmits out (one batch), media in.
        let timeout = media::poll(&mut rtc, &mut udp, &mut inbox, |_| {})?;
        udp.flush(stats);
        if leave_at.is_some_and(|t| Instant::now() >= t) {
            let _ = send(&mut ws, json!({"type":"leave"})).await;
            return Ok(());
        }
        let deadline = tokio::time::Instant::from_std(
            timeout.min(Instant::now() + Duration::from_millis(100)),
        );
        if wake.deadline() != deadline {
            wake.as_mut().reset(deadline);
        }
        tokio::select! {
            msg = signals.recv() => {
                let Some(t) = msg else { bail!("signaling closed") };
                let m: Value = serde_json::from_str(&t)?;
                match m["type"].as_str() {
                    Some("joined") => {
                        stats.join_ms.lock().unwrap().push(t0.elapsed().as_millis() as u64);
                        stats.churn.on_joined(id);
                        send(&mut ws, json!({"type":"offer","sdp":offer.to_sdp_string()})).await?;
                    }
                    Some("answer") => {
                        let answer = SdpAnswer::from_sdp_string(m["sdp"].as_str().unwrap_or_default())?;
                        rtc.sdp_api().accept_answer(pending.take().context("answer without offer")?, answer)?;
                        offered = true;
                    }
                    Some("offer") => {
                        let o = SdpOffer::from_sdp_string(m["sdp"].as_str().unwrap_or_default())?;
                        let answer = rtc.sdp_api().accept_offer(o)?;
                        send(&mut ws, json!({"type":"answer","sdp":answer.to_sdp_string()})).await?;
                    }
                    Some("error") if m["fatal"] == true => bail!("server error {}", m["code"]),
                    _ => {}
                }
            }
            r = udp.socket.readable() => {
                r?;
                // Every datagram that is there (up to a burst), each followed by the Rtc's
                // output; what that sends leaves in one batch after the loop.
                let now = Instant::now();
                media::tick(&mut rtc, &mut udp, &mut inbox, now)?;
                let at = media::burst_time(now);
                for _ in 0..media::BURST {
                    let Some((n, from)) = udp.try_recv()? else { break };
                    count_rtp(udp.data(n), stats);
                    let Some(input) = udp.input(n, from, at) else { continue };
                    rtc.handle_input(input)?;
                    media::poll(&mut rtc, &mut udp, &mut inbox, |_| {})?;
                }
            }
            _ = video_tick.tick(), if offered && rtc.is_connected() && sending => {
                let key = vn % 60 == 0 || std::mem::take(&mut inbox.force_key);
                let len = if key { frame_len * 4 } else { frame_len };
                let time = MediaTime::from_90khz(u64::from(vn) * 3000);
                if args.simulcast {
                    // One frame per layer, each with the same counter: a subscriber counts
                    // its layer's frames as it would one stream's.
                    for (rid, share) in LAYERS {
                        video_frame(&mut frame, key, len / share, id, vn);
                        media::write(&mut rtc, &mut udp, &mut inbox, (video, Some(rid)), Codec::Vp8, time, &frame)?;
                    }
                } else {
                    video_frame(&mut frame, key, len, id, vn);
                    media::write(&mut rtc, &mut udp, &mut inbox, (video, None), Codec::Vp8, time, &frame)?;
                }
                vn += 1;
                stats.frames_sent.fetch_add(1, Ordering::Relaxed);
            }
            _ = audio_tick.tick(), if offered && rtc.is_connected() && sending => {
                frame.clear();
                frame.resize(80, 0xAA);
                media::write(&mut rtc, &mut udp, &mut inbox, (audio, None), Codec::Opus, MediaTime::from_millis(u64::from(an) * 20), &frame)?;
                an += 1;
            }
            _ = &mut wake => {
                media::tick(&mut rtc, &mut udp, &mut inbox, Instant::now())?;
            }
            _ = ping.tick() => {
                send(&mut ws, json!({"type":"ping"})).await?;
            }
        }
    }
}

/// What a subscriber last heard from one publisher's video.
pub struct Heard {
    /// The frame counter.
    n: u32,
    /// Receive time minus send time, µs (both wall clock on this machine).
    transit_us: i64,
    /// RFC 3550 interarrival jitter, µs.
    jitter_us: f64,
}

/// One step of RFC 3550's interarrival jitter estimator (section 6.4.1): J += (|D| - J) / 16,
/// D the difference of two consecutive frames' transit times.
fn next_jitter(jitter_us: f64, prev_transit_us: i64, transit_us: i64) -> f64 {
    let d = (transit_us - prev_transit_us).unsigned_abs() as f64;
    jitter_us + (d - jitter_us) / 16.0
}

/// One received frame: bytes, latency from the send time inside, lost frames from the counter,
/// the stream's jitter.
fn on_media(m: &str0m::media::MediaData, inbox: &mut media::Inbox) {
    let stats = inbox.stats;
    stats
        .bytes_received
        .fetch_add(m.data.len() as u64, Ordering::Relaxed);
    if m.params.spec().codec == Codec::Opus {
        stats.audio_received.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if m.data.len() < 24 {
        return;
    }
    let sent = u64::from_be_bytes(m.data[8..16].try_into().unwrap_or_default());
    let from = u32::from_be_bytes(m.data[16..20].try_into().unwrap_or_default());
    let n = u32::from_be_bytes(m.data[20..24].try_into().unwrap_or_default());
    let now = now_us();
    stats
        .latencies_us
        .lock()
        .unwrap()
        .push(now.saturating_sub(sent));
    let transit_us = now as i64 - sent as i64;
    let mut jitter_us = 0.0;
    if let Some(prev) = inbox.heard.get(&from) {
        if n > prev.n + 1 {
            stats
                .frames_lost
                .fetch_add(u64::from(n - prev.n - 1), Ordering::Relaxed);
        }
        jitter_us = next_jitter(prev.jitter_us, prev.transit_us, transit_us);
        stats.jitter_us.lock().unwrap().push(jitter_us as u64);
    }
    inbox.heard.insert(
        from,
        Heard {
            n,
            transit_us,
            jitter_us,
        },
    );
    stats.frames_received.fetch_add(1, Ordering::Relaxed);
    if !inbox.first_media {
        inbox.first_media = true;
        stats.receiving.fetch_add(1, Ordering::Relaxed);
        stats
            .first_media_ms
            .lock()
            .unwrap()
            .push(inbox.t0.elapsed().as_millis() as u64);
    }
}

/// Counts SRTP packets (not RTCP, STUN or DTLS): RFC 5761/7983 demultiplexing on the header.
fn count_rtp(d: &[u8], stats: &Stats) {
    if d.len() >= 12 && (128..192).contains(&d[0]) && !(192..=223).contains(&d[1]) {
        stats.rtp_received.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::next_jitter;

    /// RFC 3550's estimator: constant transit times give no jitter; a transit time that
    /// alternates by 1 ms converges to 1 ms; one late frame moves it by a sixteenth.
    #[test]
    fn jitter_follows_rfc_3550() {
        let mut j = 0.0;
        for _ in 0..100 {
            j = next_jitter(j, 5_000, 5_000);
        }
        assert_eq!(j, 0.0);
        for k in 0..400 {
            let (a, b) = if k % 2 == 0 {
                (5_000, 6_000)
            } else {
                (6_000, 5_000)
            };
            j = next_jitter(j, a, b);
        }
        assert!((j - 1_000.0).abs() < 1.0, "{j}");
        assert_eq!(next_jitter(0.0, 5_000, 21_000), 1_000.0);
    }
}
