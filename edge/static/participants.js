// Stagecast browser SDK, participants: this client's (`LocalParticipant`, its track
// publications) and the others (`RemoteParticipant`, one class for both tiers), plus the
// wire's defaults filled in. Mirrors stagecast/client/participant.py and local.py.

import { Emitter, StagecastError } from './signaling.js';

const KINDS = ['audio', 'video'];
const DEFAULT_SOURCE = { audio: 'microphone', video: 'camera' };
const HAND = 'hand';
const RAISED = 'raised';

export function countsOf(wire) {
  return Object.freeze({
    speaker: wire?.speaker ?? 0,
    viewer: wire?.viewer ?? 0,
    total: wire?.total ?? 0,
  });
}

// Fill in the defaults the wire leaves out (schemas/models.py ParticipantInfo, TrackInfo).
export function participantInfo(wire) {
  return {
    sid: wire.sid,
    id: wire.id,
    name: wire.name ?? '',
    isViewer: wire.is_viewer ?? false,
    kind: wire.kind ?? 'standard',
    metadata: wire.metadata ?? '',
    attributes: { ...(wire.attributes ?? {}) },
    tracks: (wire.tracks ?? []).map(trackInfo),
    joinedAt: wire.joined_at ?? 0,
  };
}

export function trackInfo(wire) {
  return {
    sid: wire.sid,
    kind: wire.kind,
    source: wire.source ?? 'unknown',
    name: wire.name ?? '',
    muted: wire.muted ?? false,
  };
}

export function grantOf(wire) {
  const g = wire ?? {};
  return Object.freeze({
    canPublish: g.can_publish ?? true,
    canSubscribe: g.can_subscribe ?? true,
    canPublishData: g.can_publish_data ?? true,
    canSubscribeData: g.can_subscribe_data ?? true,
    canModerate: g.can_moderate ?? false,
    canRecord: g.can_record ?? false,
    canHls: g.can_hls ?? false,
    canLivestream: g.can_livestream ?? false,
  });
}

export function roomInfo(wire) {
  return {
    id: wire.id,
    sid: wire.sid,
    metadata: wire.metadata ?? '',
    maxParticipants: wire.max_participants ?? 0,
    emptyTimeout: wire.empty_timeout ?? 300,
    departureTimeout: wire.departure_timeout ?? 20,
    livestream: wire.livestream ?? false,
    createdAt: wire.created_at ?? 0,
    counts: countsOf(wire.counts),
  };
}

/** Identity shared by local and remote participants. */
class ParticipantView {
  get id() { return this.info.id; }
  /** The participant id (an alias of `id`). */
  get identity() { return this.info.id; }
  get sid() { return this.info.sid; }
  get name() { return this.info.name; }
  get isViewer() { return this.info.isViewer; }
  get kind() { return this.info.kind; }
  get metadata() { return this.info.metadata; }
  /** The attributes (a copy). */
  get attributes() { return { ...this.info.attributes }; }
  get joinedAt() { return this.info.joinedAt; }
}

// The quality each simulcast layer (rid) is, as `setVideoQuality` names them.
const LAYER_QUALITIES = { q: 'low', h: 'medium', f: 'high' };

/**
 * A track a remote speaker has published. `videoLayer` is the simulcast layer the
 * forwarder sends this client now ('q', 'h' or 'f', as it reports at each switch; null
 * while not subscribed, or for a track sent in one layer); `videoQuality` names it as a
 * quality. `video-layer-changed` (the publication) says when it changes.
 */
export class RemoteTrackPublication {
  constructor(track) {
    Object.assign(this, track);
    this.videoLayer = null;
  }

  get videoQuality() { return LAYER_QUALITIES[this.videoLayer] ?? null; }

  /** The `stream-published` / `stream-unpublished` payload: {kind, source, trackSid}. */
  event() {
    return Object.freeze({ kind: this.kind, source: this.source, trackSid: this.sid });
  }
}

export const PARTICIPANT_EVENTS = [
  'stream-published', 'stream-unpublished', 'stream-subscribed', 'stream-unsubscribed', 'track-subscription-failed',
  'track-muted', 'track-unmuted', 'metadata-changed', 'attributes-changed', 'video-layer-changed',
];

/**
 * Another participant: a speaker (kept in `room.remoteParticipants`) or a viewer snapshot
 * from `getParticipants`. Events: `stream-published` (retroactive), `stream-unpublished`
 * ({kind, source, trackSid}), `stream-subscribed` / `stream-unsubscribed` (a Subscription:
 * {participant, kind, trackSid, track, stream, video, audio}), `track-muted` /
 * `track-unmuted` (the publication), `metadata-changed`, `attributes-changed`,
 * `video-layer-changed` (the publication: its `videoLayer` changed).
 */
