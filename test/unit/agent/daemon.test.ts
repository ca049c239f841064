/**
 * The agent daemon wired to an in-process fake Q2Q network: real SOCKS5,
 * forward and control sockets on loopback, with alice's and bob's agents in
 * one process.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { SocksClient } from 'socks';
import { AgentDaemon, MAX_CONCURRENT_DIALS, type AgentStatus } from '../../../agent/daemon';
import { callAgent, openControl, sendRequest } from '../../../agent/control-client';
import { parseControlResult } from '../../../agent/control-protocol';
import { PING_SERVICE } from '../../../agent/ping';
import { buildAgentConfig, type AgentOverrides } from '../../../config/load';
import { isVertexError } from '../../../q2q/errors';
import type { AgentConfig } from '../../../config/schema';
import { FakeNetwork, fakeHome } from './fake-network';
import { connectTcp, untilTrue as until } from '../../helpers/net';

const noResolve = async () => [];

async function startEcho(): Promise<{ port: number; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** Writes `payload`, half-closes, and collects everything until the other side ends. */
function roundTrip(socket: net.Socket, payload: Buffer): Promise<Buffer> {
  const chunks: Buffer[] = [];
  return new Promise((resolve, reject) => {
    socket.on('data', (d: Buffer) => chunks.push(d));
    socket.resume();
    socket.once('end', () => resolve(Buffer.concat(chunks)));
    socket.once('error', reject);
    socket.end(payload);
  });
}

async function socksReply(port: number, host: string, destPort: number): Promise<string> {
  try {
    const { socket } = await SocksClient.createConnection({
      proxy: { host: '127.0.0.1', port, type: 5 },
      command: 'connect',
      destination: { host, port: destPort },
      timeout: 30_000,
    });
    socket.destroy();
    return 'ok';
  } catch (err) {
    const m = /rejected connection - (\w+)/.exec((err as Error).message);
    if (!m) throw err;
    return m[1] as string;
  }
}

/** The port a forward bound (forwards listen on port 0 here; status reports the bound address). */
function forwardPort(daemon: AgentDaemon, index = 0): number {
  const listen = daemon.status().forwards[index]?.listen ?? '';
  return Number(listen.slice(listen.lastIndexOf(':') + 1));
}

