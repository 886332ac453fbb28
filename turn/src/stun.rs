//! STUN (RFC 8489) and TURN (RFC 8656) wire formats: message parsing and building, and the
//! ChannelData framing.
//!
//! Parsing borrows from the input and never allocates; building writes into a caller-owned
//! `Vec<u8>` so the relay path can reuse one buffer per task. Nothing here may panic on any
//! input: every length is checked before it is used (see [`fuzz_parse`] and the randomized test
//! in `tests/stun_fuzz.rs`). This module knows bytes only — no sockets, no clocks, no policy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

mod channel;
mod writer;

pub use channel::frame_len;
pub use channel::{fuzz_parse, write_channel_data, ChannelData};
pub use writer::MessageWriter;

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// The fixed value in bytes 4..8 of every RFC 5389/8489 message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN header.
pub const HEADER_LEN: usize = 20;
/// Size of the ChannelData header.
pub const CHANNEL_HEADER_LEN: usize = 4;
const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// The largest STUN message: the 16-bit length field, kept to a multiple of 4.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + 0xFFFC;
/// The largest frame a stream can carry (STUN or padded ChannelData); a stream reader's buffer
/// of this size always holds a whole frame.
pub const MAX_FRAME_LEN: usize = MAX_MESSAGE_LEN;

/// A 96-bit STUN transaction id.
pub type TransactionId = [u8; 12];

/// STUN and TURN methods (12 bits).
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types used by STUN and TURN.
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802A;
}

/// The class of a STUN message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// Encodes method and class into the 14-bit message type.
pub fn message_type(method: u16, class: Class) -> u16 {
    let c: u16 = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    let m = method & 0x0FFF;
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 0b01) << 4) | ((c & 0b10) << 7)
}

fn split_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let class = match ((t >> 4) & 0b01) | ((t >> 7) & 0b10) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

/// Why bytes are not a valid STUN message or ChannelData frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than a header")]
    TooShort,
    #[error("not a STUN message (first two bits, magic cookie)")]
    NotStun,
    #[error("length field does not match the data")]
    BadLength,
    #[error("attribute {0:#06x} overruns the message")]
    Truncated(u16),
    #[error("attribute {0:#06x} has an invalid value")]
    BadAttribute(u16),
    #[error("FINGERPRINT does not match")]
    BadFingerprint,
    #[error("attribute after FINGERPRINT")]
    AfterFingerprint,
    #[error("channel number outside 0x4000..=0x7FFF")]
    NotChannelData,
}

/// An ERROR-CODE attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode<'a> {
    pub code: u16,
    pub reason: &'a str,
}

/// Up to [`PeerAddrs::CAP`] XOR-PEER-ADDRESS attributes (CreatePermission may carry several).
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerAddrs {
    addrs: [Option<SocketAddr>; PeerAddrs::CAP],
    len: usize,
    /// More attributes than fit were present.
    pub overflow: bool,
}

impl PeerAddrs {
    pub const CAP: usize = 8;

