#!/usr/bin/env bash
# Independent check of the control API against its own OpenAPI document: schemathesis (PyPI)
# generates requests from /api/v1/openapi.json; no answer may be a server error (5xx).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${CONSULTA_BIN:-target/release/consulta}
python3 -m pip install -q --disable-pip-version-check "schemathesis==4.*" >/dev/null 2>&1 || python3 -m pip install -q "schemathesis==4.*"
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
key=schemathesis-key-0123456789
cat > "$dir/c.toml" <<TOML
data_dir = "$dir/data"
[http]
listen = "127.0.0.1:$port"
[media]
udp_port = 0
tcp_port = 0
[api]
keys = ["$key"]
# Fuzzing is about answers, not budgets: no rate limit (429 would hide the routes).
rate_limit_per_key = 0
rate_limit_per_ip = 0
TOML
"$BIN" serve --config "$dir/c.toml" > "$dir/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do curl -sf "127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
curl -sf -XPOST "127.0.0.1:$port/api/v1/consultations" -H "Authorization: Bearer $key" \
  -H 'Content-Type: application/json' -d '{"id":"appt-fuzz"}' >/dev/null
python3 -m schemathesis.cli run "http://127.0.0.1:$port/api/v1/openapi.json" --url "http://127.0.0.1:$port" \
  -H "Authorization: Bearer $key" --checks not_a_server_error --max-examples 30 --seed 1
