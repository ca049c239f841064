/**
 * Q2Q connections between two domains: listen, inbound, peer TLS, direct
 * TCP and relay, through the library API against real server processes.
 */
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { connectQ2Q, listenQ2Q, Q2QNode } from '../../../q2q';
import { COMMANDS } from '../../../q2q/control/protocol';
import { openServerConnection } from '../../../q2q/control/server-connection';
import { createServerResolver } from '../../../q2q/control/discovery';
import { certificateFingerprint, createCsr, createDomainCa, generateKeyPair, issueUserCertificate } from '../../../q2q/identity';
import { tlsClientOver } from '../../../q2q/negotiate/peer-tls';
import { readPreamble, writePreamble } from '../../../q2q/transport/preamble';
import { HomeStore } from '../../../agent/home-store';
import { runVertex, startVertex, stopAll, tempDir } from '../../helpers/cli';
import { until } from '../../helpers/net';
import { echo, exchange, PASSWORD, sha256, startWorld, type World } from '../../helpers/q2q-world';

jest.setTimeout(120_000);

let world: World;
let alice: Awaited<ReturnType<World['user']>>;
let bob: Awaited<ReturnType<World['user']>>;
let carol: Awaited<ReturnType<World['user']>>;
const nodes: Q2QNode[] = [];

beforeAll(async () => {
  world = await startWorld();
  [alice, bob, carol] = await Promise.all([world.user('alice@a.test'), world.user('bob@b.test'), world.user('carol@a.test')]);
});

afterAll(async () => {
  await Promise.all(nodes.map((n) => n.stop()));
  await stopAll();
});

async function bobNode(extra: Parameters<typeof bob.options>[0] = {}, allow = ['*@a.test']): Promise<Q2QNode> {
  const node = await listenQ2Q(bob.identity, { echo: { allow, onConnection: echo } }, bob.options(extra));
  nodes.push(node);
  return node;
}

async function errorCode(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (err) {
    return (err as { code?: string }).code ?? `untyped: ${(err as Error).message}`;
  }
}

