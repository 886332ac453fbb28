//! Building STUN messages into a reused buffer (the counterpart of [`super::Message::parse`]).

use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use super::{
    attr, crc32, message_type, padded, Class, IntegrityKind, TransactionId, FINGERPRINT_XOR,
    HEADER_LEN, MAGIC_COOKIE,
};

/// Builds one STUN message into a reused buffer. The buffer is cleared first; the header's
/// length is kept current after every attribute.
pub struct MessageWriter<'b> {
    buf: &'b mut Vec<u8>,
    txid: TransactionId,
}

impl<'b> MessageWriter<'b> {
    pub fn new(buf: &'b mut Vec<u8>, method: u16, class: Class, txid: TransactionId) -> Self {
        buf.clear();
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&txid);
        MessageWriter { buf, txid }
    }

    fn set_len(&mut self, len: usize) {
        let l = ((len - HEADER_LEN) as u16).to_be_bytes();
        self.buf[2..4].copy_from_slice(&l);
    }

    /// Adds an attribute with a raw value (cut to 65535 bytes), padded to 4.
    pub fn bytes(&mut self, t: u16, v: &[u8]) -> &mut Self {
        let v = &v[..v.len().min(0xFFFF)];
        self.buf.extend_from_slice(&t.to_be_bytes());
        self.buf.extend_from_slice(&(v.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(v);
        let pad = padded(v.len()) - v.len();
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        let len = self.buf.len();
        self.set_len(len);
        self
    }

    pub fn u32(&mut self, t: u16, v: u32) -> &mut Self {
        self.bytes(t, &v.to_be_bytes())
    }

    /// XOR-MAPPED-ADDRESS, XOR-RELAYED-ADDRESS, XOR-PEER-ADDRESS.
    pub fn xor_addr(&mut self, t: u16, a: SocketAddr) -> &mut Self {
        let port = (a.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes();
        match a.ip() {
            IpAddr::V4(ip) => {
                let x = (u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes();
                let v = [0, 0x01, port[0], port[1], x[0], x[1], x[2], x[3]];
                self.bytes(t, &v)
            }
            IpAddr::V6(ip) => {
                let mut v = [0u8; 20];
                v[1] = 0x02;
                v[2..4].copy_from_slice(&port);
                v[4..].copy_from_slice(&ip.octets());
                let mask = MAGIC_COOKIE.to_be_bytes();
                for (i, x) in mask.iter().chain(&self.txid).enumerate() {
                    v[4 + i] ^= x;
                }
                self.bytes(t, &v)
            }
        }
    }

    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut v = [0u8; 4 + 128];
        let r = &reason.as_bytes()[..reason.len().min(128)];
        v[2] = ((code / 100) & 0x07) as u8;
        v[3] = (code % 100) as u8;
        v[4..4 + r.len()].copy_from_slice(r);
        self.bytes(attr::ERROR_CODE, &v[..4 + r.len()])
    }

    pub fn unknown_attributes(&mut self, types: &[u16]) -> &mut Self {
        let mut v = [0u8; 16];
        let n = types.len().min(8);
        for (i, t) in types[..n].iter().enumerate() {
            v[2 * i..2 * i + 2].copy_from_slice(&t.to_be_bytes());
        }
        self.bytes(attr::UNKNOWN_ATTRIBUTES, &v[..2 * n])
    }

    /// Adds MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 computed with `key`.
    pub fn integrity(&mut self, kind: IntegrityKind, key: &[u8]) -> &mut Self {
        let (t, vlen) = match kind {
            IntegrityKind::Sha1 => (attr::MESSAGE_INTEGRITY, 20),
            IntegrityKind::Sha256 => (attr::MESSAGE_INTEGRITY_SHA256, 32),
        };
        let end = self.buf.len();
        self.set_len(end + 4 + vlen);
        let mut out = [0u8; 32];
        match kind {
            IntegrityKind::Sha1 => {
                if let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) {
                    mac.update(self.buf);
                    out[..20].copy_from_slice(&mac.finalize().into_bytes());
                }
            }
            IntegrityKind::Sha256 => {
                if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) {
                    mac.update(self.buf);
                    out.copy_from_slice(&mac.finalize().into_bytes());
                }
            }
        }
        self.bytes(t, &out[..vlen])
    }

    /// Adds FINGERPRINT; it must be the last attribute.
    pub fn fingerprint(&mut self) -> &mut Self {
        let end = self.buf.len();
        self.set_len(end + 8);
        let fp = crc32(&[self.buf]) ^ FINGERPRINT_XOR;
        self.u32(attr::FINGERPRINT, fp)
    }
}
