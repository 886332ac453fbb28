//! The uploader: one task that moves spooled recordings to S3-compatible storage (or, without
//! a bucket, into `<spool_dir>/done/`), and the retention purge.
//!
//! Per recording: CreateMultipartUpload when it opens; parts 2..n as soon as the file is long
//! enough, while the call runs; at the end the Duration is patched into part 1's bytes, part 1
//! and the last part go up, the upload is completed and checked (object size, and the S3 ETag
//! against the MD5s of what was sent), and only then the local copy is deleted and
//! `recording_ready` is emitted. Every step is recorded in the spool's JSON, so a restart
//! continues where it stopped; a store that forgot the upload (`NoSuchUpload`) gets it again
//! from the start. Failures back off from 1 s to 30 s and count in
//! `consulta_recording_upload_errors_total`.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use base64::Engine;
use md5::Digest as _;
use serde_json::json;

use super::spool::{Meta, Part};
use super::{RecordingStats, Settings};
use crate::config::S3Config;

/// Adds the SSE-C headers (algorithm, key, key MD5) to a request when a key is configured.
macro_rules! with_sse_c {
    ($store:expr, $req:ident) => {
        if let Some((key, md5)) = &$store.sse_c {
            $req = $req
                .sse_customer_algorithm("AES256")
                .sse_customer_key(key)
                .sse_customer_key_md5(md5);
        }
    };
}
pub enum Notice {
    /// A recording file opened: stream its parts while it grows.
    Opened(String),
    /// A recording file is final: finish its upload.
    Closed(String),
    /// Do one full pass now and say when it is done (shutdown).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A bucket on an S3-compatible store, with the encryption to ask for.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    pub bucket: String,
    sse_s3: bool,
    /// SSE-C: base64 key and base64 MD5 of the key.
    sse_c: Option<(String, String)>,
}

impl S3Store {
    /// The store of `[s3]`, or `None` when no bucket is configured (recordings stay local).
    pub async fn from_config(cfg: &S3Config, key: Option<[u8; 32]>) -> Option<S3Store> {
        let bucket = cfg.bucket.clone()?;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(cfg.region.clone()));
        if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "consulta-config",
            ));
        }
        if let Some(ep) = &cfg.endpoint {
            loader = loader.endpoint_url(ep.clone());
        }
        let sdk = loader.load().await;
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(cfg.path_style)
            // The newer default checksums break several S3-compatible stores.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            )
            .build();
        let b64 = base64::engine::general_purpose::STANDARD;
        Some(S3Store {
            client: aws_sdk_s3::Client::from_conf(conf),
            bucket,
            sse_s3: cfg.server_side_encryption == "AES256",
            sse_c: key.map(|k| (b64.encode(k), b64.encode(md5::Md5::digest(k)))),
        })
    }

    fn encryption(&self) -> &'static str {
        if self.sse_c.is_some() {
            "sse-c"
        } else if self.sse_s3 {
            "sse-s3"
        } else {
            "none"
        }
    }

    async fn create(&self, key: &str, m: &Meta) -> Result<String> {
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(if m.ext == "webm" {
                "video/webm"
            } else {
                "video/x-matroska"
            })
            .metadata("consultation", &m.consultation)
            .metadata("recording", &m.id);
        if self.sse_s3 {
            req = req.server_side_encryption(ServerSideEncryption::Aes256);
        }
        with_sse_c!(self, req);
        let out = req.send().await.context("CreateMultipartUpload")?;
        out.upload_id
            .context("the store answered CreateMultipartUpload without an upload id")
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Vec<u8>,
    ) -> Result<Part, PartError> {
        let md5 = hex::encode(md5::Md5::digest(&body));
        let size = body.len() as u64;
        let mut req = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(size as i64)
            .body(ByteStream::from(body));
        with_sse_c!(self, req);
        let out = req
            .send()
            .await
            .map_err(|e| part_error(e, format!("UploadPart {number}")))?;
        let etag = out.e_tag.unwrap_or_default();
        let plain = etag.trim_matches('"').to_ascii_lowercase();
        if self.sse_c.is_none() && is_md5(&plain) && plain != md5 {
            return Err(PartError::Other(anyhow::anyhow!(
                "part {number}: the store's ETag {plain} is not the MD5 {md5} of what was sent"
            )));
        }
        Ok(Part {
            number,
            etag,
            md5,
            size,
        })
    }

    async fn complete(&self, key: &str, upload_id: &str, parts: &[Part]) -> Result<(), PartError> {
        let done = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| {
                        CompletedPart::builder()
                            .part_number(p.number)
                            .e_tag(&p.etag)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let mut req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(done);
        with_sse_c!(self, req);
        req.send()
            .await
            .map_err(|e| part_error(e, "CompleteMultipartUpload".into()))?;
        Ok(())
    }

    /// Size and ETag of an object as the store has it; `None` when it does not have it.
    async fn head(&self, key: &str) -> Result<Option<(u64, String)>> {
        let mut req = self.client.head_object().bucket(&self.bucket).key(key);
        with_sse_c!(self, req);
        match req.send().await {
            Ok(out) => Ok(Some((
                out.content_length.unwrap_or(-1).max(0) as u64,
                out.e_tag.unwrap_or_default(),
            ))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context("HeadObject")),
        }
    }
}

