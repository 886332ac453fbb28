// Real calls through a real server: headless Chromium peers publish a fake 720p30 camera and
// Opus audio, and every test asserts on the receivers' getStats() numbers.
//
// Run: cd tests/e2e && npm ci && node --test --test-concurrency=1 .
// Needs target/release/consulta (or $CONSULTA_BIN) and /usr/bin/chromium (or $CHROMIUM_BIN).

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  launchBrowser,
  openParticipant,
  pollUntil,
  sleep,
  startServer,
  waitForAudio,
  waitForVideo,
} from './harness.mjs';

const HD = { width: 1280, height: 720 };
// Keeps three 720p encoders off a 2-core machine: the three-way call needs no HD to prove routing.
const SMALL = { width: 640, height: 360 };
const TEST_TIMEOUT = 120_000;

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

/** Runs `body(open)`; `open(name)` opens a participant page. Closes them all; dumps logs on failure. */
async function scenario(body) {
  const people = [];
  const open = async (name) => {
    const p = await openParticipant(browser, server, name);
    people.push(p);
    return p;
  };
  try {
    await body(open);
  } catch (e) {
    for (const p of people) if (p.logs.length) console.error(p.logs.slice(-30).join('\n'));
    console.error(`--- server log tail ---\n${server.tail()}`);
    throw e;
  } finally {
    for (const p of people) await p.close();
  }
}

let roomSeq = 0;
const newRoom = (label) => `${label}-${process.pid}-${++roomSeq}`;

async function joinAs(person, room, identity, role, opts = {}) {
  const token = await server.token({ room, identity, role });
  const res = await person.join({ token, ...opts });
  assert.equal(res.ok, true, `${identity} failed to join: ${res.code} ${res.message}`);
  assert.equal(res.participant?.identity, identity);
  assert.equal(res.participant?.role, role);
  return res;
}

function assertHealthyInbound(s, label) {
  assert.ok(s.packetsLost >= 0, `${label}: packetsLost is a count`);
  // Loopback: a few packets may be lost while the SFU starts forwarding, not more.
  assert.ok(s.packetsLost < 50, `${label}: ${s.packetsLost} packets lost on loopback`);
}

async function oneToOne(codec) {
  await scenario(async (open) => {
    const room = newRoom(`p2p-${codec}`);
    const doctor = await open('doctor');
    const patient = await open('patient');
    const media = { audio: true, video: HD };
    await joinAs(doctor, room, 'dr-ana', 'doctor', { media, preferredVideoCodec: codec });
    const res = await joinAs(patient, room, 'pt-joao', 'patient', { media, preferredVideoCodec: codec });
    assert.deepEqual(res.participants, [{ identity: 'dr-ana', role: 'doctor' }], 'joined lists the doctor');

    // Events and the participants map.
    await pollUntil(async () => (await doctor.events('participant-joined')).some((e) => e.identity === 'pt-joao'), {
      what: "doctor's participant-joined for pt-joao",
    });
    const [joinedEvent] = (await doctor.events('participant-joined')).filter((e) => e.identity === 'pt-joao');
    assert.equal(joinedEvent.role, 'patient');
    const docView = await doctor.participants();
    assert.deepEqual(
      docView.map((p) => [p.identity, p.role]),
      [['pt-joao', 'patient']],
    );

    // HD video both ways, growing; audio both ways, growing.
    for (const [who, from] of [
      [doctor, 'pt-joao'],
      [patient, 'dr-ana'],
    ]) {
      const { first, second } = await waitForVideo(who, from, { ...HD, codec });
      assert.equal(second.codec, codec, `${who.name} decodes ${codec}`);
      assert.equal(second.frameWidth, 1280);
      assert.equal(second.frameHeight, 720);
      assert.ok(second.framesDecoded > first.framesDecoded);
      assertHealthyInbound(second, `${who.name} video from ${from}`);
      const audio = await waitForAudio(who, from);
      assert.equal(audio.second.codec.toLowerCase(), 'opus');
      assert.ok(audio.second.bytesReceived > audio.first.bytesReceived);
      assertHealthyInbound(audio.second, `${who.name} audio from ${from}`);
    }

    // 'track' events carried one stream per participant holding audio and video.
    const tracks = await doctor.events('track');
    assert.deepEqual(
      [...new Set(tracks.filter((e) => e.identity === 'pt-joao').map((e) => e.kind))].sort(),
      ['audio', 'video'],
    );

    // Our encoder really sends 720p (its top simulcast layer), over a host UDP pair.
    const stats = await doctor.stats();
    const out = stats.outbound
      .filter((s) => s.kind === 'video')
      .sort((a, b) => b.frameWidth - a.frameWidth)[0];
    assert.ok(out && out.framesEncoded > 0, 'doctor encodes video');
    assert.equal(out.codec, codec);
    assert.equal(out.frameWidth, 1280);
    assert.ok(stats.candidatePair, 'a selected candidate pair');
    assert.equal(stats.candidatePair.localType, 'host');
    assert.equal(stats.candidatePair.remoteType, 'host', 'the server advertises a host candidate');
    assert.equal(stats.candidatePair.protocol, 'udp');

    // Mute is relayed.
    await patient.evaluate(() => window.call.setMuted('audio', true));
    await pollUntil(
      async () => (await doctor.events('mute')).some((e) => e.identity === 'pt-joao' && e.kind === 'audio' && e.muted),
      { what: "doctor's mute event for pt-joao's audio" },
    );
    const muted = (await doctor.participants()).find((p) => p.identity === 'pt-joao').muted;
    assert.deepEqual(muted, { audio: true, video: false });
  });
}

