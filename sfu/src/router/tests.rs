//! Router unit tests: participant isolation, with a wire that sends nothing.

use super::*;
use crate::PeerEvent;

/// A wire that sends nothing anywhere (router unit tests).
pub(crate) struct NullWire;
impl Wire for NullWire {
    fn send(&self, _: SocketAddr, data: &[u8]) -> std::io::Result<usize> {
        Ok(data.len())
    }
}

fn join(
    host: &mut RouterHost<NullWire>,
    peer: PeerId,
    identity: &str,
) -> tokio::sync::mpsc::Receiver<PeerEvent> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    host.on_command(Command::Join(JoinRequest {
        peer,
        room: "r".into(),
        identity: identity.into(),
        role: "guest".into(),
        events: tx,
    }));
    rx
}

#[test]
fn a_panic_closes_only_that_participant() {
    let advertised = Advertised {
        udp: vec!["127.0.0.1:7882".parse().unwrap()],
        ..Default::default()
    };
    let mut host = RouterHost::new(0, NullWire, advertised, Limits::default());
    let mut a = join(&mut host, 1, "a");
    let mut b = join(&mut host, 2, "b");
    let t = host.transports.get_mut(&2).unwrap();
    let io = &mut Io {
        wire: &host.wire,
        counters: &mut host.counters,
        outbox: &mut host.outbox,
    };
    let r: Option<()> = guarded(t, io, |_, _| panic!("injected"));
    assert!(r.is_none());
    host.process_outbox();
    assert_eq!(host.counters.peer_panics, 1);
    assert_eq!(host.participants(), 1);
    // The faulty participant is told and closed; the other one hears it left.
    let mut closed = None;
    while let Ok(ev) = b.try_recv() {
        if let PeerEvent::Closed(m) = ev {
            closed = Some(m);
        }
    }
    assert!(matches!(
        closed,
        Some(ServerMessage::Error {
            code: ErrorCode::InternalError,
            ..
        })
    ));
    let mut left = false;
    while let Ok(ev) = a.try_recv() {
        left |= matches!(ev, PeerEvent::Message(ServerMessage::ParticipantLeft { ref identity, .. }) if identity == "b");
    }
    assert!(left);
    // The worker goes on: a new participant can join the same room.
    let mut c = join(&mut host, 3, "c");
    assert!(matches!(
        c.try_recv(),
        Ok(PeerEvent::Message(ServerMessage::Joined { .. }))
    ));
    assert_eq!(host.participants(), 2);
}

#[test]
fn spatial_layers_follow_the_stream_and_its_scalability_structure() {
    use super::simulcast::ProducerLayers;
    let mut l = ProducerLayers::default();
    l.now.count = 1;
    // Layer 0 alone says nothing; a keyframe's structure of three layers does.
    assert_eq!(l.note_spatial(0, None), Some(0));
    assert!(!l.spatial);
    assert_eq!(l.note_spatial(0, Some(3)), Some(0));
    assert!(l.spatial);
    assert_eq!(l.now.count, 3);
    // A structure of one layer (the publisher now sends L1T3): one layer again.
    l.note_spatial(0, Some(1));
    assert!(!l.spatial);
    assert_eq!(l.now.count, 1);
    // Without a structure, a higher layer seen makes the count.
    l.note_spatial(1, None);
    assert!(l.spatial);
    assert_eq!(l.now.count, 2);
    l.end_spatial();
    assert!(!l.spatial);
    assert_eq!(l.now.count, 1);
    // Out of range, or a simulcast track: not spatial.
    assert_eq!(l.note_spatial(3, None), None);
    l.rids[0] = Some("q".into());
    assert_eq!(l.note_spatial(1, Some(3)), None);
    assert!(!l.spatial);
}
