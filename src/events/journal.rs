//! The event journal: every call event is appended here (one JSON line, fsync'd a batch at a
//! time) before anything else happens to it, and a second task applies the journal to the
//! database in order. The queue in front of it drains at the disk's pace whatever the database
//! does: a slow database (not only a failed one) makes the journal longer instead of stalling the
//! sessions that send events. Once the applier has stored all of it, the file is removed.
//!
//! Two tasks share the file: the appender appends under [`Shared::lock`]; the applier reads
//! without it (it consumes whole lines only, so a half-written append is left for later) and
//! removes the file under it, only when nothing was appended past what it applied.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use super::WriterStats;
use crate::store::{CallEvent, Store};

/// Most events appended with one fsync.
const BATCH: usize = 256;
/// How long one database write may take before it counts as failed and is retried.
const DB_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between attempts while the database fails.
const RETRY: Duration = Duration::from_secs(1);
/// Most bytes of journal read at a time.
const READ_CHUNK: u64 = 1 << 20;

struct Shared {
    path: PathBuf,
    /// Held while appending and while deciding to remove the file.
    lock: Mutex<()>,
    /// Wakes the applier after an append.
    appended: Notify,
    stats: Arc<WriterStats>,
}

pub(super) fn start(
    store: Store,
    path: PathBuf,
    webhook_urls: Vec<String>,
    stats: Arc<WriterStats>,
    rx: mpsc::Receiver<CallEvent>,
) {
    let leftover = repair(&path);
    stats
        .journal_pending
        .store(leftover as i64, Ordering::Relaxed);
    let shared = Arc::new(Shared {
        path,
        lock: Mutex::new(()),
        appended: Notify::new(),
        stats,
    });
    tokio::spawn(append_loop(
        rx,
        shared.clone(),
        store.clone(),
        webhook_urls.clone(),
    ));
    tokio::spawn(
        Applier {
            shared,
            store,
            webhook_urls,
            offset: 0,
            recovering: leftover > 0,
        }
        .run(),
    );
}

/// Events a previous run left in the journal. A torn last line (a crash mid-append) is ended
/// with a newline so that the next append does not glue an event onto it.
fn repair(path: &Path) -> usize {
    let Ok(text) = std::fs::read(path) else {
        return 0;
    };
    if !text.is_empty() && !text.ends_with(b"\n") {
        let end = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(b"\n").and_then(|_| f.sync_data()));
        if let Err(e) = end {
            tracing::error!(error = %e, "cannot repair the event journal's torn last line");
        }
    }
    text.split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .count()
}

