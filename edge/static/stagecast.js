// Stagecast browser SDK: join a room, follow speakers and counts, publish and subscribe
// media. A camelCase mirror of the Python SDK (`stagecast.join`); see docs/browser.md.
//
//   import * as Stagecast from '/static/stagecast.js';
//   const room = await Stagecast.join({ token, roomId: 'demo' });
//   room.on('participant-joined', (p) => p.on('stream-subscribed', (sub) => show(sub)));
//   await room.localParticipant.publishCamera();
//
// One WebSocket (`/rtc`) carries msgpack frames (docs/protocol.md): requests carry an
// `id` that their reply (`ack`, a typed reply or `error`) names; everything else is a push
// applied in arrival order. Media uses one RTCPeerConnection per track.
//
// Modules: stagecast.js (join, Room), session.js (joining, resuming, joining again),
// participants.js, signaling.js (the socket), media.js (peer connections), msgpack.js
// (the codec, over the vendored @msgpack/msgpack). No build step; this folder is also the
// npm package @stagecast/client (package.json, stagecast.d.ts).

import { MediaTransport } from './media.js';
import {
  LocalParticipant, PARTICIPANT_EVENTS, RemoteParticipant, countsOf, grantOf, participantInfo,
  roomInfo, trackInfo,
} from './participants.js';
import { SDK_NAME, Session } from './session.js';
import {
  DEFAULT_OPTIONS, Emitter, StagecastError, defaultUrl, sleep, socketUrl,
} from './signaling.js';
import {
  DataStreams, RPC_TOPIC, STREAM_TOPIC, localParticipantStreams,
} from './streams.js';

Object.assign(LocalParticipant.prototype, localParticipantStreams); // sendText, performRpc, ...

export { Subscription } from './media.js';
export {
  LocalParticipant, LocalTrackPublication, RemoteParticipant, RemoteTrackPublication,
} from './participants.js';
export { SDK_NAME } from './session.js';
export { RpcError, StreamError } from './streams.js';
export {
  CLOSE_REASONS, DEFAULT_OPTIONS, StagecastError, defaultUrl, socketUrl,
} from './signaling.js';

const ROOM_EVENTS = [
  'participant-joined', 'participant-left', 'participant-count-changed',
  'active-speakers-changed', 'room-metadata-changed', 'data-received', 'tier-changed', 'hand-raised', 'hand-lowered',
  'audience-changed', 'disconnected', 'reconnecting', 'reconnected',
  // Participant events, re-emitted with the participant as a second argument:
  ...PARTICIPANT_EVENTS,
];

// Which sequence stream a broadcast frame belongs to (each is ordered on its own).
const STREAM_OF = {
  participant_joined: 'speakers', participant_left: 'speakers', participant_updated: 'speakers',
  track_published: 'speakers', track_unpublished: 'speakers', track_muted: 'speakers',
  room_updated: 'speakers', counts: 'counts', hand: 'mod', viewer_updated: 'mod',
  audience_changed: 'mod', tier_changed: 'self',
};

/**
 * A joined room (make one with `join`). Events (`on` / `off`): `participant-joined`
 * (RemoteParticipant; retroactive), `participant-left`, `participant-count-changed`
 * ({speaker, viewer, total}), `active-speakers-changed` (the speaking participants,
 * loudest first, also in `room.activeSpeakers`; at most four a second, viewers included;
 * each has `isSpeaking` and `audioLevel`, 0..1), `room-metadata-changed`, `data-received` ({payload:
 * Uint8Array, senderId, topic, reliable}), `tier-changed` (the LocalParticipant),
 * `hand-raised` / `hand-lowered` (moderators; `hand-raised` is retroactive: a new listener
 * gets one per hand up, those raised before this client joined included), `audience-changed` ({speaker, viewer, total}; moderators: someone joined, left or
 * changed tier, so a `getParticipants` page may be stale), `disconnected` (reason), `reconnecting`,
 * `reconnected`; and every participant event with the participant as second argument.
 */