export class RemoteParticipant extends ParticipantView {
  constructor(info, room) {
    super();
    this.info = info;
    this.room = room;
    this.isSpeaking = false; // among the room's active speakers (active-speakers-changed)
    this.audioLevel = 0; // 0..1 while speaking
    this.publications = new Map(info.tracks.map((t) => [t.sid, new RemoteTrackPublication(t)]));
    this.subscriptions = new Map(); // track sid -> Subscription (media flowing)
    this.emitter = new Emitter(PARTICIPANT_EVENTS);
    this.emitter.retroactive('stream-published', () => [...this.publications.values()].map((p) => [p.event()]));
  }

  /** Published tracks by kind (the latest of each kind): a Map. */
  get tracks() {
    const byKind = new Map();
    for (const publication of this.publications.values()) byKind.set(publication.kind, publication);
    return byKind;
  }

  /** Published tracks by sid (a copy). */
  get trackPublications() { return new Map(this.publications); }

  on(event, callback) { return this.emitter.on(event, callback); }
  off(event, callback) { this.emitter.off(event, callback); }

  /** Receive this speaker's `kind` track (`stream-subscribed` follows once it arrives). */
  async subscribe(kind) {
    this.checkMedia(kind);
    if (![...this.publications.values()].some((p) => p.kind === kind)) {
      throw new StagecastError('NOT_PUBLISHED', `'${this.id}' has no ${kind} track`);
    }
    await this.room.request({ t: 'subscribe', participant_id: this.id, kind });
  }

  /** Stop receiving this speaker's `kind` track (`stream-unsubscribed`). */
  async unsubscribe(kind) {
    this.checkMedia(kind);
    await this.room.request({ t: 'unsubscribe', participant_id: this.id, kind });
    this.room.media.dropSubscriber((s) => s.participantId === this.id && s.kind === kind);
  }

  checkMedia(kind) {
    if (!KINDS.includes(kind)) throw new TypeError(`kind: 'audio' or 'video', not ${kind}`);
    if (this.isViewer) throw new StagecastError('INVALID_PERMISSIONS', `'${this.id}' is a viewer: viewers have no media`);
  }

  // ---- updates (the room)

  update(info) {
    const old = this.info;
    this.info = info;
    if (info.metadata !== old.metadata) this.emit('metadata-changed', info.metadata);
    const changed = {};
    for (const [k, v] of Object.entries(info.attributes)) if (old.attributes[k] !== v) changed[k] = v;
    for (const k of Object.keys(old.attributes)) if (!(k in info.attributes)) changed[k] = '';
    if (Object.keys(changed).length) this.emit('attributes-changed', changed);
    const current = new Set(info.tracks.map((t) => t.sid));
    for (const sid of [...this.publications.keys()]) if (!current.has(sid)) this.trackUnpublished(sid);
    for (const track of info.tracks) {
      if (!this.publications.has(track.sid)) this.trackPublished(track);
      else this.trackMuted(track.sid, track.muted);
    }
  }

  trackPublished(track) {
    if (this.publications.has(track.sid)) return;
    const publication = new RemoteTrackPublication(track);
    this.publications.set(track.sid, publication);
    this.emit('stream-published', publication.event());
  }

  trackUnpublished(sid) {
    const publication = this.publications.get(sid);
    if (!publication) return;
    this.room.media.dropSubscriber((s) => s.trackSid === sid);
    this.publications.delete(sid);
    this.emit('stream-unpublished', publication.event());
  }

  trackMuted(sid, muted) {
    const publication = this.publications.get(sid);
    if (publication && publication.muted !== muted) {
      publication.muted = muted;
      this.emit(muted ? 'track-muted' : 'track-unmuted', publication);
    }
  }

  // The forwarder now sends layer `rid` of track `sid` (null: nothing).
  videoLayer(sid, rid) {
    const publication = this.publications.get(sid);
    if (publication && publication.videoLayer !== rid) {
      publication.videoLayer = rid;
      this.emit('video-layer-changed', publication);
    }
  }

  // Participant events are also re-emitted on the room, with the participant appended.
  emit(event, payload) {
    this.emitter.emit(event, payload);
    if (this.room.isSpeaker(this)) this.room.emitter.emit(event, payload, this);
  }
}

