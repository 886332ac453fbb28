//! Cluster mode: several `consulta serve` nodes behind one hostname, coordinated through Redis
//! (`[cluster] redis_url`). One room lives on one node.
//!
//! ```text
//!   join ──► any node ──locate(room)──► Redis room directory (Lua claim, fenced by epoch)
//!                 │ owner is me: serve it         │ owner is another node: `moved {url}`
//!   heartbeat (1 s): registry hash + lease, renew hosted rooms, read the registry
//! ```
//!
//! Nothing on the media path or in a running call touches Redis: only joins (placement), the
//! control API (forwarding to a room's owner, `forward.rs`) and this module's heartbeat task do.
//! When Redis does not answer, a node keeps the rooms it hosts, asks its known peers where an
//! unknown room is, and otherwise hosts it itself; when Redis is back, the heartbeat re-registers
//! and reclaims every hosted room, and a room that ended up on two nodes is merged into the
//! side with more participants (the other side's sessions get `moved`).
//!
//! Neighbours: `placement.rs` (pure choice of a node), `directory.rs` (the Lua scripts),
//! `forward.rs` (the control API on any node), `config.rs` (`[cluster]`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use redis::aio::ConnectionManager;

pub mod config;
pub mod directory;
pub mod forward;
pub mod placement;

pub use config::ClusterConfig;
use directory::{Claim, Renewal};
use placement::{NodeInfo, NodeState};

/// How often the registry entry, room leases and the registry snapshot are refreshed.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node (and the rooms it holds) counts as dead this long after its last heartbeat.
/// Three missed beats: short enough that a dead node's calls move within a few seconds, long
/// enough that a node busy for a moment (or Redis slow for one beat) keeps its rooms.
const NODE_LEASE_MS: u64 = 3_000;
const ROOM_LEASE_MS: u64 = 3_000;
/// Longest wait for Redis in a join or a heartbeat step.
const REDIS_TIMEOUT: Duration = Duration::from_millis(800);
/// How long a peer may take to say whether it hosts a room (while Redis is down).
const PEER_TIMEOUT: Duration = Duration::from_millis(500);

/// Where a join for a room is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Here, under this fencing epoch (0: decided without Redis).
    Local {
        epoch: i64,
        /// The room's previous owner died and this node took the room over.
        took_over_from: Option<String>,
        /// This join made this node the room's owner (it was free, or its owner dead): any
        /// session of the room still open in the database belongs to a process that is gone.
        fresh: bool,
    },
    /// On another node: its WebSocket URL.
    Moved { node: String, url: String },
    /// This node drains and no other node takes new rooms.
    Refused,
}

/// Counters for /metrics.
#[derive(Default)]
pub struct ClusterStats {
    pub redirects: AtomicU64,
    pub takeovers: AtomicU64,
    pub forwarded: AtomicU64,
    pub moved_away: AtomicU64,
    pub redis_errors: AtomicU64,
}

struct Hosted {
    epoch: i64,
    sessions: u32,
    /// Since when no session of this node is in the room (kept until `linger` passes, so
    /// rejoins find the room where its consultation state is).
    idle_since: Option<Instant>,
}

struct Inner {
    cfg: ClusterConfig,
    conn: ConnectionManager,
    hosted: Mutex<HashMap<String, Hosted>>,
    /// The registry as last read (this node included).
    nodes: Mutex<Vec<NodeInfo>>,
    redis_up: AtomicBool,
    draining: AtomicBool,
    linger: Duration,
    stats: ClusterStats,
    http: reqwest::Client,
    /// Signs peer lookups (`forward.rs`): the join-token secret every node shares.
    peer_key: Vec<u8>,
    claim: redis::Script,
    renew: redis::Script,
    release: redis::Script,
}

/// A handle on this node's membership; cheap to clone.
#[derive(Clone)]
pub struct Cluster(Arc<Inner>);

