/**
 * The configuration files: what they may contain and what the program gets.
 *
 * Two shapes live here for each file kind:
 *
 * - the *file* schema (zod, strict objects): exactly the YAML as written, with
 *   the YAML's snake_case key names. Every key but `version` (and the server's
 *   `domains`) is optional; an omitted key takes its value from DEFAULTS in
 *   config/defaults.ts, the one place defaults are written down;
 * - the *config* types (`AgentConfig`, `ServerConfig`): what config/load.ts
 *   hands down to the daemons. Keys are camelCase (`public_address` becomes
 *   `publicAddress`), every default is filled in, names are case-folded,
 *   `HOST:PORT` strings are parsed into `{host, port}`, durations become
 *   milliseconds (`certificate_lifetime: 30d` becomes `certificateLifetimeMs`),
 *   and the whole object is deep-frozen.
 *
 * Nothing here reads files or the environment.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { z } from 'zod';
import {
  formatAddress,
  formatServiceAddress,
  parseAddress,
  parseDevice,
  parseDomain,
  parseService,
  parseServiceAddress,
  parseUser,
} from '../q2q/address';
import { isVertexError, VertexError, type ErrorCode } from '../q2q/errors';
import { LOG_LEVELS, type LogLevel } from '../q2q/util/log';
import { ROUTE_NAMES, type RouteName } from '../q2q/negotiate/types';
import type { SocksAuth } from '../q2q/proto/socks5-session';
import { MAX_FILES, MAX_OFFER_BYTES } from '../q2q/wire/file-transfer';
import type { Defaults } from './defaults';

export { LOG_LEVELS, type LogLevel };

// ---- names: the rules of q2q/address.ts, reported as config problems ----

const MAX_PORT = 65535;

/** Runs a q2q/address.ts parser; its InvalidName message is the problem. */
function nameProblem(parse: (text: string) => unknown): (text: string) => string | undefined {
  return (text) => {
    try {
      parse(text);
      return undefined;
    } catch (err) {
      if (isVertexError(err, 'InvalidName')) return err.message;
      throw err;
    }
  };
}

const domainProblem = nameProblem(parseDomain);
const deviceProblem = nameProblem(parseDevice);
const serviceProblem = nameProblem(parseService);
const userAddressProblem = nameProblem(parseAddress);
const serviceAddressProblem = nameProblem(parseServiceAddress);
const allowPatternProblem = nameProblem(parseAllowPattern);

/**
 * An expose `allow` pattern, case-folded: `*` (any authenticated user), or
 * `USER@DOMAIN` where USER may be `*` and DOMAIN may be `*.suffix` (any
 * subdomain of suffix).
 */
export function parseAllowPattern(text: string): string {
  if (text === '*') return text;
  const at = text.indexOf('@');
  if (at < 0) throw new VertexError('InvalidName', `invalid allow pattern ${JSON.stringify(text)}: expected *, *@domain, *@*.domain or user@domain`);
  const user = text.slice(0, at);
  const domain = text.slice(at + 1);
  const wildDomain = domain.startsWith('*.');
  return `${user === '*' ? '*' : parseUser(user)}@${wildDomain ? `*.${parseDomain(domain.slice(2))}` : parseDomain(domain)}`;
}

// ---- HOST:PORT and durations (also used by the CLI for flags) ----

export interface HostPort {
  /** An IPv4 or IPv6 address (without brackets) or a host name, case-folded. */
  readonly host: string;
  readonly port: number;
}

/** Why `text` is not a host (IP address or DNS host name), or undefined. */
function hostProblem(text: string): string | undefined {
  if (isIPv4(text) || isIPv6(text)) return undefined;
  if (/^[0-9.]+$/.test(text)) return `"${text}" is not a valid IPv4 address`;
  if (text.includes(':')) return `"${text}" is not a valid IPv6 address`;
  return domainProblem(text) === undefined ? undefined : `"${text}" is not an IP address or host name`;
}

