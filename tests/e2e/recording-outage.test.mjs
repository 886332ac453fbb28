// Recording under real outages (issue 26, item 4), with real Chromium participants and a real S3
// server (s3s-fs):
// - s3s-fs killed with SIGKILL while the recording's parts go up during the call (5 MiB parts),
//   started again on the same port and directory: the object ends up byte for byte what the
//   spool held, stored once.
// - the spool's disk full (a 2 MB tmpfs as [recording] spool_dir, far below max_spool_bytes, so
//   the disk fills before the server's own budget does): the server lives on, the call goes on,
//   the failure is in the call's record and told to the participants, and what is uploaded is
//   the file cut at its last complete cluster (decodes cleanly), not a torn one.
//
// What the spool held is read through a hard link made to the spool file while it is written:
// the uploader patches the file in place and deletes its name once stored, and the link keeps
// the final bytes for the comparison.

import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { launchBrowser, openParticipant, pollUntil, sleep, startServer, tempDir, waitForVideo } from './harness.mjs';
import { S3S_BIN, s3ConfigLines, sha256, startS3 } from './s3.mjs';

const KEY = 'e2e-api-key-0123456789';
const BUCKET = 'consulta-rec-outage';
const PART = 5 * 1024 * 1024;
const skip = !fs.existsSync(S3S_BIN) ? `s3s-fs not installed (${S3S_BIN})` : false;
const MEDIA = { audio: true, video: { width: 1280, height: 720 } };

let s3;
let browser;
const servers = [];
let tmpfs = null;

before(async () => {
  if (skip) return;
  s3 = await startS3(BUCKET);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  for (const s of servers) await s.stop();
  await s3?.stop();
  if (tmpfs) spawnSync('umount', ['-l', tmpfs]);
});

async function recordingServer(spoolDir) {
  const server = await startServer({
    media: { workers: 1 },
    extraConfig: [
      '[api]',
      `keys = ["${KEY}"]`,
      '[recording]',
      `part_size = ${PART}`,
      ...(spoolDir ? [`spool_dir = ${JSON.stringify(spoolDir)}`] : []),
      ...s3ConfigLines(s3),
    ].join('\n'),
  });
  servers.push(server);
  return server;
}

async function api(server, method, p, body) {
  const res = await fetch(`${server.httpUrl}/api/v1${p}`, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, body: await res.json() };
}

const events = async (server, id) => (await api(server, 'GET', `/consultations/${id}/events`)).body.items;
const activeIn = (p) => p.evaluate(() => window.call.recording.active);
const metric = async (server, name) => {
  const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : NaN;
};

/** A consultation that requires recording, both in the call with consent, video decoded both ways. */
async function startCall(server, id) {
  const created = await api(server, 'POST', '/consultations', { id, policy: { recording: 'required' } });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const token = async (identity, role) => (await api(server, 'POST', `/consultations/${id}/tokens`, { identity, role })).body.token;
  const doctor = await openParticipant(browser, server, 'doctor');
  const patient = await openParticipant(browser, server, 'patient');
  for (const [p, who, role] of [[doctor, 'dr-ana', 'doctor'], [patient, 'pt-joao', 'patient']]) {
    const r = await p.join({ token: await token(who, role), media: MEDIA, recordingConsent: true });
    assert.equal(r.ok, true, `${r.code} ${r.message}`);
  }
  await waitForVideo(doctor, 'pt-joao', { timeout: 30_000 });
  await waitForVideo(patient, 'dr-ana', { timeout: 30_000 });
  await pollUntil(async () => (await activeIn(doctor)) && (await activeIn(patient)), { what: 'both told recording is active' });
  return { doctor, patient };
}

/** The recording's spool files, once its data file exists: {meta path, data path, link to it}. */
async function linkSpool(spool, id) {
  return pollUntil(
    () => {
      for (const f of fs.readdirSync(spool).filter((n) => n.endsWith('.json'))) {
        const m = JSON.parse(fs.readFileSync(path.join(spool, f), 'utf8'));
        const data = path.join(spool, `${m.id}.${m.ext}`);
        if (m.consultation !== id || !fs.existsSync(data)) continue;
        // Same file system as the spool (a hard link cannot cross one).
        const link = path.join(spool, `..`, `held-${m.id}.${m.ext}`);
        fs.linkSync(data, link);
        return { metaPath: path.join(spool, f), data, link, rec: m.id };
      }
      return null;
    },
    { what: 'the recording in the spool', timeout: 15_000 },
  );
}