/// A failed multipart request: the store forgot the upload, or anything else (retried).
fn part_error<E, R>(e: aws_sdk_s3::error::SdkError<E, R>, what: String) -> PartError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if e.code() == Some("NoSuchUpload") {
        PartError::NoSuchUpload
    } else {
        PartError::Other(anyhow::Error::new(e).context(what))
    }
}

enum PartError {
    /// The store does not know the upload (restarted, expired): start it again.
    NoSuchUpload,
    Other(anyhow::Error),
}

fn is_md5(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The ETags a multipart object of these parts may have: AWS's (MD5 of the parts' binary MD5s,
/// `-<parts>`) and Garage's (MD5 of the parts' hex MD5s).
fn multipart_etags(parts: &[Part]) -> Vec<String> {
    let mut aws = md5::Md5::new();
    let mut garage = md5::Md5::new();
    for p in parts {
        match hex::decode(&p.md5) {
            Ok(raw) => aws.update(raw),
            Err(_) => return Vec::new(),
        }
        garage.update(p.md5.as_bytes());
    }
    let n = parts.len();
    vec![
        format!("{}-{n}", hex::encode(aws.finalize())),
        format!("{}-{n}", hex::encode(garage.finalize())),
    ]
}

pub fn start(
    settings: Arc<Settings>,
    store: Option<S3Store>,
    stats: Arc<RecordingStats>,
    events: crate::events::EventSink,
    factory: Arc<crate::events::EventFactory>,
) -> tokio::sync::mpsc::UnboundedSender<Notice> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let up = Uploader {
        settings,
        store,
        stats,
        events,
        factory,
        active: HashSet::new(),
        retry: HashMap::new(),
    };
    tokio::spawn(up.run(rx));
    tx
}

struct Uploader {
    settings: Arc<Settings>,
    store: Option<S3Store>,
    stats: Arc<RecordingStats>,
    events: crate::events::EventSink,
    factory: Arc<crate::events::EventFactory>,
    /// Recordings whose file is still being written.
    active: HashSet<String>,
    /// Backoff per recording: when to try next and the current delay.
    retry: HashMap<String, (Instant, Duration)>,
}

impl Uploader {
    async fn run(mut self, mut rx: tokio::sync::mpsc::UnboundedReceiver<Notice>) {
        // Spools of an earlier run: files still marked `recording` were cut short by a crash.
        for m in Meta::list(&self.settings.spool_dir) {
            if m.state == "recording" {
                tracing::warn!(recording = %m.id, "unfinished recording from an earlier run; repairing and uploading it");
                self.finalize(&m.id).await;
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                n = rx.recv() => match n {
                    Some(Notice::Opened(id)) => { self.active.insert(id); }
                    Some(Notice::Closed(id)) => {
                        self.active.remove(&id);
                        self.finalize(&id).await;
                        self.retry.remove(&id);
                        self.pass().await;
                    }
                    Some(Notice::Flush(done)) => {
                        self.retry.clear();
                        self.pass().await;
                        let _ = done.send(());
                    }
                    None => break,
                },
                _ = tick.tick() => self.pass().await,
            }
        }
    }

    /// One look at every spooled recording.
    async fn pass(&mut self) {
        let list = Meta::list(&self.settings.spool_dir);
        let mut pending = 0;
        for m in list {
            if self
                .retry
                .get(&m.id)
                .is_some_and(|(at, _)| Instant::now() < *at)
            {
                pending += 1;
                continue;
            }
            let active = self.active.contains(&m.id);
            let result = match (active, m.state.as_str()) {
                (true, _) => self.stream(m.clone()).await,
                (false, "closed") => self.finish(m.clone()).await.map(|done| {
                    if !done {
                        pending += 1;
                    }
                }),
                // A file whose writer is gone without closing it (a crashed thread).
                (false, _) => {
                    self.finalize(&m.id).await;
                    Ok(())
                }
            };
            match result {
                Ok(()) => {
                    self.retry.remove(&m.id);
                }
                Err(e) => {
                    pending += 1;
                    self.stats.upload_errors.fetch_add(1, Ordering::Relaxed);
                    let delay = self
                        .retry
                        .get(&m.id)
                        .map_or(Duration::from_secs(1), |(_, d)| {
                            (*d * 2).min(Duration::from_secs(30))
                        });
                    tracing::warn!(recording = %m.id, retry_in_s = delay.as_secs(), error = format!("{e:#}"), "recording upload failed; kept in the spool");
                    self.retry
                        .insert(m.id.clone(), (Instant::now() + delay, delay));
                }
            }
            if active {
                pending += 1;
            }
        }
        self.stats.pending.store(pending, Ordering::Relaxed);
    }

