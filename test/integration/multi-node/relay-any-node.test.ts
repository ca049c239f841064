/**
 * A relay leg works whichever node of the domain it lands on (docs/deploy.md,
 * "Relay"). Behind DNS round robin or a TCP load balancer an agent's relay
 * leg may reach a node that neither holds the token (the caller's node) nor
 * forwarded the inbound (the listener's node). That node learnt from the
 * holder, over the node mesh, which node the token id pairs on, and carries
 * the leg there; a leg whose token id no node announced to it is refused
 * where it lands, and nothing is carried anywhere.
 *
 * Three nodes on one PostgreSQL: the caller's control session on node 1,
 * the listener's on node 2, and the relay legs on node 3.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { COMMANDS } from '../../../q2q/control/protocol';
import { createServerResolver } from '../../../q2q/control/discovery';
import type { ServerConnection } from '../../../q2q/control/server-connection';
import { openRelayLeg } from '../../../q2q/negotiate/relay-leg';
import { dialRelayLeg, legRequest, relayTokenId } from '../../../q2q/transport/relay-leg';
import { describeCertificate } from '../../../q2q/identity';
import { runVertex, startServer, stopAll, tempDir, type ServerHandle } from '../../helpers/cli';
import { untilTrue } from '../../helpers/net';
import { describePostgres, postgresDatabase } from '../../helpers/postgres';
import { startEcho, type Closable } from '../agent/helpers';
import {
  agentOn, controlSessionAt, DOMAIN, metricsOf, online, registerUser, sha, startBalancer, startCluster, throughForward,
  type Balancer, type Cluster, type RegisteredUser, type TestAgent,
} from './helpers';

const TEN_MB = 10 * 1024 * 1024;

jest.setTimeout(180_000);

/** Every line a node logged since `from` about a relay leg (one that reached it, or that it carried). */
const legLines = (node: ServerHandle, from: number): string[] => node.proc.output().slice(from).split('\n').filter((l) => /relay leg|relay spliced/.test(l));
afterAll(stopAll);

/** The outcome of dialling a leg: 'paired' or the refusal's code. */
async function outcome(p: Promise<{ socket: Socket }>, keep: Array<ServerConnection | Duplex>): Promise<string> {
  try {
    keep.push((await p).socket);
    return 'paired';
  } catch (err) {
    return (err as { code?: string }).code ?? (err as Error).message;
  }
}

