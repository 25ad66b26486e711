// Stagecast browser SDK, signaling: errors and close codes, edge URLs, the event emitter,
// and one WebSocket to an edge (numbered requests, replies matched by id, pushes handed on
// in arrival order, ping/pong keepalive). Mirrors stagecast/client/connection.py.

import { decode, encode } from './msgpack.js';

/** Every error the server (or the SDK, for a local check) reports: `code` + `message`. */
export class StagecastError extends Error {
  constructor(code, message = '', retryAfterMs = 0) {
    super(message ? `${code}: ${message}` : code);
    this.name = 'StagecastError';
    this.code = code;
    this.detail = message;
    this.retryAfterMs = retryAfterMs; // the server's hint of when to try again (SERVER_BUSY)
  }
}

/** The reason each WebSocket close code stands for (schemas/errors.py CLOSE_CODES). */
export const CLOSE_REASONS = new Map([
  [4001, 'INVALID_TOKEN'], [4002, 'TOKEN_EXPIRED'], [4008, 'RATE_LIMITED'],
  [4010, 'SLOW_CONSUMER'], [4011, 'DUPLICATE_IDENTITY'], [4012, 'REMOVED'],
  [4013, 'ROOM_DELETED'], [4014, 'ROOM_CLOSED'], [4015, 'ROOM_FULL'],
  [4016, 'RESUME_FAILED'], [4017, 'SERVER_SHUTDOWN'], [4018, 'JOIN_TIMEOUT'],
  [4019, 'TOO_MANY_CONNECTIONS'], [4020, 'SESSION_LOST'], [1000, 'CLIENT_LEFT'],
]);

/** Timeouts and pacing of the signaling connection (the defaults suit production). */
export const DEFAULT_OPTIONS = Object.freeze({
  connectTimeout: 10_000, // ms to open the socket and get `joined`
  requestTimeout: 10_000, // ms a request waits for its reply
  pingInterval: 15_000,
  pingTimeout: 10_000,
  reconnectWindow: null, // ms to keep trying to resume; null: the room's departure grace
  joinRetryWindow: 20_000, // ms a join (or a full reconnect) retries refusals worth retrying
  // ms a request refused UNAVAILABLE (a room-log leader election takes 4-9 s) is sent again
  // with the same id (the edge appends it under the same message id: applied at most once)
  retryWindow: 15_000,
  backoffInitial: 250,
  backoffMax: 2_000,
});

const REPLY_TYPES = new Set(['ack', 'error', 'joined', 'participants_page', 'pong', 'answer']);

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const KEY_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** A fresh `join_key`: 16 url-safe random characters (one per join, kept across retries). */
export function newJoinKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => KEY_ALPHABET[b & 63]).join('');
}

// ------------------------------------------------------------------------------ URLs

/** The `/rtc` WebSocket URL of an edge given as a ws(s):// or http(s):// base URL. */
export function socketUrl(url) {
  const parsed = new URL(String(url).trim());
  const scheme = { 'http:': 'ws:', 'https:': 'wss:', 'ws:': 'ws:', 'wss:': 'wss:' }[parsed.protocol];
  if (!scheme || !parsed.host) throw new TypeError(`not an edge URL: ${url}`);
  let path = parsed.pathname.replace(/\/+$/, '');
  if (!path.endsWith('/rtc')) path += '/rtc';
  return `${scheme}//${parsed.host}${path}`;
}

