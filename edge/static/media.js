// Media for the Stagecast browser SDK: one RTCPeerConnection per track, negotiated over
// the signaling socket (schemas/client.py SignalOffer / SignalAnswer / RestartIce).
//
// Publishing a track: after `publish_track` acked its sid, a sendonly peer connection
// offers (non-trickle: the offer is sent once ICE gathering completed, so it carries
// every candidate) with `offer {target: "publisher", track_sid}`; the reply is the
// forwarder's `answer`. Subscribing: after `subscribe` is acked, the edge pushes
// `offer {id: 0, target: "subscriber", track_sid, participant_id, kind}`; the client
// answers on a new peer connection for that track (replacing any older one).
// A connection whose state turns `failed` (the network changed) is renewed: a publisher
// offers again on a fresh connection with `ice_restart`; a subscriber sends `restart_ice`
// and the server pushes a fresh offer. `media_moved` (the forwarder died) renews every
// publisher connection at once.

import { CODEC_UNSUPPORTED, offeredCodecs, receivableCodecs, rejectsMedia, unreceivable } from './receivable.js';

const GATHER_TIMEOUT = 5000; // ms; loopback gathers at once, a slow network gets what it has
const MAX_RESTARTS = 5; // consecutive restarts of one track before giving up
const VIDEO_QUALITIES = ['low', 'medium', 'high'];
const RESIZE_DEBOUNCE = 300; // ms between a video element's resize and its report
const UNLIMITED_SIZE = 16384; // the largest size the wire takes: no layer is larger (no limit)
// Simulcast layers of a camera: quarter, half and full resolution (rids as the forwarder
// expects them, listed lowest first). Chrome encodes no more layers than its table allows
// for the capture size (libwebrtc simulcast.cc: 3 from 960x540, 2 from 480x270, else 1)
// and drops the last ones listed: a 640x360 camera offered as q/h/f never sends f, its
// full size. So a camera is offered only the top layers its size gets (h and f for
// 640x360; one layer, no simulcast, below 480x270). Bitrates follow each layer's size as
// forwarder/layers.py DEFAULT_LAYERS do. The sizes are announced in the offer (`layers`),
// and again (`set_track_layers`) when the track's size changes (applyConstraints).
const LAYERS_CHECK = 2000; // ms between looks at a simulcast track's size
const SIMULCAST_SCALES = [['q', 4], ['h', 2], ['f', 1]];
const LAYER_BITRATES = [[320 * 180, 150_000], [640 * 360, 500_000], [1280 * 720, 1_700_000]];

// Resolve once the connection gathered every ICE candidate (or the timeout passed; then
// say so on the console, with how many candidates there are to connect with).
export function gathered(pc, timeout = GATHER_TIMEOUT) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    let candidates = 0;
    const timer = setTimeout(() => {
      console.warn(candidates
        ? `stagecast: ICE gathering unfinished after ${timeout} ms; going on with ${candidates} candidate(s)`
        : `stagecast: ICE gathering unfinished after ${timeout} ms and no candidate yet: `
          + 'the connection will likely fail (no network? STUN/TURN unreachable?)');
      done();
    }, timeout);
    function done() {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      pc.removeEventListener('icecandidate', count);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === 'complete') done();
    }
    function count(event) {
      if (event.candidate) candidates += 1;
    }
    pc.addEventListener('icegatheringstatechange', check);
    pc.addEventListener('icecandidate', count);
  });
}

/**
 * The `sendEncodings` of a camera sent in simulcast, from its current size (a track that
 * does not say its size counts as 720p); null when its size gets one layer only.
 */
export function simulcastEncodings(track) {
  const { width = 1280, height = 720 } = track?.getSettings?.() ?? {};
  const pixels = width * height;
  const count = pixels >= 960 * 540 ? 3 : pixels >= 480 * 270 ? 2 : 1;
  if (count < 2) return null;
  return SIMULCAST_SCALES.slice(SIMULCAST_SCALES.length - count).map(([rid, scale]) => ({
    rid, scaleResolutionDownBy: scale, maxBitrate: layerBitrate(width / scale, height / scale),
  }));
}

