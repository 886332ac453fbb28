// Issue 21: a patient on a weak network still sees and hears the doctor. Real Chromium for the
// doctor and the patient, each in its own network namespace on a veth to the server's namespace
// (scripts/netns-roaming.sh); one direction of the patient's link is shaped for 30 s during a 1:1
// call with 1280x720 fake cameras and audio (tbf for the rate, an nft `numgen random` rule for the
// loss: ./shaping.mjs; this kernel has no netem).
//
// Both pages play the remote audio through an <audio> element from their join on (Chromium
// counts concealment only for played audio, and keeps in its jitter buffer what nothing plays)
// and show the remote video in a 1280x720 <video>; every SAMPLE_MS (250 ms) they record their
// own getStats(): inbound video framesDecoded, frameWidth/Height, freezeCount,
// totalFreezesDuration; inbound audio concealedSamples, totalSamplesReceived, jitterBufferDelay,
// jitterBufferEmittedCount, packetsReceived; the outbound video (what the sender does). The SDK's
// events track-paused / track-resumed / quality (issue 21's contract) are recorded when the SDK
// emits them. Per-second figures are taken from the samples at 1 s steps.
//
// Scenarios (issue 21's table; each 30 s of impairment, targets not loosened):
//   a  patient downlink 500 kbit/s + 3 % loss: patient's concealment <= 2 %, jitter buffer
//      <= 200 ms (mean over the 30 s); patient sees >= 15 fps (median of the seconds) at >= 180p
//      (every second with frames), no stall > 1 s; after unshaping >= 640 px wide within 15 s.
//   b  patient downlink 2.5 Mbit/s for 10 s, then a step to 400 kbit/s for 20 s: concealment
//      <= 5 % in the 10 s after the step; a lower resolution within 5 s of the step, at most one
//      freeze after the step, of <= 1.5 s.
//   c  patient downlink 150 kbit/s + 5 % loss: concealment <= 5 %, audio never paused (audio
//      packets every second, no track-paused for audio); `track-paused` (video, reason
//      'bandwidth') within 5 s; after unshaping the video is back (a second with >= 15 fps)
//      within 15 s.
//   d  patient uplink 500 kbit/s + 3 % loss: the doctor's concealment <= 2 %; the doctor sees
//      >= 15 fps at >= 180p.
//   e  (ours, not in the issue's table) the patient joins on a's link, shaped before the join: a
//      patient on a weak network from the start, with no good seconds to warm up on. a's
//      targets over the 30 s from when both see video; the side that is not impaired from 10 s
//      on (SETTLE_MS: the doctor's view climbs with the patient's own uplink estimate).
// In every scenario the direction that is not impaired must not be affected. The issue says
// >= 25 fps at full resolution: judged as >= 25 fps (median of the seconds) at 1280 px wide in
// every sample (in 31 runs on a 2-core machine, Chromium and Firefox patients, the median was
// 29.9-30 fps and the worst second 26.9).
//
// WEAK_PATIENT_BROWSER=firefox makes the patient Firefox ESR (launched in its namespace through
// puppeteer, ./roaming-net.mjs launchFirefoxIn; the doctor stays Chromium). Firefox has no freeze
// statistics: its freezes are the sampled stalls of >= 500 ms (videoWindow), fewer and shorter
// than Chromium would count. Its fake camera reaches 1280x720 like Chromium's; its estimate
// climbs more slowly, so use WEAK_WARM_MS=20000 for a baseline at 1280 wide.
// WEAK_VIDEO_CODEC=VP9 makes both sides prefer VP9: Chromium then sends spatial layers of one
// stream (L3T3_KEY) instead of simulcast; WEAK_SIMULCAST=0 sends one layer.
// Each scenario is its own test; WEAK_SCENARIOS=a,c selects (default: all), WEAK_REPEAT=N runs
// each N times. Each prints one line `weak-network <s>: {json}` with its measurements. The server
// inherits the environment, so CONSULTA_MEDIA_* overrides apply (e.g. to compare with adaptation
// switched off); CONSULTA_BIN picks the binary.
// Run (as root): scripts/netns-roaming.sh node --test --test-concurrency=1 tests/e2e-netns/weak-network.test.mjs
// Per second it prints fps, the audio jitter buffer and the concealed share (fpsPerSecond,
// jbMsPerSecond, concealPctPerSecond): where in the 30 s a target was missed.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { CONSULTA_BIN, sleep } from '../e2e/harness.mjs';
import { NS, assertInNamespaces, joinCall, launchFirefoxIn, launchIn, median, openWatched, startRoamingServer } from './roaming-net.mjs';
import { shape, shapingCounters, unshape } from './shaping.mjs';

const SAMPLE_MS = 250;
// After both see 720p, before shaping: Chromium's audio jitter buffer starts at 600-800 ms after a
// join (measured here) and takes ~10 s to settle, which would otherwise count in the first seconds.
const WARM_MS = Number(process.env.WEAK_WARM_MS || 12_000);
const BASELINE_MS = 5_000; // the last part of the warm-up, reported as the baseline
const IMPAIR_MS = 30_000;
const DOCTOR = 'dr-ana';
const PATIENT = 'pt-joao';
const FULL_WIDTH = 1280;
const UNIMPAIRED_MIN_FPS = 25;
// A scenario that shapes from the join (e): its side that is not impaired is judged from this
// long after both saw video.
const SETTLE_MS = 10_000;

