import {
  buildAgentConfig,
  buildServerConfig,
  loadAgentConfig,
  loadConfig,
  loadServerConfig,
  MAX_CONFIG_BYTES,
  resolveControlSocket,
} from '../../../config/load';
import { isVertexError, type VertexError } from '../../../q2q/errors';

const AGENT_FILE = '/etc/vertex/agent.yaml';
const SERVER_FILE = '/etc/vertex/server.yaml';

/** Runs `fn`, expects a Config error, and returns it. */
function configError(fn: () => unknown): VertexError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  if (!isVertexError(caught, 'Config')) throw new Error(`expected a Config error, got ${String(caught)}`);
  return caught;
}

/** The message lines of a Config error. */
function lines(err: VertexError): string[] {
  return err.message.split('\n');
}

const lf = (...rows: string[]) => `${rows.join('\n')}\n`;

describe('loadAgentConfig: errors name the file, the line and the key path', () => {
  it('an unknown top-level key, with a suggestion and the allowed keys', () => {
    const err = configError(() => loadAgentConfig(lf('version: 1', 'identity: alice@example.com', 'sokcs:', '  listen: 127.0.0.1:1080'), AGENT_FILE));
    expect(lines(err)).toHaveLength(1);
    expect(err.message).toMatch(/^\/etc\/vertex\/agent\.yaml:3: sokcs: unknown key \(did you mean "socks"\?\)/);
    expect(err.message).toContain('allowed keys here: version, identity, device, socks');
  });

  it('an unknown nested key points at the key, not its parent', () => {
    const err = configError(() => loadAgentConfig(lf('version: 1', 'socks:', '  listen: 127.0.0.1:1080', '  passthru: true'), AGENT_FILE));
    expect(err.message).toMatch(/^\/etc\/vertex\/agent\.yaml:4: socks\.passthru: unknown key/);
  });

  it('an unknown key inside a list item of flow mappings', () => {
    const err = configError(() =>
      loadAgentConfig(
        lf('version: 1', 'forwards:', '  - { listen: 2222, to: bob@example.com:ssh }', '  - { listen: 2223, to: bob@example.com:http, via: relay }'),
        AGENT_FILE,
      ),
    );
    expect(err.message).toMatch(/^\/etc\/vertex\/agent\.yaml:4: forwards\[1\]\.via: unknown key/);
  });

  it('a wrong type names what was expected and what was found', () => {
    const err = configError(() => loadAgentConfig(lf('version: 1', '', 'socks:', '  passthrough: "yes"'), AGENT_FILE));
    expect(err.message).toBe(`${AGENT_FILE}:4: socks.passthrough: expected true or false, got "yes"`);
  });

  it('a wrong type for a whole section', () => {
    const err = configError(() => loadAgentConfig(lf('version: 1', 'expose: ssh'), AGENT_FILE));
    expect(err.message).toBe(`${AGENT_FILE}:2: expose: expected a list, got "ssh"`);
  });

  it('a bad HOST:PORT says why', () => {
    const err = configError(() => loadAgentConfig(lf('version: 1', 'socks:', '  listen: 127.0.0.1:99999'), AGENT_FILE));
    expect(err.message).toMatch(/^\/etc\/vertex\/agent\.yaml:3: socks\.listen: expected HOST:PORT .*port 99999 is outside 0-65535/);
  });

  it('an IPv6 address without brackets is refused with a hint', () => {
    const err = configError(() => loadAgentConfig(lf('version: 1', 'peer_listen: "::1:4000"'), AGENT_FILE));
    expect(err.message).toContain(`${AGENT_FILE}:2: peer_listen:`);
    expect(err.message).toContain('needs brackets');
  });

  it('a missing required key points at its parent mapping', () => {
    const err = configError(() =>
      loadAgentConfig(lf('version: 1', 'expose:', '  - service: ssh', '    allow: ["*"]'), AGENT_FILE),
    );
    expect(err.message).toBe(`${AGENT_FILE}:3: expose[0].target: missing; expected HOST:PORT such as 203.0.113.5:8788`);
  });

  it('socks.auth as a mapping is checked as a mapping, not as "none"', () => {
    const err = configError(() => loadAgentConfig(lf('version: 1', 'socks:', '  auth:', '    username: alice'), AGENT_FILE));
    expect(err.message).toBe(`${AGENT_FILE}:4: socks.auth.password: missing; expected a string`);
  });

  it('socks.auth as another word lists both forms', () => {
    const err = configError(() => loadAgentConfig(lf('version: 1', 'socks: { auth: basic }'), AGENT_FILE));
    expect(err.message).toBe(`${AGENT_FILE}:2: socks.auth: expected none or { username, password }, got "basic"`);
  });

  it('bad names: a service, a domain key, a port key, a route, a duplicate', () => {
    const err = configError(() =>
      loadAgentConfig(
        lf(
          'version: 1',
          'expose:',
          '  - { service: "ssh!", target: 127.0.0.1:22 }',
          'domains:',
          '  "exa mple.com": { server: 127.0.0.1:8788 }',
          'ports: { 70000: big }',
          'routes: [tcp, udp]',
          'forwards:',
          '  - { listen: 2222, to: bob@example.com:ssh }',
          '  - { listen: 127.0.0.1:2222, to: bob@example.com:http }',
        ),
        AGENT_FILE,
      ),
    );
    expect(lines(err)).toEqual([
      expect.stringMatching(/^\/etc\/vertex\/agent\.yaml:3: expose\[0\]\.service: invalid service "ssh!": '!' is not allowed/),
      expect.stringMatching(/^\/etc\/vertex\/agent\.yaml:5: domains\["exa mple\.com"\]: invalid domain "exa mple\.com"/),
      `${AGENT_FILE}:6: ports.70000: port 70000 is outside 1-65535`,
      `${AGENT_FILE}:7: routes[1]: expected "tcp" | "ptcp" | "relay", got "udp"`,
      `${AGENT_FILE}:10: forwards[1]: duplicate forward listen address "127.0.0.1:2222"`,
    ]);
  });

  it('names follow q2q/address.ts: identity, forward target, allow patterns', () => {
    const err = configError(() =>
      loadAgentConfig(
        lf(
          'version: 1',
          'identity: bob',
          'forwards: [{ listen: 2222, to: "bob@example.com:022" }]',
          'expose: [{ service: ssh, target: 127.0.0.1:22, allow: ["*@*.example.com", "carol", "-x@a.test"] }]',
        ),
        AGENT_FILE,
      ),
    );
    expect(lines(err)).toEqual([
      `${AGENT_FILE}:2: identity: invalid address "bob": expected user@domain`,
      expect.stringMatching(/^\/etc\/vertex\/agent\.yaml:3: forwards\[0\]\.to: invalid service "022": a port number has no leading zeros/),
      expect.stringMatching(/^\/etc\/vertex\/agent\.yaml:4: expose\[0\]\.allow\[1\]: invalid allow pattern "carol"/),
      expect.stringMatching(/^\/etc\/vertex\/agent\.yaml:4: expose\[0\]\.allow\[2\]: invalid user "-x"/),
    ]);
  });

  it('reports every problem, one line each, in line order', () => {
    const err = configError(() =>
      loadAgentConfig(lf('version: 1', 'relay_delay_ms: -5', 'log: { level: loud }', 'bogus: 1'), AGENT_FILE),
    );
    expect(lines(err)).toEqual([
      `${AGENT_FILE}:2: relay_delay_ms: expected at least 0, got -5`,
      `${AGENT_FILE}:3: log.level: expected "trace" | "debug" | "info" | "warn" | "error" | "fatal", got "loud"`,
      expect.stringMatching(/^\/etc\/vertex\/agent\.yaml:4: bogus: unknown key; allowed keys here: /),
    ]);
  });

  it('a key reached through a YAML alias is still located', () => {
    const err = configError(() =>
      loadAgentConfig(lf('version: 1', 'socks: &s', '  listen: nope', 'control:', '  socket: relative/path'), AGENT_FILE),
    );
    expect(lines(err)).toEqual([
      expect.stringMatching(/^\/etc\/vertex\/agent\.yaml:3: socks\.listen: /),
      `${AGENT_FILE}:5: control.socket: expected auto or an absolute path, got "relative/path"`,
    ]);
  });
});

