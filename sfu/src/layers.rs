//! Simulcast for one video Consumer, as pure state machines (no sockets, no `Rtc`):
//!
//! - [`Selector`] picks the layer a subscriber should receive from its downlink budget and the
//!   publisher's layers (their measured rates, which ones flow) and the subscriber's preferred
//!   maximum: down at once when the layer it gets no longer fits (to one that fits with
//!   headroom), up one layer at a time when the next fits with headroom for [`UP_AFTER`], so a
//!   link at the edge does not flap.
//! - [`Switch`] carries the chosen layer to the packets: a consumer keeps receiving its current
//!   layer until a keyframe of the target layer arrives (the router asks for one), then changes
//!   over; outgoing RTP timestamps and VP8 picture ids (and TL0PICIDX) stay continuous across the
//!   change, as the layers of one camera are separate streams with their own bases. Sequence
//!   numbers are the [`Forwarder`](crate::forwarder::Forwarder)'s, rebased at the change.
//!
//! Layers are numbered from the lowest (0) in the order the publisher lists them (the SDK sends
//! 180p, 360p, 720p, low to high); a publisher without simulcast has one layer, 0. Scalable VP9
//! (spatial layers of one stream, [`crate::vp9`]) goes through the same selector; its switch
//! forwards every layer up to the current one ([`Switch::admit_spatial`]).

use std::time::{Duration, Instant};

/// Most layers a publisher's track may have.
pub const MAX_LAYERS: usize = 3;
/// A higher layer must fit this many times over (in percent) before the subscriber moves up.
pub const UP_HEADROOM_PERCENT: u64 = 120;
/// How long a higher layer must keep fitting with headroom before the subscriber moves up.
pub const UP_AFTER: Duration = Duration::from_secs(3);
/// A layer over the budget by more than this (in percent of it) stops at once when the
/// subscriber goes down for bandwidth, instead of flowing until the lower layer's keyframe.
pub const CUT_OVER_PERCENT: u64 = 150;
/// A wait to go up that ends because the higher layer stopped fitting is a failed trial (the
/// router has str0m pad up to the higher layer's rate while the selector waits, see
/// `Downlink::set_wanted`): on a link that cannot carry it, the padding filled its queue and
/// delayed audio. The next wait starts no sooner than this after the failure, doubled per
/// failure in a row up to [`TRIAL_BACKOFF_MAX`]; going up resets it, and so does a link that
/// cleared ([`Selector::forgive`]): a back-off earned while it was impaired.
pub const TRIAL_BACKOFF: Duration = Duration::from_secs(4);
/// The longest back-off (short enough that a link that recovered gets the higher layer within
/// ~15 s: this, then [`UP_AFTER`], then a keyframe).
pub const TRIAL_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How long to wait before the next trial after `failures` failed ones in a row (at least 1).
pub fn trial_backoff(failures: u32) -> Duration {
    TRIAL_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(8))
        .min(TRIAL_BACKOFF_MAX)
}

/// What is known about a publisher track's layers now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layers {
    /// How many layers the track has (1 without simulcast).
    pub count: u8,
    /// Measured rate of each layer, bits per second.
    pub bps: [u64; MAX_LAYERS],
    /// Whether each layer is flowing now.
    pub active: [bool; MAX_LAYERS],
}

/// Why the target layer changed (the label of the layer-switch metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The first choice for a new consumer.
    Start,
    /// The downlink budget fell below the current layer's rate.
    Bandwidth,
    /// The current layer stopped flowing.
    LayerGone,
    /// A higher layer fit with headroom long enough.
    Headroom,
    /// The subscriber's preferred maximum changed.
    Preference,
}

/// A change of target layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub layer: u8,
    pub up: bool,
    pub reason: Reason,
    /// Stop forwarding the current layer now ([`Switch::cut`]): it is so far over the budget
    /// that what is still sent of it only lengthens the queue in front of the new keyframe.
    pub cut: bool,
}

/// Picks one subscriber's layer of one publisher track.
#[derive(Debug, Clone)]
pub struct Selector {
    target: Option<u8>,
    /// The subscriber's preferred maximum layer.
    max: u8,
    /// Since when a higher layer has fit with headroom (and which).
    up_since: Option<(u8, Instant)>,
    /// The layer actually forwarded (the target's keyframe may not have come yet).
    forwarded: Option<u8>,
    /// Failed trials in a row, and when the next wait to go up may start.
    failed_trials: u32,
    retry_at: Option<Instant>,
}

impl Default for Selector {
    fn default() -> Self {
        Selector {
            target: None,
            max: (MAX_LAYERS - 1) as u8,
            up_since: None,
            forwarded: None,
            failed_trials: 0,
            retry_at: None,
        }
    }
}

