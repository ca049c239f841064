/**
 * AMP box codec, byte-compatible with Twisted's AMP (reference/vertex-q2q.md §3.1).
 *
 * A connection is a stream of boxes. A box is a sequence of key/value pairs
 * followed by an empty key:
 *
 *   repeat:  2  key length, uint16 BE, 1..AMP_MAX_KEY_LENGTH
 *            n  key bytes (UTF-8; in practice ASCII)
 *            2  value length, uint16 BE, 0..AMP_MAX_VALUE_LENGTH
 *            m  value bytes (raw)
 *   end:     2  0x00 0x00 (a key length of zero)
 *
 * A ListOf value (§3.3) is a concatenation of `uint16 BE length | bytes`,
 * with no count and no terminator.
 *
 * Where we are stricter than Twisted, on purpose: a box may not repeat a key
 * (Twisted lets the last one win, which hides bugs and lets a peer smuggle a
 * second value past a check), keys must be valid UTF-8, and a whole box is
 * bounded by AmpLimits so that a peer cannot make us buffer without end.
 */
import { vertexError } from '../errors';

// Specification (Twisted AMP).
export const AMP_MAX_KEY_LENGTH = 255;
export const AMP_MAX_VALUE_LENGTH = 65535;
const LENGTH_BYTES = 2;
const TERMINATOR = Buffer.from([0, 0]);

// Implementation tunables: what one box may cost a receiver.
export const DEFAULT_MAX_BOX_BYTES = 256 * 1024;
export const DEFAULT_MAX_KEYS = 64;

export type AmpBox = Map<string, Buffer>;

export interface AmpLimits {
  /** Encoded size of one box, framing and terminator included. */
  maxBoxBytes: number;
  /** Key/value pairs in one box. */
  maxKeys: number;
}

export const DEFAULT_AMP_LIMITS: Readonly<AmpLimits> = Object.freeze({
  maxBoxBytes: DEFAULT_MAX_BOX_BYTES,
  maxKeys: DEFAULT_MAX_KEYS,
});

export function ampLimits(limits?: Partial<AmpLimits>): AmpLimits {
  // An explicit `undefined` (say, from an optional config field) means "the default".
  const merged: AmpLimits = {
    maxBoxBytes: limits?.maxBoxBytes ?? DEFAULT_AMP_LIMITS.maxBoxBytes,
    maxKeys: limits?.maxKeys ?? DEFAULT_AMP_LIMITS.maxKeys,
  };
  // The smallest useful box is the terminator alone.
  if (!Number.isInteger(merged.maxBoxBytes) || merged.maxBoxBytes < TERMINATOR.length) {
    throw vertexError('Internal', `amp limits: maxBoxBytes must be an integer >= ${TERMINATOR.length}, got ${merged.maxBoxBytes}`);
  }
  if (!Number.isInteger(merged.maxKeys) || merged.maxKeys < 0) {
    throw vertexError('Internal', `amp limits: maxKeys must be a non-negative integer, got ${merged.maxKeys}`);
  }
  return merged;
}

// ignoreBOM keeps a leading U+FEFF in the key instead of silently dropping it.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function toBytes(value: string | Buffer): Buffer {
  return typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
}

function entriesOf(box: AmpBox | Record<string, string | Buffer>): Array<[string, string | Buffer]> {
  return box instanceof Map ? Array.from(box.entries()) : Object.entries(box);
}

/**
 * Encodes one box, keys in the given order. Throws AmpEncode for an empty or
 * over-long key, an over-long value, or (when `limits` is given) a box over
 * the limits; the receiver would drop the connection for those.
 */
