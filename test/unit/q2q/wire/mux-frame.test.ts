import fc from 'fast-check';
import { isVertexError } from '../../../../q2q/errors';
import {
  decodeFields, decodeHello, decodeOpen, decodeWindowIncrement, encodeFields, encodeFrame, encodeHeader, encodeHello, encodeOpenFrame, encodeWindow, FRAME, FrameDecoder,
  MUX_HEADER_BYTES, MUX_MAX_CONTROL_PAYLOAD, MUX_MAX_FRAME_PAYLOAD, MUX_MAX_WINDOW, type FrameType,
} from '../../../../q2q/wire/mux-frame';

type Event = ['frame', FrameType, number, string] | ['data', number, string, boolean];

/** Decodes `chunks` in order; DATA slices of one frame are joined so that splits do not change the result. */
function decodeAll(chunks: Buffer[]): Event[] {
  const events: Event[] = [];
  let data: { id: number; parts: Buffer[] } | null = null;
  const decoder = new FrameDecoder({
    frame: (type, id, payload) => events.push(['frame', type, id, payload.toString('hex')]),
    data: (id, bytes, last) => {
      data ??= { id, parts: [] };
      data.parts.push(Buffer.from(bytes));
      if (last) {
        events.push(['data', id, Buffer.concat(data.parts).toString('hex'), true]);
        data = null;
      }
    },
  });
  for (const c of chunks) decoder.push(c);
  return events;
}

// Golden vectors: header = type (1) | stream id (4, BE) | length (4, BE).
const OPEN_HEX = '01' + '00000003' + '00000010' + '0007' + '73657276696365' + '0003' + '737368' + '0000';
const DATA_HEX = '04' + '00000003' + '00000005' + '68656c6c6f';
const WINDOW_HEX = '05' + '00000004' + '00000004' + '00010000';
const PING_HEX = '08' + '00000000' + '00000008' + '0102030405060708';
const END_HEX = '06' + '00000003' + '00000000';

