// Consulta browser SDK: joins a consultation room on a Consulta SFU.
//
// Plain ES module, no build step; served by the server at GET /sdk/consulta.js. It speaks the
// signaling protocol of docs/protocol.md over one WebSocket and drives one RTCPeerConnection
// (bundle, Unified Plan). The client offers once (its local tracks, or a data channel when it
// sends nothing); every later negotiation is offered by the server and answered here, one at a
// time, so the two sides never glare.
//
//   import { connect } from '/sdk/consulta.js';
//   const call = await connect({ url: 'wss://host/ws', token });
//   call.on('track', ({ participant, kind, stream }) => video.srcObject = stream);
//
// The module touches no browser global at import time, so its pure helpers (SDP munging, codec
// ordering) can be unit-tested under Node.

export const version = '0.1.0';

const SDK_NAME = 'consulta-js/1';
const PROTOCOL_VERSION = 1;
// Once in a call the server is pinged every second and a silence of 2.5 s means the WebSocket is
// dead: after a network change (a phone leaving Wi-Fi) Chromium keeps the old connection open
// and says nothing (no close, no `offline`), and ICE takes 5-7 s to notice. A false alarm costs
// one resume on a new connection; media goes on meanwhile.
const PING_INTERVAL_MS = 1_000;
const SILENCE_TIMEOUT_MS = 2_500;
// A silence while media still arrives is a slow path, not a dead one: on a 150 kbit/s downlink
// with 5 % loss and ~0.8 s queued (weak-network scenario c) the WebSocket's TCP went silent for
// 2.5 s and more while audio played, and the SDK emitted `reconnecting` (3 of 4 Firefox runs).
// After a network change the old path carries no media either: still found at 2.5 s.
const SILENCE_WITH_MEDIA_TIMEOUT_MS = 6_000;
const WATCH_INTERVAL_MS = 500;
// Reconnection: jittered exponential backoff between attempts, and the default give-up time.
const RECONNECT_MIN_DELAY_MS = 250;
const RECONNECT_MAX_DELAY_MS = 4_000;
/** Longest wait between tries while the server answers but the call is not back yet. */
const RECONNECT_REACHABLE_DELAY_MS = 1_000;
const RECONNECT_TIMEOUT_MS = 60_000;
const RESUME_TIMEOUT_MS = 5_000;
// ICE 'disconnected' for this long (it may heal by itself) before an ICE restart is asked for.
const ICE_DISCONNECTED_RESTART_MS = 1_500;
// After asking for an ICE restart, how long before asking again.
const ICE_RESTART_RETRY_MS = 5_000;
const JOIN_TIMEOUT_MS = 15_000;
/** observeVideo(): how long an element's size must settle before the server is told. */
const VIDEO_SIZE_DEBOUNCE_MS = 300;
/** Most `moved` redirects one join follows (cluster mode: a room lives on one node). */
const MAX_MOVES = 3;
/** Failed attempts at the node's own URL before reconnecting through the public one. */
const NODE_URL_ATTEMPTS = 2;
const ANSWER_TIMEOUT_MS = 15_000;
const LEAVE_GRACE_MS = 1_000;

// 720p gets 2.5 Mbit/s; other sizes scale with the pixel count.
const HD_PIXELS = 1280 * 720;
const HD_MAX_BITRATE = 2_500_000;
const MIN_MAX_BITRATE = 300_000;
const MAX_MAX_BITRATE = 8_000_000;
// Start/min/max hints (kbit/s) so the encoder sends HD from the first seconds instead of ramping
// up from 300 kbit/s over ~10 s. The floor is low: on a weak uplink, or when the server asks for
// less because a subscriber's downlink is weak (REMB), the encoder must be free to go down.
const HD_BITRATE_HINTS = { start: 1500, min: 100, max: 2500 };

const DEFAULT_VIDEO = { width: 1280, height: 720, frameRate: 30 };

/** The frame height that fits a `bitrate-cap` (bits/s; null: no cap) at a fluid frame rate. */
function capHeight(cap) {
  if (!cap) return Infinity;
  if (cap < 250_000) return 180;
  if (cap < 700_000) return 360;
  if (cap < 1_200_000) return 540;
  return Infinity;
}
const VIDEO_CODECS = ['VP8', 'VP9', 'H264', 'AV1'];

/** Error carrying the stable protocol `code` (e.g. `token_expired`). */
export class ConsultaError extends Error {
  constructor(code, message, { fatal = false, cause } = {}) {
    super(message || code, cause === undefined ? undefined : { cause });
    this.name = 'ConsultaError';
    this.code = code;
    this.fatal = fatal;
  }
}

/**
 * Joins a room and publishes local media. Resolves once the server's answer to our offer is
 * applied (media may still be connecting); rejects with a ConsultaError whose `code` is the
 * server's error code (token_expired, token_room_mismatch, room_full, ...) or a client code
 * (connection_failed, connection_closed, timeout, media_error, negotiation_failed).
 */
export async function connect(options) {
  const call = new Call(options || {});
  try {
    await call._start();
  } catch (err) {
    call._teardown({ reason: err && err.code ? err.code : 'connect_failed', silent: true });
    throw err;
  }
  return call;
}

/**
 * A promise's settle functions that give up with a `timeout` error after `ms` unless settled
 * (or `cancelDeadline()` is called) first.
 */
function withDeadline(resolve, reject, ms, what) {
  const timer = setTimeout(() => reject(new ConsultaError('timeout', what)), ms);
  return {
    resolve: (m) => {
      clearTimeout(timer);
      resolve(m);
    },
    reject: (e) => {
      clearTimeout(timer);
      reject(e);
    },
    cancelDeadline: () => clearTimeout(timer),
  };
}

export class Call {
  constructor(options) {
    if (!options.token) throw new ConsultaError('bad_options', 'connect(): `token` is required');
    this.options = options;
    /** identity -> participant (everyone but us) */
    this.participants = new Map();
    this.localStream = null;
    /** our own {identity, role} from `joined` */
    this.participant = null;
    this.sessionId = null;
    /** The cluster node serving the call (from `joined`), or null on a single server. */
    this.node = null;
    this.iceServers = [];
    this.connectionState = 'new';
    this.closed = false;
    this.muted = { audio: false, video: false };
    /** identity -> {identity, role}: who waits for a doctor to admit them (doctors only). */
    this.waitingRoom = new Map();
    /** The consultation's recording state: {active, requested, waitingFor, reason}. */
    this.recording = { active: false, requested: false, waitingFor: [], reason: null };
    /** Whether we consented to being recorded. */
    this.recordingConsent = false;

    this._listeners = new Map();
    this._ws = null;
    this._pc = null;
    this._pingTimer = null;
    this._negotiation = Promise.resolve();
    this._pendingAnswer = null; // {resolve, reject} while our offer waits for the server's answer
    this._joinWaiter = null; // {resolve, reject} until `joined`
    this._leftWaiter = null;
    this._midMap = new Map(); // mid -> {identity, kind}, from the offer being/last applied
    this._queuedMaps = []; // maps of offers received but not applied yet
    this._attached = new Map(); // mid -> {participant, kind, track}
    this._announced = new WeakSet(); // participants for which 'participant-joined' fired / joined listed
    this._localCandidates = [];
    this._offerSent = false;
    this._videoHints = HD_BITRATE_HINTS;
    this._maxVideoBitrate = HD_MAX_BITRATE;
    this._videoCap = null; // bits/s asked by the server (`bitrate-cap`) for a weak subscriber
    this._layerHeights = null; // our simulcast (or VP9 spatial) layers' heights, lowest first
    this._svc = false; // video sent as VP9 spatial layers of one encoding now
    this._svcMode = null; // the spatial mode our VP9 takes (null: no spatial layers)
    this._publishMax = null; // the highest simulcast layer the server wants sent (null: all)
    this._videoSizes = new Map(); // identity -> {width, height} we show its video at
    this._observers = new Set(); // stop functions of observeVideo()
    this._url = null;
    this._resumeSecret = null; // from `joined`: proves a resume is this session
    this._resumeWaiter = null; // {resolve, reject} while a resume waits for `resumed`
    this._reconnecting = false;
    this._leaving = false;
    this._lastFrameAt = 0;
    this._judgingSilence = false;
    this._iceTimer = null;
    this._iceRestartAskedAt = 0;
    this._unsentMute = new Set(); // kinds whose mute state could not be sent (no connection)
    this._onNetworkChange = () => this._networkChanged();
  }