export function encodeBox(box: AmpBox | Record<string, string | Buffer>, limits?: Partial<AmpLimits>): Buffer {
  const entries = entriesOf(box);
  const bound = limits === undefined ? undefined : ampLimits(limits);
  if (bound && entries.length > bound.maxKeys) {
    throw vertexError('AmpEncode', `encode amp box: ${entries.length} keys exceed the limit of ${bound.maxKeys}`);
  }
  const parts: Buffer[] = [];
  let total = TERMINATOR.length;
  for (const [key, rawValue] of entries) {
    const keyBytes = Buffer.from(key, 'utf8');
    if (keyBytes.length === 0) throw vertexError('AmpEncode', 'encode amp box: empty key (an empty key ends a box)');
    if (keyBytes.length > AMP_MAX_KEY_LENGTH) {
      throw vertexError('AmpEncode', `encode amp box: key length ${keyBytes.length} exceeds ${AMP_MAX_KEY_LENGTH}`);
    }
    if (typeof rawValue !== 'string' && !Buffer.isBuffer(rawValue)) {
      throw vertexError('AmpEncode', `encode amp box: value of ${JSON.stringify(key)} is a ${typeof rawValue}, not a string or Buffer`);
    }
    const value = toBytes(rawValue);
    if (value.length > AMP_MAX_VALUE_LENGTH) {
      throw vertexError('AmpEncode', `encode amp box: value of ${JSON.stringify(key)} is ${value.length} bytes, exceeds ${AMP_MAX_VALUE_LENGTH}`);
    }
    const keyHeader = Buffer.allocUnsafe(LENGTH_BYTES);
    keyHeader.writeUInt16BE(keyBytes.length, 0);
    const valueHeader = Buffer.allocUnsafe(LENGTH_BYTES);
    valueHeader.writeUInt16BE(value.length, 0);
    parts.push(keyHeader, keyBytes, valueHeader, value);
    total += 2 * LENGTH_BYTES + keyBytes.length + value.length;
  }
  if (bound && total > bound.maxBoxBytes) {
    throw vertexError('AmpEncode', `encode amp box: box of ${total} bytes exceeds ${bound.maxBoxBytes} bytes`);
  }
  parts.push(TERMINATOR);
  return Buffer.concat(parts, total);
}

/** Encodes a ListOf value: each item as `uint16 BE length | bytes`. */
export function encodeListOf(items: ReadonlyArray<string | Buffer>): Buffer {
  const parts: Buffer[] = [];
  let total = 0;
  for (const item of items) {
    const bytes = toBytes(item);
    if (bytes.length > AMP_MAX_VALUE_LENGTH) {
      throw vertexError('AmpEncode', `encode amp list: item of ${bytes.length} bytes exceeds ${AMP_MAX_VALUE_LENGTH}`);
    }
    const header = Buffer.allocUnsafe(LENGTH_BYTES);
    header.writeUInt16BE(bytes.length, 0);
    parts.push(header, bytes);
    total += LENGTH_BYTES + bytes.length;
  }
  if (total > AMP_MAX_VALUE_LENGTH) {
    throw vertexError('AmpEncode', `encode amp list: ${total} bytes exceed the value limit of ${AMP_MAX_VALUE_LENGTH}`);
  }
  return Buffer.concat(parts, total);
}

/** Decodes a ListOf value. Throws AmpDecode on a truncated item. */
export function decodeListOf(value: Buffer): Buffer[] {
  const items: Buffer[] = [];
  let offset = 0;
  while (offset < value.length) {
    if (value.length - offset < LENGTH_BYTES) {
      throw vertexError('AmpDecode', `decode amp list: ${value.length - offset} stray byte(s) at offset ${offset}`);
    }
    const length = value.readUInt16BE(offset);
    offset += LENGTH_BYTES;
    if (value.length - offset < length) {
      throw vertexError('AmpDecode', `decode amp list: item of ${length} bytes at offset ${offset - LENGTH_BYTES} runs past the end (${value.length - offset} left)`);
    }
    items.push(Buffer.from(value.subarray(offset, offset + length)));
    offset += length;
  }
  return items;
}

/** What the decoder reads next. */
type DecoderState = 'keyLength' | 'key' | 'valueLength' | 'value' | 'failed';

/**
 * Incremental box decoder: push() any chunking of the stream and get back the
 * boxes completed so far. Every limit is checked as soon as the length field
 * that would break it arrives, before buffering the bytes it announces. The
 * first malformed byte throws AmpDecode and the decoder stays failed: a
 * stream that lost framing cannot be resynchronised.
 */
export class AmpDecoder {
  readonly limits: AmpLimits;
  #state: DecoderState = 'keyLength';
  /** Bytes the current field needs, and the pieces of it received so far. */
  #need = LENGTH_BYTES;
  #pieces: Buffer[] = [];
  #have = 0;
  #box: AmpBox = new Map();
  #boxBytes = 0;
  #key = '';
  #failure: Error | undefined;

  constructor(limits?: Partial<AmpLimits>) {
    this.limits = ampLimits(limits);
  }

  get failed(): boolean {
    return this.#state === 'failed';
  }

  /** True when no partial box is buffered (the stream ended on a box boundary). */
  get idle(): boolean {
    return this.#state === 'keyLength' && this.#have === 0 && this.#box.size === 0;
  }