    fn push(&mut self, a: SocketAddr) {
        if self.len < Self::CAP {
            self.addrs[self.len] = Some(a);
            self.len += 1;
        } else {
            self.overflow = true;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.addrs[..self.len].iter().flatten().copied()
    }

    pub fn first(&self) -> Option<SocketAddr> {
        self.addrs[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Comprehension-required attribute types this module does not understand (first 8 only).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnknownAttrs {
    types: [u16; 8],
    len: usize,
}

impl UnknownAttrs {
    fn push(&mut self, t: u16) {
        if self.len < self.types.len() && !self.types[..self.len].contains(&t) {
            self.types[self.len] = t;
            self.len += 1;
        }
    }

    pub fn as_slice(&self) -> &[u16] {
        &self.types[..self.len]
    }
}

/// Where a MESSAGE-INTEGRITY(-SHA256) attribute sits, to recompute its HMAC.
#[derive(Debug, Clone, Copy)]
pub struct IntegrityAt<'a> {
    /// Offset of the attribute header from the start of the message.
    pub offset: usize,
    pub value: &'a [u8],
}

/// The attributes of a message this server reads. Duplicates: the first one wins, except
/// XOR-PEER-ADDRESS which collects all.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attributes<'a> {
    pub username: Option<&'a str>,
    pub realm: Option<&'a str>,
    pub nonce: Option<&'a [u8]>,
    pub software: Option<&'a str>,
    pub error_code: Option<ErrorCode<'a>>,
    pub xor_mapped: Option<SocketAddr>,
    pub xor_relayed: Option<SocketAddr>,
    pub xor_peers: PeerAddrs,
    pub lifetime: Option<u32>,
    pub data: Option<&'a [u8]>,
    pub channel_number: Option<u16>,
    pub requested_transport: Option<u8>,
    pub requested_address_family: Option<u8>,
    pub dont_fragment: bool,
    /// EVEN-PORT, with its R bit (reserve the next port).
    pub even_port: Option<bool>,
    pub reservation_token: Option<[u8; 8]>,
    /// The raw value of UNKNOWN-ATTRIBUTES (a list of 16-bit types).
    pub unknown_attributes: Option<&'a [u8]>,
    pub integrity: Option<IntegrityAt<'a>>,
    pub integrity_sha256: Option<IntegrityAt<'a>>,
    pub fingerprint: bool,
    pub unknown_required: UnknownAttrs,
}

/// A parsed STUN message borrowing the bytes it came from.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub method: u16,
    pub class: Class,
    pub transaction_id: TransactionId,
    pub attrs: Attributes<'a>,
    raw: &'a [u8],
}

/// True when `b` starts like a STUN message (first two bits zero and the magic cookie).
pub fn is_stun(b: &[u8]) -> bool {
    b.len() >= HEADER_LEN && b[0] & 0xC0 == 0 && b[4..8] == MAGIC_COOKIE.to_be_bytes()
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn padded(n: usize) -> usize {
    (n + 3) & !3
}

fn crc32(parts: &[&[u8]]) -> u32 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    let mut d = CRC.digest();
    for p in parts {
        d.update(p);
    }
    d.finalize()
}

impl<'a> Message<'a> {
    /// Parses exactly one message: `b` must be the whole message and nothing else (one UDP
    /// datagram, or one frame cut by [`frame_len`]).
    pub fn parse(b: &'a [u8]) -> Result<Self, ParseError> {
        if b.len() < HEADER_LEN {
            return Err(ParseError::TooShort);
        }
        if !is_stun(b) {
            return Err(ParseError::NotStun);
        }
        let len = be16(b, 2) as usize;
        if !len.is_multiple_of(4) || HEADER_LEN + len != b.len() {
            return Err(ParseError::BadLength);
        }
        let (method, class) = split_type(be16(b, 0));
        let mut transaction_id = [0u8; 12];
        transaction_id.copy_from_slice(&b[8..20]);
        let mut m = Message {
            method,
            class,
            transaction_id,
            attrs: Attributes::default(),
            raw: b,
        };
        m.parse_attributes()?;
        Ok(m)
    }

