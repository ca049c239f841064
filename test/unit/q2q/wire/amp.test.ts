import fc from 'fast-check';
import { isVertexError, VertexError } from '../../../../q2q/errors';
import {
  AMP_MAX_KEY_LENGTH,
  AMP_MAX_VALUE_LENGTH,
  AmpBox,
  AmpDecoder,
  boxToStrings,
  DEFAULT_MAX_BOX_BYTES,
  DEFAULT_MAX_KEYS,
  decodeListOf,
  encodeBox,
  encodeListOf,
} from '../../../../q2q/wire/amp';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** Golden vectors from reference/vertex-q2q.md §3.6. */
const GOLDEN_BOXES: Array<{ name: string; hex: string; box: Array<[string, string]> }> = [
  {
    name: 'identify ask, tag 1',
    hex: '0004 5f61736b 0001 31 0008 5f636f6d6d616e64 0008 6964656e74696679 0007 7375626a656374 000b 6578616d706c652e636f6d 0000',
    box: [['_ask', '1'], ['_command', 'identify'], ['subject', 'example.com']],
  },
  {
    name: 'Who-Am-I answer, tag a',
    hex: '0007 5f616e73776572 0001 61 0007 61646472657373 0011 3230332e302e3131332e373a3430303031 0000',
    box: [['_answer', 'a'], ['address', '203.0.113.7:40001']],
  },
  {
    name: 'error box',
    hex: '0006 5f6572726f72 0001 32 000b 5f6572726f725f636f6465 0010 4e6f53756368436f6e6e656374696f6e 0012 5f6572726f725f6465736372697074696f6e 0003 277827 0000',
    box: [['_error', '2'], ['_error_code', 'NoSuchConnection'], ['_error_description', "'x'"]],
  },
];
const GOLDEN_LIST = {
  hex: '0014 746370403230332e302e3131332e373a38373839 0007 7669727475616c',
  items: ['tcp@203.0.113.7:8789', 'virtual'],
};

function entries(box: AmpBox): Array<[string, string]> {
  return Array.from(box, ([k, v]) => [k, v.toString('utf8')]);
}

function decodeAll(bytes: Buffer, chunkAt: number[] = []): AmpBox[] {
  const decoder = new AmpDecoder();
  const out: AmpBox[] = [];
  let start = 0;
  for (const at of [...chunkAt, bytes.length]) {
    out.push(...decoder.push(bytes.subarray(start, at)));
    start = at;
  }
  expect(decoder.idle).toBe(true);
  return out;
}

function decodeError(fn: () => unknown): VertexError {
  try {
    fn();
  } catch (err) {
    if (err instanceof VertexError) return err;
    throw err;
  }
  throw new Error('expected a VertexError');
}

describe('amp codec: golden vectors (§3.6)', () => {
  it.each(GOLDEN_BOXES)('encodes $name to the reference bytes', ({ hex: h, box }) => {
    expect(encodeBox(new Map(box.map(([k, v]) => [k, Buffer.from(v)]))).toString('hex')).toBe(hex(h).toString('hex'));
    expect(encodeBox(Object.fromEntries(box)).toString('hex')).toBe(hex(h).toString('hex'));
  });

  it.each(GOLDEN_BOXES)('decodes $name from the reference bytes', ({ hex: h, box }) => {
    const boxes = decodeAll(hex(h));
    expect(boxes).toHaveLength(1);
    expect(entries(boxes[0]!)).toEqual(box);
  });

  it.each(GOLDEN_BOXES)('decodes $name the same when split at every byte boundary', ({ hex: h, box }) => {
    const bytes = hex(h);
    for (let i = 0; i <= bytes.length; i++) {
      const boxes = decodeAll(bytes, [i]);
      expect(boxes.map(entries)).toEqual([box]);
    }
    // And fed one byte at a time.
    const oneByOne = decodeAll(bytes, Array.from({ length: bytes.length }, (_, i) => i));
    expect(oneByOne.map(entries)).toEqual([box]);
  });

  it('decodes all vectors concatenated, split at every pair of boundaries', () => {
    const stream = Buffer.concat(GOLDEN_BOXES.map((v) => hex(v.hex)));
    const expected = GOLDEN_BOXES.map((v) => v.box);
    for (let i = 0; i <= stream.length; i += 1) {
      for (let j = i; j <= stream.length; j += 7) {
        expect(decodeAll(stream, [i, j]).map(entries)).toEqual(expected);
      }
    }
  });

  it('encodes and decodes the ListOf(Method) vector', () => {
    expect(encodeListOf(GOLDEN_LIST.items).toString('hex')).toBe(hex(GOLDEN_LIST.hex).toString('hex'));
    expect(decodeListOf(hex(GOLDEN_LIST.hex)).map((b) => b.toString())).toEqual(GOLDEN_LIST.items);
  });
});