    /// Makes a file final: cut to its last complete element, Duration patched, checksummed.
    async fn finalize(&mut self, id: &str) {
        let dir = self.settings.spool_dir.clone();
        let part = self.settings.part_size;
        let id = id.to_owned();
        let stats = self.stats.clone();
        let res = tokio::task::spawn_blocking(move || finalize_file(&dir, &id, part, &stats)).await;
        match res {
            Ok(Ok(Some(m))) => {
                tracing::info!(recording = %m.id, bytes = m.size, duration_ms = m.duration_ms, "recording file closed")
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = format!("{e:#}"), "cannot close a recording file")
            }
            Err(e) => tracing::error!(error = %e, "recording finalizer panicked"),
        }
    }

    /// While the file grows: the parts after the first, as soon as they are complete.
    async fn stream(&mut self, mut m: Meta) -> Result<()> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let dir = &self.settings.spool_dir;
        let p = self.settings.part_size;
        let len = std::fs::metadata(m.data_path(dir)).map_or(0, |md| md.len());
        let key = m.key(&self.settings.prefix);
        let mut n = 2i32;
        while (n as u64) * p <= len {
            if !m.parts.iter().any(|x| x.number == n) {
                let upload_id = self.ensure_upload(&store, &mut m, &key).await?;
                let body = read_range(&m.data_path(dir), (n as u64 - 1) * p, p)?;
                match store.upload_part(&key, &upload_id, n, body).await {
                    Ok(part) => {
                        self.stats
                            .uploaded_bytes
                            .fetch_add(part.size, Ordering::Relaxed);
                        m.parts.push(part);
                        m.save(dir)?;
                    }
                    Err(PartError::NoSuchUpload) => {
                        return self.restart(m, "the store lost the multipart upload")
                    }
                    Err(PartError::Other(e)) => return Err(e),
                }
            }
            n += 1;
        }
        Ok(())
    }

    async fn ensure_upload(&self, store: &S3Store, m: &mut Meta, key: &str) -> Result<String> {
        if let Some(id) = &m.upload_id {
            return Ok(id.clone());
        }
        let id = store.create(key, m).await?;
        m.upload_id = Some(id.clone());
        m.save(&self.settings.spool_dir)?;
        Ok(id)
    }

    /// The store forgot the upload: start it again from the spooled file.
    /// Forgets the upload so the next attempt sends the spooled file again from the start;
    /// always an error, so the attempt is counted and backed off.
    fn restart<T>(&self, mut m: Meta, why: &str) -> Result<T> {
        tracing::warn!(recording = %m.id, why, "uploading the recording again from the start");
        m.upload_id = None;
        m.parts.clear();
        m.save(&self.settings.spool_dir)?;
        bail!("{why}: uploading again from the start")
    }

    /// A closed file: the rest of its parts, completion, verification. `Ok(true)` when it is
    /// stored and the spool copy is gone.
    async fn finish(&mut self, mut m: Meta) -> Result<bool> {
        let dir = self.settings.spool_dir.clone();
        let size = m.size.context("closed recording without a size")?;
        let Some(store) = self.store.clone() else {
            return self.keep_local(m).map(|_| true);
        };
        let key = m.key(&self.settings.prefix);
        let p = self.settings.part_size;
        let last = size.div_ceil(p).max(1) as i32;
        // Part 1 (header, patched Duration) goes last of all.
        let order: Vec<i32> = (2..=last).chain(std::iter::once(1)).collect();
        for n in order {
            if m.parts.iter().any(|x| x.number == n) {
                continue;
            }
            let upload_id = self.ensure_upload(&store, &mut m, &key).await?;
            let start = (n as u64 - 1) * p;
            let body = read_range(&m.data_path(&dir), start, p.min(size - start))?;
            match store.upload_part(&key, &upload_id, n, body).await {
                Ok(part) => {
                    self.stats
                        .uploaded_bytes
                        .fetch_add(part.size, Ordering::Relaxed);
                    m.parts.push(part);
                    m.save(&dir)?;
                }
                Err(PartError::NoSuchUpload) => {
                    return self.restart(m, "the store lost the multipart upload")
                }
                Err(PartError::Other(e)) => return Err(e),
            }
        }
        m.parts.sort_by_key(|x| x.number);
        let upload_id = self.ensure_upload(&store, &mut m, &key).await?;
        match store.complete(&key, &upload_id, &m.parts).await {
            Ok(()) => {}
            // Completed by an earlier attempt whose answer was lost: the check below decides.
            Err(PartError::NoSuchUpload) => {}
            Err(PartError::Other(e)) => return Err(e),
        }
        // A store that is down is retried as it is; only an object that is missing or of the
        // wrong size is uploaded again from the start.
        let etag = match store.head(&key).await? {
            Some((stored, etag)) if stored == size => etag,
            _ => return self.restart(m, "the stored object is missing or of the wrong size"),
        };
        let etag = etag.trim_matches('"').to_ascii_lowercase();
        // Every part's ETag was checked against its MD5 as it went up; the object's ETag is
        // checked too where the store computes it a known way. An unknown scheme is not a
        // reason to upload forever: the size and the parts already match.
        let known = multipart_etags(&m.parts);
        if store.sse_c.is_none() && etag.contains('-') && !known.contains(&etag) {
            tracing::warn!(recording = %m.id, %etag, "the store's multipart ETag follows an unknown scheme; verified by size and part MD5s");
        }
        // Verified: the store holds exactly the spooled bytes.
        let payload = json!({
            "recording_id": m.id,
            "storage": "s3",
            "bucket": store.bucket,
            "key": key,
            "size": size,
            "duration_ms": m.duration_ms,
            "sha256": m.sha256,
            "etag": etag,
            "tracks": m.tracks,
            "encryption": store.encryption(),
        });
        self.ready(&m, payload).await;
        Ok(true)
    }

    /// No bucket: the recording is kept on local disk under `<spool_dir>/done/`.
    fn keep_local(&self, m: Meta) -> Result<()> {
        let dir = &self.settings.spool_dir;
        let target = m.local_path(dir);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(m.data_path(dir), &target)?;
        let payload = json!({
            "recording_id": m.id,
            "storage": "local",
            "path": target.display().to_string(),
            "key": format!("{}/{}.{}", m.consultation, m.id, m.ext),
            "size": m.size,
            "duration_ms": m.duration_ms,
            "sha256": m.sha256,
            "tracks": m.tracks,
            "encryption": "none",
        });
        let m2 = m.clone();
        let events = self.events.clone();
        let factory = self.factory.clone();
        tokio::spawn(async move {
            events
                .send(factory.make(&m2.consultation, "recording_ready", payload))
                .await;
        });
        self.forget(&m, false);
        Ok(())
    }

    async fn ready(&self, m: &Meta, payload: serde_json::Value) {
        tracing::info!(recording = %m.id, bytes = m.size, "recording stored and verified");
        self.events
            .send(
                self.factory
                    .make(&m.consultation, "recording_ready", payload),
            )
            .await;
        self.forget(m, true);
    }

    /// Drops a recording from the spool (its data file only when `delete_data`).
    fn forget(&self, m: &Meta, delete_data: bool) {
        let dir = &self.settings.spool_dir;
        if delete_data {
            if let Err(e) = std::fs::remove_file(m.data_path(dir)) {
                tracing::warn!(error = %e, "cannot delete an uploaded recording from the spool");
            }
        }
        let _ = std::fs::remove_file(Meta::meta_path(dir, &m.id));
        self.stats.release_spool(m.size.unwrap_or(0));
        self.stats.ready.fetch_add(1, Ordering::Relaxed);
    }
}

