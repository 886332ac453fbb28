// Issue 21 in real Chromium: a doctor publishing simulcast (the SDK's default) is
// received by the patient as one layer, the full one on a good link, while the server drops the
// other two layers for it (consulta_rtp_dropped_total{reason="other_layer"}) and counts it on the
// top layer (consulta_layer_consumers); and audio is
// negotiated as RED (RFC 2198) on both legs, with the patient hearing the doctor.
//
// Run: cd tests/e2e && npm ci && node --test simulcast-red.test.mjs

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { inboundFrom, launchBrowser, openParticipant, pollUntil, startServer, waitForAudio, waitForVideo } from './harness.mjs';

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
});

async function metric(re) {
  const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
  const m = text.match(re);
  return m ? Number(m[1]) : 0;
}

/**
 * Opens a doctor (the SDK's default: simulcast; `doctorOptions` add to its join) and a patient
 * (one layer) in `room`, joins them as `dr` and `pt`, and runs `body(doctor, patient)`; prints
 * their logs and the server's if it fails.
 */
async function withPair(room, dr, pt, body, doctorOptions = {}) {
  const doctor = await openParticipant(browser, server, `doctor-${room}`);
  const patient = await openParticipant(browser, server, `patient-${room}`);
  try {
    for (const [p, identity, role, options] of [
      [doctor, dr, 'doctor', doctorOptions],
      [patient, pt, 'patient', { simulcast: false }],
    ]) {
      const res = await p.join({ token: await server.token({ room, identity, role }), ...options });
      assert.equal(res.ok, true, `${identity}: ${res.code} ${res.message}`);
    }
    await body(doctor, patient);
  } catch (e) {
    for (const p of [doctor, patient]) console.error(p.logs.slice(-30).join('\n'));
    console.error(`--- server log tail ---\n${server.tail()}`);
    throw e;
  } finally {
    await doctor.close();
    await patient.close();
  }
}

const droppedOtherLayer = () => metric(/^consulta_rtp_dropped_total\{reason="other_layer"\} (\d+)/m);
const onLayer = (layer) => metric(new RegExp(`^consulta_layer_consumers\\{layer="${layer}"\\} (\\d+)`, 'm'));

