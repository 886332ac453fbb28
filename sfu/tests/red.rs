//! Redundant audio (RFC 2198 RED) through the SFU, without sockets: a publisher that offers RED
//! sends it; a subscriber that took RED gets it as sent and recovers a lost packet from the
//! next one; a subscriber that did not (Firefox) gets the primary block under plain Opus, byte
//! for byte, each after a copy of the packet before (RED's redundant block) under a sequence
//! number of its own: it recovers a lost packet from the next one too.

mod harness;

use harness::Net;
use str0m::format::Codec;
use str0m::media::{MediaKind, MediaTime};

fn opus_frame(n: u32) -> Vec<u8> {
    let mut f = vec![0x78u8; 160];
    f[..4].copy_from_slice(&n.to_be_bytes());
    f
}

fn frame_numbers(net: &Net, i: usize) -> Vec<u32> {
    let mut got: Vec<u32> = net
        .received(i, MediaKind::Audio)
        .iter()
        .map(|m| {
            assert_eq!(m.data.len(), 160, "an Opus frame, not a RED payload");
            u32::from_be_bytes(m.data[..4].try_into().unwrap())
        })
        .collect();
    got.sort_unstable();
    got.dedup();
    got
}

/// The payload type client `i` receives `codec` (or RED around it) on.
fn pt_of(net: &Net, i: usize, red: bool) -> u8 {
    let cfg = net.clients[i].rtc.codec_config();
    let opus = cfg
        .params()
        .iter()
        .find(|p| p.spec().codec == Codec::Opus)
        .expect("opus");
    if red {
        *opus.red().expect("RED negotiated")
    } else {
        *opus.pt()
    }
}

#[test]
fn red_reaches_who_took_it_and_its_primary_who_did_not() {
    let mut net = Net::new(5);
    let doctor = net.join_red("room-red", "doctor", true, true);
    let with_red = net.join_red("room-red", "patient", true, false);
    let plain = net.join_red("room-red", "guest", false, false);
    net.until(10, "all connected", |n| {
        n.clients.iter().all(|c| c.connected)
    });
    net.until(10, "consumer offers", |n| {
        [with_red, plain].iter().all(|&i| n.clients[i].offered(2))
    });
    net.settle(20);
    assert!(
        net.clients[doctor]
            .answers
            .iter()
            .any(|sdp| sdp.contains("red/48000/2")),
        "the server accepts RED from a publisher that offers it"
    );
    let red_pt = pt_of(&net, with_red, true);
    let plain_pt = pt_of(&net, plain, false);

    let frames = 40u32;
    for n in 0..frames {
        net.write(
            doctor,
            MediaKind::Audio,
            Codec::Opus,
            MediaTime::from_millis(20 * u64::from(n)),
            &opus_frame(n),
        );
        if n == 20 {
            // Frame 20 is lost on both downlinks (to the plain subscriber, with the copy of 19
            // that went out before it).
            net.deliver_from(doctor, std::time::Instant::now());
            assert_eq!(net.lose_queued_rtp(with_red, Some(red_pt), 150), 1);
            assert_eq!(net.lose_queued_rtp(plain, Some(plain_pt), 150), 2);
        }
        net.settle(3);
    }
    net.until(5, "audio arrives", |n| {
        frame_numbers(n, with_red).last() == Some(&(frames - 1))
            && frame_numbers(n, plain).last() == Some(&(frames - 1))
    });
    // RED went to the subscriber that took it: the lost frame was recovered from the next one.
    let all: Vec<u32> = (0..frames).collect();
    assert_eq!(frame_numbers(&net, with_red), all);
    // Plain Opus to the other: every frame too (20 from the copy sent before 21), byte for byte.
    assert_eq!(frame_numbers(&net, plain), all);
    // Frame n under its own number (2n + 1 from the first slot) and its copy under the next
    // one, both with frame n's timestamp: no gap, and nothing numbered twice.
    let received = net.received(plain, MediaKind::Audio);
    let first = received
        .iter()
        .map(|m| **m.seq_range.start())
        .min()
        .unwrap();
    let t0 = received
        .iter()
        .find(|m| m.data[..4] == [0; 4])
        .unwrap()
        .time;
    let mut seqs: Vec<u64> = Vec::new();
    for m in &received {
        let n = u32::from_be_bytes(m.data[..4].try_into().unwrap());
        assert_eq!(&*m.data, &opus_frame(n)[..]);
        let d = **m.seq_range.start() - first;
        let slots = [2 * u64::from(n) + 1, 2 * u64::from(n) + 2];
        assert!(
            slots.contains(&d) || (n == 0 && d == 0),
            "frame {n} under {d}"
        );
        let ms = (m.time.rebase(t0.frequency()).numer() - t0.numer()) * 1000
            / t0.frequency().get() as u64;
        assert_eq!(ms, 20 * u64::from(n), "frame {n}'s timestamp");
        seqs.push(d);
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs.len(),
        2 * frames as usize - 2,
        "every slot but the two lost: {seqs:?}"
    );
    seqs.dedup();
    assert_eq!(seqs.len(), 2 * frames as usize - 2, "each number once");
}
