// End-to-end harness: a real `consulta serve` on loopback, real headless Chromium peers.
//
// startServer() writes a config into a fresh temp dir, starts the binary (target/release/consulta,
// or $CONSULTA_BIN), waits for /healthz and mints tokens with `consulta token`. launchBrowser()
// starts /usr/bin/chromium (or $CHROMIUM_BIN) with a fake 720p30 camera; each participant is a
// browser context with its own page, driving the SDK (/sdk/consulta.js) through page.evaluate.
// Everything is killed at the end, also when a test fails.

import { spawn, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '..', '..');

// Temp dirs of this test process: removed when it exits with success, kept (with the servers'
// logs in them) when a test failed, or always with KEEP_E2E_DIRS=1.
const TEMP_DIRS = [];
process.on('exit', (code) => {
  if (code !== 0 || process.env.KEEP_E2E_DIRS) return;
  for (const dir of TEMP_DIRS) fs.rmSync(dir, { recursive: true, force: true });
});

/** A fresh directory under the system temp dir, `prefix` + random; see TEMP_DIRS. */
export function tempDir(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  TEMP_DIRS.push(dir);
  return dir;
}

export const CONSULTA_BIN = process.env.CONSULTA_BIN || path.join(REPO, 'target', 'release', 'consulta');
export const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream=fps=30',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  '--autoplay-policy=no-user-gesture-required',
];

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value; throws with the last value after `timeout` ms. */
export async function pollUntil(fn, { timeout = 20_000, interval = 500, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  let lastErr;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() > deadline) {
      const detail = lastErr ? `last error: ${lastErr.message}` : `last value: ${JSON.stringify(last)}`;
      throw new Error(`timed out after ${timeout} ms waiting for ${what}; ${detail}`);
    }
    await sleep(interval);
  }
}

// ----- ports ----------------------------------------------------------------------------------------