describe('bad YAML and bad versions', () => {
  it('a YAML syntax error names the file and line', () => {
    const err = configError(() => loadAgentConfig(lf('version: 1', 'socks:', '  listen: "127.0.0.1:1080', 'log: {}'), AGENT_FILE));
    expect(err.message).toMatch(/^\/etc\/vertex\/agent\.yaml:\d+: invalid YAML: /);
    expect(err.message).not.toContain('\n');
  });

  it('a flow mapping left open names its line', () => {
    const err = configError(() => loadServerConfig(lf('version: 1', 'domains: [a.test]', 'relay: { enabled: true', 'log: { level: info }'), SERVER_FILE));
    expect(err.message).toMatch(/^\/etc\/vertex\/server\.yaml:[34]: invalid YAML: /);
  });

  it('a duplicate key is an error at its second occurrence', () => {
    const err = configError(() => loadServerConfig(lf('version: 1', 'domains: [a.test]', 'listen: 0.0.0.0:1', 'listen: 0.0.0.0:2'), SERVER_FILE));
    expect(err.message).toBe(`${SERVER_FILE}:4: invalid YAML: Map keys must be unique`);
  });

  it('an unknown tag is not silently turned into a string', () => {
    const err = configError(() => loadServerConfig(lf('version: 1', 'domains: [a.test]', 'data_dir: !env DATA'), SERVER_FILE));
    expect(err.message).toMatch(/^\/etc\/vertex\/server\.yaml:3: invalid YAML: Unresolved tag: !env/);
  });

  it('a missing version', () => {
    const err = configError(() => loadServerConfig(lf('# my server', '', 'domains: [a.test]'), SERVER_FILE));
    expect(err.message).toBe(`${SERVER_FILE}:3: version: missing; every config file starts with "version: 1"`);
  });

  it('version 2 is refused before anything else is checked', () => {
    const err = configError(() => loadAgentConfig(lf('# new', 'version: 2', 'wholly: new keys'), AGENT_FILE));
    expect(err.message).toBe(`${AGENT_FILE}:2: version: unsupported version 2; this vertex reads version 1`);
  });

  it('a version that is not a number', () => {
    const err = configError(() => loadAgentConfig(lf('version: "1"'), AGENT_FILE));
    expect(err.message).toBe(`${AGENT_FILE}:1: version: expected 1, got "1"`);
  });

  it('an empty file', () => {
    const err = configError(() => loadAgentConfig('# nothing yet\n', AGENT_FILE));
    expect(err.message).toMatch(/^\/etc\/vertex\/agent\.yaml:1: version: missing; the file is empty/);
  });

  it('a file that is a list', () => {
    const err = configError(() => loadAgentConfig(lf('', '- version: 1'), AGENT_FILE));
    expect(err.message).toBe(`${AGENT_FILE}:2: (top level): expected a mapping of keys to values, got a list`);
  });

  it('a file over the size limit is refused unparsed', () => {
    const err = configError(() => loadAgentConfig(`version: 1\n#${'x'.repeat(MAX_CONFIG_BYTES)}\n`, AGENT_FILE));
    expect(err.message).toContain(`${AGENT_FILE}:1:`);
    expect(err.message).toContain('larger than');
  });

  it('an alias bomb is refused', () => {
    const rows = ['version: 1', 'a0: &a0 [x, x, x, x, x, x, x, x, x, x]'];
    for (let i = 1; i < 10; i++) rows.push(`a${i}: &a${i} [${Array(10).fill(`*a${i - 1}`).join(', ')}]`);
    const err = configError(() => loadAgentConfig(lf(...rows), AGENT_FILE));
    expect(err.message).toMatch(/^\/etc\/vertex\/agent\.yaml:1: invalid YAML: /);
  });
});

