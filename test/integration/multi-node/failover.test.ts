/**
 * Issue 14, failover: three real nodes on one PostgreSQL; bob's agent lists
 * node 2 then node 3 (agent.yaml `server: [...]`), alice's lists node 1.
 * Node 2 is killed with SIGKILL while a direct tunnel alice -> bob carries
 * bytes and while a registration is in flight on it:
 *
 * - the tunnel keeps carrying bytes, byte-exact (peer to peer, no server);
 * - bob's agent is online on node 3 within 15 s (the spec's bound), and
 *   alice, on node 1, reaches him there;
 * - the registration either completed (and its password logs in on another
 *   node) or failed with ConnectionLost and then either left nothing (the
 *   name is free) or left a whole account (its password logs in); never a
 *   taken name whose password does not work. (The store writes the invite,
 *   the account and its certificate in one transaction: registerAccount.)
 */
import { randomBytes } from 'node:crypto';
import type * as net from 'node:net';
import * as tls from 'node:tls';
import { ALPN_CONTROL, COMMANDS, PROTOCOL_VERSION } from '../../../q2q/control/protocol';
import { createCsr, generateKeyPair } from '../../../q2q/identity';
import { attachAmp } from '../../../q2q/transport/amp-connection';
import { runVertex, stopAll, tempDir, type ServerHandle } from '../../helpers/cli';
import { connectTcp } from '../../helpers/net';
import { describePostgres, postgresDatabase } from '../../helpers/postgres';
import { startEcho, type Closable } from '../agent/helpers';
import { agentOn, DOMAIN, online, PASSWORD, sha, startCluster, throughForward, type Cluster, type TestAgent } from './helpers';

/** The spec's bound for a dead node's agents to be online on another node. */
const FAILOVER_BOUND_MS = 15_000;

afterAll(stopAll);

/** Sends `payload` on a held tunnel socket and reads the same number of echoed bytes back. */
function echoOn(socket: net.Socket, payload: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = 0;
    const onData = (d: Buffer) => {
      chunks.push(d);
      got += d.length;
      if (got >= payload.length) {
        socket.off('data', onData);
        socket.off('close', onClose);
        resolve(Buffer.concat(chunks));
      }
    };
    const onClose = () => reject(new Error(`tunnel closed after ${got} of ${payload.length} bytes`));
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.write(payload);
  });
}

/** register over a raw control session (no certificate), so the test knows when the request has left. */
async function startRegister(node: ServerHandle, address: string): Promise<{ sent: Promise<void>; result: Promise<string> }> {
  const { privateKeyPem } = await generateKeyPair();
  const csr = await createCsr(address, privateKeyPem);
  const socket = tls.connect({ host: '127.0.0.1', port: node.port, servername: DOMAIN, ALPNProtocols: [ALPN_CONTROL], rejectUnauthorized: false, minVersion: 'TLSv1.3' });
  socket.on('error', () => undefined);
  const peer = attachAmp(socket);
  let markSent: () => void = () => undefined;
  const sent = new Promise<void>((resolve) => { markSent = resolve; });
  const result = (async () => {
    await new Promise<void>((resolve, reject) => { socket.once('secureConnect', () => resolve()); socket.once('error', reject); });
    await peer.call(COMMANDS.hello, { version: PROTOCOL_VERSION });
    const answer = peer.call(COMMANDS.register, { address, password: PASSWORD, csr }, { timeoutMs: 30_000 });
    markSent();
    try {
      const a = await answer;
      return a.certificate ? 'registered' : 'no certificate';
    } catch (err) {
      return (err as { code?: string }).code ?? (err as Error).message;
    }
  })();
  return { sent, result };
}

