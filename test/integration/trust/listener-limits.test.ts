/**
 * Issue 11, "what must hold" 7 (the listener's half): punch probes go only to
 * caller candidates that pass the sanity check (never loopback, never the
 * listener's own addresses), and one caller's burst of inbound requests is
 * bounded at the listener without locking anyone else out.
 *
 * A real listener node on real servers; the caller is any registered user
 * sending raw `inbound` requests with candidates of its choosing. The probe
 * check is also run against a listener with the old policy (probe whatever
 * the caller names) to show that it catches the probes.
 */
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { listenQ2Q, type Q2QNode } from '../../../q2q';
import { COMMANDS } from '../../../q2q/control/protocol';
import { createServerResolver } from '../../../q2q/control/discovery';
import { openServerConnection, type ServerConnection } from '../../../q2q/control/server-connection';
import { MAX_PENDING_PER_CALLER } from '../../../q2q/negotiate/inbound-limits';
import { probeFor } from '../../../q2q/negotiate/punch';
import { stopAll } from '../../helpers/cli';
import { echo, type World } from '../../helpers/q2q-world';
import { startOpenWorld } from './world';
import { untilTrue } from '../../helpers/net';

jest.setTimeout(120_000);

let world: World;
let bob: Awaited<ReturnType<World['user']>>;
let carol: Awaited<ReturnType<World['user']>>;
let mallory: Awaited<ReturnType<World['user']>>;
let alice: Awaited<ReturnType<World['user']>>;
const nodes: Q2QNode[] = [];
const controls: ServerConnection[] = [];

beforeAll(async () => {
  world = await startOpenWorld();
  [bob, carol, mallory, alice] = await Promise.all([world.user('bob@b.test'), world.user('carol@b.test'), world.user('mallory@a.test'), world.user('alice@a.test')]);
});

afterAll(async () => {
  for (const c of controls) c.close();
  await Promise.all(nodes.map((n) => n.stop()));
  await stopAll();
  for (const u of [bob, carol, mallory, alice]) if (u) fs.rmSync(u.home.dir, { recursive: true, force: true });
  for (const d of [world?.a.dataDir, world?.b.dataDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
});

async function control(user: Awaited<ReturnType<World['user']>>): Promise<ServerConnection> {
  const connection = await openServerConnection({
    domain: 'b.test',
    resolve: createServerResolver({ overrides: world.endpoints }),
    trust: user.home,
    credentials: { keyPem: user.identity.keyPem, certPem: user.identity.certPem },
  });
  controls.push(connection);
  return connection;
}

/** A UDP socket on every local address that records what arrives. */
async function recorder(): Promise<{ port: number; got: Buffer[]; close(): void }> {
  const udp = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => udp.bind(0, '0.0.0.0', () => resolve()));
  const got: Buffer[] = [];
  udp.on('message', (m) => got.push(m));
  return { port: udp.address().port, got, close: () => udp.close() };
}

async function until(predicate: () => boolean, what: string): Promise<void> {
  await untilTrue(what, predicate);
}

describe('listener limits', () => {
  it('sends no punch probe to loopback or to its own addresses; the old policy would have', async () => {
    const trap = await recorder();
    try {
      const own = Object.values(os.networkInterfaces()).flat().filter((i) => i?.family === 'IPv4').map((i) => (i as os.NetworkInterfaceInfo).address);
      const hostile = JSON.stringify([`ptcp:127.0.0.1:${trap.port}`, ...own.map((h) => `ptcp:${h}:${trap.port}`)]);
      nodes.push(await listenQ2Q(bob.identity, { svc: { allow: ['*'], onConnection: echo } }, bob.options({ routes: ['tcp', 'ptcp'] })));
      // The forbidden behaviour: a listener that probes whatever the caller names.
      nodes.push(await listenQ2Q(carol.identity, { svc: { allow: ['*'], onConnection: echo } }, carol.options({ routes: ['tcp', 'ptcp'], punchTargetPolicy: (c) => [...c] })));
      const conn = await control(mallory);
      const ask = (to: string) => conn.call(COMMANDS.inbound, { to, service: 'svc', candidates: hostile, routes: '["tcp","ptcp"]' });
      const safe = await ask('bob@b.test');
      const unsafe = await ask('carol@b.test');
      const count = (token: string | undefined) => trap.got.filter((m) => m.equals(probeFor(token ?? ''))).length;
      // Loopback delivers in send order: once the later listener's probes are in, the earlier one's would be.
      await until(() => count(unsafe.token) >= 3, 'the old policy\'s probes');
      expect(count(safe.token)).toBe(0);
    } finally {
      trap.close();
      await Promise.all(nodes.splice(0).map((n) => n.stop()));
    }
  });

  it(`bounds one caller's burst (${MAX_PENDING_PER_CALLER} pending) and still serves another caller`, async () => {
    nodes.push(await listenQ2Q(bob.identity, { svc: { allow: ['*'], onConnection: echo } }, bob.options({ routes: ['tcp'] })));
    const conn = await control(mallory);
    const answers = await Promise.allSettled(Array.from({ length: 300 }, () =>
      conn.call(COMMANDS.inbound, { to: 'bob@b.test', service: 'svc', candidates: '[]', routes: '["tcp"]' }, { timeoutMs: 60_000 })));
    const ok = answers.filter((a) => a.status === 'fulfilled').length;
    const limited = answers.filter((a) => a.status === 'rejected' && (a.reason as { code?: string }).code === 'RateLimited').length;
    expect(ok).toBeGreaterThan(0);
    expect(ok).toBeLessThanOrEqual(MAX_PENDING_PER_CALLER);
    expect(ok + limited).toBe(300);
    const other = await (await control(alice)).call(COMMANDS.inbound, { to: 'bob@b.test', service: 'svc', candidates: '[]', routes: '["tcp"]' });
    expect(other.token).toMatch(/^[0-9a-f]{32}$/);
  });
});
