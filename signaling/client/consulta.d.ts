// Type declarations for the Consulta browser SDK (consulta.js). See README.md beside this file.

export declare const version: string;

export type Role = 'doctor' | 'patient' | 'guest' | (string & {});
export type MediaKind = 'audio' | 'video';
export type VideoCodec = 'VP8' | 'VP9' | 'H264' | 'AV1';

export interface MutedState {
  audio: boolean;
  video: boolean;
}

export interface ConnectOptions {
  /** Signaling URL, e.g. `wss://host/ws` (may carry `?room=`). Defaults to `/ws` on the page's host. */
  url?: string;
  /** Join token minted by the server (`consulta token ...` or the control API). */
  token: string;
  /** Sent in `join`; must equal the token's room, else `token_room_mismatch`. */
  room?: string;
  /**
   * Local media. `false` (or both kinds false) joins receive-only.
   * Defaults: audio `true`, video `{ width: 1280, height: 720, frameRate: 30 }`.
   */
  media?: false | { audio?: boolean | MediaTrackConstraints; video?: boolean | MediaTrackConstraints };
  /** Publish this stream instead of calling getUserMedia (the SDK then never stops its tracks). */
  localStream?: MediaStream;
  /** Put this codec first in the offer; ignored when the browser lacks it. */
  preferredVideoCodec?: VideoCodec;
  /**
   * Publish camera video as simulcast layers (180p, 360p and 720p for a 720p camera, `rid`s
   * `q`, `h`, `f`; 180p and 360p for a 360p camera), so that the server forwards each subscriber
   * the layer its downlink carries instead of capping this sender for the weakest one.
   * With `preferredVideoCodec` VP9 the layers are spatial layers of one stream
   * (`scalabilityMode` `L3T3_KEY`, `L2T3_KEY` for a 360p camera) where the browser lists them
   * (Chromium), else one layer (Firefox); VP9 goes as one layer too while the room's codec is
   * another or the consultation is recorded (the recorder takes one spatial layer); with AV1, one
   * layer. Default `true`; `false` sends one layer (capped by the server's `bitrate-cap` for a
   * weak subscriber).
   */
  simulcast?: boolean;
  /** A non-empty list replaces the server's `ice_servers` (its TURN credentials); `[]` or absent keeps them. */
  iceServers?: RTCIceServer[];
  iceTransportPolicy?: RTCIceTransportPolicy;
  /** Called when the server puts this participant in the waiting room; connect() resolves once admitted. */
  onWaiting?: () => void;
  /** Consent to being recorded, given up front; same as calling setRecordingConsent(true) after joining. */
  recordingConsent?: boolean;
  /**
   * How long (ms) the SDK keeps trying to reconnect after the connection is lost (network change,
   * Wi-Fi drop, proxy restart) before it gives up with `closed` (reason `reconnect_failed`).
   * Default 60000; `0` or `false` turns automatic reconnection off.
   */
  reconnectTimeout?: number | false;
}

/** `connectionState`: the peer connection's state, or `reconnecting` while the SDK reconnects. */
export type CallConnectionState = RTCPeerConnectionState | 'reconnecting';

/** The consultation's recording state ('recording' event, `call.recording`). */
export interface RecordingState {
  /** Media is being recorded now. */
  active: boolean;
  /** Recording is wanted (policy `required`, or started through the control API). */
  requested: boolean;
  /** Identities present that have not consented yet: recording waits for them. */
  waitingFor: string[];
  /** Why it is not recording although requested: `consent`, `spool_full`, `spool_error`, `recorder_error`, `unavailable`, `alone` (fewer than two in the call). */
  reason: string | null;
}

export interface Participant {
  identity: string;
  /** `null` until the server has announced the participant. */
  role: Role | null;
  muted: MutedState;
  /** Tracks the server said this participant publishes (`track-published`/`-unpublished`). */
  published: MutedState;
  /** Why the server does not forward this participant's track to us now (`track-paused`), or
   * null while it flows. */
  paused: { audio: PauseReason | null; video: PauseReason | null };
  /** Its connection quality (`quality` events), null until the server told it. */
  quality: QualityLevel | null;
  /** Remote tracks currently received from this participant. */
  tracks: { audio?: MediaStreamTrack; video?: MediaStreamTrack };
  /** One stream holding this participant's received audio and video; null before the first track. */
  stream: MediaStream | null;
  /** Set on the object passed to `participant-left`; `lost`: its connection was lost and it did
   * not come back within the server's reconnect grace period. */
  reason?: 'left' | 'disconnected' | 'replaced' | 'kicked' | 'ended' | 'lost' | 'moved' | 'media_lost' | (string & {}) | null;
  left?: boolean;
  /** True between 'participant-reconnecting' and 'participant-reconnected'. */
  reconnecting?: boolean;
  [extra: string]: unknown;
}

