//! The one typed configuration of `consulta`: TOML file < `CONSULTA_*` environment < CLI flags.
//!
//! Every key has a laptop-safe default, so `consulta serve` runs with no file at all. Each TOML
//! key `[section] key` is also the environment variable `CONSULTA_SECTION_KEY` (top-level keys:
//! `CONSULTA_KEY`); lists in the environment are comma-separated. Unknown keys are errors, so a
//! typo never silently falls back to a default. `consulta config check` runs [`Config::load`] and
//! [`Config::validate`] and prints the result with secrets redacted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

mod env;
use env::apply_env;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where state lives (the generated token secret; later the SQLite database and spools).
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub media: MediaConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    /// The built-in TURN server (see `consulta_turn::TurnConfig` for every key).
    pub turn: consulta_turn::TurnConfig,
    pub database: DatabaseConfig,
    pub api: ApiConfig,
    pub webhooks: WebhooksConfig,
    pub consultation: ConsultationConfig,
    pub recording: RecordingConfig,
    pub s3: S3Config,
    /// Several nodes coordinated through Redis (`crate::cluster::ClusterConfig`).
    pub cluster: crate::cluster::ClusterConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingConfig {
    /// Where recordings are written first (and kept until their upload is verified).
    /// Default `<data_dir>/recordings`.
    pub spool_dir: Option<PathBuf>,
    /// Most bytes the spool may hold; a recording that would go past it stops (`spool_full`).
    pub max_spool_bytes: u64,
    /// Recordings older than this many days are deleted (0 keeps them forever).
    pub retention_days: u64,
    /// Base64 of a 32-byte key: recordings are stored with SSE-C under this key (the storage
    /// server encrypts them and cannot read them back without it). Unset: no customer key
    /// (see `[s3] server_side_encryption`).
    pub encryption_key: Option<String>,
    /// Multipart part size in bytes (at least 5 MiB, the S3 minimum).
    pub part_size: u64,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            spool_dir: None,
            max_spool_bytes: 4 << 30,
            retention_days: 0,
            encryption_key: None,
            part_size: 8 << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint of an S3-compatible store (`http://pc1:3900`). Unset: AWS's endpoint for the
    /// region.
    pub endpoint: Option<String>,
    /// Bucket of the recordings. Unset: recordings stay on local disk under
    /// `<spool_dir>/done/`.
    pub bucket: Option<String>,
    pub region: String,
    /// Credentials; unset, the standard AWS environment is used (AWS_ACCESS_KEY_ID,
    /// ~/.aws/credentials, instance roles...).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Path-style URLs (`endpoint/bucket/key`), which most self-hosted stores need.
    pub path_style: bool,
    /// Prefix of every object key: `<prefix><consultation>/<recording>.webm`.
    pub prefix: String,
    /// `AES256` asks the store for SSE-S3 encryption at rest; empty asks nothing.
    pub server_side_encryption: String,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            bucket: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            path_style: true,
            prefix: "recordings/".into(),
            server_side_encryption: String::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:pass@host/db`. Unset: SQLite at `<data_dir>/consulta.db`.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer keys of the control API (`/api/v1`), each granting every scope (kept for
    /// compatibility; prefer `key_hashes`). Empty with `key_hashes` empty: one is generated
    /// into `<data_dir>/api_key`.
    pub keys: Vec<String>,
    /// Keys known only by their SHA-256, each with the scopes it grants:
    /// `"<64 hex digits> tokens:mint events:read"` (`*` for all); `consulta api-key` makes one.
    pub key_hashes: Vec<String>,
    /// A listener of its own for the control API (e.g. `127.0.0.1:7890`); when set, `/api/` is
    /// no longer served on `[http] listen`.
    pub listen: Option<SocketAddr>,
    /// Requests a second each API key may make (sustained; 0 = no limit).
    pub rate_limit_per_key: u32,
    /// Requests a second from each source address, authenticated or not (0 = no limit).
    pub rate_limit_per_ip: u32,
    /// Requests either limit lets through at once (at least one second's worth of its rate).
    pub rate_limit_burst: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            keys: Vec::new(),
            key_hashes: Vec::new(),
            listen: None,
            rate_limit_per_key: 20,
            rate_limit_per_ip: 20,
            rate_limit_burst: 40,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Every call event is POSTed to each of these.
    pub urls: Vec<String>,
    /// HMAC-SHA256 key of `X-Consulta-Signature` (at least 16 characters when urls are set).
    pub secret: Option<String>,
    /// Give up on a delivery after this many seconds (default 3 days).
    pub max_age: u64,
    /// Allow `http://` URLs (events then cross the network in clear); off: https only.
    pub allow_http: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsultationConfig {
    /// A started call ends when its room stays empty this many seconds.
    pub empty_room_end: u64,
    /// `no_show` for a role nobody joined in, this many seconds after the scheduled start.
    pub no_show_after: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            urls: Vec::new(),
            secret: None,
            max_age: 3 * 86_400,
            allow_http: false,
        }
    }
}

