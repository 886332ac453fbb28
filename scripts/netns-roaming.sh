#!/usr/bin/env bash
# Three "hosts" as network namespaces (no traffic leaves this machine), for the reconnection tests
# (tests/e2e-netns/roaming.test.mjs): a server, a doctor and a patient, each browser on its own
# link to the server, so the patient's network can change under a live call.
#   server  $CONSULTA_NETNS_SERVER: 10.203.0.1/32 on its loopback (the address the server binds
#           and advertises: [http] listen, [media] bind_ip and public_ips), and one veth per client
#   doctor  $ROAMING_NS_DOCTOR: 10.203.1.2/24 on ${id}d1, default route via 10.203.1.1 (server side)
#   patient $ROAMING_NS_PATIENT: 10.203.2.2/24 on ${id}p1, default route via 10.203.2.1
# The command runs in the server namespace (it starts the server there and drives browsers it
# launches with `ip netns exec $ROAMING_NS_DOCTOR|PATIENT chromium`). A test moves the patient by
# adding a veth ${id}r<N>a (server) / ${id}r<N>b (patient) on 10.203.<10+N>.0/24, moving the
# default route onto it and deleting the previous link, as a phone leaving Wi-Fi for 4G does.
# IPv6 is off in the client namespaces so that the only path is the one the test controls.
# Everything is deleted on exit.
# Usage: scripts/netns-roaming.sh CMD...
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 CMD..." >&2; exit 2; }
id="cr$(( $$ % 100000 ))"
srv="${id}s" doc="${id}d" pat="${id}p"
state=$(mktemp -d)   # the tests' counter of links made (ROAMING_STATE_DIR)
cleanup() { for ns in "$pat" "$doc" "$srv"; do ip netns del "$ns" 2>/dev/null || true; done; rm -rf "$state"; }
trap cleanup EXIT
for ns in "$srv" "$doc" "$pat"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
for ns in "$doc" "$pat"; do
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
ip -n "$srv" addr add 10.203.0.1/32 dev lo
# link NAME_PREFIX CLIENT_NS SUBNET(10.203.X)
link() {
  ip link add "${1}0" netns "$srv" type veth peer name "${1}1" netns "$2"
  ip -n "$srv" addr add "$3.1/24" dev "${1}0"
  ip -n "$2" addr add "$3.2/24" dev "${1}1"
  ip -n "$srv" link set "${1}0" up
  ip -n "$2" link set "${1}1" up
  ip -n "$2" route add default via "$3.1" dev "${1}1"
}
link "${id}d" "$doc" 10.203.1
link "${id}p" "$pat" 10.203.2
CONSULTA_NETNS_SERVER="$srv" CONSULTA_SERVER_IP=10.203.0.1 ROAMING_ID="$id" \
  ROAMING_NS_DOCTOR="$doc" ROAMING_NS_PATIENT="$pat" ROAMING_PATIENT_LINK="${id}p1" ROAMING_STATE_DIR="$state" \
  ip netns exec "$srv" "$@"
