//! `seedgen DIR`: writes the seed corpora under `DIR/<target>/` from real inputs — datagrams
//! captured from a real call of str0m peers through the SFU (STUN, DTLS, SRTP), TURN requests
//! signed as a client signs them, the protocol's messages with a real SDP offer, signed join
//! tokens, RTP payloads of each recorded codec and the WebM file the recorder makes of them.
//! Deterministic except for the call's random keys; commit its output (`fuzz/seeds/`).

use std::path::Path;

use consulta_recorder::{Codec, Recorder, RtpIn, TrackSpec};
use consulta_signaling::token::{JoinToken, Role};
use consulta_turn::stun::write_channel_data;

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "seeds".into());
    let dir = Path::new(&dir);
    let call = consulta_fuzz::worker_rtp::capture_call();
    let pick = |pred: fn(u8) -> bool, n: usize| -> Vec<Vec<u8>> {
        call.iter()
            .filter(|d| pred(d[0]))
            .take(n)
            .cloned()
            .collect()
    };
    let stun = pick(|b| b < 4, 4);
    let dtls = pick(|b| (20..64).contains(&b), 4);
    let srtp = pick(|b| (128..192).contains(&b), 8);

    // stun_parse: real ICE checks, signed TURN requests, ChannelData.
    let mut stun_seeds = stun.clone();
    stun_seeds.extend(turn_messages());
    let mut cd = Vec::new();
    write_channel_data(&mut cd, 0x4001, b"channel data", true);
    stun_seeds.push(cd);
    write(dir, "stun_parse", &stun_seeds);

    // ice_tcp: a segment-size byte, then the call's datagrams framed (RFC 4571).
    let mut streams = Vec::new();
    for (i, group) in [&stun, &dtls, &srtp].into_iter().enumerate() {
        let mut s = vec![i as u8 * 40];
        for d in group {
            s.extend_from_slice(&(d.len() as u16).to_be_bytes());
            s.extend_from_slice(d);
        }
        streams.push(s);
    }
    write(dir, "ice_tcp", &streams);

    write(dir, "turn_server", &turn_programs());
    write(dir, "signaling", &signaling_messages());
    write(dir, "session", &session_programs(&signaling_messages()));
    write(dir, "join_token", &tokens());
    let (programs, file) = recorder_programs();
    write(dir, "recorder", &programs);
    write(dir, "webm_scan", &[file]);
    write(dir, "worker_rtp", &worker_programs(&stun, &dtls, &srtp));
    write(dir, "layers", &layer_programs());
}

/// `layers` programs: three layers flowing with keyframes, targets moving down and up; the
/// payloads are VP8 descriptors with 15-bit picture ids and TL0PICIDX, and one RED payload.
fn layer_programs() -> Vec<Vec<u8>> {
    let mut programs = Vec::new();
    for (down, up) in [(0u8, 2u8), (1, 2), (0, 1)] {
        let mut p = vec![0, 2]; // target: the top layer
        for n in 0u16..24 {
            if n == 8 {
                p.extend_from_slice(&[0, down]);
            }
            if n == 16 {
                p.extend_from_slice(&[0, up]);
            }
            for layer in 0..3u8 {
                p.push(1); // a packet
                p.push(layer);
                p.push(u8::from(n % 4 == 0)); // keyframe
                let ts = u32::from(layer) * 1_000_000 + u32::from(n) * 3000;
                p.extend_from_slice(&ts.to_be_bytes());
                p.push(33); // ms since the last packet
                let pid = u16::from(layer) * 1000 + n;
                let desc = [0x90, 0xC0, 0x80 | (pid >> 8) as u8, pid as u8, n as u8, 0xAB];
                p.push(desc.len() as u8);
                p.extend_from_slice(&desc);
            }
        }
        programs.push(p);
    }
    // A RED payload (one redundant block) as a packet's payload.
    let red = [0x80 | 111, 0x0F, 0x00, 0x03, 111, 1, 2, 3, 9, 9];
    let mut p = vec![1, 0, 1, 0, 0, 0, 0, 20, red.len() as u8];
    p.extend_from_slice(&red);
    programs.push(p);
    programs
}

fn write(dir: &Path, target: &str, seeds: &[Vec<u8>]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("seed directory");
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(d.join(format!("seed-{i:02}")), s).expect("seed file");
    }
    println!("{target}: {} seeds", seeds.len());
}

