/**
 * `vertex server`: run the identity server, or administer its data
 * directory (add-user, remove-user, revoke, invite, list-users).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { formatAddress, parseAddress, parseDomain } from '../../q2q/address';
import { vertexError } from '../../q2q/errors';
import { buildServerConfig, loadServerConfig, type ServerOverrides } from '../../config/load';
import { formatHostPort, parseDuration, REGISTRATION_MODES, type RegistrationMode, type ServerConfig } from '../../config/schema';
import { DEFAULTS } from '../../config/defaults';
import { IdentityServer } from '../../server/identity-server';
import { caDir } from '../../server/ca-store';
import type { AccountStore } from '../../server/store/account-store';
import { DATABASE_FILE, describeStore, openAccountStore } from '../../server/store/open-store';
import { isPostgresUrl } from '../../server/store/postgres-store';
import { revokeNodeCertificate } from '../../server/store/node-directory';
import { hashPassword } from '../../server/password';
import { INVITE_LIFETIME_MS, newInviteCode, validatePassword } from '../../server/account-service';
import { createLogger } from '../logger';
import { logLevelOf, readConfigFile, repeatable, serverResolver, type GlobalArgs } from '../context';
import { identityServerOptions } from '../server-setup';
import { onStopSignals } from '../signals';
import type { ServerResolver } from '../../q2q/control/discovery';
import { printResult } from '../output';
import { readPassword } from '../password-input';

interface ServerArgs extends GlobalArgs {
  config?: string;
  domain?: string[];
  listen?: string;
  data?: string;
  publicAddress?: string;
  registration?: RegistrationMode;
  store?: string;
  metrics?: string;
  nodeName?: string;
  nodeListen?: string;
  nodeAdvertise?: string;
}

function flagOverrides(args: ServerArgs): ServerOverrides {
  return {
    ...(args.domain?.length ? { domains: args.domain } : {}),
    ...(args.listen ? { listen: args.listen } : {}),
    ...(args.data ? { data_dir: args.data } : {}),
    ...(args.publicAddress ? { public_address: args.publicAddress } : {}),
    ...(args.registration ? { registration: args.registration } : {}),
    ...(args.store ? { store: args.store } : {}),
    ...(args.metrics ? { metrics: { listen: args.metrics } } : {}),
    // Only the node keys given: the others come from server.yaml's node: section.
    ...(args.nodeName || args.nodeListen || args.nodeAdvertise ? {
      node: {
        ...(args.nodeName && { name: args.nodeName }),
        ...(args.nodeListen && { listen: args.nodeListen }),
        ...(args.nodeAdvertise && { advertise: args.nodeAdvertise }),
      } as NonNullable<ServerOverrides['node']>,
    } : {}),
  };
}

/** The config file (if any), then command-line flags on top; the loader validates both. */
export function resolveServerConfig(args: ServerArgs): ServerConfig {
  const overrides = flagOverrides(args);
  return args.config
    ? loadServerConfig(readConfigFile(args.config), args.config, { overrides })
    : buildServerConfig(overrides);
}

interface AdminConfig { dataDir: string; domains: readonly string[]; store: string }

/** Admin commands need only the data directory or store (and sometimes a domain), not a full server config. */
function resolveDataDir(args: ServerArgs): AdminConfig {
  if (args.config) {
    const config = resolveServerConfig(args);
    return { dataDir: path.resolve(config.dataDir), domains: config.domains, store: config.store };
  }
  const store = args.store ?? DEFAULTS.server.store;
  if (store !== 'sqlite' && !isPostgresUrl(store)) {
    throw vertexError('Usage', `--store ${JSON.stringify(store)}: expected sqlite or a postgres://user@host:port/database URL`);
  }
  return { dataDir: path.resolve(args.data ?? DEFAULTS.server.data_dir), domains: (args.domain ?? []).map(parseDomain), store };
}

function serverOptions(y: Argv): Argv<ServerArgs> {
  return y
    .option('config', { type: 'string', describe: 'server.yaml (see config/server.example.yaml)' })
    .option('domain', repeatable('a domain to serve'))
    .option('listen', { type: 'string', describe: 'HOST:PORT for TCP and UDP [0.0.0.0:8788]' })
    .option('data', { type: 'string', describe: 'data directory [/var/lib/vertex]' })
    .option('public-address', { type: 'string', describe: 'the address clients reach this server at' })
    .option('registration', { choices: REGISTRATION_MODES, describe: 'who may register: invite (a code from `vertex server invite`), open or closed [invite]' })
    .option('store', { type: 'string', describe: 'account store: sqlite, or postgres://user@host:port/database shared by several nodes (password from PGPASSWORD or ~/.pgpass) [sqlite]' })
    .option('metrics', { type: 'string', describe: 'serve Prometheus /metrics and /health on HOST:PORT (a bare PORT binds 127.0.0.1) [off]' })
    .option('node-name', { type: 'string', describe: 'run as this node of several on one postgres:// store (with --node-listen; docs/deploy.md)' })
    .option('node-listen', { type: 'string', describe: 'HOST:PORT for the other nodes (mutual TLS with node certificates)' })
    .option('node-advertise', { type: 'string', describe: 'HOST:PORT the other nodes dial, when not --node-listen' }) as unknown as Argv<ServerArgs>;
}

