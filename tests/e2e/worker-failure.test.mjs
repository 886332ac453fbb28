// A media worker thread that dies mid-call, in real browsers: the server (two workers) is started
// with the test-only fault injection CONSULTA_FAULT_PANIC_WORKER_ROOM, so the worker holding the
// call panics outside the per-participant guard 8 s after the first join. Both SDKs get
// `media_lost`, join again by themselves (the room moves to the live worker) and decode each
// other again; the server reports not ready and counts the dead worker.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { closeAll, decodingAgain, launchBrowser, openParticipant, pollUntil, startServer, waitForAudio, waitForVideo } from './harness.mjs';

const ROOM = `worker-dies-${process.pid}`;
let server;
let browser;

before(async () => {
  process.env.CONSULTA_FAULT_PANIC_WORKER_ROOM = `${ROOM}@8`;
  try {
    server = await startServer();
  } finally {
    delete process.env.CONSULTA_FAULT_PANIC_WORKER_ROOM;
  }
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
});

const metric = async (name) => {
  const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ').pop()) : NaN;
};

describe('a media worker that dies', () => {
  it('both browsers are told, join again on the live worker and decode each other', { timeout: 120_000 }, async () => {
    const doctor = await openParticipant(browser, server, 'doctor');
    const patient = await openParticipant(browser, server, 'patient');
    let failed = true;
    try {
      const token = (identity, role) => server.token({ room: ROOM, identity, role });
      assert.equal((await doctor.join({ token: await token('dr', 'doctor') })).ok, true);
      assert.equal((await patient.join({ token: await token('pt', 'patient') })).ok, true);
      await waitForVideo(doctor, 'pt');
      await waitForVideo(patient, 'dr');
      assert.equal((await fetch(`${server.httpUrl}/readyz`)).status, 200);

      // The worker panics; each SDK hears `media_lost` and reconnects by joining again.
      for (const who of [doctor, patient]) {
        await pollUntil(async () => (await who.events('error')).some((e) => e.code === 'media_lost' && !e.fatal), {
          timeout: 20_000,
          what: `${who.name} told media_lost`,
        });
      }
      const lost = Math.min(
        ...(await Promise.all([doctor, patient].map(async (w) => (await w.events('error')).find((e) => e.code === 'media_lost').t))),
      );
      for (const who of [doctor, patient]) {
        await pollUntil(async () => (await who.events('reconnected')).length > 0, { timeout: 20_000, what: `${who.name} reconnected` });
      }
      await Promise.all([decodingAgain(doctor, 'pt'), decodingAgain(patient, 'dr')]);
      const secs = (Date.now() - lost) / 1000;
      console.log(`worker died; both decode each other again ${secs.toFixed(2)} s after media_lost`);
      await waitForAudio(doctor, 'pt');
      await waitForAudio(patient, 'dr');
      for (const who of [doctor, patient]) {
        assert.ok(!(await who.events('closed')).length, `${who.name}'s call was not closed`);
      }
      assert.equal(await metric('consulta_media_workers_dead'), 1);
      const ready = await fetch(`${server.httpUrl}/readyz`);
      assert.equal(ready.status, 503);
      assert.equal((await ready.json()).status, 'workers_down');
      assert.ok(secs <= 10, `back within 10 s (took ${secs.toFixed(2)} s)`);
      failed = false;
    } finally {
      await closeAll([doctor, patient], { failed });
      if (failed) console.error(`--- server log tail ---\n${server.tail()}`);
    }
  });
});