    fn parse_attributes(&mut self) -> Result<(), ParseError> {
        let b = self.raw;
        let txid = self.transaction_id;
        let a = &mut self.attrs;
        let mut at = HEADER_LEN;
        while at < b.len() {
            if b.len() - at < 4 {
                return Err(ParseError::Truncated(0));
            }
            if a.fingerprint {
                return Err(ParseError::AfterFingerprint);
            }
            let t = be16(b, at);
            let vlen = be16(b, at + 2) as usize;
            let start = at + 4;
            if b.len() - start < vlen {
                return Err(ParseError::Truncated(t));
            }
            let v = &b[start..start + vlen];
            let next = (start + padded(vlen)).min(b.len());
            let after_integrity = a.integrity.is_some() || a.integrity_sha256.is_some();
            match t {
                attr::FINGERPRINT => {
                    if vlen != 4 {
                        return Err(ParseError::BadAttribute(t));
                    }
                    if crc32(&[&b[..at]]) ^ FINGERPRINT_XOR != be32(v, 0) {
                        return Err(ParseError::BadFingerprint);
                    }
                    a.fingerprint = true;
                }
                attr::MESSAGE_INTEGRITY_SHA256 => {
                    if !(16..=32).contains(&vlen) || !vlen.is_multiple_of(4) {
                        return Err(ParseError::BadAttribute(t));
                    }
                    if a.integrity_sha256.is_none() {
                        a.integrity_sha256 = Some(IntegrityAt {
                            offset: at,
                            value: v,
                        });
                    }
                }
                // RFC 8489 §14.5: everything after MESSAGE-INTEGRITY except the two above is
                // ignored.
                _ if after_integrity => {}
                attr::MESSAGE_INTEGRITY => {
                    if vlen != 20 {
                        return Err(ParseError::BadAttribute(t));
                    }
                    a.integrity = Some(IntegrityAt {
                        offset: at,
                        value: v,
                    });
                }
                _ => parse_attribute(a, t, v, &txid)?,
            }
            at = next;
        }
        Ok(())
    }

    /// The message bytes.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY, with `key`.
    /// Returns `None` when the message carries neither.
    pub fn verify_integrity(&self, key: &[u8]) -> Option<bool> {
        if let Some(i) = self.attrs.integrity_sha256 {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
                return Some(false);
            };
            self.feed_mac(&mut mac, i.offset, i.value.len());
            return Some(mac.verify_truncated_left(i.value).is_ok());
        }
        let i = self.attrs.integrity?;
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
            return Some(false);
        };
        self.feed_mac(&mut mac, i.offset, i.value.len());
        Some(mac.verify_slice(i.value).is_ok())
    }

    /// Feeds the header (length adjusted to end after the integrity attribute) and the
    /// attributes before it.
    fn feed_mac<M: Mac>(&self, mac: &mut M, offset: usize, vlen: usize) {
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.raw[..HEADER_LEN]);
        let adjusted = (offset + 4 + vlen - HEADER_LEN) as u16;
        header[2..4].copy_from_slice(&adjusted.to_be_bytes());
        mac.update(&header);
        mac.update(&self.raw[HEADER_LEN..offset]);
    }

    /// Which integrity attribute protects this message, if any.
    pub fn integrity_kind(&self) -> Option<IntegrityKind> {
        if self.attrs.integrity_sha256.is_some() {
            Some(IntegrityKind::Sha256)
        } else if self.attrs.integrity.is_some() {
            Some(IntegrityKind::Sha1)
        } else {
            None
        }
    }
}

/// MESSAGE-INTEGRITY (HMAC-SHA1) or MESSAGE-INTEGRITY-SHA256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityKind {
    Sha1,
    Sha256,
}

fn utf8(t: u16, v: &[u8], max: usize) -> Result<&str, ParseError> {
    if v.len() > max {
        return Err(ParseError::BadAttribute(t));
    }
    std::str::from_utf8(v).map_err(|_| ParseError::BadAttribute(t))
}