  // ----- events -------------------------------------------------------------------------------

  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return this;
  }

  off(event, fn) {
    const set = this._listeners.get(event);
    if (set) set.delete(fn);
    return this;
  }

  once(event, fn) {
    const wrapper = (...args) => {
      this.off(event, wrapper);
      fn(...args);
    };
    return this.on(event, wrapper);
  }

  _emit(event, ...args) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      // A throwing listener must not break the SDK or the other listeners.
      try {
        const r = fn(...args);
        if (r && typeof r.catch === 'function') r.catch((e) => reportListenerError(event, e));
      } catch (e) {
        reportListenerError(event, e);
      }
    }
  }

  // ----- public API ---------------------------------------------------------------------------

  /** The RTCPeerConnection (for diagnostics). */
  get peerConnection() {
    return this._pc;
  }

  async setMuted(kind, muted) {
    if (kind !== 'audio' && kind !== 'video') {
      throw new ConsultaError('bad_options', `setMuted(): kind must be 'audio' or 'video'`);
    }
    muted = !!muted;
    this.muted[kind] = muted;
    if (this.localStream) {
      for (const t of this.localStream.getTracks()) if (t.kind === kind) t.enabled = !muted;
    }
    if (this._send({ type: 'mute', kind, muted })) this._unsentMute.delete(kind);
    else this._unsentMute.add(kind);
  }

  async leave() {
    if (this.closed) return;
    this._leaving = true;
    const left = new Promise((resolve) => {
      this._leftWaiter = resolve;
      setTimeout(resolve, LEAVE_GRACE_MS);
    });
    if (this._send({ type: 'leave' })) await left;
    this._teardown({ reason: 'left' });
  }

  async stats() {
    const pc = this._pc;
    const result = { inbound: [], outbound: [], candidatePair: null };
    if (!pc || pc.signalingState === 'closed') return result;
    const report = await pc.getStats();
    const byId = new Map();
    report.forEach((s) => byId.set(s.id, s));
    const codecName = (id) => {
      const c = id && byId.get(id);
      if (!c || !c.mimeType) return null;
      return c.mimeType.replace(/^(video|audio)\//i, '');
    };
    const trackMid = new Map();
    for (const t of pc.getTransceivers()) {
      if (t.mid != null && t.receiver && t.receiver.track) trackMid.set(t.receiver.track.id, t.mid);
    }
    let transportPairId = null;
    for (const s of byId.values()) {
      if (s.type === 'inbound-rtp') {
        const mid = s.mid != null ? s.mid : trackMid.get(s.trackIdentifier);
        const entry = this._midMap.get(mid);
        // Streams of tracks the server no longer sends (a participant who left or was replaced)
        // are left out: their frozen counters would hide the live ones.
        if (mid != null && !entry) continue;
        const kind = s.kind || s.mediaType;
        result.inbound.push({
          participant: entry ? entry.identity : null,
          kind,
          mid: mid ?? null,
          codec: codecName(s.codecId),
          framesDecoded: num(s.framesDecoded),
          framesReceived: num(s.framesReceived),
          framesDropped: num(s.framesDropped),
          frameWidth: num(s.frameWidth),
          frameHeight: num(s.frameHeight),
          framesPerSecond: num(s.framesPerSecond),
          packetsReceived: num(s.packetsReceived),
          packetsLost: num(s.packetsLost),
          bytesReceived: num(s.bytesReceived),
          jitter: num(s.jitter),
          nackCount: num(s.nackCount),
          pliCount: num(s.pliCount),
          keyFramesDecoded: num(s.keyFramesDecoded),
        });
      } else if (s.type === 'outbound-rtp') {
        result.outbound.push({
          kind: s.kind || s.mediaType,
          mid: s.mid ?? null,
          rid: s.rid ?? null,
          codec: codecName(s.codecId),
          framesEncoded: num(s.framesEncoded),
          frameWidth: num(s.frameWidth),
          frameHeight: num(s.frameHeight),
          framesPerSecond: num(s.framesPerSecond),
          packetsSent: num(s.packetsSent),
          bytesSent: num(s.bytesSent),
          targetBitrate: num(s.targetBitrate),
          qualityLimitationReason: s.qualityLimitationReason ?? null,
          nackCount: num(s.nackCount),
          pliCount: num(s.pliCount),
        });
      } else if (s.type === 'transport' && s.selectedCandidatePairId) {
        transportPairId = s.selectedCandidatePairId;
      }
    }
    let pair = transportPairId ? byId.get(transportPairId) : null;
    if (!pair) {
      for (const s of byId.values()) {
        if (s.type === 'candidate-pair' && s.state === 'succeeded' && (s.nominated || s.selected)) {
          pair = s;
          break;
        }
      }
    }
    if (pair) {
      const local = byId.get(pair.localCandidateId) || {};
      const remote = byId.get(pair.remoteCandidateId) || {};
      result.candidatePair = {
        localType: local.candidateType ?? null,
        remoteType: remote.candidateType ?? null,
        protocol: local.protocol ?? remote.protocol ?? null,
        relayProtocol: local.relayProtocol ?? null,
        localAddress: local.address ?? local.ip ?? null,
        localPort: local.port ?? null,
        remoteAddress: remote.address ?? remote.ip ?? null,
        remotePort: remote.port ?? null,
        currentRoundTripTime: pair.currentRoundTripTime ?? null,
        availableOutgoingBitrate: pair.availableOutgoingBitrate ?? null,
      };
    }
    return result;
  }

  // ----- connect ------------------------------------------------------------------------------

  async _start() {
    const o = this.options;
    this._publicUrl = o.url || defaultUrl();
    this._url = this._publicUrl;
    await this._openSocket(this._url);
    const joined = await this._joinFollowing();
    this._onJoined(joined);

    // Our one offer goes first in the negotiation queue, queued now (synchronously after
    // `joined`) so that any server offer, even one arriving while the camera starts, waits
    // behind it.
    const setup = this._setupMedia(joined);
    setup.catch(() => {}); // awaited below; never an unhandled rejection if the call closes first
    await this._enqueue(async () => {
      await setup;
      await this._publish();
    });
    if (this.closed) throw new ConsultaError('connection_closed', 'the call closed while starting');
  }

  async _setupMedia(joined) {
    const o = this.options;
    // A rebuilt call keeps the media it already has: no second camera prompt.
    const stream = this.localStream || (await this._getLocalMedia());
    if (this.closed) {
      if (stream && !o.localStream) for (const t of stream.getTracks()) t.stop();
      throw new ConsultaError('connection_closed', 'the call closed while starting');
    }
    this.localStream = stream;
    // An app's own non-empty list wins; absent or empty means the server's fresh TURN credentials.
    const iceServers = o.iceServers && o.iceServers.length ? o.iceServers : joined.ice_servers || [];
    this.iceServers = iceServers;
    const pc = new RTCPeerConnection({
      iceServers,
      iceTransportPolicy: o.iceTransportPolicy || 'all',
      bundlePolicy: 'max-bundle',
    });
    this._pc = pc;
    this._wirePeerConnection(pc);
    this._addLocalTracks(pc);
  }

  _openSocket(url) {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(url);
      } catch (e) {
        reject(new ConsultaError('connection_failed', `cannot open ${url}: ${e.message}`, { cause: e }));
        return;
      }
      this._ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        this._lastFrameAt = Date.now();
        resolve();
      };
      ws.onerror = () => {
        if (!opened) reject(new ConsultaError('connection_failed', `WebSocket to ${url} failed`));
      };
      ws.onclose = (ev) => {
        if (!opened) {
          reject(new ConsultaError('connection_failed', `WebSocket to ${url} closed (${ev.code})`));
          return;
        }
        // A socket this call already replaced says nothing about the call.
        if (ws === this._ws) this._onSocketClosed(ev);
      };
      ws.onmessage = (ev) => {
        if (ws !== this._ws) return;
        this._lastFrameAt = Date.now();
        this._onMessage(ev.data);
      };
    });
  }

  /**
   * `join` on the open socket; a `moved` answer (cluster mode: the room lives on another node)
   * opens that node's socket and joins there, at most MAX_MOVES times. Later reconnections go
   * to that node first.
   */
  async _joinFollowing() {
    for (let hops = 0; ; hops++) {
      try {
        return await this._join();
      } catch (e) {
        if (!e || e.code !== 'moved' || !e.url) throw e;
        if (hops >= MAX_MOVES) {
          throw new ConsultaError('too_many_redirects', `moved more than ${MAX_MOVES} times`, { fatal: true });
        }
        try {
          await this._openSocket(e.url);
        } catch (openErr) {
          // The room's node is not reachable (it may have just died): the next try goes
          // through the public URL again, where a live node takes the room over.
          this._url = this._publicUrl;
          throw openErr;
        }
        this._url = e.url;
      }
    }
  }

  _join() {
    return new Promise((resolve, reject) => {
      const waiter = withDeadline(resolve, reject, JOIN_TIMEOUT_MS, 'no `joined` from the server');
      // In the waiting room there is no deadline: a doctor admits when ready.
      this._joinWaiter = { ...waiter, waiting: waiter.cancelDeadline };
      const join = {
        type: 'join',
        v: PROTOCOL_VERSION,
        token: this.options.token,
        client: {
          sdk: SDK_NAME,
          ua: typeof navigator !== 'undefined' ? navigator.userAgent : '',
          heartbeat_ms: PING_INTERVAL_MS,
        },
      };
      if (this.options.room != null) join.room = this.options.room;
      this._send(join);
      // Consent given up front (e.g. on the app's consent screen) goes right after the join.
      if (this.options.recordingConsent === true) this.setRecordingConsent(true);
    });
  }

  _onJoined(m, announce = false) {
    this.sessionId = m.session_id ?? null;
    this.node = m.node ?? null;
    this.participant = m.participant ?? null;
    this._resumeSecret = m.resume_secret ?? null;
    this._syncParticipants(m.participants || [], announce);
    this.waiting = false;
    this._startPing();
    if (typeof window !== 'undefined' && window.addEventListener) {
      window.addEventListener('online', this._onNetworkChange);
    }
    const conn = typeof navigator !== 'undefined' ? navigator.connection : null;
    if (conn && conn.addEventListener) conn.addEventListener('change', this._onNetworkChange);
  }

  /**
   * Makes `participants` (a `joined` or `resumed` list) the room: the ones missing leave, the new
   * ones join, the others get their mute state. `announce`: emit events for the differences.
   */
  _syncParticipants(list, announce) {
    const present = new Set();
    for (const info of list) {
      if (!info || !info.identity) continue;
      present.add(info.identity);
      const known = this.participants.get(info.identity);
      const wasAnnounced = known && this._announced.has(known);
      const p = this._participant(info.identity, info);
      p.reconnecting = false;
      this._announced.add(p);
      if (announce && !wasAnnounced) this._emit('participant-joined', p);
    }
    if (!announce) return;
    for (const [identity, p] of [...this.participants]) {
      if (present.has(identity) || !this._announced.has(p)) continue;
      this._removeParticipant(p, 'left');
    }
  }

  _removeParticipant(p, reason) {
    this.participants.delete(p.identity);
    for (const [mid, a] of [...this._attached]) if (a.participant === p) this._detach(mid);
    p.reason = reason ?? null;
    p.left = true;
    this._emit('participant-left', p, p.reason);
  }

  _startPing() {
    if (this._pingTimer) return;
    let lastPing = 0;
    this._pingTimer = setInterval(() => {
      if (this._reconnecting || this.closed) return;
      const now = Date.now();
      if (now - lastPing >= PING_INTERVAL_MS) {
        lastPing = now;
        this._send({ type: 'ping' });
      }
      // Joined and silent for too long: the connection is dead though no error said so.
      if (this._resumeSecret && now - this._lastFrameAt > SILENCE_TIMEOUT_MS) this._judgeSilence();
    }, WATCH_INTERVAL_MS);
  }

  /** The server has been silent past SILENCE_TIMEOUT_MS: lost, unless media still arrives. */
  _judgeSilence() {
    if (this._judgingSilence) return;
    this._judgingSilence = true;
    const silent = () => Date.now() - this._lastFrameAt;
    const long = silent() > SILENCE_WITH_MEDIA_TIMEOUT_MS;
    (long ? Promise.resolve(false) : this._mediaFlowing({ strict: true }))
      .then((media) => {
        if (this._reconnecting || this.closed) return;
        if (signalingDead(silent(), media)) this._connectionLost('signaling silent');
      })
      .finally(() => {
        this._judgingSilence = false;
      });
  }

  // ----- reconnection -------------------------------------------------------------------------

  /** The browser says its network changed: check the path now rather than wait for timeouts. */
  _networkChanged() {
    if (this.closed || this._reconnecting || !this._resumeSecret) return;
    if (!this._send({ type: 'ping' })) {
      this._connectionLost('network changed');
      return;
    }
    this._askIceRestart(true);
  }

  /** Signaling or media is lost for good: reconnect, unless reconnection is off. */
  _connectionLost(why) {
    if (this.closed || this._leaving) return;
    const timeout = this._reconnectTimeout();
    if (!this._resumeSecret || timeout <= 0) {
      this._teardown({ reason: 'disconnected' });
      return;
    }
    if (this._reconnecting) return;
    this._reconnecting = true;
    const old = this._ws;
    this._ws = null;
    if (old && (old.readyState === 0 || old.readyState === 1)) {
      try {
        old.close(4000, 'reconnecting');
      } catch (e) {
        /* already closing */
      }
    }
    this.connectionState = 'reconnecting';
    this._emit('connection-state', 'reconnecting');
    this._emit('reconnecting', { reason: why });
    this._reconnectLoop(Date.now() + timeout).catch((e) => {
      this._teardown({ reason: (e && e.code) || 'reconnect_failed' });
    });
  }

  _reconnectTimeout() {
    const t = this.options.reconnectTimeout;
    if (t === false) return 0;
    return typeof t === 'number' && t >= 0 ? t : RECONNECT_TIMEOUT_MS;
  }

  async _reconnectLoop(deadline) {
    let delay = RECONNECT_MIN_DELAY_MS;
    // The server refused to resume (or moved the room): only a new join will do.
    let rejoin = !!this._forceRejoin;
    this._forceRejoin = false;
    let nodeFailures = 0;
    for (let attempt = 0; !this.closed; attempt++) {
      if (attempt > 0) {
        // Full jitter: many clients of one restarted proxy do not come back in step.
        await sleep(delay / 2 + Math.random() * (delay / 2));
        delay = Math.min(delay * 2, RECONNECT_MAX_DELAY_MS);
      }
      if (this.closed) return;
      if (Date.now() > deadline) throw new ConsultaError('reconnect_failed', 'could not reconnect in time');
      try {
        await this._openSocket(this._url);
        // A server answers: what fails now is the resume or the join (e.g. a room whose dead
        // node's lease has not lapsed yet), so keep trying often.
        delay = Math.min(delay, RECONNECT_REACHABLE_DELAY_MS);
      } catch (e) {
        // The network is not back yet, or (cluster mode) the node died: after a few tries
        // the public URL reaches a live node, which takes the room over.
        if (this._url !== this._publicUrl && ++nodeFailures >= NODE_URL_ATTEMPTS) this._url = this._publicUrl;
        continue;
      }
      let resumed;
      try {
        if (!rejoin) resumed = await this._resume();
      } catch (e) {
        if (!e || (e.code !== 'resume_refused' && e.code !== 'connection_lost' && e.code !== 'moved')) {
          this._dropSocket();
          continue;
        }
        // The server no longer holds this session: join again as a new one.
        rejoin = true;
        this._dropSocket();
        await this._openSocket(this._url).catch(() => {});
      }
      if (rejoin) {
        try {
          await this._rejoin();
        } catch (e) {
          if (e && e.fatal) throw e; // e.g. the token expired: nothing more to try
          this._dropSocket();
          continue;
        }
        this._reconnected();
        return;
      }
      this._syncParticipants(resumed.participants || [], true);
      for (const kind of [...this._unsentMute]) {
        if (this._send({ type: 'mute', kind, muted: this.muted[kind] })) this._unsentMute.delete(kind);
      }
      // The old path may look up (ICE notices a dead path only after seconds) while nothing
      // arrives on it: restart unless media is seen flowing.
      if (!iceUp(this._pc) || !(await this._mediaFlowing())) this._askIceRestart(true);
      await this._waitForIce(deadline);
      this._reconnected();
      return;
    }
  }

  _reconnected() {
    if (this.closed) return;
    this._reconnecting = false;
    this.connectionState = this._pc ? this._pc.connectionState : 'connected';
    this._emit('connection-state', this.connectionState);
    this._emit('reconnected');
  }

  _dropSocket() {
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      try {
        ws.close(4000, 'retry');
      } catch (e) {
        /* ignore */
      }
    }
  }

  _resume() {
    return new Promise((resolve, reject) => {
      this._resumeWaiter = withDeadline(resolve, reject, RESUME_TIMEOUT_MS, 'no `resumed` from the server');
      const sent = this._send({
        type: 'resume',
        v: PROTOCOL_VERSION,
        session_id: this.sessionId,
        secret: this._resumeSecret,
      });
      if (!sent) this._resumeWaiter.reject(new ConsultaError('connection_closed', 'signaling closed'));
    }).finally(() => {
      this._resumeWaiter = null;
    });
  }

  /**
   * Whether media arrives now: bytes received on the peer connection grow within ~0.3 s. With
   * no remote track to receive, ICE's own state is all there is to go by (`strict`: no).
   */
  async _mediaFlowing({ strict = false } = {}) {
    const pc = this._pc;
    if (!pc || this._attached.size === 0) return !strict && iceUp(pc);
    const received = async () => {
      let bytes = 0;
      (await pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp') bytes += num(s.bytesReceived);
      });
      return bytes;
    };
    try {
      const before = await received();
      await sleep(300);
      return (await received()) > before;
    } catch (e) {
      return !strict && iceUp(pc);
    }
  }

  /** Resolves once ICE is up and media arrives again (asking for restarts meanwhile), or at the deadline. */
  async _waitForIce(deadline) {
    while (!this.closed && Date.now() < deadline) {
      if (!this._ws || this._ws.readyState !== 1) return; // the socket broke: the heartbeat retries
      if (iceUp(this._pc) && (await this._mediaFlowing())) return;
      this._askIceRestart(false);
      await sleep(100);
    }
  }

  /** Asks the server for an ICE restart offer (at most every few seconds unless `now`). */
  _askIceRestart(now) {
    if (!this._pc || this.closed) return;
    const t = Date.now();
    if (!now && t - this._iceRestartAskedAt < ICE_RESTART_RETRY_MS) return;
    if (this._send({ type: 'restart-ice' })) this._iceRestartAskedAt = t;
  }

  /** The session is gone on the server: a new peer connection and a new join, same media. */
  async _rejoin() {
    for (const mid of [...this._attached.keys()]) this._detach(mid);
    if (this._pc) {
      try {
        this._pc.close();
      } catch (e) {
        /* closed */
      }
    }
    this._pc = null;
    this._offerSent = false;
    this._localCandidates = [];
    this._queuedMaps = [];
    this._midMap = new Map();
    this._negotiation = Promise.resolve();
    this._resumeSecret = null;
    this._publishMax = null; // a new peer connection sends every layer
    const joined = await this._joinFollowing();
    this._onJoined(joined, true);
    await this._enqueue(async () => {
      await this._setupMedia(joined);
      await this._publish();
    });
    this._unsentMute.clear();
    for (const kind of ['audio', 'video']) if (this.muted[kind]) this._send({ type: 'mute', kind, muted: true });
    if (this.recordingConsent) this._send({ type: 'recording-consent', consent: true });
  }

  /** Fresh TURN credentials from the server: used from now on, and at once if relayed. */
  async _applyIceServers(list) {
    if (!Array.isArray(list) || (this.options.iceServers && this.options.iceServers.length)) return;
    this.iceServers = list;
    const pc = this._pc;
    if (!pc || this.closed) return;
    try {
      pc.setConfiguration({ ...pc.getConfiguration(), iceServers: list });
    } catch (e) {
      console.warn('consulta: setConfiguration failed', e);
      return;
    }
    // A relayed path holds an allocation made with the old credentials: restart ICE onto new
    // allocations before those expire. A direct path needs nothing.
    const { candidatePair } = await this.stats();
    if (candidatePair && candidatePair.localType === 'relay') this._askIceRestart(true);
  }

  /**
   * Gives (`true`) or withdraws (`false`) this participant's consent to be recorded. Recording
   * runs only while everyone present has consented; withdrawing stops it at once.
   */
  setRecordingConsent(consent) {
    if (typeof consent !== 'boolean') {
      throw new ConsultaError('bad_options', 'setRecordingConsent(): pass true or false');
    }
    this.recordingConsent = consent;
    this._send({ type: 'recording-consent', consent });
  }

  /**
   * Tells the server the size (CSS pixels) at which `participant`'s video is shown, so that it
   * forwards no simulcast layer much larger (a thumbnail gets 180p, not 720p; `{width: 0,
   * height: 0}`: hidden); `null` lifts the preference. Kept across reconnections.
   */
  setVideoSize(participant, size) {
    const identity = typeof participant === 'string' ? participant : participant && participant.identity;
    if (typeof identity !== 'string' || !identity) {
      throw new ConsultaError('bad_options', 'setVideoSize(): pass a participant or its identity');
    }
    if (size === null || size === undefined) {
      this._videoSizes.delete(identity);
      if (this._pc) this._send({ type: 'video-size', identity });
      return;
    }
    const ok = (n) => typeof n === 'number' && Number.isFinite(n) && n >= 0;
    if (!size || !ok(size.width) || !ok(size.height)) {
      throw new ConsultaError('bad_options', 'setVideoSize(): size is {width, height} in pixels, or null');
    }
    const dpr = (typeof window !== 'undefined' && window.devicePixelRatio) || 1;
    const px = (n) => Math.min(16384, Math.round(n * dpr));
    this._videoSizes.set(identity, { width: px(size.width), height: px(size.height) });
    this._sendVideoSize(identity);
  }

  _sendVideoSize(identity) {
    const s = this._videoSizes.get(identity);
    // Before the call (waiting room) the server would refuse it: sent when the track comes.
    if (s && this._pc) this._send({ type: 'video-size', identity, width: s.width, height: s.height });
  }

  /**
   * Follows the size of the `<video>` element that shows `participant`'s video
   * ([setVideoSize] on every change, debounced): returns a function that stops following
   * and lifts the preference.
   */
  observeVideo(participant, element) {
    if (!element || typeof ResizeObserver === 'undefined') return () => {};
    let timer = null;
    const update = () => {
      timer = null;
      if (this.closed) return;
      this.setVideoSize(participant, { width: element.clientWidth, height: element.clientHeight });
    };
    const ro = new ResizeObserver(() => {
      if (timer === null) timer = setTimeout(update, VIDEO_SIZE_DEBOUNCE_MS);
    });
    ro.observe(element);
    const stop = () => {
      if (!this._observers.delete(stop)) return;
      ro.disconnect();
      if (timer !== null) clearTimeout(timer);
      if (!this.closed) this.setVideoSize(participant, null);
    };
    this._observers.add(stop);
    return stop;
  }

  /** Doctors: lets `identity` in from the waiting room. */
  async admit(identity) {
    this._send({ type: 'admit', identity });
  }

  async _getLocalMedia() {
    const o = this.options;
    if (o.localStream) return o.localStream;
    const media = o.media === undefined ? {} : o.media;
    if (media === false) return null;
    const audio = media.audio === undefined ? true : media.audio;
    let video = media.video === undefined ? true : media.video;
    if (video === true) video = { ...DEFAULT_VIDEO };
    else if (video && typeof video === 'object') video = { frameRate: DEFAULT_VIDEO.frameRate, ...video };
    if (!audio && !video) return null;
    try {
      return await navigator.mediaDevices.getUserMedia({ audio, video });
    } catch (e) {
      throw new ConsultaError('media_error', `getUserMedia failed: ${e && e.name}: ${e && e.message}`, {
        cause: e,
      });
    }
  }

  _addLocalTracks(pc) {
    const stream = this.localStream;
    const tracks = stream ? stream.getTracks() : [];
    if (tracks.length === 0) {
      // Receive-only: a data channel keeps our offer valid.
      pc.createDataChannel('consulta');
      return;
    }
    for (const track of tracks) {
      if (track.kind === 'video') {
        const s = typeof track.getSettings === 'function' ? track.getSettings() : {};
        this._maxVideoBitrate = videoMaxBitrate(s.width, s.height);
        this._videoHints = videoBitrateHints(s.width, s.height);
        // Simulcast unless the app says `simulcast: false`; VP9 as spatial layers of one
        // stream where the browser encodes them (the server forwards each subscriber the layers
        // up to its own), else one layer; AV1 as one layer (its layers are described by an RTP
        // header extension the server does not negotiate).
        const preferred = this.options.preferredVideoCodec || '';
        const layered = this.options.simulcast !== false;
        const svcCodec = /^(VP9|AV1)$/i.test(preferred);
        const mode = layered && /^VP9$/i.test(preferred) ? spatialMode(s.height, senderCodecs()) : null;
        const layers = layered && !svcCodec ? simulcastEncodings(s.height, this._maxVideoBitrate) : null;
        this._simulcast = !!layers;
        const one = { maxBitrate: this._maxVideoBitrate };
        if (mode) one.scalabilityMode = mode;
        const tr = pc.addTransceiver(track, {
          direction: 'sendonly',
          streams: [stream],
          sendEncodings: layers || [one],
        });
        // A browser that cannot encode the mode leaves it out of the parameters (Firefox).
        const kept = mode && (tr.sender.getParameters().encodings || [])[0];
        this._svc = !!kept && kept.scalabilityMode === mode;
        this._svcMode = this._svc ? mode : null;
        const h = s.height || DEFAULT_VIDEO.height;
        this._layerHeights = layers
          ? layers.map((l) => Math.round(h / l.scaleResolutionDownBy))
          : this._svc
            ? spatialHeights(h, mode)
            : null;
        this._preferCodec(tr, this.options.preferredVideoCodec);
      } else {
        pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
      }
    }
  }

  _preferCodec(transceiver, preferred) {
    if (!preferred || typeof transceiver.setCodecPreferences !== 'function') return;
    const sources = [];
    if (typeof RTCRtpReceiver !== 'undefined' && RTCRtpReceiver.getCapabilities) {
      sources.push(RTCRtpReceiver.getCapabilities('video'));
    }
    if (typeof RTCRtpSender !== 'undefined' && RTCRtpSender.getCapabilities) {
      sources.push(RTCRtpSender.getCapabilities('video'));
    }
    for (const caps of sources) {
      const ordered = caps && orderCodecs(caps.codecs, preferred);
      if (!ordered) continue; // the browser lacks it: keep the default order
      try {
        transceiver.setCodecPreferences(ordered);
        return;
      } catch (e) {
        // Some browsers validate against the other capability list; try it.
      }
    }
  }

  async _applySenderParameters() {
    for (const t of this._pc.getTransceivers()) {
      const sender = t.sender;
      if (!sender || !sender.track || sender.track.kind !== 'video') continue;
      if (this._svcMode) await this._matchSpatialMode(sender);
      // Simulcast and spatial layers keep the rates they were created with: a weak subscriber
      // gets a lower layer from the server instead of a cap on this sender.
      if (this._simulcast || this._svc) continue;
      try {
        const params = sender.getParameters();
        params.degradationPreference = 'maintain-resolution';
        if (!params.encodings || params.encodings.length === 0) params.encodings = [{}];
        const cap = this._videoCap;
        params.encodings[0].maxBitrate = cap ? Math.min(cap, this._maxVideoBitrate) : this._maxVideoBitrate;
        // A low cap also lowers the resolution, so that frames keep flowing (at 400 kbit/s,
        // 720p would drop to a few frames a second).
        const h = (sender.track.getSettings && sender.track.getSettings().height) || 720;
        params.encodings[0].scaleResolutionDownBy = Math.max(1, h / capHeight(cap));
        await sender.setParameters(params);
      } catch (e) {
        // Not fatal: the browser default still works, only slower to reach HD.
        console.warn('consulta: setParameters failed', e);
      }
    }
  }

  /** Pauses our simulcast layers above the one the server asked for (all active when none). */
  async _applyLayerActivity() {
    if (!this._simulcast || !this._pc) return;
    for (const t of this._pc.getTransceivers()) {
      const sender = t.sender;
      if (!sender || !sender.track || sender.track.kind !== 'video') continue;
      try {
        const params = sender.getParameters();
        if (!params.encodings || params.encodings.length < 2) continue;
        let changed = false;
        params.encodings.forEach((e, i) => {
          const active = this._publishMax === null || i <= this._publishMax;
          if (e.active !== active) changed = true;
          e.active = active;
        });
        if (changed) await sender.setParameters(params);
      } catch (e) {
        console.warn('consulta: setParameters (layers) failed', e);
      }
    }
  }

  async _publish() {
    const pc = this._pc;
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    const answer = new Promise((resolve, reject) => {
      this._pendingAnswer = withDeadline(resolve, reject, ANSWER_TIMEOUT_MS, 'no answer to our offer from the server');
    });
    this._send({ type: 'offer', sdp: pc.localDescription.sdp });
    this._offerSent = true;
    // So that subscribers' video sizes map to our layers.
    if (this._layerHeights) this._send({ type: 'video-layers', heights: this._layerHeights });
    this._flushCandidates();
    let m;
    try {
      m = await answer;
    } finally {
      this._pendingAnswer = null;
    }
    const sdp = this._mungeRemote(m.sdp);
    try {
      await pc.setRemoteDescription({ type: 'answer', sdp });
    } catch (e) {
      throw new ConsultaError('negotiation_failed', `cannot apply the server's answer: ${e.message}`, {
        cause: e,
      });
    }
    await this._applySenderParameters();
  }

  /**
   * Every remote SDP: HD bitrate hints. The codec order is the server's: it answers with the
   * codec every participant of the room decodes first (our preferred one when they all do).
   */
  _mungeRemote(sdp) {
    return addVideoBitrateHints(sdp, this._videoHints);
  }

  /**
   * The server asks us to send video in `codec`, the one everyone in the room decodes: it
   * goes first in our video sender's codec preferences and we offer again (the server holds
   * its own offers until then); its answer lists that codec first, so the browser switches.
   */
  async _switchCodec(codec) {
    const pc = this._pc;
    if (!pc || this.closed || typeof codec !== 'string') return;
    for (const t of pc.getTransceivers()) {
      const track = t.sender && t.sender.track;
      if (!track || track.kind !== 'video') continue;
      // Spatial layers are VP9's: one layer before offering another codec.
      if (this._svc && !/^VP9$/i.test(codec)) await this._matchSpatialMode(t.sender, false);
      this._preferCodec(t, codec);
    }
    await this._publish();
  }

  /**
   * Sends our camera as spatial layers (`_svcMode`) while the codec in use is VP9 and the
   * consultation is not being recorded, else as one layer (`L1T1`): the layers are VP9's, and
   * the recorder can only take a stream's lowest spatial layer (a quarter of the camera), so a
   * recording gets the full picture in one layer (weak subscribers then get the `bitrate-cap`
   * of a single-layer sender). `vp9`: whether VP9 is in use, else read from the sender's
   * parameters. Keeps `_svc` and the layer heights the server maps sizes to in step.
   */
  async _matchSpatialMode(sender, vp9) {
    try {
      const params = sender.getParameters();
      const enc = params.encodings && params.encodings[0];
      const used = params.codecs && params.codecs[0] && params.codecs[0].mimeType;
      if (!enc || (vp9 === undefined && !used)) return;
      const onVp9 = vp9 !== undefined ? vp9 : /^video\/vp9$/i.test(used);
      const recorded = !!(this.recording && this.recording.active);
      const want = onVp9 && !recorded ? this._svcMode : 'L1T1';
      if (enc.scalabilityMode !== want) {
        enc.scalabilityMode = want;
        if (want === this._svcMode) {
          // Layers again: the full picture and rate (a cap on one layer may have lowered them).
          enc.scaleResolutionDownBy = 1;
          enc.maxBitrate = this._maxVideoBitrate;
        }
        await sender.setParameters(params);
      }
      const svc = onVp9 && !recorded && (sender.getParameters().encodings || [])[0]?.scalabilityMode === this._svcMode;
      if (svc === this._svc) return;
      this._svc = svc;
      const h = (sender.track && sender.track.getSettings && sender.track.getSettings().height) || DEFAULT_VIDEO.height;
      this._layerHeights = svc ? spatialHeights(h, this._svcMode) : null;
      if (svc) this._send({ type: 'video-layers', heights: this._layerHeights });
    } catch (e) {
      console.warn('consulta: scalability mode not changed', e);
    }
  }

  // ----- peer connection ----------------------------------------------------------------------

  _wirePeerConnection(pc) {
    pc.onicecandidate = (ev) => {
      const c = ev.candidate;
      if (!c || !c.candidate) return;
      const msg = { type: 'candidate', candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex };
      if (this._offerSent) this._send(msg);
      else this._localCandidates.push(msg);
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this._pc || this._reconnecting) return;
      this.connectionState = pc.connectionState;
      this._emit('connection-state', pc.connectionState);
    };
    pc.oniceconnectionstatechange = () => {
      if (pc !== this._pc || this.closed) return;
      const state = pc.iceConnectionState;
      clearTimeout(this._iceTimer);
      if (state === 'failed') this._askIceRestart(true);
      else if (state === 'disconnected') {
        // It may heal by itself (a few lost consent checks); if not, restart.
        this._iceTimer = setTimeout(() => {
          if (pc === this._pc && pc.iceConnectionState === 'disconnected') this._askIceRestart(true);
        }, ICE_DISCONNECTED_RESTART_MS);
      }
    };
    pc.ontrack = (ev) => {
      try {
        this._attachTransceiver(ev.transceiver, ev.track);
      } catch (e) {
        this._clientError(e);
      }
    };
  }

  _flushCandidates() {
    const queued = this._localCandidates;
    this._localCandidates = [];
    for (const msg of queued) this._send(msg);
  }

  /** Runs negotiation steps strictly one after another; a failed step never blocks later ones. */
  _enqueue(step) {
    const run = this._negotiation.then(() => (this.closed ? undefined : step()));
    this._negotiation = run.catch(() => {});
    return run;
  }

  async _handleServerOffer(m) {
    const map = this._queuedMaps.shift() || midMapOf(m.tracks);
    const pc = this._pc;
    if (!pc || this.closed) return;
    this._midMap = map;
    await pc.setRemoteDescription({ type: 'offer', sdp: this._mungeRemote(m.sdp) });
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    this._send({ type: 'answer', sdp: pc.localDescription.sdp });
    this._reconcileTracks();
  }

  /** Maps a transceiver's remote track to its participant; emits 'track' when that changes. */
  _attachTransceiver(transceiver, track) {
    const mid = transceiver && transceiver.mid;
    track = track || (transceiver && transceiver.receiver && transceiver.receiver.track);
    if (mid == null || !track) return;
    let entry = this._midMap.get(mid);
    if (!entry) {
      // Not in the map being applied: a later offer (already received) may name it.
      for (const m of this._queuedMaps) {
        if (m.has(mid)) {
          entry = m.get(mid);
          break;
        }
      }
    }
    if (!entry) return; // the reconcile after the offer that names it will attach it
    const current = this._attached.get(mid);
    const participant = this._participant(entry.identity);
    if (current && current.track === track && current.participant === participant && current.kind === entry.kind) {
      return;
    }
    const kind = entry.kind || track.kind;
    const old = participant.tracks[kind];
    if (old && old !== track) {
      // Two mids for one participant and kind: the first one (still named by the server) keeps
      // its place, so the participant's stream never flips between copies.
      for (const [otherMid, a] of this._attached) {
        if (a.track !== old) continue;
        const named = this._midMap.get(otherMid);
        if (otherMid !== mid && named && named.identity === entry.identity && named.kind === kind) return;
      }
    }
    if (current) this._detach(mid);
    if (old && old !== track) {
      for (const [otherMid, a] of this._attached) if (a.track === old) this._detach(otherMid);
    }
    if (!participant.stream) participant.stream = new MediaStream();
    participant.tracks[kind] = track;
    if (!participant.stream.getTracks().includes(track)) participant.stream.addTrack(track);
    this._attached.set(mid, { participant, kind, track });
    if (kind === 'video' && this._videoSizes.has(participant.identity)) this._sendVideoSize(participant.identity);
    this._emit('track', { participant, kind, track, stream: participant.stream });
  }

  _detach(mid) {
    const a = this._attached.get(mid);
    if (!a) return;
    this._attached.delete(mid);
    const { participant, kind, track } = a;
    if (participant.tracks[kind] === track) delete participant.tracks[kind];
    if (participant.stream && participant.stream.getTracks().includes(track)) participant.stream.removeTrack(track);
    this._emit('track-removed', { participant, kind, track, stream: participant.stream });
  }

  /** After each applied server offer: attach what the map names, drop what it no longer names. */
  _reconcileTracks() {
    const pc = this._pc;
    if (!pc) return;
    const receiving = new Set();
    for (const t of pc.getTransceivers()) {
      if (t.mid == null) continue;
      const dir = t.currentDirection;
      if (this._midMap.has(t.mid) && (dir === 'recvonly' || dir === 'sendrecv')) {
        receiving.add(t.mid);
        this._attachTransceiver(t, t.receiver.track);
      }
    }
    for (const mid of [...this._attached.keys()]) if (!receiving.has(mid)) this._detach(mid);
    // Participants created only because a track named them, and never announced, go away with
    // their tracks.
    for (const [identity, p] of this.participants) {
      if (!this._announced.has(p) && Object.keys(p.tracks).length === 0) this.participants.delete(identity);
    }
  }

  /** The participant object for `identity`, created (unannounced) when unknown. */
  _participant(identity, fields) {
    let p = this.participants.get(identity);
    if (!p) {
      p = {
        identity,
        role: null,
        muted: { audio: false, video: false },
        published: { audio: false, video: false },
        paused: { audio: null, video: null },
        quality: null,
        tracks: {},
        stream: null,
      };
      this.participants.set(identity, p);
    }
    if (fields) {
      if (fields.role !== undefined) p.role = fields.role;
      if (fields.muted) p.muted = { audio: !!fields.muted.audio, video: !!fields.muted.video };
      for (const [k, v] of Object.entries(fields)) {
        if (!(k in p)) p[k] = v; // forward-compatible extra fields (name, ...)
      }
    }
    return p;
  }

  // ----- signaling ----------------------------------------------------------------------------

  _send(msg) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(msg));
      return true;
    } catch (e) {
      return false;
    }
  }

  _onMessage(data) {
    let m;
    try {
      m = JSON.parse(data);
    } catch (e) {
      this._clientError(new ConsultaError('bad_json', 'the server sent a frame that is not JSON'));
      return;
    }
    if (!m || typeof m.type !== 'string') return;
    try {
      this._dispatch(m);
    } catch (e) {
      this._clientError(e);
    }
  }

  _dispatch(m) {
    switch (m.type) {
      case 'joined':
        if (this._joinWaiter) this._joinWaiter.resolve(m);
        this._joinWaiter = null;
        break;
      case 'moved': {
        // The server closes this socket next: it is no longer the call's.
        const ws = this._ws;
        this._ws = null;
        try {
          if (ws) ws.close(1000, 'moved');
        } catch (e) {
          /* already closing */
        }
        const err = new ConsultaError('moved', `the room is on node ${m.node}`);
        err.url = m.url;
        err.node = m.node ?? null;
        if (this._joinWaiter) {
          this._joinWaiter.reject(err);
          this._joinWaiter = null;
        } else if (this._resumeWaiter) {
          this._resumeWaiter.reject(err);
        } else if (typeof m.url === 'string') {
          // In a call: the room was merged into another node; join again there.
          this._url = m.url;
          this._forceRejoin = true;
          this._connectionLost('moved');
        }
        break;
      }
      case 'waiting':
        // connect() resolves once a doctor admits us and `joined` arrives.
        this.waiting = true;
        if (this._joinWaiter && this._joinWaiter.waiting) this._joinWaiter.waiting();
        this._startPing();
        if (typeof this.options.onWaiting === 'function') {
          try {
            this.options.onWaiting();
          } catch (e) {
            reportListenerError('onWaiting', e);
          }
        }
        this._emit('waiting');
        break;
      case 'recording': {
        this.recording = {
          active: !!m.active,
          requested: !!m.requested,
          waitingFor: Array.isArray(m.waiting_for) ? m.waiting_for : [],
          reason: m.reason || null,
        };
        this._emit('recording', this.recording);
        // A recording keeps one layer of VP9 (see _matchSpatialMode).
        if (this._svcMode && this._pc) this._enqueue(() => this._applySenderParameters()).catch(() => {});
        break;
      }
      case 'participant-waiting': {
        const info = m.participant || {};
        if (info.identity) {
          const w = { identity: info.identity, role: info.role ?? null };
          this.waitingRoom.set(w.identity, w);
          this._emit('participant-waiting', w);
        }
        break;
      }
      case 'answer':
        if (this._pendingAnswer) this._pendingAnswer.resolve(m);
        break;
      case 'offer': {
        const map = midMapOf(m.tracks);
        this._queuedMaps.push(map);
        this._enqueue(() => this._handleServerOffer(m)).catch((e) => {
          this._clientError(new ConsultaError('negotiation_failed', `server offer: ${e && e.message}`, { cause: e }));
        });
        break;
      }
      case 'participant-joined': {
        const info = m.participant || {};
        if (!info.identity) break;
        this.waitingRoom.delete(info.identity);
        const p = this._participant(info.identity, info);
        this._announced.add(p);
        this._emit('participant-joined', p);
        break;
      }
      case 'participant-left': {
        const p = this.participants.get(m.identity);
        if (!p) break;
        this._removeParticipant(p, m.reason);
        break;
      }
      case 'participant-reconnecting':
      case 'participant-reconnected': {
        const p = this.participants.get(m.identity);
        if (!p) break;
        p.reconnecting = m.type === 'participant-reconnecting';
        this._emit(m.type, p);
        break;
      }
      case 'resumed':
        if (this._resumeWaiter) this._resumeWaiter.resolve(m);
        break;
      case 'ice-servers':
        this._applyIceServers(m.ice_servers).catch((e) => this._clientError(e));
        break;
      case 'track-published': {
        const p = this._participant(m.identity);
        if (m.kind === 'audio' || m.kind === 'video') p.published[m.kind] = true;
        this._emit('track-published', { participant: p, kind: m.kind });
        break;
      }
      case 'track-paused':
      case 'track-resumed': {
        // The server stopped (or resumed) forwarding one of this participant's tracks to us:
        // `bandwidth` when our downlink cannot carry it now (audio keeps flowing).
        // After a resumed session the server states every video's pause again (what the old
        // connection lost): an event only where it changes what we knew.
        const p = this.participants.get(m.identity);
        if (!p || (m.kind !== 'audio' && m.kind !== 'video')) break;
        const paused = m.type === 'track-paused' ? m.reason || 'unknown' : null;
        if (p.paused[m.kind] === paused) break;
        p.paused[m.kind] = paused;
        this._emit(m.type, { participant: p, kind: m.kind, reason: m.reason });
        break;
      }
      case 'quality': {
        // A participant's connection quality as the server measures it (ours included), so a
        // doctor knows whether a problem is on their side or the patient's.
        const levels = ['excellent', 'good', 'poor', 'lost'];
        if (!levels.includes(m.level) || typeof m.identity !== 'string') break;
        const mine = this.participant && m.identity === this.participant.identity;
        const p = mine ? this.participant : this.participants.get(m.identity);
        if (!p) break;
        p.quality = m.level;
        this._emit('quality', { participant: p, level: m.level, local: !!mine });
        break;
      }
      case 'video-codec':
        this._enqueue(() => this._switchCodec(m.codec)).catch((e) => {
          this._clientError(new ConsultaError('negotiation_failed', `codec change: ${e && e.message}`, { cause: e }));
        });
        break;
      case 'publish-layers':
        // No subscriber takes our layers above `max_layer` (their tiles are small, or there are
        // none): pause them, or resume them.
        if (m.kind !== 'video' || !Number.isInteger(m.max_layer) || m.max_layer < 0) break;
        this._publishMax = m.max_layer;
        if (this._pc) this._enqueue(() => this._applyLayerActivity()).catch(() => {});
        break;
      case 'bitrate-cap':
        // A subscriber's downlink is weak: keep our video under its rate (null: lifted).
        if (m.kind !== 'video') break;
        this._videoCap = typeof m.max_bitrate === 'number' && m.max_bitrate > 0 ? m.max_bitrate : null;
        if (this._pc) this._enqueue(() => this._applySenderParameters()).catch(() => {});
        break;
      case 'track-unpublished': {
        const p = this.participants.get(m.identity);
        if (!p) break;
        if (m.kind === 'audio' || m.kind === 'video') p.published[m.kind] = false;
        this._emit('track-unpublished', { participant: p, kind: m.kind });
        break;
      }
      case 'mute': {
        if (this.participant && m.identity === this.participant.identity) {
          // Muted by the server (the control API): follow it locally.
          if (m.kind === 'audio' || m.kind === 'video') {
            this.muted[m.kind] = !!m.muted;
            for (const t of this.localStream ? this.localStream.getTracks() : []) {
              if (t.kind === m.kind) t.enabled = !m.muted;
            }
            this._emit('muted', { kind: m.kind, muted: !!m.muted, by: 'server' });
          }
          break;
        }
        const p = this.participants.get(m.identity);
        if (!p || (m.kind !== 'audio' && m.kind !== 'video')) break;
        p.muted[m.kind] = !!m.muted;
        this._emit('mute', { participant: p, kind: m.kind, muted: !!m.muted });
        break;
      }
      case 'pong':
        this.lastPong = Date.now();
        break;
      case 'left':
        if (this._leftWaiter) this._leftWaiter();
        this._leftWaiter = null;
        break;
      case 'error':
        this._onServerError(m);
        break;
      default:
        break; // newer server message types are ignored
    }
  }

  _onServerError(m) {
    const err = new ConsultaError(m.code || 'unknown', m.message || m.code, { fatal: !!m.fatal });
    // The media worker holding the call failed and the server closes this socket next: the
    // session is gone, so the reconnection joins again instead of resuming.
    if (m.code === 'media_lost') this._forceRejoin = true;
    if (this._resumeWaiter) {
      // The reconnect loop decides: a refused resume becomes a new join.
      this._resumeWaiter.reject(err);
      return;
    }
    if (this._joinWaiter) {
      // Any error before `joined` fails connect().
      this._joinWaiter.reject(err);
      this._joinWaiter = null;
      return;
    }
    if (this._pendingAnswer && (m.fatal || m.code === 'sdp_invalid' || m.code === 'already_offered')) {
      this._pendingAnswer.reject(err);
    }
    this._emit('error', { code: err.code, message: err.message, fatal: err.fatal });
    if (m.fatal) this._teardown({ reason: err.code });
  }

  _onSocketClosed(ev) {
    const err = new ConsultaError('connection_closed', `signaling closed (${ev.code})`);
    if (this._resumeWaiter) {
      this._resumeWaiter.reject(err);
      return;
    }
    if (this._joinWaiter) {
      this._joinWaiter.reject(err);
      this._joinWaiter = null;
    }
    if (this._reconnecting) return; // the reconnect loop tries again
    if (this._pendingAnswer) this._pendingAnswer.reject(err);
    if (this._leftWaiter) this._leftWaiter();
    // In a call, a connection that dies without our goodbye is reconnected.
    if (!this.closed) this._connectionLost('signaling closed');
  }

  _clientError(e) {
    const code = (e && e.code) || 'client_error';
    const message = (e && e.message) || String(e);
    console.warn('consulta:', code, message);
    this._emit('error', { code, message, fatal: false });
  }

  /** Idempotent cleanup: stop media, close the peer connection and the socket. */
  _teardown({ reason, silent = false }) {
    if (this.closed) return;
    this.closed = true;
    if (this._pingTimer) clearInterval(this._pingTimer);
    this._pingTimer = null;
    clearTimeout(this._iceTimer);
    this._reconnecting = false;
    if (this._resumeWaiter) this._resumeWaiter.reject(new ConsultaError('connection_closed', 'the call closed'));
    if (typeof window !== 'undefined' && window.removeEventListener) {
      window.removeEventListener('online', this._onNetworkChange);
    }
    const conn = typeof navigator !== 'undefined' ? navigator.connection : null;
    if (conn && conn.removeEventListener) conn.removeEventListener('change', this._onNetworkChange);
    if (this._joinWaiter) {
      this._joinWaiter.reject(new ConsultaError('connection_closed', 'the call closed'));
      this._joinWaiter = null;
    }
    if (this._pendingAnswer) this._pendingAnswer.reject(new ConsultaError('connection_closed', 'the call closed'));
    for (const stop of [...this._observers]) stop();
    if (this._pc) {
      try {
        this._pc.close();
      } catch (e) {
        /* already closed */
      }
    }
    if (this.localStream && !this.options.localStream) for (const t of this.localStream.getTracks()) t.stop();
    const ws = this._ws;
    if (ws && (ws.readyState === 0 || ws.readyState === 1)) {
      try {
        ws.close(1000, reason);
      } catch (e) {
        /* ignore */
      }
    }
    if (!silent) {
      if (this.connectionState !== 'closed') {
        this.connectionState = 'closed';
        this._emit('connection-state', 'closed');
      }
      this._emit('closed', { reason });
    }
  }
}

