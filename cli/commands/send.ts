/**
 * `vertex send FILE... USER@DOMAIN`: offers files and directories to a
 * peer running `vertex receive`, and sends them over whatever route the
 * connection ladder picks. Sending the same file again after an
 * interruption resumes where the receiver's partial copy ends.
 */
import * as fs from 'node:fs';
import type { Argv, CommandModule } from 'yargs';
import {
  collectSources, createProgressView, FILE_TRANSFER_SERVICE, formatBytes, prepareFiles, progressMode, sendFiles,
  type ProgressView,
} from '../../agent/file-transfer';
import { formatDeviceAddress, parseAddress, parseDeviceAddress } from '../../q2q/address';
import { connectQ2Q } from '../../q2q';
import { sendRequest } from '../../agent/control-client';
import { TUNNEL_INFO, type TunnelInfo } from '../../agent/control-protocol';
import { FramedTunnel } from '../../agent/control-tunnel';
import type { Duplex } from 'node:stream';
import { asVertexError, isVertexError, vertexError, VertexError } from '../../q2q/errors';
import { EXIT } from '../exit-codes';
import { agentForNode, NODE_OPTIONS, nodeSetup, type GlobalArgs, type NodeArgs } from '../context';
import { elapsedText, rateText } from '../output';
import { onStopSignals } from '../signals';

/** Seconds `vertex send` waits for a connection unless --connect-timeout says otherwise. */
const DEFAULT_CONNECT_TIMEOUT_S = 15;
/** Extra time for the agent's answer beyond its own connect timeout. */
const AGENT_REPLY_MARGIN_MS = 3_000;

interface SendArgs extends NodeArgs {
  paths: string[];
  connectTimeout?: number;
}

