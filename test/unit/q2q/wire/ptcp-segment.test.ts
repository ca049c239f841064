import fc from 'fast-check';
import { isVertexError } from '../../../../q2q/errors';
import {
  decodeSegment,
  encodedSize,
  encodeSegment,
  encodeSegmentInto,
  FLAG_ACK,
  FLAG_FIN,
  FLAG_SYN,
  isPtcpDatagram,
  PTCP_MAX_SACK_BLOCKS,
  type PtcpSegment,
  seqAdd,
  seqDiff,
  seqGt,
  seqLt,
} from '../../../../q2q/wire/ptcp-segment';

const SYN_HEX = 'a1010000' + '0000beef' + '00000000' + 'fffffff0' + '00000000' + '00000001' + '00000000' + '4000' + '0000';
const SYN: PtcpSegment = { flags: FLAG_SYN, srcId: 0xbeef, dstId: 0, seq: 0xfffffff0, ack: 0, tsVal: 1, tsEcr: 0, window: 0x4000 << 8, sacks: [], payload: Buffer.alloc(0) };

const DATA_HEX =
  'a1060200' + '00000001' + '00000002' + '00000010' + '00000020' + '00000030' + '00000040' + 'ffff' + '0005' +
  '00000100' + '00000200' + 'fffffff0' + '00000004' + '68656c6c6f';
const DATA: PtcpSegment = {
  flags: FLAG_ACK | FLAG_FIN,
  srcId: 1,
  dstId: 2,
  seq: 0x10,
  ack: 0x20,
  tsVal: 0x30,
  tsEcr: 0x40,
  window: 0xffff << 8,
  sacks: [
    { start: 0x100, end: 0x200 },
    { start: 0xfffffff0, end: 4 },
  ],
  payload: Buffer.from('hello'),
};

