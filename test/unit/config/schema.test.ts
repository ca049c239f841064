import fc from 'fast-check';
import { deepFreeze, formatHostPort, parseDuration, parseHostPort } from '../../../config/schema';
import { isVertexError } from '../../../q2q/errors';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return isVertexError(err) ? err.code : 'not a VertexError';
  }
  return undefined;
}

describe('parseHostPort', () => {
  it.each([
    ['127.0.0.1:1080', '127.0.0.1', 1080],
    ['0.0.0.0:0', '0.0.0.0', 0],
    ['[::1]:8788', '::1', 8788],
    ['[2001:db8::5]:65535', '2001:db8::5', 65535],
    ['Server.Example.COM:443', 'server.example.com', 443],
    ['localhost:22', 'localhost', 22],
  ])('%s', (text, host, port) => {
    expect(parseHostPort(text)).toEqual({ host, port });
  });

  it.each([
    ['1080', 'missing ":PORT"'],
    ['127.0.0.1:', 'port "" is not a number'],
    ['127.0.0.1:65536', 'outside 0-65535'],
    ['127.0.0.1:-1', 'is not a number'],
    ['::1:80', 'needs brackets'],
    ['[::1]', 'expected [IPV6]:PORT'],
    ['[127.0.0.1]:80', 'not a valid IPv6 address'],
    ['256.1.1.1:80', 'not a valid IPv4 address'],
    [':80', 'missing host'],
    ['bad host:80', 'not an IP address or host name'],
    ['-x.example:80', 'not an IP address or host name'],
  ])('%s is refused (%s)', (text, why) => {
    expect(() => parseHostPort(text)).toThrow(why);
    expect(codeOf(() => parseHostPort(text))).toBe('Config');
  });

  it('takes the error code from the caller (a flag is a Usage error)', () => {
    expect(codeOf(() => parseHostPort('nope', { code: 'Usage' }))).toBe('Usage');
  });

  it('accepts a bare port only with a default host', () => {
    expect(parseHostPort('2222', { defaultHost: '127.0.0.1' })).toEqual({ host: '127.0.0.1', port: 2222 });
    expect(() => parseHostPort('2222')).toThrow('missing ":PORT"');
  });

  it('refuses port 0 when a connectable port is needed', () => {
    expect(() => parseHostPort('127.0.0.1:0', { minPort: 1 })).toThrow('outside 1-65535');
  });

  it('formatHostPort inverts parseHostPort for IPv4, IPv6 and names', () => {
    fc.assert(
      fc.property(
        fc.oneof(fc.ipV4(), fc.ipV6(), fc.domain()),
        fc.integer({ min: 0, max: 65535 }),
        (host, port) => {
          const text = formatHostPort({ host, port });
          const parsed = parseHostPort(text);
          expect(parsed.port).toBe(port);
          expect(formatHostPort(parseHostPort(formatHostPort(parsed)))).toBe(formatHostPort(parsed));
        },
      ),
    );
  });
});

describe('parseDuration', () => {
  it.each([
    ['250ms', 250],
    ['10s', 10_000],
    ['90m', 5_400_000],
    ['12h', 43_200_000],
    ['30d', 2_592_000_000],
    ['2w', 1_209_600_000],
    ['1h30m', 5_400_000],
    ['1d1h1m1s1ms', 90_061_001],
    ['0s', 0],
  ])('%s = %d ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each(['', '30', 'd', '1.5h', '-1s', '10 s', '1y', '30D', '1h 30m'])('%j is refused', (text) => {
    expect(codeOf(() => parseDuration(text))).toBe('Config');
  });

  it('refuses a duration past the safe integer range', () => {
    expect(() => parseDuration('99999999999999999999w')).toThrow('too long');
  });
});

describe('deepFreeze', () => {
  it('freezes nested objects and arrays', () => {
    const value = deepFreeze({ a: { b: [1, { c: 2 }] } });
    expect(Object.isFrozen(value.a.b)).toBe(true);
    expect(Object.isFrozen(value.a.b[1])).toBe(true);
  });
});
