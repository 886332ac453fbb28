// Cluster mode in real browsers: two `consulta serve` nodes sharing a PostgreSQL database and a
// Redis key prefix, behind a real nginx on loopback (round-robin /ws, /n/<node>/ws to each node,
// as deploy/nginx/consulta-cluster.conf). A doctor and a patient join through nginx and land on
// one node; that node is killed with SIGKILL; both SDKs reconnect through the same public URL to
// the other node, which takes the room over, and both decode each other again. Then the
// consultation's record: one `started`, one `ended`, the dead node's sessions closed once with
// `server_lost`, each webhook delivered once.
//
// CLUSTER_RUNS=5 repeats the kill (the dead node restarted in between) and prints each time.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { closeAll, decodingAgain, freeTcpPort, launchBrowser, openParticipant, pollUntil, sleep, startServer, tempDir, waitForAudio, waitForVideo } from './harness.mjs';

const RUNS = Number(process.env.CLUSTER_RUNS || 1);
const NGINX = fs.existsSync('/usr/sbin/nginx') ? '/usr/sbin/nginx' : 'nginx';
const HOOK_SECRET = 'e2e-hook-secret-0123456789';
const PREFIX = `consulta-e2e-${process.pid}-${randomBytes(4).toString('hex')}:`;
const DB = `consulta_e2e_cluster_${process.pid}_${randomBytes(3).toString('hex')}`;

const psql = (sql, db = DB) => execFileSync('psql', ['-h', '127.0.0.1', '-d', db, '-tAc', sql]).toString().trim();
const count = (sql) => Number(psql(sql));

let nginx;
let hooks;
const delivered = [];
const nodes = {};
let browser;
let front;

function nginxConf(dir, port, ports) {
  const ws = (target) => `
        proxy_pass ${target};
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_read_timeout 3600s;
        proxy_buffering off;`;
  return `worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events { worker_connections 256; }
http {
    client_body_temp_path ${dir}/body;
    proxy_temp_path ${dir}/proxy;
    access_log ${dir}/access.log;
    map $http_upgrade $connection_upgrade { default upgrade; '' close; }
    upstream consulta_nodes {
${Object.values(ports).map((p) => `        server 127.0.0.1:${p} max_fails=1 fail_timeout=5s;`).join('\n')}
    }
    server {
        listen 127.0.0.1:${port};
        location = /ws {${ws('http://consulta_nodes')}
            proxy_next_upstream error timeout http_502 http_503;
        }
${Object.entries(ports).map(([id, p]) => `        location = /n/${id}/ws {${ws(`http://127.0.0.1:${p}/ws`)}\n        }`).join('\n')}
        location /n/ { return 404; }
        location / {
            proxy_pass http://consulta_nodes;
            proxy_next_upstream error timeout http_502 http_503;
        }
    }
}
`;
}

/** `decodingAgain` on another node than `deadNode` (frames in the old jitter buffer do not count). */
const decodingElsewhere = (who, from, deadNode) =>
  decodingAgain(who, from, { ready: async () => (await who.evaluate(() => window.call.node)) !== deadNode });

async function startNode(id, port, nginxPort) {
  return startServer({
    httpPort: port,
    extraConfig: [
      '[database]',
      `url = "postgres://${process.env.USER || 'root'}@127.0.0.1:5432/${DB}"`,
      '[consultation]',
      'empty_room_end = 2',
      '[webhooks]',
      `urls = ["http://127.0.0.1:${hooks.address().port}/hooks"]`,
      `secret = "${HOOK_SECRET}"`,
      'allow_http = true',
      '[cluster]',
      'redis_url = "redis://127.0.0.1:6379"',
      `node_id = "${id}"`,
      `advertise_url = "http://127.0.0.1:${nginxPort}/n/${id}"`,
      `internal_url = "http://127.0.0.1:${port}"`,
      `key_prefix = "${PREFIX}"`,
      'drain_timeout = 3',
    ].join('\n'),
  });
}

before(async () => {
  // Every node verifies the tokens any node mints: one secret (the environment overrides the
  // random one startServer writes).
  process.env.CONSULTA_AUTH_TOKEN_SECRET = randomBytes(32).toString('hex');
  psql(`CREATE DATABASE ${DB}`, 'test');
  hooks = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      delivered.push(req.headers['x-consulta-event-id']);
      res.writeHead(200).end();
    });
  });
  await new Promise((r) => hooks.listen(0, '127.0.0.1', r));
  const nginxPort = await freeTcpPort();
  const ports = { a: await freeTcpPort(), b: await freeTcpPort() };
  for (const [id, port] of Object.entries(ports)) nodes[id] = await startNode(id, port, nginxPort);
  const dir = tempDir('consulta-e2e-nginx-');
  fs.writeFileSync(path.join(dir, 'nginx.conf'), nginxConf(dir, nginxPort, ports));
  nginx = spawn(NGINX, ['-p', dir, '-e', path.join(dir, 'error.log'), '-c', path.join(dir, 'nginx.conf'), '-g', 'daemon off;'], { stdio: 'inherit' });
  front = { httpUrl: `http://127.0.0.1:${nginxPort}`, wsUrl: `ws://127.0.0.1:${nginxPort}/ws` };
  await pollUntil(() => fetch(`${front.httpUrl}/healthz`).then((r) => r.ok, () => false), { timeout: 10_000, what: 'nginx' });
  await sleep(1500); // both nodes registered and seen by each other
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  for (const n of Object.values(nodes)) await n.stop().catch(() => {});
  nginx?.kill('SIGTERM');
  hooks?.close();
  delete process.env.CONSULTA_AUTH_TOKEN_SECRET;
});

