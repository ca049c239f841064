/**
 * `vertex receive [DIR] [--yes] [--from PATTERN]... [--overwrite] [--once]`:
 * a standalone node that exposes the `file-transfer` service and receives
 * into DIR until Ctrl-C (or after one transfer with --once).
 *
 * Also home to the node set-up `vertex send` shares: identity from --home,
 * servers from --resolve and agent.yaml, routes and peer listener from
 * flags over the config file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import type { Argv, CommandModule } from 'yargs';
import {
  createProgressView, FILE_TRANSFER_SERVICE, formatBytes, progressMode, receiveFiles,
  type IncomingOffer, type ProgressView, type ReceiveResult,
} from '../../agent/file-transfer';
import type { HomeStore, StoredIdentity } from '../../agent/home-store';
import { buildAgentConfig, loadAgentConfig, type AgentConfig } from '../../config/load';
import { parseAllowPattern, type HostPort } from '../../config/schema';
import { listenQ2Q, type Q2QOptions, type Q2QStream } from '../../q2q';
import type { ServerEndpoint } from '../../q2q/control/discovery';
import { asVertexError, vertexError } from '../../q2q/errors';
import type { Logger } from '../../q2q/util/log';
import { cliLogger, homeDir, homeStore, serverResolver, type GlobalArgs } from '../context';
import { EXIT, EXIT_CODES } from '../exit-codes';

// ---- the node set-up shared with `vertex send` ----

export interface NodeArgs extends GlobalArgs {
  config?: string;
  identity?: string;
  routes?: string[];
  peerListen?: string;
  advertise?: string[];
}

export function nodeOptions<T>(y: Argv<T>): Argv<T & NodeArgs> {
  return y
    .option('config', { type: 'string', describe: 'agent config file [<home>/agent.yaml when it exists]' })
    .option('identity', { type: 'string', describe: 'which stored identity to use (user@domain) [the default identity]' })
    .option('routes', { type: 'string', array: true, describe: 'routes that may be used, in order: tcp, ptcp, relay (comma-separated or repeated)' })
    .option('peer-listen', { type: 'string', describe: 'HOST:PORT for direct peer connections [0.0.0.0:0]' })
    .option('advertise', { type: 'string', array: true, describe: 'addresses to offer peers instead of the local interfaces' }) as unknown as Argv<T & NodeArgs>;
}

export interface NodeSetup {
  identity: StoredIdentity;
  options: Q2QOptions;
  home: HomeStore;
  log: Logger;
}

/** Reads agent.yaml (if any) under the flags, and builds what listenQ2Q/connectQ2Q need. */
export function nodeSetup(args: NodeArgs): NodeSetup {
  const home = homeStore(args);
  const config = agentConfig(args);
  // agent.yaml's log level is the daemon's; a foreground command stays quiet unless --log-level says otherwise.
  const log = cliLogger(args);
  const servers = new Map<string, ServerEndpoint>(Object.entries(config.domains).map(([d, v]) => [d, { host: v.server.host, port: v.server.port }]));
  const identity = home.loadIdentity(args.identity ?? config.identity);
  const options: Q2QOptions = {
    resolve: serverResolver(args, servers),
    trust: home,
    routes: config.routes,
    relayDelayMs: config.relayDelayMs,
    peerListen: hostPort(config.peerListen),
    ...(config.advertise !== undefined && { advertise: config.advertise }),
    log,
  };
  return { identity, options, home, log };
}

function hostPort(hp: HostPort): { host: string; port: number } {
  return { host: hp.host, port: hp.port };
}

function agentConfig(args: NodeArgs): AgentConfig {
  const routes = args.routes?.flatMap((r) => r.split(',')).map((r) => r.trim().toLowerCase()).filter((r) => r !== '');
  const overrides = {
    ...(routes !== undefined && { routes: routes as Array<'tcp' | 'ptcp' | 'relay'> }),
    ...(args.peerListen !== undefined && { peer_listen: args.peerListen }),
    ...(args.advertise !== undefined && { advertise: args.advertise }),
  };
  const file = args.config ?? path.join(homeDir(args), 'agent.yaml');
  let text: string | null = null;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if (args.config !== undefined || (err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw vertexError('Config', `read ${file}: ${(err as Error).message}`, err);
    }
  }
  return text === null ? buildAgentConfig(overrides) : loadAgentConfig(text, file, { overrides });
}

