//! Connection quality per participant, as a pure state machine: what the server measures on a
//! participant's uplink (its tracks arriving) and downlink (what it is sent) — loss, RTT, the
//! bandwidth estimate toward it, whether its video had to pause — becomes one level, assessed
//! once a second. A worse level is reported at once, a better one only after it held for
//! [`UPGRADE_AFTER`] assessments, so the room is not told of every passing burst. A level of
//! `poor` or worse held for [`POOR_REPORT`] is reported once more, for the consultation's record.

use std::time::{Duration, Instant};

use consulta_signaling::protocol::QualityLevel;

/// How often the level is assessed.
pub const ASSESS_EVERY: Duration = Duration::from_secs(1);
/// Assessments a better level must hold before it is reported.
pub const UPGRADE_AFTER: u32 = 3;
/// How long `poor` (or worse) lasts before it is reported for the record.
pub const POOR_REPORT: Duration = Duration::from_secs(10);

/// Loss (fraction) and RTT from which a link is `good` rather than `excellent`, and `poor`.
const GOOD_LOSS: f32 = 0.02;
const POOR_LOSS: f32 = 0.10;
const GOOD_RTT: Duration = Duration::from_millis(200);
const POOR_RTT: Duration = Duration::from_millis(500);
/// Downlink estimates (bit/s) under which a participant receiving video is `good`, and `poor`:
/// under ~1 Mbit/s it gets less than HD, under ~300 kbit/s barely any video.
const GOOD_ESTIMATE: u64 = 1_000_000;
const POOR_ESTIMATE: u64 = 300_000;

/// What one assessment looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct Link {
    /// Its connection (signaling or ICE) is lost.
    pub lost: bool,
    /// Its received video is paused because its downlink cannot carry it.
    pub video_paused: bool,
    /// The bandwidth estimate toward it, when it receives video under the rate it wants.
    pub estimate: Option<u64>,
}

/// What changed at one poll.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// The level to announce, when it changed.
    pub level: Option<QualityLevel>,
    /// It has been `poor` or worse for this long (reported once per episode).
    pub poor_for: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct Quality {
    /// Worst loss and RTT reported since the last assessment (any track, either direction).
    loss: Option<f32>,
    rtt: Option<Duration>,
    next: Option<Instant>,
    told: Option<QualityLevel>,
    /// A better level than `told`, and for how many assessments it held.
    better: Option<(QualityLevel, u32)>,
    poor_since: Option<Instant>,
    poor_reported: bool,
}

/// The level of one second of measurements.
pub fn assess(loss: Option<f32>, rtt: Option<Duration>, link: Link) -> QualityLevel {
    if link.lost {
        return QualityLevel::Lost;
    }
    let loss = loss.unwrap_or(0.0);
    let rtt = rtt.unwrap_or_default();
    let estimate = link.estimate.unwrap_or(u64::MAX);
    if link.video_paused || loss >= POOR_LOSS || rtt >= POOR_RTT || estimate < POOR_ESTIMATE {
        QualityLevel::Poor
    } else if loss >= GOOD_LOSS || rtt >= GOOD_RTT || estimate < GOOD_ESTIMATE {
        QualityLevel::Good
    } else {
        QualityLevel::Excellent
    }
}

impl Quality {
    /// One stream's statistics (str0m reports each once a second), or the transport-wide loss
    /// of what the server sent it (its TWCC feedback, several times a second).
    pub fn on_stats(&mut self, loss: Option<f32>, rtt: Option<Duration>) {
        if let Some(l) = loss.filter(|l| l.is_finite()) {
            self.loss = Some(self.loss.map_or(l, |m| m.max(l)));
        }
        if let Some(r) = rtt {
            self.rtt = Some(self.rtt.map_or(r, |m| m.max(r)));
        }
    }

    /// Assesses when due (and at once when the connection is lost).
    pub fn poll(&mut self, now: Instant, link: Link) -> Report {
        let due = self.next.is_none_or(|n| now >= n);
        let newly_lost = link.lost && self.told != Some(QualityLevel::Lost);
        if !due && !newly_lost {
            return Report::default();
        }
        self.next = Some(now + ASSESS_EVERY);
        let level = assess(self.loss.take(), self.rtt.take(), link);
        let mut report = Report::default();
        match self.told {
            Some(told) if level > told => {
                self.told = Some(level);
                self.better = None;
                report.level = Some(level);
            }
            Some(told) if level < told && told != QualityLevel::Lost => {
                let held = match self.better {
                    Some((l, n)) if l == level => n + 1,
                    _ => 1,
                };
                self.better = Some((level, held));
                if held >= UPGRADE_AFTER {
                    self.told = Some(level);
                    self.better = None;
                    report.level = Some(level);
                }
            }
            Some(_) if level < QualityLevel::Lost && self.told == Some(QualityLevel::Lost) => {
                // Back from a lost connection: said at once.
                self.told = Some(level);
                self.better = None;
                report.level = Some(level);
            }
            Some(_) => self.better = None,
            None => {
                self.told = Some(level);
                report.level = Some(level);
            }
        }
        if self.told >= Some(QualityLevel::Poor) {
            let since = *self.poor_since.get_or_insert(now);
            if !self.poor_reported && now.duration_since(since) >= POOR_REPORT {
                self.poor_reported = true;
                report.poor_for = Some(now.duration_since(since));
            }
        } else {
            self.poor_since = None;
            self.poor_reported = false;
        }
        report
    }

