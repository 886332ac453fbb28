//! Criterion benchmarks of the per-packet forwarding path.
//!
//! `forward/1x1` and `forward/1x4`: one encrypted RTP datagram from a publisher goes through
//! `RouterHost::on_datagram` — SRTP decrypt, routing, sequence rewrite, SRTP encrypt for each
//! subscriber, transmit into a counting wire — with real str0m peers set up in memory. Divide the
//! time per element by the subscriber count for the cost per forwarded packet. The subscribers
//! there are receive-only (a data channel in their offer, as the SDK's without a camera).
//! `forwarder/on_packet`: the pure per-consumer decision alone.
//!
//! With `CONSULTA_FORWARD_PACKETS=N` it skips Criterion and forwards N packets 1:1, the same
//! way, to a subscriber that publishes too, as in a consultation (or a receive-only one with
//! `CONSULTA_FORWARD_RECEIVE_ONLY=1`), then exits: a fixed workload for
//! `scripts/callgrind-forwarding.sh`, which counts the instructions per forwarded packet
//! (repeatable on a noisy machine, where times are not).

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use consulta_sfu::forwarder::{is_keyframe_start, Forwarder};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use harness::{vp8_frame, Net};
use str0m::format::Codec;
use str0m::media::{MediaKind, MediaTime};

const BATCH: usize = 64;

/// A publisher and `subscribers` others: receive-only ones (as the SDK joins without a camera:
/// a data channel keeps the offer valid), or ones that publish too, as in a consultation. What
/// the others publish is not sent during the measurement.
fn setup(subscribers: usize, publishing: bool) -> (Net, usize) {
    let mut net = Net::new(8);
    let a = net.join("bench", "pub", true);
    for i in 0..subscribers {
        net.join("bench", &format!("sub{i}"), publishing);
    }
    net.until(20, "all connected", |n| {
        n.clients.iter().all(|c| c.connected)
    });
    net.settle(30);
    net.write(
        a,
        MediaKind::Video,
        Codec::Vp8,
        MediaTime::from_90khz(0),
        &vp8_frame(true, 0, 1100),
    );
    net.settle(10);
    net.until(10, "subscribers receive", |n| {
        (1..=subscribers).all(|i| !n.received(i, MediaKind::Video).is_empty())
    });
    // From here on server output is only counted.
    net.wire.keep.set(false);
    (net, a)
}

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward");
    group.measurement_time(Duration::from_secs(8));
    for subs in [1usize, 4] {
        let (mut net, a) = setup(subs, false);
        let mut n = 1u32;
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(BenchmarkId::from_parameter(format!("1x{subs}")), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    publish_batch(&mut net, a, &mut n); // untimed: the publisher's side
                    let t0 = Instant::now();
                    server_round(&mut net, a);
                    spent += t0.elapsed();
                }
                spent
            })
        });
        let sent = net.wire.sent.get();
        assert!(sent > 0, "the server transmitted");
    }
    group.finish();
}

fn forwarder(c: &mut Criterion) {
    let payload = [0x90u8, 0x80, 0x12, 0x34, 0x11, 0, 0, 0];
    c.bench_function("forwarder/on_packet", |b| {
        let mut f = Forwarder::new(true, 100);
        f.on_packet(0, true);
        let mut seq = 1u64;
        b.iter(|| {
            let key = is_keyframe_start(Codec::Vp8, std::hint::black_box(&payload));
            seq += 1;
            std::hint::black_box(f.on_packet(seq, key))
        })
    });
}

/// `packets` single-packet VP8 frames from a publisher to one subscriber, in batches of
/// [`BATCH`], as `forward/1x1` does; the subscriber `publishing` too, or receive-only as there.
fn fixed(packets: usize, publishing: bool) {
    let (mut net, a) = setup(1, publishing);
    let before = net.wire.sent.get();
    let mut n = 1u32;
    for _ in 0..packets.div_ceil(BATCH) {
        publish_batch(&mut net, a, &mut n);
        server_round(&mut net, a);
    }
    // A path that stopped forwarding would look cheap to the instruction count: refuse it.
    let sent = net.wire.sent.get() - before;
    assert!(
        sent >= packets as u64,
        "only {sent} datagrams sent for {packets} packets"
    );
    println!("forwarded: {sent}");
}

/// The publisher encrypts [`BATCH`] single-packet VP8 frames, numbered on from `n`.
fn publish_batch(net: &mut Net, publisher: usize, n: &mut u32) {
    for _ in 0..BATCH {
        net.write_vp8(publisher, *n, false, 1100);
        *n += 1;
    }
}

/// What the server does for a batch: the datagrams in (decrypt, route, write to the
/// subscriber), then the subscriber's timeout (str0m sends a written packet only after one) and
/// output poll (encrypt, transmit). Not inlined: it is what the callgrind script collects, and
/// `fire_timers` alone is inlined into its caller, so a toggle on it would count nothing.
#[inline(never)]
fn server_round(net: &mut Net, from: usize) {
    net.deliver_from(from, Instant::now());
    net.host.fire_timers(Instant::now());
}

criterion_group!(benches, forward, forwarder);

fn main() {
    if let Some(packets) = std::env::var("CONSULTA_FORWARD_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        // A 1:1 consultation (both publish) unless told the subscriber only receives.
        let receive_only = std::env::var_os("CONSULTA_FORWARD_RECEIVE_ONLY").is_some();
        return fixed(packets, !receive_only);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
