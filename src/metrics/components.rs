//! The metric families of the metadata store (database, event journal) and of the built-in TURN
//! server, rendered into the Prometheus text output.

use super::*;

pub(super) fn render_store(o: &mut Out, s: &StoreStats) {
    o.one(
        "consulta_events_written_total",
        "counter",
        "Call events stored in the database.",
        s.events_written,
    );
    o.one(
        "consulta_events_journaled_total",
        "counter",
        "Call events appended to the local journal (every event is, before it is stored).",
        s.events_journaled,
    );
    o.one(
        "consulta_events_replayed_total",
        "counter",
        "Call events stored after the database had failed or timed out, or left by an earlier run.",
        s.events_replayed,
    );
    o.one(
        "consulta_events_journal_pending",
        "gauge",
        "Call events in the journal not yet stored in the database.",
        s.journal_pending,
    );
    o.one(
        "consulta_events_queue_depth",
        "gauge",
        "Call events queued for the journal writer.",
        s.queue_depth,
    );
    o.head(
        "consulta_webhook_deliveries_total",
        "counter",
        "Webhook delivery attempts by outcome.",
    );
    o.labelled(
        "consulta_webhook_deliveries_total",
        "outcome=\"delivered\"",
        s.webhooks_delivered,
    );
    o.labelled(
        "consulta_webhook_deliveries_total",
        "outcome=\"failed\"",
        s.webhooks_failed,
    );
    o.labelled(
        "consulta_webhook_deliveries_total",
        "outcome=\"abandoned\"",
        s.webhooks_abandoned,
    );
    o.one(
        "consulta_webhook_backlog",
        "gauge",
        "Webhook deliveries not made yet (outbox rows).",
        s.webhook_backlog,
    );
    let r = &s.recording;
    for (name, kind, help, v) in [
        ("consulta_recordings_active", "gauge", "Recordings running now.", r.active),
        ("consulta_recordings_started_total", "counter", "Recordings started.", r.started),
        ("consulta_recording_tap_dropped_total", "counter", "Packets the recorder could not take in time (its queue was full); forwarding was not slowed.", r.tap_dropped),
        ("consulta_recording_frames_dropped_total", "counter", "Frames left out of recordings (incomplete after loss, before a keyframe).", r.frames_dropped),
        ("consulta_recording_spool_bytes", "gauge", "Bytes of recordings in the local spool.", r.spool_bytes),
        ("consulta_recording_spool_limit_bytes", "gauge", "The spool's limit ([recording] max_spool_bytes).", r.spool_limit),
        ("consulta_recording_spool_full_total", "counter", "Recordings stopped or refused because the spool was full.", r.spool_full),
        ("consulta_recording_uploads_pending", "gauge", "Recordings in the spool not yet stored (being written or waiting for the store).", r.pending),
        ("consulta_recording_uploaded_bytes_total", "counter", "Bytes of recordings uploaded to the store.", r.uploaded_bytes),
        ("consulta_recording_upload_errors_total", "counter", "Failed recording upload attempts (retried with backoff).", r.upload_errors),
        ("consulta_recordings_ready_total", "counter", "Recordings stored and verified.", r.ready),
        ("consulta_recordings_purged_total", "counter", "Recordings deleted by the retention period.", r.purged),
    ] {
        o.one(name, kind, help, v);
    }
}

pub(super) fn render_turn(o: &mut Out, t: &CountersSnapshot) {
    o.one(
        "consulta_turn_allocations",
        "gauge",
        "TURN allocations alive now.",
        t.allocations_current,
    );
    o.one(
        "consulta_turn_allocations_total",
        "counter",
        "TURN allocations created.",
        t.allocations_total,
    );
    o.head(
        "consulta_turn_relayed_packets_total",
        "counter",
        "Packets relayed by TURN.",
    );
    o.labelled(
        "consulta_turn_relayed_packets_total",
        "direction=\"to_peer\"",
        t.to_peer_packets,
    );
    o.labelled(
        "consulta_turn_relayed_packets_total",
        "direction=\"to_client\"",
        t.to_client_packets,
    );
    o.head(
        "consulta_turn_relayed_bytes_total",
        "counter",
        "Bytes relayed by TURN.",
    );
    o.labelled(
        "consulta_turn_relayed_bytes_total",
        "direction=\"to_peer\"",
        t.to_peer_bytes,
    );
    o.labelled(
        "consulta_turn_relayed_bytes_total",
        "direction=\"to_client\"",
        t.to_client_bytes,
    );
    o.one(
        "consulta_turn_auth_challenges_total",
        "counter",
        "401 challenges (the normal first round trip).",
        t.auth_challenges,
    );
    o.head(
        "consulta_turn_auth_failures_total",
        "counter",
        "TURN requests refused for their credentials, by reason.",
    );
    for (reason, n) in [
        ("bad_integrity", t.auth_bad_integrity),
        ("expired", t.auth_expired),
        ("malformed", t.auth_malformed),
        ("stale_nonce", t.auth_stale_nonce),
        ("wrong_credentials", t.auth_wrong_credentials),
    ] {
        o.labelled(
            "consulta_turn_auth_failures_total",
            &format!("reason=\"{reason}\""),
            n,
        );
    }
    o.head(
        "consulta_turn_refusals_total",
        "counter",
        "TURN requests refused by policy or quota.",
    );
    o.labelled(
        "consulta_turn_refusals_total",
        "reason=\"peer_policy\"",
        t.permission_refusals,
    );
    o.labelled(
        "consulta_turn_refusals_total",
        "reason=\"quota\"",
        t.quota_refusals,
    );
    o.labelled(
        "consulta_turn_refusals_total",
        "reason=\"relay_bind\"",
        t.relay_bind_failures,
    );
    o.labelled(
        "consulta_turn_refusals_total",
        "reason=\"connections_per_ip\"",
        t.connection_refusals,
    );
    o.labelled(
        "consulta_turn_refusals_total",
        "reason=\"auth_timeout\"",
        t.auth_timeouts,
    );
    o.labelled(
        "consulta_turn_refusals_total",
        "reason=\"revoked\"",
        t.revoked_refusals,
    );
    o.head(
        "consulta_turn_dropped_packets_total",
        "counter",
        "Packets TURN dropped, by reason.",
    );
    for (reason, n) in [
        ("bandwidth", t.bandwidth_drops),
        ("no_permission", t.no_permission_drops),
        ("client_queue", t.client_queue_drops),
        ("malformed", t.malformed_packets),
    ] {
        o.labelled(
            "consulta_turn_dropped_packets_total",
            &format!("reason=\"{reason}\""),
            n,
        );
    }
}
