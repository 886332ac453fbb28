// A consultation the way the Laravel app runs it: created through the control API, doctor and
// patient join with API-minted tokens, the waiting room holds the patient until the doctor
// admits them, and the call's events land in the database in order and arrive as signed webhooks.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import { launchBrowser, openParticipant, pollUntil, startServer, waitForVideo } from './harness.mjs';

const KEY = 'e2e-api-key-0123456789';
const SECRET = 'e2e-hook-secret-0123456789';
let server;
let browser;
let hooks;
const delivered = [];

before(async () => {
  hooks = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      delivered.push({ headers: req.headers, body });
      res.writeHead(200).end();
    });
  });
  await new Promise((r) => hooks.listen(0, '127.0.0.1', r));
  server = await startServer({
    extraConfig: [
      '[api]',
      `keys = ["${KEY}"]`,
      '[consultation]',
      'empty_room_end = 2',
      '[webhooks]',
      `urls = ["http://127.0.0.1:${hooks.address().port}/consulta"]`,
      `secret = "${SECRET}"`,
      // The receiver is plain http on loopback: an explicit opt-in since issue 24.
      'allow_http = true',
    ].join('\n'),
  });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
  hooks?.close();
});

async function api(method, path, body) {
  const res = await fetch(`${server.httpUrl}/api/v1${path}`, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, body: await res.json() };
}

describe('a consultation through the control API', () => {
  it('waiting room, HD call, events in order in the database and as webhooks', { timeout: 150_000 }, async () => {
    const id = `appt-e2e-${process.pid}`;
    const created = await api('POST', '/consultations', {
      id,
      scheduled_start: new Date(Date.now() + 60_000).toISOString(),
      policy: { waiting_room: true },
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const token = async (identity, role) => {
      const r = await api('POST', `/consultations/${id}/tokens`, { identity, role });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      return r.body.token;
    };
    const doctor = await openParticipant(browser, server, 'doctor');
    const patient = await openParticipant(browser, server, 'patient');
    try {
      const media = { audio: true, video: { width: 1280, height: 720 } };
      // The patient arrives first and waits (connect() resolves only once admitted).
      const patientJoin = patient.join({ token: await token('pt-joao', 'patient'), media });
      await pollUntil(async () => (await patient.events('waiting')).length === 1, { what: 'the patient to be told to wait' });
      const res = await doctor.join({ token: await token('dr-ana', 'doctor'), media });
      assert.equal(res.ok, true, `${res.code} ${res.message}`);
      await pollUntil(() => doctor.evaluate(() => window.call.waitingRoom.has('pt-joao')), { what: 'the doctor to see the patient waiting' });
      await doctor.evaluate(() => window.call.admit('pt-joao'));
      const admitted = await patientJoin;
      assert.equal(admitted.ok, true, `${admitted.code} ${admitted.message}`);
      const { second } = await waitForVideo(doctor, 'pt-joao', { width: 1280, height: 720 });
      assert.ok(second.framesDecoded > 0);
      await waitForVideo(patient, 'dr-ana', { width: 1280, height: 720 });
      const live = await api('GET', `/consultations/${id}`);
      assert.equal(live.body.status, 'active');
      assert.equal(live.body.participants_present, 2);
      await patient.leave();
      await doctor.leave();
    } finally {
      await doctor.close();
      await patient.close();
    }

    // The room stays empty: the call ends; every event is stored, in order.
    const events = await pollUntil(
      async () => {
        const r = await api('GET', `/consultations/${id}/events`);
        return r.body.items.some((e) => e.type === 'ended') ? r.body.items : null;
      },
      { what: 'the ended event', timeout: 30_000 },
    );
    const types = events.map((e) => e.type);
    const at = (t) => {
      const i = types.indexOf(t);
      assert.ok(i >= 0, `no ${t} in ${types}`);
      return i;
    };
    assert.deepEqual(types, [
      'created',
      'participant_joined',
      'participant_joined',
      'admitted',
      'started',
      'participant_left',
      'participant_left',
      'ended',
    ]);
    assert.equal(types.filter((t) => t === 'participant_joined').length, 2);
    assert.equal(types.filter((t) => t === 'participant_left').length, 2);
    assert.ok(at('created') < at('participant_joined') && at('admitted') < at('started') && at('started') < at('participant_left'));
    assert.ok(types.lastIndexOf('participant_left') < at('ended'));
    const seqs = events.map((e) => e.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), 'events are ordered');
    const ended = await api('GET', `/consultations/${id}`);
    assert.equal(ended.body.status, 'ended');

    // Each event arrived once as a correctly signed webhook.
    await pollUntil(() => events.every((e) => delivered.some((d) => d.headers['x-consulta-event-id'] === e.id)), {
      what: 'every event delivered as a webhook',
    });
    for (const e of events) {
      const got = delivered.filter((d) => d.headers['x-consulta-event-id'] === e.id);
      assert.equal(got.length, 1, `${e.type} delivered once`);
      const { headers, body } = got[0];
      const expected = 'v1=' + createHmac('sha256', SECRET).update(`${headers['x-consulta-timestamp']}.${body}`).digest('hex');
      assert.equal(headers['x-consulta-signature'], expected);
      assert.equal(JSON.parse(body).type, e.type);
    }
  });
});
