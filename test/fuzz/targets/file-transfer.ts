/**
 * Fuzz target: file-transfer frames (q2q/wire/file-transfer.ts).
 *
 * One input is a byte stream from the other end of a transfer. It is decoded
 * whole and in random chunks (the two must agree, frame for frame and on the
 * refusal); refusals must be TransferDecode (or ProtocolVersion for an offer
 * of another version); every frame must survive encode/decode; the decoder
 * holds no more than one frame's worth of bytes; a failed decoder stays
 * failed.
 */
import { isVertexError } from '../../../q2q/errors';
import {
  encodeFrame,
  FRAME_HEADER_BYTES,
  FrameDecoder,
  MAX_PAYLOAD,
  SHA256_BYTES,
  type TransferFrame,
} from '../../../q2q/wire/file-transfer';
import { invariant, rngFrom, type FuzzTarget, type Rng } from '../engine';

export interface FileTransferImpl {
  decoder: () => Pick<FrameDecoder, 'push' | 'buffered'>;
}

export const REAL_FILE_TRANSFER: FileTransferImpl = { decoder: () => new FrameDecoder() };

const LARGEST_FRAME = FRAME_HEADER_BYTES + Math.max(...Object.values(MAX_PAYLOAD));
const CODES = new Set(['TransferDecode', 'ProtocolVersion']);

function text(frame: TransferFrame): string {
  return JSON.stringify(frame, (_k, v: unknown) => (v && typeof v === 'object' && (v as { type?: string }).type === 'Buffer' ? Buffer.from((v as { data: number[] }).data).toString('hex') : v));
}

const counters = { framesDecoded: 0 };

function decode(impl: FileTransferImpl, bytes: Buffer, cuts: number[]): { frames: TransferFrame[]; error: Error | null } {
  const decoder = impl.decoder();
  const frames: TransferFrame[] = [];
  let start = 0;
  for (const end of [...cuts, bytes.length]) {
    const chunk = bytes.subarray(start, end);
    start = end;
    try {
      frames.push(...decoder.push(chunk));
    } catch (err) {
      invariant(isVertexError(err) && CODES.has(err.code), `the decoder threw ${String(err)}`);
      try {
        decoder.push(Buffer.alloc(0));
        invariant(false, 'a failed decoder accepted more input');
      } catch (again) {
        invariant(again === err || (isVertexError(again) && CODES.has(again.code)), `a failed decoder threw ${String(again)}`);
      }
      return { frames, error: err as Error };
    }
    invariant(decoder.buffered <= LARGEST_FRAME + chunk.length, `the decoder holds ${decoder.buffered} bytes`);
  }
  // It holds the bytes of the frame it has not finished (less its header, once read): no more.
  const unread = bytes.length - frames.reduce((n, f) => n + encodeFrame(f).length, 0);
  const held = decoder.buffered;
  invariant(held === unread || (unread >= FRAME_HEADER_BYTES && held === unread - FRAME_HEADER_BYTES), `the decoder holds ${held} bytes, ${unread} are unread`);
  return { frames, error: null };
}

function seeds(): Buffer[] {
  const d = (n: number) => Buffer.alloc(SHA256_BYTES, n);
  const frames: TransferFrame[] = [
    { type: 'offer', files: [{ path: 'a/b.txt', size: 5, sha256: d(1) }, { path: 'é', size: 0, sha256: d(2) }] },
    { type: 'accept', resume: [{ offset: 0, sha256: d(0) }, { offset: 1000, sha256: d(3) }] },
    { type: 'reject', reason: 'exists', message: 'a/b.txt exists' },
    { type: 'file', index: 1, offset: 0 },
    { type: 'data', bytes: Buffer.from('hello') },
    { type: 'verified', index: 1, sha256: d(4) },
    { type: 'error', reason: 'verify', message: 'sha-256 mismatch' },
  ];
  const each = frames.map(encodeFrame);
  return [...each.map((f) => Buffer.concat([Buffer.from([0]), f])), Buffer.concat([Buffer.from([1]), ...each])];
}