// ----- pure helpers (exported for tests) ----------------------------------------------------------

/**
 * Whether a silence of the server of `silentMs` means the WebSocket is dead, given whether media
 * still arrives on the peer connection: after SILENCE_TIMEOUT_MS, or SILENCE_WITH_MEDIA_TIMEOUT_MS
 * while media arrives (a slow path, not a dead one).
 */
export function signalingDead(silentMs, mediaArrives) {
  return silentMs > (mediaArrives ? SILENCE_WITH_MEDIA_TIMEOUT_MS : SILENCE_TIMEOUT_MS);
}

/**
 * Adds x-google start/min/max bitrate parameters (kbit/s) to every VP8/VP9/H264/AV1 payload type
 * of every video section; adds an a=fmtp line where a codec has none. Existing x-google bitrate
 * parameters are replaced.
 */
export function addVideoBitrateHints(sdp, hints = HD_BITRATE_HINTS) {
  if (typeof sdp !== 'string' || !sdp) return sdp;
  const eol = sdp.includes('\r\n') ? '\r\n' : '\n';
  const lines = sdp.split(/\r?\n/);
  const trailing = lines.length && lines[lines.length - 1] === '' ? lines.pop() : null;
  const params = `x-google-start-bitrate=${hints.start};x-google-min-bitrate=${hints.min};x-google-max-bitrate=${hints.max}`;
  const codecNames = new Set(VIDEO_CODECS.map((c) => c.toUpperCase()));
  const out = [];
  // Walk section by section: the session part, then each m= section.
  let section = [];
  const flush = () => {
    if (section.length && /^m=video\s/.test(section[0])) out.push(...hintSection(section, params, codecNames));
    else out.push(...section);
    section = [];
  };
  for (const line of lines) {
    if (line.startsWith('m=')) flush();
    section.push(line);
  }
  flush();
  if (trailing !== null) out.push(trailing);
  return out.join(eol);
}