export class Room {
  constructor({ url, token, roomId = null, name = null, autoSubscribe = true, options = {} }) {
    const urls = (Array.isArray(url) ? url : [url ?? defaultUrl()]).map(socketUrl);
    this.urls = [...new Set(urls)];
    this.token = token;
    this.requestedRoomId = roomId;
    this.requestedName = name;
    this.autoSubscribe = autoSubscribe;
    this.options = { ...DEFAULT_OPTIONS, ...options };
    this.connectionState = 'connecting';
    this.reason = '';
    this.info = { id: roomId ?? '', sid: '', metadata: '', departureTimeout: 20 };
    this.localParticipant = null;
    this.remoteParticipants = new Map(); // speakers other than this client, by id
    this.counts = countsOf(null);
    this.activeSpeakers = []; // who is talking, loudest first
    this.connection = null;
    this.lastSeq = {};
    this.leaving = false;
    this.session = new Session(this);
    this.media = new MediaTransport(this);
    this.streams = new DataStreams(this);
    this.emitter = new Emitter(ROOM_EVENTS);
    this.emitter.retroactive('participant-joined', () => [...this.remoteParticipants.values()].map((p) => [p]));
    this.hands = new Map(); // hands up (moderators only), by participant id
    this.emitter.retroactive('hand-raised', () => [...this.hands.values()].map((p) => [p]));
  }

  get id() { return this.info.id; }
  get sid() { return this.info.sid; }
  get metadata() { return this.info.metadata; }

  on(event, callback) { return this.emitter.on(event, callback); }
  off(event, callback) { this.emitter.off(event, callback); }

  /** Call `handler(reader, senderId)` for each text stream on `topic` (`for await`, `readAll()`, `info`). */
  registerTextStreamHandler(topic, handler) { this.streams.register('text', topic, handler); }
  unregisterTextStreamHandler(topic) { this.streams.unregister('text', topic); }
  /** The same for byte streams (chunks are Uint8Arrays). */
  registerByteStreamHandler(topic, handler) { this.streams.register('bytes', topic, handler); }
  unregisterByteStreamHandler(topic) { this.streams.unregister('bytes', topic); }

  /**
   * One page of participants, speakers first then viewers: {participants, nextCursor,
   * total}. Pass `nextCursor` back as `cursor` for the next page; walking every page
   * yields exactly the participants present when the first page was read.
   */
  async getParticipants({ tier = null, limit = 50, cursor = null } = {}) {
    if (![null, undefined, 'speaker', 'viewer'].includes(tier)) {
      throw new TypeError(`tier: 'speaker', 'viewer' or null, not ${tier}`);
    }
    const reply = await this.request({
      t: 'get_participants', tier: tier ?? undefined, limit, cursor: cursor ?? undefined,
    });
    return {
      participants: (reply.participants ?? []).map((wire) => this.participantFor(participantInfo(wire))),
      nextCursor: reply.next_cursor ?? null,
      total: reply.total ?? 0,
    };
  }

  /** Leave now (no departure grace); closes every peer connection. Idempotent. */
  async leave() {
    if (this.connectionState === 'disconnected' || this.leaving) return;
    this.leaving = true;
    const connection = this.connection;
    if (connection && !connection.closed) {
      const timeout = Math.min(3000, this.options.requestTimeout);
      await connection.request({ t: 'leave', v: 1 }, timeout).catch(() => {});
    }
    await this.finish('CLIENT_LEFT');
  }

  /**
   * Send a request frame on the live socket (waiting, bounded, through a reconnect). A
   * `NOT_JOINED` answer makes a full reconnect, then the request is sent once more.
   */
  async request(frame) {
    if (this.connectionState === 'reconnecting') {
      const deadline = Date.now() + this.options.requestTimeout;
      while (this.connectionState === 'reconnecting' && Date.now() < deadline) await sleep(50);
    }
    if (this.connectionState !== 'connected' || !this.connection) {
      const why = this.reason || 'not connected';
      throw new StagecastError('UNAVAILABLE', `the room is ${this.connectionState} (${why})`);
    }
    return this.session.request(this.connection, { v: 1, ...frame });
  }

  /** Join (retrying refusals worth retrying, see session.js); resolves with the room. */
  async connect() {
    await this.session.connect();
    return this;
  }

  async finish(reason) {
    if (this.connectionState === 'disconnected') return;
    this.reason = reason;
    this.connectionState = 'disconnected';
    this.streams.close(`this client left the room (${reason})`);
    await this.connection?.close();
    this.media.close();
    for (const publication of this.localParticipant?.publications.values() ?? []) {
      if (publication.ownsTrack) publication.track.stop();
    }
    this.emitter.emit('disconnected', reason);
  }

  // ---- the snapshot and pushed frames

