//! # consulta-turn — the TURN/STUN server of Consulta
//!
//! Patients join consultations from hospital guest Wi-Fi, mobile carriers and corporate
//! networks that block UDP or everything but port 443. This crate relays their media: a TURN
//! server (RFC 8656) over UDP, TCP and TLS, with STUN (RFC 8489) Binding, long-term credentials
//! in coturn's REST scheme (minted by signaling with [`credentials`], checked here with no user
//! table), and a peer policy that lets a relay reach the SFU and nothing else unless configured.
//!
//! ```text
//!  browser ──UDP/TCP/TLS :3478/:5349──► io (tokio shell) ──► server::TurnServer (sans-IO core)
//!     ▲                                   │  one UDP relay socket        │ decisions: auth, quotas,
//!     │  Data indication / ChannelData    │  per allocation (relay_ip:0) │ permissions, channels,
//!     └───────────────────────────────────┴──────────────◄── peer (the SFU or another browser)
//! ```
//!
//! * [`stun`]: wire formats, parse without allocation, never panic ([`stun::fuzz_parse`]).
//! * [`server`]: the sans-IO core — bytes and time in, actions out; unit-tested without sockets.
//! * [`io`]: listeners, relay sockets, timers, TLS; [`TurnConfig`] and [`start`].
//! * [`auth`], [`policy`], [`allocation`], [`counters`], [`per_ip`]: credentials and nonces,
//!   the peer address policy (the SFU only, unless ranges are allowed), per-allocation state,
//!   every counter, and the per-source connection limit.
//!
//! In mediasoup's vocabulary this is a *Transport*-side helper: it never sees RTP, only the
//! datagrams a Transport exchanges with a browser that cannot reach the SFU directly.

pub mod allocation;
pub mod auth;
mod config;
pub mod counters;
pub mod io;
pub mod per_ip;
pub mod policy;
pub mod server;
pub mod stun;
mod tls;

pub use allocation::{AllocationId, ClientKey, Transport};
pub use auth::credentials;
pub use counters::{Counters, CountersSnapshot};
pub use io::{start, IceServer, TurnConfig, TurnError, TurnHandle};
pub use server::{ServerConfig, TurnServer};
