//! Forwarding: each RTP packet of a publisher goes to every consumer of its track (payload type
//! mapped, sequence numbers rewritten, video gated on keyframes) and to the room's recording tap;
//! keyframe requests go back to publishers, throttled.

use std::sync::Arc;
use std::time::Instant;

use str0m::media::{KeyframeRequestKind, MediaKind, Mid};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};

use str0m::format::Codec;

use super::{guarded, schedule, Recording, RouterHost, FORWARD_SAMPLES};
use crate::forwarder::{gates_on_keyframes, is_keyframe_start, Verdict};
use crate::layers::Admit;
use crate::transport::{track_kind, ConsumerState, Io, Transport, Wire};
use crate::PeerId;

impl<W: Wire> RouterHost<W> {
    /// Asks the publishers of every video track `subscriber` receives for a keyframe.
    pub(super) fn request_keyframes_for(&mut self, subscriber: PeerId) {
        let sources: Vec<(PeerId, Mid)> = self
            .transports
            .get(&subscriber)
            .map(|t| {
                t.consumers
                    .iter()
                    .filter(|c| c.state == ConsumerState::Active && c.kind == MediaKind::Video)
                    .map(|c| (c.source, c.source_mid))
                    .collect()
            })
            .unwrap_or_default();
        for (s, m) in sources {
            self.request_keyframe(s, m);
        }
    }

    /// Asks a publisher for a keyframe on one track, throttled.
    pub(super) fn request_keyframe(&mut self, publisher: PeerId, mid: Mid) {
        let now = Instant::now();
        let Some(t) = self.transports.get_mut(&publisher) else {
            return;
        };
        let Some(p) = t.producers.iter_mut().find(|p| p.mid == mid) else {
            return;
        };
        if p.kind != MediaKind::Video {
            return;
        }
        if !p.throttle.request(now) {
            self.counters.keyframe_requests_throttled += 1;
            return;
        }
        self.send_keyframe_request(publisher, mid);
    }

    /// Sends a PLI for one of `publisher`'s tracks.
    pub(super) fn send_keyframe_request(&mut self, publisher: PeerId, mid: Mid) {
        self.counters.keyframe_requests_sent += 1;
        // A simulcast track: only the layers someone waits for or receives (a keyframe of a
        // layer being left would flood the weak link the subscriber is leaving it for).
        let wanted = self.wanted_layers(publisher, mid);
        self.drive(publisher, |t, io| {
            let rids = t
                .producers
                .iter()
                .find(|p| p.mid == mid)
                .map(|p| p.layers.rids)
                .unwrap_or_default();
            let mut api = t.rtc.direct_api();
            if rids.iter().all(Option::is_none) {
                if let Some(rx) = api.stream_rx_by_mid(mid, None) {
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                }
            }
            for (l, rid) in rids.into_iter().enumerate() {
                let Some(rid) = rid else { continue };
                if wanted & (1 << l) == 0 {
                    continue;
                }
                if let Some(rx) = api.stream_rx_by_mid(mid, Some(rid)) {
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                }
            }
            t.drain(io)
        });
    }