function portProblem(text: string, minPort: number): string | undefined {
  if (!/^[0-9]{1,5}$/.test(text)) return `port "${text}" is not a number`;
  const port = Number(text);
  if (port < minPort || port > MAX_PORT) return `port ${port} is outside ${minPort}-${MAX_PORT}`;
  return undefined;
}

export interface HostPortOptions {
  /** When set, a bare `PORT` is accepted and means `defaultHost:PORT`. */
  readonly defaultHost?: string;
  /** 0 for listening addresses (any free port), 1 for addresses to connect to. */
  readonly minPort?: number;
}

function splitHostPort(text: string, options: HostPortOptions): HostPort | string {
  const minPort = options.minPort ?? 0;
  if (options.defaultHost !== undefined && /^[0-9]+$/.test(text)) {
    return portProblem(text, minPort) ?? { host: options.defaultHost, port: Number(text) };
  }
  let host: string;
  let port: string;
  if (text.startsWith('[')) {
    const m = /^\[([^\]]*)\]:([^:]*)$/.exec(text);
    if (!m) return 'expected [IPV6]:PORT';
    host = m[1] ?? '';
    port = m[2] ?? '';
    if (!isIPv6(host)) return `"${host}" is not a valid IPv6 address`;
  } else {
    const colon = text.lastIndexOf(':');
    if (colon < 0) return 'missing ":PORT"';
    host = text.slice(0, colon);
    port = text.slice(colon + 1);
    if (host.includes(':')) return 'an IPv6 address needs brackets, as in [::1]:8788';
    if (host === '') return 'missing host before ":"';
    const bad = hostProblem(host);
    if (bad) return bad;
  }
  return portProblem(port, minPort) ?? { host: host.toLowerCase(), port: Number(port) };
}

/**
 * Parses `HOST:PORT`, `[IPV6]:PORT` or, with `defaultHost`, a bare `PORT`.
 * Throws VertexError(`code`, default 'Config') naming the text and the fault.
 */
export function parseHostPort(
  text: string,
  options: HostPortOptions & { readonly code?: ErrorCode } = {},
): HostPort {
  const result = splitHostPort(text, options);
  if (typeof result === 'string') {
    throw new VertexError(options.code ?? 'Config', `parse host:port "${text}": ${result}`);
  }
  return result;
}

