#!/usr/bin/env bash
# Runs a command on a "client host" that reaches a "server host" only through a firewall, both
# being network namespaces made here (no traffic leaves this machine):
#   server namespace $CONSULTA_NETNS_SERVER: 10.201.0.1/24 on a veth, plus loopback;
#   client namespace: 10.201.0.2/24, where the command runs.
# The client's firewall follows MODE:
#   tcp443   only TCP to the server's port 443 and to the signaling port ($SIGNALING_PORT)
#   noudp    every UDP packet to the server dropped
# The command (e.g. a test runner) starts the server itself with
#   ip netns exec "$CONSULTA_NETNS_SERVER" consulta serve ...
# Usage: scripts/netns-two-hosts.sh MODE SIGNALING_PORT CMD...
set -euo pipefail
mode=$1 sig=$2
shift 2
id="cs$$"
srv="${id}s" cli="${id}c"
cleanup() { ip netns del "$srv" 2>/dev/null || true; ip netns del "$cli" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$srv"
ip netns add "$cli"
ip link add "${id}a" type veth peer name "${id}b"
ip link set "${id}a" netns "$srv"
ip link set "${id}b" netns "$cli"
ip -n "$srv" addr add 10.201.0.1/24 dev "${id}a"
ip -n "$cli" addr add 10.201.0.2/24 dev "${id}b"
for ns in "$srv" "$cli"; do ip -n "$ns" link set lo up; done
ip -n "$srv" link set "${id}a" up
ip -n "$cli" link set "${id}b" up
case "$mode" in
  tcp443)
    ip netns exec "$cli" nft -f - <<NFT
table inet consulta_test {
  chain output {
    type filter hook output priority 0;
    oif "lo" accept
    ip daddr 10.201.0.1 tcp dport { 443, $sig } accept
    ip daddr 10.201.0.1 drop
  }
}
NFT
    ;;
  noudp)
    ip netns exec "$cli" nft -f - <<NFT
table inet consulta_test {
  chain output { type filter hook output priority 0; ip daddr 10.201.0.1 meta l4proto udp drop; }
}
NFT
    ;;
  *) echo "unknown mode $mode"; exit 2 ;;
esac
CONSULTA_NETNS_SERVER="$srv" CONSULTA_SERVER_IP=10.201.0.1 ip netns exec "$cli" "$@"
