//! Who may call the control API, and for what: API keys with scopes.
//!
//! A key is known only by its SHA-256 (`[api] key_hashes`, each with the scopes it grants);
//! plain `[api] keys` are hashed at start and grant every scope, for compatibility. A bearer
//! key is hashed and compared with every known hash in constant time, so neither the time of a
//! refusal nor the config file tells an attacker a key. Which scope each route needs is one
//! table ([`ROUTES`]); a route missing from it is refused to every key (fails closed).

use axum::http::Method;
use sha2::{Digest, Sha256};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Mint join tokens (`POST …/tokens`).
    TokensMint,
    /// Create, end and close consultations (and read them).
    ConsultationsWrite,
    /// Admit, kick and mute participants (and list them).
    ParticipantsWrite,
    /// Read call events, consultations, participants and recording status.
    EventsRead,
    /// Start and stop recordings (and read their status).
    RecordingsWrite,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::TokensMint,
        Scope::ConsultationsWrite,
        Scope::ParticipantsWrite,
        Scope::EventsRead,
        Scope::RecordingsWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::TokensMint => "tokens:mint",
            Scope::ConsultationsWrite => "consultations:write",
            Scope::ParticipantsWrite => "participants:write",
            Scope::EventsRead => "events:read",
            Scope::RecordingsWrite => "recordings:write",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub fn all() -> Scopes {
        Scopes(Scope::ALL.iter().fold(0, |acc, s| acc | s.bit()))
    }

    pub fn has(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }
}

/// The scopes each API route needs (any one of them), by method and route template below
/// `/api/v1`. Reads of a consultation are open to the scopes that act on it.
pub const ROUTES: &[(&str, &str, &[Scope])] = {
    use Scope::*;
    &[
        ("POST", "/consultations", &[ConsultationsWrite]),
        ("GET", "/consultations", &[ConsultationsWrite, EventsRead]),
        (
            "GET",
            "/consultations/{id}",
            &[ConsultationsWrite, EventsRead],
        ),
        ("POST", "/consultations/{id}/tokens", &[TokensMint]),
        (
            "GET",
            "/consultations/{id}/participants",
            &[ParticipantsWrite, EventsRead],
        ),
        (
            "POST",
            "/consultations/{id}/participants/{identity}/admit",
            &[ParticipantsWrite],
        ),
        (
            "POST",
            "/consultations/{id}/participants/{identity}/kick",
            &[ParticipantsWrite],
        ),
        (
            "POST",
            "/consultations/{id}/participants/{identity}/mute",
            &[ParticipantsWrite],
        ),
        (
            "GET",
            "/consultations/{id}/recording",
            &[RecordingsWrite, EventsRead],
        ),
        (
            "POST",
            "/consultations/{id}/recording/start",
            &[RecordingsWrite],
        ),
        (
            "POST",
            "/consultations/{id}/recording/stop",
            &[RecordingsWrite],
        ),
        ("POST", "/consultations/{id}/end", &[ConsultationsWrite]),
        ("POST", "/consultations/{id}/close", &[ConsultationsWrite]),
        ("GET", "/consultations/{id}/events", &[EventsRead]),
    ]
};

/// The scopes a route needs; empty (nobody may) for a route missing from [`ROUTES`].
pub fn required(method: &Method, route: &str) -> &'static [Scope] {
    let route = route.strip_prefix("/api/v1").unwrap_or(route);
    ROUTES
        .iter()
        .find(|(m, r, _)| *m == method.as_str() && *r == route)
        .map_or(&[], |(_, _, s)| s)
}

/// A configuration entry that is not `<sha256 hex> <scope>...`.
#[derive(Debug, thiserror::Error)]
pub enum KeyEntryError {
    #[error("api.key_hashes: {0:?} must start with the 64 hex digits of a key's SHA-256")]
    BadHash(String),
    #[error("api.key_hashes: unknown scope {0:?} (tokens:mint, consultations:write, participants:write, events:read, recordings:write, or * for all)")]
    UnknownScope(String),
    #[error("api.key_hashes: {0:?} names no scope")]
    NoScope(String),
}

/// One known key: its hash and what it grants.
#[derive(Debug, Clone)]
struct Known {
    hash: [u8; 32],
    scopes: Scopes,
}

/// A key that authenticated: which one (for rate limits and logs) and what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Index of the key in the ring.
    pub key: usize,
    pub scopes: Scopes,
}

/// Every key the API accepts.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    known: Vec<Known>,
}

impl KeyRing {
    /// Plain keys (all scopes) and `key_hashes` entries.
    pub fn new(plain: &[String], hashed: &[String]) -> Result<KeyRing, KeyEntryError> {
        let mut known: Vec<Known> = plain
            .iter()
            .map(|k| Known {
                hash: Sha256::digest(k.as_bytes()).into(),
                scopes: Scopes::all(),
            })
            .collect();
        for entry in hashed {
            known.push(parse_entry(entry)?);
        }
        Ok(KeyRing { known })
    }

