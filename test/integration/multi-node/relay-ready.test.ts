/**
 * relay-ready across nodes (DESIGN.md): the listener's agent is told to open
 * its relay leg once the caller's leg is in, also when the caller's inbound
 * and leg are on node 1 and the listener's session is on node 2. Both sides
 * are raw AMP sessions, so the test sees the push itself; without the
 * node-to-node message the push never comes and the wait times out.
 */
import { randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { COMMANDS } from '../../../q2q/control/protocol';
import { createServerResolver } from '../../../q2q/control/discovery';
import type { ServerConnection } from '../../../q2q/control/server-connection';
import { openRelayLeg } from '../../../q2q/negotiate/relay-leg';
import { stopAll, type ServerHandle } from '../../helpers/cli';
import { untilTrue } from '../../helpers/net';
import { describePostgres, postgresDatabase } from '../../helpers/postgres';
import { controlSessionAt, DOMAIN, registerUser, type RegisteredUser, startCluster } from './helpers';

jest.setTimeout(120_000);
afterAll(stopAll);

describePostgres('relay-ready across the nodes of one domain', () => {
  const database = postgresDatabase();
  const open: Array<ServerConnection | Duplex> = [];
  afterEach(() => {
    for (const c of open.splice(0)) 'destroy' in c ? c.destroy() : c.close();
  });

  it('the caller\'s leg at node 1 makes node 2 tell its listener', async () => {
    const { nodes } = await startCluster(await database().freshSchema(), 2);
    const [node1, node2] = nodes as [ServerHandle, ServerHandle];
    const user = (address: string) => registerUser(node1, address);
    const at = (node: ServerHandle) => createServerResolver({ overrides: new Map([[DOMAIN, { host: '127.0.0.1', port: node.port }]]) });
    const session = (u: RegisteredUser, node: ServerHandle) => controlSessionAt(u, node, open);
    const bob = await user(`bob@${DOMAIN}`);
    const carol = await user(`carol@${DOMAIN}`);

    const bobSession = await session(bob, node2);
    const token = randomBytes(16).toString('hex');
    const ready: string[] = [];
    bobSession.peer.handle(COMMANDS.inbound, () => ({ token, candidates: '[]' }));
    bobSession.peer.handle(COMMANDS.relayReady, (args) => {
      ready.push(args.token ?? '');
      return {};
    });
    await bobSession.call(COMMANDS.listen, { services: '["svc"]', device: 'raw' });

    const carolSession = await session(carol, node1);
    // Node 1 learns of bob's device on node 2 through the store: ask until the inbound is brokered.
    let answer: Record<string, string | undefined> = {};
    await untilTrue('node 1 brokers an inbound to bob on node 2', async () => {
      try {
        answer = await carolSession.call(COMMANDS.inbound, { to: `bob@${DOMAIN}`, service: 'svc', candidates: '[]', routes: '["relay"]' });
        return true;
      } catch {
        return false;
      }
    });
    expect(answer.token).toBe(token);
    expect(ready).toEqual([]);

    const carolLeg = openRelayLeg({ domain: DOMAIN, token, identity: carol.identity, resolve: at(node1) });
    carolLeg.catch(() => undefined);
    await untilTrue('relay-ready reached bob on node 2', () => ready.length > 0);
    expect(ready).toEqual([token]);
    // And the legs pair across the nodes: bob's leg at node 2 is brought to node 1.
    const bobLeg = await openRelayLeg({ domain: DOMAIN, token, identity: bob.identity, resolve: at(node2) });
    open.push(bobLeg, await carolLeg);
  });
});