const SCENARIOS = {
  a: {
    title: 'patient downlink 500 kbit/s + 3 % loss',
    side: 'down',
    steps: [{ at: 0, rateKbit: 500, lossPct: 3 }],
    afterMs: 15_000,
    judge: judgeA,
  },
  b: {
    title: 'patient downlink 2.5 Mbit/s, then a step to 400 kbit/s',
    side: 'down',
    steps: [
      { at: 0, rateKbit: 2_500, lossPct: 0 },
      { at: 10_000, rateKbit: 400, lossPct: 0 },
    ],
    afterMs: 3_000,
    judge: judgeB,
  },
  c: {
    title: 'patient downlink 150 kbit/s + 5 % loss',
    side: 'down',
    steps: [{ at: 0, rateKbit: 150, lossPct: 5 }],
    afterMs: 15_000,
    judge: judgeC,
  },
  d: {
    title: 'patient uplink 500 kbit/s + 3 % loss',
    side: 'up',
    steps: [{ at: 0, rateKbit: 500, lossPct: 3 }],
    afterMs: 3_000,
    judge: judgeD,
  },
  e: {
    title: 'patient joins on a downlink of 500 kbit/s + 3 % loss',
    side: 'down',
    steps: [{ at: 0, rateKbit: 500, lossPct: 3 }],
    // Shaped before the join: no warm-up on a good link; the 30 s count from when both see video.
    // Judged as a, the side that is not impaired from SETTLE_MS on.
    fromJoin: true,
    afterMs: 15_000,
    judge: judgeA,
  },
};

// WEAK_CUSTOM describes one more scenario, `x`, for other rates, losses and timings:
// `<down|up>:<kbit/s>/<loss %>[@<ms>],...` (each step at its time after the warm-up; the first
// at 0), e.g. WEAK_CUSTOM=down:300/5 or WEAK_CUSTOM=down:2500/0,800/1@10000, and
// WEAK_SCENARIOS=x. It is judged only on what holds on any link: the side that is not impaired is
// not affected, and the side that sees and hears across the shaped link (the patient for `down`,
// the doctor for `up`) never loses the audio and has the video back within 15 s of unshaping.
if (process.env.WEAK_CUSTOM) SCENARIOS.x = customScenario(process.env.WEAK_CUSTOM);

function customScenario(spec) {
  const m = /^(down|up):(.+)$/.exec(spec.trim());
  if (!m) throw new Error(`WEAK_CUSTOM: ${spec} (want <down|up>:<kbit/s>/<loss %>[@<ms>],...)`);
  const steps = m[2].split(',').map((part, i) => {
    const x = /^\s*(\d+)\/(\d+(?:\.\d+)?)(?:@(\d+))?\s*$/.exec(part);
    if (!x) throw new Error(`WEAK_CUSTOM: step ${part} (want <kbit/s>/<loss %>[@<ms>])`);
    const at = x[3] === undefined ? 0 : Number(x[3]);
    if (i === 0 && at !== 0) throw new Error('WEAK_CUSTOM: the first step is at 0');
    return { at, rateKbit: Number(x[1]), lossPct: Number(x[2]) };
  });
  if (steps.some((s, i) => i > 0 && !(s.at > steps[i - 1].at && s.at < IMPAIR_MS))) throw new Error('WEAK_CUSTOM: steps in order, within the 30 s');
  const viewer = m[1] === 'down' ? 'patient' : 'doctor';
  return { title: `patient ${m[1]}link ${m[2]}`, side: m[1], steps, afterMs: 15_000, judge: (r, fail) => judgeCustom(viewer, r, fail) };
}

const selected = (process.env.WEAK_SCENARIOS || 'a,b,c,d,e')
  .split(',')
  .map((s) => s.trim().toLowerCase())
  .filter(Boolean);
for (const s of selected) if (!SCENARIOS[s]) throw new Error(`WEAK_SCENARIOS: unknown scenario ${s} (${Object.keys(SCENARIOS).join(', ')})`);
const REPEAT = Number(process.env.WEAK_REPEAT || 1);
// WEAK_PATIENT_BROWSER=firefox: the patient is Firefox ESR (the doctor stays Chromium).
const BROWSER = { doctor: 'chromium', patient: (process.env.WEAK_PATIENT_BROWSER || 'chromium').toLowerCase() };
if (!['chromium', 'firefox'].includes(BROWSER.patient)) throw new Error(`WEAK_PATIENT_BROWSER: ${BROWSER.patient} (chromium, firefox)`);

let server;
let doctorBrowser;
let patientBrowser;

before(async () => {
  assertInNamespaces();
  await unshape();
  server = await startRoamingServer();
  doctorBrowser = await launchIn(NS.doctor, server);
  patientBrowser = BROWSER.patient === 'firefox' ? await launchFirefoxIn(NS.patient) : await launchIn(NS.patient, server);
});

after(async () => {
  await unshape().catch(() => {});
  await doctorBrowser?.close().catch(() => {});
  await patientBrowser?.close().catch(() => {});
  await server?.stop();
});

// ----- in the page ----------------------------------------------------------------------------------

