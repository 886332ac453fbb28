//! Consulta signaling: the wire protocol between the browser SDK and the server, and join tokens.
//!
//! This crate is pure: no sockets, no runtime. The `consulta` binary owns the WebSocket and feeds
//! frames through [`protocol::ClientMessage::parse`]; the media side never sees JSON.
//!
//! ```text
//! browser SDK (client/consulta.js) ──JSON over /ws──► ClientMessage ──► session (src/ws.rs)
//!                                  ◄──────────────── ServerMessage ◄──
//! Laravel app / `consulta token` ── JoinToken::sign ──► token ──► JoinToken::verify (on join)
//! ```
//!
//! The protocol is versioned (`join.v`, currently 1) and documented in `docs/protocol.md`.
//! Every error a client can meet has a stable [`ErrorCode`].

pub mod protocol;
pub mod session;
pub mod token;

pub use protocol::{ClientMessage, ErrorCode, ServerMessage, PROTOCOL_VERSION};
pub use token::{JoinToken, Role, TokenError, TokenKeys};
