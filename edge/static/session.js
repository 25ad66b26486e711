// Stagecast browser SDK, the session's lifecycle: join, resume after a dropped socket,
// join again, retry. Mirrors stagecast/client/session.py.
//
// A connect retries refusals worth retrying (UNAVAILABLE, SERVER_BUSY, an edge that does
// not answer...) over the URL list with a bounded backoff for `joinRetryWindow` ms, sending
// the same `join_key` each time, so a join that timed out but did land is continued, never
// doubled. A refusal with a retry-after hint (SERVER_BUSY) waits at least the hint, times a
// random factor in [1, 2), so clients refused together do not come back together.
//
// A socket that drops without a server `disconnect` resumes (`join {resume}`) within the
// room's departure grace. When the server's session itself is gone (`RESUME_FAILED`, a
// `disconnect` with `SESSION_LOST`, or `NOT_JOINED` answered to a request) the SDK does
// what LiveKit calls a full reconnect: it joins again with its token (same identity, a
// new sid, a new join key), republishes its tracks, restores its subscriptions, then
// emits `reconnected`.

import {
  CLOSE_REASONS, SignalConnection, StagecastError, newJoinKey, sleep,
} from './signaling.js';

export const SDK_NAME = 'stagecast-js/0.1';

/** Join refusals worth another attempt (on this or another edge). */
export const RETRYABLE = new Set([
  'UNAVAILABLE', 'INTERNAL', 'RATE_LIMITED', 'TOO_MANY_CONNECTIONS', 'SERVER_BUSY',
]);

/** The pause before the next attempt: `delay`, or the error's retry-after hint (ms) times
 * `jitter` (from [1, 2)) when that is longer. */
export function honorHint(delay, err, jitter) {
  const hint = err?.retryAfterMs ?? 0;
  return hint > 0 ? Math.max(delay, hint * jitter) : delay;
}
// Why a reconnect joins again instead of resuming: the server's session is gone.
const REJOIN_ON = new Set(['RESUME_FAILED', 'SESSION_LOST']);
// Close codes that do not end the session: resume (4017, 4019) or join again (4020).
const NOT_TERMINAL = new Set(['SERVER_SHUTDOWN', 'TOO_MANY_CONNECTIONS', 'SESSION_LOST']);

// A subscription refused with one of these is restored once the track is published.
const LATER = new Set(['NOT_PUBLISHED', 'PARTICIPANT_NOT_FOUND']);

const keyOf = (participantId, kind) => `${kind} ${participantId}`;

/** Why a lost socket ends the session, or null when the SDK should resume or join again. */
export function terminalReason(lost) {
  if (lost.disconnect) {
    const { reason, can_reconnect: canReconnect } = lost.disconnect;
    if (reason === 'SERVER_SHUTDOWN') return canReconnect ? null : reason;
    if (reason === 'SESSION_LOST') return null;
    return reason;
  }
  const reason = CLOSE_REASONS.get(lost.closeCode);
  return reason === undefined || NOT_TERMINAL.has(reason) ? null : reason;
}

/** The connection lifecycle behind one Room (see the module comment). */
export class Session {
  constructor(room) {
    this.room = room;
    this.resumeToken = '';
    this.joinKey = newJoinKey(); // sent with every attempt of one join
    this.urlIndex = 0;
    this.subscriptions = new Map(); // (participantId, kind) subscribed to: restored by a rejoin
    this.resubscribeLater = new Map(); // those a rejoin could not restore yet (no such track)
    this.rejoins = 0; // full reconnects done
    this.rejoinNext = false; // the next recovery joins again (a request got NOT_JOINED)
  }

  backoff(attempt) {
    const { backoffInitial, backoffMax } = this.room.options;
    return Math.min(backoffMax, backoffInitial * 2 ** Math.max(0, attempt)) * (0.8 + 0.4 * Math.random());
  }

