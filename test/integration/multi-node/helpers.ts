/**
 * Several `vertex server` nodes of one domain on one PostgreSQL, and agents
 * homed on chosen nodes, for the multi-node tier (issue 14).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { HomeStore, type StoredIdentity } from '../../../agent/home-store';
import { createServerResolver } from '../../../q2q/control/discovery';
import { openServerConnection, type ServerConnection } from '../../../q2q/control/server-connection';
import { runVertex, startServer, startVertex, tempDir, type ServerHandle, type VertexProcess } from '../../helpers/cli';
import { connectTcp, until } from '../../helpers/net';
import { exchange } from '../agent/helpers';

export const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

export const PASSWORD = 'correct horse battery staple';
export const DOMAIN = 'mn.test';

export interface Cluster {
  nodes: ServerHandle[];
  storeUrl: string;
}

/** Three nodes of DOMAIN on `storeUrl`: node 1 creates the CA, nodes 2 and 3 get a copy (docs/deploy.md). */
export async function startCluster(storeUrl: string, count = 3, extraArgs: string[] = []): Promise<Cluster> {
  const nodes: ServerHandle[] = [];
  for (let i = 1; i <= count; i++) {
    const dataDir = tempDir(`node${i}`);
    if (i > 1) fs.cpSync(path.join((nodes[0] as ServerHandle).dataDir, 'ca'), path.join(dataDir, 'ca'), { recursive: true });
    nodes.push(await startServer([DOMAIN], {
      dataDir,
      extraArgs: ['--store', storeUrl, '--node-name', `n${i}`, '--node-listen', '127.0.0.1:0', '--metrics', '127.0.0.1:0', '--log-level', 'info', ...extraArgs],
    }));
  }
  return { nodes, storeUrl };
}

/** The Prometheus text a node serves on /metrics. */
/** A user registered with the real CLI through `node`: their home store and identity. */
export interface RegisteredUser { store: HomeStore; identity: StoredIdentity }

export async function registerUser(node: ServerHandle, address: string): Promise<RegisteredUser> {
  const home = tempDir('home');
  const reg = await runVertex([...node.resolveArg(DOMAIN), '--home', home, 'register', address, '--password-stdin'], { input: PASSWORD });
  if (reg.code !== 0) throw new Error(`register ${address}: ${reg.stderr}`);
  const store = new HomeStore(home);
  return { store, identity: store.loadIdentity(address) };
}

/** A control session of `user` at `node` (not at whichever node SRV would pick), added to `open` for the test to close. */
export async function controlSessionAt(user: RegisteredUser, node: ServerHandle, open: Array<ServerConnection | unknown>): Promise<ServerConnection> {
  const c = await openServerConnection({
    domain: DOMAIN, resolve: createServerResolver({ overrides: new Map([[DOMAIN, { host: '127.0.0.1', port: node.port }]]) }),
    trust: user.store, credentials: { keyPem: user.identity.keyPem, certPem: user.identity.certPem },
  });
  open.push(c);
  return c;
}

export async function metricsOf(node: ServerHandle): Promise<string> {
  const port = /"port":(\d+)[^\n]*metrics on \/metrics/.exec(node.proc.output())?.[1];
  if (!port) throw new Error('the node serves no metrics');
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  return res.text();
}

export interface TestAgent {
  proc: VertexProcess;
  home: string;
  vertex(args: string[]): ReturnType<typeof runVertex>;
}

/**
 * Registers `address` through the first of `nodes` and starts its agent
 * homed there; agent.yaml lists `nodes` in order (the later ones are where it
 * goes when the first is down).
 */
