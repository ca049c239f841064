/**
 * The CLI's one set-up module: every command finds the home, the config,
 * the servers, the logger and the running agent through here, and commands
 * never import each other.
 *
 * - Global options (INTERFACE.md "Global options"): `--home`, `--resolve`
 *   (repeatable, one value per flag, anywhere on the line), `--log-level`,
 *   `-v`/`--verbose`, `--json`, `--socket`.
 * - The agent's config: `--config`, else `<home>/agent.yaml` when it exists,
 *   else the defaults.
 * - Node options for commands that dial by themselves when no agent runs
 *   (`connect`, `ping`, `send`, foreground `receive`).
 * - The running agent (agentSockets/openAgent/callRunningAgent): `--socket`;
 *   else the socket of `--config`; else the one the home's running agent
 *   wrote into `<home>/agent.lock` (whatever config it was started with);
 *   else the home's agent.yaml (or the default, `control.socket: auto`);
 *   and, for the default home only, the well-known places:
 *   `$XDG_RUNTIME_DIR/vertex/agent.sock` (the user unit) and
 *   `/run/vertex/agent.sock` (the system unit).
 */
import * as fs from 'node:fs';
import type * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Options } from 'yargs';
import { readAgentLock } from '../agent/agent-lock';
import { openControl, sendRequest } from '../agent/control-client';
import type { CallOp, ControlArgs } from '../agent/control-protocol';
import { HomeStore, type StoredIdentity } from '../agent/home-store';
import { connectQ2Q, type Q2QOptions, type Q2QStream } from '../q2q';
import { createServerResolver, type ServerEndpoint, type ServerResolver } from '../q2q/control/discovery';
import { deviceFromHostname, MAX_DEVICE_LENGTH, parseDevice, parseDomain } from '../q2q/address';
import { vertexError } from '../q2q/errors';
import type { Logger } from '../q2q/util/log';
import { buildAgentConfig, loadAgentConfig, resolveControlSocket, type AgentOverrides } from '../config/load';
import { parseHostPort, type AgentConfig, type RouteName } from '../config/schema';
import { createLogger } from './logger';

export const AGENT_CONFIG_FILE = 'agent.yaml';

export interface GlobalArgs {
  home?: string;
  resolve?: string[];
  logLevel?: string;
  verbose?: number;
  json?: boolean;
  socket?: string;
}

/**
 * A flag that may be given several times, one value each time (`--resolve a=.. --resolve b=..`).
 * Not a yargs array: an array option takes every word after it, so
 * `--resolve d=h:p register alice@d` would swallow the command.
 */
export function repeatable(describe: string, extra: Options = {}): Options {
  return {
    type: 'string',
    requiresArg: true,
    describe: `${describe} (repeatable)`,
    coerce: (value: unknown) => (value === undefined ? undefined : ([] as unknown[]).concat(value).map(String)),
    ...extra,
  };
}

/** `--log-level`, else what `-v` (info), `-vv` (debug) or `-vvv` (trace) asks for, else undefined. */
export function logLevelOf(args: GlobalArgs): string | undefined {
  if (args.logLevel) return args.logLevel;
  const v = args.verbose ?? 0;
  if (v <= 0) return undefined;
  return v === 1 ? 'info' : v === 2 ? 'debug' : 'trace';
}

export function defaultHome(env: NodeJS.ProcessEnv = process.env): string {
  if (env.VERTEX_HOME) return path.resolve(env.VERTEX_HOME);
  return path.join(os.homedir(), '.config', 'vertex');
}

export function homeDir(args: GlobalArgs, env: NodeJS.ProcessEnv = process.env): string {
  if (args.home) return path.resolve(args.home);
  return defaultHome(env);
}

/** Parses repeated `--resolve DOMAIN=HOST:PORT`. */
export function resolveOverrides(args: GlobalArgs): Map<string, ServerEndpoint> {
  const map = new Map<string, ServerEndpoint>();
  for (const item of args.resolve ?? []) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw vertexError('Usage', `--resolve ${item}: expected DOMAIN=HOST:PORT`);
    const domain = parseDomain(item.slice(0, eq));
    let endpoint: ServerEndpoint;
    try {
      endpoint = parseHostPort(item.slice(eq + 1));
    } catch (err) {
      throw vertexError('Usage', `--resolve ${item}: expected DOMAIN=HOST:PORT (${(err as Error).message})`, err);
    }
    map.set(domain, endpoint);
  }
  return map;
}

export function serverResolver(args: GlobalArgs, extra?: Map<string, ServerEndpoint | readonly ServerEndpoint[]>): ServerResolver {
  const overrides = new Map<string, ServerEndpoint | readonly ServerEndpoint[]>([...(extra ?? new Map()), ...resolveOverrides(args)]);
  return createServerResolver({ overrides });
}

export function homeStore(args: GlobalArgs): HomeStore {
  return new HomeStore(homeDir(args));
}

/** A foreground command's logger: quiet (warn) unless --log-level or -v says otherwise. */
export function cliLogger(args: GlobalArgs, fallbackLevel = 'warn', name?: string): Logger {
  return createLogger({ level: logLevelOf(args) ?? fallbackLevel, ...(name !== undefined && { name }) });
}

