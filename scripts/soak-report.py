#!/usr/bin/env python3
"""The verdict and chart of a soak (scripts/soak.sh), from its soak.csv and consulta-bench's report.

Prints a summary; writes soak.svg (one panel per metric, self-contained, no dependencies);
exits 1 when the run shows what a leak or a failure looks like:
  - the server died (or consulta-bench failed);
  - fds or threads grew without bound under a steady load: the last sample under load is more
    than twice the first sample after warm-up plus a small constant (16 fds, 4 threads);
  - fds did not come back once everyone left (more than 16 over the idle server's), or threads
    stayed above what the full load needed (4 over the warm-up sample);
  - a participant's media state panicked (consulta_peer_panics_total, or "panicked" in the log);
  - more joins failed than --max-failed-joins: the bench's errors plus churned participants
    that left and were not joined again;
  - with --max-rss-growth PCT: RSS grew by more than PCT % over the second half of the load.
Run it again on a kept soak.csv to redraw the chart.
"""

import argparse
import csv
import json
import sys

FD_SLACK, THREAD_SLACK = 16, 4
# The first sample this long after the start is past the join phase (consulta-bench waits up to
# 30 s for everyone) and counts as warmed up.
WARM_UP_S = 30
DROPS = ["worker_queue_drops", "udp_receive_drops", "events_dropped", "event_overflows",
         "ice_tcp_drops", "send_errors"]


def num(row, key):
    try:
        return float(row[key])
    except (KeyError, TypeError, ValueError):
        return None


def panel(x0, y0, w, h, title, xs, ys, unit):
    """One line chart as SVG elements: frame, title, min/max labels, the line and its points."""
    pts = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
    out = [f'<g transform="translate({x0},{y0})">',
           f'<rect width="{w}" height="{h}" fill="#fff" stroke="#ccc"/>',
           f'<text x="8" y="16" font-weight="bold">{title}</text>']
    if not pts:
        out.append('<text x="8" y="40" fill="#999">no data</text></g>')
        return out
    pl, pr, pt, pb = 56, 10, 24, 22
    xmin, xmax = min(p[0] for p in pts), max(p[0] for p in pts)
    ymin, ymax = min(0.0, min(p[1] for p in pts)), max(p[1] for p in pts)
    if ymax == ymin:
        ymax = ymin + 1
    xspan = (xmax - xmin) or 1

    def sx(x):
        return pl + (x - xmin) / xspan * (w - pl - pr)

    def sy(y):
        return h - pb - (y - ymin) / (ymax - ymin) * (h - pt - pb)

    def fmt(v):
        return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.1f}"

    out += [f'<line x1="{pl}" y1="{sy(ymin):.1f}" x2="{w - pr}" y2="{sy(ymin):.1f}" stroke="#999"/>',
            f'<line x1="{pl}" y1="{pt}" x2="{pl}" y2="{h - pb}" stroke="#999"/>',
            f'<text x="{pl - 4}" y="{sy(ymax) + 4:.1f}" text-anchor="end">{fmt(ymax)}</text>',
            f'<text x="{pl - 4}" y="{sy(ymin) + 4:.1f}" text-anchor="end">{fmt(ymin)}</text>',
            f'<text x="{pl}" y="{h - 6}">{xmin / 60:.1f} min</text>',
            f'<text x="{w - pr}" y="{h - 6}" text-anchor="end">{xmax / 60:.1f} min</text>',
            f'<text x="{w - pr}" y="16" text-anchor="end" fill="#666">{unit}, last {fmt(pts[-1][1])}</text>']
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    out.append(f'<polyline points="{line}" fill="none" stroke="#1f6fb2" stroke-width="1.5"/>')
    out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2" fill="#1f6fb2"/>' for x, y in pts]
    out.append("</g>")
    return out


