#!/usr/bin/env bash
# Instructions per forwarded packet on the in-memory 1:1 forwarding path of
# sfu/benches/forwarding.rs (SRTP decrypt, routing, rewrite, SRTP encrypt, no system calls),
# counted by callgrind inside the benchmark's `server_round` only (the datagrams in, then the
# subscriber's timeout and output poll; not the publisher's encryption):
#   scripts/callgrind-forwarding.sh [N1 N2]      (KEEP=1: keep the callgrind files)
# The subscriber publishes too, as in a consultation; CONSULTA_FORWARD_RECEIVE_ONLY=1 makes it a
# receive-only one (a data channel in its offer, as the SDK's without a camera).
# Runs the benchmark binary's fixed workload (CONSULTA_FORWARD_PACKETS) twice, with N1 and N2
# packets (default 640 and 1920), and divides the difference, so the peers' setup cancels out.
# Repeatable to ~0.1 % whatever else the machine does, where times on this 2-core VM drift by
# 10-20 %: the way to see a change of a few percent on the per-packet path. Instructions are not
# time (SipHash's are cheap, a cache miss is one), so confirm a gain with consulta-bench.
# Built in cargo profile $PROFILE (default production, what ships: release with fat LTO).
set -euo pipefail
cd "$(dirname "$0")/.."
n1=${1:-640}
n2=${2:-1920}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install -y valgrind)" >&2; exit 1; }
PROFILE=${PROFILE:-production}
bin=$(cargo bench --profile "$PROFILE" -p consulta-sfu --bench forwarding --no-run \
  --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
[ -x "$bin" ] || { echo "could not build the forwarding benchmark" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
count() {
  CONSULTA_FORWARD_PACKETS=$1 valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$1" \
    '--toggle-collect=*forwarding*server_round*' \
    "$bin" 2>&1 | sed -n 's/.*Collected : *//p'
}
c1=$(count "$n1")
c2=$(count "$n2")
echo "instructions: $c1 for $n1 packets, $c2 for $n2"
# A toggle that matches no function (inlined, renamed) collects nothing: refuse that.
[ "${c2:-0}" -gt "${c1:-0}" ] || { echo "nothing collected in server_round" >&2; exit 1; }
echo "instructions per forwarded packet: $(( (c2 - c1) / (n2 - n1) ))"
if [ -n "${KEEP:-}" ]; then
  trap - EXIT
  echo "per function: callgrind_annotate $tmp/cg.$n2"
fi
