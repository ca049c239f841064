import fc from 'fast-check';
import {
  DEFAULT_PORT_SERVICES,
  deviceFromHostname,
  formatAddress,
  formatDeviceAddress,
  formatHostTarget,
  formatServiceAddress,
  parseAddress,
  parseDevice,
  parseDeviceAddress,
  parseDomain,
  parseHostTarget,
  parseService,
  parseServiceAddress,
  parseUser,
  serviceForPort,
} from '../../../q2q/address';
import { VertexError } from '../../../q2q/errors';

function invalidName(fn: () => unknown): VertexError {
  try {
    fn();
  } catch (err) {
    if (err instanceof VertexError && err.code === 'InvalidName') return err;
    throw err;
  }
  throw new Error('expected InvalidName');
}

describe('parseUser', () => {
  it.each([
    ['alice', 'alice'],
    ['Bob', 'bob'],
    ['a', 'a'],
    ['7', '7'],
    ['a_b-c', 'a_b-c'],
    ['a'.repeat(63), 'a'.repeat(63)],
    ['ALICE99', 'alice99'],
  ])('accepts %j as %j', (input, expected) => {
    expect(parseUser(input)).toBe(expected);
  });

  it.each([
    ['', 'empty'],
    ['bob!', "'!' is not allowed"],
    ['bo b', 'U+0020 is not allowed'],
    ['a'.repeat(64), '64 characters'],
    ['-bob', 'start and end'],
    ['bob-', 'start and end'],
    ['_bob', 'start and end'],
    ['bob_', 'start and end'],
    ['bob.smith', "'.' is not allowed"],
    ['bob@x', "'@' is not allowed"],
    ['b\u00f6b', 'U+00F6 is not allowed'],
    ['bob+laptop', "'+' is not allowed"],
    // '--' separates user and device in DNS-safe names (bob--laptop.b.test.q2q).
    ['bob--smith', "'--' is reserved"],
    ['a---b', "'--' is reserved"],
    // The Kelvin sign lower-cases to 'k' under Unicode rules; it must not pass as "kelvin".
    ['\u212Aelvin', 'U+212A is not allowed'],
  ])('rejects %j (%s)', (input, reason) => {
    const err = invalidName(() => parseUser(input));
    expect(err.message).toContain('invalid user');
    expect(err.message).toContain(reason);
    expect(err.message).toContain("use letters, digits, '-' and '_'");
  });

  it("accepts '--' only for legacy accounts (remove-user), never '+'", () => {
    expect(parseUser('bob--smith', { legacy: true })).toBe('bob--smith');
    expect(parseAddress('bob--smith@b.test', { legacy: true })).toEqual({ user: 'bob--smith', domain: 'b.test' });
    expect(invalidName(() => parseUser('bob+smith', { legacy: true })).message).toContain("'+' is not allowed");
  });

  it('says what was wrong in the documented shape', () => {
    expect(invalidName(() => parseUser('bob!')).message).toBe(
      'invalid user "bob!": \'!\' is not allowed; use letters, digits, \'-\' and \'_\' (1-63 characters, starting and ending with a letter or digit)',
    );
  });
});