describe('mux frame codec', () => {
  it('golden vectors both ways', () => {
    expect(encodeFrame(FRAME.OPEN, 3, encodeFields({ service: 'ssh' })).toString('hex')).toBe(OPEN_HEX);
    expect(Buffer.concat([encodeHeader(FRAME.DATA, 3, 5), Buffer.from('hello')]).toString('hex')).toBe(DATA_HEX);
    expect(encodeWindow(4, 65536).toString('hex')).toBe(WINDOW_HEX);
    expect(encodeFrame(FRAME.PING, 0, Buffer.from('0102030405060708', 'hex')).toString('hex')).toBe(PING_HEX);
    expect(encodeFrame(FRAME.END, 3).toString('hex')).toBe(END_HEX);
    const all = Buffer.from(OPEN_HEX + DATA_HEX + WINDOW_HEX + PING_HEX + END_HEX, 'hex');
    const events = decodeAll([all]);
    expect(events).toEqual([
      ['frame', FRAME.OPEN, 3, OPEN_HEX.slice(MUX_HEADER_BYTES * 2)],
      ['data', 3, '68656c6c6f', true],
      ['frame', FRAME.WINDOW, 4, '00010000'],
      ['frame', FRAME.PING, 0, '0102030405060708'],
      ['frame', FRAME.END, 3, ''],
    ]);
    expect(decodeFields(Buffer.from(OPEN_HEX.slice(MUX_HEADER_BYTES * 2), 'hex'))).toEqual({ service: 'ssh' });
    expect(decodeWindowIncrement(Buffer.from('00010000', 'hex'))).toBe(65536);
  });

  it('gives the same frames however the bytes are split (every split point, and byte by byte)', () => {
    const all = Buffer.from(OPEN_HEX + DATA_HEX + WINDOW_HEX + PING_HEX + END_HEX, 'hex');
    const whole = decodeAll([all]);
    for (let i = 0; i <= all.length; i++) expect(decodeAll([all.subarray(0, i), all.subarray(i)])).toEqual(whole);
    expect(decodeAll([...all].map((b) => Buffer.from([b])))).toEqual(whole);
  });

  it('hands DATA on in the slices it arrived in, without copying', () => {
    const payload = Buffer.alloc(1000, 7);
    const frame = Buffer.concat([encodeHeader(FRAME.DATA, 1, payload.length), payload]);
    const slices: Buffer[] = [];
    const decoder = new FrameDecoder({ frame: () => undefined, data: (_id, bytes) => slices.push(bytes) });
    decoder.push(frame.subarray(0, 500));
    decoder.push(frame.subarray(500));
    expect(slices.map((s) => s.length)).toEqual([500 - MUX_HEADER_BYTES, frame.length - 500]);
    expect(slices[1]?.buffer).toBe(frame.buffer);
  });

  it.each([
    ['an unknown type', Buffer.from('0b' + '00000000' + '00000000', 'hex'), /unknown frame type 11/],
    ['a payload over the maximum', encodeHeaderUnchecked(FRAME.DATA, 1, MUX_MAX_FRAME_PAYLOAD + 1), /exceeds/],
    ['a control payload over its maximum', encodeHeaderUnchecked(FRAME.OPEN, 1, MUX_MAX_CONTROL_PAYLOAD + 1), /exceeds 4096/],
    ['a stream frame on stream 0', encodeHeaderUnchecked(FRAME.DATA, 0, 0), /DATA frame on stream 0/],
    ['a session frame on a stream', encodeHeaderUnchecked(FRAME.GOAWAY, 5, 0), /GOAWAY frame on stream 5/],
  ])('rejects %s with MuxDecode, and stays failed', (_what, bytes, message) => {
    const decoder = new FrameDecoder({ frame: () => undefined, data: () => undefined });
    let thrown: unknown;
    try {
      decoder.push(bytes);
    } catch (err) {
      thrown = err;
    }
    expect(isVertexError(thrown, 'MuxDecode')).toBe(true);
    expect((thrown as Error).message).toMatch(message);
    expect(() => decoder.push(Buffer.from(END_HEX, 'hex'))).toThrow(expect.objectContaining({ code: 'MuxDecode' }));
  });

  it('HELLO: golden vectors with and without sessionWindow (a peer from before session windows sends none)', () => {
    // AMP box: (key length, key, value length, value)... then 0000.
    const box = (pairs: Array<[string, string]>): string => pairs.map(([k, v]) => (
      Buffer.from([0, k.length]).toString('hex') + Buffer.from(k).toString('hex') + Buffer.from([0, v.length]).toString('hex') + Buffer.from(v).toString('hex')
    )).join('') + '0000';
    const withSession = box([['version', '1'], ['window', '4194304'], ['sessionWindow', '33554432']]);
    const without = box([['version', '1'], ['window', '4194304']]);
    expect(encodeHello({ version: '1', window: 4194304, sessionWindow: 33554432 }).toString('hex')).toBe(withSession);
    expect(encodeHello({ version: '1', window: 4194304, sessionWindow: null }).toString('hex')).toBe(without);
    expect(decodeHello(Buffer.from(withSession, 'hex'))).toEqual({ version: '1', window: 4194304, sessionWindow: 33554432 });
    expect(decodeHello(Buffer.from(without, 'hex'))).toEqual({ version: '1', window: 4194304, sessionWindow: null });
    // A HELLO with the new field is still one an older decoder reads: the same box, one field more.
    expect(decodeFields(Buffer.from(withSession, 'hex'))).toMatchObject({ version: '1', window: '4194304' });
  });

  it.each([
    ['window', { version: '1', window: '65535' }, /window 65535 out of range/],
    ['sessionWindow below one DATA frame', { version: '1', window: '65536', sessionWindow: '65535' }, /sessionWindow 65535 out of range/],
    ['sessionWindow above the maximum', { version: '1', window: '65536', sessionWindow: String(MUX_MAX_WINDOW + 1) }, /sessionWindow 2147483648 out of range/],
    ['sessionWindow not a number', { version: '1', window: '65536', sessionWindow: '1e9' }, /sessionWindow 1e9 out of range/],
    ['no window', { version: '1' }, /window \(none\)/],
  ])('HELLO with a bad %s is MuxDecode', (_what, fields, message) => {
    expect(() => decodeHello(encodeFields(fields))).toThrow(expect.objectContaining({ code: 'MuxDecode', message: expect.stringMatching(message) }));
  });

  it('WINDOW on stream 0 (session credit) decodes; other stream frames on stream 0 do not', () => {
    const sessionWindow = '05' + '00000000' + '00000004' + '00400000';
    expect(encodeWindow(0, 4 * 1024 * 1024).toString('hex')).toBe(sessionWindow);
    expect(decodeAll([Buffer.from(sessionWindow, 'hex')])).toEqual([['frame', FRAME.WINDOW, 0, '00400000']]);
    for (const type of [FRAME.OPEN, FRAME.ACCEPT, FRAME.END, FRAME.RESET, FRAME.REFUSE]) {
      expect(() => decodeAll([encodeHeaderUnchecked(type, 0, 0)])).toThrow(/on stream 0/);
    }
  });

  it('checks window increments and control fields', () => {
    expect(() => decodeWindowIncrement(Buffer.alloc(3))).toThrow(expect.objectContaining({ code: 'MuxDecode' }));
    expect(() => decodeWindowIncrement(Buffer.alloc(4))).toThrow(/out of range/);
    expect(() => decodeFields(Buffer.from('0003616263', 'hex'))).toThrow(expect.objectContaining({ code: 'MuxDecode' }));
    expect(() => decodeFields(Buffer.concat([encodeFields({ a: '1' }), encodeFields({ b: '2' })]))).toThrow(/2 boxes/);
    expect(() => encodeWindow(1, 0)).toThrow();
    expect(() => encodeHeader(FRAME.DATA, 1, MUX_MAX_FRAME_PAYLOAD + 1)).toThrow();
  });

  it('round-trips any sequence of frames under any split (fast-check)', () => {
    const frameArb = fc.oneof(
      fc.record({ kind: fc.constant('data' as const), id: fc.integer({ min: 1, max: 0xffffffff }), bytes: fc.uint8Array({ maxLength: 3000 }) }),
      fc.record({ kind: fc.constant('control' as const), type: fc.constantFrom<FrameType>(FRAME.OPEN, FRAME.ACCEPT, FRAME.REFUSE, FRAME.WINDOW, FRAME.END, FRAME.RESET), id: fc.integer({ min: 1, max: 0xffffffff }), bytes: fc.uint8Array({ maxLength: 200 }) }),
      fc.record({ kind: fc.constant('control' as const), type: fc.constantFrom<FrameType>(FRAME.HELLO, FRAME.PING, FRAME.PONG, FRAME.GOAWAY, FRAME.WINDOW), id: fc.constant(0), bytes: fc.uint8Array({ maxLength: 200 }) }),
    );
    fc.assert(fc.property(fc.array(frameArb, { maxLength: 20 }), fc.array(fc.integer({ min: 1, max: 500 }), { minLength: 1, maxLength: 20 }), (frames, cuts) => {
      const wire = Buffer.concat(frames.map((f) => (f.kind === 'data'
        ? Buffer.concat([encodeHeader(FRAME.DATA, f.id, f.bytes.length), Buffer.from(f.bytes)])
        : encodeFrame(f.type, f.id, Buffer.from(f.bytes)))));
      const chunks: Buffer[] = [];
      let at = 0;
      for (let i = 0; at < wire.length; i++) {
        const n = cuts[i % cuts.length] as number;
        chunks.push(wire.subarray(at, at + n));
        at += n;
      }
      const expected: Event[] = frames.map((f) => (f.kind === 'data'
        ? ['data', f.id, Buffer.from(f.bytes).toString('hex'), true]
        : ['frame', f.type, f.id, Buffer.from(f.bytes).toString('hex')]));
      expect(decodeAll(chunks)).toEqual(expected);
    }));
  });

  it('never throws anything but MuxDecode on random bytes (fast-check)', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 2000 }), (bytes) => {
      const decoder = new FrameDecoder({ frame: () => undefined, data: () => undefined });
      try {
        decoder.push(Buffer.from(bytes));
      } catch (err) {
        expect(isVertexError(err, 'MuxDecode')).toBe(true);
      }
    }));
  });
});

