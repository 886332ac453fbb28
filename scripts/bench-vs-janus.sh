#!/usr/bin/env bash
# Consulta and Janus VideoRoom side by side on the same synthetic load, in one run:
#   scripts/bench-vs-janus.sh [consulta-bench options...]
# e.g. scripts/bench-vs-janus.sh --rooms 25 --participants 2 --duration 20
#
# Both servers run in a private network namespace (Janus never gathers ICE candidates on
# loopback, so it gets a veth carrying 127.0.0.2), one after the other on the same load, each
# measured by consulta-bench from /proc (CPU, RSS) and from what its subscribers received.
# Needs root (unshare -n), Debian's janus (installed if missing) and builds of consulta and
# consulta-bench in cargo profile $PROFILE (default production, what ships: see Cargo.toml; built
# if missing). Prints a comparison and writes it, with both JSON and Markdown reports, to $OUT
# (default ./bench-results).
#
# ROUNDS=N (default 1) measures both servers N times in one run, in the order C J, J C, C J,
# ... so that a machine drifting during the run weighs on both alike. The comparison then gives
# the median of each figure (the lower middle one when N is even) and the ratio of each round
# with their median, and the reports are consulta-R.json and janus-R.json (R = 1..N) instead
# of consulta.json and janus.json. One round's ratio moves by ~10 % from run to run on a 2-core
# VM, because the two servers are measured one after the other.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/bench-results}
PROFILE=${PROFILE:-production}
ROUNDS=${ROUNDS:-1}
bin=target/$PROFILE
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] ||
  { echo "ROUNDS must be a whole number from 1, not '$ROUNDS'" >&2; exit 2; }

if [ -z "${CONSULTA_BENCH_NETNS:-}" ]; then
  command -v janus >/dev/null || {
    echo "installing janus" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq janus >/dev/null
  }
  [ -x "$bin/consulta" ] && [ -x "$bin/consulta-bench" ] ||
    cargo build --profile "$PROFILE" --bin consulta --bin consulta-bench
  mkdir -p "$OUT"
  exec unshare -n env CONSULTA_BENCH_NETNS=1 OUT="$OUT" PROFILE="$PROFILE" ROUNDS="$ROUNDS" \
    "$0" "$@"
fi

ip link set lo up
ip link add jv0 type veth peer name jv1
ip link set jv1 up
ip addr add 127.0.0.2/32 dev jv0
ip link set jv0 up

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

SECRET=bench-secret-0123456789abcdef
mkdir -p "$work/janus"
sed "s#@DIR@#$work/janus#" benches/janus/janus.jcfg >"$work/janus/janus.jcfg"
cp benches/janus/janus.transport.websockets.jcfg benches/janus/janus.plugin.videoroom.jcfg "$work/janus/"
cat >"$work/consulta.toml" <<EOF
data_dir = "$work/data"
[http]
listen = "127.0.0.1:7880"
# Every synthetic participant joins from 127.0.0.1.
join_limit_per_ip = 0
[media]
udp_port = 7882
tcp_port = 0
public_ips = ["127.0.0.1"]
[auth]
token_secret = "$SECRET"
[log]
level = "warn"
EOF

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  return 1
}

"$bin/consulta" serve --config "$work/consulta.toml" >"$work/consulta.log" 2>&1 &
consulta_pid=$!
pids+=("$consulta_pid")
janus -F "$work/janus" -C "$work/janus/janus.jcfg" -L "$work/janus.log" -N >/dev/null 2>&1 &
janus_pid=$!
pids+=("$janus_pid")
wait_port 7880
wait_port 8188

