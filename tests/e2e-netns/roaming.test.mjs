// Issue 22: a patient whose network changes mid-call (Wi-Fi -> 4G) stays in the consultation.
// Doctor and patient are separate Chromium processes, each in its own network namespace
// (scripts/netns-roaming.sh). 8 s after video flows both ways, the patient's network changes as a
// phone's does: a new link with a new address comes up, the route to the server moves onto it, and
// the old link with its address disappears (so the WebSocket's TCP connection dies with it).
// Judged: both sides decode each other's video again within 5 s of the change (median of the
// runs), each run within 8 s; the doctor never sees `participant-left` for the patient; the
// consultation's call events show no leave/join of the patient after its first join.
// Runs: ROAMING_RUNS (default 5). Prints each run's time and the p50/max.
// Run: scripts/netns-roaming.sh node --test tests/e2e-netns/roaming.test.mjs

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sleep } from '../e2e/harness.mjs';
import {
  NS,
  assertInNamespaces,
  freshPatientNetwork,
  joinLeaveOf,
  launchIn,
  median,
  openWatched,
  recoveryAfter,
  roamPatient,
  sampleDecoding,
  startRoamingServer,
  joinCall,
} from './roaming-net.mjs';

const RUNS = Number(process.env.ROAMING_RUNS || 5);
const FLOW_BEFORE_CHANGE_MS = Number(process.env.ROAMING_FLOW_MS || 8_000);
const EACH_MAX_MS = 8_000;
const MEDIAN_MAX_MS = 5_000;
// How long a run watches for recovery before calling it lost (well past the 8 s bound, so that
// a slow recovery is measured rather than cut off).
const WATCH_MS = 20_000;

let server;

before(async () => {
  assertInNamespaces();
  await freshPatientNetwork();
  server = await startRoamingServer();
});

after(async () => {
  await server?.stop();
});

/** One call, one network change; returns the measurements. */
async function oneRun(run) {
  const room = `roam-${process.pid}-${run}`;
  const doctorBrowser = await launchIn(NS.doctor, server);
  const patientBrowser = await launchIn(NS.patient, server);
  let doctor;
  let patient;
  let failed = true;
  try {
    doctor = await openWatched(doctorBrowser, server, 'doctor');
    patient = await openWatched(patientBrowser, server, 'patient');
    await joinCall(server, room, doctor, patient, { width: 1280, height: 720 });
    const before = (await patient.stats()).candidatePair;
    await sleep(FLOW_BEFORE_CHANGE_MS);

    let change = null;
    const sampler = sampleDecoding(doctor, patient, {
      interval: 150,
      stop: (out) => {
        if (!change) return false;
        if (Date.now() - change.t0 > WATCH_MS) return true;
        // Stop 1 s after both recovered (the recovery is then settled).
        const d = recoveryAfter(out.doctor, change.t0);
        const p = recoveryAfter(out.patient, change.t0);
        return d !== null && p !== null && Date.now() - change.t0 > Math.max(d, p) + 1_000;
      },
    });
    await sleep(600); // samples before the change
    change = await roamPatient();
    const samples = await sampler.done;
    const doctorMs = recoveryAfter(samples.doctor, change.t0);
    const patientMs = recoveryAfter(samples.patient, change.t0);
    const bothMs = doctorMs === null || patientMs === null ? null : Math.max(doctorMs, patientMs);
    const afterPair = (await patient.stats().catch(() => ({}))).candidatePair;

    const doctorEvents = await doctor.eventsSince(change.t0);
    const patientEvents = await patient.eventsSince(change.t0);
    const patientNet = await patient.netlog(change.t0);
    const leftSeen = doctorEvents.filter((e) => e.type === 'participant-left' && e.identity === 'pt-joao');
    const joinLeave = await joinLeaveOf(server, room, 'pt-joao');
    const result = {
      run,
      from: change.from,
      to: change.to,
      changeTookMs: change.t1 - change.t0,
      doctorDecodesAgainMs: doctorMs,
      patientDecodesAgainMs: patientMs,
      bothMs,
      pairBefore: before && `${before.localAddress}:${before.localPort} ${before.localType}/${before.protocol}`,
      pairAfter: afterPair && `${afterPair.localAddress}:${afterPair.localPort} ${afterPair.localType}/${afterPair.protocol}`,
      doctorEvents: doctorEvents.filter((e) => e.t >= -1_000).map((e) => `${e.t}ms ${e.type} ${e.identity ?? e.state ?? e.reason ?? ''}`),
      patientEvents: patientEvents.filter((e) => e.t >= -1_000).map((e) => `${e.t}ms ${e.type} ${e.state ?? e.reason ?? e.code ?? ''}`),
      patientChromium: patientNet.filter((e) => e.t >= -1_000).map((e) => `${e.t}ms ${e.ev} ${e.n ?? ''} ${e.state ?? e.code ?? e.c ?? ''}`),
      serverJoinLeave: joinLeave.map((e) => `${e.type}${e.reason ? `(${e.reason})` : ''} s${e.session_id}`),
      leftSeen: leftSeen.length,
    };
    console.log(`roaming run ${run}: ${JSON.stringify(result, null, 1)}`);
    failed = false;
    return result;
  } finally {
    if (failed) {
      for (const p of [doctor, patient]) if (p) console.error(p.logs.slice(-30).join('\n'));
      console.error(server.tail());
    }
    await doctorBrowser.close().catch(() => {});
    await patientBrowser.close().catch(() => {});
  }
}