function hintSection(section, params, codecNames) {
  const pts = new Set();
  for (const line of section) {
    const m = /^a=rtpmap:(\d+)\s+([^/\s]+)\//.exec(line);
    if (m && codecNames.has(m[2].toUpperCase())) pts.add(m[1]);
  }
  if (pts.size === 0) return section;
  const withFmtp = new Set();
  const out = section.map((line) => {
    const m = /^a=fmtp:(\d+)(?:\s+(.*))?$/.exec(line);
    if (!m || !pts.has(m[1])) return line;
    withFmtp.add(m[1]);
    const kept = (m[2] || '')
      .split(';')
      .map((p) => p.trim())
      .filter((p) => p && !/^x-google-(start|min|max)-bitrate=/i.test(p));
    kept.push(params);
    return `a=fmtp:${m[1]} ${kept.join(';')}`;
  });
  const result = [];
  for (const line of out) {
    result.push(line);
    const m = /^a=rtpmap:(\d+)\s/.exec(line);
    if (m && pts.has(m[1]) && !withFmtp.has(m[1])) result.push(`a=fmtp:${m[1]} ${params}`);
  }
  return result;
}

/**
 * Moves `codec`'s payload types (each followed by its rtx) to the front of every video m= line.
 * The first codec of the answer is the one the browser sends, and a server may answer in its own
 * order rather than the offer's; the server accepted every codec it lists, so sending the
 * preferred one among them is within the negotiated set. Unchanged when a section lacks it.
 */
