/**
 * `vertex agent [--config FILE]`: the daemon (agent/daemon.ts) in the
 * foreground, until SIGINT/SIGTERM; SIGHUP re-reads the file and applies
 * its forwards and exposes.
 *
 * Also the set-up the other agent-facing commands share: which config file
 * (`--config`, else `<home>/agent.yaml` when it exists, else the defaults),
 * which control socket, which resolver and node factory.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { AgentDaemon, type CreateNode } from '../../agent/daemon';
import type { HomeStore } from '../../agent/home-store';
import { Q2QNode, connectQ2Q, type Identity, type Q2QOptions, type Q2QStream } from '../../q2q';
import { parseAddress } from '../../q2q/address';
import { renewCertificate } from '../../q2q/control/accounts';
import { openServerConnection } from '../../q2q/control/server-connection';
import type { ServerEndpoint, ServerResolver } from '../../q2q/control/discovery';
import { asVertexError } from '../../q2q/errors';
import type { Logger } from '../../q2q/util/log';
import { buildAgentConfig, loadAgentConfig, resolveControlSocket, type AgentOverrides } from '../../config/load';
import { formatHostPort, type AgentConfig } from '../../config/schema';
import { homeDir, homeStore, serverResolver, type GlobalArgs } from '../context';
import { createLogger } from '../logger';
import { readConfigFile, stopOnSignals } from './server';

export const AGENT_CONFIG_FILE = 'agent.yaml';

export interface AgentArgs extends GlobalArgs {
  config?: string;
}

export interface AgentSetup {
  config: AgentConfig;
  /** The file the config came from, or null for the built-in defaults. */
  configFile: string | null;
  home: HomeStore;
  homeDir: string;
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

export function agentSetup(args: AgentArgs, overrides?: AgentOverrides): AgentSetup {
  const configFile = agentConfigFile(args);
  const config = readAgentConfig(configFile, overrides);
  const dir = homeDir(args);
  const servers = new Map<string, ServerEndpoint>(Object.entries(config.domains).map(([domain, d]) => [domain, { host: d.server.host, port: d.server.port }]));
  return {
    config,
    configFile,
    home: homeStore(args),
    homeDir: dir,
    socketPath: resolveControlSocket(config.control.socket, { env: process.env, home: dir }),
    resolve: serverResolver(args, servers),
  };
}

export function agentLogger(args: GlobalArgs, config: AgentConfig): Logger {
  return createLogger({ level: args.logLevel ?? config.log.level, name: 'vertex-agent' });
}

export const createQ2QNode: CreateNode = (identity, options) => new Q2QNode(identity, options);

/** Renewal over a control connection authenticated with the current certificate. */
export function renewWith(setup: AgentSetup, log: Logger): (current: Identity) => Promise<Identity> {
  return async (current) => {
    const connection = await openServerConnection({
      domain: parseAddress(current.address).domain,
      resolve: setup.resolve,
      trust: setup.home,
      credentials: { keyPem: current.keyPem, certPem: current.certPem },
      log,
    });
    try {
      const next = await renewCertificate(connection, current.address);
      return { address: next.address, keyPem: next.keyPem, certPem: next.certPem };
    } finally {
      connection.close();
    }
  };
}

/** The node options an agent config implies, for one-off connects without an agent. */
export function nodeOptions(setup: AgentSetup, log: Logger, timeoutMs?: number): Q2QOptions & { timeoutMs?: number } {
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
  return connectQ2Q(identity, target, nodeOptions(setup, log, timeoutMs));
}

/** What the agent prints once it runs; tests read the addresses from here. */
export function describeRunning(daemon: AgentDaemon, extra: string[] = []): string {
  const status = daemon.status();
  const lines = [`vertex agent: ${status.identity} running; server ${status.server.state}${status.server.server ? ` (${status.server.server})` : ''}`];
  if (status.socks) lines.push(`  socks5 listening on ${status.socks.listen} (auth ${status.socks.auth}, passthrough ${status.socks.passthrough ? 'on' : 'off'})`);
  for (const f of daemon.forwardAddresses) lines.push(`  forward ${formatHostPort(f.listen)} -> ${f.to}`);
  for (const e of status.exposed) lines.push(`  expose ${e.address} -> ${e.target} (allow ${e.allow.join(', ')})`);
  if (status.control) lines.push(`  control socket ${status.control.socket}`);
  return [...lines, ...extra].join('\n');
}

export interface RunAgentOptions {
  socks?: boolean;
  control?: boolean;
  /** Reload on SIGHUP from this file. */
  reloadFrom?: string | null;
}

/** Starts a daemon for `setup` and stops it on SIGINT/SIGTERM. */
export async function runAgent(args: GlobalArgs, setup: AgentSetup, opts: RunAgentOptions = {}): Promise<AgentDaemon> {
  const log = agentLogger(args, setup.config);
  const daemon = new AgentDaemon({
    config: setup.config,
    home: setup.home,
    resolve: setup.resolve,
    createNode: createQ2QNode,
    renew: renewWith(setup, log),
    controlSocket: opts.control === false ? null : setup.socketPath,
    socks: opts.socks ?? true,
    log,
  });
  await daemon.start();
  stopOnSignals(() => daemon.stop());
  const reloadFrom = opts.reloadFrom;
  if (reloadFrom) {
    process.on('SIGHUP', () => {
      let next: AgentConfig;
      try {
        next = readAgentConfig(reloadFrom);
      } catch (err) {
        log.error({ err: asVertexError(err).message }, 'reload: config not applied');
        return;
      }
      daemon.reload(next).then(
        (summary) => process.stdout.write(`vertex agent: reloaded ${reloadFrom}: ${JSON.stringify(summary)}\n`),
        (err: unknown) => log.error({ err: asVertexError(err).message }, 'reload failed'),
      );
    });
  }
  return daemon;
}

export const agentCommand: CommandModule<GlobalArgs, AgentArgs> = {
  command: 'agent',
  describe: 'run the agent: SOCKS5, forwards, exposes and the local control API',
  builder: (y) => y.option('config', { type: 'string', describe: `agent.yaml [<home>/${AGENT_CONFIG_FILE}]` }) as Argv<AgentArgs>,
  handler: async (args) => {
    const setup = agentSetup(args);
    const daemon = await runAgent(args, setup, { reloadFrom: setup.configFile });
    process.stdout.write(`${describeRunning(daemon)}\n`);
  },
};
