/**
 * File-transfer framing: the byte protocol `vertex send` and `vertex receive`
 * speak over a Q2Q stream (service `file-transfer`). Our own design; the
 * stream underneath is already mutual TLS, so there is no crypto here.
 *
 * Every frame:
 *   0  1  type (FRAME_TYPE)
 *   1  4  payload length, uint32 BE, at most the type's maximum (MAX_PAYLOAD)
 *   5  n  payload
 *
 * Payloads (integers big-endian; u64 values are at most 2^53 - 1):
 *   OFFER    0x01  sender -> receiver, first frame
 *                   1  version (FILE_TRANSFER_VERSION)
 *                   4  file count, 1..MAX_FILES
 *                   per file:
 *                     2  path length, 1..MAX_PATH_BYTES
 *                     n  path, UTF-8, relative, '/' between components
 *                     8  size in bytes
 *                    32  SHA-256 of the whole file
 *   ACCEPT   0x02  receiver -> sender, one resume point per offered file
 *                   4  count (equals the offer's file count)
 *                   per file:
 *                     8  bytes the receiver already holds (0: none)
 *                    32  SHA-256 of those bytes (all zero when none)
 *   REJECT   0x03  receiver -> sender, instead of ACCEPT
 *                   1  reason (REJECT_REASON; unknown values read as 'other')
 *                   n  message, UTF-8, 0..MAX_MESSAGE_BYTES
 *   FILE     0x04  sender -> receiver, starts file `index`; DATA follows
 *                   4  index, in offer order
 *                   8  offset: 0, or the receiver's resume point if the
 *                      sender found the same SHA-256 over its own first bytes
 *   DATA     0x05  sender -> receiver, 1..MAX_DATA_BYTES of the current file;
 *                  exactly size - offset bytes follow each FILE
 *   VERIFIED 0x06  receiver -> sender, the file is complete, its SHA-256
 *                  matched and it is under its final name
 *                   4  index
 *                  32  SHA-256 the receiver computed
 *   ERROR    0x07  either way; the transfer is over
 *                   1  reason (ERROR_REASON; unknown values read as 'other')
 *                   n  message, UTF-8, 0..MAX_MESSAGE_BYTES
 *
 * A transfer: OFFER, then ACCEPT or REJECT; then per file FILE and its DATA,
 * answered (asynchronously, so small files pipeline) by VERIFIED. After the
 * last VERIFIED both ends close. Empty directories are not carried.
 */
import { vertexError } from '../errors';

// Specification (ours).
export const FILE_TRANSFER_VERSION = 1;
export const FRAME_HEADER_BYTES = 5;
export const SHA256_BYTES = 32;
/** JavaScript numbers are exact up to here; larger u64 values are refused. */
export const MAX_FILE_BYTES = Number.MAX_SAFE_INTEGER;

export const FRAME_TYPE = {
  offer: 0x01,
  accept: 0x02,
  reject: 0x03,
  file: 0x04,
  data: 0x05,
  verified: 0x06,
  error: 0x07,
} as const;
export type FrameTypeName = keyof typeof FRAME_TYPE;

export const REJECT_REASON = {
  other: 0,
  declined: 1,
  'not-allowed': 2,
  'bad-name': 3,
  exists: 4,
  'no-space': 5,
  unwritable: 6,
  busy: 7,
  version: 8,
  /** More files or more name bytes in one offer than the receiver takes (OfferLimits). */
  'too-large': 9,
} as const;
export type RejectReason = keyof typeof REJECT_REASON;

export const ERROR_REASON = {
  other: 0,
  protocol: 1,
  io: 2,
  verify: 3,
  source: 4,
  cancelled: 5,
} as const;
export type ErrorReason = keyof typeof ERROR_REASON;

// Implementation limits: what one frame may cost the side decoding it.
export const MAX_FILES = 65_536;
/** Linux PATH_MAX. */
export const MAX_PATH_BYTES = 4096;
export const MAX_DATA_BYTES = 64 * 1024;
export const MAX_MESSAGE_BYTES = 1024;
export const MAX_OFFER_BYTES = 8 * 1024 * 1024;

/**
 * What a receiver takes in one offer, checked while the offer is decoded: before any
 * per-file object exists, a count or a name total above these ends the decode with
 * TransferRejected (the receiver answers REJECT too-large). The wire maxima above bound
 * what any frame may cost; these are the receiver's own, smaller, choice.
 */
