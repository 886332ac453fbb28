// The SDK's pure helpers (SDP bitrate hints, codec ordering, bitrate scaling) and its handling of
// server messages that needs no connection, run under Node: the module touches no browser global
// at import time. Needs neither server nor browser.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  Call,
  addVideoBitrateHints,
  orderCodecs,
  preferVideoCodec,
  signalingDead,
  simulcastEncodings,
  spatialHeights,
  spatialMode,
  version,
  videoMaxBitrate,
} from '../../signaling/client/consulta.js';

const HINTS = 'x-google-start-bitrate=1500;x-google-min-bitrate=100;x-google-max-bitrate=2500';

const ANSWER = [
  'v=0',
  'o=- 1 2 IN IP4 127.0.0.1',
  's=-',
  't=0 0',
  'a=group:BUNDLE 0 1',
  'm=audio 9 UDP/TLS/RTP/SAVPF 111',
  'c=IN IP4 0.0.0.0',
  'a=mid:0',
  'a=rtpmap:111 opus/48000/2',
  'a=fmtp:111 minptime=10;useinbandfec=1',
  'm=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 45',
  'c=IN IP4 0.0.0.0',
  'a=mid:1',
  'a=rtpmap:96 VP8/90000',
  'a=rtcp-fb:96 nack',
  'a=rtpmap:97 rtx/90000',
  'a=fmtp:97 apt=96',
  'a=rtpmap:102 H264/90000',
  'a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f;x-google-max-bitrate=800',
  'a=rtpmap:103 rtx/90000',
  'a=fmtp:103 apt=102',
  'a=rtpmap:45 AV1/90000',
  'a=fmtp:45 ',
  '',
].join('\r\n');

describe('addVideoBitrateHints', () => {
  const out = addVideoBitrateHints(ANSWER);
  const lines = out.split('\r\n');

  it('adds an fmtp line to a video codec that has none, right after its rtpmap', () => {
    const i = lines.indexOf('a=rtpmap:96 VP8/90000');
    assert.equal(lines[i + 1], `a=fmtp:96 ${HINTS}`);
  });

  it('appends to existing fmtp lines and replaces earlier x-google bitrates', () => {
    assert.ok(
      lines.includes(`a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f;${HINTS}`),
    );
    assert.ok(lines.includes(`a=fmtp:45 ${HINTS}`), 'an empty fmtp gets the hints');
  });

  it('leaves rtx, audio and the session part alone, and keeps CRLF and the final newline', () => {
    assert.ok(lines.includes('a=fmtp:97 apt=96'));
    assert.ok(lines.includes('a=fmtp:103 apt=102'));
    assert.ok(lines.includes('a=fmtp:111 minptime=10;useinbandfec=1'));
    assert.ok(out.endsWith('\r\n'));
    assert.equal(out.split('\n').length, ANSWER.split('\n').length + 1, 'exactly one line added');
    assert.equal(lines.filter((l) => l.includes('x-google-start-bitrate')).length, 3);
  });

  it('is idempotent', () => {
    assert.equal(addVideoBitrateHints(out), out);
  });

  it('scales with custom hints', () => {
    const big = addVideoBitrateHints(ANSWER, { start: 3375, min: 600, max: 5625 });
    assert.match(big, /a=fmtp:96 x-google-start-bitrate=3375;x-google-min-bitrate=600;x-google-max-bitrate=5625/);
  });
});

describe('preferVideoCodec', () => {
  it('moves the codec and its rtx to the front of the video m= line only', () => {
    const out = preferVideoCodec(ANSWER, 'H264');
    assert.ok(out.includes('\r\nm=video 9 UDP/TLS/RTP/SAVPF 102 103 96 97 45\r\n'), out);
    assert.ok(out.includes('\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n'));
    assert.equal(out.length, ANSWER.length, 'only the order changes');
  });

  it('leaves the SDP unchanged when the codec is first, absent, or not asked for', () => {
    assert.equal(preferVideoCodec(ANSWER, 'VP8'), ANSWER);
    assert.equal(preferVideoCodec(ANSWER, 'VP9'), ANSWER);
    assert.equal(preferVideoCodec(ANSWER, undefined), ANSWER);
  });

  it('matches case-insensitively and handles AV1 without rtx', () => {
    assert.ok(preferVideoCodec(ANSWER, 'av1').includes('m=video 9 UDP/TLS/RTP/SAVPF 45 96 97 102 103\r\n'));
  });
});

