/**
 * Misbehaving clients: each one loses only its own connection, and the
 * server goes on serving the next client.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { SocksClient } from 'socks';
import { Socks5Server } from '../../../agent/frontends/socks5-server';
import { ManualClock } from '../../../q2q/util/clock';
import { untilTrue } from '../../helpers/net';
import { RawClient, routingDial, startEcho, type Closable, type RecordingDial } from './helpers';

const HANDSHAKE_TIMEOUT_MS = 300;

// The server's timers (handshake timeout, close linger) run on a manual clock: a test moves
// time itself, so the handshake timeout fires exactly when the test says, however busy the
// machine is, and never in the middle of another test's handshake.

describe('socks5 server robustness', () => {
  let echo: Closable;
  let server: Socks5Server;
  let port: number;
  let routes: RecordingDial;
  let clock: ManualClock;

  beforeAll(async () => {
    echo = await startEcho();
  });
  afterAll(async () => {
    await echo.close();
  });
  beforeEach(async () => {
    routes = routingDial({ targets: { 'bob@b.test:7': echo.port } });
    clock = new ManualClock();
    server = new Socks5Server({ listen: { host: '127.0.0.1', port: 0 }, auth: 'none', dial: routes.dial, handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS, clock });
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
      timeout: 30_000,
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
      await c.waitClosed();
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
      await c.waitClosed();
    } finally {
      c.destroy();
    }
    await stillServes();
  });

  it('closes a client that never finishes its handshake after the handshake timeout, not before', async () => {
    const silent = await RawClient.connect(port);
    const stalled = await RawClient.connect(port);
    try {
      stalled.write('05 01 00');
      expect((await stalled.read(2)).toString('hex')).toBe('0500');
      stalled.write('05 01 00 03 0a 626f62'); // a request cut short
      await untilTrue('both clients accepted', () => server.activeConnections === 2);
      // One millisecond short of the timeout: both stay (the timers run synchronously in advance()).
      clock.advance(HANDSHAKE_TIMEOUT_MS - 1);
      expect(server.activeConnections).toBe(2);
      expect(silent.closed || stalled.closed).toBe(false);
      clock.advance(1);
      await Promise.all([silent.waitClosed(), stalled.waitClosed()]);
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
      clock.advance(HANDSHAKE_TIMEOUT_MS * 2);
      c.write(Buffer.from('alive'));
      expect((await c.read(5)).toString()).toBe('alive');
      expect(c.closed).toBe(false);
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
      // The clock stands still, so the handshake timeout cannot be what closes it.
      await c.waitClosed();
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
      await c.waitClosed();
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

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

async function waitForZero(server: Socks5Server): Promise<void> {
  await untilTrue(`0 active connections (have ${server.activeConnections})`, () => server.activeConnections === 0);
}
