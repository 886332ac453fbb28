// Issue 22: the signaling WebSocket is cut for 3 s while the UDP media path stays up (a proxy or
// tunnel restart): media continues without a stall > 1 s on either side, and signaling resumes (a
// mute the patient makes after the cut reaches the doctor).
// The cut: the patient's TCP connections to the signaling port are killed (`ss -K` in its
// namespace: the browser's socket fails, the server gets a reset) and, for 3 s, every new
// connection from the patient's address to that port is answered with a TCP reset (nft in the
// server namespace), as a restarting proxy does.
// Run: scripts/netns-roaming.sh node --test tests/e2e-netns/ws-cut.test.mjs

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { pollUntil, sleep } from '../e2e/harness.mjs';
import {
  NS,
  assertInNamespaces,
  freshPatientNetwork,
  joinLeaveOf,
  launchIn,
  openWatched,
  patientAddress,
  sampleDecoding,
  sh,
  stallCheck,
  startRoamingServer,
  joinCall,
} from './roaming-net.mjs';

const CUT_MS = 3_000;
const AFTER_MS = 5_000;
const TABLE = 'consulta_ws_cut';
let server;
let browsers = [];

before(async () => {
  assertInNamespaces();
  await freshPatientNetwork();
  server = await startRoamingServer();
});

after(async () => {
  await sh('nft', ['delete', 'table', 'inet', TABLE]).catch(() => {});
  for (const b of browsers) await b.close().catch(() => {});
  await server?.stop();
});

describe('the signaling WebSocket is cut for 3 s, media keeps flowing', () => {
  it('no video stall > 1 s on either side; a mute after the cut reaches the doctor', { timeout: 180_000 }, async () => {
    const room = `wscut-${process.pid}`;
    browsers = [await launchIn(NS.doctor, server), await launchIn(NS.patient, server)];
    const doctor = await openWatched(browsers[0], server, 'doctor');
    const patient = await openWatched(browsers[1], server, 'patient');
    let failed = true;
    try {
      await joinCall(server, room, doctor, patient, { width: 1280, height: 720 });
      await sleep(3_000);

      let end = Infinity;
      const sampler = sampleDecoding(doctor, patient, { interval: 200, stop: () => Date.now() > end });
      await sleep(1_000);
      const addr = await patientAddress();
      const t0 = Date.now();
      await sh('nft', ['-f', '-'], {
        input: `table inet ${TABLE} {
  chain input {
    type filter hook input priority 0;
    ip saddr ${addr} ip daddr ${server.ip} tcp dport ${server.httpPort} tcp flags & rst == 0 reject with tcp reset
  }
}
`,
      });
      await sh('ip', ['netns', 'exec', NS.patient, 'ss', '-K', 'dst', server.ip, 'dport', '=', String(server.httpPort)]);
      const tKilled = Date.now();
      await sleep(CUT_MS - (tKilled - t0));
      await sh('nft', ['delete', 'table', 'inet', TABLE]);
      const t1 = Date.now();
      end = t1 + AFTER_MS;
      const samples = await sampler.done;

      const doctorStall = stallCheck(samples.doctor, t0, end);
      const patientStall = stallCheck(samples.patient, t0, end);
      const net = await patient.netlog(t0);
      const events = await patient.eventsSince(t0);
      const doctorEvents = await doctor.eventsSince(t0);
      console.log(
        `ws-cut: cut ${t1 - t0} ms (sockets killed after ${tKilled - t0} ms); ` +
          `longest video stall: doctor ${doctorStall.worst.ms} ms (at ${doctorStall.worst.at} ms, ${doctorStall.samples} samples), ` +
          `patient ${patientStall.worst.ms} ms (at ${patientStall.worst.at} ms, ${patientStall.samples} samples)\n` +
          `  patient's Chromium: ${net.filter((e) => e.t >= 0).map((e) => `${e.t}ms ${e.ev} ${e.n ?? ''} ${e.state ?? e.code ?? e.c ?? ''}`).join('; ')}\n` +
          `  patient's SDK events: ${events.filter((e) => e.t >= 0).map((e) => `${e.t}ms ${e.type} ${e.state ?? e.reason ?? e.code ?? ''}`).join('; ')}\n` +
          `  doctor's SDK events: ${doctorEvents.filter((e) => e.t >= 0).map((e) => `${e.t}ms ${e.type} ${e.identity ?? e.state ?? ''}`).join('; ')}`,
      );

      // Signaling resumed: a mute made now reaches the other side.
      const tMute = Date.now();
      await patient.evaluate(() => window.call.setMuted('audio', true));
      const muteMs = await pollUntil(
        async () =>
          (await doctor.events('mute')).some((e) => e.identity === 'pt-joao' && e.kind === 'audio' && e.muted && e.t >= tMute) &&
          Date.now() - tMute,
        { timeout: 5_000, interval: 100, what: "the doctor to receive the patient's mute after the cut" },
      ).catch((e) => e);
      const joinLeave = await joinLeaveOf(server, room, 'pt-joao');
      console.log(`ws-cut: mute after the cut reached the doctor: ${muteMs instanceof Error ? muteMs.message : `${muteMs} ms`}; patient's call events: ${joinLeave.map((e) => `${e.type}${e.reason ? `(${e.reason})` : ''}`).join(', ')}`);

      assert.ok(doctorStall.ok, `the doctor's video from the patient stalled ${doctorStall.worst.ms} ms (> 1 s) at ${doctorStall.worst.at} ms after the cut`);
      assert.ok(patientStall.ok, `the patient's video from the doctor stalled ${patientStall.worst.ms} ms (> 1 s) at ${patientStall.worst.at} ms after the cut`);
      assert.ok(!(muteMs instanceof Error), muteMs.message);
      assert.equal((await doctor.events('participant-left')).length, 0, 'the doctor saw no participant-left');
      assert.deepEqual(joinLeave.map((e) => e.type), ['participant_joined'], 'the patient joined once and never left');
      failed = false;
    } finally {
      if (failed) {
        for (const p of [doctor, patient]) console.error(p.logs.slice(-30).join('\n'));
        console.error(server.tail());
      }
    }
  });
});