impl Selector {
    pub fn target(&self) -> Option<u8> {
        self.target
    }

    /// The link drops heavily ([`crate::bandwidth::Downlink::is_congested`]): the lowest
    /// layer at once, the current one cut, whatever the estimate says yet. None when the
    /// target is already the lowest (the router cuts a higher layer still forwarded). A
    /// consumer congested before its first choice starts there too: without a target its
    /// switch forwards the top layer, which kept a link that dropped half of what it was sent
    /// congested for seconds (scenario e, `performance.md`).
    pub fn on_congestion(&mut self, layers: &Layers) -> Option<Choice> {
        let count = usize::from(layers.count.clamp(1, MAX_LAYERS as u8));
        let lowest = (0..count).find(|&l| layers.active[l])? as u8;
        if self.target.is_some_and(|t| t <= lowest) {
            return None;
        }
        let reason = match self.target {
            None => Reason::Start,
            Some(_) => Reason::Bandwidth,
        };
        self.target = Some(lowest);
        self.up_since = None;
        Some(Choice {
            layer: lowest,
            up: false,
            reason,
            cut: true,
        })
    }

    /// Tells which layer is forwarded now ([`Switch::current`]): a fall of the budget is
    /// judged against it, as it is what fills the link until the target's keyframe.
    pub fn set_forwarded(&mut self, layer: Option<u8>) {
        self.forwarded = layer;
    }

    /// The layer it waits to go up to: one that fits with headroom, not yet for [`UP_AFTER`].
    pub fn waiting_up(&self) -> Option<u8> {
        self.up_since.map(|(l, _)| l)
    }

    /// The rates (bits/s) of the target layer and of the layer one step up (the target's own at
    /// the top): what the subscriber receives and what it would. None before a target.
    pub fn rates(&self, layers: &Layers) -> Option<(u64, u64)> {
        let target = usize::from(self.target?);
        let count = usize::from(layers.count.clamp(1, MAX_LAYERS as u8));
        let top = (count - 1).min(usize::from(self.max));
        let now = layers.bps[target.min(MAX_LAYERS - 1)];
        let next = (target + 1..=top)
            .find(|&l| layers.active[l])
            .map_or(now, |l| layers.bps[l]);
        Some((now, next))
    }

    /// Ends a wait to go up because the higher layer stopped fitting: see [`TRIAL_BACKOFF`].
    fn trial_failed(&mut self, now: Instant) {
        if self.up_since.take().is_none() {
            return;
        }
        self.failed_trials = self.failed_trials.saturating_add(1);
        self.retry_at = Some(now + trial_backoff(self.failed_trials));
    }

    /// The subscriber's link cleared ([`crate::bandwidth::Downlink::take_cleared`]): trials that
    /// failed while it was impaired no longer hold the next one back.
    pub fn forgive(&mut self) {
        self.failed_trials = 0;
        self.retry_at = None;
    }

    /// The subscriber's preferred maximum layer.
    pub fn max(&self) -> u8 {
        self.max
    }

    /// Sets the subscriber's preferred maximum layer (e.g. from its video element's size).
    pub fn set_max(&mut self, max: u8) {
        self.max = max.min((MAX_LAYERS - 1) as u8);
    }

