/**
 * Running an AgentDaemon from the CLI: what `vertex agent`, the foreground
 * `vertex expose`/`forward` and `vertex demo` share. The daemon itself
 * (agent/daemon.ts) reads nothing from argv, env or files; this hands it
 * the config, the home, the resolver, the logger and the node factory.
 */
import * as path from 'node:path';
import { AgentLock } from '../agent/agent-lock';
import { RUNTIME_STATE_FILE, RuntimeStateFile } from '../agent/runtime-state';
import { AgentDaemon, type CreateNode } from '../agent/daemon';
import { AgentMetrics } from '../agent/metrics';
import { MetricsHttpServer } from '../q2q/util/metrics-http';
import { Q2QNode, type Identity } from '../q2q';
import { parseAddress } from '../q2q/address';
import { renewCertificate } from '../q2q/control/accounts';
import { openServerConnection } from '../q2q/control/server-connection';
import { asVertexError } from '../q2q/errors';
import type { Logger } from '../q2q/util/log';
import { formatHostPort, type AgentConfig } from '../config/schema';
import { logLevelOf, readAgentConfig, type AgentSetup, type GlobalArgs } from './context';
import { tuneGcForBulk } from './gc-tuning';
import { createLogger } from './logger';
import { describeAllow } from './output';
import { onStopSignals } from './signals';

export function agentLogger(args: GlobalArgs, config: AgentConfig): Logger {
  return createLogger({ level: logLevelOf(args) ?? config.log.level, name: 'vertex-agent' });
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

/** What the agent prints once it runs; tests read the addresses from here. */
export function describeRunning(daemon: AgentDaemon, extra: string[] = []): string {
  const status = daemon.status();
  const lines = [`vertex agent: ${status.identity} running as device ${status.device}; server ${status.server.state}${status.server.server ? ` (${status.server.server})` : ''}`];
  if (status.socks) lines.push(`  socks5 listening on ${status.socks.listen} (auth ${status.socks.auth}, passthrough ${status.socks.passthrough ? 'on' : 'off'})`);
  for (const f of daemon.forwardAddresses) lines.push(`  forward ${formatHostPort(f.listen)} -> ${f.to}`);
  for (const e of status.exposed) lines.push(`  expose ${e.address} -> ${e.target} (allow ${describeAllow(e.allow, status.identity)})`);
  if (status.control) lines.push(`  control socket ${status.control.socket}`);
  return [...lines, ...extra].join('\n');
}

export interface RunAgentOptions {
  /** Serve /metrics when the config has `metrics:` (vertex agent); one-shot commands do not. */
  metrics?: boolean;
  socks?: boolean;
  control?: boolean;
  /** Reload on SIGHUP from this file. */
  reloadFrom?: string | null;
}

/** Starts a daemon for `setup` and stops it on SIGINT/SIGTERM. */
export async function runAgent(args: GlobalArgs, setup: AgentSetup, opts: RunAgentOptions = {}): Promise<AgentDaemon> {
  tuneGcForBulk();
  const log = agentLogger(args, setup.config);
  // One agent per home, checked before anything reaches the server (issue 13).
  const identity = setup.home.loadIdentity(setup.config.identity).address;
  const lock = AgentLock.acquire(setup.homeDir, { identity, socket: opts.control === false ? null : setup.socketPath, config: setup.configFile });
  process.once('exit', () => lock.release());
  const metricsListen = opts.metrics ? setup.config.metrics?.listen : undefined;
  const metrics = metricsListen ? new AgentMetrics() : undefined;
  const daemon = new AgentDaemon({
    ...(metrics ? { metrics } : {}),
    config: setup.config,
    home: setup.home,
    resolve: setup.resolve,
    createNode: createQ2QNode,
    renew: renewWith(setup, log),
    controlSocket: opts.control === false ? null : setup.socketPath,
    // Only an agent that others can change (it has a control socket) persists what they add.
    ...(opts.control !== false && { runtime: new RuntimeStateFile(path.join(setup.homeDir, RUNTIME_STATE_FILE)) }),
    socks: opts.socks ?? true,
    log,
  });
  // Handlers first: a signal that arrives while the agent starts still stops it cleanly.
  const starting = daemon.start();
  let http: MetricsHttpServer | undefined;
  onStopSignals(async () => {
    await starting.catch(() => undefined);
    await http?.close();
    await daemon.stop();
    lock.release();
  });
  await starting;
  if (metrics && metricsListen) {
    http = new MetricsHttpServer(metrics, { log: log.child({ component: 'metrics' }) });
    const bound = await http.listen(metricsListen.host, metricsListen.port);
    process.stdout.write(`vertex agent: metrics on http://${formatHostPort({ host: metricsListen.host, port: bound.port })}/metrics\n`);
  }
  const reloadFrom = opts.reloadFrom;
  // SIGHUP: try the home server at once (a daemon people trust: `systemctl reload`,
  // or a hook after a network change), and re-read the config when there is a file.
  process.on('SIGHUP', () => {
    daemon.reconnectNow();
    if (!reloadFrom) return;
    let next: AgentConfig;
    try {
      next = readAgentConfig(reloadFrom, setup.overrides);
    } catch (err) {
      log.error({ err: asVertexError(err).message }, 'reload: config not applied');
      return;
    }
    daemon.reload(next).then(
      (summary) => process.stdout.write(`vertex agent: reloaded ${reloadFrom}: ${JSON.stringify(summary)}\n`),
      (err: unknown) => log.error({ err: asVertexError(err).message }, 'reload failed'),
    );
  });
  return daemon;
}
