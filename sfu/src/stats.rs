//! Counters, gauges and histograms of the media core, kept in one place.
//!
//! Workers count in plain integers on their own thread ([`LocalCounters`]) and publish into the
//! shared atomics of [`WorkerStats`] every 100 ms: no atomic or metric update per packet.
//! [`SfuStats`] is a snapshot of all workers for the metrics endpoint.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use str0m::format::Codec;

use crate::demux::DemuxStats;

/// Codec label values of the track gauges, in index order.
pub const CODEC_LABELS: [&str; 7] = ["opus", "vp8", "vp9", "h264", "av1", "other", "unknown"];

pub(crate) fn codec_index(codec: Option<Codec>) -> usize {
    match codec {
        Some(Codec::Opus) => 0,
        Some(Codec::Vp8) => 1,
        Some(Codec::Vp9) => 2,
        Some(Codec::H264) => 3,
        Some(Codec::Av1) => 4,
        Some(_) => 5,
        None => 6,
    }
}

/// Track gauges: `[direction: publish, subscribe][kind: audio, video][codec]`.
pub type TrackCounts = [[[u64; CODEC_LABELS.len()]; 2]; 2];

/// Histogram layouts: upper bounds of the buckets (the `+Inf` bucket is implicit).
pub const LOSS_BUCKETS: [f64; 8] = [0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25];
pub const RTT_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6];
pub const JITTER_BUCKETS: [f64; 8] = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16];
pub const CONNECT_BUCKETS: [f64; 9] = [0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0];
/// Time a forwarded packet spent in the server: from the kernel's receive timestamp to the
/// `sendmmsg` that sent the copy.
/// Time a sampled forwarded packet waits in str0m's pacer, seconds.
pub const PACER_DELAY_BUCKETS: [f64; 10] =
    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0];
/// A subscriber's downlink estimate, bits per second (observed once a second).
pub const BANDWIDTH_ESTIMATE_BUCKETS: [f64; 10] = [
    100e3, 200e3, 300e3, 500e3, 750e3, 1e6, 1.5e6, 2.5e6, 4e6, 6e6,
];
pub const FORWARD_DELAY_BUCKETS: [f64; 12] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_2, 0.000_3, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1,
];

/// A histogram one worker fills locally.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalHistogram<const N: usize> {
    /// Counts per bucket (non-cumulative) plus the overflow bucket at index N.
    counts: [u64; 16],
    sum_micros: u64,
}

impl<const N: usize> Default for LocalHistogram<N> {
    fn default() -> Self {
        LocalHistogram {
            counts: [0; 16],
            sum_micros: 0,
        }
    }
}

impl<const N: usize> LocalHistogram<N> {
    pub fn observe(&mut self, bounds: &[f64; N], value: f64) {
        let i = bounds.iter().position(|b| value <= *b).unwrap_or(N);
        self.counts[i] += 1;
        self.sum_micros += (value.max(0.0) * 1e6) as u64;
    }

    pub fn observe_duration(&mut self, bounds: &[f64; N], d: Duration) {
        self.observe(bounds, d.as_secs_f64());
    }
}

/// A histogram published by the workers.
#[derive(Debug, Default)]
pub struct SharedHistogram {
    counts: [AtomicU64; 16],
    sum_micros: AtomicU64,
}

