//! Simulcast, the IO side of [`crate::layers`]: which layer each incoming SSRC of a publisher's
//! video track is (its rid's place in the track's simulcast list, lowest first), the layers'
//! measured rates, and, every housekeeping round, each video consumer's layer from its
//! subscriber's downlink budget. Until a consumer has changed over, a keyframe of its track is
//! asked for (throttled). Each subscriber's downlink is told what its video would take one layer
//! up ([`Wanted`]): what str0m probes for, and pads to while a step up is waited for.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use str0m::media::{MediaKind, Mid, Rid, Rids};
use str0m::rtp::Ssrc;

use super::RouterHost;
use crate::bandwidth::Wanted;
use crate::forwarder::PauseCause;
use crate::layers::{Layers, Reason, MAX_LAYERS};
use crate::publish_layers::max_layer_for;
use crate::stats::LAYER_SLOTS;
use crate::transport::{ConsumerState, Transport, Wire};
use crate::PeerId;

/// A layer that sent nothing for this long is not flowing.
const ACTIVE_WITHIN: Duration = Duration::from_millis(1_000);
/// Rates are measured over at least this long.
const MEASURE_EVERY: Duration = Duration::from_millis(500);

/// The layers of one publisher track (one layer, 0, without simulcast).
#[derive(Debug, Default)]
pub(crate) struct ProducerLayers {
    pub ssrcs: [Option<Ssrc>; MAX_LAYERS],
    pub rids: [Option<Rid>; MAX_LAYERS],
    bytes: [u64; MAX_LAYERS],
    last_packet: [Option<Instant>; MAX_LAYERS],
    measured_at: Option<Instant>,
    /// What the selectors see: count, rates, activity.
    pub now: Layers,
    /// Which layers the publisher was asked to send (see `preference.rs`).
    pub published: crate::publish_layers::PublishedLayers,
    /// The layers are spatial layers of one stream (scalable VP9), not simulcast streams.
    pub spatial: bool,
}

impl ProducerLayers {
    /// The layer `ssrc` carries, if known.
    #[inline]
    pub fn layer_of(&self, ssrc: Ssrc) -> Option<u8> {
        self.ssrcs
            .iter()
            .position(|s| *s == Some(ssrc))
            .map(|l| l as u8)
    }

    /// Counts one packet of `layer` (no allocation: the hot path).
    #[inline]
    pub fn on_packet(&mut self, layer: u8, bytes: usize, at: Instant) {
        let l = usize::from(layer);
        self.bytes[l] += bytes as u64;
        self.last_packet[l] = Some(at);
    }

    /// Whether this track is sent as several layers (simulcast or spatial).
    pub fn is_simulcast(&self) -> bool {
        self.now.count > 1
    }

    /// A packet of one stream carries spatial layer `sid` (VP9 with layer indices): the track
    /// has at least `sid + 1` layers, each measured on its own. A keyframe's scalability
    /// structure says how many there are (`stated`): the publisher may have changed its mode
    /// (one layer while its room records). Not for simulcast streams (a track with rids keeps
    /// its layers by stream): None.
    #[inline]
    pub fn note_spatial(&mut self, sid: u8, stated: Option<u8>) -> Option<u8> {
        if usize::from(sid) >= MAX_LAYERS || self.rids.iter().any(Option::is_some) {
            return None;
        }
        match stated {
            Some(n) => {
                let n = n.clamp(sid + 1, MAX_LAYERS as u8);
                self.spatial = n > 1;
                self.now.count = n;
            }
            None if sid > 0 => {
                self.spatial = true;
                self.now.count = self.now.count.max(sid + 1);
            }
            None => {}
        }
        Some(sid)
    }

    /// The track's spatial layers end (a packet without VP9 layer indices: its publisher changed
    /// codec, or sends VP9 as one layer): one layer again. Nothing for other tracks.
    #[inline]
    pub fn end_spatial(&mut self) {
        if self.spatial {
            self.spatial = false;
            self.now.count = 1;
        }
    }

    /// Turns the byte counts into rates; once per [`MEASURE_EVERY`].
    fn measure(&mut self, now: Instant) {
        let Some(since) = self.measured_at else {
            self.measured_at = Some(now);
            self.bytes = [0; MAX_LAYERS];
            return;
        };
        let dt = now.saturating_duration_since(since);
        if dt < MEASURE_EVERY {
            return;
        }
        if self.spatial {
            // A spatial layer is forwarded with those below it: its rate is theirs too.
            for l in 1..MAX_LAYERS {
                self.bytes[l] += self.bytes[l - 1];
            }
        }
        for l in 0..MAX_LAYERS {
            let bps = self.bytes[l] * 8 * 1000 / (dt.as_millis() as u64).max(1);
            // Smoothed: a keyframe burst must not look like the layer's rate.
            self.now.bps[l] = if self.now.bps[l] == 0 {
                bps
            } else {
                (self.now.bps[l] * 3 + bps) / 4
            };
            self.now.active[l] = self.last_packet[l]
                .is_some_and(|t| now.saturating_duration_since(t) < ACTIVE_WITHIN);
            if !self.now.active[l] {
                self.now.bps[l] = 0;
            }
        }
        self.bytes = [0; MAX_LAYERS];
        self.measured_at = Some(now);
    }
}

