//! The load generator's human report: the numbers per level as a Markdown table and chart, and
//! the percentile summaries the JSON report carries.

use serde_json::{json, Value};

use crate::{Args, MAX_LOSS};

/// The human report: the numbers per level and a bar chart of CPU per packet and loss.
pub(crate) fn markdown(args: &Args, levels: &[Value], capacity: Option<usize>) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "# consulta-bench report\n");
    let _ = writeln!(
        s,
        "{} participants per consultation, video {} kbit/s per publisher, {} s measured per level, target {}.\n",
        args.participants, args.video_kbps, args.duration, args.url
    );
    if let Some(c) = capacity {
        let _ = writeln!(
            s,
            "**Capacity: {c} concurrent consultations** (largest load with frame loss < {}%).\n",
            MAX_LOSS * 100.0
        );
    }
    // A ramp that stopped on a failing level: say where that level's datagrams were lost.
    if let Some(l) = levels.last().filter(|l| {
        l["frame_loss_ratio"]
            .as_f64()
            .is_some_and(|r| r >= MAX_LOSS)
    }) {
        let drops = |side: &str| {
            l[side]["udp_receive_drops"]
                .as_u64()
                .map_or("an unknown number of".to_owned(), |d| d.to_string())
        };
        let _ = writeln!(
            s,
            "At {} consultations {:.3} % of the frames were lost; the kernel dropped {} datagrams at \
             the server's full socket queue (the server fell behind) and {} at the generator's (the \
             generator fell behind).\n",
            l["rooms"],
            l["frame_loss_ratio"].as_f64().unwrap_or(0.0) * 100.0,
            drops("server"),
            drops("generator"),
        );
    }
    let _ = writeln!(s, "| consultations | streams | loss % | latency p50 ms | p99 ms | in server p50 ms | p99 ms | server CPU % of a core | µs/forwarded packet | RSS MB | generator CPU % of a core | kernel drops: server / generator |");
    let _ = writeln!(
        s,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let n = |v: &Value| v.as_u64().map_or("-".into(), |x| x.to_string());
    let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.2}"));
    let f3 = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.3}"));
    for l in levels {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            l["rooms"],
            l["streams_forwarded"],
            l["frame_loss_ratio"].as_f64().unwrap_or(0.0) * 100.0,
            f(&l["latency_ms"]["p50"]),
            f(&l["latency_ms"]["p99"]),
            f3(&l["server"]["forward_delay_ms"]["p50"]),
            f3(&l["server"]["forward_delay_ms"]["p99"]),
            f(&l["server"]["cpu_percent_of_one_core"]),
            f(&l["server"]["cpu_us_per_forwarded_packet"]),
            l["server"]["rss_bytes"]
                .as_f64()
                .map_or("-".into(), |b| format!("{:.0}", b / 1e6)),
            f(&l["generator"]["cpu_percent_of_one_core"]),
            n(&l["server"]["udp_receive_drops"]),
            n(&l["generator"]["udp_receive_drops"]),
        );
    }
    let _ = writeln!(s, "\n## Server CPU per forwarded packet (µs)\n\n```");
    let max = levels
        .iter()
        .filter_map(|l| l["server"]["cpu_us_per_forwarded_packet"].as_f64())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    for l in levels {
        let v = l["server"]["cpu_us_per_forwarded_packet"]
            .as_f64()
            .unwrap_or(0.0);
        let bar = "█".repeat(((v / max) * 40.0).round() as usize);
        let _ = writeln!(s, "{:>5} consultations |{bar} {v:.2}", l["rooms"]);
    }
    let _ = writeln!(s, "```");
    s
}

/// p50, p99 (nearest rank) and max of µs values, in ms.
pub(crate) fn summary_us_as_ms(us: &[u64]) -> Value {
    let mut v = us.to_vec();
    v.sort_unstable();
    let ms = |i: usize| {
        v.get(i.min(v.len().saturating_sub(1)))
            .map(|x| *x as f64 / 1000.0)
    };
    let rank = |p: f64| (v.len() as f64 * p) as usize;
    json!({ "p50": ms(rank(0.5)), "p99": ms(rank(0.99)), "max": ms(v.len()) })
}

pub(crate) fn summary(v: &[u64]) -> Value {
    let mut v = v.to_vec();
    v.sort_unstable();
    json!({ "p50": v.get(v.len() / 2), "max": v.last() })
}

#[cfg(test)]
mod tests {
    use super::markdown;
    use crate::Args;
    use clap::Parser;
    use serde_json::json;

    /// The human report names where a failing level's datagrams were lost.
    #[test]
    fn the_report_says_which_side_dropped() {
        let args = Args::parse_from(["consulta-bench", "--secret", "s"]);
        let level = |rooms: u64, loss: f64, server: u64, generator: u64| {
            json!({
                "rooms": rooms, "streams_forwarded": rooms * 4, "frame_loss_ratio": loss,
                "latency_ms": {}, "server": {"forward_delay_ms": {}, "udp_receive_drops": server},
                "generator": {"udp_receive_drops": generator},
            })
        };
        let md = markdown(
            &args,
            &[level(25, 0.0, 0, 0), level(50, 0.02, 1234, 7)],
            Some(25),
        );
        assert!(md.contains("| 0 / 0 |"), "{md}");
        assert!(md.contains("| 1234 / 7 |"), "{md}");
        assert!(
            md.contains("At 50 consultations 2.000 % of the frames were lost; the kernel dropped 1234 datagrams at the server's full socket queue"),
            "{md}"
        );
        assert!(md.contains("and 7 at the generator's"), "{md}");
        // A ramp that never failed says nothing of the kind.
        let md = markdown(&args, &[level(25, 0.0, 0, 0)], Some(25));
        assert!(!md.contains("were lost"), "{md}");
    }
}