/// TURN requests as `turn_server` op 0 writes them raw (unsigned), for the parsers.
fn turn_messages() -> Vec<Vec<u8>> {
    use consulta_turn::stun::{attr, method, Class, MessageWriter};
    let mut out = Vec::new();
    for (i, m) in [
        method::ALLOCATE,
        method::CREATE_PERMISSION,
        method::CHANNEL_BIND,
    ]
    .into_iter()
    .enumerate()
    {
        let mut b = Vec::new();
        MessageWriter::new(&mut b, m, Class::Request, [i as u8; 12])
            .u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .xor_addr(attr::XOR_PEER_ADDRESS, "203.0.113.1:9".parse().unwrap())
            .u32(attr::CHANNEL_NUMBER, 0x4001 << 16)
            .bytes(attr::USERNAME, b"1700003600:alice")
            .bytes(attr::REALM, b"r")
            .fingerprint();
        out.push(b);
    }
    out
}

/// `turn_server` programs (see its module): config bytes, then a client that allocates,
/// permits a peer, binds a channel, sends, gets the peer's answer, sends ChannelData, lets time
/// pass and refreshes; over UDP and over TCP.
fn turn_programs() -> Vec<Vec<u8>> {
    let program = |who: u8| {
        let ops: [&[u8]; 9] = [
            // op 1 (signed), method ALLOCATE, flags, txid, 1 attr: REQUESTED-TRANSPORT UDP;
            // then the relay bind's outcome (1: bound).
            &[1, who, 1, 0, 1, 1, 0, 17, 0, 0, 0, 1],
            // CREATE-PERMISSION for peer 0 (the SFU).
            &[1, who, 3, 0, 2, 1, 3, 0],
            // CHANNEL-BIND 0x4001 to peer 0.
            &[1, who, 4, 0, 3, 2, 2, 0x40, 0x01, 0, 0, 3, 0],
            // Send indication: peer 0, DATA "hello".
            &[1, who, 5, 1, 4, 2, 3, 0, 4, 5, b'h', b'e', b'l', b'l', b'o'],
            // The peer answers on the relay of allocation 0.
            &[3, who, 0, 0, 0, 5, b'w', b'o', b'r', b'l', b'd'],
            // ChannelData 0x4001 "data", raw.
            &[0, who, 0, 8, 0x40, 0x01, 0, 4, b'd', b'a', b't', b'a'],
            // One second passes.
            &[4, who, 0, 20],
            // REFRESH with LIFETIME 600.
            &[1, who, 2, 0, 5, 1, 1, 0, 0, 2, 0x58],
            // The stream client closes.
            &[5, who],
        ];
        [&[0u8, 0][..], &ops.concat()].concat()
    };
    vec![
        program(0),
        program(4),
        // A signed Binding request.
        vec![0, 0, 1, 0, 0, 0, 9, 0],
    ]
}

fn signaling_messages() -> Vec<Vec<u8>> {
    let token = JoinToken::new("appt-42", "dr-ana", Role::Doctor, 1_700_000_000, 600)
        .unwrap()
        .sign(b"0123456789abcdef0123456789abcdef")
        .unwrap();
    let sdp = offer_sdp();
    let messages = [
        serde_json::json!({"type": "join", "v": 1, "token": token, "client": {"sdk": "consulta-js/1", "ua": "Chromium", "heartbeat_ms": 5000}}),
        serde_json::json!({"type": "join", "v": 1, "token": token, "room": "appt-42"}),
        serde_json::json!({"type": "offer", "sdp": sdp}),
        serde_json::json!({"type": "answer", "sdp": sdp}),
        serde_json::json!({"type": "candidate", "candidate": "candidate:1 1 udp 2122260223 192.168.1.2 54321 typ host"}),
        serde_json::json!({"type": "mute", "kind": "video", "muted": true}),
        serde_json::json!({"type": "admit", "identity": "pt-42"}),
        serde_json::json!({"type": "recording-consent", "consent": true}),
        serde_json::json!({"type": "resume", "v": 1, "session_id": "s-1", "secret": "ab".repeat(32)}),
        serde_json::json!({"type": "restart-ice"}),
        serde_json::json!({"type": "ping"}),
        serde_json::json!({"type": "leave"}),
    ];
    messages
        .iter()
        .map(|m| m.to_string().into_bytes())
        .collect()
}

