// Types of the Stagecast browser SDK (stagecast.js). The same files the edge serves at
// /static/ are the npm package `@stagecast/client`; see docs/browser.md.

export declare const SDK_NAME: string;

/** Every error the server (or the SDK, for a local check) reports. */
export declare class StagecastError extends Error {
  constructor(code: string, message?: string, retryAfterMs?: number);
  /** A code such as `INVALID_TOKEN`, `ROOM_FULL`, `INVALID_PERMISSIONS`. */
  readonly code: string;
  readonly detail: string;
  /** The server's hint (ms) of when to try again (`SERVER_BUSY`); 0: none. */
  readonly retryAfterMs: number;
}

/** The reason each WebSocket close code stands for. */
export declare const CLOSE_REASONS: ReadonlyMap<number, string>;

export interface ConnectOptions {
  connectTimeout: number;
  requestTimeout: number;
  pingInterval: number;
  pingTimeout: number;
  /** ms to keep trying to resume; null: the room's departure grace. */
  reconnectWindow: number | null;
  joinRetryWindow: number;
  /** ms a request refused UNAVAILABLE is sent again with the same id; 0: never. */
  retryWindow: number;
  backoffInitial: number;
  backoffMax: number;
}

export declare const DEFAULT_OPTIONS: Readonly<ConnectOptions>;

/** This page's edge (its origin) as a WebSocket URL. */
export declare function defaultUrl(): string;
/** The edge's `/rtc` WebSocket URL for a ws://, wss://, http:// or https:// base URL. */
export declare function socketUrl(url: string): string;

export type TrackKind = 'audio' | 'video';
export type TrackSource =
  | 'camera'
  | 'microphone'
  | 'screen_share'
  | 'screen_share_audio'
  | 'unknown';
export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'disconnected';
export type Codec = 'vp8' | 'h264' | 'vp9' | 'av1' | 'opus' | 'red';

export interface Counts {
  speaker: number;
  viewer: number;
  total: number;
}

export interface Grant {
  canPublish: boolean;
  canSubscribe: boolean;
  canPublishData: boolean;
  canSubscribeData: boolean;
  canModerate: boolean;
  canRecord: boolean;
  canHls: boolean;
  canLivestream: boolean;
}

export interface TrackInfo {
  sid: string;
  kind: TrackKind;
  source: TrackSource;
  name: string;
  muted: boolean;
}

export interface DataMessage {
  payload: Uint8Array;
  senderId: string | null;
  topic: string | null;
  reliable: boolean;
}

export interface StreamEvent {
  kind: TrackKind;
  source: TrackSource;
  trackSid: string;
}

/** A subscribed remote track. */
export declare class Subscription {
  readonly participant: RemoteParticipant | null;
  readonly participantId: string;
  readonly kind: TrackKind;
  readonly trackSid: string;
  readonly track: MediaStreamTrack;
  /** A MediaStream holding the track, for a <video> or <audio> element. */
  readonly stream: MediaStream;
  readonly video: MediaStreamTrack | null;
  readonly audio: MediaStreamTrack | null;
  /** Receive this video at most at `quality` (a simulcast camera switches layers). */
  setVideoQuality(quality: VideoQuality): Promise<void>;
  /** Adaptive stream: report the size `element` renders this video at; null stops
   * observing and lifts the size limit (the quality asked for alone decides). */
  observeElement(element: Element | null): void;
}

export type VideoQuality = 'low' | 'medium' | 'high';
/** A simulcast layer: quarter, half or full resolution. */
export type SimulcastRid = 'q' | 'h' | 'f';

/** A text or byte stream's facts, on both sides. */
export interface StreamInfo {
  readonly id: string;
  readonly topic: string;
  readonly kind: 'text' | 'bytes';
  readonly senderId: string;
  readonly mimeType: string;
  /** Bytes in all, when the sender said. */
  readonly totalSize: number | null;
  readonly attributes: Record<string, string>;
  /** A byte stream's file name ('' for text). */
  readonly name: string;
  readonly timestamp: number;
}

/** The receiving side of a stream: iterate its chunks, or read it whole. */
export interface StreamReader {
  readonly info: StreamInfo;
  /** Rejects with a `StreamError` when the stream is cut off. */
  readAll(): Promise<string | Uint8Array>;
  [Symbol.asyncIterator](): AsyncIterator<string | Uint8Array>;
}

/** The sending side of a stream. */
export interface StreamWriter {
  readonly info: StreamInfo;
  write(data: string | Uint8Array): Promise<void>;
  /** A non-empty `reason` ends the stream as aborted. */
  close(reason?: string): Promise<void>;
}

export interface StreamOptions {
  topic?: string;
  destinationIds?: string[];
  attributes?: Record<string, string>;
  totalSize?: number | null;
  mimeType?: string;
  name?: string;
}

export type StreamHandler = (reader: StreamReader, senderId: string) => void | Promise<void>;

export interface RpcInvocation {
  requestId: string;
  callerId: string;
  payload: string;
  responseTimeout: number;
}

