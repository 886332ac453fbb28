// Shared by the reconnection tests run through scripts/netns-roaming.sh (roaming, ws-cut, grace):
// the namespaces' layout, the patient's network changes, browsers launched in a namespace, the
// control API, a watch on Chromium's WebSockets and peer connections, and decoded-frame counters.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { inboundFrom, launchBrowser, openParticipant, sleep, startServer, tempDir, waitForVideo } from '../e2e/harness.mjs';

export const NS = {
  server: process.env.CONSULTA_NETNS_SERVER,
  doctor: process.env.ROAMING_NS_DOCTOR,
  patient: process.env.ROAMING_NS_PATIENT,
  id: process.env.ROAMING_ID,
};
export const SERVER_IP = process.env.CONSULTA_SERVER_IP;
export const API_KEY = 'e2e-roaming-api-key-0123456789';

export function assertInNamespaces() {
  assert.ok(NS.server && NS.doctor && NS.patient && NS.id && SERVER_IP && process.env.ROAMING_STATE_DIR, 'run through scripts/netns-roaming.sh');
}

/** Runs a command (ip, nft, ss: as root, from the server namespace); resolves with its stdout. */
export function sh(bin, args, { input } = {}) {
  return new Promise((resolve, reject) => {
    const child = execFile(bin, args, { encoding: 'utf8', timeout: 10_000 }, (err, stdout, stderr) => {
      if (err) {
        err.message += `\n$ ${bin} ${args.join(' ')}\n${stderr}`;
        reject(err);
      } else resolve(stdout);
    });
    if (input !== undefined) child.stdin.end(input);
  });
}

// New links get indexes that were never used in this namespace set (the subnet 10.203.<10+N>.0/24
// of a deleted link is not reused): the counter lives in a file, since each test file is its own
// process.
function nextLinkIndex() {
  const file = path.join(process.env.ROAMING_STATE_DIR, 'links');
  const n = (fs.existsSync(file) ? Number(fs.readFileSync(file, 'utf8')) : 0) + 1;
  assert.ok(n < 240, 'out of subnets');
  fs.writeFileSync(file, String(n));
  return n;
}

/** The patient namespace's veth links (names). */
export async function patientLinks() {
  const links = JSON.parse(await sh('ip', ['-n', NS.patient, '-j', 'link', 'show', 'type', 'veth']));
  return links.map((l) => l.ifname);
}

/** The patient's current IPv4 address (on its one link), or null without a link. */
export async function patientAddress() {
  const addrs = JSON.parse(await sh('ip', ['-n', NS.patient, '-j', '-4', 'addr', 'show', 'scope', 'global']));
  for (const a of addrs) for (const i of a.addr_info || []) if (i.family === 'inet') return i.local;
  return null;
}