/** A header without the encoder's own checks, for frames a broken peer might send. */
function encodeHeaderUnchecked(type: number, id: number, length: number): Buffer {
  const b = Buffer.alloc(MUX_HEADER_BYTES);
  b.writeUInt8(type, 0);
  b.writeUInt32BE(id, 1);
  b.writeUInt32BE(length, 5);
  return b;
}

describe('OPEN payload fast path', () => {
  it('writes the bytes encodeFields writes, and reads back what it wrote and what encodeFields wrote', () => {
    for (const service of ['hello', 'http', 'a', 'x'.repeat(255), 'dienst-ü']) {
      const fast = encodeOpenFrame(7, service);
      expect(fast.equals(encodeFrame(FRAME.OPEN, 7, encodeFields({ service })))).toBe(true);
      expect(decodeOpen(fast.subarray(9))).toBe(service);
    }
  });

  it('falls back to the AMP decoder for any other box', () => {
    expect(decodeOpen(encodeFields({ service: 'ssh', extra: 'x' }))).toBe('ssh');
    expect(decodeOpen(encodeFields({ other: 'ssh' }))).toBe('');
    expect(decodeOpen(encodeFields({ service: '' }))).toBe('');
    expect(() => decodeOpen(Buffer.from([0, 7, 1, 2]))).toThrow(/decode mux fields/);
  });
});
