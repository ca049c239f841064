/**
 * Loopback fixtures for the SOCKS5 front-end tests: an echo server, an HTTP
 * server, a routing test `dial`, and a raw byte-level SOCKS client.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { vertexError, type ErrorCode } from '../../../q2q/errors';
import type { SocksConnectRequest, SocksDial } from '../../../agent/frontends/socks5-server';
import { HANG_MS, refusedPort } from '../../helpers/net';

export interface Closable {
  port: number;
  close(): Promise<void>;
}

function closeServer(server: net.Server, sockets: Set<net.Socket>): Promise<void> {
  for (const s of sockets) s.destroy();
  return new Promise((resolve) => server.close(() => resolve()));
}

function listen(server: net.Server, host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve((server.address() as net.AddressInfo).port));
  });
}

function track(server: net.Server): Set<net.Socket> {
  const sockets = new Set<net.Socket>();
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  return sockets;
}

/** Echoes every byte; a half-close from the client is answered with a half-close after the echo. */
export async function startEcho(): Promise<Closable> {
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
  const sockets = track(server);
  const port = await listen(server);
  return { port, close: () => closeServer(server, sockets) };
}

export const HTTP_BODY = 'hello from bob\n';

export async function startHttp(): Promise<Closable> {
  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'text/plain');
    res.setHeader('x-seen-host', req.headers.host ?? '');
    res.end(HTTP_BODY);
  });
  const sockets = track(server);
  const port = await listen(server);
  return {
    port,
    close: () => {
      server.closeAllConnections();
      return closeServer(server, sockets);
    },
  };
}

/** A port on 127.0.0.1 that nothing listens on (bound then released). */
/** A port where connecting is refused (test/helpers/net.ts refusedPort: no bind-close-reuse). */
export const closedPort = (): Promise<number> => refusedPort();

export function connectTcp(port: number, host = '127.0.0.1', opts: { allowHalfOpen?: boolean } = {}): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port, allowHalfOpen: opts.allowHalfOpen ?? false });
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

export interface TestDialRoutes {
  /** `host:port` as the client sent it -> local port to connect to. */
  targets: Record<string, number>;
  /** `host` -> the VertexError code the dial throws, as the real agent's dial would. */
  failures?: Record<string, ErrorCode>;
  /** `host` -> a local port dialled as a passthrough; its socket errors reach the server unchanged. */
  passthrough?: Record<string, number>;
}

export interface RecordingDial {
  dial: SocksDial;
  calls: Array<{ req: SocksConnectRequest; clientAddress: string }>;
  /** Tunnels handed to the server, so tests can check they were torn down. */
  tunnels: Duplex[];
}

export function routingDial(routes: TestDialRoutes): RecordingDial {
  const calls: RecordingDial['calls'] = [];
  const tunnels: Duplex[] = [];
  const dial: SocksDial = async (req, info) => {
    calls.push({ req, clientAddress: info.clientAddress });
    const failure = routes.failures?.[req.host];
    if (failure) throw vertexError(failure, `dial ${req.host}:${req.port}: test route says ${failure}`);
    const passthrough = routes.passthrough?.[req.host];
    const port = passthrough ?? routes.targets[`${req.host}:${req.port}`];
    if (port === undefined) throw vertexError('NotAllowed', `dial ${req.host}:${req.port}: no test route`);
    // allowHalfOpen keeps the half-close that the front-end carries; a default socket would end its write side on FIN.
    const s = await connectTcp(port, '127.0.0.1', { allowHalfOpen: true });
    tunnels.push(s);
    return s;
  };
  return { dial, calls, tunnels };
}

const POLL_MS = 10;

/** A byte-level client for checking exact replies and close behaviour. */
export class RawClient {
  readonly socket: net.Socket;
  #data = Buffer.alloc(0);
  #closed = false;
  #waiters: Array<() => void> = [];

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.#data = Buffer.concat([this.#data, d]);
      this.#wake();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.#closed = true;
      this.#wake();
    });
  }

  static async connect(port: number, opts: { allowHalfOpen?: boolean } = {}): Promise<RawClient> {
    return new RawClient(await connectTcp(port, '127.0.0.1', opts));
  }

  get received(): Buffer {
    return this.#data;
  }

  get closed(): boolean {
    return this.#closed;
  }

  write(bytes: Buffer | string): void {
    this.socket.write(typeof bytes === 'string' ? Buffer.from(bytes.replace(/\s+/g, ''), 'hex') : bytes);
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  /** Resolves when `cond` holds (checked on every event and every POLL_MS); rejects after `ms` (a hang guard) naming what it waited for. */
  async until(what: string, cond: () => boolean, ms = HANG_MS): Promise<void> {
    const deadline = Date.now() + ms;
    while (!cond()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`raw socks client: timed out after ${ms} ms waiting for ${what}; got ${this.#data.toString('hex')}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, POLL_MS));
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  async read(n: number, ms?: number): Promise<Buffer> {
    await this.until(`${n} bytes`, () => this.#data.length >= n || this.#closed, ms);
    const out = this.#data.subarray(0, n);
    this.#data = this.#data.subarray(n);
    return out;
  }

  waitClosed(ms?: number): Promise<void> {
    return this.until('the server to close the connection', () => this.#closed, ms);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