describe('amp codec: encoder errors', () => {
  it('rejects an empty key', () => {
    expect(decodeError(() => encodeBox({ '': 'x' })).code).toBe('AmpEncode');
  });

  it('rejects a key longer than 255 bytes, and accepts exactly 255', () => {
    expect(() => encodeBox({ ['k'.repeat(AMP_MAX_KEY_LENGTH)]: 'x' })).not.toThrow();
    const err = decodeError(() => encodeBox({ ['k'.repeat(AMP_MAX_KEY_LENGTH + 1)]: 'x' }));
    expect(err.code).toBe('AmpEncode');
    expect(err.message).toContain('key length 256 exceeds 255');
  });

  it('counts key length in UTF-8 bytes, not characters', () => {
    expect(decodeError(() => encodeBox({ ['é'.repeat(128)]: 'x' })).code).toBe('AmpEncode');
  });

  it('rejects a value longer than 65535 bytes, and accepts exactly 65535', () => {
    expect(encodeBox({ v: Buffer.alloc(AMP_MAX_VALUE_LENGTH) })).toHaveLength(2 + 1 + 2 + AMP_MAX_VALUE_LENGTH + 2);
    expect(decodeError(() => encodeBox({ v: Buffer.alloc(AMP_MAX_VALUE_LENGTH + 1) })).code).toBe('AmpEncode');
  });

  it('enforces box limits only when asked to', () => {
    const box = { a: Buffer.alloc(100), b: Buffer.alloc(100) };
    expect(() => encodeBox(box)).not.toThrow();
    expect(decodeError(() => encodeBox(box, { maxBoxBytes: 150 })).code).toBe('AmpEncode');
    expect(decodeError(() => encodeBox(box, { maxKeys: 1 })).code).toBe('AmpEncode');
    expect(() => encodeBox(box, { maxBoxBytes: 2 + 1 + 2 + 100 + 2 + 1 + 2 + 100 + 2 })).not.toThrow();
  });

  it('rejects a list item or a list over the value limit', () => {
    expect(decodeError(() => encodeListOf([Buffer.alloc(AMP_MAX_VALUE_LENGTH + 1)])).code).toBe('AmpEncode');
    expect(decodeError(() => encodeListOf([Buffer.alloc(40000), Buffer.alloc(40000)])).code).toBe('AmpEncode');
  });

  it('rejects a truncated list', () => {
    expect(decodeError(() => decodeListOf(hex('0005 6162'))).code).toBe('AmpDecode');
    expect(decodeError(() => decodeListOf(hex('0001 61 00'))).code).toBe('AmpDecode');
    expect(decodeListOf(Buffer.alloc(0))).toEqual([]);
  });
});

