// `kill -9` of a single `consulta serve` in the middle of a call between two real Chromium
// participants (issue 26, item 4), then the same binary started again on the same ports, config
// and data dir. Both SDKs reconnect on their own (their session is gone: resume refused, then a
// new join with the same token) and decode each other's video again. The consultation's record in
// PostgreSQL: the sessions of the killed process closed once (`participant_left`, reason
// `server_restart`), the call not ended (everyone came back within `empty_room_end`), one
// `started`, and no event stored twice.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { closeAll, decodingAgain, launchBrowser, openParticipant, pollUntil, sleep, startServer, waitForAudio, waitForVideo } from './harness.mjs';

const DB = `consulta_e2e_restart_${process.pid}_${randomBytes(3).toString('hex')}`;
const EMPTY_ROOM_END = 12;

const psql = (sql, db = DB) => execFileSync('psql', ['-h', '127.0.0.1', '-d', db, '-tAc', sql]).toString().trim();
const count = (sql) => Number(psql(sql));

let server;
let browser;

before(async () => {
  psql(`CREATE DATABASE ${DB}`, 'test');
  server = await startServer({
    extraConfig: [
      '[database]',
      `url = "postgres://${process.env.USER || 'root'}@127.0.0.1:5432/${DB}"`,
      '[consultation]',
      `empty_room_end = ${EMPTY_ROOM_END}`,
    ].join('\n'),
  });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
  try {
    psql(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`, 'test');
  } catch {
    /* kept for a look */
  }
});

describe('kill -9 of the server mid-call', () => {
  it('both browsers come back and decode each other; old sessions closed once, call not ended, nothing twice', { timeout: 150_000 }, async () => {
    const room = 'restart-call';
    const token = (identity, role) => server.token({ room, identity, role });
    const doctor = await openParticipant(browser, server, 'doctor');
    const patient = await openParticipant(browser, server, 'patient');
    let failed = true;
    try {
      assert.equal((await doctor.join({ token: await token('dr', 'doctor') })).ok, true);
      assert.equal((await patient.join({ token: await token('pt', 'patient') })).ok, true);
      await waitForVideo(doctor, 'pt');
      await waitForVideo(patient, 'dr');
      const where = `consultation_id = '${room}'`;
      await pollUntil(() => count(`SELECT COUNT(*) FROM sessions WHERE ${where} AND left_at IS NULL`) === 2 && count(`SELECT COUNT(*) FROM call_events WHERE ${where} AND type = 'started'`) === 1, { what: 'started and both sessions stored' });
      const oldSessions = psql(`SELECT session_id FROM sessions WHERE ${where} ORDER BY session_id`).split('\n');

      const killed = Date.now();
      await server.kill();
      await sleep(500);
      server = await startServer({ restartOf: server });
      const restartedIn = (Date.now() - killed) / 1000;
      await Promise.all([decodingAgain(doctor, 'pt'), decodingAgain(patient, 'dr')]);
      const backIn = (Date.now() - killed) / 1000;
      await waitForAudio(doctor, 'pt');
      await waitForAudio(patient, 'dr');
      for (const p of [doctor, patient]) {
        const types = (await p.events()).map((e) => e.type);
        assert.ok(types.includes('reconnecting') && types.includes('reconnected'), `${p.name}: ${types.join()}`);
        assert.ok(!types.includes('closed'), `${p.name} was not closed: ${types.join()}`);
      }
      console.log(`server back in ${restartedIn.toFixed(2)} s; both decode each other again ${backIn.toFixed(2)} s after the kill`);
      assert.ok(backIn < EMPTY_ROOM_END, `back within empty_room_end (${backIn} s)`);

      // The killed process's sessions are closed once, by the restarted one (its orphan sweep
      // runs every 5 s); the new ones stay open.
      const restartLeft = `SELECT COUNT(*) FROM call_events WHERE ${where} AND type = 'participant_left' AND payload::json->>'reason' = 'server_restart'`;
      await pollUntil(() => count(restartLeft) === 2, { timeout: 20_000, what: `the old sessions closed (server_restart): ${psql(`SELECT session_id || ' ' || COALESCE(leave_reason, 'open') FROM sessions WHERE ${where}`)}` });
      const closed = psql(`SELECT session_id FROM sessions WHERE ${where} AND leave_reason = 'server_restart' ORDER BY session_id`).split('\n');
      assert.deepEqual(closed, oldSessions, 'exactly the killed process\'s sessions');
      // Past empty_room_end since the kill: not ended, since everyone came back.
      await sleep(Math.max(0, killed + (EMPTY_ROOM_END + 3) * 1000 - Date.now()));
      assert.equal(count(`SELECT COUNT(*) FROM call_events WHERE ${where} AND type = 'ended'`), 0, 'the call was not ended');
      assert.equal(psql(`SELECT status FROM consultations WHERE id = '${room}'`), 'active');
      assert.equal(count(`SELECT COUNT(*) FROM sessions WHERE ${where} AND left_at IS NULL`), 2, 'the two new sessions are open');
      assert.equal(count(restartLeft), 2, 'closed once');
      await decodingAgain(doctor, 'pt');

      await doctor.leave();
      await patient.leave();
      await pollUntil(() => count(`SELECT COUNT(*) FROM call_events WHERE ${where} AND type = 'ended'`) === 1, { timeout: (EMPTY_ROOM_END + 15) * 1000, what: 'ended after both left' });
      await sleep(2_000);
      const types = psql(`SELECT type || '=' || COUNT(*) FROM call_events WHERE ${where} GROUP BY type ORDER BY type`).split('\n');
      console.log(`events: ${types.join(' ')}`);
      assert.ok(types.includes('started=1'), types.join());
      assert.ok(types.includes('ended=1'), types.join());
      assert.ok(types.includes('participant_joined=4'), types.join());
      assert.ok(types.includes('participant_left=4'), types.join());
      assert.equal(psql('SELECT id FROM call_events GROUP BY id HAVING COUNT(*) > 1'), '', 'no event id twice');
      assert.equal(psql(`SELECT payload::json->>'session_id' FROM call_events WHERE ${where} AND type = 'participant_left' GROUP BY 1 HAVING COUNT(*) > 1`), '', 'no session left twice');
      assert.equal(count(`SELECT COUNT(*) FROM sessions WHERE ${where} AND left_at IS NULL`), 0, 'no session left open');
      failed = false;
    } finally {
      await closeAll([doctor, patient], { failed });
    }
  });
});