describe('consultation calls', { timeout: TEST_TIMEOUT * 10 }, () => {
  it('VP8 1:1 call: HD video and audio both ways', { timeout: TEST_TIMEOUT }, () => oneToOne('VP8'));

  it('H264 1:1 call: HD video and audio both ways', { timeout: TEST_TIMEOUT }, () => oneToOne('H264'));

  for (const codec of ['VP9', 'AV1']) {
    it(`${codec} 1:1 call: video decoded both ways`, { timeout: TEST_TIMEOUT }, () =>
      scenario(async (open) => {
        const room = newRoom(`codec-${codec}`);
        // Small frames: VP9/AV1 software encoders are costly on a 2-core machine.
        const media = { audio: true, video: SMALL };
        const doctor = await open('doctor');
        const patient = await open('patient');
        await joinAs(doctor, room, 'dr-ana', 'doctor', { media, preferredVideoCodec: codec });
        await joinAs(patient, room, 'pt-joao', 'patient', { media, preferredVideoCodec: codec });
        for (const [who, from] of [
          [doctor, 'pt-joao'],
          [patient, 'dr-ana'],
        ]) {
          const { second } = await waitForVideo(who, from, { codec });
          assert.equal(second.codec, codec, `${who.name} decodes ${codec}`);
          assert.equal(second.frameWidth, SMALL.width);
          assertHealthyInbound(second, `${who.name} video from ${from}`);
          await waitForAudio(who, from);
        }
      }),
    );
  }

  it('metrics show the call while it runs and return to zero after it', { timeout: TEST_TIMEOUT }, async () => {
    const scrape = async () => {
      const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
      const value = (name, labels = '') => {
        const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `));
        assert.ok(line, `metric ${name}${labels} is exported`);
        return Number(line.split(' ').pop());
      };
      return value;
    };
    // Earlier tests' rooms close as their pages go away.
    await pollUntil(async () => (await scrape())('consulta_rooms') === 0, { what: 'no room before the call' });
    await scenario(async (open) => {
      const room = newRoom('metrics');
      const media = { audio: true, video: SMALL };
      const doctor = await open('doctor');
      const patient = await open('patient');
      await joinAs(doctor, room, 'dr-ana', 'doctor', { media });
      await joinAs(patient, room, 'pt-joao', 'patient', { media });
      await waitForVideo(doctor, 'pt-joao');
      await waitForVideo(patient, 'dr-ana');
      const during = await scrape();
      assert.equal(during('consulta_rooms'), 1);
      assert.equal(during('consulta_participants'), 2);
      assert.equal(during('consulta_ws_connections'), 2);
      assert.equal(during('consulta_tracks', '{direction="publish",kind="video",codec="vp8"}'), 2);
      assert.equal(during('consulta_tracks', '{direction="subscribe",kind="audio",codec="opus"}'), 2);
      await sleep(1_000);
      const later = await scrape();
      const bytesIn = (m) => m('consulta_media_bytes_total', '{direction="in"}');
      const bytesOut = (m) => m('consulta_media_bytes_total', '{direction="out"}');
      assert.ok(bytesIn(later) > bytesIn(during), 'bytes in keep moving');
      assert.ok(bytesOut(later) > bytesOut(during), 'bytes out keep moving');
      assert.ok(later('consulta_rtp_forwarded_total') > during('consulta_rtp_forwarded_total'));
      // Bandwidth estimation is on: packets are timed through the pacer, and each video
      // subscriber's estimate is observed once a second.
      assert.ok(later('consulta_pacer_delay_seconds_count') > 0, 'pacer delay sampled');
      assert.ok(later('consulta_bandwidth_estimate_bps_count') > 0, 'estimates observed');
      assert.ok(
        later('consulta_pacer_delay_seconds_bucket', '{le="0.25"}') === later('consulta_pacer_delay_seconds_count'),
        'no packet waits 250 ms in the pacer on loopback',
      );
    });
    const after = await pollUntil(
      async () => {
        const m = await scrape();
        return m('consulta_rooms') === 0 && m('consulta_participants') === 0 && m('consulta_ws_connections') === 0 ? m : null;
      },
      { what: 'rooms and participants back to zero after the call' },
    );
    assert.equal(after('consulta_tracks', '{direction="publish",kind="video",codec="vp8"}'), 0);
  });

  it('three participants see each other; a guest who leaves is gone for the others', { timeout: TEST_TIMEOUT }, () =>
    scenario(async (open) => {
      const room = newRoom('three');
      const media = { audio: true, video: SMALL };
      const doctor = await open('doctor');
      const patient = await open('patient');
      const guest = await open('guest');
      await joinAs(doctor, room, 'dr-ana', 'doctor', { media });
      await joinAs(patient, room, 'pt-joao', 'patient', { media });
      await joinAs(guest, room, 'gu-maria', 'guest', { media });

      const everyone = [
        [doctor, 'dr-ana'],
        [patient, 'pt-joao'],
        [guest, 'gu-maria'],
      ];
      for (const [who, self] of everyone) {
        for (const [, other] of everyone) {
          if (other === self) continue;
          const { first, second } = await waitForVideo(who, other);
          assert.ok(first.framesDecoded > 0);
          assert.ok(second.framesDecoded > first.framesDecoded, `${self} decodes ${other}`);
        }
        const roles = (await who.participants()).map((p) => `${p.identity}:${p.role}`).sort();
        const expected = everyone
          .filter(([, id]) => id !== self)
          .map(([, id]) => `${id}:${{ 'dr-ana': 'doctor', 'pt-joao': 'patient', 'gu-maria': 'guest' }[id]}`)
          .sort();
        assert.deepEqual(roles, expected, `${self}'s participants`);
      }

      await guest.leave();
      for (const who of [doctor, patient]) {
        await pollUntil(
          async () => (await who.events('participant-left')).some((e) => e.identity === 'gu-maria'),
          { what: `${who.name}'s participant-left for the guest` },
        );
        const left = (await who.events('participant-left')).find((e) => e.identity === 'gu-maria');
        assert.equal(left.reason, 'left');
        const ids = (await who.participants()).map((p) => p.identity).sort();
        assert.deepEqual(ids, [who === doctor ? 'pt-joao' : 'dr-ana']);
      }
      // The two who stay still get media from each other.
      await waitForVideo(doctor, 'pt-joao');
      await waitForVideo(patient, 'dr-ana');
      const guestClosed = await guest.events('closed');
      assert.deepEqual(guestClosed.map((e) => e.reason), ['left']);
    }),
  );

  it('each remote track is offered once (one receiving transceiver per track)', { timeout: TEST_TIMEOUT }, () =>
    scenario(async (open) => {
      const room = newRoom('once');
      const media = { audio: true, video: SMALL };
      const doctor = await open('doctor');
      const patient = await open('patient');
      await joinAs(doctor, room, 'dr-ana', 'doctor', { media });
      await joinAs(patient, room, 'pt-joao', 'patient', { media });
      await waitForVideo(doctor, 'pt-joao');
      await waitForVideo(patient, 'dr-ana');
      for (const who of [doctor, patient]) {
        const receiving = await who.evaluate(() =>
          window.call.peerConnection
            .getTransceivers()
            .filter((t) => t.currentDirection === 'recvonly' || t.currentDirection === 'sendrecv')
            .map((t) => `${t.mid}:${t.receiver.track.kind}`),
        );
        assert.equal(receiving.length, 2, `${who.name} receives one audio and one video m-line, got ${receiving}`);
        const tracks = await who.events('track');
        assert.equal(tracks.length, 2, `${who.name} got one 'track' event per track: ${JSON.stringify(tracks)}`);
      }
    }),
  );

  it('rejects expired, mismatched and garbage tokens with their codes', { timeout: TEST_TIMEOUT }, () =>
    scenario(async (open) => {
      const p = await open('tokens');
      const room = newRoom('tokens');
      const noMedia = { media: false };

      const expired = await server.token({ room, identity: 'late', role: 'patient', ttl: 1 });
      await sleep(2_200);
      let res = await p.join({ token: expired, ...noMedia });
      assert.equal(res.ok, false, 'an expired token is refused');
      assert.equal(res.code, 'token_expired');
      assert.equal(res.isConsultaError, true);

      const forX = await server.token({ room: `${room}-X`, identity: 'pt', role: 'patient' });
      res = await p.join({ token: forX, room: `${room}-Y`, ...noMedia });
      assert.equal(res.code, 'token_room_mismatch', 'room in join');
      res = await p.join({ token: forX, url: `${server.wsUrl}?room=${room}-Y`, ...noMedia });
      assert.equal(res.code, 'token_room_mismatch', 'room in the URL');

      res = await p.join({ token: 'not.a.token', ...noMedia });
      assert.equal(res.code, 'token_invalid');

      // The same token with the right room is accepted (the refusals above were about the room).
      res = await p.join({ token: forX, room: `${room}-X`, ...noMedia });
      assert.equal(res.ok, true, `the right room is accepted: ${res.code} ${res.message}`);
      await p.leave();
    }),
  );

  it('a reconnect replaces the old session', { timeout: TEST_TIMEOUT }, () =>
    scenario(async (open) => {
      const room = newRoom('replace');
      const media = { audio: true, video: SMALL };
      const doctor = await open('doctor');
      const patientOld = await open('patient-old');
      await joinAs(doctor, room, 'dr-ana', 'doctor', { media });
      await joinAs(patientOld, room, 'pt-joao', 'patient', { media });
      await waitForVideo(doctor, 'pt-joao');

      const patientNew = await open('patient-new');
      await joinAs(patientNew, room, 'pt-joao', 'patient', { media });

      await pollUntil(
        async () => (await patientOld.events('error')).some((e) => e.code === 'session_replaced'),
        { what: 'the old session to get session_replaced' },
      );
      const err = (await patientOld.events('error')).find((e) => e.code === 'session_replaced');
      assert.equal(err.fatal, true);
      await pollUntil(async () => (await patientOld.events('closed')).length === 1, { what: 'the old call to close' });
      assert.equal(await patientOld.evaluate(() => window.call.closed), true);

      // Let any left/joined pair settle, then the doctor sees the patient exactly once.
      await sleep(1_000);
      const ids = (await doctor.participants()).map((p) => p.identity);
      assert.deepEqual(ids, ['pt-joao']);

      // The doctor decodes the new session (the old one stopped its camera), and vice versa.
      const { second } = await waitForVideo(doctor, 'pt-joao');
      assert.equal(second.frameWidth, SMALL.width);
      await waitForVideo(patientNew, 'dr-ana');
      const docVideoFromPatient = (await doctor.stats()).inbound.filter(
        (s) => s.participant === 'pt-joao' && s.kind === 'video',
      );
      assert.equal(docVideoFromPatient.length, 1, 'one live video stream from pt-joao');
    }),
  );

  it('demo page: doctor and patient see each other in HD', { timeout: TEST_TIMEOUT }, () =>
    scenario(async (open) => {
      const room = newRoom('demo');
      const doctor = await open('doctor-demo');
      const patient = await open('patient-demo');
      const dt = await server.token({ room, identity: 'dr-ana', role: 'doctor' });
      const pt = await server.token({ room, identity: 'pt-joao', role: 'patient' });

      await doctor.page.goto(`${server.httpUrl}/demo?token=${encodeURIComponent(dt)}`);
      await pollUntil(() => doctor.page.isVisible('#waiting'), { what: 'the waiting message while alone' });
      await patient.page.goto(`${server.httpUrl}/demo?token=${encodeURIComponent(pt)}`);

      for (const [who, remoteId, label] of [
        [doctor, 'pt-joao', 'Paciente'],
        [patient, 'dr-ana', 'Médico'],
      ]) {
        const size = await pollUntil(
          () =>
            who.page.evaluate((id) => {
              const v = document.querySelector(`video[data-remote][data-identity="${id}"]`);
              return v && v.videoWidth === 1280 ? [v.videoWidth, v.videoHeight] : null;
            }, remoteId),
          { what: `${who.name}'s remote <video> to show 1280 px wide` },
        );
        assert.deepEqual(size, [1280, 720]);
        const text = await who.page.textContent(`.tile[data-identity="${remoteId}"] .label`);
        assert.match(text, new RegExp(label));
        assert.equal(await who.page.isVisible('#waiting'), false, 'no waiting message with two');
        assert.equal(await who.page.isVisible('#error'), false, 'no error banner');
        assert.equal(await who.page.getAttribute('#state', 'data-state'), 'connected');
      }

      // A bad token shows the error banner with its code.
      const bad = await open('bad-demo');
      await bad.page.goto(`${server.httpUrl}/demo?token=garbage`);
      await pollUntil(() => bad.page.isVisible('#error'), { what: 'the error banner' });
      assert.match(await bad.page.textContent('#error'), /token_invalid/);
    }),
  );
});
