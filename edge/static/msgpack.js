// MessagePack for the signaling frames, through @msgpack/msgpack (its ESM build, vendored
// unmodified in vendor/msgpack/, pinned: see vendor/msgpack/VERSION). This module is the
// one place that touches the library, including two of its internals (below); the
// byte-for-byte parity test with the Python side (tests/test_browser.py) fails loudly if
// they move.
//
// What the frames need beyond the library's defaults:
// - object keys whose value is `undefined` are left out (a frame's defaulted fields);
// - 64-bit integers decode as Numbers when they are safe (|n| <= 2^53 - 1) and as BigInts
//   otherwise, and BigInts encode as int64 / uint64, while safe Numbers keep the smallest
//   integer format (the library's `useBigInt64` alone would write a Number above 2^32 as a
//   float, and without it a uint64 above 2^53 would decode rounded);
// - maps decode as plain objects, bin as Uint8Array; an ArrayBuffer or a Map encodes too.

import { Decoder, Encoder } from './vendor/msgpack/index.mjs';

export const MSGPACK_VERSION = '3.1.3';

const UINT64_MAX = (1n << 64n) - 1n;
const INT64_MIN = -(1n << 63n);

/** Raised on bytes that are not a well-formed MessagePack value, or a value with no encoding. */
export class MsgpackError extends Error {
  constructor(message) {
    super(message);
    this.name = 'MsgpackError';
  }
}

function safe(big) {
  return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER)
    ? Number(big)
    : big;
}

class FrameEncoder extends Encoder {
  constructor() {
    super({ ignoreUndefined: true });
  }

  // Internal: the library's per-value dispatch.
  doEncode(object, depth) {
    if (typeof object === 'bigint') {
      if (object > UINT64_MAX) throw new MsgpackError('integer too large for MessagePack');
      if (object < INT64_MIN) throw new MsgpackError('integer too small for MessagePack');
      this.encodeBigInt64(object); // internal: uint64 when >= 0, else int64
    } else if (object instanceof ArrayBuffer) {
      super.doEncode(new Uint8Array(object), depth);
    } else if (object instanceof Map) {
      super.doEncode(Object.fromEntries(object), depth);
    } else {
      super.doEncode(object, depth);
    }
  }
}

class FrameDecoder extends Decoder {
  constructor() {
    super({ useBigInt64: true });
  }

  // Internals: how the library reads uint64 / int64 with `useBigInt64`.
  readU64AsBigInt() { return safe(super.readU64AsBigInt()); }
  readI64AsBigInt() { return safe(super.readI64AsBigInt()); }
}

const encoder = new FrameEncoder();
const decoder = new FrameDecoder();

/** Encode a value as MessagePack bytes (a Uint8Array). */
export function encode(value) {
  try {
    return encoder.encode(value);
  } catch (err) {
    if (err instanceof MsgpackError) throw err;
    throw new MsgpackError(`cannot encode: ${err.message}`);
  }
}

/** Decode one MessagePack value from bytes (Uint8Array, ArrayBuffer or a view). */
export function decode(data) {
  try {
    return decoder.decode(data);
  } catch (err) {
    throw new MsgpackError(`malformed MessagePack: ${err.message}`);
  }
}
