import fc from 'fast-check';
import { isVertexError } from '../../../../q2q/errors';
import {
  decodeGreeting,
  decodeMethodSelection,
  decodeReply,
  decodeRequest,
  decodeUserPass,
  decodeUserPassStatus,
  encodeGreeting,
  encodeMethodSelection,
  encodeReply,
  encodeRequest,
  encodeUserPass,
  encodeUserPassStatus,
  formatIpv6,
  parseIpv4,
  parseIpv6,
  SOCKS_REPLY,
  type Decoded,
  type SocksAddress,
  type SocksRequest,
} from '../../../../q2q/wire/socks5';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

interface Vector<T> {
  name: string;
  bytes: string;
  value: T;
  encode: (v: T) => Buffer;
  decode: (b: Uint8Array) => Decoded<T> | null;
}

function vector<T>(v: Vector<T>): Vector<unknown> {
  return v as Vector<unknown>;
}

function encodeDecodedRequest(v: SocksRequest): Buffer {
  const { address } = v;
  if (address.type === 'unsupported') throw new Error('test vector with an unsupported address');
  return encodeRequest({ command: v.command, address, port: v.port });
}

// Hand-written from RFC 1928 §3, §4, §6 and RFC 1929 §2, not produced by the encoder.
const VECTORS: Vector<unknown>[] = [
  vector({ name: 'greeting, no auth (Chromium, curl)', bytes: '05 01 00', value: { methods: [0] }, encode: encodeGreeting, decode: decodeGreeting }),
  vector({ name: 'greeting, no auth and user/pass', bytes: '05 02 00 02', value: { methods: [0, 2] }, encode: encodeGreeting, decode: decodeGreeting }),
  vector({ name: 'method selection: none', bytes: '05 00', value: 0, encode: encodeMethodSelection, decode: decodeMethodSelection }),
  vector({ name: 'method selection: user/pass', bytes: '05 02', value: 2, encode: encodeMethodSelection, decode: decodeMethodSelection }),
  vector({ name: 'method selection: no acceptable', bytes: '05 ff', value: 0xff, encode: encodeMethodSelection, decode: decodeMethodSelection }),
  vector({
    name: 'user/pass request',
    bytes: '01 05 616c696365 06 736563726574',
    value: { username: 'alice', password: 'secret' },
    encode: encodeUserPass,
    decode: decodeUserPass,
  }),
  vector({ name: 'user/pass status ok', bytes: '01 00', value: 0, encode: encodeUserPassStatus, decode: decodeUserPassStatus }),
  vector({ name: 'user/pass status failure', bytes: '01 01', value: 1, encode: encodeUserPassStatus, decode: decodeUserPassStatus }),
  vector({
    name: 'connect, ATYP 1',
    bytes: '05 01 00 01 7f000001 0050',
    value: { command: 1, address: { type: 'ipv4', host: '127.0.0.1' }, port: 80 },
    encode: encodeDecodedRequest,
    decode: decodeRequest,
  }),
  vector({
    name: 'connect, ATYP 3 literal user@domain (ncat)',
    bytes: '05 01 00 03 0a 626f6240622e74657374 0007',
    value: { command: 1, address: { type: 'domain', host: 'bob@b.test' }, port: 7 },
    encode: encodeDecodedRequest,
    decode: decodeRequest,
  }),
  vector({
    name: 'connect, ATYP 3 DNS-safe name (curl)',
    bytes: '05 01 00 03 0e 626f622e622e746573742e713271 0050',
    value: { command: 1, address: { type: 'domain', host: 'bob.b.test.q2q' }, port: 80 },
    encode: encodeDecodedRequest,
    decode: decodeRequest,
  }),
  vector({
    name: 'connect, ATYP 4',
    bytes: '05 01 00 04 00000000000000000000000000000001 01bb',
    value: { command: 1, address: { type: 'ipv6', host: '::1' }, port: 443 },
    encode: encodeDecodedRequest,
    decode: decodeRequest,
  }),
  vector({
    name: 'udp associate request',
    bytes: '05 03 00 01 00000000 0000',
    value: { command: 3, address: { type: 'ipv4', host: '0.0.0.0' }, port: 0 },
    encode: encodeDecodedRequest,
    decode: decodeRequest,
  }),
  vector({
    name: 'reply: succeeded, 0.0.0.0:0',
    bytes: '05 00 00 01 00000000 0000',
    value: { reply: 0, address: { type: 'ipv4', host: '0.0.0.0' }, port: 0 },
    encode: (v: { reply: number; address: SocksAddress; port: number }) => encodeReply(v.reply, v),
    decode: decodeReply,
  }),
  vector({
    name: 'reply: host unreachable, bound to 2001:db8::1:1080',
    bytes: '05 04 00 04 20010db8000000000000000000000001 0438',
    value: { reply: 4, address: { type: 'ipv6', host: '2001:db8::1' }, port: 1080 },
    encode: (v: { reply: number; address: SocksAddress; port: number }) => encodeReply(v.reply, v),
    decode: decodeReply,
  }),
  vector({
    name: 'reply: not allowed, bound to a name',
    bytes: '05 02 00 03 09 6c6f63616c686f7374 1f90',
    value: { reply: 2, address: { type: 'domain', host: 'localhost' }, port: 8080 },
    encode: (v: { reply: number; address: SocksAddress; port: number }) => encodeReply(v.reply, v),
    decode: decodeReply,
  }),
];