    /// The grant of `bearer`, comparing its hash with every known one (constant time: all of
    /// them are compared, each over all 32 bytes).
    pub fn authenticate(&self, bearer: &str) -> Option<Grant> {
        let given: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
        let mut found = None;
        for (i, k) in self.known.iter().enumerate() {
            let diff = k.hash.iter().zip(&given).fold(0u8, |a, (x, y)| a | (x ^ y));
            if diff == 0 && found.is_none() {
                found = Some(Grant {
                    key: i,
                    scopes: k.scopes,
                });
            }
        }
        found
    }
}

fn parse_entry(entry: &str) -> Result<Known, KeyEntryError> {
    let mut words = entry.split_whitespace();
    let hash_hex = words.next().unwrap_or_default();
    let hash_hex = hash_hex.strip_prefix("sha256:").unwrap_or(hash_hex);
    let hash: [u8; 32] = hex::decode(hash_hex)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyEntryError::BadHash(entry.to_owned()))?;
    let mut scopes = Scopes::default();
    for w in words {
        if w == "*" {
            scopes = Scopes::all();
        } else {
            let s = Scope::parse(w).ok_or_else(|| KeyEntryError::UnknownScope(w.to_owned()))?;
            scopes.0 |= s.bit();
        }
    }
    if scopes == Scopes::default() {
        return Err(KeyEntryError::NoScope(entry.to_owned()));
    }
    Ok(Known { hash, scopes })
}

/// A new random key and its `key_hashes` entry for `scopes` (`consulta api-key`).
pub fn new_key(scopes: &[String]) -> Result<(String, String), KeyEntryError> {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    let key = format!("ck_{}", hex::encode(bytes));
    let entry = format!(
        "{} {}",
        hex::encode(Sha256::digest(key.as_bytes())),
        scopes.join(" ")
    );
    parse_entry(&entry)?;
    Ok((key, entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(s: &str) -> String {
        hex::encode(Sha256::digest(s.as_bytes()))
    }

    #[test]
    fn keys_grant_their_scopes_only() {
        let ring = KeyRing::new(
            &["plain-key-0123456789".into()],
            &[
                format!("{} tokens:mint", sha("minter")),
                format!("sha256:{} events:read recordings:write", sha("reader")),
                format!("{} *", sha("admin")),
            ],
        )
        .unwrap();
        let plain = ring.authenticate("plain-key-0123456789").unwrap();
        assert_eq!((plain.key, plain.scopes), (0, Scopes::all()));
        let m = ring.authenticate("minter").unwrap();
        assert!(m.scopes.has(Scope::TokensMint));
        assert!(!m.scopes.has(Scope::ConsultationsWrite));
        let r = ring.authenticate("reader").unwrap();
        assert_eq!(r.key, 2);
        assert!(r.scopes.has(Scope::EventsRead) && r.scopes.has(Scope::RecordingsWrite));
        assert!(!r.scopes.has(Scope::TokensMint));
        assert_eq!(ring.authenticate("admin").unwrap().scopes, Scopes::all());
        for wrong in ["", "minter ", "Minter", "plain-key-012345678"] {
            assert_eq!(ring.authenticate(wrong), None, "{wrong}");
        }
        // The hash itself is not a key.
        assert_eq!(ring.authenticate(&sha("minter")), None);
    }

    #[test]
    fn bad_entries_are_config_errors() {
        assert!(KeyRing::new(&[], &["nothex tokens:mint".into()]).is_err());
        assert!(KeyRing::new(&[], &[format!("{} tokens:burn", sha("k"))]).is_err());
        assert!(KeyRing::new(&[], &[sha("k")]).is_err());
        let (key, entry) = new_key(&["events:read".into()]).unwrap();
        let ring = KeyRing::new(&[], &[entry]).unwrap();
        assert!(ring
            .authenticate(&key)
            .unwrap()
            .scopes
            .has(Scope::EventsRead));
        assert!(new_key(&["nope".into()]).is_err());
    }

    #[test]
    fn every_route_needs_a_scope_and_unknown_routes_none() {
        for (m, r, scopes) in ROUTES {
            let method: Method = m.parse().unwrap();
            assert!(!scopes.is_empty(), "{m} {r}");
            assert_eq!(required(&method, &format!("/api/v1{r}")), *scopes);
        }
        assert!(required(&Method::DELETE, "/api/v1/consultations/{id}").is_empty());
        assert_eq!(
            required(&Method::POST, "/api/v1/consultations/{id}/tokens"),
            &[Scope::TokensMint]
        );
    }
}
