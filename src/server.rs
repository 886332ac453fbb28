//! The HTTP side of `consulta serve`: axum routes for signaling (`/ws`), the browser SDK
//! (`/sdk/consulta.js`, `/sdk/consulta.d.ts`), the demo page (`/demo`) and health (`/healthz`,
//! `/readyz`), plus startup and shutdown of the media core.
//!
//! Handlers never block: the media core is reached through `SfuHandle`'s bounded channels.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use consulta_sfu::{Sfu, SfuConfig, SfuHandle};
use serde_json::json;

use crate::config::Config;

const SDK_JS: &str = include_str!("../signaling/client/consulta.js");
const SDK_DTS: &str = include_str!("../signaling/client/consulta.d.ts");
const DEMO_HTML: &str = include_str!("../signaling/client/demo.html");

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub sfu: SfuHandle,
    /// Secrets join tokens are signed and verified with, and their longest lifetime.
    pub token_keys: Arc<consulta_signaling::TokenKeys>,
    /// Flips to true on SIGTERM/ctrl-c: sessions end so the listener can drain.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub started: std::time::Instant,
    pub turn: Option<Arc<Turn>>,
    /// Set on the first SIGTERM: no new joins, /readyz answers 503.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    pub store: crate::store::Store,
    pub consultations: crate::consultations::Consultations,
    pub events: crate::events::EventSink,
    pub event_factory: Arc<crate::events::EventFactory>,
    pub api_keys: Arc<crate::api_keys::KeyRing>,
    /// Per-key and per-address request budgets of the control API.
    pub api_limits: Arc<crate::api::Limits>,
    /// Joins a minute per participant and per source address, and the trusted proxies.
    pub join_limits: Arc<crate::join_limits::JoinLimits>,
    pub token_ttl: u64,
    /// The signaling URL handed out with minted tokens (`[http] public_url`).
    pub ws_url: Arc<str>,
    pub webhook_stats: Option<Arc<crate::webhooks::WebhookStats>>,
    pub recordings: crate::recording::Recordings,
    /// Sessions in a call, by id, that a new connection may resume.
    pub resumable: crate::ws::ResumeRegistry,
    /// How long a session whose connection is lost is held (`media.reconnect_grace`).
    pub reconnect_grace: std::time::Duration,
    /// Cluster mode (`[cluster] redis_url`): this node's membership; None on a single node.
    pub cluster: Option<crate::cluster::Cluster>,
}

/// The running built-in TURN server and what signaling needs to hand out credentials.
pub struct Turn {
    pub handle: consulta_turn::TurnHandle,
    /// The `[turn]` section with its secrets resolved.
    pub config: consulta_turn::TurnConfig,
    pub host: String,
    /// Keys the TURN user of a participant (random per process, like the TURN state itself).
    pub user_key: [u8; 32],
}

impl Turn {
    /// The TURN user of a participant: a keyed hash of (room, identity), so fresh credentials
    /// after a rejoin share its quota and a revocation, while the username sent in the clear
    /// names neither the consultation nor the person.
    pub fn user_of(&self, room: &str, identity: &str) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.user_key)
            .expect("HMAC takes any key length");
        // '/' cannot occur in ids, so (room, identity) pairs never collide.
        mac.update(room.as_bytes());
        mac.update(b"/");
        mac.update(identity.as_bytes());
        format!("p{}", &hex::encode(mac.finalize().into_bytes())[..24])
    }
}

impl AppState {
    /// ICE servers handed to a participant: fresh TURN credentials for its TURN user
    /// ([`Turn::user_of`]), or none when TURN is off.
    pub fn ice_servers(&self, room: &str, identity: &str) -> Vec<serde_json::Value> {
        self.turn
            .as_ref()
            .and_then(|t| {
                let user = t.user_of(room, identity);
                t.config.ice_server_json(&t.host, &user, crate::unix_now())
            })
            .into_iter()
            .collect()
    }

    /// A participant was removed (kicked, call ended): its TURN credentials minted so far no
    /// longer make allocations.
    pub fn revoke_turn(&self, room: &str, identity: &str) {
        if let Some(t) = &self.turn {
            t.handle.revoke(&t.user_of(room, identity));
        }
    }
}