export function preferVideoCodec(sdp, codec) {
  if (typeof sdp !== 'string' || !sdp || !codec) return sdp;
  const want = String(codec).toUpperCase();
  const eol = sdp.includes('\r\n') ? '\r\n' : '\n';
  const lines = sdp.split(/\r?\n/);
  let start = -1;
  const fix = (from, to) => {
    if (from < 0 || !/^m=video\s/.test(lines[from])) return;
    const names = new Map();
    const apt = new Map(); // rtx pt -> primary pt
    for (let i = from + 1; i < to; i++) {
      let m = /^a=rtpmap:(\d+)\s+([^/\s]+)\//.exec(lines[i]);
      if (m) names.set(m[1], m[2].toUpperCase());
      m = /^a=fmtp:(\d+)\s+.*\bapt=(\d+)/.exec(lines[i]);
      if (m) apt.set(m[1], m[2]);
    }
    const parts = lines[from].split(' ');
    const pts = parts.slice(3);
    const preferred = pts.filter((pt) => names.get(pt) === want);
    if (preferred.length === 0 || pts[0] === preferred[0]) return;
    const front = [];
    for (const pt of preferred) {
      front.push(pt);
      for (const [rtx, primary] of apt) if (primary === pt && pts.includes(rtx)) front.push(rtx);
    }
    lines[from] = [...parts.slice(0, 3), ...front, ...pts.filter((pt) => !front.includes(pt))].join(' ');
  };
  for (let i = 0; i <= lines.length; i++) {
    if (i === lines.length || lines[i].startsWith('m=')) {
      fix(start, i);
      start = i;
    }
  }
  return lines.join(eol);
}

