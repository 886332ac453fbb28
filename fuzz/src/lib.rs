//! Consulta's fuzz targets as plain functions (`run(&[u8])`), one module per target; the
//! `targets/*.rs` binaries wrap each in `afl::fuzz!`, and `replay` runs any of them over files
//! (seeds, crashes) without AFL. A structured target reads its operations from the input with
//! [`Input`], so AFL's byte mutations become sequences of well-formed and broken calls.
//!
//! Nothing here may catch a panic: a panic is the finding.

pub mod ice_tcp;
pub mod join_token;
pub mod layers;
pub mod recorder;
pub mod session;
pub mod signaling;
pub mod turn_server;
pub mod webm_scan;
pub mod worker_rtp;

/// Every target by name, for `replay` and `scripts/fuzz.sh --list`.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("stun_parse", consulta_turn::stun::fuzz_parse),
    ("turn_server", turn_server::run),
    ("ice_tcp", ice_tcp::run),
    ("signaling", signaling::run),
    ("session", session::run),
    ("join_token", join_token::run),
    ("recorder", recorder::run),
    ("webm_scan", webm_scan::run),
    ("worker_rtp", worker_rtp::run),
    ("layers", layers::run),
];

/// A cursor over fuzz input that never fails: past the end it yields zeros and empty slices,
/// so every input is a valid program.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        let (&b, rest) = self.data.split_first().unwrap_or((&0, &[]));
        self.data = rest;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length-prefixed (one byte) slice.
    pub fn short(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.bytes(n)
    }

    /// A length-prefixed (two bytes) slice.
    pub fn long(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.bytes(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    /// One of `items`, chosen by the next byte.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::from(self.u8()) % items.len()]
    }
}