fn parse_attribute<'a>(
    a: &mut Attributes<'a>,
    t: u16,
    v: &'a [u8],
    txid: &TransactionId,
) -> Result<(), ParseError> {
    let bad = ParseError::BadAttribute(t);
    match t {
        attr::USERNAME if a.username.is_none() => a.username = Some(utf8(t, v, 513)?),
        attr::REALM if a.realm.is_none() => a.realm = Some(utf8(t, v, 763)?),
        attr::NONCE if a.nonce.is_none() => {
            if v.len() > 763 {
                return Err(bad);
            }
            a.nonce = Some(v)
        }
        attr::SOFTWARE if a.software.is_none() => a.software = Some(utf8(t, v, 763)?),
        attr::ERROR_CODE if a.error_code.is_none() => {
            if v.len() < 4 {
                return Err(bad);
            }
            let class = (v[2] & 0x07) as u16;
            let number = v[3] as u16;
            if !(3..=6).contains(&class) || number > 99 {
                return Err(bad);
            }
            a.error_code = Some(ErrorCode {
                code: class * 100 + number,
                reason: utf8(t, &v[4..], 763)?,
            });
        }
        attr::XOR_MAPPED_ADDRESS if a.xor_mapped.is_none() => {
            a.xor_mapped = Some(decode_xor_addr(v, txid).ok_or(bad)?)
        }
        attr::XOR_RELAYED_ADDRESS if a.xor_relayed.is_none() => {
            a.xor_relayed = Some(decode_xor_addr(v, txid).ok_or(bad)?)
        }
        attr::XOR_PEER_ADDRESS => a.xor_peers.push(decode_xor_addr(v, txid).ok_or(bad)?),
        attr::LIFETIME if a.lifetime.is_none() => {
            if v.len() != 4 {
                return Err(bad);
            }
            a.lifetime = Some(be32(v, 0));
        }
        attr::DATA if a.data.is_none() => a.data = Some(v),
        attr::CHANNEL_NUMBER if a.channel_number.is_none() => {
            if v.len() != 4 {
                return Err(bad);
            }
            a.channel_number = Some(be16(v, 0));
        }
        attr::REQUESTED_TRANSPORT if a.requested_transport.is_none() => {
            if v.len() != 4 {
                return Err(bad);
            }
            a.requested_transport = Some(v[0]);
        }
        attr::REQUESTED_ADDRESS_FAMILY if a.requested_address_family.is_none() => {
            if v.len() != 4 {
                return Err(bad);
            }
            a.requested_address_family = Some(v[0]);
        }
        attr::DONT_FRAGMENT => a.dont_fragment = true,
        attr::EVEN_PORT if a.even_port.is_none() => {
            if v.is_empty() {
                return Err(bad);
            }
            a.even_port = Some(v[0] & 0x80 != 0);
        }
        attr::RESERVATION_TOKEN if a.reservation_token.is_none() => {
            let token: [u8; 8] = v.try_into().map_err(|_| bad)?;
            a.reservation_token = Some(token);
        }
        attr::UNKNOWN_ATTRIBUTES if a.unknown_attributes.is_none() => {
            if !v.len().is_multiple_of(2) {
                return Err(bad);
            }
            a.unknown_attributes = Some(v);
        }
        // Understood but unused by this server (ICE attributes in a Binding request, or
        // duplicates of the attributes above).
        attr::USERNAME
        | attr::REALM
        | attr::NONCE
        | attr::SOFTWARE
        | attr::ERROR_CODE
        | attr::XOR_MAPPED_ADDRESS
        | attr::XOR_RELAYED_ADDRESS
        | attr::LIFETIME
        | attr::DATA
        | attr::CHANNEL_NUMBER
        | attr::REQUESTED_TRANSPORT
        | attr::REQUESTED_ADDRESS_FAMILY
        | attr::UNKNOWN_ATTRIBUTES
        | attr::EVEN_PORT
        | attr::RESERVATION_TOKEN
        | attr::MAPPED_ADDRESS
        | attr::PRIORITY
        | attr::USE_CANDIDATE => {}
        // Comprehension-required range (RFC 8489 §14): remember to answer 420.
        t if t < 0x8000 => a.unknown_required.push(t),
        _ => {}
    }
    Ok(())
}

