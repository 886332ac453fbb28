//! The `[cluster]` section: several nodes coordinated through Redis. Empty `redis_url` (the
//! default) is a single node and nothing here is used. Validated by `consulta config check`.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://host:6379/0` (or `rediss://`). Empty: a single node, no Redis.
    pub redis_url: String,
    /// This node's name in the registry and in `/n/<node_id>/ws` paths. Default: the host name.
    pub node_id: String,
    /// Base URL browsers use to reach this node (its WebSocket is `<advertise_url>/ws`), e.g.
    /// `https://consulta.example.com.br/n/pc2`. A join on another node is sent here.
    pub advertise_url: String,
    /// Base URL the other nodes use for this node's control API (`<internal_url>/api/v1/...`),
    /// on the clinic LAN, e.g. `http://10.0.0.2:7880`.
    pub internal_url: String,
    /// Every Redis key of this deployment starts with it, so several deployments (or tests)
    /// can share one Redis.
    pub key_prefix: String,
    /// On SIGTERM in cluster mode, how long the rooms this node hosts may go on (joins to them
    /// are still served, new rooms go to other nodes) before they are handed over, in seconds.
    pub drain_timeout: u64,
    /// Participants this node takes before placement sends new rooms elsewhere.
    pub capacity: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: String::new(),
            node_id: host_name(),
            advertise_url: String::new(),
            internal_url: String::new(),
            key_prefix: "consulta:".into(),
            drain_timeout: 25,
            capacity: 500,
        }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty()
    }

    /// Checks of the section; `database_url` is `[database] url` (cluster mode needs
    /// PostgreSQL: every node reads and writes the same consultations).
    pub fn validate(&self, database_url: Option<&str>) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        if !(self.redis_url.starts_with("redis://") || self.redis_url.starts_with("rediss://")) {
            bail!("cluster.redis_url must start with redis:// or rediss://");
        }
        if !database_url
            .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
        {
            bail!(
                "cluster mode (cluster.redis_url) needs PostgreSQL shared by every node: set \
                 database.url to a postgres:// URL (SQLite is one machine's file)"
            );
        }
        if !valid_node_id(&self.node_id) {
            bail!(
                "cluster.node_id must be 1-63 letters, digits, '.', '_' or '-' (it names the \
                 node in Redis keys and in /n/<node_id>/ URLs)"
            );
        }
        for (key, url) in [
            ("advertise_url", &self.advertise_url),
            ("internal_url", &self.internal_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("cluster.{key} must be an http(s) URL in cluster mode (got {url:?})");
            }
            if url.contains(['?', '#', ' ']) {
                bail!("cluster.{key} must be a base URL without query or fragment");
            }
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            bail!("cluster.key_prefix must be non-empty and without spaces");
        }
        if self.drain_timeout > 3600 {
            bail!("cluster.drain_timeout must be at most 3600 seconds");
        }
        if self.capacity == 0 {
            bail!("cluster.capacity must be at least 1 participant");
        }
        Ok(())
    }

    /// `redis_url` with any password replaced, for `config check`.
    pub fn redact(&mut self) {
        if let (Some(at), Some(scheme)) = (self.redis_url.rfind('@'), self.redis_url.find("://")) {
            if at > scheme + 3 {
                self.redis_url.replace_range(scheme + 3..at, "<redacted>");
            }
        }
    }
}

/// `https://host/n/pc2` → `wss://host/n/pc2/ws`.
pub fn ws_url_of(base: &str) -> String {
    let base = base.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{ws}/ws")
}

pub fn valid_node_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| valid_node_id(s))
        .unwrap_or_else(|| "node".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> ClusterConfig {
        ClusterConfig {
            redis_url: "redis://127.0.0.1:6379".into(),
            node_id: "pc2".into(),
            advertise_url: "https://consulta.example.com.br/n/pc2".into(),
            internal_url: "http://10.0.0.2:7880".into(),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn cluster_mode_refuses_sqlite_and_bad_urls() {
        assert!(ClusterConfig::default().validate(None).is_ok());
        let pg = Some("postgres://127.0.0.1/test");
        assert!(on().validate(pg).is_ok());
        let err = on().validate(None).unwrap_err().to_string();
        assert!(err.contains("PostgreSQL"), "{err}");
        assert!(on().validate(Some("sqlite:/tmp/x.db")).is_err());
        let mut c = on();
        c.node_id = "../etc".into();
        assert!(c.validate(pg).is_err());
        let mut c = on();
        c.advertise_url = String::new();
        assert!(c.validate(pg).is_err());
        let mut c = on();
        c.redis_url = "http://x".into();
        assert!(c.validate(pg).is_err());
    }

    #[test]
    fn ws_urls_and_redaction() {
        assert_eq!(
            ws_url_of("https://consulta.example.com.br/n/pc2/"),
            "wss://consulta.example.com.br/n/pc2/ws"
        );
        assert_eq!(ws_url_of("http://127.0.0.1:7880"), "ws://127.0.0.1:7880/ws");
        let mut c = on();
        c.redis_url = "redis://user:pw@host:6379/0".into();
        c.redact();
        assert_eq!(c.redis_url, "redis://<redacted>@host:6379/0");
    }
}
