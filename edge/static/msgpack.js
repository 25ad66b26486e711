// A small MessagePack encoder/decoder: exactly what the Stagecast signaling frames need.
//
// Encodes: null/undefined-less objects and Maps (as maps), arrays, strings, Uint8Array /
// ArrayBuffer / DataView (as bin), booleans, null (nil), numbers (integers as the
// smallest int format, others as float64) and BigInt (int64/uint64).
// Decodes every format except extensions: maps become plain objects, bin becomes a
// Uint8Array, 64-bit integers become Numbers when they are safe (|n| <= 2^53 - 1) and
// BigInts otherwise. Object keys whose value is `undefined` are left out, which is how a
// frame's defaulted fields stay off the wire.

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder('utf-8', { fatal: true });

/** Raised on bytes that are not a well-formed MessagePack value. */
export class MsgpackError extends Error {
  constructor(message) {
    super(message);
    this.name = 'MsgpackError';
  }
}

class Writer {
  constructor() {
    this.buf = new Uint8Array(256);
    this.view = new DataView(this.buf.buffer);
    this.pos = 0;
  }

  reserve(n) {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.buf.subarray(0, this.pos));
    this.buf = grown;
    this.view = new DataView(grown.buffer);
  }

  u8(v) { this.reserve(1); this.view.setUint8(this.pos, v); this.pos += 1; }
  u16(v) { this.reserve(2); this.view.setUint16(this.pos, v); this.pos += 2; }
  u32(v) { this.reserve(4); this.view.setUint32(this.pos, v); this.pos += 4; }
  i8(v) { this.reserve(1); this.view.setInt8(this.pos, v); this.pos += 1; }
  i16(v) { this.reserve(2); this.view.setInt16(this.pos, v); this.pos += 2; }
  i32(v) { this.reserve(4); this.view.setInt32(this.pos, v); this.pos += 4; }
  u64(v) { this.reserve(8); this.view.setBigUint64(this.pos, v); this.pos += 8; }
  i64(v) { this.reserve(8); this.view.setBigInt64(this.pos, v); this.pos += 8; }
  f64(v) { this.reserve(8); this.view.setFloat64(this.pos, v); this.pos += 8; }
  bytes(b) { this.reserve(b.length); this.buf.set(b, this.pos); this.pos += b.length; }

  value(v, depth) {
    if (depth > 64) throw new MsgpackError('value nests too deeply');
    if (v === null || v === undefined) return this.u8(0xc0);
    switch (typeof v) {
      case 'boolean': return this.u8(v ? 0xc3 : 0xc2);
      case 'number': return Number.isSafeInteger(v) ? this.int(BigInt(v)) : this.float(v);
      case 'bigint': return this.int(v);
      case 'string': return this.str(v);
      case 'object': break;
      default: throw new MsgpackError(`cannot encode a ${typeof v}`);
    }
    if (v instanceof Uint8Array) return this.bin(v);
    if (v instanceof ArrayBuffer) return this.bin(new Uint8Array(v));
    if (ArrayBuffer.isView(v)) return this.bin(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
    if (Array.isArray(v)) {
      this.header(v.length, 0x90, 0xdc, 0xdd);
      for (const item of v) this.value(item, depth + 1);
      return;
    }
    const entries = v instanceof Map
      ? [...v.entries()]
      : Object.entries(v).filter(([, x]) => x !== undefined);
    this.header(entries.length, 0x80, 0xde, 0xdf);
    for (const [key, item] of entries) {
      this.value(key, depth + 1);
      this.value(item, depth + 1);
    }
  }

  // An array or map header: fixarray/fixmap up to 15 items, then 16- and 32-bit counts.
  header(n, fix, b16, b32) {
    if (n < 16) this.u8(fix | n);
    else if (n < 0x10000) { this.u8(b16); this.u16(n); }
    else { this.u8(b32); this.u32(n); }
  }

  // The smallest integer format that holds `big` (a BigInt).
  int(big) {
    if (big >= 0n) {
      if (big < 128n) return this.u8(Number(big));
      if (big < 0x100n) { this.u8(0xcc); return this.u8(Number(big)); }
      if (big < 0x10000n) { this.u8(0xcd); return this.u16(Number(big)); }
      if (big < 0x100000000n) { this.u8(0xce); return this.u32(Number(big)); }
      if (big < 0x10000000000000000n) { this.u8(0xcf); return this.u64(big); }
      throw new MsgpackError('integer too large for MessagePack');
    }
    if (big >= -32n) return this.i8(Number(big));
    if (big >= -0x80n) { this.u8(0xd0); return this.i8(Number(big)); }
    if (big >= -0x8000n) { this.u8(0xd1); return this.i16(Number(big)); }
    if (big >= -0x80000000n) { this.u8(0xd2); return this.i32(Number(big)); }
    if (big >= -0x8000000000000000n) { this.u8(0xd3); return this.i64(big); }
    throw new MsgpackError('integer too small for MessagePack');
  }

  float(v) { this.u8(0xcb); this.f64(v); }

  str(s) {
    const b = textEncoder.encode(s);
    const n = b.length;
    if (n < 32) this.u8(0xa0 | n);
    else if (n < 0x100) { this.u8(0xd9); this.u8(n); }
    else if (n < 0x10000) { this.u8(0xda); this.u16(n); }
    else { this.u8(0xdb); this.u32(n); }
    this.bytes(b);
  }

  bin(b) {
    const n = b.length;
    if (n < 0x100) { this.u8(0xc4); this.u8(n); }
    else if (n < 0x10000) { this.u8(0xc5); this.u16(n); }
    else { this.u8(0xc6); this.u32(n); }
    this.bytes(b);
  }
}