    /// Sends one RTP packet of `src` to every consumer of its track.
    pub(super) fn forward(&mut self, src: PeerId, mut pkt: RtpPacket) {
        self.counters.rtp_in += 1;
        let Some(t) = self.transports.get_mut(&src) else {
            return;
        };
        let ssrc = pkt.header.ssrc;
        let found = t
            .producers
            .iter()
            .enumerate()
            .find_map(|(i, p)| p.layers.layer_of(ssrc).map(|l| (i, l)));
        // First packet of this SSRC: find its track (and layer) through str0m's receive stream.
        let Some((idx, layer)) = found.or_else(|| super::simulcast::learn_ssrc(t, ssrc)) else {
            self.counters.rtp_dropped_other += 1;
            return;
        };
        let producer = &mut t.producers[idx];
        let pt = *pkt.header.payload_type;
        let codec = producer.codecs[usize::from(pt & 0x7F)];
        // The publisher changed codec (the room asked it to): what follows starts at its
        // keyframe, and the recording starts a new segment in that codec.
        let switched = codec.is_some() && producer.codec.is_some() && producer.codec != codec;
        if codec.is_some() {
            producer.codec = codec;
        }
        // Scalable VP9: the layer is in each packet's descriptor. A packet without one (another
        // codec after a change, VP9 sent as one layer) ends the track's spatial layers; an
        // empty one (padding) says nothing.
        let vp9 = match codec {
            Some(Codec::Vp9) => crate::vp9::vp9_layer(&pkt.payload),
            _ => None,
        };
        let layer = match vp9 {
            Some(v) => producer
                .layers
                .note_spatial(v.sid, v.layers)
                .unwrap_or(layer),
            None => {
                if !pkt.payload.is_empty() {
                    producer.layers.end_spatial();
                }
                layer
            }
        };
        producer
            .layers
            .on_packet(layer, pkt.payload.len(), pkt.timestamp);
        let layer_count = producer.layers.now.count;
        let simulcast = layer_count > 1;
        let spatial = vp9.filter(|_| simulcast && producer.layers.spatial);
        // The recording takes the highest layer (all of a spatial stream's).
        let recorded = !simulcast || spatial.is_some() || layer + 1 == layer_count;
        let (mid, kind) = (producer.mid, producer.kind);
        // Its own audio tells how long its uplink's queue is (bandwidth/uplink.rs).
        if kind == MediaKind::Audio {
            t.downlink.on_own_audio(pkt.timestamp, pkt.time.as_micros());
        }
        // RED (audio): where its primary block starts, for subscribers (and the recorder) that
        // take the plain codec. Malformed RED is dropped.
        let red_primary = if producer.red & (1u128 << (pt & 0x7F)) != 0 {
            let Some(off) = crate::red::primary_offset(&pkt.payload) else {
                self.counters.rtp_dropped_other += 1;
                return;
            };
            Some(off)
        } else {
            None
        };
        let mut primary: Option<Arc<[u8]>> = None;
        // RED's newest redundant block (data, timestamp offset), for subscribers without RED.
        let mut redundant: Option<Option<(Arc<[u8]>, u32)>> = None;
        let keyframe = match (vp9, codec) {
            // The descriptor is already read.
            (Some(v), _) => v.keyframe,
            (None, Some(c)) if gates_on_keyframes(c) => is_keyframe_start(c, &pkt.payload),
            _ => true,
        };
        let room = t.room;
        if let Some(rec) = self
            .routers
            .get_mut(&room)
            .and_then(|r| r.recording.as_mut())
        {
            let muted = match kind {
                MediaKind::Audio => t.muted.audio,
                MediaKind::Video => t.muted.video,
            };
            if switched {
                let key = (t.id << 8) | idx as u64;
                rec.announced.retain(|k| *k != key);
            }
            // A muted track is not recorded either.
            if !muted && recorded {
                let payload = match red_primary {
                    Some(off) => primary
                        .get_or_insert_with(|| Arc::from(&pkt.payload[off..]))
                        .clone(),
                    None => pkt.payload.clone(),
                };
                tap(rec, t, idx, &pkt, payload);
            }
        }
        if switched {
            self.restart_track(src, mid, None);
        }
        let Some(router) = self.routers.get(&room) else {
            return;
        };
        // Video is kept for retransmissions unless there is no history to keep it in.
        let nackable = kind == MediaKind::Video && self.limits.nack_history > 0;
        // Forward what the receiver renders with; transport-level extensions are per hop.
        let ext = ExtensionValues {
            audio_level: pkt.header.ext_vals.audio_level,
            voice_activity: pkt.header.ext_vals.voice_activity,
            video_orientation: pkt.header.ext_vals.video_orientation,
            ..Default::default()
        };
        // The last subscriber gets the payload itself, the others a copy: in a 1:1 call
        // forwarding copies nothing (str0m keeps what it is given for retransmissions).
        let last = router.participants.iter().rposition(|q| *q != src);
        for (i, q) in router.participants.iter().enumerate() {
            if *q == src {
                continue;
            }
            let Some(tq) = self.transports.get_mut(q) else {
                continue;
            };
            let Some(c) = tq.consumers.iter_mut().find(|c| {
                c.source == src && c.source_mid == mid && c.state == ConsumerState::Active
            }) else {
                continue;
            };
            let Some(Some(out_pt)) = c.pts.get(pt) else {
                self.counters.rtp_dropped_other += 1;
                continue;
            };
            // Simulcast: one layer per subscriber, changed over at the target's keyframe.
            // Spatial layers: those up to the subscriber's, its last one marking the picture's
            // end.
            let mut changed_layer = false;
            let mut marker = pkt.header.marker;
            if simulcast {
                if c.switch.current().is_none() && c.selector.target().is_none() {
                    c.switch.set_target(c.switch.target().min(layer_count - 1));
                }
                let admit = match spatial {
                    Some(v) => {
                        let admit = c
                            .switch
                            .admit_spatial(layer, v.begin && layer == 0, keyframe);
                        if admit == Admit::Skip {
                            c.forwarder.skip(*pkt.seq_no);
                        }
                        marker |= c.switch.ends_picture(layer, v.end);
                        admit
                    }
                    None => c.switch.admit(layer, keyframe),
                };
                match admit {
                    Admit::Forward => {}
                    Admit::Switched => {
                        tracing::debug!(
                            subscriber = *q,
                            publisher = src,
                            layer,
                            "simulcast layer changed over"
                        );
                        c.forwarder.rebase();
                        changed_layer = true;
                    }
                    Admit::Skip => {
                        self.counters.layer_skipped += 1;
                        continue;
                    }
                }
            }
            // Without RED, the subscriber gets RED's redundancy as copies (red.rs): as much
            // audio again, so not while its link drops heavily. While its video is paused for
            // bandwidth they go on: audio is then all it gets, and on a lossy link every lost
            // packet without a copy is concealed.
            c.forwarder.set_copies(
                red_primary.is_some()
                    && c.pts.unwraps_red(pt)
                    && !tq.downlink.is_congested(pkt.timestamp),
            );
            let out_seq = match c.forwarder.on_packet(*pkt.seq_no, keyframe) {
                Verdict::Forward(s) => s,
                Verdict::WaitKeyframe => {
                    self.counters.rtp_dropped_waiting_keyframe += 1;
                    continue;
                }
                Verdict::TooOld | Verdict::Paused => {
                    self.counters.rtp_dropped_other += 1;
                    continue;
                }
            };
            let cmid = c.mid;
            // The copy slot before the packet: the newest redundant block (a copy of the packet
            // before), else the packet itself again (the slot must not be a gap). The receiver
            // keeps the first of two with one timestamp.
            let copy = c.forwarder.has_copies().then(|| {
                let (data, back) = redundant
                    .get_or_insert_with(|| {
                        crate::red::newest_redundant(&pkt.payload)
                            .map(|(back, r)| (Arc::from(&pkt.payload[r]), back))
                    })
                    .clone()
                    .unwrap_or_else(|| {
                        let off = red_primary.unwrap_or(0);
                        let p = primary.get_or_insert_with(|| Arc::from(&pkt.payload[off..]));
                        (p.clone(), 0)
                    });
                RtpWrite::new(
                    out_pt.into(),
                    (out_seq - 1).into(),
                    pkt.header.timestamp.wrapping_sub(back),
                    pkt.timestamp,
                    data,
                )
                .ext_vals(ext.clone())
            });
            let mut payload = match red_primary {
                // The primary block alone, made once per packet for all who need it.
                Some(off) if c.pts.unwraps_red(pt) => primary
                    .get_or_insert_with(|| Arc::from(&pkt.payload[off..]))
                    .clone(),
                _ if Some(i) == last => std::mem::take(&mut pkt.payload),
                _ => pkt.payload.clone(),
            };
            let mut timestamp = pkt.header.timestamp;
            if simulcast && spatial.is_none() {
                timestamp = c.switch.timestamp(timestamp, pkt.timestamp);
                if codec == Some(Codec::Vp8) {
                    if c.switch.rewrites() {
                        // In place when the payload is ours alone (the last subscriber's, unless
                        // recorded), else on a copy.
                        c.switch
                            .rewrite_vp8(Arc::make_mut(&mut payload), changed_layer);
                    } else {
                        c.switch.note_vp8(&payload);
                    }
                }
            }
            let write = RtpWrite::new(
                out_pt.into(),
                out_seq.into(),
                timestamp,
                pkt.timestamp,
                payload,
            )
            .marker(marker)
            .ext_vals(ext.clone())
            .nackable(nackable);
            let io = &mut Io {
                wire: &self.wire,
                counters: &mut self.counters,
                outbox: &mut self.outbox,
            };
            let due = pkt.timestamp;
            let sent = guarded(tq, io, |tq, _| {
                let Some(cmid) = cmid else { return Ok(None) };
                let mut api = tq.rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(cmid, None) else {
                    return Ok(None);
                };
                let ssrc = *tx.ssrc();
                // The copy first: str0m's sender reports map the last written timestamp.
                if let Some(copy) = copy {
                    tx.write_rtp(copy);
                }
                tx.write_rtp(write);
                // str0m sends the packet only once a timeout has stamped it: no output to poll
                // now. The subscriber's timer is due at once; it fires (with one output poll
                // for every packet written to this subscriber meanwhile) before the next send.
                tq.next_timeout = tq.next_timeout.min(due);
                Ok(Some(ssrc))
            });
            if let Some(Some(ssrc)) = sent {
                if self.outbox.pacer.wants() {
                    self.outbox
                        .pacer
                        .record(ssrc, out_seq as u16, Instant::now());
                }
                self.counters.rtp_forwarded += 1;
                if self.forwarded_arrivals.len() < FORWARD_SAMPLES {
                    self.forwarded_arrivals.push(pkt.timestamp);
                }
            }
            schedule(&mut self.timers, tq);
        }
    }
}

