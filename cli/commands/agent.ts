/**
 * `vertex agent [--config FILE]`: the daemon (agent/daemon.ts) in the
 * foreground, until SIGINT/SIGTERM; SIGHUP re-reads the file and applies
 * its forwards and exposes.
 */
import type { Argv, CommandModule } from 'yargs';
import { AGENT_CONFIG_FILE, agentSetup, type AgentArgs, type GlobalArgs } from '../context';
import { describeRunning, runAgent } from '../agent-runner';

export const agentCommand: CommandModule<GlobalArgs, AgentArgs> = {
  command: 'agent',
  describe: 'run the agent: SOCKS5, forwards, exposes and the local control API',
  builder: (y) => y
    .option('config', { type: 'string', describe: `agent.yaml [<home>/${AGENT_CONFIG_FILE}]` })
    .option('device', { type: 'string', describe: "this machine's name among the identity's machines, e.g. laptop [agent.yaml device:, else the host name]" }) as Argv<AgentArgs>,
  handler: async (args) => {
    const setup = agentSetup(args, args.device === undefined ? undefined : { device: args.device });
    const daemon = await runAgent(args, setup, { reloadFrom: setup.configFile, metrics: true });
    process.stdout.write(`${describeRunning(daemon)}\n`);
  },
};
