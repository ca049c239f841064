/**
 * `vertex expose SERVICE HOST:PORT [--allow PATTERN]...`: put a local port
 * online as me:SERVICE. With a running agent the expose is added there (and
 * `--remove` takes it away); without one, this command runs it in the
 * foreground until Ctrl-C.
 */
import { parseControlResult } from '../../agent/control-protocol';
import type { Argv, CommandModule } from 'yargs';
import { parseService } from '../../q2q/address';
import { vertexError } from '../../q2q/errors';
import { formatHostPort, parseHostPort } from '../../config/schema';
import { agentSetup, callRunningAgent, noAgentMessage, repeatable, type AgentArgs, type GlobalArgs } from '../context';
import { describeAllow, printResult } from '../output';
import { describeRunning, runAgent } from '../agent-runner';

interface ExposeArgs extends AgentArgs {
  service: string;
  target?: string;
  allow?: string[];
  remove?: boolean;
  replace?: boolean;
}

export const exposeCommand: CommandModule<GlobalArgs, ExposeArgs> = {
  command: 'expose <service> [target]',
  describe: 'put a local HOST:PORT online as me:SERVICE (on the running agent, else in the foreground)',
  builder: (y) => y
    .positional('service', { type: 'string', demandOption: true, describe: 'service name, e.g. ssh or http' })
    .positional('target', { type: 'string', describe: 'local HOST:PORT (a bare PORT means 127.0.0.1:PORT)' })
    .option('allow', repeatable('who may connect: user@domain, *@domain (a whole domain) or * (any user of any domain) [only you, on any of your devices]'))
    .option('remove', { type: 'boolean', describe: 'stop exposing SERVICE on the running agent' })
    .option('replace', { type: 'boolean', describe: 'replace SERVICE if it is already exposed (its allow list is kept unless --allow is given)' })
    .option('config', { type: 'string', describe: 'agent.yaml [<home>/agent.yaml]' }) as unknown as Argv<ExposeArgs>,
  handler: async (args) => {
    const service = parseService(args.service);
    if (args.remove) {
      if (args.target !== undefined) throw vertexError('Usage', 'expose --remove SERVICE takes no target');
      const reply = await callRunningAgent(args, 'expose-remove', { service });
      if (!reply.agent) throw vertexError('Usage', `expose --remove ${service}: ${noAgentMessage(reply.looked)}`);
      const r = parseControlResult('expose-remove', reply.result);
      const note = r.fromConfig ? '; it is in agent.yaml and comes back at the next start: delete it there to remove it for good' : '';
      printResult(args.json, `no longer exposing ${service}${note}`, { service, removed: true, fromConfig: Boolean(r.fromConfig) });
      return;
    }
    if (args.target === undefined) throw vertexError('Usage', `expose ${service}: name the local HOST:PORT to expose`);
    // Parsed here so that a bad target is a usage error, not a config error, and a bare port works.
    const target = formatHostPort(parseHostPort(args.target, { minPort: 1, defaultHost: '127.0.0.1', code: 'Usage' }));
    const allow = args.allow?.length ? args.allow : undefined;
    const reply = await callRunningAgent(args, 'expose-add', { service, target, ...(allow && { allow }), replace: Boolean(args.replace) });
    if (reply.agent) {
      const r = parseControlResult('expose-add', reply.result);
      const owner = r.address.slice(0, r.address.lastIndexOf(':'));
      const was = r.replaced
        ? `; replaced -> ${r.replaced.target}, ${allow ? `allow was ${describeAllow(r.replaced.allow, owner)}` : 'allow list kept'}`
        : '';
      printResult(args.json, `exposed ${r.address} -> ${r.target} (allow ${describeAllow(r.allow, owner)}) on the running agent${was}; kept across restarts`, { ...r, agent: true });
      return;
    }
    const foreground = agentSetup(args, { expose: [{ service, target, ...(allow && { allow }) }], forwards: [] });
    const daemon = await runAgent(args, foreground, { socks: false, control: false });
    process.stdout.write(`${describeRunning(daemon, ['exposing in the foreground (no agent is running); Ctrl-C stops it'])}\n`);
  },
};
