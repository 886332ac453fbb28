//! `/metrics`: the Prometheus text exposition of Consulta's counters.
//!
//! The numbers live where they are produced — per-worker atomics in the media core (published
//! every 100 ms), process-wide atomics for signaling here — and this module only formats a
//! snapshot at scrape time. No registry, no per-packet work. Every metric is documented in
//! `docs/metrics.md`; the dashboard and alert rules under `deploy/` are checked against
//! [`render`]'s output by a test.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use consulta_sfu::{HistogramSnapshot, SfuStats, CODEC_LABELS};
use consulta_sfu::{
    BANDWIDTH_ESTIMATE_BUCKETS, CONNECT_BUCKETS, FORWARD_DELAY_BUCKETS, JITTER_BUCKETS,
    LOSS_BUCKETS, PACER_DELAY_BUCKETS, RTT_BUCKETS,
};
use consulta_signaling::ErrorCode;
use consulta_turn::CountersSnapshot;

mod components;
use components::{render_store, render_turn};

/// Signaling counters, process-wide.
pub struct SignalingMetrics {
    pub ws_open: AtomicU64,
    pub ws_total: AtomicU64,
    /// Sessions taken over by a new connection (`resume`).
    pub resumes: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
    /// Joins refused by `[http] join_limit_per_identity`, `join_limit_per_ip`.
    joins_refused: [AtomicU64; 2],
}

pub static SIGNALING: SignalingMetrics = SignalingMetrics {
    ws_open: AtomicU64::new(0),
    ws_total: AtomicU64::new(0),
    resumes: AtomicU64::new(0),
    errors: [const { AtomicU64::new(0) }; ErrorCode::ALL.len()],
    joins_refused: [const { AtomicU64::new(0) }; 2],
};

/// The `limit` labels of `consulta_joins_refused_total`.
const JOIN_LIMITS: [&str; 2] = ["identity", "address"];