// Runs in a page after join: plays the remote participants' media through <audio>/<video>
// elements, records the SDK's adaptation events and samples getStats() every `sampleMs`.
function instrument({ sampleMs }) {
  const call = window.call;
  const w = (window.weak = { samples: [], events: [], media: {} });
  const rec = (e) => w.events.push({ t: Date.now(), ...e });
  const els = new Map();
  const attach = (p) => {
    if (!p || !p.stream || p.identity === call.participant?.identity) return;
    let e = els.get(p.identity);
    if (!e) {
      const audio = document.createElement('audio');
      audio.autoplay = true;
      const video = document.createElement('video');
      video.autoplay = true;
      video.muted = true; // the sound is the <audio> element's
      video.playsInline = true;
      video.style.width = '1280px';
      video.style.height = '720px';
      document.body.append(audio, video);
      e = { audio, video };
      els.set(p.identity, e);
    }
    for (const el of [e.audio, e.video]) {
      if (el.srcObject !== p.stream) el.srcObject = p.stream;
      el.play().catch((err) => rec({ type: 'play-error', identity: p.identity, message: String(err) }));
    }
  };
  for (const p of call.participants.values()) attach(p);
  const who = (x) => (x && x.participant ? x.participant.identity : x && x.identity) ?? null;
  call.on('track', (e) => {
    rec({ type: 'track', identity: who(e), kind: e.kind });
    attach(e.participant);
  });
  call.on('track-removed', (e) => rec({ type: 'track-removed', identity: who(e), kind: e.kind }));
  // Issue 21's contract (may not exist yet: then nothing is recorded).
  call.on('track-paused', (e) => rec({ type: 'track-paused', identity: who(e), kind: e && e.kind, reason: e && e.reason }));
  call.on('track-resumed', (e) => rec({ type: 'track-resumed', identity: who(e), kind: e && e.kind, reason: e && e.reason }));
  call.on('quality', (e) => rec({ type: 'quality', identity: who(e), level: e && e.level }));
  call.on('reconnecting', () => rec({ type: 'reconnecting' }));
  call.on('reconnected', () => rec({ type: 'reconnected' }));
  call.on('error', (e) => rec({ type: 'error', code: e && e.code, message: e && e.message }));

  const n = (v) => (typeof v === 'number' ? v : 0);
  let busy = false;
  w.timer = setInterval(async () => {
    const pc = call.peerConnection;
    if (busy || !pc || pc.signalingState === 'closed') return;
    busy = true;
    try {
      const t = Date.now();
      const report = await pc.getStats();
      // A remote track -> its participant (the SDK's public participants map).
      const owner = new Map();
      for (const p of call.participants.values()) for (const tr of Object.values(p.tracks || {})) if (tr) owner.set(tr.id, p.identity);
      const trackOfMid = new Map();
      for (const tc of pc.getTransceivers()) if (tc.mid != null && tc.receiver && tc.receiver.track) trackOfMid.set(tc.mid, tc.receiver.track.id);
      const inbound = [];
      const outbound = [];
      let pair = null;
      report.forEach((s) => {
        if (s.type === 'inbound-rtp') {
          const track = s.trackIdentifier || trackOfMid.get(s.mid);
          const from = owner.get(track) ?? owner.get(trackOfMid.get(s.mid)) ?? null;
          if (!from) return; // a stream the SDK no longer maps to anyone
          const kind = s.kind || s.mediaType;
          const e = { id: s.id, from, kind, packetsReceived: n(s.packetsReceived), packetsLost: n(s.packetsLost), bytesReceived: n(s.bytesReceived) };
          if (kind === 'video') {
            Object.assign(e, {
              framesDecoded: n(s.framesDecoded),
              frameWidth: n(s.frameWidth),
              frameHeight: n(s.frameHeight),
              freezeCount: n(s.freezeCount),
              totalFreezesDuration: n(s.totalFreezesDuration),
              framesDropped: n(s.framesDropped),
              pliCount: n(s.pliCount),
              nackCount: n(s.nackCount),
            });
          } else {
            Object.assign(e, {
              concealedSamples: n(s.concealedSamples),
              totalSamplesReceived: n(s.totalSamplesReceived),
              jitterBufferDelay: n(s.jitterBufferDelay),
              jitterBufferEmittedCount: n(s.jitterBufferEmittedCount),
              fecPacketsReceived: n(s.fecPacketsReceived),
            });
          }
          inbound.push(e);
        } else if (s.type === 'outbound-rtp' && (s.kind || s.mediaType) === 'video') {
          outbound.push({
            rid: s.rid ?? null,
            frameWidth: n(s.frameWidth),
            framesPerSecond: n(s.framesPerSecond),
            targetBitrate: n(s.targetBitrate),
            bytesSent: n(s.bytesSent),
            qualityLimitationReason: s.qualityLimitationReason ?? null,
            active: s.active ?? null,
          });
        } else if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
          pair = { availableOutgoingBitrate: s.availableOutgoingBitrate ?? null, rtt: s.currentRoundTripTime ?? null };
        }
      });
      const playing = {};
      for (const [id, e] of els) playing[id] = { audio: !e.audio.paused && e.audio.currentTime > 0, video: !e.video.paused };
      w.samples.push({ t, inbound, outbound, pair, playing });
    } catch (err) {
      rec({ type: 'sample-error', message: String(err) });
    } finally {
      busy = false;
    }
  }, sampleMs);
}

// ----- measurements (node side) -----------------------------------------------------------------

const CUMULATIVE = {
  video: ['framesDecoded', 'freezeCount', 'totalFreezesDuration', 'packetsReceived', 'packetsLost', 'bytesReceived'],
  audio: ['concealedSamples', 'totalSamplesReceived', 'jitterBufferDelay', 'jitterBufferEmittedCount', 'packetsReceived', 'packetsLost'],
};

