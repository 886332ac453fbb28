//! What subscribers prefer and what publishers send, the IO side of [`crate::publish_layers`]:
//! a subscriber's `video-size` for a publisher's video caps the layer it is forwarded (its
//! selector's maximum, set each round in `simulcast.rs`), and every round each simulcast
//! publisher is told (`publish-layers`) to pause the layers above the highest any subscriber
//! may take (or the recorder, which takes the top), and to resume them when one may again.

use std::collections::HashMap;
use std::time::Instant;

use consulta_signaling::protocol::{ServerMessage, TrackKind};
use str0m::media::{MediaKind, Mid};

use super::RouterHost;
use crate::forwarder::PauseCause;
use crate::transport::{ConsumerState, Wire};
use crate::PeerId;

impl<W: Wire> RouterHost<W> {
    /// `peer` shows `identity`'s video at `size` (`None`: no preference). Unknown identities
    /// are ignored: the SDK states the size again when the track comes.
    pub(super) fn video_size(&mut self, peer: PeerId, identity: &str, size: Option<(u32, u32)>) {
        let Some(t) = self.transports.get_mut(&peer) else {
            return;
        };
        for c in t
            .consumers
            .iter_mut()
            .filter(|c| c.kind == MediaKind::Video && c.source_identity == identity)
        {
            c.video_size = size;
        }
    }

    /// Tells each simulcast publisher the highest layer to send: the highest any of its
    /// subscribers may take (held ones included: they are back within the grace period), the
    /// top while the room is recorded.
    pub(super) fn publish_layers(&mut self, now: Instant) {
        let mut wants: HashMap<(PeerId, Mid), u8> = HashMap::new();
        for t in self.transports.values() {
            for c in t.consumers.iter().filter(|c| {
                c.kind == MediaKind::Video
                    && c.state == ConsumerState::Active
                    && !c.forwarder.is_paused_for(PauseCause::Mute)
                    && !c.forwarder.is_paused_for(PauseCause::Codec)
            }) {
                let w = wants.entry((c.source, c.source_mid)).or_insert(0);
                *w = (*w).max(c.selector.max());
            }
        }
        for t in self.transports.values_mut() {
            let recorded = self
                .routers
                .get(&t.room)
                .is_some_and(|r| r.recording.is_some());
            let mut told = None;
            for p in t.producers.iter_mut().filter(|p| {
                // Spatial layers are one encoding: the SDK has no layer to pause.
                p.kind == MediaKind::Video && p.layers.is_simulcast() && !p.layers.spatial
            }) {
                let count = p.layers.now.count;
                let wanted = if recorded {
                    Some(count - 1)
                } else {
                    wants.get(&(t.id, p.mid)).copied()
                };
                if let Some(max) = p.layers.published.poll(now, wanted, count) {
                    told = Some(max);
                }
            }
            // The SDK publishes one camera track: one message covers it.
            if let Some(max_layer) = told {
                tracing::debug!(publisher = t.id, max_layer, "publish layers");
                self.counters.publish_layer_changes += 1;
                t.emit(
                    ServerMessage::PublishLayers {
                        kind: TrackKind::Video,
                        max_layer,
                    },
                    &mut self.outbox,
                );
            }
        }
    }
}
