// Recording with consent, end to end: real Chromium participants, a real S3 server (s3s-fs,
// SigV4), and an independent decoder (Debian's ffprobe/ffmpeg) on the downloaded object.

import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CONSULTA_BIN, launchBrowser, openParticipant, pollUntil, run, sendingMode, sleep, startServer, tempDir, waitForAudio, waitForVideo } from './harness.mjs';
import { S3S_BIN, s3ConfigLines, sha256, startS3 } from './s3.mjs';

const KEY = 'e2e-api-key-0123456789';
const BUCKET = 'consulta-rec';
const skip = !fs.existsSync(S3S_BIN) ? `s3s-fs not installed (${S3S_BIN})` : false;

let s3;
let server;
let browser;

before(async () => {
  if (skip) return;
  s3 = await startS3(BUCKET);
  server = await startServer({
    // One worker: the recording tests also cover the worker that reads the socket itself.
    media: { workers: 1 },
    extraConfig: [
      '[api]',
      `keys = ["${KEY}"]`,
      '[recording]',
      'part_size = 5242880',
      ...s3ConfigLines(s3),
    ].join('\n'),
  });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
  await s3?.stop();
});

async function api(method, p, body) {
  const res = await fetch(`${server.httpUrl}/api/v1${p}`, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, body: await res.json() };
}

async function consultation(id, recording) {
  const created = await api('POST', '/consultations', { id, policy: { recording } });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  return async (identity, role) => {
    const r = await api('POST', `/consultations/${id}/tokens`, { identity, role });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    return r.body.token;
  };
}

async function events(id) {
  return (await api('GET', `/consultations/${id}/events`)).body.items;
}

/**
 * Waits for the consultation's `recording_ready` event; on timeout the error carries what the
 * server logged about recordings and uploads, so a CI failure says why.
 */
async function readyEvent(id, what, timeout) {
  try {
    return await pollUntil(async () => (await events(id)).find((e) => e.type === 'recording_ready'), { what, timeout });
  } catch (e) {
    const lines = server
      .log()
      .split('\n')
      .filter((l) => /record|upload|spool|panick|s3/i.test(l));
    e.message += `\nevents: ${(await events(id)).map((x) => x.type).join(', ')}\n--- server log (recording lines) ---\n${lines.slice(-30).join('\n')}`;
    throw e;
  }
}

/** Records the SDK's 'recording' events in the page. */
const watchRecording = (p) =>
  p.evaluate(() => {
    window.recordingStates = [];
    window.call.on('recording', (s) => window.recordingStates.push({ t: Date.now(), ...s }));
    window.recordingStates.push({ t: Date.now(), ...window.call.recording });
  });

const MEDIA = { audio: true, video: { width: 1280, height: 720 } };

/** ffprobe's view of a file: streams by codec and the container duration. */
function probe(file) {
  const out = execFileSync('ffprobe', ['-v', 'error', '-show_streams', '-show_format', '-of', 'json', file], { encoding: 'utf8' });
  return JSON.parse(out);
}

/** Decodes every frame with ffmpeg; returns stderr (empty when clean). */
function decode(file) {
  const r = spawnSync('ffmpeg', ['-v', 'error', '-i', file, '-f', 'null', '-'], { encoding: 'utf8' });
  assert.equal(r.status, 0, `ffmpeg failed: ${r.stderr}`);
  return r.stderr.trim();
}

async function startCall(id, { doctorConsent, patientConsent, codec }) {
  const token = await consultation(id, 'required');
  const doctor = await openParticipant(browser, server, 'doctor');
  const patient = await openParticipant(browser, server, 'patient');
  const d = await doctor.join({ token: await token('dr-ana', 'doctor'), media: MEDIA, recordingConsent: doctorConsent, preferredVideoCodec: codec });
  assert.equal(d.ok, true, `${d.code} ${d.message}`);
  const p = await patient.join({ token: await token('pt-joao', 'patient'), media: MEDIA, recordingConsent: patientConsent, preferredVideoCodec: codec });
  assert.equal(p.ok, true, `${p.code} ${p.message}`);
  await watchRecording(doctor);
  await watchRecording(patient);
  await waitForVideo(doctor, 'pt-joao', { timeout: 30_000 });
  await waitForVideo(patient, 'dr-ana', { timeout: 30_000 });
  return { doctor, patient };
}