  push(chunk: Buffer): AmpBox[] {
    if (this.#state === 'failed') {
      throw vertexError('AmpDecode', `decode amp box: decoder already failed: ${this.#failure?.message ?? 'unknown reason'}`, this.#failure);
    }
    const boxes: AmpBox[] = [];
    try {
      let offset = 0;
      while (offset < chunk.length) {
        const need = this.#need;
        if (this.#have === 0 && chunk.length - offset >= need) {
          // The whole field is in this chunk: read it in place, without a Buffer per field.
          this.#onField(chunk, offset, need, boxes);
          offset += need;
          continue;
        }
        const take = Math.min(need - this.#have, chunk.length - offset);
        this.#pieces.push(chunk.subarray(offset, offset + take));
        this.#have += take;
        offset += take;
        if (this.#have < need) break;
        const field = Buffer.concat(this.#pieces, need);
        this.#pieces = [];
        this.#have = 0;
        this.#onField(field, 0, need, boxes);
      }
    } catch (err) {
      this.#state = 'failed';
      this.#pieces = [];
      this.#box = new Map();
      this.#failure = err instanceof Error ? err : new Error(String(err));
      throw err;
    }
    return boxes;
  }

  #expect(state: DecoderState, bytes: number): void {
    this.#state = state;
    this.#need = bytes;
  }

  #fail(reason: string): never {
    throw vertexError('AmpDecode', `decode amp box: ${reason}`);
  }

  /** Fails unless `more` bytes plus at least a terminator still fit in the box. */
  #reserve(more: number): void {
    const projected = this.#boxBytes + more + TERMINATOR.length;
    if (projected > this.limits.maxBoxBytes) {
      this.#fail(`box exceeds ${this.limits.maxBoxBytes} bytes (at least ${projected} announced)`);
    }
  }

  /** The field is `length` bytes of `buf` at `at`: `buf` may be the caller's chunk, so nothing kept may alias it. */
  #onField(buf: Buffer, at: number, length: number, boxes: AmpBox[]): void {
    const state = this.#state;
    switch (state) {
      case 'keyLength': {
        const keyLength = ((buf[at] as number) << 8) | (buf[at + 1] as number);
        this.#boxBytes += LENGTH_BYTES;
        if (keyLength === 0) {
          boxes.push(this.#box);
          this.#box = new Map();
          this.#boxBytes = 0;
          this.#expect('keyLength', LENGTH_BYTES);
          return;
        }
        if (keyLength > AMP_MAX_KEY_LENGTH) this.#fail(`key length ${keyLength} exceeds ${AMP_MAX_KEY_LENGTH}`);
        if (this.#box.size >= this.limits.maxKeys) this.#fail(`too many keys (more than ${this.limits.maxKeys})`);
        // The key and its value length must still fit, with room for the terminator.
        this.#reserve(keyLength + LENGTH_BYTES);
        this.#expect('key', keyLength);
        return;
      }
      case 'key': {
        const field = buf.subarray(at, at + length);
        let key: string;
        try {
          key = utf8.decode(field);
        } catch {
          this.#fail(`key is not valid utf-8 (hex ${field.toString('hex')})`);
        }
        if (this.#box.has(key)) this.#fail(`duplicate key ${JSON.stringify(key)}`);
        this.#key = key;
        this.#boxBytes += length;
        this.#expect('valueLength', LENGTH_BYTES);
        return;
      }
      case 'valueLength': {
        const valueLength = ((buf[at] as number) << 8) | (buf[at + 1] as number);
        this.#boxBytes += LENGTH_BYTES;
        this.#reserve(valueLength);
        if (valueLength === 0) {
          this.#box.set(this.#key, Buffer.alloc(0));
          this.#expect('keyLength', LENGTH_BYTES);
        } else {
          this.#expect('value', valueLength);
        }
        return;
      }
      case 'value': {
        // A copy, so that the boxes we hand out never alias the caller's buffer.
        this.#box.set(this.#key, Buffer.copyBytesFrom(buf, at, length));
        this.#boxBytes += length;
        this.#expect('keyLength', LENGTH_BYTES);
        return;
      }
      case 'failed':
        this.#fail('decoder already failed');
        return;
      default: {
        const unreachable: never = state;
        throw vertexError('Internal', `decode amp box: unknown state ${String(unreachable)}`);
      }
    }
  }
}

/** A box's values as UTF-8 text, for logs and for the string-valued AmpArgs API. */
export function boxToStrings(box: AmpBox): Record<string, string> {
  // fromEntries defines own properties, so a key named "__proto__" stays data.
  return Object.fromEntries(Array.from(box, ([key, value]) => [key, value.toString('utf8')]));
}
