/**
 * The local end of an exposed service (`expose:` in agent.yaml, `vertex
 * expose`): each inbound Q2Q stream is joined to a fresh TCP connection to
 * the local target. The local connection is made before the caller's connect
 * completes (exposePrepare): when the target does not answer, the caller's
 * connect fails with Refused, and the reason is logged here.
 *
 * Every inbound stream comes through here, so the path is lean (bench/README.md,
 * "new-connection cost"): the connect timeouts share one timer, and the stream
 * and the local socket are joined directly (join.ts), without a promise.
 */
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { isVertexError, vertexError } from '../../q2q/errors';
import { systemClock } from '../../q2q/util/clock';
import { Deadlines } from '../../q2q/util/deadlines';
import { silentLogger, type Logger } from '../../q2q/util/log';
import type { PrepareInfo } from '../../q2q/negotiate/types';
import { join } from './join';

/** How long a local target may take to accept before the inbound stream is dropped. */
export const LOCAL_CONNECT_TIMEOUT_MS = 5_000;

export interface ExposeTarget {
  host: string;
  port: number;
}

export interface ExposeHandlerOptions {
  log?: Logger;
  connectTimeoutMs?: number;
  /** Called once the local connection exists, before bytes flow. */
  onJoined?: (stream: Duplex, local: net.Socket) => void;
}

/** A local connect in flight. */
interface Connecting {
  socket: net.Socket;
  target: ExposeTarget;
  timeoutMs: number;
}

/** Every local connect's timeout, on one timer (q2q/util/deadlines.ts). */
const connectDeadlines = new Deadlines<Connecting>(systemClock, (c) => {
  c.socket.destroy(vertexError('Timeout', `${c.target.host}:${c.target.port} did not accept within ${c.timeoutMs} ms`));
});

/**
 * How long, after the local connection is made, the ACCEPT may wait for the
 * target's first bytes (a greeting, a banner, the hello service's byte):
 * two turns of the event loop, so that bytes the target wrote at once are
 * read in the second turn's poll, and leave with the ACCEPT in one record. This costs
 * the other side a read, and its SOCKS client a write and a wake-up. A
 * target that speaks only when spoken to (HTTP) waits those two turns, a
 * few microseconds, which is the price.
 */
function settle(socket: net.Socket, done: (socket: net.Socket) => void, peerSpoke: () => boolean): void {
  // No listener: the socket reads into its buffer on its own, and nothing is consumed, so
  // the bytes, and an end right behind them, wait there for the join ('readable' or 'data'
  // listeners here would let an end be emitted before anyone listens for it).
  setImmediate(settleTurn, socket, done, peerSpoke);
}

function settleTurn(socket: net.Socket, done: (socket: net.Socket) => void, peerSpoke: () => boolean): void {
  // The caller's bytes came meanwhile: they are what the target waits for.
  if (peerSpoke()) done(socket);
  else setImmediate(done, socket);
}

const nobodySpoke = (): boolean => false;

/** Until the join takes the socket over, an error is noticed there (the socket is destroyed). */
function swallowEarlyError(): void {}

/**
 * Connects to `target`; rejects with the socket error or a timeout naming the target.
 * With `settle`, it resolves two loop turns after the connect (see settle()); bytes and an
 * end read meanwhile stay in the socket's buffer.
 */
export function connectLocal(target: ExposeTarget, timeoutMs: number, opts: { settle?: boolean; peerSpoke?: () => boolean } = {}): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: target.host, port: target.port, allowHalfOpen: true });
    const pending: Connecting = { socket, target, timeoutMs };
    connectDeadlines.add(pending, timeoutMs);
    const onError = (err: Error): void => {
      connectDeadlines.delete(pending);
      socket.destroy();
      reject(err);
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      connectDeadlines.delete(pending);
      socket.off('error', onError);
      socket.on('error', swallowEarlyError);
      socket.setNoDelay(true);
      // A caller that spoke first (an early open with its request) waits for no greeting.
      const peerSpoke = opts.peerSpoke ?? nobodySpoke;
      if (opts.settle && !peerSpoke()) settle(socket, resolve, peerSpoke);
      else resolve(socket);
    });
  });
}

/**
 * The `prepare` of an exposed service: the local connection, made before the caller's
 * connect completes, so that a target that refuses is reported to the caller as Refused
 * (`vertex ping bob@b.test:dead`, `vertex connect`, the SOCKS reply) rather than as a
 * stream that ends at once. The message names the service, never the local address.
 */
export function exposePrepare(target: ExposeTarget, serviceName: string, opts: ExposeHandlerOptions = {}): (opening?: PrepareInfo) => Promise<net.Socket> {
  const log = opts.log ?? silentLogger;
  const timeoutMs = opts.connectTimeoutMs ?? LOCAL_CONNECT_TIMEOUT_MS;
  const refused = (err: Error): never => {
    const reason = (err as NodeJS.ErrnoException).code ?? (isVertexError(err, 'Timeout') ? 'no answer' : 'error');
    log.warn({ target: `${target.host}:${target.port}`, reason: (err as NodeJS.ErrnoException).code ?? err.message }, 'exposed service: local target unreachable');
    const what = reason === 'ECONNREFUSED' ? 'refused the connection' : `did not accept the connection (${reason})`;
    throw vertexError('Refused', `${serviceName}: the service is exposed, but the program behind it ${what}`);
  };
  return (opening) => connectLocal(target, timeoutMs, { settle: true, ...(opening && { peerSpoke: () => opening.peerSpoke() }) }).catch(refused);
}

/**
 * The `onConnection` of an exposed service. `local` is the connection exposePrepare made;
 * without one (a caller of the library that has no prepare) it connects here.
 */
export function exposeHandler(target: ExposeTarget, opts: ExposeHandlerOptions = {}): (stream: Duplex, local?: net.Socket) => void {
  const log = opts.log ?? silentLogger;
  const timeoutMs = opts.connectTimeoutMs ?? LOCAL_CONNECT_TIMEOUT_MS;
  const onStreamError = (err: Error): void => log.debug({ err: err.message }, 'inbound stream error');
  const joinLocal = (stream: Duplex, local: net.Socket): void => {
    local.off('error', swallowEarlyError);
    if (stream.destroyed || local.destroyed) {
      // The caller left, or the target failed before the join (a reset while settling).
      local.destroy();
      stream.destroy();
      return;
    }
    opts.onJoined?.(stream, local);
    // Bytes the target sent before the stream was accepted (settle()) go out in this turn,
    // in the same record as the ACCEPT.
    const early = local.readableLength > 0 ? (local.read() as Buffer | null) : null;
    join(local, stream, { log, ...(early && { head: early }) });
  };
  return (stream, prepared) => {
    stream.on('error', onStreamError);
    if (prepared) {
      joinLocal(stream, prepared);
      return;
    }
    // Hold the peer's first bytes until the local side can take them.
    stream.pause();
    connectLocal(target, timeoutMs).then(
      (local) => joinLocal(stream, local),
      (err: Error) => {
        log.warn({ target: `${target.host}:${target.port}`, reason: (err as NodeJS.ErrnoException).code ?? err.message }, 'exposed service: local target unreachable');
        stream.destroy();
      },
    );
  };
}
