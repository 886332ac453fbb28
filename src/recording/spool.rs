//! The spool: `<spool_dir>/<id>.webm` (the recording, append-only while it runs) and
//! `<spool_dir>/<id>.json` (what is known about it and how far its upload got). The JSON is
//! replaced atomically (write, fsync, rename), so after a crash it is either the old or the
//! new state, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::RecordingStats;

/// The state of one spooled recording.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub id: String,
    pub consultation: String,
    /// File extension: `webm`, or `mkv` when an H264 track is in it.
    pub ext: String,
    /// `recording` while the recorder writes; `closed` when the file is final.
    pub state: String,
    pub created_at: i64,
    /// Tracks in the file (`identity`, `role`, `kind`, `codec`).
    pub tracks: Vec<serde_json::Value>,
    #[serde(default)]
    pub upload_id: Option<String>,
    /// Parts already uploaded.
    #[serde(default)]
    pub parts: Vec<Part>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Part {
    pub number: i32,
    pub etag: String,
    /// Hex MD5 of the part as sent.
    pub md5: String,
    pub size: u64,
}

/// `s` as one file-name component: itself when it is a valid id (which cannot name another
/// directory), else `id-` and the hex SHA-256 of it. The spool's JSON can be edited, and a
/// consultation id may predate the id rules: neither may steer a path out of the spool.
pub fn path_component(s: &str) -> String {
    if consulta_signaling::token::is_valid_id(s) {
        s.to_owned()
    } else {
        use sha2::Digest;
        format!("id-{}", hex::encode(sha2::Sha256::digest(s.as_bytes())))
    }
}

impl Meta {
    pub fn data_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.{}", path_component(&self.id), self.ext()))
    }

    pub fn meta_path(dir: &Path, id: &str) -> PathBuf {
        dir.join(format!("{}.json", path_component(id)))
    }

    /// The extension, when it is one the recorder writes (`webm` otherwise).
    fn ext(&self) -> &str {
        if self.ext == "mkv" {
            "mkv"
        } else {
            "webm"
        }
    }

    /// Where a recording kept on local disk goes: `<dir>/done/<consultation>/<id>.<ext>`, each
    /// part a [`path_component`].
    pub fn local_path(&self, dir: &Path) -> PathBuf {
        dir.join("done")
            .join(path_component(&self.consultation))
            .join(format!("{}.{}", path_component(&self.id), self.ext()))
    }

    /// Object key: `<prefix><consultation>/<id>.<ext>`.
    pub fn key(&self, prefix: &str) -> String {
        format!("{prefix}{}/{}.{}", self.consultation, self.id, self.ext)
    }

    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let path = Self::meta_path(dir, &self.id);
        let tmp = path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        sync_dir(dir);
        Ok(())
    }

    pub fn load(path: &Path) -> std::io::Result<Meta> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }

    /// Every recording in the spool, oldest first (ids sort by time).
    pub fn list(dir: &Path) -> Vec<Meta> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return out;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                match Meta::load(&p) {
                    Ok(m) => out.push(m),
                    Err(err) => {
                        tracing::error!(path = %p.display(), error = %err, "unreadable recording state in the spool; left in place")
                    }
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Bytes of recordings in the spool (data files; the JSON is negligible).
pub fn spool_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "webm" || x == "mkv") {
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

/// The recorder's sink: appends to the spool file, counts against the spool budget, and
/// refuses to grow the spool past its limit (the recording then stops with `spool_full`).
pub struct SpoolFile {
    file: std::io::BufWriter<std::fs::File>,
    stats: Arc<RecordingStats>,
    limit: u64,
    pub written: u64,
    pub full: bool,
}

impl SpoolFile {
    pub fn create(path: &Path, stats: Arc<RecordingStats>, limit: u64) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        Ok(SpoolFile {
            file: std::io::BufWriter::with_capacity(256 * 1024, file),
            stats,
            limit,
            written: 0,
            full: false,
        })
    }

    /// Flushes and fsyncs what was written so far.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()
    }
}

impl Write for SpoolFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let now = self.stats.spool_bytes.load(Ordering::Relaxed);
        if now + buf.len() as u64 > self.limit {
            self.full = true;
            return Err(std::io::Error::other("recording spool is full"));
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        self.stats
            .spool_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(consultation: &str, id: &str, ext: &str) -> Meta {
        Meta {
            id: id.into(),
            consultation: consultation.into(),
            ext: ext.into(),
            state: "closed".into(),
            created_at: 0,
            tracks: Vec::new(),
            upload_id: None,
            parts: Vec::new(),
            size: None,
            duration_ms: None,
            sha256: None,
        }
    }

    #[test]
    fn ids_never_steer_a_path_out_of_the_spool() {
        let dir = Path::new("/spool");
        let ok = meta("appt-42", "1700000000000-0badf00d", "mkv");
        assert_eq!(
            ok.local_path(dir),
            Path::new("/spool/done/appt-42/1700000000000-0badf00d.mkv")
        );
        assert_eq!(
            ok.data_path(dir),
            Path::new("/spool/1700000000000-0badf00d.mkv")
        );
        for (c, id, ext) in [
            ("../../etc", "r1", "webm"),
            ("/etc", "r1", "webm"),
            ("a/../../b", "../../x", "webm"),
            ("ok", "r/../../../y", "webm"),
            ("ok", "r1", "/../../z"),
            ("..", "..", ".."),
        ] {
            let m = meta(c, id, ext);
            for p in [
                m.local_path(dir),
                m.data_path(dir),
                Meta::meta_path(dir, id),
            ] {
                assert!(
                    p.components()
                        .all(|x| !matches!(x, std::path::Component::ParentDir)),
                    "{p:?}"
                );
                assert!(p.starts_with(dir), "{p:?}");
                let depth = p.strip_prefix(dir).unwrap().components().count();
                assert!(depth <= 3, "{p:?}");
            }
            assert_eq!(
                m.local_path(dir).parent().unwrap().parent().unwrap(),
                dir.join("done")
            );
        }
    }
}
