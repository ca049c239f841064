/**
 * `vertex connect TARGET [PORT]`: stdin and stdout joined to a remote
 * service, for ssh's ProxyCommand (`ProxyCommand vertex connect %h %p`).
 *
 * TARGET is `user@domain:service`, or a host form (`bob.example.com.q2q`,
 * `bob@example.com`) with PORT mapped to a service through `ports:`. With a
 * running agent the tunnel comes through its control socket and shows in
 * its `vertex status`; without one, this process dials by itself. Every
 * wait has a timeout that names what it waited for: ProxyCommand users
 * otherwise see a silent hang.
 *
 * It exits when the tunnel ends, in either direction (agent/frontends/stdio.ts):
 * 0 when it closed cleanly, 4 (ConnectionLost) with one line on stderr
 * saying why when it broke off (the peer or its agent went away, a reset).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Duplex, Writable } from 'node:stream';
import type { Argv, CommandModule } from 'yargs';
import { sendRequest } from '../../agent/control-client';
import { FramedTunnel } from '../../agent/control-tunnel';
import { joinStdio } from '../../agent/frontends/stdio';
import { formatServiceAddress, parseHostTarget, parseServiceAddress } from '../../q2q/address';
import { vertexError } from '../../q2q/errors';
import { agentSetup, cliLogger, connectAlone, openAgent, type AgentArgs, type GlobalArgs } from '../context';

export const DEFAULT_CONNECT_TIMEOUT_S = 15;
/** Extra time for the agent's answer beyond its own connect timeout. */
const AGENT_REPLY_MARGIN_MS = 3_000;

interface ConnectArgs extends AgentArgs {
  target: string;
  port?: number;
  timeout: number;
}

/** `user@domain:service`, from either argument form. */
export function connectTarget(target: string, port: number | undefined, ports: Readonly<Record<number, string>>): string {
  if (port === undefined) return formatServiceAddress(parseServiceAddress(target));
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw vertexError('Usage', `connect ${target} ${port}: the port must be 1-65535`);
  const parsed = parseHostTarget(target, port, ports);
  if (!parsed) {
    throw vertexError('NotAllowed', `connect ${target}: not a q2q name; use user.domain.q2q or user@domain (as in ssh's Host *.q2q)`);
  }
  return formatServiceAddress(parsed);
}

/** stdout as a stream we may end: a pipe or socket gets its own handle so that ending it reaches the reader as EOF. */
function openOutput(): Writable {
  try {
    const st = fs.fstatSync(1);
    if (st.isFIFO() || st.isSocket()) return new net.Socket({ fd: 1, readable: false, writable: true });
  } catch {
    // No usable fd 1: fall back to process.stdout, which reports its own errors.
  }
  return process.stdout;
}

export const connectCommand: CommandModule<GlobalArgs, ConnectArgs> = {
  command: 'connect <target> [port]',
  describe: 'join stdin/stdout to user@domain:service (for ssh ProxyCommand: vertex connect %h %p)',
  builder: (y) => y
    .positional('target', { type: 'string', demandOption: true, describe: 'user@domain:service (user+device@domain:service for one device), or bob.example.com.q2q / bob--laptop.example.com.q2q / bob@example.com with PORT' })
    .positional('port', { type: 'number', describe: 'port, mapped to a service (22 -> ssh, 80 -> http, 443 -> https, else the number)' })
    .option('timeout', { type: 'number', default: DEFAULT_CONNECT_TIMEOUT_S, describe: 'seconds to wait for the tunnel' })
    .option('config', { type: 'string', describe: 'agent.yaml [<home>/agent.yaml]' }) as unknown as Argv<ConnectArgs>,
  handler: async (args) => {
    const setup = agentSetup(args);
    const target = connectTarget(args.target, args.port, setup.config.ports);
    if (!(args.timeout > 0)) throw vertexError('Usage', '--timeout must be a positive number of seconds');
    const timeoutMs = Math.round(args.timeout * 1000);
    const log = cliLogger(args, 'warn', 'vertex-connect');

    let tunnel: Duplex;
    let describeFailure: ((err: Error) => string) = (err) => `tunnel to ${target} broke off: ${err.message}`;
    const found = await openAgent(args);
    const control = found.socket;
    if (control) {
      const socketPath = found.path;
      const info = (await sendRequest(control, 'connect', { target, timeoutMs, framed: true }, {
        timeoutMs: timeoutMs + AGENT_REPLY_MARGIN_MS,
        waitingFor: `the agent (${socketPath}) to connect to ${target}`,
      })) as { route: string; device?: string; connectMs: number; framed?: boolean };
      log.info({ target, device: info.device, route: info.route, connectMs: info.connectMs, via: 'agent' }, 'connected');
      if (info.framed) {
        // The agent says how the tunnel ended: an ABORT frame carries its reason.
        tunnel = new FramedTunnel(control, { other: `the agent (${socketPath})` });
      } else {
        // An older agent: raw bytes, so a reset far away looks like any close; its log has the reason.
        tunnel = control;
        describeFailure = (err) => `tunnel to ${target}: the agent dropped the connection (${(err as NodeJS.ErrnoException).code ?? err.message}); its log says why`;
      }
    } else {
      const stream = await connectAlone(setup, target, log, timeoutMs);
      log.info({ target, device: stream.device, route: stream.route, connectMs: stream.connectMs, via: 'direct' }, 'connected');
      tunnel = stream;
    }
    await joinStdio(process.stdin, openOutput(), tunnel, { describeFailure });
    process.exit(0);
  },
};
