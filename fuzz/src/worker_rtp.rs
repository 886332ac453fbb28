//! Target `worker_rtp`: what a worker receives from the network, into a `RouterHost` whose
//! participants are in-memory str0m peers (the SFU tests' harness): a publisher and a
//! subscriber, connected (ICE, DTLS, SRTP) once per process and reused by every input.
//! Operations: raw datagrams from the publisher's address or a new one (STUN, DTLS, SRTP
//! noise), RTP that the publisher's str0m protects with its real SRTP keys (so fuzzed payload
//! types, sequence numbers, timestamps, markers and payloads reach the forwarding code), frames
//! through the publisher's packetizer, mutes, keyframe requests, ICE restarts, and time.
//! The participants are rebuilt when an input closed one.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use consulta_sfu::{Command, TrackKind};
use str0m::format::Codec;
use str0m::media::{MediaKind, MediaTime, Mid};
use str0m::net::Protocol;
use str0m::rtp::{RtpWrite, SeqNo};

use crate::Input;

#[allow(dead_code, clippy::all)]
#[path = "../../sfu/tests/harness/mod.rs"]
mod harness;

use harness::Net;

struct Call {
    net: Net,
    /// (mid, its payload types) of the publisher's audio and video.
    sends: [(Mid, Vec<u8>); 2],
    seq: [u64; 2],
    time: [u32; 2],
    video_codec: Codec,
    /// The call's clock: inputs move it forward (pacers and timers run on it), never back.
    now: Instant,
}

thread_local! {
    static CALL: RefCell<Option<Call>> = const { RefCell::new(None) };
}

fn connect() -> Call {
    let mut net = Net::new(4);
    let publisher = net.join("fuzz-room", "pub", true);
    let subscriber = net.join("fuzz-room", "sub", false);
    net.until(20, "both connected", |n| {
        n.clients[publisher].connected && n.clients[subscriber].connected
    });
    let c = &mut net.clients[publisher];
    let mut sends = [c.audio_mid.unwrap(), c.video_mid.unwrap()].map(|mid| {
        let pts: Vec<u8> = c
            .rtc
            .writer(mid)
            .map(|w| w.payload_params().map(|p| *p.pt()).collect())
            .unwrap_or_default();
        (mid, pts)
    });
    let video_codec = c
        .rtc
        .writer(sends[1].0)
        .and_then(|w| w.payload_params().next().map(|p| p.spec().codec))
        .unwrap_or(Codec::Vp8);
    for s in &mut sends {
        if s.1.is_empty() {
            s.1.push(96);
        }
    }
    Call {
        net,
        sends,
        seq: [1_000, 1_000],
        time: [0, 0],
        video_codec,
        now: Instant::now(),
    }
}

pub fn run(data: &[u8]) {
    CALL.with_borrow_mut(|call| {
        let alive = call.as_ref().is_some_and(|c| {
            c.net
                .clients
                .iter()
                .all(|p| p.closed.is_none() && p.rtc.is_alive())
        });
        if !alive {
            *call = Some(connect());
        }
        let call = call.as_mut().expect("connected");
        drive(call, data);
        if std::env::var_os("FUZZ_DEBUG").is_some() {
            let c = &call.net.clients;
            eprintln!(
                "publisher closed {:?}, subscriber closed {:?}, media frames at the subscriber {}",
                c[0].closed,
                c[1].closed,
                c[1].media.len()
            );
        }
        for c in &mut call.net.clients {
            c.media.clear();
            c.messages.clear();
            c.answers.clear();
        }
    })
}

