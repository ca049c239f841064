/**
 * Node certificates recorded and revocable (issue 14): each node records the
 * serial of the node certificate it issues itself, and the node-to-node
 * mesh admits only recorded, unrevoked ones. `vertex server revoke SERIAL`
 * (an admin command on the shared store) revokes a node's certificate: every
 * node closes the connections that use it and refuses it from then on.
 *
 * Two real nodes on one real PostgreSQL. A probe holds node certificates
 * issued with the domain CA's key; with the check switched off
 * (VERTEX_TEST_FAULT=no-node-cert-check) a third node answers the revoked
 * probe, so the refusals above can fail.
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tls from 'node:tls';
import pg from 'pg';
import { COMMANDS } from '../../../q2q/control/protocol';
import { normaliseSerial } from '../../../q2q/identity';
import { attachAmp } from '../../../q2q/transport/amp-connection';
import { issueNodeCertificate, type NodeCredentials } from '../../../server/node-identity';
import { ALPN_NODE, NODE_COMMANDS } from '../../../server/node-mesh';
import { runVertex, startServer, stopAll, tempDir, type ServerHandle } from '../../helpers/cli';
import { untilTrue } from '../../helpers/net';
import { describePostgres, postgresDatabase } from '../../helpers/postgres';
import { controlSessionAt, DOMAIN, registerUser, type RegisteredUser, startCluster } from './helpers';

jest.setTimeout(120_000);
afterAll(stopAll);

const serialOf = (certPem: string): string => normaliseSerial(new X509Certificate(certPem).serialNumber);
const nodePort = (node: ServerHandle): number => Number(/"endpoint":"127\.0\.0\.1:(\d+)"/.exec(node.proc.output())?.[1]);

describePostgres('node certificates: recorded, revocable', () => {
  const database = postgresDatabase();
  const open: Array<{ close(): void }> = [];
  afterAll(() => {
    for (const c of open.splice(0)) c.close();
  });

  /** A node connection to `port` with `creds`: 'answered' when node-inbound is answered (Offline: nobody there), else why not. Open ones are kept. */
  async function probe(port: number, creds: NodeCredentials): Promise<{ outcome: string; socket: tls.TLSSocket }> {
    const caPem = fs.readFileSync(path.join(caDirOf, 'cert.pem'), 'utf8');
    const socket = tls.connect({
      host: '127.0.0.1', port, servername: DOMAIN, ALPNProtocols: [ALPN_NODE], ca: [caPem], minVersion: 'TLSv1.3',
      checkServerIdentity: () => undefined, key: creds.keyPem, cert: creds.certPem,
    });
    socket.on('error', () => undefined);
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('secureConnect', () => resolve());
        socket.once('error', reject);
      });
      const peer = attachAmp(socket);
      open.push({ close: () => socket.destroy() });
      await peer.call(NODE_COMMANDS.inbound, {
        from: `mallory@${DOMAIN}`, to: `nobody@${DOMAIN}`, service: 'echo', device: 'default', certificate: 'x', candidates: '[]', routes: '[]',
      }, { timeoutMs: 20_000 });
      return { outcome: 'answered', socket };
    } catch (err) {
      const code = (err as { code?: string }).code ?? (err as Error).message;
      return { outcome: code === 'Offline' ? 'answered' : code, socket };
    }
  }
  let caDirOf = '';

  it('a node certificate is admitted once recorded, and refused on every node once revoked; a revoked node is cut off', async () => {
    const storeUrl = await database().freshSchema();
    const { nodes } = await startCluster(storeUrl, 2);
    const [node1, node2] = nodes as [ServerHandle, ServerHandle];
    caDirOf = path.join(node1.dataDir, 'ca', DOMAIN);
    const ca = { domain: DOMAIN, certPem: fs.readFileSync(path.join(caDirOf, 'cert.pem'), 'utf8'), keyPem: fs.readFileSync(path.join(caDirOf, 'key.pem'), 'utf8'), fingerprint: '' };
    const sql = async (text: string, values: unknown[]) => {
      const c = new pg.Client({ connectionString: storeUrl });
      await c.connect();
      try {
        return await c.query(text, values);
      } finally {
        await c.end();
      }
    };

    // Each node recorded its certificate, and logged the serial.
    const n2Serial = /"serial":"([0-9a-f]+)"[^\n]*node certificate issued and recorded/.exec(node2.proc.output())?.[1] ?? '';
    expect(n2Serial).not.toBe('');
    const { rows } = await sql('SELECT node, revoked_at FROM node_certificates ORDER BY node', []);
    expect(rows).toEqual([{ node: 'n1', revoked_at: null }, { node: 'n2', revoked_at: null }]);

    // A certificate from the domain CA that no node recorded (made with a copy of the CA key): refused.
    const probeCreds = await issueNodeCertificate(ca, 'probe');
    expect((await probe(nodePort(node1), probeCreds)).outcome).not.toBe('answered');
    // Recorded as a node records its own: answered. The connection stays open.
    const probeSerial = serialOf(probeCreds.certPem);
    await sql('INSERT INTO node_certificates (serial, domain, node, not_before, not_after) VALUES ($1, $2, $3, 0, 0)', [probeSerial, DOMAIN, 'probe']);
    const held = await probe(nodePort(node1), probeCreds);
    expect(held.outcome).toBe('answered');
    const heldClosed = new Promise<void>((resolve) => held.socket.once('close', () => resolve()));

    // bob's device on node 2, carol on node 1: the inbound goes node 1 -> node 2 over the mesh.
    const user = (address: string) => registerUser(node1, address);
    const session = (u: RegisteredUser, node: ServerHandle) => controlSessionAt(u, node, open);
    const bob = await session(await user(`bob@${DOMAIN}`), node2);
    bob.peer.handle(COMMANDS.inbound, () => ({ token: randomBytes(16).toString('hex'), candidates: '[]' }));
    await bob.call(COMMANDS.listen, { services: '["svc"]', device: 'desk' });
    const carol = await session(await user(`carol@${DOMAIN}`), node1);
    const inbound = () => carol.call(COMMANDS.inbound, { to: `bob@${DOMAIN}`, service: 'svc', candidates: '[]', routes: '["tcp"]' });
    await untilTrue('node 1 forwards to bob on node 2', async () => {
      try {
        return (await inbound()).device === 'desk';
      } catch {
        return false;
      }
    });

    // The probe's certificate revoked with the admin command (as on node 2): node 1 closes the probe's connection, and refuses a new one.
    const revokeProbe = await runVertex(['server', 'revoke', probeSerial, '--data', node2.dataDir, '--store', storeUrl]);
    expect(revokeProbe.code).toBe(0);
    expect(revokeProbe.stdout).toContain(`revoked ${probeSerial} (node probe of ${DOMAIN})`);
    await heldClosed;
    expect((await probe(nodePort(node1), probeCreds)).outcome).not.toBe('answered');

    // Node 2's own certificate revoked: node 1 closes its connection to node 2 and refuses it; bob, on node 2, is out of reach.
    const from = node1.proc.output().length;
    const revokeNode = await runVertex(['server', 'revoke', n2Serial, '--data', node1.dataDir, '--store', storeUrl, '--json']);
    expect(revokeNode.code).toBe(0);
    expect(JSON.parse(revokeNode.stdout)).toMatchObject({ serial: n2Serial, node: 'n2', domain: DOMAIN });
    await node1.proc.waitFor(new RegExp(`"serial":"${n2Serial}".*node connection closed: its certificate was revoked`), 30_000, from);
    await expect(inbound()).rejects.toMatchObject({ code: 'Offline' });
    expect(node1.proc.output().slice(from)).toMatch(new RegExp(`node n2: its certificate ${n2Serial} is revoked`));

    // The control: a node with the check switched off answers the revoked probe.
    const data3 = tempDir('node3');
    fs.cpSync(path.join(node1.dataDir, 'ca'), path.join(data3, 'ca'), { recursive: true });
    const node3 = await startServer([DOMAIN], {
      dataDir: data3, env: { VERTEX_TEST_FAULT: 'no-node-cert-check' },
      extraArgs: ['--store', storeUrl, '--node-name', 'n3', '--node-listen', '127.0.0.1:0', '--log-level', 'info'],
    });
    await node3.proc.waitFor(/node-to-node listening/);
    expect((await probe(nodePort(node3), probeCreds)).outcome).toBe('answered');
  });
});
