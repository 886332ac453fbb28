//! Call events on their way to the database: never blocking media, never lost.
//!
//! Producers (signaling sessions, the consultation service, the API) hand events to an
//! [`EventSink`] — a bounded queue whose `send` waits only the sender's task, never a media
//! worker. The writer ([`journal`]) appends every event to an fsync'd journal in the data dir
//! first, a batch per fsync, and a second task applies the journal to the database in order
//! through [`Store::apply_event`]: a slow or unreachable database makes the journal longer, never
//! the queue, so joins do not wait on it. `apply_event` is idempotent by event id, so a crash
//! between the two steps is harmless: every event lands exactly once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::store::{CallEvent, Store};

/// Events waiting for the writer before senders wait.
const QUEUE: usize = 4096;

mod journal;

/// Makes events with ids unique across restarts and `seq` increasing (microsecond clock, bumped).
pub struct EventFactory {
    last_seq: AtomicI64,
}

impl Default for EventFactory {
    fn default() -> Self {
        EventFactory {
            last_seq: AtomicI64::new(0),
        }
    }
}

impl EventFactory {
    pub fn make(&self, consultation: &str, kind: &str, payload: Value) -> CallEvent {
        let now_us = crate::unix_millis() * 1000;
        let seq = self
            .last_seq
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now_us.max(last + 1))
            })
            .map(|last| now_us.max(last + 1))
            .unwrap_or(now_us);
        let id = {
            use rand::Rng;
            let bytes: [u8; 16] = rand::rng().random();
            hex::encode(bytes)
        };
        CallEvent {
            id,
            seq,
            consultation_id: consultation.to_owned(),
            kind: kind.to_owned(),
            at: seq / 1000,
            payload,
        }
    }
}

impl EventFactory {
    /// An event that happens at most once for (`consultation`, `kind`, `key`), whichever node
    /// or run makes it: its id is derived from them, so a second copy is a replay the store
    /// ignores (e.g. `participant_left` of a dead node's session, closed by every node that
    /// might take its room over).
    pub fn make_once(
        &self,
        consultation: &str,
        kind: &str,
        key: &str,
        payload: Value,
    ) -> CallEvent {
        use sha2::Digest;
        let mut ev = self.make(consultation, kind, payload);
        let digest = sha2::Sha256::new()
            .chain_update(consultation.as_bytes())
            .chain_update([0])
            .chain_update(kind.as_bytes())
            .chain_update([0])
            .chain_update(key.as_bytes())
            .finalize();
        ev.id = hex::encode(&digest[..16]);
        ev
    }
}

/// An event as the API and webhooks show it.
#[derive(Debug, Serialize)]
pub struct EventView<'a> {
    pub id: &'a str,
    pub seq: i64,
    pub consultation_id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub at: String,
    pub payload: &'a Value,
}

impl<'a> From<&'a CallEvent> for EventView<'a> {
    fn from(e: &'a CallEvent) -> Self {
        EventView {
            id: &e.id,
            seq: e.seq,
            consultation_id: &e.consultation_id,
            kind: &e.kind,
            at: crate::rfc3339(e.at),
            payload: &e.payload,
        }
    }
}

/// Counters of the writer, for /metrics.
#[derive(Default)]
pub struct WriterStats {
    /// Events stored in the database.
    pub written: AtomicU64,
    /// Events appended to the journal (every event is, before it is stored).
    pub journaled: AtomicU64,
    /// Events stored after the database had failed or timed out (or left by an earlier run).
    pub replayed: AtomicU64,
    /// Events in the journal not yet in the database.
    pub journal_pending: AtomicI64,
    /// Events sent but not yet journaled.
    pub queue_depth: AtomicI64,
    /// The last database write failed or timed out (it is retried every second).
    pub db_failing: AtomicBool,
}

#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<CallEvent>,
    pub stats: Arc<WriterStats>,
}

impl EventSink {
    /// Waits, up to `limit`, until every event sent so far is in the journal, and then in the
    /// database unless the database is failing (they stay in the journal for the next start);
    /// false if some were not even journaled.
    pub async fn flushed(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let s = &self.stats;
        loop {
            let queued = s.queue_depth.load(Ordering::Relaxed) > 0;
            let unstored = s.journal_pending.load(Ordering::Relaxed) > 0
                && !s.db_failing.load(Ordering::Relaxed);
            if !queued && !unstored {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return !queued;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Queues an event; waits (this task only) if the writer is behind.
    pub async fn send(&self, ev: CallEvent) {
        self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(ev).await.is_err() {
            self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("event writer has stopped; an event was not recorded");
        }
    }
}

/// Starts the writer: events are journaled first, then stored (see [`journal`]).
pub fn start_writer(store: Store, journal: PathBuf, webhook_urls: Vec<String>) -> EventSink {
    let (tx, rx) = mpsc::channel(QUEUE);
    let stats = Arc::new(WriterStats::default());
    journal::start(store, journal, webhook_urls, stats.clone(), rx);
    EventSink { tx, stats }
}
