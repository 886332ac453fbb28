//! Recording with consent: from a room's media tap to a verified object in S3-compatible
//! storage, with nothing lost on the way.
//!
//! ```text
//!  worker (RecordTap, bounded, lossy) ──► recorder thread ──► spool/<id>.webm ──► uploader task ──► S3
//!                                         consulta-recorder     (append-only,      multipart while the
//!                                         (depacketize, mux)     fsync per part)    call runs; part 1 last
//! ```
//!
//! * The consultation service decides *when* a room is recorded (policy, consent of everyone
//!   present) and calls [`Recordings::start`]/[`Recordings::stop`].
//! * One recorder thread per running recording turns tapped RTP into one WebM (Matroska when an
//!   H264 track is in it) holding every participant's tracks. A participant who starts
//!   publishing a new track while it runs closes the file and opens the next one (each file is
//!   a complete recording; the manifest of a consultation is its `recording_ready` events).
//! * Everything is written to the spool directory first. The uploader sends parts 2..n while
//!   the call runs and part 1 (which holds the header and its final Duration) last, completes
//!   the multipart upload, checks size and ETag against what it sent, and only then deletes the
//!   local copy and emits `recording_ready`. While the store is down the spool grows, bounded by
//!   `max_spool_bytes`; after a crash, unfinished spools are repaired (cut to the last complete
//!   cluster) and uploaded on start.

mod spool;
mod upload;
mod writer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use consulta_sfu::SfuHandle;

pub use upload::{purge, S3Store};

/// Counters and gauges of recording, for `/metrics`.
#[derive(Default)]
pub struct RecordingStats {
    pub active: AtomicU64,
    pub started: AtomicU64,
    pub tap_dropped: Arc<AtomicU64>,
    pub frames_dropped: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub spool_limit: AtomicU64,
    pub spool_full: AtomicU64,
    pub pending: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub upload_errors: AtomicU64,
    pub ready: AtomicU64,
    pub purged: AtomicU64,
}

impl RecordingStats {
    /// A recording of `bytes` left the spool (uploaded, moved, or dropped empty).
    pub fn release_spool(&self, bytes: u64) {
        let _ = self
            .spool_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(bytes))
            });
    }
}

/// Why a recording could not start.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("the recording spool is full")]
    SpoolFull,
    #[error("the room is not hosted by a media worker")]
    NoRoom,
    #[error("the media worker is busy")]
    Busy,
    #[error("cannot write the spool: {0}")]
    Io(#[from] std::io::Error),
}

/// Settings of the recording pipeline (a slice of the config).
#[derive(Clone)]
pub struct Settings {
    pub spool_dir: PathBuf,
    pub max_spool_bytes: u64,
    pub part_size: u64,
    pub retention_days: u64,
    /// `<prefix>` of object keys.
    pub prefix: String,
}

struct Running {
    id: String,
    thread: std::thread::JoinHandle<()>,
}

/// The recording pipeline: clonable handle.
#[derive(Clone)]
pub struct Recordings {
    settings: Arc<Settings>,
    stats: Arc<RecordingStats>,
    running: Arc<Mutex<HashMap<String, Running>>>,
    uploader: tokio::sync::mpsc::UnboundedSender<upload::Notice>,
}