function expectDecodeError(fn: () => unknown): void {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(isVertexError(thrown, 'Socks5Decode')).toBe(true);
}

describe('socks5 codec golden vectors', () => {
  describe.each(VECTORS.map((v) => [v.name, v] as const))('%s', (_name, v) => {
    const bytes = hex(v.bytes);

    it('encodes to the vector', () => {
      expect(v.encode(v.value).toString('hex')).toBe(bytes.toString('hex'));
    });

    it('decodes from the vector, consuming exactly its length', () => {
      expect(v.decode(bytes)).toEqual({ value: v.value, length: bytes.length });
      const withTrailer = Buffer.concat([bytes, hex('deadbeef')]);
      expect(v.decode(withTrailer)).toEqual({ value: v.value, length: bytes.length });
    });

    it('asks for more at every split point', () => {
      for (let cut = 0; cut < bytes.length; cut += 1) {
        expect(v.decode(bytes.subarray(0, cut))).toBeNull();
      }
    });
  });
});

describe('socks5 codec rejects malformed messages', () => {
  it.each([
    ['greeting from an HTTP client', decodeGreeting, '474554202f'],
    ['greeting with SOCKS4 version', decodeGreeting, '04 01 0050 7f000001 00'],
    ['greeting offering no methods', decodeGreeting, '05 00'],
    ['user/pass with the SOCKS version byte', decodeUserPass, '05 01 61 01 62'],
    ['user/pass username not utf-8', decodeUserPass, '01 01 ff 01 62'],
    ['user/pass password not utf-8', decodeUserPass, '01 01 61 02 c328'],
    ['request with version 4', decodeRequest, '04 01 00 01 7f000001 0050'],
    ['request with an empty domain', decodeRequest, '05 01 00 03 00 0050'],
    ['request with a domain that is not utf-8', decodeRequest, '05 01 00 03 02 c328 0050'],
    ['reply with version 1', decodeReply, '01 00 00 01 00000000 0000'],
    ['reply with unknown address type', decodeReply, '05 00 00 09 00000000 0000'],
    ['method selection with version 4', decodeMethodSelection, '04 00'],
    ['user/pass status with version 5', decodeUserPassStatus, '05 00'],
  ] as const)('%s', (_name, decode, bytes) => {
    expectDecodeError(() => decode(hex(bytes)));
  });

  it('rejects a wrong version from the first byte, without waiting for more', () => {
    expectDecodeError(() => decodeGreeting(hex('47')));
    expectDecodeError(() => decodeRequest(hex('04')));
    expectDecodeError(() => decodeUserPass(hex('05')));
  });

  it('returns an unknown ATYP as unsupported after the 4 header bytes, so the caller can reply 0x08', () => {
    expect(decodeRequest(hex('05 01 00 05'))).toEqual({
      value: { command: 1, address: { type: 'unsupported', atyp: 5 }, port: 0 },
      length: 4,
    });
  });

  it('accepts zero-length RFC 1929 fields so that the credential check can refuse them', () => {
    expect(decodeUserPass(hex('01 00 00'))).toEqual({ value: { username: '', password: '' }, length: 3 });
  });
});

