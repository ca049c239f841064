/** Every subcommand, in the order `vertex --help` lists them. */
import type { CommandModule } from 'yargs';
import { loginCommand, registerCommand } from './register';
import { serverCommand } from './server';
import { demoCommand } from './demo';
import { sendCommand } from './send';
import { receiveCommand } from './receive';

export const COMMANDS: CommandModule<any, any>[] = [
  serverCommand,
  registerCommand,
  loginCommand,
  demoCommand,
  sendCommand,
  receiveCommand,
];
