/**
 * `server.listen()` as a promise: resolves once bound, rejects with the bind
 * error (EADDRINUSE, EACCES, …) and leaves no listener behind either way.
 * Works for TCP and TLS servers and for unix sockets (`{ path }`).
 */
import type * as net from 'node:net';

/**
 * The accept queue of the agent's front-ends (SOCKS5, forwards), where many
 * clients may connect in the same instant. Node's default is 511; a burst of
 * thousands overflows it, and the kernel drops the handshakes it cannot queue
 * (some clients then see ECONNRESET). Linux caps it at net.core.somaxconn
 * (4096 by default since 5.4).
 */
export const FRONTEND_BACKLOG = 4096;

export function listenOn(server: net.Server, options: net.ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(options, () => {
      server.off('error', reject);
      resolve();
    });
  });
}