/**
 * One series per (viewer's samples, sender, kind): [{t, c: {counter: cumulative}, width, height}],
 * counters summed over the streams from that sender (a stream that goes away and one that appears
 * keep the sums monotonic; a counter that goes down restarts from zero).
 */
function series(samples, from, kind) {
  const last = new Map();
  const acc = Object.fromEntries(CUMULATIVE[kind].map((k) => [k, 0]));
  const out = [];
  for (const s of samples) {
    const streams = s.inbound.filter((e) => e.from === from && e.kind === kind);
    let best = null;
    let bestDelta = -1;
    for (const e of streams) {
      const prev = last.get(e.id);
      for (const k of CUMULATIVE[kind]) {
        const p = prev ? prev[k] : 0;
        acc[k] += e[k] >= p ? e[k] - p : e[k];
      }
      const d = kind === 'video' ? e.framesDecoded - (prev ? prev.framesDecoded : 0) : 0;
      if (d > bestDelta) {
        bestDelta = d;
        best = e;
      }
      last.set(e.id, e);
    }
    out.push({ t: s.t, c: { ...acc }, width: best ? best.frameWidth : 0, height: best ? best.frameHeight : 0, streams: streams.length });
  }
  return out;
}

/** The last point of `ser` at or before `t` (or the first one). */
function at(ser, t) {
  let p = ser[0];
  for (const x of ser) {
    if (x.t <= t) p = x;
    else break;
  }
  return p;
}

const delta = (ser, k, from, to) => at(ser, to).c[k] - at(ser, from).c[k];

/** The start of each whole second in [from, to]: the per-second figures' steps. */
function* seconds(from, to) {
  for (let t = from; t + 1_000 <= to + 1; t += 1_000) yield t;
}

/** Per-second video figures in [from, to): fps list, sizes while decoding, longest stall, freezes. */
function videoWindow(ser, from, to, { sampledFreezes = false } = {}) {
  const fps = [];
  for (const t of seconds(from, to)) {
    const a = at(ser, t);
    const b = at(ser, t + 1_000);
    fps.push(b.t > a.t ? Math.round(((b.c.framesDecoded - a.c.framesDecoded) * 1_000) / (b.t - a.t) * 10) / 10 : 0);
  }
  const pts = ser.filter((x) => x.t >= from && x.t <= to);
  // Sizes of the frames decoded in the window (samples whose count grew since the previous one).
  const decoding = [];
  for (let i = 1; i < pts.length; i++) if (pts[i].c.framesDecoded > pts[i - 1].c.framesDecoded) decoding.push(pts[i]);
  // The longest time without a new frame, as a lower bound (the last sample without one minus the
  // sample where the count last grew); a stall still going on at `to` counts up to `to`.
  let stall = 0;
  let lastGrowth = pts.length ? pts[0].t : from;
  for (let i = 1; i < pts.length; i++) {
    if (pts[i].c.framesDecoded > pts[i - 1].c.framesDecoded) {
      stall = Math.max(stall, pts[i - 1].t - lastGrowth);
      lastGrowth = pts[i].t;
    }
  }
  if (pts.length) stall = Math.max(stall, pts[pts.length - 1].t - lastGrowth);
  // Chromium's own freezes that ended in the window, each one's duration when one sample
  // interval holds exactly one (else the interval's total, an upper bound).
  const freezes = [];
  for (let i = 1; i < pts.length; i++) {
    const n = pts[i].c.freezeCount - pts[i - 1].c.freezeCount;
    if (n > 0) freezes.push({ at: pts[i].t - from, ms: Math.round((pts[i].c.totalFreezesDuration - pts[i - 1].c.totalFreezesDuration) * 1_000), n });
  }
  // Firefox has no freeze statistics: its freezes are the sampled stalls of two sample intervals
  // or more (>= 500 ms without a new frame; Chromium's threshold is 3 frame intervals, or 150 ms
  // over the mean, so this counts fewer and shorter freezes than Chromium would).
  if (sampledFreezes) {
    let since = null;
    for (let i = 1; i < pts.length; i++) {
      const grew = pts[i].c.framesDecoded > pts[i - 1].c.framesDecoded;
      if (!grew && since === null) since = pts[i - 1].t;
      if ((grew || i === pts.length - 1) && since !== null) {
        const ms = pts[grew ? i - 1 : i].t - since;
        if (ms >= 2 * SAMPLE_MS) freezes.push({ at: pts[i].t - from, ms, n: 1 });
        since = null;
      }
    }
  }
  const widths = decoding.map((x) => x.width);
  const heights = decoding.map((x) => x.height);
  return {
    fpsP50: fps.length ? median(fps) : 0,
    fpsMin: fps.length ? Math.min(...fps) : 0,
    fps,
    minWidth: widths.length ? Math.min(...widths) : 0,
    maxWidth: widths.length ? Math.max(...widths) : 0,
    minHeight: heights.length ? Math.min(...heights) : 0,
    widths: [...new Set(widths)],
    longestStallMs: stall,
    freezeCount: sampledFreezes ? freezes.length : delta(ser, 'freezeCount', from, to),
    freezesMs: sampledFreezes ? freezes.reduce((a, f) => a + f.ms, 0) : Math.round(delta(ser, 'totalFreezesDuration', from, to) * 1_000),
    freezesSampled: sampledFreezes,
    freezes,
    maxFreezeMs: freezes.length ? Math.max(...freezes.map((f) => f.ms)) : 0,
    kbps: Math.round((delta(ser, 'bytesReceived', from, to) * 8) / (to - from)),
  };
}