/**
 * Returns `codecs` (RTCRtpCodecCapability list) with the `preferred` codec first (its best
 * profiles first), everything else after in the original order; null when the list lacks it.
 */
export function orderCodecs(codecs, preferred) {
  if (!Array.isArray(codecs) || !preferred) return null;
  const want = `video/${String(preferred).toLowerCase()}`;
  const matches = [];
  const rest = [];
  codecs.forEach((c, i) => {
    if (c && typeof c.mimeType === 'string' && c.mimeType.toLowerCase() === want) matches.push({ c, i });
    else rest.push(c);
  });
  if (matches.length === 0) return null;
  matches.sort((a, b) => profileScore(b.c) - profileScore(a.c) || a.i - b.i);
  return [...matches.map((m) => m.c), ...rest];
}

// Most interoperable profile first: H264 constrained baseline with packetization-mode=1,
// VP9 profile 0.
function profileScore(c) {
  const f = (c.sdpFmtpLine || '').toLowerCase();
  let score = 0;
  if (c.mimeType.toLowerCase() === 'video/h264') {
    if (/packetization-mode=1/.test(f)) score += 10;
    if (/profile-level-id=42e0/.test(f)) score += 5;
    else if (/profile-level-id=4200/.test(f)) score += 4;
  } else if (c.mimeType.toLowerCase() === 'video/vp9') {
    if (!/profile-id=[1-9]/.test(f)) score += 5;
  }
  return score;
}

