/**
 * The SOCKS5 front-end against the `socks` npm client and a byte-level
 * client, on loopback, with a test dial that routes to local servers.
 */
import { Writable, type Duplex } from 'node:stream';
import pino from 'pino';
import { SocksClient, type SocksClientOptions } from 'socks';
import { Socks5Server, type SocksDial } from '../../../agent/frontends/socks5-server';
import { HANG_MS, untilTrue } from '../../helpers/net';
import { closedPort, connectTcp, RawClient, routingDial, startEcho, type Closable, type RecordingDial } from './helpers';

const SOCKS5_REP_NAMES: Record<string, number> = {
  Failure: 0x01,
  NotAllowed: 0x02,
  NetworkUnreachable: 0x03,
  HostUnreachable: 0x04,
  ConnectionRefused: 0x05,
  CommandNotSupported: 0x07,
  AddressNotSupported: 0x08,
};

/** The REP code the `socks` client reports, read from its "rejected connection - <Name>" error. */
async function rejectionCode(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (err) {
    const m = /rejected connection - (\w+)/.exec((err as Error).message);
    if (m?.[1] && SOCKS5_REP_NAMES[m[1]] !== undefined) return SOCKS5_REP_NAMES[m[1]] as number;
    throw new Error(`socks client failed without a SOCKS5 reply: ${(err as Error).message}`);
  }
  throw new Error('socks client connected but a rejection was expected');
}

async function echoRoundTrip(socket: Duplex, payload: string): Promise<string> {
  const chunks: Buffer[] = [];
  socket.on('data', (d: Buffer) => chunks.push(d));
  const ended = new Promise<void>((resolve, reject) => {
    socket.once('end', () => resolve());
    socket.once('error', reject);
  });
  socket.end(payload);
  await ended;
  return Buffer.concat(chunks).toString();
}

