import * as net from 'node:net';
import { Writable } from 'node:stream';
import pino from 'pino';
import { VertexError, vertexError } from '../../../../q2q/errors';
import { AmpPeer } from '../../../../q2q/proto/amp-peer';
import { attachAmp } from '../../../../q2q/transport/amp-connection';
import { ManualClock } from '../../../../q2q/util/clock';
import type { Logger } from '../../../../q2q/util/log';

interface LogLine {
  level: number;
  msg: string;
  reason?: string;
}

function capturingLogger(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const text of chunk.toString('utf8').split('\n')) if (text) lines.push(JSON.parse(text) as LogLine);
      done();
    },
  });
  return { log: pino({ level: 'debug' }, sink), lines };
}

const PINO_WARN = 40;

interface Harness {
  server: net.Server;
  port: number;
  serverPeers: AmpPeer[];
  serverSockets: net.Socket[];
  lines: LogLine[];
  clients: net.Socket[];
}

let harness: Harness | undefined;

async function startServer(): Promise<Harness> {
  const { log, lines } = capturingLogger();
  const serverPeers: AmpPeer[] = [];
  const serverSockets: net.Socket[] = [];
  const server = net.createServer((socket) => {
    serverSockets.push(socket);
    const peer = attachAmp(socket, { log });
    peer.handle('echo', (args) => ({ ...args, side: 'server' }));
    peer.handle('never', () => new Promise<void>(() => undefined));
    serverPeers.push(peer);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  harness = { server, port, serverPeers, serverSockets, lines, clients: [] };
  return harness;
}

async function connect(h: Harness): Promise<net.Socket> {
  const socket = net.connect(h.port, '127.0.0.1');
  h.clients.push(socket);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return socket;
}

function closed(socket: net.Socket): Promise<void> {
  if (socket.destroyed && socket.closed) return Promise.resolve();
  return new Promise((resolve) => socket.once('close', () => resolve()));
}

async function rejection(promise: Promise<unknown>): Promise<VertexError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof VertexError) return err;
    throw err;
  }
  throw new Error('expected the promise to reject');
}

afterEach(async () => {
  const h = harness;
  harness = undefined;
  if (!h) return;
  for (const s of [...h.clients, ...h.serverSockets]) s.destroy();
  await new Promise<void>((resolve) => h.server.close(() => resolve()));
});

describe('attachAmp over loopback TCP', () => {
  it('carries calls and answers, including values split across many segments', async () => {
    const h = await startServer();
    const client = attachAmp(await connect(h));
    await expect(client.call('echo', { hello: 'world' })).resolves.toEqual({ hello: 'world', side: 'server' });
    const big = 'x'.repeat(65_000);
    const many = await Promise.all(Array.from({ length: 20 }, (_, i) => client.call('echo', { i: String(i), big })));
    expect(many.map((a) => a.i)).toEqual(Array.from({ length: 20 }, (_, i) => String(i)));
    expect(many.every((a) => a.big === big)).toBe(true);
    client.close();
  });

  it('closes only the connection that sent garbage, and logs why', async () => {
    const h = await startServer();
    const good = attachAmp(await connect(h));
    await good.call('echo', {});
    const bad = await connect(h);
    const badClosed = closed(bad);
    bad.write(Buffer.from([0x01, 0x2c, 0x41, 0x42]));
    await badClosed;

    const warning = h.lines.find((l) => l.level === PINO_WARN && (l.reason ?? '').includes('key length 300 exceeds 255'));
    expect(warning).toBeDefined();
    expect(warning!.msg).toContain('closing amp connection');
    expect(h.serverPeers[1]!.closed).toBe(true);

    expect(h.serverPeers[0]!.closed).toBe(false);
    await expect(good.call('echo', { still: 'here' })).resolves.toEqual({ still: 'here', side: 'server' });
    good.close();
  });

  it('closes a connection that sends an oversized box', async () => {
    const { log } = capturingLogger();
    const h = await startServer();
    // A second server with a small limit, to show the limit is enforced on the stream.
    const small = net.createServer((socket) => {
      h.serverSockets.push(socket);
      attachAmp(socket, { log, limits: { maxBoxBytes: 1024 } });
    });
    await new Promise<void>((resolve) => small.listen(0, '127.0.0.1', resolve));
    try {
      const socket = net.connect((small.address() as net.AddressInfo).port, '127.0.0.1');
      h.clients.push(socket);
      const client = attachAmp(socket);
      const err = await rejection(client.call('echo', { blob: 'y'.repeat(4096) }));
      expect(err.code).toBe('ConnectionLost');
      await closed(socket);
    } finally {
      for (const s of h.serverSockets) s.destroy();
      await new Promise<void>((resolve) => small.close(() => resolve()));
    }
  });

  it('fails pending calls with ConnectionLost when the remote side goes away', async () => {
    const h = await startServer();
    const socket = await connect(h);
    const client = attachAmp(socket);
    const pending = rejection(client.call('never'));
    await expect(client.call('echo', {})).resolves.toBeDefined();
    h.serverSockets[0]!.destroy();
    const err = await pending;
    expect(err.code).toBe('ConnectionLost');
    expect(client.closed).toBe(true);
  });

  it('fails pending calls with ConnectionLost when the local stream is destroyed', async () => {
    const h = await startServer();
    const socket = await connect(h);
    const client = attachAmp(socket);
    const pending = client.call('never');
    socket.destroy();
    expect((await rejection(pending)).code).toBe('ConnectionLost');
  });

  it('peer.close() ends the stream, and the remote peer sees the connection lost', async () => {
    const h = await startServer();
    const socket = await connect(h);
    const client = attachAmp(socket);
    await client.call('echo', {});
    const serverPeer = h.serverPeers[0]!;
    const serverPending = rejection(serverPeer.call('anything', {}, { timeoutMs: 60_000 }));
    client.close(vertexError('ConnectionLost', 'client done'));
    await closed(socket);
    expect((await serverPending).code).toBe('ConnectionLost');
    expect(serverPeer.closed).toBe(true);
  });

  it('destroys a stream whose remote side never closes, after the grace period', async () => {
    const clock = new ManualClock();
    const h = await startServer();
    // The server side keeps its half open and never ends.
    const raw = net.createServer({ allowHalfOpen: true }, (socket) => h.serverSockets.push(socket));
    await new Promise<void>((resolve) => raw.listen(0, '127.0.0.1', resolve));
    try {
      const socket = net.connect({ port: (raw.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
      h.clients.push(socket);
      await new Promise<void>((resolve) => socket.once('connect', resolve));
      const client = attachAmp(socket, { clock });
      client.close();
      expect(socket.writableEnded).toBe(true);
      expect(socket.destroyed).toBe(false);
      clock.advance(5_000);
      expect(socket.destroyed).toBe(true);
    } finally {
      for (const s of h.serverSockets) s.destroy();
      await new Promise<void>((resolve) => raw.close(() => resolve()));
    }
  });
});
