//! Long-term credentials in the coturn "TURN REST API" scheme, and stateless nonces.
//!
//! A credential is `username = "<unix expiry>:<user id>"`, `password = base64(HMAC-SHA1(secret,
//! username))`: signaling mints it with [`credentials`]; this server recomputes the password
//! from the username for each configured secret, so it keeps no user table. The STUN key is
//! `MD5(username ":" realm ":" password)` (RFC 8489 §9.2.2).
//!
//! Nonces carry their own issue time and a MAC over it and the client address, so checking one
//! needs no state and a nonce minted for one client is stale for any other. Pure functions: no
//! clock is read here, the caller passes the time.

use std::net::SocketAddr;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

/// The long-term STUN key: `MD5(username ":" realm ":" password)`.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// The REST password for `username` under `secret`, written into `out` (base64 of a 20-byte
/// HMAC is always 28 bytes); returns it as a string slice. No allocation.
pub fn rest_password_into<'o>(secret: &[u8], username: &str, out: &'o mut [u8; 28]) -> &'o str {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(username.as_bytes());
    let tag = mac.finalize().into_bytes();
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(tag, out)
        .unwrap_or(0);
    std::str::from_utf8(&out[..n]).unwrap_or("")
}

/// The REST password for `username` under `secret`.
pub fn rest_password(secret: &str, username: &str) -> String {
    let mut out = [0u8; 28];
    rest_password_into(secret.as_bytes(), username, &mut out).to_owned()
}

/// Mints a credential for `user` valid for `ttl_secs` from `unix_now`:
/// `("<expiry>:<user>", password)`.
pub fn credentials(secret: &str, user: &str, ttl_secs: u64, unix_now: u64) -> (String, String) {
    let username = format!("{}:{}", unix_now.saturating_add(ttl_secs), user);
    let password = rest_password(secret, &username);
    (username, password)
}

/// The user part of a REST username (`"<expiry>:<user>"` → `user`; the whole name without a
/// colon). Quotas and revocation are per user, so fresh credentials (a new expiry) for the same
/// participant share them.
pub fn user_of(username: &str) -> &str {
    username.split_once(':').map_or(username, |(_, u)| u)
}

/// The expiry of a REST username, when it has a valid one.
pub fn expiry_of(username: &str) -> Option<u64> {
    let ts = username.split(':').next()?;
    if ts.is_empty() || ts.len() > 20 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ts.parse().ok()
}

/// What a REST username says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsernameCheck {
    Valid,
    Expired,
    Malformed,
}

/// Checks the expiry in `"<unix expiry>[:<user id>]"` against `unix_now`.
pub fn check_username(username: &str, unix_now: u64) -> UsernameCheck {
    let ts = username.split(':').next().unwrap_or("");
    if ts.is_empty() || ts.len() > 20 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return UsernameCheck::Malformed;
    }
    match ts.parse::<u64>() {
        Ok(expiry) if expiry > unix_now => UsernameCheck::Valid,
        Ok(_) => UsernameCheck::Expired,
        Err(_) => UsernameCheck::Malformed,
    }
}

/// Length of a nonce: 16 hex digits of issue time, 16 hex digits of MAC.
pub const NONCE_LEN: usize = 32;

/// Mints and checks stateless nonces.
pub struct NonceMinter {
    key: [u8; 32],
    ttl_secs: u64,
}

/// The verdict on a NONCE attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Expired, minted for another client, or not ours: the client gets 438 and a fresh one.
    Stale,
}

impl NonceMinter {
    pub fn new(key: [u8; 32], ttl_secs: u64) -> Self {
        NonceMinter { key, ttl_secs }
    }

    fn mac(&self, issued: u64, client: SocketAddr) -> u64 {
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.key).expect("any key length");
        mac.update(&issued.to_be_bytes());
        match client {
            SocketAddr::V4(a) => mac.update(&a.ip().octets()),
            SocketAddr::V6(a) => mac.update(&a.ip().octets()),
        }
        mac.update(&client.port().to_be_bytes());
        let tag = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag[..8]);
        u64::from_be_bytes(first)
    }

    /// A nonce for `client` issued at `unix_now`.
    pub fn mint(&self, client: SocketAddr, unix_now: u64) -> [u8; NONCE_LEN] {
        let mut out = [0u8; NONCE_LEN];
        hex16(unix_now, &mut out[..16]);
        hex16(self.mac(unix_now, client), &mut out[16..]);
        out
    }

    pub fn check(&self, nonce: &[u8], client: SocketAddr, unix_now: u64) -> NonceCheck {
        if nonce.len() != NONCE_LEN {
            return NonceCheck::Stale;
        }
        let (Some(issued), Some(tag)) = (unhex16(&nonce[..16]), unhex16(&nonce[16..])) else {
            return NonceCheck::Stale;
        };
        // Constant-time compare is not needed for freshness, but the MAC is a secret-derived
        // value: compare all bits at once.
        let fresh = issued <= unix_now && unix_now - issued < self.ttl_secs;
        if fresh && (self.mac(issued, client) ^ tag) == 0 {
            NonceCheck::Valid
        } else {
            NonceCheck::Stale
        }
    }
}

fn hex16(v: u64, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, o) in out.iter_mut().enumerate().take(16) {
        *o = HEX[((v >> (60 - 4 * i)) & 0xF) as usize];
    }
}

fn unhex16(b: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &c in b {
        let d = (c as char).to_digit(16)?;
        v = (v << 4) | d as u64;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_password_matches_coturn_scheme() {
        // echo -n "1700000000:alice" | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(
            rest_password("secret", "1700000000:alice"),
            "d8soP47RbdIKLDUOpnJPVQyq5Ts="
        );
        let (u, p) = credentials("secret", "alice", 100, 1_699_999_900);
        assert_eq!(u, "1700000000:alice");
        assert_eq!(p, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
    }

    #[test]
    fn username_parts() {
        assert_eq!(user_of("200:p-3f9a"), "p-3f9a");
        assert_eq!(user_of("200:a:b"), "a:b");
        assert_eq!(user_of("bob"), "bob");
        assert_eq!(expiry_of("200:bob"), Some(200));
        assert_eq!(expiry_of("x:bob"), None);
    }

    #[test]
    fn username_expiry() {
        assert_eq!(check_username("200:bob", 100), UsernameCheck::Valid);
        assert_eq!(check_username("200", 100), UsernameCheck::Valid);
        assert_eq!(check_username("100:bob", 100), UsernameCheck::Expired);
        assert_eq!(check_username("bob:200", 100), UsernameCheck::Malformed);
        assert_eq!(check_username("", 100), UsernameCheck::Malformed);
        assert_eq!(
            check_username("99999999999999999999999:x", 1),
            UsernameCheck::Malformed
        );
    }

    #[test]
    fn nonce_binds_client_and_time() {
        let m = NonceMinter::new([9; 32], 600);
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:1001".parse().unwrap();
        let n = m.mint(a, 1000);
        assert_eq!(m.check(&n, a, 1000), NonceCheck::Valid);
        assert_eq!(m.check(&n, a, 1599), NonceCheck::Valid);
        assert_eq!(m.check(&n, a, 1600), NonceCheck::Stale);
        assert_eq!(m.check(&n, b, 1000), NonceCheck::Stale);
        assert_eq!(m.check(&n, a, 999), NonceCheck::Stale);
        let mut forged = n;
        forged[31] = if forged[31] == b'0' { b'1' } else { b'0' };
        assert_eq!(m.check(&forged, a, 1000), NonceCheck::Stale);
        assert_eq!(m.check(b"short", a, 1000), NonceCheck::Stale);
    }
}
