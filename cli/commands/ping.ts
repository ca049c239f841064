/**
 * `vertex ping USER@DOMAIN[:SERVICE]`: reach the peer and report the route
 * and round-trip time. Through the running agent when there is one (so the
 * agent's sessions are what gets measured), else with a connection of its own.
 */
import { parseControlResult } from '../../agent/control-protocol';
import type { Argv, CommandModule } from 'yargs';
import { pingWith } from '../../agent/daemon';
import { DEFAULT_PING_COUNT, formatPing, MAX_PING_COUNT, type PingResult } from '../../agent/ping';
import { vertexError } from '../../q2q/errors';
import { agentSetup, callRunningAgent, cliLogger, connectAlone, type AgentArgs, type GlobalArgs } from '../context';
import { printResult } from '../output';

interface PingArgs extends AgentArgs {
  target: string;
  count: number;
}

export const pingCommand: CommandModule<GlobalArgs, PingArgs> = {
  command: 'ping <target>',
  describe: 'reach USER@DOMAIN[:SERVICE] and report the route and round-trip time',
  builder: (y) => y
    .positional('target', { type: 'string', demandOption: true, describe: 'user@domain (user+device@domain for one device), or user@domain:service to time a connect to that service' })
    .option('count', { alias: 'c', type: 'number', default: DEFAULT_PING_COUNT, describe: `probes to send (1-${MAX_PING_COUNT})` })
    .option('config', { type: 'string', describe: 'agent.yaml [<home>/agent.yaml]' }) as unknown as Argv<PingArgs>,
  handler: async (args) => {
    if (!Number.isInteger(args.count) || args.count < 1 || args.count > MAX_PING_COUNT) throw vertexError('Usage', `--count must be 1-${MAX_PING_COUNT}`);
    const reply = await callRunningAgent(args, 'ping', { target: args.target, count: args.count }, { timeoutMs: 30_000 });
    let result: PingResult;
    if (reply.agent) {
      result = parseControlResult('ping', reply.result);
    } else {
      const log = cliLogger(args, 'warn', 'vertex-ping');
      const setup = agentSetup(args);
      result = await pingWith((t) => connectAlone(setup, t, log), args.target, args.count);
    }
    printResult(args.json, formatPing(result), result);
  },
};
