//! `consulta`: the command line of the Consulta media server.
//!
//! `serve` wires the media core ([`consulta_sfu`]) to the HTTP side ([`server`]: signaling
//! WebSocket, SDK, demo page, health); `token` mints join tokens; `config check` validates a
//! configuration. Errors reach the user here as `anyhow` chains with a non-zero exit.

/// mimalloc instead of glibc's malloc: str0m allocates and frees a few buffers per packet
/// (decrypted payloads, encrypted datagrams) on the media worker, and mimalloc does that for
/// ~7 % less CPU per forwarded packet (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (the bindings name no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the OS at once rather than after mimalloc's default second. Under
/// load it changes little (25 consultations: 116-126 MB against 123-131, peak 116-126 against
/// 127-141); what it buys is memory returned as soon as calls end (~74 MB after those 25, where
/// the default still held ~124 five seconds later). CPU: 11 alternating pairs, 8.55 against 8.24 µs
/// per packet, the default ahead in 7, with the same few `madvise` calls and page faults in both
/// (docs/performance.md).
fn tune_allocator() {
    // SAFETY: sets a plain option value; mimalloc reads it when it next purges.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

mod api;
mod api_keys;
mod cluster;
mod config;
mod config_security;
mod consultations;
mod events;
mod join_limits;
mod metrics;
mod rate_limit;
mod recording;
mod server;
mod store;
mod webhooks;
mod ws;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use consulta_signaling::{JoinToken, Role};

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "consulta",
    version,
    about = "Consulta: a WebRTC SFU for telemedicine consultations"
)]
struct Cli {
    /// TOML configuration file (also CONSULTA_CONFIG). Without one, built-in defaults apply.
    #[arg(long, global = true, env = "CONSULTA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: signaling on HTTP, media on UDP.
    Serve(ServeArgs),
    /// Print a join token for one identity in one room.
    Token(TokenArgs),
    /// Make a new control API key: prints the key (give it to the app) and its `[api]
    /// key_hashes` entry (put it in the config; the key itself is not stored).
    ApiKey {
        /// Scopes, comma-separated: tokens:mint, consultations:write, participants:write,
        /// events:read, recordings:write (or * for all).
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// Print fresh TURN credentials as an RTCIceServer JSON object.
    TurnCredentials {
        /// Who the credentials are for (goes into the TURN username).
        #[arg(long)]
        user: String,
        /// Lifetime in seconds (default [turn] credential_ttl).
        #[arg(long)]
        ttl: Option<u64>,
        /// Data directory holding a generated secret (data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Create or update the database schema ([database] url, or SQLite in the data dir).
    Migrate,
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Cluster mode ([cluster] redis_url): inspect the nodes.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Manage recordings in the store ([s3]) or on local disk.
    Recordings {
        #[command(subcommand)]
        action: RecordingsAction,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Print every node of the registry: state, rooms, participants and load.
    Status {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RecordingsAction {
    /// Delete recordings older than the retention period, each logged as a
    /// `recording_deleted` call event.
    Purge {
        /// Age in days beyond which recordings go (default [recording] retention_days).
        #[arg(long)]
        older_than_days: Option<u64>,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// HTTP listen address ([http] listen).
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// UDP media port ([media] udp_port).
    #[arg(long)]
    media_port: Option<u16>,
    /// ICE-TCP port, 0 = off ([media] tcp_port).
    #[arg(long)]
    media_tcp_port: Option<u16>,
    /// Address advertised to browsers; repeat for several ([media] public_ips).
    #[arg(long = "public-ip")]
    public_ip: Vec<IpAddr>,
    /// Media worker threads, 0 = one per core but one ([media] workers).
    #[arg(long)]
    workers: Option<usize>,
    /// Data directory (data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log format: text or json ([log] format).
    #[arg(long)]
    log_format: Option<String>,
    /// Serve /metrics on its own listener ([metrics] listen).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The room: the appointment id.
    #[arg(long)]
    room: String,
    /// Who joins (stable id, never a name).
    #[arg(long)]
    identity: String,
    /// doctor, patient or guest.
    #[arg(long)]
    role: Role,
    /// Lifetime in seconds (default [auth] token_ttl, at most [auth] max_token_ttl).
    #[arg(long)]
    ttl: Option<u64>,
    /// Data directory holding a generated secret (data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the configuration and print it with secrets redacted.
    Check {
        /// Also list every CONSULTA_* environment variable the server reads.
        #[arg(long)]
        env: bool,
    },
}

fn main() {
    tune_allocator();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn load(path: Option<&std::path::Path>) -> Result<Config> {
    let cfg = Config::load(path, std::env::vars())?;
    Ok(cfg)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let mut cfg = load(cli.config.as_deref())?;
            if let Some(v) = args.http_listen {
                cfg.http.listen = v;
            }
            if let Some(v) = args.media_port {
                cfg.media.udp_port = v;
            }
            if let Some(v) = args.media_tcp_port {
                cfg.media.tcp_port = v;
            }
            if !args.public_ip.is_empty() {
                cfg.media.public_ips = args.public_ip;
            }
            if let Some(v) = args.workers {
                cfg.media.workers = v;
            }
            if let Some(v) = args.data_dir {
                cfg.data_dir = v;
            }
            if let Some(v) = args.log_format {
                cfg.log.format = v;
            }
            if let Some(v) = args.metrics_listen {
                cfg.metrics.listen = Some(v);
            }
            cfg.validate()?;
            init_logging(&cfg);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(server::serve(cfg))
        }
        Command::Token(args) => {
            let mut cfg = load(cli.config.as_deref())?;
            if let Some(v) = args.data_dir {
                cfg.data_dir = v;
            }
            cfg.validate()?;
            let keys = cfg.token_keys()?;
            let now = unix_now();
            let ttl = args.ttl.unwrap_or(cfg.auth.token_ttl);
            let token = keys.sign(&JoinToken::new(
                &args.room,
                &args.identity,
                args.role,
                now,
                ttl,
            )?)?;
            println!("{token}");
            Ok(())
        }
        Command::ApiKey { scopes } => {
            let (key, entry) = api_keys::new_key(&scopes)?;
            println!("key: {key}");
            println!("[api] key_hashes entry: \"{entry}\"");
            Ok(())
        }
        Command::TurnCredentials {
            user,
            ttl,
            data_dir,
        } => {
            let mut cfg = load(cli.config.as_deref())?;
            if let Some(v) = data_dir {
                cfg.data_dir = v;
            }
            cfg.validate()?;
            let mut turn = cfg.turn.clone();
            turn.secrets = cfg.turn_secrets()?;
            if let Some(ttl) = ttl {
                turn.credential_ttl = ttl;
            }
            if user.is_empty() || user.contains(':') {
                anyhow::bail!("--user must be non-empty and without ':'");
            }
            let server = turn
                .ice_server(&cfg.turn_host(), &user, unix_now())
                .context("no TURN secret configured")?;
            println!("{}", serde_json::to_string(&server)?);
            Ok(())
        }
        Command::Migrate => {
            let cfg = load(cli.config.as_deref())?;
            cfg.validate()?;
            std::fs::create_dir_all(&cfg.data_dir)
                .with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
            let url = store::database_url(cfg.database.url.as_deref(), &cfg.data_dir);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let applied = runtime.block_on(async {
                let store = store::Store::connect_lazy(&url)?;
                store.migrate().await
            })?;
            eprintln!("database schema is current ({applied} migration(s) applied)");
            Ok(())
        }
        Command::Recordings {
            action:
                RecordingsAction::Purge {
                    older_than_days,
                    dry_run,
                },
        } => {
            let cfg = load(cli.config.as_deref())?;
            cfg.validate()?;
            let days = older_than_days.unwrap_or(cfg.recording.retention_days);
            if days == 0 && older_than_days.is_none() {
                anyhow::bail!(
                    "[recording] retention_days is 0 (keep forever): pass --older-than-days N"
                );
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let s3 = recording::S3Store::from_config(&cfg.s3, cfg.recording_key()?).await;
                let gone =
                    recording::purge(s3.as_ref(), &cfg.spool_dir(), &cfg.s3.prefix, days, dry_run)
                        .await?;
                if !dry_run && !gone.is_empty() {
                    let url = store::database_url(cfg.database.url.as_deref(), &cfg.data_dir);
                    let db = store::Store::connect_lazy(&url)?;
                    db.migrate().await?;
                    let factory = events::EventFactory::default();
                    for p in &gone {
                        db.apply_event(
                            &factory.make(&p.consultation, "recording_deleted", p.payload()),
                            &cfg.webhooks.urls,
                        )
                        .await?;
                    }
                }
                for p in &gone {
                    println!(
                        "{} {} ({} days)",
                        if dry_run { "would delete" } else { "deleted" },
                        p.key,
                        p.age_days
                    );
                }
                eprintln!("{} recording(s) past {days} days", gone.len());
                anyhow::Ok(())
            })
        }
        Command::Cluster {
            action: ClusterAction::Status { json },
        } => {
            let cfg = load(cli.config.as_deref())?;
            cfg.validate()?;
            if !cfg.cluster.enabled() {
                anyhow::bail!("cluster mode is off: [cluster] redis_url is empty");
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let nodes = runtime.block_on(cluster::status(&cfg.cluster))?;
            print!("{}", cluster::status_text(&nodes, json));
            Ok(())
        }
        Command::Config {
            action: ConfigAction::Check { env },
        } => {
            let cfg = load(cli.config.as_deref())?;
            cfg.validate()?;
            print!("{}", cfg.redacted_toml());
            if env {
                println!("\n# environment variables");
                for name in Config::env_names() {
                    println!("# {name}");
                }
            }
            eprintln!("configuration is valid");
            Ok(())
        }
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if cfg.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A period that ends with a stop signal: `while t.next().await { ... }` runs the body every
/// `period` (the first time at once; a late tick delays the next ones rather than bursting)
/// until `stop` turns true.
pub(crate) struct Every {
    tick: tokio::time::Interval,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Every {
    pub(crate) fn new(
        period: std::time::Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Every {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Every { tick, stop }
    }

    /// Waits for the next tick; false once stopped.
    pub(crate) async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.tick.tick() => {}
            _ = self.stop.changed() => return false,
        }
        !*self.stop.borrow()
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Unix milliseconds as an RFC 3339 UTC time with milliseconds.
pub(crate) fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).unwrap_or_default()
}

/// An RFC 3339 time as unix milliseconds.
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_option_set_is_the_purge_delay() {
        // Option 15 is the purge delay only if it still holds mimalloc's default for it
        // (1000 ms in mimalloc 3): a renumbered enum would fail here, not tune something else.
        // SAFETY: reads and sets plain option values.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1000);
        tune_allocator();
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
            0
        );
    }
}
