//! Target `join_token`: join-token verification (`TokenKeys::verify`) over arbitrary tokens,
//! and over tokens whose header and claims are fuzzed JSON but whose HS256 signature is valid
//! (so mutations get past the signature into claims parsing and the time and id checks).
//! Oracle: an accepted token's claims pass every check `verify` promises, and re-signing them
//! gives a token that verifies to the same claims.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use consulta_signaling::token::{is_valid_id, LEEWAY};
use consulta_signaling::TokenKeys;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Input;

const UNNAMED: &[u8] = b"0123456789abcdef0123456789abcdef";
const NAMED: &[u8] = b"fedcba9876543210fedcba9876543210";
const NOW: u64 = 1_700_000_000;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let keys = TokenKeys::new(
        UNNAMED.to_vec(),
        vec![("k1".into(), NAMED.to_vec())],
        86_400,
    )
    .expect("valid keys");
    // A server clock: now, the epoch, or any second of the next ~35 000 years.
    let now = match input.u8() % 3 {
        0 => NOW,
        1 => 0,
        _ => u64::from(input.u32()) << 8,
    };
    let token = if input.bool() {
        // Valid signature over fuzzed header and claims.
        let header = input.long();
        let claims = input.rest();
        let secret = if header.windows(4).any(|w| w == b"\"k1\"") {
            NAMED
        } else {
            UNNAMED
        };
        let mut t = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
        mac.update(t.as_bytes());
        t.push('.');
        t.push_str(&B64.encode(mac.finalize().into_bytes()));
        t
    } else {
        String::from_utf8_lossy(input.rest()).into_owned()
    };
    let Ok(claims) = keys.verify(&token, now) else {
        return;
    };
    assert!(is_valid_id(&claims.room) && is_valid_id(&claims.identity));
    assert!(claims.exp > now && claims.iat != 0);
    assert!(claims.iat <= now.saturating_add(LEEWAY));
    assert!(claims.exp.saturating_sub(claims.iat) <= keys.max_ttl());
    let again = keys.sign(&claims).expect("accepted claims can be signed");
    assert_eq!(keys.verify(&again, now).as_ref(), Ok(&claims));
}