  /** Join through the first edge that answers, retrying retryable refusals (module comment). */
  async connect() {
    const room = this.room;
    const { urls } = room;
    const deadline = Date.now() + room.options.joinRetryWindow;
    let last = null;
    for (let attempt = 0; ;) {
      const index = attempt % urls.length;
      try {
        await this.attempt(urls[index], false);
        this.urlIndex = index;
        return;
      } catch (err) {
        if (!RETRYABLE.has(err?.code) || room.leaving) {
          room.connectionState = 'disconnected';
          throw err;
        }
        last = err;
      }
      attempt += 1;
      const delay = honorHint(
        attempt >= urls.length ? this.backoff(attempt - urls.length) : 0, last, 1 + Math.random(),
      );
      if (attempt >= urls.length && Date.now() + delay >= deadline) break;
      await sleep(delay);
    }
    room.connectionState = 'disconnected';
    if (last.code !== 'UNAVAILABLE') throw last;
    throw new StagecastError('UNAVAILABLE', `no edge answered (${urls.join(', ')}): ${last.detail}`);
  }

  /** Open a socket to `url` and join (or resume) on it; install it on success. */
  async attempt(url, resume) {
    const room = this.room;
    const connection = await SignalConnection.open(url, room.options, (c) => this.onClosed(c));
    let reply;
    try {
      reply = await connection.request({
        t: 'join',
        v: 1,
        token: room.token,
        room_id: room.requestedRoomId ?? undefined,
        name: room.requestedName ?? undefined,
        resume: resume ? this.resumeToken : undefined,
        auto_subscribe: room.autoSubscribe ? undefined : false,
        sdk: SDK_NAME,
        join_key: resume ? undefined : this.joinKey,
      }, room.options.connectTimeout);
    } catch (err) {
      await connection.close();
      throw err;
    }
    if (room.leaving) {
      await connection.close();
      throw new StagecastError('CLIENT_LEFT', 'left while joining');
    }
    room.connection = connection;
    this.resumeToken = reply.resume_token || this.resumeToken;
    room.requestedRoomId ??= reply.room.id; // a resume must name the room the join chose
    room.applyJoined(reply);
    connection.setHandler((frame) => room.handleFrame(frame));
    connection.startPinging();
    room.connectionState = 'connected';
    return reply;
  }

  // ---- requests

  /**
   * Send a request on `connection`; a `NOT_JOINED` answer (the server dropped this
   * session while the socket stayed open) makes a full reconnect, then the request is
   * sent once more on the new session.
   */
  async request(connection, frame) {
    const room = this.room;
    let reply;
    try {
      reply = await connection.request(frame);
    } catch (err) {
      if (err?.code !== 'NOT_JOINED' || room.leaving || connection !== room.connection) throw err;
      console.warn('the server lost this session: joining again');
      this.rejoinNext = true;
      connection.abort();
      const deadline = Date.now() + room.options.joinRetryWindow + 1000;
      while (!this.replaced(connection) && Date.now() < deadline) await sleep(50);
      const current = room.connection;
      if (room.connectionState !== 'connected' || current === connection || current.closed) throw err;
      reply = await current.request(frame);
    }
    this.noteSubscription(frame);
    return reply;
  }

  // Whether a reconnect that began on `connection` has ended (either way).
  replaced(connection) {
    const { connectionState, connection: current } = this.room;
    return connectionState === 'disconnected' || (current !== connection && connectionState === 'connected');
  }

  noteSubscription(frame) {
    const key = keyOf(frame.participant_id, frame.kind);
    if (frame.t === 'subscribe') this.subscriptions.set(key, { participantId: frame.participant_id, kind: frame.kind });
    else if (frame.t === 'unsubscribe') this.subscriptions.delete(key);
  }

  // ---- losing the socket

  onClosed(connection) {
    const room = this.room;
    if (connection !== room.connection || room.leaving || room.connectionState === 'disconnected') return;
    this.recover(connection);
  }

