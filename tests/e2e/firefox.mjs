// Firefox participants for the end-to-end tests: Debian's stock firefox-esr driven by
// puppeteer-core 24 over WebDriver BiDi (Playwright cannot drive stock Firefox; Debian has no
// geckodriver; puppeteer 25 needs Node >= 22). The participant object has the same shape as
// harness.mjs's openParticipant(): join/stats/events/evaluate/leave/close, and runs the same
// in-page join code, so a test treats Chromium and Firefox alike.
//
// Offline, Firefox has no OpenH264: it offers VP8, VP9 and AV1 only, which is what the codec
// tests rely on (firefoxCodecs() reports what it actually offers).

import fs from 'node:fs';
import os from 'node:os';
import puppeteer from 'puppeteer-core';

import { joinInPage, tempDir } from './harness.mjs';

export const FIREFOX_BIN = process.env.FIREFOX_BIN || '/usr/bin/firefox-esr';

export function firefoxAvailable() {
  return fs.existsSync(FIREFOX_BIN);
}

/**
 * This machine's first non-loopback IPv4 address, or null. Firefox gathers no loopback candidate
 * (whatever its prefs say), so a server that Firefox joins advertises this one too:
 * startServer({ publicIps: ['127.0.0.1', lanIp()] }).
 */
export function lanIp() {
  for (const addrs of Object.values(os.networkInterfaces())) {
    for (const a of addrs || []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return null;
}

const FIREFOX_PREFS = {
  // A fake camera and microphone, granted without a prompt.
  'media.navigator.streams.fake': true,
  'media.navigator.permission.disabled': true,
  // The test server's media address is 127.0.0.1: gather loopback candidates, plain addresses.
  'media.peerconnection.ice.loopback': true,
  'media.peerconnection.ice.obfuscate_host_addresses': false,
  'media.peerconnection.ice.default_address_only': false,
  // Remote audio plays (and so counts concealment) without a user gesture.
  'media.autoplay.default': 0,
  'media.autoplay.blocking_policy': 0,
  // Nothing downloads in the background (OpenH264 included: the tests want stock offline Firefox).
  'media.gmp-manager.updateEnabled': false,
  'app.update.enabled': false,
  'browser.shell.checkDefaultBrowser': false,
  'datareporting.policy.dataSubmissionEnabled': false,
  'toolkit.telemetry.reportingpolicy.firstRun': false,
};

/**
 * Starts headless Firefox ESR with a fresh profile. `executablePath` replaces FIREFOX_BIN (e.g. a
 * wrapper that starts it in a network namespace); `extraPrefs` are added to FIREFOX_PREFS.
 */
export async function launchFirefox({ executablePath = FIREFOX_BIN, extraPrefs = {} } = {}) {
  return puppeteer.launch({
    browser: 'firefox',
    executablePath,
    headless: true,
    userDataDir: tempDir('consulta-firefox-'),
    extraPrefsFirefox: { ...FIREFOX_PREFS, ...extraPrefs },
    protocolTimeout: 60_000,
  });
}

/**
 * One Firefox participant on the server's demo origin (see harness.mjs openParticipant()).
 * `initScript`: a function run in the page before its own scripts.
 */
export async function openFirefoxParticipant(browser, server, name, { initScript } = {}) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`[${name}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[${name}] pageerror: ${e.message}`));
  if (initScript) await page.evaluateOnNewDocument(initScript);
  await page.goto(`${server.httpUrl}/demo`);
  return {
    name,
    browser: 'firefox',
    context,
    page,
    logs,
    join: (opts) => page.evaluate(joinInPage, { url: server.wsUrl, ...opts }),
    stats: () => page.evaluate(() => window.call.stats()),
    events: (type) => page.evaluate((t) => window.events.filter((e) => !t || e.type === t), type ?? null),
    evaluate: (fn, arg) => page.evaluate(fn, arg),
    leave: () => page.evaluate(() => window.call.leave()),
    close: async () => {
      await context.close().catch(() => {});
    },
  };
}

/** The video codecs this Firefox offers (mime subtypes, upper case). */
export async function firefoxCodecs(participant) {
  return participant.page.evaluate(() =>
    [...new Set(RTCRtpSender.getCapabilities('video').codecs.map((c) => c.mimeType.split('/')[1].toUpperCase()))].filter(
      (c) => !['RTX', 'RED', 'ULPFEC', 'FLEXFEC-03'].includes(c),
    ),
  );
}
