/**
 * `vertex demo` (what `npm start` runs): the all-in-one embedded default of
 * INTERFACE.md, in one process:
 *
 * - an identity server for `localhost` on 127.0.0.1:8788, data in ./vertex-data/server;
 * - a demo account, demo@localhost, whose identity lives in ./vertex-data/home;
 * - an agent for it with SOCKS5 on 127.0.0.1:1080 and its control socket in
 *   that home (so `vertex --home ./vertex-data/home status` finds it);
 * - a small web page exposed as demo@localhost:http, so that the printed
 *   curl example has something to fetch.
 *
 * A second run reuses the account and the data. Ctrl-C stops it all.
 */
import { listenOn } from '../../q2q/transport/listen';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { AgentLock } from '../../agent/agent-lock';
import { AgentDaemon } from '../../agent/daemon';
import { HomeStore } from '../../agent/home-store';
import { registerAccount } from '../../q2q/control/accounts';
import { createServerResolver } from '../../q2q/control/discovery';
import { openServerConnection } from '../../q2q/control/server-connection';
import { vertexError } from '../../q2q/errors';
import { buildAgentConfig, buildServerConfig } from '../../config/load';
import { formatHostPort, parseHostPort } from '../../config/schema';
import { IdentityServer } from '../../server/identity-server';
import { logLevelOf, serverResolver, type AgentSetup, type GlobalArgs } from '../context';
import { createLogger } from '../logger';
import { createQ2QNode, describeRunning, renewWith } from '../agent-runner';
import { identityServerOptions } from '../server-setup';
import { onStopSignals } from '../signals';

interface DemoArgs extends GlobalArgs {
  data: string;
  listen: string;
  socks: string;
}

export const DEMO_DOMAIN = 'localhost';
export const DEMO_USER = 'demo';
export const DEMO_PAGE = 'Hello from demo@localhost, through Vertex.\n';

function demoPassword(dataDir: string): string {
  const file = path.join(dataDir, 'demo-password');
  if (fs.existsSync(file)) return fs.readFileSync(file, 'utf8').trim();
  const password = randomBytes(12).toString('base64url');
  fs.writeFileSync(file, `${password}\n`, { mode: 0o600 });
  return password;
}

async function startPage(): Promise<{ server: http.Server; port: number }> {
  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'text/plain; charset=utf-8');
    res.end(DEMO_PAGE);
  });
  await listenOn(server, { port: 0, host: '127.0.0.1' });
  return { server, port: (server.address() as net.AddressInfo).port };
}

/**
 * The demo agent's configuration, built in memory from this run's flags. No
 * agent.yaml is written: a second demo that fails to start must not change
 * the files of one that runs (issue 13, problem 5).
 */
function demoAgentSetup(args: DemoArgs, homeDir: string, home: HomeStore, server: string): AgentSetup {
  const config = buildAgentConfig({
    identity: `${DEMO_USER}@${DEMO_DOMAIN}`,
    socks: { listen: args.socks },
    domains: { [DEMO_DOMAIN]: { server } },
    peer_listen: '127.0.0.1:0',
    advertise: ['127.0.0.1'],
    control: { socket: path.join(homeDir, 'agent.sock') },
  });
  const socketPath = config.control.socket;
  return { config, configFile: null, home, homeDir, socketPath, resolve: serverResolver(args, new Map([[DEMO_DOMAIN, parseHostPort(server)]])) };
}

