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
/// Longest room id and identity, in bytes (ASCII characters).
pub const MAX_ID_LEN: usize = 128;
/// Longest lifetime (`exp - iat`) of a token, unless configured otherwise: 24 hours.
pub const DEFAULT_MAX_TTL: u64 = 86_400;
/// Clock skew tolerated on `iat` and `nbf` (a token minted on another machine), seconds.
pub const LEEWAY: u64 = 60;

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
    /// Issued at, unix seconds; required (a token without it is refused).
    #[serde(default)]
    pub iat: u64,
    /// Not before, unix seconds (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
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
    #[error("token is not valid yet (iat or nbf in the future)")]
    NotYetValid,
    #[error("token lifetime is longer than the {0} s allowed")]
    TooLong(u64),
    #[error("token names an unknown key id")]
    UnknownKey,
    #[error("token claims are invalid: {0}")]
    BadClaims(&'static str),
    #[error("token secret must be at least 16 bytes")]
    WeakSecret,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    /// Which secret signed it (rotation); absent: the unnamed secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

/// Checks a room id or identity: `[A-Za-z0-9][A-Za-z0-9._:-]{0,127}` and never `..`.
///
/// Ids end up in file names (recordings kept on local disk), object keys, log lines and URLs:
/// this shape can never name another directory (`/`, `..`), hide in a log (controls, spaces) or
/// need escaping in a path segment.
pub fn validate_id(s: &str, what: &'static str) -> Result<(), TokenError> {
    if is_valid_id(s) {
        Ok(())
    } else {
        Err(TokenError::BadClaims(what))
    }
}

/// Whether `s` is a valid room id or identity (see [`validate_id`]).
pub fn is_valid_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_ID_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
        && !s.contains("..")
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
            "room must be 1-128 of A-Z a-z 0-9 . _ : - (starting with a letter or digit, no ..)",
        )?;
        validate_id(
            identity,
            "identity must be 1-128 of A-Z a-z 0-9 . _ : - (starting with a letter or digit, no ..)",
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
            nbf: None,
        })
    }

    /// Signs the claims as a compact HS256 JWT.
    pub fn sign(&self, secret: &[u8]) -> Result<String, TokenError> {
        self.sign_with_kid(secret, None)
    }

    /// Signs the claims, naming the secret's key id in the header when it has one.
    pub fn sign_with_kid(&self, secret: &[u8], kid: Option<&str>) -> Result<String, TokenError> {
        if secret.len() < 16 {
            return Err(TokenError::WeakSecret);
        }
        let header = Header {
            alg: "HS256".into(),
            typ: Some("JWT".into()),
            kid: kid.map(str::to_owned),
        };
        let header = B64.encode(serde_json::to_vec(&header).map_err(|_| TokenError::Malformed)?);
        let claims = serde_json::to_vec(self).map_err(|_| TokenError::Malformed)?;
        let mut out = format!("{header}.{}", B64.encode(claims));
        let sig = mac(secret, out.as_bytes()).finalize().into_bytes();
        out.push('.');
        out.push_str(&B64.encode(sig));
        Ok(out)
    }

    /// Verifies signature, algorithm, claims and times against `now` (unix seconds), with one
    /// secret and the default longest lifetime; see [`TokenKeys::verify`].
    pub fn verify(token: &str, secret: &[u8], now: u64) -> Result<Self, TokenError> {
        TokenKeys::new(secret.to_vec(), Vec::new(), DEFAULT_MAX_TTL)?.verify(token, now)
    }
}

/// The secrets join tokens are signed and verified with, and the longest lifetime accepted.
///
/// Rotation: named secrets (`kid`) come first; the first of them signs, every one verifies the
/// tokens that name it. Tokens without a `kid` are verified with the unnamed secret only.
#[derive(Clone)]
pub struct TokenKeys {
    unnamed: Vec<u8>,
    named: Vec<(String, Vec<u8>)>,
    max_ttl: u64,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.named.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("TokenKeys")
            .field("kids", &kids)
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    pub fn new(
        unnamed: Vec<u8>,
        named: Vec<(String, Vec<u8>)>,
        max_ttl: u64,
    ) -> Result<Self, TokenError> {
        if unnamed.len() < 16 || named.iter().any(|(_, s)| s.len() < 16) {
            return Err(TokenError::WeakSecret);
        }
        if max_ttl == 0 {
            return Err(TokenError::BadClaims(
                "the longest token lifetime must be at least 1 s",
            ));
        }
        Ok(TokenKeys {
            unnamed,
            named,
            max_ttl,
        })
    }

