/**
 * The SOCKS5 front-end: a thin net driver around Socks5Session
 * (q2q/proto/socks5-session.ts). It owns the listening socket, one timer per
 * connection, and the byte pump once a tunnel exists; every protocol
 * decision lives in the session.
 *
 * What a client sees:
 * - the success reply only after `dial` resolved, so "connected" means the
 *   tunnel exists; a failed dial gets the REP code of
 *   q2q/wire/socks5-replies.ts and the connection is closed;
 * - a handshake timeout (default 10 s) for clients that never finish;
 * - garbage, a wrong password or a client reset close that one connection
 *   and nothing else.
 *
 * After the reply both directions are joined with back-pressure (join.ts).
 * Half-close is kept: an end from one side becomes an end on the other, so
 * protocols that shut down their sending side first (ssh, `ncat --send-only`,
 * HTTP/1.0 clients) still get the rest of the answer.
 *
 * A browser opens connections by the dozen, so the per-connection path is
 * kept lean (bench/README.md, "new-connection cost"): one object per
 * connection with its handlers as methods, no timer of its own (the
 * handshake timeouts and close lingers of all connections share one
 * Deadlines each), no AbortController unless the dial asks for a signal,
 * and no logger child unless a line is written. The greeting is answered in
 * the turn that read it, and the success reply leaves in one write with the
 * service's first bytes when they came with the far side's accept.
 */
import { FRONTEND_BACKLOG, listenOn } from '../../q2q/transport/listen';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { asVertexError } from '../../q2q/errors';
import {
  Socks5Session,
  type Socks5Action,
  type SocksAuth,
  type SocksConnectRequest,
} from '../../q2q/proto/socks5-session';
import { systemClock, type Clock } from '../../q2q/util/clock';
import { Deadlines } from '../../q2q/util/deadlines';
import { silentLogger, type Logger } from '../../q2q/util/log';
import { isThenable } from '../../q2q/util/thenable';
import { join } from './join';

export type { SocksConnectRequest, SocksAuth };

/**
 * What a dial knows about its client. `aborted` turns true, and `signal`
 * aborts, when the client goes away before the dial finished (browsers
 * cancel requests all the time); a dial may ignore both, and a tunnel
 * resolved after that is destroyed. The AbortController behind `signal` is
 * made only when a dial asks for it.
 */
export interface SocksDialInfo {
  readonly clientAddress: string;
  readonly aborted: boolean;
  readonly signal: AbortSignal;
}

/**
 * Makes the tunnel for a CONNECT. A tunnel that exists at once (a stream opened
 * early on a live peer session, ConnectOptions.early) may be returned as it is,
 * not in a promise: the reply then leaves in this turn, before the stream's OPEN.
 */
export type SocksDial = (req: SocksConnectRequest, info: SocksDialInfo) => Promise<Duplex> | Duplex;

export interface Socks5ServerOptions {
  listen: { host: string; port: number };
  auth: SocksAuth;
  dial: SocksDial;
  /** Time from accept to a complete CONNECT request. */
  handshakeTimeoutMs?: number;
  log?: Logger;
  clock?: Clock;
}

export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
/**
 * After a refusal we end our side and wait this long for the client to close
 * before destroying the socket. Destroying at once could reset the
 * connection and discard the reply the client has not read yet.
 */
export const CLOSE_LINGER_MS = 2_000;

function formatAddress(host: string | undefined, port: number | undefined): string {
  if (host === undefined) return 'unknown';
  return host.includes(':') ? `[${host}]:${port ?? 0}` : `${host}:${port ?? 0}`;
}

export class Socks5Server {
  readonly #opts: Socks5ServerOptions;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #handshakeTimeoutMs: number;
  readonly #sockets = new Set<net.Socket>();
  readonly #tunnels = new Set<Duplex>();
  /** Connections still in their handshake, each with its deadline. */
  readonly #handshakes: Deadlines<SocksConnection>;
  /** Refused clients we ended and wait for; destroyed at their deadline. */
  readonly #lingering: Deadlines<net.Socket>;
  #server: net.Server | undefined;
  #nextConn = 1;