export function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function udpPortFree(port) {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    s.once('error', () => resolve(false));
    s.bind(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/**
 * A port free for both TCP and UDP on 127.0.0.1 (the server may add ICE-TCP on the media port;
 * a TURN UDP port taken from freeTcpPort() alone once collided with another test file's media
 * socket, and that server exited with "Address already in use").
 */
export async function freeMediaPort(exclude) {
  for (let i = 0; i < 50; i++) {
    const port = await freeTcpPort();
    if (port !== exclude && (await udpPortFree(port))) return port;
  }
  throw new Error('no free UDP+TCP port');
}

// ----- server ---------------------------------------------------------------------------------------

const running = new Set();
process.on('exit', () => {
  for (const child of running) {
    try {
      child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
});

export function run(bin, args, { timeout = 15_000 } = {}) {
  return new Promise((resolve, reject) => {
    execFile(bin, args, { timeout, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) {
        err.message += `\n$ ${bin} ${args.join(' ')}\nstdout: ${stdout}\nstderr: ${stderr}`;
        reject(err);
      } else resolve({ stdout, stderr });
    });
  });
}

/**
 * Starts `consulta serve` with a fresh config and data dir. Returns
 * { httpUrl, wsUrl, dir, configPath, token(opts), stop(), log() }.
 */
// The server's address: loopback, or (scripts/netns-two-hosts.sh) a "server host" namespace.
const SERVER_IP = process.env.CONSULTA_SERVER_IP || '127.0.0.1';
const SERVER_NETNS = process.env.CONSULTA_NETNS_SERVER;

export async function startServer({ extraConfig = '', media = {}, httpPort: wantedHttpPort, restartOf, publicIps } = {}) {
  if (!fs.existsSync(CONSULTA_BIN)) {
    throw new Error(`server binary not found at ${CONSULTA_BIN} (build it with cargo build --release, or set CONSULTA_BIN)`);
  }
  // `restartOf`: a stopped server whose config, ports and data dir are used again.
  const dir = restartOf ? restartOf.dir : tempDir('consulta-e2e-');
  const httpPort = restartOf ? restartOf.httpPort : wantedHttpPort ?? (await freeTcpPort());
  const udpPort = restartOf ? restartOf.udpPort : await freeMediaPort(httpPort);
  let tcpPort = media.tcp_port;
  while (!restartOf && (tcpPort === undefined || tcpPort === httpPort || tcpPort === udpPort)) tcpPort = await freeTcpPort();
  const mediaExtra = Object.entries(media)
    .filter(([k]) => k !== 'tcp_port' && k !== 'workers')
    .map(([k, v]) => `${k} = ${JSON.stringify(v)}`);
  const configPath = path.join(dir, 'consulta.toml');
  if (!restartOf) fs.writeFileSync(
    configPath,
    [
      `data_dir = ${JSON.stringify(path.join(dir, 'data'))}`,
      '',
      '[http]',
      `listen = "${SERVER_IP}:${httpPort}"`,
      '',
      '[media]',
      `udp_port = ${udpPort}`,
      `tcp_port = ${tcpPort}`,
      // `publicIps`: more addresses to advertise (Firefox pairs no loopback candidate).
      `public_ips = ${JSON.stringify(publicIps ?? [SERVER_IP])}`,
      `workers = ${media.workers ?? process.env.CONSULTA_E2E_WORKERS ?? 2}`,
      ...mediaExtra,
      '',
      '[auth]',
      `token_secret = "${randomBytes(32).toString('hex')}"`,
      '',
      extraConfig,
    ].join('\n'),
  );
  // CONSULTA_E2E_SERVER_LOG=<file> keeps the server's log there (for debugging a run).
  const logPath = process.env.CONSULTA_E2E_SERVER_LOG || path.join(dir, 'server.log');
  const logFd = fs.openSync(logPath, 'a');
  const [cmd, argv] = SERVER_NETNS
    ? ['ip', ['netns', 'exec', SERVER_NETNS, CONSULTA_BIN, 'serve', '--config', configPath]]
    : [CONSULTA_BIN, ['serve', '--config', configPath]];
  const child = spawn(cmd, argv, {
    stdio: ['ignore', logFd, logFd],
    env: { RUST_LOG: 'info', ...process.env },
  });
  fs.closeSync(logFd);
  running.add(child);
  let exited = null;
  child.on('exit', (code, signal) => {
    exited = { code, signal };
    running.delete(child);
  });

  const httpUrl = `http://${SERVER_IP}:${httpPort}`;
  const log = () => (fs.existsSync(logPath) ? fs.readFileSync(logPath, 'utf8') : '');
  const tail = () => log().split('\n').slice(-40).join('\n');

  /** Kills the server without warning (a crash). */
  const kill = async () => {
    if (exited) return;
    child.kill('SIGKILL');
    while (!exited) await sleep(20);
  };

  const stop = async () => {
    if (exited) return;
    child.kill('SIGTERM');
    const deadline = Date.now() + 5_000;
    while (!exited && Date.now() < deadline) await sleep(50);
    if (!exited) child.kill('SIGKILL');
    while (!exited) await sleep(20);
  };

  try {
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (exited) throw new Error(`server exited early (${JSON.stringify(exited)})`);
      const ok = await fetch(`${httpUrl}/healthz`, { signal: AbortSignal.timeout(1_000) }).then(
        (res) => res.status === 200,
        () => false,
      );
      if (ok) break;
      if (Date.now() > deadline) throw new Error(`${httpUrl}/healthz did not answer 200 within 20 s`);
      await sleep(100);
    }
  } catch (e) {
    await stop();
    e.message += `\n--- server log (${logPath}) ---\n${tail()}`;
    throw e;
  }

  /** Mints a join token with the CLI. */
  const token = async ({ room, identity, role, ttl }) => {
    const args = ['token', '--config', configPath, '--room', room, '--identity', identity, '--role', role];
    if (ttl !== undefined) args.push('--ttl', String(ttl));
    const { stdout } = await run(CONSULTA_BIN, args);
    const lines = stdout.split('\n').map((l) => l.trim()).filter(Boolean);
    if (lines.length === 0) throw new Error(`consulta token printed nothing for ${identity}`);
    return lines[lines.length - 1];
  };

  /** Fresh TURN credentials from the CLI, as an RTCIceServer. */
  const turnCredentials = async (user = 'e2e') => {
    const { stdout } = await run(CONSULTA_BIN, ['turn-credentials', '--config', configPath, '--user', user]);
    return JSON.parse(stdout.trim().split('\n').pop());
  };

  return {
    httpUrl,
    turnCredentials,
    wsUrl: `ws://${SERVER_IP}:${httpPort}/ws`,
    ip: SERVER_IP,
    httpPort,
    udpPort,
    dir,
    configPath,
    token,
    stop,
    kill,
    log,
    tail,
    get exited() {
      return exited;
    },
  };
}

// ----- browser --------------------------------------------------------------------------------------

/**
 * Starts headless Chromium. `netns`: run it in that network namespace (through a wrapper that
 * execs `ip netns exec NETNS chromium`; Playwright drives it over a pipe, which the wrapper passes
 * on). `disableFeatures`: added to the one --disable-features flag (a second flag would replace
 * the first).
 */
export async function launchBrowser({ extraArgs = [], netns, disableFeatures = [] } = {}) {
  const args = [...CHROMIUM_ARGS, ...extraArgs];
  const features = [...disableFeatures];
  if (process.env.CONSULTA_E2E_SDK === 'disk') {
    // A document fulfilled by Playwright has no address space, so Chromium would treat its
    // WebSocket to 127.0.0.1 as a public->local request and block it.
    features.push('LocalNetworkAccessChecks');
  }
  const i = args.findIndex((a) => a.startsWith('--disable-features='));
  for (const f of features) if (!args[i].split(/[=,]/).includes(f)) args[i] += `,${f}`;
  let executablePath = CHROMIUM_BIN;
  if (netns) {
    executablePath = path.join(tempDir('consulta-netns-chromium-'), 'chromium');
    fs.writeFileSync(executablePath, `#!/bin/sh\nexec ip netns exec ${netns} ${CHROMIUM_BIN} "$@"\n`, { mode: 0o755 });
  }
  return chromium.launch({ executablePath, headless: true, args });
}

/**
 * One participant: a fresh browser context (camera/microphone granted) on the server's origin.
 * `join(opts)` connects through the SDK; the call lives on window.call, its events in
 * window.events.
 */
export async function openParticipant(browser, server, name, { initScript } = {}) {
  const context = await browser.newContext({ permissions: ['camera', 'microphone'] });
  // `initScript`: a function run in the page before its own scripts (e.g. to watch WebSockets).
  if (initScript) await context.addInitScript(initScript);
  if (process.env.CONSULTA_E2E_SDK === 'disk') {
    // Test the SDK and demo in this work tree rather than the copies compiled into the binary.
    const client = path.join(REPO, 'signaling', 'client');
    await context.route('**/sdk/consulta.js', (route) =>
      route.fulfill({ path: path.join(client, 'consulta.js'), contentType: 'text/javascript' }),
    );
    await context.route(/\/demo(\?.*)?$/, (route) =>
      route.fulfill({ path: path.join(client, 'demo.html'), contentType: 'text/html' }),
    );
  }
  const page = await context.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`[${name}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[${name}] pageerror: ${e.message}`));
  // The demo page without a token is a small form: an origin that serves the SDK as a module.
  await page.goto(`${server.httpUrl}/demo`);

  const participant = {
    name,
    context,
    page,
    logs,
    /** Connects; returns {ok:true, participant, participants} or {ok:false, code, message, name}. */
    join: (opts) => page.evaluate(joinInPage, { url: server.wsUrl, ...opts }),
    stats: () => page.evaluate(() => window.call.stats()),
    events: (type) => page.evaluate((t) => window.events.filter((e) => !t || e.type === t), type ?? null),
    participants: () =>
      page.evaluate(() =>
        [...window.call.participants.values()].map((p) => ({
          identity: p.identity,
          role: p.role,
          muted: p.muted,
          tracks: Object.keys(p.tracks),
        })),
      ),
    evaluate: (fn, arg) => page.evaluate(fn, arg),
    leave: () => page.evaluate(() => window.call.leave()),
    close: async () => {
      await context.close().catch(() => {});
    },
  };
  return participant;
}

