import fc from 'fast-check';
import { isVertexError } from '../../../../q2q/errors';
import {
  decodePayload, encodeDataHeader, encodeFrame, FrameDecoder, FRAME_HEADER_BYTES, MAX_DATA_BYTES, MAX_FILE_BYTES,
  MAX_MESSAGE_BYTES, MAX_PAYLOAD, SHA256_BYTES, type TransferFrame,
} from '../../../../q2q/wire/file-transfer';

const D1 = Buffer.alloc(SHA256_BYTES, 0x11);
const D2 = Buffer.alloc(SHA256_BYTES, 0x22);
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** Golden vectors: the frame and its exact bytes, checked in both directions. */
const GOLDEN: Array<[string, TransferFrame, string]> = [
  ['offer of one file', { type: 'offer', files: [{ path: 'a/b.txt', size: 5, sha256: D1 }] },
    `01 00000036  01 00000001  0007 612f622e747874 0000000000000005 ${D1.toString('hex')}`],
  ['offer of two files, one empty', { type: 'offer', files: [{ path: 'x', size: 0, sha256: D1 }, { path: 'é', size: 2 ** 40, sha256: D2 }] },
    `01 0000005c  01 00000002  0001 78 0000000000000000 ${D1.toString('hex')}  0002 c3a9 0000010000000000 ${D2.toString('hex')}`],
  ['accept with a resume point', { type: 'accept', resume: [{ offset: 0, sha256: Buffer.alloc(32) }, { offset: 1000, sha256: D2 }] },
    `02 00000054  00000002  0000000000000000 ${'00'.repeat(32)}  00000000000003e8 ${D2.toString('hex')}`],
  ['reject', { type: 'reject', reason: 'bad-name', message: 'no' }, '03 00000003 03 6e6f'],
  ['reject declined, empty message', { type: 'reject', reason: 'declined', message: '' }, '03 00000001 01'],
  ['file', { type: 'file', index: 3, offset: 65536 }, '04 0000000c 00000003 0000000000010000'],
  ['data', { type: 'data', bytes: Buffer.from('hi') }, '05 00000002 6869'],
  ['verified', { type: 'verified', index: 1, sha256: D1 }, `06 00000024 00000001 ${D1.toString('hex')}`],
  ['error', { type: 'error', reason: 'io', message: 'disk full' }, '07 0000000a 02 6469736b2066756c6c'],
];

function decodeAll(bytes: Buffer): TransferFrame[] {
  const d = new FrameDecoder();
  const frames = d.push(bytes);
  expect(d.buffered).toBe(0);
  return frames;
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (!isVertexError(err)) throw err;
    return err.code;
  }
  return undefined;
}

const digest = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b));
const pathArb = fc.string({ unit: 'grapheme', minLength: 1, maxLength: 40 });
const frameArb: fc.Arbitrary<TransferFrame> = fc.oneof(
  fc.record({ type: fc.constant('offer' as const), files: fc.array(fc.record({ path: pathArb, size: fc.maxSafeNat(), sha256: digest }), { minLength: 1, maxLength: 5 }) }),
  fc.record({ type: fc.constant('accept' as const), resume: fc.array(fc.record({ offset: fc.maxSafeNat(), sha256: digest }), { minLength: 1, maxLength: 5 }) }),
  fc.record({ type: fc.constant('reject' as const), reason: fc.constantFrom('other', 'declined', 'not-allowed', 'bad-name', 'exists', 'no-space', 'unwritable', 'busy', 'version' as const), message: fc.string({ maxLength: 50 }) }),
  fc.record({ type: fc.constant('file' as const), index: fc.nat({ max: 65535 }), offset: fc.maxSafeNat() }),
  fc.record({ type: fc.constant('data' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 300 }).map((b) => Buffer.from(b)) }),
  fc.record({ type: fc.constant('verified' as const), index: fc.nat({ max: 65535 }), sha256: digest }),
  fc.record({ type: fc.constant('error' as const), reason: fc.constantFrom('other', 'protocol', 'io', 'verify', 'source', 'cancelled' as const), message: fc.string({ maxLength: 50 }) }),
);