/// Decodes an XOR-*-ADDRESS value.
pub fn decode_xor_addr(v: &[u8], txid: &TransactionId) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = be16(v, 2) ^ (MAGIC_COOKIE >> 16) as u16;
    match v[1] {
        0x01 if v.len() == 8 => {
            let ip = be32(v, 4) ^ MAGIC_COOKIE;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        0x02 if v.len() == 20 => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&v[4..20]);
            for (i, x) in MAGIC_COOKIE.to_be_bytes().iter().chain(txid).enumerate() {
                ip[i] ^= x;
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_round_trip() {
        for m in [
            method::BINDING,
            method::ALLOCATE,
            method::CHANNEL_BIND,
            0xFFF,
        ] {
            for c in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                assert_eq!(split_type(message_type(m, c)), (m, c));
            }
        }
        assert_eq!(message_type(method::BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(method::ALLOCATE, Class::Error), 0x0113);
    }

    /// RFC 5769 §2.1: the sample request (short-term integrity and fingerprint).
    #[test]
    fn rfc5769_sample_request() {
        let hex = "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c\
                   69656e74002400046e0001ff80290008932ff9b151263b36000600096576746a3a683676\
                   59202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf";
        let b: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.class, Class::Request);
        assert_eq!(m.attrs.username, Some("evtj:h6vY"));
        assert!(m.attrs.fingerprint);
        assert_eq!(m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"), Some(true));
        assert_eq!(m.verify_integrity(b"wrong"), Some(false));
    }

    #[test]
    fn build_and_parse_back() {
        let txid = [7u8; 12];
        let mut buf = Vec::new();
        let peer6: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let peer4: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        MessageWriter::new(&mut buf, method::ALLOCATE, Class::Success, txid)
            .xor_addr(attr::XOR_RELAYED_ADDRESS, peer6)
            .xor_addr(attr::XOR_PEER_ADDRESS, peer4)
            .u32(attr::LIFETIME, 600)
            .bytes(attr::USERNAME, b"abc")
            .error_code(438, "Stale Nonce")
            .integrity(IntegrityKind::Sha1, b"key")
            .fingerprint();
        let m = Message::parse(&buf).unwrap();
        assert_eq!(m.method, method::ALLOCATE);
        assert_eq!(m.attrs.xor_relayed, Some(peer6));
        assert_eq!(m.attrs.xor_peers.first(), Some(peer4));
        assert_eq!(m.attrs.lifetime, Some(600));
        assert_eq!(m.attrs.username, Some("abc"));
        assert_eq!(m.attrs.error_code.map(|e| e.code), Some(438));
        assert_eq!(m.verify_integrity(b"key"), Some(true));
        assert!(m.attrs.fingerprint);

        MessageWriter::new(&mut buf, method::REFRESH, Class::Request, txid)
            .integrity(IntegrityKind::Sha256, b"key")
            .fingerprint();
        let m = Message::parse(&buf).unwrap();
        assert_eq!(m.integrity_kind(), Some(IntegrityKind::Sha256));
        assert_eq!(m.verify_integrity(b"key"), Some(true));
        assert_eq!(m.verify_integrity(b"kez"), Some(false));

        let last = buf.len() - 1;
        buf[last] ^= 1;
        assert_eq!(
            Message::parse(&buf).unwrap_err(),
            ParseError::BadFingerprint
        );
    }

    #[test]
    fn channel_data_framing() {
        let mut buf = Vec::new();
        write_channel_data(&mut buf, 0x4001, b"hello", true);
        assert_eq!(buf.len(), 12);
        assert_eq!(frame_len(&buf), Ok(Some(12)));
        let cd = ChannelData::parse(&buf).unwrap();
        assert_eq!((cd.number, cd.data), (0x4001, &b"hello"[..]));
        write_channel_data(&mut buf, 0x4001, b"hello", false);
        assert_eq!(buf.len(), 9);
        assert_eq!(frame_len(&[0x80, 0, 0, 0]), Err(ParseError::NotChannelData));
        assert_eq!(frame_len(&[0x00, 0x01]), Ok(None));
        assert!(ChannelData::parse(&[0x40, 0, 0, 9, 1]).is_err());
    }
}
