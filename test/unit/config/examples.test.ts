/**
 * The annotated examples in config/ are documentation that must stay true:
 * they load, they hold the values their comments describe, every key the
 * schema knows appears in them, and every "Default:" they state is the
 * default the loader applies.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseDocument } from 'yaml';
import { DEFAULTS } from '../../../config/defaults';
import { loadAgentConfig, loadServerConfig } from '../../../config/load';
import { agentFileSchema, serverFileSchema } from '../../../config/schema';

const CONFIG_DIR = path.resolve(__dirname, '../../../config');
const AGENT_EXAMPLE = path.join(CONFIG_DIR, 'agent.example.yaml');
const SERVER_EXAMPLE = path.join(CONFIG_DIR, 'server.example.yaml');

/** The example with its commented-out illustration (`# advertise: ...`) switched on. */
function uncommentIllustrations(text: string): string {
  return text.replace(/^# (advertise: .*)$/m, '$1');
}

/** Every key path (`socks.listen`, `expose.allow`) the zod schema accepts, lists and records folded. */
function schemaKeys(schema: unknown, prefix = ''): string[] {
  const def = (schema as { _zod?: { def?: Record<string, unknown> } })._zod?.def ?? {};
  switch (def['type']) {
    case 'object': {
      const shape = def['shape'] as Record<string, unknown>;
      return Object.entries(shape).flatMap(([key, child]) => {
        const here = prefix ? `${prefix}.${key}` : key;
        return [here, ...schemaKeys(child, here)];
      });
    }
    case 'optional':
    case 'nonoptional':
      return schemaKeys(def['innerType'], prefix);
    case 'pipe':
      return schemaKeys(def['in'], prefix);
    case 'array':
      return schemaKeys(def['element'], prefix);
    case 'record':
      // Record keys are user data (domains, ports); look inside the values.
      return schemaKeys(def['valueType'], `${prefix}.*`).filter((k) => k !== `${prefix}.*`);
    case 'union':
      return (def['options'] as unknown[]).flatMap((option) => schemaKeys(option, prefix));
    default:
      return [];
  }
}

/** Every key path written in a YAML file, lists and records folded like schemaKeys. */
function fileKeys(text: string, recordKeys: readonly string[]): Set<string> {
  const out = new Set<string>();
  const walk = (value: unknown, prefix: string): void => {
    if (Array.isArray(value)) {
      for (const item of value) walk(item, prefix);
    } else if (value !== null && typeof value === 'object') {
      for (const [key, child] of Object.entries(value)) {
        const here = recordKeys.includes(prefix) ? `${prefix}.*` : prefix ? `${prefix}.${key}` : key;
        if (!recordKeys.includes(prefix)) out.add(here);
        walk(child, here);
      }
    }
  };
  walk(parseDocument(text).toJS(), '');
  return out;
}

describe('config/agent.example.yaml', () => {
  const text = fs.readFileSync(AGENT_EXAMPLE, 'utf8');

  it('loads, with the values it shows', () => {
    const config = loadAgentConfig(text, AGENT_EXAMPLE);
    expect(config.identity).toBe('alice@example.com');
    expect(config.device).toBe('laptop');
    expect(config.socks).toEqual({ listen: { host: '127.0.0.1', port: 1080 }, auth: 'none', passthrough: false });
    expect(config.forwards).toEqual([{ listen: { host: '127.0.0.1', port: 2222 }, to: 'bob@example.com:ssh' }]);
    expect(config.expose).toEqual([
      { service: 'ssh', target: { host: '127.0.0.1', port: 22 }, allow: ['*@example.com', 'carol@other.org'] },
      { service: 'web', target: { host: '127.0.0.1', port: 8080 } },
    ]);
    expect(config.domains).toEqual({ 'example.com': { server: { host: '203.0.113.5', port: 8788 } } });
    expect(config.routes).toEqual(['tcp', 'ptcp', 'relay']);
    expect(config.ports).toEqual({ 22: 'ssh', 80: 'http', 443: 'https', 8080: 'web' });
    expect(config.control).toEqual({ socket: 'auto' });
    expect(config.log).toEqual({ level: 'info' });
    expect(config.relayDelayMs).toBe(1000);
    expect(config.peerListen).toEqual({ host: '0.0.0.0', port: 0 });
    expect(config.metrics).toEqual({ listen: { host: '127.0.0.1', port: 9465 } });
    expect(config.advertise).toBeUndefined();
  });

  it('its commented-out illustration is valid too', () => {
    const config = loadAgentConfig(uncommentIllustrations(text), AGENT_EXAMPLE);
    expect(config.advertise).toEqual(['198.51.100.7']);
  });

  it('shows every key the agent schema accepts', () => {
    const written = fileKeys(uncommentIllustrations(text), ['domains', 'ports']);
    const accepted = schemaKeys(agentFileSchema).filter((k) => !k.startsWith('socks.auth.'));
    expect(accepted.filter((k) => !written.has(k))).toEqual([]);
    // socks.auth's mapping form is documented in the comment above it.
    expect(text).toMatch(/\{ username: NAME, password: SECRET \}/);
  });

  it('every stated default is the loader default', () => {
    expect(text).toContain(`Default: ${DEFAULTS.agent.socks.listen}.`);
    expect(text).toContain(`Default: ${DEFAULTS.agent.socks.auth}.`);
    expect(text).toContain(`Default: ${String(DEFAULTS.agent.socks.passthrough)}.`);
    expect(text).toContain(`Default: [${DEFAULTS.agent.routes.join(', ')}].`);
    expect(text).toContain(`Default: ${DEFAULTS.agent.control.socket}.`);
    expect(text).toContain(`Default: ${DEFAULTS.agent.log.level}.`);
    expect(text).toContain(`Default: ${DEFAULTS.agent.relay_delay_ms}.`);
    expect(text).toContain(`Default: ${DEFAULTS.agent.peer_listen}.`);
    expect(text).toContain(`Files in one offer. Default: ${DEFAULTS.agent_receive.max_files}.`);
    expect(text).toContain(`in UTF-8 bytes. Default: ${DEFAULTS.agent_receive.max_name_bytes}.`);
    const ports = Object.entries(DEFAULTS.agent.ports).map(([p, s]) => `${p}: ${s}`);
    expect(text).toContain(`defaults ${ports.slice(0, -1).join(', ')} and ${ports.at(-1) ?? ''};`);
  });
});

describe('config/server.example.yaml', () => {
  const text = fs.readFileSync(SERVER_EXAMPLE, 'utf8');

  it('loads, with the values it shows', () => {
    expect(loadServerConfig(text, SERVER_EXAMPLE)).toEqual({
      version: 1,
      domains: ['example.com'],
      listen: { host: '0.0.0.0', port: 8788 },
      publicAddress: '203.0.113.5',
      dataDir: '/var/lib/vertex',
      registration: 'invite',
      certificateLifetimeMs: 30 * 24 * 3_600_000,
      relay: { enabled: true, maxStreams: 10_000, perUserRate: 0 },
      limits: {
        maxConnections: 10_000, handshakeTimeoutMs: 10_000, maxBoxBytes: 262_144,
        unauthenticated: { perAddress: 256, total: 2000, idleMs: 10_000, lifetimeMs: 60_000, handshakes: 128, newcomerIntervalMs: 10_000, knownAddresses: 10_000, knownForMs: 86_400_000 },
        login: { perAccountAddress: 5, perAddress: 20, perAccount: 100, windowMs: 900_000, registrationsPerAddress: 20, inviteGuessesPerAddress: 5, waitingPerAccount: 16 },
      },
      store: 'sqlite',
      metrics: { listen: { host: '127.0.0.1', port: 9464 } },
      node: { name: 'node1', listen: { host: '10.0.0.1', port: 8789 }, advertise: '10.0.0.1:8789' },
      federation: { allow: ['a.example', 'b.example'], servers: { 'b.example': { host: '198.51.100.7', port: 8788 } }, certStatusCacheMs: 30_000 },
      log: { level: 'info' },
    });
  });

  it('shows every key the server schema accepts', () => {
    const written = fileKeys(text, []);
    expect(schemaKeys(serverFileSchema).filter((k) => !written.has(k))).toEqual([]);
  });

  it('every stated default is the loader default', () => {
    const d = DEFAULTS.server;
    for (const value of [
      d.listen,
      d.data_dir,
      d.registration,
      d.certificate_lifetime,
      String(d.relay.enabled),
      String(d.relay.max_streams),
      String(d.relay.per_user_rate),
      String(d.limits.max_connections),
      d.limits.handshake_timeout,
      String(d.limits.max_box_bytes),
      d.store,
      d.log.level,
    ]) {
      expect(text).toContain(`Default: ${value}.`);
    }
  });
});

describe('schemaKeys (the helper above)', () => {
  it('sees nested keys, so the coverage checks can fail', () => {
    const keys = schemaKeys(agentFileSchema);
    expect(keys).toEqual(expect.arrayContaining(['socks.listen', 'expose.allow', 'domains.*.server', 'log.level']));
    expect(schemaKeys(serverFileSchema)).toEqual(expect.arrayContaining(['relay.per_user_rate', 'limits.handshake_timeout']));
  });
});
