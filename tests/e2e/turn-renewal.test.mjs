// Issue 22: a TURN-relayed call outlives its TURN credentials. With `[turn] credential_ttl = 60`
// the credentials handed out at join expire a minute in; the call must hold for 3 minutes with
// video decoded throughout (both sides' framesDecoded grow in every 2 s window, sampled each
// second) and stay on a relay path (the server renews the credentials, the SDK applies them).
// `max_lifetime = 60` makes Chromium refresh its allocations (authenticated) every 30 s.
// TURN_RENEWAL_SECONDS shortens the call for a quick local run (default 180, what CI runs).

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { freeMediaPort, freeTcpPort, launchBrowser, openParticipant, sleep, startServer, waitForVideo, inboundFrom } from './harness.mjs';

const SECONDS = Number(process.env.TURN_RENEWAL_SECONDS || 180);
const TTL = 60;
let server;
let browser;

before(async () => {
  const ports = { udp: await freeMediaPort(), tcp: await freeTcpPort() };
  server = await startServer({
    extraConfig: [
      '[turn]',
      'enabled = true',
      'listen_ip = "127.0.0.1"',
      `udp_port = ${ports.udp}`,
      `tcp_port = ${ports.tcp}`,
      'tls_port = 0',
      `credential_ttl = ${TTL}`,
      // Allocations live 60 s, so Chromium refreshes each one every 30 s (half the lifetime
      // under 2 minutes): with the default 600 s its first refresh (and its first permission
      // refresh, at 4 minutes) would fall after the call, and expired credentials would go
      // unnoticed. This is the 65-minute failure of the defaults (3600 s credentials), sped up.
      `max_lifetime = ${TTL}`,
    ].join('\n'),
  });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
});

describe(`a TURN-relayed call with credential_ttl = ${TTL}`, () => {
  it(`holds for ${SECONDS} s with video decoded throughout, on a relay`, { timeout: (SECONDS + 90) * 1_000 }, async () => {
    const doctor = await openParticipant(browser, server, 'doctor');
    const patient = await openParticipant(browser, server, 'patient');
    let failed = true;
    try {
      const room = `turn-renewal-${process.pid}`;
      // The SDK's ICE servers are the server's (joined.ice_servers), renewed by the server.
      const common = { media: { audio: true, video: { width: 640, height: 360 } }, iceTransportPolicy: 'relay' };
      for (const [p, id, role] of [[doctor, 'dr-ana', 'doctor'], [patient, 'pt-joao', 'patient']]) {
        const res = await p.join({ token: await server.token({ room, identity: id, role }), ...common });
        assert.equal(res.ok, true, `${id}: ${res.code} ${res.message}`);
      }
      await waitForVideo(doctor, 'pt-joao', { timeout: 30_000 });
      await waitForVideo(patient, 'dr-ana', { timeout: 30_000 });
      const t0 = Date.now();

      // One sample a second: frames decoded from the other (summed over streams, a stream whose
      // counter went down counting from zero again) and the selected pair's local candidate type.
      const sides = [
        { who: doctor, from: 'pt-joao', last: new Map(), total: 0, samples: [] },
        { who: patient, from: 'dr-ana', last: new Map(), total: 0, samples: [] },
      ];
      while (Date.now() - t0 < SECONDS * 1_000) {
        const tick = Date.now();
        await Promise.all(
          sides.map(async (s) => {
            const stats = await s.who.stats();
            for (const v of inboundFrom(stats, s.from, 'video')) {
              const prev = s.last.get(v.mid) ?? 0;
              s.total += v.framesDecoded >= prev ? v.framesDecoded - prev : v.framesDecoded;
              s.last.set(v.mid, v.framesDecoded);
            }
            const pair = stats.candidatePair;
            s.samples.push({ t: Date.now() - t0, n: s.total, local: pair ? `${pair.localType}/${pair.relayProtocol ?? pair.protocol}` : 'none' });
          }),
        );
        await sleep(Math.max(0, 1_000 - (Date.now() - tick)));
      }

      const problems = [];
      for (const s of sides) {
        let firstStall = null;
        let stalls = 0;
        for (let i = 0; i < s.samples.length; i++) {
          const j = s.samples.findIndex((x) => x.t >= s.samples[i].t + 2_000);
          if (j < 0) break;
          if (s.samples[j].n <= s.samples[i].n) {
            stalls++;
            firstStall ??= s.samples[i].t;
          }
        }
        const notRelay = s.samples.filter((x) => !x.local.startsWith('relay/'));
        const byMinute = [0, 60, 120, 170].map((sec) => s.samples.find((x) => x.t >= sec * 1_000)).filter(Boolean);
        console.log(
          `turn-renewal: ${s.who.name} decoded ${s.total} frames from ${s.from} in ${SECONDS} s; ` +
            `2 s windows without a new frame: ${stalls} (first at ${firstStall} ms); samples off relay: ${notRelay.length}; ` +
            `at ${byMinute.map((x) => `${Math.round(x.t / 1000)}s=${x.n} ${x.local}`).join(', ')}`,
        );
        if (stalls) problems.push(`${s.who.name}: video from ${s.from} stalled (no new frame in a 2 s window) ${stalls}x, first at ${firstStall} ms`);
        if (notRelay.length) problems.push(`${s.who.name}: ${notRelay.length} samples off relay, first at ${notRelay[0].t} ms (${notRelay[0].local})`);
      }
      const closed = [...(await doctor.events('closed')), ...(await patient.events('closed'))];
      if (closed.length) problems.push(`calls closed: ${JSON.stringify(closed)}`);
      assert.deepEqual(problems, []);
      failed = false;
    } finally {
      if (failed) console.error(server.tail());
      await doctor.close();
      await patient.close();
    }
  });
});