export interface OfferLimits {
  maxFiles: number;
  /** The sum of the offered paths' UTF-8 lengths. */
  maxNameBytes: number;
}

const OFFER_FIXED_BYTES = 1 + 4;
const OFFER_ENTRY_FIXED_BYTES = 2 + 8 + SHA256_BYTES;
const RESUME_ENTRY_BYTES = 8 + SHA256_BYTES;
const FILE_PAYLOAD_BYTES = 4 + 8;
const VERIFIED_PAYLOAD_BYTES = 4 + SHA256_BYTES;

/** The largest payload each type may carry; a header claiming more is refused before any payload is buffered. */
export const MAX_PAYLOAD: Readonly<Record<FrameTypeName, number>> = Object.freeze({
  offer: MAX_OFFER_BYTES,
  accept: 4 + MAX_FILES * RESUME_ENTRY_BYTES,
  reject: 1 + MAX_MESSAGE_BYTES,
  file: FILE_PAYLOAD_BYTES,
  data: MAX_DATA_BYTES,
  verified: VERIFIED_PAYLOAD_BYTES,
  error: 1 + MAX_MESSAGE_BYTES,
});

export interface OfferedFile {
  /** Relative, '/'-separated; the receiver sanitises it before use. */
  path: string;
  size: number;
  sha256: Buffer;
}

export interface ResumePoint {
  offset: number;
  /** SHA-256 of the first `offset` bytes; all zero when offset is 0. */
  sha256: Buffer;
}

export type TransferFrame =
  | { type: 'offer'; files: OfferedFile[] }
  | { type: 'accept'; resume: ResumePoint[] }
  | { type: 'reject'; reason: RejectReason; message: string }
  | { type: 'file'; index: number; offset: number }
  | { type: 'data'; bytes: Buffer }
  | { type: 'verified'; index: number; sha256: Buffer }
  | { type: 'error'; reason: ErrorReason; message: string };

export const EMPTY_SHA256: Buffer = Buffer.alloc(SHA256_BYTES);

const TYPE_NAMES = new Map<number, FrameTypeName>(
  (Object.entries(FRAME_TYPE) as Array<[FrameTypeName, number]>).map(([name, code]) => [code, name]),
);
const REJECT_NAMES = new Map<number, RejectReason>(
  (Object.entries(REJECT_REASON) as Array<[RejectReason, number]>).map(([name, code]) => [code, name]),
);
const ERROR_NAMES = new Map<number, ErrorReason>(
  (Object.entries(ERROR_REASON) as Array<[ErrorReason, number]>).map(([name, code]) => [code, name]),
);

// ignoreBOM keeps a leading U+FEFF in a name instead of silently dropping it.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function header(type: FrameTypeName, payloadLength: number): Buffer {
  const buf = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  buf[0] = FRAME_TYPE[type];
  buf.writeUInt32BE(payloadLength, 1);
  return buf;
}

function checkSize(what: string, value: number, max: number): void {
  if (!Number.isSafeInteger(value) || value < 0 || value > max) {
    throw new RangeError(`encode file-transfer ${what}: ${value} is not an integer in 0..${max}`);
  }
}

function checkDigest(what: string, digest: Buffer): void {
  if (digest.length !== SHA256_BYTES) throw new RangeError(`encode file-transfer ${what}: digest is ${digest.length} bytes, not ${SHA256_BYTES}`);
}