/** A stream failed: `code` is STREAM_CUT_OFF or STREAM_BUFFER_FULL. */
export declare class StreamError extends StagecastError {
  constructor(code: string, message?: string, streamId?: string);
  readonly streamId: string;
}

/** An RPC failed, with LiveKit's code (the static constants). */
export declare class RpcError extends Error {
  constructor(code: number, message?: string, data?: string);
  readonly code: number;
  readonly rpcMessage: string;
  readonly data: string;
  static readonly APPLICATION_ERROR: 1500;
  static readonly CONNECTION_TIMEOUT: 1501;
  static readonly RESPONSE_TIMEOUT: 1502;
  static readonly RECIPIENT_DISCONNECTED: 1503;
  static readonly RESPONSE_PAYLOAD_TOO_LARGE: 1504;
  static readonly SEND_FAILED: 1505;
  static readonly UNSUPPORTED_METHOD: 1400;
  static readonly RECIPIENT_NOT_FOUND: 1401;
  static readonly REQUEST_PAYLOAD_TOO_LARGE: 1402;
}

declare class ParticipantView {
  readonly id: string;
  readonly identity: string;
  readonly sid: string;
  readonly name: string;
  readonly isViewer: boolean;
  readonly kind: string;
  readonly metadata: string;
  readonly attributes: Record<string, string>;
  readonly joinedAt: number;
  /** True while this participant is among the active speakers. */
  isSpeaking: boolean;
  /** 0..1, smoothed; 0 when not speaking. */
  audioLevel: number;
}

/** Why a subscribed track cannot be received: `CODEC_UNSUPPORTED` when this browser
 * cannot decode the track's codec (`codecs`: what the forwarder offered). */
export interface SubscriptionFailure {
  readonly participantId: string;
  readonly kind: TrackKind;
  readonly trackSid: string;
  readonly reason: 'CODEC_UNSUPPORTED';
  readonly codecs: readonly string[];
  readonly message: string;
}

export interface ParticipantEvents {
  'stream-published': (event: StreamEvent) => void;
  'stream-unpublished': (event: StreamEvent) => void;
  'stream-subscribed': (subscription: Subscription) => void;
  'stream-unsubscribed': (subscription: Subscription) => void;
  /** A subscribed track this browser cannot receive (its other subscriptions go on). */
  'track-subscription-failed': (failure: SubscriptionFailure) => void;
  'track-muted': (event: StreamEvent) => void;
  'track-unmuted': (event: StreamEvent) => void;
  'metadata-changed': (metadata: string) => void;
  'attributes-changed': (attributes: Record<string, string>) => void;
  /** The publication's `videoLayer` changed. */
  'video-layer-changed': (publication: RemoteTrackPublication) => void;
}

export declare class RemoteTrackPublication {
  readonly sid: string;
  readonly kind: TrackKind;
  readonly source: TrackSource;
  readonly name: string;
  readonly muted: boolean;
  /** The simulcast layer the forwarder sends this client now, as it reports at each
   * switch; null while not subscribed, or for a track sent in one layer. */
  readonly videoLayer: SimulcastRid | null;
  /** `videoLayer` as a quality: what arrives, not what was asked for. */
  readonly videoQuality: VideoQuality | null;
}

/** A speaker (in `room.remoteParticipants`) or a viewer snapshot from `getParticipants`. */
export declare class RemoteParticipant extends ParticipantView {
  /** Published tracks by kind. */
  readonly tracks: Map<TrackKind, TrackInfo>;
  readonly trackPublications: Map<string, RemoteTrackPublication>;
  /** Receive this speaker's `kind` track (`stream-subscribed` follows). */
  subscribe(kind: TrackKind): Promise<void>;
  unsubscribe(kind: TrackKind): Promise<void>;
  /** Returns `callback` (to pass to `off`). */
  on<E extends keyof ParticipantEvents>(event: E, callback: ParticipantEvents[E]): ParticipantEvents[E];
  off<E extends keyof ParticipantEvents>(event: E, callback: ParticipantEvents[E]): void;
}

export declare class LocalTrackPublication {
  /** A full reconnect keeps the object and gives it a new sid. */
  readonly sid: string;
  readonly kind: TrackKind;
  readonly source: TrackSource;
  readonly track: MediaStreamTrack;
  readonly muted: boolean;
  mute(): Promise<void>;
  unmute(): Promise<void>;
}

export interface PublishOptions {
  source?: TrackSource;
  name?: string;
  /** Put this codec first in the offer (a codec the browser cannot send: TypeError). */
  codec?: Codec | null;
}

