/**
 * Issue 14, "must show": three real `vertex server` nodes of one domain on
 * one real PostgreSQL (same domain CA, copied), agents homed on different
 * nodes. alice's agent talks to node 1, bob's to node 3: alice's inbound
 * arrives at node 1, which finds bob on node 3 in the store and forwards it
 * there over node-to-node mutual TLS. Over the relay, alice's leg lands on
 * node 1 and bob's on node 3, which carries it to node 1 where they pair.
 */
import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import pg from 'pg';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runVertex, stopAll, tempDir, type ServerHandle } from '../../helpers/cli';
import { describePostgres, postgresDatabase } from '../../helpers/postgres';
import * as tls from 'node:tls';
import { createDomainCa, describeCertificate, normaliseSerial } from '../../../q2q/identity';
import { connectTcp, until } from '../../helpers/net';
import { attachAmp } from '../../../q2q/transport/amp-connection';
import { issueNodeCertificate } from '../../../server/node-identity';
import { ALPN_NODE, NODE_COMMANDS } from '../../../server/node-mesh';
import { startEcho, type Closable } from '../agent/helpers';
import { csrFor, openSession, outcome, type RawSession } from '../trust/raw-session';
import { agentOn, DOMAIN, metricsOf, online, PASSWORD, startCluster, throughForward, type Cluster, type TestAgent } from './helpers';

const TEN_MB = 10 * 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

afterAll(stopAll);