    /// The level last reported.
    pub fn level(&self) -> Option<QualityLevel> {
        self.told
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn good_link() -> Link {
        Link {
            estimate: Some(2_500_000),
            ..Link::default()
        }
    }

    #[test]
    fn levels_follow_loss_rtt_estimate_and_pauses() {
        let ms = Duration::from_millis;
        assert_eq!(
            assess(Some(0.0), Some(ms(20)), good_link()),
            QualityLevel::Excellent
        );
        assert_eq!(
            assess(Some(0.03), Some(ms(20)), good_link()),
            QualityLevel::Good
        );
        assert_eq!(assess(None, Some(ms(250)), good_link()), QualityLevel::Good);
        assert_eq!(assess(Some(0.15), None, good_link()), QualityLevel::Poor);
        let slow = Link {
            estimate: Some(200_000),
            ..Link::default()
        };
        assert_eq!(assess(None, None, slow), QualityLevel::Poor);
        let paused = Link {
            video_paused: true,
            ..good_link()
        };
        assert_eq!(assess(None, None, paused), QualityLevel::Poor);
        let lost = Link {
            lost: true,
            ..good_link()
        };
        assert_eq!(assess(None, None, lost), QualityLevel::Lost);
        // Not receiving video: no estimate counts.
        assert_eq!(assess(None, None, Link::default()), QualityLevel::Excellent);
    }

    #[test]
    fn worse_is_told_at_once_better_only_after_it_held() {
        let t0 = Instant::now();
        let mut q = Quality::default();
        assert_eq!(q.poll(t0, good_link()).level, Some(QualityLevel::Excellent));
        // Not due yet: nothing.
        q.on_stats(Some(0.2), None);
        assert_eq!(q.poll(t0 + S / 2, good_link()), Report::default());
        assert_eq!(q.poll(t0 + S, good_link()).level, Some(QualityLevel::Poor));
        // Better for two assessments: not yet; the third tells.
        assert_eq!(q.poll(t0 + 2 * S, good_link()).level, None);
        assert_eq!(q.poll(t0 + 3 * S, good_link()).level, None);
        assert_eq!(
            q.poll(t0 + 4 * S, good_link()).level,
            Some(QualityLevel::Excellent)
        );
        // A burst in between restarts the count.
        q.on_stats(Some(0.05), None);
        assert_eq!(
            q.poll(t0 + 5 * S, good_link()).level,
            Some(QualityLevel::Good)
        );
        assert_eq!(q.poll(t0 + 6 * S, good_link()).level, None);
        q.on_stats(Some(0.05), None);
        assert_eq!(q.poll(t0 + 7 * S, good_link()).level, None);
        assert_eq!(q.poll(t0 + 8 * S, good_link()).level, None);
        assert_eq!(q.poll(t0 + 9 * S, good_link()).level, None);
        assert_eq!(
            q.poll(t0 + 10 * S, good_link()).level,
            Some(QualityLevel::Excellent)
        );
    }

    #[test]
    fn lost_is_told_at_once_and_so_is_the_return() {
        let t0 = Instant::now();
        let mut q = Quality::default();
        q.poll(t0, good_link());
        let lost = Link {
            lost: true,
            ..good_link()
        };
        assert_eq!(q.poll(t0 + S / 10, lost).level, Some(QualityLevel::Lost));
        assert_eq!(q.poll(t0 + S / 5, lost), Report::default());
        assert_eq!(
            q.poll(t0 + 2 * S, good_link()).level,
            Some(QualityLevel::Excellent)
        );
    }

    #[test]
    fn ten_seconds_of_poor_are_reported_once_per_episode() {
        let t0 = Instant::now();
        let mut q = Quality::default();
        let paused = Link {
            video_paused: true,
            ..good_link()
        };
        let mut reports = Vec::new();
        for i in 0..25u32 {
            if let Some(d) = q.poll(t0 + i * S, paused).poor_for {
                reports.push((i, d));
            }
        }
        assert_eq!(reports, vec![(10, 10 * S)]);
        // Recovered (after the upgrade delay), then poor again: a new episode.
        for i in 25..30u32 {
            q.poll(t0 + i * S, good_link());
        }
        assert_eq!(q.level(), Some(QualityLevel::Excellent));
        let mut again = 0;
        for i in 30..45u32 {
            again += usize::from(q.poll(t0 + i * S, paused).poor_for.is_some());
        }
        assert_eq!(again, 1);
    }
}
