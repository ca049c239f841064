/**
 * `vertex demo` (what `npm start` runs): the all-in-one embedded default of
 * INTERFACE.md — an identity server for `localhost` on 127.0.0.1:8788 with
 * its data in ./vertex-data/, and a demo account whose identity lives in
 * ./vertex-data/home. A second run reuses everything.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { HomeStore } from '../../agent/home-store';
import { registerAccount } from '../../q2q/control/accounts';
import { createServerResolver } from '../../q2q/control/discovery';
import { openServerConnection } from '../../q2q/control/server-connection';
import { buildServerConfig } from '../../config/load';
import { parseHostPort } from '../../config/schema';
import type { GlobalArgs } from '../context';
import { runServer, stopOnSignals } from './server';

interface DemoArgs extends GlobalArgs {
  data: string;
  listen: string;
}

export const DEMO_DOMAIN = 'localhost';
export const DEMO_USER = 'demo';

function demoPassword(dataDir: string): string {
  const file = path.join(dataDir, 'demo-password');
  if (fs.existsSync(file)) return fs.readFileSync(file, 'utf8').trim();
  const password = randomBytes(12).toString('base64url');
  fs.writeFileSync(file, `${password}\n`, { mode: 0o600 });
  return password;
}

export const demoCommand: CommandModule<GlobalArgs, DemoArgs> = {
  command: 'demo',
  describe: 'run the all-in-one default (what `npm start` runs): a server for localhost and a demo identity',
  builder: (y: Argv) => y
    .option('data', { type: 'string', default: 'vertex-data', describe: 'where the demo keeps everything' })
    .option('listen', { type: 'string', default: '127.0.0.1:8788', describe: 'server HOST:PORT' }) as unknown as Argv<DemoArgs>,
  handler: async (args) => {
    const dataDir = path.resolve(args.data);
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const listen = parseHostPort(args.listen);
    const server = await runServer(buildServerConfig({
      domains: [DEMO_DOMAIN],
      listen: args.listen,
      data_dir: path.join(dataDir, 'server'),
      registration: 'open',
    }), args.logLevel ?? 'warn');
    stopOnSignals(() => server.stop());

    const address = `${DEMO_USER}@${DEMO_DOMAIN}`;
    const homeDir = path.join(dataDir, 'home');
    const home = new HomeStore(homeDir);
    const resolveArg = `--resolve ${DEMO_DOMAIN}=${listen.host}:${listen.port}`;
    if (!home.hasIdentity(address)) {
      const connection = await openServerConnection({
        domain: DEMO_DOMAIN,
        resolve: createServerResolver({ overrides: { [DEMO_DOMAIN]: listen } }),
        trust: home,
      });
      try {
        const identity = await registerAccount(connection, address, demoPassword(dataDir));
        home.saveIdentity(address, identity.keyPem, identity.certPem);
      } finally {
        connection.close();
      }
      process.stdout.write(`created the demo account ${address}; its identity is in ${homeDir}\n`);
    } else {
      process.stdout.write(`reusing the demo account ${address} from ${homeDir}\n`);
    }
    process.stdout.write([
      '',
      'Try next, in another terminal:',
      `  npx vertex ${resolveArg} --home /tmp/alice register alice@${DEMO_DOMAIN}      # an account of your own`,
      `  npx vertex ${resolveArg} --home ${homeDir} login ${address} --password-file ${path.join(dataDir, 'demo-password')}`,
      `  npx vertex server list-users --data ${path.join(dataDir, 'server')}`,
      '',
      'Ctrl-C stops the server; the next `npm start` reuses ./vertex-data.',
      '',
    ].join('\n'));
  },
};
