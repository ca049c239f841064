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
 * After the reply both directions are piped with back-pressure. Half-close
 * is kept: an end from one side becomes an end on the other, so protocols
 * that shut down their sending side first (ssh, `ncat --send-only`, HTTP/1.0
 * clients) still get the rest of the answer.
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
import { systemClock, type Clock, type Timer } from '../../q2q/util/clock';
import { silentLogger, type Logger } from '../../q2q/util/log';

export type { SocksConnectRequest, SocksAuth };

/**
 * Opens the tunnel for one CONNECT. `signal` aborts when the client goes away
 * before the dial finished (browsers cancel requests all the time); a dial
 * may ignore it, and a tunnel resolved after that is destroyed.
 */
export type SocksDial = (req: SocksConnectRequest, info: { clientAddress: string; signal: AbortSignal }) => Promise<Duplex>;

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
    await Promise.all([closed, ...waits]);
    this.#log.info('socks5 stopped');
  }

  /**
   * The connection's logger: a pino child with its number and client, made
   * only when a line at or above the logger's level is written (a child costs
   * an object and a serialisation of its bindings; most connections log
   * nothing above debug).
   */
  #connectionLog(conn: number, client: string): Pick<Logger, 'debug' | 'info'> {
    let child: Logger | undefined;
    const get = (): Logger => (child ??= this.#log.child({ conn, client }));
    return {
      debug: ((...args: Parameters<Logger['debug']>) => {
        if (this.#log.isLevelEnabled('debug')) get().debug(...args);
      }) as Logger['debug'],
      info: ((...args: Parameters<Logger['info']>) => {
        if (this.#log.isLevelEnabled('info')) get().info(...args);
      }) as Logger['info'],
    };
  }

  #accept(socket: net.Socket): void {
    const clientAddress = formatAddress(socket.remoteAddress, socket.remotePort);
    const log = this.#connectionLog(this.#nextConn++, clientAddress);
    this.#sockets.add(socket);
    socket.setNoDelay(true);
    const session = new Socks5Session({ auth: this.#opts.auth });
    let handshakeTimer: Timer | undefined = this.#clock.setTimer(() => {
      handshakeTimer = undefined;
      run(session.handshakeTimedOut());
    }, this.#handshakeTimeoutMs);
    let lingerTimer: Timer | undefined;
    let tunnel: Duplex | undefined;

    const onData = (chunk: Buffer): void => run(session.receive(chunk));
    const onHandshakeError = (err: Error): void => log.debug({ err: err.message }, 'socks5 client error');
    socket.on('data', onData);
    socket.on('error', onHandshakeError);
    socket.on('close', () => {
      run(session.clientEnded());
      handshakeTimer?.cancel();
      lingerTimer?.cancel();
      this.#sockets.delete(socket);
      log.debug('socks5 client closed');
    });
    socket.on('end', () => run(session.clientEnded()));

    const abort = new AbortController();
    const dial = (request: SocksConnectRequest): void => {
      handshakeTimer?.cancel();
      handshakeTimer = undefined;
      // Reading goes on while the dial runs: the session holds early bytes
      // (bounded), and a client that leaves is noticed at once and aborts the dial.
      log.debug({ target: formatAddress(request.host, request.port), type: request.addressType, user: session.username }, 'socks5 connect');
      let pending: Promise<Duplex>;
      try {
        pending = this.#opts.dial(request, { clientAddress, signal: abort.signal });
      } catch (err) {
        pending = Promise.reject(err);
      }
      pending.then(
        (t) => {
          if (session.state !== 'connecting') {
            t.destroy();
            return;
          }
          tunnel = t;
          run(session.connectSucceeded());
        },
        (err: unknown) => {
          run(session.connectFailed(err));
        },
      );
    };

    const run = (actions: Socks5Action[]): void => {
      for (const action of actions) {
        switch (action.type) {
          case 'send':
            if (!socket.destroyed) socket.write(action.data);
            break;
          case 'connect':
            dial(action.request);
            break;
          case 'established':
            if (!tunnel) throw new Error('socks5 server: established without a tunnel');
            socket.off('data', onData);
            socket.off('error', onHandshakeError);
            log.debug({ target: session.request ? formatAddress(session.request.host, session.request.port) : undefined }, 'socks5 tunnel established');
            this.#pump(socket, tunnel, action.earlyData, log);
            break;
          case 'close': {
            handshakeTimer?.cancel();
            handshakeTimer = undefined;
            abort.abort();
            const level = action.reason === 'dial-failed' || action.reason === 'auth-failed' ? 'info' : 'debug';
            log[level]({ reason: action.reason, detail: action.detail }, 'socks5 closing client');
            if (socket.destroyed) break;
            socket.off('data', onData);
            // Keep reading (and discarding) so that the client's FIN is seen and the socket closes on its own.
            socket.resume();
            socket.end();
            lingerTimer ??= this.#clock.setTimer(() => socket.destroy(), CLOSE_LINGER_MS);
            break;
          }
          default: {
            const never: never = action;
            throw new Error(`socks5 server: unknown action ${JSON.stringify(never)}`);
          }
        }
      }
    };
  }

  /** Pipes client <-> tunnel with back-pressure; an end becomes an end, an error or abrupt close tears both down. */
  #pump(socket: net.Socket, tunnel: Duplex, earlyData: Buffer, log: Pick<Logger, 'debug'>): void {
    this.#tunnels.add(tunnel);
    let torn = false;
    const teardown = (why: string, err?: Error): void => {
      if (torn) return;
      torn = true;
      if (err) log.debug({ err: err.message }, `socks5 tunnel ${why}`);
      socket.destroy();
      tunnel.destroy();
    };
    socket.on('error', (err) => teardown('client error', err));
    tunnel.on('error', (err) => teardown('tunnel error', err));
    // A side that closes before sending its end was cut off: the other must not wait forever.
    socket.on('close', () => {
      if (!socket.readableEnded || !socket.writableFinished) teardown('client closed');
    });
    tunnel.on('close', () => {
      this.#tunnels.delete(tunnel);
      if (!tunnel.readableEnded) teardown('tunnel closed');
    });
    if (earlyData.length > 0) tunnel.write(earlyData);
    socket.pipe(tunnel);
    tunnel.pipe(socket);
  }
}