export const demoCommand: CommandModule<GlobalArgs, DemoArgs> = {
  command: 'demo',
  describe: 'run the all-in-one default (what `npm start` runs): a server for localhost, a demo account and its agent',
  builder: (y: Argv) => y
    .option('data', { type: 'string', default: 'vertex-data', describe: 'where the demo keeps everything' })
    .option('listen', { type: 'string', default: '127.0.0.1:8788', describe: 'server HOST:PORT' })
    .option('socks', { type: 'string', default: '127.0.0.1:1080', describe: "the agent's SOCKS5 HOST:PORT" }) as unknown as Argv<DemoArgs>,
  handler: async (args) => {
    const dataDir = path.resolve(args.data);
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    // A demo already running on this data refuses a second one before anything starts or changes.
    const homeDir = path.join(dataDir, 'home');
    const lock = AgentLock.acquire(homeDir, { identity: `${DEMO_USER}@${DEMO_DOMAIN}`, socket: path.join(homeDir, 'agent.sock'), config: null });
    process.once('exit', () => lock.release());
    parseHostPort(args.socks, { code: 'Usage' });
    const logLevel = logLevelOf(args) ?? 'warn';
    const log = createLogger({ level: logLevel });

    const config = buildServerConfig({ domains: [DEMO_DOMAIN], listen: args.listen, data_dir: path.join(dataDir, 'server'), registration: 'open' });
    const server = new IdentityServer({ ...identityServerOptions(config), log: log.child({ component: 'server' }) });
    let bound: { host: string; port: number };
    try {
      bound = await server.start();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EADDRINUSE') throw vertexError('Usage', `listen on ${args.listen}: address already in use; is another \`npm start\` running? Choose another with --listen`, err);
      throw err;
    }
    const serverAddress = formatHostPort(bound);
    process.stdout.write(`vertex demo: identity server for ${DEMO_DOMAIN} listening on ${serverAddress} (tcp+udp); data in ${dataDir}\n`);

    const address = `${DEMO_USER}@${DEMO_DOMAIN}`;
    const home = new HomeStore(homeDir);
    if (!home.hasIdentity(address)) {
      const connection = await openServerConnection({
        domain: DEMO_DOMAIN,
        resolve: createServerResolver({ overrides: { [DEMO_DOMAIN]: bound } }),
        trust: home,
      });
      try {
        const identity = await registerAccount(connection, address, demoPassword(dataDir));
        home.saveIdentity(address, identity.keyPem, identity.certPem);
      } finally {
        connection.close();
      }
      process.stdout.write(`vertex demo: created the account ${address}; its identity is in ${homeDir}\n`);
    } else {
      process.stdout.write(`vertex demo: reusing the account ${address} from ${homeDir}\n`);
    }

    const setup = demoAgentSetup(args, homeDir, home, serverAddress);
    const page = await startPage();
    const agent = new AgentDaemon({
      config: setup.config,
      home: setup.home,
      resolve: setup.resolve,
      createNode: createQ2QNode,
      renew: renewWith(setup, log),
      controlSocket: setup.socketPath,
      log,
    });
    onStopSignals(async () => {
      await agent.stop();
      page.server.closeAllConnections();
      await new Promise<void>((resolve) => page.server.close(() => resolve()));
      await server.stop();
    });
    await agent.start();
    // Part of the demo's own set-up, not a runtime change: it is not persisted.
    agent.addExpose({ service: 'http', target: { host: '127.0.0.1', port: page.port } }, 'config');
    const socks = formatHostPort(agent.socksAddress ?? parseHostPort(args.socks));
    const v = `npx vertex --home ${path.relative(process.cwd(), homeDir) || '.'}`;
    process.stdout.write([
      describeRunning(agent),
      '',
      'Try next, in another terminal:',
      `  curl --socks5-hostname ${socks} http://${DEMO_USER}.${DEMO_DOMAIN}.q2q/`,
      `  ${v} status`,
      `  ${v} expose ssh 127.0.0.1:22          # put your sshd online as ${address}:ssh`,
      `  ssh -o ProxyCommand='${v} connect %h %p' ${DEMO_USER}.${DEMO_DOMAIN}.q2q`,
      `  ${v} forward 8022 ${address}:ssh     # or a fixed local port for it`,
      `  ${v} ping ${address}`,
      `  npx vertex --resolve ${DEMO_DOMAIN}=${serverAddress} --home /tmp/alice register alice@${DEMO_DOMAIN}   # an account of your own`,
      '',
      'Ctrl-C stops everything; the next `npm start` reuses ./vertex-data.',
      '',
    ].join('\n'));
  },
};