/** `bandwidth`: our downlink cannot carry the track now; `codec`: this browser decodes no codec
 * the publisher can send. Audio keeps flowing either way. */
export type PauseReason = 'bandwidth' | 'codec' | (string & {});

export interface TrackPauseEvent {
  participant: Participant;
  kind: MediaKind;
  reason: PauseReason;
}

export interface LocalParticipant {
  identity: string;
  role: Role;
  /** Our connection quality as the server measures it (`quality` events), null until known. */
  quality?: QualityLevel | null;
}

/** A connection's quality, measured by the server on its uplink and downlink (loss, RTT,
 * bandwidth estimate); `lost` while it reconnects. */
export type QualityLevel = 'excellent' | 'good' | 'poor' | 'lost';

export interface QualityEvent {
  /** The participant (ours when `local`). */
  participant: Participant | LocalParticipant;
  level: QualityLevel;
  local: boolean;
}

export interface TrackEvent {
  participant: Participant;
  kind: MediaKind;
  track: MediaStreamTrack;
  stream: MediaStream;
}

export interface MuteEvent {
  participant: Participant;
  kind: MediaKind;
  muted: boolean;
}

export interface PublicationEvent {
  participant: Participant;
  kind: MediaKind;
}

export interface CallErrorEvent {
  code: string;
  message: string;
  fatal: boolean;
}

export interface ClosedEvent {
  /** `left`, `disconnected`, `reconnect_failed`, or the fatal server error code (e.g. `session_replaced`). */
  reason: string;
}

export interface InboundStats {
  /** Identity of the sender, from the server's mid map. */
  participant: string | null;
  kind: MediaKind;
  mid: string | null;
  /** e.g. `VP8`, `H264`, `opus`. */
  codec: string | null;
  framesDecoded: number;
  framesReceived: number;
  framesDropped: number;
  frameWidth: number;
  frameHeight: number;
  framesPerSecond: number;
  packetsReceived: number;
  packetsLost: number;
  bytesReceived: number;
  jitter: number;
  nackCount: number;
  pliCount: number;
  keyFramesDecoded: number;
}

export interface OutboundStats {
  kind: MediaKind;
  mid: string | null;
  /** The simulcast layer (`q`, `h`, `f`), or null for a single-layer sender. */
  rid: string | null;
  codec: string | null;
  framesEncoded: number;
  frameWidth: number;
  frameHeight: number;
  framesPerSecond: number;
  packetsSent: number;
  bytesSent: number;
  targetBitrate: number;
  qualityLimitationReason: string | null;
  nackCount: number;
  pliCount: number;
}

export interface CandidatePairStats {
  localType: RTCIceCandidateType | null;
  remoteType: RTCIceCandidateType | null;
  /** `udp` or `tcp`. */
  protocol: string | null;
  /** `udp`/`tcp`/`tls` when the local candidate is a relay. */
  relayProtocol: string | null;
  localAddress: string | null;
  localPort: number | null;
  remoteAddress: string | null;
  remotePort: number | null;
  currentRoundTripTime: number | null;
  availableOutgoingBitrate: number | null;
}

export interface CallStats {
  inbound: InboundStats[];
  outbound: OutboundStats[];
  candidatePair: CandidatePairStats | null;
}

export interface CallEvents {
  'participant-joined': (participant: Participant) => void;
  'participant-left': (participant: Participant, reason: string | null) => void;
  track: (event: TrackEvent) => void;
  'track-removed': (event: TrackEvent) => void;
  'track-published': (event: PublicationEvent) => void;
  'track-unpublished': (event: PublicationEvent) => void;
  /** The server stopped forwarding a track to us (reason `bandwidth`: our link is too weak for
   * video, audio keeps flowing); the video element shows its last frame until `track-resumed`. */
  'track-paused': (event: TrackPauseEvent) => void;
  'track-resumed': (event: TrackPauseEvent) => void;
  /** A participant's connection quality changed (ours too: `local`), sent to everyone in the
   * room; a worse level comes at once, a better one after it held for ~3 s. */
  quality: (event: QualityEvent) => void;
  mute: (event: MuteEvent) => void;
  'connection-state': (state: CallConnectionState) => void;
  /** Our connection was lost; the SDK is reconnecting (local media is kept). */
  reconnecting: (event: { reason: string }) => void;
  /** Back in the same session (or, when the server no longer held it, in a new one). */
  reconnected: () => void;
  /** Another participant lost its connection; the server holds its place while it reconnects. */
  'participant-reconnecting': (participant: Participant) => void;
  'participant-reconnected': (participant: Participant) => void;
  error: (error: CallErrorEvent) => void;
  closed: (event: ClosedEvent) => void;
  /** Recording started, stopped, or now waits for someone's consent. */
  recording: (state: RecordingState) => void;
}