describe('orderCodecs', () => {
  const caps = [
    { mimeType: 'video/VP8', clockRate: 90000 },
    { mimeType: 'video/rtx', clockRate: 90000 },
    { mimeType: 'video/VP9', clockRate: 90000, sdpFmtpLine: 'profile-id=2' },
    { mimeType: 'video/VP9', clockRate: 90000, sdpFmtpLine: 'profile-id=0' },
    { mimeType: 'video/H264', clockRate: 90000, sdpFmtpLine: 'level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f' },
    { mimeType: 'video/H264', clockRate: 90000, sdpFmtpLine: 'level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f' },
    { mimeType: 'video/H264', clockRate: 90000, sdpFmtpLine: 'level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f' },
    { mimeType: 'video/AV1', clockRate: 90000 },
    { mimeType: 'video/red', clockRate: 90000 },
  ];

  it('puts H264 first, constrained baseline with packetization-mode=1 before the rest', () => {
    const out = orderCodecs(caps, 'H264');
    assert.equal(out.length, caps.length, 'nothing dropped (rtx, red stay)');
    assert.deepEqual(
      out.slice(0, 3).map((c) => c.sdpFmtpLine.match(/packetization-mode=(\d);profile-level-id=(\w+)/).slice(1).join('/')),
      ['1/42e01f', '1/4d001f', '0/42e01f'],
    );
    assert.deepEqual(out.slice(3).map((c) => c.mimeType), ['video/VP8', 'video/rtx', 'video/VP9', 'video/VP9', 'video/AV1', 'video/red']);
  });

  it('puts VP9 profile 0 first; matches case-insensitively', () => {
    const out = orderCodecs(caps, 'vp9');
    assert.deepEqual(out.slice(0, 2).map((c) => c.sdpFmtpLine), ['profile-id=0', 'profile-id=2']);
  });

  it('returns null when the browser lacks the codec (keep the default order)', () => {
    assert.equal(orderCodecs(caps.filter((c) => c.mimeType !== 'video/AV1'), 'AV1'), null);
    assert.equal(orderCodecs(caps, undefined), null);
  });
});

describe('videoMaxBitrate', () => {
  it('is 2.5 Mbit/s at 720p and scales with pixels', () => {
    assert.equal(videoMaxBitrate(1280, 720), 2_500_000);
    assert.equal(videoMaxBitrate(1920, 1080), 5_625_000);
    assert.equal(videoMaxBitrate(640, 360), 625_000);
    assert.equal(videoMaxBitrate(160, 90), 300_000, 'floor');
    assert.equal(videoMaxBitrate(undefined, undefined), 2_500_000);
  });

  it('simulcast layers go low to high, never below full size, none for small cameras', () => {
    const hd = simulcastEncodings(720, 2_500_000);
    assert.deepEqual(hd.map((e) => [e.rid, e.scaleResolutionDownBy, e.maxBitrate]), [
      ['q', 4, 150_000],
      ['h', 2, 500_000],
      ['f', 1, 2_500_000],
    ]);
    const sd = simulcastEncodings(360, 625_000);
    assert.deepEqual(sd.map((e) => [e.rid, e.scaleResolutionDownBy, e.maxBitrate]), [
      ['h', 2, 150_000],
      ['f', 1, 625_000],
    ]);
    assert.equal(simulcastEncodings(240, 300_000), null);
    for (const e of [...hd, ...sd]) assert.ok(e.scaleResolutionDownBy >= 1);
  });

  it('VP9 spatial layers: three from 540 lines, two from 360, not where the browser lists modes without it', () => {
    const chromium = [
      { mimeType: 'video/VP8', scalabilityModes: ['L1T1', 'L1T3'] },
      { mimeType: 'video/VP9', scalabilityModes: ['L1T1', 'L2T3_KEY', 'L3T3_KEY'] },
    ];
    assert.equal(spatialMode(720, chromium), 'L3T3_KEY');
    assert.equal(spatialMode(360, chromium), 'L2T3_KEY');
    assert.equal(spatialMode(240, chromium), null);
    // A browser that lists modes without this one is not asked; nor is one without VP9.
    assert.equal(spatialMode(720, [{ mimeType: 'video/VP9', scalabilityModes: ['L1T1', 'L1T3'] }]), null);
    assert.equal(spatialMode(720, chromium.slice(0, 1)), null);
    assert.equal(spatialMode(720, undefined), null);
    // One that lists none is asked (the sender's parameters then tell whether it kept it).
    assert.equal(spatialMode(720, [{ mimeType: 'video/VP9', sdpFmtpLine: 'profile-id=0' }]), 'L3T3_KEY');
    assert.deepEqual(spatialHeights(720, 'L3T3_KEY'), [180, 360, 720]);
    assert.deepEqual(spatialHeights(360, 'L2T3_KEY'), [180, 360]);
  });

  it('exports a version string', () => {
    assert.match(version, /^\d+\.\d+\.\d+/);
  });
});

