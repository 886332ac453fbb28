// Calls relayed through Consulta's built-in TURN server (iceTransportPolicy 'relay'), over UDP,
// TCP and TLS; getStats() shows which relay path carried the media.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  freeMediaPort,
  freeTcpPort,
  launchBrowser,
  openParticipant,
  pollUntil,
  run,
  startServer,
  tempDir,
  waitForAudio,
  waitForVideo,
} from './harness.mjs';

const HD = { width: 1280, height: 720 };
let server;
let browser;
let ports;

before(async () => {
  const dir = tempDir('consulta-turn-cert-');
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  await run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '-keyout', key, '-out', cert,
  ]);
  ports = { udp: await freeMediaPort(), tcp: await freeTcpPort(), tls: await freeTcpPort() };
  server = await startServer({
    extraConfig: [
      '[turn]',
      'enabled = true',
      'listen_ip = "127.0.0.1"',
      `udp_port = ${ports.udp}`,
      `tcp_port = ${ports.tcp}`,
      `tls_port = ${ports.tls}`,
      `tls_cert = ${JSON.stringify(cert)}`,
      `tls_key = ${JSON.stringify(key)}`,
      'host = "localhost"',
    ].join('\n'),
  });
  // The self-signed certificate stands in for the deployment's certbot one, which browsers trust.
  browser = await launchBrowser({ extraArgs: ['--ignore-certificate-errors'] });
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
});

/** Every candidate pair of `who`'s connection: which relay path each uses and how far its checks got. */
function candidatePairs(who) {
  return who.page.evaluate(async () => {
    const report = await window.call.peerConnection.getStats();
    const byId = new Map();
    report.forEach((s) => byId.set(s.id, s));
    return [...byId.values()]
      .filter((s) => s.type === 'candidate-pair')
      .map((p) => {
        const local = byId.get(p.localCandidateId) || {};
        return {
          local: `${local.candidateType}/${local.relayProtocol ?? local.protocol}`,
          state: p.state,
          nominated: p.nominated,
          requestsSent: p.requestsSent,
          responsesReceived: p.responsesReceived,
        };
      });
  });
}

async function relayedCall(label, iceServers, expectedRelay) {
  const doctor = await openParticipant(browser, server, 'doctor');
  const patient = await openParticipant(browser, server, 'patient');
  try {
    const room = `turn-${label}-${process.pid}`;
    const common = { media: { audio: true, video: HD }, iceTransportPolicy: 'relay', iceServers };
    for (const [p, id, role] of [[doctor, 'dr-ana', 'doctor'], [patient, 'pt-joao', 'patient']]) {
      const res = await p.join({ token: await server.token({ room, identity: id, role }), ...common });
      assert.equal(res.ok, true, `${id}: ${res.code} ${res.message}`);
    }
    for (const [who, from] of [[doctor, 'pt-joao'], [patient, 'dr-ana']]) {
      const { second } = await waitForVideo(who, from, { ...HD, timeout: 30_000 });
      assert.equal(second.frameWidth, 1280);
      assert.equal(second.frameHeight, 720);
      await waitForAudio(who, from);
      // Chromium sends media on the first relay path whose checks succeed and moves to a better one
      // (TURN over UDP ranks above TCP, TCP above TLS) once that one answers too; on a busy machine
      // the UDP path can answer a moment after the TCP one, so the test waits for the move.
      // The wait is the assertion: it fails with the selected pair and every other one.
      let candidatePair;
      await pollUntil(
        async () => {
          ({ candidatePair } = await who.stats());
          return candidatePair?.localType === 'relay' && candidatePair.relayProtocol === expectedRelay;
        },
        { timeout: 20_000, what: `${who.name} to send over a relay reached by ${expectedRelay}` },
      ).catch(async (e) => {
        e.message += `\nselected: ${JSON.stringify(candidatePair)}\nall pairs: ${JSON.stringify(await candidatePairs(who))}`;
        throw e;
      });
    }
    const metrics = await (await fetch(`${server.httpUrl}/metrics`)).text();
    const allocations = Number(metrics.match(/^consulta_turn_allocations (\d+)/m)?.[1]);
    assert.ok(allocations >= 2, `TURN allocations are live (${allocations})`);
    const relayed = Number(metrics.match(/^consulta_ice_connected_total\{transport="udp",candidate="relay"\} (\d+)/m)?.[1]);
    assert.ok(relayed >= 2, `the SFU counts relayed connections (${relayed})`);
  } finally {
    await doctor.close();
    await patient.close();
  }
}

describe('built-in TURN', () => {
  it('joined.ice_servers carry working credentials: relay over UDP', { timeout: 120_000 }, () =>
    relayedCall('udp', undefined, 'udp'));

  it('relay over TCP', { timeout: 120_000 }, async () => {
    const creds = await server.turnCredentials('tcp-test');
    const urls = creds.urls.filter((u) => u.startsWith('turn:') && u.endsWith('transport=tcp'));
    assert.equal(urls.length, 1, JSON.stringify(creds.urls));
    await relayedCall('tcp', [{ ...creds, urls }], 'tcp');
  });

  it('relay over TLS', { timeout: 120_000 }, async () => {
    const creds = await server.turnCredentials('tls-test');
    const urls = creds.urls.filter((u) => u.startsWith('turns:'));
    assert.deepEqual(urls, [`turns:localhost:${ports.tls}?transport=tcp`]);
    await relayedCall('tls', [{ ...creds, urls }], 'tls');
  });
});