describe('simulcast and redundant audio', { timeout: 120_000 }, () => {
  it('the patient gets the full layer of a simulcast doctor, and audio is RED both ways', async () => {
    await withPair(`sim-${process.pid}`, 'dr-ana', 'pt-joao', async (doctor, patient) => {
      // The doctor sends three layers; the patient decodes one, at full size.
      const sent = await pollUntil(
        async () => {
          const n = await doctor.evaluate(async () => {
            const stats = await window.call._pc.getStats();
            return [...stats.values()].filter((s) => s.type === 'outbound-rtp' && s.kind === 'video' && s.rid && s.packetsSent > 0).length;
          });
          return n >= 3 ? n : null;
        },
        { timeout: 30_000, what: 'the doctor to send three simulcast layers' },
      );
      assert.equal(sent, 3);
      await waitForVideo(patient, 'dr-ana', { width: 1280, height: 720, timeout: 30_000 });
      const before = await droppedOtherLayer();
      await new Promise((r) => setTimeout(r, 2_000));
      const skipped = (await droppedOtherLayer()) - before;
      // Two lower layers at ~30 fps are not sent to the patient: well over 50 packets in 2 s.
      assert.ok(skipped > 50, `packets of other layers not forwarded in 2 s: ${skipped}`);
      // The consumers-per-layer gauge: the patient's one video track, on the top layer.
      assert.deepEqual(
        await Promise.all(['0', '1', '2', 'paused'].map(onLayer)),
        [0, 0, 1, 0],
        'consulta_layer_consumers by layer 0, 1, 2, paused',
      );
      // Still one decoded stream from the doctor, at 1280 wide.
      const again = await waitForVideo(patient, 'dr-ana', { width: 1280, height: 720 });
      assert.ok(again.second.framesDecoded > again.first.framesDecoded);
      // RED on both legs: the server's answer to the doctor, the patient's answer to the server.
      const doctorSdp = await doctor.evaluate(() => window.call._pc.remoteDescription.sdp);
      const patientSdp = await patient.evaluate(() => window.call._pc.localDescription.sdp);
      assert.match(doctorSdp, /a=rtpmap:\d+ red\/48000\/2/, 'the server takes RED from the doctor');
      assert.match(doctorSdp, /a=simulcast:recv q;h;f/, 'the server takes the three layers');
      assert.match(patientSdp, /a=rtpmap:\d+ red\/48000\/2/, 'the patient takes RED from the server');
      await waitForAudio(patient, 'dr-ana');
      await waitForAudio(doctor, 'pt-joao');
    });
  });

  // A subscriber that shows the doctor small (setVideoSize, as observeVideo does for a tile)
  // gets the lowest layer, and the doctor's browser stops encoding the two layers nobody shows
  // (publish-layers); lifting the size brings them and full size back.
  it('a small tile gets the lowest layer, and the doctor pauses the layers nobody shows', async () => {
    await withPair(`size-${process.pid}`, 'dr-bia', 'pt-rui', async (doctor, patient) => {
      const changes = () => metric(/^consulta_publish_layer_changes_total (\d+)/m);
      // The doctor's layers as its sender has them, and each layer's packets sent so far.
      const doctorLayers = () =>
        doctor.evaluate(async () => {
          const sender = window.call._pc.getSenders().find((s) => s.track && s.track.kind === 'video');
          const stats = await sender.getStats();
          const sent = {};
          for (const s of stats.values()) if (s.type === 'outbound-rtp' && s.rid) sent[s.rid] = s.packetsSent;
          return { active: sender.getParameters().encodings.map((e) => e.active), sent };
        });
      await waitForVideo(patient, 'dr-bia', { width: 1280, height: 720, timeout: 30_000 });
      const before = await changes();
      await patient.evaluate(() => window.call.setVideoSize('dr-bia', { width: 320, height: 180 }));
      // Down at once, at the lowest layer's keyframe: 320x180 (a quarter of 1280x720).
      await waitForVideo(patient, 'dr-bia', { width: 320, height: 180, timeout: 15_000 });
      // The wish holds 8 s before the doctor is told to pause layers h and f.
      const paused = await pollUntil(
        async () => {
          const l = await doctorLayers();
          return l.active.join() === 'true,false,false' ? l : null;
        },
        { timeout: 25_000, what: "the doctor's layers h and f to pause" },
      );
      assert.ok((await changes()) > before, 'consulta_publish_layer_changes_total grew');
      await new Promise((r) => setTimeout(r, 2_000));
      const later = await doctorLayers();
      // A 720p layer at 30 fps sends well over 100 packets in 2 s; a paused one none (a few in
      // flight at the change at most).
      assert.ok(later.sent.f - paused.sent.f < 10, `layer f packets in 2 s while paused: ${later.sent.f - paused.sent.f}`);
      assert.ok(later.sent.q - paused.sent.q > 30, `layer q keeps flowing: ${later.sent.q - paused.sent.q}`);
      const small = await waitForVideo(patient, 'dr-bia', { width: 320, height: 180 });
      assert.ok(small.second.framesDecoded > small.first.framesDecoded);
      // No preference again: the layers resume at once, and the patient climbs back to 720p.
      await patient.evaluate(() => window.call.setVideoSize('dr-bia', null));
      await pollUntil(
        async () => ((await doctorLayers()).active.join() === 'true,true,true' ? true : null),
        { timeout: 5_000, what: "the doctor's layers to resume" },
      );
      await waitForVideo(patient, 'dr-bia', { width: 1280, height: 720, timeout: 30_000 });
    });
  });
  // VP9 as spatial layers of one stream (Chromium's L3T3_KEY): the server forwards a subscriber
  // the layers up to its own, leaving the higher ones out of the numbering (no holes the
  // subscriber would count as lost) and marking the end of its top layer's frame as the
  // picture's end; down at the next picture, up at a keyframe.
  it('VP9 spatial layers: a small tile gets the lowest layer of the one stream, without loss', async () => {
    await withPair(
      `svc-${process.pid}`,
      'dr-caio',
      'pt-lia',
      async (doctor, patient) => {
        const sending = await pollUntil(
          async () => {
            const s = await doctor.evaluate(async () => {
              const stats = await window.call._pc.getStats();
              return [...stats.values()]
                .filter((s) => s.type === 'outbound-rtp' && s.kind === 'video' && s.packetsSent > 0)
                .map((s) => ({ mode: s.scalabilityMode, rid: s.rid, codec: stats.get(s.codecId)?.mimeType }));
            });
            return s.length > 0 ? s : null;
          },
          { timeout: 30_000, what: 'the doctor to send video' },
        );
        assert.deepEqual(sending, [{ mode: 'L3T3_KEY', rid: undefined, codec: 'video/VP9' }], 'one VP9 stream, three spatial layers');
        await waitForVideo(patient, 'dr-caio', { width: 1280, height: 720, codec: 'VP9', timeout: 30_000 });
        const inbound = async () => {
          const [s] = inboundFrom(await patient.stats(), 'dr-caio', 'video');
          return s;
        };
        await patient.evaluate(() => window.call.setVideoSize('dr-caio', { width: 320, height: 180 }));
        // Down at the next picture, no keyframe needed: layer 0 alone is 320x180.
        await waitForVideo(patient, 'dr-caio', { width: 320, height: 180, timeout: 15_000 });
        const skippedBefore = await droppedOtherLayer();
        const a = await inbound();
        await new Promise((r) => setTimeout(r, 3_000));
        const b = await inbound();
        const skipped = (await droppedOtherLayer()) - skippedBefore;
        // Layers 1 and 2 of every picture are left out: well over 50 packets in 3 s.
        assert.ok(skipped > 50, `packets of higher spatial layers not forwarded in 3 s: ${skipped}`);
        // Nothing is missing from the numbering, and every picture of layer 0 decodes (the fake
        // camera sends 30 fps; a 2-core machine encoding three layers may send fewer).
        const got = {
          framesDecoded: b.framesDecoded - a.framesDecoded,
          packetsLost: b.packetsLost - a.packetsLost,
          nackCount: b.nackCount - a.nackCount,
          skipped,
        };
        console.log(`# vp9 spatial, the patient on layer 0 for 3 s: ${JSON.stringify(got)}`);
        assert.equal(got.packetsLost, 0, 'packets lost in 3 s on loopback');
        assert.ok(got.nackCount <= 2, `NACKs sent in 3 s: ${got.nackCount}`);
        assert.ok(got.framesDecoded >= 30, `frames decoded in 3 s: ${got.framesDecoded}`);
        assert.equal(b.frameWidth, 320);
        // Up again at a keyframe: the full picture.
        await patient.evaluate(() => window.call.setVideoSize('dr-caio', null));
        await waitForVideo(patient, 'dr-caio', { width: 1280, height: 720, timeout: 30_000 });
        const c = await inbound();
        assert.ok(c.packetsLost - a.packetsLost <= 2, `packets lost over the two changes: ${c.packetsLost - a.packetsLost}`);
      },
      { preferredVideoCodec: 'VP9' },
    );
  });
});
