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
# if missing). Prints both JSON reports and a comparison; writes them to $OUT (default
# ./bench-results).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/bench-results}
PROFILE=${PROFILE:-production}
bin=target/$PROFILE

if [ -z "${CONSULTA_BENCH_NETNS:-}" ]; then
  command -v janus >/dev/null || {
    echo "installing janus" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq janus >/dev/null
  }
  [ -x "$bin/consulta" ] && [ -x "$bin/consulta-bench" ] ||
    cargo build --profile "$PROFILE" --bin consulta --bin consulta-bench
  mkdir -p "$OUT"
  exec unshare -n env CONSULTA_BENCH_NETNS=1 OUT="$OUT" PROFILE="$PROFILE" "$0" "$@"
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

echo "== Consulta" >&2
"$bin/consulta-bench" --target consulta --url ws://127.0.0.1:7880/ws \
  --metrics http://127.0.0.1:7880/metrics --secret "$SECRET" --server-pid "$consulta_pid" \
  --report-md "$OUT/consulta.md" "$@" >"$OUT/consulta.json"
sleep 2
echo "== Janus" >&2
"$bin/consulta-bench" --target janus --url ws://127.0.0.1:8188 --metrics "" --bind-ip 127.0.0.2 \
  --secret "$SECRET" --server-pid "$janus_pid" --report-md "$OUT/janus.md" "$@" >"$OUT/janus.json" ||
  { echo "--- janus log" >&2; tail -30 "$work/janus.log" >&2; exit 1; }

python3 - "$OUT/consulta.json" "$OUT/janus.json" <<'PY' | tee "$OUT/comparison.md"
import json, sys
c, j = (json.load(open(p)) for p in sys.argv[1:3])
def g(r, *path):
    for k in path:
        r = (r or {}).get(k)
    return r
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
print("| | Consulta | Janus |\n|---|---:|---:|")
for name, path in rows:
    a, b = g(c, *path), g(j, *path)
    if name.startswith("frame loss"):
        a, b = (x * 100 if x is not None else None for x in (a, b))
    if name.startswith("server RSS"):
        a, b = (x / 1e6 if x is not None else None for x in (a, b))
    f = lambda x: "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))
    print(f"| {name} | {f(a)} | {f(b)} |")
a, b = g(c, "server", "cpu_seconds"), g(j, "server", "cpu_seconds")
pa, pb = g(c, "rtp_packets_received"), g(j, "rtp_packets_received")
if a and b and pa and pb:
    print(f"\nConsulta / Janus CPU per received packet: {(a / pa) / (b / pb):.2f}x")
for name, r in (("Consulta", c), ("Janus", j)):
    if r.get("errors"):
        print(f"\n{name} errors: {r['errors'][:5]}")
PY