describe('loadServerConfig', () => {
  it('a minimal file gets every default', () => {
    const config = loadServerConfig(lf('version: 1', 'domains: [Example.COM]'), SERVER_FILE);
    expect(config).toEqual({
      version: 1,
      domains: ['example.com'],
      listen: { host: '0.0.0.0', port: 8788 },
      dataDir: '/var/lib/vertex',
      registration: 'invite',
      certificateLifetimeMs: 30 * 86_400_000,
      relay: { enabled: true, maxStreams: 10_000, perUserRate: 0 },
      limits: {
        maxConnections: 10_000, handshakeTimeoutMs: 10_000, maxBoxBytes: 262_144,
        unauthenticated: { perAddress: 256, total: 2000, idleMs: 10_000, lifetimeMs: 60_000, handshakes: 128, newcomerIntervalMs: 10_000, knownAddresses: 10_000, knownForMs: 86_400_000 },
        login: { perAccountAddress: 5, perAddress: 20, perAccount: 100, windowMs: 900_000, registrationsPerAddress: 20, inviteGuessesPerAddress: 5, waitingPerAccount: 16 },
      },
      store: 'sqlite',
      federation: { servers: {} },
      log: { level: 'info' },
    });
  });

  it('federation: allow and servers, case-folded and checked', () => {
    const config = loadServerConfig(lf('version: 1', 'domains: [a.test]', 'federation:', '  allow: [B.test]', '  servers:', '    B.Test: 127.0.0.1:8790'), SERVER_FILE);
    expect(config.federation).toEqual({ allow: ['b.test'], servers: { 'b.test': { host: '127.0.0.1', port: 8790 } } });
    expect(configError(() => loadServerConfig(lf('version: 1', 'domains: [a.test]', 'federation:', '  allow: [../x]'), SERVER_FILE)).message).toMatch(
      /^\/etc\/vertex\/server\.yaml:4: federation\.allow\[0\]: invalid domain "\.\.\/x"/,
    );
    expect(configError(() => loadServerConfig(lf('version: 1', 'domains: [a.test]', 'federation:', '  servers:', '    b.test: nowhere'), SERVER_FILE)).message).toMatch(
      /:5: federation\.servers\["b\.test"\]: expected HOST:PORT/,
    );
  });

  it('domains are required and must be names', () => {
    expect(configError(() => loadServerConfig(lf('version: 1'), SERVER_FILE)).message).toBe(
      `${SERVER_FILE}:1: domains: missing; expected a list`,
    );
    expect(configError(() => loadServerConfig(lf('version: 1', 'domains: []'), SERVER_FILE)).message).toBe(
      `${SERVER_FILE}:2: domains: expected at least one domain`,
    );
    expect(configError(() => loadServerConfig(lf('version: 1', 'domains:', '  - a.test', '  - 10.0.0.1'), SERVER_FILE)).message).toMatch(
      /^\/etc\/vertex\/server\.yaml:4: domains\[1\]: invalid domain "10\.0\.0\.1": it looks like an IP address/,
    );
    expect(configError(() => loadServerConfig(lf('version: 1', 'domains: [a.test, A.test]'), SERVER_FILE)).message).toBe(
      `${SERVER_FILE}:2: domains[1]: duplicate domain "a.test"`,
    );
  });

  it('durations are parsed and checked', () => {
    const config = loadServerConfig(lf('version: 1', 'domains: [a.test]', 'certificate_lifetime: 1d12h', 'limits: { handshake_timeout: 2500ms }'), SERVER_FILE);
    expect(config.certificateLifetimeMs).toBe(36 * 3_600_000);
    expect(config.limits.handshakeTimeoutMs).toBe(2500);
    const err = configError(() => loadServerConfig(lf('version: 1', 'domains: [a.test]', 'certificate_lifetime: 30'), SERVER_FILE));
    expect(err.message).toBe(`${SERVER_FILE}:3: certificate_lifetime: expected a duration such as 30d, 12h, 90m or 10s, got 30`);
    const short = configError(() => loadServerConfig(lf('version: 1', 'domains: [a.test]', 'certificate_lifetime: 30s'), SERVER_FILE));
    expect(short.message).toBe(`${SERVER_FILE}:3: certificate_lifetime: duration "30s" is shorter than 1m`);
  });

  it('numbers in nested sections are range-checked', () => {
    const err = configError(() =>
      loadServerConfig(lf('version: 1', 'domains: [a.test]', 'relay:', '  max_streams: 0', 'limits:', '  max_box_bytes: 12.5'), SERVER_FILE),
    );
    expect(lines(err)).toEqual([
      `${SERVER_FILE}:4: relay.max_streams: expected at least 1, got 0`,
      `${SERVER_FILE}:6: limits.max_box_bytes: expected an integer, got 12.5`,
    ]);
  });

  it('an empty value means the default', () => {
    const config = loadServerConfig(lf('version: 1', 'domains: [a.test]', 'relay:', 'listen:'), SERVER_FILE);
    expect(config.relay.enabled).toBe(true);
    expect(config.listen).toEqual({ host: '0.0.0.0', port: 8788 });
  });

  it('overrides (flags) win over the file, and their errors say "command line"', () => {
    const text = lf('version: 1', 'domains: [a.test]', 'listen: 127.0.0.1:9000', 'relay: { max_streams: 5 }');
    const config = loadServerConfig(text, SERVER_FILE, {
      overrides: { domains: ['b.test'], listen: '[::1]:9001', relay: { enabled: false }, data_dir: undefined },
    });
    expect(config.domains).toEqual(['b.test']);
    expect(config.listen).toEqual({ host: '::1', port: 9001 });
    expect(config.relay).toEqual({ enabled: false, maxStreams: 5, perUserRate: 0 });
    expect(config.dataDir).toBe('/var/lib/vertex');

    const err = configError(() => loadServerConfig(text, SERVER_FILE, { overrides: { listen: 'nowhere' } }));
    expect(err.message).toMatch(/^command line: listen: expected HOST:PORT/);
  });
});

