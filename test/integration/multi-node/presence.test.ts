/**
 * Presence in memory across nodes (issue 14): each node keeps a copy of
 * where the other nodes' devices listen, kept current by the store's
 * notifications. Two real `vertex server` nodes on one real PostgreSQL; the
 * agents are raw AMP sessions, so the test sees the pushes themselves.
 *
 * - A device coming online on node 2 reaches node 1's copy: bob's other
 *   device on node 1 is pushed the new view (no node-to-node notice is sent
 *   for it any more), and inbounds at node 1 reach it with no store query
 *   (vertex_server_presence_lookups_total{source="store"} does not move).
 * - Node 2 killed with SIGKILL: node 1 drops its devices once its beat is
 *   stale, and tells bob's device on node 1.
 */
import { randomBytes } from 'node:crypto';
import { COMMANDS } from '../../../q2q/control/protocol';
import type { ServerConnection } from '../../../q2q/control/server-connection';
import { stopAll, type ServerHandle } from '../../helpers/cli';
import { untilTrue } from '../../helpers/net';
import { describePostgres, postgresDatabase } from '../../helpers/postgres';
import { controlSessionAt, DOMAIN, registerUser, type RegisteredUser, metricsOf, startCluster } from './helpers';

jest.setTimeout(120_000);
afterAll(stopAll);

async function lookups(node: ServerHandle, source: 'memory' | 'store'): Promise<number> {
  const m = new RegExp(`^vertex_server_presence_lookups_total\\{source="${source}",node="[^"]+"\\} (\\d+)`, 'm').exec(await metricsOf(node));
  return Number(m?.[1] ?? 0);
}

describePostgres('presence across nodes, from memory', () => {
  const database = postgresDatabase();
  const open: ServerConnection[] = [];
  afterAll(() => {
    for (const c of open.splice(0)) c.close();
  });

  it('a device online on node 2 is seen by node 1 through the store\'s notification; inbounds to it cost node 1 no store query; node 2 killed, node 1 drops it', async () => {
    const { nodes } = await startCluster(await database().freshSchema(), 2);
    const [node1, node2] = nodes as [ServerHandle, ServerHandle];
    const user = (address: string) => registerUser(node1, address);
    const session = (u: RegisteredUser, node: ServerHandle) => controlSessionAt(u, node, open);
    const bob = await user(`bob@${DOMAIN}`);
    const carol = await user(`carol@${DOMAIN}`);

    // bob's laptop on node 1, told of bob's other devices by presence pushes.
    const laptop = await session(bob, node1);
    const views: string[][] = [];
    laptop.peer.handle(COMMANDS.presence, (args) => {
      views.push(JSON.parse(args.devices ?? '[]') as string[]);
      return {};
    });
    laptop.peer.handle(COMMANDS.inbound, () => ({ token: randomBytes(16).toString('hex'), candidates: '[]' }));
    await laptop.call(COMMANDS.listen, { services: '["other"]', device: 'laptop' });

    // bob's desk on node 2: node 1 hears of it from the store, and pushes laptop the new view.
    const desk = await session(bob, node2);
    let asked = 0;
    desk.peer.handle(COMMANDS.inbound, () => {
      asked += 1;
      return { token: randomBytes(16).toString('hex'), candidates: '[]' };
    });
    await desk.call(COMMANDS.listen, { services: '["svc"]', device: 'desk' });
    await untilTrue('laptop on node 1 told of desk on node 2', () => views.some((v) => v.includes('desk')));
    expect(views.at(-1)).toEqual(['desk', 'laptop']);

    // Inbounds at node 1 for bob's svc: forwarded to desk on node 2, from the copy.
    const caller = await session(carol, node1);
    const inbound = () => caller.call(COMMANDS.inbound, { to: `bob@${DOMAIN}`, service: 'svc', candidates: '[]', routes: '["tcp"]' });
    await inbound();
    const store0 = await lookups(node1, 'store');
    const memory0 = await lookups(node1, 'memory');
    for (let i = 0; i < 20; i++) expect((await inbound()).device).toBe('desk');
    expect(asked).toBe(21);
    expect(await lookups(node1, 'store')).toBe(store0);
    expect(await lookups(node1, 'memory')).toBeGreaterThanOrEqual(memory0 + 20);

    // desk changes its services on node 2: node 1 follows (svc2 reached; svc no longer, which asks the store once to be sure).
    await desk.call(COMMANDS.listen, { services: '["svc2"]', device: 'desk' });
    await untilTrue('node 1 reaches desk\'s svc2', async () => {
      try {
        return (await caller.call(COMMANDS.inbound, { to: `bob@${DOMAIN}`, service: 'svc2', candidates: '[]', routes: '["tcp"]' })).device === 'desk';
      } catch {
        return false;
      }
    });
    await expect(inbound()).rejects.toMatchObject({ code: 'NotExposed' });

    // Node 2 dies without a word: node 1 drops desk once node 2's beat is stale, and tells laptop.
    const pushes = views.length;
    node2.proc.child.kill('SIGKILL');
    await untilTrue('laptop told desk is gone', () => views.length > pushes && JSON.stringify(views.at(-1)) === '["laptop"]', 30_000);
    await expect(caller.call(COMMANDS.inbound, { to: `bob@${DOMAIN}`, device: 'desk', service: 'svc2', candidates: '[]', routes: '["tcp"]' }))
      .rejects.toMatchObject({ code: 'Offline' });
  });
});
