//! Join tokens: HS256 JWTs that let one identity join one room (an appointment) with one role.
//!
//! The Laravel app (through the control API) or `consulta token` signs them with the configured
//! secret; the signaling session verifies them on `join`. A token never grants more than its
//! room, and it expires. Verification is constant-time in the signature.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest accepted token, in bytes (a real one is ~250).
const MAX_TOKEN_LEN: usize = 4096;
/// Longest room id and identity, in characters.
pub const MAX_ID_LEN: usize = 128;

/// A participant's role in a consultation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Doctor,
    Patient,
    Guest,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Doctor => "doctor",
            Role::Patient => "patient",
            Role::Guest => "guest",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "doctor" => Ok(Role::Doctor),
            "patient" => Ok(Role::Patient),
            "guest" => Ok(Role::Guest),
            _ => Err(TokenError::BadClaims(
                "role must be doctor, patient or guest",
            )),
        }
    }
}

/// The claims of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// The room: the app's appointment id.
    pub room: String,
    /// Who joins (stable across reconnects; never a display name).
    pub identity: String,
    pub role: Role,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Issued at, unix seconds.
    #[serde(default)]
    pub iat: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token algorithm must be HS256")]
    BadAlgorithm,
    #[error("token has expired")]
    Expired,
    #[error("token claims are invalid: {0}")]
    BadClaims(&'static str),
    #[error("token secret must be at least 16 bytes")]
    WeakSecret,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

/// Checks a room id or identity: 1..=128 printable characters, no whitespace or controls.
pub fn validate_id(s: &str, what: &'static str) -> Result<(), TokenError> {
    let n = s.chars().count();
    if n == 0 || n > MAX_ID_LEN || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(TokenError::BadClaims(what));
    }
    Ok(())
}

impl JoinToken {
    /// New claims valid for `ttl_secs` from `now` (unix seconds).
    pub fn new(
        room: &str,
        identity: &str,
        role: Role,
        now: u64,
        ttl_secs: u64,
    ) -> Result<Self, TokenError> {
        validate_id(
            room,
            "room must be 1-128 printable characters without spaces",
        )?;
        validate_id(
            identity,
            "identity must be 1-128 printable characters without spaces",
        )?;
        if ttl_secs == 0 {
            return Err(TokenError::BadClaims("ttl must be at least 1 second"));
        }
        Ok(JoinToken {
            room: room.to_owned(),
            identity: identity.to_owned(),
            role,
            exp: now.saturating_add(ttl_secs),
            iat: now,
        })
    }

    /// Signs the claims as a compact HS256 JWT.
    pub fn sign(&self, secret: &[u8]) -> Result<String, TokenError> {
        if secret.len() < 16 {
            return Err(TokenError::WeakSecret);
        }
        let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = serde_json::to_vec(self).map_err(|_| TokenError::Malformed)?;
        let mut out = format!("{header}.{}", B64.encode(claims));
        let sig = mac(secret, out.as_bytes()).finalize().into_bytes();
        out.push('.');
        out.push_str(&B64.encode(sig));
        Ok(out)
    }

    /// Verifies signature, algorithm, claims and expiry against `now` (unix seconds).
    pub fn verify(token: &str, secret: &[u8], now: u64) -> Result<Self, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Header = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if header.alg != "HS256" {
            return Err(TokenError::BadAlgorithm);
        }
        let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
        let signed_len = h.len() + 1 + c.len();
        mac(secret, &token.as_bytes()[..signed_len])
            .verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: JoinToken = B64
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        validate_id(&claims.room, "room")?;
        validate_id(&claims.identity, "identity")?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

fn mac(secret: &[u8], data: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut m = <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(data);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn token(now: u64, ttl: u64) -> String {
        JoinToken::new("appt-42", "dr-ana", Role::Doctor, now, ttl)
            .unwrap()
            .sign(SECRET)
            .unwrap()
    }

    #[test]
    fn round_trip() {
        let t = token(1000, 60);
        let c = JoinToken::verify(&t, SECRET, 1030).unwrap();
        assert_eq!(c.room, "appt-42");
        assert_eq!(c.identity, "dr-ana");
        assert_eq!(c.role, Role::Doctor);
        assert_eq!(c.exp, 1060);
    }

    #[test]
    fn expired_is_refused() {
        let t = token(1000, 60);
        assert_eq!(
            JoinToken::verify(&t, SECRET, 1060),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn forged_is_refused() {
        let t = token(1000, 60);
        assert_eq!(
            JoinToken::verify(&t, b"another-secret-of-32-bytes......", 1001),
            Err(TokenError::BadSignature)
        );
        // Claims swapped for another room, old signature kept.
        let parts: Vec<&str> = t.split('.').collect();
        let forged_claims = B64
            .encode(br#"{"room":"other","identity":"dr-ana","role":"doctor","exp":99999,"iat":1}"#);
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(
            JoinToken::verify(&forged, SECRET, 1001),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let h = B64.encode(br#"{"alg":"none"}"#);
        let c = B64.encode(br#"{"room":"r","identity":"i","role":"guest","exp":99999}"#);
        assert_eq!(
            JoinToken::verify(&format!("{h}.{c}."), SECRET, 1),
            Err(TokenError::BadAlgorithm)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        for t in ["", "a", "a.b", "a.b.c.d", "!!.??.##", &"x".repeat(5000)] {
            assert_eq!(
                JoinToken::verify(t, SECRET, 1),
                Err(TokenError::Malformed),
                "{t:.20}"
            );
        }
    }

    #[test]
    fn bad_ids_and_secrets() {
        assert!(JoinToken::new("", "a", Role::Guest, 0, 1).is_err());
        assert!(JoinToken::new("r", "a b", Role::Guest, 0, 1).is_err());
        assert!(JoinToken::new("r", &"x".repeat(129), Role::Guest, 0, 1).is_err());
        assert!(JoinToken::new("r", "a", Role::Guest, 0, 0).is_err());
        let c = JoinToken::new("r", "a", Role::Guest, 0, 1).unwrap();
        assert_eq!(c.sign(b"short"), Err(TokenError::WeakSecret));
        assert!("nurse".parse::<Role>().is_err());
    }
}