/// Programs of the `session` target: a frame is `[0, len_hi, len_lo, text...]`, the join
/// accepted `[2, in_call]`, admitted `[3]`, the session ended `[4]`, the context `[5, drain, doctor]`.
fn session_programs(messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let frame = |m: &[u8]| {
        let mut f = vec![0];
        f.extend_from_slice(&(m.len() as u16).to_be_bytes());
        f.extend_from_slice(m);
        f
    };
    // messages: 0 join, 1 join with room, 2 offer, 3 answer, 4 candidate, 5 mute, 6 admit,
    // 7 consent, 8 resume, 9 restart-ice, 10 ping, 11 leave.
    let seq = |parts: &[&[u8]]| parts.concat();
    let m = |i: usize| frame(&messages[i]);
    vec![
        // A doctor joins the call, negotiates, admits, mutes, leaves.
        seq(&[&[5, 0, 1], &m(0), &[2, 1], &m(2), &m(4), &m(6), &m(5), &m(9), &m(11)]),
        // A patient waits, consents, is admitted, answers, pings, joins twice.
        seq(&[&m(1), &[2, 0], &m(7), &m(2), &[3], &m(3), &m(10), &m(0)]),
        // Media before any join, a resume, then anything.
        seq(&[&m(2), &m(8), &m(0), &m(11)]),
        // A draining server refuses the join.
        seq(&[&[5, 1, 0], &m(0), &m(2)]),
        // The session ends under a participant in the call.
        seq(&[&m(0), &[2, 1], &[4], &m(2), &m(11)]),
    ]
}

/// A real offer of a str0m peer publishing audio and video.
fn offer_sdp() -> String {
    use str0m::media::{Direction, MediaKind};
    let mut rtc = str0m::Rtc::new(std::time::Instant::now());
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, _) = change.apply().expect("an offer");
    offer.to_sdp_string()
}

/// `join_token` inputs: [clock mode 0 = now][0 = raw token] + token, and
/// [0][1 = harness signs] + header length + header JSON + claims JSON.
fn tokens() -> Vec<Vec<u8>> {
    let now = 1_700_000_000;
    let claims = JoinToken::new("appt-42", "pt-7", Role::Patient, now, 600).unwrap();
    let plain = claims.sign(b"0123456789abcdef0123456789abcdef").unwrap();
    let named = claims
        .sign_with_kid(b"fedcba9876543210fedcba9876543210", Some("k1"))
        .unwrap();
    let mut out = vec![
        [&[0u8, 0][..], plain.as_bytes()].concat(),
        [&[0u8, 0][..], named.as_bytes()].concat(),
    ];
    for header in [
        r#"{"alg":"HS256","typ":"JWT"}"#,
        r#"{"alg":"HS256","kid":"k1"}"#,
    ] {
        let body = serde_json::to_string(&claims).unwrap();
        let mut s = vec![0u8, 1];
        s.extend_from_slice(&(header.len() as u16).to_be_bytes());
        s.extend_from_slice(header.as_bytes());
        s.extend_from_slice(body.as_bytes());
        out.push(s);
    }
    out
}

