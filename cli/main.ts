/**
 * The `vertex` command line. The only layer that reads argv, env and files
 * or calls process.exit. One module per subcommand under cli/commands/.
 */
import yargs from 'yargs';
import { isVertexError } from '../q2q/errors';
import { EXIT, EXIT_CODES } from './exit-codes';
import { COMMANDS } from './commands';

function reportAndExit(err: unknown): never {
  if (isVertexError(err)) {
    process.stderr.write(`vertex: ${err.message}\n`);
    process.exit(EXIT_CODES[err.code]);
  }
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`vertex: internal error: ${message}\n`);
  if (process.env.VERTEX_DEBUG && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  process.exit(EXIT.other);
}

export async function main(argv: string[]): Promise<void> {
  process.on('unhandledRejection', reportAndExit);
  let parser = yargs(argv)
    .scriptName('vertex')
    .usage('$0 <command> [options]\n\nReach user@domain:service from any TCP program.')
    .option('home', { type: 'string', describe: 'identity and state directory [$VERTEX_HOME, else ~/.config/vertex]', global: true })
    .option('resolve', { type: 'string', array: true, describe: 'DOMAIN=HOST:PORT: use this server for DOMAIN (repeatable)', global: true })
    .option('log-level', { type: 'string', choices: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'], global: true })
    .option('json', { type: 'boolean', describe: 'machine-readable output', global: true })
    .strict()
    .demandCommand(1, 'name a command; see vertex --help')
    .recommendCommands()
    .help()
    .version(false)
    .wrap(Math.min(100, process.stdout.columns ?? 100))
    .fail((msg, err) => {
      if (err) reportAndExit(err);
      process.stderr.write(`vertex: ${msg}\n`);
      process.exit(EXIT.usage);
    });
  for (const command of COMMANDS) parser = parser.command(command as never);
  try {
    await parser.parseAsync();
  } catch (err) {
    reportAndExit(err);
  }
}