/** Encode a value as MessagePack bytes (a Uint8Array). */
export function encode(value) {
  const w = new Writer();
  w.value(value, 0);
  return w.buf.slice(0, w.pos);
}

class Reader {
  constructor(bytes) {
    this.buf = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
  }

  need(n) {
    if (this.pos + n > this.buf.length) throw new MsgpackError('truncated MessagePack value');
    const at = this.pos;
    this.pos += n;
    return at;
  }

  u8() { return this.view.getUint8(this.need(1)); }
  u16() { return this.view.getUint16(this.need(2)); }
  u32() { return this.view.getUint32(this.need(4)); }
  i8() { return this.view.getInt8(this.need(1)); }
  i16() { return this.view.getInt16(this.need(2)); }
  i32() { return this.view.getInt32(this.need(4)); }
  f32() { return this.view.getFloat32(this.need(4)); }
  f64() { return this.view.getFloat64(this.need(8)); }
  u64() { return safe(this.view.getBigUint64(this.need(8))); }
  i64() { return safe(this.view.getBigInt64(this.need(8))); }
  str(n) { const at = this.need(n); return textDecoder.decode(this.buf.subarray(at, at + n)); }
  bin(n) { const at = this.need(n); return this.buf.slice(at, at + n); }

  array(n, depth) {
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = this.value(depth + 1);
    return out;
  }

  map(n, depth) {
    const out = {};
    for (let i = 0; i < n; i++) {
      const key = this.value(depth + 1);
      if (typeof key !== 'string' && typeof key !== 'number') {
        throw new MsgpackError('map keys must be strings or integers');
      }
      // defineProperty: a hostile "__proto__" key must not reach the prototype.
      Object.defineProperty(out, key, {
        value: this.value(depth + 1), enumerable: true, writable: true, configurable: true,
      });
    }
    return out;
  }

  value(depth) {
    if (depth > 64) throw new MsgpackError('value nests too deeply');
    const b = this.u8();
    if (b < 0x80) return b;
    if (b < 0x90) return this.map(b & 0x0f, depth);
    if (b < 0xa0) return this.array(b & 0x0f, depth);
    if (b < 0xc0) return this.str(b & 0x1f);
    if (b >= 0xe0) return b - 0x100;
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.bin(this.u8());
      case 0xc5: return this.bin(this.u16());
      case 0xc6: return this.bin(this.u32());
      case 0xca: return this.f32();
      case 0xcb: return this.f64();
      case 0xcc: return this.u8();
      case 0xcd: return this.u16();
      case 0xce: return this.u32();
      case 0xcf: return this.u64();
      case 0xd0: return this.i8();
      case 0xd1: return this.i16();
      case 0xd2: return this.i32();
      case 0xd3: return this.i64();
      case 0xd9: return this.str(this.u8());
      case 0xda: return this.str(this.u16());
      case 0xdb: return this.str(this.u32());
      case 0xdc: return this.array(this.u16(), depth);
      case 0xdd: return this.array(this.u32(), depth);
      case 0xde: return this.map(this.u16(), depth);
      case 0xdf: return this.map(this.u32(), depth);
      default: throw new MsgpackError(`unsupported MessagePack type 0x${b.toString(16)}`);
    }
  }
}

// A 64-bit integer as a Number when no precision is lost, else as a BigInt.
function safe(big) {
  return big <= BigInt(Number.MAX_SAFE_INTEGER) && big >= BigInt(Number.MIN_SAFE_INTEGER)
    ? Number(big)
    : big;
}

/** Decode one MessagePack value from bytes (Uint8Array, ArrayBuffer or a view). */
export function decode(data) {
  const bytes = data instanceof Uint8Array
    ? data
    : ArrayBuffer.isView(data)
      ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
      : new Uint8Array(data);
  const r = new Reader(bytes);
  const value = r.value(0);
  if (r.pos !== bytes.length) throw new MsgpackError('trailing bytes after the value');
  return value;
}