/** A track this client publishes; `mute()` / `unmute()` it here. */
export class LocalTrackPublication {
  constructor({ sid, kind, source, name, track, participant, ownsTrack, codec = null, simulcast = false }) {
    this.sid = sid; // a full reconnect republishes the track under a new sid
    this.codec = codec; // the codec asked for ('vp8', 'h264'...), null: the browser's choice
    this.simulcast = simulcast; // sent as three layers (rids q, h, f)
    this.kind = kind;
    this.source = source;
    this.name = name;
    this.track = track; // the MediaStreamTrack being sent
    this.muted = false;
    this.participant = participant;
    this.ownsTrack = ownsTrack; // made by publishCamera/publishMicrophone: stopped on unpublish
  }

  /** Mute for everyone (`track-muted` elsewhere; the server stops forwarding). */
  async mute() { await this.setMuted(true); }

  async unmute() { await this.setMuted(false); }

  async setMuted(muted) {
    if (this.participant === null) throw new StagecastError('NOT_PUBLISHED', `track ${this.sid} is no longer published`);
    await this.participant.room.request({ t: 'mute_track', track_sid: this.sid, muted });
    this.muted = muted;
    if (this.track) this.track.enabled = !muted;
  }
}

/** This client's participant: identity, tier, grant, tracks and actions. */
export class LocalParticipant extends ParticipantView {
  constructor(info, grant, room) {
    super();
    this.info = info;
    this.grant = grant;
    this.room = room;
    this.isSpeaking = false;
    this.audioLevel = 0;
    this.publications = new Map(); // sid -> LocalTrackPublication
  }

  /** Published tracks by kind (the latest of each kind): a Map. */
  get tracks() {
    return new Map([...this.publications.values()].map((p) => [p.kind, p]));
  }

  /** Capture the camera (getUserMedia) and publish it (`codec`: as for `publish`). */
  async publishCamera(constraints = true, { codec = null } = {}) {
    const stream = await navigator.mediaDevices.getUserMedia({ video: constraints });
    return this.publish(stream.getVideoTracks()[0], { source: 'camera', ownsTrack: true, codec });
  }

