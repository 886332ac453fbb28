// ICE-TCP: in a network namespace where every UDP packet is dropped, a call still connects,
// straight to the SFU over TCP (no TURN). Run by scripts/test.sh inside `unshare -n` with an
// nftables rule dropping UDP; refuses to run elsewhere (it would prove nothing).

import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { after, before, describe, it } from 'node:test';
import { launchBrowser, openParticipant, startServer, waitForAudio, waitForVideo } from '../e2e/harness.mjs';

const SMALL = { width: 640, height: 360 };
let server;
let browser;

/** True when a UDP datagram to ourselves on loopback does not arrive. */
async function udpIsBlocked() {
  const rx = dgram.createSocket('udp4');
  await new Promise((r) => rx.bind(0, '127.0.0.1', r));
  const got = new Promise((resolve) => {
    rx.once('message', () => resolve(true));
    setTimeout(() => resolve(false), 500);
  });
  const tx = dgram.createSocket('udp4');
  tx.send('ping', rx.address().port, '127.0.0.1');
  const arrived = await got;
  rx.close();
  tx.close();
  return !arrived;
}

before(async () => {
  assert.equal(await udpIsBlocked(), true, 'this test must run where UDP is dropped (see scripts/test.sh)');
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
});

describe('ICE-TCP with UDP blocked', () => {
  it('doctor and patient connect over TCP to the SFU and decode each other', { timeout: 120_000 }, async () => {
    const doctor = await openParticipant(browser, server, 'doctor');
    const patient = await openParticipant(browser, server, 'patient');
    try {
      const room = `tcp-${process.pid}`;
      const media = { audio: true, video: SMALL };
      for (const [p, id, role] of [[doctor, 'dr-ana', 'doctor'], [patient, 'pt-joao', 'patient']]) {
        const res = await p.join({ token: await server.token({ room, identity: id, role }), media });
        assert.equal(res.ok, true, `${id}: ${res.code} ${res.message}`);
      }
      for (const [who, from] of [[doctor, 'pt-joao'], [patient, 'dr-ana']]) {
        const { second } = await waitForVideo(who, from, { timeout: 30_000 });
        assert.ok(second.framesDecoded > 0);
        await waitForAudio(who, from);
        const { candidatePair } = await who.stats();
        assert.equal(candidatePair.protocol, 'tcp', `${who.name} uses ICE-TCP`);
        assert.equal(candidatePair.remoteType, 'host');
      }
      const metrics = await (await fetch(`${server.httpUrl}/metrics`)).text();
      const tcp = Number(metrics.match(/^consulta_ice_connected_total\{transport="tcp",candidate="host"\} (\d+)/m)?.[1]);
      assert.equal(tcp, 2, 'the SFU counts two ICE-TCP connections');
    } finally {
      await doctor.close();
      await patient.close();
    }
  });
});