/// Told to the consultation service when a recording stopped on its own.
pub type StopNotice = Box<dyn Fn(String, String, &'static str) + Send + Sync>;

impl Recordings {
    /// Starts the uploader (which first picks up spools left by an earlier run).
    pub fn start(
        settings: Settings,
        store: Option<S3Store>,
        events: crate::events::EventSink,
        factory: Arc<crate::events::EventFactory>,
    ) -> std::io::Result<Recordings> {
        std::fs::create_dir_all(&settings.spool_dir)?;
        let stats = Arc::new(RecordingStats::default());
        stats
            .spool_limit
            .store(settings.max_spool_bytes, Ordering::Relaxed);
        stats
            .spool_bytes
            .store(spool::spool_bytes(&settings.spool_dir), Ordering::Relaxed);
        let settings = Arc::new(settings);
        let uploader = upload::start(settings.clone(), store, stats.clone(), events, factory);
        Ok(Recordings {
            settings,
            stats,
            running: Default::default(),
            uploader,
        })
    }

    pub fn stats(&self) -> &Arc<RecordingStats> {
        &self.stats
    }

    /// Starts recording `room` (a consultation) on the worker hosting it; returns the recording
    /// id. `on_stop(room, id, reason)` is called if the recording stops on its own.
    pub fn start_room(
        &self,
        room: &str,
        sfu: &SfuHandle,
        on_stop: StopNotice,
    ) -> Result<String, RecordingError> {
        if self.stats.spool_bytes.load(Ordering::Relaxed) + self.settings.part_size
            > self.settings.max_spool_bytes
        {
            self.stats.spool_full.fetch_add(1, Ordering::Relaxed);
            return Err(RecordingError::SpoolFull);
        }
        let worker = sfu.room_worker(room).ok_or(RecordingError::NoRoom)?;
        self.stop_room(room, sfu);
        let id = recording_id();
        let (tx, rx) = crossbeam_channel::bounded(8192);
        let tap = consulta_sfu::RecordTap {
            tx,
            dropped: self.stats.tap_dropped.clone(),
        };
        sfu.send(
            worker,
            consulta_sfu::Command::Record {
                room: room.to_owned(),
                tap: Some(tap),
            },
        )
        .map_err(|_| RecordingError::Busy)?;
        let ctx = writer::Context {
            room: room.to_owned(),
            first_id: id.clone(),
            settings: self.settings.clone(),
            stats: self.stats.clone(),
            sfu: sfu.clone(),
            worker,
            rx,
            uploader: self.uploader.clone(),
            on_stop,
        };
        let thread = std::thread::Builder::new()
            .name("consulta-recorder".into())
            .spawn(move || writer::run(ctx))?;
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.insert(
            room.to_owned(),
            Running {
                id: id.clone(),
                thread,
            },
        );
        Ok(id)
    }

    /// Stops recording `room`: the worker drops its tap and the recorder thread closes the file.
    pub fn stop_room(&self, room: &str, sfu: &SfuHandle) -> Option<String> {
        let r = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room)?;
        if let Some(worker) = sfu.room_worker(room) {
            let cmd = consulta_sfu::Command::Record {
                room: room.to_owned(),
                tap: None,
            };
            if sfu.send(worker, cmd).is_err() {
                tracing::warn!("media worker busy; the recording stops when the room empties");
            }
        }
        // The thread ends when the worker drops the tap; nobody waits for it here.
        drop(r.thread);
        Some(r.id)
    }

    /// At shutdown: waits (bounded) for recorder threads to close their files, then lets the
    /// uploader finish what it is sending. Whatever is left is uploaded on the next start.
    pub async fn shutdown(&self, wait: std::time::Duration) {
        let threads: Vec<Running> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, r)| r)
            .collect();
        let deadline = tokio::time::Instant::now() + wait;
        for r in threads {
            while !r.thread.is_finished() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.uploader.send(upload::Notice::Flush(tx)).is_ok() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let _ = tokio::time::timeout(left.max(std::time::Duration::from_secs(2)), rx).await;
        }
    }
}

/// `<unix ms>-<8 hex>`: sortable by time, unique.
fn recording_id() -> String {
    use rand::Rng;
    let r: u32 = rand::rng().random();
    format!("{}-{r:08x}", crate::unix_millis())
}

/// Deletes recordings past `retention_days` once an hour, each logged as `recording_deleted`.
pub async fn retention_task(
    settings: Settings,
    store: Option<S3Store>,
    events: crate::events::EventSink,
    factory: Arc<crate::events::EventFactory>,
    stats: Arc<RecordingStats>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        match purge(
            store.as_ref(),
            &settings.spool_dir,
            &settings.prefix,
            settings.retention_days,
            false,
        )
        .await
        {
            Ok(gone) => {
                for p in gone {
                    stats.purged.fetch_add(1, Ordering::Relaxed);
                    events
                        .send(factory.make(&p.consultation, "recording_deleted", p.payload()))
                        .await;
                }
            }
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "retention purge failed; retried in an hour"
            ),
        }
    }
}

impl Recordings {
    /// A snapshot for `/metrics`.
    pub fn numbers(&self) -> crate::metrics::RecordingNumbers {
        let s = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        crate::metrics::RecordingNumbers {
            active: l(&s.active),
            started: l(&s.started),
            tap_dropped: l(&s.tap_dropped),
            frames_dropped: l(&s.frames_dropped),
            spool_bytes: l(&s.spool_bytes),
            spool_limit: l(&s.spool_limit),
            spool_full: l(&s.spool_full),
            pending: l(&s.pending),
            uploaded_bytes: l(&s.uploaded_bytes),
            upload_errors: l(&s.upload_errors),
            ready: l(&s.ready),
            purged: l(&s.purged),
        }
    }
}

impl Recordings {
    /// Whether the spool has room for a new recording (two parts' worth).
    pub fn has_room(&self) -> bool {
        self.stats.spool_bytes.load(Ordering::Relaxed) + 2 * self.settings.part_size
            <= self.settings.max_spool_bytes
    }
}