const readMeta = (p) => {
  try {
    return JSON.parse(fs.readFileSync(p, 'utf8'));
  } catch {
    return null;
  }
};

async function readyEvent(server, id, timeout) {
  try {
    return await pollUntil(async () => (await events(server, id)).find((e) => e.type === 'recording_ready'), { what: 'recording_ready', timeout });
  } catch (e) {
    const lines = server.log().split('\n').filter((l) => /record|upload|spool|panick|s3/i.test(l));
    e.message += `\nevents: ${(await events(server, id)).map((x) => x.type).join(', ')}\n--- server log ---\n${lines.slice(-30).join('\n')}`;
    throw e;
  }
}

function decodes(file) {
  const r = spawnSync('ffmpeg', ['-v', 'error', '-i', file, '-f', 'null', '-'], { encoding: 'utf8' });
  assert.equal(r.status, 0, `ffmpeg failed: ${r.stderr}`);
  assert.equal(r.stderr.trim(), '', 'ffmpeg decodes without errors');
  const probe = JSON.parse(execFileSync('ffprobe', ['-v', 'error', '-show_streams', '-show_format', '-of', 'json', file], { encoding: 'utf8' }));
  assert.deepEqual(probe.streams.map((s) => s.codec_name).sort(), ['opus', 'opus', 'vp8', 'vp8']);
  return Number(probe.format.duration);
}

/** Frames decoded by `who` from `from` grow over `ms`. */
async function stillDecoding(who, from, ms = 2_000) {
  const frames = async () => (await who.stats()).inbound.filter((x) => x.participant === from && x.kind === 'video').reduce((n, x) => n + (x.framesDecoded || 0), 0);
  const a = await frames();
  await sleep(ms);
  const b = await frames();
  assert.ok(b > a + 10, `${who.name} decodes ${from}: ${a} -> ${b}`);
}

