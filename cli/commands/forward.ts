/**
 * `vertex forward [BIND:]PORT USER@DOMAIN:SERVICE`: a local listening port
 * that tunnels to a remote service. With a running agent the forward is
 * added there (and `--remove` takes it away); without one, this command
 * runs it in the foreground until Ctrl-C.
 */
import { parseControlResult } from '../../agent/control-protocol';
import type { Argv, CommandModule } from 'yargs';
import { formatServiceAddress, parseServiceAddress } from '../../q2q/address';
import { vertexError } from '../../q2q/errors';
import { FORWARD_LISTEN, formatHostPort, parseHostPort } from '../../config/schema';
import { agentSetup, callRunningAgent, noAgentMessage, type AgentArgs, type GlobalArgs } from '../context';
import { printResult } from '../output';
import { describeRunning, runAgent } from '../agent-runner';

interface ForwardArgs extends AgentArgs {
  listen: string;
  to?: string;
  remove?: boolean;
  replace?: boolean;
}

export const forwardCommand: CommandModule<GlobalArgs, ForwardArgs> = {
  command: 'forward <listen> [to]',
  describe: 'listen on [BIND:]PORT and tunnel each connection to USER@DOMAIN:SERVICE',
  builder: (y) => y
    .positional('listen', { type: 'string', demandOption: true, describe: '[BIND:]PORT; a bare PORT binds 127.0.0.1; port 0 picks a free port and prints it' })
    .positional('to', { type: 'string', describe: 'USER@DOMAIN:SERVICE' })
    .option('remove', { type: 'boolean', describe: 'remove the forward on [BIND:]PORT from the running agent' })
    .option('replace', { type: 'boolean', describe: 'replace the forward already on [BIND:]PORT' })
    .option('config', { type: 'string', describe: 'agent.yaml [<home>/agent.yaml]' }) as unknown as Argv<ForwardArgs>,
  handler: async (args) => {
    const listen = formatHostPort(parseHostPort(String(args.listen), { ...FORWARD_LISTEN, code: 'Usage' }));
    if (args.remove) {
      if (args.to !== undefined) throw vertexError('Usage', 'forward --remove [BIND:]PORT takes no target');
      const reply = await callRunningAgent(args, 'forward-remove', { listen });
      if (!reply.agent) throw vertexError('Usage', `forward --remove ${listen}: ${noAgentMessage(reply.looked)}`);
      printResult(args.json, `removed the forward on ${listen}`, { listen, removed: true });
      return;
    }
    if (args.to === undefined) throw vertexError('Usage', `forward ${listen}: name the remote USER@DOMAIN:SERVICE`);
    const to = formatServiceAddress(parseServiceAddress(args.to));
    const reply = await callRunningAgent(args, 'forward-add', { listen, to, replace: Boolean(args.replace) });
    if (reply.agent) {
      const r = parseControlResult('forward-add', reply.result);
      printResult(args.json, `forwarding ${r.listen} -> ${r.to} on the running agent${r.replaced ? ` (was -> ${r.replaced.to})` : ''}; kept across restarts`, { ...r, agent: true });
      return;
    }
    const foreground = agentSetup(args, { forwards: [{ listen, to }], expose: [] });
    const daemon = await runAgent(args, foreground, { socks: false, control: false });
    process.stdout.write(`${describeRunning(daemon, ['forwarding in the foreground (no agent is running); Ctrl-C stops it'])}\n`);
  },
};
