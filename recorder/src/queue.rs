//! The interleaving queue: complete frames of every track, ordered by timestamp, waiting until
//! the caller's clock is far enough past them to be written in order.

use std::collections::VecDeque;

pub(crate) struct Queued {
    pub(crate) track: usize,
    pub(crate) ts_ms: i64,
    pub(crate) keyframe: bool,
    pub(crate) data: Vec<u8>,
}

/// Complete frames waiting to be written, ordered by timestamp (ties keep arrival order).
#[derive(Default)]
pub(crate) struct FrameQueue {
    pub(crate) frames: VecDeque<Queued>,
    pub(crate) bytes: usize,
}

impl FrameQueue {
    pub(crate) fn insert(&mut self, f: Queued) {
        self.bytes += f.data.len();
        // Frames arrive nearly in order: scanning from the back is almost always O(1).
        let mut at = self.frames.len();
        while at > 0 && self.frames.get(at - 1).is_some_and(|q| q.ts_ms > f.ts_ms) {
            at -= 1;
        }
        self.frames.insert(at, f);
    }

    pub(crate) fn pop_front(&mut self) -> Option<Queued> {
        let f = self.frames.pop_front()?;
        self.bytes = self.bytes.saturating_sub(f.data.len());
        Some(f)
    }

    pub(crate) fn span_ms(&self) -> i64 {
        match (self.frames.front(), self.frames.back()) {
            (Some(a), Some(b)) => b.ts_ms.saturating_sub(a.ts_ms),
            _ => 0,
        }
    }

    /// Removes `track`'s frames from the front of its run up to (not including) its next
    /// keyframe. Returns how many were removed and whether a keyframe was found.
    pub(crate) fn cut_until_keyframe(&mut self, track: usize) -> (u64, bool) {
        let mut removed = 0;
        let mut cutting = true;
        let mut bytes = self.bytes;
        self.frames.retain(|f| {
            if f.track != track || !cutting {
                return true;
            }
            if f.keyframe {
                cutting = false;
                return true;
            }
            removed += 1;
            bytes = bytes.saturating_sub(f.data.len());
            false
        });
        self.bytes = bytes;
        (removed, !cutting)
    }

    pub(crate) fn remove_track(&mut self, track: usize) -> u64 {
        let before = self.frames.len();
        let mut bytes = self.bytes;
        self.frames.retain(|f| {
            if f.track == track {
                bytes = bytes.saturating_sub(f.data.len());
                false
            } else {
                true
            }
        });
        self.bytes = bytes;
        (before - self.frames.len()) as u64
    }
}
