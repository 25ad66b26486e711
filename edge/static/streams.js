// Text and byte streams and RPC for the Stagecast browser SDK (the Python SDK's, in camelCase).
//
// Every message rides in a reliable data message on a reserved topic (docs/protocol.md,
// "Streams and RPC inside data"): a stream is a header, numbered chunks of at most 14 KiB and
// a trailer; an RPC is a request, an ack and a response, with payloads of up to 15 KiB (the
// reserved topics carry 3 KiB of envelope beyond the 15 KiB of ordinary data). A chunk the edge refuses as over the
// sender's data budget is sent again after a pause (for up to 30 s). A reader buffers at most
// 4 MiB unread and raises (rejects) when its sender leaves, aborts, or chunks were lost.

import { decode, encode } from './msgpack.js';
import { StagecastError, sleep } from './signaling.js';

export const STREAM_TOPIC = 'sc.stream';
export const RPC_TOPIC = 'sc.rpc';
export const CHUNK_BYTES = 14 * 1024;
export const RPC_PAYLOAD_BYTES = 15 * 1024;
const READER_BUFFER_BYTES = 4 * 1024 * 1024;
const MAX_OPEN_STREAMS = 64;
const BUDGET_WAIT_MS = 30_000;
const ACK_TIMEOUT_MS = 5_000;
const ACK_DELAY_MS = 500;

const utf8 = new TextEncoder();
const newId = () => Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');

/** A stream failed: `code` is STREAM_CUT_OFF or STREAM_BUFFER_FULL; `streamId` names it. */
export class StreamError extends StagecastError {
  constructor(code, message, streamId) {
    super(code, message);
    this.streamId = streamId;
  }
}

/** An RPC failed, with LiveKit's code (the static constants). */
export class RpcError extends Error {
  constructor(code, message = '', data = '') {
    super(message ? `RPC error ${code}: ${message}` : `RPC error ${code}`);
    this.name = 'RpcError';
    this.code = code;
    this.rpcMessage = message;
    this.data = data;
  }
}
Object.assign(RpcError, {
  APPLICATION_ERROR: 1500,
  CONNECTION_TIMEOUT: 1501,
  RESPONSE_TIMEOUT: 1502,
  RECIPIENT_DISCONNECTED: 1503,
  RESPONSE_PAYLOAD_TOO_LARGE: 1504,
  SEND_FAILED: 1505,
  UNSUPPORTED_METHOD: 1400,
  RECIPIENT_NOT_FOUND: 1401,
  REQUEST_PAYLOAD_TOO_LARGE: 1402,
});

/** Send one message as reliable data on `topic`, retrying while over the data budget. */
async function sendReliable(room, topic, message, destinationIds = []) {
  const frame = {
    t: 'publish_data',
    payload: encode({ v: 1, ...message }),
    topic,
    destination_ids: destinationIds.length ? [...destinationIds] : undefined,
  };
  const deadline = Date.now() + BUDGET_WAIT_MS;
  let pause = 50;
  for (;;) {
    try {
      await room.request(frame);
      return;
    } catch (err) {
      if (err?.code !== 'RATE_LIMITED' || Date.now() + pause > deadline) throw err;
      await sleep(pause);
      pause = Math.min(pause * 2, 1000);
    }
  }
}

function textPieces(bytes) {
  const pieces = [];
  let start = 0;
  while (start < bytes.length) {
    let end = Math.min(start + CHUNK_BYTES, bytes.length);
    while (end < bytes.length && end > start && (bytes[end] & 0xc0) === 0x80) end -= 1;
    pieces.push(bytes.subarray(start, end));
    start = end;
  }
  return pieces;
}

function bytePieces(bytes) {
  const pieces = [];
  for (let at = 0; at < bytes.length; at += CHUNK_BYTES) pieces.push(bytes.subarray(at, at + CHUNK_BYTES));
  return pieces;
}

// ---- reading

class StreamReader {
  constructor(info, text) {
    this.info = info;
    this.text = text;
    this.chunks = [];
    this.buffered = 0;
    this.nextIndex = 0;
    this.done = false;
    this.error = null;
    this.wake = null;
  }

  notify() { const wake = this.wake; this.wake = null; wake?.(); }

