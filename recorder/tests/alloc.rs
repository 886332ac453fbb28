//! The steady-state hot path allocates nothing: after a warm-up, pushing packets (audio and
//! multi-packet video, clusters opening and closing) must not touch the allocator. Counted with
//! a wrapping global allocator, on this test's thread only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use consulta_recorder::{Codec, Recorder, RtpIn, TrackSpec};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if ARMED.with(|a| a.get()) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Counts bytes, stores nothing (a growing Vec would allocate on our behalf).
struct NullSink(u64);

impl Write for NullSink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Pkt {
    key: u64,
    seq: u16,
    ts: u32,
    marker: bool,
    payload: Vec<u8>,
    at: u64,
}

/// `secs` of one Opus track (20 ms) and one VP8 track (30 fps, 3 packets a frame, a keyframe
/// every second, as a bigger frame).
fn traffic(secs: u64) -> Vec<Pkt> {
    let mut v = Vec::new();
    for n in 0..secs * 50 {
        v.push(Pkt {
            key: 1,
            seq: n as u16,
            ts: (n * 960) as u32,
            marker: false,
            payload: vec![0xFC; 60 + (n % 7) as usize],
            at: n * 20,
        });
    }
    let mut seq = 0u16;
    for n in 0..secs * 30 {
        let key = n % 30 == 0;
        let parts = if key { 6 } else { 3 };
        for j in 0..parts {
            let mut p = vec![if j == 0 { 0x10 } else { 0x00 }];
            if j == 0 {
                p.extend_from_slice(&[if key { 0x50 } else { 0x51 }, 0x02, 0x00]);
                p.extend_from_slice(&[0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01]);
            }
            p.resize(900, 0x42);
            v.push(Pkt {
                key: 2,
                seq,
                ts: (n * 3000) as u32,
                marker: j == parts - 1,
                payload: p,
                at: n * 1000 / 30,
            });
            seq = seq.wrapping_add(1);
        }
    }
    v.sort_by_key(|p| p.at);
    v
}

#[test]
fn steady_state_push_does_not_allocate() {
    let pkts = traffic(20);
    let tracks = vec![
        TrackSpec {
            key: 1,
            codec: Codec::Opus,
            name: "a".into(),
        },
        TrackSpec {
            key: 2,
            codec: Codec::Vp8,
            name: "v".into(),
        },
    ];
    let mut rec = Recorder::new(NullSink(0), tracks, 0);
    let warmup = pkts.iter().position(|p| p.at >= 10_000).unwrap();
    let mut measured = 0;
    for (i, p) in pkts.iter().enumerate() {
        if i == warmup {
            ARMED.with(|a| a.set(true));
        }
        rec.push(&RtpIn {
            key: p.key,
            seq: p.seq,
            timestamp: p.ts,
            marker: p.marker,
            payload: &p.payload,
            arrival_ms: p.at,
        })
        .unwrap();
        if i % 5 == 0 {
            rec.tick(p.at).unwrap();
        }
        measured += usize::from(i >= warmup);
    }
    ARMED.with(|a| a.set(false));
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    println!("{allocations} allocations over {measured} packets");
    let (sink, summary) = rec.finish(20_000).unwrap();
    assert!(sink.0 > 1_000_000);
    assert_eq!(summary.frames[&2], 600);
    // The cue list grows by one entry a second (amortised doubling): at most a couple of
    // reallocations over 10 s; nothing per packet.
    assert!(
        allocations <= 2,
        "{allocations} allocations over {measured} packets"
    );
}