// Runs in the page (exported for firefox.mjs, which runs it through puppeteer).
export async function joinInPage(opts) {
  const { connect, ConsultaError } = await import('/sdk/consulta.js');
  window.events = window.events || [];
  const record = (e) => window.events.push({ t: Date.now(), ...e });
  opts.onWaiting = () => record({ type: 'waiting' });
  try {
    const call = await connect(opts);
    window.call = call;
    call.on('participant-joined', (p) => record({ type: 'participant-joined', identity: p.identity, role: p.role }));
    call.on('participant-left', (p, reason) =>
      record({ type: 'participant-left', identity: p.identity, reason }),
    );
    call.on('track', ({ participant, kind, stream }) =>
      record({ type: 'track', identity: participant.identity, kind, streamTracks: stream.getTracks().length }),
    );
    call.on('mute', ({ participant, kind, muted }) =>
      record({ type: 'mute', identity: participant.identity, kind, muted }),
    );
    call.on('error', (e) => record({ type: 'error', code: e.code, fatal: e.fatal, message: e.message }));
    call.on('closed', (e) => record({ type: 'closed', reason: e.reason }));
    call.on('connection-state', (s) => record({ type: 'connection-state', state: s }));
    // Reconnection (issue 22): this call's own, and the other participants'.
    call.on('reconnecting', () => record({ type: 'reconnecting' }));
    call.on('reconnected', () => record({ type: 'reconnected' }));
    call.on('participant-reconnecting', (p) => record({ type: 'participant-reconnecting', identity: p && p.identity }));
    call.on('participant-reconnected', (p) => record({ type: 'participant-reconnected', identity: p && p.identity }));
    call.on('track-paused', ({ participant, kind, reason }) =>
      record({ type: 'track-paused', identity: participant.identity, kind, reason }),
    );
    call.on('quality', ({ participant, level, local }) =>
      record({ type: 'quality', identity: participant.identity, level, local }),
    );
    call.on('track-resumed', ({ participant, kind, reason }) =>
      record({ type: 'track-resumed', identity: participant.identity, kind, reason }),
    );
    return {
      ok: true,
      participant: call.participant,
      participants: [...call.participants.values()].map((p) => ({ identity: p.identity, role: p.role })),
    };
  } catch (e) {
    return {
      ok: false,
      code: e && e.code,
      message: e && e.message,
      isConsultaError: e instanceof ConsultaError,
    };
  }
}