impl SignalingMetrics {
    pub fn error_sent(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A join refused by the limit labelled `limit` (`identity`, `address`).
    pub fn join_refused(&self, limit: &str) {
        if let Some(i) = JOIN_LIMITS.iter().position(|l| *l == limit) {
            self.joins_refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn resumed(&self) {
        self.resumes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts an open WebSocket for as long as it lives.
pub struct WsGuard;

impl WsGuard {
    pub fn open() -> WsGuard {
        SIGNALING.ws_open.fetch_add(1, Ordering::Relaxed);
        SIGNALING.ws_total.fetch_add(1, Ordering::Relaxed);
        WsGuard
    }
}

impl Drop for WsGuard {
    fn drop(&mut self) {
        SIGNALING.ws_open.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.head(name, kind, help);
        let _ = writeln!(self.0, "{name} {value}");
    }

    fn labelled(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
    }

    fn histogram(&mut self, name: &str, labels: &str, bounds: &[f64], h: &HistogramSnapshot) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in bounds.iter().enumerate() {
            cumulative += h.counts[i];
            let _ = writeln!(
                self.0,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}"
            );
        }
        cumulative += h.counts[bounds.len()];
        let _ = writeln!(
            self.0,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(self.0, "{name}_sum{braces} {}", h.sum);
        let _ = writeln!(self.0, "{name}_count{braces} {cumulative}");
    }
}

/// Formats the metrics (Prometheus text format 0.0.4). TURN families are present (zero) when TURN
/// is off, so dashboards and alerts never miss a series.
pub fn render(
    s: &SfuStats,
    turn: Option<&CountersSnapshot>,
    store: &StoreStats,
    started: Instant,
) -> String {
    let mut o = Out(String::with_capacity(16 * 1024));
    o.head(
        "consulta_build_info",
        "gauge",
        "Build information; always 1.",
    );
    o.labelled(
        "consulta_build_info",
        &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        1,
    );
    o.one(
        "consulta_up_seconds",
        "gauge",
        "Seconds since the server started.",
        started.elapsed().as_secs(),
    );
    o.one(
        "consulta_workers",
        "gauge",
        "Media worker threads.",
        s.workers,
    );
    o.one(
        "consulta_media_workers_dead",
        "gauge",
        "Media worker threads that ended in a panic (their calls joined again on the others).",
        s.workers_dead,
    );
    o.one("consulta_rooms", "gauge", "Rooms hosted now.", s.rooms);
    o.one(
        "consulta_participants",
        "gauge",
        "Participants in rooms now.",
        s.participants,
    );

    o.head(
        "consulta_tracks",
        "gauge",
        "Published tracks (producers) and forwarded copies (consumers) now.",
    );
    for (d, dir) in ["publish", "subscribe"].iter().enumerate() {
        for (k, kind) in ["audio", "video"].iter().enumerate() {
            for (c, codec) in CODEC_LABELS.iter().enumerate() {
                // Only codec labels that exist for the kind.
                let audio_codec = matches!(*codec, "opus" | "other" | "unknown");
                let video_codec = *codec != "opus";
                if (k == 0 && !audio_codec) || (k == 1 && !video_codec) {
                    continue;
                }
                let n = s.tracks[d][k][c];
                o.labelled(
                    "consulta_tracks",
                    &format!("direction=\"{dir}\",kind=\"{kind}\",codec=\"{codec}\""),
                    n,
                );
            }
        }
    }

    o.one(
        "consulta_participant_joins_total",
        "counter",
        "Joins accepted by a media worker.",
        s.joins,
    );
    o.one(
        "consulta_participant_leaves_total",
        "counter",
        "Participants removed from rooms.",
        s.leaves,
    );

    o.head(
        "consulta_media_packets_total",
        "counter",
        "UDP datagrams handled (in) and sent (out) by the workers.",
    );
    o.labelled(
        "consulta_media_packets_total",
        "direction=\"in\"",
        s.packets_in,
    );
    o.labelled(
        "consulta_media_packets_total",
        "direction=\"out\"",
        s.packets_out,
    );
    o.head(
        "consulta_media_bytes_total",
        "counter",
        "Bytes of those datagrams.",
    );
    o.labelled("consulta_media_bytes_total", "direction=\"in\"", s.bytes_in);
    o.labelled(
        "consulta_media_bytes_total",
        "direction=\"out\"",
        s.bytes_out,
    );

    o.one(
        "consulta_udp_datagrams_total",
        "counter",
        "Datagrams read from the media socket.",
        s.datagrams_received,
    );
    o.one(
        "consulta_udp_unroutable_total",
        "counter",
        "Datagrams from unknown sources.",
        s.datagrams_unroutable,
    );
    o.one(
        "consulta_worker_queue_drops_total",
        "counter",
        "Datagrams dropped: worker queue full.",
        s.demux_queue_drops,
    );
    o.one(
        "consulta_udp_receive_drops_total",
        "counter",
        "Datagrams the kernel dropped on the media socket (receive queue full: the server did not read fast enough).",
        s.udp_socket.drops,
    );
    o.head(
        "consulta_udp_socket_buffer_bytes",
        "gauge",
        "Kernel queue sizes of the media socket, as the kernel reports them.",
    );
    o.labelled(
        "consulta_udp_socket_buffer_bytes",
        "direction=\"receive\"",
        s.udp_socket.receive_buffer,
    );
    o.labelled(
        "consulta_udp_socket_buffer_bytes",
        "direction=\"send\"",
        s.udp_socket.send_buffer,
    );

    o.one(
        "consulta_rtp_received_total",
        "counter",
        "RTP packets received from publishers.",
        s.rtp_in,
    );
    o.one(
        "consulta_rtp_forwarded_total",
        "counter",
        "RTP packets written to subscribers.",
        s.rtp_forwarded,
    );
    o.head(
        "consulta_rtp_dropped_total",
        "counter",
        "RTP packets not forwarded to one subscriber.",
    );
    o.labelled(
        "consulta_rtp_dropped_total",
        "reason=\"waiting_keyframe\"",
        s.rtp_dropped_waiting_keyframe,
    );
    o.labelled(
        "consulta_rtp_dropped_total",
        "reason=\"other\"",
        s.rtp_dropped_other,
    );
    o.labelled(
        "consulta_rtp_dropped_total",
        "reason=\"other_layer\"",
        s.layer_skipped,
    );
    o.head(
        "consulta_keyframe_requests_total",
        "counter",
        "Keyframe requests (PLI) towards publishers.",
    );
    o.labelled(
        "consulta_keyframe_requests_total",
        "outcome=\"sent\"",
        s.keyframe_requests_sent,
    );
    o.labelled(
        "consulta_keyframe_requests_total",
        "outcome=\"throttled\"",
        s.keyframe_requests_throttled,
    );

    o.head(
        "consulta_rtcp_feedback_total",
        "counter",
        "RTCP feedback from subscribers and to publishers.",
    );
    for (ty, from, to) in [
        ("nack", s.nacks_from_subscribers, s.nacks_to_publishers),
        ("pli", s.plis_from_subscribers, s.plis_to_publishers),
        ("fir", s.firs_from_subscribers, s.firs_to_publishers),
    ] {
        o.labelled(
            "consulta_rtcp_feedback_total",
            &format!("type=\"{ty}\",direction=\"from_subscribers\""),
            from,
        );
        o.labelled(
            "consulta_rtcp_feedback_total",
            &format!("type=\"{ty}\",direction=\"to_publishers\""),
            to,
        );
    }

    o.head(
        "consulta_media_loss_ratio",
        "histogram",
        "Per-stream fraction lost, sampled every second.",
    );
    o.histogram(
        "consulta_media_loss_ratio",
        "direction=\"ingress\"",
        &LOSS_BUCKETS,
        &s.loss_ingress,
    );
    o.histogram(
        "consulta_media_loss_ratio",
        "direction=\"egress\"",
        &LOSS_BUCKETS,
        &s.loss_egress,
    );
    o.head(
        "consulta_media_rtt_seconds",
        "histogram",
        "Round-trip time per stream, sampled every second.",
    );
    o.histogram("consulta_media_rtt_seconds", "", &RTT_BUCKETS, &s.rtt);
    o.head(
        "consulta_media_jitter_seconds",
        "histogram",
        "Ingress interarrival jitter per stream, sampled every second.",
    );
    o.histogram(
        "consulta_media_jitter_seconds",
        "",
        &JITTER_BUCKETS,
        &s.jitter,
    );
    o.head(
        "consulta_forward_delay_seconds",
        "histogram",
        "Time a forwarded packet spends in the server: kernel receive timestamp to the send call.",
    );
    o.histogram(
        "consulta_forward_delay_seconds",
        "",
        &FORWARD_DELAY_BUCKETS,
        &s.forward_delay,
    );

    // As the SFU sees it: UDP or ICE-TCP straight from the browser, or UDP from a TURN relay.
    o.head(
        "consulta_ice_connected_total",
        "counter",
        "Media connections established, by path.",
    );
    for (labels, n) in [
        ("transport=\"udp\",candidate=\"host\"", s.ice_connected),
        ("transport=\"tcp\",candidate=\"host\"", s.ice_connected_tcp),
        (
            "transport=\"udp\",candidate=\"relay\"",
            s.ice_connected_relay,
        ),
    ] {
        o.labelled("consulta_ice_connected_total", labels, n);
    }
    o.head(
        "consulta_ice_time_to_connect_seconds",
        "histogram",
        "From join to ICE and DTLS connected.",
    );
    o.histogram(
        "consulta_ice_time_to_connect_seconds",
        "",
        &CONNECT_BUCKETS,
        &s.time_to_connect,
    );
    o.one(
        "consulta_ice_disconnected_total",
        "counter",
        "Media connections lost.",
        s.ice_disconnected,
    );
    o.one(
        "consulta_reconnects_total",
        "counter",
        "Participants that lost their signaling or ICE path and were held for the reconnect grace period.",
        s.reconnects_started,
    );
    o.one(
        "consulta_reconnects_completed_total",
        "counter",
        "Held participants whose paths all came back within the grace period.",
        s.reconnects_completed,
    );
    o.one(
        "consulta_reconnects_expired_total",
        "counter",
        "Held participants removed when the grace period ran out (reason lost).",
        s.reconnects_expired,
    );
    o.one(
        "consulta_ice_restarts_total",
        "counter",
        "ICE restarts offered to clients (network change, broken path, renewed TURN credentials).",
        s.ice_restarts,
    );
    o.one(
        "consulta_track_restarts_total",
        "counter",
        "Forwarded video tracks restarted at a keyframe after their path was cut (a network change).",
        s.track_restarts,
    );
    o.one(
        "consulta_codec_switches_total",
        "counter",
        "Publishers told to send another video codec, so that everyone in their room decodes it.",
        s.codec_switches,
    );
    o.one(
        "consulta_codec_pauses_total",
        "counter",
        "Video tracks paused for a subscriber that decodes no codec their publisher can send.",
        s.codec_pauses,
    );
    o.one(
        "consulta_bandwidth_pauses_total",
        "counter",
        "Subscribers whose video was paused because their downlink estimate could not carry it (audio kept).",
        s.bandwidth_pauses,
    );
    o.head(
        "consulta_layer_switches_total",
        "counter",
        "Simulcast layer changes of one subscriber's video, by direction and reason.",
    );
    for (labels, value) in [
        ("direction=\"up\",reason=\"headroom\"", s.layer_switches_up),
        (
            "direction=\"down\",reason=\"bandwidth\"",
            s.layer_switches_down_bandwidth,
        ),
        (
            "direction=\"down\",reason=\"other\"",
            s.layer_switches_down_other,
        ),
    ] {
        o.labelled("consulta_layer_switches_total", labels, value);
    }
    o.head(
        "consulta_layer_consumers",
        "gauge",
        "Subscribers' video tracks of simulcast publishers now, by the layer they receive (0 lowest), or paused.",
    );
    for (slot, n) in s.layer_consumers.iter().enumerate() {
        let label = if slot + 1 == s.layer_consumers.len() {
            "layer=\"paused\"".to_owned()
        } else {
            format!("layer=\"{slot}\"")
        };
        o.labelled("consulta_layer_consumers", &label, *n);
    }
    o.one(
        "consulta_bandwidth_resumes_total",
        "counter",
        "Subscribers whose video resumed after their downlink estimate recovered.",
        s.bandwidth_resumes,
    );
    o.one(
        "consulta_bandwidth_paused_seconds_total",
        "counter",
        "Seconds of subscribers' video paused for bandwidth, summed over subscribers.",
        s.bandwidth_paused_seconds,
    );
    o.head(
        "consulta_bandwidth_estimate_bps",
        "histogram",
        "Downlink estimates of the subscribers receiving video, one observation per subscriber a second.",
    );
    o.histogram(
        "consulta_bandwidth_estimate_bps",
        "",
        &BANDWIDTH_ESTIMATE_BUCKETS,
        &s.bandwidth_estimate,
    );
    o.head(
        "consulta_pacer_delay_seconds",
        "histogram",
        "Time forwarded packets wait in the pacer before they leave (one packet in 64, sampled).",
    );
    o.histogram(
        "consulta_pacer_delay_seconds",
        "",
        &PACER_DELAY_BUCKETS,
        &s.pacer_delay,
    );
    o.one(
        "consulta_remb_sent_total",
        "counter",
        "REMB bitrate caps (and cap lifts) sent to publishers for their constrained subscribers.",
        s.remb_sent,
    );
    o.one(
        "consulta_bitrate_caps_sent_total",
        "counter",
        "bitrate-cap messages sent to publishers (a cap, a new cap, or its lifting).",
        s.bitrate_caps_sent,
    );
    o.one(
        "consulta_publish_layer_changes_total",
        "counter",
        "publish-layers messages sent to simulcast publishers: layers no subscriber watches paused, or resumed.",
        s.publish_layer_changes,
    );
    o.one(
        "consulta_ice_tcp_sessions_total",
        "counter",
        "ICE-TCP connections routed to a participant.",
        s.ice_tcp_sessions,
    );
    o.one(
        "consulta_ice_tcp_connections",
        "gauge",
        "ICE-TCP connections open now.",
        s.ice_tcp_open,
    );
    o.one(
        "consulta_ice_tcp_drops_total",
        "counter",
        "ICE-TCP frames dropped: worker queue full.",
        s.ice_tcp_drops,
    );
    o.one(
        "consulta_ice_tcp_refused_total",
        "counter",
        "ICE-TCP connections refused at accept: the connection cap was reached.",
        s.ice_tcp_refused,
    );
    o.one(
        "consulta_ice_tcp_idle_closed_total",
        "counter",
        "ICE-TCP connections closed after 30 s without a frame.",
        s.ice_tcp_idle_closed,
    );

    o.head(
        "consulta_worker_busy_seconds_total",
        "counter",
        "Time each worker spent processing; rate() is its busy ratio.",
    );
    for (i, ns) in s.busy_nanos.iter().enumerate() {
        o.labelled(
            "consulta_worker_busy_seconds_total",
            &format!("worker=\"{i}\""),
            *ns as f64 / 1e9,
        );
    }
    o.one(
        "consulta_worker_events_dropped_total",
        "counter",
        "Rebuildable messages (mute, track-published, track-paused/resumed, bitrate-cap) dropped for a full event queue.",
        s.events_dropped,
    );
    o.one(
        "consulta_unmutes_refused_total",
        "counter",
        "Unmutes refused: the track was muted through the control API.",
        s.unmutes_refused,
    );
    o.one(
        "consulta_remote_candidates_refused_total",
        "counter",
        "Trickled remote ICE candidates ignored beyond a participant's budget.",
        s.candidates_refused,
    );
    o.one(
        "consulta_producers_refused_total",
        "counter",
        "Incoming tracks ignored beyond a participant's producer limit.",
        s.producers_refused,
    );
    o.one(
        "consulta_worker_event_overflows_total",
        "counter",
        "Participants closed: signaling did not read events.",
        s.event_queue_overflows,
    );
    o.one(
        "consulta_peer_panics_total",
        "counter",
        "Participants closed by a caught panic.",
        s.peer_panics,
    );
    o.one(
        "consulta_send_errors_total",
        "counter",
        "Failed UDP sends.",
        s.send_errors,
    );

    render_turn(&mut o, &turn.copied().unwrap_or_default());
    render_store(&mut o, store);

    o.one(
        "consulta_ws_connections",
        "gauge",
        "Open signaling WebSockets.",
        SIGNALING.ws_open.load(Ordering::Relaxed),
    );
    o.one(
        "consulta_ws_connections_total",
        "counter",
        "Signaling WebSockets accepted.",
        SIGNALING.ws_total.load(Ordering::Relaxed),
    );
    o.one(
        "consulta_ws_resumes_total",
        "counter",
        "Sessions resumed on a new WebSocket after theirs was lost (refusals count as signaling errors, code resume_refused).",
        SIGNALING.resumes.load(Ordering::Relaxed),
    );
    o.head(
        "consulta_joins_refused_total",
        "counter",
        "Joins refused with rate_limited: too many a minute for one participant of a consultation (identity) or one source address.",
    );
    for (i, limit) in JOIN_LIMITS.iter().enumerate() {
        let n = SIGNALING.joins_refused[i].load(Ordering::Relaxed);
        o.labelled(
            "consulta_joins_refused_total",
            &format!("limit=\"{limit}\""),
            n,
        );
    }
    o.head(
        "consulta_signaling_errors_total",
        "counter",
        "Error messages sent to clients, by code.",
    );
    for (i, code) in ErrorCode::ALL.iter().enumerate() {
        let n = SIGNALING.errors[i].load(Ordering::Relaxed);
        o.labelled(
            "consulta_signaling_errors_total",
            &format!("code=\"{}\"", code.as_str()),
            n,
        );
    }
    o.0
}

/// The event writer's and the webhook sender's numbers.
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreStats {
    pub events_written: u64,
    pub events_journaled: u64,
    pub events_replayed: u64,
    pub journal_pending: i64,
    pub queue_depth: i64,
    pub webhooks_delivered: u64,
    pub webhooks_failed: u64,
    pub webhooks_abandoned: u64,
    pub webhook_backlog: i64,
    pub recording: RecordingNumbers,
}

/// The recording pipeline's numbers (see `recording::RecordingStats`).
#[derive(Debug, Default, Clone, Copy)]
pub struct RecordingNumbers {
    pub active: u64,
    pub started: u64,
    pub tap_dropped: u64,
    pub frames_dropped: u64,
    pub spool_bytes: u64,
    pub spool_limit: u64,
    pub spool_full: u64,
    pub pending: u64,
    pub uploaded_bytes: u64,
    pub upload_errors: u64,
    pub ready: u64,
    pub purged: u64,
}

/// Names of every metric family [`render`] writes (histograms without their suffixes).
#[cfg(test)]
pub fn metric_names() -> Vec<String> {
    let text = render(
        &SfuStats::default(),
        None,
        &StoreStats::default(),
        Instant::now(),
    );
    // Cluster mode's families are appended to the same page when it is on.
    let cluster = crate::cluster::metrics_text(&Default::default(), false, 0, 1);
    text.lines()
        .chain(cluster.lines())
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests;
