// Types of the Stagecast browser SDK (stagecast.js). The same files the edge serves at
// /static/ are the npm package `@stagecast/client`; see docs/browser.md.

export declare const SDK_NAME: string;

/** Every error the server (or the SDK, for a local check) reports. */
export declare class StagecastError extends Error {
  constructor(code: string, message?: string);
  /** A code such as `INVALID_TOKEN`, `ROOM_FULL`, `INVALID_PERMISSIONS`. */
  readonly code: string;
  readonly detail: string;
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

export interface ParticipantEvents {
  'stream-published': (event: StreamEvent) => void;
  'stream-unpublished': (event: StreamEvent) => void;
  'stream-subscribed': (subscription: Subscription) => void;
  'stream-unsubscribed': (subscription: Subscription) => void;
  'track-muted': (event: StreamEvent) => void;
  'track-unmuted': (event: StreamEvent) => void;
  'metadata-changed': (metadata: string) => void;
  'attributes-changed': (attributes: Record<string, string>) => void;
}

export declare class RemoteTrackPublication {
  readonly sid: string;
  readonly kind: TrackKind;
  readonly source: TrackSource;
  readonly name: string;
  readonly muted: boolean;
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
