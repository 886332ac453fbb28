//! Call events on their way to the database: never blocking media, never lost.
//!
//! Producers (signaling sessions, the consultation service, the API) hand events to an
//! [`EventSink`] — a bounded queue whose `send` waits only the sender's task, never a media
//! worker. One writer task stores them in order through [`Store::apply_event`]. When the
//! database does not answer, events go to an append-only journal in the data dir (one JSON line
//! each, fsync'd before the next is taken) and, from then on, every event does, to keep order;
//! once a second the writer replays the journal into the database and truncates it when all of
//! it is in. `apply_event` is idempotent by event id, so a crash between the two is harmless:
//! every event lands exactly once.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::store::{CallEvent, Store};

/// Events waiting for the writer before senders wait.
const QUEUE: usize = 4096;
/// How long one database write may take before the event goes to the journal.
const DB_TIMEOUT: Duration = Duration::from_secs(3);

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
    pub written: AtomicU64,
    pub journaled: AtomicU64,
    pub replayed: AtomicU64,
    pub journal_pending: AtomicI64,
    pub queue_depth: AtomicI64,
}

#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<CallEvent>,
    pub stats: Arc<WriterStats>,
}

impl EventSink {
    /// Waits until every event sent so far is in the database or the journal, up to `limit`;
    /// false if some were not.
    pub async fn flushed(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.stats.queue_depth.load(Ordering::Relaxed) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
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

/// Starts the writer task.
pub fn start_writer(store: Store, journal: PathBuf, webhook_urls: Vec<String>) -> EventSink {
    let (tx, rx) = mpsc::channel(QUEUE);
    let stats = Arc::new(WriterStats::default());
    let writer = Writer {
        store,
        journal,
        webhook_urls,
        stats: stats.clone(),
    };
    tokio::spawn(writer.run(rx));
    EventSink { tx, stats }
}

struct Writer {
    store: Store,
    journal: PathBuf,
    webhook_urls: Vec<String>,
    stats: Arc<WriterStats>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<CallEvent>) {
        let mut journaling = self.pending_lines() > 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                ev = rx.recv() => {
                    let Some(ev) = ev else { break };
                    // Counted until stored or journaled: a shutdown waits for 0 (`flushed`).
                    if !journaling && self.write(&ev).await {
                        self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                    journaling = true;
                    if let Err(e) = self.append(&ev) {
                        // Nothing else can hold it: say so loudly, keep going.
                        tracing::error!(error = %e, event = %ev.id, "cannot journal an event; it is lost");
                    }
                    self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                }
                _ = tick.tick() => {
                    if journaling {
                        journaling = !self.replay().await;
                    }
                }
            }
        }
    }

    async fn write(&self, ev: &CallEvent) -> bool {
        match tokio::time::timeout(DB_TIMEOUT, self.store.apply_event(ev, &self.webhook_urls)).await
        {
            Ok(Ok(_)) => {
                self.stats.written.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "database write failed; journaling events");
                false
            }
            Err(_) => {
                tracing::warn!("database write timed out; journaling events");
                false
            }
        }
    }

    fn append(&self, ev: &CallEvent) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal)?;
        let mut line = serde_json::to_vec(ev)?;
        line.push(b'\n');
        f.write_all(&line)?;
        f.sync_data()?;
        self.stats.journaled.fetch_add(1, Ordering::Relaxed);
        self.stats.journal_pending.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn pending_lines(&self) -> usize {
        let n = std::fs::read_to_string(&self.journal)
            .map(|s| s.lines().filter(|l| !l.trim().is_empty()).count())
            .unwrap_or(0);
        self.stats
            .journal_pending
            .store(n as i64, Ordering::Relaxed);
        n
    }

    /// Replays the journal in order; true when all of it is in the database (journal removed).
    async fn replay(&self) -> bool {
        let text = match std::fs::read_to_string(&self.journal) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the event journal");
                return false;
            }
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let ev: CallEvent = match serde_json::from_str(line) {
                Ok(ev) => ev,
                Err(e) => {
                    // A torn last line (crash mid-write) has no complete event to lose.
                    tracing::warn!(error = %e, "skipping an unreadable journal line");
                    continue;
                }
            };
            if !self.write(&ev).await {
                return false;
            }
            self.stats.replayed.fetch_add(1, Ordering::Relaxed);
        }
        // Everything read is stored; events journaled meanwhile are appended after `text`.
        match std::fs::read_to_string(&self.journal) {
            Ok(now) if now.len() == text.len() => {
                if let Err(e) = std::fs::remove_file(&self.journal) {
                    tracing::error!(error = %e, "cannot remove the replayed journal");
                    return false;
                }
                self.stats.journal_pending.store(0, Ordering::Relaxed);
                tracing::info!("event journal replayed into the database");
                true
            }
            _ => false,
        }
    }
}