  // The socket dropped: resume within the departure grace, join again, or end the session.
  async recover(lost) {
    const room = this.room;
    const terminal = terminalReason(lost);
    if (terminal !== null) {
      await room.finish(terminal);
      return;
    }
    let rejoin = this.rejoinNext || REJOIN_ON.has(lost.disconnect?.reason) || lost.closeCode === 4020;
    this.rejoinNext = false;
    const shutdown = lost.disconnect !== null || lost.closeCode === 4017;
    room.connectionState = 'reconnecting';
    room.emitter.emit('reconnecting');
    let deadline = Date.now() + this.window(rejoin);
    const start = this.urlIndex + (shutdown ? 1 : 0);
    if (rejoin) this.prepareRejoin();
    let last = null;
    for (let attempt = 0; !room.leaving;) {
      const delay = honorHint(rejoin && attempt === 0 ? 0 : this.backoff(attempt), last, 1 + Math.random());
      if (Date.now() + delay >= deadline) break;
      await sleep(delay);
      const index = (start + attempt) % room.urls.length;
      attempt += 1;
      try {
        await this.attempt(room.urls[index], !rejoin);
        if (rejoin) await this.restore();
      } catch (err) {
        if (room.leaving) return;
        last = err;
        if (RETRYABLE.has(err?.code)) continue;
        if (REJOIN_ON.has(err?.code) && !rejoin) {
          console.info(`the session is gone (${err.code}): joining again`);
          rejoin = true;
          attempt = 0;
          deadline = Date.now() + this.window(rejoin);
          this.prepareRejoin();
          continue;
        }
        await room.finish(err?.code ?? 'INTERNAL');
        return;
      }
      this.urlIndex = index;
      room.emitter.emit('reconnected');
      return;
    }
    if (!room.leaving) await room.finish('UNAVAILABLE');
  }

  // Ms to keep trying: a resume only makes sense within the departure grace.
  window(rejoin) {
    const { options, info } = this.room;
    if (rejoin) return options.joinRetryWindow;
    return options.reconnectWindow ?? Math.max(500, info.departureTimeout * 1000 - 1000);
  }

  // The server's session is gone, and its media connections with it; a new join key.
  prepareRejoin() {
    this.joinKey = newJoinKey();
    this.rejoins += 1;
    this.room.media.reset();
  }

  /**
   * After a full reconnect: republish the tracks and restore the subscriptions. One whose
   * publisher has no such track right now (it is joining again too, say) is restored when
   * the track is published (`tracksAvailable`). A failure here is logged, never fatal:
   * the session is joined, and one track or subscription must not end it.
   */
  async restore() {
    const room = this.room;
    await room.localParticipant.republish();
    this.resubscribeLater.clear();
    for (const [key, wanted] of this.subscriptions) {
      const participant = room.remoteParticipants.get(wanted.participantId);
      const kind = wanted.kind;
      if (!participant || ![...participant.publications.values()].some((p) => p.kind === kind)) {
        this.resubscribeLater.set(key, wanted);
        continue;
      }
      await room.request({ t: 'subscribe', participant_id: wanted.participantId, kind }).catch((err) => {
        if (LATER.has(err?.code)) this.resubscribeLater.set(key, wanted);
        else console.warn(`restoring the subscription to ${wanted.participantId} ${kind} failed`, err);
      });
    }
  }

  /** A speaker's tracks changed: restore the subscriptions a full reconnect kept. */
  tracksAvailable(participant) {
    if (!this.resubscribeLater.size) return;
    const kinds = new Set([...participant.publications.values()].map((p) => p.kind));
    for (const kind of kinds) {
      const key = keyOf(participant.id, kind);
      if (!this.resubscribeLater.delete(key)) continue;
      // Deferred, like autoSubscribe: this runs while a frame (or the snapshot) is applied.
      setTimeout(() => {
        this.room.request({ t: 'subscribe', participant_id: participant.id, kind }).catch((err) => {
          console.info(`restoring the subscription to ${participant.id} ${kind}: ${err}`);
        });
      }, 0);
    }
  }
}
