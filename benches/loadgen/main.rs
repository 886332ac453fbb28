//! `consulta-bench`: a load generator of synthetic consultations against a running Consulta.
//!
//! Each participant is a real WebRTC peer (str0m, one UDP socket) that joins through the real
//! signaling (`/ws`, join tokens), publishes synthetic HD video (a VP8-shaped frame pattern with
//! periodic keyframes at the configured bitrate) and Opus-sized audio every 20 ms, and subscribes
//! to everyone else. Every frame carries its send time and a counter, so receivers measure
//! one-way latency and lost frames. The server's CPU time and RSS come from /proc, its forwarded
//! packet count from /metrics, so the report's µs per forwarded packet can be checked against
//! both. The report is JSON on stdout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use consulta_signaling::{JoinToken, Role};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

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
}

#[derive(Default)]
struct Stats {
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    frames_lost: AtomicU64,
    bytes_received: AtomicU64,
    audio_received: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    join_ms: Mutex<Vec<u64>>,
    first_media_ms: Mutex<Vec<u64>>,
    errors: Mutex<Vec<String>>,
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !(2..=5).contains(&args.participants) {
        bail!("--participants must be 2 to 5");
    }
    let stats = Arc::new(Stats::default());
    let cpu0 = args.server_pid.and_then(proc_cpu_seconds);
    let fwd0 = forwarded(&args.metrics).await;
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(args.duration + 5);
    let mut tasks = Vec::new();
    for r in 0..args.rooms {
        for p in 0..args.participants {
            let (args, stats) = (args.clone(), stats.clone());
            let role = match p {
                0 => Role::Doctor,
                1 => Role::Patient,
                _ => Role::Guest,
            };
            tasks.push(tokio::spawn(async move {
                let room = format!("bench-{}-{r}", std::process::id());
                let id = (r * 10 + p) as u32;
                if let Err(e) = participant(&args, &room, id, role, deadline, &stats).await {
                    stats
                        .errors
                        .lock()
                        .unwrap()
                        .push(format!("{room}/{id}: {e:#}"));
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = match (cpu0, args.server_pid.and_then(proc_cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let fwd = match (fwd0, forwarded(&args.metrics).await) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let mut lat = stats.latencies_us.lock().unwrap().clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|v| *v as f64 / 1000.0)
    };
    let received = stats.frames_received.load(Ordering::Relaxed);
    let lost = stats.frames_lost.load(Ordering::Relaxed);
    let report = json!({
        "rooms": args.rooms,
        "participants_per_room": args.participants,
        "seconds": elapsed,
        "video_kbps": args.video_kbps,
        "frames_sent": stats.frames_sent.load(Ordering::Relaxed),
        "frames_received": received,
        "frames_lost": lost,
        "frame_loss_ratio": if received + lost > 0 { lost as f64 / (received + lost) as f64 } else { 0.0 },
        "audio_frames_received": stats.audio_received.load(Ordering::Relaxed),
        "bytes_received": stats.bytes_received.load(Ordering::Relaxed),
        "receive_kbps": stats.bytes_received.load(Ordering::Relaxed) as f64 * 8.0 / 1000.0 / elapsed,
        "latency_ms": { "p50": pct(0.5), "p99": pct(0.99), "max": lat.last().map(|v| *v as f64 / 1000.0) },
        "join_ms": summary(&stats.join_ms.lock().unwrap()),
        "first_media_ms": summary(&stats.first_media_ms.lock().unwrap()),
        "server": {
            "cpu_seconds": cpu,
            "rss_bytes": args.server_pid.and_then(proc_rss_bytes),
            "rtp_forwarded": fwd,
            "cpu_us_per_forwarded_packet": match (cpu, fwd) { (Some(c), Some(f)) if f > 0.0 => Some(c * 1e6 / f), _ => None },
        },
        "errors": *stats.errors.lock().unwrap(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn summary(v: &[u64]) -> Value {
    let mut v = v.to_vec();
    v.sort_unstable();
    json!({ "p50": v.get(v.len() / 2), "max": v.last() })
}

fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn proc_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

async fn forwarded(url: &str) -> Option<f64> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix("consulta_rtp_forwarded_total ")?
            .trim()
            .parse()
            .ok()
    })
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Ws, v: Value) -> Result<()> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .context("signaling send")
}

async fn participant(
    args: &Args,
    room: &str,
    id: u32,
    role: Role,
    deadline: Instant,
    stats: &Stats,
) -> Result<()> {
    let t0 = Instant::now();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let token = JoinToken::new(room, &format!("bench-{id}"), role, now, 3600)?
        .sign(args.secret.as_bytes())?;
    let (mut ws, _) = tokio_tungstenite::connect_async(&args.url)
        .await
        .context("signaling connect")?;
    send(&mut ws, json!({"type":"join","v":1,"token":token})).await?;
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let local = socket.local_addr()?;
    let mut rtc = Rtc::builder().build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    let mut change = rtc.sdp_api();
    let audio = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let video = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply().context("an offer")?;
    let mut pending = Some(pending);
    let mut offered = false;
    let mut buf = vec![0u8; 2048];
    let mut frame = Vec::with_capacity(16 * 1024);
    let frame_len = (args.video_kbps * 1000 / 8 / 30) as usize;
    let (mut vn, mut an) = (0u32, 0u32);
    let mut last_seen: HashMap<u32, u32> = HashMap::new();
    let mut first_media = false;
    let mut force_key = false;
    let mut video_tick = tokio::time::interval(Duration::from_millis(33));
    let mut audio_tick = tokio::time::interval(Duration::from_millis(20));
    let send_until = deadline - Duration::from_secs(2);
    loop {
        // Drain the Rtc: transmits out, media in.
        let timeout = loop {
            match rtc.poll_output()? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(Event::MediaData(m)) => {
                    stats
                        .bytes_received
                        .fetch_add(m.data.len() as u64, Ordering::Relaxed);
                    if m.params.spec().codec == Codec::Opus {
                        stats.audio_received.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if m.data.len() >= 24 {
                        let sent = u64::from_be_bytes(m.data[8..16].try_into().unwrap_or_default());
                        let from =
                            u32::from_be_bytes(m.data[16..20].try_into().unwrap_or_default());
                        let n = u32::from_be_bytes(m.data[20..24].try_into().unwrap_or_default());
                        stats
                            .latencies_us
                            .lock()
                            .unwrap()
                            .push(now_us().saturating_sub(sent));
                        if let Some(prev) = last_seen.insert(from, n) {
                            if n > prev + 1 {
                                stats
                                    .frames_lost
                                    .fetch_add(u64::from(n - prev - 1), Ordering::Relaxed);
                            }
                        }
                        stats.frames_received.fetch_add(1, Ordering::Relaxed);
                        if !first_media {
                            first_media = true;
                            stats
                                .first_media_ms
                                .lock()
                                .unwrap()
                                .push(t0.elapsed().as_millis() as u64);
                        }
                    }
                }
                // The SFU asks for a keyframe for a new subscriber: send one next.
                Output::Event(Event::KeyframeRequest(_)) => force_key = true,
                Output::Event(_) => {}
            }
        };
        if Instant::now() >= deadline {
            let _ = send(&mut ws, json!({"type":"leave"})).await;
            return Ok(());
        }
        let wait = timeout
            .min(deadline)
            .saturating_duration_since(Instant::now());
        tokio::select! {
            msg = ws.next() => {
                let Some(Ok(Message::Text(t))) = msg else { bail!("signaling closed") };
                let m: Value = serde_json::from_str(&t)?;
                match m["type"].as_str() {
                    Some("joined") => {
                        stats.join_ms.lock().unwrap().push(t0.elapsed().as_millis() as u64);
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
            r = socket.recv_from(&mut buf) => {
                let (n, from) = r?;
                if let Ok(contents) = buf[..n].try_into() {
                    rtc.handle_input(Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source: from, destination: local, contents }))?;
                }
            }
            _ = video_tick.tick(), if offered && rtc.is_connected() && Instant::now() < send_until => {
                let key = vn % 60 == 0 || std::mem::take(&mut force_key);
                video_frame(&mut frame, key, if key { frame_len * 4 } else { frame_len }, id, vn);
                write(&mut rtc, video, Codec::Vp8, MediaTime::from_90khz(u64::from(vn) * 3000), &frame)?;
                vn += 1;
                stats.frames_sent.fetch_add(1, Ordering::Relaxed);
            }
            _ = audio_tick.tick(), if offered && rtc.is_connected() && Instant::now() < send_until => {
                frame.clear();
                frame.resize(80, 0xAA);
                write(&mut rtc, audio, Codec::Opus, MediaTime::from_millis(u64::from(an) * 20), &frame)?;
                an += 1;
            }
            _ = tokio::time::sleep(wait) => {
                rtc.handle_input(Input::Timeout(Instant::now()))?;
            }
        }
    }
}

fn write(rtc: &mut Rtc, mid: Mid, codec: Codec, time: MediaTime, data: &[u8]) -> Result<()> {
    let Some(w) = rtc.writer(mid) else {
        return Ok(());
    };
    let Some(pt) = w
        .payload_params()
        .find(|p| p.spec().codec == codec)
        .map(|p| p.pt())
    else {
        return Ok(());
    };
    w.write(pt, Instant::now(), time, data.to_vec())?;
    Ok(())
}
