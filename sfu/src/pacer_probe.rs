//! How long str0m's pacer holds forwarded packets, sampled: with bandwidth estimation on, a
//! packet written to a subscriber's stream leaves only when the pacer releases it, and a
//! subscriber sent more than its estimate builds a queue there (str0m never drops). Every
//! [`EVERY`]th forwarded packet is remembered by (SSRC, sequence number, time written); the
//! datagram that carries it out (SRTP leaves the RTP header in the clear) gives the delay.
//! Pure and allocation-free: a fixed table of [`SLOTS`] probes, unit-tested without sockets.

use std::time::{Duration, Instant};

/// One forwarded packet in this many is probed.
pub const EVERY: u32 = 64;
/// Probes in flight at most (a probe whose packet never leaves is forgotten after [`EXPIRE`]).
pub const SLOTS: usize = 16;
/// A probe older than this is dropped (its subscriber left, or the packet was never sent).
pub const EXPIRE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
struct Probe {
    ssrc: u32,
    seq: u16,
    written: Instant,
}

/// A worker's probes.
#[derive(Debug, Default)]
pub struct PacerProbes {
    slots: [Option<Probe>; SLOTS],
    pending: usize,
    count: u32,
}

impl PacerProbes {
    /// A packet was written to a subscriber's stream: whether to probe it ([`Self::record`]).
    pub fn wants(&mut self) -> bool {
        self.count = self.count.wrapping_add(1);
        self.count.is_multiple_of(EVERY) && self.pending < SLOTS
    }

    /// Probes the packet `ssrc`/`seq`, written at `now`.
    pub fn record(&mut self, ssrc: u32, seq: u16, now: Instant) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.is_none()) {
            *slot = Some(Probe {
                ssrc,
                seq,
                written: now,
            });
            self.pending += 1;
        }
    }

    /// A datagram leaves at `now`: the delay of the probe it carries, if any.
    pub fn transmitted(&mut self, datagram: &[u8], now: Instant) -> Option<Duration> {
        if self.pending == 0 {
            return None;
        }
        let (ssrc, seq) = rtp_ids(datagram)?;
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.is_some_and(|p| p.ssrc == ssrc && p.seq == seq))?;
        let probe = slot.take()?;
        self.pending -= 1;
        Some(now.saturating_duration_since(probe.written))
    }

    /// Forgets probes older than [`EXPIRE`].
    pub fn expire(&mut self, now: Instant) {
        for slot in &mut self.slots {
            if slot.is_some_and(|p| now.saturating_duration_since(p.written) > EXPIRE) {
                *slot = None;
                self.pending -= 1;
            }
        }
    }

    pub fn pending(&self) -> usize {
        self.pending
    }
}

/// SSRC and sequence number of an RTP (or SRTP) packet; `None` for anything else (STUN, DTLS,
/// RTCP: payload types 64–95 with the marker bit are RTCP packet types 192–223).
fn rtp_ids(d: &[u8]) -> Option<(u32, u16)> {
    if d.len() < 12 || d[0] >> 6 != 2 || (192..=223).contains(&d[1]) {
        return None;
    }
    let seq = u16::from_be_bytes([d[2], d[3]]);
    let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
    Some((ssrc, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
        let mut d = vec![0x80, 96];
        d.extend_from_slice(&seq.to_be_bytes());
        d.extend_from_slice(&[0, 0, 0, 1]);
        d.extend_from_slice(&ssrc.to_be_bytes());
        d.extend_from_slice(&[0; 20]);
        d
    }

    #[test]
    fn every_64th_packet_is_timed_from_write_to_its_datagram() {
        let t0 = Instant::now();
        let mut p = PacerProbes::default();
        for seq in 1..=63u16 {
            if p.wants() {
                p.record(7, seq, t0);
            }
        }
        assert_eq!(p.pending(), 0);
        assert!(p.wants());
        p.record(7, 64, t0);
        assert_eq!(p.pending(), 1);
        // Other packets, RTCP and STUN pass without a match.
        assert_eq!(p.transmitted(&rtp(7, 63), t0), None);
        assert_eq!(p.transmitted(&rtp(8, 64), t0), None);
        let mut rtcp = rtp(7, 64);
        rtcp[1] = 200;
        assert_eq!(p.transmitted(&rtcp, t0), None);
        assert_eq!(p.transmitted(&[0, 1, 0, 0], t0), None);
        let d = p.transmitted(&rtp(7, 64), t0 + Duration::from_millis(120));
        assert_eq!(d, Some(Duration::from_millis(120)));
        assert_eq!(p.pending(), 0);
        assert_eq!(p.transmitted(&rtp(7, 64), t0), None, "once");
    }

    #[test]
    fn probes_are_bounded_and_expire() {
        let t0 = Instant::now();
        let mut p = PacerProbes::default();
        for i in 0..(EVERY * 40) {
            if p.wants() {
                p.record(1, i as u16, t0);
            }
        }
        assert_eq!(p.pending(), SLOTS);
        p.expire(t0 + EXPIRE);
        assert_eq!(p.pending(), SLOTS);
        p.expire(t0 + EXPIRE + Duration::from_millis(1));
        assert_eq!(p.pending(), 0);
        assert!(p.slots.iter().all(Option::is_none));
    }
}