// The bitrate a layer of that size gets: LAYER_BITRATES interpolated by pixel count.
function layerBitrate(width, height) {
  const pixels = width * height;
  const [first] = LAYER_BITRATES;
  const last = LAYER_BITRATES[LAYER_BITRATES.length - 1];
  if (pixels <= first[0]) return Math.max(10_000, Math.round(first[1] * pixels / first[0]));
  for (let i = 1; i < LAYER_BITRATES.length; i += 1) {
    const [lowPx, lowBps] = LAYER_BITRATES[i - 1];
    const [highPx, highBps] = LAYER_BITRATES[i];
    if (pixels <= highPx) return Math.round(lowBps + (highBps - lowBps) * (pixels - lowPx) / (highPx - lowPx));
  }
  return Math.min(50_000_000, Math.round(last[1] * pixels / last[0]));
}

/**
 * The simulcast layers a video track is sent in, as the offer's `layers` announce them:
 * per rid, the size its encoding scales the track's current size to and its max bitrate.
 * null while the track does not say its size.
 */
export function simulcastLayers(track, encodings) {
  const { width, height } = track?.getSettings?.() ?? {};
  if (!width || !height || !encodings) return null;
  return encodings.map((e) => ({
    rid: e.rid,
    width: Math.max(1, Math.floor(width / e.scaleResolutionDownBy)),
    height: Math.max(1, Math.floor(height / e.scaleResolutionDownBy)),
    max_bitrate: e.maxBitrate,
  }));
}

/**
 * A subscribed track: `kind`, `trackSid`, the `track` (MediaStreamTrack) and a `stream`
 * (MediaStream) holding it, as `video` or `audio`; `participant` is the RemoteParticipant.
 */
export class Subscription {
  constructor({ participantId, kind, trackSid, track, stream, room = null }) {
    this.participant = null;
    this.participantId = participantId;
    this.kind = kind;
    this.trackSid = trackSid;
    this.track = track;
    this.stream = stream;
    this.room = room;
    this.quality = null; // 'low' | 'medium' | 'high' once asked for
    this.observer = null;
  }

  get video() { return this.kind === 'video' ? this.track : null; }
  get audio() { return this.kind === 'audio' ? this.track : null; }

  /**
   * Receive this video at most at `quality` ('low', 'medium' or 'high'): a camera
   * published in three layers then comes in the matching one (a single-layer track is
   * unaffected). Resolves once the server acked.
   */
  async setVideoQuality(quality) {
    if (!VIDEO_QUALITIES.includes(quality)) throw new TypeError(`quality: 'low', 'medium' or 'high', not ${quality}`);
    if (this.kind !== 'video') throw new TypeError('setVideoQuality: only video has qualities');
    this.quality = quality;
    await this.room.request({ t: 'set_video_quality', track_sid: this.trackSid, quality });
  }

  /**
   * Adaptive stream: report the size `element` renders this video at (now and when it
   * changes), so the server sends no larger layer than it shows. `null` stops observing
   * and lifts the size limit: the quality asked for alone decides (a fixed choice).
   */
  observeElement(element) {
    this.stopObserving();
    if (element === null && this.room) {
      this.room.request({
        t: 'set_video_quality', track_sid: this.trackSid, width: UNLIMITED_SIZE, height: UNLIMITED_SIZE,
      }).catch((err) => console.warn(`lifting the size limit of ${this.trackSid} failed`, err));
    }
    if (!element || this.kind !== 'video' || typeof ResizeObserver === 'undefined') return;
    let timer = null;
    let last = '';
    const observer = new ResizeObserver(() => {
      if (timer === null) timer = setTimeout(report, RESIZE_DEBOUNCE);
    });
    const report = () => {
      timer = null;
      if (this.observer !== observer || !this.room) return; // stopped while debouncing
      const scale = globalThis.devicePixelRatio || 1;
      const width = Math.min(UNLIMITED_SIZE, Math.round(element.clientWidth * scale));
      const height = Math.min(UNLIMITED_SIZE, Math.round(element.clientHeight * scale));
      const key = `${width}x${height}`;
      if (key === last) return;
      last = key;
      this.room.request({ t: 'set_video_quality', track_sid: this.trackSid, width, height })
        .catch((err) => console.warn(`reporting the size of ${this.trackSid} failed`, err));
    };
    this.observer = observer;
    observer.observe(element);
    report();
  }

  /** Stop observing an element, without a word to the server (the subscription ended). */
  stopObserving() {
    this.observer?.disconnect();
    this.observer = null;
  }
}

export class MediaTransport {
  constructor(room) {
    this.room = room;
    this.publishers = new Map(); // track sid -> {pc, publication, restarts}
    // track sid -> {pc, participantId, kind, trackSid, subscription, restarts}
    this.subscribers = new Map();
    this.chains = new Map(); // track sid -> promise: one negotiation at a time per track
    this.closed = false;
  }