describe('socks5 server with the socks npm client', () => {
  let echo: Closable;
  let servers: Socks5Server[] = [];

  beforeAll(async () => {
    echo = await startEcho();
  });
  afterAll(async () => {
    await echo.close();
  });
  afterEach(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    servers = [];
  });

  async function startServer(auth: 'none' | { username: string; password: string }, dial: SocksDial, handshakeTimeoutMs?: number): Promise<number> {
    const server = new Socks5Server({ listen: { host: '127.0.0.1', port: 0 }, auth, dial, handshakeTimeoutMs });
    servers.push(server);
    const addr = await server.start();
    expect(addr.host).toBe('127.0.0.1');
    return addr.port;
  }

  function clientOptions(port: number, host: string, destPort: number, creds?: { userId: string; password: string }): SocksClientOptions {
    return {
      proxy: { host: '127.0.0.1', port, type: 5, ...creds },
      command: 'connect',
      destination: { host, port: destPort },
      timeout: 30_000,
    };
  }

  function routes(): RecordingDial {
    return routingDial({
      targets: {
        'bob@b.test:7': echo.port,
        'bob.b.test.q2q:7': echo.port,
        '127.0.0.1:7': echo.port,
        '::1:7': echo.port,
      },
      failures: {
        'denied@b.test': 'Denied',
        'offline@b.test': 'Offline',
        'noservice@b.test': 'NotExposed',
        'example.com': 'NotAllowed',
      },
    });
  }

  it.each([
    ['ATYP 3, literal user@domain', 'bob@b.test', 'domain'],
    ['ATYP 3, DNS-safe name', 'bob.b.test.q2q', 'domain'],
    ['ATYP 1', '127.0.0.1', 'ipv4'],
    ['ATYP 4', '::1', 'ipv6'],
  ] as const)('tunnels with no auth, %s', async (_n, host, addressType) => {
    const r = routes();
    const port = await startServer('none', r.dial);
    const { socket } = await SocksClient.createConnection(clientOptions(port, host, 7));
    expect(await echoRoundTrip(socket, 'ping through socks')).toBe('ping through socks');
    expect(r.calls).toHaveLength(1);
    expect(r.calls[0]?.req).toEqual({ host, port: 7, addressType });
    expect(r.calls[0]?.clientAddress).toMatch(/^127\.0\.0\.1:\d+$/);
  });

  it('accepts the right RFC 1929 credentials', async () => {
    const r = routes();
    const port = await startServer({ username: 'alice', password: 's3cret' }, r.dial);
    const { socket } = await SocksClient.createConnection(clientOptions(port, 'bob@b.test', 7, { userId: 'alice', password: 's3cret' }));
    expect(await echoRoundTrip(socket, 'authenticated')).toBe('authenticated');
  });

  it.each([
    ['a wrong password', { userId: 'alice', password: 'wrong' }],
    ['a wrong username', { userId: 'mallory', password: 's3cret' }],
  ])('refuses %s per RFC 1929 and never dials', async (_n, creds) => {
    const r = routes();
    const port = await startServer({ username: 'alice', password: 's3cret' }, r.dial);
    await expect(SocksClient.createConnection(clientOptions(port, 'bob@b.test', 7, creds))).rejects.toThrow(/Authentication failed/);
    expect(r.calls).toHaveLength(0);
  });

  it('answers a wrong password with status 0x01 and then closes (raw bytes)', async () => {
    const port = await startServer({ username: 'alice', password: 's3cret' }, routes().dial);
    const c = await RawClient.connect(port);
    try {
      c.write('05 02 00 02');
      expect((await c.read(2)).toString('hex')).toBe('0502');
      c.write('01 05 616c696365 05 7772306e67'); // alice / wr0ng
      expect((await c.read(2)).toString('hex')).toBe('0101');
      await c.waitClosed();
    } finally {
      c.destroy();
    }
  });

  it('logs connections and refusals at debug level without ever writing the password', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(chunk.toString());
        cb();
      },
    });
    const log = pino({ level: 'debug' }, sink);
    const r = routes();
    const server = new Socks5Server({ listen: { host: '127.0.0.1', port: 0 }, auth: { username: 'alice', password: 'hunter2-pw' }, dial: r.dial, log });
    servers.push(server);
    const { port } = await server.start();
    const ok = await SocksClient.createConnection(clientOptions(port, 'bob@b.test', 7, { userId: 'alice', password: 'hunter2-pw' }));
    expect(await echoRoundTrip(ok.socket, 'x')).toBe('x');
    await expect(SocksClient.createConnection(clientOptions(port, 'bob@b.test', 7, { userId: 'alice', password: 'wrong-pw-42' }))).rejects.toThrow();
    await waitFor(() => lines.some((l) => l.includes('auth-failed')), 'the auth failure to be logged');
    const all = lines.join('');
    expect(all).toContain('bob@b.test:7');
    expect(all).not.toContain('hunter2-pw');
    expect(all).not.toContain('wrong-pw-42');
  });

  it('refuses a no-auth-only client (a browser) when credentials are configured', async () => {
    const port = await startServer({ username: 'alice', password: 's3cret' }, routes().dial);
    await expect(SocksClient.createConnection(clientOptions(port, 'bob@b.test', 7))).rejects.toThrow(/no accepted authentication type/);
  });

  it.each([
    ['Denied', 'denied@b.test', 0x02],
    ['NotAllowed (a non-Q2Q name, passthrough off)', 'example.com', 0x02],
    ['Offline', 'offline@b.test', 0x04],
    ['NotExposed', 'noservice@b.test', 0x05],
  ])('maps a dial error %s to its REP code', async (_n, host, rep) => {
    const port = await startServer('none', routes().dial);
    expect(await rejectionCode(SocksClient.createConnection(clientOptions(port, host, 7)))).toBe(rep);
  });

  it('maps ECONNREFUSED from a passthrough dial to REP 0x05', async () => {
    const dead = await closedPort();
    const r = routingDial({ targets: {}, passthrough: { 'plain.example': dead } });
    const port = await startServer('none', r.dial);
    expect(await rejectionCode(SocksClient.createConnection(clientOptions(port, 'plain.example', 80)))).toBe(0x05);
  });

  it('maps a dial that throws synchronously to REP 0x01 and keeps serving', async () => {
    const dial: SocksDial = (req) => {
      if (req.host === 'boom@b.test') throw new TypeError('bug in dial');
      return connectTcp(echo.port);
    };
    const port = await startServer('none', dial);
    expect(await rejectionCode(SocksClient.createConnection(clientOptions(port, 'boom@b.test', 7)))).toBe(0x01);
    const { socket } = await SocksClient.createConnection(clientOptions(port, 'bob@b.test', 7));
    expect(await echoRoundTrip(socket, 'still here')).toBe('still here');
  });

  it('sends the success reply only after the dial resolved', async () => {
    let release: (() => void) | undefined;
    const dial: SocksDial = async () => {
      await new Promise<void>((resolve) => {
        release = resolve;
      });
      return connectTcp(echo.port);
    };
    const port = await startServer('none', dial);
    const c = await RawClient.connect(port);
    try {
      c.write('05 01 00');
      expect((await c.read(2)).toString('hex')).toBe('0500');
      // The client pipelines its first bytes right after the request, before any reply.
      c.write('05 01 00 03 0a 626f6240622e74657374 0007');
      c.write(Buffer.from('early'));
      await c.until('the dial to start', () => release !== undefined);
      // Nothing may arrive while the dial runs. An absence cannot be awaited: give a reply that
      // was (wrongly) sent with the dial's start a moment to arrive. Load can only make this
      // check miss a bug, never fail a correct server.
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(c.received.length).toBe(0);
      release?.();
      expect((await c.read(10)).toString('hex')).toBe('05000001000000000000');
      expect((await c.read(5)).toString()).toBe('early');
    } finally {
      c.destroy();
    }
  });

  it('answers UDP ASSOCIATE and BIND with REP 0x07 and an unknown ATYP with 0x08', async () => {
    const port = await startServer('none', routes().dial);
    for (const [request, rep] of [
      ['05 03 00 01 00000000 0000', '07'],
      ['05 02 00 01 7f000001 0050', '07'],
      ['05 01 00 07', '08'],
    ] as const) {
      const c = await RawClient.connect(port);
      try {
        c.write(`05 01 00 ${request}`);
        expect((await c.read(2)).toString('hex')).toBe('0500');
        expect((await c.read(10)).toString('hex')).toBe(`05${rep}0001000000000000`);
        await c.waitClosed();
      } finally {
        c.destroy();
      }
    }
  });

  it('aborts the dial and destroys the late tunnel when the client leaves during a pending dial', async () => {
    let release: (() => void) | undefined;
    let signal: AbortSignal | undefined;
    const tunnels: Duplex[] = [];
    const dial: SocksDial = async (_req, info) => {
      signal = info.signal;
      await new Promise<void>((resolve) => {
        release = resolve;
      });
      const t = await connectTcp(echo.port);
      tunnels.push(t);
      return t;
    };
    const server = new Socks5Server({ listen: { host: '127.0.0.1', port: 0 }, auth: 'none', dial });
    servers.push(server);
    const { port } = await server.start();
    const c = await RawClient.connect(port);
    c.write('05 01 00 05 01 00 01 7f000001 0007');
    await c.until('the dial to start', () => release !== undefined);
    c.destroy();
    await c.waitClosed();
    await waitFor(() => server.activeConnections === 0, 'the server to drop the client');
    expect(signal?.aborted).toBe(true);
    release?.();
    await waitFor(() => tunnels.length === 1 && tunnels[0]?.destroyed === true, 'the late tunnel to be destroyed');
  });

  it('counts active connections and closes them all on stop()', async () => {
    const r = routes();
    const server = new Socks5Server({ listen: { host: '127.0.0.1', port: 0 }, auth: 'none', dial: r.dial });
    const { port } = await server.start();
    const a = await SocksClient.createConnection(clientOptions(port, 'bob@b.test', 7));
    const b = await SocksClient.createConnection(clientOptions(port, 'bob@b.test', 7));
    const idle = await RawClient.connect(port);
    await waitFor(() => server.activeConnections === 3, 'three active connections');
    const closed = [a.socket, b.socket].map((s) => new Promise<void>((resolve) => s.once('close', () => resolve())));
    await server.stop();
    await Promise.all(closed);
    await idle.waitClosed();
    expect(server.activeConnections).toBe(0);
    expect(r.tunnels.every((t) => t.destroyed)).toBe(true);
    await expect(connectTcp(port)).rejects.toThrow(/ECONNREFUSED/);
  });

  it('reports a listen failure as a VertexError naming the address', async () => {
    const first = new Socks5Server({ listen: { host: '127.0.0.1', port: 0 }, auth: 'none', dial: routes().dial });
    servers.push(first);
    const { port } = await first.start();
    const second = new Socks5Server({ listen: { host: '127.0.0.1', port }, auth: 'none', dial: routes().dial });
    await expect(second.start()).rejects.toMatchObject({ code: 'Internal', message: expect.stringContaining(`127.0.0.1:${port}`) });
  });
});

async function waitFor(cond: () => boolean, what: string, ms = HANG_MS): Promise<void> {
  await untilTrue(what, cond, ms);
}
