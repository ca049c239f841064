/**
 * The local end of an exposed service (`expose:` in agent.yaml, `vertex
 * expose`): each inbound Q2Q stream is joined to a fresh TCP connection to
 * the local target. The local connection is made before the caller's connect
 * completes (exposePrepare): when the target does not answer, the caller's
 * connect fails with Refused, and the reason is logged here.
 */
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { isVertexError, vertexError } from '../../q2q/errors';
import { silentLogger, type Logger } from '../../q2q/util/log';
import { joinStreams } from './join';

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

/** Connects to `target`; rejects with the socket error or a timeout naming the target. */
export function connectLocal(target: ExposeTarget, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: target.host, port: target.port, allowHalfOpen: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(vertexError('Timeout', `${target.host}:${target.port} did not accept within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      socket.setNoDelay(true);
      resolve(socket);
    });
    const onError = (err: Error): void => {
      clearTimeout(timer);
      reject(err);
    };
    socket.once('error', onError);
  });
}

/**
 * The `prepare` of an exposed service: the local connection, made before the caller's
 * connect completes, so that a target that refuses is reported to the caller as Refused
 * (`vertex ping bob@b.test:dead`, `vertex connect`, the SOCKS reply) rather than as a
 * stream that ends at once. The message names the service, never the local address.
 */
export function exposePrepare(target: ExposeTarget, serviceName: string, opts: ExposeHandlerOptions = {}): () => Promise<net.Socket> {
  const log = opts.log ?? silentLogger;
  const timeoutMs = opts.connectTimeoutMs ?? LOCAL_CONNECT_TIMEOUT_MS;
  return () => connectLocal(target, timeoutMs).catch((err: Error) => {
    const reason = (err as NodeJS.ErrnoException).code ?? (isVertexError(err, 'Timeout') ? 'no answer' : 'error');
    log.warn({ target: `${target.host}:${target.port}`, reason: (err as NodeJS.ErrnoException).code ?? err.message }, 'exposed service: local target unreachable');
    const what = reason === 'ECONNREFUSED' ? 'refused the connection' : `did not accept the connection (${reason})`;
    throw vertexError('Refused', `${serviceName}: the service is exposed, but the program behind it ${what}`);
  });
}

/**
 * The `onConnection` of an exposed service. `local` is the connection exposePrepare made;
 * without one (a caller of the library that has no prepare) it connects here.
 */
export function exposeHandler(target: ExposeTarget, opts: ExposeHandlerOptions = {}): (stream: Duplex, local?: net.Socket) => void {
  const log = opts.log ?? silentLogger;
  const timeoutMs = opts.connectTimeoutMs ?? LOCAL_CONNECT_TIMEOUT_MS;
  return (stream, prepared) => {
    // Hold the peer's first bytes until the local side can take them.
    stream.pause();
    stream.on('error', (err) => log.debug({ err: err.message }, 'inbound stream error'));
    (prepared ? Promise.resolve(prepared) : connectLocal(target, timeoutMs)).then(
      (local) => {
        if (stream.destroyed) {
          local.destroy();
          return;
        }
        opts.onJoined?.(stream, local);
        void joinStreams(local, stream, { log });
      },
      (err: Error) => {
        log.warn({ target: `${target.host}:${target.port}`, reason: (err as NodeJS.ErrnoException).code ?? err.message }, 'exposed service: local target unreachable');
        stream.destroy();
      },
    );
  };
}