/** Runs the server until SIGINT/SIGTERM. Exported for the demo command. */
export async function runServer(config: ServerConfig, logLevel: string | undefined, resolve?: ServerResolver): Promise<IdentityServer> {
  const log = createLogger({ level: logLevel ?? config.log.level }).child({ component: 'server' });
  const server = new IdentityServer({ ...identityServerOptions(config), log, ...(resolve ? { resolve } : {}) });
  // Handlers first: a signal that arrives while the server starts still stops it cleanly.
  const starting = server.start();
  onStopSignals(async () => {
    await starting.catch(() => undefined);
    await server.stop();
  });
  let bound;
  try {
    bound = await starting;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'EADDRINUSE' || e.code === 'EACCES') {
      throw vertexError('Usage', `listen on ${config.listen.host}:${config.listen.port}: ${e.code === 'EADDRINUSE' ? 'address already in use' : 'permission denied'}; choose another with --listen`, err);
    }
    throw err;
  }
  const accounts = config.store === 'sqlite' ? '' : `; accounts in ${describeStore(config.store, config.dataDir)}`;
  process.stdout.write(`vertex server: listening on ${bound.host}:${bound.port} (tcp+udp) for ${config.domains.join(', ')}; data in ${config.dataDir}${accounts}\n`);
  const metrics = server.metricsAddress;
  if (metrics) process.stdout.write(`vertex server: metrics on http://${formatHostPort(metrics)}/metrics, health on /health\n`);
  return server;
}

interface AdminArgs extends ServerArgs {
  address?: string;
  serial?: string;
  passwordStdin?: boolean;
  passwordFile?: string;
  expires?: string;
}

async function openStore(args: AdminArgs): Promise<{ store: AccountStore; config: AdminConfig }> {
  const config = resolveDataDir(args);
  if (config.store === 'sqlite' && !fs.existsSync(path.join(config.dataDir, DATABASE_FILE))) {
    throw vertexError('Usage', `no server data in ${config.dataDir}: start \`vertex server\` there first, or pass --data DIR or --store URL`);
  }
  // An admin command only writes: no LISTEN connection. Its changes reach
  // running servers through the change feed (NOTIFY wakes them at once).
  return { store: await openAccountStore({ store: config.store, dataDir: config.dataDir, follow: false }), config };
}

/**
 * Refuses accounts and invites for a domain no server here serves (a typo
 * would otherwise create an unusable account): the data directory holds its
 * CA, or, with a shared PostgreSQL store, the config or --domain names it.
 */
function requireServedDomain(config: AdminConfig, domain: string): void {
  if (fs.existsSync(caDir(config.dataDir, domain))) return;
  if (isPostgresUrl(config.store) && config.domains.includes(domain)) return;
  const hint = isPostgresUrl(config.store) ? `name it with --domain ${domain} or --config` : `start the server with --domain ${domain} first`;
  throw vertexError('UnknownDomain', `${config.dataDir} has no CA for ${domain}; ${hint}`);
}

const addUser: CommandModule<GlobalArgs, AdminArgs> = {
  command: 'add-user <address>',
  describe: 'create an account (the user then runs `vertex login`)',
  builder: (y) => serverOptions(y)
    .positional('address', { type: 'string', demandOption: true })
    .option('password-stdin', { type: 'boolean' })
    .option('password-file', { type: 'string' }) as Argv<AdminArgs>,
  handler: async (args) => {
    const address = parseAddress(args.address ?? '');
    const name = formatAddress(address);
    const { store, config } = await openStore(args);
    try {
      requireServedDomain(config, address.domain);
      const password = await readPassword(args, { confirm: true, what: name });
      validatePassword(password, `add-user ${name}`);
      await store.createAccount(address.domain, address.user, await hashPassword(password));
    } finally {
      await store.close();
    }
    printResult(args.json, `added ${name}`, { address: name });
  },
};