export function readConfigFile(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw vertexError('Config', `${file}: cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, err);
  }
}

// ---- the agent's configuration ----

export interface AgentArgs extends GlobalArgs {
  config?: string;
  /** `--device NAME` (vertex agent, send, receive): overrides agent.yaml's `device:`. */
  device?: string;
}

export interface AgentSetup {
  config: AgentConfig;
  /** The file the config came from, or null for the built-in defaults. */
  configFile: string | null;
  home: HomeStore;
  homeDir: string;
  /** Where this config puts the agent's control socket. */
  socketPath: string;
  resolve: ServerResolver;
  /** The flags laid over the file; a reload lays them over the re-read file too. */
  overrides?: AgentOverrides;
}

/** The config file in effect: `--config`, else `<home>/agent.yaml` if present. */
export function agentConfigFile(args: AgentArgs): string | null {
  if (args.config) return path.resolve(args.config);
  const inHome = path.join(homeDir(args), AGENT_CONFIG_FILE);
  return fs.existsSync(inHome) ? inHome : null;
}

export function readAgentConfig(file: string | null, overrides?: AgentOverrides): AgentConfig {
  return file ? loadAgentConfig(readConfigFile(file), file, { overrides }) : buildAgentConfig(overrides);
}

function domainServers(config: AgentConfig): Map<string, ServerEndpoint | readonly ServerEndpoint[]> {
  return new Map(Object.entries(config.domains).map(([domain, d]) => [domain, (d.servers ?? [d.server]).map((s) => ({ host: s.host, port: s.port }))]));
}

export function agentSetup(args: AgentArgs, overrides?: AgentOverrides): AgentSetup {
  const configFile = agentConfigFile(args);
  const config = readAgentConfig(configFile, overrides);
  const dir = homeDir(args);
  return {
    config,
    configFile,
    home: homeStore(args),
    homeDir: dir,
    socketPath: resolveControlSocket(config.control.socket, { env: process.env, home: dir }),
    resolve: serverResolver(args, domainServers(config)),
    ...(overrides !== undefined && { overrides }),
  };
}

/** This machine's device name: agent.yaml `device:` (or --device), else from the host name. */
export function machineDevice(config: AgentConfig): string {
  return config.device ?? deviceFromHostname(os.hostname());
}

/** Suffix of a standalone `vertex receive`'s default device name. */
export const RECEIVE_DEVICE_SUFFIX = '-receive';

/**
 * A standalone `vertex receive` is online as a device of its own,
 * `<machine device>-receive` (laptop-receive), unless --device names one: it
 * never takes over the device of an agent of the same identity, on this
 * machine or on another with the same host name (README "Several machines
 * per user").
 */
export function receiveDevice(machine: string): string {
  const base = machine.slice(0, MAX_DEVICE_LENGTH - RECEIVE_DEVICE_SUFFIX.length).replace(/-+$/, '');
  return parseDevice(`${base}${RECEIVE_DEVICE_SUFFIX}`);
}

/** The node options an agent config implies, for one-off connects without an agent. */
export function nodeOptionsFor(setup: AgentSetup, log: Logger, timeoutMs?: number): Q2QOptions & { timeoutMs?: number } {
  const { config } = setup;
  return {
    device: machineDevice(config),
    resolve: setup.resolve,
    trust: setup.home,
    routes: config.routes,
    relayDelayMs: config.relayDelayMs,
    ...(config.advertise && { advertise: config.advertise }),
    log,
    ...(timeoutMs !== undefined && { timeoutMs, connectTimeoutMs: timeoutMs }),
  };
}

/** A connect without an agent: a node of its own that lives as long as the stream. */
export function connectAlone(setup: AgentSetup, target: string, log: Logger, timeoutMs?: number): Promise<Q2QStream> {
  const identity = setup.home.loadIdentity(setup.config.identity);
  return connectQ2Q(identity, target, nodeOptionsFor(setup, log, timeoutMs));
}

// ---- standalone nodes for send and receive ----

export interface NodeArgs extends AgentArgs {
  identity?: string;
  routes?: string[];
  peerListen?: string;
  advertise?: string[];
}

/** The flags of commands that may run a node of their own (send, receive). */
export const NODE_OPTIONS: Record<string, Options> = {
  config: { type: 'string', describe: 'agent config file [<home>/agent.yaml when it exists]' },
  identity: { type: 'string', describe: 'which stored identity to use (user@domain) [the default identity]' },
  routes: repeatable('routes that may be used, in order: tcp, ptcp, relay (comma-separated or repeated)'),
  'peer-listen': { type: 'string', describe: 'HOST:PORT for direct peer connections [0.0.0.0:0]' },
  advertise: repeatable('an address to offer peers instead of the local interfaces'),
  device: { type: 'string', describe: "this node's device name [agent.yaml device:, else the host name; receive adds -receive]" },
};

export interface NodeSetup {
  identity: StoredIdentity;
  options: Q2QOptions;
  home: HomeStore;
  log: Logger;
  setup: AgentSetup;
}

/** Reads agent.yaml (if any) under the flags, and builds what listenQ2Q/connectQ2Q need. */
export function nodeSetup(args: NodeArgs): NodeSetup {
  const routes = args.routes?.flatMap((r) => r.split(',')).map((r) => r.trim().toLowerCase()).filter((r) => r !== '');
  const overrides: AgentOverrides = {
    ...(args.device !== undefined && { device: args.device }),
    ...(routes !== undefined && { routes: routes as RouteName[] }),
    ...(args.peerListen !== undefined && { peer_listen: args.peerListen }),
    ...(args.advertise !== undefined && { advertise: args.advertise }),
  };
  const setup = agentSetup(args, overrides);
  const { config, home } = setup;
  // agent.yaml's log level is the daemon's; a foreground command stays quiet unless --log-level says otherwise.
  const log = cliLogger(args);
  const identity = home.loadIdentity(args.identity ?? config.identity);
  const options: Q2QOptions = {
    device: machineDevice(config),
    resolve: setup.resolve,
    trust: home,
    routes: config.routes,
    relayDelayMs: config.relayDelayMs,
    peerListen: { host: config.peerListen.host, port: config.peerListen.port },
    ...(config.advertise !== undefined && { advertise: config.advertise }),
    log,
  };
  return { identity, options, home, log, setup };
}

// ---- finding the running agent ----

/** The system unit's socket (RuntimeDirectory=vertex). */
export const SYSTEM_AGENT_SOCKET = '/run/vertex/agent.sock';

export interface AgentSocket {
  path: string;
  /** Where the path came from, for "no agent is running" messages. */
  why: string;
}

/** Where to look for the running agent, in order, without duplicates. */
export function agentSockets(args: AgentArgs, env: NodeJS.ProcessEnv = process.env): AgentSocket[] {
  if (args.socket) return [{ path: path.resolve(args.socket), why: '--socket' }];
  const dir = homeDir(args, env);
  const found: AgentSocket[] = [];
  const add = (p: string | null | undefined, why: string): void => {
    if (p && !found.some((f) => f.path === p)) found.push({ path: p, why });
  };
  if (args.config) {
    const config = readAgentConfig(path.resolve(args.config));
    return [{ path: resolveControlSocket(config.control.socket, { env, home: dir }), why: `control.socket of ${args.config}` }];
  }
  add(readAgentLock(dir)?.socket, `the running agent's ${path.join(dir, 'agent.lock')}`);
  const file = agentConfigFile(args);
  add(resolveControlSocket(readAgentConfig(file).control.socket, { env, home: dir }), file ? `control.socket of ${file}` : 'control.socket: auto');
  const explicitHome = Boolean(args.home) || Boolean(env.VERTEX_HOME);
  if (!explicitHome) {
    if (env.XDG_RUNTIME_DIR) add(path.join(env.XDG_RUNTIME_DIR, 'vertex', 'agent.sock'), 'the user unit');
    add(SYSTEM_AGENT_SOCKET, 'the system unit');
  }
  return found;
}

/** A connection to the first agent that answers, or null with the places looked at. */
export async function openAgent(args: AgentArgs): Promise<{ socket: net.Socket; path: string } | { socket: null; looked: AgentSocket[] }> {
  const candidates = agentSockets(args);
  for (const c of candidates) {
    try {
      const socket = await openControl(c.path);
      if (socket) return { socket, path: c.path };
    } catch (err) {
      // Another user's socket (the system agent's, for a normal user): keep looking, but an
      // explicit --socket that cannot be opened is an error of its own.
      if (args.socket) throw err;
    }
  }
  return { socket: null, looked: candidates };
}

export function noAgentMessage(looked: AgentSocket[]): string {
  return `no agent is running (looked at ${looked.map((l) => `${l.path} (${l.why})`).join(', ')}); start one with \`vertex agent\`, or name its socket with --socket`;
}

/**
 * The running agent for send and receive, unless a node flag (--device,
 * --identity, --routes, --peer-listen, --advertise) asks for a node of the
 * command's own: the agent's node is already set up, so those flags would
 * otherwise be ignored without a word.
 */
export async function agentForNode(args: NodeArgs): Promise<{ socket: net.Socket; path: string } | null> {
  const own = [args.device, args.identity, args.routes, args.peerListen, args.advertise].some((v) => v !== undefined);
  if (own) return null;
  const found = await openAgent(args);
  return found.socket ? found : null;
}

/** One request to the running agent; `{ agent: false }` when none answers. */
export async function callRunningAgent<Op extends CallOp>(
  args: AgentArgs,
  op: Op,
  request: ControlArgs<Op> = {} as ControlArgs<Op>,
  opts: { timeoutMs?: number } = {},
): Promise<{ agent: false; looked: AgentSocket[] } | { agent: true; result: unknown; path: string }> {
  const found = await openAgent(args);
  if (!found.socket) return { agent: false, looked: found.looked };
  try {
    return { agent: true, result: await sendRequest(found.socket, op, request, opts), path: found.path };
  } finally {
    found.socket.destroy();
  }
}