describe('socks5 text keeps a leading byte-order mark (fuzz)', () => {
  // Regression: the UTF-8 decoder dropped a leading U+FEFF, so "\uFEFFbob@b.test" read as
  // bob@b.test and a password with a BOM in front as the password without it.
  it('in a username and a password', () => {
    expect(decodeUserPass(hex('01 00 03 efbbbf'))?.value.password).toBe('\uFEFF');
    expect(decodeUserPass(hex('01 06 efbbbf 757365 00'))?.value.username).toBe('\uFEFFuse');
  });

  it('in a domain name, which encodes back to the same bytes', () => {
    const bytes = Buffer.concat([hex('05 01 00 03'), Buffer.from([13]), hex('efbbbf'), Buffer.from('bob@b.test'), hex('0016')]);
    const request = decodeRequest(bytes);
    expect(request?.value.address).toEqual({ type: 'domain', host: '\uFEFFbob@b.test' });
    expect(encodeRequest(request!.value as Parameters<typeof encodeRequest>[0]).equals(bytes)).toBe(true);
  });
});

describe('socks5 encoders refuse values that cannot be encoded', () => {
  it.each([
    ['no methods', () => encodeGreeting({ methods: [] })],
    ['256 methods', () => encodeGreeting({ methods: new Array<number>(256).fill(0) })],
    ['a method that is not a byte', () => encodeGreeting({ methods: [256] })],
    ['a 256-byte username', () => encodeUserPass({ username: 'u'.repeat(256), password: 'p' })],
    ['an empty domain', () => encodeRequest({ command: 1, address: { type: 'domain', host: '' }, port: 1 })],
    ['a 256-byte domain', () => encodeRequest({ command: 1, address: { type: 'domain', host: 'a'.repeat(256) }, port: 1 })],
    ['port 65536', () => encodeRequest({ command: 1, address: { type: 'ipv4', host: '1.2.3.4' }, port: 65536 })],
    ['a bad IPv4', () => encodeRequest({ command: 1, address: { type: 'ipv4', host: '1.2.3.256' }, port: 1 })],
    ['a bad IPv6', () => encodeRequest({ command: 1, address: { type: 'ipv6', host: '1::2::3' }, port: 1 })],
    ['a reply code of 300', () => encodeReply(300)],
  ])('%s', (_name, fn) => {
    expect(fn).toThrow(RangeError);
  });
});

