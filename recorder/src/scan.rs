//! Reads back a file this crate wrote, once it is on disk: where its last complete element ends
//! (a crash can leave half a cluster), where the Duration goes (over the Void the header
//! reserves, or an existing Duration), and how long the recording is (from the block times).
//! The caller patches the Duration in place with [`patch_duration`].

use std::io::{Read, Seek, SeekFrom, Write};

use crate::mkv::id::{
    CLUSTER, DURATION, EBML, INFO, SEGMENT, SIMPLE_BLOCK, TIMESTAMP, TRACKS, VOID,
};

/// Not written by this crate, but valid Matroska a scan must step through.
const BLOCK_GROUP: u32 = 0xA0;
const BLOCK: u32 = 0xA1;

#[derive(Debug, Default, PartialEq)]
pub struct Scan {
    /// Bytes up to the end of the last complete top-level element.
    pub complete_len: u64,
    /// Offset and width (4 or 8) of the Duration float, when the Info has one.
    pub duration_at: Option<(u64, usize)>,
    /// Offset of the 11-byte Void the recorder reserves in Info for a Duration.
    pub duration_slot: Option<u64>,
    /// End of the last block, in ms from the start of the recording.
    pub duration_ms: u64,
    pub has_tracks: bool,
    pub clusters: u64,
}

/// An element ID (marker bits kept) and its width.
fn read_id(b: &[u8]) -> Option<(u32, usize)> {
    let first = *b.first()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 4 || b.len() < len {
        return None;
    }
    let mut v = 0u32;
    for x in &b[..len] {
        v = (v << 8) | u32::from(*x);
    }
    Some((v, len))
}

/// A size (marker bits removed; `None` inside for "unknown") and its width.
fn read_size(b: &[u8]) -> Option<(Option<u64>, usize)> {
    let first = *b.first()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 || b.len() < len {
        return None;
    }
    let mut v = u64::from(first) & (0xFF >> len);
    let mut all_ones = v == (0xFF >> len);
    for x in &b[1..len] {
        v = (v << 8) | u64::from(*x);
        all_ones &= *x == 0xFF;
    }
    Some((if all_ones { None } else { Some(v) }, len))
}

/// Children of a master element's body: (id, data offset within body, data length).
fn children(body: &[u8]) -> impl Iterator<Item = (u32, usize, usize)> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let (id, il) = read_id(body.get(pos..)?)?;
        let (size, sl) = read_size(body.get(pos + il..)?)?;
        let start = pos + il + sl;
        let len = usize::try_from(size?).ok()?;
        if start.checked_add(len)? > body.len() {
            return None;
        }
        pos = start + len;
        Some((id, start, len))
    })
}

/// Relative timestamp of a (Simple)Block body: track number vint, then an i16.
fn block_ts(b: &[u8]) -> Option<i64> {
    let (_, tl) = read_size(b)?;
    let t = b.get(tl..tl + 2)?;
    Some(i64::from(i16::from_be_bytes([t[0], t[1]])))
}