    /// Decides with the per-track video `budget` (bits/s; `None`: no estimate, take the best).
    /// Returns the new target when it changes.
    pub fn poll(&mut self, now: Instant, budget: Option<u64>, layers: &Layers) -> Option<Choice> {
        let count = usize::from(layers.count.clamp(1, MAX_LAYERS as u8));
        let top = (count - 1).min(usize::from(self.max));
        let available = |l: usize| l <= top && layers.active[l];
        let fits = |l: usize, headroom: u64| {
            budget.is_none_or(|b| layers.bps[l].saturating_mul(headroom) / 100 <= b)
        };
        let lowest = (0..=top).find(|&l| available(l));
        // Where to go down to: the highest available layer that fits with headroom (the link is
        // congested when this is asked: one change, not one per round of a falling estimate),
        // else the lowest that flows.
        let best = (0..=top)
            .rev()
            .find(|&l| available(l) && fits(l, UP_HEADROOM_PERCENT))
            .or(lowest);
        let Some(best) = best else {
            // Nothing flows: keep the target; a layer that comes back is taken again.
            self.up_since = None;
            return None;
        };
        let choose = |s: &mut Selector, layer: usize, reason: Reason| {
            let up = s.target.is_some_and(|t| layer > usize::from(t));
            s.target = Some(layer as u8);
            s.up_since = None;
            Some(Choice {
                layer: layer as u8,
                up,
                reason,
                cut: false,
            })
        };
        let Some(current) = self.target.map(usize::from) else {
            return choose(self, best, Reason::Start);
        };
        if current > top {
            return choose(self, best.min(top), Reason::Preference);
        }
        if !available(current) {
            return choose(self, best, Reason::LayerGone);
        }
        // The current layer stays while it fits at all (hysteresis against the headroom rule).
        if !fits(current, 100) && best < current {
            self.trial_failed(now);
            let sent = self
                .forwarded
                .map_or(current, |l| usize::from(l).min(MAX_LAYERS - 1));
            let far_over = budget.is_some_and(|b| {
                layers.bps[current]
                    .max(layers.bps[sent])
                    .saturating_mul(100)
                    > b.saturating_mul(CUT_OVER_PERCENT)
            });
            // Far over: the estimate is still falling and says little of what the link carries;
            // the lowest layer, at once, and up again from there with headroom.
            let to = if far_over {
                lowest.unwrap_or(best)
            } else {
                best
            };
            return choose(self, to, Reason::Bandwidth).map(|c| Choice { cut: far_over, ..c });
        }
        // Up: one layer at a time (an estimate that jumped with a lucky probe costs one layer,
        // not a flood), when it fits with headroom held for UP_AFTER; without an estimate,
        // straight to the top.
        let up = if budget.is_none() {
            (current + 1..=top).rev().find(|&l| available(l))
        } else {
            (current + 1..=top)
                .find(|&l| available(l))
                .filter(|&l| fits(l, UP_HEADROOM_PERCENT))
        };
        match (up, self.up_since) {
            (None, _) => {
                self.trial_failed(now);
                None
            }
            (Some(l), Some((was, since))) if usize::from(was) == l => {
                if now.duration_since(since) >= UP_AFTER {
                    let reason = if budget.is_none() {
                        Reason::Preference
                    } else {
                        Reason::Headroom
                    };
                    self.failed_trials = 0;
                    self.retry_at = None;
                    choose(self, l, reason)
                } else {
                    None
                }
            }
            (Some(l), _) => {
                if budget.is_none() {
                    return choose(self, l, Reason::Preference);
                }
                if self.retry_at.is_none_or(|r| now >= r) {
                    self.up_since = Some((l as u8, now));
                }
                None
            }
        }
    }
}

/// What [`Switch::admit`] says of one packet of layer `layer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Of the layer being forwarded: send it (mapped).
    Forward,
    /// The first packet of a new layer (its keyframe): rebase sequence numbers, then send it.
    Switched,
    /// Of another layer: not for this subscriber.
    Skip,
}

/// Per-consumer layer changeover with continuous timestamps and VP8 picture ids. Its first
/// target is the highest layer there may be (the router lowers it to the track's top).
#[derive(Debug, Clone)]
pub struct Switch {
    current: Option<u8>,
    target: u8,
    ts_offset: u32,
    pid_offset: u16,
    tl0_offset: u8,
    /// Last outgoing RTP timestamp, with the arrival of its packet.
    last_ts: Option<(u32, Instant)>,
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
    /// A changeover happened: picture ids need rewriting.
    rewriting: bool,
    /// The current layer was cut: nothing flows until a keyframe of the target.
    cut: bool,
    /// The first packet of a change is out; its timestamp offset is fixed.
    fresh: bool,
    /// The path was cut ([`Switch::restart`]): the first keyframe of any layer up to the target
    /// is taken.
    restarting: bool,
    /// The layers are spatial layers of one stream ([`Switch::admit_spatial`]).
    spatial: bool,
}

impl Default for Switch {
    fn default() -> Self {
        Switch {
            current: None,
            target: (MAX_LAYERS - 1) as u8,
            ts_offset: 0,
            pid_offset: 0,
            tl0_offset: 0,
            last_ts: None,
            last_pid: None,
            last_tl0: None,
            rewriting: false,
            cut: false,
            fresh: false,
            restarting: false,
            spatial: false,
        }
    }
}

/// The video clock rate of every codec the SDK sends.
const CLOCK_HZ: u64 = 90_000;

impl Switch {
    pub fn current(&self) -> Option<u8> {
        self.current
    }

    pub fn target(&self) -> u8 {
        self.target
    }

    /// Moves the target; packets of the current layer flow until the target's keyframe.
    pub fn set_target(&mut self, layer: u8) {
        self.target = layer;
    }