describe('track-paused / track-resumed', () => {
  it('are emitted only when the state changes: a resumed session states every pause again', () => {
    const call = new Call({ token: 't' });
    call._participant('dr-ana');
    const seen = [];
    call.on('track-paused', ({ participant, kind, reason }) => seen.push(['paused', participant.identity, kind, reason]));
    call.on('track-resumed', ({ participant, kind }) => seen.push(['resumed', participant.identity, kind]));
    const msg = (type, reason = 'bandwidth') => call._dispatch({ type, identity: 'dr-ana', kind: 'video', reason });
    msg('track-resumed'); // stated after a resume: it never was paused
    msg('track-paused');
    msg('track-paused'); // stated again after a resume
    assert.equal(call.participants.get('dr-ana').paused.video, 'bandwidth');
    msg('track-paused', 'codec'); // another reason: a change
    msg('track-resumed');
    msg('track-resumed');
    assert.deepEqual(seen, [
      ['paused', 'dr-ana', 'video', 'bandwidth'],
      ['paused', 'dr-ana', 'video', 'codec'],
      ['resumed', 'dr-ana', 'video'],
    ]);
    assert.equal(call.participants.get('dr-ana').paused.video, null);
  });
});

describe('signaling silence', () => {
  it('is a dead WebSocket after 2.5 s, or after 6 s while media still arrives (a slow link)', () => {
    assert.equal(signalingDead(2_000, false), false);
    assert.equal(signalingDead(3_000, false), true);
    assert.equal(signalingDead(3_000, true), false);
    assert.equal(signalingDead(5_900, true), false);
    assert.equal(signalingDead(6_100, true), true);
  });

  it('reconnects on silence only when media stopped too, or the silence outlasts media', async () => {
    const judge = async (silentMs, media) => {
      const call = new Call({ token: 't' });
      call._resumeSecret = 's';
      call._lastFrameAt = Date.now() - silentMs;
      let asked = false;
      call._mediaFlowing = async () => {
        asked = true;
        return media;
      };
      const lost = [];
      call._connectionLost = (why) => lost.push(why);
      call._judgeSilence();
      call._judgeSilence(); // one judgement at a time
      await new Promise((r) => setTimeout(r, 10));
      return { lost, asked };
    };
    assert.deepEqual(await judge(3_000, true), { lost: [], asked: true });
    assert.deepEqual(await judge(3_000, false), { lost: ['signaling silent'], asked: true });
    // Past the longer timeout media is not even asked about.
    assert.deepEqual(await judge(7_000, true), { lost: ['signaling silent'], asked: false });
  });
});