describePostgres('three nodes of one domain: presence, forwarding and relay across nodes', () => {
  const database = postgresDatabase();
  let cluster: Cluster;
  let echo: Closable;

  beforeAll(async () => {
    echo = await startEcho();
    cluster = await startCluster(await database().freshSchema());
  }, 120_000);

  afterAll(async () => {
    await stopAll();
    await echo?.close();
  });

  it('each node issues itself a node certificate and listens for the others', () => {
    for (const [i, node] of cluster.nodes.entries()) {
      expect(node.proc.output()).toMatch(new RegExp(`node-to-node listening \\(mutual tls\\)`));
      expect(node.proc.output()).toContain(`"node":"n${i + 1}"`);
    }
  });

  it('a node whose domain CA is not the others\' (its copy was missing, so it made one) refuses to start, and says what to copy', async () => {
    const r = await runVertex(['server', '--listen', '127.0.0.1:0', '--data', tempDir('node4'), '--domain', DOMAIN, '--registration', 'open',
      '--store', cluster.storeUrl, '--node-name', 'n4', '--node-listen', '127.0.0.1:0'], { timeoutMs: 60_000 });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/vertex: node n4: its CA for mn\.test \(SHA256:\S+\) is not the one the other nodes use \(SHA256:\S+, first on node n1\); copy data_dir\/ca\/mn\.test\/ from that node/);
  }, 60_000);

  describe('alice homed on node 1 reaches bob homed on node 3', () => {
    let alice: TestAgent;
    let bob: TestAgent;

    beforeAll(async () => {
      const [n1, , n3] = cluster.nodes as [ServerHandle, ServerHandle, ServerHandle];
      bob = await agentOn(n3, `bob@${DOMAIN}`, `expose:\n  - { service: echo, target: "127.0.0.1:${echo.port}", allow: ["alice@${DOMAIN}"] }`);
      alice = await agentOn(n1, `alice@${DOMAIN}`);
      await Promise.all([online(alice), online(bob)]);
    }, 120_000);

    afterAll(async () => {
      await alice?.proc.stop();
      await bob?.proc.stop();
    });

    it('over tcp: 10 MB byte-exact, the inbound forwarded from node 1 to node 3', async () => {
      const [n1, n2, n3] = cluster.nodes as [ServerHandle, ServerHandle, ServerHandle];
      const from = cluster.nodes.map((n) => n.proc.output().length);
      const payload = randomBytes(TEN_MB);
      const back = await throughForward(alice, `bob@${DOMAIN}:echo`, payload);
      expect(back.length).toBe(payload.length);
      expect(sha(back)).toBe(sha(payload));
      // Node 1 took alice's inbound and found bob on node 3; node 3 asked bob's agent.
      expect(n1.proc.output().slice(from[0])).toMatch(/"node":"n3".*inbound brokered through another node/);
      expect(n3.proc.output().slice(from[2])).toMatch(/"to":"bob@mn\.test".*inbound brokered/);
      // Node 2 holds neither and saw nothing of it.
      expect(n2.proc.output().slice(from[1])).not.toMatch(/inbound brokered/);
      expect(await metricsOf(n1)).toMatch(/^vertex_server_node_forwards_total\{outcome="ok",node="n1"\} [1-9]/m);
      const status = JSON.parse((await alice.vertex(['status', '--json'])).stdout) as { tunnels?: Array<{ route?: string }> };
      expect(JSON.stringify(status)).not.toMatch(/"route":"relay"/);
    }, 120_000);

    it('a device on no node is Offline, with one line', async () => {
      const r = await alice.vertex(['ping', `carol@${DOMAIN}`]);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/not online|no such|Offline/i);
    }, 60_000);
  });

  describe('the node port admits only node certificates of the domain CA', () => {
    let port: number;
    let ca: { domain: string; certPem: string; keyPem: string; fingerprint: string };

    beforeAll(() => {
      const n1 = cluster.nodes[0] as ServerHandle;
      port = Number(/"endpoint":"127\.0\.0\.1:(\d+)"/.exec(n1.proc.output())?.[1]);
      const dir = path.join(n1.dataDir, 'ca', DOMAIN);
      ca = { domain: DOMAIN, certPem: fs.readFileSync(path.join(dir, 'cert.pem'), 'utf8'), keyPem: fs.readFileSync(path.join(dir, 'key.pem'), 'utf8'), fingerprint: '' };
    });

    /** Connects to node 1's node port with `creds` and asks node-inbound for a user nobody holds: the answer, or why not. */
    async function probe(creds: { keyPem: string; certPem: string } | null): Promise<string> {
      const socket = tls.connect({
        host: '127.0.0.1', port, servername: DOMAIN, ALPNProtocols: [ALPN_NODE], ca: [ca.certPem], minVersion: 'TLSv1.3',
        checkServerIdentity: () => undefined, ...(creds && { key: creds.keyPem, cert: creds.certPem }),
      });
      try {
        await new Promise<void>((resolve, reject) => {
          socket.once('secureConnect', () => resolve());
          socket.once('error', reject);
        });
        const peer = attachAmp(socket);
        await peer.call(NODE_COMMANDS.inbound, {
          from: `mallory@${DOMAIN}`, to: `nobody@${DOMAIN}`, service: 'echo', device: 'default', certificate: 'x', candidates: '[]', routes: '[]',
        }, { timeoutMs: 20_000 });
        return 'answered';
      } catch (err) {
        return (err as { code?: string }).code ?? (err as Error).message;
      } finally {
        socket.destroy();
      }
    }

    it('a node certificate from the domain CA, recorded in the store as a node records its own, is answered (the control: the probe can succeed)', async () => {
      const creds = await issueNodeCertificate(ca, 'probe');
      const c = new pg.Client({ connectionString: cluster.storeUrl });
      await c.connect();
      try {
        await c.query('INSERT INTO node_certificates (serial, domain, node, not_before, not_after) VALUES ($1, $2, $3, 0, 0)',
          [normaliseSerial(new X509Certificate(creds.certPem).serialNumber), DOMAIN, 'probe']);
      } finally {
        await c.end();
      }
      expect(await probe(creds)).toBe('Offline');
    }, 60_000);

    it('no certificate, a user certificate of the domain, or a node certificate of another CA: refused before any command', async () => {
      expect(await probe(null)).not.toMatch(/^(Offline|answered)$/);
      const home = tempDir('home');
      const reg = await runVertex([...(cluster.nodes[0] as ServerHandle).resolveArg(DOMAIN), '--home', home, 'register', `mallory@${DOMAIN}`, '--password-stdin'], { input: PASSWORD });
      expect(reg.code).toBe(0);
      const id = path.join(home, 'identities', `mallory@${DOMAIN}`);
      const user = { keyPem: fs.readFileSync(path.join(id, 'key.pem'), 'utf8'), certPem: fs.readFileSync(path.join(id, 'cert.pem'), 'utf8') };
      expect(await probe(user)).not.toMatch(/^(Offline|answered)$/);
      const other = await createDomainCa(DOMAIN);
      expect(await probe(await issueNodeCertificate({ ...other, domain: DOMAIN, fingerprint: '' }, 'n9'))).not.toMatch(/^(Offline|answered)$/);
    }, 60_000);
  });

  describe('a password-guessing flood spread over all three nodes is limited as one', () => {
    const GUESSES_PER_NODE = 10;
    const sessions: RawSession[] = [];
    afterAll(() => {
      for (const s of sessions) s.close();
    });

    /** GUESSES_PER_NODE wrong passwords for `address` on each node at once, from `from`; the outcomes. */
    async function flood(nodes: ServerHandle[], address: string, from: string): Promise<string[]> {
      const perNode = await Promise.all(nodes.map(async (node) => {
        const s = await openSession(node.port, DOMAIN, from);
        sessions.push(s);
        const csrs = await Promise.all(Array.from({ length: GUESSES_PER_NODE }, () => csrFor(address)));
        return Promise.all(csrs.map((csr, i) => outcome(s.peer.call('sign', { address, password: `wrong guess ${i}`, csr }))));
      }));
      return perNode.flat();
    }
    const count = (results: string[], what: string) => results.filter((r) => r === what).length;

    it('30 guesses over 3 nodes: at most 5 passwords checked in all, the rest RateLimited; the owner logs in from another address', async () => {
      const address = `gina@${DOMAIN}`;
      const reg = await runVertex([...(cluster.nodes[1] as ServerHandle).resolveArg(DOMAIN), '--home', tempDir('home'), 'register', address, '--password-stdin'], { input: PASSWORD });
      expect(reg.code).toBe(0);
      const results = await flood(cluster.nodes, address, '127.0.0.7');
      expect(count(results, 'certificate')).toBe(0);
      expect(count(results, 'BadPassword')).toBeLessThanOrEqual(5);
      expect(count(results, 'BadPassword') + count(results, 'RateLimited')).toBe(results.length);
      // The right password from the flooding address is refused on every node now…
      for (const node of cluster.nodes) {
        const s = await openSession(node.port, DOMAIN, '127.0.0.7');
        sessions.push(s);
        expect(await outcome(s.peer.call('sign', { address, password: PASSWORD, csr: await csrFor(address) }))).toBe('RateLimited');
      }
      // …and works from the owner's own address.
      const owner = await openSession((cluster.nodes[2] as ServerHandle).port, DOMAIN, '127.0.0.8');
      sessions.push(owner);
      expect(await outcome(owner.peer.call('sign', { address, password: PASSWORD, csr: await csrFor(address) }))).toBe('certificate');
    }, 120_000);

    it('the control: three servers that do not share a store check 5 passwords each (the count above can fail)', async () => {
      const singles: ServerHandle[] = [];
      for (let i = 0; i < 3; i++) {
        const [node] = (await startCluster(await database().freshSchema(), 1)).nodes as [ServerHandle];
        const reg = await runVertex([...node.resolveArg(DOMAIN), '--home', tempDir('home'), 'register', `gina@${DOMAIN}`, '--password-stdin'], { input: PASSWORD });
        expect(reg.code).toBe(0);
        singles.push(node);
      }
      const results = await flood(singles, `gina@${DOMAIN}`, '127.0.0.9');
      expect(count(results, 'BadPassword')).toBe(15);
      await Promise.all(singles.map((n) => n.proc.stop()));
    }, 120_000);
  });

  describe('a revoke made on node 2 reaches node 3 within 5 s', () => {
    let una: TestAgent;
    let vic: TestAgent;

    beforeAll(async () => {
      const [n1, , n3] = cluster.nodes as [ServerHandle, ServerHandle, ServerHandle];
      vic = await agentOn(n3, `vic@${DOMAIN}`, `expose:\n  - { service: echo, target: "127.0.0.1:${echo.port}", allow: ["una@${DOMAIN}"] }`);
      una = await agentOn(n1, `una@${DOMAIN}`, 'routes: [tcp]');
      await Promise.all([online(una), online(vic)]);
    }, 120_000);

    afterAll(async () => {
      await una?.proc.stop();
      await vic?.proc.stop();
    });

    it('vic\'s session on node 3 is closed, and una\'s tunnel to vic (her agent on node 1) ends', async () => {
      const [, n2, n3] = cluster.nodes as [ServerHandle, ServerHandle, ServerHandle];
      // A direct tunnel una -> vic, held open.
      const added = await una.vertex(['forward', '127.0.0.1:0', `vic@${DOMAIN}:echo`, '--json']);
      expect(added.code).toBe(0);
      const listen = (JSON.parse(added.stdout) as { listen: string }).listen;
      const held = await connectTcp(Number(listen.slice(listen.lastIndexOf(':') + 1)));
      expect((await new Promise<Buffer>((resolve) => { held.once('data', resolve); held.write('ping'); })).toString()).toBe('ping');
      // The forward's client socket is half-open capable: the tunnel ending shows as its end.
      const heldEnded = new Promise<void>((resolve) => { held.once('end', () => resolve()); held.once('close', () => resolve()); });
      held.on('error', () => undefined);

      // "On node 2": the admin command with node 2's data directory and the shared store.
      const serial = describeCertificate(fs.readFileSync(path.join(vic.home, 'identities', `vic@${DOMAIN}`, 'cert.pem'), 'utf8')).serial;
      const from = n3.proc.output().length;
      const revoke = await runVertex(['server', 'revoke', serial, '--data', n2.dataDir, '--store', cluster.storeUrl]);
      const exited = Date.now();
      expect(revoke.code).toBe(0);
      await n3.proc.waitFor(new RegExp(`"serials":\\["${serial}"\\].*"sessions":[1-9].*revocation applied to live sessions`), 30_000, from);
      const ms = Date.now() - exited;
      process.stdout.write(`multi-node: vic's session on node 3 closed ${ms} ms after the revoke on node 2 exited\n`);
      expect(ms).toBeLessThan(5_000);
      // una's tunnel to vic ends: her agent (on node 1) was told, or vic's agent closed its side.
      const tunnels = async () => (JSON.parse((await una.vertex(['status', '--json'])).stdout) as { tunnels: unknown[] }).tunnels;
      await until('una\'s tunnel to vic closed', async () => ((await tunnels()).length === 0 ? true : undefined));
      await heldEnded;
      held.destroy();
      const status = JSON.parse((await vic.vertex(['status', '--json'])).stdout) as { server: { state: string } };
      expect(status.server.state).not.toBe('online');
    }, 120_000);
  });

  describe('one user\'s devices on different nodes', () => {
    interface Devices { online: string[]; conflicts: Array<{ service: string; devices: string[]; chosen: string }>; replacedBy: string | null }
    const devicesOf = async (agent: TestAgent): Promise<Devices> => (JSON.parse((await agent.vertex(['status', '--json'])).stdout) as { devices: Devices }).devices;
    const agents: TestAgent[] = [];
    afterAll(async () => {
      for (const a of agents) await a.proc.stop();
    });

    it('each device sees the others and their conflicts; the same device on another node takes over, and its old session is told', async () => {
      const [n1, , n3] = cluster.nodes as [ServerHandle, ServerHandle, ServerHandle];
      const expose = `expose:\n  - { service: echo, target: "127.0.0.1:${echo.port}" }`;
      const laptop = await agentOn(n1, `dee@${DOMAIN}`, `device: laptop\n${expose}`);
      agents.push(laptop);
      await online(laptop);
      const phone = await agentOn(n3, `dee@${DOMAIN}`, `device: phone\n${expose}`, { sameIdentityAs: laptop });
      agents.push(phone);
      await online(phone);
      const both = { online: ['laptop', 'phone'], conflicts: [{ service: 'echo', devices: ['laptop', 'phone'], chosen: 'laptop' }] };
      // phone learns of laptop (node 1) in its listen answer; laptop of phone (node 3) by a push relayed through node 1.
      for (const agent of [phone, laptop]) {
        await until('both devices in the view', async () => {
          const d = await devicesOf(agent);
          return JSON.stringify({ online: d.online, conflicts: d.conflicts }) === JSON.stringify(both) ? true : undefined;
        });
      }
      // A second laptop (the same device name) comes online on node 3: the one on node 1 is replaced.
      const laptop2 = await agentOn(n3, `dee@${DOMAIN}`, `device: laptop\n${expose}`, { sameIdentityAs: laptop });
      agents.push(laptop2);
      await online(laptop2);
      await until('the laptop on node 1 told it was replaced', async () => ((await devicesOf(laptop)).replacedBy ? true : undefined));
      await laptop.proc.stop();
      const after = await devicesOf(phone);
      expect(after.online).toEqual(['laptop', 'phone']);
    }, 120_000);
  });

  describe('over the relay (agents with routes: [relay])', () => {
    let alice: TestAgent;
    let bob: TestAgent;

    beforeAll(async () => {
      const [n1, , n3] = cluster.nodes as [ServerHandle, ServerHandle, ServerHandle];
      bob = await agentOn(n3, `rita@${DOMAIN}`, [
        `expose:\n  - { service: echo, target: "127.0.0.1:${echo.port}", allow: ["rick@${DOMAIN}"] }`,
        'routes: [relay]',
      ].join('\n'));
      alice = await agentOn(n1, `rick@${DOMAIN}`, 'routes: [relay]');
      await Promise.all([online(alice), online(bob)]);
    }, 120_000);

    afterAll(async () => {
      await alice?.proc.stop();
      await bob?.proc.stop();
    });

    it('10 MB byte-exact; bob\'s leg lands on node 3 and is carried to node 1, where the two legs pair', async () => {
      const [n1, , n3] = cluster.nodes as [ServerHandle, ServerHandle, ServerHandle];
      const from = cluster.nodes.map((n) => n.proc.output().length);
      const payload = randomBytes(TEN_MB);
      const back = await throughForward(alice, `rita@${DOMAIN}:echo`, payload);
      expect(back.length).toBe(payload.length);
      expect(sha(back)).toBe(sha(payload));
      expect(n3.proc.output().slice(from[2])).toMatch(/"node":"n1".*relay leg carried to the node holding its token/);
      expect(n1.proc.output().slice(from[0])).toMatch(/relay spliced/);
      expect(await metricsOf(n3)).toMatch(/^vertex_server_node_relay_legs_total\{outcome="ok",node="n3"\} [1-9]/m);
    }, 120_000);
  });
});