describe('connections', () => {
  it('echoes 10 MB over direct tcp, byte-exact', async () => {
    const node = await bobNode();
    const stream = await connectQ2Q(alice.identity, 'bob@b.test:echo', alice.options());
    expect(stream.route).toBe('tcp');
    expect(stream.peer).toBe('bob@b.test');
    expect(stream.connectMs).toBeGreaterThan(0);
    const payload = randomBytes(10 * 1024 * 1024);
    const back = await exchange(stream, payload);
    expect(sha256(back)).toBe(sha256(payload));
    await node.stop();
  });

  it('echoes 10 MB through the relay when the listener allows only relay', async () => {
    const node = await bobNode({ routes: ['relay'] });
    const stream = await connectQ2Q(alice.identity, 'bob@b.test:echo', alice.options());
    expect(stream.route).toBe('relay');
    const payload = randomBytes(10 * 1024 * 1024);
    const back = await exchange(stream, payload);
    expect(sha256(back)).toBe(sha256(payload));
    await node.stop();
  });

  it('falls back to the relay when the advertised direct address refuses', async () => {
    // Bob listens on 127.0.0.1 (port 0) but advertises only 127.0.0.2, where nothing listens on that port.
    const node = await bobNode({ routes: ['tcp', 'relay'], advertise: ['127.0.0.2'], peerListen: { host: '127.0.0.1', port: 0 } });
    const stream = await connectQ2Q(alice.identity, 'bob@b.test:echo', alice.options());
    expect(stream.route).toBe('relay');
    const payload = randomBytes(256 * 1024);
    expect(sha256(await exchange(stream, payload))).toBe(sha256(payload));
    await node.stop();
  });

  it('refuses with distinct codes: Denied, NotExposed, Offline', async () => {
    const node = await bobNode({}, ['carol@a.test']);
    expect(await errorCode(connectQ2Q(alice.identity, 'bob@b.test:echo', alice.options()))).toBe('Denied');
    const carolStream = await connectQ2Q(carol.identity, 'bob@b.test:echo', carol.options());
    carolStream.destroy();
    expect(await errorCode(connectQ2Q(alice.identity, 'bob@b.test:nothing', alice.options()))).toBe('NotExposed');
    await node.stop();
    // The server answers Offline at once; a caller that waited for its own timeout would see Timeout.
    expect(await errorCode(connectQ2Q(alice.identity, 'bob@b.test:echo', alice.options()))).toBe('Offline');
  });

  it("refuses a self-signed certificate claiming alice@a.test at b.test's server", async () => {
    const node = await bobNode();
    const fakeCa = await createDomainCa('a.test');
    const key = await generateKeyPair();
    const forged = await issueUserCertificate({
      caCertPem: fakeCa.certPem, caKeyPem: fakeCa.keyPem, csrPem: await createCsr('alice@a.test', key.privateKeyPem),
      expectedAddress: 'alice@a.test', lifetimeMs: 3600_000,
    });
    const forgedIdentity = { address: 'alice@a.test', keyPem: key.privateKeyPem, certPem: forged.certPem };
    const refused = await connectQ2Q(forgedIdentity, 'bob@b.test:echo', alice.options()).catch((e: Error & { code?: string }) => e);
    // The server says why, rather than just hanging up.
    expect((refused as { code?: string }).code).toBe('CertificateInvalid');
    expect((refused as Error).message).toMatch(/certificate/);
    expect(world.b.proc.output()).toMatch(/client certificate refused/);
    await node.stop();
  });

  it('a listener that renews its certificate reconnects with it and is reached with it', async () => {
    const node = await bobNode();
    const renewedHome = tempDir('home');
    const login = await runVertex([...world.resolveArgs, '--home', renewedHome, 'login', 'bob@b.test', '--password-stdin'], { input: PASSWORD });
    expect(login.code).toBe(0);
    const renewed = new HomeStore(renewedHome).loadIdentity('bob@b.test');
    node.setIdentity(renewed);
    // The node re-listens with the new certificate in the background: connect until it answers with it.
    const stream = await until('bob to answer with the renewed certificate', async () => {
      const attempt = await connectQ2Q(alice.identity, 'bob@b.test:echo', alice.options()).catch(() => null);
      if (attempt && certificateFingerprint(attempt.peerCertificate) === certificateFingerprint(renewed.certPem)) return attempt;
      attempt?.destroy();
      return undefined;
    });
    const payload = randomBytes(4096);
    expect(sha256(await exchange(stream, payload))).toBe(sha256(payload));
    await node.stop();
  });

  it('a token can be claimed only once', async () => {
    const node = await bobNode();
    const connection = await openServerConnection({
      domain: 'b.test', resolve: createServerResolver({ overrides: world.endpoints }), trust: alice.home,
      credentials: { keyPem: alice.identity.keyPem, certPem: alice.identity.certPem },
    });
    const answer = await connection.call(COMMANDS.inbound, { to: 'bob@b.test', service: 'echo', candidates: '[]', routes: '["tcp"]' });
    connection.close();
    const [candidate] = JSON.parse(answer.candidates ?? '[]') as string[];
    const [route, host, port] = (candidate ?? '').split(':');
    expect(route).toBe('tcp');
    const claim = async () => {
      const raw = net.connect(Number(port), host);
      await new Promise((r) => raw.once('connect', r));
      const secure = await tlsClientOver(raw, alice.identity, answer.certificate ?? '', 'test', 5000);
      writePreamble(secure, { token: answer.token ?? '' });
      const reply = await readPreamble(secure, 'claim', 5000);
      secure.destroy();
      return reply;
    };
    expect((await claim()).ok).toBe('1');
    expect((await claim()).error_code).toBe('TokenInvalid');
    await node.stop();
  });

  it("bob's agent reconnects and re-listens after b.test's server restarts", async () => {
    const node = await bobNode();
    const restartArgs = world.b.proc.child.spawnargs.slice(2);
    await world.b.proc.stop();
    // Same data and port: the server comes back where bob's agent looks for it.
    const args = restartArgs.map((a) => (a === '127.0.0.1:0' ? `127.0.0.1:${world.b.port}` : a));
    world.b.proc = startVertex(args);
    await world.b.proc.waitFor(/listening on/);
    await until('bob to be online at the restarted server', () => (node.homeState === 'online' ? true : undefined), 60_000);
    const stream = await connectQ2Q(alice.identity, 'bob@b.test:echo', alice.options());
    const payload = randomBytes(1024);
    expect(sha256(await exchange(stream, payload))).toBe(sha256(payload));
    await node.stop();
  });

  it.each([['tcp'], ['relay']] as const)('100 concurrent connections × 1 MB both ways over %s', async (route) => {
    const node = await bobNode({ routes: [route] });
    // A burst of 100 handshakes on 2 shared cores: give each connect a generous deadline.
    const caller = new Q2QNode(alice.identity, alice.options({ routes: [route], connectTimeoutMs: 60_000 }));
    nodes.push(caller);
    const results = await Promise.all(Array.from({ length: 100 }, async () => {
      const stream = await caller.connect('bob@b.test:echo');
      const payload = randomBytes(1024 * 1024);
      const back = await exchange(stream, payload);
      return { route: stream.route, ok: sha256(back) === sha256(payload) };
    }));
    expect(results.every((r) => r.ok && r.route === route)).toBe(true);
    await caller.stop();
    await node.stop();
  });
});

describe('ptcp route', () => {
  it('echoes 10 MB over ptcp with mutual TLS when both sides allow only ptcp', async () => {
    const node = await bobNode({ routes: ['ptcp'] });
    const caller = new Q2QNode(alice.identity, alice.options({ routes: ['ptcp'] }));
    nodes.push(caller);
    const stream = await caller.connect('bob@b.test:echo');
    expect(stream.route).toBe('ptcp');
    expect(stream.peer).toBe('bob@b.test');
    const payload = randomBytes(10 * 1024 * 1024);
    expect(sha256(await exchange(stream, payload))).toBe(sha256(payload));
    expect(node.status().reflexive.udp).toMatch(/^127\.0\.0\.1:\d+$/);
    await caller.stop();
    await node.stop();
  });
});

describe('closing', () => {
  it.each([['tcp'], ['relay'], ['ptcp']] as const)('a listener that sends 1 MB and closes delivers every byte over %s', async (route) => {
    const payload = randomBytes(1024 * 1024);
    const node = await listenQ2Q(bob.identity, {
      xfer: { allow: ['*@a.test'], onConnection: (s) => { s.on('error', () => undefined); s.resume(); s.end(payload); } },
    }, bob.options({ routes: [route] }));
    nodes.push(node);
    const stream = await connectQ2Q(alice.identity, 'bob@b.test:xfer', alice.options({ routes: [route] }));
    expect(stream.route).toBe(route);
    const received = await exchange(stream, Buffer.alloc(0));
    expect(received.length).toBe(payload.length);
    expect(sha256(received)).toBe(sha256(payload));
    await node.stop();
  });
});