  applyJoined(joined) {
    const resumed = this.localParticipant !== null;
    const room = roomInfo(joined.room);
    if (resumed && room.metadata !== this.info.metadata) {
      this.info = room;
      this.emitter.emit('room-metadata-changed', room.metadata);
    }
    this.info = room;
    const me = participantInfo(joined.participant);
    const grant = grantOf(joined.grant);
    if (!resumed) this.localParticipant = new LocalParticipant(me, grant, this);
    else if (this.localParticipant.apply(me, grant)) this.emitter.emit('tier-changed', this.localParticipant);
    for (const stream of ['speakers', 'counts', 'mod', 'self']) this.lastSeq[stream] = joined.seq;
    const present = new Map();
    for (const wire of joined.speakers ?? []) {
      const info = participantInfo(wire);
      if (info.id !== me.id) present.set(info.id, info);
    }
    for (const id of [...this.remoteParticipants.keys()]) if (!present.has(id)) this.drop(id);
    for (const info of present.values()) this.upsert(info, resumed);
    const counts = countsOf(joined.counts);
    const changed = JSON.stringify(counts) !== JSON.stringify(this.counts);
    this.counts = counts;
    if (resumed && changed) this.emitter.emit('participant-count-changed', counts);
  }

  handleFrame(frame) {
    const stream = STREAM_OF[frame.t];
    if (stream !== undefined) {
      const seq = frame.seq ?? 0;
      if (seq < (this.lastSeq[stream] ?? 0)) return; // re-sent after a statekeeper restart
      this.lastSeq[stream] = seq;
    }
    const handler = FRAME_HANDLERS[frame.t];
    if (handler) handler.call(this, frame);
  }

  isLocal(id) { return this.localParticipant !== null && id === this.localParticipant.id; }

  isSpeaker(participant) { return this.remoteParticipants.get(participant.id) === participant; }

  upsert(info, announce) {
    const current = this.remoteParticipants.get(info.id);
    if (current && current.sid === info.sid) {
      current.update(info);
      this.session.tracksAvailable(current);
      return;
    }
    if (current) this.drop(info.id);
    const participant = new RemoteParticipant(info, this);
    this.remoteParticipants.set(info.id, participant);
    if (this.autoSubscribe) this.subscribeAll(participant);
    if (announce) this.emitter.emit('participant-joined', participant);
    this.session.tracksAvailable(participant);
  }

  drop(id) {
    const participant = this.remoteParticipants.get(id);
    if (!participant) return;
    this.media.dropSubscriber((s) => s.participantId === id);
    this.remoteParticipants.delete(id);
    this.streams.senderLeft(id);
    this.emitter.emit('participant-left', participant);
  }

  // autoSubscribe: every stream a speaker publishes (now and later), as it is announced.
  subscribeAll(participant) {
    participant.on('stream-published', (stream) => {
      // Deferred: the replay runs while the `joined` snapshot is applied, before requests go.
      setTimeout(() => {
        if (!this.localParticipant?.grant.canSubscribe || !this.isSpeaker(participant)) return;
        if (!participant.publications.has(stream.trackSid)) return;
        participant.subscribe(stream.kind).catch((err) => {
          if (this.connectionState === 'disconnected') return;
          console.warn(`auto-subscribe to ${participant.id} ${stream.kind} failed`, err);
        });
      }, 0);
    });
  }

  /** The tracked speaker for `info`, or a transient participant (viewers, self). */
  participantFor(info) {
    const current = this.remoteParticipants.get(info.id);
    return current && current.sid === info.sid ? current : new RemoteParticipant(info, this);
  }

  // A subscriber peer connection received its track (media.js calls this).
  subscribed(subscription) {
    const participant = this.remoteParticipants.get(subscription.participantId);
    if (!participant) return;
    subscription.participant = participant;
    participant.subscriptions.set(subscription.trackSid, subscription);
    participant.emit('stream-subscribed', subscription);
  }

  // A subscribed track this browser cannot receive (media.js calls this).
  subscriptionFailed(failure) {
    console.warn(`stagecast: subscribing to track ${failure.trackSid} failed: ${failure.message}`);
    this.remoteParticipants.get(failure.participantId)?.emit('track-subscription-failed', failure);
  }

  unsubscribed(subscription) {
    const participant = subscription.participant;
    if (!participant || participant.subscriptions.get(subscription.trackSid) !== subscription) return;
    participant.subscriptions.delete(subscription.trackSid);
    participant.videoLayer(subscription.trackSid, null); // nothing arrives any more
    participant.emit('stream-unsubscribed', subscription);
  }
}