/** Audio figures in [from, to): concealment %, mean jitter buffer ms, seconds without packets. */
function audioWindow(ser, from, to) {
  const total = delta(ser, 'totalSamplesReceived', from, to);
  const emitted = delta(ser, 'jitterBufferEmittedCount', from, to);
  const perSecondJb = [];
  const perSecondConceal = [];
  let silentSeconds = 0;
  for (const t of seconds(from, to)) {
    const e = delta(ser, 'jitterBufferEmittedCount', t, t + 1_000);
    if (e > 0) perSecondJb.push(Math.round((delta(ser, 'jitterBufferDelay', t, t + 1_000) / e) * 1_000));
    const n = delta(ser, 'totalSamplesReceived', t, t + 1_000);
    perSecondConceal.push(n > 0 ? Math.round((delta(ser, 'concealedSamples', t, t + 1_000) / n) * 100) : null);
    if (delta(ser, 'packetsReceived', t, t + 1_000) === 0) silentSeconds++;
  }
  return {
    concealmentPct: total > 0 ? Math.round((delta(ser, 'concealedSamples', from, to) / total) * 10_000) / 100 : null,
    samplesPerSec: Math.round((total * 1_000) / (to - from)),
    jitterBufferMs: emitted > 0 ? Math.round((delta(ser, 'jitterBufferDelay', from, to) / emitted) * 1_000) : null,
    jitterBufferMaxMs: perSecondJb.length ? Math.max(...perSecondJb) : null,
    jitterBufferPerSecond: perSecondJb,
    concealmentPerSecond: perSecondConceal,
    secondsWithoutPackets: silentSeconds,
    packetsLost: delta(ser, 'packetsLost', from, to),
  };
}

/** First time (ms after `from`) a decoding sample after `from` satisfies `ok(point)`; null if none by `to`. */
function firstDecodingWhere(ser, from, to, ok) {
  for (let i = 1; i < ser.length; i++) {
    const x = ser[i];
    if (x.t <= from || x.t > to) continue;
    if (x.c.framesDecoded > ser[i - 1].c.framesDecoded && ok(x)) return x.t - from;
  }
  return null;
}

/** First second-long window starting after `from` with >= `fps` decoded: its end, ms after `from`. */
function firstSecondWithFps(ser, from, to, fps) {
  for (let t = from; t + 1_000 <= to + 1; t += SAMPLE_MS) {
    const a = at(ser, t);
    const b = at(ser, t + 1_000);
    if (b.t > a.t && ((b.c.framesDecoded - a.c.framesDecoded) * 1_000) / (b.t - a.t) >= fps) return t + 1_000 - from;
  }
  return null;
}

/** The sender's outbound video over [from, to]: widths it encoded and its last target bitrate. */
function outboundSummary(samples, from, to) {
  const inWin = samples.filter((s) => s.t >= from && s.t <= to);
  const widths = new Set();
  const limits = new Set();
  for (const s of inWin) for (const o of s.outbound) {
    if (o.frameWidth) widths.add(`${o.rid ? `${o.rid}:` : ''}${o.frameWidth}`);
    if (o.qualityLimitationReason && o.qualityLimitationReason !== 'none') limits.add(o.qualityLimitationReason);
  }
  const lastS = inWin[inWin.length - 1];
  // Kilobits sent per second by each encoding ("f:1180/h:520/q:150" by rid, or the one stream's),
  // in the 1 s steps of the other per-second figures: how fast the sender's own estimate let it
  // climb.
  const perSecond = [];
  for (const t of inWin.length ? seconds(from, to) : []) {
    const [a, b] = [at(inWin, t), at(inWin, t + 1_000)];
    const sent = (o) => o.bytesSent - (a.outbound.find((q) => q.rid === o.rid)?.bytesSent ?? o.bytesSent);
    const kbps = (o) => (b.t > a.t ? Math.round((sent(o) * 8) / (b.t - a.t)) : 0);
    perSecond.push(b.outbound.map((o) => `${o.rid ? `${o.rid}:` : ''}${kbps(o)}`).sort().join('/'));
  }
  return {
    widths: [...widths],
    kbpsPerSecond: perSecond.join(' '),
    targetKbpsEnd: lastS ? lastS.outbound.map((o) => Math.round(o.targetBitrate / 1000)) : [],
    availableOutgoingKbpsEnd: lastS && lastS.pair && lastS.pair.availableOutgoingBitrate ? Math.round(lastS.pair.availableOutgoingBitrate / 1000) : null,
    qualityLimitation: [...limits],
  };
}

// ----- judging ------------------------------------------------------------------------------------

// Each judge gets the measurements and pushes what misses a target into `fail`.

/**
 * The direction that is not impaired: >= 25 fps (median of the seconds), full width in every
 * sample, over its judged window (`videoUnimpaired`: the impairment's, or from SETTLE_MS on).
 */
function judgeUnimpaired(m, who, fail) {
  const v = m[who].videoUnimpaired;
  if (!(v.fpsP50 >= UNIMPAIRED_MIN_FPS)) fail.push(`${who} (not impaired) saw ${v.fpsP50} fps (p50), want >= ${UNIMPAIRED_MIN_FPS}`);
  if (!(v.minWidth >= FULL_WIDTH)) fail.push(`${who} (not impaired) saw ${v.minWidth} px wide at worst (${v.widths}), want ${FULL_WIDTH}`);
}