export declare class ConsultaError extends Error {
  constructor(code: string, message?: string, options?: { fatal?: boolean; cause?: unknown });
  /** Stable protocol or client code: token_expired, token_room_mismatch, token_invalid, room_full,
   * session_replaced, ..., or connection_failed, connection_closed, timeout, media_error,
   * negotiation_failed, bad_options, too_many_redirects (cluster mode: moved more than 3 times). */
  code: string;
  fatal: boolean;
}

export declare class Call {
  readonly options: ConnectOptions;
  /** Everyone in the room but us, by identity. */
  readonly participants: Map<string, Participant>;
  /** Our published media (null when receive-only). */
  readonly localStream: MediaStream | null;
  /** Our own identity and role, from `joined`. */
  readonly participant: LocalParticipant | null;
  readonly sessionId: string | null;
  /**
   * The cluster node serving the call (`joined.node`), or null on a single server. In cluster
   * mode a join that reaches another node is redirected (`moved`) to this one transparently, at
   * most 3 times (else `connect()` rejects with `too_many_redirects`); reconnections go to it
   * first and, when it is gone, through `url` again to a node that takes the room over.
   */
  readonly node: string | null;
  readonly iceServers: RTCIceServer[];
  readonly connectionState: CallConnectionState;
  readonly closed: boolean;
  readonly muted: MutedState;
  readonly peerConnection: RTCPeerConnection | null;
  /** Time (ms since epoch) of the last `pong`. */
  readonly lastPong?: number;

  on<E extends keyof CallEvents>(event: E, listener: CallEvents[E]): this;
  once<E extends keyof CallEvents>(event: E, listener: CallEvents[E]): this;
  off<E extends keyof CallEvents>(event: E, listener: CallEvents[E]): this;

  /** Enables/disables the local tracks of `kind` and tells the others. */
  setMuted(kind: MediaKind, muted: boolean): Promise<void>;
  /** Doctors: admit a participant waiting in the waiting room (see the 'participant-waiting' event). */
  admit(identity: string): Promise<void>;
  /** Gives (`true`) or withdraws (`false`) consent to be recorded (LGPD): recording runs only
   * while everyone present has consented. */
  setRecordingConsent(consent: boolean): void;
  /** Tells the server the size (CSS pixels) at which `participant`'s video is shown, so it
   * forwards no simulcast layer much larger (a thumbnail gets 180p, not 720p; 0×0: hidden) and
   * the publisher pauses layers nobody shows; `null` lifts it. Kept across reconnections. */
  setVideoSize(participant: Participant | string, size: { width: number; height: number } | null): void;
  /** Follows the size of the `<video>` element showing `participant`'s video (setVideoSize on
   * every change); returns a function that stops following and lifts the preference. */
  observeVideo(participant: Participant | string, element: HTMLElement): () => void;
  readonly recordingConsent: boolean;
  readonly recording: RecordingState;
  /** True while this participant is in the waiting room. */
  readonly waiting: boolean;
  /** (Doctors) who waits to be admitted, by identity; see also the 'participant-waiting' event. */
  readonly waitingRoom: Map<string, { identity: string; role: string | null }>;
  /** Sends `leave`, waits up to 1 s for `left`, then closes everything. Idempotent. */
  leave(): Promise<void>;
  stats(): Promise<CallStats>;
}

/** Joins a room; rejects with a ConsultaError (see `code`). */
export declare function connect(options: ConnectOptions): Promise<Call>;

/** Whether a server silence of `silentMs` means the WebSocket is dead: after 2.5 s, or 6 s while
 * media still arrives on the peer connection (a slow link, not a dead one). */
export declare function signalingDead(silentMs: number, mediaArrives: boolean): boolean;

/** Adds x-google start/min/max bitrate (kbit/s) to every VP8/VP9/H264/AV1 fmtp of the SDP. */
export declare function addVideoBitrateHints(
  sdp: string,
  hints?: { start: number; min: number; max: number },
): string;

/** Moves `codec` (and its rtx) to the front of every video m= line; the browser sends the first. */
export declare function preferVideoCodec(sdp: string, codec: VideoCodec | string): string;

/** The codec list with `preferred` first, or null when the list lacks it. */
export declare function orderCodecs(
  codecs: RTCRtpCodec[],
  preferred: VideoCodec | string,
): RTCRtpCodec[] | null;

/** encodings[0].maxBitrate (bit/s) for a camera of this size: 2.5 Mbit/s at 720p, scaled by pixels. */
export declare function videoMaxBitrate(width?: number, height?: number): number;