pub async fn serve(cfg: Config) -> Result<()> {
    // Sessions stored before this instant belong to an earlier process (orphans.rs).
    let booted_at = crate::unix_millis();
    let token_keys = Arc::new(cfg.token_keys()?);
    let sfu = Sfu::start(SfuConfig {
        udp_port: cfg.media.udp_port,
        tcp_port: cfg.media.tcp_port,
        bind_ip: cfg.bind_ip(),
        public_ips: cfg.media.public_ips.clone(),
        workers: cfg.workers(),
        max_publishers: cfg.media.max_publishers,
        worker_nice: cfg.media.worker_nice,
        worker_cpus: cfg.worker_cpus()?,
        nack_history: cfg.media.nack_history,
        reconnect_grace: std::time::Duration::from_secs(cfg.media.reconnect_grace),
        bandwidth_estimation: cfg.media.bandwidth_estimation,
        lip_sync: cfg.media.lip_sync,
        batch_window: std::time::Duration::from_micros(cfg.media.batch_window_us),
        fault_panic_room: fault_panic_room(),
        relay_ips: if cfg.turn.enabled {
            vec![cfg.turn.relay_bind_ip(), cfg.turn.relay_advertised_ip()]
        } else {
            Vec::new()
        },
    })?;
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.http.listen))?;
    tracing::info!(
        http = %cfg.http.listen,
        media = %sfu.handle().local_addr(),
        ice_tcp_port = sfu.handle().tcp_port(),
        workers = cfg.workers(),
        "consulta is serving; demo at http://{}/demo",
        cfg.http.listen
    );
    if cfg.http.public_url.is_none() && !cfg.http.listen.ip().is_loopback() {
        // ws_url of minted tokens is no longer taken from request headers.
        tracing::warn!(ws_url = %cfg.ws_url(), "[http] public_url is unset: minted tokens carry this ws_url; set it to the address browsers reach");
    }
    let proxied = cfg
        .http
        .public_url
        .as_ref()
        .is_some_and(|u| u.starts_with("https://"));
    if proxied && cfg.http.trusted_proxies.is_empty() && cfg.http.join_limit_per_ip > 0 {
        // consulta serves no TLS itself: an https public URL means a proxy in front.
        tracing::warn!("[http] public_url is https but trusted_proxies is empty: every join seems to come from the proxy and shares one join_limit_per_ip budget; list the proxy in [http] trusted_proxies");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    let store = crate::store::Store::connect_lazy(&crate::store::database_url(
        cfg.database.url.as_deref(),
        &cfg.data_dir,
    ))?;
    match tokio::time::timeout(std::time::Duration::from_secs(5), store.migrate()).await {
        Ok(Ok(n)) => tracing::info!(applied = n, "database schema is current"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "database unavailable at start; events are journaled until it answers")
        }
        Err(_) => tracing::warn!(
            "database did not answer at start; events are journaled until it answers"
        ),
    }
    let event_factory = Arc::new(crate::events::EventFactory::default());
    let events = crate::events::start_writer(
        store.clone(),
        cfg.data_dir.join("events.journal"),
        cfg.webhooks.urls.clone(),
    );
    let s3 = crate::recording::S3Store::from_config(&cfg.s3, cfg.recording_key()?).await;
    let settings = crate::recording::Settings {
        spool_dir: cfg.spool_dir(),
        max_spool_bytes: cfg.recording.max_spool_bytes,
        part_size: cfg.recording.part_size,
        retention_days: cfg.recording.retention_days,
        prefix: cfg.s3.prefix.clone(),
    };
    tracing::info!(
        spool = %settings.spool_dir.display(),
        storage = if s3.is_some() { "s3" } else { "local" },
        "recording pipeline ready"
    );
    let recordings = crate::recording::Recordings::start(
        settings.clone(),
        s3.clone(),
        events.clone(),
        event_factory.clone(),
    )
    .with_context(|| {
        format!(
            "cannot create the recording spool {}",
            settings.spool_dir.display()
        )
    })?;
    if settings.retention_days > 0 {
        tokio::spawn(crate::recording::retention_task(
            settings.clone(),
            s3,
            events.clone(),
            event_factory.clone(),
            recordings.stats().clone(),
        ));
    }
    let consultations = crate::consultations::start(
        store.clone(),
        events.clone(),
        event_factory.clone(),
        crate::consultations::Timings {
            empty_room_end: std::time::Duration::from_secs(cfg.consultation.empty_room_end),
            no_show_after: std::time::Duration::from_secs(cfg.consultation.no_show_after),
        },
        sfu.handle(),
        recordings.clone(),
    );
    let webhook_stats = match (&cfg.webhooks.secret, cfg.webhooks.urls.is_empty()) {
        (Some(secret), false) => Some(crate::webhooks::start(
            store.clone(),
            secret.as_bytes().to_vec(),
            cfg.webhooks.max_age,
        )),
        _ => None,
    };
    let api_keys = Arc::new(cfg.api_key_ring()?);
    if cfg.api.keys.is_empty() && cfg.api.key_hashes.is_empty() {
        tracing::info!(path = %cfg.data_dir.join("api_key").display(), "control API key generated (set [api] keys to choose your own)");
    }
    let turn = if cfg.turn.enabled {
        let mut config = cfg.turn.clone();
        config.secrets = cfg.turn_secrets()?;
        let port = sfu.handle().local_addr().port();
        // The SFU's own media addresses are always valid TURN peers.
        let sfu_addrs = cfg
            .media
            .public_ips
            .iter()
            .map(|ip| std::net::SocketAddr::new(*ip, port))
            .collect();
        let handle = consulta_turn::start(config.clone(), sfu_addrs, stop_rx.clone())
            .await
            .context("cannot start the TURN server")?;
        tracing::info!(
            udp = %handle.udp_addr,
            tcp = %handle.tcp_addr,
            tls = ?handle.tls_addr,
            "TURN is serving"
        );
        Some(Arc::new(Turn {
            handle,
            config,
            host: cfg.turn_host(),
            user_key: {
                use rand::Rng;
                rand::rng().random()
            },
        }))
    } else {
        None
    };
    let cluster = if cfg.cluster.enabled() {
        // Rooms stay here as long as the consultation service may still end them, so a
        // rejoin finds its consultation's state.
        let linger = std::time::Duration::from_secs(
            cfg.consultation.empty_room_end + cfg.media.reconnect_grace + 5,
        );
        let c = crate::cluster::Cluster::new(cfg.cluster.clone(), linger, cfg.cluster_peer_key()?)?;
        tracing::info!(node = %c.node_id(), advertise = %cfg.cluster.advertise_url, "cluster mode: coordinating through Redis");
        Some(c)
    } else {
        None
    };
    let state = AppState {
        sfu: sfu.handle(),
        token_keys,
        shutdown: stop_rx,
        started: std::time::Instant::now(),
        turn,
        draining: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        store,
        consultations,
        events,
        event_factory,
        api_keys,
        api_limits: Arc::new(crate::api::Limits::new(&cfg.api)),
        join_limits: Arc::new(
            crate::join_limits::JoinLimits::new(&cfg.http).map_err(anyhow::Error::msg)?,
        ),
        token_ttl: cfg.auth.token_ttl,
        ws_url: cfg.ws_url().into(),
        webhook_stats,
        recordings: recordings.clone(),
        resumable: Default::default(),
        reconnect_grace: std::time::Duration::from_secs(cfg.media.reconnect_grace),
        cluster: cluster.clone(),
    };
    // Lifecycle timers of consultations no process has in memory (after a restart, or a dead
    // node in cluster mode), driven from the database.
    tokio::spawn(
        crate::consultations::orphans::Sweeper {
            store: state.store.clone(),
            sink: state.events.clone(),
            factory: state.event_factory.clone(),
            consultations: state.consultations.clone(),
            cluster: cluster.clone(),
            timings: crate::consultations::Timings {
                empty_room_end: std::time::Duration::from_secs(cfg.consultation.empty_room_end),
                no_show_after: std::time::Duration::from_secs(cfg.consultation.no_show_after),
            },
            booted_at,
        }
        .run(state.shutdown.clone()),
    );
    if let Some(c) = &cluster {
        let consultations = state.consultations.clone();
        tokio::spawn(crate::cluster::run_heartbeat(
            c.clone(),
            node_load(state.sfu.clone()),
            move |news| {
                let crate::cluster::RoomNews::Lost { room, url, node } = news;
                let consultations = consultations.clone();
                tokio::spawn(async move {
                    consultations
                        .request(crate::consultations::Request::Move { room, url, node })
                        .await
                });
            },
            state.shutdown.clone(),
        ));
    }
    let draining = state.draining.clone();
    let drain_timeout = std::time::Duration::from_secs(match &cluster {
        Some(_) => cfg.cluster.drain_timeout,
        None => cfg.http.drain_timeout,
    });
    let drain_cluster = cluster.clone();
    let (flush_events, flush_consultations) = (state.events.clone(), state.consultations.clone());
    let drain_sfu = state.sfu.clone();
    let mut app = router(state.clone(), cfg.api.listen.is_none());
    if let Some(addr) = cfg.api.listen {
        // The control API on a listener of its own (loopback or the clinic LAN), off the
        // public edge: the HTTP listener then has no /api/ at all.
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for the control API"))?;
        tracing::info!(api = %addr, "control API is serving on its own listener");
        let api_app = Router::new()
            .nest("/api/v1", crate::api::routes(state.clone()))
            .with_state(state.clone());
        tokio::spawn(async move {
            let service = api_app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            if let Err(e) = axum::serve(listener, service).await {
                tracing::error!(error = %e, "control API listener failed");
            }
        });
    }
    match cfg.metrics.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?;
            let metrics_app = Router::new()
                .route("/metrics", get(metrics))
                .with_state(state);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, metrics_app).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            });
        }
        None => {
            app = app.merge(
                Router::new()
                    .route("/metrics", get(metrics))
                    .with_state(state),
            )
        }
    }
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        if let Some(c) = &drain_cluster {
            c.start_draining(&node_load(drain_sfu.clone())()).await;
        }
        drain(&draining, drain_timeout).await;
        if let Some(c) = &drain_cluster {
            // Rooms released before their sessions end, so clients move at once.
            c.leave().await;
        }
        let _ = stop_tx.send(true);
    })
    .await?;
    tracing::info!("shutting down");
    // Exactly once across a restart: every session's end reaches the consultation service, and
    // every event it makes the database (or the journal), before the process exits.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while crate::metrics::SIGNALING
        .ws_open
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The service handles requests in order: an answer means every earlier one is done.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        flush_consultations.ask(|reply| crate::consultations::Request::Live {
            room: String::new(),
            reply,
        }),
    )
    .await;
    if !flush_events
        .flushed(std::time::Duration::from_secs(10))
        .await
    {
        tracing::error!("call events were still queued at exit; they are lost");
    }
    tokio::task::spawn_blocking(move || sfu.shutdown()).await?;
    // The workers dropped their taps: recorder threads close their files; uploads in flight get
    // a moment, the rest continues on the next start.
    recordings
        .shutdown(std::time::Duration::from_secs(10))
        .await;
    Ok(())
}

