//! A consultation's recording as the consultation service decides it: wanted (policy
//! `required`, or `on_request` and asked through the API), running only with two or more in the
//! call who all consent, and started, stopped and told to every participant to match. Part of
//! [`super::Service`]; the recording pipeline itself is [`crate::recording`].
//!
//! A wanted recording never silently does not happen: when it cannot start (spool full,
//! recorder failure) or stops on its own, participants are told why (`recording` with a
//! `reason`) and a call event says so (`recording_failed`, `recording_stopped`).

use std::time::{Duration, Instant};

use consulta_signaling::protocol::RecordingState;
use serde_json::json;

use super::{Request, Room, Service, SessionControl};

/// A recording stopped by a full spool or a disk error is tried again after this, once the
/// spool has room.
const BLOCKED_RETRY: Duration = Duration::from_secs(60);

impl Room {
    /// Recording is wanted: policy `required`, or `on_request` and asked through the API.
    fn recording_requested(&self) -> bool {
        let policy = self.policy.as_ref().map_or("off", |p| p.recording.as_str());
        match self.api_recording {
            Some(asked) => asked && policy != "off",
            None => policy == "required",
        }
    }

    /// What the recording should be now: everyone present must have consented.
    pub(super) fn recording_state(&self) -> RecordingState {
        let requested = self.recording_requested() && !self.closed;
        let mut waiting_for: Vec<String> = self
            .present()
            .filter(|s| !s.consent)
            .map(|s| s.identity.clone())
            .collect();
        waiting_for.sort();
        waiting_for.dedup();
        // A call needs two: nobody is recorded alone (a doctor waiting for the patient).
        let call = self.present().take(2).count() == 2;
        let active =
            requested && call && waiting_for.is_empty() && self.recording_blocked.is_none();
        let reason = if active || !requested {
            None
        } else if let Some((b, _)) = self.recording_blocked {
            Some(b.to_owned())
        } else if !waiting_for.is_empty() {
            Some("consent".to_owned())
        } else {
            Some("alone".to_owned())
        };
        RecordingState {
            active,
            requested,
            waiting_for,
            reason,
        }
    }
}

impl Service {
    /// Starts or stops the room's recording to match what it should be, and tells every
    /// participant when that changes.
    pub(super) async fn reconcile(&mut self, name: &str) {
        let Some(r) = self.rooms.get_mut(name) else {
            return;
        };
        if let Some((_, since)) = r.recording_blocked {
            if self.recordings.has_room() && since.elapsed() >= BLOCKED_RETRY {
                r.recording_blocked = None;
            }
        }
        let mut want = r.recording_state();
        if !want.requested {
            r.recording_failed = None;
        }
        // Why a wanted recording could not start, and the error when it is not the spool's.
        let mut failed: Option<(&'static str, Option<String>)> = None;
        if want.active && r.recording.is_none() {
            let me = self.me.clone();
            let on_stop: crate::recording::StopNotice = Box::new(move |room, id, reason| {
                let _ = me.try_send(Request::RecordingStopped { room, id, reason });
            });
            match self.recordings.start_room(name, &self.sfu, on_stop) {
                Ok(id) => {
                    let who: Vec<String> = r.present().map(|s| s.identity.clone()).collect();
                    r.recording = Some(id.clone());
                    r.recording_failed = None;
                    self.sink
                        .send(self.factory.make(
                            name,
                            "recording_started",
                            json!({ "recording_id": id, "participants": who }),
                        ))
                        .await;
                }
                Err(crate::recording::RecordingError::SpoolFull) => {
                    r.recording_blocked = Some(("spool_full", Instant::now()));
                    want = r.recording_state();
                    failed = Some(("spool_full", None));
                }
                Err(e) => {
                    // Tried again on the next tick.
                    tracing::warn!(error = %e, "recording cannot start yet");
                    want.active = false;
                    want.reason = Some("unavailable".into());
                    failed = Some(("unavailable", Some(e.to_string())));
                }
            }
        } else if !want.active && r.recording.is_some() {
            let id = r.recording.take().unwrap_or_default();
            self.recordings.stop_room(name, &self.sfu);
            let reason = want.reason.clone().unwrap_or_else(|| "stopped".into());
            self.sink
                .send(self.factory.make(
                    name,
                    "recording_stopped",
                    json!({ "recording_id": id, "reason": reason }),
                ))
                .await;
        }
        let Some(r) = self.rooms.get_mut(name) else {
            return;
        };
        // Once per failure (not on every retry): the call's record shows the recording the
        // policy or the API wanted did not happen, and why.
        if let Some((reason, error)) = failed.filter(|(f, _)| r.recording_failed != Some(*f)) {
            r.recording_failed = Some(reason);
            let policy = r.policy.as_ref().map_or("off", |p| p.recording.as_str());
            let payload = json!({ "reason": reason, "error": error, "policy": policy });
            self.sink
                .send(self.factory.make(name, "recording_failed", payload))
                .await;
        }
        // Everyone hears of a change once recording matters (wanted, or was); a newcomer hears
        // the current state when recording is wanted.
        let changed = r.told.as_ref() != Some(&want);
        let matters = want.requested || r.told.as_ref().is_some_and(|t| t.active || t.requested);
        for s in r.sessions.values_mut() {
            if (changed && matters) || (!s.told_recording && want.requested) {
                let _ = s.control.try_send(SessionControl::Recording(want.clone()));
                s.told_recording = true;
            }
        }
        r.told = Some(want);
    }
}