async function addPatientLink() {
  const n = nextLinkIndex();
  const a = `${NS.id}r${n}a`;
  const b = `${NS.id}r${n}b`;
  const net = `10.203.${10 + n}`;
  // The runner is in the server namespace: `a` stays here, `b` goes to the patient.
  await sh('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b, 'netns', NS.patient]);
  await sh('ip', ['addr', 'add', `${net}.1/24`, 'dev', a]);
  await sh('ip', ['link', 'set', a, 'up']);
  await sh('ip', ['-n', NS.patient, 'addr', 'add', `${net}.2/24`, 'dev', b]);
  await sh('ip', ['-n', NS.patient, 'link', 'set', b, 'up']);
  return { link: b, gateway: `${net}.1`, address: `${net}.2` };
}

/**
 * The patient's phone leaves Wi-Fi for 4G: a new link with a new address comes up, the route to
 * the server moves onto it, and the old link (with its address) disappears.
 * Returns { t0 (ms, before the first change), t1 (the old link gone), from, to }.
 */
export async function roamPatient() {
  const old = await patientLinks();
  const from = await patientAddress();
  const t0 = Date.now();
  const next = await addPatientLink();
  await sh('ip', ['-n', NS.patient, 'route', 'replace', 'default', 'via', next.gateway, 'dev', next.link]);
  for (const l of old) await sh('ip', ['-n', NS.patient, 'link', 'del', l]);
  return { t0, t1: Date.now(), from, to: next.address };
}

/** The patient's network disappears for good (every link deleted). Returns the time. */
export async function dropPatientNetwork() {
  const t = Date.now();
  for (const l of await patientLinks()) await sh('ip', ['-n', NS.patient, 'link', 'del', l]);
  return t;
}

/** Gives the patient exactly one fresh link (and address) with the default route on it. */
export async function freshPatientNetwork() {
  for (const l of await patientLinks()) await sh('ip', ['-n', NS.patient, 'link', 'del', l]);
  const next = await addPatientLink();
  await sh('ip', ['-n', NS.patient, 'route', 'replace', 'default', 'via', next.gateway, 'dev', next.link]);
  return next.address;
}

/** The server on 10.203.0.1 in the server namespace, with a control API key. */
export function startRoamingServer({ extraConfig = '', media = {} } = {}) {
  return startServer({
    media: { bind_ip: SERVER_IP, ...media },
    extraConfig: ['[api]', `keys = ["${API_KEY}"]`, extraConfig].join('\n'),
  });
}

/** Chromium in a client namespace, allowed to use the camera on the server's plain-HTTP origin. */
export function launchIn(netns, server) {
  return launchBrowser({
    netns,
    extraArgs: [`--unsafely-treat-insecure-origin-as-secure=${server.httpUrl}`],
    disableFeatures: ['LocalNetworkAccessChecks'],
  });
}

// The wrapper that puppeteer starts as "Firefox": it runs Firefox in the namespace and relays its
// WebDriver BiDi WebSocket (which listens on the namespace's loopback) to the same port on this
// namespace's loopback, announcing it on stderr as Firefox would. Each relayed connection
// is a node child in the namespace piping the bytes through its stdio.
const FIREFOX_NETNS_WRAPPER = `
const { spawn } = require('node:child_process');
const net = require('node:net');
const readline = require('node:readline');
const [ns, firefox] = [process.env.WRAP_NETNS, process.env.WRAP_FIREFOX];
const relay = "const s=require('node:net').connect(Number(process.argv[1]),'127.0.0.1');process.stdin.pipe(s);s.pipe(process.stdout);s.on('close',()=>process.exit(0));s.on('error',()=>process.exit(1));";
const fx = spawn('ip', ['netns', 'exec', ns, firefox, ...process.argv.slice(2)], { stdio: ['ignore', 'inherit', 'pipe'] });
readline.createInterface({ input: fx.stderr }).on('line', (line) => {
  const m = /^WebDriver BiDi listening on ws:\\/\\/[^:/]+:(\\d+)/.exec(line);
  if (!m) return void process.stderr.write(line + '\\n');
  const inner = m[1];
  const server = net.createServer((sock) => {
    const r = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', relay, inner], { stdio: ['pipe', 'pipe', 'ignore'] });
    sock.on('error', () => r.kill());
    sock.on('close', () => r.kill());
    r.on('exit', () => sock.destroy());
    sock.pipe(r.stdin).on('error', () => {});
    r.stdout.pipe(sock);
  });
  // The same port: Firefox answers 400 to a Host header with another one.
  server.listen(Number(inner), '127.0.0.1', () => process.stderr.write('WebDriver BiDi listening on ws://127.0.0.1:' + inner + '\\n'));
});
fx.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(sig, () => fx.kill(sig));
`;

/**
 * Firefox ESR in a client namespace (puppeteer over WebDriver BiDi, as tests/e2e/firefox.mjs),
 * allowed the camera on the server's plain-HTTP origin (a LAN address, not a secure context).
 */
export async function launchFirefoxIn(netns) {
  const { FIREFOX_BIN, launchFirefox } = await import('../e2e/firefox.mjs');
  const dir = tempDir('consulta-netns-firefox-');
  const script = path.join(dir, 'wrap.cjs');
  fs.writeFileSync(script, FIREFOX_NETNS_WRAPPER);
  const exe = path.join(dir, 'firefox');
  fs.writeFileSync(exe, `#!/bin/sh\nWRAP_NETNS='${netns}' WRAP_FIREFOX='${FIREFOX_BIN}' exec '${process.execPath}' '${script}' "$@"\n`, { mode: 0o755 });
  return launchFirefox({
    executablePath: exe,
    extraPrefs: { 'media.devices.insecure.enabled': true, 'media.getusermedia.insecure.enabled': true },
  });
}

export async function api(server, method, p, body) {
  const res = await fetch(`${server.httpUrl}/api/v1${p}`, {
    method,
    headers: { Authorization: `Bearer ${API_KEY}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, body: await res.json() };
}

/** Every call event of consultation `id` (joining a room without a consultation creates one). */
export async function callEvents(server, id) {
  const items = [];
  let after;
  for (;;) {
    const r = await api(server, 'GET', `/consultations/${encodeURIComponent(id)}/events?limit=1000${after ? `&after=${after}` : ''}`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    items.push(...r.body.items);
    if (!r.body.next_after || r.body.items.length === 0) return items;
    after = r.body.next_after;
  }
}

/** The participant_joined / participant_left events of `identity`, as [{type, reason, session_id}]. */
export async function joinLeaveOf(server, id, identity) {
  return (await callEvents(server, id))
    .filter((e) => (e.type === 'participant_joined' || e.type === 'participant_left') && e.payload?.identity === identity)
    .map((e) => ({ type: e.type, reason: e.payload.reason, session_id: e.payload.session_id, at: e.at }));
}

// Runs in the page before its scripts: records what Chromium itself reports about the network,
// with timestamps, in window.netlog: WebSocket open/close/error, each peer connection's ICE and
// connection state and gathered candidates, online/offline and navigator.connection changes.
export function netWatch() {
  window.netlog = [];
  const log = (e) => window.netlog.push({ t: Date.now(), ...e });
  const WS = window.WebSocket;
  window.WebSocket = class extends WS {
    constructor(...a) {
      super(...a);
      log({ ev: 'ws-new' });
      this.addEventListener('open', () => log({ ev: 'ws-open' }));
      this.addEventListener('error', () => log({ ev: 'ws-error' }));
      this.addEventListener('close', (e) => log({ ev: 'ws-close', code: e.code, clean: e.wasClean }));
    }
  };
  const PC = window.RTCPeerConnection;
  let pcs = 0;
  window.RTCPeerConnection = class extends PC {
    constructor(...a) {
      super(...a);
      const n = ++pcs;
      log({ ev: 'pc-new', n });
      this.addEventListener('iceconnectionstatechange', () => log({ ev: 'ice', n, state: this.iceConnectionState }));
      this.addEventListener('connectionstatechange', () => log({ ev: 'pc', n, state: this.connectionState }));
      this.addEventListener('icegatheringstatechange', () => log({ ev: 'gathering', n, state: this.iceGatheringState }));
      this.addEventListener('icecandidate', (e) => log({ ev: 'candidate', n, c: e.candidate ? e.candidate.address + ' ' + e.candidate.type + ' ' + e.candidate.protocol : null }));
    }
  };
  window.addEventListener('online', () => log({ ev: 'online' }));
  window.addEventListener('offline', () => log({ ev: 'offline' }));
  if (navigator.connection) navigator.connection.addEventListener('change', () => log({ ev: 'connection-change', type: navigator.connection.type }));
}

/** openParticipant with netWatch installed; `netlog(since)` returns its records, times relative to `since`. */
export async function openWatched(browser, server, name) {
  // A Playwright browser is Chromium (launchIn); a puppeteer one Firefox (launchFirefoxIn).
  const open = typeof browser.newContext === 'function' ? openParticipant : (await import('../e2e/firefox.mjs')).openFirefoxParticipant;
  const p = await open(browser, server, name, { initScript: netWatch });
  p.netlog = async (since = 0) =>
    (await p.evaluate(() => window.netlog || [])).map((e) => ({ ...e, t: e.t - since }));
  p.eventsSince = async (since = 0) => (await p.events()).map((e) => ({ ...e, t: e.t - since }));
  return p;
}

/**
 * A monotonic count of the video frames `who` decoded from `from`, across peer connections: a
 * stream whose framesDecoded went down (a new peer connection) counts from zero again.
 */
/** Joins the doctor and the patient to `room` and waits until each decodes the other's video. */
export async function joinCall(server, room, doctor, patient, video, { afterJoin } = {}) {
  const media = { audio: true, video };
  // WEAK_SIMULCAST=0: both publish one layer (the SDK's `simulcast: false`), to compare.
  const simulcast = process.env.WEAK_SIMULCAST !== '0';
  // WEAK_VIDEO_CODEC=VP9: both prefer VP9 (Chromium then sends spatial layers, L3T3_KEY).
  const preferredVideoCodec = process.env.WEAK_VIDEO_CODEC || undefined;
  for (const [p, id, role] of [[doctor, 'dr-ana', 'doctor'], [patient, 'pt-joao', 'patient']]) {
    const res = await p.join({ token: await server.token({ room, identity: id, role }), media, simulcast, preferredVideoCodec });
    assert.equal(res.ok, true, `${id}: ${res.code} ${res.message}`);
    // E.g. what a page does on joining (plays the remote media as it comes), before the video.
    if (afterJoin) await afterJoin(p);
  }
  await waitForVideo(doctor, 'pt-joao', { timeout: 30_000 });
  await waitForVideo(patient, 'dr-ana', { timeout: 30_000 });
}

export class DecodedFrames {
  constructor(from) {
    this.from = from;
    this.last = new Map();
    this.total = 0;
  }
  add(stats) {
    for (const s of inboundFrom(stats, this.from, 'video')) {
      const prev = this.last.get(s.mid) ?? 0;
      this.total += s.framesDecoded >= prev ? s.framesDecoded - prev : s.framesDecoded;
      this.last.set(s.mid, s.framesDecoded);
    }
    return this.total;
  }
}

/**
 * Samples both sides' decoded frames every `interval` ms until `until()` says stop; returns
 * { doctor: [{t, n}], patient: [{t, n}] } (n: frames decoded from the other). A page that does
 * not answer (e.g. its browser was killed) gives no sample.
 */
export function sampleDecoding(doctor, patient, { interval = 150, stop }) {
  const sides = { doctor: { who: doctor, from: 'pt-joao' }, patient: { who: patient, from: 'dr-ana' } };
  const out = { doctor: [], patient: [] };
  const counters = { doctor: new DecodedFrames('pt-joao'), patient: new DecodedFrames('dr-ana') };
  const done = (async () => {
    while (!stop(out)) {
      const started = Date.now();
      await Promise.all(
        Object.entries(sides).map(async ([k, { who }]) => {
          const stats = await Promise.race([who.stats(), sleep(2_000).then(() => null)]).catch(() => null);
          if (stats) out[k].push({ t: Date.now(), n: counters[k].add(stats) });
        }),
      );
      await sleep(Math.max(0, interval - (Date.now() - started)));
    }
    return out;
  })();
  return { out, done };
}

/**
 * When did `samples` (after t0) show decoding again after a stall? null if it stalled and never
 * recovered; 0 if it never stalled in the first second (no interruption at all).
 */
export function recoveryAfter(samples, t0) {
  const after = samples.filter((s) => s.t >= t0);
  let stalledAt = null;
  for (let i = 1; i < after.length; i++) {
    const grew = after[i].n > after[i - 1].n;
    if (stalledAt === null) {
      if (!grew) stalledAt = after[i - 1].t;
      else if (after[i].t - t0 > 1_000) return 0;
    } else if (grew) return after[i].t - t0;
  }
  return null;
}

/**
 * The longest stretch in [from, to] over which `samples` did not grow: for every sample, the first
 * one at least `window` ms later must have a larger count. Returns { ok, worst: {at, ms} }.
 */
export function stallCheck(samples, from, to, window = 1_000) {
  const s = samples.filter((x) => x.t >= from && x.t <= to);
  let worst = { at: null, ms: 0 };
  let ok = true;
  for (let i = 0; i < s.length; i++) {
    const j = s.findIndex((x) => x.t >= s[i].t + window);
    if (j < 0) break;
    if (s[j].n <= s[i].n) ok = false;
    // The length of the flat stretch starting at i.
    let k = i;
    while (k + 1 < s.length && s[k + 1].n <= s[i].n) k++;
    const ms = s[k === i ? i : Math.min(k + 1, s.length - 1)].t - s[i].t;
    if (k > i && ms > worst.ms) worst = { at: s[i].t - from, ms };
  }
  return { ok, worst, samples: s.length };
}

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