  push(chunk) {
    if (this.done || this.error) return false;
    if (chunk.index !== this.nextIndex) {
      this.fail(new StreamError('STREAM_CUT_OFF', `chunk ${chunk.index} arrived where ${this.nextIndex} was due: chunks were lost`, this.info.id));
      return false;
    }
    const content = chunk.content ?? new Uint8Array();
    if (this.buffered + content.length > READER_BUFFER_BYTES) {
      this.chunks = [];
      this.buffered = 0;
      this.fail(new StreamError('STREAM_BUFFER_FULL', `more than ${READER_BUFFER_BYTES} unread bytes`, this.info.id));
      return false;
    }
    this.nextIndex += 1;
    this.chunks.push(content);
    this.buffered += content.length;
    this.notify();
    return true;
  }

  finish(trailer) {
    if (this.done || this.error) return;
    if (trailer.reason) this.fail(new StreamError('STREAM_CUT_OFF', `the sender aborted: ${trailer.reason}`, this.info.id));
    else if ((trailer.chunks ?? 0) !== this.nextIndex) this.fail(new StreamError('STREAM_CUT_OFF', `${this.nextIndex} of ${trailer.chunks} chunks arrived`, this.info.id));
    else { this.done = true; this.notify(); }
  }

  fail(error) {
    if (this.done || this.error) return;
    this.error = error;
    this.notify();
  }

  async nextBytes() {
    for (;;) {
      if (this.chunks.length) {
        const content = this.chunks.shift();
        this.buffered -= content.length;
        return content;
      }
      if (this.error) throw this.error;
      if (this.done) return null;
      await new Promise((resolve) => { this.wake = resolve; });
    }
  }

  /** `for await (const chunk of reader)`: strings for text streams, Uint8Arrays for bytes. */
  async *[Symbol.asyncIterator]() {
    const decoder = this.text ? new TextDecoder('utf-8', { fatal: true }) : null;
    for (let content = await this.nextBytes(); content !== null; content = await this.nextBytes()) {
      if (!decoder) { yield content; continue; }
      const text = decoder.decode(content, { stream: true });
      if (text) yield text;
    }
  }

  /** The whole stream once complete: a string (text) or a Uint8Array (bytes). */
  async readAll() {
    const parts = [];
    for await (const part of this) parts.push(part);
    if (this.text) return parts.join('');
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }
}

// ---- writing

class StreamWriter {
  constructor(room, info, destinationIds) {
    this.room = room;
    this.info = info;
    this.destinationIds = destinationIds;
    this.index = 0;
    this.closed = false;
    this.queue = Promise.resolve(); // writes go out one after another
  }

  send(message) { return sendReliable(this.room, STREAM_TOPIC, message, this.destinationIds); }

  open() {
    const i = this.info;
    return this.send({
      t: 'stream.header', stream_id: i.id, topic: i.topic, kind: i.kind, mime_type: i.mimeType,
      name: i.name || undefined, total_size: i.totalSize ?? undefined, attributes: { ...i.attributes }, timestamp: i.timestamp,
    });
  }

  enqueue(step) {
    const next = this.queue.then(step);
    this.queue = next.catch(() => {});
    return next;
  }

  /** Send the next piece: a string (text streams) or bytes (byte streams). */
  write(data) {
    return this.enqueue(async () => {
      if (this.closed) throw new StagecastError('INVALID_STATE', `stream ${this.info.id} is closed`);
      const bytes = typeof data === 'string' ? utf8.encode(data) : new Uint8Array(data);
      const pieces = this.info.kind === 'text' ? textPieces(bytes) : bytePieces(bytes);
      for (const content of pieces) {
        await this.send({ t: 'stream.chunk', stream_id: this.info.id, index: this.index, content });
        this.index += 1;
      }
    });
  }

  /** End the stream (idempotent); a `reason` tells the readers it was aborted. */
  close(reason = '') {
    return this.enqueue(async () => {
      if (this.closed) return;
      this.closed = true;
      await this.send({ t: 'stream.trailer', stream_id: this.info.id, chunks: this.index, reason: reason ? reason.slice(0, 256) : undefined });
    });
  }
}

// ---- the room's streams and RPC

export class DataStreams {
  constructor(room) {
    this.room = room;
    this.handlers = new Map(); // `${kind} ${topic}` -> handler
    this.open = new Map(); // `${sender} ${streamId}` -> reader
    this.methods = new Map();
    this.pending = new Map(); // request id -> {destinationId, ack, response}
    this.closedWhy = '';
  }

  register(kind, topic, handler) {
    const key = `${kind} ${topic}`;
    if (this.handlers.has(key)) throw new TypeError(`a ${kind} stream handler for topic ${topic} is registered already`);
    this.handlers.set(key, handler);
  }

  unregister(kind, topic) { this.handlers.delete(`${kind} ${topic}`); }