/// Finds which producer and layer of `t` a new SSRC is, and remembers it. `None`: not ours.
pub(super) fn learn_ssrc(t: &mut Transport, ssrc: Ssrc) -> Option<(usize, u8)> {
    let (mid, rid) = {
        let mut api = t.rtc.direct_api();
        let s = api.stream_rx(&ssrc)?;
        (s.mid(), s.rid())
    };
    let i = t.producers.iter().position(|p| p.mid == mid)?;
    let listed: Vec<Rid> = match t.rtc.media(mid).map(|m| m.rids_rx()) {
        Some(Rids::Specific(v)) => v.clone(),
        _ => Vec::new(),
    };
    let p = &mut t.producers[i];
    let layer = match rid {
        None => 0,
        Some(rid) => match listed.iter().position(|r| *r == rid) {
            Some(l) => l,
            // A rid the SDP did not list: the next free place.
            None => p.layers.rids.iter().position(|r| r.is_none())?,
        },
    };
    if layer >= MAX_LAYERS {
        return None;
    }
    p.layers.ssrcs[layer] = Some(ssrc);
    p.layers.rids[layer] = rid;
    let count = listed.len().clamp(layer + 1, MAX_LAYERS) as u8;
    p.layers.now.count = p.layers.now.count.max(count);
    tracing::debug!(
        publisher = t.id,
        %mid,
        ?rid,
        listed = listed.len(),
        layer,
        count = p.layers.now.count,
        "stream learned"
    );
    Some((i, layer as u8))
}

impl<W: Wire> RouterHost<W> {
    /// Video consumers of simulcast tracks now, by the layer they receive (not yet one: not
    /// counted), then those paused (the consumers-per-layer gauge).
    pub(crate) fn layer_consumers(&self) -> [u64; LAYER_SLOTS] {
        let mut n = [0; LAYER_SLOTS];
        for t in self.transports.values() {
            for c in t
                .consumers
                .iter()
                .filter(|c| c.kind == MediaKind::Video && c.state == ConsumerState::Active)
            {
                let simulcast = self
                    .transports
                    .get(&c.source)
                    .and_then(|s| s.producers.iter().find(|p| p.mid == c.source_mid))
                    .is_some_and(|p| p.layers.is_simulcast());
                if !simulcast {
                    continue;
                }
                if c.forwarder.is_paused() {
                    n[MAX_LAYERS] += 1;
                } else if let Some(l) = c.switch.current() {
                    n[usize::from(l).min(MAX_LAYERS - 1)] += 1;
                }
            }
        }
        n
    }

    /// Bit `l` set: layer `l` of `publisher`'s track `mid` is the target of one of its
    /// consumers, or (the top layer) recorded. All layers when nothing says otherwise.
    pub(super) fn wanted_layers(&self, publisher: PeerId, mid: Mid) -> u8 {
        let Some(t) = self.transports.get(&publisher) else {
            return u8::MAX;
        };
        let Some(p) = t.producers.iter().find(|p| p.mid == mid) else {
            return u8::MAX;
        };
        if !p.layers.is_simulcast() {
            return u8::MAX;
        }
        let mut wanted = 0u8;
        let router = self.routers.get(&t.room);
        if router.is_some_and(|r| r.recording.is_some()) {
            wanted |= 1 << (p.layers.now.count - 1);
        }
        for q in router
            .map(|r| r.participants.as_slice())
            .unwrap_or_default()
        {
            let Some(tq) = self.transports.get(q) else {
                continue;
            };
            for c in tq.consumers.iter().filter(|c| {
                c.source == publisher && c.source_mid == mid && c.state == ConsumerState::Active
            }) {
                let target = c.switch.target().min(p.layers.now.count - 1);
                wanted |= if c.switch.is_restarting() {
                    // Any layer up to the target restores its picture (`Switch::restart`).
                    (2u8 << target) - 1
                } else {
                    1 << target
                };
            }
        }
        if wanted == 0 {
            u8::MAX
        } else {
            wanted
        }
    }