function messageBytes(message: string): Buffer {
  const bytes = Buffer.from(message, 'utf8');
  if (bytes.length <= MAX_MESSAGE_BYTES) return bytes;
  // Cut on a character boundary so the receiver's strict UTF-8 check passes.
  let end = MAX_MESSAGE_BYTES;
  while (end > 0 && ((bytes[end] ?? 0) & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}

/** The header of a DATA frame; send it followed by `length` bytes without copying them. */
export function encodeDataHeader(length: number): Buffer {
  if (!Number.isInteger(length) || length < 1 || length > MAX_DATA_BYTES) {
    throw new RangeError(`encode file-transfer data: ${length} bytes, allowed 1..${MAX_DATA_BYTES}`);
  }
  return header('data', length);
}

/**
 * Encodes one frame. Throws RangeError for values the format cannot carry
 * (a caller bug: the sender checks names and counts before it offers).
 */
export function encodeFrame(frame: TransferFrame): Buffer {
  switch (frame.type) {
    case 'offer': {
      const count = frame.files.length;
      if (count < 1 || count > MAX_FILES) throw new RangeError(`encode file-transfer offer: ${count} files, allowed 1..${MAX_FILES}`);
      const paths = frame.files.map((f) => Buffer.from(f.path, 'utf8'));
      let length = OFFER_FIXED_BYTES;
      for (const p of paths) length += OFFER_ENTRY_FIXED_BYTES + p.length;
      if (length > MAX_OFFER_BYTES) throw new RangeError(`encode file-transfer offer: ${length} bytes exceeds ${MAX_OFFER_BYTES}`);
      const buf = Buffer.allocUnsafe(FRAME_HEADER_BYTES + length);
      header('offer', length).copy(buf, 0);
      let at = FRAME_HEADER_BYTES;
      buf[at++] = FILE_TRANSFER_VERSION;
      buf.writeUInt32BE(count, at);
      at += 4;
      frame.files.forEach((file, i) => {
        const p = paths[i] as Buffer;
        if (p.length < 1 || p.length > MAX_PATH_BYTES) {
          throw new RangeError(`encode file-transfer offer: path ${i} is ${p.length} bytes, allowed 1..${MAX_PATH_BYTES}`);
        }
        checkSize(`offer size of ${file.path}`, file.size, MAX_FILE_BYTES);
        checkDigest(`offer of ${file.path}`, file.sha256);
        buf.writeUInt16BE(p.length, at);
        at += 2;
        p.copy(buf, at);
        at += p.length;
        buf.writeBigUInt64BE(BigInt(file.size), at);
        at += 8;
        file.sha256.copy(buf, at);
        at += SHA256_BYTES;
      });
      return buf;
    }
    case 'accept': {
      const count = frame.resume.length;
      if (count < 1 || count > MAX_FILES) throw new RangeError(`encode file-transfer accept: ${count} entries, allowed 1..${MAX_FILES}`);
      const length = 4 + count * RESUME_ENTRY_BYTES;
      const buf = Buffer.allocUnsafe(FRAME_HEADER_BYTES + length);
      header('accept', length).copy(buf, 0);
      buf.writeUInt32BE(count, FRAME_HEADER_BYTES);
      let at = FRAME_HEADER_BYTES + 4;
      for (const point of frame.resume) {
        checkSize('accept offset', point.offset, MAX_FILE_BYTES);
        checkDigest('accept', point.sha256);
        buf.writeBigUInt64BE(BigInt(point.offset), at);
        point.sha256.copy(buf, at + 8);
        at += RESUME_ENTRY_BYTES;
      }
      return buf;
    }
    case 'reject':
    case 'error': {
      const text = messageBytes(frame.message);
      const code = frame.type === 'reject' ? REJECT_REASON[frame.reason] : ERROR_REASON[frame.reason];
      if (code === undefined) throw new RangeError(`encode file-transfer ${frame.type}: unknown reason ${String(frame.reason)}`);
      const buf = Buffer.allocUnsafe(FRAME_HEADER_BYTES + 1 + text.length);
      header(frame.type, 1 + text.length).copy(buf, 0);
      buf[FRAME_HEADER_BYTES] = code;
      text.copy(buf, FRAME_HEADER_BYTES + 1);
      return buf;
    }
    case 'file': {
      checkSize('file index', frame.index, MAX_FILES - 1);
      checkSize('file offset', frame.offset, MAX_FILE_BYTES);
      const buf = Buffer.allocUnsafe(FRAME_HEADER_BYTES + FILE_PAYLOAD_BYTES);
      header('file', FILE_PAYLOAD_BYTES).copy(buf, 0);
      buf.writeUInt32BE(frame.index, FRAME_HEADER_BYTES);
      buf.writeBigUInt64BE(BigInt(frame.offset), FRAME_HEADER_BYTES + 4);
      return buf;
    }
    case 'data':
      return Buffer.concat([encodeDataHeader(frame.bytes.length), frame.bytes]);
    case 'verified': {
      checkSize('verified index', frame.index, MAX_FILES - 1);
      checkDigest('verified', frame.sha256);
      const buf = Buffer.allocUnsafe(FRAME_HEADER_BYTES + VERIFIED_PAYLOAD_BYTES);
      header('verified', VERIFIED_PAYLOAD_BYTES).copy(buf, 0);
      buf.writeUInt32BE(frame.index, FRAME_HEADER_BYTES);
      frame.sha256.copy(buf, FRAME_HEADER_BYTES + 4);
      return buf;
    }
    default: {
      const unreachable: never = frame;
      throw new RangeError(`encode file-transfer: unknown frame ${JSON.stringify(unreachable)}`);
    }
  }
}

function fail(message: string): never {
  throw vertexError('TransferDecode', `decode file-transfer ${message}`);
}

/** Reads a u64 that must fit a JavaScript number. */
function readSize(buf: Buffer, at: number, what: string): number {
  const value = buf.readBigUInt64BE(at);
  if (value > BigInt(MAX_FILE_BYTES)) fail(`${what}: ${value} exceeds ${MAX_FILE_BYTES}`);
  return Number(value);
}

function decodeText(bytes: Buffer, what: string): string {
  try {
    return utf8.decode(bytes);
  } catch {
    return fail(`${what}: not valid UTF-8`);
  }
}

/** Decodes one payload whose length the header already bounded. */
export function decodePayload(type: FrameTypeName, payload: Buffer, limits?: OfferLimits): TransferFrame {
  switch (type) {
    case 'offer': {
      if (payload.length < OFFER_FIXED_BYTES) fail(`offer: ${payload.length} bytes is too short`);
      const version = payload[0] as number;
      if (version !== FILE_TRANSFER_VERSION) {
        throw vertexError('ProtocolVersion', `decode file-transfer offer: version ${version} is not ${FILE_TRANSFER_VERSION}`);
      }
      const count = payload.readUInt32BE(1);
      if (count < 1 || count > MAX_FILES) fail(`offer: ${count} files, allowed 1..${MAX_FILES}`);
      if (limits && count > limits.maxFiles) {
        throw vertexError('TransferRejected', `the offer has ${count} files; this receiver takes at most ${limits.maxFiles} in one offer (send fewer at a time, or pack them into an archive)`);
      }
      const files: OfferedFile[] = [];
      let at = OFFER_FIXED_BYTES;
      let nameBytes = 0;
      for (let i = 0; i < count; i++) {
        if (payload.length - at < 2) fail(`offer: file ${i} is cut short`);
        const pathLength = payload.readUInt16BE(at);
        at += 2;
        if (pathLength < 1 || pathLength > MAX_PATH_BYTES) fail(`offer: path ${i} is ${pathLength} bytes, allowed 1..${MAX_PATH_BYTES}`);
        nameBytes += pathLength;
        if (limits && nameBytes > limits.maxNameBytes) {
          throw vertexError('TransferRejected', `the offer's names add up to more than ${limits.maxNameBytes} bytes, the most this receiver takes in one offer (send fewer files at a time, or pack them into an archive)`);
        }
        if (payload.length - at < pathLength + 8 + SHA256_BYTES) fail(`offer: file ${i} is cut short`);
        const path = decodeText(payload.subarray(at, at + pathLength), `offer path ${i}`);
        at += pathLength;
        const size = readSize(payload, at, `offer size of file ${i}`);
        at += 8;
        const sha256 = Buffer.from(payload.subarray(at, at + SHA256_BYTES));
        at += SHA256_BYTES;
        files.push({ path, size, sha256 });
      }
      if (at !== payload.length) fail(`offer: ${payload.length - at} bytes after the last file`);
      return { type: 'offer', files };
    }
    case 'accept': {
      if (payload.length < 4) fail(`accept: ${payload.length} bytes is too short`);
      const count = payload.readUInt32BE(0);
      if (count < 1 || count > MAX_FILES) fail(`accept: ${count} entries, allowed 1..${MAX_FILES}`);
      if (payload.length !== 4 + count * RESUME_ENTRY_BYTES) fail(`accept: ${payload.length} bytes does not hold ${count} entries`);
      const resume: ResumePoint[] = [];
      for (let i = 0, at = 4; i < count; i++, at += RESUME_ENTRY_BYTES) {
        const offset = readSize(payload, at, `accept offset ${i}`);
        resume.push({ offset, sha256: Buffer.from(payload.subarray(at + 8, at + RESUME_ENTRY_BYTES)) });
      }
      return { type: 'accept', resume };
    }
    case 'reject':
    case 'error': {
      if (payload.length < 1) fail(`${type}: no reason`);
      const code = payload[0] as number;
      const message = decodeText(payload.subarray(1), `${type} message`);
      return type === 'reject'
        ? { type, reason: REJECT_NAMES.get(code) ?? 'other', message }
        : { type, reason: ERROR_NAMES.get(code) ?? 'other', message };
    }
    case 'file': {
      if (payload.length !== FILE_PAYLOAD_BYTES) fail(`file: ${payload.length} bytes, expected ${FILE_PAYLOAD_BYTES}`);
      const index = payload.readUInt32BE(0);
      if (index >= MAX_FILES) fail(`file: index ${index} exceeds ${MAX_FILES - 1}`);
      return { type: 'file', index, offset: readSize(payload, 4, 'file offset') };
    }
    case 'data':
      if (payload.length < 1) fail('data: empty frame');
      return { type: 'data', bytes: payload };
    case 'verified': {
      if (payload.length !== VERIFIED_PAYLOAD_BYTES) fail(`verified: ${payload.length} bytes, expected ${VERIFIED_PAYLOAD_BYTES}`);
      const index = payload.readUInt32BE(0);
      if (index >= MAX_FILES) fail(`verified: index ${index} exceeds ${MAX_FILES - 1}`);
      return { type: 'verified', index, sha256: Buffer.from(payload.subarray(4)) };
    }
    default: {
      const unreachable: never = type;
      return fail(`unknown frame type ${String(unreachable)}`);
    }
  }
}

/**
 * Incremental decoder: push() any chunking of the stream and get back the
 * complete frames. DATA payloads are views into the pushed chunks when a
 * frame lies within one chunk, so bulk data is not copied. After a decode
 * error the decoder stays failed.
 */
export class FrameDecoder {
  readonly #limits: OfferLimits | undefined;
  #pieces: Buffer[] = [];
  #buffered = 0;
  /** The header of the frame being collected, once its 5 bytes are in. */
  #type: FrameTypeName | null = null;
  #need = 0;
  #failed: Error | null = null;

  /** `limits`: the receiving side's OfferLimits, checked while an offer is decoded. */
  constructor(limits?: OfferLimits) {
    this.#limits = limits;
  }

  /** Bytes held waiting for the rest of a frame. */
  get buffered(): number {
    return this.#buffered;
  }

  push(chunk: Buffer): TransferFrame[] {
    if (this.#failed) throw this.#failed;
    if (chunk.length > 0) {
      this.#pieces.push(chunk);
      this.#buffered += chunk.length;
    }
    const frames: TransferFrame[] = [];
    try {
      for (;;) {
        if (this.#type === null) {
          if (this.#buffered < FRAME_HEADER_BYTES) break;
          const head = this.#take(FRAME_HEADER_BYTES);
          const code = head[0] as number;
          const type = TYPE_NAMES.get(code);
          if (type === undefined) fail(`frame: unknown type 0x${code.toString(16).padStart(2, '0')}`);
          const length = head.readUInt32BE(1);
          if (length > MAX_PAYLOAD[type]) fail(`${type}: payload length ${length} exceeds ${MAX_PAYLOAD[type]}`);
          this.#type = type;
          this.#need = length;
        }
        if (this.#buffered < this.#need) break;
        const type = this.#type;
        const payload = this.#take(this.#need);
        this.#type = null;
        this.#need = 0;
        frames.push(decodePayload(type, payload, this.#limits));
      }
    } catch (err) {
      this.#failed = err instanceof Error ? err : new Error(String(err));
      this.#pieces = [];
      this.#buffered = 0;
      throw err;
    }
    return frames;
  }

  /** Removes and returns the next n buffered bytes (n <= buffered), copying only across chunk edges. */
  #take(n: number): Buffer {
    this.#buffered -= n;
    const first = this.#pieces[0];
    if (n === 0) return Buffer.alloc(0);
    if (first !== undefined && first.length >= n) {
      if (first.length === n) this.#pieces.shift();
      else this.#pieces[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const piece = this.#pieces[0] as Buffer;
      const take = Math.min(piece.length, n - filled);
      piece.copy(out, filled, 0, take);
      filled += take;
      if (take === piece.length) this.#pieces.shift();
      else this.#pieces[0] = piece.subarray(take);
    }
    return out;
  }
}