/// Packets of each codec as browsers packetize them, and the `recorder` programs that push
/// them (op: track | seq mode | ts mode; arrival delta; marker; u16 length; payload).
fn recorder_programs() -> (Vec<Vec<u8>>, Vec<u8>) {
    let vp8_key = [
        &[
            0x10u8, 0x50, 0x01, 0x00, 0x9D, 0x01, 0x2A, 0x00, 0x05, 0xD0, 0x02,
        ][..],
        &[0xAB; 40],
    ]
    .concat();
    let vp8_delta = vec![0x10, 0x31, 0x02, 0x00, 0xCD, 0xEF];
    let opus = vec![0x78, 0x0B, 0xE4, 0xC1, 0x36];
    let sps: &[u8] = &[
        0x67, 0x42, 0xc0, 0x1f, 0xd9, 0x00, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
        0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x24, 0x80,
    ];
    let pps: &[u8] = &[0x68, 0xcb, 0x83, 0xcb, 0x20];
    let mut stap = vec![0x78];
    for n in [sps, pps] {
        stap.extend_from_slice(&(n.len() as u16).to_be_bytes());
        stap.extend_from_slice(n);
    }
    let fu_start = vec![0x7C, 0x85, 0x88, 0x84, 0x00];
    let fu_end = vec![0x7C, 0x45, 0x21, 0x33];
    let vp9_key = vec![
        0x8E, 0x80, 0x01, 0x18, 0x01, 0x40, 0x01, 0xE0, 0x01, 0x01, 0x82, 0x49,
    ];
    // (track, ts step mode 1 = add u16, marker, payload)
    let packets: Vec<(u8, u16, bool, Vec<u8>)> = vec![
        (0, 960, true, opus.clone()),
        (1, 0, true, vp8_key),
        (3, 0, false, stap),
        (3, 0, false, fu_start),
        (3, 0, true, fu_end),
        (2, 0, true, vp9_key),
        (0, 960, true, opus.clone()),
        (1, 3000, true, vp8_delta.clone()),
        (0, 960, true, opus),
        (1, 3000, true, vp8_delta),
    ];
    let mut program = vec![0x0F];
    for (t, step, marker, p) in &packets {
        let op = if *step == 0 { *t } else { *t | 0x40 };
        program.push(op);
        if *step != 0 {
            program.extend_from_slice(&step.to_be_bytes());
        }
        program.push(20);
        program.push(u8::from(*marker));
        program.extend_from_slice(&(p.len() as u16).to_be_bytes());
        program.extend_from_slice(p);
    }
    program.extend_from_slice(&[0xF0, 0x03, 0xE8]);
    // The file those packets make, for the reader's corpus.
    let mut rec = Recorder::new(
        Vec::new(),
        [Codec::Opus, Codec::Vp8, Codec::Vp9, Codec::H264]
            .iter()
            .enumerate()
            .map(|(i, &codec)| TrackSpec {
                key: i as u64,
                codec,
                name: format!("t{i}"),
            })
            .collect(),
        1_000,
    );
    let (mut seq, mut ts, mut at) = ([0u16; 4], [0u32; 4], 1_000);
    for (t, step, marker, p) in &packets {
        let t = usize::from(*t);
        seq[t] = seq[t].wrapping_add(1);
        ts[t] += u32::from(*step);
        at += 20;
        rec.push(&RtpIn {
            key: t as u64,
            seq: seq[t],
            timestamp: ts[t],
            marker: *marker,
            payload: p,
            arrival_ms: at,
        })
        .unwrap();
    }
    let (file, _) = rec.finish(at + 1_000).unwrap();
    let mut audio_only = vec![0x01];
    audio_only.extend_from_slice(&program[1..]);
    (vec![program, audio_only], file)
}

/// `worker_rtp` programs: replayed datagrams (op 0), RTP on the video stream (op 3), frames
/// (op 4), mutes (5), keyframe requests and ICE restarts (6), time (7).
fn worker_programs(stun: &[Vec<u8>], dtls: &[Vec<u8>], srtp: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let raw = |d: &[u8]| {
        let mut s = vec![0u8];
        s.extend_from_slice(&(d.len() as u16).to_be_bytes());
        s.extend_from_slice(d);
        s
    };
    let mut replay = Vec::new();
    for d in stun.iter().chain(dtls).chain(srtp) {
        replay.extend(raw(d));
    }
    let vp8_key = [
        &[
            0x10u8, 0x50, 0x01, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01,
        ][..],
        &[0x5A; 60],
    ]
    .concat();
    let mut rtp = Vec::new();
    for (i, marker) in [(0u8, 16u8), (1, 16), (2, 0), (3, 16)] {
        // op 3 (video: bool 1), pt index i, flags (seq +1, ts +u16 on 1), payload.
        rtp.extend_from_slice(&[3, 1, i, 0x04 | marker, 0x0B, 0xB8]);
        rtp.extend_from_slice(&(vp8_key.len() as u16).to_be_bytes());
        rtp.extend_from_slice(&vp8_key);
    }
    let mut frames = vec![4, 1];
    let key = [
        &[0x10u8, 0x00, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01][..],
        &[0x33; 200],
    ]
    .concat();
    frames.extend_from_slice(&(key.len() as u16).to_be_bytes());
    frames.extend_from_slice(&key);
    frames.extend_from_slice(&[4, 0, 0, 5, 0x78, 1, 2, 3, 4, 7]);
    let control = vec![5, 1, 1, 7, 5, 1, 0, 7, 6, 0, 7, 6, 1, 7, 7, 7];
    vec![replay, rtp, frames, control]
}
