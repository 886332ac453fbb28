//! Lifecycle timers driven from the database, for consultations no process has in memory: a
//! call whose server restarted (or, in cluster mode, whose node died) and that nobody rejoined,
//! and a scheduled consultation whose no-show time passed while no server watched it.
//!
//! Every few seconds this task reads the database: each `active` consultation that neither this
//! node's consultation service nor (cluster mode) another node holds has its sessions still open
//! closed (`participant_left`, reason `server_restart`, or `server_lost` in cluster mode) and,
//! after `[consultation] empty_room_end` with nobody back, ends with `ended` (same reason). Each
//! scheduled consultation past its no-show time gets `no_show` for the roles that never joined.
//! Every one of these events has an id derived from what it is about
//! ([`EventFactory::make_once`]): nodes and restarts that see the same orphan write it once.
//!
//! A single node also closes, once after it starts, every session still open that an earlier
//! process opened (`server_restart`): a call rejoined within seconds of a restart is held again
//! before it looks orphaned twice, and a call that never started is not `active` at all, so the
//! sweep above would leave their sessions open for good. In cluster mode the node that takes a
//! room over closes them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Consultations, Request, Timings};
use crate::cluster::Cluster;
use crate::events::{EventFactory, EventSink};
use crate::store::Store;

const SWEEP: Duration = Duration::from_secs(5);
const DB_TIMEOUT: Duration = Duration::from_secs(5);
/// How far back scheduled starts are looked at for no-shows.
const NO_SHOW_HORIZON_MS: i64 = 7 * 24 * 3600 * 1000;

pub struct Sweeper {
    pub store: Store,
    pub sink: EventSink,
    pub factory: Arc<EventFactory>,
    pub consultations: Consultations,
    pub cluster: Option<Cluster>,
    pub timings: Timings,
    /// Unix ms when this process started.
    pub booted_at: i64,
}

/// Most sessions of earlier processes closed per sweep.
const EARLIER_SESSIONS_BATCH: usize = 1000;

impl Sweeper {
    fn reason(&self) -> &'static str {
        if self.cluster.is_some() {
            "server_lost"
        } else {
            "server_restart"
        }
    }

    /// Runs until `stop`.
    pub async fn run(self, stop: tokio::sync::watch::Receiver<bool>) {
        // Since when each orphan has been seen without anyone holding it, and whether its
        // sessions were closed.
        let mut orphans: HashMap<String, (Instant, bool)> = HashMap::new();
        let mut earlier_closed = self.cluster.is_some();
        let mut every = crate::Every::new(SWEEP, stop);
        while every.next().await {
            if !earlier_closed {
                earlier_closed = self.close_earlier_sessions().await;
            }
            self.calls(&mut orphans).await;
            self.no_shows().await;
        }
    }

    /// Whether some process holds `room` (None: cannot tell now).
    async fn held(&self, room: &str) -> Option<bool> {
        let live = self
            .consultations
            .ask(|reply| Request::Live {
                room: room.to_owned(),
                reply,
            })
            .await?;
        if live {
            return Some(true);
        }
        match &self.cluster {
            Some(c) if c.hosts(room) => Some(true),
            Some(c) => c.held_elsewhere(room).await,
            None => Some(false),
        }
    }

    /// Whether the database reflects every event this process made (nothing queued for the
    /// writer or waiting in the journal): only then is "still active" in it worth acting on.
    fn store_current(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.sink.stats.journal_pending.load(Relaxed) == 0
            && self.sink.stats.queue_depth.load(Relaxed) == 0
    }

    async fn calls(&self, orphans: &mut HashMap<String, (Instant, bool)>) {
        if !self.store_current() {
            return;
        }
        let Ok(Ok(active)) =
            tokio::time::timeout(DB_TIMEOUT, self.store.active_consultations()).await
        else {
            return;
        };
        orphans.retain(|id, _| active.iter().any(|(a, _)| a == id));
        for (room, started_at) in active {
            match self.held(&room).await {
                Some(false) => {}
                Some(true) => {
                    orphans.remove(&room);
                    continue;
                }
                None => continue,
            }
            let Some(&(since, closed)) = orphans.get(&room) else {
                // Seen once: acted on at the next sweep if still nobody's (a room this node
                // just ended and forgot may still read `active` for a moment).
                orphans.insert(room, (Instant::now(), false));
                continue;
            };
            if !closed {
                tracing::info!(
                    "a started consultation is held by no server; its open sessions are closed"
                );
                self.close_sessions(&room).await;
                orphans.insert(room.clone(), (since, true));
            }
            if since.elapsed() >= self.timings.empty_room_end {
                let payload = json!({ "reason": self.reason() });
                let key = format!("orphan:{started_at}");
                let ev = self.factory.make_once(&room, "ended", &key, payload);
                self.sink.send(ev).await;
                orphans.remove(&room);
            }
        }
    }

    async fn close_sessions(&self, room: &str) {
        let Ok(Ok(open)) = tokio::time::timeout(DB_TIMEOUT, self.store.open_sessions(room)).await
        else {
            return;
        };
        for (session, identity, role) in open {
            let payload = json!({
                "session_id": session, "identity": identity, "role": role,
                "reason": self.reason(),
            });
            let ev = self
                .factory
                .make_once(room, "participant_left", &session, payload);
            self.sink.send(ev).await;
        }
    }

    /// Single node: closes the sessions still open that were opened before this process
    /// started; true once none is left.
    async fn close_earlier_sessions(&self) -> bool {
        if !self.store_current() {
            return false;
        }
        let read = self
            .store
            .open_sessions_before(self.booted_at, EARLIER_SESSIONS_BATCH);
        let Ok(Ok(open)) = tokio::time::timeout(DB_TIMEOUT, read).await else {
            return false;
        };
        let done = open.len() < EARLIER_SESSIONS_BATCH;
        if !open.is_empty() {
            tracing::info!(
                sessions = open.len(),
                "closing the sessions an earlier process left open"
            );
        }
        for (room, session, identity, role) in open {
            let payload = json!({
                "session_id": session, "identity": identity, "role": role,
                "reason": self.reason(),
            });
            let ev = self
                .factory
                .make_once(&room, "participant_left", &session, payload);
            self.sink.send(ev).await;
        }
        done
    }

    async fn no_shows(&self) {
        let now = crate::unix_millis();
        let until = now - self.timings.no_show_after.as_millis() as i64;
        let read = self
            .store
            .no_show_candidates(until - NO_SHOW_HORIZON_MS, until);
        let Ok(Ok(due)) = tokio::time::timeout(DB_TIMEOUT, read).await else {
            return;
        };
        for (room, joined) in due {
            // A process holding the room reports its no-show itself (same event id).
            if self.held(&room).await != Some(false) {
                continue;
            }
            for role in ["doctor", "patient"] {
                if !joined.iter().any(|r| r == role) {
                    let ev =
                        self.factory
                            .make_once(&room, "no_show", role, json!({ "role": role }));
                    self.sink.send(ev).await;
                }
            }
        }
    }
}
