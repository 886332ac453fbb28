//! Criterion benchmarks of what a join costs the media worker.
//!
//! `join/generate_certificate`: a DTLS certificate (key pair and self-signed certificate),
//! which str0m made inside every `Rtc` until the SFU made one at start. `join/new_rtc`: one
//! participant's str0m `Rtc` as `transport::new_rtc` builds it (ICE-lite,
//! candidates, BWE, DTLS identity). `join/router_join_leave`: a `Command::Join` through
//! `RouterHost::on_command` (room lookup, transport, demux registration, `joined` event) and
//! the `Command::Leave` that undoes it, so the room stays small. Both run on the worker thread
//! in production: whatever they cost delays every packet the worker forwards meanwhile.

use std::time::Instant;

use consulta_sfu::dtls_identity::DtlsIdentity;
use consulta_sfu::router::{Limits, RouterHost};
use consulta_sfu::transport::{new_rtc, Advertised, Wire};
use consulta_sfu::{Command, JoinRequest};
use consulta_signaling::protocol::LeaveReason;
use criterion::{criterion_group, criterion_main, Criterion};

struct NullWire;

impl Wire for NullWire {
    fn send(&self, _to: std::net::SocketAddr, data: &[u8]) -> std::io::Result<usize> {
        Ok(data.len())
    }
}

fn advertised() -> Advertised {
    Advertised {
        udp: vec!["127.0.0.1:7882".parse().unwrap()],
        ..Default::default()
    }
}

fn join(c: &mut Criterion) {
    let mut g = c.benchmark_group("join");
    let adv = advertised();
    // What str0m did inside every `new_rtc` before the SFU made one certificate at start.
    g.bench_function("generate_certificate", |b| {
        b.iter(|| DtlsIdentity::generate().unwrap())
    });
    g.bench_function("new_rtc", |b| {
        b.iter(|| new_rtc(&adv, 256, true, Instant::now()).unwrap())
    });
    let mut host = RouterHost::new(0, NullWire, advertised(), Limits::default());
    let mut peer = 0u64;
    g.bench_function("router_join_leave", |b| {
        b.iter(|| {
            peer += 1;
            let (tx, rx) = tokio::sync::mpsc::channel(256);
            host.on_command(Command::Join(JoinRequest {
                peer,
                room: "bench".into(),
                identity: format!("p{peer}"),
                role: "patient".into(),
                events: tx,
            }));
            host.on_command(Command::Leave {
                peer,
                reason: LeaveReason::Left,
            });
            rx
        })
    });
    g.finish();
}

criterion_group!(benches, join);
criterion_main!(benches);