/** Formats a HostPort back to text, bracketing IPv6 addresses. */
export function formatHostPort(hp: HostPort): string {
  return isIPv6(hp.host) ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

const DURATION_UNITS_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;
const DURATION_RE = /^(?:[0-9]+(?:ms|s|m|h|d|w))+$/;
const DURATION_PART_RE = /([0-9]+)(ms|s|m|h|d|w)/g;

function durationMs(text: string): number | string {
  if (!DURATION_RE.test(text)) return `"${text}" is not a duration; expected a number and a unit (ms, s, m, h, d, w) such as 30d, 12h, 1h30m or 10s`;
  let total = 0;
  for (const m of text.matchAll(DURATION_PART_RE)) {
    total += Number(m[1]) * DURATION_UNITS_MS[m[2] as keyof typeof DURATION_UNITS_MS];
  }
  if (!Number.isSafeInteger(total)) return `duration "${text}" is too long`;
  return total;
}

/** Parses `30d`, `12h`, `90m`, `10s`, `250ms`, `1h30m` into milliseconds. */
export function parseDuration(text: string, code: ErrorCode = 'Config'): number {
  const result = durationMs(text);
  if (typeof result === 'string') throw new VertexError(code, `parse duration: ${result}`);
  return result;
}

// ---- zod building blocks with messages that say what was expected ----

/**
 * A strict object whose unknown-key issue carries the allowed keys; the
 * loader turns that into one line per unknown key.
 */
function strict<T extends z.ZodRawShape>(shape: T) {
  const allowed = Object.keys(shape).join(', ');
  return z.strictObject(shape, {
    error: (iss) => (iss.code === 'unrecognized_keys' ? `${ALLOWED_KEYS_PREFIX}${allowed}` : undefined),
  });
}

/** Marks the message of an unrecognized_keys issue made by strict(). */
export const ALLOWED_KEYS_PREFIX = 'allowed keys: ';

function checked(problem: (text: string) => string | undefined) {
  return z.string().superRefine((text, ctx) => {
    const bad = problem(text);
    if (bad !== undefined) ctx.addIssue({ code: 'custom', message: bad });
  });
}

/** A string, or a YAML number written without quotes (ports, numeric services). */
function checkedTextOrNumber(what: string, problem: (text: string) => string | undefined) {
  return z
    .union([z.string(), z.number()], { error: (iss) => expectedGot(what, iss.input) })
    .superRefine((value, ctx) => {
      const bad = problem(String(value));
      if (bad !== undefined) ctx.addIssue({ code: 'custom', message: bad });
    });
}

function hostPortText(options: HostPortOptions, example: string) {
  return checkedTextOrNumber(`HOST:PORT such as ${example}`, (text) => {
    const result = splitHostPort(text, options);
    return typeof result === 'string' ? `expected HOST:PORT such as ${example}, got "${text}": ${result}` : undefined;
  });
}

const listenAddress = (example: string) => hostPortText({ minPort: 0 }, example);
const connectAddress = hostPortText({ minPort: 1 }, '203.0.113.5:8788');
/** A forward's `listen` may be a bare port, which binds loopback only. */
/** Port 0 is allowed: the system picks a free port, reported by `vertex forward`, status and the log. */
export const FORWARD_LISTEN: HostPortOptions = { minPort: 0, defaultHost: '127.0.0.1' };
const forwardListen = hostPortText(FORWARD_LISTEN, '127.0.0.1:2222 or 2222');
const serviceName = checkedTextOrNumber('a service name such as ssh, or a port number', serviceProblem);

function duration(minMs: number, minText: string) {
  return z.string({ error: (iss) => expectedGot('a duration such as 30d, 12h, 90m or 10s', iss.input) }).superRefine((text, ctx) => {
    const ms = durationMs(text);
    if (typeof ms === 'string') ctx.addIssue({ code: 'custom', message: ms });
    else if (ms < minMs) ctx.addIssue({ code: 'custom', message: `duration "${text}" is shorter than ${minText}` });
  });
}

function uniqueList<T extends z.ZodType>(item: T, what: string, key: (v: z.output<T>) => string = String) {
  return z.array(item).superRefine((list, ctx) => {
    const seen = new Set<string>();
    list.forEach((v, i) => {
      const k = key(v).toLowerCase();
      if (seen.has(k)) ctx.addIssue({ code: 'custom', path: [i], message: `duplicate ${what} "${k}"` });
      seen.add(k);
    });
  });
}

const logSection = strict({ level: z.enum(LOG_LEVELS).optional() });

/** `metrics.listen` may be a bare port, which binds loopback only (metrics are off unless the section is there). */
export const METRICS_LISTEN: HostPortOptions = { minPort: 0, defaultHost: '127.0.0.1' };
const metricsSection = strict({ listen: hostPortText(METRICS_LISTEN, '127.0.0.1:9464 or 9464') });

/** A node name (server.yaml node.name): one DNS label. */
function nodeNameProblem(text: string): string | undefined {
  return /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i.test(text) ? undefined : `expected a node name (one DNS label: letters, digits, '-'), got "${text}"`;
}

/** The account store: `sqlite` (data_dir/vertex.db) or a PostgreSQL URL. */
function storeProblem(text: string): string | undefined {
  if (text === 'sqlite') return undefined;
  if (!/^postgres(ql)?:\/\//i.test(text)) return `expected sqlite or a postgres://user@host:port/database URL, got ${describeValue(text)}`;
  try {
    const url = new URL(text);
    if (!url.hostname && !url.searchParams.get('host')) return 'the PostgreSQL URL names no host';
  } catch {
    return 'not a valid URL';
  }
  return undefined;
}

export const ROUTES = ROUTE_NAMES;
export type { RouteName };

export const REGISTRATION_MODES = ['open', 'invite', 'closed'] as const;
export type RegistrationMode = (typeof REGISTRATION_MODES)[number];

const version = z.literal(1, { error: (iss) => expectedGot('1', iss.input) });

/** "expected X, got Y", or "missing; expected X" when the key is absent. */
export function expectedGot(what: string, input: unknown): string {
  return input === undefined ? `missing; expected ${what}` : `expected ${what}, got ${describeValue(input)}`;
}

/** A value as the user wrote it, for "expected X, got Y" messages. */
export function describeValue(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}...` : value);
  return String(value);
}

// ---- the agent file ----

const socksAuth = z.union([z.literal('none'), strict({ username: z.string().min(1), password: z.string().min(1) })], {
  error: (iss) => expectedGot('none or { username, password }', iss.input),
});

const controlSocket = z.string().superRefine((text, ctx) => {
  if (text !== 'auto' && !text.startsWith('/')) {
    ctx.addIssue({ code: 'custom', message: `expected auto or an absolute path, got "${text}"` });
  }
});

export const agentFileSchema = strict({
  version,
  identity: checked(userAddressProblem).optional(),
  device: checked(deviceProblem).optional(),
  socks: strict({
    listen: listenAddress('127.0.0.1:1080').optional(),
    auth: socksAuth.optional(),
    passthrough: z.boolean().optional(),
  }).optional(),
  forwards: uniqueList(
    strict({ listen: forwardListen, to: checked(serviceAddressProblem) }),
    'forward listen address',
    (f) => {
      const hp = splitHostPort(String(f.listen), FORWARD_LISTEN);
      return typeof hp === 'string' ? String(f.listen) : formatHostPort(hp);
    },
  ).optional(),
  expose: uniqueList(
    strict({
      service: serviceName,
      target: connectAddress,
      allow: z.array(checked(allowPatternProblem)).min(1).optional(),
    }),
    'exposed service',
    (e) => String(e.service),
  ).optional(),
  domains: z
    // One server, or a list: the nodes of a domain served by several (tried in order, also on reconnect).
    .record(checked(domainProblem), strict({ server: z.union([connectAddress, z.array(connectAddress).min(1).max(16)]) }))
    .superRefine((record, ctx) => {
      const seen = new Set<string>();
      for (const domain of Object.keys(record)) {
        if (seen.has(domain.toLowerCase())) ctx.addIssue({ code: 'custom', path: [domain], message: `duplicate domain "${domain.toLowerCase()}"` });
        seen.add(domain.toLowerCase());
      }
    })
    .optional(),
  routes: uniqueList(z.enum(ROUTES), 'route').min(1).optional(),
  ports: z.record(checked((text) => portProblem(text, 1)), serviceName).optional(),
  control: strict({ socket: controlSocket.optional() }).optional(),
  log: logSection.optional(),
  metrics: metricsSection.optional(),
  receive: strict({
    dir: z.string({ error: (iss) => expectedGot('an absolute path such as /var/lib/vertex/inbox', iss.input) }).superRefine((text, ctx) => {
      if (!text.startsWith('/')) ctx.addIssue({ code: 'custom', message: `expected an absolute path such as /var/lib/vertex/inbox, got "${text}"` });
    }),
    allow: z.array(checked(allowPatternProblem)).min(1).optional(),
    overwrite: z.boolean().optional(),
    // Above the wire's own maxima a limit would mean nothing: frames that large are refused anyway.
    max_files: z.int().min(1).max(MAX_FILES).optional(),
    max_name_bytes: z.int().min(1).max(MAX_OFFER_BYTES).optional(),
  }).optional(),
  relay_delay_ms: z.int().min(0).max(60_000).optional(),
  peer_listen: listenAddress('0.0.0.0:0').optional(),
  advertise: z.array(checked(hostProblem)).optional(),
});

/** The agent file as written (YAML key names, defaults not applied). */
export type AgentFile = z.input<typeof agentFileSchema>;

export type { SocksAuth };

export interface AgentConfig {
  readonly version: 1;
  /** `user@domain` of the identity under home to use; omitted means the only one stored. */
  readonly identity?: string;
  /**
   * This machine's device name among the identity's machines (README "Several
   * machines per user"), case-folded; omitted means the host name's first label
   * (q2q/address.ts deviceFromHostname), worked out when the node starts.
   */
  readonly device?: string;
  readonly socks: {
    readonly listen: HostPort;
    readonly auth: SocksAuth;
    /** Non-Q2Q host names are dialled directly instead of refused with reply 0x02. */
    readonly passthrough: boolean;
  };
  readonly forwards: readonly { readonly listen: HostPort; /** `user@domain:service`, case-folded. */ readonly to: string }[];
  readonly expose: readonly {
    readonly service: string;
    readonly target: HostPort;
    /** Omitted means the owner alone (any of the owner's devices); the agent fills it in. */
    readonly allow?: readonly string[];
  }[];
  /** Server overrides per domain, like curl's --resolve. Keys are case-folded. */
  /** `server` is the first server; `servers` all of them, in order, when a list was written. */
  readonly domains: Readonly<Record<string, { readonly server: HostPort; readonly servers?: readonly HostPort[] }>>;
  readonly routes: readonly RouteName[];
  /** SOCKS/ProxyCommand port to service name; the defaults are merged under the file's entries. */
  readonly ports: Readonly<Record<number, string>>;
  /**
   * `auto`, or an absolute path. `auto` is resolved by resolveControlSocket()
   * in config/load.ts.
   */
  readonly control: { readonly socket: string };
  readonly log: { readonly level: LogLevel };
  /** Prometheus text on http://listen/metrics; absent means off. */
  readonly metrics?: { readonly listen: HostPort };
  /**
   * The agent receives files itself (`vertex send` to this identity) into
   * `dir`, from `allow` (omitted: the owner alone); absent means off.
   */
  readonly receive?: {
    readonly dir: string;
    readonly allow?: readonly string[];
    readonly overwrite: boolean;
    /** What one offer may ask: files, and the offered names' UTF-8 bytes together. */
    readonly limits: { readonly maxFiles: number; readonly maxNameBytes: number };
  };
  /** How long the dial waits for a direct route before opening relay legs too. */
  readonly relayDelayMs: number;
  /** The listening address for direct TCP peer channels (port 0: any free port). */
  readonly peerListen: HostPort;
  /** Addresses to advertise to peers instead of the local interfaces. */
  readonly advertise?: readonly string[];
}

// ---- the server file ----

export const serverFileSchema = strict({
  version,
  domains: uniqueList(checked(domainProblem), 'domain').min(1, { error: 'expected at least one domain' }),
  listen: listenAddress('0.0.0.0:8788').optional(),
  public_address: checked(hostProblem).optional(),
  data_dir: z.string().min(1).optional(),
  registration: z.enum(REGISTRATION_MODES).optional(),
  certificate_lifetime: duration(60_000, '1m').optional(),
  relay: strict({
    enabled: z.boolean().optional(),
    max_streams: z.int().min(1).max(10_000_000).optional(),
    per_user_rate: z.int().min(0).optional(),
  }).optional(),
  limits: strict({
    max_connections: z.int().min(1).max(10_000_000).optional(),
    handshake_timeout: duration(100, '100ms').optional(),
    max_box_bytes: z.int().min(4096).max(16 * 1024 * 1024).optional(),
    unauthenticated_per_address: z.int().min(1).max(10_000_000).optional(),
    unauthenticated_max: z.int().min(1).max(10_000_000).optional(),
    unauthenticated_idle_timeout: duration(100, '100ms').optional(),
    unauthenticated_lifetime: duration(1000, '1s').optional(),
    unauthenticated_handshakes: z.int().min(1).max(10_000_000).optional(),
    unauthenticated_newcomer_interval: duration(0, '0s').optional(),
    known_addresses: z.int().min(0).max(10_000_000).optional(),
    known_address_lifetime: duration(0, '0s').optional(),
    password_guesses_per_account_address: z.int().min(1).max(1_000_000).optional(),
    password_guesses_per_address: z.int().min(1).max(1_000_000).optional(),
    password_guesses_per_account: z.int().min(1).max(1_000_000).optional(),
    password_window: duration(1000, '1s').optional(),
    registrations_per_address: z.int().min(1).max(1_000_000).optional(),
    invite_guesses_per_address: z.int().min(1).max(1_000_000).optional(),
    logins_waiting_per_account: z.int().min(0).max(1_000_000).optional(),
  }).optional(),
  store: checked(storeProblem).optional(),
  metrics: metricsSection.optional(),
  node: strict({
    name: checked(nodeNameProblem),
    listen: listenAddress('10.0.0.1:8789'),
    advertise: connectAddress.optional(),
  }).optional(),
  federation: strict({
    allow: uniqueList(checked(domainProblem), 'domain').optional(),
    // At most 30 s: with an agent's 20 s re-check that keeps a foreign revocation within 60 s (docs/security.md).
    cert_status_cache: duration(1000, '1s')
      .refine((text) => { const ms = durationMs(text); return typeof ms !== 'number' || ms <= 30_000; }, { message: 'cert_status_cache is at most 30s (the 60 s revocation bound depends on it)' })
      .optional(),
    servers: z
      .record(checked(domainProblem), connectAddress)
      .superRefine((record, ctx) => {
        const seen = new Set<string>();
        for (const domain of Object.keys(record)) {
          if (seen.has(domain.toLowerCase())) ctx.addIssue({ code: 'custom', path: [domain], message: `duplicate domain "${domain.toLowerCase()}"` });
          seen.add(domain.toLowerCase());
        }
      })
      .optional(),
  }).optional(),
  log: logSection.optional(),
});

/** The server file as written (YAML key names, defaults not applied). */
export type ServerFile = z.input<typeof serverFileSchema>;

export interface ServerConfig {
  readonly version: 1;
  /** The domains this server is the identity server for, case-folded. */
  readonly domains: readonly string[];
  /** TCP and UDP. */
  readonly listen: HostPort;
  /** The address agents are told to reach this server at, when it differs from what they dialled. */
  readonly publicAddress?: string;
  /** As written; a relative path is relative to the working directory. */
  readonly dataDir: string;
  readonly registration: RegistrationMode;
  readonly certificateLifetimeMs: number;
  readonly relay: {
    readonly enabled: boolean;
    readonly maxStreams: number;
    /** Bytes per second per user; 0 means unlimited. */
    readonly perUserRate: number;
  };
  readonly limits: {
    readonly maxConnections: number;
    readonly handshakeTimeoutMs: number;
    readonly maxBoxBytes: number;
    /** Connections without a valid client certificate (server/admission.ts). */
    readonly unauthenticated: {
      readonly perAddress: number;
      readonly total: number;
      readonly idleMs: number;
      readonly lifetimeMs: number;
      /** TLS handshakes in progress at once that bring pressure on. */
      readonly handshakes: number;
      /** Under pressure, one new connection per this long for an address not known good. */
      readonly newcomerIntervalMs: number;
      /** Known-good addresses remembered at most. */
      readonly knownAddresses: number;
      /** How long an address stays known good after it last authenticated. */
      readonly knownForMs: number;
    };
    /** Password and registration budgets (server/rate-limiter.ts). */
    readonly login: {
      readonly perAccountAddress: number;
      readonly perAddress: number;
      readonly perAccount: number;
      readonly windowMs: number;
      /** Per hour. */
      readonly registrationsPerAddress: number;
      /** Per windowMs. */
      readonly inviteGuessesPerAddress: number;
      /** Password checks waiting for an account's one in flight. */
      readonly waitingPerAccount: number;
    };
  };
  /** `sqlite` (data_dir/vertex.db) or a PostgreSQL URL, as written. */
  readonly store: string;
  /** Prometheus text on http://listen/metrics and health on /health; absent means off. */
  readonly metrics?: { readonly listen: HostPort };
  /**
   * One node of several serving these domains on one PostgreSQL store
   * (server/node-mesh.ts, docs/deploy.md); absent means a single server.
   */
  readonly node?: { readonly name: string; readonly listen: HostPort; readonly advertise?: string };
  /** Users of other domains (server/federation.ts). */
  readonly federation: {
    /** Only these domains' users are checked and admitted; absent means any valid domain. */
    readonly allow?: readonly string[];
    /** Where other domains' servers are, case-folded keys; --resolve wins over these. */
    readonly servers: Readonly<Record<string, HostPort>>;
    /** How long another domain's "good" cert-status answer is trusted; absent: 30 s. */
    readonly certStatusCacheMs?: number;
  };
  readonly log: { readonly level: LogLevel };
}

// ---- from a validated file to the typed config ----

/** Exactly the values DEFAULTS (config/defaults.ts) holds for each file kind. */
export type AgentDefaults = Defaults['agent'];
export type AgentReceiveDefaults = Defaults['agent_receive'];
export type ServerDefaults = Defaults['server'];

function hostPort(text: string | number, options: HostPortOptions = {}) {
  return parseHostPort(String(text), options);
}

/** Fills every omitted key from `d` and converts names and values; no validation. */
export function toAgentConfig(file: z.output<typeof agentFileSchema>, d: AgentDefaults, r: AgentReceiveDefaults): AgentConfig {
  const auth = file.socks?.auth ?? d.socks.auth;
  const forwards: NonNullable<typeof file.forwards> = file.forwards ?? [...d.forwards];
  const expose: NonNullable<typeof file.expose> = file.expose ?? [...d.expose];
  const domains: NonNullable<typeof file.domains> = { ...d.domains, ...file.domains };
  return {
    version: 1,
    ...(file.identity !== undefined && { identity: formatAddress(parseAddress(file.identity)) }),
    ...(file.device !== undefined && { device: parseDevice(file.device) }),
    socks: {
      listen: hostPort(file.socks?.listen ?? d.socks.listen),
      auth: auth === 'none' ? 'none' : { username: auth.username, password: auth.password },
      passthrough: file.socks?.passthrough ?? d.socks.passthrough,
    },
    forwards: forwards.map((f) => ({ listen: hostPort(f.listen, FORWARD_LISTEN), to: formatServiceAddress(parseServiceAddress(f.to)) })),
    expose: expose.map((e) => ({
      service: parseService(String(e.service)),
      target: hostPort(e.target),
      ...(e.allow && { allow: e.allow.map(parseAllowPattern) }),
    })),
    domains: Object.fromEntries(
      Object.entries(domains).map(([domain, entry]) => {
        if (!Array.isArray(entry.server)) return [parseDomain(domain), { server: hostPort(entry.server) }];
        const servers = entry.server.map((s) => hostPort(s));
        return [parseDomain(domain), { server: servers[0] as HostPort, servers }];
      }),
    ),
    routes: [...(file.routes ?? d.routes)],
    ports: Object.fromEntries(
      Object.entries({ ...d.ports, ...file.ports }).map(([port, service]) => [Number(port), parseService(String(service))]),
    ),
    control: { socket: file.control?.socket ?? d.control.socket },
    log: { level: file.log?.level ?? d.log.level },
    ...(file.metrics && { metrics: { listen: hostPort(file.metrics.listen, METRICS_LISTEN) } }),
    ...(file.receive && {
      receive: {
        dir: file.receive.dir,
        ...(file.receive.allow && { allow: file.receive.allow.map(parseAllowPattern) }),
        overwrite: file.receive.overwrite ?? r.overwrite,
        limits: {
          maxFiles: file.receive.max_files ?? r.max_files,
          maxNameBytes: file.receive.max_name_bytes ?? r.max_name_bytes,
        },
      },
    }),
    relayDelayMs: file.relay_delay_ms ?? d.relay_delay_ms,
    peerListen: hostPort(file.peer_listen ?? d.peer_listen),
    ...(file.advertise && { advertise: file.advertise.map((a) => a.toLowerCase()) }),
  };
}

export function toServerConfig(file: z.output<typeof serverFileSchema>, d: ServerDefaults): ServerConfig {
  return {
    version: 1,
    domains: file.domains.map(parseDomain),
    listen: hostPort(file.listen ?? d.listen),
    ...(file.public_address !== undefined && { publicAddress: file.public_address.toLowerCase() }),
    dataDir: file.data_dir ?? d.data_dir,
    registration: file.registration ?? d.registration,
    certificateLifetimeMs: parseDuration(file.certificate_lifetime ?? d.certificate_lifetime),
    relay: {
      enabled: file.relay?.enabled ?? d.relay.enabled,
      maxStreams: file.relay?.max_streams ?? d.relay.max_streams,
      perUserRate: file.relay?.per_user_rate ?? d.relay.per_user_rate,
    },
    limits: {
      maxConnections: file.limits?.max_connections ?? d.limits.max_connections,
      handshakeTimeoutMs: parseDuration(file.limits?.handshake_timeout ?? d.limits.handshake_timeout),
      maxBoxBytes: file.limits?.max_box_bytes ?? d.limits.max_box_bytes,
      unauthenticated: {
        perAddress: file.limits?.unauthenticated_per_address ?? d.limits.unauthenticated_per_address,
        total: file.limits?.unauthenticated_max ?? d.limits.unauthenticated_max,
        idleMs: parseDuration(file.limits?.unauthenticated_idle_timeout ?? d.limits.unauthenticated_idle_timeout),
        lifetimeMs: parseDuration(file.limits?.unauthenticated_lifetime ?? d.limits.unauthenticated_lifetime),
        handshakes: file.limits?.unauthenticated_handshakes ?? d.limits.unauthenticated_handshakes,
        newcomerIntervalMs: parseDuration(file.limits?.unauthenticated_newcomer_interval ?? d.limits.unauthenticated_newcomer_interval),
        knownAddresses: file.limits?.known_addresses ?? d.limits.known_addresses,
        knownForMs: parseDuration(file.limits?.known_address_lifetime ?? d.limits.known_address_lifetime),
      },
      login: {
        perAccountAddress: file.limits?.password_guesses_per_account_address ?? d.limits.password_guesses_per_account_address,
        perAddress: file.limits?.password_guesses_per_address ?? d.limits.password_guesses_per_address,
        perAccount: file.limits?.password_guesses_per_account ?? d.limits.password_guesses_per_account,
        windowMs: parseDuration(file.limits?.password_window ?? d.limits.password_window),
        registrationsPerAddress: file.limits?.registrations_per_address ?? d.limits.registrations_per_address,
        inviteGuessesPerAddress: file.limits?.invite_guesses_per_address ?? d.limits.invite_guesses_per_address,
        waitingPerAccount: file.limits?.logins_waiting_per_account ?? d.limits.logins_waiting_per_account,
      },
    },
    store: file.store ?? d.store,
    ...(file.metrics && { metrics: { listen: hostPort(file.metrics.listen, METRICS_LISTEN) } }),
    ...(file.node && {
      node: {
        name: file.node.name.toLowerCase(),
        listen: hostPort(file.node.listen),
        ...(file.node.advertise !== undefined && { advertise: formatHostPort(hostPort(file.node.advertise)) }),
      },
    }),
    federation: {
      ...(file.federation?.allow && { allow: file.federation.allow.map(parseDomain) }),
      ...(file.federation?.cert_status_cache !== undefined && { certStatusCacheMs: parseDuration(file.federation.cert_status_cache) }),
      servers: Object.fromEntries(
        Object.entries(file.federation?.servers ?? {}).map(([domain, server]) => [parseDomain(domain), hostPort(server)]),
      ),
    },
    log: { level: file.log?.level ?? d.log.level },
  };
}

/** Freezes an object graph in place (plain objects and arrays). */
export function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}
