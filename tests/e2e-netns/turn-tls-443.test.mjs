// The hospital case: the browser's network lets through only TCP to port 443 (and the signaling
// port, which production serves on 443 too through the reverse proxy). Host UDP, ICE-TCP and
// TURN over UDP/TCP are all blocked, so the call must connect through TURN over TLS on 443.
// Run by scripts/test.sh as: scripts/netns-two-hosts.sh tcp443 SIGNALING_PORT node --test ...

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { launchBrowser, openParticipant, run, startServer, tempDir, waitForAudio, waitForVideo } from '../e2e/harness.mjs';

const SIGNALING_PORT = Number(process.env.SIGNALING_PORT);
let server;
let browser;

before(async () => {
  assert.ok(process.env.CONSULTA_NETNS_SERVER && SIGNALING_PORT, 'run through scripts/netns-two-hosts.sh tcp443');
  const ip = process.env.CONSULTA_SERVER_IP;
  const dir = tempDir('consulta-turn443-');
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  await run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=turn.consulta.test', '-addext', `subjectAltName=DNS:turn.consulta.test,IP:${ip}`,
    '-keyout', key, '-out', cert,
  ]);
  server = await startServer({
    httpPort: SIGNALING_PORT,
    extraConfig: [
      '[turn]',
      'enabled = true',
      `listen_ip = "${ip}"`,
      'udp_port = 3478',
      'tcp_port = 3478',
      'tls_port = 443',
      `tls_cert = ${JSON.stringify(cert)}`,
      `tls_key = ${JSON.stringify(key)}`,
    ].join('\n'),
  });
  // The self-signed certificate stands in for the deployment's certbot one, and the page is
  // plain HTTP on a non-loopback address (production serves it over HTTPS).
  browser = await launchBrowser({
    extraArgs: ['--ignore-certificate-errors', `--unsafely-treat-insecure-origin-as-secure=${server.httpUrl}`],
  });
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
});

describe('only TCP 443 open', () => {
  it('a 720p call connects through TURN over TLS on 443', { timeout: 150_000 }, async () => {
    const doctor = await openParticipant(browser, server, 'doctor');
    const patient = await openParticipant(browser, server, 'patient');
    try {
      const room = `tls443-${process.pid}`;
      const media = { audio: true, video: { width: 1280, height: 720 } };
      for (const [p, id, role] of [[doctor, 'dr-ana', 'doctor'], [patient, 'pt-joao', 'patient']]) {
        const res = await p.join({ token: await server.token({ room, identity: id, role }), media });
        assert.equal(res.ok, true, `${id}: ${res.code} ${res.message}`);
      }
      for (const [who, from] of [[doctor, 'pt-joao'], [patient, 'dr-ana']]) {
        const { second } = await waitForVideo(who, from, { width: 1280, height: 720, timeout: 60_000 });
        assert.ok(second.framesDecoded > 0);
        await waitForAudio(who, from);
        const { candidatePair } = await who.stats();
        assert.equal(candidatePair.localType, 'relay', `${who.name} is relayed`);
        assert.equal(candidatePair.relayProtocol, 'tls', `${who.name} reaches TURN over TLS`);
      }
    } finally {
      await doctor.close();
      await patient.close();
    }
  });
});