  /** Capture the microphone (getUserMedia) and publish it (`codec: 'red'`: Opus with
   * redundancy, RFC 2198). */
  async publishMicrophone(constraints = true, { codec = null } = {}) {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: constraints });
    return this.publish(stream.getAudioTracks()[0], { source: 'microphone', ownsTrack: true, codec });
  }

  /**
   * Publish a MediaStreamTrack: announce it (`publish_track`), then send it on its own
   * peer connection. `source` defaults to camera / microphone by kind. A viewer gets
   * INVALID_PERMISSIONS without a round trip. If the media negotiation fails, the track is
   * unpublished again and the error is thrown. `codec` ('vp8' or 'h264' for video) puts
   * that codec first in the offer, so the forwarder carries the track in it (every
   * subscriber must then be able to decode it); a codec this browser cannot send throws
   * a TypeError. `simulcast` sends video as three layers (quarter, half and full
   * resolution) so each subscriber gets the one that suits it; by default a camera in
   * VP8 or H.264 does, a screen share and VP9/AV1 send one layer.
   */
  async publish(track, { source, name, ownsTrack = false, codec = null, simulcast = null } = {}) {
    const kind = track?.kind;
    if (!KINDS.includes(kind)) throw new TypeError('publish: a MediaStreamTrack of kind audio or video');
    if (this.isViewer) {
      throw new StagecastError('INVALID_PERMISSIONS', 'viewers cannot publish: they have no media');
    }
    if (!this.grant.canPublish) {
      throw new StagecastError('INVALID_PERMISSIONS', 'the grant does not allow publishing');
    }
    const chosen = source ?? DEFAULT_SOURCE[kind];
    const trackName = (name ?? track.id ?? '').slice(0, 256);
    const reply = await this.announce(kind, chosen, trackName);
    const publication = new LocalTrackPublication({
      sid: reply.sid ?? '', kind, source: chosen, name: trackName, track, participant: this, ownsTrack,
      codec,
      simulcast: simulcast ?? (kind === 'video' && chosen === 'camera' && [null, 'vp8', 'h264'].includes(codec)),
    });
    this.publications.set(publication.sid, publication);
    try {
      await this.room.media.publish(publication);
    } catch (err) {
      await this.unpublish(publication).catch(() => {});
      throw err;
    }
    return publication;
  }

  announce(kind, source, name) {
    return this.room.request({ t: 'publish_track', kind, source, name: name || undefined });
  }

  /**
   * After a full reconnect (a new session): announce every track again, under a new sid,
   * with its mute state, and send its media on a new peer connection. Each publication
   * object stays the same for the application; only its `sid` changes. A track that
   * cannot be published again is forgotten (logged), the others carry on.
   */
  async republish() {
    const old = [...this.publications.values()];
    this.publications.clear();
    for (const publication of old) {
      try {
        const reply = await this.announce(publication.kind, publication.source, publication.name);
        publication.sid = reply.sid ?? '';
        this.publications.set(publication.sid, publication);
        if (publication.muted) {
          await this.room.request({ t: 'mute_track', track_sid: publication.sid, muted: true });
        }
        await this.room.media.publish(publication);
      } catch (err) {
        console.warn(`republishing the ${publication.kind} track failed`, err);
        this.publications.set(publication.sid, publication);
        this.forget(publication.sid);
      }
    }
  }

  /** Unpublish one publication, or every published track of a kind (`NOT_PUBLISHED` if none). */
  async unpublish(kindOrPublication) {
    let targets;
    if (kindOrPublication instanceof LocalTrackPublication) {
      if (!this.publications.has(kindOrPublication.sid)) {
        throw new StagecastError('NOT_PUBLISHED', `track ${kindOrPublication.sid} is not published`);
      }
      targets = [kindOrPublication];
    } else {
      targets = [...this.publications.values()].filter((p) => p.kind === kindOrPublication);
      if (!targets.length) throw new StagecastError('NOT_PUBLISHED', `no ${kindOrPublication} track is published`);
    }
    for (const publication of targets) {
      await this.room.request({ t: 'unpublish_track', track_sid: publication.sid });
      this.forget(publication.sid);
    }
  }

  /** Replace this participant's metadata (everyone sees `metadata-changed`). */
  async setMetadata(metadata) {
    await this.room.request({ t: 'set_metadata', metadata });
    this.info = { ...this.info, metadata };
  }

  /** Merge attributes into this participant's; an empty value deletes its key. */
  async setAttributes(attributes) {
    await this.room.request({ t: 'set_attributes', attributes: { ...attributes } });
    this.merge(attributes);
  }

  /** Send bytes (a Uint8Array or a string, at most 15 KiB) to the room or to some ids. */
  async publishData(payload, { reliable = true, topic, destinationIds } = {}) {
    const bytes = typeof payload === 'string' ? new TextEncoder().encode(payload) : new Uint8Array(payload);
    await this.room.request({
      t: 'publish_data',
      payload: bytes,
      reliable: reliable ? undefined : false,
      topic: topic ?? undefined,
      destination_ids: destinationIds?.length ? [...destinationIds] : undefined,
    });
  }

  /** Set the attribute `hand` = `raised` (moderators get `hand-raised`). */
  async raiseHand() {
    await this.room.request({ t: 'raise_hand' });
    this.merge({ [HAND]: RAISED });
  }

  /** Clear the attribute `hand` (moderators get `hand-lowered`). */
  async lowerHand() {
    await this.room.request({ t: 'lower_hand' });
    this.merge({ [HAND]: '' });
  }

  /** Whether this participant's hand is raised. */
  get handRaised() { return this.info.attributes[HAND] === RAISED; }

  // ---- updates (the room)

  merge(attributes) {
    const merged = { ...this.info.attributes };
    for (const [k, v] of Object.entries(attributes)) {
      if (v) merged[k] = v;
      else delete merged[k];
    }
    this.info = { ...this.info, attributes: merged };
  }

  /** Take the server's view; true when the tier or the grant changed. */
  apply(info, grant) {
    const changed = info.isViewer !== this.info.isViewer
      || (grant !== undefined && JSON.stringify(grant) !== JSON.stringify(this.grant));
    this.info = info;
    if (grant !== undefined) this.grant = grant;
    if (info.isViewer) {
      for (const sid of [...this.publications.keys()]) this.forget(sid); // demoted: tracks leave
    } else {
      for (const track of info.tracks) {
        const publication = this.publications.get(track.sid);
        if (publication) publication.muted = track.muted;
      }
    }
    return changed;
  }

  trackMuted(sid, muted) {
    const publication = this.publications.get(sid);
    if (publication) publication.muted = muted;
  }

  forget(sid) {
    const publication = this.publications.get(sid);
    if (!publication) return;
    this.publications.delete(sid);
    publication.participant = null;
    this.room.media.dropPublisher(sid);
    if (publication.ownsTrack) publication.track.stop();
  }
}