describePostgres('failover: a node killed with SIGKILL during traffic', () => {
  const database = postgresDatabase();
  let cluster: Cluster;
  let echo: Closable;
  let alice: TestAgent;
  let bob: TestAgent;

  beforeAll(async () => {
    echo = await startEcho();
    cluster = await startCluster(await database().freshSchema());
    const [n1, n2, n3] = cluster.nodes as [ServerHandle, ServerHandle, ServerHandle];
    bob = await agentOn([n2, n3], `bob@${DOMAIN}`, `expose:\n  - { service: echo, target: "127.0.0.1:${echo.port}", allow: ["alice@${DOMAIN}"] }`);
    alice = await agentOn(n1, `alice@${DOMAIN}`, 'routes: [tcp]');
    await online(alice);
    expect(await online(bob)).toBe(`127.0.0.1:${n2.port}`);
  }, 120_000);

  afterAll(async () => {
    await stopAll();
    await echo?.close();
  });

  it('direct tunnels survive, bob is online on node 3 within 15 s and reachable from node 1, and the registration in flight is whole or absent', async () => {
    const [n1, n2, n3] = cluster.nodes as [ServerHandle, ServerHandle, ServerHandle];
    // A direct tunnel alice -> bob, held open.
    const added = await alice.vertex(['forward', '127.0.0.1:0', `bob@${DOMAIN}:echo`, '--json']);
    expect(added.code).toBe(0);
    const listen = (JSON.parse(added.stdout) as { listen: string }).listen;
    const held = await connectTcp(Number(listen.slice(listen.lastIndexOf(':') + 1)));
    const before = randomBytes(1024 * 1024);
    expect(sha(await echoOn(held, before))).toBe(sha(before));
    const tunnels = JSON.parse((await alice.vertex(['status', '--json'])).stdout) as { tunnels: Array<{ route: string }> };
    expect(tunnels.tunnels.map((t) => t.route)).toEqual(['tcp']);

    // A registration in flight on node 2 when it dies.
    const register = await startRegister(n2, `carol@${DOMAIN}`);
    await register.sent;
    n2.proc.child.kill('SIGKILL');
    const killedAt = Date.now();

    // The tunnel is peer to peer: it carries on while node 2 is gone.
    const after = randomBytes(2 * 1024 * 1024);
    expect(sha(await echoOn(held, after))).toBe(sha(after));

    // bob's agent goes to the next server in its list.
    expect(await online(bob, `127.0.0.1:${n3.port}`, 60_000)).toBe(`127.0.0.1:${n3.port}`);
    const failoverMs = Date.now() - killedAt;
    process.stdout.write(`failover: bob online on node 3 ${failoverMs} ms after node 2 was killed\n`);
    expect(failoverMs).toBeLessThanOrEqual(FAILOVER_BOUND_MS);
    // alice, on node 1, reaches bob on node 3 (node 2's presence row was replaced).
    const payload = randomBytes(512 * 1024);
    expect(sha(await throughForward(alice, `bob@${DOMAIN}:echo`, payload))).toBe(sha(payload));
    expect(sha(await echoOn(held, before))).toBe(sha(before));
    held.destroy();

    // The registration: whole or absent, never half.
    const outcome = await register.result;
    process.stdout.write(`failover: the registration in flight ended as ${outcome}\n`);
    expect(['registered', 'ConnectionLost']).toContain(outcome);
    const login = await runVertex([...n1.resolveArg(DOMAIN), '--home', tempDir('home'), 'login', `carol@${DOMAIN}`, '--password-stdin'], { input: `${PASSWORD}\n` });
    if (outcome === 'registered') {
      expect(login.code).toBe(0);
    } else if (login.code !== 0) {
      // Nothing was written: the name is free, and registering again works.
      expect(login.stderr).toMatch(/no such/i);
      const again = await runVertex([...n1.resolveArg(DOMAIN), '--home', tempDir('home'), 'register', `carol@${DOMAIN}`, '--password-stdin'], { input: `${PASSWORD}\n` });
      expect(again.stderr).toBe('');
      expect(again.code).toBe(0);
    }
  }, 180_000);
});