/** Stops `stop` on the first SIGINT/SIGTERM; a second one exits at once. */
export function onInterrupt(stop: (signal: NodeJS.Signals) => void): () => void {
  let seen = false;
  const handler = (signal: NodeJS.Signals) => {
    if (seen) process.exit(EXIT.other);
    seen = true;
    stop(signal);
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return () => {
    process.off('SIGINT', handler);
    process.off('SIGTERM', handler);
  };
}

export function elapsedText(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

export function rateText(bytes: number, ms: number): string {
  return ms > 0 ? `${formatBytes((bytes * 1000) / ms)}/s` : '-';
}

// ---- vertex receive ----

interface ReceiveArgs extends NodeArgs {
  dir?: string;
  yes?: boolean;
  from?: string[];
  overwrite?: boolean;
  once?: boolean;
}

/** How long Ctrl-C waits for cancelled transfers to keep their partial data and report. */
const STOP_GRACE_MS = 5000;
/** Files listed one per line after a summary, up to this many. */
const LISTED_FILES = 10;

async function run(args: ReceiveArgs): Promise<void> {
  const dir = checkDir(path.resolve(args.dir ?? '.'));
  const from = (args.from ?? []).map((p) => parseAllowPattern(p));
  if (!args.yes && !process.stdin.isTTY) {
    throw vertexError('Usage', 'receive: standard input is not a terminal, so offers cannot be asked about; pass --yes to accept them (and --from to limit who may send)');
  }
  const { identity, options, log } = nodeSetup(args);
  const json = Boolean(args.json);
  /** Transfers in progress, each with its cancel switch and a promise settled when it is reported. */
  const active = new Map<AbortController, Promise<void>>();
  const busy = new Set<string>();
  const ask = args.yes ? null : new Asker();
  let finished: (status: number) => void = () => undefined;
  const done = new Promise<number>((resolve) => { finished = resolve; });

  const onConnection = (stream: Q2QStream) => {
    if (args.once && active.size > 0) {
      stream.destroy();
      return;
    }
    const controller = new AbortController();
    // The rate counts from the acceptance: asking a person takes a while.
    let started = performance.now();
    let view: ProgressView | null = null;
    const reported = receiveFiles(stream, {
      dir,
      peer: stream.peer,
      ...(from.length > 0 && { allow: from }),
      overwrite: Boolean(args.overwrite),
      busy,
      log,
      signal: controller.signal,
      ...(ask && { decide: (offer: IncomingOffer) => ask.decide(offer, dir) }),
      onAccept: (offer) => {
        started = performance.now();
        if (!json) process.stderr.write(`receiving ${describeOffer(offer)} from ${stream.peer} via ${stream.route}\n`);
        view = createProgressView({ mode: progressMode(json, process.stderr), out: process.stderr, label: `from ${stream.peer}`, route: stream.route });
      },
      onProgress: (p) => view?.update(p),
    }).then((result) => {
      view?.stop();
      report(json, result, stream, performance.now() - started);
      return EXIT.ok;
    }, (err: unknown) => {
      view?.stop();
      const failure = asVertexError(err);
      if (json) process.stdout.write(`${JSON.stringify({ event: 'failed', from: stream.peer, route: stream.route, code: failure.code, message: failure.message })}\n`);
      else process.stderr.write(`vertex: ${failure.message}\n`);
      return EXIT_CODES[failure.code];
    }).then((status) => {
      active.delete(controller);
      if (args.once) finished(status);
    }, () => undefined);
    active.set(controller, reported);
  };

  const node = await listenQ2Q(identity, {
    [FILE_TRANSFER_SERVICE]: { ...(from.length > 0 && { allow: from }), onConnection },
  }, options);
  const allowText = from.length > 0 ? from.join(', ') : `anyone in ${identity.address.slice(identity.address.indexOf('@') + 1)}`;
  if (json) {
    process.stdout.write(`${JSON.stringify({ event: 'listening', address: identity.address, service: FILE_TRANSFER_SERVICE, dir, from: from.length > 0 ? from : null })}\n`);
  } else {
    process.stdout.write(`receiving files into ${dir} as ${identity.address} (from ${allowText}); ${args.once ? 'exits after one transfer' : 'Ctrl-C stops'}\n`);
  }
  const removeHandler = onInterrupt((signal) => {
    if (!json) process.stderr.write(`vertex: ${signal}, stopping\n`);
    for (const c of active.keys()) c.abort();
    // Let cancelled transfers flush their partial files and report, for a bounded time.
    const grace = new Promise<void>((resolve) => setTimeout(resolve, STOP_GRACE_MS).unref());
    void Promise.race([Promise.allSettled(active.values()), grace]).then(() => finished(EXIT.ok));
  });
  const status = await done;
  removeHandler();
  ask?.close();
  await node.stop();
  process.exit(status);
}

function checkDir(dir: string): string {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (err) {
    throw vertexError('Usage', `receive: ${dir}: ${(err as Error).message}`, err);
  }
  if (!st.isDirectory()) throw vertexError('Usage', `receive: ${dir} is not a directory`);
  try {
    fs.accessSync(dir, fs.constants.W_OK);
  } catch (err) {
    throw vertexError('TransferFailed', `receive: cannot write to ${dir}: ${(err as Error).message}`, err);
  }
  return fs.realpathSync(dir);
}

function describeOffer(offer: IncomingOffer): string {
  const count = offer.files.length;
  return `${count} file${count === 1 ? '' : 's'} (${formatBytes(offer.totalBytes)})`;
}

function report(json: boolean, result: ReceiveResult, stream: Q2QStream, ms: number): void {
  if (json) {
    process.stdout.write(`${JSON.stringify({
      event: 'received', from: result.peer, route: stream.route, files: result.files,
      bytesTotal: result.bytesTotal, bytesReceived: result.bytesReceived, ms: Math.round(ms),
    })}\n`);
    return;
  }
  const resumed = result.bytesTotal - result.bytesReceived;
  const lines = [
    `received ${result.files.length} file${result.files.length === 1 ? '' : 's'} (${formatBytes(result.bytesTotal)}) from ${result.peer} ` +
    `via ${stream.route} in ${elapsedText(ms)}, ${rateText(result.bytesReceived, ms)}; SHA-256 verified` +
    (resumed > 0 ? `; resumed, ${formatBytes(result.bytesReceived)} crossed the wire` : ''),
    ...result.files.slice(0, LISTED_FILES).map((f) => `  ${f.file}  ${formatBytes(f.size)}  sha256:${f.sha256}`),
  ];
  if (result.files.length > LISTED_FILES) lines.push(`  (and ${result.files.length - LISTED_FILES} more)`);
  process.stdout.write(`${lines.join('\n')}\n`);
}

/** Asks on the terminal, one offer at a time. */
class Asker {
  #queue: Promise<unknown> = Promise.resolve();
  #rl: readline.Interface | null = null;

  decide(offer: IncomingOffer, dir: string): Promise<boolean> {
    const next = this.#queue.then(() => this.#ask(offer, dir));
    this.#queue = next.catch(() => undefined);
    return next;
  }

  async #ask(offer: IncomingOffer, dir: string): Promise<boolean> {
    this.#rl ??= readline.createInterface({ input: process.stdin, output: process.stderr });
    const shown = offer.files.slice(0, LISTED_FILES).map((f) => `  ${JSON.stringify(f.path)}  ${formatBytes(f.size)}`);
    if (offer.files.length > LISTED_FILES) shown.push(`  (and ${offer.files.length - LISTED_FILES} more)`);
    process.stderr.write(`${offer.peer} offers ${describeOffer(offer)}:\n${shown.join('\n')}\n`);
    const answer = await new Promise<string>((resolve) => this.#rl?.question(`accept into ${dir}? [y/N] `, resolve));
    return /^y(es)?$/i.test(answer.trim());
  }

  close(): void {
    this.#rl?.close();
  }
}

export const receiveCommand: CommandModule<GlobalArgs, ReceiveArgs> = {
  command: 'receive [dir]',
  describe: 'receive files sent with `vertex send` into DIR (default: the current directory)',
  builder: (y) => nodeOptions(y)
    .positional('dir', { type: 'string', describe: 'where files land' })
    .option('yes', { alias: 'y', type: 'boolean', describe: 'accept offers without asking (required when stdin is not a terminal)' })
    .option('from', { type: 'string', array: true, describe: 'who may send: *, *@domain or user@domain (repeatable) [anyone in your own domain]' })
    .option('overwrite', { type: 'boolean', describe: 'replace existing files of the same name' })
    .option('once', { type: 'boolean', describe: 'exit after one transfer, with its status' })
    .example('$0 receive ~/Downloads --from "*@example.com"', 'ask about each offer from example.com')
    .example('$0 receive in --yes --from alice@a.example --once', 'take one transfer from alice without asking') as unknown as Argv<ReceiveArgs>,
  handler: (args) => run(args),
};