/**
 * Starts a call (`opts` as startCall's), runs `body({doctor, patient})`, then both leave; returns
 * the consultation's `recording_ready` event.
 */
async function recordCall(id, opts, body) {
  const { doctor, patient } = await startCall(id, opts);
  try {
    await body({ doctor, patient });
    await patient.leave();
    await doctor.leave();
  } finally {
    await doctor.close();
    await patient.close();
  }
  return readyEvent(id, 'recording_ready', 60_000);
}

/** Writes the object a `recording_ready` event names to a temporary file called `name`. */
async function download(ready, name) {
  const file = path.join(tempDir('consulta-rec-'), name);
  fs.writeFileSync(file, await s3.get(ready.payload.key));
  return file;
}

const activeIn = (p) => p.evaluate(() => window.call.recording.active);
/** When the participant was told recording became active (page clock = this machine's clock). */
const activeSince = (p) => p.evaluate(() => window.recordingStates.find((s) => s.active)?.t);

describe('recording with consent', { skip }, () => {
  it('records a 10 s HD call to S3: Opus + VP8, right duration, decodes cleanly, forwarding unaffected', { timeout: 180_000 }, async () => {
    const id = `rec-ok-${process.pid}`;
    const { doctor, patient } = await startCall(id, { doctorConsent: true, patientConsent: true });
    try {
      await pollUntil(async () => (await activeIn(doctor)) && (await activeIn(patient)), { what: 'both told recording is active' });
      const startedAt = await activeSince(doctor);
      // Forwarding goes on while recording: frames keep being decoded both ways.
      const before = await waitForVideo(doctor, 'pt-joao');
      await sleep(10_000);
      const afterTen = await waitForVideo(doctor, 'pt-joao');
      assert.ok(afterTen.second.framesDecoded - before.second.framesDecoded > 150, `frames decoded while recording: ${before.second.framesDecoded} -> ${afterTen.second.framesDecoded}`);
      await waitForVideo(patient, 'dr-ana');
      await waitForAudio(patient, 'dr-ana');
      await patient.leave();
      await doctor.leave();
      const callSeconds = (Date.now() - startedAt) / 1000;

      const ready = await readyEvent(id, 'recording_ready', 60_000);
      const types = (await events(id)).map((e) => e.type);
      assert.ok(types.includes('recording_consent'), types.join());
      assert.ok(types.indexOf('recording_started') < types.indexOf('recording_stopped'), types.join());
      const r = ready.payload;
      assert.equal(r.storage, 's3');
      assert.equal(r.bucket, BUCKET);
      assert.ok(r.key.startsWith(`recordings/${id}/`), r.key);
      const body = await s3.get(r.key);
      assert.equal(body.length, r.size);
      assert.equal(sha256(body), r.sha256);
      console.log(`recording ${r.key}: ${r.size} bytes, ${r.duration_ms} ms, call ${callSeconds} s`);
      const file = path.join(tempDir('consulta-rec-'), 'call.webm');
      fs.writeFileSync(file, body);

      const info = probe(file);
      const codecs = info.streams.map((s) => s.codec_name).sort();
      assert.deepEqual(codecs, ['opus', 'opus', 'vp8', 'vp8'], JSON.stringify(info.streams.map((s) => [s.codec_name, s.tags])));
      const video = info.streams.filter((s) => s.codec_type === 'video');
      assert.ok(video.every((v) => v.width > 0 && v.height > 0));
      const duration = Number(info.format.duration);
      assert.ok(Math.abs(duration - callSeconds) <= 1, `ffprobe duration ${duration}s vs call ${callSeconds}s`);
      assert.equal(decode(file), '', 'ffmpeg decodes without errors');
    } finally {
      await doctor.close();
      await patient.close();
    }
  });

  it('records an H264 call into Matroska', { timeout: 120_000 }, async () => {
    const id = `rec-h264-${process.pid}`;
    const ready = await recordCall(id, { doctorConsent: true, patientConsent: true, codec: 'H264' }, async ({ doctor }) => {
      await pollUntil(async () => activeIn(doctor), { what: 'recording active' });
      await sleep(5_000);
    });
    assert.ok(ready.payload.key.endsWith('.mkv'), ready.payload.key);
    const file = await download(ready, 'h264.mkv');
    const info = probe(file);
    assert.deepEqual(info.streams.map((s) => s.codec_name).sort(), ['h264', 'h264', 'opus', 'opus']);
    assert.ok(info.streams.filter((s) => s.codec_name === 'h264').every((v) => v.width > 0 && v.height > 0));
    assert.equal(decode(file), '');
  });

  // VP9 from Chromium goes as spatial layers, of which the recorder can take only the lowest
  // (a quarter of the camera): while the consultation is recorded, the SDK sends one layer, so
  // the file has the full picture.
  it('records a VP9 call at full size: spatial layers give way to one layer while recording', { timeout: 120_000 }, async () => {
    const id = `rec-vp9-${process.pid}`;
    const ready = await recordCall(id, { doctorConsent: true, patientConsent: true, codec: 'VP9' }, async ({ doctor, patient }) => {
      await pollUntil(async () => (await activeIn(doctor)) && (await activeIn(patient)), { what: 'both told recording is active' });
      for (const p of [doctor, patient]) {
        await pollUntil(async () => ((await sendingMode(p)) === 'video/VP9 L1T1' ? true : null), { what: `${p.name} to send VP9 as one layer` });
      }
      await sleep(6_000);
      await waitForVideo(patient, 'dr-ana', { width: 1280 });
    });
    const file = await download(ready, 'vp9.webm');
    const info = probe(file);
    assert.deepEqual(info.streams.map((s) => s.codec_name).sort(), ['opus', 'opus', 'vp9', 'vp9']);
    // Each video track's frames, in order: the last seconds are all full size.
    const out = execFileSync('ffprobe', ['-v', 'error', '-select_streams', 'v', '-show_entries', 'frame=stream_index,width', '-of', 'csv=p=0', file], {
      encoding: 'utf8',
    });
    const widths = new Map();
    for (const line of out.trim().split('\n')) {
      const [stream, width] = line.split(',').map(Number);
      if (!widths.has(stream)) widths.set(stream, []);
      widths.get(stream).push(width);
    }
    assert.equal(widths.size, 2, out.slice(0, 200));
    for (const [stream, w] of widths) {
      const last = w.slice(-90);
      console.log(`recording vp9 stream ${stream}: ${w.length} frames, widths seen ${[...new Set(w)].join(' ')}`);
      assert.ok(last.length >= 60 && last.every((x) => x === 1280), `stream ${stream}'s last frames: ${[...new Set(last)].join(' ')}`);
    }
    assert.equal(decode(file), '', 'ffmpeg decodes without errors');
  });

  it('demo page: the recording bar asks for consent, then shows the recording', { timeout: 120_000 }, async () => {
    const id = `rec-demo-${process.pid}`;
    const token = await consultation(id, 'required');
    const doctor = await openParticipant(browser, server, 'doctor-demo');
    const patient = await openParticipant(browser, server, 'patient-demo');
    try {
      await doctor.page.goto(`${server.httpUrl}/demo?token=${encodeURIComponent(await token('dr-ana', 'doctor'))}`);
      await patient.page.goto(`${server.httpUrl}/demo?token=${encodeURIComponent(await token('pt-joao', 'patient'))}`);
      for (const p of [doctor, patient]) {
        await pollUntil(() => p.page.isVisible('#recording'), { what: `${p.name} to see the recording bar` });
        assert.equal(await p.page.getAttribute('#recording', 'data-active'), 'false');
      }
      await doctor.page.click('#consent');
      await sleep(1_000);
      assert.equal(await doctor.page.getAttribute('#recording', 'data-active'), 'false', 'one consent is not enough');
      await patient.page.click('#consent');
      for (const p of [doctor, patient]) {
        await pollUntil(async () => (await p.page.getAttribute('#recording', 'data-active')) === 'true', {
          what: `${p.name}'s bar to show the recording`,
        });
        assert.match(await p.page.textContent('#recording-text'), /Gravando/);
      }
      // Withdrawing consent stops it for everyone.
      await patient.page.click('#consent');
      await pollUntil(async () => (await doctor.page.getAttribute('#recording', 'data-active')) === 'false', {
        what: 'the doctor to see the recording stop',
      });
      await pollUntil(async () => (await events(id)).some((e) => e.type === 'recording_stopped' && e.payload.reason === 'consent'), {
        what: 'recording_stopped (consent)',
      });
    } finally {
      await doctor.close();
      await patient.close();
    }
  });

  it('records nothing when one participant did not consent', { timeout: 120_000 }, async () => {
    const id = `rec-no-${process.pid}`;
    const { doctor, patient } = await startCall(id, { doctorConsent: true, patientConsent: false });
    try {
      const state = await pollUntil(
        async () => {
          const s = await doctor.evaluate(() => window.call.recording);
          return s.requested && s.waitingFor.includes('pt-joao') ? s : null;
        },
        { what: 'the doctor told recording waits for the patient' },
      );
      assert.equal(state.active, false);
      assert.equal(state.reason, 'consent');
      await sleep(5_000);
      assert.equal(await activeIn(doctor), false);
      assert.equal(await activeIn(patient), false);
      await patient.leave();
      await doctor.leave();
    } finally {
      await doctor.close();
      await patient.close();
    }
    await sleep(3_000);
    const types = (await events(id)).map((e) => e.type);
    assert.ok(!types.includes('recording_started'), types.join());
    assert.ok(!types.includes('recording_ready'), types.join());
    assert.deepEqual(await s3.list(`recordings/${id}/`), []);
    const spool = path.join(server.dir, 'data', 'recordings');
    assert.deepEqual(fs.readdirSync(spool).filter((f) => f !== 'done'), []);
  });

  it('S3 down during the call and back 30 s after it ended: the spooled recording arrives intact', { timeout: 240_000 }, async () => {
    const id = `rec-outage-${process.pid}`;
    const { doctor, patient } = await startCall(id, { doctorConsent: true, patientConsent: true });
    const spool = path.join(server.dir, 'data', 'recordings');
    let spooled;
    try {
      await pollUntil(async () => activeIn(doctor), { what: 'recording active' });
      const startedAt = await activeSince(doctor);
      await sleep(2_000);
      await s3.stop();
      await sleep(8_000);
      await patient.leave();
      await doctor.leave();
      const callSeconds = (Date.now() - startedAt) / 1000;
      // The recording is closed in the spool and waits for the store.
      const meta = await pollUntil(
        () => {
          const f = fs.readdirSync(spool).find((n) => n.endsWith('.json'));
          if (!f) return null;
          const m = JSON.parse(fs.readFileSync(path.join(spool, f), 'utf8'));
          return m.state === 'closed' && m.consultation === id ? m : null;
        },
        { what: 'the closed recording in the spool', timeout: 30_000 },
      );
      spooled = fs.readFileSync(path.join(spool, `${meta.id}.${meta.ext}`));
      assert.equal(sha256(spooled), meta.sha256);
      await sleep(30_000);
      assert.ok(!(await events(id)).some((e) => e.type === 'recording_ready'), 'not ready while S3 is down');
      const metrics = await (await fetch(`${server.httpUrl}/metrics`)).text();
      assert.match(metrics, /consulta_recording_uploads_pending [1-9]/);
      await s3.start();
      const ready = await readyEvent(id, 'recording_ready after S3 came back', 90_000);
      const body = await s3.get(ready.payload.key);
      assert.ok(body.equals(spooled), 'the object is byte for byte the spooled recording');
      // The spool copy is gone only now that the upload is verified.
      assert.ok(!fs.existsSync(path.join(spool, `${meta.id}.${meta.ext}`)));
      const file = path.join(tempDir('consulta-rec-'), 'outage.webm');
      fs.writeFileSync(file, body);
      const info = probe(file);
      assert.deepEqual(info.streams.map((s) => s.codec_name).sort(), ['opus', 'opus', 'vp8', 'vp8']);
      assert.ok(Math.abs(Number(info.format.duration) - callSeconds) <= 1, `${info.format.duration} vs ${callSeconds}`);
      assert.equal(decode(file), '');
    } finally {
      await doctor.close();
      await patient.close();
      await s3.start().catch(() => {});
    }
  });

  it('a crash mid-recording: the unfinished spool is repaired and uploaded on the next start', { timeout: 180_000 }, async () => {
    const id = `rec-crash-${process.pid}`;
    const { doctor, patient } = await startCall(id, { doctorConsent: true, patientConsent: true });
    const spool = path.join(server.dir, 'data', 'recordings');
    try {
      await pollUntil(async () => activeIn(doctor), { what: 'recording active' });
      await sleep(6_000);
      await server.kill();
    } finally {
      await doctor.close();
      await patient.close();
    }
    const unfinished = fs
      .readdirSync(spool)
      .filter((n) => n.endsWith('.json'))
      .map((n) => JSON.parse(fs.readFileSync(path.join(spool, n), 'utf8')))
      .find((m) => m.consultation === id);
    assert.equal(unfinished?.state, 'recording', 'the crash left an unfinished recording in the spool');
    server = await startServer({ restartOf: server });
    const ready = await readyEvent(id, 'recording_ready after the restart', 60_000);
    assert.equal(ready.payload.recording_id, unfinished.id);
    const body = await s3.get(ready.payload.key);
    assert.equal(sha256(body), ready.payload.sha256);
    const file = path.join(tempDir('consulta-rec-'), 'crash.webm');
    fs.writeFileSync(file, body);
    const info = probe(file);
    assert.deepEqual(info.streams.map((s) => s.codec_name).sort(), ['opus', 'opus', 'vp8', 'vp8']);
    assert.ok(Number(info.format.duration) > 4, `duration ${info.format.duration}`);
    assert.equal(decode(file), '');
  });

  it('consulta recordings purge deletes expired recordings and logs each as an event', { timeout: 60_000 }, async () => {
    const id = `rec-crash-${process.pid}`;
    const before = await s3.list(`recordings/${id}/`);
    assert.equal(before.length, 1, 'the recording of the previous test is in the store');
    const dry = await run(CONSULTA_BIN, ['recordings', 'purge', '--config', server.configPath, '--older-than-days', '0', '--dry-run']);
    assert.match(dry.stdout, new RegExp(`would delete ${before[0]}`));
    assert.equal((await s3.list(`recordings/${id}/`)).length, 1, 'a dry run deletes nothing');
    const done = await run(CONSULTA_BIN, ['recordings', 'purge', '--config', server.configPath, '--older-than-days', '0']);
    assert.match(done.stdout, new RegExp(`deleted ${before[0]}`));
    assert.deepEqual(await s3.list(`recordings/${id}/`), []);
    const deleted = (await events(id)).find((e) => e.type === 'recording_deleted');
    assert.equal(deleted?.payload.key, before[0]);
    assert.equal(deleted?.payload.reason, 'retention');
  });
});