measure_consulta() { # REPORT_NAME
  echo "== Consulta" >&2
  "$bin/consulta-bench" --target consulta --url ws://127.0.0.1:7880/ws \
    --metrics http://127.0.0.1:7880/metrics --secret "$SECRET" --server-pid "$consulta_pid" \
    --report-md "$OUT/$1.md" "${bench_args[@]}" >"$OUT/$1.json"
}
measure_janus() { # REPORT_NAME
  echo "== Janus" >&2
  "$bin/consulta-bench" --target janus --url ws://127.0.0.1:8188 --metrics "" --bind-ip 127.0.0.2 \
    --secret "$SECRET" --server-pid "$janus_pid" --report-md "$OUT/$1.md" "${bench_args[@]}" \
    >"$OUT/$1.json" || { echo "--- janus log" >&2; tail -30 "$work/janus.log" >&2; exit 1; }
}
bench_args=("$@")
reports=()
for round in $(seq 1 "$ROUNDS"); do
  c=consulta j=janus
  if [ "$ROUNDS" -gt 1 ]; then
    c=consulta-$round j=janus-$round
    echo "== round $round of $ROUNDS" >&2
  fi
  if [ $((round % 2)) = 1 ]; then
    measure_consulta "$c"; sleep 2; measure_janus "$j"
  else
    measure_janus "$j"; sleep 2; measure_consulta "$c"
  fi
  reports+=("$OUT/$c.json" "$OUT/$j.json")
  [ "$round" = "$ROUNDS" ] || sleep 2
done

python3 - "${reports[@]}" <<'PY' | tee "$OUT/comparison.md"
import json, statistics, sys
runs = [json.load(open(p)) for p in sys.argv[1:]]
cs, js = runs[0::2], runs[1::2]
def g(r, *path):
    for k in path:
        r = (r or {}).get(k)
    return r
def med(rs, path):
    vals = [v for v in (g(r, *path) for r in rs) if v is not None]
    return statistics.median_low(vals) if vals else None
rows = [
    ("consultations", ("rooms",)),
    ("RTP packets received by subscribers", ("rtp_packets_received",)),
    ("frame loss %", ("frame_loss_ratio",)),
    ("latency p50 ms", ("latency_ms", "p50")),
    ("latency p99 ms", ("latency_ms", "p99")),
    ("time in server p50 ms (kernel in to send)", ("server", "forward_delay_ms", "p50")),
    ("time in server p99 ms", ("server", "forward_delay_ms", "p99")),
    ("server CPU s", ("server", "cpu_seconds")),
    ("server CPU % of one core", ("server", "cpu_percent_of_one_core")),
    ("server CPU µs per received packet", ("server", "cpu_us_per_received_packet")),
    ("server RSS MB", ("server", "rss_bytes")),
]
n = len(cs)
if n > 1:
    print(f"Each figure: the median of {n} rounds (the lower middle one when even).\n")
print("| | Consulta | Janus |\n|---|---:|---:|")
for name, path in rows:
    a, b = med(cs, path), med(js, path)
    if name.startswith("frame loss"):
        a, b = (x * 100 if x is not None else None for x in (a, b))
    if name.startswith("server RSS"):
        a, b = (x / 1e6 if x is not None else None for x in (a, b))
    f = lambda x: "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))
    print(f"| {name} | {f(a)} | {f(b)} |")
ratios = []
for c, j in zip(cs, js):
    a, b = g(c, "server", "cpu_seconds"), g(j, "server", "cpu_seconds")
    pa, pb = g(c, "rtp_packets_received"), g(j, "rtp_packets_received")
    if a and b and pa and pb:
        ratios.append((a / pa) / (b / pb))
if n == 1 and ratios:
    print(f"\nConsulta / Janus CPU per received packet: {ratios[0]:.3f}x")
elif ratios:
    each = ", ".join(f"{r:.3f}" for r in ratios)
    print(f"\nConsulta / Janus CPU per received packet, each round: {each}")
    print(f"Consulta / Janus CPU per received packet, median of {len(ratios)}: "
          f"{statistics.median(ratios):.3f}x")
if len(ratios) < n:
    print(f"({n - len(ratios)} of {n} rounds gave no ratio: a report without CPU or packets)")
for i, (c, j) in enumerate(zip(cs, js), 1):
    for name, r in (("Consulta", c), ("Janus", j)):
        if r.get("errors"):
            where = f" (round {i})" if n > 1 else ""
            print(f"\n{name} errors{where}: {r['errors'][:5]}")
PY
