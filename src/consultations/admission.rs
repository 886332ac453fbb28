//! Admission to a consultation's room: reading its policy (bounded, retried while unreadable)
//! and deciding the sessions held meanwhile. Part of [`super::Service`]; nobody is admitted
//! under a policy that could not be read, and a consultation closed here stays closed even when
//! a read of the store does not show it yet.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{Room, Service, SessionControl};
use crate::store::Policy;

/// How often a room whose policy could not be read tries again while joins are held.
pub(super) const POLICY_RETRY: Duration = Duration::from_secs(2);
/// How often a consultation closed here is looked up until the store shows it closed.
const CLOSED_CONFIRM: Duration = Duration::from_secs(30);
/// Most such look-ups a tick makes (each may cost this task a second).
const CLOSED_CONFIRMS_PER_TICK: usize = 8;

/// What reading a consultation from the store gave.
pub(super) enum PolicyRead {
    Known(crate::store::Consultation),
    Absent,
    Unreadable,
}

impl Service {
    /// Reads a consultation, bounded by a second.
    pub(super) async fn read_policy(&self, name: &str) -> PolicyRead {
        match tokio::time::timeout(Duration::from_secs(1), self.store.consultation(name)).await {
            Ok(Ok(Some(c))) => PolicyRead::Known(c),
            Ok(Ok(None)) => PolicyRead::Absent,
            _ => PolicyRead::Unreadable,
        }
    }

    /// Applies what was read to the room; `false` when it stays unreadable.
    pub(super) async fn apply_policy(&mut self, name: &str, read: PolicyRead) -> bool {
        let room = self.rooms.entry(name.to_owned()).or_default();
        match read {
            PolicyRead::Known(c) => {
                if c.status == "closed" {
                    self.closed_here.remove(name);
                }
                room.closed = c.status == "closed" || self.closed_here.contains_key(name);
                room.started = c.started_at.is_some();
                room.scheduled_start = c.scheduled_start;
                room.policy = Some(c.policy);
            }
            PolicyRead::Absent => {
                // First seen here: record it as created (ad hoc, default policy).
                room.closed = self.closed_here.contains_key(name);
                room.policy = Some(Policy::default());
                self.sink
                    // Once per consultation: two nodes (or a restart) that both find it
                    // absent write one `created`.
                    .send(self.factory.make_once(
                        name,
                        "created",
                        "",
                        json!({ "policy": Policy::default(), "ad_hoc": true }),
                    ))
                    .await;
            }
            PolicyRead::Unreadable => {
                room.policy_unreadable = Some(Instant::now());
                return false;
            }
        }
        room.policy_unreadable = None;
        true
    }

    /// Forgets the consultations closed here that the store now shows closed; looks each up at
    /// most every [`CLOSED_CONFIRM`], a few a tick, and stops while the store cannot be read.
    pub(super) async fn confirm_closed(&mut self) {
        let due: Vec<String> = self
            .closed_here
            .iter()
            .filter(|(_, t)| t.elapsed() >= CLOSED_CONFIRM)
            .map(|(n, _)| n.clone())
            .take(CLOSED_CONFIRMS_PER_TICK)
            .collect();
        for name in due {
            match self.read_policy(&name).await {
                PolicyRead::Known(c) if c.status == "closed" => {
                    self.closed_here.remove(&name);
                }
                read => {
                    self.closed_here.insert(name, Instant::now());
                    if matches!(read, PolicyRead::Unreadable) {
                        break;
                    }
                }
            }
        }
    }

    /// The room: cached, else its policy read once (held joins when unreadable, see
    /// [`Service::release_held`]).
    pub(super) async fn room(&mut self, name: &str) -> &mut Room {
        if !self.rooms.contains_key(name) {
            let read = self.read_policy(name).await;
            self.apply_policy(name, read).await;
        }
        self.rooms.get_mut(name).expect("inserted above")
    }

    /// The policy is known now: each held session is admitted, put in the waiting room, or
    /// ended (a closed consultation), as if it had just entered.
    pub(super) fn release_held(&mut self, name: &str) {
        let Some(r) = self.rooms.get_mut(name) else {
            return;
        };
        if r.policy_unreadable.is_some() {
            return;
        }
        let waiting_room = r.policy.as_ref().is_some_and(|p| p.waiting_room);
        let mut announce = Vec::new();
        for s in r.sessions.values_mut().filter(|s| s.held) {
            s.held = false;
            let key = (s.identity.clone(), s.role.clone());
            if r.closed {
                let _ = s.control.try_send(SessionControl::End);
            } else if waiting_room && s.role != "doctor" && !r.admitted.contains(&key) {
                s.waiting = true;
                announce.push(key);
            } else {
                r.admitted.insert(key);
                let _ = s.control.try_send(SessionControl::Admitted);
            }
        }
        for d in r
            .sessions
            .values()
            .filter(|s| s.joined_at.is_some() && s.role == "doctor")
        {
            for (identity, role) in &announce {
                let _ = d.control.try_send(SessionControl::Waiting {
                    identity: identity.clone(),
                    role: role.clone(),
                });
            }
        }
    }
}
