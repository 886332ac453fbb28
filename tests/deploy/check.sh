#!/usr/bin/env bash
# Validates the shipped deployment files in deploy/ and exits non-zero if any check fails:
#   - Prometheus: promtool check config / check rules, and the alert unit tests (alerts_test.yml)
#   - nginx: nginx -t on deploy/nginx/consulta.conf inside a throwaway nginx.conf, with a
#     self-signed certificate in place of the certbot paths
#   - compose files: `docker compose config -q` when the compose plugin works; always a structural
#     check with PyYAML (services, image/build, ports, mounts, variables in .env.example)
#   - Grafana: provisioning YAML and dashboard JSON (parses, has panels, PromQL targets, layout)
#   - metric names in the dashboard and alerts exist in docs/metrics.md
#   - systemd unit (systemd-analyze verify), Dockerfile and .dockerignore essentials
#   - with a consulta binary (CONSULTA_BIN, or target/release/consulta if built):
#     `consulta config check` on deploy/consulta.toml, and a live smoke test of consulta behind
#     the nginx config: /healthz 200 over TLS, /metrics 403, a WebSocket ping/pong through /ws,
#     the Dockerfile's healthcheck command. Everything listens on 127.0.0.1 and is stopped at exit.
# Installs promtool (Debian `prometheus`), nginx, openssl and python3-yaml with apt-get if missing.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD

passed=0
failed=0
ok() { passed=$((passed + 1)); printf 'ok    %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$*"; }
# run NAME CMD...: runs CMD, prints its output only when it fails.
run() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then ok "$name"; else fail "$name"; printf '%s\n' "$out" | sed 's/^/      /'; fi
}

TMP=$(mktemp -d)
# nginx workers (nobody when run as root) must reach their temp paths under it.
chmod 0755 "$TMP"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT

# --- tools ------------------------------------------------------------------------------------
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
PY=python3
if ! python3 -c 'import yaml' 2>/dev/null; then
  if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import yaml' 2>/dev/null; then
    PY=/usr/bin/python3
  else
    need+=(python3 python3-yaml)
    PY=/usr/bin/python3
  fi
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  SUDO=
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq >/dev/null
  # policy-rc.d or not, do not leave nginx/prometheus services running after the install.
  $SUDO env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || {
    echo "cannot install ${need[*]}"
    exit 1
  }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

echo "==> Prometheus"
run "promtool check config deploy/prometheus/prometheus.yml" promtool check config deploy/prometheus/prometheus.yml
run "promtool check rules deploy/prometheus/alerts.yml" promtool check rules deploy/prometheus/alerts.yml
run "promtool test rules tests/deploy/alerts_test.yml" promtool test rules tests/deploy/alerts_test.yml

echo "==> nginx"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=consulta.example.com.br" \
  -addext "subjectAltName=DNS:consulta.example.com.br" \
  -keyout "$TMP/privkey.pem" -out "$TMP/fullchain.pem" >/dev/null 2>&1
# nginx_conf DIR [SED-SCRIPT]: the shipped server blocks in a minimal nginx.conf under DIR, with
# the throwaway certificate and logs in DIR, optionally rewritten further by SED-SCRIPT.
nginx_conf() {
  local dir=$1 extra=${2:-} src=${3:-deploy/nginx/consulta.conf}
  mkdir -p "$dir"
  sed -e "s|/etc/letsencrypt/live/consulta.example.com.br/|$TMP/|" \
    -e "s|/var/log/nginx/|$dir/|" \
    ${extra:+-e "$extra"} "$src" >"$dir/consulta.conf"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 64; }
http {
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    access_log $dir/access.log;
    include $dir/consulta.conf;
}
EOF
}
nginx_conf "$TMP/nginx-t"
run "nginx -t deploy/nginx/consulta.conf" "$NGINX" -t -q -p "$TMP/nginx-t" -e "$TMP/nginx-t/error.log" -c "$TMP/nginx-t/nginx.conf"
run "nginx: /api/ denied" grep -Pzq '(?s)location /api/ \{\s*deny all;\s*\}' deploy/nginx/consulta.conf
# The several-node front (cluster mode): valid, /api/ denied, every /n/<node>/ws a fixed address.
nginx_conf "$TMP/nginx-cluster" "" deploy/nginx/consulta-cluster.conf
run "nginx -t deploy/nginx/consulta-cluster.conf" "$NGINX" -t -q -p "$TMP/nginx-cluster" -e "$TMP/nginx-cluster/error.log" -c "$TMP/nginx-cluster/nginx.conf"
run "nginx cluster: /api/ denied, no proxy_pass from request variables" sh -c \
  "grep -Pzq '(?s)location /api/ \\{\\s*deny all;\\s*\\}' deploy/nginx/consulta-cluster.conf && ! grep -E 'proxy_pass[^;]*\\\$' deploy/nginx/consulta-cluster.conf"