    pub fn max_ttl(&self) -> u64 {
        self.max_ttl
    }

    /// Signs `claims` with the current secret (the first named one, else the unnamed one),
    /// refusing claims that live longer than the longest lifetime.
    pub fn sign(&self, claims: &JoinToken) -> Result<String, TokenError> {
        if claims.exp.saturating_sub(claims.iat) > self.max_ttl {
            return Err(TokenError::TooLong(self.max_ttl));
        }
        match self.named.first() {
            Some((kid, secret)) => claims.sign_with_kid(secret, Some(kid)),
            None => claims.sign(&self.unnamed),
        }
    }

    /// Verifies signature (with the secret the header's `kid` names), algorithm, ids, `exp`,
    /// `iat` and `nbf` (with [`LEEWAY`] for clock skew) and the lifetime against `now`.
    pub fn verify(&self, token: &str, now: u64) -> Result<JoinToken, TokenError> {
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
        let secret = match &header.kid {
            None => self.unnamed.as_slice(),
            Some(kid) => self
                .named
                .iter()
                .find(|(k, _)| k == kid)
                .map(|(_, s)| s.as_slice())
                .ok_or(TokenError::UnknownKey)?,
        };
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
        if claims.iat == 0 {
            return Err(TokenError::BadClaims("iat is required"));
        }
        if claims.iat > now + LEEWAY || claims.nbf.is_some_and(|nbf| nbf > now + LEEWAY) {
            return Err(TokenError::NotYetValid);
        }
        if claims.exp.saturating_sub(claims.iat) > self.max_ttl {
            return Err(TokenError::TooLong(self.max_ttl));
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

    /// Signs arbitrary claims JSON with `secret` (what a holder of the secret could forge).
    fn raw(claims: &str, secret: &[u8], kid: Option<&str>) -> String {
        let header = match kid {
            Some(k) => format!(r#"{{"alg":"HS256","kid":"{k}"}}"#),
            None => r#"{"alg":"HS256"}"#.to_owned(),
        };
        let signed = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let sig = B64.encode(mac(secret, signed.as_bytes()).finalize().into_bytes());
        format!("{signed}.{sig}")
    }

    #[test]
    fn times_and_lifetime_are_checked() {
        let keys = TokenKeys::new(SECRET.to_vec(), Vec::new(), 3600).unwrap();
        let now = 1_000_000;
        let t = |c: &str| keys.verify(&raw(c, SECRET, None), now);
        let ok = r#"{"room":"r","identity":"i","role":"guest","iat":1000000,"exp":1000060}"#;
        assert!(t(ok).is_ok());
        // Issued in the future (beyond the leeway), or not valid before a later time.
        let future = r#"{"room":"r","identity":"i","role":"guest","iat":1000600,"exp":1000900}"#;
        assert_eq!(t(future), Err(TokenError::NotYetValid));
        let nbf = r#"{"room":"r","identity":"i","role":"guest","iat":999990,"nbf":1000500,"exp":1000900}"#;
        assert_eq!(t(nbf), Err(TokenError::NotYetValid));
        let skew = r#"{"room":"r","identity":"i","role":"guest","iat":1000030,"exp":1000900}"#;
        assert!(t(skew).is_ok(), "a clock a little ahead is tolerated");
        // Without iat, or living longer than allowed (a "forever" token).
        let no_iat = r#"{"room":"r","identity":"i","role":"guest","exp":1000060}"#;
        assert!(matches!(t(no_iat), Err(TokenError::BadClaims(_))));
        let long = r#"{"room":"r","identity":"i","role":"guest","iat":999999,"exp":4000000000}"#;
        assert_eq!(t(long), Err(TokenError::TooLong(3600)));
        // Minting refuses the same.
        let claims = JoinToken::new("r", "i", Role::Guest, now, 3601).unwrap();
        assert_eq!(keys.sign(&claims), Err(TokenError::TooLong(3600)));
        // The one-secret verify allows 24 hours.
        let day = JoinToken::new("r", "i", Role::Guest, now, DEFAULT_MAX_TTL + 1).unwrap();
        assert_eq!(
            JoinToken::verify(&day.sign(SECRET).unwrap(), SECRET, now + 1),
            Err(TokenError::TooLong(DEFAULT_MAX_TTL))
        );
    }

    #[test]
    fn key_ids_select_the_secret() {
        let old = b"old-secret-0123456789".to_vec();
        let new = b"new-secret-0123456789".to_vec();
        let claims = JoinToken::new("r", "i", Role::Patient, 1000, 60).unwrap();
        // Before the rotation: unnamed secret only.
        let before = TokenKeys::new(old.clone(), Vec::new(), 3600).unwrap();
        let old_token = before.sign(&claims).unwrap();
        // After: "k2" signs, the old unnamed secret still verifies tokens without a kid.
        let after = TokenKeys::new(old.clone(), vec![("k2".into(), new.clone())], 3600).unwrap();
        let new_token = after.sign(&claims).unwrap();
        assert!(new_token.starts_with(&B64.encode(br#"{"alg":"HS256","typ":"JWT","kid":"k2"}"#)));
        assert_eq!(after.verify(&old_token, 1001).unwrap(), claims);
        assert_eq!(after.verify(&new_token, 1001).unwrap(), claims);
        // A kid nobody knows, or a token naming k2 but signed with the old secret.
        let c = r#"{"room":"r","identity":"i","role":"guest","iat":1000,"exp":1060}"#;
        assert_eq!(
            after.verify(&raw(c, &new, Some("k9")), 1001),
            Err(TokenError::UnknownKey)
        );
        assert_eq!(
            after.verify(&raw(c, &old, Some("k2")), 1001),
            Err(TokenError::BadSignature)
        );
        // Once the old secret is retired (replaced), its tokens fail.
        let retired = TokenKeys::new(
            b"another-secret-0123456".to_vec(),
            vec![("k2".into(), new)],
            3600,
        )
        .unwrap();
        assert_eq!(
            retired.verify(&old_token, 1001),
            Err(TokenError::BadSignature)
        );
        assert!(retired.verify(&new_token, 1001).is_ok());
    }

    #[test]
    fn ids_cannot_name_paths() {
        for good in [
            "appt-42",
            "a",
            "A.b_c:d-e",
            "dr.ana",
            "x".repeat(128).as_str(),
        ] {
            assert!(is_valid_id(good), "{good}");
            assert!(
                JoinToken::new(good, good, Role::Guest, 0, 1).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "../x",
            "..",
            "a..b",
            "a/b",
            "/etc",
            "a\\b",
            ".hidden",
            "-flag",
            "_x",
            ":x",
            "a b",
            "caf\u{e9}",
            "a\u{0}b",
            "a%2fb",
            "x".repeat(129).as_str(),
        ] {
            assert!(!is_valid_id(bad), "{bad:?}");
            assert!(
                JoinToken::new(bad, "ok", Role::Guest, 0, 1).is_err(),
                "{bad:?}"
            );
            assert!(
                JoinToken::new("ok", bad, Role::Guest, 0, 1).is_err(),
                "{bad:?}"
            );
        }
        // A token signed with such a room (by an older minter, or forged with the secret) is
        // refused at verification too.
        let claims =
            B64.encode(br#"{"room":"../x","identity":"i","role":"guest","exp":99999,"iat":1}"#);
        let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let signed = format!("{header}.{claims}");
        let sig = B64.encode(mac(SECRET, signed.as_bytes()).finalize().into_bytes());
        assert!(matches!(
            JoinToken::verify(&format!("{signed}.{sig}"), SECRET, 2),
            Err(TokenError::BadClaims(_))
        ));
    }
}
