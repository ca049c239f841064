/**
 * The tcp route's dialer: a TCP connection to one of the peer's candidate
 * addresses, bounded by the connect's deadline and cancelled by its signal.
 */
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { vertexError } from '../errors';
import type { DialOptions, DirectTarget } from './route';

export function dialTcp(target: DirectTarget, opts: DialOptions): Promise<Duplex> {
  const where = `tcp to ${target.host}:${target.port}`;
  if (opts.signal.aborted) return Promise.reject(vertexError('ConnectionLost', `${where}: cancelled`));
  return new Promise((resolve, reject) => {
    // Half-open: peer channels carry half-closes; TLS over them inherits this.
    const socket = net.connect({ host: target.host, port: target.port, allowHalfOpen: true });
    // Small handshake records must not wait for Nagle against the peer's delayed ACK (~40 ms).
    socket.setNoDelay(true);
    const done = (err: Error | null): void => {
      clearTimeout(timer);
      opts.signal.removeEventListener('abort', onAbort);
      socket.off('connect', onConnect);
      socket.off('error', onError);
      if (!err) return resolve(socket);
      socket.destroy();
      reject(err);
    };
    const onConnect = (): void => done(null);
    const onError = (e: NodeJS.ErrnoException): void => done(vertexError('Unreachable', `${where}: ${e.code ?? e.message}`, e));
    const onAbort = (): void => done(vertexError('ConnectionLost', `${where}: cancelled`, opts.signal.reason));
    // A slow but working path still beats none: the connect's own deadline bounds it.
    const timer = setTimeout(() => done(vertexError('Timeout', `${where}: no answer`)), Math.max(0, opts.deadline - Date.now()));
    socket.once('connect', onConnect);
    socket.once('error', onError);
    opts.signal.addEventListener('abort', onAbort, { once: true });
  });
}