describe('loadAgentConfig', () => {
  it('a minimal file gets every default', () => {
    expect(loadAgentConfig('version: 1\n', AGENT_FILE)).toEqual({
      version: 1,
      socks: { listen: { host: '127.0.0.1', port: 1080 }, auth: 'none', passthrough: false },
      forwards: [],
      expose: [],
      domains: {},
      routes: ['tcp', 'ptcp', 'relay'],
      ports: { 22: 'ssh', 80: 'http', 443: 'https' },
      control: { socket: 'auto' },
      log: { level: 'info' },
      relayDelayMs: 1000,
      peerListen: { host: '0.0.0.0', port: 0 },
    });
  });

  it('case-folds names and parses addresses', () => {
    const config = loadAgentConfig(
      lf(
        'version: 1',
        'identity: Alice@Example.COM',
        'socks: { listen: "[::1]:1081", auth: { username: u, password: p } }',
        'forwards: [{ listen: 2222, to: Bob@Example.com:SSH }]',
        'expose: [{ service: 8080, target: LOCALHOST:8080, allow: ["*@Other.org", "*@*.Example.com", Dave@B.test, "*"] }]',
        'domains: { Example.COM: { server: "server.example.com:8788" } }',
        'routes: [relay]',
        'ports: { 22: SSH2, 8443: admin }',
        'advertise: [198.51.100.7, "2001:db8::1"]',
      ),
      AGENT_FILE,
    );
    expect(config.identity).toBe('alice@example.com');
    expect(config.socks).toEqual({ listen: { host: '::1', port: 1081 }, auth: { username: 'u', password: 'p' }, passthrough: false });
    expect(config.forwards).toEqual([{ listen: { host: '127.0.0.1', port: 2222 }, to: 'bob@example.com:ssh' }]);
    expect(config.expose).toEqual([{ service: '8080', target: { host: 'localhost', port: 8080 }, allow: ['*@other.org', '*@*.example.com', 'dave@b.test', '*'] }]);
    expect(config.domains).toEqual({ 'example.com': { server: { host: 'server.example.com', port: 8788 } } });
    expect(config.routes).toEqual(['relay']);
    expect(config.ports).toEqual({ 22: 'ssh2', 80: 'http', 443: 'https', 8443: 'admin' });
    expect(config.advertise).toEqual(['198.51.100.7', '2001:db8::1']);
  });

  it('domains: a server may be a list (the nodes of one domain), kept in order; a single server has no list', () => {
    const config = loadAgentConfig(lf('version: 1', 'domains:', '  a.test: { server: [127.0.0.1:1001, "127.0.0.2:1002"] }', '  b.test: { server: 127.0.0.1:2001 }'), AGENT_FILE);
    expect(config.domains).toEqual({
      'a.test': { server: { host: '127.0.0.1', port: 1001 }, servers: [{ host: '127.0.0.1', port: 1001 }, { host: '127.0.0.2', port: 1002 }] },
      'b.test': { server: { host: '127.0.0.1', port: 2001 } },
    });
    expect(() => loadAgentConfig(lf('version: 1', 'domains:', '  a.test: { server: [] }'), AGENT_FILE)).toThrow(/server/);
  });

  it('device: case-folded, checked, and a forward may name a device', () => {
    const config = loadAgentConfig(lf('version: 1', 'device: HomeServer', 'forwards: [{ listen: 2222, to: Bob+Laptop@Example.com:SSH }]'), AGENT_FILE);
    expect(config.device).toBe('homeserver');
    expect(config.forwards).toEqual([{ listen: { host: '127.0.0.1', port: 2222 }, to: 'bob+laptop@example.com:ssh' }]);
    expect(loadAgentConfig('version: 1\n', AGENT_FILE)).not.toHaveProperty('device');
    const err = configError(() => loadAgentConfig(lf('version: 1', 'device: home--server'), AGENT_FILE));
    expect(err.message).toMatch(/^\/etc\/vertex\/agent\.yaml:2: device: invalid device "home--server": '--' is reserved/);
    const flag = configError(() => loadAgentConfig('version: 1\n', AGENT_FILE, { overrides: { device: 'my laptop' } }));
    expect(flag.message).toMatch(/^command line: device: invalid device "my laptop": U\+0020 is not allowed/);
  });

  it('an expose without allow leaves allow out for the agent to fill in', () => {
    const config = loadAgentConfig(lf('version: 1', 'expose: [{ service: ssh, target: 127.0.0.1:22 }]'), AGENT_FILE);
    expect(config.expose[0]).toEqual({ service: 'ssh', target: { host: '127.0.0.1', port: 22 } });
    expect(config.expose[0]).not.toHaveProperty('allow');
  });

  it('the result is deep-frozen', () => {
    const config = loadAgentConfig(lf('version: 1', 'forwards: [{ listen: 2222, to: bob@example.com:ssh }]'), AGENT_FILE);
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.socks.listen)).toBe(true);
    expect(Object.isFrozen(config.forwards)).toBe(true);
    expect(Object.isFrozen(config.forwards[0]?.listen)).toBe(true);
    expect(Object.isFrozen(config.ports)).toBe(true);
    expect(() => {
      (config.socks as { passthrough: boolean }).passthrough = true;
    }).toThrow(TypeError);
  });

  it('loadConfig dispatches on the kind', () => {
    expect(loadConfig('agent', 'version: 1\n', AGENT_FILE).version).toBe(1);
    expect(loadConfig('server', lf('version: 1', 'domains: [a.test]'), SERVER_FILE).domains).toEqual(['a.test']);
    // An agent file is not a server file: the server wants domains as a list.
    expect(configError(() => loadConfig('server', lf('version: 1', 'socks: {}'), SERVER_FILE)).message).toContain('socks: unknown key');
  });
});

