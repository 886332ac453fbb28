//! The `[turn]` configuration section, and the ICE server entry signaling hands to browsers.
//!
//! Deserialized by the `consulta` binary (TOML, environment, flags); [`TurnConfig::server_config`]
//! turns it into the sans-IO core's [`ServerConfig`]. Nothing here opens a socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth;
use crate::policy::PeerPolicy;
use crate::server::ServerConfig;

/// Errors starting the TURN server.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("turn configuration: {0}")]
    Config(String),
    #[error("turn TLS: {0}")]
    Tls(String),
    #[error("turn socket: {0}")]
    Io(#[from] std::io::Error),
}

/// The `[turn]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// Off by default: TURN needs a secret and, in production, a public address.
    pub enabled: bool,
    /// Address the UDP, TCP and TLS listeners bind to.
    pub listen_ip: IpAddr,
    /// 0 = any free port (tests).
    pub udp_port: u16,
    /// 0 = any free port (tests).
    pub tcp_port: u16,
    /// TURN over TLS ("turns:"); 0 = off. Needs `tls_cert` and `tls_key`.
    pub tls_port: u16,
    /// PEM certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    pub realm: String,
    /// REST API secrets; the first signs new credentials, all are accepted (rotation).
    pub secrets: Vec<String>,
    /// Lifetime of minted credentials in seconds. An allocation cannot be refreshed after its
    /// credential expires, so this should exceed the longest consultation.
    pub credential_ttl: u64,
    /// Peers the relay may reach besides the SFU's own media addresses (which are always
    /// allowed, at their exact port). Default empty: a relay talks to the SFU and nothing else,
    /// public or private, so a credential cannot turn the server into a UDP proxy. Each entry
    /// is a CIDR range with an optional port or inclusive port range: `"10.0.0.0/8"`,
    /// `"203.0.113.5/32:5000-5100"`, `"192.0.2.1:3478"`, `"[2001:db8::/32]:3478"`. A
    /// peer outside every entry gets 403 (CreatePermission, ChannelBind) or is dropped (Send
    /// indication, ChannelData, datagrams from it).
    pub allowed_peer_ranges: Vec<String>,
    pub max_allocations_per_user: u32,
    /// Allocations alive at once from one client IP address, all ports and transports
    /// together (486 beyond). A browser makes up to three (UDP, TCP, TLS), so 32 serves about
    /// ten participants behind one NAT while one address cannot take the whole
    /// `max_allocations`.
    pub max_allocations_per_ip: u32,
    pub max_allocations: u32,
    /// TCP and TLS connections open at once from one client IP address, both listeners
    /// together; the next one is closed as soon as it is accepted.
    pub max_connections_per_ip: u32,
    /// Seconds a TCP or TLS connection (TLS handshake included) may stay open without an
    /// allocation, i.e. without a successful authenticated Allocate; then it is closed.
    pub auth_timeout: u64,
    /// Bytes per second per allocation in each direction; 0 = unlimited.
    pub max_bandwidth_per_allocation: u64,
    /// Longest allocation lifetime a client may ask for, in seconds.
    pub max_lifetime: u64,
    /// Address relay sockets bind to and advertise; default `listen_ip`.
    pub relay_ip: Option<IpAddr>,
    /// Accept ChannelBind numbers 0x5000–0x7FFF (RFC 5766) besides RFC 8656's 0x4000–0x4FFF,
    /// for older clients that pick from the whole old range (coturn's turnutils_uclient).
    pub legacy_channel_numbers: bool,
    /// Address advertised for relays when `relay_ip` sits behind a 1:1 NAT (cloud elastic IP);
    /// default `relay_ip`.
    pub relay_public_ip: Option<IpAddr>,
    /// Name or address browsers put in their `turn:`/`turns:` URLs — the TLS certificate's name
    /// for `turns:`. Default: the server's first advertised media address.
    pub host: Option<String>,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            enabled: false,
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            udp_port: 3478,
            tcp_port: 3478,
            tls_port: 5349,
            tls_cert: None,
            tls_key: None,
            realm: "consulta".into(),
            secrets: Vec::new(),
            credential_ttl: 3600,
            allowed_peer_ranges: Vec::new(),
            max_allocations_per_user: 10,
            max_allocations_per_ip: 32,
            max_allocations: 1000,
            max_connections_per_ip: 32,
            auth_timeout: 5,
            max_bandwidth_per_allocation: 4_000_000,
            max_lifetime: 3600,
            relay_ip: None,
            legacy_channel_numbers: false,
            relay_public_ip: None,
            host: None,
        }
    }
}

/// One entry of `RTCConfiguration.iceServers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