/// The HTTP listener's routes; the control API among them unless `[api] listen` moved it.
pub fn router(state: AppState, with_api: bool) -> Router {
    let api = if with_api {
        Router::new().nest("/api/v1", crate::api::routes(state.clone()))
    } else {
        Router::new()
    };
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/demo") }))
        .route("/ws", get(ws_upgrade))
        .route(
            "/sdk/consulta.js",
            get(|| async { asset("text/javascript; charset=utf-8", SDK_JS) }),
        )
        .route(
            "/sdk/consulta.d.ts",
            get(|| async { asset("application/typescript; charset=utf-8", SDK_DTS) }),
        )
        .route(
            "/demo",
            get(|| async { asset("text/html; charset=utf-8", DEMO_HTML) }),
        )
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .merge(api)
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            // The SDK is imported as a module from the app's own origin.
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body,
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let turn = state.turn.as_ref().map(|t| t.handle.counters());
    use std::sync::atomic::Ordering::Relaxed;
    let (e, w) = (&state.events.stats, state.webhook_stats.as_deref());
    let store = crate::metrics::StoreStats {
        events_written: e.written.load(Relaxed),
        events_journaled: e.journaled.load(Relaxed),
        events_replayed: e.replayed.load(Relaxed),
        journal_pending: e.journal_pending.load(Relaxed),
        queue_depth: e.queue_depth.load(Relaxed),
        webhooks_delivered: w.map_or(0, |w| w.delivered.load(Relaxed)),
        webhooks_failed: w.map_or(0, |w| w.failed_attempts.load(Relaxed)),
        webhooks_abandoned: w.map_or(0, |w| w.abandoned.load(Relaxed)),
        webhook_backlog: w.map_or(0, |w| w.backlog.load(Relaxed)),
        recording: state.recordings.numbers(),
    };
    let mut body = crate::metrics::render(&state.sfu.stats(), turn.as_ref(), &store, state.started);
    if let Some(c) = &state.cluster {
        body.push_str(&c.render_metrics());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The test-only fault injection `CONSULTA_FAULT_PANIC_WORKER_ROOM=<room>[@seconds]`: the media
/// worker that gets the first join of that room panics a while later (docs/operations.md, *When
/// something inside fails*).
fn fault_panic_room() -> Option<String> {
    let room = std::env::var("CONSULTA_FAULT_PANIC_WORKER_ROOM")
        .ok()
        .filter(|r| !r.is_empty())?;
    tracing::warn!("fault injection is on: a join of one room makes its media worker panic (CONSULTA_FAULT_PANIC_WORKER_ROOM); never set it in production");
    Some(room)
}

/// This node's load for the cluster registry: media participants, and the workers' busy share
/// since the previous call.
fn node_load(sfu: SfuHandle) -> impl FnMut() -> crate::cluster::NodeLoad + Send {
    let mut last: Option<(std::time::Instant, u64)> = None;
    move || {
        let stats = sfu.stats();
        let busy: u64 = stats.busy_nanos.iter().sum();
        let now = std::time::Instant::now();
        let cpu = match last {
            Some((at, before)) => {
                let wall = now.duration_since(at).as_nanos() as f64 * stats.workers.max(1) as f64;
                (busy.saturating_sub(before) as f64 / wall.max(1.0)).clamp(0.0, 1.0)
            }
            None => 0.0,
        };
        last = Some((now, busy));
        crate::cluster::NodeLoad {
            participants: stats.participants as u32,
            cpu,
        }
    }
}

/// Lets the calls in progress end by themselves, up to `timeout` or a second signal.
async fn drain(draining: &std::sync::atomic::AtomicBool, timeout: std::time::Duration) {
    use std::sync::atomic::Ordering;
    draining.store(true, Ordering::SeqCst);
    let open = || crate::metrics::SIGNALING.ws_open.load(Ordering::Relaxed);
    tracing::info!(
        sessions = open(),
        timeout_secs = timeout.as_secs(),
        "draining: no new joins"
    );
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let again = shutdown_signal();
    tokio::pin!(again);
    while open() > 0 {
        tokio::select! {
            _ = &mut deadline => break,
            _ = &mut again => break,
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
    }
    tracing::info!(
        sessions = open(),
        "drain over; ending the remaining sessions"
    );
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining" })),
        )
            .into_response();
    }
    if !state.store.ping().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "database_unreachable" })),
        )
            .into_response();
    }
    if state.sfu.workers_alive() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "workers_down" })),
        )
            .into_response()
    }
}

async fn ws_upgrade(
    ws: WebSocketUpgrade,
    Query(query): Query<HashMap<String, String>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    State(state): State<AppState>,
) -> Response {
    let room = query.get("room").cloned();
    // X-Forwarded-For counts only from a configured trusted proxy (`[http] trusted_proxies`).
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let source = state
        .join_limits
        .client_addr(peer.ip(), Some(&forwarded.join(",")));
    // Frames above 64 KiB get an error code from the session; far larger ones close the socket.
    // Reads go through a 16 KiB buffer rather than tungstenite's 128 KiB, which it zero-fills
    // and so keeps resident for every open connection: ~110 KiB less per participant (RSS at 25
    // consultations 113-114 MB against 119-121). A larger message still arrives whole.
    ws.max_message_size(1 << 20)
        .max_frame_size(1 << 20)
        .read_buffer_size(16 << 10)
        .on_upgrade(move |socket| crate::ws::run_session(socket, state, room, source))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