describe('amp codec: decoder errors', () => {
  const keyLen = (n: number): Buffer => {
    const b = Buffer.alloc(2);
    b.writeUInt16BE(n, 0);
    return b;
  };

  it('rejects a key length over 255 as soon as the length arrives', () => {
    const err = decodeError(() => new AmpDecoder().push(keyLen(300)));
    expect(err.code).toBe('AmpDecode');
    expect(err.message).toBe('decode amp box: key length 300 exceeds 255');
  });

  it('rejects a box over maxBoxBytes before buffering the announced value', () => {
    const decoder = new AmpDecoder({ maxBoxBytes: 1000 });
    // key "v", then a value length of 2000 with none of the value sent.
    const err = decodeError(() => decoder.push(Buffer.concat([keyLen(1), Buffer.from('v'), keyLen(2000)])));
    expect(err.code).toBe('AmpDecode');
    expect(err.message).toContain('box exceeds 1000 bytes');
  });

  it('rejects a box that grows over maxBoxBytes across many small values', () => {
    const decoder = new AmpDecoder({ maxBoxBytes: 64 });
    const pair = (k: string): Buffer => Buffer.concat([keyLen(1), Buffer.from(k), keyLen(4), Buffer.from('xxxx')]);
    expect(decoder.push(Buffer.concat(['a', 'b', 'c', 'd', 'e', 'f'].map(pair)))).toEqual([]);
    expect(decodeError(() => decoder.push(pair('g'))).message).toContain('box exceeds 64 bytes');
  });

  it('accepts a box of exactly maxBoxBytes', () => {
    const bytes = encodeBox({ k: Buffer.alloc(10) });
    expect(new AmpDecoder({ maxBoxBytes: bytes.length }).push(bytes)).toHaveLength(1);
    expect(decodeError(() => new AmpDecoder({ maxBoxBytes: bytes.length - 1 }).push(bytes)).code).toBe('AmpDecode');
  });

  it('rejects too many keys', () => {
    const box = Object.fromEntries(Array.from({ length: 5 }, (_, i) => [`k${i}`, 'v']));
    expect(new AmpDecoder({ maxKeys: 5 }).push(encodeBox(box))).toHaveLength(1);
    const err = decodeError(() => new AmpDecoder({ maxKeys: 4 }).push(encodeBox(box)));
    expect(err.code).toBe('AmpDecode');
    expect(err.message).toContain('too many keys');
  });

  it('rejects a duplicate key', () => {
    const bytes = Buffer.concat([encodeBox({ a: '1' }).subarray(0, -2), encodeBox({ a: '2' })]);
    const err = decodeError(() => new AmpDecoder().push(bytes));
    expect(err.code).toBe('AmpDecode');
    expect(err.message).toContain('duplicate key "a"');
  });

  it('rejects a key that is not UTF-8', () => {
    const bytes = Buffer.concat([keyLen(1), Buffer.from([0xff]), keyLen(0), keyLen(0)]);
    expect(decodeError(() => new AmpDecoder().push(bytes)).code).toBe('AmpDecode');
  });

  it('stays failed after an error, even for valid input', () => {
    const decoder = new AmpDecoder();
    expect(() => decoder.push(keyLen(300))).toThrow(VertexError);
    expect(decoder.failed).toBe(true);
    const err = decodeError(() => decoder.push(encodeBox({ a: 'b' })));
    expect(err.code).toBe('AmpDecode');
    expect(err.message).toContain('already failed');
  });

  it('decodes an empty box and empty values', () => {
    const boxes = new AmpDecoder().push(Buffer.concat([hex('0000'), encodeBox({ a: '' })]));
    expect(boxes.map(entries)).toEqual([[], [['a', '']]]);
  });

  it('keeps a leading byte-order mark in a key', () => {
    const [box] = new AmpDecoder().push(encodeBox({ '\ufeffk': 'v' }));
    expect(Array.from(box!.keys())).toEqual(['\ufeffk']);
  });

  it('reports a partial box as not idle', () => {
    const decoder = new AmpDecoder();
    decoder.push(encodeBox({ a: 'b' }).subarray(0, 3));
    expect(decoder.idle).toBe(false);
  });

  it('hands out values that do not alias the pushed chunk', () => {
    const bytes = encodeBox({ a: 'hello' });
    const [box] = new AmpDecoder().push(bytes);
    bytes.fill(0);
    expect(box!.get('a')!.toString()).toBe('hello');
  });

  it('turns keys into strings without touching prototypes', () => {
    const [box] = new AmpDecoder().push(encodeBox({ ['__proto__']: 'x', a: 'y' }));
    const strings = boxToStrings(box!);
    expect(Object.keys(strings)).toEqual(['__proto__', 'a']);
    expect(Object.getPrototypeOf(strings)).toBe(Object.prototype);
  });

  it('takes an undefined limit as the default, and refuses nonsense limits', () => {
    expect(new AmpDecoder({ maxBoxBytes: undefined, maxKeys: undefined }).limits).toEqual({
      maxBoxBytes: DEFAULT_MAX_BOX_BYTES,
      maxKeys: DEFAULT_MAX_KEYS,
    });
    expect(() => new AmpDecoder({ maxBoxBytes: 1 })).toThrow(VertexError);
    expect(() => new AmpDecoder({ maxKeys: -1 })).toThrow(VertexError);
  });

  it('exposes sane defaults', () => {
    expect(DEFAULT_MAX_BOX_BYTES).toBeGreaterThanOrEqual(AMP_MAX_VALUE_LENGTH + 300);
    expect(DEFAULT_MAX_KEYS).toBeGreaterThan(6);
  });
});