function judgeSees(v, who, fail, { fps = 15, minHeight = 180, stallMs = 1_000 } = {}) {
  if (!(v.fpsP50 >= fps)) fail.push(`${who} saw ${v.fpsP50} fps (p50 of the seconds; min ${v.fpsMin}), want >= ${fps}`);
  if (!(v.minHeight >= minHeight)) fail.push(`${who} saw ${v.minHeight}p at worst, want >= ${minHeight}p`);
  if (stallMs !== null) {
    if (!(v.longestStallMs <= stallMs)) fail.push(`${who}: no new frame for ${v.longestStallMs} ms (sampled), want no stall > ${stallMs} ms`);
    if (!(v.maxFreezeMs <= stallMs)) fail.push(`${who}: a freeze of ${v.maxFreezeMs} ms (Chromium's freeze stats), want none > ${stallMs} ms`);
  }
}

function judgeA(m, fail) {
  const a = m.patient.audioImpair;
  if (!(a.concealmentPct !== null && a.concealmentPct <= 2)) fail.push(`patient audio concealment ${a.concealmentPct} %, want <= 2 %`);
  if (!(a.jitterBufferMs !== null && a.jitterBufferMs <= 200)) fail.push(`patient audio jitter buffer ${a.jitterBufferMs} ms (mean), want <= 200 ms`);
  judgeSees(m.patient.videoImpair, 'patient', fail);
  const back = m.patient.wideAgainMs;
  if (!(back !== null && back <= 15_000)) fail.push(`patient back at >= 640 px wide ${back === null ? 'never (watched 15 s)' : `after ${back} ms`}, want within 15 s`);
  judgeUnimpaired(m, 'doctor', fail);
}

function judgeB(m, fail) {
  const a = m.patient.audioAfterStep;
  if (!(a.concealmentPct !== null && a.concealmentPct <= 5)) fail.push(`patient audio concealment ${a.concealmentPct} % in the 10 s after the step, want <= 5 %`);
  const lower = m.patient.lowerResolutionMs;
  if (!(lower !== null && lower <= 5_000)) fail.push(`patient saw a lower resolution than ${m.patient.widthAtStep} px ${lower === null ? 'never' : `after ${lower} ms`}, want within 5 s of the step`);
  const v = m.patient.videoAfterStep;
  if (!(v.freezeCount <= 1)) fail.push(`patient: ${v.freezeCount} freezes after the step, want at most one`);
  if (!(v.maxFreezeMs <= 1_500)) fail.push(`patient: a freeze of ${v.maxFreezeMs} ms after the step, want <= 1500 ms`);
  if (!(v.longestStallMs <= 1_500)) fail.push(`patient: no new frame for ${v.longestStallMs} ms after the step (sampled), want <= 1500 ms`);
  judgeUnimpaired(m, 'doctor', fail);
}

/** `who` heard the other side's audio throughout: never a second without a packet, never paused. */
function judgeAudioNeverStops(m, who, fail) {
  const x = m[who];
  if (x.audioImpair.secondsWithoutPackets > 0) fail.push(`${who}: ${x.audioImpair.secondsWithoutPackets} s without a single audio packet (audio must never pause)`);
  if (x.audioPausedEvents > 0) fail.push(`${who} got track-paused for the other side's audio ${x.audioPausedEvents}x`);
}

/** `who` saw the other side's video again (a second at >= 15 fps) within 15 s of unshaping. */
function judgeVideoBack(m, who, fail) {
  const back = m[who].videoBackMs;
  if (!(back !== null && back <= 15_000)) fail.push(`${who}'s video back (a second at >= 15 fps) ${back === null ? 'never (watched 15 s)' : `after ${back} ms`}, want within 15 s of unshaping`);
}

function judgeC(m, fail) {
  const a = m.patient.audioImpair;
  if (!(a.concealmentPct !== null && a.concealmentPct <= 5)) fail.push(`patient audio concealment ${a.concealmentPct} %, want <= 5 %`);
  judgeAudioNeverStops(m, 'patient', fail);
  const p = m.patient.videoPausedMs;
  if (!(p !== null && p <= 5_000)) fail.push(`patient got track-paused (video, reason 'bandwidth') ${p === null ? 'never' : `after ${p} ms`}, want within 5 s`);
  judgeVideoBack(m, 'patient', fail);
  judgeUnimpaired(m, 'doctor', fail);
}

function judgeD(m, fail) {
  const a = m.doctor.audioImpair;
  if (!(a.concealmentPct !== null && a.concealmentPct <= 2)) fail.push(`doctor audio concealment ${a.concealmentPct} %, want <= 2 %`);
  judgeSees(m.doctor.videoImpair, 'doctor', fail, { stallMs: null });
  judgeUnimpaired(m, 'patient', fail);
}

/** A custom scenario's judge: `viewer` is the side that sees and hears across the shaped link. */
function judgeCustom(viewer, m, fail) {
  judgeAudioNeverStops(m, viewer, fail);
  judgeVideoBack(m, viewer, fail);
  judgeUnimpaired(m, viewer === 'patient' ? 'doctor' : 'patient', fail);
}

// ----- one scenario ---------------------------------------------------------------------------------

