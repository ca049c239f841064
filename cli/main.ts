/**
 * The `vertex` command line. The only layer that reads argv, env and files
 * or calls process.exit. One module per subcommand under cli/commands/;
 * what they share is in cli/context.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import yargs from 'yargs';
import { asVertexError, isVertexError } from '../q2q/errors';
import { LOGGER_LEVELS } from '../q2q/util/log';
import { EXIT, EXIT_CODES } from './exit-codes';
import { COMMANDS } from './commands';
import { logLevelOf } from './context';

/** The package's version, from the package.json two levels above dist/cli/ (or cli/ under ts-jest). */
export function packageVersion(): string {
  for (const up of ['../..', '..']) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, up, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'vertex' && pkg.version) return pkg.version;
    } catch {
      // Not here; try one level up.
    }
  }
  return 'unknown';
}

/** `--json` anywhere on the line, read before yargs has parsed (errors can come from parsing itself). */
function wantsJson(argv: readonly string[]): boolean {
  const end = argv.indexOf('--');
  return (end < 0 ? argv : argv.slice(0, end)).some((a) => a === '--json' || a === '--json=true');
}

/**
 * One line on stderr and the exit status for the error's code. With --json the
 * line is a JSON object: {"error":{"code":"Offline","message":"...","exit":4}}.
 * No stack trace, unless VERTEX_DEBUG is set and the error is not one of ours.
 */
function reporter(json: boolean): (err: unknown) => never {
  return (err) => {
    const known = isVertexError(err);
    const e = asVertexError(err);
    const status = known ? EXIT_CODES[e.code] : EXIT.other;
    const message = known ? e.message : `internal error: ${e.message}`;
    if (json) process.stderr.write(`${JSON.stringify({ error: { code: e.code, message, exit: status } })}\n`);
    else process.stderr.write(`vertex: ${message}\n`);
    if (!known && process.env.VERTEX_DEBUG && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    process.exit(status);
  };
}

const LOG_LEVEL_HELP =
  `how much to log on stderr: ${LOGGER_LEVELS.join(', ')}. ` +
  'Default: warn for one-off commands; for `agent` and `server`, log.level of their config (info). ' +
  'Lines are for people on a terminal, JSON lines otherwise (pipes, journald)';

export async function main(argv: string[]): Promise<void> {
  const reportAndExit = reporter(wantsJson(argv));
  process.on('unhandledRejection', reportAndExit);
  process.on('uncaughtException', reportAndExit);
  let parser = yargs(argv)
    .scriptName('vertex')
    .usage('$0 <command> [options]\n\nReach user@domain:service from any TCP program.')
    .option('home', { type: 'string', describe: 'identity and state directory [$VERTEX_HOME, else ~/.config/vertex]', global: true })
    .option('resolve', {
      type: 'string',
      requiresArg: true,
      describe: 'DOMAIN=HOST:PORT: use this server for DOMAIN, like curl --resolve (repeatable, one per flag)',
      global: true,
      coerce: (value: unknown) => ([] as unknown[]).concat(value).map(String),
    })
    .option('socket', { type: 'string', requiresArg: true, describe: "the running agent's control socket [found through the home, then the well-known places]", global: true })
    .option('log-level', { type: 'string', choices: [...LOGGER_LEVELS], describe: LOG_LEVEL_HELP, global: true })
    .option('verbose', { alias: 'v', type: 'count', describe: 'log more: -v info, -vv debug, -vvv trace (--log-level wins)', global: true })
    .option('json', { type: 'boolean', describe: 'machine-readable output; errors too, as {"error":{"code","message","exit"}} on stderr', global: true })
    .middleware((args) => {
      const a = args as { logLevel?: string; 'log-level'?: string; verbose?: number };
      const level = logLevelOf(a);
      if (level !== undefined) {
        a.logLevel = level;
        a['log-level'] = level;
      }
    })
    .strict()
    .demandCommand(1, 'name a command; see vertex --help')
    .recommendCommands()
    .completion('completion', 'print a shell completion script (bash, zsh): vertex completion >> ~/.bashrc')
    .help()
    .version(packageVersion())
    .wrap(Math.min(100, process.stdout.columns ?? 100))
    .fail((msg, err) => {
      // yargs reports its own parse problems as YError: those are usage errors too.
      if (err && err.name !== 'YError') reportAndExit(err);
      reportAndExit(asVertexError(new Error(msg ?? err?.message), 'Usage'));
    });
  for (const command of COMMANDS) parser = parser.command(command as never);
  try {
    await parser.parseAsync();
  } catch (err) {
    reportAndExit(err);
  }
}