  /** A data frame on a reserved topic, from `senderId` (as the edge stamped it). */
  onData(topic, senderId, payload) {
    if (!senderId) return;
    let message;
    try { message = decode(payload); } catch { return; }
    if (topic === STREAM_TOPIC) this.onStream(senderId, message);
    else this.onRpc(senderId, message);
  }

  onStream(senderId, m) {
    const key = `${senderId} ${m.stream_id}`;
    if (m.t === 'stream.header') {
      const handler = this.handlers.get(`${m.kind} ${m.topic}`);
      if (!handler || this.open.size >= MAX_OPEN_STREAMS) return;
      const info = Object.freeze({
        id: m.stream_id, topic: m.topic, kind: m.kind, senderId, mimeType: m.mime_type ?? '',
        totalSize: m.total_size ?? null, attributes: { ...(m.attributes ?? {}) }, name: m.name ?? '', timestamp: m.timestamp ?? 0,
      });
      const reader = new StreamReader(info, m.kind === 'text');
      this.open.set(key, reader);
      Promise.resolve().then(() => handler(reader, senderId)).catch((err) => console.error('stream handler failed', err));
    } else if (m.t === 'stream.chunk') {
      const reader = this.open.get(key);
      if (reader && !reader.push(m)) this.open.delete(key);
    } else if (m.t === 'stream.trailer') {
      const reader = this.open.get(key);
      this.open.delete(key);
      reader?.finish(m);
    }
  }

  senderLeft(senderId) {
    for (const [key, reader] of [...this.open]) {
      if (!key.startsWith(`${senderId} `)) continue;
      this.open.delete(key);
      reader.fail(new StreamError('STREAM_CUT_OFF', `the sender ${senderId} left`, reader.info.id));
    }
    for (const call of this.pending.values()) {
      if (call.destinationId === senderId) call.fail(new RpcError(RpcError.RECIPIENT_DISCONNECTED, `${senderId} left`));
    }
  }

  close(why) {
    this.closedWhy = why;
    for (const reader of this.open.values()) reader.fail(new StreamError('STREAM_CUT_OFF', why, reader.info.id));
    this.open.clear();
    for (const call of this.pending.values()) call.fail(new RpcError(RpcError.RECIPIENT_DISCONNECTED, why));
  }

  // writing

  async openWriter(kind, { topic = '', destinationIds = [], attributes = {}, totalSize = null, mimeType, name = '' } = {}) {
    const info = Object.freeze({
      id: newId(), topic, kind, senderId: this.room.localParticipant?.id ?? '', mimeType: mimeType ?? (kind === 'text' ? 'text/plain' : 'application/octet-stream'),
      totalSize, attributes: { ...attributes }, name, timestamp: Date.now(),
    });
    const writer = new StreamWriter(this.room, info, [...destinationIds]);
    await writer.open();
    return writer;
  }

  // RPC

  onRpc(senderId, m) {
    if (m.t === 'rpc.request') { this.serve(senderId, m).catch((err) => console.warn('answering an RPC failed', err)); return; }
    const call = this.pending.get(m.request_id);
    if (!call || call.destinationId !== senderId) return;
    call.acked();
    if (m.t === 'rpc.response') call.respond(m);
  }

  async perform({ destinationId, method, payload = '', responseTimeout = 10 }) {
    if (utf8.encode(payload).length > RPC_PAYLOAD_BYTES) throw new RpcError(RpcError.REQUEST_PAYLOAD_TOO_LARGE, `the payload is over ${RPC_PAYLOAD_BYTES} bytes`);
    if (this.closedWhy) throw new RpcError(RpcError.RECIPIENT_DISCONNECTED, this.closedWhy);
    if (!this.room.remoteParticipants.has(destinationId)) throw new RpcError(RpcError.RECIPIENT_NOT_FOUND, `${destinationId} is not in the room`);
    const requestId = newId();
    const call = { destinationId };
    const acked = new Promise((resolve, reject) => { call.acked = resolve; call.failAck = reject; });
    const response = new Promise((resolve, reject) => { call.respond = resolve; call.failResponse = reject; });
    acked.catch(() => {});
    response.catch(() => {});
    call.fail = (err) => { call.failAck(err); call.failResponse(err); };
    this.pending.set(requestId, call);
    const timeout = (ms, err) => new Promise((_, reject) => setTimeout(() => reject(err), ms));
    try {
      try {
        await sendReliable(this.room, RPC_TOPIC, { t: 'rpc.request', request_id: requestId, method, payload, response_timeout_ms: Math.round(responseTimeout * 1000) }, [destinationId]);
      } catch (err) {
        throw new RpcError(RpcError.SEND_FAILED, `the request was not sent: ${err.message}`);
      }
      await Promise.race([acked, timeout(Math.min(ACK_TIMEOUT_MS, responseTimeout * 1000), new RpcError(RpcError.CONNECTION_TIMEOUT, `${destinationId} did not acknowledge the call`))]);
      const answer = await Promise.race([response, timeout(responseTimeout * 1000, new RpcError(RpcError.RESPONSE_TIMEOUT, `no response from ${destinationId} within ${responseTimeout} s`))]);
      if (answer.error) throw new RpcError(answer.error.code, answer.error.message ?? '', answer.error.data ?? '');
      return answer.payload ?? '';
    } finally {
      this.pending.delete(requestId);
    }
  }

