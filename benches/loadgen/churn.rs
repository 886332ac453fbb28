//! Churn for long runs (`--churn-every SECONDS`, scripts/soak.sh): every so often one
//! participant of a random consultation leaves and joins again, so that a soak exercises joins,
//! leaves and the state they create and free, not only forwarding.
//!
//! Owns only the per-participant churn state; `main.rs` asks it whether a participant should
//! leave, tells it when one left or joined, and runs [`Churn::run`] beside the measured window.
//! At most one participant of a consultation is away at a time, so a room never empties (an
//! empty consultation ends, and a closed consultation refuses joins).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use rand::Rng;

/// In the call (or joining for the first time).
const IN: u8 = 0;
/// Asked to leave; leaves at its next turn.
const ASKED: u8 = 1;
/// Left, joining again; in once the server says `joined`.
const REJOINING: u8 = 2;

/// The churn state of one run: one slot per participant, indexed by its bench id
/// (`room * 10 + participant`).
#[derive(Default)]
pub struct Churn {
    every: Option<Duration>,
    participants: usize,
    slots: Vec<AtomicU8>,
    /// Participants that left on request.
    pub left: AtomicU64,
    /// ...and were joined again (`joined` from the server).
    pub rejoined: AtomicU64,
}

impl Churn {
    /// Churn among `rooms` consultations of `participants` each, one leave every `every`
    /// (`None`: no churn).
    pub fn new(every: Option<Duration>, rooms: usize, participants: usize) -> Self {
        Churn {
            every,
            participants,
            slots: (0..rooms * 10).map(|_| AtomicU8::new(IN)).collect(),
            ..Churn::default()
        }
    }

    fn slot(&self, id: u32) -> Option<&AtomicU8> {
        self.slots.get(id as usize)
    }

    /// Whether participant `id` has been asked to leave.
    pub fn asked(&self, id: u32) -> bool {
        self.slot(id)
            .is_some_and(|s| s.load(Ordering::Relaxed) == ASKED)
    }

    /// Participant `id` has left. True when it left on request and should join again.
    pub fn on_left(&self, id: u32) -> bool {
        let rejoin = self.slot(id).is_some_and(|s| {
            s.compare_exchange(ASKED, REJOINING, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        });
        if rejoin {
            self.left.fetch_add(1, Ordering::Relaxed);
        }
        rejoin
    }

    /// The server said `joined` to participant `id`.
    pub fn on_joined(&self, id: u32) {
        let back = self.slot(id).is_some_and(|s| {
            s.compare_exchange(REJOINING, IN, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        });
        if back {
            self.rejoined.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Asks one participant of a random consultation to leave, every `every`, until `stop`.
    /// A consultation that has someone away already is skipped for this turn.
    pub async fn run(&self, stop: &std::sync::atomic::AtomicBool) {
        let Some(every) = self.every else { return };
        let rooms = self.slots.len() / 10;
        if rooms == 0 || self.participants == 0 {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: the window has only just started.
        tick.tick().await;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let (r, p) = {
                let mut rng = rand::rng();
                (
                    rng.random_range(0..rooms),
                    rng.random_range(0..self.participants),
                )
            };
            let room = &self.slots[r * 10..r * 10 + self.participants];
            if room.iter().all(|s| s.load(Ordering::Relaxed) == IN) {
                room[p].store(ASKED, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Churn;
    use std::sync::atomic::Ordering;

    /// Asked → left → joined again, counted once; a participant that leaves at the end of
    /// the run (not asked) does not rejoin.
    #[test]
    fn a_churned_participant_leaves_and_rejoins_once() {
        let c = Churn::new(None, 2, 2);
        assert!(!c.asked(11));
        assert!(!c.on_left(11), "not asked: the run is over, no rejoin");
        c.slots[11].store(super::ASKED, Ordering::Relaxed);
        assert!(c.asked(11));
        assert!(c.on_left(11));
        assert!(!c.asked(11));
        c.on_joined(11);
        c.on_joined(11);
        assert_eq!(c.left.load(Ordering::Relaxed), 1);
        assert_eq!(c.rejoined.load(Ordering::Relaxed), 1);
        // Ids out of range (no churn configured) are never asked.
        assert!(!Churn::default().asked(3));
    }

    /// Never two participants of one consultation away at once.
    #[tokio::test]
    async fn one_participant_per_consultation_at_a_time() {
        let c = std::sync::Arc::new(Churn::new(Some(std::time::Duration::from_millis(5)), 1, 2));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (c, stop) = (c.clone(), stop.clone());
            tokio::spawn(async move { c.run(&stop).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        stop.store(true, Ordering::Relaxed);
        let _ = task.await;
        let away = c
            .slots
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) != super::IN)
            .count();
        assert_eq!(away, 1);
    }
}