describe('two nodes behind nginx', () => {
  it('a killed node: both browsers decode each other again on the other node, and the record is exact', { timeout: 120_000 + RUNS * 60_000 }, async () => {
    const times = [];
    for (let run = 0; run < RUNS; run++) {
      const room = `cluster-call-${run}`;
      const token = (identity, role) => nodes.a.token({ room, identity, role });
      const doctor = await openParticipant(browser, front, 'doctor');
      const patient = await openParticipant(browser, front, 'patient');
      let failed = true;
      try {
        assert.equal((await doctor.join({ token: await token('dr', 'doctor') })).ok, true);
        assert.equal((await patient.join({ token: await token('pt', 'patient') })).ok, true);
        const owner = await doctor.evaluate(() => window.call.node);
        assert.equal(await patient.evaluate(() => window.call.node), owner, 'both on the room\'s node');
        assert.ok(owner in nodes, `joined.node names a node: ${owner}`);
        await waitForVideo(doctor, 'pt');
        await waitForVideo(patient, 'dr');
        await pollUntil(() => count(`SELECT COUNT(*) FROM call_events WHERE consultation_id = '${room}' AND type = 'started'`) === 1, { what: 'started' });
        // Deliveries in flight when a node dies would be sent again (at least once): let the
        // outbox drain first, so that a second copy here is a bug.
        await pollUntil(() => psql('SELECT id FROM call_events').split('\n').filter(Boolean).every((id) => delivered.includes(id)), { timeout: 15_000, what: 'webhooks delivered before the kill' });
        const killed = Date.now();
        await nodes[owner].kill();
        await Promise.all([decodingElsewhere(doctor, 'pt', owner), decodingElsewhere(patient, 'dr', owner)]);
        const secs = (Date.now() - killed) / 1000;
        times.push(secs);
        console.log(`run ${run + 1}: ${owner} killed; both decode each other again after ${secs.toFixed(2)} s`);
        await waitForAudio(doctor, 'pt');
        const survivor = Object.keys(nodes).find((id) => id !== owner);
        assert.equal(await doctor.evaluate(() => window.call.node), survivor);
        assert.equal(await patient.evaluate(() => window.call.node), survivor);
        assert.ok(secs <= 10, `back within 10 s (took ${secs.toFixed(2)} s)`);
        await doctor.leave();
        await patient.leave();
        const where = `consultation_id = '${room}'`;
        await pollUntil(() => count(`SELECT COUNT(*) FROM call_events WHERE ${where} AND type = 'ended'`) === 1, { timeout: 20_000, what: 'ended' });
        await sleep(2500);
        assert.equal(count(`SELECT COUNT(*) FROM call_events WHERE ${where} AND type = 'started'`), 1, 'one started');
        assert.equal(count(`SELECT COUNT(*) FROM call_events WHERE ${where} AND type = 'ended'`), 1, 'one ended');
        assert.equal(count(`SELECT COUNT(*) FROM call_events WHERE ${where} AND type = 'participant_left' AND payload LIKE '%server_lost%'`), 2, 'the dead node\'s sessions closed once each');
        assert.equal(count(`SELECT COUNT(*) FROM sessions WHERE ${where} AND left_at IS NULL`), 0, 'no session left open');
        // The dead node comes back for the next run.
        nodes[owner] = await startServer({ restartOf: nodes[owner] });
        await sleep(1500);
        failed = false;
      } finally {
        await closeAll([doctor, patient], { failed });
      }
    }
    // Every stored event reached the webhook receiver, none twice (two nodes share the outbox).
    await pollUntil(() => new Set(delivered).size >= count('SELECT COUNT(*) FROM call_events'), { timeout: 30_000, what: 'every webhook' });
    const ids = psql('SELECT id FROM call_events').split('\n').filter(Boolean);
    assert.equal(new Set(delivered).size, ids.length);
    assert.equal(delivered.length, new Set(delivered).size, 'no webhook delivered twice');
    console.log(`failover times: ${times.map((t) => t.toFixed(2)).join(', ')} s`);
  });
});