describe('configuration from flags alone', () => {
  it('buildAgentConfig applies overrides to the defaults', () => {
    const config = buildAgentConfig({ socks: { listen: '127.0.0.1:0' }, identity: 'demo@localhost' });
    expect(config.socks.listen).toEqual({ host: '127.0.0.1', port: 0 });
    expect(config.identity).toBe('demo@localhost');
    expect(config.routes).toEqual(['tcp', 'ptcp', 'relay']);
  });

  it('buildServerConfig needs a domain, and says so as a command-line error', () => {
    expect(buildServerConfig({ domains: ['localhost'], listen: '127.0.0.1:8788', data_dir: 'vertex-data' })).toMatchObject({
      domains: ['localhost'],
      listen: { host: '127.0.0.1', port: 8788 },
      dataDir: 'vertex-data',
    });
    expect(configError(() => buildServerConfig({})).message).toBe('command line: domains: missing; expected a list');
  });
});

describe('resolveControlSocket', () => {
  const home = '/home/alice/.config/vertex';
  it('keeps an explicit path', () => {
    expect(resolveControlSocket('/run/x.sock', { env: { XDG_RUNTIME_DIR: '/run/user/1000' }, home })).toBe('/run/x.sock');
  });
  it('auto prefers systemd RuntimeDirectory, then XDG_RUNTIME_DIR, then home', () => {
    expect(resolveControlSocket('auto', { env: { RUNTIME_DIRECTORY: '/run/vertex-agent:/run/other', XDG_RUNTIME_DIR: '/run/user/1000' }, home })).toBe(
      '/run/vertex-agent/agent.sock',
    );
    expect(resolveControlSocket('auto', { env: { XDG_RUNTIME_DIR: '/run/user/1000' }, home })).toBe('/run/user/1000/vertex/agent.sock');
    expect(resolveControlSocket('auto', { env: {}, home })).toBe(`${home}/agent.sock`);
  });
});