describe('amp codec: properties', () => {
  // Mostly ASCII like real keys, sometimes any code point (keys are UTF-8 on the wire).
  const key = fc
    .oneof(fc.string({ minLength: 1, maxLength: 40 }), fc.string({ unit: 'binary', minLength: 1, maxLength: 20 }))
    .filter((k) => Buffer.byteLength(k) <= AMP_MAX_KEY_LENGTH);
  const value = fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a));
  const box = fc.uniqueArray(fc.tuple(key, value), { selector: ([k]) => k, maxLength: 12 });

  it('round-trips any sequence of boxes under any chunking', () => {
    fc.assert(
      fc.property(fc.array(box, { maxLength: 5 }), fc.array(fc.nat(), { maxLength: 6 }), (boxes, cuts) => {
        const stream = Buffer.concat(boxes.map((b) => encodeBox(new Map(b))));
        const points = cuts.map((c) => (stream.length === 0 ? 0 : c % (stream.length + 1))).sort((a, b) => a - b);
        const decoded = decodeAll(stream, points);
        // Hex strings compare far faster in jest than Buffers do.
        const asHex = (pairs: Iterable<[string, Buffer]>): Array<[string, string]> => Array.from(pairs, ([k, v]) => [k, v.toString('hex')]);
        expect(decoded.map(asHex)).toEqual(boxes.map(asHex));
      }),
      { numRuns: 3000 },
    );
  });

  it('round-trips ListOf values', () => {
    fc.assert(
      fc.property(fc.array(value, { maxLength: 20 }), (items) => {
        const asHex = (list: Buffer[]): string[] => list.map((b) => b.toString('hex'));
        expect(asHex(decodeListOf(encodeListOf(items)))).toEqual(asHex(items));
      }),
      { numRuns: 2000 },
    );
  });

  it('random bytes only ever throw AmpDecode', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 8 }), (chunks) => {
        const decoder = new AmpDecoder({ maxBoxBytes: 512, maxKeys: 8 });
        for (const chunk of chunks) {
          try {
            decoder.push(Buffer.from(chunk));
          } catch (err) {
            if (!isVertexError(err, 'AmpDecode')) throw err;
          }
        }
      }),
      { numRuns: 5000 },
    );
  });

  it('random bytes with plausible framing only ever throw AmpDecode', () => {
    // Small length fields reach deeper states than uniform bytes do.
    const field = fc.oneof(
      fc.integer({ min: 0, max: 300 }).map((n) => Buffer.from([n >> 8, n & 0xff])),
      fc.uint8Array({ maxLength: 8 }).map((a) => Buffer.from(a)),
    );
    fc.assert(
      fc.property(fc.array(field, { maxLength: 30 }), (fields) => {
        const decoder = new AmpDecoder({ maxBoxBytes: 256, maxKeys: 4 });
        try {
          decoder.push(Buffer.concat(fields));
        } catch (err) {
          if (!isVertexError(err, 'AmpDecode')) throw err;
        }
      }),
      { numRuns: 5000 },
    );
  });
});