impl SharedHistogram {
    fn publish<const N: usize>(&self, h: &mut LocalHistogram<N>) {
        for (shared, local) in self.counts.iter().zip(h.counts.iter_mut()) {
            if *local > 0 {
                shared.fetch_add(std::mem::take(local), Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add(std::mem::take(&mut h.sum_micros), Ordering::Relaxed);
    }

    fn add_to(&self, snap: &mut HistogramSnapshot) {
        for (i, c) in self.counts.iter().enumerate() {
            snap.counts[i] += c.load(Ordering::Relaxed);
        }
        snap.sum += self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
    }
}

/// A histogram summed over workers: non-cumulative counts per bucket (`bounds.len() + 1`
/// entries, the last one above every bound) and the sum of observations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub counts: [u64; 16],
    pub sum: f64,
}

/// Slots of the consumers-per-layer gauge: one per simulcast layer, then paused.
pub const LAYER_SLOTS: usize = crate::layers::MAX_LAYERS + 1;

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Counters one worker accumulates between two publications.
        #[derive(Debug, Default, Clone, Copy)]
        pub(crate) struct LocalCounters {
            $(pub $name: u64,)*
            pub loss_ingress: LocalHistogram<8>,
            pub loss_egress: LocalHistogram<8>,
            pub rtt: LocalHistogram<10>,
            pub jitter: LocalHistogram<8>,
            pub time_to_connect: LocalHistogram<9>,
            pub forward_delay: LocalHistogram<12>,
            pub pacer_delay: LocalHistogram<10>,
            pub bandwidth_estimate: LocalHistogram<10>,
        }

        /// One worker's published counters.
        #[derive(Debug, Default)]
        pub struct WorkerStats {
            pub alive: AtomicBool,
            /// The worker thread ended in a panic.
            pub dead: AtomicBool,
            /// Rooms and participants hosted now (gauges).
            pub rooms: AtomicU64,
            pub participants: AtomicU64,
            /// Time spent processing rather than waiting, nanoseconds.
            pub busy_nanos: AtomicU64,
            tracks: [[[AtomicU64; CODEC_LABELS.len()]; 2]; 2],
            /// Simulcast video consumers now, by the layer they receive, then paused (gauges).
            layer_consumers: [AtomicU64; LAYER_SLOTS],
            $(pub $name: AtomicU64,)*
            loss_ingress: SharedHistogram,
            loss_egress: SharedHistogram,
            rtt: SharedHistogram,
            jitter: SharedHistogram,
            time_to_connect: SharedHistogram,
            forward_delay: SharedHistogram,
            pacer_delay: SharedHistogram,
            bandwidth_estimate: SharedHistogram,
        }

        /// A snapshot of the whole SFU.
        #[derive(Debug, Default, Clone, PartialEq)]
        pub struct SfuStats {
            pub workers: u64,
            /// Workers whose thread ended in a panic.
            pub workers_dead: u64,
            pub rooms: u64,
            pub participants: u64,
            /// Busy nanoseconds per worker, by worker index.
            pub busy_nanos: Vec<u64>,
            pub tracks: TrackCounts,
            /// Simulcast video consumers by the layer they receive (0 lowest), then paused ones.
            pub layer_consumers: [u64; LAYER_SLOTS],
            pub datagrams_received: u64,
            pub datagrams_unroutable: u64,
            pub demux_queue_drops: u64,
            /// ICE-TCP connections routed (total), open now, frames dropped on a full worker queue.
            pub ice_tcp_sessions: u64,
            pub ice_tcp_open: u64,
            pub ice_tcp_drops: u64,
            /// ICE-TCP connections refused at accept (the connection cap was reached), and
            /// routed ones closed after sending nothing for the idle timeout.
            pub ice_tcp_refused: u64,
            pub ice_tcp_idle_closed: u64,
            /// The media UDP socket's queues and the datagrams the kernel dropped on it.
            pub udp_socket: crate::batch::SocketMemory,
            $(pub $name: u64,)*
            pub loss_ingress: HistogramSnapshot,
            pub loss_egress: HistogramSnapshot,
            pub rtt: HistogramSnapshot,
            pub jitter: HistogramSnapshot,
            pub time_to_connect: HistogramSnapshot,
            pub forward_delay: HistogramSnapshot,
            pub pacer_delay: HistogramSnapshot,
            pub bandwidth_estimate: HistogramSnapshot,
        }

        impl WorkerStats {
            pub(crate) fn publish(&self, c: &mut LocalCounters) {
                $(self.$name.fetch_add(std::mem::take(&mut c.$name), Ordering::Relaxed);)*
                self.loss_ingress.publish(&mut c.loss_ingress);
                self.loss_egress.publish(&mut c.loss_egress);
                self.rtt.publish(&mut c.rtt);
                self.jitter.publish(&mut c.jitter);
                self.time_to_connect.publish(&mut c.time_to_connect);
                self.forward_delay.publish(&mut c.forward_delay);
                self.pacer_delay.publish(&mut c.pacer_delay);
                self.bandwidth_estimate.publish(&mut c.bandwidth_estimate);
            }

            pub(crate) fn set_layer_consumers(&self, n: &[u64; LAYER_SLOTS]) {
                for (slot, v) in self.layer_consumers.iter().zip(n) {
                    slot.store(*v, Ordering::Relaxed);
                }
            }

            pub(crate) fn set_tracks(&self, t: &TrackCounts) {
                for (d, dir) in t.iter().enumerate() {
                    for (k, kind) in dir.iter().enumerate() {
                        for (c, n) in kind.iter().enumerate() {
                            self.tracks[d][k][c].store(*n, Ordering::Relaxed);
                        }
                    }
                }
            }
        }

        impl SfuStats {
            pub(crate) fn collect<'a>(workers: impl Iterator<Item = &'a WorkerStats>, demux: &DemuxStats) -> Self {
                let mut s = SfuStats {
                    datagrams_received: demux.datagrams.load(Ordering::Relaxed),
                    datagrams_unroutable: demux.unroutable.load(Ordering::Relaxed),
                    demux_queue_drops: demux.queue_drops.load(Ordering::Relaxed),
                    ..Default::default()
                };
                for w in workers {
                    s.workers += 1;
                    s.workers_dead += u64::from(w.dead.load(Ordering::Relaxed));
                    s.rooms += w.rooms.load(Ordering::Relaxed);
                    s.participants += w.participants.load(Ordering::Relaxed);
                    s.busy_nanos.push(w.busy_nanos.load(Ordering::Relaxed));
                    for (sum, v) in s.layer_consumers.iter_mut().zip(&w.layer_consumers) {
                        *sum += v.load(Ordering::Relaxed);
                    }
                    for d in 0..2 {
                        for k in 0..2 {
                            for c in 0..CODEC_LABELS.len() {
                                s.tracks[d][k][c] += w.tracks[d][k][c].load(Ordering::Relaxed);
                            }
                        }
                    }
                    $(s.$name += w.$name.load(Ordering::Relaxed);)*
                    w.loss_ingress.add_to(&mut s.loss_ingress);
                    w.loss_egress.add_to(&mut s.loss_egress);
                    w.rtt.add_to(&mut s.rtt);
                    w.jitter.add_to(&mut s.jitter);
                    w.time_to_connect.add_to(&mut s.time_to_connect);
                    w.forward_delay.add_to(&mut s.forward_delay);
                    w.pacer_delay.add_to(&mut s.pacer_delay);
                    w.bandwidth_estimate.add_to(&mut s.bandwidth_estimate);
                }
                s
            }
        }
    };
}