describe('ptcp segment codec', () => {
  it.each([
    ['SYN', SYN, SYN_HEX],
    ['data with FIN and two SACK blocks (one wrapping)', DATA, DATA_HEX],
  ])('golden vector both ways: %s', (_name, seg, hex) => {
    expect(encodeSegment(seg).toString('hex')).toBe(hex);
    expect(decodeSegment(Buffer.from(hex, 'hex'))).toEqual(seg);
  });

  it('encodes into a caller\'s buffer at an offset: the same bytes, nothing around them touched', () => {
    for (const [seg, hex] of [[SYN, SYN_HEX], [DATA, DATA_HEX]] as const) {
      const target = Buffer.alloc(7 + hex.length / 2 + 5, 0xee);
      const written = encodeSegmentInto(seg, target, 7);
      expect(written).toBe(hex.length / 2);
      expect(written).toBe(encodedSize(seg));
      expect(target.subarray(7, 7 + written).toString('hex')).toBe(hex);
      expect([...target.subarray(0, 7), ...target.subarray(7 + written)].every((b) => b === 0xee)).toBe(true);
    }
  });

  it('refuses to encode past the end of the target buffer', () => {
    const target = Buffer.alloc(DATA_HEX.length / 2 + 3, 0xee);
    expect(() => encodeSegmentInto(DATA, target, 4)).toThrow(RangeError);
    expect(() => encodeSegmentInto(DATA, target, -1)).toThrow(RangeError);
    expect(target.every((b) => b === 0xee)).toBe(true);
  });

  it('a segment without SACK blocks decodes to an empty list that cannot be changed', () => {
    const seg = decodeSegment(Buffer.from(SYN_HEX, 'hex'));
    expect(seg.sacks).toEqual([]);
    expect(Object.isFrozen(seg.sacks)).toBe(true);
    expect(decodeSegment(Buffer.from(DATA_HEX, 'hex')).sacks).not.toBe(seg.sacks);
  });

  it('rejects every truncation and every extension with PtcpDecode', () => {
    const full = Buffer.from(DATA_HEX, 'hex');
    for (let len = 0; len < full.length; len++) {
      expect(() => decodeSegment(full.subarray(0, len))).toThrow(expect.objectContaining({ code: 'PtcpDecode' }));
    }
    expect(() => decodeSegment(Buffer.concat([full, Buffer.from([0])]))).toThrow(expect.objectContaining({ code: 'PtcpDecode' }));
  });

  it.each([
    ['bad magic', 0, 0xa2],
    ['unknown flag', 1, 0x40],
    ['too many sack blocks', 2, PTCP_MAX_SACK_BLOCKS + 1],
    ['reserved byte set', 3, 1],
  ])('rejects %s', (_name, offset, value) => {
    const buf = Buffer.from(DATA_HEX, 'hex');
    buf[offset] = value;
    expect(() => decodeSegment(buf)).toThrow(expect.objectContaining({ code: 'PtcpDecode' }));
  });

  it('tells PTCP datagrams from others by the first byte', () => {
    expect(isPtcpDatagram(Buffer.from(SYN_HEX, 'hex'))).toBe(true);
    expect(isPtcpDatagram(Buffer.from('NAT!'))).toBe(false);
    expect(isPtcpDatagram(Buffer.from('{"whoami":1}'))).toBe(false);
    expect(isPtcpDatagram(Buffer.alloc(0))).toBe(false);
  });

  it('rounds the window down to its 256-byte unit and caps it', () => {
    expect(decodeSegment(encodeSegment({ ...SYN, window: 1000 })).window).toBe(768);
    expect(decodeSegment(encodeSegment({ ...SYN, window: 1e9 })).window).toBe(0xffff << 8);
  });

  it('round-trips arbitrary segments', () => {
    const u32 = fc.integer({ min: 0, max: 0xffffffff });
    const seg = fc.record({
      flags: fc.integer({ min: 0, max: 0x1f }),
      srcId: u32,
      dstId: u32,
      seq: u32,
      ack: u32,
      tsVal: u32,
      tsEcr: u32,
      window: fc.integer({ min: 0, max: 0xffff }).map((u) => u << 8),
      sacks: fc.array(fc.record({ start: u32, end: u32 }), { maxLength: PTCP_MAX_SACK_BLOCKS }),
      payload: fc.uint8Array({ maxLength: 1500 }).map((a) => Buffer.from(a)),
    });
    fc.assert(
      fc.property(seg, (s) => {
        const encoded = encodeSegment(s);
        const back = decodeSegment(encoded);
        expect({ ...back, payload: Buffer.from(back.payload) }).toEqual({ ...s, payload: s.payload.length === 0 ? Buffer.alloc(0) : s.payload });
        const into = Buffer.alloc(encoded.length + 3);
        expect(encodeSegmentInto(s, into, 3)).toBe(encoded.length);
        expect(into.subarray(3).equals(encoded)).toBe(true);
      }),
    );
  });

  it('decoding random bytes throws nothing but PtcpDecode', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), fc.boolean(), (bytes, magic) => {
        const buf = Buffer.from(bytes);
        if (magic && buf.length > 0) buf[0] = 0xa1;
        try {
          decodeSegment(buf);
        } catch (err) {
          expect(isVertexError(err, 'PtcpDecode')).toBe(true);
        }
      }),
      { numRuns: 5000 },
    );
  });

  it('compares sequence numbers across the 2^32 wrap', () => {
    expect(seqLt(0xfffffff0, 5)).toBe(true);
    expect(seqGt(5, 0xfffffff0)).toBe(true);
    expect(seqDiff(5, 0xfffffff0)).toBe(21);
    expect(seqAdd(0xffffffff, 2)).toBe(1);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 1, max: 0x7fffffff }), (a, n) => {
        expect(seqLt(a, seqAdd(a, n))).toBe(true);
        expect(seqDiff(seqAdd(a, n), a)).toBe(n);
      }),
    );
  });
});
