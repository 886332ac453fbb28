#!/usr/bin/env bash
# Soak: many consultations through consulta-bench for a long time, with participants leaving
# and joining again throughout, while the server's resources are sampled:
#   scripts/soak.sh [--consultations N] [--minutes M] [--interval SECONDS] [--out DIR]
#                   [--churn-every SECONDS] [--max-failed-joins N] [--max-rss-growth PCT]
#                   [-- consulta-bench options...]
# Defaults: 50 consultations of 2 participants, 60 minutes, a sample every 60 s, a fresh
# directory under target/soak/, one participant of a random consultation leaving and joining
# again every 2 s, 2 failed joins tolerated, RSS growth reported but not judged.
#
# Starts `consulta serve` on free ports with a config of its own (as scripts/bench-vs-janus.sh
# does), runs consulta-bench against it with --churn-every, and every interval reads from
# /proc/<pid> the RSS, CPU time, open file descriptors and threads, and from /metrics the
# participants and every counter of dropped work. Writes to the output directory:
#   soak.csv     one row per sample (phase idle: before the load; load; after: everyone left)
#   soak.svg     a chart of it, one panel per metric (scripts/soak-report.py)
#   bench.json   consulta-bench's report (frames lost, latency, churn, errors)
#   consulta.log, bench.log
# and prints a summary. Exits non-zero when the server died, when fds or threads grew without
# bound or did not come back once everyone left, when a participant's media state panicked, or
# when more joins failed than tolerated (see scripts/soak-report.py for the exact rules).
#
# Builds consulta and consulta-bench in cargo profile $PROFILE (default release; production
# for figures comparable with docs/performance.md) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROFILE=${PROFILE:-release}
bin=$ROOT/target/$PROFILE

consultations=50 minutes=60 interval=60 churn_every=2 max_failed_joins=2 max_rss_growth=""
out=""
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --consultations) consultations=${2:?}; shift 2 ;;
    --minutes) minutes=${2:?}; shift 2 ;;
    --interval) interval=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    --churn-every) churn_every=${2:?}; shift 2 ;;
    --max-failed-joins) max_failed_joins=${2:?}; shift 2 ;;
    --max-rss-growth) max_rss_growth=${2:?}; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
done
for v in consultations minutes interval; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] ||
    { echo "--$v must be a whole number above 0, not '${!v}'" >&2; exit 2; }
done
[[ $max_failed_joins =~ ^[0-9]+$ ]] ||
  { echo "--max-failed-joins must be a whole number, not '$max_failed_joins'" >&2; exit 2; }
out=${out:-$ROOT/target/soak/$(date +%Y%m%d-%H%M%S)-$$}
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [ ! -x "$bin/consulta" ] || [ ! -x "$bin/consulta-bench" ]; then
  cargo build --profile "$PROFILE" --bin consulta --bin consulta-bench
fi

