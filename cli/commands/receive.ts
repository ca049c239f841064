/**
 * `vertex receive [DIR] [--yes] [--from PATTERN]... [--overwrite] [--once]`:
 * a standalone node that exposes the `file-transfer` service and receives
 * into DIR until Ctrl-C (or after one transfer with --once).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import type { Argv, CommandModule } from 'yargs';
import {
  createProgressView, FILE_TRANSFER_SERVICE, formatBytes, progressMode, quoteName, receiveFiles,
  type IncomingOffer, type ProgressView, type ReceiveResult,
} from '../../agent/file-transfer';
import { parseAllowPattern } from '../../config/schema';
import { listenQ2Q, type Q2QOptions, type Q2QStream } from '../../q2q';
import { formatDeviceAddress, parseAddress, parseDevice } from '../../q2q/address';
import { defaultAllow } from '../../q2q/negotiate/allow';
import { asVertexError, vertexError } from '../../q2q/errors';
import { agentForNode, cliLogger, machineDevice, NODE_OPTIONS, nodeSetup, receiveDevice, repeatable, type GlobalArgs, type NodeArgs } from '../context';
import { openControl, sendRequest } from '../../agent/control-client';
import { RECEIVE_EVENT, RECEIVE_INFO, type ReceiveEvent } from '../../agent/control-protocol';
import { FramedTunnel } from '../../agent/control-tunnel';
import type * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { EXIT, EXIT_CODES } from '../exit-codes';
import { elapsedText, rateText } from '../output';
import { onStopSignals } from '../signals';

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
  // Through the running agent when there is one: it already holds this identity's
  // session, so a second node would only add a device (or, before devices, take it over).
  const agent = await agentForNode(args);
  let address: string;
  let device: string;
  let allow: readonly string[];
  let start: () => Promise<{ stop(): Promise<void> }>;
  const json = Boolean(args.json);
  const log = cliLogger(args);
  if (agent) {
    const info = RECEIVE_INFO.parse(await sendRequest(agent.socket, 'receive', from.length > 0 ? { allow: from } : {}, {
      waitingFor: `the agent (${agent.path}) to take the file-transfer service`,
    }));
    ({ address, device, allow } = info);
    start = async () => {
      const detach = attachToAgent(agent, (stream, meta) => onConnection(stream, meta), () => {
        const message = `receive: the agent (${agent.path}) went away; no more offers arrive here`;
        if (json) process.stdout.write(`${JSON.stringify({ event: 'failed', code: 'Offline', message })}\n`);
        else process.stderr.write(`vertex: ${message}\n`);
        for (const c of active.keys()) c.abort();
        finished(EXIT_CODES.Offline);
      });
      return { stop: async () => detach() };
    };
  } else {
    const { identity, setup, options: nodeOptions } = nodeSetup(args);
    device = args.device === undefined ? receiveDevice(machineDevice(setup.config)) : parseDevice(args.device);
    const options: Q2QOptions = { ...nodeOptions, device };
    address = identity.address;
    // Without --from only the owner may send (any of the owner's devices): *@domain and * are written out.
    allow = from.length > 0 ? from : defaultAllow(identity.address);
    start = async () => {
      const node = await listenQ2Q(identity, {
        [FILE_TRANSFER_SERVICE]: { allow: [...allow], onConnection: (stream: Q2QStream) => onConnection(stream, stream) },
      }, options);
      // Another node took this device name over: it gets the offers now, so say so and stop.
      node.once('replaced', (by: string) => {
        const message = `receive: a newer node (from ${by}) is online as ${me} and gets the offers now; stopping (use --device to run both)`;
        if (json) process.stdout.write(`${JSON.stringify({ event: 'failed', code: 'Offline', message })}\n`);
        else process.stderr.write(`vertex: ${message}\n`);
        for (const c of active.keys()) c.abort();
        finished(EXIT_CODES.Offline);
      });
      return node;
    };
  }
  const me = formatDeviceAddress(parseAddress(address), device);
  /** Transfers in progress, each with its cancel switch and a promise settled when it is reported. */
  const active = new Map<AbortController, Promise<void>>();
  const busy = new Set<string>();
  const ask = args.yes ? null : new Asker();
  let finished: (status: number) => void = () => undefined;
  const done = new Promise<number>((resolve) => { finished = resolve; });

  const onConnection = (stream: Duplex, meta: StreamMeta) => {
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
      peer: meta.peer,
      allow,
      overwrite: Boolean(args.overwrite),
      busy,
      log,
      signal: controller.signal,
      ...(ask && { decide: (offer: IncomingOffer) => ask.decide(offer, dir) }),
      onAccept: (offer) => {
        started = performance.now();
        if (!json) process.stderr.write(`receiving ${describeOffer(offer)} from ${meta.peer} via ${meta.route}\n`);
        view = createProgressView({ mode: progressMode(json, process.stderr), out: process.stderr, label: `from ${meta.peer}`, route: meta.route });
      },
      onProgress: (p) => view?.update(p),
    }).then((result) => {
      view?.stop();
      report(json, result, meta, performance.now() - started);
      return EXIT.ok;
    }, (err: unknown) => {
      view?.stop();
      const failure = asVertexError(err);
      if (json) process.stdout.write(`${JSON.stringify({ event: 'failed', from: meta.peer, route: meta.route, code: failure.code, message: failure.message })}\n`);
      else process.stderr.write(`vertex: ${failure.message}\n`);
      return EXIT_CODES[failure.code];
    }).then((status) => {
      active.delete(controller);
      if (args.once) finished(status);
    }, () => undefined);
    active.set(controller, reported);
  };

  const node = await start();
  const allowText = from.length > 0 ? from.join(', ') : `only ${address} itself; pass --from to let others send`;
  const via = agent ? 'agent' : 'direct';
  if (json) {
    process.stdout.write(`${JSON.stringify({ event: 'listening', address, device, service: FILE_TRANSFER_SERVICE, dir, from: allow, via })}\n`);
  } else {
    process.stdout.write(`receiving files into ${dir} as ${address}, device ${device} (${me})${agent ? ' through the agent' : ''} (from ${allowText}); ${args.once ? 'exits after one transfer' : 'Ctrl-C stops'}\n`);
  }
  const signals = onStopSignals(() => {
    for (const c of active.keys()) c.abort();
    // Let cancelled transfers flush their partial files and report, for a bounded time.
    const grace = new Promise<void>((resolve) => setTimeout(resolve, STOP_GRACE_MS).unref());
    void Promise.race([Promise.allSettled(active.values()), grace]).then(() => finished(EXIT.ok));
  }, { exit: false, announce: !json });
  const status = signals.finish(await done);
  ask?.close();
  await node.stop();
  process.exit(status);
}

