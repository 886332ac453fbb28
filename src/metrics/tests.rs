//! Tests of the /metrics page: every family renders as valid exposition text, and the deploy
//! files (dashboard, alerts) name only metrics the server exports.

use super::*;
use std::collections::BTreeSet;

#[test]
fn renders_valid_families() {
    let text = render(
        &SfuStats {
            busy_nanos: vec![1_500_000_000, 0],
            ..Default::default()
        },
        None,
        &StoreStats::default(),
        Instant::now(),
    );
    assert!(text.contains("consulta_worker_busy_seconds_total{worker=\"0\"} 1.5\n"));
    assert!(text.contains("consulta_media_rtt_seconds_bucket{le=\"+Inf\"} 0\n"));
    assert!(text.contains("consulta_signaling_errors_total{code=\"token_expired\"} 0\n"));
    // Every sample line belongs to a declared family.
    let names: BTreeSet<String> = metric_names().into_iter().collect();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| names.contains(*f)))
            .unwrap_or(name);
        assert!(names.contains(family), "{line}");
    }
    // And every documented metric is rendered.
    let doc = include_str!("../../docs/metrics.md");
    for name in names.iter() {
        assert!(
            doc.contains(&format!("`{name}`")),
            "{name} is not in docs/metrics.md"
        );
    }
}

/// The dashboard and the alert rules name only metrics that `/metrics` exports.
#[test]
fn deploy_files_use_exported_metrics() {
    let names: BTreeSet<String> = metric_names().into_iter().collect();
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut files: Vec<_> = std::fs::read_dir(deploy.join("grafana/dashboards"))
        .expect("deploy/grafana/dashboards")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.push(deploy.join("prometheus/alerts.yml"));
    let mut checked = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("consulta_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            rest = &tail[end..];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| names.contains(*f)))
                .unwrap_or(name);
            assert!(
                names.contains(family),
                "{} uses `{name}`, which /metrics does not export",
                f.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked > 20,
        "only {checked} metric references found under deploy/"
    );
}