describe('recording outages', { skip }, () => {
  it('s3s-fs killed while parts go up, started again: the object is byte for byte the spool, stored once', { timeout: 240_000 }, async () => {
    const server = await recordingServer();
    const id = `rec-s3-kill-${process.pid}`;
    const spool = path.join(server.dir, 'data', 'recordings');
    const { doctor, patient } = await startCall(server, id);
    let spooled;
    try {
      const { metaPath, link } = await linkSpool(spool, id);
      // Part 2 is sent once the file passes 2 parts; the kill comes when a third part is due
      // (the uploader looks every second), so it finds the store gone mid-stream.
      await pollUntil(() => (readMeta(metaPath)?.parts.length ?? 0) >= 1, { what: 'part 2 uploaded during the call', timeout: 90_000, interval: 100 });
      await pollUntil(() => fs.statSync(link).size >= 3 * PART, { what: 'a third part due', timeout: 60_000, interval: 50 });
      const partsBefore = readMeta(metaPath).parts.map((p) => p.number);
      await s3.stop();
      const errorsBefore = await metric(server, 'consulta_recording_upload_errors_total');
      await pollUntil(async () => (await metric(server, 'consulta_recording_upload_errors_total')) > errorsBefore, { what: 'an upload failing while S3 is down', timeout: 15_000 });
      await sleep(5_000);
      await s3.start();
      // The call went on; the store is back while it still runs: parts go up again.
      await stillDecoding(doctor, 'pt-joao');
      await pollUntil(() => (readMeta(metaPath)?.parts.length ?? 0) > partsBefore.length, { what: 'parts going up again after the restart (backoff up to 30 s)', timeout: 45_000 });
      console.log(`parts before the kill: ${partsBefore.join(',')}; after: ${readMeta(metaPath).parts.map((p) => p.number).join(',')}; upload errors: ${await metric(server, 'consulta_recording_upload_errors_total')}`);
      await patient.leave();
      await doctor.leave();
      const ready = await readyEvent(server, id, 90_000);
      spooled = fs.readFileSync(link);
      fs.rmSync(link);
      const r = ready.payload;
      assert.equal(spooled.length, r.size);
      assert.equal(sha256(spooled), r.sha256, 'the event names the spooled bytes');
      const body = await s3.get(r.key);
      assert.ok(body.equals(spooled), `the object (${body.length} bytes) is byte for byte the spooled recording (${spooled.length})`);
      assert.ok(r.size > 3 * PART, `several parts: ${r.size} bytes`);
      assert.deepEqual(await s3.list(`recordings/${id}/`), [r.key], 'one object');
      const types = (await events(server, id)).map((e) => e.type);
      assert.equal(types.filter((t) => t === 'recording_ready').length, 1, types.join());
      assert.equal(types.filter((t) => t === 'recording_started').length, 1, types.join());
      assert.ok(!fs.existsSync(metaPath), 'the spool forgot it once stored');
      const file = path.join(tempDir('consulta-rec-'), 'kill.webm');
      fs.writeFileSync(file, body);
      const duration = decodes(file);
      console.log(`recording ${r.key}: ${r.size} bytes in ${Math.ceil(r.size / PART)} parts, ${duration} s`);
    } finally {
      await doctor.close();
      await patient.close();
      await s3.start().catch(() => {});
    }
  });

  it('spool disk full: server and call live on, the failure is recorded and told, only complete clusters are uploaded', { timeout: 180_000 }, async (t) => {
    const dir = tempDir('consulta-spool-');
    const spool = path.join(dir, 'spool');
    fs.mkdirSync(spool);
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', spool], { encoding: 'utf8' });
    if (m.status !== 0) {
      const why = `cannot mount a tmpfs here (${(m.stderr || m.error?.message || '').trim()}): spool-full test not run`;
      console.log(`SKIPPED: ${why}`);
      t.skip(why);
      return;
    }
    tmpfs = spool;
    // The spool is the tmpfs itself: the hard link goes into a directory on it.
    const spoolDir = path.join(spool, 'recordings');
    fs.mkdirSync(spoolDir);
    const server = await recordingServer(spoolDir);
    const id = `rec-disk-full-${process.pid}`;
    const { doctor, patient } = await startCall(server, id);
    try {
      const { link } = await linkSpool(spoolDir, id);
      const stopped = await pollUntil(async () => (await events(server, id)).find((e) => e.type === 'recording_stopped'), { what: 'recording_stopped', timeout: 60_000 });
      console.log(`recording stopped: ${JSON.stringify(stopped.payload)}; spool file ${fs.statSync(link).size} bytes`);
      assert.ok(['spool_error', 'spool_full'].includes(stopped.payload.reason), JSON.stringify(stopped.payload));
      // Both told, with the reason; nobody dropped.
      for (const p of [doctor, patient]) {
        const state = await pollUntil(async () => {
          const s = await p.evaluate(() => window.call.recording);
          return !s.active ? s : null;
        }, { what: `${p.name} told the recording stopped` });
        assert.equal(state.reason, stopped.payload.reason);
        assert.equal(await p.evaluate(() => window.call.closed ?? false), false);
      }
      // The server and the call live on.
      assert.equal(server.exited, null, 'the server is running');
      assert.equal((await fetch(`${server.httpUrl}/healthz`)).status, 200);
      await stillDecoding(doctor, 'pt-joao');
      await stillDecoding(patient, 'dr-ana');
      // What was recorded up to the full disk is cut at its last complete cluster and stored.
      const ready = await readyEvent(server, id, 60_000);
      const spooled = fs.readFileSync(link);
      fs.rmSync(link);
      assert.equal(sha256(spooled), ready.payload.sha256);
      const body = await s3.get(ready.payload.key);
      assert.ok(body.equals(spooled), 'the object is byte for byte the spooled (cut) recording');
      assert.ok(body.length < 2 * 1024 * 1024, `${body.length} bytes fit the 2 MB disk`);
      const file = path.join(tempDir('consulta-rec-'), 'full.webm');
      fs.writeFileSync(file, body);
      const duration = decodes(file);
      assert.ok(duration > 0, `duration ${duration}`);
      await stillDecoding(doctor, 'pt-joao');
      await patient.leave();
      await doctor.leave();
      await sleep(2_000);
      const types = (await events(server, id)).map((e) => e.type);
      console.log(`events: ${types.join(', ')}; cut recording ${body.length} bytes, ${duration} s`);
      assert.equal(types.filter((x) => x === 'recording_ready').length, 1, types.join());
      assert.ok(types.indexOf('recording_stopped') < types.indexOf('recording_ready'), types.join());
      assert.doesNotMatch(server.log(), /panicked/);
      assert.equal(server.exited, null, 'the server is still running');
    } finally {
      await doctor.close();
      await patient.close();
    }
  });
});
