#!/usr/bin/env bash
# Runs a command in a private network namespace (loopback only) where every UDP packet is dropped.
#   scripts/netns-udp-blocked.sh node --test tests/e2e-netns/
set -euo pipefail
exec unshare -n sh -c '
  ip link set lo up
  nft -f - <<NFT
table inet consulta_test {
  chain input { type filter hook input priority 0; meta l4proto udp drop; }
}
NFT
  exec "$@"' sh "$@"