/// Keeps a room hosted here while a session of it lives; dropping it lets the room go.
pub struct HostGuard {
    cluster: Cluster,
    room: String,
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        let mut hosted = self
            .cluster
            .0
            .hosted
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(h) = hosted.get_mut(&self.room) {
            h.sessions = h.sessions.saturating_sub(1);
            if h.sessions == 0 {
                h.idle_since = Some(Instant::now());
            }
        }
    }
}

/// What the heartbeat learns about hosted rooms that needs acting on elsewhere.
pub enum RoomNews {
    /// A live node with at least as many participants holds the room: ours move there.
    Lost {
        room: String,
        url: String,
        node: String,
    },
}

impl Cluster {
    /// Connects lazily (a Redis that is down at start is retried by the heartbeat).
    pub fn new(cfg: ClusterConfig, linger: Duration, peer_key: Vec<u8>) -> Result<Cluster> {
        let client = redis::Client::open(cfg.redis_url.as_str())
            .context("cluster.redis_url is not a valid Redis URL")?;
        let conn_cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(700)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, conn_cfg)
            .context("cannot set up the Redis connection")?;
        Ok(Cluster(Arc::new(Inner {
            cfg,
            conn,
            hosted: Mutex::new(HashMap::new()),
            nodes: Mutex::new(Vec::new()),
            redis_up: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            linger,
            stats: ClusterStats::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .context("cannot build the HTTP client")?,
            peer_key,
            claim: redis::Script::new(directory::CLAIM),
            renew: redis::Script::new(directory::RENEW),
            release: redis::Script::new(directory::RELEASE),
        })))
    }

    pub fn node_id(&self) -> &str {
        &self.0.cfg.node_id
    }

    pub fn stats(&self) -> &ClusterStats {
        &self.0.stats
    }

    pub fn redis_up(&self) -> bool {
        self.0.redis_up.load(Ordering::Relaxed)
    }

    pub fn hosts(&self, room: &str) -> bool {
        self.lock_hosted().contains_key(room)
    }

    fn lock_hosted(&self) -> std::sync::MutexGuard<'_, HashMap<String, Hosted>> {
        self.0.hosted.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn known_nodes(&self) -> Vec<NodeInfo> {
        self.0
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn key(&self, what: &str, id: &str) -> String {
        format!("{}{what}:{id}", self.0.cfg.key_prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}nodes", self.0.cfg.key_prefix)
    }

    fn node_prefix(&self) -> String {
        format!("{}node:", self.0.cfg.key_prefix)
    }

    async fn redis<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(REDIS_TIMEOUT, f).await {
            Ok(Ok(v)) => {
                self.0.redis_up.store(true, Ordering::Relaxed);
                Some(v)
            }
            Ok(Err(e)) => {
                self.redis_failed(&e.to_string());
                None
            }
            Err(_) => {
                self.redis_failed("timed out");
                None
            }
        }
    }

    fn redis_failed(&self, why: &str) {
        self.0.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
        if self.0.redis_up.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                error = why,
                "Redis does not answer: rooms stay where they are; new rooms are placed without it"
            );
        }
    }

    /// Where a join for `room` is served. Redis is asked only when this node does not host
    /// the room already; when it does not answer, the known peers are.
    pub async fn locate(&self, room: &str) -> Placement {
        if let Some(h) = self.lock_hosted().get(room) {
            return Placement::Local {
                epoch: h.epoch,
                took_over_from: None,
                fresh: false,
            };
        }
        let draining = self.0.draining.load(Ordering::Relaxed);
        match self.claim_via_redis(room, draining).await {
            Some(p) => p,
            None => match self.ask_peers(room).await {
                Some(p) => p,
                None if draining => Placement::Refused,
                None => Placement::Local {
                    epoch: 0,
                    took_over_from: None,
                    fresh: false,
                },
            },
        }
    }

    async fn claim_via_redis(&self, room: &str, draining: bool) -> Option<Placement> {
        // Where the room would go if it is free: one script then keeps a live owner's room, or
        // claims it for that node (a draining node with nowhere to send it claims nothing).
        let target = match placement::place(&self.known_nodes(), self.node_id()) {
            Some(n) if !(draining && n.id == self.node_id()) => n.id.clone(),
            _ if draining => String::new(),
            _ => self.node_id().to_owned(),
        };
        let mut conn = self.0.conn.clone();
        let reply: Vec<String> = self
            .redis(
                self.0
                    .claim
                    .key(self.key("room", room))
                    .arg(&target)
                    .arg(ROOM_LEASE_MS)
                    .arg(self.node_prefix())
                    .arg(if draining { "" } else { self.node_id() })
                    .invoke_async(&mut conn),
            )
            .await?;
        let claim = Claim::parse(&reply)?;
        if claim.owner.is_empty() {
            return Some(Placement::Refused);
        }
        if claim.owner == self.node_id() {
            if claim.took_over_from.is_some() {
                self.0.stats.takeovers.fetch_add(1, Ordering::Relaxed);
                tracing::info!(room_epoch = claim.epoch, "room taken over from a dead node");
            }
            return Some(Placement::Local {
                epoch: claim.epoch,
                took_over_from: claim.took_over_from,
                fresh: claim.fresh,
            });
        }
        let url = self.advertise_of(&claim.owner, &mut conn).await?;
        self.0.stats.redirects.fetch_add(1, Ordering::Relaxed);
        Some(Placement::Moved {
            node: claim.owner,
            url: config::ws_url_of(&url),
        })
    }

    async fn advertise_of(&self, node: &str, conn: &mut ConnectionManager) -> Option<String> {
        if let Some(n) = self.known_nodes().into_iter().find(|n| n.id == node) {
            return Some(n.advertise_url);
        }
        self.redis(
            redis::cmd("HGET")
                .arg(self.key("node", node))
                .arg("advertise_url")
                .query_async(conn),
        )
        .await?
    }

    /// Without Redis: the first known peer that says it hosts `room`.
    async fn peer_holding(&self, room: &str) -> Option<NodeInfo> {
        for peer in self.known_nodes() {
            if peer.id != self.node_id()
                && forward::peer_hosts(self, &peer, room, PEER_TIMEOUT).await
            {
                return Some(peer);
            }
        }
        None
    }

    async fn ask_peers(&self, room: &str) -> Option<Placement> {
        let peer = self.peer_holding(room).await?;
        self.0.stats.redirects.fetch_add(1, Ordering::Relaxed);
        Some(Placement::Moved {
            url: config::ws_url_of(&peer.advertise_url),
            node: peer.id,
        })
    }

    /// The owner of a room other than this node, for the control API: from Redis, else from
    /// the peers. None: this node, nobody, or unknown.
    pub async fn remote_owner(&self, room: &str) -> Option<NodeInfo> {
        if self.hosts(room) {
            return None;
        }
        let mut conn = self.0.conn.clone();
        let from_redis: Option<Option<String>> = self
            .redis(
                redis::cmd("GET")
                    .arg(self.key("room", room))
                    .query_async(&mut conn),
            )
            .await;
        let owner = match from_redis {
            Some(v) => v.and_then(|v| v.split(' ').next().map(str::to_owned))?,
            None => return self.peer_holding(room).await,
        };
        if owner == self.node_id() {
            return None;
        }
        self.known_nodes().into_iter().find(|n| n.id == owner)
    }

    /// Whether another node holds `room` in the directory now; None when Redis does not answer.
    pub async fn held_elsewhere(&self, room: &str) -> Option<bool> {
        let mut conn = self.0.conn.clone();
        let v: Option<String> = self
            .redis(
                redis::cmd("GET")
                    .arg(self.key("room", room))
                    .query_async(&mut conn),
            )
            .await?;
        Some(v.is_some_and(|v| v.split(' ').next() != Some(self.node_id())))
    }

    /// A session of `room` is served here (after [`Cluster::locate`] said `Local`).
    pub fn host(&self, room: &str, epoch: i64) -> HostGuard {
        let mut hosted = self.lock_hosted();
        let h = hosted.entry(room.to_owned()).or_insert(Hosted {
            epoch,
            sessions: 0,
            idle_since: None,
        });
        h.sessions += 1;
        h.idle_since = None;
        if epoch > h.epoch {
            h.epoch = epoch;
        }
        HostGuard {
            cluster: self.clone(),
            room: room.to_owned(),
        }
    }

    /// One heartbeat: registry entry, room leases, registry snapshot. Returns rooms lost to
    /// another node.
    async fn beat(&self, load: &NodeLoad) -> Vec<RoomNews> {
        let me = self.me(load);
        let mut conn = self.0.conn.clone();
        let node_key = self.key("node", self.node_id());
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(&node_key, &me.fields())
            .ignore()
            .pexpire(&node_key, NODE_LEASE_MS as i64)
            .ignore()
            .sadd(self.nodes_key(), self.node_id())
            .ignore();
        let registered: Option<()> = self.redis(pipe.query_async(&mut conn)).await;
        if registered.is_none() {
            return Vec::new();
        }
        let news = self.renew_rooms(&mut conn).await;
        self.read_registry(&mut conn, me).await;
        news
    }

    fn me(&self, load: &NodeLoad) -> NodeInfo {
        NodeInfo {
            id: self.node_id().to_owned(),
            state: if self.0.draining.load(Ordering::Relaxed) {
                NodeState::Draining
            } else {
                NodeState::Serving
            },
            advertise_url: self.0.cfg.advertise_url.clone(),
            internal_url: self.0.cfg.internal_url.clone(),
            participants: load.participants,
            rooms: self.lock_hosted().len() as u32,
            capacity: self.0.cfg.capacity,
            cpu: load.cpu,
            updated_ms: crate::unix_millis(),
        }
    }

    async fn renew_rooms(&self, conn: &mut ConnectionManager) -> Vec<RoomNews> {
        // Rooms with no session here past the linger are let go.
        let (keep, gone): (Vec<(String, u32)>, Vec<String>) = {
            let mut hosted = self.lock_hosted();
            let linger = self.0.linger;
            let gone: Vec<String> = hosted
                .iter()
                .filter(|(_, h)| h.idle_since.is_some_and(|t| t.elapsed() >= linger))
                .map(|(r, _)| r.clone())
                .collect();
            for r in &gone {
                hosted.remove(r);
            }
            let keep = hosted
                .iter()
                .map(|(r, h)| (r.clone(), h.sessions))
                .collect();
            (keep, gone)
        };
        if !gone.is_empty() {
            self.release_rooms(conn, &gone).await;
        }
        if keep.is_empty() {
            return Vec::new();
        }
        let mut inv = self.0.renew.prepare_invoke();
        for (room, _) in &keep {
            inv.key(self.key("room", room));
        }
        inv.arg(self.node_id())
            .arg(ROOM_LEASE_MS)
            .arg(self.node_prefix());
        for (_, n) in &keep {
            inv.arg(*n);
        }
        let Some(reply): Option<Vec<String>> = self.redis(inv.invoke_async(conn)).await else {
            return Vec::new();
        };
        let mut lost = Vec::new();
        {
            let mut hosted = self.lock_hosted();
            for ((room, _), r) in keep.iter().zip(reply) {
                match Renewal::parse(&r) {
                    Some(Renewal::Kept(e)) | Some(Renewal::Reclaimed(e)) => {
                        if let Some(h) = hosted.get_mut(room) {
                            h.epoch = e;
                        }
                    }
                    Some(Renewal::Lost(owner)) => {
                        hosted.remove(room);
                        lost.push((room.clone(), owner));
                    }
                    None => {}
                }
            }
        }
        let mut news = Vec::new();
        for (room, owner) in lost {
            self.0.stats.moved_away.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                owner = %owner,
                "a room hosted here is also hosted by a larger node: its sessions here move there"
            );
            // The owner may be unknown yet (this node saw no registry while Redis was down).
            if let Some(url) = self.advertise_of(&owner, conn).await {
                news.push(RoomNews::Lost {
                    room,
                    url: config::ws_url_of(&url),
                    node: owner,
                });
            }
        }
        news
    }

    async fn release_rooms(&self, conn: &mut ConnectionManager, rooms: &[String]) {
        let mut inv = self.0.release.prepare_invoke();
        for room in rooms {
            inv.key(self.key("room", room));
        }
        inv.arg(self.node_id());
        let _: Option<i64> = self.redis(inv.invoke_async(conn)).await;
    }

    async fn read_registry(&self, conn: &mut ConnectionManager, me: NodeInfo) {
        let Some(ids): Option<Vec<String>> = self
            .redis(
                redis::cmd("SMEMBERS")
                    .arg(self.nodes_key())
                    .query_async(conn),
            )
            .await
        else {
            return;
        };
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.key("node", id));
        }
        let Some(hashes): Option<Vec<HashMap<String, String>>> =
            self.redis(pipe.query_async(conn)).await
        else {
            return;
        };
        let mut nodes = Vec::new();
        let mut dead = Vec::new();
        for (id, fields) in ids.iter().zip(hashes) {
            if id == self.node_id() {
                continue;
            }
            match NodeInfo::from_fields(id, &fields) {
                Some(n) => nodes.push(n),
                None if fields.is_empty() => dead.push(id.clone()),
                None => {}
            }
        }
        nodes.push(me);
        if !dead.is_empty() {
            let _: Option<i64> = self
                .redis(
                    redis::cmd("SREM")
                        .arg(self.nodes_key())
                        .arg(&dead)
                        .query_async(conn),
                )
                .await;
        }
        *self.0.nodes.lock().unwrap_or_else(|p| p.into_inner()) = nodes;
    }

    /// SIGTERM: `draining` in the registry at once; new rooms go elsewhere.
    pub async fn start_draining(&self, load: &NodeLoad) {
        self.0.draining.store(true, Ordering::SeqCst);
        self.beat(load).await;
    }

    /// Leaving the cluster: every room this node holds and its registry entry are deleted, so
    /// clients move at once rather than after the leases.
    pub async fn leave(&self) {
        let rooms: Vec<String> = self.lock_hosted().drain().map(|(r, _)| r).collect();
        let mut conn = self.0.conn.clone();
        if !rooms.is_empty() {
            self.release_rooms(&mut conn, &rooms).await;
        }
        let mut pipe = redis::pipe();
        pipe.del(self.key("node", self.node_id()))
            .ignore()
            .srem(self.nodes_key(), self.node_id())
            .ignore();
        let _: Option<()> = self.redis(pipe.query_async(&mut conn)).await;
        tracing::info!(rooms = rooms.len(), "left the cluster");
    }

    /// Rooms hosted here now (for `/readyz` and metrics).
    pub fn hosted_rooms(&self) -> usize {
        self.lock_hosted().len()
    }

    /// The metrics of this module, in Prometheus text.
    pub fn render_metrics(&self) -> String {
        let nodes = self.0.nodes.lock().unwrap_or_else(|p| p.into_inner()).len();
        metrics_text(
            &self.0.stats,
            self.redis_up(),
            self.hosted_rooms(),
            nodes.max(1),
        )
    }
}