describe('devices', () => {
  it.each([
    ['laptop', 'laptop'],
    ['HomeServer', 'homeserver'],
    ['pi-4', 'pi-4'],
    ['7', '7'],
    ['a'.repeat(63), 'a'.repeat(63)],
  ])('parseDevice accepts %j as %j', (input, expected) => {
    expect(parseDevice(input)).toBe(expected);
  });

  it.each([
    ['', 'empty'],
    ['lap top', 'U+0020 is not allowed'],
    ['lap_top', "'_' is not allowed"],
    ['lap.top', "'.' is not allowed"],
    ['-laptop', 'start and end'],
    ['laptop-', 'start and end'],
    ['lap--top', "'--' is reserved"],
    ['a'.repeat(64), '64 characters'],
  ])('parseDevice rejects %j (%s)', (input, reason) => {
    const err = invalidName(() => parseDevice(input));
    expect(err.message).toContain('invalid device');
    expect(err.message).toContain(reason);
  });

  it.each([
    ['laptop', 'laptop'],
    ['Bobs-MacBook-Pro.local', 'bobs-macbook-pro'],
    ['build_host.example.com', 'build-host'],
    ['--weird__name--', 'weird-name'],
    ['a--b', 'a-b'],
    ['', 'device'],
    ['...', 'device'],
    ['\u00e9t\u00e9', 't'],
    ['\u00e9', 'device'],
    [`${'x'.repeat(62)}-y${'z'.repeat(10)}`, 'x'.repeat(62)],
  ])('deviceFromHostname(%j) is %j, always a valid device', (host, expected) => {
    expect(deviceFromHostname(host)).toBe(expected);
    expect(parseDevice(deviceFromHostname(host))).toBe(expected);
  });

  it('any host name gives a valid device name', () => {
    fc.assert(fc.property(fc.string({ maxLength: 100 }), (host) => {
      expect(parseDevice(deviceFromHostname(host))).toBe(deviceFromHostname(host));
    }), { numRuns: 500 });
  });

  it.each([
    ['bob@b.test', { address: { user: 'bob', domain: 'b.test' } }, 'bob@b.test'],
    ['Bob+Laptop@B.test', { address: { user: 'bob', domain: 'b.test' }, device: 'laptop' }, 'bob+laptop@b.test'],
  ])('parseDeviceAddress(%j)', (input, expected, formatted) => {
    const parsed = parseDeviceAddress(input);
    expect(parsed).toEqual(expected);
    expect(formatDeviceAddress(parsed.address, parsed.device)).toBe(formatted);
  });

  it.each([
    ['bob+@b.test', 'invalid device'],
    ['+laptop@b.test', 'invalid user'],
    ['bob+lap+top@b.test', "'+' is not allowed"],
    ['bob+lap--top@b.test', "'--' is reserved"],
    ['bob+laptop', 'expected user@domain or user+device@domain'],
    ['bob+laptop@', 'invalid domain'],
  ])('parseDeviceAddress rejects %j (%s)', (input, reason) => {
    expect(invalidName(() => parseDeviceAddress(input)).message).toContain(reason);
  });

  it('an identity never names a device', () => {
    expect(invalidName(() => parseAddress('bob+laptop@b.test')).message).toContain("'+' is not allowed");
  });

  it('service addresses name a device with +, and format it back', () => {
    const parsed = parseServiceAddress('BOB+Laptop@b.test:SSH');
    expect(parsed).toEqual({ address: { user: 'bob', domain: 'b.test' }, device: 'laptop', service: 'ssh' });
    expect(formatServiceAddress(parsed)).toBe('bob+laptop@b.test:ssh');
    expect('device' in parseServiceAddress('bob@b.test:ssh')).toBe(false);
  });

  it('the literal and the DNS-safe forms round-trip', () => {
    const label = fc.stringMatching(/^[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?$/).filter((l) => !l.includes('--'));
    const user = fc.stringMatching(/^[a-z0-9](?:[a-z0-9_-]{0,8}[a-z0-9])?$/).filter((u) => !u.includes('--'));
    const domain = fc.tuple(label, fc.stringMatching(/^[a-z][a-z0-9]{0,5}$/)).map(([a, b]) => `${a}.${b}`);
    fc.assert(fc.property(user, domain, fc.option(label, { nil: undefined }), (u, d, device) => {
      const address = { user: u, domain: d };
      const literal = parseHostTarget(formatDeviceAddress(address, device), 22);
      const dnsSafe = parseHostTarget(formatHostTarget(address, device), 22);
      const expected = { address, ...(device !== undefined && { device }), service: 'ssh' };
      expect(literal).toEqual(expected);
      expect(dnsSafe).toEqual(expected);
      expect(formatServiceAddress(literal!)).toBe(`${formatDeviceAddress(address, device)}:ssh`);
    }), { numRuns: 500 });
  });
});

describe('parseDomain', () => {
  it.each([
    ['example.com', 'example.com'],
    ['Example.COM', 'example.com'],
    ['localhost', 'localhost'],
    ['a.test', 'a.test'],
    ['corp', 'corp'],
    ['xn--bcher-kva.example', 'xn--bcher-kva.example'],
    ['a-b.c-d.e', 'a-b.c-d.e'],
    ['1.2.3.example', '1.2.3.example'],
    [`${'a'.repeat(63)}.com`, `${'a'.repeat(63)}.com`],
    // 4 labels of 63 plus 3 dots: 255 is too long, so 3 of 63 + one of 61 = 253.
    [`${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`, `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`],
  ])('accepts %j', (input, expected) => {
    expect(parseDomain(input)).toBe(expected);
  });

  it.each([
    ['', 'empty'],
    ['example..com', 'empty label'],
    ['.example.com', 'empty label'],
    ['example.com.', 'empty label'],
    ['-example.com', "starts or ends with '-'"],
    ['example-.com', "starts or ends with '-'"],
    ['ex_ample.com', "'_' is not allowed"],
    ['exa mple.com', 'U+0020 is not allowed'],
    ['bücher.example', 'xn-- form'],
    [`${'a'.repeat(64)}.com`, '64 characters'],
    [`${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(62)}`, 'over 253'],
    ['1.2.3.4', 'IP address'],
    ['127.0.0.1', 'IP address'],
    ['::1', "':' is not allowed"],
    ['example.com:8788', "':' is not allowed"],
  ])('rejects %j (%s)', (input, reason) => {
    const err = invalidName(() => parseDomain(input));
    expect(err.message).toContain('invalid domain');
    expect(err.message).toContain(reason);
  });
});

describe('parseService', () => {
  it.each([
    ['ssh', 'ssh'],
    ['HTTP', 'http'],
    ['file-transfer', 'file-transfer'],
    ['x', 'x'],
    ['9p', '9p'],
    ['1', '1'],
    ['22', '22'],
    ['65535', '65535'],
    ['a'.repeat(63), 'a'.repeat(63)],
  ])('accepts %j', (input, expected) => {
    expect(parseService(input)).toBe(expected);
  });

  it.each([
    ['', 'empty'],
    ['0', 'out of range'],
    ['65536', 'out of range'],
    ['99999999999999999999', 'out of range'],
    ['022', 'leading zeros'],
    ['-ssh', "not '-'"],
    ['ss_h', "'_' is not allowed"],
    ['ssh:22', "':' is not allowed"],
    ['.ssh', "'.' is not allowed"],
    ['a'.repeat(64), '64 characters'],
  ])('rejects %j (%s)', (input, reason) => {
    const err = invalidName(() => parseService(input));
    expect(err.message).toContain('invalid service');
    expect(err.message).toContain(reason);
  });
});

describe('addresses', () => {
  it.each([
    ['alice@example.com', { user: 'alice', domain: 'example.com' }],
    ['Alice@Example.Com', { user: 'alice', domain: 'example.com' }],
    ['demo@localhost', { user: 'demo', domain: 'localhost' }],
  ])('parses %j', (input, expected) => {
    expect(parseAddress(input)).toEqual(expected);
    expect(formatAddress(parseAddress(input))).toBe(`${expected.user}@${expected.domain}`);
  });

  it.each([
    ['example.com', 'expected user@domain'],
    ['a@b@c', "more than one '@'"],
    ['@example.com', 'invalid user'],
    ['alice@', 'invalid domain'],
    ['alice@1.2.3.4', 'invalid domain'],
    ['alice!@example.com', 'invalid user'],
    [' alice@example.com', 'invalid user'],
  ])('rejects %j (%s)', (input, reason) => {
    expect(invalidName(() => parseAddress(input)).message).toContain(reason);
  });

  it.each([
    ['bob@example.com:ssh', 'bob', 'example.com', 'ssh'],
    ['BOB@EXAMPLE.COM:SSH', 'bob', 'example.com', 'ssh'],
    ['bob@b.test:8080', 'bob', 'b.test', '8080'],
  ])('parses the service address %j', (input, user, domain, service) => {
    const parsed = parseServiceAddress(input);
    expect(parsed).toEqual({ address: { user, domain }, service });
    expect(formatServiceAddress(parsed)).toBe(`${user}@${domain}:${service}`);
  });

  it.each([
    ['bob@example.com', 'expected user@domain:service'],
    ['bob:ssh', 'expected user@domain:service'],
    ['bob@example.com:', 'invalid service'],
    ['bob@example.com:ssh:22', "invalid service"],
    ['bob@exa_mple.com:ssh', 'invalid domain'],
    ['bob@example.com:0', 'invalid service'],
  ])('rejects the service address %j (%s)', (input, reason) => {
    expect(invalidName(() => parseServiceAddress(input)).message).toContain(reason);
  });

  it('parses what it formats, and formats canonically', () => {
    const label = fc.stringMatching(/^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?$/);
    const user = fc.stringMatching(/^[a-zA-Z0-9](?:[a-zA-Z0-9_-]{0,10}[a-zA-Z0-9])?$/).filter((u) => !u.includes('--'));
    const domain = fc
      .tuple(fc.array(label, { minLength: 0, maxLength: 3 }), fc.stringMatching(/^[a-zA-Z][a-zA-Z0-9]{0,5}$/))
      .map(([labels, tld]) => [...labels, tld].join('.'));
    fc.assert(
      fc.property(user, domain, (u, d) => {
        const parsed = parseAddress(`${u}@${d}`);
        expect(parsed).toEqual({ user: u.toLowerCase(), domain: d.toLowerCase() });
        expect(parseAddress(formatAddress(parsed))).toEqual(parsed);
      }),
      { numRuns: 500 },
    );
  });

  it('only ever throws InvalidName on arbitrary text', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 80 }), fc.integer({ min: -5, max: 70000 }), (text, port) => {
        for (const fn of [parseUser, parseDevice, parseDomain, parseService, parseAddress, parseDeviceAddress, parseServiceAddress, (t: string) => parseHostTarget(t, port, {})]) {
          try {
            fn(text);
          } catch (err) {
            if (!(err instanceof VertexError && err.code === 'InvalidName')) throw err;
          }
        }
      }),
      { numRuns: 1000 },
    );
  });
});