describe('the patient changes networks mid-call (Wi-Fi -> 4G)', () => {
  it(`both sides decode each other again within ${MEDIAN_MAX_MS} ms (median of ${RUNS}), each within ${EACH_MAX_MS} ms, with no leave/join`, { timeout: 60_000 + RUNS * 75_000 }, async () => {
    const results = [];
    for (let run = 1; run <= RUNS; run++) results.push(await oneRun(run));
    const times = results.map((r) => r.bothMs ?? Infinity);
    const fmt = (ms) => (Number.isFinite(ms) ? `${(ms / 1000).toFixed(2)} s` : `never (watched ${WATCH_MS / 1000} s)`);
    for (const r of results) {
      console.log(`roaming run ${r.run}: doctor ${fmt(r.doctorDecodesAgainMs ?? Infinity)}, patient ${fmt(r.patientDecodesAgainMs ?? Infinity)}`);
    }
    console.log(
      `roaming: network change -> both sides decode video again: ${times.map(fmt).join(', ')}; ` +
        `p50 ${fmt(median(times))}, max ${fmt(Math.max(...times))} over ${RUNS} runs`,
    );
    const problems = [];
    for (const r of results) {
      // Which side was late, and when the patient was back, in the line CI's log keeps.
      const sides = `doctor sees the patient after ${fmt(r.doctorDecodesAgainMs ?? Infinity)}, patient sees the doctor after ${fmt(r.patientDecodesAgainMs ?? Infinity)}`;
      const back = r.patientEvents.find((e) => / reconnected /.test(`${e} `)) ?? 'no reconnected event';
      if (!(r.bothMs !== null && r.bothMs <= EACH_MAX_MS)) problems.push(`run ${r.run}: both sides decoding again after ${fmt(r.bothMs ?? Infinity)} (max ${EACH_MAX_MS} ms): ${sides}; patient ${back}`);
      if (r.leftSeen) problems.push(`run ${r.run}: the doctor saw participant-left for the patient ${r.leftSeen}x`);
      const extra = r.serverJoinLeave.slice(1);
      if (r.serverJoinLeave.length === 0 || !r.serverJoinLeave[0].startsWith('participant_joined') || extra.length) {
        problems.push(`run ${r.run}: call events of the patient: ${r.serverJoinLeave.join(', ')} (want one participant_joined only)`);
      }
    }
    if (!(median(times) <= MEDIAN_MAX_MS)) problems.push(`median ${fmt(median(times))} (max ${MEDIAN_MAX_MS} ms)`);
    assert.deepEqual(problems, []);
  });
});