run "nginx: /metrics denied, /ws upgrades, long read timeout" grep -Pzq \
  '(?s)location = /metrics \{\s*deny all;.*location /ws \{.*Upgrade \$http_upgrade.*Connection \$connection_upgrade.*proxy_read_timeout 3600s' \
  deploy/nginx/consulta.conf

echo "==> compose"
for f in deploy/compose/*.yml; do
  if docker compose version >/dev/null 2>&1; then
    run "docker compose config -q $f" docker compose --env-file deploy/compose/.env.example -f "$f" config -q
  fi
done
run "compose files: structure, ports, mounts, variables" "$PY" - deploy/compose <<'EOF'
import os, re, sys, yaml
d = sys.argv[1]
env_text = open(os.path.join(d, '.env.example')).read()
env = {l.split('=', 1)[0] for l in env_text.splitlines()
       if re.match(r'^[A-Z_][A-Z0-9_]*=', l)}
port_re = re.compile(r'^((\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):)?(\d+(-\d+)?:)?\d+(-\d+)?(/(tcp|udp))?$')
errors = []
files = sorted(f for f in os.listdir(d) if f.endswith('.yml'))
if not files:
    errors.append('no compose files')
for f in files:
    path = os.path.join(d, f)
    text = open(path).read()
    doc = yaml.safe_load(text)
    def err(msg):
        errors.append(f'{f}: {msg}')
    if not isinstance(doc, dict):
        err('not a mapping'); continue
    for k in doc:
        if k not in ('name', 'services', 'volumes', 'networks', 'configs', 'secrets') and not k.startswith('x-'):
            err(f'unknown top-level key {k}')
    services = doc.get('services') or {}
    if not services:
        err('no services')
    declared = set((doc.get('volumes') or {}).keys())
    for var in re.findall(r'\$\{([A-Z_][A-Z0-9_]*)', text):
        if var not in env:
            err(f'${{{var}}} is not in .env.example')
    for name, s in services.items():
        if not isinstance(s, dict):
            err(f'{name}: not a mapping'); continue
        if 'image' not in s and 'build' not in s:
            err(f'{name}: neither image nor build')
        b = s.get('build')
        if isinstance(b, dict):
            ctx = os.path.normpath(os.path.join(d, b.get('context', '.')))
            if not os.path.isdir(ctx):
                err(f'{name}: build context {ctx} missing')
            elif not os.path.isfile(os.path.join(ctx, b.get('dockerfile', 'Dockerfile'))):
                err(f'{name}: dockerfile {b.get("dockerfile")} missing')
        if s.get('network_mode') == 'host' and s.get('ports'):
            err(f'{name}: ports are ignored with network_mode: host')
        for p in s.get('ports') or []:
            if not isinstance(p, str) or not port_re.match(p):
                err(f'{name}: malformed port {p!r}')
        for v in s.get('volumes') or []:
            if not isinstance(v, str):
                err(f'{name}: use short volume syntax: {v!r}'); continue
            src = v.split(':')[0]
            if src.startswith('.'):
                if not os.path.exists(os.path.normpath(os.path.join(d, src))):
                    err(f'{name}: mounted file {src} does not exist')
            elif not src.startswith('/') and src not in declared:
                err(f'{name}: volume {src} not declared')
        for k, v in (s.get('environment') or {}).items():
            if v is None:
                # `KEY:` with no value: Compose passes KEY through from .env or the shell when it is
                # set there and leaves it unset otherwise (optional settings). It must be in
                # .env.example, set or commented out.
                if not re.search(r'^(# ?)?' + re.escape(k) + '=', env_text, re.M):
                    err(f'{name}: environment {k} (passed through) is not in .env.example')
                continue
            if not isinstance(v, str):
                err(f'{name}: environment {k} must be a string (quote it)')
        if s.get('restart') not in (None, 'no', 'always', 'on-failure', 'unless-stopped'):
            err(f'{name}: restart {s.get("restart")}')
        hc = s.get('healthcheck')
        if hc is not None and not isinstance(hc.get('test'), (list, str)):
            err(f'{name}: healthcheck.test')
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
EOF

echo "==> Grafana"
run "grafana provisioning and dashboard" "$PY" - <<'EOF'
import json, re, sys, yaml
errors = []
for p in ('deploy/grafana/provisioning/datasources/prometheus.yml',
          'deploy/grafana/provisioning/dashboards/consulta.yml'):
    doc = yaml.safe_load(open(p))
    if doc.get('apiVersion') != 1:
        errors.append(f'{p}: apiVersion')
ds = yaml.safe_load(open('deploy/grafana/provisioning/datasources/prometheus.yml'))['datasources'][0]
prov = yaml.safe_load(open('deploy/grafana/provisioning/dashboards/consulta.yml'))['providers'][0]
for f in ('single.yml', 'pc2-app.yml'):
    if f'../grafana/dashboards:{prov["options"]["path"]}' not in open('deploy/compose/' + f).read():
        errors.append(f'{f} does not mount the dashboards at {prov["options"]["path"]}')
d = json.load(open('deploy/grafana/dashboards/consulta.json'))
if not isinstance(d.get('schemaVersion'), int) or d['schemaVersion'] < 36:
    errors.append('schemaVersion')
panels = d.get('panels') or []
if not [p for p in panels if p.get('type') != 'row']:
    errors.append('no panels')
var = {v['name']: v for v in d['templating']['list']}
if var.get('datasource', {}).get('current', {}).get('value') != ds['uid']:
    errors.append('datasource variable does not default to the provisioned uid')
ids = [p['id'] for p in panels]
if len(ids) != len(set(ids)):
    errors.append('duplicate panel ids')
for p in panels:
    g = p['gridPos']
    if g['x'] + g['w'] > 24:
        errors.append(f'{p["title"]}: wider than the grid')
    if p['type'] == 'row':
        continue
    if p.get('datasource', {}).get('uid') != '${datasource}':
        errors.append(f'{p["title"]}: datasource')
    if not p.get('targets'):
        errors.append(f'{p["title"]}: no targets')
    for t in p.get('targets', []):
        e = t.get('expr', '')
        if not e or e.count('(') != e.count(')') or e.count('{') != e.count('}'):
            errors.append(f'{p["title"]}: bad expr {e!r}')
        if 'histogram_quantile' in e and '_bucket' not in e:
            errors.append(f'{p["title"]}: histogram_quantile without _bucket')
        if 'consulta_' in e and '$instance' not in e:
            errors.append(f'{p["title"]}: not filtered by $instance')
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
EOF
run "metric names in dashboard and alerts are in docs/metrics.md" "$PY" - <<'EOF'
import re, sys
known = set(re.findall(r'^\| `(consulta_[a-z0-9_]+)`', open('docs/metrics.md').read(), re.M))
hist = {m for m in known if re.search(r'^\| `' + m + r'` \| histogram', open('docs/metrics.md').read(), re.M)}
bad = set()
for f in ('deploy/grafana/dashboards/consulta.json', 'deploy/prometheus/alerts.yml', 'tests/deploy/alerts_test.yml'):
    for m in set(re.findall(r'\bconsulta_[a-z0-9_]+', open(f).read())):
        base = re.sub(r'_(bucket|sum|count)$', '', m)
        if m in known or (base in hist and base != m):
            continue
        bad.add(f'{f}: {m}')
for b in sorted(bad):
    print('unknown metric', b)
sys.exit(1 if bad or not known else 0)
EOF

echo "==> systemd, Dockerfile"
if command -v systemd-analyze >/dev/null; then
  # verify wants ExecStart to exist: point it at any executable for the check.
  sed "s|^ExecStart=/usr/local/bin/consulta|ExecStart=/bin/true|" deploy/systemd/consulta.service >"$TMP/consulta.service"
  run "systemd-analyze verify deploy/systemd/consulta.service" systemd-analyze verify "$TMP/consulta.service"
fi
run "systemd unit: hardening and drain" grep -Pzq \
  '(?s)(?=.*\nProtectSystem=strict\n)(?=.*\nReadWritePaths=/var/lib/consulta\n)(?=.*\nRestart=on-failure\n)(?=.*\nKillSignal=SIGTERM\n)(?=.*\nTimeoutStopSec=)(?=.*\nUser=consulta\n)(?=.*\nNoNewPrivileges=yes\n)' \
  deploy/systemd/consulta.service
dockerfile_check() {
  local f=deploy/Dockerfile
  [ "$(grep -c '^FROM ' $f)" -ge 2 ] || { echo "not multi-stage"; return 1; }
  grep -q 'cargo build --profile production --locked --bin consulta' $f || { echo "no locked production-profile build"; return 1; }
  grep -q 'install .* target/production/consulta ' $f || { echo "does not ship target/production/consulta"; return 1; }
  grep -q "^\[profile.production\]" Cargo.toml || { echo "Cargo.toml has no production profile"; return 1; }
  grep -q '^USER consulta' $f || { echo "no non-root USER"; return 1; }
  grep -q '^EXPOSE 7880/tcp 7882/udp' $f || { echo "EXPOSE"; return 1; }
  grep -Pzq '\nHEALTHCHECK [^\n]*\\\n +CMD [^\n]*/healthz' $f || { echo "HEALTHCHECK"; return 1; }
  grep -q '^ENTRYPOINT \["consulta", "serve", "--config", "/etc/consulta/consulta.toml"\]' $f || { echo "ENTRYPOINT"; return 1; }
  local src
  for src in $(sed -n 's/^COPY \(--[^ ]* \)*\([^ .][^ ]*\) .*/\2/p' $f | grep -v '^/'); do
    [ -e "$src" ] || { echo "COPY source $src missing"; return 1; }
  done
  if ! grep -qx 'target/' .dockerignore || ! grep -q 'node_modules' .dockerignore; then
    echo ".dockerignore must exclude target/ and node_modules"
    return 1
  fi
}
run "Dockerfile: multi-stage, locked build, non-root, healthcheck, entrypoint" dockerfile_check