    /// Whether a keyframe of the target layer is awaited (the router asks for one). Spatial
    /// layers go down at the next picture without one.
    pub fn is_switching(&self) -> bool {
        if self.spatial {
            return self.cut || self.current.is_none_or(|c| c < self.target);
        }
        self.cut || self.current != Some(self.target)
    }

    /// Stops forwarding the current layer now, before the target's keyframe arrives (a
    /// congested downlink: the subscriber's video freezes until then, but nothing more of the
    /// layer it cannot carry queues in front of that keyframe). Only a layer above the target
    /// is cut: one at or below it fits, and flows on until the change (nothing to cut either
    /// before the first layer flows). Returns whether this call cut it (it was not cut yet).
    pub fn cut(&mut self) -> bool {
        let cut = !self.cut && self.current.is_some_and(|c| c > self.target);
        self.cut |= cut;
        cut
    }

    /// The path was cut mid-frame (the publisher's stream stopped and came back, or the
    /// subscriber's ICE did): the picture comes back with the first keyframe of any layer up to
    /// the target, and the target's keyframe follows as a normal change. After a network
    /// change the publisher's browser restarts its estimate low and may pause its top layer or
    /// be slow to send its keyframe (in the roaming test the side receiving the roaming
    /// publisher's video waited up to 2 s longer than the other); a lower layer's keyframe is
    /// small and comes first.
    pub fn restart(&mut self) {
        self.restarting = self.current.is_some();
    }

    /// Whether a keyframe of any layer up to the target is taken ([`Switch::restart`]).
    pub fn is_restarting(&self) -> bool {
        self.restarting
    }

    /// Decides for one packet of `layer`, `keyframe` if it starts a keyframe.
    pub fn admit(&mut self, layer: u8, keyframe: bool) -> Admit {
        if self.restarting && keyframe && layer <= self.target {
            self.restarting = false;
            self.cut = false;
            if self.current == Some(layer) {
                return Admit::Forward;
            }
            self.current = Some(layer);
            self.fresh = true;
            self.rewriting = true;
            return Admit::Switched;
        }
        if self.cut {
            if layer != self.target || !keyframe {
                return Admit::Skip;
            }
            // A change, even back to the layer that was cut: its packets were skipped.
            self.cut = false;
            self.current = Some(layer);
            self.fresh = true;
            self.rewriting = true;
            return Admit::Switched;
        }
        if self.current == Some(layer) && (layer == self.target || !keyframe) {
            return Admit::Forward;
        }
        if layer == self.target && keyframe {
            let first = self.current.is_none();
            self.current = Some(layer);
            self.fresh = true;
            if first {
                // The first layer of the consumer: its own bases, nothing rewritten.
                self.ts_offset = 0;
                self.pid_offset = 0;
                self.tl0_offset = 0;
                self.rewriting = false;
                return Admit::Forward;
            }
            self.rewriting = true;
            return Admit::Switched;
        }
        if self.current == Some(layer) {
            Admit::Forward
        } else {
            Admit::Skip
        }
    }

    /// Decides for one packet of a stream with spatial layers (VP9's `L3T3_KEY`): every layer
    /// up to the current one is forwarded. Up at a keyframe picture (`keyframe`: its first
    /// packet; the higher layers are predicted from the lower only there); down at the next
    /// picture (`picture_start`: the first packet of layer 0), as the lower layers never
    /// depend on the higher. A cut ([`Switch::cut`], a congested downlink) forwards nothing until
    /// the next keyframe picture, as with simulcast: the full queue has dropped packets of every
    /// layer, and their retransmissions would queue in front of the frames that follow.
    /// Timestamps and picture ids are the stream's own: nothing to rewrite. The caller leaves a
    /// skipped packet out of the numbering ([`crate::forwarder::Forwarder::skip`]) and marks
    /// the end of the current layer's frame as the end of the picture ([`Switch::ends_picture`]).
    pub fn admit_spatial(&mut self, layer: u8, picture_start: bool, keyframe: bool) -> Admit {
        self.spatial = true;
        if keyframe {
            self.restarting = false;
            self.cut = false;
            self.current = Some(self.target);
        } else if self.cut {
            return Admit::Skip;
        } else if picture_start && self.current.is_some_and(|c| c > self.target) {
            self.current = Some(self.target);
        }
        match self.current {
            Some(c) if layer <= c => Admit::Forward,
            _ => Admit::Skip,
        }
    }

    /// Whether a forwarded packet of a spatial `layer` that ends its layer's frame (`end`) ends
    /// the picture for this subscriber (the RTP marker): the publisher marks only the top
    /// layer's last packet.
    pub fn ends_picture(&self, layer: u8, end: bool) -> bool {
        end && self.current == Some(layer)
    }