work=$(mktemp -d)
server_pid="" bench_pid=""
cleanup() {
  for p in $bench_pid $server_pid; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Two free ports (HTTP on TCP, media on UDP), picked by the kernel.
read -r http_port udp_port < <(python3 -c '
import socket
t = socket.socket(); t.bind(("127.0.0.1", 0))
u = socket.socket(type=socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
print(t.getsockname()[1], u.getsockname()[1])')
SECRET=soak-secret-0123456789abcdef
cat >"$work/consulta.toml" <<EOF
data_dir = "$work/data"
[http]
listen = "127.0.0.1:$http_port"
# Every synthetic participant joins from 127.0.0.1.
join_limit_per_ip = 0
[media]
udp_port = $udp_port
tcp_port = 0
public_ips = ["127.0.0.1"]
[auth]
token_secret = "$SECRET"
[log]
level = "warn"
EOF
metrics_url=http://127.0.0.1:$http_port/metrics

"$bin/consulta" serve --config "$work/consulta.toml" >"$out/consulta.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  curl -sf -o /dev/null "$metrics_url" && break
  kill -0 "$server_pid" 2>/dev/null || { echo "consulta serve exited at start:" >&2; tail -20 "$out/consulta.log" >&2; exit 1; }
  sleep 0.1
done

ticks=$(getconf CLK_TCK)
start=$(date +%s.%N)
last_cpu="" last_t=""
csv=$out/soak.csv
echo "t_seconds,phase,rss_kb,cpu_seconds,cpu_percent,fds,threads,participants,joins_total,leaves_total,worker_queue_drops,udp_receive_drops,events_dropped,event_overflows,ice_tcp_drops,peer_panics,send_errors" >"$csv"
# One row: /proc/<pid> and /metrics now. Fails (no row) once the server is gone.
sample() { # PHASE
  local p=/proc/$server_pid now rss threads cpu fds m pct
  now=$(date +%s.%N)
  [ -r "$p/status" ] || return 1
  rss=$(awk '/^VmRSS:/ {print $2}' "$p/status")
  threads=$(awk '/^Threads:/ {print $2}' "$p/status")
  # utime and stime: fields 14 and 15, counted after the ')' that ends the command name.
  cpu=$(sed 's/.*) //' "$p/stat" | awk -v hz="$ticks" '{printf "%.2f", ($12 + $13) / hz}')
  fds=$(find "$p/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  # Counters summed over their labels; a metric not there yet reads 0.
  m=$(curl -sf --max-time 5 "$metrics_url" | awk '
    /^#/ { next }
    { name = $1; sub(/\{.*/, "", name); v[name] += $NF }
    END {
      n = split("consulta_participants consulta_participant_joins_total consulta_participant_leaves_total consulta_worker_queue_drops_total consulta_udp_receive_drops_total consulta_worker_events_dropped_total consulta_worker_event_overflows_total consulta_ice_tcp_drops_total consulta_peer_panics_total consulta_send_errors_total", k, " ")
      for (i = 1; i <= n; i++) printf "%s%d", (i > 1 ? "," : ""), v[k[i]]
    }') || m=",,,,,,,,,"
  pct=""
  [ -n "$last_cpu" ] && pct=$(awk -v a="$last_cpu" -v b="$cpu" -v s="$last_t" -v e="$now" \
    'BEGIN { printf "%.1f", (b - a) * 100 / (e - s) }')
  last_cpu=$cpu last_t=$now
  printf '%s,%s,%s,%s,%s,%s,%s,%s\n' "$(awk -v a="$start" -v b="$now" 'BEGIN { printf "%.0f", b - a }')" \
    "$1" "$rss" "$cpu" "$pct" "$fds" "$threads" "$m" >>"$csv"
}
alive() { kill -0 "$server_pid" 2>/dev/null; }

sample idle
echo "soak: $consultations consultations for $minutes min, a sample every ${interval}s, churn every ${churn_every}s; server pid $server_pid; output in $out" >&2
"$bin/consulta-bench" --url "ws://127.0.0.1:$http_port/ws" --metrics "$metrics_url" \
  --secret "$SECRET" --server-pid "$server_pid" --rooms "$consultations" --participants 2 \
  --duration $((minutes * 60)) --churn-every "$churn_every" --quiet "$@" \
  >"$out/bench.json" 2>"$out/bench.log" &
bench_pid=$!
server_died=0
next=$(($(date +%s) + interval))
while kill -0 "$bench_pid" 2>/dev/null; do
  if [ "$(date +%s)" -ge "$next" ]; then
    sample load || { server_died=1; kill "$bench_pid" 2>/dev/null || true; break; }
    tail -1 "$csv" >&2
    next=$((next + interval))
  fi
  sleep 1
done
bench_rc=0
wait "$bench_pid" || bench_rc=$?
bench_pid=""
alive || server_died=1

# Everyone left: the server should give back what the participants held. Leaked fds or
# threads stay; freed ones go within seconds, so wait for that (bounded), not for a fixed time.
if [ "$server_died" = 0 ]; then
  idle_fds=$(awk -F, 'NR == 2 {print $6}' "$csv")
  for _ in $(seq 1 30); do
    fds=$(find "/proc/$server_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    participants=$(curl -sf --max-time 5 "$metrics_url" | awk '$1 == "consulta_participants" {print $2}')
    [ "${participants:-1}" = 0 ] && [ "$fds" -le $((idle_fds + 16)) ] && break
    sleep 1
  done
  sample after || server_died=1
fi
alive || server_died=1

report_args=(--csv "$csv" --svg "$out/soak.svg" --bench "$out/bench.json"
  --bench-exit "$bench_rc" --server-died "$server_died" --log "$out/consulta.log"
  --max-failed-joins "$max_failed_joins" --consultations "$consultations")
[ -n "$max_rss_growth" ] && report_args+=(--max-rss-growth "$max_rss_growth")
python3 "$ROOT/scripts/soak-report.py" "${report_args[@]}" | tee "$out/summary.txt"
