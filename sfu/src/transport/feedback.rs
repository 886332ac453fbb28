//! What a transport's RTCP feedback tells, as str0m reports it: the estimate of the
//! participant's downlink and the TWCC feedback behind it (to its [`Downlink`]), and the
//! per-stream statistics (loss, round trip, jitter, NACK/PLI/FIR counts) for the metrics, the
//! quality assessment and the downlink's loss.
//!
//! [`Downlink`]: crate::bandwidth::Downlink

use std::time::Instant;

use str0m::bwe::BweKind;
use str0m::media::MediaKind;
use str0m::Event;

use super::{Transport, STREAM_STATS_EVERY};
use crate::stats::{LocalCounters, LocalHistogram, JITTER_BUCKETS, LOSS_BUCKETS, RTT_BUCKETS};

impl Transport {
    /// One of str0m's estimate or statistics events. Whether it found the downlink congested
    /// just now: the router then chooses layers at once, not at its next housekeeping.
    pub(super) fn on_feedback(&mut self, e: Event, c: &mut LocalCounters) -> bool {
        let now = Instant::now();
        let was = self.downlink.is_congested(now);
        match e {
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                self.downlink.on_estimate(now, estimate.as_u64());
                let used = self.downlink.estimate();
                tracing::trace!(
                    peer = self.id,
                    bps = estimate.as_u64(),
                    ?used,
                    "downlink estimate"
                );
            }
            Event::PeerStats(s) => {
                self.stats_tick = (self.stats_tick + 1) % STREAM_STATS_EVERY;
                let (loss, rtt, bwe) = (s.egress_loss_fraction, s.rtt, s.bwe_tx);
                // What was sent so far, in all (padding, retransmissions, RTCP too) and as RTP
                // payload: what fills a weak link, read off the log.
                tracing::trace!(
                    peer = self.id,
                    ?loss,
                    ?rtt,
                    ?bwe,
                    sent = s.peer_bytes_tx,
                    media = s.bytes_tx,
                    uplink = ?self.downlink.uplink_held(s.timestamp),
                    "TWCC feedback"
                );
                let current = bwe.map(|b| b.as_u64());
                self.downlink.on_feedback(s.timestamp, loss, rtt, current);
                // What its link lost of what the server sent it, and nothing else.
                self.quality.on_stats(loss, None);
            }
            Event::MediaIngressStats(_) | Event::MediaEgressStats(_) if self.stats_tick != 0 => {}
            Event::MediaIngressStats(s) => {
                let Some(p) = self.producers.iter_mut().find(|p| p.mid == s.mid) else {
                    return false;
                };
                let [n, pl, f] = p.feedback.advance(s.nacks, s.plis, s.firs);
                c.nacks_to_publishers += n;
                c.plis_to_publishers += pl;
                c.firs_to_publishers += f;
                self.quality.on_stats(s.loss, s.rtt);
                observe_quality(&mut c.loss_ingress, &mut c.rtt, s.loss, s.rtt);
                let clock = if p.kind == MediaKind::Audio {
                    48_000.0
                } else {
                    90_000.0
                };
                c.jitter
                    .observe(&JITTER_BUCKETS, f64::from(s.jitter) / clock);
            }
            Event::MediaEgressStats(s) => {
                let Some(k) = self.consumers.iter_mut().find(|k| k.mid == Some(s.mid)) else {
                    return false;
                };
                let [n, pl, f] = k.feedback.advance(s.nacks, s.plis, s.firs);
                c.nacks_from_subscribers += n;
                c.plis_from_subscribers += pl;
                c.firs_from_subscribers += f;
                // A receiver report counts the gaps of what it was forwarded, the publisher's
                // uplink losses too: while its transport-wide loss is known, that is its link's.
                let twcc = self.downlink.twcc_fresh(s.timestamp);
                self.quality.on_stats(s.loss.filter(|_| !twcc), s.rtt);
                observe_quality(&mut c.loss_egress, &mut c.rtt, s.loss, s.rtt);
                if let (MediaKind::Video, Some(loss)) = (k.kind, s.loss) {
                    tracing::trace!(peer = self.id, loss, "video receiver report");
                    self.downlink.on_report_loss(s.timestamp, loss);
                }
            }
            _ => {}
        }
        !was && self.downlink.is_congested(now)
    }
}

/// Cumulative RTCP feedback counts of one stream: str0m reports totals, metrics want deltas.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FeedbackCounts {
    nacks: u64,
    plis: u64,
    firs: u64,
}

impl FeedbackCounts {
    /// Records new totals and returns what was added since the last ones.
    fn advance(&mut self, nacks: u64, plis: u64, firs: u64) -> [u64; 3] {
        let added = [
            nacks.saturating_sub(self.nacks),
            plis.saturating_sub(self.plis),
            firs.saturating_sub(self.firs),
        ];
        *self = FeedbackCounts { nacks, plis, firs };
        added
    }
}

fn observe_quality(
    loss_hist: &mut LocalHistogram<8>,
    rtt_hist: &mut LocalHistogram<10>,
    loss: Option<f32>,
    rtt: Option<std::time::Duration>,
) {
    if let Some(loss) = loss {
        loss_hist.observe(&LOSS_BUCKETS, f64::from(loss));
    }
    if let Some(rtt) = rtt {
        rtt_hist.observe_duration(&RTT_BUCKETS, rtt);
    }
}