  // Run `task` after every earlier negotiation of the same track.
  serial(sid, task) {
    const next = (this.chains.get(sid) ?? Promise.resolve()).then(task, task);
    const tail = next.catch(() => {});
    this.chains.set(sid, tail);
    tail.then(() => { if (this.chains.get(sid) === tail) this.chains.delete(sid); });
    return next;
  }

  // ---- publishing

  /** Send a publication's track on a new peer connection (resolves once answered). */
  publish(publication) {
    return this.serial(publication.sid, () => this.offer(publication, false));
  }

  async offer(publication, iceRestart) {
    const sid = publication.sid;
    const old = this.publishers.get(sid);
    if (this.closed || publication.participant === null) return;
    const pc = new RTCPeerConnection({ iceServers: [] });
    const entry = { pc, publication, restarts: old?.restarts ?? 0 };
    this.publishers.set(sid, entry);
    if (old) closePublisher(old);
    const init = { direction: 'sendonly' };
    entry.encodings = publication.simulcast ? simulcastEncodings(publication.track) : null;
    if (entry.encodings) init.sendEncodings = entry.encodings.map((e) => ({ ...e }));
    const transceiver = pc.addTransceiver(publication.track, init);
    if (publication.codec) preferCodec(transceiver, publication.kind, publication.codec);
    pc.addEventListener('connectionstatechange', () => this.publisherState(entry));
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      const layers = simulcastLayers(publication.track, entry.encodings);
      const reply = await this.room.request({
        t: 'offer',
        target: 'publisher',
        sdp: pc.localDescription.sdp,
        track_sid: sid,
        ice_restart: iceRestart ? true : undefined,
        layers: layers ?? undefined,
      });
      if (reply.t !== 'answer') throw new Error(`expected an answer to the offer, got ${reply.t}`);
      if (this.publishers.get(sid) !== entry) return; // replaced or unpublished meanwhile
      await pc.setRemoteDescription({ type: 'answer', sdp: reply.sdp });
      if (entry.encodings) {
        entry.layers = JSON.stringify(layers);
        entry.timer = setInterval(() => this.checkLayers(entry), LAYERS_CHECK);
      }
    } catch (err) {
      if (this.publishers.get(sid) === entry) {
        this.publishers.delete(sid);
        closePublisher(entry);
      }
      throw err;
    }
  }

  /**
   * Announce a simulcast track's layers again when its size changed since the last
   * announcement (`set_track_layers`): the forwarder picks each subscriber's layer by them.
   */
  checkLayers(entry) {
    const { publication } = entry;
    if (this.publishers.get(publication.sid) !== entry || entry.announcing) return;
    const layers = simulcastLayers(publication.track, entry.encodings);
    const key = JSON.stringify(layers);
    if (!layers || key === entry.layers) return;
    entry.announcing = true;
    this.room.request({ t: 'set_track_layers', track_sid: publication.sid, layers })
      .then(() => { entry.layers = key; })
      .catch((err) => {
        console.warn(`announcing the layers of ${publication.sid} failed`, err);
        if (err?.code === 'UNKNOWN_TYPE') clearInterval(entry.timer); // an older server
      })
      .finally(() => { entry.announcing = false; });
  }

  publisherState(entry) {
    const { pc, publication } = entry;
    if (this.publishers.get(publication.sid) !== entry) return;
    if (pc.connectionState === 'connected') entry.restarts = 0;
    if (pc.connectionState !== 'failed' || entry.restarts >= MAX_RESTARTS) return;
    entry.restarts += 1;
    this.serial(publication.sid, () => this.offer(publication, true)).catch((err) => {
      console.warn(`ICE restart of track ${publication.sid} failed`, err);
    });
  }

  /**
   * Dynacast: the server says which simulcast layers of a published track someone takes;
   * the other encodings stop sending (`active: false`) until they are wanted again.
   */
  onLayersWanted(frame) {
    const entry = this.publishers.get(frame.track_sid);
    if (!entry || !entry.encodings) return;
    const wanted = new Set(frame.rids ?? []);
    entry.wanted = wanted;
    const sender = entry.pc.getSenders()[0];
    if (!sender) return;
    const parameters = sender.getParameters();
    if (!parameters.encodings?.length) return;
    let changed = false;
    for (const encoding of parameters.encodings) {
      const active = wanted.has(encoding.rid);
      if (encoding.active !== active) {
        encoding.active = active;
        changed = true;
      }
    }
    if (changed) {
      sender.setParameters(parameters).catch((err) => console.warn(`dynacast on ${frame.track_sid} failed`, err));
    }
  }

  /**
   * `media_moved`: the forwarder carrying this session died and the server placed its media
   * on another one. Every published track is offered again at once on a fresh connection
   * (same track sid; the edge routes it to the new forwarder; nobody sees an unpublish)
   * rather than after the old connection times out. Subscribed tracks need nothing: the new
   * forwarder offers them, and each offer replaces its track's old connection.
   */
  onMediaMoved() {
    for (const entry of [...this.publishers.values()]) {
      const { publication } = entry;
      entry.restarts = 0;
      this.serial(publication.sid, () => this.offer(publication, false)).catch((err) => {
        if (!this.closed) console.warn(`moving track ${publication.sid} failed`, err);
      });
    }
  }

  /** Stop sending a track (its publication was unpublished). */
  dropPublisher(sid) {
    const entry = this.publishers.get(sid);
    if (!entry) return;
    this.publishers.delete(sid);
    closePublisher(entry);
  }

  // ---- subscribing

  /** A pushed `offer` (target subscriber): answer it on a fresh connection. */
  onOffer(frame) {
    if (frame.target !== 'subscriber' || !frame.track_sid) return;
    this.serial(frame.track_sid, () => this.answer(frame)).catch((err) => {
      if (!this.closed) console.warn(`answering the offer for track ${frame.track_sid} failed`, err);
    });
  }

  async answer(frame) {
    if (this.closed) return;
    const sid = frame.track_sid;
    const old = this.subscribers.get(sid);
    const offered = offeredCodecs(frame.sdp);
    const missing = unreceivable(offered, receivableCodecs(frame.kind ?? old?.kind));
    if (missing.length) { this.cannotReceive(frame, old, missing); return; }
    const pc = new RTCPeerConnection({ iceServers: [] });
    const entry = {
      pc,
      participantId: frame.participant_id ?? old?.participantId ?? null,
      kind: frame.kind ?? old?.kind ?? null,
      trackSid: sid,
      subscription: null,
      restarts: old?.restarts ?? 0,
    };
    this.subscribers.set(sid, entry);
    old?.pc.close();
    pc.addEventListener('track', (event) => {
      if (this.subscribers.get(sid) !== entry) return;
      // A renewed connection for the same track: the old subscription ends first.
      if (old?.subscription) this.room.unsubscribed(old.subscription);
      const track = event.track;
      entry.subscription = new Subscription({
        participantId: entry.participantId,
        kind: entry.kind ?? track.kind,
        trackSid: sid,
        track,
        stream: event.streams[0] ?? new MediaStream([track]),
        room: this.room,
      });
      this.room.subscribed(entry.subscription);
    });
    pc.addEventListener('connectionstatechange', () => this.subscriberState(entry));
    try {
      await pc.setRemoteDescription({ type: 'offer', sdp: frame.sdp });
      await pc.setLocalDescription(await pc.createAnswer());
      if (rejectsMedia(pc.localDescription.sdp)) { this.cannotReceive(frame, entry, offered); return; }
      await gathered(pc);
      if (this.subscribers.get(sid) !== entry) return;
      await this.room.request({
        t: 'answer', target: 'subscriber', sdp: pc.localDescription.sdp, track_sid: sid,
      });
    } catch (err) {
      if (this.subscribers.get(sid) === entry) this.closeSubscriber(entry);
      if (old?.subscription && !entry.subscription) this.room.unsubscribed(old.subscription);
      throw err;
    }
  }

  /** This browser cannot decode the offered `codecs`: no answer, no connection for the
   *  track; `track-subscription-failed` (CODEC_UNSUPPORTED) at once. */
  cannotReceive(frame, entry, codecs) {
    if (entry) this.closeSubscriber(entry);
    this.room.subscriptionFailed(Object.freeze({
      participantId: frame.participant_id ?? entry?.participantId ?? null,
      kind: frame.kind ?? entry?.kind ?? null,
      trackSid: frame.track_sid,
      reason: CODEC_UNSUPPORTED,
      codecs: Object.freeze([...codecs]),
      message: `this browser cannot decode ${codecs.join(' or ') || 'the offered codec'}`,
    }));
  }

  subscriberState(entry) {
    const { pc, trackSid } = entry;
    if (this.subscribers.get(trackSid) !== entry) return;
    if (pc.connectionState === 'connected') entry.restarts = 0;
    if (pc.connectionState !== 'failed' || entry.restarts >= MAX_RESTARTS || this.closed) return;
    entry.restarts += 1;
    this.room.request({ t: 'restart_ice', track_sid: trackSid }).catch((err) => {
      console.warn(`ICE restart of track ${trackSid} failed`, err);
    });
  }

  /** Close the subscriber connections matching `predicate` (emits `stream-unsubscribed`). */
  dropSubscriber(predicate) {
    for (const entry of [...this.subscribers.values()]) if (predicate(entry)) this.closeSubscriber(entry);
  }

  closeSubscriber(entry) {
    if (this.subscribers.get(entry.trackSid) === entry) this.subscribers.delete(entry.trackSid);
    entry.pc.close();
    entry.subscription?.stopObserving();
    if (entry.subscription) this.room.unsubscribed(entry.subscription);
  }

  /** A trickled candidate (the server may send some; the client itself never trickles). */
  onCandidate(frame) {
    const table = frame.target === 'publisher' ? this.publishers : this.subscribers;
    const entry = frame.track_sid ? table.get(frame.track_sid) : undefined;
    if (!entry) return;
    entry.pc.addIceCandidate({
      candidate: frame.candidate,
      sdpMid: frame.sdp_mid ?? null,
      sdpMLineIndex: frame.sdp_mline_index ?? null,
    }).catch((err) => console.warn('a remote ICE candidate was refused', err));
  }

  /** Close every peer connection (no remote calls). Idempotent. */
  close() {
    this.closed = true;
    this.reset();
  }

  /**
   * The session was joined again (a full reconnect): every connection leads to a session
   * that is gone. Close them all (subscribers hear `stream-unsubscribed`) but stay usable:
   * the room republishes and resubscribes on new connections, as after a first join.
   */
  reset() {
    for (const entry of this.publishers.values()) closePublisher(entry);
    this.publishers.clear();
    for (const entry of [...this.subscribers.values()]) this.closeSubscriber(entry);
  }

  /** Inbound/outbound RTP statistics of every connection (for tests and dashboards). */
  async stats() {
    const out = { publishers: {}, subscribers: {} };
    for (const [sid, { pc }] of this.publishers) {
      out.publishers[sid] = rtp(await pc.getStats(), 'outbound-rtp', pc);
    }
    for (const [sid, { pc }] of this.subscribers) {
      out.subscribers[sid] = rtp(await pc.getStats(), 'inbound-rtp', pc);
    }
    return out;
  }
}