describe('store and metrics keys', () => {
  it('store is sqlite unless a PostgreSQL URL is given; anything else is refused with what was expected', () => {
    expect(loadServerConfig(lf('version: 1', 'domains: [a.test]'), SERVER_FILE).store).toBe('sqlite');
    expect(loadServerConfig(lf('version: 1', 'domains: [a.test]', 'store: postgres://vertex@db.a.test:5432/vertex'), SERVER_FILE).store)
      .toBe('postgres://vertex@db.a.test:5432/vertex');
    expect(buildServerConfig({ domains: ['a.test'], store: 'postgresql://vertex@127.0.0.1/vertex' }).store).toBe('postgresql://vertex@127.0.0.1/vertex');
    expect(configError(() => loadServerConfig(lf('version: 1', 'domains: [a.test]', 'store: mysql://x@y/z'), SERVER_FILE)).message)
      .toBe(`${SERVER_FILE}:3: store: expected sqlite or a postgres://user@host:port/database URL, got "mysql://x@y/z"`);
    expect(configError(() => buildServerConfig({ domains: ['a.test'], store: 'postgres://' })).message).toMatch(/^command line: store: /);
  });

  it('metrics are off unless the section is there; a bare port binds loopback', () => {
    expect(loadServerConfig(lf('version: 1', 'domains: [a.test]'), SERVER_FILE).metrics).toBeUndefined();
    expect(loadAgentConfig('version: 1\n', AGENT_FILE).metrics).toBeUndefined();
    expect(loadServerConfig(lf('version: 1', 'domains: [a.test]', 'metrics: { listen: 9464 }'), SERVER_FILE).metrics)
      .toEqual({ listen: { host: '127.0.0.1', port: 9464 } });
    expect(loadAgentConfig(lf('version: 1', 'metrics:', '  listen: "[::1]:0"'), AGENT_FILE).metrics).toEqual({ listen: { host: '::1', port: 0 } });
    expect(configError(() => loadAgentConfig(lf('version: 1', 'metrics: {}'), AGENT_FILE)).message).toContain('metrics.listen: missing; expected HOST:PORT');
  });
});

