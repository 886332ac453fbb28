// Issue 22: a participant that does not come back within the grace period is removed, exactly
// once, with reason `lost`. The server holds a lost participant `[media] reconnect_grace` = 5 s.
// Two ways to be lost for good: the patient's network disappears (its browser lives on, with no
// route to the server, and keeps trying), and the patient's browser is killed (SIGKILL: the
// kernel closes its sockets, no goodbye).
// Run: scripts/netns-roaming.sh node --test tests/e2e-netns/grace.test.mjs

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sleep, pollUntil } from '../e2e/harness.mjs';
import {
  NS,
  assertInNamespaces,
  dropPatientNetwork,
  freshPatientNetwork,
  joinLeaveOf,
  launchIn,
  openWatched,
  sh,
  startRoamingServer,
  joinCall,
} from './roaming-net.mjs';

const GRACE_S = 5;
// Loss detection (ICE consent, WebSocket) comes before the grace period: bound it generously.
const LEFT_MIN_MS = GRACE_S * 1_000 - 500;
const LEFT_MAX_MS = GRACE_S * 1_000 + 35_000;
let server;

before(async () => {
  assertInNamespaces();
  server = await startRoamingServer({ media: { reconnect_grace: GRACE_S } });
});

after(async () => {
  await server?.stop();
});

async function lostForGood(label, lose) {
  await freshPatientNetwork();
  const room = `grace-${label}-${process.pid}`;
  const doctorBrowser = await launchIn(NS.doctor, server);
  const patientBrowser = await launchIn(NS.patient, server);
  let doctor;
  let patient;
  let failed = true;
  try {
    doctor = await openWatched(doctorBrowser, server, 'doctor');
    patient = await openWatched(patientBrowser, server, 'patient');
    await joinCall(server, room, doctor, patient, { width: 640, height: 360 });
    await sleep(2_000);

    const t0 = await lose();
    const left = await pollUntil(
      async () => (await doctor.events('participant-left')).filter((e) => e.identity === 'pt-joao').length > 0,
      { timeout: LEFT_MAX_MS + 5_000, interval: 200, what: 'the doctor to see the patient leave' },
    ).catch((e) => e);
    // Exactly once: nothing more comes after a while.
    if (!(left instanceof Error)) await sleep(5_000);
    const doctorEvents = await doctor.eventsSince(t0);
    const lefts = doctorEvents.filter((e) => e.type === 'participant-left' && e.identity === 'pt-joao');
    const joinLeave = await joinLeaveOf(server, room, 'pt-joao');
    console.log(
      `grace (${label}): doctor's events after the loss: ${doctorEvents.map((e) => `${e.t}ms ${e.type} ${e.identity ?? e.state ?? ''} ${e.reason ?? ''}`).join('; ')}\n` +
        `  patient's call events: ${joinLeave.map((e) => `${e.type}${e.reason ? `(${e.reason})` : ''}`).join(', ')}`,
    );
    assert.ok(!(left instanceof Error), left.message);
    assert.equal(lefts.length, 1, 'the doctor saw participant-left exactly once');
    assert.equal(lefts[0].reason, 'lost', "participant-left's reason");
    assert.ok(
      lefts[0].t >= LEFT_MIN_MS && lefts[0].t <= LEFT_MAX_MS,
      `participant-left ${lefts[0].t} ms after the loss (want ${LEFT_MIN_MS}..${LEFT_MAX_MS}: held for the ${GRACE_S} s grace period)`,
    );
    const leaves = joinLeave.filter((e) => e.type === 'participant_left');
    assert.deepEqual(joinLeave.map((e) => e.type), ['participant_joined', 'participant_left'], 'one join, one leave in the call events');
    assert.equal(leaves[0].reason, 'lost', "participant_left's reason in the call events");
    failed = false;
  } finally {
    if (failed) {
      for (const p of [doctor, patient]) if (p) console.error(p.logs.slice(-30).join('\n'));
      console.error(server.tail());
    }
    await doctorBrowser.close().catch(() => {});
    await patientBrowser.close().catch(() => {});
  }
}

describe(`a participant that does not come back within reconnect_grace (${GRACE_S} s) is removed once, as lost`, () => {
  it("the patient's network disappears for good", { timeout: 120_000 }, () => lostForGood('network', dropPatientNetwork));

  it("the patient's browser is killed", { timeout: 120_000 }, () =>
    lostForGood('killed', async () => {
      // Every process in the patient's namespace is its Chromium (started by this test).
      const pids = (await sh('ip', ['netns', 'pids', NS.patient])).split('\n').filter(Boolean).map(Number);
      assert.ok(pids.length > 0, 'chromium runs in the patient namespace');
      const t = Date.now();
      // Stopped first, all of them: killed one by one, a browser whose renderer died first
      // could still close the page's WebSocket politely (1001), which a dead phone never does.
      for (const sig of ['SIGSTOP', 'SIGKILL']) {
        for (const pid of pids) {
          try {
            process.kill(pid, sig);
          } catch {
            /* already gone */
          }
        }
      }
      return t;
    }));
});
