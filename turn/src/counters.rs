//! Every number the TURN server counts, in one place.
//!
//! Relaxed atomics so the metrics endpoint reads them without taking the server's lock; the
//! core and the IO shell both add to them. [`Counters::snapshot`] gives plain numbers.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters (relaxed atomics).
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of [`Counters`] at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
        pub struct CountersSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            pub fn snapshot(&self) -> CountersSnapshot {
                CountersSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    /// Allocations alive now.
    allocations_current,
    /// Allocations ever created.
    allocations_total,
    /// Packets and bytes relayed from clients to peers.
    to_peer_packets,
    to_peer_bytes,
    /// Packets and bytes relayed from peers to clients.
    to_client_packets,
    to_client_bytes,
    /// 401 answers to requests without credentials (the normal first round trip, not a failure).
    auth_challenges,
    /// MESSAGE-INTEGRITY did not verify under any configured secret.
    auth_bad_integrity,
    /// The credential's expiry time has passed.
    auth_expired,
    /// Username not in the REST format, or missing attributes.
    auth_malformed,
    /// Nonce expired, forged or minted for another client (438).
    auth_stale_nonce,
    /// A request used another username than the one that created its allocation (441).
    auth_wrong_credentials,
    /// Peers refused by policy (403 to CreatePermission or ChannelBind).
    permission_refusals,
    /// Allocations refused for quota (486): total, per user or per source IP.
    quota_refusals,
    /// TCP/TLS connections closed at accept: their source already had `max_connections_per_ip`.
    connection_refusals,
    /// TCP/TLS connections closed for holding no allocation after `auth_timeout`.
    auth_timeouts,
    /// Packets dropped because the allocation's bandwidth budget was spent.
    bandwidth_drops,
    /// Packets dropped for lack of a permission or channel.
    no_permission_drops,
    /// Packets for a stream client dropped because its send queue was full.
    client_queue_drops,
    /// Bytes that were neither STUN nor ChannelData, or did not parse.
    malformed_packets,
    /// Relay sockets that could not be opened (508).
    relay_bind_failures,
    /// Allocations refused (403) because the credential's user was revoked after it was
    /// minted (a kicked participant, an ended call).
    revoked_refusals,
}

impl Counters {
    /// Adds one.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn dec(c: &AtomicU64) {
        c.fetch_sub(1, Ordering::Relaxed);
    }
}