function closePublisher(entry) {
  clearInterval(entry.timer);
  entry.pc.close();
}

// Put `codec` first in the transceiver's offer (H.264: packetization-mode 1, constrained
// baseline 42e01f first; VP9: profile 0 first; as the forwarder negotiates them).
function preferCodec(transceiver, kind, codec) {
  const capabilities = RTCRtpSender.getCapabilities(kind)?.codecs ?? [];
  const mime = `${kind}/${codec}`.toLowerCase();
  const fmtp = (c) => c.sdpFmtpLine ?? '';
  const wanted = capabilities.filter((c) => c.mimeType.toLowerCase() === mime
    && !(mime === 'video/h264' && !fmtp(c).includes('packetization-mode=1')));
  if (!wanted.length || !transceiver.setCodecPreferences) {
    throw new TypeError(`publish: this browser cannot send ${codec}`);
  }
  const first = (c) => /profile-level-id=42e01f|profile-id=0/.test(fmtp(c))
    || (mime === 'video/vp9' && !fmtp(c).includes('profile-id'));
  wanted.sort((a, b) => Number(first(b)) - Number(first(a)));
  const rest = capabilities.filter((c) => !wanted.includes(c));
  transceiver.setCodecPreferences([...wanted, ...rest]);
}

function rtp(report, type, pc) {
  const out = { state: pc.connectionState };
  report.forEach((s) => {
    if (s.type !== type) return;
    Object.assign(out, {
      kind: s.kind,
      packets: s.packetsSent ?? s.packetsReceived ?? 0,
      bytes: s.bytesSent ?? s.bytesReceived ?? 0,
      framesEncoded: s.framesEncoded,
      framesDecoded: s.framesDecoded,
      codec: report.get(s.codecId)?.mimeType,
    });
  });
  return out;
}