  async serve(callerId, request) {
    const to = [callerId];
    // A handler that answers within ACK_DELAY_MS gets its response sent alone (it
    // acknowledges too); a slower one is acknowledged first. Each message costs a frame.
    const answer = this.answer(callerId, request);
    const ackDelay = Math.min(ACK_DELAY_MS, (request.response_timeout_ms ?? 10000) / 4);
    const early = await Promise.race([answer, sleep(ackDelay).then(() => null)]);
    if (early === null) await sendReliable(this.room, RPC_TOPIC, { t: 'rpc.ack', request_id: request.request_id }, to);
    const { payload, error } = await answer;
    await sendReliable(this.room, RPC_TOPIC, { t: 'rpc.response', request_id: request.request_id, payload: payload || undefined, error }, to);
  }

  async answer(callerId, request) {
    const handler = this.methods.get(request.method);
    let error;
    let payload = '';
    if (!handler) {
      error = { code: RpcError.UNSUPPORTED_METHOD, message: `method ${request.method} is not registered`.slice(0, 256) };
    } else {
      try {
        const result = await handler({ requestId: request.request_id, callerId, payload: request.payload ?? '', responseTimeout: (request.response_timeout_ms ?? 10000) / 1000 });
        payload = result ?? '';
        if (typeof payload !== 'string') { error = { code: RpcError.APPLICATION_ERROR, message: 'the handler returned no string' }; payload = ''; }
        else if (utf8.encode(payload).length > RPC_PAYLOAD_BYTES) { error = { code: RpcError.RESPONSE_PAYLOAD_TOO_LARGE, message: `the response is over ${RPC_PAYLOAD_BYTES} bytes` }; payload = ''; }
      } catch (err) {
        error = err instanceof RpcError
          ? { code: err.code, message: err.rpcMessage.slice(0, 256), data: err.data || undefined }
          : { code: RpcError.APPLICATION_ERROR, message: `${err?.name ?? 'Error'}: ${err?.message ?? err}`.slice(0, 256) };
      }
    }
    return { payload, error };
  }
}

/** The LocalParticipant methods (installed on its prototype by stagecast.js). */
export const localParticipantStreams = {
  /** Open a text stream: `await w.write(text)`, then `await w.close()`. */
  streamText(options = {}) { return this.room.streams.openWriter('text', options); },
  /** Send `text` as one text stream on `topic`; its info. */
  async sendText(text, options = {}) {
    const writer = await this.room.streams.openWriter('text', { ...options, totalSize: utf8.encode(text).length });
    await writer.write(text);
    await writer.close();
    return writer.info;
  },
  /** Open a byte stream (a file called `name`). */
  streamBytes(options = {}) { return this.room.streams.openWriter('bytes', options); },
  /** Send a Blob/File, ArrayBuffer or Uint8Array as one byte stream; its info. */
  async sendFile(file, options = {}) {
    const bytes = file instanceof Blob ? new Uint8Array(await file.arrayBuffer()) : new Uint8Array(file);
    const name = options.name ?? (typeof File !== 'undefined' && file instanceof File ? file.name : '');
    const mimeType = options.mimeType ?? (file instanceof Blob && file.type ? file.type : 'application/octet-stream');
    const writer = await this.room.streams.openWriter('bytes', { ...options, name, mimeType, totalSize: bytes.length });
    await writer.write(bytes);
    await writer.close();
    return writer.info;
  },
  /** Call `method` on `destinationId`: its response payload, or an RpcError. */
  performRpc(options) { return this.room.streams.perform(options); },
  /** Serve `method` with `handler({requestId, callerId, payload, responseTimeout})` -> string. */
  registerRpcMethod(method, handler) { this.room.streams.methods.set(method, handler); },
  unregisterRpcMethod(method) { this.room.streams.methods.delete(method); },
};