async function run(args: SendArgs): Promise<void> {
  const paths = [...(args.paths ?? [])];
  const targetText = paths.pop();
  if (targetText === undefined || paths.length === 0) throw vertexError('Usage', 'send: expected FILE... USER@DOMAIN (or USER+DEVICE@DOMAIN)');
  if (targetText.includes(':')) {
    throw vertexError('Usage', `send: ${targetText}: name the receiver as user@domain; the service is always ${FILE_TRANSFER_SERVICE}`);
  }
  const named = parseDeviceAddress(targetText);
  const target = formatDeviceAddress(named.address, named.device);
  const json = Boolean(args.json);
  const sources = await collectSources(paths);
  // Through the running agent when there is one (its session, its status), else a node of our own.
  const agent = await agentForNode(args);
  const { identity, options } = agent ? { identity: null, options: null } : nodeSetup(args);

  const controller = new AbortController();
  const signals = onStopSignals(() => controller.abort(), { exit: false });
  let view: ProgressView | null = null;
  try {
    const totalBytes = await sumSizes(sources.map((s) => s.file));
    const hashing = createProgressView({ mode: progressMode(json, process.stderr), out: process.stderr, label: 'hashing', route: 'local' });
    let hashed = 0;
    const files = await prepareFiles(sources, (n) => {
      hashed += n;
      hashing.update({ bytesDone: hashed, bytesTotal: totalBytes, wireBytes: hashed, file: '', fileIndex: 0, fileCount: 1 });
    });
    hashing.stop();
    if (controller.signal.aborted) throw vertexError('TransferFailed', `send to ${target}: cancelled`);

    const started = performance.now();
    const service = `${target}:${FILE_TRANSFER_SERVICE}`;
    const opened: Promise<{ stream: Duplex; info: Omit<TunnelInfo, 'target'> }> = agent
      ? sendRequest(agent.socket, 'connect', { target: service, framed: true, timeoutMs: (args.connectTimeout ?? DEFAULT_CONNECT_TIMEOUT_S) * 1000 }, {
        timeoutMs: (args.connectTimeout ?? DEFAULT_CONNECT_TIMEOUT_S) * 1000 + AGENT_REPLY_MARGIN_MS,
        waitingFor: `the agent (${agent.path}) to connect to ${service}`,
      }).then((result) => ({ stream: new FramedTunnel(agent.socket, { other: `the agent (${agent.path})` }), info: TUNNEL_INFO.parse(result) }))
      : connectQ2Q(identity!, service, {
        ...options!,
        ...(args.connectTimeout !== undefined && { connectTimeoutMs: args.connectTimeout * 1000, timeoutMs: args.connectTimeout * 1000 }),
      }).then((stream) => ({ stream, info: stream }));
    const { stream, info: conn } = await opened.catch((err: unknown) => {
      if (isVertexError(err, 'NotExposed') || isVertexError(err, 'Offline')) {
        throw new VertexError(err.code, `${err.message} (is ${target} running \`vertex receive\`?)`, { cause: err });
      }
      throw err;
    });
    const total = files.reduce((sum, f) => sum + f.size, 0);
    if (!json) {
      process.stderr.write(`connected to ${formatDeviceAddress(parseAddress(conn.peer), conn.device)} via ${conn.route} in ${elapsedText(conn.connectMs)}${agent ? ' (through the agent)' : ''}; ` +
        `offering ${files.length} file${files.length === 1 ? '' : 's'} (${formatBytes(total)})\n`);
    }
    view = createProgressView({ mode: progressMode(json, process.stderr), out: process.stderr, label: `to ${conn.peer}`, route: conn.route });
    // The rate counts from the acceptance: a person may take a while to say yes.
    let accepted: number | null = null;
    const result = await sendFiles(stream, files, {
      peer: conn.peer,
      signal: controller.signal,
      onProgress: (p) => {
        if (p.phase === 'waiting') {
          if (!json) process.stderr.write(`waiting for ${conn.peer} to accept\n`);
          return;
        }
        accepted ??= performance.now();
        view?.update(p);
      },
    });
    view.stop();
    const ms = performance.now() - (accepted ?? started);
    if (json) {
      process.stdout.write(`${JSON.stringify({
        event: 'sent', to: result.peer, route: conn.route, via: agent ? 'agent' : 'direct', connectMs: Math.round(conn.connectMs), files: result.files,
        bytesTotal: result.bytesTotal, bytesSent: result.bytesSent, ms: Math.round(ms), totalMs: Math.round(performance.now() - started),
      })}\n`);
    } else {
      const resumed = result.files.filter((f) => f.resumedFrom > 0);
      process.stdout.write(
        `sent ${result.files.length} file${result.files.length === 1 ? '' : 's'} (${formatBytes(result.bytesTotal)}) to ${result.peer} via ${conn.route} ` +
        `in ${elapsedText(ms)}, ${rateText(result.bytesSent, ms)}; SHA-256 verified by ${result.peer}` +
        (resumed.length > 0 ? `; resumed ${resumed.length} file${resumed.length === 1 ? '' : 's'}, ${formatBytes(result.bytesSent)} sent` : '') + '\n',
      );
    }
    // Sent: a stop signal while the process winds down exits 0 rather than killing it.
    signals.finish(EXIT.ok);
  } catch (err) {
    // Ctrl-C: the transfer says it was cancelled, and the exit status says it was interrupted.
    if (signals.signal) {
      view?.stop();
      process.stderr.write(`vertex: ${asVertexError(err).message}\n`);
      process.exit(signals.exitCode(EXIT.other));
    }
    throw err;
  } finally {
    view?.stop();
    agent?.socket.destroy();
  }
}

async function sumSizes(files: string[]): Promise<number> {
  let total = 0;
  for (const f of files) total += (await fs.promises.stat(f)).size;
  return total;
}

export const sendCommand: CommandModule<GlobalArgs, SendArgs> = {
  command: 'send <paths..>',
  describe: 'send files or directories to USER@DOMAIN or USER+DEVICE@DOMAIN (who runs `vertex receive`); the last argument names the receiver',
  builder: (y) => y.options(NODE_OPTIONS)
    .positional('paths', { type: 'string', array: true, describe: 'FILE... USER@DOMAIN' })
    .option('connect-timeout', { type: 'number', describe: 'seconds to wait for a connection [15]' })
    .example('$0 send report.pdf photos/ bob@example.com', 'send a file and a directory to bob') as unknown as Argv<SendArgs>,
  handler: (args) => run(args),
};
