/**
 * Misbehaving clients: each one loses only its own connection, and the
 * server goes on serving the next client.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { SocksClient } from 'socks';
import { Socks5Server } from '../../../agent/frontends/socks5-server';
import { RawClient, routingDial, startEcho, type Closable, type RecordingDial } from './helpers';

const HANDSHAKE_TIMEOUT_MS = 300;

describe('socks5 server robustness', () => {
  let echo: Closable;
  let server: Socks5Server;
  let port: number;
  let routes: RecordingDial;

  beforeAll(async () => {
    echo = await startEcho();
  });
  afterAll(async () => {
    await echo.close();
  });
  beforeEach(async () => {
    routes = routingDial({ targets: { 'bob@b.test:7': echo.port } });
    server = new Socks5Server({ listen: { host: '127.0.0.1', port: 0 }, auth: 'none', dial: routes.dial, handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS });
    ({ port } = await server.start());
  });
  afterEach(async () => {
    await server.stop();
  });

  async function stillServes(): Promise<void> {
    const { socket } = await SocksClient.createConnection({
      proxy: { host: '127.0.0.1', port, type: 5 },
      command: 'connect',
      destination: { host: 'bob@b.test', port: 7 },
      timeout: 5000,
    });
    const echoed = new Promise<string>((resolve, reject) => {
      const chunks: Buffer[] = [];
      socket.on('data', (d: Buffer) => chunks.push(d));
      socket.once('end', () => resolve(Buffer.concat(chunks).toString()));
      socket.once('error', reject);
    });
    socket.end('next client');
    expect(await echoed).toBe('next client');
  }

  it.each([
    ['an HTTP request', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')],
    ['a SOCKS4 request', Buffer.from('04010050' + '7f000001' + '00', 'hex')],
    ['a TLS ClientHello', Buffer.from('16030100a5010000a10303', 'hex')],
    ['random bytes', randomBytes(512)],
  ])('closes a client that sends %s and keeps serving', async (_n, garbage) => {
    const c = await RawClient.connect(port);
    try {
      c.write(garbage);
      await c.waitClosed(2000);
      expect(routes.calls).toHaveLength(0);
    } finally {
      c.destroy();
    }
    await stillServes();
  });

  it('closes a client that sends garbage after a valid greeting', async () => {
    const c = await RawClient.connect(port);
    try {
      c.write('05 01 00');
      expect((await c.read(2)).toString('hex')).toBe('0500');
      c.write('05 01 00 03 00 0050'); // empty domain name
      await c.waitClosed(2000);
    } finally {
      c.destroy();
    }
    await stillServes();
  });

  it('closes a client that never finishes its handshake after the handshake timeout', async () => {
    const silent = await RawClient.connect(port);
    const stalled = await RawClient.connect(port);
    const started = Date.now();
    try {
      stalled.write('05 01 00');
      expect((await stalled.read(2)).toString('hex')).toBe('0500');
      stalled.write('05 01 00 03 0a 626f62'); // a request cut short
      await Promise.all([silent.waitClosed(3000), stalled.waitClosed(3000)]);
      const elapsed = Date.now() - started;
      expect(elapsed).toBeGreaterThanOrEqual(HANDSHAKE_TIMEOUT_MS - 50);
      expect(elapsed).toBeLessThan(HANDSHAKE_TIMEOUT_MS + CLOSE_MARGIN_MS);
    } finally {
      silent.destroy();
      stalled.destroy();
    }
    await waitForZero(server);
    await stillServes();
  });

  it('does not apply the handshake timeout to an established tunnel', async () => {
    const c = await RawClient.connect(port);
    try {
      c.write('05 01 00 05 01 00 03 0a 626f6240622e74657374 0007');
      expect((await c.read(12)).toString('hex')).toBe('050005000001000000000000');
      await new Promise((resolve) => setTimeout(resolve, HANDSHAKE_TIMEOUT_MS * 2));
      expect(c.closed).toBe(false);
      c.write(Buffer.from('alive'));
      expect((await c.read(5)).toString()).toBe('alive');
    } finally {
      c.destroy();
    }
  });

  it('closes a client that half-closes during the handshake', async () => {
    const c = await RawClient.connect(port);
    try {
      c.write('05 01 00');
      expect((await c.read(2)).toString('hex')).toBe('0500');
      c.socket.end();
      await c.waitClosed(HANDSHAKE_TIMEOUT_MS - 100);
    } finally {
      c.destroy();
    }
  });

  it('survives clients that reset mid-handshake and mid-tunnel', async () => {
    const early = await RawClient.connect(port);
    early.write('05 02 00');
    early.socket.resetAndDestroy();
    const late = await RawClient.connect(port);
    late.write('05 01 00 05 01 00 03 0a 626f6240622e74657374 0007');
    await late.read(12);
    late.write(randomBytes(64 * 1024));
    late.socket.resetAndDestroy();
    await waitForZero(server);
    await stillServes();
  });

  it('carries a half-close both ways: the client ends, and still reads the whole answer', async () => {
    const c = await RawClient.connect(port);
    const payload = randomBytes(300 * 1024);
    try {
      c.write('05 01 00 05 01 00 03 0a 626f6240622e74657374 0007');
      expect((await c.read(12)).toString('hex')).toBe('050005000001000000000000');
      c.socket.end(payload);
      await c.waitClosed(5000);
      expect(sha256(c.received)).toBe(sha256(payload));
    } finally {
      c.destroy();
    }
  });

  it('ends the client side when the tunnel ends first, and keeps the other direction open', async () => {
    // A service that says its piece, half-closes, then keeps reading (like an SMTP banner or `ncat --send-only`).
    let received = '';
    let gotEnd!: () => void;
    const ended = new Promise<void>((resolve) => (gotEnd = resolve));
    const talker = net.createServer({ allowHalfOpen: true }, (s) => {
      s.end('banner\n');
      s.on('data', (d: Buffer) => (received += d.toString()));
      s.on('end', () => gotEnd());
    });
    await new Promise<void>((resolve) => talker.listen(0, '127.0.0.1', resolve));
    const talkerPort = (talker.address() as net.AddressInfo).port;
    const s2 = new Socks5Server({
      listen: { host: '127.0.0.1', port: 0 },
      auth: 'none',
      dial: routingDial({ targets: { 'talker@b.test:1': talkerPort } }).dial,
    });
    const { port: p2 } = await s2.start();
    const c = await RawClient.connect(p2, { allowHalfOpen: true });
    try {
      c.write('05 01 00 05 01 00 03 0d 74616c6b657240622e74657374 0001');
      expect((await c.read(12)).toString('hex')).toBe('050005000001000000000000');
      await c.until('the banner and the end from the tunnel', () => c.received.toString() === 'banner\n' && c.socket.readableEnded);
      c.socket.end('reply after their end');
      await ended;
      expect(received).toBe('reply after their end');
      await c.waitClosed();
    } finally {
      c.destroy();
      await s2.stop();
      await new Promise<void>((resolve) => talker.close(() => resolve()));
    }
  });
});

const CLOSE_MARGIN_MS = 1500;

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

async function waitForZero(server: Socks5Server): Promise<void> {
  const deadline = Date.now() + 5000;
  while (server.activeConnections !== 0) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for 0 active connections, have ${server.activeConnections}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