export declare class LocalParticipant extends ParticipantView {
  readonly grant: Grant;
  /** Published tracks by kind (the latest of each kind). */
  readonly tracks: Map<TrackKind, LocalTrackPublication>;
  readonly handRaised: boolean;
  publishCamera(
    constraints?: boolean | MediaTrackConstraints,
    options?: { codec?: Codec | null },
  ): Promise<LocalTrackPublication>;
  publishMicrophone(
    constraints?: boolean | MediaTrackConstraints,
    options?: { codec?: Codec | null },
  ): Promise<LocalTrackPublication>;
  /** Open a text stream. */
  streamText(options?: StreamOptions): Promise<StreamWriter>;
  /** Send `text` as one text stream; its info. */
  sendText(text: string, options?: StreamOptions): Promise<StreamInfo>;
  /** Open a byte stream. */
  streamBytes(options?: StreamOptions): Promise<StreamWriter>;
  /** Send a Blob/File, ArrayBuffer or Uint8Array as one byte stream; its info. */
  sendFile(file: Blob | ArrayBuffer | Uint8Array, options?: StreamOptions): Promise<StreamInfo>;
  /** Call `method` on `destinationId`: its response payload; rejects with an `RpcError`. */
  performRpc(options: {
    destinationId: string;
    method: string;
    payload?: string;
    responseTimeout?: number;
  }): Promise<string>;
  registerRpcMethod(
    method: string,
    handler: (invocation: RpcInvocation) => string | Promise<string>,
  ): void;
  unregisterRpcMethod(method: string): void;
  publish(track: MediaStreamTrack, options?: PublishOptions): Promise<LocalTrackPublication>;
  unpublish(kindOrPublication: TrackKind | LocalTrackPublication): Promise<void>;
  setMetadata(metadata: string): Promise<void>;
  /** Merge: an empty value deletes its key. */
  setAttributes(attributes: Record<string, string>): Promise<void>;
  publishData(
    payload: string | Uint8Array | ArrayBuffer,
    options?: { reliable?: boolean; topic?: string; destinationIds?: string[] },
  ): Promise<void>;
  raiseHand(): Promise<void>;
  lowerHand(): Promise<void>;
}

export interface ParticipantsPage {
  participants: RemoteParticipant[];
  nextCursor: string | null;
  total: number;
}

type WithParticipant<F> = F extends (arg: infer A) => void
  ? (arg: A, participant: RemoteParticipant) => void
  : never;

export type RoomEvents = {
  /** Retroactive: a new listener gets one call per speaker already present. */
  'participant-joined': (participant: RemoteParticipant) => void;
  'participant-left': (participant: RemoteParticipant) => void;
  'participant-count-changed': (counts: Counts) => void;
  'active-speakers-changed': (speakers: Array<RemoteParticipant | LocalParticipant>) => void;
  'room-metadata-changed': (metadata: string) => void;
  'data-received': (message: DataMessage) => void;
  'tier-changed': (local: LocalParticipant) => void;
  /** Moderators only; on joining, one per hand already up. */
  'hand-raised': (participant: RemoteParticipant) => void;
  'hand-lowered': (participant: RemoteParticipant) => void;
  /** Moderators only: the roster changed, a `getParticipants` page may be stale. */
  'audience-changed': (counts: Counts) => void;
  disconnected: (reason: string) => void;
  reconnecting: () => void;
  reconnected: () => void;
} & { [E in keyof ParticipantEvents]: WithParticipant<ParticipantEvents[E]> };

export interface JoinOptions {
  /** The edge's base URL (ws, wss, http, https), or several to fail over between;
   * default: this page's origin. */
  url?: string | string[];
  token: string;
  /** Required when the token names no room. */
  roomId?: string | null;
  name?: string | null;
  autoSubscribe?: boolean;
  options?: Partial<ConnectOptions>;
}

export declare class Room {
  constructor(options: JoinOptions);
  readonly id: string;
  readonly sid: string;
  readonly metadata: string;
  readonly connectionState: ConnectionState;
  readonly localParticipant: LocalParticipant;
  /** The speakers other than this client, by participant id. */
  readonly remoteParticipants: Map<string, RemoteParticipant>;
  readonly counts: Counts;
  /** Who is talking now, loudest first. */
  readonly activeSpeakers: Array<RemoteParticipant | LocalParticipant>;
  registerTextStreamHandler(topic: string, handler: StreamHandler): void;
  unregisterTextStreamHandler(topic: string): void;
  registerByteStreamHandler(topic: string, handler: StreamHandler): void;
  unregisterByteStreamHandler(topic: string): void;
  /** Returns `callback` (to pass to `off`). */
  on<E extends keyof RoomEvents>(event: E, callback: RoomEvents[E]): RoomEvents[E];
  off<E extends keyof RoomEvents>(event: E, callback: RoomEvents[E]): void;
  getParticipants(options?: {
    tier?: 'speaker' | 'viewer' | null;
    limit?: number;
    cursor?: string | null;
  }): Promise<ParticipantsPage>;
  /** Leave now (no departure grace). Idempotent. */
  leave(): Promise<void>;
}

/** Join a room; rejects with a StagecastError carrying the refusal's code. */
export declare function join(options: JoinOptions): Promise<Room>;

export declare const Stagecast: Readonly<{
  join: typeof join;
  Room: typeof Room;
  StagecastError: typeof StagecastError;
  socketUrl: typeof socketUrl;
  SDK_NAME: string;
}>;
export default Stagecast;