export async function agentOn(nodes: ServerHandle | ServerHandle[], address: string, extraYaml = '', opts: { sameIdentityAs?: TestAgent } = {}): Promise<TestAgent> {
  const list = Array.isArray(nodes) ? nodes : [nodes];
  const node = list[0] as ServerHandle;
  const home = tempDir('home');
  const resolve = node.resolveArg(DOMAIN);
  if (opts.sameIdentityAs) {
    // Another device of the same user: the identity copied, as onto a second machine.
    for (const entry of ['identities', 'cas', 'known_domains']) {
      if (!fs.existsSync(path.join(opts.sameIdentityAs.home, entry))) continue;
      fs.cpSync(path.join(opts.sameIdentityAs.home, entry), path.join(home, entry), { recursive: true });
    }
  } else {
    const reg = await runVertex([...resolve, '--home', home, 'register', address, '--password-stdin'], { input: PASSWORD });
    if (reg.code !== 0) throw new Error(`register ${address}: ${reg.stderr}`);
  }
  fs.writeFileSync(path.join(home, 'agent.yaml'), [
    'version: 1',
    'socks: { listen: 127.0.0.1:0 }',
    `domains: { ${DOMAIN}: { server: [${list.map((n) => `"127.0.0.1:${n.port}"`).join(', ')}] } }`,
    `control: { socket: ${JSON.stringify(path.join(home, 'agent.sock'))} }`,
    'peer_listen: 127.0.0.1:0',
    'advertise: [127.0.0.1]',
    'relay_delay_ms: 300',
    extraYaml,
  ].join('\n'));
  const proc = startVertex(['--home', home, 'agent', '--log-level', 'info']);
  await proc.waitFor(/control socket /);
  // The CLI's own commands find the server through agent.yaml too (no --resolve): they go to the running agent.
  return { proc, home, vertex: (args) => runVertex(['--home', home, ...args]) };
}

/** Waits until `agent`'s status says it is online (at `server` HOST:PORT when given); returns the server it names. */
export async function online(agent: TestAgent, server?: string, ms?: number): Promise<string> {
  return until('the agent online', async () => {
    const r = await agent.vertex(['status', '--json']);
    if (r.code !== 0) return undefined;
    const status = JSON.parse(r.stdout) as { server?: { state?: string; server?: string } };
    if (status.server?.state !== 'online') return undefined;
    if (server !== undefined && status.server.server !== server) return undefined;
    return status.server.server ?? '';
  }, ms);
}

/** Forwards a local port to `to` on the caller's running agent and sends `payload` through it. */
export async function throughForward(caller: TestAgent, to: string, payload: Buffer): Promise<Buffer> {
  const added = await caller.vertex(['forward', '127.0.0.1:0', to, '--json']);
  if (added.code !== 0) throw new Error(`forward: ${added.stderr}`);
  const listen = (JSON.parse(added.stdout) as { listen: string }).listen;
  const port = Number(listen.slice(listen.lastIndexOf(':') + 1));
  try {
    return await exchange(await connectTcp(port), payload);
  } finally {
    await caller.vertex(['forward', '--remove', String(port)]);
  }
}


/**
 * A TCP load balancer in front of the nodes, as an operator may put one
 * (docs/deploy.md), whose pick the test decides: each new TLS connection
 * (a control session) goes to `control`, each other connection (a relay
 * leg, which opens in the clear) to `legs`. So an agent's control session
 * and its relay legs land on different nodes, as they may behind any
 * balancer or DNS round robin. Bytes, half-closes and resets are passed on
 * as they are (the relay legs carry the peers' own TLS).
 */
export interface Balancer {
  port: number;
  control: ServerHandle;
  legs: ServerHandle;
  /** As a ServerHandle for agentOn: registration goes to `control` directly, agent.yaml names the balancer. */
  handle(): ServerHandle;
  close(): Promise<void>;
}

export async function startBalancer(control: ServerHandle, legs: ServerHandle): Promise<Balancer> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    sockets.add(client);
    client.once('close', () => sockets.delete(client));
    client.on('error', () => undefined);
    client.once('data', (first: Buffer) => {
      client.pause();
      const to = first[0] === 0x16 ? balancer.control : balancer.legs;
      const upstream = net.connect({ host: '127.0.0.1', port: to.port, allowHalfOpen: true });
      sockets.add(upstream);
      upstream.once('close', () => sockets.delete(upstream));
      upstream.on('error', () => undefined);
      upstream.write(first);
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
      // A reset on one side is a reset on the other (a close without an end).
      client.once('close', () => { if (!client.readableEnded) upstream.resetAndDestroy(); });
      upstream.once('close', () => { if (!upstream.readableEnded) client.resetAndDestroy(); });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const balancer: Balancer = {
    port: (server.address() as net.AddressInfo).port,
    control,
    legs,
    handle: () => ({ ...balancer.control, port: balancer.port }),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return balancer;
}