impl Default for ConsultationConfig {
    fn default() -> Self {
        ConsultationConfig {
            empty_room_end: 300,
            no_show_after: 900,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP listener: signaling (/ws), SDK, demo page, health.
    pub listen: SocketAddr,
    /// The URL browsers reach this listener at (`https://consulta.example.com.br`); the
    /// `ws_url` of minted tokens is made from it, never from request headers. Unset:
    /// `http://<listen>`.
    pub public_url: Option<String>,
    /// On SIGTERM, how long calls in progress may go on (no new joins, /readyz says 503) before
    /// they are ended, in seconds. A second SIGTERM ends them at once.
    pub drain_timeout: u64,
    /// Joins (a `join` whose token verified) one identity may make a minute in one
    /// consultation; beyond them the join is refused with `rate_limited` (0 = no limit).
    pub join_limit_per_identity: u32,
    /// Joins a minute from one source address (an IPv4 address or an IPv6 /64), whatever the
    /// identity (0 = no limit).
    pub join_limit_per_ip: u32,
    /// Proxies in front of this listener (addresses or CIDR ranges, e.g. nginx's): from them,
    /// and only from them, the client's address is read from `X-Forwarded-For`. Empty: the
    /// TCP peer is the client (behind a proxy every join then shares the proxy's budget).
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// The one UDP port every participant's media uses.
    pub udp_port: u16,
    /// ICE-TCP port: browsers whose UDP is blocked reach the SFU over TCP here. 0 turns it off.
    pub tcp_port: u16,
    /// Addresses advertised to browsers as ICE candidates (the server's public or LAN addresses).
    pub public_ips: Vec<IpAddr>,
    /// Address the UDP socket binds to; default 127.0.0.1 when every public ip is loopback,
    /// otherwise 0.0.0.0.
    pub bind_ip: Option<IpAddr>,
    /// Media worker threads; 0 means one per CPU core but one (at least one). With one worker
    /// there is no receive thread: the worker reads the socket itself, the cheapest per packet.
    pub workers: usize,
    /// Most participants (each publishing audio and video) a room admits.
    pub max_publishers: usize,
    /// Scheduling priority (nice, -20..19) of the media worker threads; 0 leaves it alone.
    /// Below 0 a worker preempts other work as soon as media arrives: less time in the server
    /// per packet, smaller batches (more CPU per packet). Needs CAP_SYS_NICE; without it the
    /// server says so and runs at the default priority.
    pub worker_nice: i32,
    /// CPUs to pin the media workers to, as a Linux CPU list (`"1"`, `"2-3"`, `"0,2"`; the
    /// syntax of `taskset -c`): worker `i` runs on the list's `i`-th CPU (wrapping). Empty (the
    /// default): not pinned. A pinned worker keeps its caches warm instead of following the
    /// threads that wake it from CPU to CPU, but it cannot flee to an idle CPU when its own is
    /// busy: for machines whose other work stays off that CPU.
    pub worker_cpus: String,
    /// Sent video packets each subscriber's stream keeps to answer NACKs with a retransmission
    /// (RTX); older losses are not repaired. 0 turns retransmission off, else 16..=10000. The
    /// memory is about 2 KB per packet per subscribed video track, and str0m drops packets
    /// older than 3 s anyway.
    pub nack_history: usize,
    /// Seconds a participant whose WebSocket or ICE path is lost (network change, Wi-Fi drop,
    /// proxy restart) is held for its SDK to reconnect: the others see it `reconnecting`, and a
    /// resume within this time continues the same session. Past it, it leaves with reason
    /// `lost`. 0 removes a lost participant at once (0..=600).
    pub reconnect_grace: u64,
    /// Estimate each subscriber's downlink (send-side BWE on its TWCC feedback) and adapt to
    /// it: audio is budgeted first, a subscriber whose link cannot carry video gets audio only
    /// (`track-paused`, reason `bandwidth`) until it recovers, and publishers are asked (REMB)
    /// to stay under what their most constrained subscriber can take. Off: forward everything
    /// as it comes, whatever the links.
    pub bandwidth_estimation: bool,
    /// Play each participant's audio in sync with its video (one stream in the subscriber's
    /// SDP). Off (the default), the browser plays audio as soon as it can: with sync, a video
    /// delayed by a weak link (its keyframes, a layer change) holds the audio back as long
    /// (docs/performance.md: the patient's audio jitter buffer ~10 s at ~400 ms after a step).
    pub lip_sync: bool,
    /// Microseconds a media worker lets datagrams and deadlines gather: once it has done what
    /// was ready, it sleeps until this long after it woke, so one wake handles the whole
    /// window. Fewer wakes, system calls and context switches per packet (docs/performance.md:
    /// 21.8 -> 15.6-16.4 µs per packet at 25 consultations with 1000), for up to this much more
    /// time in the server per packet (p50 0.10 -> 0.87 ms). A worker busy for the whole window
    /// never sleeps. 0 wakes for every datagram at once (0..=5000).
    pub batch_window_us: u64,
}

/// Largest `media.batch_window_us`: 5 ms, a quarter of an audio frame.
pub const MAX_BATCH_WINDOW_US: u64 = 5_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret of join tokens (at least 16 characters). Unset: generated on first start and
    /// kept in `<data_dir>/token_secret`.
    pub token_secret: Option<String>,
    /// Default lifetime of tokens minted by `consulta token`, seconds.
    pub token_ttl: u64,
    /// Longest lifetime (exp - iat) a join token may have, seconds: longer ones are not
    /// minted, and refused on join.
    pub max_token_ttl: u64,
    /// Named token secrets for rotation, `"<kid>:<secret>"`: the first signs new tokens (with
    /// `kid` in their header), every one verifies the tokens naming it. Tokens without a kid
    /// are verified with `token_secret` (or the generated one).
    pub token_secrets: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// A separate listener for `/metrics` (e.g. "127.0.0.1:9090"). Unset: `/metrics` is served on
    /// the HTTP listener.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `consulta=debug,str0m=warn`.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            http: HttpConfig::default(),
            media: MediaConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            turn: consulta_turn::TurnConfig::default(),
            database: DatabaseConfig::default(),
            api: ApiConfig::default(),
            webhooks: WebhooksConfig::default(),
            consultation: ConsultationConfig::default(),
            recording: RecordingConfig::default(),
            s3: S3Config::default(),
            cluster: crate::cluster::ClusterConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7880)),
            public_url: None,
            drain_timeout: 25,
            join_limit_per_identity: 10,
            join_limit_per_ip: 60,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        let limits = consulta_sfu::router::Limits::default();
        MediaConfig {
            udp_port: 7882,
            tcp_port: 7881,
            public_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            bind_ip: None,
            workers: 0,
            max_publishers: limits.max_publishers,
            worker_nice: 0,
            worker_cpus: String::new(),
            nack_history: limits.nack_history,
            reconnect_grace: limits.reconnect_grace.as_secs(),
            bandwidth_estimation: limits.bwe,
            lip_sync: limits.lip_sync,
            batch_window_us: 1000,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_secret: None,
            token_ttl: 3600,
            max_token_ttl: 86_400,
            token_secrets: Vec::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// Most sent video packets kept per subscribed track (`media.nack_history`): ~16 MB a track.
const MAX_NACK_HISTORY: usize = 10_000;
impl Config {
    /// Defaults, then the file (if any), then `CONSULTA_*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        let mut value = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<toml::Value>(&text)
                    .with_context(|| format!("config file {} is not valid TOML", path.display()))?
            }
            None => toml::Value::Table(Default::default()),
        };
        apply_env(&mut value, env)?;
        let cfg: Config = value.try_into().context("invalid configuration")?;
        Ok(cfg)
    }

    /// Checks what serde cannot: ranges, consistency, secrets.
    pub fn validate(&self) -> Result<()> {
        if self.media.public_ips.is_empty() {
            bail!("media.public_ips must name at least one address browsers can reach");
        }
        if let Some(ip) = self.media.public_ips.iter().find(|ip| ip.is_unspecified()) {
            bail!("media.public_ips: {ip} cannot be advertised; give the server's real address");
        }
        if self.media.workers > 256 {
            bail!("media.workers must be between 0 (automatic) and 256");
        }
        if !(-20..=19).contains(&self.media.worker_nice) {
            bail!("media.worker_nice must be between -20 and 19 (0 leaves the priority alone)");
        }
        self.worker_cpus()?;
        if !(1..=16).contains(&self.media.max_publishers) {
            bail!("media.max_publishers must be between 1 and 16");
        }
        let history = self.media.nack_history;
        if !(history == 0 || (16..=MAX_NACK_HISTORY).contains(&history)) {
            bail!("media.nack_history must be 0 (no retransmission) or 16 to {MAX_NACK_HISTORY}");
        }
        if self.media.batch_window_us > MAX_BATCH_WINDOW_US {
            bail!(
                "media.batch_window_us must be between 0 (wake for every datagram) and \
                 {MAX_BATCH_WINDOW_US}"
            );
        }
        if self.media.reconnect_grace > 600 {
            bail!("media.reconnect_grace must be between 0 (no hold) and 600 seconds");
        }
        if let Some(s) = &self.auth.token_secret {
            if s.len() < 16 {
                bail!("auth.token_secret must be at least 16 characters");
            }
        }
        if self.auth.token_ttl == 0 {
            bail!("auth.token_ttl must be at least 1 second");
        }
        if self.turn.enabled {
            let public_loopback = self.media.public_ips.iter().all(|ip| ip.is_loopback());
            if self.turn.listen_ip.is_loopback() && !public_loopback {
                bail!(
                    "turn.listen_ip is {} but media.public_ips are reachable from other machines: \
                     set turn.listen_ip to the address browsers reach (or 0.0.0.0)",
                    self.turn.listen_ip
                );
            }
            if self.turn.tls_port != 0
                && self.turn.tls_cert.is_some() != self.turn.tls_key.is_some()
            {
                bail!("turn.tls_cert and turn.tls_key go together");
            }
            if self.turn.secrets.iter().any(|s| s.len() < 16) {
                bail!("turn.secrets must each be at least 16 characters");
            }
        }
        if !self.webhooks.urls.is_empty()
            && self.webhooks.secret.as_ref().is_none_or(|s| s.len() < 16)
        {
            bail!("webhooks.secret (at least 16 characters) is needed when webhooks.urls are set");
        }
        for u in &self.webhooks.urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                bail!("webhooks.urls: {u:?} is not an http(s) URL");
            }
            if u.starts_with("http://") && !self.webhooks.allow_http {
                bail!(
                    "webhooks.urls: {u:?} is plain http (call events would cross the network in \
                     clear); use https, or set webhooks.allow_http = true for a receiver on a \
                     trusted network"
                );
            }
        }
        if let Some(u) = &self.database.url {
            if !(u.starts_with("postgres://")
                || u.starts_with("postgresql://")
                || u.starts_with("sqlite:"))
            {
                bail!("database.url must start with postgres:// (or sqlite:)");
            }
        }
        self.cluster.validate(self.database.url.as_deref())?;
        if self.cluster.enabled() && self.auth.token_secret.is_none() {
            bail!(
                "cluster mode needs auth.token_secret set on every node (the same one): a token \
                 minted by one node is verified by another"
            );
        }
        if self.api.keys.iter().any(|k| k.len() < 16) {
            bail!("api.keys must each be at least 16 characters");
        }
        self.validate_security()?;
        if self.recording.part_size < 5 << 20 || self.recording.part_size > 5 << 30 {
            bail!("recording.part_size must be between 5 MiB (5242880) and 5 GiB");
        }
        if self.recording.max_spool_bytes < self.recording.part_size {
            bail!("recording.max_spool_bytes must be at least recording.part_size");
        }
        if self.recording_key()?.is_some() && self.s3.bucket.is_none() {
            bail!("recording.encryption_key is used with S3 (SSE-C); set s3.bucket");
        }
        if self.s3.access_key_id.is_some() != self.s3.secret_access_key.is_some() {
            bail!("s3.access_key_id and s3.secret_access_key go together");
        }
        if let Some(e) = &self.s3.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                bail!("s3.endpoint: {e:?} is not an http(s) URL");
            }
        }
        if let Some(b) = &self.s3.bucket {
            let ok = (3..=63).contains(&b.len())
                && b.bytes().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.'
                });
            if !ok {
                bail!("s3.bucket: {b:?} is not a valid bucket name (3-63 of a-z 0-9 . -)");
            }
        }
        if !matches!(self.s3.server_side_encryption.as_str(), "" | "AES256") {
            bail!("s3.server_side_encryption must be empty or AES256");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!("log.format must be `text` or `json`");
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| anyhow::anyhow!("log.level is not a valid filter: {e}"))?;
        Ok(())
    }

    /// The SSE-C key of recordings, when configured (32 bytes).
    pub fn recording_key(&self) -> Result<Option<[u8; 32]>> {
        use base64::Engine;
        let Some(k) = &self.recording.encryption_key else {
            return Ok(None);
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(k.trim())
            .map_err(|_| anyhow::anyhow!("recording.encryption_key is not base64"))?;
        let key: [u8; 32] = raw.try_into().map_err(|_| {
            anyhow::anyhow!("recording.encryption_key must be 32 bytes (openssl rand -base64 32)")
        })?;
        Ok(Some(key))
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.recording
            .spool_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("recordings"))
    }

    /// `media.worker_cpus` as CPU numbers (empty: the workers are not pinned).
    pub fn worker_cpus(&self) -> Result<Vec<usize>> {
        consulta_sfu::parse_cpu_list(&self.media.worker_cpus)
            .map_err(|e| anyhow::anyhow!("media.worker_cpus: {e}"))
    }

    pub fn workers(&self) -> usize {
        match self.media.workers {
            // One core is left to the receive thread, signaling, TURN and recording; with a
            // single worker there is no receive thread at all.
            0 => {
                std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
            }
            n => n,
        }
    }

    pub fn bind_ip(&self) -> IpAddr {
        self.media.bind_ip.unwrap_or_else(|| {
            if self.media.public_ips.iter().all(|ip| ip.is_loopback()) {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            }
        })
    }

    /// The join-token secret: configured, or generated once and kept in the data dir.
    pub fn token_secret(&self) -> Result<Vec<u8>> {
        if let Some(s) = &self.auth.token_secret {
            return Ok(s.as_bytes().to_vec());
        }
        self.kept_secret("token_secret")
    }

    /// A random secret kept in `<data_dir>/<name>` (mode 0600), made on first use.
    fn kept_secret(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.data_dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(s) if s.trim().len() >= 16 => return Ok(s.trim().as_bytes().to_vec()),
            Ok(_) => bail!(
                "{} is too short; delete it to generate a new one",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("cannot create data dir {}", self.data_dir.display()))?;
        let secret: String = {
            use rand::Rng;
            let bytes: [u8; 32] = rand::rng().random();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        };
        write_private(&path, &secret)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(secret.into_bytes())
    }

    /// The control API's plain (all-scope) keys: configured, or one generated once and kept in
    /// the data dir when no key at all is configured.
    pub fn api_keys(&self) -> Result<Vec<String>> {
        if !self.api.keys.is_empty() || !self.api.key_hashes.is_empty() {
            return Ok(self.api.keys.clone());
        }
        let key = self.kept_secret("api_key")?;
        Ok(vec![String::from_utf8(key).context("api_key is not UTF-8")?])
    }

    /// The TURN secrets: configured, or one generated once and kept in the data dir.
    pub fn turn_secrets(&self) -> Result<Vec<String>> {
        if !self.turn.secrets.is_empty() {
            return Ok(self.turn.secrets.clone());
        }
        let secret = self.kept_secret("turn_secret")?;
        Ok(vec![
            String::from_utf8(secret).context("turn_secret is not UTF-8")?
        ])
    }

    /// The host browsers use in TURN URLs.
    pub fn turn_host(&self) -> String {
        self.turn
            .host
            .clone()
            .unwrap_or_else(|| self.media.public_ips[0].to_string())
    }

    /// The configuration as TOML with secrets redacted.
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        if c.auth.token_secret.is_some() {
            c.auth.token_secret = Some("<redacted>".into());
        }
        for s in c
            .turn
            .secrets
            .iter_mut()
            .chain(c.api.keys.iter_mut())
            .chain(c.auth.token_secrets.iter_mut())
        {
            *s = "<redacted>".into();
        }
        for s in [
            &mut c.webhooks.secret,
            &mut c.recording.encryption_key,
            &mut c.s3.secret_access_key,
        ] {
            if s.is_some() {
                *s = Some("<redacted>".into());
            }
        }
        if let Some(u) = &mut c.database.url {
            // postgres://user:password@host → postgres://user:<redacted>@host
            if let (Some(at), Some(scheme)) = (u.find('@'), u.find("://")) {
                if let Some(colon) = u[scheme + 3..at].find(':') {
                    u.replace_range(scheme + 3 + colon + 1..at, "<redacted>");
                }
            }
        }
        c.cluster.redact();
        toml::to_string_pretty(&c).unwrap_or_default()
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