function generate(rng: Rng): Buffer {
  const d = () => rng.bytes(SHA256_BYTES);
  const path = () => rng.bytes(1 + rng.int(12)).toString('base64url');
  const frames: TransferFrame[] = [];
  for (let n = 1 + rng.int(5); n > 0; n--) {
    switch (rng.int(7)) {
      case 0: frames.push({ type: 'offer', files: Array.from({ length: 1 + rng.int(4) }, () => ({ path: path(), size: rng.int(1 << 20), sha256: d() })) }); break;
      case 1: frames.push({ type: 'accept', resume: Array.from({ length: 1 + rng.int(4) }, () => ({ offset: rng.int(1000), sha256: d() })) }); break;
      case 2: frames.push({ type: 'reject', reason: 'busy', message: path() }); break;
      case 3: frames.push({ type: 'file', index: rng.int(10), offset: rng.int(100) }); break;
      case 4: frames.push({ type: 'data', bytes: rng.bytes(1 + rng.int(64)) }); break;
      case 5: frames.push({ type: 'verified', index: rng.int(10), sha256: d() }); break;
      default: frames.push({ type: 'error', reason: 'io', message: path() }); break;
    }
  }
  return Buffer.concat([Buffer.from([rng.int(256)]), ...frames.map(encodeFrame)]);
}

export function fileTransferTarget(impl: FileTransferImpl = REAL_FILE_TRANSFER): FuzzTarget {
  return {
    name: 'file-transfer',
    codes: ['TransferDecode', 'ProtocolVersion'],
    dictionary: ['../', '/', '\\', '.', '\u0000', 'a/b'].map((t) => Buffer.from(t)),
    counters,
    seeds,
    generate,
    run(input) {
      const bytes = input.subarray(1);
      const rng = rngFrom((input[0] ?? 0) * 65_537 + bytes.length);
      const cuts = Array.from({ length: rng.int(6) }, () => rng.int(bytes.length + 1)).sort((a, b) => a - b);
      const whole = decode(impl, bytes, []);
      const chunked = decode(impl, bytes, cuts);
      invariant(whole.error?.message === chunked.error?.message, `whole and chunked decoding disagree: ${whole.error?.message} / ${chunked.error?.message}`);
      if (whole.error === null) {
        invariant(whole.frames.map(text).join() === chunked.frames.map(text).join(), 'whole and chunked decoding give different frames');
      }
      counters.framesDecoded += chunked.frames.length;
      for (const frame of chunked.frames) {
        const again = new FrameDecoder().push(encodeFrame(frame));
        invariant(again.length === 1 && text(again[0] as TransferFrame) === text(frame), `${frame.type} does not survive encode/decode`);
      }
      const kinds = [...new Set(chunked.frames.map((f) => f.type))].sort().join(',');
      if (whole.error) throw whole.error;
      return kinds || 'nothing';
    },
  };
}

/**
 * Broken on purpose (test/fuzz/can-fail.test.ts):
 *  plain-error  the decoder throws a plain Error when a VERIFIED frame names file 7 or more
 *  hoards       the decoder keeps every byte it was given (an unbounded buffer)
 */
export function faultyFileTransfer(fault: string): FileTransferImpl {
  switch (fault) {
    case 'plain-error':
      return {
        decoder: () => new (class extends FrameDecoder {
          override push(chunk: Buffer): TransferFrame[] {
            const frames = super.push(chunk);
            if (frames.some((f) => f.type === 'verified' && f.index >= 7)) throw new Error('injected: a plain error in the decoder');
            return frames;
          }
        })(),
      };
    case 'hoards':
      return {
        decoder: () => {
          const real = new FrameDecoder();
          let total = 0;
          return {
            push: (chunk: Buffer) => {
              total += chunk.length;
              return real.push(chunk);
            },
            get buffered() {
              return real.buffered + total;
            },
          };
        },
      };
    default:
      throw new Error(`file-transfer: unknown fault ${fault}; known: plain-error, hoards`);
  }
}
