//! The security-relevant parts of [`Config`] (docs/security.md): checks of API keys and
//! listeners, token secrets and lifetimes, the public URL, and what crosses the LAN in clear;
//! and the key rings built from them. Kept apart from `config.rs` so that file stays a plain
//! list of keys.

use anyhow::{bail, Context, Result};
use consulta_signaling::TokenKeys;

use crate::api_keys::KeyRing;
use crate::config::Config;

impl Config {
    /// The checks of [`Config::validate`] that concern who may do what.
    pub(crate) fn validate_security(&self) -> Result<()> {
        KeyRing::new(&self.api.keys, &self.api.key_hashes)?;
        if let Some(api) = self.api.listen {
            if api == self.http.listen {
                bail!("api.listen must differ from http.listen (unset it to serve the API there)");
            }
            if self.metrics.listen == Some(api) {
                bail!("api.listen must differ from metrics.listen");
            }
        }
        crate::join_limits::JoinLimits::new(&self.http).map_err(anyhow::Error::msg)?;
        if self.api.rate_limit_burst == 0 {
            bail!("api.rate_limit_burst must be at least 1");
        }
        if let Some(u) = &self.http.public_url {
            let rest = u
                .strip_prefix("https://")
                .or_else(|| u.strip_prefix("http://"));
            let ok = rest.is_some_and(|r| {
                let host = r.trim_end_matches('/');
                !host.is_empty() && !host.contains(['?', '#', '@', ' '])
            });
            if !ok {
                bail!(
                    "http.public_url must be an http(s) URL without query, e.g. \
                     https://consulta.example.com.br"
                );
            }
        }
        if self.auth.max_token_ttl == 0 {
            bail!("auth.max_token_ttl must be at least 1 second");
        }
        if self.auth.token_ttl > self.auth.max_token_ttl {
            bail!(
                "auth.token_ttl ({}) is longer than auth.max_token_ttl ({})",
                self.auth.token_ttl,
                self.auth.max_token_ttl
            );
        }
        let mut kids = Vec::new();
        for entry in &self.auth.token_secrets {
            let (kid, secret) = parse_named_secret(entry)?;
            if kids.contains(&kid) {
                bail!("auth.token_secrets: key id {kid:?} appears twice");
            }
            if secret.len() < 16 {
                bail!("auth.token_secrets: the secret of {kid:?} must be at least 16 characters");
            }
            kids.push(kid);
        }
        if self.recording.encryption_key.is_some() {
            let endpoint = self.s3.endpoint.as_deref().unwrap_or("https://");
            if endpoint.starts_with("http://") {
                bail!(
                    "recording.encryption_key (SSE-C) with s3.endpoint {endpoint:?}: the key \
                     would cross the network in clear with every request; use an https:// \
                     endpoint"
                );
            }
        }
        Ok(())
    }

    /// The join-token secrets: `[auth] token_secrets` (the first signs) and the unnamed
    /// `token_secret` (configured or generated), with `max_token_ttl`.
    pub fn token_keys(&self) -> Result<TokenKeys> {
        let named = self
            .auth
            .token_secrets
            .iter()
            .map(|e| parse_named_secret(e).map(|(k, s)| (k.to_owned(), s.as_bytes().to_vec())))
            .collect::<Result<Vec<_>>>()?;
        TokenKeys::new(self.token_secret()?, named, self.auth.max_token_ttl)
            .context("invalid token secrets")
    }

    /// The key nodes sign peer lookups with (cluster mode): derived from the join-token
    /// secret every node shares, never the secret itself.
    pub fn cluster_peer_key(&self) -> Result<Vec<u8>> {
        use sha2::Digest;
        let secret = self.token_secret()?;
        Ok(sha2::Sha256::new()
            .chain_update(b"consulta cluster peer lookup\0")
            .chain_update(&secret)
            .finalize()
            .to_vec())
    }

    /// The API's key ring: plain keys (or the generated one) and `key_hashes`.
    pub fn api_key_ring(&self) -> Result<KeyRing> {
        Ok(KeyRing::new(&self.api_keys()?, &self.api.key_hashes)?)
    }

    /// The signaling URL handed out with minted tokens: from `[http] public_url`, else the
    /// HTTP listener; never from what a request says about itself.
    pub fn ws_url(&self) -> String {
        match &self.http.public_url {
            Some(u) => {
                let u = u.trim_end_matches('/');
                let u = match u.strip_prefix("https://") {
                    Some(rest) => format!("wss://{rest}"),
                    None => format!("ws://{}", u.strip_prefix("http://").unwrap_or(u)),
                };
                format!("{u}/ws")
            }
            None => format!("ws://{}/ws", self.http.listen),
        }
    }
}