# --- with a consulta binary -------------------------------------------------------------------
BIN=${CONSULTA_BIN:-}
[ -z "$BIN" ] && [ -x target/release/consulta ] && BIN=$ROOT/target/release/consulta
if [ -n "$BIN" ] && [ -x "$BIN" ]; then
  echo "==> with $BIN"
  # Copy it: a build running meanwhile may replace target/release/consulta under us.
  cp "$BIN" "$TMP/consulta"
  BIN=$TMP/consulta
  run "consulta config check deploy/consulta.toml" "$BIN" config check --config deploy/consulta.toml
  read -r HTTP_PORT MEDIA_PORT TLS_PORT PLAIN_PORT REDIR_PORT < <("$PY" -c '
import socket
s = []
for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_STREAM, socket.SOCK_STREAM, socket.SOCK_STREAM):
    k = socket.socket(socket.AF_INET, kind); k.bind(("127.0.0.1", 0)); s.append(k)
ports = [k.getsockname()[1] for k in s]
for k in s:
    k.close()
print(*ports)')
  # Other listeners a newer binary may open by default are switched off (unknown CONSULTA_*
  # variables are errors, so only those the binary lists).
  extra_env=()
  # Read once, then searched: `config check --env | grep -q` under pipefail fails at random
  # (grep exits at the first match and the writer may get SIGPIPE).
  env_names=$("$BIN" config check --env 2>/dev/null || true)
  grep -q 'CONSULTA_MEDIA_TCP_PORT' <<<"$env_names" && extra_env+=(CONSULTA_MEDIA_TCP_PORT=0)
  API_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  grep -q 'CONSULTA_API_LISTEN' <<<"$env_names" && extra_env+=(CONSULTA_API_LISTEN="127.0.0.1:$API_PORT")
  env CONSULTA_DATA_DIR="$TMP/data" CONSULTA_HTTP_LISTEN="127.0.0.1:$HTTP_PORT" CONSULTA_MEDIA_UDP_PORT="$MEDIA_PORT" \
    CONSULTA_MEDIA_PUBLIC_IPS=127.0.0.1 CONSULTA_AUTH_TOKEN_SECRET=check-sh-secret-0123456789 "${extra_env[@]}" \
    "$BIN" serve --config deploy/consulta.toml >"$TMP/consulta.log" 2>&1 &
  PIDS+=($!)
  nginx_conf "$TMP/nginx-live" "s|listen 443 ssl;|listen 127.0.0.1:$TLS_PORT ssl;|; s|listen 80;|listen 127.0.0.1:$REDIR_PORT;|; /listen \[::\]/d; s|listen 127.0.0.1:8080;|listen 127.0.0.1:$PLAIN_PORT;|; s|server 192.168.1.20:7880;|server 127.0.0.1:$HTTP_PORT;|"
  "$NGINX" -p "$TMP/nginx-live" -e "$TMP/nginx-live/error.log" -c "$TMP/nginx-live/nginx.conf" -g 'daemon off;' &
  PIDS+=($!)
  for _ in $(seq 50); do
    curl -fsS -o /dev/null "http://127.0.0.1:$HTTP_PORT/readyz" 2>/dev/null && curl -s -o /dev/null "http://127.0.0.1:$PLAIN_PORT/" && break
    sleep 0.2
  done
  TLS_URL="https://consulta.example.com.br:$TLS_PORT"
  RESOLVE=(--resolve "consulta.example.com.br:$TLS_PORT:127.0.0.1" --cacert "$TMP/fullchain.pem")
  code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
  run "live: /healthz through nginx TLS is 200" test "$(code "${RESOLVE[@]}" "$TLS_URL/healthz")" = 200
  run "live: /sdk/consulta.js through nginx is 200" test "$(code "${RESOLVE[@]}" "$TLS_URL/sdk/consulta.js")" = 200
  run "live: /metrics through nginx TLS is 403" test "$(code "${RESOLVE[@]}" "$TLS_URL/metrics")" = 403
  run "live: /metrics through the tunnel listener is 403" test "$(code "http://127.0.0.1:$PLAIN_PORT/metrics")" = 403
  run "live: /metrics on consulta itself is 200" test "$(code "http://127.0.0.1:$HTTP_PORT/metrics")" = 200
  run "live: /api/ through nginx TLS is 403" test "$(code "${RESOLVE[@]}" "$TLS_URL/api/v1/openapi.json")" = 403
  run "live: /api/ through the tunnel listener is 403" test "$(code "http://127.0.0.1:$PLAIN_PORT/api/v1/consultations")" = 403
  run "live: the control API is not on consulta's HTTP listener" test "$(code "http://127.0.0.1:$HTTP_PORT/api/v1/openapi.json")" = 404
  run "live: the control API answers on [api] listen" test "$(code "http://127.0.0.1:$API_PORT/api/v1/openapi.json")" = 200
  run "live: port 80 redirects to https" test "$(code "http://127.0.0.1:$REDIR_PORT/demo")" = 301
  run "live: WebSocket ping/pong through nginx /ws (TLS and tunnel listener)" "$PY" - "$TLS_PORT" "$PLAIN_PORT" "$TMP/fullchain.pem" <<'EOF'