describe('file-transfer codec', () => {
  it.each(GOLDEN)('golden %s', (_name, frame, bytes) => {
    expect(encodeFrame(frame).toString('hex')).toBe(hex(bytes).toString('hex'));
    expect(decodeAll(hex(bytes))).toEqual([frame]);
  });

  it('decodes a stream split at every byte boundary, and byte by byte', () => {
    const stream = Buffer.concat(GOLDEN.map(([, , bytes]) => hex(bytes)));
    const expected = GOLDEN.map(([, frame]) => frame);
    for (let cut = 0; cut <= stream.length; cut++) {
      const d = new FrameDecoder();
      const got = [...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut))];
      expect(got).toEqual(expected);
      expect(d.buffered).toBe(0);
    }
    const d = new FrameDecoder();
    const got: TransferFrame[] = [];
    for (const byte of stream) got.push(...d.push(Buffer.from([byte])));
    expect(got).toEqual(expected);
  });

  it('round-trips any frames through any chunking', () => {
    fc.assert(fc.property(fc.array(frameArb, { minLength: 1, maxLength: 6 }), fc.array(fc.nat(), { maxLength: 8 }), (frames, cuts) => {
      const stream = Buffer.concat(frames.map(encodeFrame));
      const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
      const d = new FrameDecoder();
      const got: TransferFrame[] = [];
      let from = 0;
      for (const p of [...points, stream.length]) {
        got.push(...d.push(stream.subarray(from, p)));
        from = p;
      }
      expect(got).toEqual(frames);
    }), { numRuns: 500 });
  });

  it('decoding random bytes throws only typed errors', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), fc.nat({ max: 7 }), (bytes, type) => {
      // Half the runs start with a valid type byte so payload decoding is exercised too.
      const buf = Buffer.from(bytes);
      if (buf.length > 0 && type > 0) buf[0] = type;
      const code = codeOf(() => new FrameDecoder().push(buf));
      if (code !== undefined) expect(['TransferDecode', 'ProtocolVersion']).toContain(code);
    }), { numRuns: 5000 });
    fc.assert(fc.property(fc.constantFrom('offer', 'accept', 'reject', 'file', 'data', 'verified', 'error' as const), fc.uint8Array({ maxLength: 120 }), (type, bytes) => {
      const code = codeOf(() => decodePayload(type, Buffer.from(bytes)));
      if (code !== undefined) expect(['TransferDecode', 'ProtocolVersion']).toContain(code);
    }), { numRuns: 5000 });
  });

  it('refuses an oversized header before its payload arrives, and stays failed', () => {
    const head = Buffer.alloc(FRAME_HEADER_BYTES);
    head[0] = 0x05;
    head.writeUInt32BE(MAX_DATA_BYTES + 1, 1);
    const d = new FrameDecoder();
    expect(codeOf(() => d.push(head))).toBe('TransferDecode');
    expect(codeOf(() => d.push(encodeFrame({ type: 'file', index: 0, offset: 0 })))).toBe('TransferDecode');
    for (const [type, code] of [['offer', 1], ['accept', 2], ['reject', 3], ['verified', 6]] as const) {
      const h = Buffer.alloc(FRAME_HEADER_BYTES);
      h[0] = code;
      h.writeUInt32BE(MAX_PAYLOAD[type] + 1, 1);
      expect(codeOf(() => new FrameDecoder().push(h))).toBe('TransferDecode');
    }
  });

  it('refuses unknown types, bad UTF-8, sizes past 2^53, trailing bytes, empty data, an unknown version', () => {
    expect(codeOf(() => new FrameDecoder().push(hex('08 00000000')))).toBe('TransferDecode');
    expect(codeOf(() => new FrameDecoder().push(hex('00 00000000')))).toBe('TransferDecode');
    expect(codeOf(() => decodePayload('offer', hex(`01 00000001 0001 ff 0000000000000001 ${D1.toString('hex')}`)))).toBe('TransferDecode');
    expect(codeOf(() => decodePayload('offer', hex(`01 00000001 0001 78 0020000000000000 ${D1.toString('hex')}`)))).toBe('TransferDecode');
    expect(codeOf(() => decodePayload('offer', hex(`01 00000001 0001 78 0000000000000001 ${D1.toString('hex')} 00`)))).toBe('TransferDecode');
    expect(codeOf(() => decodePayload('offer', hex('01 00000000')))).toBe('TransferDecode');
    expect(codeOf(() => decodePayload('offer', hex(`02 00000001 0001 78 0000000000000001 ${D1.toString('hex')}`)))).toBe('ProtocolVersion');
    expect(codeOf(() => decodePayload('data', Buffer.alloc(0)))).toBe('TransferDecode');
    expect(codeOf(() => decodePayload('accept', hex('00000002 0000000000000000')))).toBe('TransferDecode');
    expect(codeOf(() => decodePayload('error', hex('02 c3')))).toBe('TransferDecode');
    expect(decodePayload('offer', hex(`01 00000001 0001 78 001fffffffffffff ${D1.toString('hex')}`))).toEqual({
      type: 'offer', files: [{ path: 'x', size: MAX_FILE_BYTES, sha256: D1 }],
    });
  });

  it('reads unknown reason codes as "other" so a newer peer\'s message still shows', () => {
    expect(decodePayload('reject', hex('63 6869'))).toEqual({ type: 'reject', reason: 'other', message: 'hi' });
    expect(decodePayload('error', hex('63'))).toEqual({ type: 'error', reason: 'other', message: '' });
  });

  it('cuts long messages on a character boundary', () => {
    const long = 'é'.repeat(MAX_MESSAGE_BYTES);
    const [frame] = decodeAll(encodeFrame({ type: 'error', reason: 'io', message: long }));
    expect(frame?.type).toBe('error');
    const message = (frame as { message: string }).message;
    expect(Buffer.byteLength(message)).toBeLessThanOrEqual(MAX_MESSAGE_BYTES);
    expect(long.startsWith(message)).toBe(true);
    expect(message.length).toBe(MAX_MESSAGE_BYTES / 2);
  });

  it('keeps data payloads as views of the pushed chunk (no copy) when a frame fits in it', () => {
    const chunk = encodeFrame({ type: 'data', bytes: Buffer.alloc(1000, 7) });
    const [frame] = new FrameDecoder().push(chunk);
    expect(frame?.type === 'data' && frame.bytes.buffer).toBe(chunk.buffer);
  });

  it('encoder refuses values the format cannot carry', () => {
    expect(() => encodeFrame({ type: 'offer', files: [] })).toThrow(RangeError);
    expect(() => encodeFrame({ type: 'offer', files: [{ path: '', size: 1, sha256: D1 }] })).toThrow(RangeError);
    expect(() => encodeFrame({ type: 'offer', files: [{ path: 'x', size: -1, sha256: D1 }] })).toThrow(RangeError);
    expect(() => encodeFrame({ type: 'offer', files: [{ path: 'x', size: 1, sha256: Buffer.alloc(3) }] })).toThrow(RangeError);
    expect(() => encodeFrame({ type: 'data', bytes: Buffer.alloc(0) })).toThrow(RangeError);
    expect(() => encodeDataHeader(MAX_DATA_BYTES + 1)).toThrow(RangeError);
    expect(encodeDataHeader(MAX_DATA_BYTES).toString('hex')).toBe('0500010000');
  });
});
