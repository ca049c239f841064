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
  builder: (y) => y.option('config', { type: 'string', describe: `agent.yaml [<home>/${AGENT_CONFIG_FILE}]` }) as Argv<AgentArgs>,
  handler: async (args) => {
    const setup = agentSetup(args);
    const daemon = await runAgent(args, setup, { reloadFrom: setup.configFile, metrics: true });
    process.stdout.write(`${describeRunning(daemon)}\n`);
  },
};