/**
 * Simulcast `sendEncodings` for a camera `height` pixels high, low to high (the server numbers
 * layers in this order): quarter and half size at 150 and 500 kbit/s, then full size at `max`
 * (a camera under 540 lines: half size at 150 kbit/s and full size); null when the camera is
 * too small for more than one layer.
 */
export function simulcastEncodings(height, max) {
  const h = height || DEFAULT_VIDEO.height;
  if (h < 360) return null;
  const layers = [
    { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
    { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
    { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: max },
  ];
  // A 360p camera: 180p and 360p.
  return h < 540 ? [{ ...layers[0], rid: 'h', scaleResolutionDownBy: 2 }, layers[2]] : layers;
}

/**
 * The VP9 spatial scalability mode to ask for a camera `height` pixels high, given the
 * browser's sender codecs (`RTCRtpSender.getCapabilities('video').codecs`): three layers
 * (quarter, half and full size) from 540 lines, two from 360, keyframe-only inter-layer
 * prediction (`_KEY`, which lets the server switch a subscriber down at any picture). Null when
 * the camera is too small, or the browser lists its VP9 modes without this one. Browsers that
 * list none (Chromium 156, Firefox 153) are asked, and the sender's parameters tell whether the
 * mode was kept (Chromium keeps it, Firefox drops it).
 */
export function spatialMode(height, codecs) {
  const h = height || DEFAULT_VIDEO.height;
  const vp9 = (codecs || []).filter((c) => /^video\/vp9$/i.test(c.mimeType || ''));
  if (vp9.length === 0) return null;
  const listed = vp9.filter((c) => Array.isArray(c.scalabilityModes));
  const offers = (m) => listed.length === 0 || listed.some((c) => c.scalabilityModes.includes(m));
  if (h >= 540 && offers('L3T3_KEY')) return 'L3T3_KEY';
  if (h >= 360 && offers('L2T3_KEY')) return 'L2T3_KEY';
  return null;
}

/** The heights of a spatial `mode`'s layers for a camera `height` high, lowest first. */
export function spatialHeights(height, mode) {
  const n = Number((/^L(\d)/.exec(mode || '') || [])[1]) || 1;
  return Array.from({ length: n }, (_, i) => Math.round(height / 2 ** (n - 1 - i)));
}

function senderCodecs() {
  try {
    const caps = typeof RTCRtpSender !== 'undefined' && RTCRtpSender.getCapabilities && RTCRtpSender.getCapabilities('video');
    return (caps && caps.codecs) || [];
  } catch (e) {
    return [];
  }
}

/** encodings[0].maxBitrate for a camera of this size (bit/s). */
export function videoMaxBitrate(width, height) {
  if (!width || !height) return HD_MAX_BITRATE;
  const scaled = Math.round((HD_MAX_BITRATE * width * height) / HD_PIXELS);
  return Math.min(MAX_MAX_BITRATE, Math.max(MIN_MAX_BITRATE, scaled));
}

function videoBitrateHints(width, height) {
  if (!width || !height || width * height <= HD_PIXELS) return HD_BITRATE_HINTS;
  const r = (width * height) / HD_PIXELS;
  const max = Math.round(videoMaxBitrate(width, height) / 1000);
  return { start: Math.min(max, Math.round(HD_BITRATE_HINTS.start * r)), min: HD_BITRATE_HINTS.min, max };
}

function midMapOf(tracks) {
  const map = new Map();
  for (const t of Array.isArray(tracks) ? tracks : []) {
    if (t && t.mid != null && t.identity) map.set(String(t.mid), { identity: t.identity, kind: t.kind });
  }
  return map;
}

function num(v) {
  return typeof v === 'number' ? v : 0;
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function iceUp(pc) {
  return !!pc && (pc.iceConnectionState === 'connected' || pc.iceConnectionState === 'completed');
}

function defaultUrl() {
  if (typeof location === 'undefined') throw new ConsultaError('bad_options', 'connect(): `url` is required');
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

function reportListenerError(event, e) {
  console.error(`consulta: a '${event}' listener threw`, e);
}
