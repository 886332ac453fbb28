//! RTP packetizers (the sender side): frames into packets as a browser sends them, with
//! arrival times.

use super::*;

#[derive(Clone)]
pub(crate) struct Pkt {
    pub(crate) key: u64,
    pub(crate) seq: u16,
    pub(crate) ts: u32,
    pub(crate) marker: bool,
    pub(crate) payload: Vec<u8>,
    pub(crate) arrival_ms: u64,
    /// (frame index, packet index within the frame), for picking losses.
    pub(crate) frame: usize,
    pub(crate) part: usize,
}

pub(crate) fn vp8_packets(frames: &[Vec<u8>], key: u64, seq0: u16, delay_ms: u64) -> Vec<Pkt> {
    let mut out = Vec::new();
    let mut seq = seq0;
    for (n, f) in frames.iter().enumerate() {
        let pid = (n as u16 + 1234) & 0x7FFF;
        let chunks: Vec<_> = f.chunks(MTU).collect();
        for (j, c) in chunks.iter().enumerate() {
            // X=1, S on the first packet; I=1 with a 15-bit PictureID.
            let mut p = vec![if j == 0 { 0x90 } else { 0x80 }, 0x80];
            p.extend_from_slice(&(0x8000 | pid).to_be_bytes());
            p.extend_from_slice(c);
            out.push(Pkt {
                key,
                seq,
                ts: (n as u32) * 3000 + 777_000,
                marker: j == chunks.len() - 1,
                payload: p,
                arrival_ms: START_MS + delay_ms + (n as u64 * 1000) / 30 + j as u64 / 3,
                frame: n,
                part: j,
            });
            seq = seq.wrapping_add(1);
        }
    }
    out
}

pub(crate) fn vp9_is_key(frame: &[u8]) -> bool {
    // Profile 0: frame_marker(2) profile(2) show_existing_frame(1) frame_type(1).
    frame[0] & 0xC0 == 0x80 && frame[0] & 0x0C == 0
}

pub(crate) fn vp9_packets(
    frames: &[Vec<u8>],
    key: u64,
    size: (u16, u16),
    delay_ms: u64,
) -> Vec<Pkt> {
    let mut out = Vec::new();
    let mut seq = 65_500u16; // wraps during the call
    for (n, f) in frames.iter().enumerate() {
        let pid = (n as u16 + 32_000) & 0x7FFF;
        let is_key = vp9_is_key(f);
        let chunks: Vec<_> = f.chunks(MTU).collect();
        for (j, c) in chunks.iter().enumerate() {
            let first = j == 0;
            let last = j == chunks.len() - 1;
            let mut b0 = 0x80; // I
            if !is_key {
                b0 |= 0x40; // P
            }
            if first {
                b0 |= 0x08; // B
            }
            if last {
                b0 |= 0x04; // E
            }
            if first && is_key {
                b0 |= 0x02; // V: scalability structure on key frames
            }
            let mut p = vec![b0];
            p.extend_from_slice(&(0x8000 | pid).to_be_bytes());
            if first && is_key {
                p.push(0x10); // N_S = 0 (one layer), Y = 1
                p.extend_from_slice(&size.0.to_be_bytes());
                p.extend_from_slice(&size.1.to_be_bytes());
            }
            p.extend_from_slice(c);
            out.push(Pkt {
                key,
                seq,
                ts: (n as u32)
                    .wrapping_mul(3000)
                    .wrapping_add(u32::MAX - 60_000),
                marker: last,
                payload: p,
                arrival_ms: START_MS + delay_ms + (n as u64 * 1000) / 30,
                frame: n,
                part: j,
            });
            seq = seq.wrapping_add(1);
        }
    }
    out
}

pub(crate) fn h264_packets(aus: &[Vec<Vec<u8>>], key: u64, delay_ms: u64) -> Vec<Pkt> {
    let mut out = Vec::new();
    let mut seq = 100u16;
    for (n, au) in aus.iter().enumerate() {
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        let mut stap: Vec<&Vec<u8>> = Vec::new();
        let flush = |stap: &mut Vec<&Vec<u8>>, payloads: &mut Vec<Vec<u8>>| match stap.len() {
            0 => {}
            1 => payloads.push(stap.remove(0).clone()),
            _ => {
                let nri = stap.iter().map(|n| n[0] & 0x60).max().unwrap();
                let mut p = vec![nri | 24];
                for nal in stap.drain(..) {
                    p.extend_from_slice(&(nal.len() as u16).to_be_bytes());
                    p.extend_from_slice(nal);
                }
                payloads.push(p);
            }
        };
        for nal in au {
            if nal.len() > MTU {
                flush(&mut stap, &mut payloads);
                let (hdr, body) = (nal[0], &nal[1..]);
                let parts: Vec<_> = body.chunks(MTU).collect();
                for (j, part) in parts.iter().enumerate() {
                    let mut fu = hdr & 0x1F;
                    if j == 0 {
                        fu |= 0x80;
                    }
                    if j == parts.len() - 1 {
                        fu |= 0x40;
                    }
                    let mut p = vec![(hdr & 0xE0) | 28, fu];
                    p.extend_from_slice(part);
                    payloads.push(p);
                }
            } else {
                let pending: usize = stap.iter().map(|n| n.len() + 2).sum();
                if pending + nal.len() + 3 > MTU {
                    flush(&mut stap, &mut payloads);
                }
                stap.push(nal);
            }
        }
        flush(&mut stap, &mut payloads);
        let count = payloads.len();
        for (j, p) in payloads.into_iter().enumerate() {
            out.push(Pkt {
                key,
                seq,
                ts: (n as u32) * 3000,
                marker: j == count - 1,
                payload: p,
                arrival_ms: START_MS + delay_ms + (n as u64 * 1000) / 30,
                frame: n,
                part: j,
            });
            seq = seq.wrapping_add(1);
        }
    }
    out
}

pub(crate) fn opus_packets(frames: &[Vec<u8>], key: u64, delay_ms: u64) -> Vec<Pkt> {
    frames
        .iter()
        .enumerate()
        .map(|(n, f)| Pkt {
            key,
            seq: (n as u16).wrapping_add(9_000),
            ts: (n as u32) * 960 + 12_345,
            marker: n == 0,
            payload: f.clone(),
            // A little jitter: audio never arrives on an exact grid.
            arrival_ms: START_MS + delay_ms + n as u64 * 20 + (n as u64 * 7) % 5,
            frame: n,
            part: 0,
        })
        .collect()
}