  constructor(opts: Socks5ServerOptions) {
    if (opts.auth !== 'none' && (opts.auth.username.length === 0 || opts.auth.password.length === 0)) {
      throw new RangeError('socks5 server: username and password must not be empty');
    }
    this.#opts = opts;
    this.#log = (opts.log ?? silentLogger).child({ component: 'socks5' });
    this.#clock = opts.clock ?? systemClock;
    this.#handshakeTimeoutMs = opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    this.#handshakes = new Deadlines(this.#clock, (conn) => conn.handshakeTimedOut());
    this.#lingering = new Deadlines(this.#clock, (socket) => socket.destroy());
  }

  /** Client connections open right now, in any phase. */
  get activeConnections(): number {
    return this.#sockets.size;
  }

  async start(): Promise<{ host: string; port: number }> {
    if (this.#server) throw new Error('socks5 server: already started');
    const server = net.createServer({ allowHalfOpen: true }, (socket) => this.#accept(socket));
    this.#server = server;
    const { host, port } = this.#opts.listen;
    try {
      await listenOn(server, { host, port, backlog: FRONTEND_BACKLOG });
    } catch (err) {
      this.#server = undefined;
      throw asVertexError(err, 'Internal', `socks5 listen ${formatAddress(host, port)}`);
    }
    server.on('error', (err) => this.#log.warn({ err }, 'socks5 listener error'));
    const addr = server.address() as net.AddressInfo;
    this.#log.info({ listen: formatAddress(addr.address, addr.port), auth: this.#opts.auth === 'none' ? 'none' : 'userpass' }, 'socks5 listening');
    return { host: addr.address, port: addr.port };
  }

  /** Stops listening and closes every client connection and tunnel. */
  async stop(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    const waits: Promise<void>[] = [];
    for (const s of this.#sockets) {
      waits.push(new Promise((resolve) => (s.destroyed ? resolve() : s.once('close', () => resolve()))));
      s.destroy();
    }
    for (const t of this.#tunnels) t.destroy();
    this.#handshakes.clear();
    this.#lingering.clear();
    await Promise.all([closed, ...waits]);
    this.#log.info('socks5 stopped');
  }

  #accept(socket: net.Socket): void {
    this.#sockets.add(socket);
    socket.setNoDelay(true);
    const conn = new SocksConnection(this.#internals, socket, this.#nextConn++);
    this.#handshakes.add(conn, this.#handshakeTimeoutMs);
  }

  /** What a connection needs of its server. */
  readonly #internals: ServerInternals = {
    opts: () => this.#opts,
    log: () => this.#log,
    handshakeDone: (conn) => this.#handshakes.delete(conn),
    linger: (socket) => this.#lingering.add(socket, CLOSE_LINGER_MS),
    closed: (socket) => {
      this.#lingering.delete(socket);
      this.#sockets.delete(socket);
    },
    tunnelOpen: (tunnel) => {
      this.#tunnels.add(tunnel);
      tunnel.once('close', () => this.#tunnels.delete(tunnel));
    },
  };
}

interface ServerInternals {
  opts(): Socks5ServerOptions;
  log(): Logger;
  handshakeDone(conn: SocksConnection): void;
  linger(socket: net.Socket): void;
  closed(socket: net.Socket): void;
  tunnelOpen(tunnel: Duplex): void;
}

/** One client connection, from accept to the tunnel (then join.ts carries the bytes). */
class SocksConnection implements SocksDialInfo {
  readonly #server: ServerInternals;
  readonly #socket: net.Socket;
  readonly #session: Socks5Session;
  readonly #id: number;
  #clientAddress: string | undefined;
  #log: Logger | undefined;
  #abort: AbortController | undefined;
  #aborted = false;
  #tunnel: Duplex | undefined;

  constructor(server: ServerInternals, socket: net.Socket, id: number) {
    this.#server = server;
    this.#socket = socket;
    this.#id = id;
    this.#session = new Socks5Session({ auth: server.opts().auth });
    socket.on('data', this.#onData);
    socket.on('error', this.#onHandshakeError);
    socket.on('end', this.#onEnd);
    socket.once('close', this.#onClose);
  }

  get clientAddress(): string {
    return (this.#clientAddress ??= formatAddress(this.#socket.remoteAddress, this.#socket.remotePort));
  }

  get aborted(): boolean {
    return this.#aborted;
  }

  get signal(): AbortSignal {
    if (!this.#abort) {
      this.#abort = new AbortController();
      if (this.#aborted) this.#abort.abort();
    }
    return this.#abort.signal;
  }

  handshakeTimedOut(): void {
    this.#run(this.#session.handshakeTimedOut());
  }

  /**
   * The connection's log lines, through a pino child with its number and
   * client, made only when a line at or above the logger's level is written
   * (a child costs an object and a serialisation of its bindings; most
   * connections log nothing above debug).
   */
  #logAt(level: 'debug' | 'info', obj: Record<string, unknown>, msg: string): void {
    const root = this.#server.log();
    if (!root.isLevelEnabled(level)) return;
    this.#log ??= root.child({ conn: this.#id, client: this.clientAddress });
    this.#log[level](obj, msg);
  }

  readonly #onData = (chunk: Buffer): void => this.#run(this.#session.receive(chunk));
  readonly #onHandshakeError = (err: Error): void => this.#logAt('debug', { err: err.message }, 'socks5 client error');
  readonly #onEnd = (): void => this.#run(this.#session.clientEnded());
  readonly #onClose = (): void => {
    this.#run(this.#session.clientEnded());
    this.#server.handshakeDone(this);
    this.#server.closed(this.#socket);
    this.#logAt('debug', {}, 'socks5 client closed');
  };

  #dial(request: SocksConnectRequest): void {
    this.#server.handshakeDone(this);
    // Reading goes on while the dial runs: the session holds early bytes
    // (bounded), and a client that leaves is noticed at once and aborts the dial.
    this.#logAt('debug', { target: formatAddress(request.host, request.port), type: request.addressType, user: this.#session.username }, 'socks5 connect');
    let pending: Promise<Duplex> | Duplex;
    try {
      pending = this.#server.opts().dial(request, this);
    } catch (err) {
      pending = Promise.reject(err);
    }
    if (isThenable<Duplex>(pending)) pending.then(this.#onDialed, this.#onDialFailed);
    else this.#onDialed(pending);
  }

  readonly #onDialed = (tunnel: Duplex): void => {
    if (this.#session.state !== 'connecting') {
      tunnel.destroy();
      return;
    }
    this.#tunnel = tunnel;
    if ((tunnel as { early?: boolean }).early) {
      // Nothing from the far side to wait for: the reply leaves now, in the turn that read
      // the request, so the client's own first bytes follow while the OPEN travels.
      this.#run(this.#session.connectSucceeded());
      return;
    }
    // The reply and whatever the far side sent with its accept leave in one write: the
    // join starts the tunnel flowing on the next tick, and the uncork is queued after it.
    this.#socket.cork();
    this.#run(this.#session.connectSucceeded());
    process.nextTick(uncork, this.#socket);
  };

  readonly #onDialFailed = (err: unknown): void => {
    this.#run(this.#session.connectFailed(err));
  };

  #run(actions: Socks5Action[]): void {
    const socket = this.#socket;
    for (const action of actions) {
      switch (action.type) {
        case 'send':
          if (!socket.destroyed) socket.write(action.data);
          break;
        case 'connect':
          this.#dial(action.request);
          break;
        case 'established': {
          const tunnel = this.#tunnel;
          if (!tunnel) throw new Error('socks5 server: established without a tunnel');
          socket.off('data', this.#onData);
          socket.off('error', this.#onHandshakeError);
          this.#logAt('debug', { target: this.#session.request ? formatAddress(this.#session.request.host, this.#session.request.port) : undefined }, 'socks5 tunnel established');
          this.#server.tunnelOpen(tunnel);
          // An early stream refused after the reply, or aborted later, resets the client (join.ts).
          const early = (tunnel as { early?: boolean }).early === true;
          join(socket, tunnel, { head: action.earlyData, resetAOnError: early, ...(early || this.#log || this.#server.log().isLevelEnabled('debug') ? { log: this.#server.log() } : {}) });
          break;
        }
        case 'close': {
          this.#server.handshakeDone(this);
          this.#aborted = true;
          this.#abort?.abort();
          const level = action.reason === 'dial-failed' || action.reason === 'auth-failed' ? 'info' : 'debug';
          this.#logAt(level, { reason: action.reason, detail: action.detail }, 'socks5 closing client');
          if (socket.destroyed) break;
          socket.off('data', this.#onData);
          // Keep reading (and discarding) so that the client's FIN is seen and the socket closes on its own.
          socket.resume();
          socket.end();
          this.#server.linger(socket);
          break;
        }
        default: {
          const never: never = action;
          throw new Error(`socks5 server: unknown action ${JSON.stringify(never)}`);
        }
      }
    }
  }
}

function uncork(socket: net.Socket): void {
  socket.uncork();
}