/** What a transfer's stream says about its other end (a Q2QStream, or the agent's announcement). */
interface StreamMeta {
  peer: string;
  route: string;
}

/**
 * Follows the agent's announcements on the `receive` connection and claims
 * each sender with `receive-accept` on a connection of its own, whose framed
 * bytes are that sender's stream.
 */
function attachToAgent(agent: { socket: net.Socket; path: string }, onStream: (stream: Duplex, meta: StreamMeta) => void, onGone: () => void): () => void {
  let stopping = false;
  const lines = readline.createInterface({ input: agent.socket, crlfDelay: Infinity });
  lines.on('line', (line) => {
    let event: ReceiveEvent;
    try {
      event = RECEIVE_EVENT.parse(JSON.parse(line));
    } catch {
      return;
    }
    void (async () => {
      const control = await openControl(agent.path);
      if (!control) return;
      try {
        await sendRequest(control, 'receive-accept', { id: event.id }, { waitingFor: `the agent (${agent.path}) to hand over the transfer from ${event.peer}` });
      } catch {
        control.destroy();
        return;
      }
      onStream(new FramedTunnel(control, { other: `the agent (${agent.path})` }), event);
    })().catch(() => undefined);
  });
  agent.socket.on('error', () => undefined);
  agent.socket.once('close', () => {
    if (!stopping) onGone();
  });
  return () => {
    stopping = true;
    lines.close();
    agent.socket.destroy();
  };
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

function report(json: boolean, result: ReceiveResult, stream: StreamMeta, ms: number): void {
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
    ...result.files.slice(0, LISTED_FILES).map((f) => `  ${quoteName(f.file)}  ${formatBytes(f.size)}  sha256:${f.sha256}`),
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
    const shown = offer.files.slice(0, LISTED_FILES).map((f) => `  ${quoteName(f.path)}  ${formatBytes(f.size)}`);
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
  builder: (y) => y.options(NODE_OPTIONS)
    .positional('dir', { type: 'string', describe: 'where files land' })
    .option('yes', { alias: 'y', type: 'boolean', describe: 'accept offers without asking (required when stdin is not a terminal)' })
    .option('from', repeatable('who may send: *, *@domain or user@domain [only you, on your other devices]'))
    .option('overwrite', { type: 'boolean', describe: 'replace existing files of the same name' })
    .option('once', { type: 'boolean', describe: 'exit after one transfer, with its status' })
    .example('$0 receive ~/Downloads --from "*@example.com"', 'ask about each offer from example.com')
    .example('$0 receive in --yes --from alice@a.example --once', 'take one transfer from alice without asking') as unknown as Argv<ReceiveArgs>,
  handler: (args) => run(args),
};