const removeUser: CommandModule<GlobalArgs, AdminArgs> = {
  command: 'remove-user <address>',
  describe: 'delete an account and revoke its certificates',
  builder: (y) => serverOptions(y).positional('address', { type: 'string', demandOption: true }) as Argv<AdminArgs>,
  handler: async (args) => {
    // Also an account made before '--' was reserved for devices (README "Names").
    const address = parseAddress(args.address ?? '', { legacy: true });
    const name = formatAddress(address);
    const { store } = await openStore(args);
    try {
      if (!await store.removeAccount(address.domain, address.user)) throw vertexError('NoSuchUser', `remove-user ${name}: no such account`);
    } finally {
      await store.close();
    }
    printResult(args.json, `removed ${name}; its certificates are revoked`, { address: name });
  },
};

const revoke: CommandModule<GlobalArgs, AdminArgs> = {
  command: 'revoke <serial>',
  describe: 'revoke a certificate by serial number (hex): a user\'s, or a server node\'s (several nodes on PostgreSQL)',
  builder: (y) => serverOptions(y).positional('serial', { type: 'string', demandOption: true }) as Argv<AdminArgs>,
  handler: async (args) => {
    // As stored: lowercase hex without separators or leading zeros (normaliseSerial).
    const serial = (args.serial ?? '').toLowerCase().replace(/:/g, '').replace(/^0+(?=.)/, '');
    if (!/^[0-9a-f]{1,64}$/.test(serial)) throw vertexError('Usage', `revoke ${args.serial}: a serial is hexadecimal, as printed by register and login`);
    const { store, config } = await openStore(args);
    let node: { domain: string; node: string } | null = null;
    try {
      if (!await store.revokeCertificate(serial)) {
        // Not a user's: a node certificate (each node records its own; the log line "node certificate issued and recorded" has the serial).
        if (isPostgresUrl(config.store)) node = await revokeNodeCertificate(config.store, serial);
        if (!node) throw vertexError('CertificateInvalid', `revoke ${serial}: no certificate with that serial was issued here`);
      }
    } finally {
      await store.close();
    }
    if (node) printResult(args.json, `revoked ${serial} (node ${node.node} of ${node.domain})`, { serial, node: node.node, domain: node.domain });
    else printResult(args.json, `revoked ${serial}`, { serial });
  },
};

const invite: CommandModule<GlobalArgs, AdminArgs> = {
  command: 'invite',
  describe: 'print a one-time invitation code for `vertex register --invite`',
  builder: (y) => serverOptions(y).option('expires', { type: 'string', describe: 'lifetime, e.g. 7d, 12h [7d]' }) as Argv<AdminArgs>,
  handler: async (args) => {
    const { store, config } = await openStore(args);
    const domain = config.domains[0];
    if (!domain || (args.domain?.length ?? 0) > 1) {
      await store.close();
      throw vertexError('Usage', 'invite: name exactly one --domain');
    }
    const lifetime = args.expires ? parseDuration(args.expires) : INVITE_LIFETIME_MS;
    const code = newInviteCode();
    const expiresAt = Date.now() + lifetime;
    try {
      requireServedDomain(config, domain);
      await store.createInvite(domain, code, expiresAt);
    } finally {
      await store.close();
    }
    printResult(args.json, code, { domain, code, expiresAt: new Date(expiresAt).toISOString() });
  },
};

const listUsers: CommandModule<GlobalArgs, AdminArgs> = {
  command: 'list-users',
  describe: 'list accounts',
  builder: (y) => serverOptions(y),
  handler: async (args) => {
    const { store } = await openStore(args);
    try {
      const accounts = await store.listAccounts(args.domain?.[0]);
      const rows = accounts.map((a) => ({ address: `${a.user}@${a.domain}`, created: new Date(a.createdAt).toISOString() }));
      printResult(args.json, rows.map((r) => `${r.address}\t${r.created}`).join('\n') || '(no accounts)', rows);
    } finally {
      await store.close();
    }
  },
};

const run: CommandModule<GlobalArgs, ServerArgs> = {
  command: '$0',
  describe: 'run the identity server',
  builder: serverOptions,
  handler: async (args) => {
    const config = resolveServerConfig(args);
    // federation.servers from server.yaml, then --resolve on top (a flag beats the file).
    const servers = new Map(Object.entries(config.federation.servers).map(([domain, server]) => [domain, { ...server }]));
    await runServer(config, logLevelOf(args), serverResolver(args, servers));
  },
};

export const serverCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'server',
  describe: 'run the identity server, or administer its data (add-user, remove-user, revoke, invite, list-users)',
  builder: (y) => y.command(addUser).command(removeUser).command(revoke).command(invite).command(listUsers).command(run),
  handler: () => undefined,
};