/** The edge's base URL for this page (`ws://host:port`), when the page is served by one. */
export function defaultUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`;
}

// ------------------------------------------------------------------------------ events

/** Named events with listeners; some events are retroactive (replayed to new listeners). */
export class Emitter {
  constructor(events) {
    this.events = new Set(events);
    this.listeners = new Map();
    this.replays = new Map();
  }

  retroactive(event, replay) {
    this.replays.set(event, replay);
  }

  on(event, callback) {
    this.check(event);
    if (!this.listeners.has(event)) this.listeners.set(event, []);
    this.listeners.get(event).push(callback);
    const replay = this.replays.get(event);
    if (replay) for (const args of replay()) this.call(event, callback, args);
    return callback;
  }

  off(event, callback) {
    this.check(event);
    const list = this.listeners.get(event);
    const at = list ? list.indexOf(callback) : -1;
    if (at >= 0) list.splice(at, 1);
  }

  emit(event, ...args) {
    for (const callback of [...(this.listeners.get(event) ?? [])]) this.call(event, callback, args);
  }

  check(event) {
    if (!this.events.has(event)) {
      throw new TypeError(`unknown event '${event}' (known: ${[...this.events].sort().join(', ')})`);
    }
  }

  // A listener that throws (or rejects) is logged and stops neither the others nor the SDK.
  call(event, callback, args) {
    try {
      const result = callback(...args);
      if (result && typeof result.then === 'function') {
        result.then(null, (err) => console.error(`'${event}' listener failed`, err));
      }
    } catch (err) {
      console.error(`'${event}' listener failed`, err);
    }
  }
}

// ------------------------------------------------------------------------------ connection

/** One open signaling socket: numbered requests, replies by id, pushes handed on. */
export class SignalConnection {
  static open(url, options, onClosed) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.binaryType = 'arraybuffer';
      const fail = (why) => {
        clearTimeout(timer);
        reject(new StagecastError('UNAVAILABLE', `${why} ${url}`));
      };
      const timer = setTimeout(() => { ws.close(); fail('no answer from'); }, options.connectTimeout);
      ws.onopen = () => {
        clearTimeout(timer);
        resolve(new SignalConnection(ws, url, options, onClosed));
      };
      ws.onerror = () => {}; // a close event follows, with what little the browser tells
      ws.onclose = () => fail('cannot reach');
    });
  }

  constructor(ws, url, options, onClosed) {
    this.ws = ws;
    this.url = url;
    this.options = options;
    this.onClosed = onClosed;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, timer}
    this.handler = null;
    this.held = []; // pushes that arrived before the room installed its handler
    this.disconnect = null; // the edge's `disconnect` frame, if any
    this.closeCode = null;
    this.closeReason = '';
    this.closed = false;
    this.pinger = null;
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = (event) => this.finish(event.code, event.reason);
  }

  send(frame) {
    if (this.closed || this.ws.readyState !== WebSocket.OPEN) {
      throw new StagecastError('UNAVAILABLE', 'the connection to the edge is closed');
    }
    this.ws.send(encode(frame));
  }

  /**
   * Send a request (a fresh `id` is set) and resolve with its reply; `error` rejects.
   * An `UNAVAILABLE` reply is sent again with the same id for `retryWindow` ms (not a join,
   * which has its own retries, nor a ping), so a write in flight across a room-log leader
   * election succeeds without the caller seeing an error.
   */
  async request(frame, timeout = this.options.requestTimeout) {
    if (this.closed) throw new StagecastError('UNAVAILABLE', 'the connection to the edge is closed');
    const id = this.nextId++;
    const sent = { ...frame, id };
    const retried = frame.t !== 'join' && frame.t !== 'ping';
    const until = Date.now() + (retried ? this.options.retryWindow : 0);
    try {
      let reply = this.expect(id, frame.t, timeout);
      this.send(sent);
      for (let n = 0; ; n++) {
        const answer = await reply;
        if (answer.t !== 'error') return answer;
        if (answer.code !== 'UNAVAILABLE' || Date.now() >= until) {
          throw new StagecastError(answer.code, answer.message ?? '', answer.retry_after_ms ?? 0);
        }
        // Expect the answer before pausing: the refused attempt may have been stored all
        // the same, and its outcome may come meanwhile.
        reply = this.expect(id, frame.t, timeout);
        const pause = Math.min(this.options.backoffMax, this.options.backoffInitial * 2 ** n);
        const early = await Promise.race([
          reply.then(() => true, () => true),
          sleep(Math.min(pause, until - Date.now())).then(() => false),
        ]);
        if (!early) this.send(sent);
      }
    } finally {
      const waiter = this.pending.get(id);
      if (waiter) clearTimeout(waiter.timer);
      this.pending.delete(id);
    }
  }

  /** A promise of the next reply to request `id` (an `error` frame resolves it too). */
  expect(id, type, timeout) {
    const previous = this.pending.get(id);
    if (previous) clearTimeout(previous.timer);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new StagecastError('UNAVAILABLE', `no reply to ${type} in time`));
      }, timeout);
      this.pending.set(id, { resolve, reject, timer });
    });
  }

  setHandler(handler) {
    this.handler = handler;
    const held = this.held;
    this.held = [];
    for (const frame of held) this.deliver(frame);
  }

  startPinging() {
    if (this.pinger !== null || this.closed) return;
    const loop = async () => {
      if (this.closed) return;
      try {
        await this.request({ t: 'ping', v: 1, at: Date.now() }, this.options.pingTimeout);
      } catch (err) {
        if (err.code === 'UNAVAILABLE' && !this.closed) {
          console.warn(`no pong from ${this.url}: dropping the socket`);
          this.abort();
          return;
        }
      }
      this.pinger = setTimeout(loop, this.options.pingInterval);
    };
    this.pinger = setTimeout(loop, this.options.pingInterval);
  }

  /** Give up on the socket now (a dead network never completes a closing handshake). */
  abort() {
    if (this.closed) return;
    try { this.ws.close(); } catch { /* already closing */ }
    this.finish(null, 'aborted');
  }

  /** Close the socket and wait (bounded) for it to close. Idempotent. */
  close() {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); resolve(); };
      const timer = setTimeout(() => { this.finish(null, 'close timed out'); resolve(); }, 2000);
      this.ws.addEventListener('close', done, { once: true });
      try { this.ws.close(1000); } catch { done(); }
    });
  }

  receive(data) {
    if (typeof data === 'string') return; // the protocol is binary
    let frame;
    try {
      frame = decode(data);
    } catch (err) {
      console.warn('undecodable frame from the edge', err);
      return;
    }
    if (frame === null || typeof frame !== 'object' || typeof frame.t !== 'string') return;
    if (REPLY_TYPES.has(frame.t)) {
      const waiter = frame.id != null ? this.pending.get(frame.id) : undefined;
      if (waiter) {
        this.pending.delete(frame.id);
        clearTimeout(waiter.timer);
        waiter.resolve(frame); // `request` raises an error frame (or sends it again)
        return;
      }
      if (frame.t === 'error') {
        console.warn(`edge error ${frame.code}: ${frame.message ?? ''}`);
        return;
      }
    }
    if (frame.t === 'disconnect') this.disconnect = frame;
    if (this.handler === null) this.held.push(frame);
    else this.deliver(frame);
  }

  deliver(frame) {
    try {
      this.handler(frame);
    } catch (err) {
      console.error(`handling ${frame.t} failed`, err);
    }
  }

  finish(code, reason) {
    if (this.closed) return;
    this.closed = true;
    this.closeCode = code;
    this.closeReason = reason ?? '';
    clearTimeout(this.pinger);
    this.ws.onmessage = null;
    this.ws.onclose = null;
    // An edge over its connection cap accepts, sends an `error` and closes 4019: the
    // join waiting for its reply learns why (a refusal worth retrying elsewhere).
    const lost = code === 4019 ? 'TOO_MANY_CONNECTIONS' : 'UNAVAILABLE';
    for (const waiter of this.pending.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(new StagecastError(lost, 'the connection to the edge was lost'));
    }
    this.pending.clear();
    try { this.onClosed(this); } catch (err) { console.error('close handler failed', err); }
  }
}