describe('the agent receive key', () => {
  const defaultLimits = { maxFiles: 10_000, maxNameBytes: 1_048_576 };

  it('is off unless written; allow patterns are case-folded, overwrite defaults to false, limits to issue 11\'s', () => {
    expect(loadAgentConfig('version: 1\n', AGENT_FILE).receive).toBeUndefined();
    expect(loadAgentConfig(lf('version: 1', 'receive: { dir: /srv/in, allow: ["*@Example.COM"] }'), AGENT_FILE).receive)
      .toEqual({ dir: '/srv/in', allow: ['*@example.com'], overwrite: false, limits: defaultLimits });
    expect(loadAgentConfig(lf('version: 1', 'receive:', '  dir: /srv/in', '  overwrite: true'), AGENT_FILE).receive).toEqual({ dir: '/srv/in', overwrite: true, limits: defaultLimits });
  });

  it('takes max_files and max_name_bytes, each within the wire\'s own maxima', () => {
    expect(loadAgentConfig(lf('version: 1', 'receive: { dir: /srv/in, max_files: 50, max_name_bytes: 4096 }'), AGENT_FILE).receive?.limits)
      .toEqual({ maxFiles: 50, maxNameBytes: 4096 });
    expect(loadAgentConfig(lf('version: 1', 'receive: { dir: /srv/in, max_files: 3 }'), AGENT_FILE).receive?.limits)
      .toEqual({ maxFiles: 3, maxNameBytes: defaultLimits.maxNameBytes });
    expect(configError(() => loadAgentConfig(lf('version: 1', 'receive:', '  dir: /in', '  max_files: 0'), AGENT_FILE)).message).toMatch(/:4: receive\.max_files: expected at least 1, got 0/);
    expect(configError(() => loadAgentConfig(lf('version: 1', 'receive: { dir: /in, max_files: 65537 }'), AGENT_FILE)).message).toMatch(/:2: receive\.max_files: .*65536/);
    expect(configError(() => loadAgentConfig(lf('version: 1', 'receive: { dir: /in, max_name_bytes: 1.5 }'), AGENT_FILE)).message).toMatch(/:2: receive\.max_name_bytes: /);
  });

  it('names the line and the key of a relative dir, a bad pattern or an unknown key', () => {
    expect(configError(() => loadAgentConfig(lf('version: 1', 'receive: { dir: inbox }'), AGENT_FILE)).message)
      .toBe(`${AGENT_FILE}:2: receive.dir: expected an absolute path such as /var/lib/vertex/inbox, got "inbox"`);
    expect(configError(() => loadAgentConfig(lf('version: 1', 'receive:', '  dir: /in', '  allow: [bob]'), AGENT_FILE)).message).toMatch(/:4: receive\.allow\[0\]: invalid allow pattern/);
    expect(configError(() => loadAgentConfig(lf('version: 1', 'receive: { dir: /in, ask: true }'), AGENT_FILE)).message).toMatch(/:2: receive\.ask: unknown key; allowed keys here: dir, allow, overwrite, max_files, max_name_bytes/);
    expect(configError(() => loadAgentConfig(lf('version: 1', 'receive: {}'), AGENT_FILE)).message).toMatch(/receive\.dir: missing; expected an absolute path/);
  });
});