    /// The outgoing timestamp of a forwarded packet that arrived at `arrival`.
    pub fn timestamp(&mut self, ts: u32, arrival: Instant) -> u32 {
        if self.fresh {
            self.fresh = false;
            if self.rewriting {
                // The new layer continues where the old one stopped, as far on as the wall
                // clock says (at least one tick, so the frame is never taken as a repeat).
                let out = match self.last_ts {
                    Some((last, at)) => {
                        let ms = arrival.saturating_duration_since(at).as_millis() as u64;
                        last.wrapping_add(((ms * CLOCK_HZ / 1000).max(1)) as u32)
                    }
                    None => ts,
                };
                self.ts_offset = out.wrapping_sub(ts);
            }
        }
        let out = ts.wrapping_add(self.ts_offset);
        match self.last_ts {
            // Only move forward (by wrapping distance): late packets do not pull the clock back.
            Some((last, _)) if out.wrapping_sub(last) > u32::MAX / 2 => {}
            _ => self.last_ts = Some((out, arrival)),
        }
        out
    }

    /// Notes the VP8 picture id and TL0PICIDX of a payload sent as it is (before any change),
    /// so that a later change continues from them.
    pub fn note_vp8(&mut self, payload: &[u8]) {
        let Some(at) = vp8_fields(payload) else {
            return;
        };
        if let Some((pos, wide)) = at.pid {
            self.last_pid = Some(read_pid(payload, pos, wide));
        }
        if let Some(pos) = at.tl0 {
            self.last_tl0 = Some(payload[pos]);
        }
    }

    /// Rewrites the VP8 payload descriptor's picture id and TL0PICIDX in place so they continue
    /// across changes (`switched`: the first packet of a change); only once [`Self::rewrites`].
    pub fn rewrite_vp8(&mut self, payload: &mut [u8], switched: bool) {
        let Some(at) = vp8_fields(payload) else {
            return;
        };
        if let Some((pos, wide)) = at.pid {
            let pid = read_pid(payload, pos, wide);
            let mask = if wide { 0x7FFF } else { 0x7F };
            if switched {
                self.pid_offset = self
                    .last_pid
                    .map_or(0, |l| l.wrapping_add(1).wrapping_sub(pid))
                    & mask;
            }
            let out = pid.wrapping_add(self.pid_offset) & mask;
            write_pid(payload, pos, wide, out);
            self.last_pid = Some(out);
        }
        if let Some(pos) = at.tl0 {
            let tl0 = payload[pos];
            if switched {
                self.tl0_offset = self
                    .last_tl0
                    .map_or(0, |l| l.wrapping_add(1).wrapping_sub(tl0));
            }
            let out = tl0.wrapping_add(self.tl0_offset);
            payload[pos] = out;
            self.last_tl0 = Some(out);
        }
    }

    /// Whether payloads must be rewritten (after the first change).
    pub fn rewrites(&self) -> bool {
        self.rewriting
    }
}

/// Where a VP8 payload descriptor keeps its picture id (position, 15-bit) and TL0PICIDX.
struct Vp8Fields {
    pid: Option<(usize, bool)>,
    tl0: Option<usize>,
}

fn vp8_fields(p: &[u8]) -> Option<Vp8Fields> {
    let b0 = *p.first()?;
    if b0 & 0x80 == 0 {
        return Some(Vp8Fields {
            pid: None,
            tl0: None,
        });
    }
    let x = *p.get(1)?;
    let mut at = 2;
    let mut pid = None;
    if x & 0x80 != 0 {
        let m = *p.get(at)?;
        let wide = m & 0x80 != 0;
        if wide {
            p.get(at + 1)?;
        }
        pid = Some((at, wide));
        at += if wide { 2 } else { 1 };
    }
    let mut tl0 = None;
    if x & 0x40 != 0 {
        p.get(at)?;
        tl0 = Some(at);
    }
    Some(Vp8Fields { pid, tl0 })
}

fn read_pid(p: &[u8], at: usize, wide: bool) -> u16 {
    if wide {
        (u16::from(p[at] & 0x7F) << 8) | u16::from(p[at + 1])
    } else {
        u16::from(p[at] & 0x7F)
    }
}

fn write_pid(p: &mut [u8], at: usize, wide: bool, pid: u16) {
    if wide {
        p[at] = 0x80 | ((pid >> 8) as u8 & 0x7F);
        p[at + 1] = pid as u8;
    } else {
        p[at] = pid as u8 & 0x7F;
    }
}

#[cfg(test)]
#[path = "layers_tests.rs"]
mod tests;