counters!(
    packets_in,
    bytes_in,
    packets_out,
    bytes_out,
    rtp_in,
    rtp_forwarded,
    rtp_dropped_waiting_keyframe,
    rtp_dropped_other,
    keyframe_requests_sent,
    keyframe_requests_throttled,
    nacks_from_subscribers,
    plis_from_subscribers,
    firs_from_subscribers,
    nacks_to_publishers,
    plis_to_publishers,
    firs_to_publishers,
    ice_connected,
    ice_connected_tcp,
    ice_connected_relay,
    ice_disconnected,
    send_errors,
    peer_panics,
    event_queue_overflows,
    joins,
    leaves,
    reconnects_started,
    reconnects_completed,
    reconnects_expired,
    ice_restarts,
    track_restarts,
    codec_switches,
    codec_pauses,
    bandwidth_pauses,
    bandwidth_resumes,
    layer_switches_up,
    layer_switches_down_bandwidth,
    layer_switches_down_other,
    layer_skipped,
    bandwidth_paused_seconds,
    remb_sent,
    bitrate_caps_sent,
    publish_layer_changes,
    unmutes_refused,
    candidates_refused,
    producers_refused,
    events_dropped,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_bucket_and_publish() {
        let mut h = LocalHistogram::<10>::default();
        h.observe(&RTT_BUCKETS, 0.0005);
        h.observe(&RTT_BUCKETS, 0.03);
        h.observe(&RTT_BUCKETS, 5.0);
        let shared = SharedHistogram::default();
        shared.publish(&mut h);
        let mut snap = HistogramSnapshot::default();
        shared.add_to(&mut snap);
        assert_eq!(snap.counts[0], 1);
        assert_eq!(snap.counts[4], 1); // <= 0.05
        assert_eq!(snap.counts[10], 1); // +Inf
        assert!((snap.sum - 5.0305).abs() < 1e-6);
        // Published values are taken: a second publish adds nothing.
        shared.publish(&mut h);
        let mut again = HistogramSnapshot::default();
        shared.add_to(&mut again);
        assert_eq!(again, snap);
    }
}