describePostgres('a relay leg that lands on a node that neither holds its token nor forwarded its inbound', () => {
  const database = postgresDatabase();
  let cluster: Cluster;
  let echo: Closable;
  const open: Array<ServerConnection | Duplex> = [];

  beforeAll(async () => {
    echo = await startEcho();
    cluster = await startCluster(await database().freshSchema());
  }, 120_000);

  afterAll(async () => {
    for (const c of open.splice(0)) 'destroy' in c ? c.destroy() : c.close();
    await stopAll();
    await echo?.close();
  });

  const nodes = () => cluster.nodes as [ServerHandle, ServerHandle, ServerHandle];
  const at = (node: ServerHandle) => createServerResolver({ overrides: new Map([[DOMAIN, { host: '127.0.0.1', port: node.port }]]) });
  const endpoint = (node: ServerHandle) => ({ host: '127.0.0.1', port: node.port });

  describe('agents behind a load balancer that sends their control sessions to nodes 1 and 2 and their relay legs to node 3', () => {
    let alice: TestAgent;
    let bob: TestAgent;
    let aliceLb: Balancer;
    let bobLb: Balancer;

    beforeAll(async () => {
      const [n1, n2, n3] = nodes();
      aliceLb = await startBalancer(n1, n3);
      bobLb = await startBalancer(n2, n3);
      bob = await agentOn(bobLb.handle(), `bob@${DOMAIN}`, [
        `expose:\n  - { service: echo, target: "127.0.0.1:${echo.port}", allow: ["alice@${DOMAIN}"] }`,
        'routes: [relay]',
      ].join('\n'));
      alice = await agentOn(aliceLb.handle(), `alice@${DOMAIN}`, 'routes: [relay]');
      await Promise.all([online(alice), online(bob)]);
      await untilTrue('bob homed on node 2, alice on node 1', () =>
        n2.proc.output().includes('"address":"bob@mn.test"') && n1.proc.output().includes('"address":"alice@mn.test"'));
    }, 120_000);

    afterAll(async () => {
      await alice?.proc.stop();
      await bob?.proc.stop();
      await aliceLb?.close();
      await bobLb?.close();
    });

    it('10 MB byte-exact; both legs land on node 3, which carries them to node 1, where they pair', async () => {
      const [n1, n2, n3] = nodes();
      const from = cluster.nodes.map((n) => n.proc.output().length);
      const payload = randomBytes(TEN_MB);
      const back = await throughForward(alice, `bob@${DOMAIN}:echo`, payload).catch((err: Error) => {
        // Why, from where the legs landed.
        throw new Error(`${err.message}; node 3 logged: ${legLines(n3, from[2] as number).join('\n') || '(nothing about relay legs)'}`);
      });
      expect(back.length).toBe(payload.length);
      expect(sha(back)).toBe(sha(payload));
      // Node 1 took alice's inbound (the token pairs there) and forwarded it to node 2, bob's node.
      expect(n1.proc.output().slice(from[0])).toMatch(/"node":"n2".*inbound brokered through another node/);
      // Both legs reached node 3 and were carried to node 1, where they were spliced.
      const carried = n3.proc.output().slice(from[2]).match(/"node":"n1"[^\n]*relay leg carried to the node holding its token/g) ?? [];
      expect(carried.length).toBe(2);
      expect(n1.proc.output().slice(from[0])).toMatch(/relay spliced/);
      // Node 2 carried nothing: no leg reached it.
      expect(n2.proc.output().slice(from[1])).not.toMatch(/relay leg carried/);
      expect(await metricsOf(n3)).toMatch(/^vertex_server_node_relay_legs_total\{outcome="ok",node="n3"\} [2-9]/m);
      const status = JSON.parse((await alice.vertex(['status', '--json'])).stdout) as { tunnels?: Array<{ route?: string }> };
      expect(JSON.stringify(status)).not.toMatch(/"route":"(tcp|ptcp)"/);
    }, 180_000);
  });

  describe('raw sessions: carol on node 1 calls dan on node 2; legs at node 3', () => {
    let carol: RegisteredUser;
    let dan: RegisteredUser;
    let mallory: RegisteredUser;
    let erin: RegisteredUser;

    beforeAll(async () => {
      const [n1] = nodes();
      carol = await registerUser(n1, `carol@${DOMAIN}`);
      dan = await registerUser(n1, `dan@${DOMAIN}`);
      mallory = await registerUser(n1, `mallory@${DOMAIN}`);
      erin = await registerUser(n1, `erin@${DOMAIN}`);
    }, 60_000);

    afterEach(() => {
      for (const c of open.splice(0)) 'destroy' in c ? c.destroy() : c.close();
    });

    /** dan listens on node 2 answering with `token`; `caller`'s (carol's) inbound on node 1 is brokered to him. */
    async function brokered(token: string, caller = carol): Promise<void> {
      const [n1, n2] = nodes();
      const danSession = await controlSessionAt(dan, n2, open);
      danSession.peer.handle(COMMANDS.inbound, () => ({ token, candidates: '[]' }));
      danSession.peer.handle(COMMANDS.relayReady, () => ({}));
      await danSession.call(COMMANDS.listen, { services: '["svc"]', device: 'raw' });
      const carolSession = await controlSessionAt(caller, n1, open);
      let answer: Record<string, string | undefined> = {};
      await untilTrue('node 1 brokers the inbound to dan on node 2', async () => {
        try {
          answer = await carolSession.call(COMMANDS.inbound, { to: `dan@${DOMAIN}`, service: 'svc', candidates: '[]', routes: '["relay"]' });
          return true;
        } catch {
          return false;
        }
      });
      expect(answer.token).toBe(token);
    }

    it('a leg naming the live token id but not sealed with the token is carried to node 1 and refused there; the genuine legs still pair, bytes pass', async () => {
      const [n1, , n3] = nodes();
      const token = randomBytes(16).toString('hex');
      await brokered(token);
      const from1 = n1.proc.output().length;
      // mallory copied the token id off the wire; she does not know the token.
      const forged = { ...legRequest(mallory.identity, DOMAIN, randomBytes(16).toString('hex')), token_id: relayTokenId(token) };
      expect(await outcome(dialRelayLeg(endpoint(n3), forged, { what: 'forged leg', timeoutMs: 20_000 }), open)).toBe('TokenInvalid');
      expect(legLines(n1, from1).join('\n')).toMatch(/relay leg refused: request/);

      const carolLeg = openRelayLeg({ domain: DOMAIN, token, identity: carol.identity, resolve: at(n3) });
      const danLeg = openRelayLeg({ domain: DOMAIN, token, identity: dan.identity, resolve: at(n3) });
      const [a, b] = await Promise.all([carolLeg, danLeg]);
      open.push(a, b);
      const data = randomBytes(256 * 1024);
      const got: Buffer[] = [];
      let n = 0;
      const received = new Promise<void>((resolve) => b.on('data', (d: Buffer) => { got.push(d); n += d.length; if (n >= data.length) resolve(); }));
      a.write(data);
      await received;
      expect(sha(Buffer.concat(got))).toBe(sha(data));
      expect(n1.proc.output().slice(from1)).toMatch(/relay spliced/);
    });

    it('a revocation closes legs spliced on node 1 that were carried there from node 3', async () => {
      const [n1, n2, n3] = nodes();
      const token = randomBytes(16).toString('hex');
      await brokered(token, erin);
      const [a, b] = await Promise.all([
        openRelayLeg({ domain: DOMAIN, token, identity: erin.identity, resolve: at(n3) }),
        openRelayLeg({ domain: DOMAIN, token, identity: dan.identity, resolve: at(n3) }),
      ]);
      open.push(a, b);
      const echoed = new Promise<Buffer>((resolve) => b.once('data', resolve));
      a.write('ping');
      expect((await echoed).toString()).toBe('ping');
      const closed = Promise.all([a, b].map((s) => new Promise<void>((resolve) => {
        s.on('error', () => undefined);
        if (s.destroyed) resolve();
        else s.once('close', () => resolve());
      })));
      const from1 = n1.proc.output().length;
      // Revoked through node 2's data directory and the shared store, as an operator would on any node.
      const revoke = await runVertex(['server', 'revoke', describeCertificate(erin.identity.certPem).serial, '--data', n2.dataDir, '--store', cluster.storeUrl]);
      expect(revoke.code).toBe(0);
      await n1.proc.waitFor(/relay legs closed: certificate revoked/, 30_000, from1);
      await closed;
    });

    /**
     * A leg whose token id no node announced, followed by bytes, sent to `node`:
     * its answer, and every line the other nodes logged about relay legs meanwhile.
     */
    async function unknownLeg(node: ServerHandle, others: ServerHandle[]): Promise<{ answer: string; elsewhere: string[] }> {
      const from = others.map((o) => o.proc.output().length);
      const request = legRequest(mallory.identity, DOMAIN, randomBytes(16).toString('hex'));
      const answer = await outcome(dialRelayLeg(endpoint(node), request, { what: 'unknown leg', timeoutMs: 20_000 }), open);
      // Give a carried leg time to show up where it went.
      await new Promise((r) => setTimeout(r, 500));
      return { answer, elsewhere: others.flatMap((o, i) => legLines(o, from[i] as number)) };
    }

    it('a leg with an unknown token id at node 3 is refused there (TokenInvalid), and no node is dialled for it', async () => {
      const [n1, n2, n3] = nodes();
      const before = (await metricsOf(n3)).match(/^vertex_server_node_relay_legs_total.*$/gm) ?? [];
      const from3 = n3.proc.output().length;
      const { answer, elsewhere } = await unknownLeg(n3, [n1, n2]);
      expect(answer).toBe('TokenInvalid');
      expect(elsewhere).toEqual([]);
      expect(n3.proc.output().slice(from3)).toMatch(/relay leg refused: token/);
      expect((await metricsOf(n3)).match(/^vertex_server_node_relay_legs_total.*$/gm) ?? []).toEqual(before);
    });

    it('the control: a node with fault relay-carry-unknown (carries unknown token ids to another node) fails that check', async () => {
      const [n1, n2, n3] = nodes();
      const dataDir = tempDir('node4');
      fs.cpSync(path.join(n1.dataDir, 'ca'), path.join(dataDir, 'ca'), { recursive: true });
      const n4 = await startServer([DOMAIN], {
        dataDir, env: { VERTEX_TEST_FAULT: 'relay-carry-unknown' },
        extraArgs: ['--store', cluster.storeUrl, '--node-name', 'n4', '--node-listen', '127.0.0.1:0', '--metrics', '127.0.0.1:0', '--log-level', 'info'],
      });
      try {
        await n4.proc.waitFor(/node-to-node listening/);
        const { elsewhere } = await unknownLeg(n4, [n1, n2, n3]);
        expect(elsewhere.length).toBeGreaterThan(0);
      } finally {
        await n4.proc.stop();
      }
    });
  });
});