    /// Measures every publisher's layers and moves each video consumer of a simulcast track to
    /// the layer its subscriber's downlink budget allows.
    pub(super) fn select_layers(&mut self, now: Instant) {
        // Each simulcast track's layers, and its publisher's stated heights (how many).
        type Heights = ([u32; MAX_LAYERS], usize);
        let mut tracks: HashMap<(PeerId, Mid), (Layers, Heights)> = HashMap::new();
        for t in self.transports.values_mut() {
            for p in t
                .producers
                .iter_mut()
                .filter(|p| p.kind == MediaKind::Video)
            {
                p.layers.measure(now);
                if p.layers.is_simulcast() {
                    let n = t.video_heights.len().min(MAX_LAYERS);
                    let mut stated = [0; MAX_LAYERS];
                    stated[..n].copy_from_slice(&t.video_heights[..n]);
                    tracks.insert((t.id, p.mid), (p.layers.now, (stated, n)));
                }
            }
        }
        let mut keyframes: Vec<(PeerId, Mid)> = Vec::new();
        for t in self.transports.values_mut().filter(|t| t.connected) {
            let (audio, video) = super::allocation::receiving(t);
            let budget = t.downlink.video_budget_per_track(audio, video);
            let congested = t.downlink.is_congested(now);
            let cleared = t.downlink.take_cleared(now);
            if cleared {
                tracing::debug!(
                    subscriber = t.id,
                    "downlink cleared: failed trials forgiven"
                );
            }
            // The lowest layer's keyframe waits until the congested queue drained.
            let mut draining = t.downlink.is_draining(now);
            // What the subscriber's video takes one layer up, and with the step it waits for;
            // None as soon as one track's layers are unknown (HD is then wanted).
            let (mut known, mut waits) = (true, false);
            // Every counted video track at its lowest layer (and at least one); at the highest
            // it may take (none waits to go up, or is on its way to another layer).
            let (mut floor, mut tracks_at_floor) = (true, 0);
            let mut top = true;
            let (mut now_bps, mut next_bps, mut trial_bps) = (0, 0, 0);
            // Streams whose layer was cut just now: their retransmissions are dropped.
            let mut cut: Vec<Mid> = Vec::new();
            for c in t
                .consumers
                .iter_mut()
                .filter(|c| c.kind == MediaKind::Video && c.state == ConsumerState::Active)
            {
                let counted = !c.forwarder.is_paused_for(PauseCause::Mute)
                    && !c.forwarder.is_paused_for(PauseCause::Codec);
                let Some((layers, (stated, n))) = tracks.get(&(c.source, c.source_mid)) else {
                    known &= !counted;
                    floor &= !counted;
                    continue;
                };
                c.selector.set_forwarded(c.switch.current());
                if cleared {
                    c.selector.forgive();
                }
                let max = max_layer_for(c.video_size, &stated[..*n], layers.count);
                c.selector.set_max(max);
                // Paused for bandwidth: the layer stays until video resumes (then up only after
                // a trial at the layer it resumed on, not at once with what the pause saw).
                let paused = c.forwarder.is_paused_for(PauseCause::Bandwidth);
                let choice = if paused {
                    None
                } else if congested {
                    // A higher layer may still flow until the lowest one's keyframe.
                    if c.switch.is_switching() && c.switch.cut() {
                        cut.extend(c.mid);
                    }
                    c.selector.on_congestion(layers)
                } else {
                    c.selector.poll(now, budget, layers)
                };
                if let Some(choice) = choice {
                    tracing::debug!(
                        subscriber = t.id,
                        publisher = c.source,
                        layer = choice.layer,
                        reason = ?choice.reason,
                        cut = choice.cut,
                        budget,
                        rates = ?layers.bps,
                        "simulcast layer target"
                    );
                    c.switch.set_target(choice.layer);
                    if choice.cut && c.switch.cut() {
                        cut.extend(c.mid);
                    }
                    if choice.cut && choice.layer == 0 && !congested {
                        draining = t.downlink.on_cut_to_floor(now);
                    }
                    let counters = &mut self.counters;
                    match (choice.up, choice.reason) {
                        (_, Reason::Start) => {}
                        (true, _) => counters.layer_switches_up += 1,
                        (false, Reason::Bandwidth) => counters.layer_switches_down_bandwidth += 1,
                        (false, _) => counters.layer_switches_down_other += 1,
                    }
                }
                if c.switch.is_switching() && !c.forwarder.is_paused() && !draining {
                    keyframes.push((c.source, c.source_mid));
                }
                match c.selector.rates(layers) {
                    Some((now, next)) if counted => {
                        let waiting = c.selector.waiting_up().is_some();
                        // Held below the top by the subscriber's video size: the estimator
                        // keeps probing for HD (the next layer up is not wanted; without probes
                        // the estimate sinks to the small layer's rate, and a tile made large
                        // again would climb back for tens of seconds).
                        known &= c.selector.max() + 1 >= layers.count;
                        now_bps += now;
                        next_bps += next;
                        trial_bps += if waiting { next } else { now };
                        waits |= waiting;
                        top &= next == now && !waiting && c.switch.current() == c.selector.target();
                        if c.selector.target() == Some(0) && c.switch.current() == Some(0) {
                            tracks_at_floor += 1;
                        } else {
                            floor = false;
                        }
                    }
                    Some(_) => {}
                    None => {
                        known &= !counted;
                        floor &= !counted;
                        top &= !counted;
                    }
                }
            }
            for mid in cut {
                super::forward::forget_sent(&mut t.rtc, mid, self.limits.nack_history);
            }
            t.downlink.set_at_floor(now, floor && tracks_at_floor > 0);
            t.downlink.set_at_top(top);
            t.downlink.set_wanted(
                now,
                (known && next_bps > 0).then_some(Wanted {
                    now_bps,
                    next_bps,
                    trial_bps: waits.then_some(trial_bps),
                }),
            );
        }
        keyframes.sort_unstable();
        keyframes.dedup();
        for (source, mid) in keyframes {
            self.request_keyframe(source, mid);
        }
        self.publish_layers(now);
    }
}