def chart(rows, path, title):
    t = [num(r, "t_seconds") for r in rows]
    series = [
        ("RSS", [None if num(r, "rss_kb") is None else num(r, "rss_kb") / 1024 for r in rows], "MiB"),
        ("CPU", [num(r, "cpu_percent") for r in rows], "% of one core"),
        ("Open file descriptors", [num(r, "fds") for r in rows], "fds"),
        ("Threads", [num(r, "threads") for r in rows], "threads"),
        ("Participants", [num(r, "participants") for r in rows], "now"),
        ("Queue drops and overflows", [sum(num(r, k) or 0 for k in DROPS if k != "udp_receive_drops")
                                       for r in rows], "total since start"),
        ("Kernel UDP receive drops", [num(r, "udp_receive_drops") for r in rows], "total since start"),
    ]
    w, h, cols = 420, 170, 2
    rows_n = (len(series) + cols - 1) // cols
    width, height = cols * w + (cols + 1) * 10, rows_n * h + (rows_n + 1) * 10 + 30
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="#f7f7f7"/>',
           f'<text x="10" y="24" font-size="14" font-weight="bold">{title}</text>']
    for i, (name, ys, unit) in enumerate(series):
        x0, y0 = 10 + (i % cols) * (w + 10), 40 + (i // cols) * (h + 10)
        svg += panel(x0, y0, w, h, name, t, ys, unit)
    svg.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(svg) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", required=True)
    ap.add_argument("--svg")
    ap.add_argument("--bench")
    ap.add_argument("--bench-exit", type=int, default=0)
    ap.add_argument("--server-died", type=int, default=0)
    ap.add_argument("--log")
    ap.add_argument("--max-failed-joins", type=int, default=2)
    ap.add_argument("--max-rss-growth", type=float)
    ap.add_argument("--consultations", type=int)
    a = ap.parse_args()

    with open(a.csv) as f:
        rows = list(csv.DictReader(f))
    idle = next((r for r in rows if r["phase"] == "idle"), None)
    load = [r for r in rows if r["phase"] == "load"]
    after = next((r for r in rows if r["phase"] == "after"), None)
    bench = {}
    if a.bench:
        try:
            with open(a.bench) as f:
                bench = json.load(f)
        except (OSError, ValueError):
            bench = {}
    if a.svg:
        n = a.consultations or bench.get("rooms") or "?"
        minutes = (num(rows[-1], "t_seconds") or 0) / 60 if rows else 0
        chart(rows, a.svg, f"Consulta soak: {n} consultations with churn, {minutes:.0f} min")

    failures = []
    if a.server_died:
        failures.append("the server died")
    if a.bench_exit:
        failures.append(f"consulta-bench exited with {a.bench_exit}")
    print("== soak summary")
    if not load:
        failures.append("no sample under load")
        print("no sample under load")
        return finish(failures)
    warm = next((r for r in load if num(r, "t_seconds") >= WARM_UP_S), load[-1])
    last = load[-1]

    def col(key):
        return [num(r, key) for r in load if num(r, key) is not None]

    rss = col("rss_kb")
    mib = lambda kb: f"{kb / 1024:.1f} MiB"
    print(f"samples: {len(rows)} ({len(load)} under load), warm-up sample at "
          f"{num(warm, 't_seconds'):.0f} s, last under load at {num(last, 't_seconds'):.0f} s")
    print(f"RSS: idle {mib(num(idle, 'rss_kb')) if idle else '-'}, first under load {mib(rss[0])}, "
          f"warm-up {mib(num(warm, 'rss_kb'))}, last {mib(rss[-1])}, max {mib(max(rss))}"
          + (f", after everyone left {mib(num(after, 'rss_kb'))}" if after else ""))
    # The second half of the load: from the sample nearest its middle to the last one.
    t0, t1 = num(load[0], "t_seconds"), num(last, "t_seconds")
    mid = min(load, key=lambda r: abs(num(r, "t_seconds") - (t0 + t1) / 2))
    growth = (num(last, "rss_kb") / num(mid, "rss_kb") - 1) * 100
    print(f"RSS growth over the second half ({num(mid, 't_seconds') / 60:.1f} → "
          f"{t1 / 60:.1f} min): {growth:+.1f} %")
    m10 = next((r for r in load if num(r, "t_seconds") >= 600), None)
    if m10 is not None and t1 >= 1200:
        print(f"RSS from minute 10 to the end: {(num(last, 'rss_kb') / num(m10, 'rss_kb') - 1) * 100:+.1f} %")
    if a.max_rss_growth is not None and growth > a.max_rss_growth:
        failures.append(f"RSS grew {growth:.1f} % over the second half (limit {a.max_rss_growth} %)")
    cpu = col("cpu_percent")
    c0, c1 = num(load[0], "cpu_seconds"), num(last, "cpu_seconds")
    mean = (c1 - c0) * 100 / (t1 - t0) if t1 > t0 else None
    print(f"CPU % of one core: mean {mean:.1f}" if mean is not None else "CPU: -", end="")
    print(f", max per interval {max(cpu):.1f}, last {cpu[-1]:.1f}" if cpu else "")
    for key, name, slack in (("fds", "fds", FD_SLACK), ("threads", "threads", THREAD_SLACK)):
        vals = col(key)
        w_, l_ = num(warm, key), num(last, key)
        line = (f"{name}: idle {num(idle, key):.0f}, " if idle else f"{name}: ") + \
            f"warm-up {w_:.0f}, last {l_:.0f}, max {max(vals):.0f}"
        if after:
            line += f", after everyone left {num(after, key):.0f}"
        print(line)
        if l_ > 2 * w_ + slack:
            failures.append(f"{name} grew without bound: {l_:.0f} > 2 × {w_:.0f} + {slack}")
    if after and idle and num(after, "fds") > num(idle, "fds") + FD_SLACK:
        failures.append(f"fds not given back: {num(after, 'fds'):.0f} once everyone left, "
                        f"{num(idle, 'fds'):.0f} before the load")
    if after and num(after, "threads") > num(warm, "threads") + THREAD_SLACK:
        failures.append(f"threads not given back: {num(after, 'threads'):.0f} once everyone left, "
                        f"{num(warm, 'threads'):.0f} under full load")
    end = after or last
    base = idle or load[0]
    drops = {k: (num(end, k) or 0) - (num(base, k) or 0) for k in DROPS}
    print("drops over the run: " + ", ".join(f"{k} {v:.0f}" for k, v in drops.items()))
    parts = col("participants")
    joins = (num(end, "joins_total") or 0) - (num(base, "joins_total") or 0)
    leaves = (num(end, "leaves_total") or 0) - (num(base, "leaves_total") or 0)
    print(f"participants under load: min {min(parts):.0f}, max {max(parts):.0f}"
          + (f", after everyone left {num(after, 'participants'):.0f}" if after else "")
          + f"; server joins {joins:.0f}, leaves {leaves:.0f}")
    panics = num(end, "peer_panics") or 0
    if a.log:
        try:
            with open(a.log, errors="replace") as f:
                log = f.readlines()
        except OSError:
            log = []
        panics += sum("panicked" in line for line in log)
        # Not judged, but a soak is where slow paths show: the most frequent warnings.
        kinds = {}
        for line in log:
            parts = line.split(None, 3)
            if len(parts) == 4 and parts[1] in ("WARN", "ERROR"):
                key = f"{parts[1]} {parts[2]} {parts[3][:60].strip()}"
                kinds[key] = kinds.get(key, 0) + 1
        if kinds:
            top = sorted(kinds.items(), key=lambda kv: -kv[1])[:3]
            print(f"server log: {sum(kinds.values())} warnings/errors; most frequent: "
                  + "; ".join(f"{n}× {k}" for k, n in top))
    if panics:
        failures.append(f"{panics:.0f} panics (consulta_peer_panics_total and the log)")

    errors = bench.get("errors") or []
    churn = bench.get("churn") or {}
    left, rejoined = churn.get("left") or 0, churn.get("rejoined") or 0
    failed = len(errors) + max(0, left - rejoined)
    if bench:
        print(f"bench: churn {left} left, {rejoined} joined again; {len(errors)} errors; "
              f"frames received {bench.get('frames_received')}, lost {bench.get('frames_lost')} "
              f"({(bench.get('frame_loss_ratio') or 0) * 100:.3f} %); latency p50/p99 ms "
              f"{(bench.get('latency_ms') or {}).get('p50')}/{(bench.get('latency_ms') or {}).get('p99')}")
        for e in errors[:5]:
            print(f"  bench error: {e}")
    else:
        failures.append("no report from consulta-bench")
    if failed > a.max_failed_joins:
        failures.append(f"{failed} failed joins (tolerated: {a.max_failed_joins})")
    return finish(failures)


def finish(failures):
    if failures:
        print("SOAK FAILED: " + "; ".join(failures))
        return 1
    print("soak passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