fn drive(call: &mut Call, data: &[u8]) {
    let mut input = Input::new(data);
    let (peer, addr) = (call.net.clients[0].peer, call.net.clients[0].addr);
    while !input.is_empty() {
        let now = call.now;
        match input.u8() % 8 {
            0 => call
                .net
                .host
                .on_datagram(peer, Protocol::Udp, addr, input.long(), now),
            1 => {
                // The same participant from another address (roaming, or a spoofer).
                let from = SocketAddr::from(([127, 0, 0, 2], 50_000 + u16::from(input.u8())));
                let proto = if input.bool() {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                };
                call.net
                    .host
                    .on_datagram(peer, proto, from, input.long(), now);
            }
            2 | 3 => {
                let k = usize::from(input.bool());
                let pt = match input.u8() {
                    0xFF => input.u8() & 0x7F,
                    i => call.sends[k].1[usize::from(i) % call.sends[k].1.len()],
                };
                let flags = input.u8();
                call.seq[k] = match flags & 3 {
                    0 => call.seq[k] + 1,
                    1 => call.seq[k] + u64::from(input.u16()),
                    2 => call.seq[k].saturating_sub(u64::from(input.u8())),
                    _ => call.seq[k],
                };
                call.time[k] = match flags >> 2 & 3 {
                    0 => call.time[k],
                    1 => call.time[k].wrapping_add(u32::from(input.u16())),
                    _ => input.u32(),
                };
                // A browser's payloads stay under its MTU; str0m (the test peer) panics on a
                // write it cannot fit in one datagram, which is the peer's limit, not the SFU's.
                let payload = input.long();
                let payload = payload[..payload.len().min(1200)].to_vec();
                let w = RtpWrite::new(
                    pt.into(),
                    SeqNo::from(call.seq[k]),
                    call.time[k],
                    now,
                    payload,
                )
                .marker(flags & 16 != 0)
                .nackable(flags & 32 != 0);
                let c = &mut call.net.clients[0];
                if let Some(tx) = c.rtc.direct_api().stream_tx_by_mid(call.sends[k].0, None) {
                    tx.write_rtp(w);
                }
            }
            4 => {
                let k = usize::from(input.bool());
                let frame = input.long();
                if !frame.is_empty() {
                    let codec = if k == 0 {
                        Codec::Opus
                    } else {
                        call.video_codec
                    };
                    call.time[k] = call.time[k].wrapping_add(960);
                    let time = MediaTime::from_90khz(u64::from(call.time[k]));
                    let mid = call.sends[k].0;
                    if let Some(w) = call.net.clients[0].rtc.writer(mid) {
                        let pt = w
                            .payload_params()
                            .find(|p| p.spec().codec == codec)
                            .map(|p| p.pt());
                        if let Some(pt) = pt {
                            // An error here is the test peer's (e.g. a frame it cannot packetize).
                            let _ = w.write(pt, now, time, frame.to_vec());
                        }
                    }
                }
            }
            5 => {
                let kind = if input.bool() {
                    TrackKind::Audio
                } else {
                    TrackKind::Video
                };
                let muted = input.bool();
                call.net
                    .host
                    .on_command(Command::Mute { peer, kind, muted });
            }
            6 => {
                let cmd = match input.u8() % 5 {
                    0 => Command::RequestKeyframe {
                        peer,
                        mid: call.sends[1].0,
                    },
                    1 => Command::RestartIce { peer },
                    // A subscriber's size for the other's video, a publisher's layer heights.
                    3 => Command::VideoSize {
                        peer,
                        identity: if input.bool() { "pub" } else { "sub" }.to_owned(),
                        size: input
                            .bool()
                            .then(|| (u32::from(input.u16()), u32::from(input.u16()))),
                    },
                    4 => Command::VideoLayers {
                        peer,
                        heights: (0..input.u8() % 4)
                            .map(|_| u32::from(input.u16()))
                            .collect(),
                    },
                    _ => Command::RequestKeyframe {
                        peer,
                        mid: call.sends[0].0,
                    },
                };
                call.net.host.on_command(cmd);
            }
            _ => {
                call.now += Duration::from_millis(u64::from(input.u8()) + 1);
                call.net.step_at(call.now);
                call.net.host.housekeeping(call.now);
            }
        }
    }
    // Let what was sent arrive: a few rounds, 10 ms apart.
    for _ in 0..8 {
        call.now += Duration::from_millis(10);
        if !call.net.step_at(call.now) {
            break;
        }
    }
}

/// Every datagram of a real call between two str0m peers and the SFU (both directions): ICE
/// STUN checks, the DTLS handshakes, SRTP/SRTCP media with VP8 and Opus. Seeds for the
/// datagram-level targets (`seedgen`).
pub fn capture_call() -> Vec<Vec<u8>> {
    let mut net = Net::new(4);
    let publisher = net.join("seed-room", "pub", true);
    let subscriber = net.join("seed-room", "sub", false);
    let mut seen = Vec::new();
    let record = |net: &Net, seen: &mut Vec<Vec<u8>>| {
        for c in &net.clients {
            seen.extend(c.outbox.iter().map(|(_, d)| d.clone()));
        }
        seen.extend(net.wire.queue.borrow().iter().map(|(_, d)| d.clone()));
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    let mut frames = 0u32;
    while Instant::now() < deadline && frames < 60 {
        record(&net, &mut seen);
        if !net.step() {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if net.clients[publisher].connected && net.clients[subscriber].connected {
            net.write_vp8(publisher, frames, frames % 30 == 0, 900);
            let time = MediaTime::from_90khz(u64::from(frames) * 1800);
            net.write(
                publisher,
                MediaKind::Audio,
                Codec::Opus,
                time,
                &[0x78, 1, 2, 3, 4],
            );
            frames += 1;
        }
    }
    seen
}