describe('socks5 IP text forms', () => {
  it.each([
    ['::1', '00000000000000000000000000000001'],
    ['::', '00000000000000000000000000000000'],
    ['2001:db8::1', '20010db8000000000000000000000001'],
    ['fe80::1:0:0:1', 'fe800000000000000001000000000001'],
    ['1:0:0:2::3', '00010000000000020000000000000003'],
    ['1::2:0:0:3:4', '00010000000000020000000000030004'],
    ['1:0:2:0:3:0:4:0', '00010000000200000003000000040000'],
    ['::ffff:7f00:1', '00000000000000000000ffff7f000001'],
  ])('%s <-> %s', (text, bytes) => {
    expect(formatIpv6(hex(bytes))).toBe(text);
    expect(parseIpv6(text).toString('hex')).toBe(bytes);
  });

  it('parses an embedded IPv4 tail', () => {
    expect(parseIpv6('::ffff:127.0.0.1').toString('hex')).toBe('00000000000000000000ffff7f000001');
  });

  it('formats IPv6 like the WHATWG URL serializer (RFC 5952 compression)', () => {
    fc.assert(
      fc.property(fc.ipV6(), (text) => {
        const reference = new URL(`http://[${text}]/`).hostname.slice(1, -1);
        expect(formatIpv6(parseIpv6(text))).toBe(reference);
      }),
    );
  });

  it('round-trips IPv4', () => {
    fc.assert(
      fc.property(fc.ipV4(), (text) => {
        expect(Array.from(parseIpv4(text)).join('.')).toBe(text);
      }),
    );
  });
});

describe('socks5 codec properties', () => {
  const decoders = [decodeGreeting, decodeMethodSelection, decodeUserPass, decodeUserPassStatus, decodeRequest, decodeReply];

  it('decoders return null, a value within the input, or throw VertexError(Socks5Decode), on any bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), fc.constantFrom(...decoders), (bytes, decode) => {
        try {
          const out = decode(bytes);
          if (out !== null) {
            expect(out.length).toBeGreaterThan(0);
            expect(out.length).toBeLessThanOrEqual(bytes.length);
          }
        } catch (err) {
          expect(isVertexError(err, 'Socks5Decode')).toBe(true);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('decoders only throw VertexError(Socks5Decode) on inputs that start like a valid message', () => {
    // Random bytes mostly fail on the version byte; this reaches the length and address parsing.
    const prefixed = fc.tuple(fc.constantFrom(0x01, 0x05), fc.uint8Array({ maxLength: 300 })).map(([v, rest]) => Uint8Array.from([v, ...rest]));
    fc.assert(
      fc.property(prefixed, fc.constantFrom(...decoders), (bytes, decode) => {
        try {
          decode(bytes);
        } catch (err) {
          expect(isVertexError(err, 'Socks5Decode')).toBe(true);
        }
      }),
      { numRuns: 3000 },
    );
  });

  const address: fc.Arbitrary<SocksAddress> = fc.oneof(
    fc.ipV4().map((host) => ({ type: 'ipv4' as const, host })),
    fc.ipV6().map((host) => ({ type: 'ipv6' as const, host: formatIpv6(parseIpv6(host)) })),
    fc
      .string({ unit: 'binary', minLength: 1, maxLength: 80 })
      .filter((s) => Buffer.byteLength(s) <= 255)
      .map((host) => ({ type: 'domain' as const, host })),
  );

  it('requests round-trip through encode and decode', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 255 }), address, fc.integer({ min: 0, max: 65535 }), (command, addr, port) => {
        const bytes = encodeRequest({ command, address: addr, port });
        expect(decodeRequest(bytes)).toEqual({ value: { command, address: addr, port }, length: bytes.length });
      }),
    );
  });

  it('replies round-trip through encode and decode', () => {
    fc.assert(
      fc.property(fc.constantFrom(...Object.values(SOCKS_REPLY)), address, fc.integer({ min: 0, max: 65535 }), (reply, addr, port) => {
        const bytes = encodeReply(reply, { address: addr, port });
        expect(decodeReply(bytes)).toEqual({ value: { reply, address: addr, port }, length: bytes.length });
      }),
    );
  });

  it('user/pass requests round-trip through encode and decode', () => {
    const field = fc.string({ unit: 'binary', maxLength: 100 }).filter((s) => Buffer.byteLength(s) <= 255);
    fc.assert(
      fc.property(field, field, (username, password) => {
        const bytes = encodeUserPass({ username, password });
        expect(decodeUserPass(bytes)).toEqual({ value: { username, password }, length: bytes.length });
      }),
    );
  });
});