pub fn scan<F: Read + Seek>(f: &mut F) -> std::io::Result<Scan> {
    let len = f.seek(SeekFrom::End(0))?;
    let mut out = Scan::default();
    let mut head = [0u8; 12];
    let mut read_head = |f: &mut F, at: u64| -> std::io::Result<Option<(u32, Option<u64>, u64)>> {
        f.seek(SeekFrom::Start(at))?;
        let want = usize::try_from((len - at).min(12)).unwrap_or(12);
        f.read_exact(&mut head[..want])?;
        let Some((id, il)) = read_id(&head[..want]) else {
            return Ok(None);
        };
        let Some((size, sl)) = read_size(&head[il..want]) else {
            return Ok(None);
        };
        Ok(Some((id, size, (il + sl) as u64)))
    };
    // EBML header, then the Segment (unknown size while live).
    let Some((EBML, Some(size), hl)) = read_head(f, 0)? else {
        return Ok(out);
    };
    let seg_at = hl + size;
    if seg_at >= len {
        return Ok(out);
    }
    let Some((SEGMENT, _, hl)) = read_head(f, seg_at)? else {
        return Ok(out);
    };
    let mut pos = seg_at + hl;
    out.complete_len = pos;
    let mut last_end: i64 = 0;
    while pos < len {
        let Some((id, Some(size), hl)) = read_head(f, pos)? else {
            break;
        };
        let end = pos + hl + size;
        if end > len {
            break;
        }
        let data_at = pos + hl;
        match id {
            INFO | CLUSTER => {
                let mut body = vec![0u8; usize::try_from(size).unwrap_or(0)];
                f.seek(SeekFrom::Start(data_at))?;
                f.read_exact(&mut body)?;
                if id == INFO {
                    for (cid, at, l) in children(&body) {
                        if cid == DURATION && (l == 4 || l == 8) {
                            out.duration_at = Some((data_at + at as u64, l));
                        }
                        // The Void the header reserves (1-byte ID and size): room for a Duration.
                        if cid == VOID && l == crate::mkv::DURATION_ELEMENT_LEN - 2 && at >= 2 {
                            out.duration_slot = Some(data_at + at as u64 - 2);
                        }
                    }
                } else {
                    out.clusters += 1;
                    let mut cluster_ts = 0i64;
                    for (cid, at, l) in children(&body) {
                        let data = &body[at..at + l];
                        match cid {
                            TIMESTAMP => {
                                cluster_ts = data.iter().fold(0i64, |v, b| (v << 8) | i64::from(*b))
                            }
                            // A block whose time is past i64 is no block of a recording.
                            SIMPLE_BLOCK => {
                                if let Some(t) =
                                    block_ts(data).and_then(|t| cluster_ts.checked_add(t))
                                {
                                    last_end = last_end.max(t);
                                }
                            }
                            BLOCK_GROUP => {
                                for (gid, gat, gl) in children(data) {
                                    if gid == BLOCK {
                                        if let Some(t) = block_ts(&data[gat..gat + gl])
                                            .and_then(|t| cluster_ts.checked_add(t))
                                        {
                                            last_end = last_end.max(t);
                                        }
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            TRACKS => out.has_tracks = true,
            _ => {}
        }
        out.complete_len = end;
        pos = end;
    }
    // The last frame lasts about one audio frame.
    out.duration_ms = u64::try_from(last_end).unwrap_or(0) + 20;
    Ok(out)
}

/// Writes the final Duration (ms, the TimestampScale unit) into the Info: over the existing
/// Duration, or as a Duration element over the reserved Void.
pub fn patch_duration<F: Write + Seek>(f: &mut F, scan: &Scan, ms: u64) -> std::io::Result<bool> {
    if let Some((at, width)) = scan.duration_at {
        f.seek(SeekFrom::Start(at))?;
        if width == 8 {
            f.write_all(&(ms as f64).to_be_bytes())?;
        } else {
            f.write_all(&(ms as f32).to_be_bytes())?;
        }
        return Ok(true);
    }
    if let Some(at) = scan.duration_slot {
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&crate::mkv::duration_element(ms as f64))?;
        return Ok(true);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ids() {
        assert_eq!(read_id(&[0x1A, 0x45, 0xDF, 0xA3]), Some((EBML, 4)));
        assert_eq!(read_id(&[0xE7]), Some((TIMESTAMP, 1)));
        assert_eq!(read_size(&[0x81]), Some((Some(1), 1)));
        assert_eq!(read_size(&[0x40, 0x02]), Some((Some(2), 2)));
        assert_eq!(
            read_size(&[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),
            Some((None, 8))
        );
        assert_eq!(read_size(&[]), None);
        assert_eq!(read_id(&[0x00]), None);
    }

    /// Found while writing the `webm_scan` fuzz target (its input is in
    /// fuzz/regressions/webm_scan): a cluster Timestamp near the ends of i64 plus a block's
    /// relative time overflowed (a panic in debug builds, a wrapped duration in release).
    #[test]
    fn block_time_past_the_range_is_ignored() {
        let mut f = vec![0x1A, 0x45, 0xDF, 0xA3, 0x80];
        f.extend_from_slice(&[
            0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        // SimpleBlocks: track 1, relative time +32767 or -32768, flags.
        let late = [0xA3, 0x84, 0x81, 0x7F, 0xFF, 0x80];
        let early = [0xA3, 0x84, 0x81, 0x80, 0x00, 0x80];
        for (cluster_ts, blocks) in [
            (i64::MAX - 15, vec![late]),
            (i64::MIN + 3, vec![early]),
            (1_000, vec![late, early]),
        ] {
            let mut body = vec![0xE7, 0x88];
            body.extend_from_slice(&cluster_ts.to_be_bytes());
            body.extend(blocks.concat());
            f.extend_from_slice(&[0x1F, 0x43, 0xB6, 0x75, 0x80 | body.len() as u8]);
            f.extend_from_slice(&body);
        }
        let s = scan(&mut std::io::Cursor::new(&f)).unwrap();
        assert_eq!(s.clusters, 3);
        assert_eq!(s.complete_len, f.len() as u64);
        // Only the representable blocks count: the last cluster's, ending at 1000 + 32767.
        assert_eq!(s.duration_ms, 1_000 + 32_767 + 20);
    }

    #[test]
    fn garbage_does_not_panic() {
        let mut x: u32 = 12345;
        for n in 0..2000usize {
            let mut v = Vec::with_capacity(n % 300);
            for _ in 0..(n % 300) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                v.push(x as u8);
            }
            if n % 3 == 0 && v.len() > 4 {
                v[..4].copy_from_slice(&[0x1A, 0x45, 0xDF, 0xA3]);
            }
            let _ = scan(&mut std::io::Cursor::new(v));
        }
    }
}
