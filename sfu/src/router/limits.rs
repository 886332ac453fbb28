//! What a worker admits and keeps per participant, from the server's `[media]` settings.

use std::time::Duration;

/// What a worker admits and keeps per participant. The defaults are the server's
/// (`media.max_publishers`, `media.nack_history`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most participants (each publishing) a room admits.
    pub max_publishers: usize,
    /// Sent video packets kept per subscribed track to answer NACKs (0: no retransmission;
    /// str0m keeps at least 10).
    pub nack_history: usize,
    /// How long a participant that lost its signaling or ICE path is held (`media.reconnect_grace`).
    pub reconnect_grace: Duration,
    /// Send-side bandwidth estimation toward each subscriber, and what it drives: the
    /// audio-only fallback and the caps asked of publishers (`media.bandwidth_estimation`).
    pub bwe: bool,
    /// Each publisher's audio and video in one stream of the subscriber's SDP, played in sync
    /// (`media.lip_sync`).
    pub lip_sync: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_publishers: 5,
            nack_history: 500,
            reconnect_grace: Duration::from_secs(20),
            bwe: true,
            lip_sync: false,
        }
    }
}