/// The cluster's metric families (also rendered with zeros to list their names).
pub fn metrics_text(s: &ClusterStats, redis_up: bool, hosted: usize, nodes: usize) -> String {
    let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
    format!(
        "# HELP consulta_cluster_redis_up Whether the last Redis request of this node succeeded.\n\
         # TYPE consulta_cluster_redis_up gauge\nconsulta_cluster_redis_up {}\n\
         # HELP consulta_cluster_rooms_hosted Rooms this node holds in the cluster directory.\n\
         # TYPE consulta_cluster_rooms_hosted gauge\nconsulta_cluster_rooms_hosted {}\n\
         # HELP consulta_cluster_nodes Nodes in the registry as last read (this one included).\n\
         # TYPE consulta_cluster_nodes gauge\nconsulta_cluster_nodes {}\n\
         # HELP consulta_cluster_redirects_total Joins answered with `moved` (the room lives on another node).\n\
         # TYPE consulta_cluster_redirects_total counter\nconsulta_cluster_redirects_total {}\n\
         # HELP consulta_cluster_takeovers_total Rooms taken over from a node whose lease lapsed.\n\
         # TYPE consulta_cluster_takeovers_total counter\nconsulta_cluster_takeovers_total {}\n\
         # HELP consulta_cluster_api_forwarded_total Control API calls forwarded to the room's node.\n\
         # TYPE consulta_cluster_api_forwarded_total counter\nconsulta_cluster_api_forwarded_total {}\n\
         # HELP consulta_cluster_rooms_moved_away_total Rooms found on a larger node after a split; sessions here moved.\n\
         # TYPE consulta_cluster_rooms_moved_away_total counter\nconsulta_cluster_rooms_moved_away_total {}\n\
         # HELP consulta_cluster_redis_errors_total Redis requests that failed or timed out.\n\
         # TYPE consulta_cluster_redis_errors_total counter\nconsulta_cluster_redis_errors_total {}\n",
        u8::from(redis_up),
        hosted,
        nodes,
        g(&s.redirects),
        g(&s.takeovers),
        g(&s.forwarded),
        g(&s.moved_away),
        g(&s.redis_errors),
    )
}