describe('parseHostTarget', () => {
  it.each([
    ['bob@example.com', 22, 'bob', 'example.com', 'ssh'],
    ['bob@example.com.', 80, 'bob', 'example.com', 'http'],
    ['BOB@Example.com', 443, 'bob', 'example.com', 'https'],
    ['bob.example.com.q2q', 22, 'bob', 'example.com', 'ssh'],
    ['Bob.Example.COM.Q2Q', 22, 'bob', 'example.com', 'ssh'],
    ['bob.example.com.q2q.', 8080, 'bob', 'example.com', '8080'],
    ['bob.b.test.q2q', 80, 'bob', 'b.test', 'http'],
    ['demo.localhost.q2q', 1, 'demo', 'localhost', '1'],
    ['a_b.example.com.q2q', 65535, 'a_b', 'example.com', '65535'],
    ['a-b.example.com.q2q', 22, 'a-b', 'example.com', 'ssh'],
  ])('reads %j port %d', (host, port, user, domain, service) => {
    expect(parseHostTarget(host, port, DEFAULT_PORT_SERVICES)).toEqual({ address: { user, domain }, service });
  });

  it.each([
    ['bob+laptop@example.com', 22, 'bob', 'laptop', 'example.com', 'ssh'],
    ['bob+laptop@example.com.', 80, 'bob', 'laptop', 'example.com', 'http'],
    ['bob--laptop.example.com.q2q', 22, 'bob', 'laptop', 'example.com', 'ssh'],
    ['Bob--HomeServer.B.Test.Q2Q.', 443, 'bob', 'homeserver', 'b.test', 'https'],
    ['a-b--pi-4.b.test.q2q', 8080, 'a-b', 'pi-4', 'b.test', '8080'],
  ])('reads the device form %j port %d', (host, port, user, device, domain, service) => {
    expect(parseHostTarget(host, port, DEFAULT_PORT_SERVICES)).toEqual({ address: { user, domain }, device, service });
  });

  it.each([['example.com'], ['localhost'], ['1.2.3.4'], ['::1'], ['[::1]'], ['q2q'], ['update.googleapis.com'], ['example.q2q.com']])(
    'returns null for %j, which is no q2q name',
    (host) => {
      expect(parseHostTarget(host, 443, DEFAULT_PORT_SERVICES)).toBeNull();
    },
  );

  it.each([
    ['bob.q2q', 'expected user.domain.q2q'],
    ['.q2q', 'expected user.domain.q2q'],
    ['-bob.example.com.q2q', 'invalid user'],
    ['bob.exa_mple.com.q2q', 'invalid domain'],
    ['bob..example.com.q2q', 'invalid domain'],
    ['bob@', 'invalid domain'],
    ['@example.com', 'invalid user'],
    ['bob@1.2.3.4', 'invalid domain'],
    ['a@b@c', "more than one '@'"],
    ['bob--.b.test.q2q', 'invalid device'],
    ['--laptop.b.test.q2q', 'invalid user'],
    ['bob---laptop.b.test.q2q', 'invalid device'],
    ['bob--lap--top.b.test.q2q', "'--' is reserved"],
    ['bob+@b.test', 'invalid device'],
    ['bob--laptop@b.test', "'--' is reserved"],
  ])('throws InvalidName for the malformed q2q name %j (%s)', (host, reason) => {
    expect(invalidName(() => parseHostTarget(host, 22, DEFAULT_PORT_SERVICES)).message).toContain(reason);
  });

  it('maps ports through the given table, and any other port to its number', () => {
    const ports = { 22: 'ssh', 2222: 'git', 8080: 'web' };
    expect(parseHostTarget('bob@b.test', 2222, ports)?.service).toBe('git');
    expect(parseHostTarget('bob@b.test', 8080, ports)?.service).toBe('web');
    expect(parseHostTarget('bob@b.test', 80, ports)?.service).toBe('80');
    expect(parseHostTarget('bob@b.test', 80)?.service).toBe('http');
  });

  it('rejects a bad port or a bad mapped service', () => {
    expect(invalidName(() => parseHostTarget('bob@b.test', 0, {})).message).toContain('invalid port 0');
    expect(invalidName(() => parseHostTarget('bob@b.test', 70000, {})).message).toContain('invalid port');
    expect(invalidName(() => parseHostTarget('bob@b.test', 22, { 22: 'not valid!' })).message).toContain('invalid service');
    expect(invalidName(() => serviceForPort(1.5)).code).toBe('InvalidName');
  });

  it('has the documented default port map', () => {
    expect(DEFAULT_PORT_SERVICES).toEqual({ 22: 'ssh', 80: 'http', 443: 'https' });
    expect(Object.isFrozen(DEFAULT_PORT_SERVICES)).toBe(true);
    expect(serviceForPort(443)).toBe('https');
    expect(serviceForPort(3000)).toBe('3000');
  });
});

describe('names of 64 KB (fuzz: control commands)', () => {
  // Regression: the first bad character was looked for before the length was checked, so a
  // 65,535-byte name in a control command cost the server a scan of every character
  // (60 ms of its event loop per request, measured). Now the length is refused first.
  const huge = `!${'a'.repeat(65_534)}`;
  it.each([
    ['user', () => parseUser(huge)],
    ['domain', () => parseDomain(huge)],
    ['service', () => parseService(huge)],
    ['device', () => parseDevice(huge)],
    ['address', () => parseAddress(`${huge}@example.com`)],
    ['address domain', () => parseAddress(`bob@${huge}`)],
  ])('a %s of 65,535 characters is refused for its length, not its characters', (_what, parse) => {
    const err = (() => {
      try {
        parse();
      } catch (e) {
        return e as VertexError;
      }
      throw new Error('expected InvalidName');
    })();
    expect(err.code).toBe('InvalidName');
    expect(err.message).toMatch(/is 65535 characters long/);
    expect(err.message).not.toMatch(/is not allowed/);
  });
});