describe('agent daemon', () => {
  let network: FakeNetwork;
  let echo: { port: number; close: () => Promise<void> };
  let dir: string;
  const daemons: AgentDaemon[] = [];

  async function agent(address: string, overrides: AgentOverrides = {}, opts: { control?: boolean } = {}): Promise<AgentDaemon> {
    const config: AgentConfig = buildAgentConfig({ socks: { listen: '127.0.0.1:0' }, ...overrides });
    const daemon = new AgentDaemon({
      config,
      home: fakeHome(address),
      resolve: noResolve,
      createNode: network.createNode,
      controlSocket: opts.control === false ? null : path.join(dir, `${address}.sock`),
      ...(process.env.DBG ? { log: require('pino')({ level: 'debug' }, require('pino').destination(2)) } : {}),
    });
    await daemon.start();
    daemons.push(daemon);
    return daemon;
  }

  beforeEach(async () => {
    network = new FakeNetwork();
    await network.start();
    echo = await startEcho();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-daemon-'));
  });
  afterEach(async () => {
    await Promise.all(daemons.splice(0).map((d) => d.stop()));
    await echo.close();
    await network.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('tunnels SOCKS5 by the DNS-safe and the literal name to an exposed service, and lists each tunnel', async () => {
    await agent('bob@b.test', {
      expose: [
        { service: '7777', target: `127.0.0.1:${echo.port}`, allow: ['*'] },
        { service: 'echo', target: `127.0.0.1:${echo.port}`, allow: ['*'] },
      ],
    });
    const alice = await agent('alice@a.test');
    const socksPort = alice.socksAddress!.port;

    const payload = randomBytes(100_000);
    for (const host of ['bob.b.test.q2q', 'bob@b.test']) {
      const { socket } = await SocksClient.createConnection({
        proxy: { host: '127.0.0.1', port: socksPort, type: 5 },
        command: 'connect',
        destination: { host, port: 7777 },
        timeout: 30_000,
      });
      await until('the tunnel in status', () => alice.status().tunnels.length === 1);
      const t = alice.status().tunnels[0]!;
      expect(t).toMatchObject({ kind: 'socks', target: 'bob@b.test:7777', peer: 'bob@b.test', route: 'tcp' });
      expect(t.local).toMatch(/^127\.0\.0\.1:\d+$/);
      socket.destroy();
      await until('the tunnel to leave status', () => alice.status().tunnels.length === 0);
    }
    // A port maps to a service through `ports:`; the echo is exposed as "echo".
    const alice2 = await agent('alice2@a.test', { ports: { 7777: 'echo' } });
    const { socket } = await SocksClient.createConnection({
      proxy: { host: '127.0.0.1', port: alice2.socksAddress!.port, type: 5 },
      command: 'connect',
      destination: { host: 'bob.b.test.q2q', port: 7777 },
      timeout: 30_000,
    });
    const back = await roundTrip(socket, payload);
    expect(back.equals(payload)).toBe(true);
  });

  it('answers with the REP code of each refusal, and passes ordinary hosts through only when allowed', async () => {
    await agent('bob@b.test', { expose: [{ service: 'http', target: `127.0.0.1:${echo.port}` }] });
    const alice = await agent('alice@a.test');
    const port = alice.socksAddress!.port;
    expect(await socksReply(port, 'example.com', 80)).toBe('NotAllowed');
    expect(await socksReply(port, '127.0.0.1', echo.port)).toBe('NotAllowed');
    expect(await socksReply(port, 'carol.c.test.q2q', 80)).toBe('HostUnreachable');
    expect(await socksReply(port, 'bob.b.test.q2q', 22)).toBe('ConnectionRefused');
    // bob's http defaults to his own domain: alice@a.test is denied.
    expect(await socksReply(port, 'bob.b.test.q2q', 80)).toBe('NotAllowed');
    expect(await socksReply(port, '-bad.b.test.q2q', 80)).toBe('NotAllowed');

    const open = await agent('dave@a.test', { socks: { listen: '127.0.0.1:0', passthrough: true } });
    const { socket } = await SocksClient.createConnection({
      proxy: { host: '127.0.0.1', port: open.socksAddress!.port, type: 5 },
      command: 'connect',
      destination: { host: '127.0.0.1', port: echo.port },
      timeout: 30_000,
    });
    await until('the passthrough tunnel', () => open.status().tunnels.length === 1);
    expect(open.status().tunnels[0]).toMatchObject({ kind: 'socks', route: 'direct', target: `127.0.0.1:${echo.port}` });
    expect((await roundTrip(socket, Buffer.from('plain'))).toString()).toBe('plain');
  });

  it('forwards a local port to a remote service, with half-close and byte counts', async () => {
    await agent('bob@b.test', { expose: [{ service: 'echo', target: `127.0.0.1:${echo.port}`, allow: ['*@a.test'] }] });
    const alice = await agent('alice@a.test', { forwards: [{ listen: '127.0.0.1:0', to: 'bob@b.test:echo' }] });
    const port = forwardPort(alice);
    expect(port).toBeGreaterThan(0);
    expect(alice.status().forwards).toEqual([{ listen: `127.0.0.1:${port}`, to: 'bob@b.test:echo', source: 'config' }]);
    const client = await connectTcp(port);
    client.write('x'.repeat(1000));
    await until('the forward tunnel', () => alice.status().tunnels.length === 1);
    const payload = randomBytes(50_000);
    const back = await roundTrip(client, payload);
    expect(back.length).toBe(51_000);
    expect(back.subarray(1000).equals(payload)).toBe(true);
  });

  it('serves status, expose, forward, ping and connect over the control socket', async () => {
    await agent('bob@b.test', { expose: [{ service: 'echo', target: `127.0.0.1:${echo.port}`, allow: ['*'] }] });
    const alice = await agent('alice@a.test');
    const sock = path.join(dir, 'alice@a.test.sock');
    expect(fs.statSync(sock).mode & 0o777).toBe(0o600);

    const status = (await callAgent(sock, 'status')) as { agent: true; result: AgentStatus };
    expect(status.result.identity).toBe('alice@a.test');
    expect(status.result.server.state).toBe('online');
    expect(status.result.exposed).toEqual([]);

    const added = await callAgent(sock, 'expose-add', { service: 'web', target: `127.0.0.1:${echo.port}` });
    expect(added).toEqual({ agent: true, result: { address: 'alice@a.test:web', target: `127.0.0.1:${echo.port}`, allow: ['alice@a.test'] } });
    expect(network.services.has('alice@a.test:web')).toBe(true);
    await callAgent(sock, 'expose-remove', { service: 'web' });
    expect(network.services.has('alice@a.test:web')).toBe(false);
    await expect(callAgent(sock, 'expose-remove', { service: 'web' })).rejects.toMatchObject({ code: 'NotExposed' });
    await expect(callAgent(sock, 'expose-add', { service: PING_SERVICE, target: '127.0.0.1:1' })).rejects.toMatchObject({ code: 'Usage' });

    // Port 0: the agent binds a free port and answers with it.
    const fwd = (await callAgent(sock, 'forward-add', { listen: '0', to: 'bob@b.test:echo' })) as { agent: true; result: { listen: string } };
    const fwdPort = Number(/^127\.0\.0\.1:(\d+)$/.exec(fwd.result.listen)?.[1]);
    expect(fwd).toEqual({ agent: true, result: { listen: `127.0.0.1:${fwdPort}`, to: 'bob@b.test:echo' } });
    // A second port-0 forward gets a port of its own.
    const other = (await callAgent(sock, 'forward-add', { listen: '127.0.0.1:0', to: 'bob@b.test:echo' })) as { result: { listen: string } };
    expect(other.result.listen).not.toBe(fwd.result.listen);
    await callAgent(sock, 'forward-remove', { listen: other.result.listen });
    expect((await roundTrip(await connectTcp(fwdPort), Buffer.from('via forward'))).toString()).toBe('via forward');
    await expect(callAgent(sock, 'forward-add', { listen: String(fwdPort), to: 'bob@b.test:echo' })).rejects.toMatchObject({ code: 'Usage' });
    await callAgent(sock, 'forward-remove', { listen: `127.0.0.1:${fwdPort}` });
    await expect(connectTcp(fwdPort)).rejects.toMatchObject({ code: 'ECONNREFUSED' });

    const ping = (await callAgent(sock, 'ping', { target: 'bob@b.test', count: 2 })) as { result: { route: string; rttMs: number[] } };
    expect(ping.result.route).toBe('tcp');
    expect(ping.result.rttMs).toHaveLength(2);
    await expect(callAgent(sock, 'ping', { target: 'carol@c.test' })).rejects.toMatchObject({ code: 'Offline' });
    await expect(callAgent(sock, 'ping', { target: 'not an address' })).rejects.toMatchObject({ code: 'InvalidName' });

    // connect: after the reply line, the control socket is the tunnel.
    const control = (await openControl(sock))!;
    const info = await sendRequest(control, 'connect', { target: 'bob@b.test:echo' });
    expect(info).toMatchObject({ target: 'bob@b.test:echo', peer: 'bob@b.test', route: 'tcp' });
    await until('the connect tunnel', () => alice.status().tunnels.some((t) => t.kind === 'connect'));
    // The status reply, with a tunnel, a forward and an expose in it, passes the schema the CLI checks it with.
    await callAgent(sock, 'expose-add', { service: 'web', target: `127.0.0.1:${echo.port}` });
    await callAgent(sock, 'forward-add', { listen: '0', to: 'bob@b.test:echo' });
    const full = (await callAgent(sock, 'status')) as { agent: true; result: unknown };
    const checked = parseControlResult('status', full.result);
    expect(checked).toEqual(full.result);
    expect([checked.exposed.length, checked.forwards.length, checked.tunnels[0]?.kind]).toEqual([1, 1, 'connect']);
    const payload = randomBytes(200_000);
    expect((await roundTrip(control, payload)).equals(payload)).toBe(true);
    const failed = (await openControl(sock))!;
    await expect(sendRequest(failed, 'connect', { target: 'bob@b.test:nothing' })).rejects.toMatchObject({ code: 'NotExposed' });
    failed.destroy();
  });

  it('reloads forwards and exposes without dropping an open tunnel', async () => {
    await agent('bob@b.test', { expose: [{ service: 'echo', target: `127.0.0.1:${echo.port}`, allow: ['*'] }] });
    const alice = await agent('alice@a.test', {
      forwards: [{ listen: '127.0.0.1:0', to: 'bob@b.test:echo' }],
      expose: [{ service: 'old', target: `127.0.0.1:${echo.port}` }],
    });
    const p1 = forwardPort(alice);
    const open = await connectTcp(p1);
    open.write('before ');
    await until('the tunnel through the first forward', () => alice.status().tunnels.length === 1);

    // Another forward (on another loopback address, port 0 again) replaces the first.
    const summary = await alice.reload(buildAgentConfig({
      socks: { listen: '127.0.0.1:0' },
      forwards: [{ listen: '127.0.0.2:0', to: 'bob@b.test:echo' }],
      expose: [{ service: 'new', target: `127.0.0.1:${echo.port}` }],
      routes: ['relay'],
    }));
    const p2 = forwardPort(alice);
    expect(summary).toEqual({
      exposes: { added: ['new'], removed: ['old'] },
      forwards: { added: [`127.0.0.2:${p2}`], removed: [`127.0.0.1:${p1}`] },
      receive: 'unchanged',
      needRestart: ['routes'],
    });
    expect(alice.status().exposed.map((e) => e.service)).toEqual(['new']);
    await expect(connectTcp(p1)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    expect((await roundTrip(await connectTcp(p2, '127.0.0.2'), Buffer.from('new forward'))).toString()).toBe('new forward');
    // The tunnel opened through the removed forward still carries bytes.
    expect((await roundTrip(open, Buffer.from('after'))).toString()).toBe('before after');
  });

  it('stop closes every front-end, removes the control socket and takes the node offline', async () => {
    await agent('bob@b.test', { expose: [{ service: 'echo', target: `127.0.0.1:${echo.port}`, allow: ['*'] }] });
    const alice = await agent('alice@a.test', { forwards: [{ listen: '127.0.0.1:0', to: 'bob@b.test:echo' }] });
    const fwdPort = forwardPort(alice);
    const socksPort = alice.socksAddress!.port;
    const open = await connectTcp(fwdPort);
    open.write('x');
    await until('a tunnel', () => alice.status().tunnels.length === 1);
    // The agent ends the client's connection: it sees EOF (or a reset).
    const closed = new Promise<void>((resolve) => {
      open.once('end', () => resolve());
      open.once('close', () => resolve());
    });
    open.on('error', () => undefined);
    open.resume();
    await alice.stop();
    await closed;
    expect(fs.existsSync(path.join(dir, 'alice@a.test.sock'))).toBe(false);
    expect(network.online.has('alice@a.test')).toBe(false);
    await expect(connectTcp(socksPort)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await expect(connectTcp(fwdPort)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    expect(await callAgent(path.join(dir, 'alice@a.test.sock'), 'status')).toEqual({ agent: false });
  });

  it(`runs at most ${MAX_CONCURRENT_DIALS} dials at once and queues the rest`, async () => {
    await agent('bob@b.test', { expose: [{ service: 'echo', target: `127.0.0.1:${echo.port}`, allow: ['*'] }] });
    const alice = await agent('alice@a.test', { ports: { 7: 'echo' } });
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    network.beforeConnect = () => gate;
    const clients = Array.from({ length: MAX_CONCURRENT_DIALS + 10 }, () =>
      SocksClient.createConnection({
        proxy: { host: '127.0.0.1', port: alice.socksAddress!.port, type: 5 },
        command: 'connect',
        destination: { host: 'bob@b.test', port: 7 },
        timeout: 30_000,
      }),
    );
    await until('the dial slots to fill', () => network.connecting === MAX_CONCURRENT_DIALS);
    // No dial beyond the limit may start. An absence cannot be awaited: give the queued ones a
    // moment to (wrongly) start. Load can only hide such a bug, never fail a correct agent.
    await new Promise((r) => setTimeout(r, 50));
    expect(network.connecting).toBe(MAX_CONCURRENT_DIALS);
    open();
    const sockets = await Promise.all(clients);
    expect(network.maxConnecting).toBe(MAX_CONCURRENT_DIALS);
    for (const { socket } of sockets) socket.destroy();
  });

  it('a failing start undoes what it started and names the cause', async () => {
    const busy = net.createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', () => resolve()));
    const port = (busy.address() as net.AddressInfo).port;
    try {
      const daemon = new AgentDaemon({
        config: buildAgentConfig({ socks: { listen: '127.0.0.1:0' }, forwards: [{ listen: `127.0.0.1:${port}`, to: 'bob@b.test:echo' }] }),
        home: fakeHome('alice@a.test'),
        resolve: noResolve,
        createNode: network.createNode,
        controlSocket: path.join(dir, 'fail.sock'),
      });
      const err = await daemon.start().then(() => null, (e: unknown) => e);
      expect(isVertexError(err, 'Usage')).toBe(true);
      expect((err as Error).message).toMatch(/address already in use/);
      expect(network.online.has('alice@a.test')).toBe(false);
      expect(network.nodes[0]?.stopped).toBe(true);
    } finally {
      await new Promise<void>((resolve) => busy.close(() => resolve()));
    }
  });

  it('refuses to start a second agent on a live control socket', async () => {
    await agent('alice@a.test');
    const second = new AgentDaemon({
      config: buildAgentConfig({ socks: { listen: '127.0.0.1:0' } }),
      home: fakeHome('alice@a.test'),
      resolve: noResolve,
      createNode: network.createNode,
      controlSocket: path.join(dir, 'alice@a.test.sock'),
    });
    await expect(second.start()).rejects.toMatchObject({ code: 'Usage' });
    // The first one still answers.
    expect(await callAgent(path.join(dir, 'alice@a.test.sock'), 'status')).toMatchObject({ agent: true });
  });
});
