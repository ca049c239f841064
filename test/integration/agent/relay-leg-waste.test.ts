/**
 * Issue 12: the listener opens its relay leg only when its server says
 * relay-ready (the caller's leg is in), never on a timer of its own. Real
 * `vertex server`s and agents: bob's direct address answers only after 1.5 s
 * (a delaying TCP hop in front of his peer port), longer than bob's own relay
 * delay (300 ms) and shorter than alice's (10 s), so the direct route wins and
 * alice never opens a relay leg (nor tries ptcp: routes [tcp, relay]). Every
 * connection bob's agent makes to his home server goes through a counting
 * hop: the connect must add none (a relay leg is a connection to the home
 * server). Before, bob opened a leg 300 ms
 * after answering and it was wasted.
 *
 * Run against the listener before this change (its leg on a timer of its
 * relay delay), it fails: the hop counts 2 connections where 1 was before.
 * The in-memory counterpart, with the old timer as a control that fails in
 * every run, is in test/unit/q2q/negotiate/ladder.test.ts.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import type { AgentStatus } from '../../../agent/daemon';
import { startVertex, stopAll } from '../../helpers/cli';
import { listenOnPort0 } from '../../helpers/net';
import { sha256, startWorld, type World } from '../../helpers/q2q-world';
import { agentYaml, connectTcp, exchange, portOf, startEcho, vertexFor, type AgentHandle, type Closable } from './helpers';

const DIRECT_DELAY_MS = 1_500;

/** A TCP hop to 127.0.0.1:`to`, listening on `host`:`port`; each connection is counted and passed on after `delayMs`. */
async function hop(to: number, opts: { host?: string; port?: number; delayMs?: number } = {}): Promise<{ port: number; connections: () => number; close(): Promise<void> }> {
  let count = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (client) => {
    count += 1;
    sockets.add(client);
    client.on('error', () => undefined);
    client.on('close', () => sockets.delete(client));
    setTimeout(() => {
      const upstream = net.connect({ host: '127.0.0.1', port: to, allowHalfOpen: true });
      sockets.add(upstream);
      upstream.on('error', () => client.destroy());
      client.on('error', () => upstream.destroy());
      upstream.on('close', () => { sockets.delete(upstream); client.destroy(); });
      client.on('close', () => upstream.destroy());
      client.pipe(upstream).pipe(client);
      client.resume();
    }, opts.delayMs ?? 0);
  });
  const port = opts.port
    ? await new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port, opts.host, () => resolve(opts.port as number));
    })
    : await listenOnPort0(server, opts.host);
  return {
    port,
    connections: () => count,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** `vertex agent` in `home` with agent.yaml from agentYaml(), rewritten by `edit`. */
async function startAgentWith(world: World, home: string, extra: string, edit: (yaml: string) => string = (y) => y): Promise<AgentHandle> {
  fs.writeFileSync(path.join(home, 'agent.yaml'), edit(agentYaml(world, home, extra)));
  const proc = startVertex(['--home', home, 'agent', '--log-level', 'info']);
  const socks = await proc.waitFor(/socks5 listening on 127\.0\.0\.1:(\d+)/);
  await proc.waitFor(/control socket /);
  return { proc, home, socksPort: Number(socks[1]), ...vertexFor(world, home) };
}

describe('the listener opens no relay leg when a direct route wins late', () => {
  let world: World;
  let echo: Closable;
  const closers: Array<() => Promise<void>> = [];
  const dirs: string[] = [];

  afterAll(async () => {
    await stopAll();
    await Promise.all(closers.map((c) => c()));
    await echo?.close();
    for (const d of [...dirs, world?.a.dataDir, world?.b.dataDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  it('a direct tcp route that answers after 1.5 s: no relay leg from bob to his server', async () => {
    echo = await startEcho();
    world = await startWorld();
    const aliceUser = await world.user('alice@a.test');
    const bobUser = await world.user('bob@b.test');
    dirs.push(aliceUser.home.dir, bobUser.home.dir);

    // bob reaches b.test through a counting hop, and advertises 127.0.0.2, where a slow hop leads to his peer port.
    const toServer = await hop(world.b.port);
    closers.push(toServer.close);
    const bob = await startAgentWith(world, bobUser.home.dir, `expose:\n  - { service: echo, target: "127.0.0.1:${echo.port}", allow: ["alice@a.test"] }`, (yaml) => yaml
      .replace(`b.test: { server: "127.0.0.1:${world.b.port}" }`, `b.test: { server: "127.0.0.1:${toServer.port}" }`)
      .replace('advertise: [127.0.0.1]', 'advertise: [127.0.0.2]'));
    const bobStatus = JSON.parse((await bob.vertex(['status', '--json'])).stdout) as AgentStatus;
    expect(bobStatus.server.state).toBe('online');
    const peerPort = portOf(bobStatus.peerListen ?? '');
    const slow = await hop(peerPort, { host: '127.0.0.2', port: peerPort, delayMs: DIRECT_DELAY_MS });
    closers.push(slow.close);

    const alice = await startAgentWith(world, aliceUser.home.dir, 'routes: [tcp, relay]', (yaml) => yaml.replace('relay_delay_ms: 300', 'relay_delay_ms: 10000'));
    const forwarding = await alice.vertex(['forward', '0', 'bob@b.test:echo', '--json']);
    expect(forwarding.code).toBe(0);
    const fwdPort = portOf((JSON.parse(forwarding.stdout) as { listen: string }).listen);

    const before = toServer.connections();
    const payload = randomBytes(200_000);
    expect(sha256(await exchange(await connectTcp(fwdPort), payload))).toBe(sha256(payload));

    // The direct route won, through the slow hop.
    const aliceStatus = JSON.parse((await alice.vertex(['status', '--json'])).stdout) as AgentStatus;
    expect((aliceStatus.sessions ?? []).filter((s) => s.peer === 'bob@b.test').map((s) => s.route)).toEqual(['tcp']);
    expect(slow.connections()).toBeGreaterThanOrEqual(1);
    // And bob opened nothing toward his server for it: no relay leg.
    expect(toServer.connections()).toBe(before);
  }, 120_000);
});