// ----- media assertions -----------------------------------------------------------------------------

/**
 * The codec and scalability mode `who`'s camera goes out in now (`'video/VP9 L3T3_KEY'`), or null
 * before its first encoded frame.
 */
export function sendingMode(who) {
  return who.evaluate(async () => {
    const stats = await window.call._pc.getStats();
    const out = [...stats.values()].find((s) => s.type === 'outbound-rtp' && s.kind === 'video' && s.framesEncoded > 0);
    return out ? `${stats.get(out.codecId)?.mimeType} ${out.scalabilityMode}` : null;
  });
}

/** The inbound entries of `kind` from `from` in one stats sample. */
export function inboundFrom(stats, from, kind) {
  return stats.inbound.filter((s) => s.participant === from && s.kind === kind);
}

/**
 * Waits until `who` decodes video from `from` that satisfies `check` (e.g. 1280x720) and whose
 * framesDecoded grows between two samples. Returns {first, second, stats}.
 */
export async function waitForVideo(who, from, { width, height, codec, timeout = 20_000 } = {}) {
  const ok = (s) =>
    s.framesDecoded > 0 &&
    (width === undefined || s.frameWidth === width) &&
    (height === undefined || s.frameHeight === height) &&
    (codec === undefined || s.codec === codec);
  const first = await pollUntil(
    async () => inboundFrom(await who.stats(), from, 'video').find(ok),
    { timeout, what: `${who.name} to decode video from ${from} (${width ?? '*'}x${height ?? '*'} ${codec ?? ''})` },
  );
  let stats;
  const second = await pollUntil(
    async () => {
      stats = await who.stats();
      return inboundFrom(stats, from, 'video').find((s) => s.mid === first.mid && ok(s) && s.framesDecoded > first.framesDecoded);
    },
    { timeout: 10_000, what: `${who.name}'s framesDecoded from ${from} to grow past ${first.framesDecoded}` },
  );
  return { first, second, stats };
}

/** Waits until `who` receives audio from `from` whose bytesReceived grows between two samples. */
export async function waitForAudio(who, from, { timeout = 20_000 } = {}) {
  const first = await pollUntil(
    async () => inboundFrom(await who.stats(), from, 'audio').find((s) => s.bytesReceived > 0),
    { timeout, what: `${who.name} to receive audio from ${from}` },
  );
  const second = await pollUntil(
    async () =>
      inboundFrom(await who.stats(), from, 'audio').find(
        (s) => s.mid === first.mid && s.bytesReceived > first.bytesReceived,
      ),
    { timeout: 10_000, what: `${who.name}'s audio bytes from ${from} to grow past ${first.bytesReceived}` },
  );
  return { first, second };
}

/** Closes participants, printing their console logs when the test failed. */
/**
 * Resolves once `who` decodes video from `from` again, after its connection was lost or moved:
 * framesDecoded of some inbound video stream from `from` grows over 300 ms. `ready()` (optional)
 * must hold first, e.g. that the call is served by another node (frames still in an old jitter
 * buffer do not count).
 */
export async function decodingAgain(who, from, { ready = async () => true, timeout = 30_000 } = {}) {
  const frames = async () => {
    const s = (await who.stats()).inbound.filter((x) => x.participant === from && x.kind === 'video');
    return new Map(s.map((x) => [x.mid, x.framesDecoded || 0]));
  };
  await pollUntil(
    async () => {
      if (!(await ready())) return false;
      const before = await frames();
      await sleep(300);
      const now = await frames();
      return [...now].some(([mid, n]) => n > 0 && n > (before.get(mid) ?? 0));
    },
    { timeout, interval: 100, what: `${who.name} to decode ${from} again` },
  );
}

export async function closeAll(participants, { failed = false } = {}) {
  for (const p of participants) {
    if (!p) continue;
    if (failed && p.logs.length) console.error(p.logs.slice(-30).join('\n'));
    await p.close();
  }
}