/// This node's load as the heartbeat reports it.
#[derive(Debug, Clone, Default)]
pub struct NodeLoad {
    pub participants: u32,
    pub cpu: f64,
}

/// Runs the heartbeat until `stop`; `load` is asked each beat; rooms lost to a larger node are
/// handed to `on_lost`.
pub async fn run_heartbeat(
    cluster: Cluster,
    mut load: impl FnMut() -> NodeLoad + Send,
    on_lost: impl Fn(RoomNews) + Send,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut every = crate::Every::new(HEARTBEAT, stop);
    while every.next().await {
        let l = load();
        for news in cluster.beat(&l).await {
            on_lost(news);
        }
    }
}

/// `consulta cluster status`: the registry and each node's rooms, read from Redis.
pub async fn status(cfg: &ClusterConfig) -> Result<Vec<NodeInfo>> {
    let client = redis::Client::open(cfg.redis_url.as_str())
        .context("cluster.redis_url is not a valid Redis URL")?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    .context("Redis did not answer within 3 s")?
    .context("cannot connect to Redis")?;
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{}nodes", cfg.key_prefix))
        .query_async(&mut conn)
        .await?;
    let mut nodes = Vec::new();
    for id in ids {
        let f: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{}node:{id}", cfg.key_prefix))
            .query_async(&mut conn)
            .await?;
        if let Some(n) = NodeInfo::from_fields(&id, &f) {
            nodes.push(n);
        }
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(nodes)
}

/// `cluster status` output: a table (or JSON lines' array) of the nodes.
pub fn status_text(nodes: &[NodeInfo], json: bool) -> String {
    if json {
        let v: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "node": n.id, "state": n.state.as_str(), "rooms": n.rooms,
                    "participants": n.participants, "capacity": n.capacity,
                    "cpu": n.cpu, "load": n.load(), "advertise_url": n.advertise_url,
                    "internal_url": n.internal_url,
                })
            })
            .collect();
        return format!("{}\n", serde_json::Value::Array(v));
    }
    let mut out = format!(
        "{:<20} {:<9} {:>6} {:>13} {:>6} {:>6}  {}\n",
        "NODE", "STATE", "ROOMS", "PARTICIPANTS", "CPU", "LOAD", "ADVERTISE_URL"
    );
    for n in nodes {
        out.push_str(&format!(
            "{:<20} {:<9} {:>6} {:>13} {:>5.0}% {:>5.0}%  {}\n",
            n.id,
            n.state.as_str(),
            n.rooms,
            format!("{}/{}", n.participants, n.capacity),
            n.cpu * 100.0,
            n.load() * 100.0,
            n.advertise_url
        ));
    }
    if nodes.is_empty() {
        out.push_str("(no node is registered)\n");
    }
    out
}