import base64, json, os, socket, ssl, struct, sys
tls_port, plain_port, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def exchange(sock, host):
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f'GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
                  f'Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n').encode())
    buf = b''
    while b'\r\n\r\n' not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit(f'closed during handshake: {buf!r}')
        buf += chunk
    head, rest = buf.split(b'\r\n\r\n', 1)
    if not head.startswith(b'HTTP/1.1 101'):
        raise SystemExit(f'no upgrade: {head!r}')
    payload = json.dumps({'type': 'ping'}).encode()
    mask = os.urandom(4)
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    while len(rest) < 2:
        rest += sock.recv(4096)
    n = rest[1] & 0x7f
    off = 2
    if n == 126:
        while len(rest) < 4:
            rest += sock.recv(4096)
        n, off = struct.unpack('>H', rest[2:4])[0], 4
    while len(rest) < off + n:
        rest += sock.recv(4096)
    msg = json.loads(rest[off:off + n])
    if msg.get('type') != 'pong':
        raise SystemExit(f'expected pong, got {msg}')

ctx = ssl.create_default_context(cafile=ca)
with socket.create_connection(('127.0.0.1', tls_port), timeout=5) as raw:
    with ctx.wrap_socket(raw, server_hostname='consulta.example.com.br') as s:
        exchange(s, 'consulta.example.com.br')
with socket.create_connection(('127.0.0.1', plain_port), timeout=5) as s:
    exchange(s, 'consulta.example.com.br')
EOF
  # The image's HEALTHCHECK command, pointed at this port.
  hc=$(sed -n 's/^  CMD \["bash", "-c", "\(.*\)"\]$/\1/p' deploy/Dockerfile | sed 's/\\\\/\\/g' | sed "s|/7880|/$HTTP_PORT|")
  run "live: Dockerfile HEALTHCHECK command extracted" test -n "$hc"
  [ -n "$hc" ] && run "live: Dockerfile HEALTHCHECK command passes against consulta" bash -c "$hc"
  if [ "$failed" -gt 0 ]; then
    echo "--- consulta log"; tail -n 20 "$TMP/consulta.log"
    echo "--- nginx error log"; tail -n 20 "$TMP/nginx-live/error.log" 2>/dev/null
  fi
else
  echo "==> no consulta binary (set CONSULTA_BIN or build target/release/consulta): skipped config check and live smoke test"
fi

echo
echo "deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