impl TurnConfig {
    /// TLS is on when it has a port, a certificate and a key.
    pub fn tls_enabled(&self) -> bool {
        self.tls_port != 0 && self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// The address relays bind to.
    pub fn relay_bind_ip(&self) -> IpAddr {
        self.relay_ip.unwrap_or(self.listen_ip)
    }

    /// The address put in XOR-RELAYED-ADDRESS.
    pub fn relay_advertised_ip(&self) -> IpAddr {
        self.relay_public_ip.unwrap_or_else(|| self.relay_bind_ip())
    }

    /// Checks the configuration and builds the core's; `always_allowed` are the SFU's media
    /// addresses.
    pub fn server_config(
        &self,
        always_allowed: Vec<SocketAddr>,
    ) -> Result<ServerConfig, TurnError> {
        if self.secrets.iter().all(|s| s.is_empty()) {
            return Err(TurnError::Config(
                "at least one non-empty secret is required".into(),
            ));
        }
        let advertised = self.relay_advertised_ip();
        if advertised.is_unspecified() {
            return Err(TurnError::Config(format!(
                "relays would advertise {advertised}: set relay_ip (or relay_public_ip) to an \
                 address clients can reach"
            )));
        }
        for (key, value) in [
            ("max_allocations_per_ip", self.max_allocations_per_ip as u64),
            ("max_connections_per_ip", self.max_connections_per_ip as u64),
            ("auth_timeout", self.auth_timeout),
        ] {
            if value == 0 {
                return Err(TurnError::Config(format!("{key} must be at least 1")));
            }
        }
        let policy = PeerPolicy::from_strings(&self.allowed_peer_ranges, always_allowed)
            .map_err(|e| TurnError::Config(e.to_string()))?;
        let mut c = ServerConfig::new(&self.realm, self.secrets.clone(), advertised);
        c.policy = policy;
        c.max_lifetime = Duration::from_secs(self.max_lifetime.max(1));
        c.max_allocations = self.max_allocations;
        c.max_allocations_per_user = self.max_allocations_per_user;
        c.credential_ttl = Duration::from_secs(self.credential_ttl);
        c.max_allocations_per_ip = self.max_allocations_per_ip;
        c.max_bandwidth = self.max_bandwidth_per_allocation;
        c.legacy_channel_numbers = self.legacy_channel_numbers;
        Ok(c)
    }

    /// Mints a credential for `user` with the first secret, valid `credential_ttl` seconds
    /// from `unix_now`, and the URLs to reach this server at `host` (a DNS name or an IP).
    /// `None` when no secret is configured.
    pub fn ice_server(&self, host: &str, user: &str, unix_now: u64) -> Option<IceServer> {
        let secret = self.secrets.first().filter(|s| !s.is_empty())?;
        let (username, credential) = auth::credentials(secret, user, self.credential_ttl, unix_now);
        let host = match host.parse::<Ipv6Addr>() {
            Ok(_) => format!("[{host}]"),
            Err(_) => host.to_owned(),
        };
        let mut urls = vec![
            format!("turn:{host}:{}?transport=udp", self.udp_port),
            format!("turn:{host}:{}?transport=tcp", self.tcp_port),
        ];
        if self.tls_enabled() {
            urls.push(format!("turns:{host}:{}?transport=tcp", self.tls_port));
        }
        Some(IceServer {
            urls,
            username,
            credential,
        })
    }

    /// [`TurnConfig::ice_server`] as JSON:
    /// `{"urls":[...],"username":"...","credential":"..."}`.
    pub fn ice_server_json(
        &self,
        host: &str,
        user: &str,
        unix_now: u64,
    ) -> Option<serde_json::Value> {
        self.ice_server(host, user, unix_now)
            .and_then(|s| serde_json::to_value(s).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_server_urls_and_credential() {
        let mut c = TurnConfig {
            secrets: vec!["secret".into(), "old".into()],
            ..TurnConfig::default()
        };
        let s = c
            .ice_server("turn.example.org", "alice", 1_699_996_400)
            .unwrap();
        assert_eq!(s.username, "1700000000:alice");
        assert_eq!(s.credential, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
        assert_eq!(
            s.urls,
            [
                "turn:turn.example.org:3478?transport=udp",
                "turn:turn.example.org:3478?transport=tcp"
            ]
        );
        c.tls_cert = Some("c.pem".into());
        c.tls_key = Some("k.pem".into());
        let j = c.ice_server_json("2001:db8::1", "bob", 0).unwrap();
        assert_eq!(j["urls"][2], "turns:[2001:db8::1]:5349?transport=tcp");
        assert!(j["credential"].is_string());
        assert!(TurnConfig::default().ice_server("h", "u", 0).is_none());
    }

    #[test]
    fn config_checks() {
        let mut c = TurnConfig::default();
        assert!(c.server_config(vec![]).is_err(), "no secret");
        c.secrets = vec!["s".into()];
        assert!(c.server_config(vec![]).is_ok());
        c.listen_ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        assert!(c.server_config(vec![]).is_err(), "0.0.0.0 advertised");
        c.relay_public_ip = Some("203.0.113.7".parse().unwrap());
        assert!(c.server_config(vec![]).is_ok());
        c.allowed_peer_ranges = vec!["203.0.113.5/32:5000-5100".into()];
        assert!(c.server_config(vec![]).is_ok());
        c.allowed_peer_ranges = vec!["bogus".into()];
        assert!(c.server_config(vec![]).is_err());
        c.allowed_peer_ranges = vec![];
        c.auth_timeout = 0;
        assert!(c.server_config(vec![]).is_err(), "auth_timeout 0");
        c.auth_timeout = 5;
        c.max_connections_per_ip = 0;
        assert!(c.server_config(vec![]).is_err(), "max_connections_per_ip 0");
        let parsed: TurnConfig =
            serde_json::from_str(r#"{"enabled":true,"secrets":["x"]}"#).unwrap();
        assert_eq!(parsed.udp_port, 3478);
        assert!(serde_json::from_str::<TurnConfig>(r#"{"typo":1}"#).is_err());
    }
}