/// `"<kid>:<secret>"`; a kid is 1-64 of A-Z a-z 0-9 . _ -.
fn parse_named_secret(entry: &str) -> Result<(&str, &str)> {
    let Some((kid, secret)) = entry.split_once(':') else {
        bail!("auth.token_secrets entries are \"<key id>:<secret>\"");
    };
    let ok = (1..=64).contains(&kid.len())
        && kid
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if !ok {
        bail!("auth.token_secrets: key id {kid:?} must be 1-64 of A-Z a-z 0-9 . _ -");
    }
    Ok((kid, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<Config> {
        let c = Config::load(
            None,
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn sse_c_over_plain_http_is_refused() {
        let key = (
            "CONSULTA_RECORDING_ENCRYPTION_KEY",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        );
        let bucket = ("CONSULTA_S3_BUCKET", "recordings");
        let e = with(&[
            key,
            bucket,
            ("CONSULTA_S3_ENDPOINT", "http://192.168.1.10:3900"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("SSE-C"), "{e}");
        with(&[
            key,
            bucket,
            ("CONSULTA_S3_ENDPOINT", "https://s3.example.com"),
        ])
        .unwrap();
        with(&[key, bucket]).unwrap();
        // Without a customer key, plain http stays allowed (SSE-S3 or nothing).
        with(&[bucket, ("CONSULTA_S3_ENDPOINT", "http://192.168.1.10:3900")]).unwrap();
    }

    #[test]
    fn webhooks_over_http_need_the_opt_in() {
        let secret = ("CONSULTA_WEBHOOKS_SECRET", "hook-secret-0123456789");
        let url = ("CONSULTA_WEBHOOKS_URLS", "http://10.0.0.5/hook");
        let e = with(&[secret, url]).unwrap_err().to_string();
        assert!(e.contains("allow_http"), "{e}");
        with(&[secret, url, ("CONSULTA_WEBHOOKS_ALLOW_HTTP", "true")]).unwrap();
        with(&[
            secret,
            ("CONSULTA_WEBHOOKS_URLS", "https://app.example/hook"),
        ])
        .unwrap();
    }

    #[test]
    fn token_and_api_settings() {
        let c = with(&[]).unwrap();
        assert_eq!(c.auth.max_token_ttl, 86_400);
        assert_eq!(c.ws_url(), "ws://127.0.0.1:7880/ws");
        let c = with(&[(
            "CONSULTA_HTTP_PUBLIC_URL",
            "https://consulta.example.com.br/",
        )])
        .unwrap();
        assert_eq!(c.ws_url(), "wss://consulta.example.com.br/ws");
        assert!(with(&[("CONSULTA_HTTP_PUBLIC_URL", "consulta.example")]).is_err());
        assert!(with(&[("CONSULTA_AUTH_TOKEN_TTL", "90000")]).is_err());
        assert!(with(&[("CONSULTA_AUTH_MAX_TOKEN_TTL", "0")]).is_err());
        assert!(with(&[("CONSULTA_AUTH_TOKEN_SECRETS", "nokid")]).is_err());
        assert!(with(&[("CONSULTA_AUTH_TOKEN_SECRETS", "k1:short")]).is_err());
        assert!(with(&[("CONSULTA_AUTH_TOKEN_SECRETS", "a/b:0123456789abcdef")]).is_err());
        assert!(with(&[(
            "CONSULTA_AUTH_TOKEN_SECRETS",
            "k1:0123456789abcdef,k1:0123456789abcdeg"
        )])
        .is_err());
        with(&[("CONSULTA_AUTH_TOKEN_SECRETS", "2026-12:0123456789abcdef")]).unwrap();
        assert!(with(&[("CONSULTA_API_KEY_HASHES", "abc tokens:mint")]).is_err());
        assert!(with(&[("CONSULTA_API_LISTEN", "127.0.0.1:7880")]).is_err());
        with(&[("CONSULTA_API_LISTEN", "127.0.0.1:7890")]).unwrap();
    }

    #[test]
    fn join_limits_and_trusted_proxies() {
        let c = with(&[]).unwrap();
        assert_eq!(
            (c.http.join_limit_per_identity, c.http.join_limit_per_ip),
            (10, 60)
        );
        assert!(c.http.trusted_proxies.is_empty());
        let c = with(&[
            ("CONSULTA_HTTP_JOIN_LIMIT_PER_IDENTITY", "3"),
            ("CONSULTA_HTTP_JOIN_LIMIT_PER_IP", "0"),
            ("CONSULTA_HTTP_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8"),
        ])
        .unwrap();
        assert_eq!(
            (c.http.join_limit_per_identity, c.http.join_limit_per_ip),
            (3, 0)
        );
        assert_eq!(c.http.trusted_proxies, ["127.0.0.1", "10.0.0.0/8"]);
        let e = with(&[("CONSULTA_HTTP_TRUSTED_PROXIES", "nginx")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("trusted_proxies"), "{e}");
        assert!(Config::env_names().contains(&"CONSULTA_HTTP_TRUSTED_PROXIES".to_owned()));
    }
}