// One handler per pushed frame type (`this` is the room).
const FRAME_HANDLERS = {
  participant_joined(frame) {
    const info = participantInfo(frame.participant);
    if (this.isLocal(info.id)) return; // our own join (or promotion) as the room sees it
    if (!info.isViewer) this.upsert(info, true);
  },
  participant_left(frame) {
    this.hands.delete(frame.participant_id);
    const current = this.remoteParticipants.get(frame.participant_id);
    if (current && current.sid === frame.sid) this.drop(frame.participant_id);
  },
  participant_updated(frame) {
    const info = participantInfo(frame.participant);
    if (this.isLocal(info.id)) this.localParticipant.apply(info);
    else if (!info.isViewer) this.upsert(info, true);
  },
  track_published(frame) {
    const participant = this.remoteParticipants.get(frame.participant_id);
    if (!participant) return;
    participant.trackPublished(trackInfo(frame.track));
    this.session.tracksAvailable(participant);
  },
  track_unpublished(frame) {
    const participant = this.remoteParticipants.get(frame.participant_id);
    if (participant) participant.trackUnpublished(frame.track_sid);
    else if (this.isLocal(frame.participant_id)) this.localParticipant.forget(frame.track_sid);
  },
  track_muted(frame) {
    const participant = this.remoteParticipants.get(frame.participant_id);
    if (participant) participant.trackMuted(frame.track_sid, frame.muted);
    else if (this.isLocal(frame.participant_id)) {
      this.localParticipant.trackMuted(frame.track_sid, frame.muted);
    }
  },
  room_updated(frame) {
    const room = roomInfo(frame.room);
    const changed = room.metadata !== this.info.metadata;
    this.info = room;
    if (changed) this.emitter.emit('room-metadata-changed', room.metadata);
  },
  counts(frame) {
    const counts = countsOf(frame.counts);
    if (JSON.stringify(counts) !== JSON.stringify(this.counts)) {
      this.counts = counts;
      this.emitter.emit('participant-count-changed', counts);
    }
  },
  active_speakers(frame) {
    for (const former of this.activeSpeakers) {
      former.isSpeaking = false;
      former.audioLevel = 0;
    }
    const speakers = [];
    for (const speaker of frame.speakers ?? []) {
      const participant = this.remoteParticipants.get(speaker.participant_id)
        ?? (this.isLocal(speaker.participant_id) ? this.localParticipant : null);
      if (!participant) continue; // not known here yet: listed at the next change
      participant.isSpeaking = true;
      participant.audioLevel = speaker.level ?? 0;
      speakers.push(participant);
    }
    this.activeSpeakers = speakers;
    this.emitter.emit('active-speakers-changed', [...speakers]);
  },
  hand(frame) {
    const participant = this.participantFor(participantInfo(frame.participant));
    if (frame.raised) this.hands.set(participant.id, participant);
    else this.hands.delete(participant.id);
    this.emitter.emit(frame.raised ? 'hand-raised' : 'hand-lowered', participant);
  },
  audience_changed(frame) {
    this.emitter.emit('audience-changed', countsOf(frame.counts));
  },
  data(frame) {
    if (frame.topic === STREAM_TOPIC || frame.topic === RPC_TOPIC) {
      this.streams.onData(frame.topic, frame.sender_id, frame.payload);
      return;
    }
    this.emitter.emit('data-received', Object.freeze({
      payload: frame.payload,
      senderId: frame.sender_id ?? null,
      topic: frame.topic ?? null,
      reliable: frame.reliable ?? true,
    }));
  },
  tier_changed(frame) {
    if (frame.resume_token) this.session.resumeToken = frame.resume_token;
    this.localParticipant.apply(participantInfo(frame.participant), grantOf(frame.grant));
    this.emitter.emit('tier-changed', this.localParticipant);
  },
  offer(frame) { this.media.onOffer(frame); },
  layers_wanted(frame) { this.media.onLayersWanted(frame); },
  video_layer(frame) {
    for (const participant of this.remoteParticipants.values()) {
      if (participant.publications.has(frame.track_sid)) participant.videoLayer(frame.track_sid, frame.rid);
    }
  },
  media_moved() { this.media.onMediaMoved(); },
  candidate(frame) { this.media.onCandidate(frame); },
};

/**
 * Join a room; resolves with the Room once the edge accepted the session.
 * `url`: the edge's base URL (ws://, wss://, http://, https://; default: this page's
 * origin) or a list to fail over between. `roomId` is required when the token has none.
 * A refusal rejects with a StagecastError carrying its code (INVALID_TOKEN, ROOM_FULL...).
 */
export async function join({
  url, token, roomId = null, name = null, autoSubscribe = true, options = {},
} = {}) {
  if (!token) throw new TypeError('join: a token is required');
  const room = new Room({ url, token, roomId, name, autoSubscribe, options });
  return room.connect();
}

export const Stagecast = Object.freeze({ join, Room, StagecastError, socketUrl, SDK_NAME });
export default Stagecast;