/// Hands one packet to a room's recorder, with `payload` (the primary block of RED, else the
/// packet's own): never blocks; a full queue drops and counts.
fn tap(rec: &mut Recording, t: &Transport, idx: usize, pkt: &RtpPacket, payload: Arc<[u8]>) {
    let Some(p) = t.producers.get(idx) else {
        return;
    };
    let key = (t.id << 8) | idx as u64;
    if !rec.announced.contains(&key) {
        let track = crate::TapEvent::Track {
            key,
            peer: t.id,
            mid: p.mid,
            identity: t.identity.clone(),
            role: t.role.clone(),
            kind: track_kind(p.kind),
            codec: p.codec,
        };
        if rec.tap.tx.try_send(track).is_err() {
            rec.tap
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        rec.announced.push(key);
    }
    let packet = crate::TapEvent::Packet {
        key,
        seq: pkt.header.sequence_number,
        timestamp: pkt.header.timestamp,
        marker: pkt.header.marker,
        payload,
        arrival: pkt.timestamp,
    };
    if rec.tap.tx.try_send(packet).is_err() {
        rec.tap
            .dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How long str0m keeps a sent video packet for retransmission, and the share of retransmitted
/// bytes over which it drops queued resends: its defaults, which [`forget_sent`] keeps.
const RTX_CACHE_AGE: std::time::Duration = std::time::Duration::from_secs(3);
const RTX_RATIO_CAP: f32 = 0.15;

/// Empties what the subscriber's stream `mid` keeps for retransmission (str0m answers the
/// subscriber's NACKs from it; it starts again with the next packet written). Called when the
/// layer that stream carried is cut for a congested downlink, or its video paused for one: the
/// packets sent before are of frames the subscriber no longer needs (what it decodes next is a
/// keyframe), and on the link that caused the change their retransmissions would queue in front
/// of that keyframe and of the audio. Measured in the weak-network scenario b (2.5 Mbit/s to
/// 400 kbit/s): after the cut to the lowest layer the queue toward the patient stayed full for
/// 2.4 s, and its video froze three more times.
pub(super) fn forget_sent(rtc: &mut str0m::Rtc, mid: Mid, nack_history: usize) {
    if nack_history == 0 {
        return;
    }
    if let Some(tx) = rtc.direct_api().stream_tx_by_mid(mid, None) {
        tx.set_rtx_cache(nack_history, RTX_CACHE_AGE, Some(RTX_RATIO_CAP));
    }
}