async function runScenario(key, run) {
  const sc = SCENARIOS[key];
  const room = `weak-${key}-${process.pid}-${run}`;
  const started = Date.now();
  let doctor;
  let patient;
  let ok = false;
  try {
    await unshape();
    doctor = await openWatched(doctorBrowser, server, 'doctor');
    patient = await openWatched(patientBrowser, server, 'patient');
    // A scenario `fromJoin` shapes the link before the join (its one step) and starts its 30 s
    // once both see video; the others join on a good link and warm up first.
    const stepTimes = [];
    if (sc.fromJoin) {
      stepTimes.push(Date.now());
      await shape(sc.side, sc.steps[0]);
    }
    const tJoin = Date.now();
    // Each page plays the remote media from its join on, as an app does on the SDK's `track`
    // events: Chromium's jitter buffer fills while nothing plays the audio (~2 s after a join of
    // 3.5 s, drained over ~15 s, when the pages started playing only once both saw video).
    await joinCall(server, room, doctor, patient, { width: 1280, height: 720 }, { afterJoin: (p) => p.evaluate(instrument, { sampleMs: SAMPLE_MS }) });
    const joinedMs = Date.now() - started;
    // From the join to both seeing video (an upper bound for each side).
    const videoAfterJoinMs = Date.now() - tJoin;
    if (!sc.fromJoin) await sleep(WARM_MS);

    // The impairment: steps at their times, unshaped after IMPAIR_MS.
    const t0 = Date.now();
    if (!sc.fromJoin) {
      for (const st of sc.steps) {
        await sleep(Math.max(0, t0 + st.at - Date.now()));
        stepTimes.push(Date.now());
        await shape(sc.side, st);
      }
    }
    await sleep(Math.max(0, t0 + IMPAIR_MS - 500 - Date.now()));
    const shaping = await shapingCounters(sc.side); // just before unshaping: proves it applied
    await sleep(Math.max(0, t0 + IMPAIR_MS - Date.now()));
    await unshape(sc.side);
    const tU = Date.now();
    await sleep(sc.afterMs);
    const tEnd = Date.now();

    const got = {};
    for (const [name, p] of [['doctor', doctor], ['patient', patient]]) {
      got[name] = await p.evaluate(() => {
        clearInterval(window.weak.timer);
        return { samples: window.weak.samples, events: window.weak.events };
      });
    }
    const tStep = stepTimes[stepTimes.length - 1];
    const m = { doctor: {}, patient: {} };
    for (const [viewer, from] of [['doctor', PATIENT], ['patient', DOCTOR]]) {
      const { samples, events } = got[viewer];
      const v = series(samples, from, 'video');
      const a = series(samples, from, 'audio');
      const x = m[viewer];
      const vw = (from, to) => videoWindow(v, from, to, { sampledFreezes: BROWSER[viewer] === 'firefox' });
      x.videoBaseline = vw(t0 - BASELINE_MS, t0);
      x.audioBaseline = audioWindow(a, t0 - BASELINE_MS, t0);
      x.videoImpair = vw(t0, tU);
      x.audioImpair = audioWindow(a, t0, tU);
      x.videoAfter = vw(tU, tEnd);
      // A call shaped from its join: the publisher's own uplink estimate climbs at first, its
      // feedback crossing the weak link (SETTLE_MS).
      x.videoUnimpaired = sc.fromJoin ? vw(t0 + SETTLE_MS, tU) : x.videoImpair;
      x.audioAfter = audioWindow(a, tU, tEnd);
      if (key === 'b') {
        x.widthAtStep = at(v, tStep).width;
        x.lowerResolutionMs = firstDecodingWhere(v, tStep, tU, (p) => p.width > 0 && p.width < x.widthAtStep);
        x.videoAfterStep = vw(tStep, tU);
        x.audioAfterStep = audioWindow(a, tStep, Math.min(tU, tStep + 10_000));
      }
      x.wideAgainMs = firstDecodingWhere(v, tU, tEnd, (p) => p.width >= 640);
      x.videoBackMs = firstSecondWithFps(v, tU, tEnd, 15);
      const rel = (e) => ({ ...e, t: e.t - t0 });
      const adapt = events.filter((e) => ['track-paused', 'track-resumed', 'quality', 'track', 'track-removed', 'reconnecting', 'reconnected', 'error', 'play-error'].includes(e.type) && e.t >= t0 - BASELINE_MS);
      x.events = adapt.map((e) => {
        const r = rel(e);
        return `${r.t}ms ${r.type}${r.identity ? ` ${r.identity}` : ''}${r.kind ? ` ${r.kind}` : ''}${r.reason ? ` ${r.reason}` : ''}${r.level ? ` ${r.level}` : ''}${r.message ? ` ${r.message}` : ''}`;
      });
      const pausedVideo = events.find((e) => e.type === 'track-paused' && e.identity === from && e.kind === 'video' && e.reason === 'bandwidth' && e.t >= t0);
      x.videoPausedMs = pausedVideo ? pausedVideo.t - t0 : null;
      const resumed = events.find((e) => e.type === 'track-resumed' && e.identity === from && e.kind === 'video' && e.t >= t0);
      x.videoResumedAfterUnshapeMs = resumed ? resumed.t - tU : null;
      x.audioPausedEvents = events.filter((e) => e.type === 'track-paused' && e.identity === from && e.kind === 'audio' && e.t >= t0 && e.t <= tEnd).length;
      x.sending = outboundSummary(samples, t0, tU);
      const played = samples.filter((s) => s.t >= t0 && s.t <= tU).map((s) => s.playing[from]?.audio);
      x.audioElementPlaying = played.length > 0 && played.every(Boolean);
      x.samples = samples.filter((s) => s.t >= t0 && s.t <= tU).length;
    }
    m.shaping = shaping;
    m.stepAtMs = tStep - t0;
    m.unshapedAtMs = tU - t0;
    m.joinMs = joinedMs;
    m.videoAfterJoinMs = videoAfterJoinMs;
    m.scenarioMs = Date.now() - started;

    const fail = [];
    // Preconditions of a meaningful measurement: the audio was played, and the shaping applied.
    for (const viewer of ['doctor', 'patient']) {
      if (!m[viewer].audioElementPlaying) fail.push(`${viewer}: the remote audio was not playing in its <audio> element throughout`);
    }
    if (sc.steps.some((s) => s.lossPct > 0) && !(shaping.loss && shaping.loss.dropped > 0)) fail.push(`no packet dropped by the loss rule: ${JSON.stringify(shaping.loss)}`);
    if (!shaping.tbf) fail.push('no tbf qdisc on the shaped link');
    sc.judge(m, fail);
    // The level tells whose link is weak (issue 21): the doctor's, never impaired here, is not
    // `poor` or `lost` in anyone's view, from the join on (while the patient's link is shaped,
    // and while the patient's video ramps up: the doctor waits for its next layer then).
    for (const viewer of ['doctor', 'patient']) {
      const blamed = got[viewer].events.filter((e) => e.type === 'quality' && e.identity === DOCTOR && ['poor', 'lost'].includes(e.level) && e.t <= tEnd);
      if (blamed.length) fail.push(`${viewer} was told the doctor's link (not impaired) is ${blamed.map((e) => `${e.level} at ${e.t - t0} ms`).join(', ')}`);
    }

    const brief = (x) => ({
      fpsP50: x.videoImpair.fpsP50,
      fpsMin: x.videoImpair.fpsMin,
      widths: x.videoImpair.widths,
      minHeight: x.videoImpair.minHeight,
      stallMs: x.videoImpair.longestStallMs,
      freezes: x.videoImpair.freezeCount,
      freezesMs: x.videoImpair.freezesMs,
      maxFreezeMs: x.videoImpair.maxFreezeMs,
      videoKbps: x.videoImpair.kbps,
      concealPct: x.audioImpair.concealmentPct,
      jbMs: x.audioImpair.jitterBufferMs,
      jbMaxMs: x.audioImpair.jitterBufferMaxMs,
      ...(sc.fromJoin ? { settled: { fpsP50: x.videoUnimpaired.fpsP50, widths: x.videoUnimpaired.widths } } : {}),
      audioGapS: x.audioImpair.secondsWithoutPackets,
      audioSamplesPerSec: x.audioImpair.samplesPerSec,
      base: { fpsP50: x.videoBaseline.fpsP50, widths: x.videoBaseline.widths, concealPct: x.audioBaseline.concealmentPct, jbMs: x.audioBaseline.jitterBufferMs, videoKbps: x.videoBaseline.kbps },
      after: { fpsP50: x.videoAfter.fpsP50, widths: x.videoAfter.widths, stallMs: x.videoAfter.longestStallMs, wideAgainMs: x.wideAgainMs, videoBackMs: x.videoBackMs, concealPct: x.audioAfter.concealmentPct },
      ...(key === 'b'
        ? {
            step: {
              widthAtStep: x.widthAtStep,
              lowerResolutionMs: x.lowerResolutionMs,
              fpsP50: x.videoAfterStep.fpsP50,
              widths: x.videoAfterStep.widths,
              freezes: x.videoAfterStep.freezes,
              stallMs: x.videoAfterStep.longestStallMs,
              concealPct10s: x.audioAfterStep.concealmentPct,
              jbMs10s: x.audioAfterStep.jitterBufferMs,
            },
          }
        : {}),
      pausedMs: x.videoPausedMs,
      resumedAfterUnshapeMs: x.videoResumedAfterUnshapeMs,
      events: x.events,
      sendsWhileImpaired: x.sending,
      fpsPerSecond: x.videoImpair.fps.join(' '),
      jbMsPerSecond: x.audioImpair.jitterBufferPerSecond.join(' '),
      concealPctPerSecond: x.audioImpair.concealmentPerSecond.join(' '),
      baseJbMsPerSecond: x.audioBaseline.jitterBufferPerSecond.join(' '),
    });
    const summary = {
      scenario: key,
      run,
      browsers: BROWSER,
      bin: CONSULTA_BIN,
      title: sc.title,
      patientSees: brief(m.patient),
      doctorSees: brief(m.doctor),
      shaping: m.shaping,
      joinMs: m.joinMs,
      videoAfterJoinMs: m.videoAfterJoinMs,
      scenarioMs: m.scenarioMs,
      fail,
    };
    console.log(`weak-network ${key}: ${JSON.stringify(summary)}`);
    ok = true;
    return { summary, fail };
  } finally {
    await unshape().catch(() => {});
    if (!ok) {
      for (const p of [doctor, patient]) if (p) console.error(p.logs.slice(-30).join('\n'));
      console.error(server.tail());
    }
    await doctor?.close();
    await patient?.close();
  }
}

describe('weak networks (issue 21): the patient on a shaped link still sees and hears the doctor', () => {
  for (const key of selected) {
    for (let run = 1; run <= REPEAT; run++) {
      const sc = SCENARIOS[key];
      it(`${key}: ${sc.title}${REPEAT > 1 ? ` (run ${run})` : ''}`, { timeout: 180_000 }, async () => {
        const { fail } = await runScenario(key, run);
        assert.deepEqual(fail, [], `scenario ${key}: ${fail.length} target(s) missed`);
      });
    }
  }
});