fn read_range(path: &Path, start: u64, len: u64) -> Result<Vec<u8>> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf)?;
    if buf.len() as u64 != len {
        bail!("spool file is shorter than expected");
    }
    Ok(buf)
}

/// Closes a spooled file for upload (blocking I/O). `None` when there is nothing to upload
/// (no usable media): the file is removed.
fn finalize_file(
    dir: &Path,
    id: &str,
    part_size: u64,
    stats: &RecordingStats,
) -> Result<Option<Meta>> {
    let mut m = Meta::load(&Meta::meta_path(dir, id))?;
    if m.state == "closed" {
        return Ok(Some(m));
    }
    let path = m.data_path(dir);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    let written = f.metadata()?.len();
    let scan = consulta_recorder::scan::scan(&mut f)?;
    if !scan.has_tracks || scan.clusters == 0 {
        drop(f);
        tracing::warn!(recording = %id, "recording holds no media; removed");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(Meta::meta_path(dir, id));
        stats.release_spool(written);
        return Ok(None);
    }
    f.set_len(scan.complete_len)?;
    stats.release_spool(written.saturating_sub(scan.complete_len));
    if !consulta_recorder::scan::patch_duration(&mut f, &scan, scan.duration_ms)? {
        tracing::warn!(recording = %id, "recording header has no room for its Duration");
    }
    f.sync_all()?;
    f.seek(SeekFrom::Start(0))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    m.size = Some(scan.complete_len);
    m.duration_ms = Some(scan.duration_ms);
    m.sha256 = Some(hex::encode(h.finalize()));
    m.state = "closed".into();
    // Parts sent while recording stay valid only if the bytes they cover did not change.
    let size = scan.complete_len;
    m.parts
        .retain(|x| x.number > 1 && (x.number as u64) * part_size <= size);
    m.save(dir)?;
    Ok(Some(m))
}

