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
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Options } from 'yargs';
import { HomeStore, type StoredIdentity } from '../agent/home-store';
import { connectQ2Q, type Q2QOptions, type Q2QStream } from '../q2q';
import { createServerResolver, type ServerEndpoint, type ServerResolver } from '../q2q/control/discovery';
import { parseDomain } from '../q2q/address';
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

export function serverResolver(args: GlobalArgs, extra?: Map<string, ServerEndpoint>): ServerResolver {
  const overrides = new Map([...(extra ?? new Map<string, ServerEndpoint>()), ...resolveOverrides(args)]);
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

function domainServers(config: AgentConfig): Map<string, ServerEndpoint> {
  return new Map(Object.entries(config.domains).map(([domain, d]) => [domain, { host: d.server.host, port: d.server.port }]));
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
  };
}

/** The node options an agent config implies, for one-off connects without an agent. */
export function nodeOptionsFor(setup: AgentSetup, log: Logger, timeoutMs?: number): Q2QOptions & { timeoutMs?: number } {
  const { config } = setup;
  return {
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