async fn append_loop(
    mut rx: mpsc::Receiver<CallEvent>,
    shared: Arc<Shared>,
    store: Store,
    webhook_urls: Vec<String>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut lines = Vec::new();
    while let Some(ev) = rx.recv().await {
        batch.push(ev);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        lines.clear();
        for ev in &batch {
            if serde_json::to_writer(&mut lines, ev).is_ok() {
                lines.push(b'\n');
            }
        }
        let n = batch.len() as i64;
        match append(&shared, &lines, n) {
            Ok(()) => {
                shared.stats.queue_depth.fetch_sub(n, Ordering::Relaxed);
                shared.appended.notify_one();
            }
            Err(e) => {
                // The disk refuses (full, read-only): the database is the only place left.
                tracing::error!(error = %e, events = n, "cannot journal call events; writing them to the database directly");
                for ev in &batch {
                    let stored =
                        tokio::time::timeout(DB_TIMEOUT, store.apply_event(ev, &webhook_urls))
                            .await;
                    if matches!(stored, Ok(Ok(_))) {
                        shared.stats.written.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tracing::error!(event = %ev.id, "a call event could be neither journaled nor stored; it is lost");
                    }
                    shared.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        batch.clear();
    }
}

/// Appends `n` events' lines and counts them pending (under the lock, as the applier's
/// "all applied" is decided under it).
fn append(shared: &Shared, lines: &[u8], n: i64) -> std::io::Result<()> {
    let _held = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&shared.path)?;
    f.write_all(lines)?;
    f.sync_data()?;
    let s = &shared.stats;
    s.journaled.fetch_add(n as u64, Ordering::Relaxed);
    s.journal_pending.fetch_add(n, Ordering::Relaxed);
    Ok(())
}

struct Applier {
    shared: Arc<Shared>,
    store: Store,
    webhook_urls: Vec<String>,
    /// Bytes of the journal already applied.
    offset: u64,
    /// The database failed since the journal was last empty (or the journal is an earlier
    /// run's): what is stored now counts as replayed.
    recovering: bool,
}

impl Applier {
    async fn run(mut self) {
        let mut chunk = Vec::new();
        loop {
            match self.read(&mut chunk) {
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the event journal");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
            if self.apply(&chunk).await > 0 {
                continue;
            }
            if self.shared.stats.db_failing.load(Ordering::Relaxed) {
                tokio::time::sleep(RETRY).await;
            } else {
                // All applied (the file is then removed), or an append is half-way: wait for
                // the next append.
                self.caught_up();
                let _ = tokio::time::timeout(RETRY, self.shared.appended.notified()).await;
            }
        }
    }

    /// The journal's complete lines after `offset`, up to [`READ_CHUNK`] bytes.
    fn read(&self, chunk: &mut Vec<u8>) -> std::io::Result<()> {
        chunk.clear();
        let mut f = match std::fs::File::open(&self.shared.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        f.seek(SeekFrom::Start(self.offset))?;
        f.take(READ_CHUNK).read_to_end(chunk)?;
        match chunk.iter().rposition(|b| *b == b'\n') {
            Some(end) => chunk.truncate(end + 1),
            None => chunk.clear(),
        }
        Ok(())
    }

    /// Stores the lines of `chunk` in order; stops at the first the database does not take.
    /// Returns how many lines were consumed.
    async fn apply(&mut self, chunk: &[u8]) -> usize {
        let mut consumed = 0;
        for line in chunk.split_inclusive(|b| *b == b'\n') {
            let text = line.trim_ascii();
            if !text.is_empty() {
                match serde_json::from_slice::<CallEvent>(text) {
                    Ok(ev) => {
                        if !self.store(&ev).await {
                            return consumed;
                        }
                    }
                    // A torn line (a crash mid-append, repaired at start) holds no whole event.
                    Err(e) => tracing::warn!(error = %e, "skipping an unreadable journal line"),
                }
                self.shared
                    .stats
                    .journal_pending
                    .fetch_sub(1, Ordering::Relaxed);
            }
            self.offset += line.len() as u64;
            consumed += 1;
        }
        consumed
    }

    async fn store(&mut self, ev: &CallEvent) -> bool {
        let s = &self.shared.stats;
        let stored =
            tokio::time::timeout(DB_TIMEOUT, self.store.apply_event(ev, &self.webhook_urls)).await;
        match stored {
            Ok(Ok(_)) => {
                s.written.fetch_add(1, Ordering::Relaxed);
                if self.recovering {
                    s.replayed.fetch_add(1, Ordering::Relaxed);
                }
                s.db_failing.store(false, Ordering::Relaxed);
                true
            }
            Ok(Err(e)) => {
                if !s.db_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "database write failed; call events wait in the journal");
                }
                self.recovering = true;
                false
            }
            Err(_) => {
                if !s.db_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!("database write timed out; call events wait in the journal");
                }
                self.recovering = true;
                false
            }
        }
    }

    /// When everything journaled is stored, removes the file (under the append lock, so
    /// nothing lands in it meanwhile).
    fn caught_up(&mut self) {
        let _held = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
        let len = match std::fs::metadata(&self.shared.path) {
            Ok(m) => m.len(),
            Err(_) => {
                self.offset = 0;
                return;
            }
        };
        if len != self.offset {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.shared.path) {
            tracing::error!(error = %e, "cannot remove the applied event journal");
            return;
        }
        if self.recovering {
            tracing::info!("event journal replayed into the database");
        }
        self.offset = 0;
        self.recovering = false;
        self.shared
            .stats
            .journal_pending
            .store(0, Ordering::Relaxed);
    }
}