/// A recording past its retention period, deleted.
#[derive(Debug, Clone)]
pub struct Purged {
    pub consultation: String,
    pub key: String,
    pub age_days: u64,
}

impl Purged {
    /// The `recording_deleted` event's payload.
    pub fn payload(&self) -> serde_json::Value {
        json!({ "key": self.key, "reason": "retention", "age_days": self.age_days })
    }
}

/// Deletes recordings older than `days` from the store (or local disk). `dry_run` only lists.
pub async fn purge(
    store: Option<&S3Store>,
    spool_dir: &Path,
    prefix: &str,
    days: u64,
    dry_run: bool,
) -> Result<Vec<Purged>> {
    let now = std::time::SystemTime::now();
    let cutoff = Duration::from_secs(days * 86_400);
    let mut out = Vec::new();
    match store {
        Some(store) => {
            let mut pages = store
                .client
                .list_objects_v2()
                .bucket(&store.bucket)
                .prefix(prefix)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.context("ListObjectsV2")?;
                for o in page.contents() {
                    let (Some(key), Some(modified)) = (o.key(), o.last_modified()) else {
                        continue;
                    };
                    let modified =
                        std::time::SystemTime::try_from(*modified).unwrap_or(std::time::UNIX_EPOCH);
                    let age = now.duration_since(modified).unwrap_or_default();
                    if age < cutoff {
                        continue;
                    }
                    let consultation = key
                        .strip_prefix(prefix)
                        .and_then(|r| r.split('/').next())
                        .unwrap_or_default()
                        .to_owned();
                    if !dry_run {
                        store
                            .client
                            .delete_object()
                            .bucket(&store.bucket)
                            .key(key)
                            .send()
                            .await
                            .with_context(|| format!("DeleteObject {key}"))?;
                    }
                    out.push(Purged {
                        consultation,
                        key: key.to_owned(),
                        age_days: age.as_secs() / 86_400,
                    });
                }
            }
        }
        None => {
            let done = spool_dir.join("done");
            for c in std::fs::read_dir(&done).into_iter().flatten().flatten() {
                for f in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                    let age = f
                        .metadata()
                        .and_then(|m| m.modified())
                        .map(|t| now.duration_since(t).unwrap_or_default())
                        .unwrap_or_default();
                    if age < cutoff {
                        continue;
                    }
                    if !dry_run {
                        std::fs::remove_file(f.path())?;
                    }
                    out.push(Purged {
                        consultation: c.file_name().to_string_lossy().into_owned(),
                        key: format!(
                            "{}/{}",
                            c.file_name().to_string_lossy(),
                            f.file_name().to_string_lossy()
                        ),
                        age_days: age.as_secs() / 86_400,
                    });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_etag_is_md5_of_md5s() {
        let a = Part {
            number: 1,
            etag: String::new(),
            md5: hex::encode(md5::Md5::digest(b"hello")),
            size: 5,
        };
        let b = Part {
            number: 2,
            etag: String::new(),
            md5: hex::encode(md5::Md5::digest(b"world")),
            size: 5,
        };
        let mut h = md5::Md5::new();
        h.update(md5::Md5::digest(b"hello"));
        h.update(md5::Md5::digest(b"world"));
        assert_eq!(
            multipart_etags(&[a, b])[0],
            format!("{}-2", hex::encode(h.finalize()))
        );
        assert!(is_md5("5d41402abc4b2a76b9719d911017c592"));
        assert!(!is_md5("5d41402abc4b2a76b9719d911017c592-2"));
    }
}
