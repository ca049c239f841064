/** Every subcommand, in the order `vertex --help` lists them. */
import type { CommandModule } from 'yargs';
import { loginCommand, registerCommand } from './register';
import { serverCommand } from './server';
import { demoCommand } from './demo';
import { agentCommand } from './agent';
import { exposeCommand } from './expose';
import { forwardCommand } from './forward';
import { connectCommand } from './connect';
import { statusCommand } from './status';
import { pingCommand } from './ping';
import { sendCommand } from './send';
import { receiveCommand } from './receive';

export const COMMANDS: CommandModule<any, any>[] = [
  serverCommand,
  registerCommand,
  loginCommand,
  demoCommand,
  agentCommand,
  exposeCommand,
  forwardCommand,
  connectCommand,
  statusCommand,
  pingCommand,
  sendCommand,
  receiveCommand,
];
