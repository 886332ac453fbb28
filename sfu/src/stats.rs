//! Counters of the media core, kept in one place.
//!
//! Workers count in plain integers on their own thread ([`LocalCounters`]) and publish into the
//! shared atomics of [`WorkerStats`] every 100 ms: no atomic or metric update per packet.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::demux::DemuxStats;

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Counters one worker accumulates between two publications.
        #[derive(Debug, Default, Clone, Copy)]
        pub(crate) struct LocalCounters { $(pub $name: u64,)* }

        /// One worker's published counters.
        #[derive(Debug, Default)]
        pub struct WorkerStats {
            pub alive: AtomicBool,
            /// Rooms and participants hosted now (gauges).
            pub rooms: AtomicU64,
            pub participants: AtomicU64,
            $(pub $name: AtomicU64,)*
        }

        /// A snapshot of the whole SFU.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct SfuStats {
            pub workers: u64,
            pub rooms: u64,
            pub participants: u64,
            pub datagrams_received: u64,
            pub datagrams_unroutable: u64,
            pub demux_queue_drops: u64,
            $(pub $name: u64,)*
        }

        impl WorkerStats {
            pub(crate) fn publish(&self, c: &mut LocalCounters) {
                $(self.$name.fetch_add(std::mem::take(&mut c.$name), Ordering::Relaxed);)*
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
                    s.rooms += w.rooms.load(Ordering::Relaxed);
                    s.participants += w.participants.load(Ordering::Relaxed);
                    $(s.$name += w.$name.load(Ordering::Relaxed);)*
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
    send_errors,
    peer_panics,
    event_queue_overflows,
    joins,
    leaves,
);
