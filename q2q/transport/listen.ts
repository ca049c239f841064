/**
 * `server.listen()` as a promise: resolves once bound, rejects with the bind
 * error (EADDRINUSE, EACCES, …) and leaves no listener behind either way.
 * Works for TCP and TLS servers and for unix sockets (`{ path }`).
 */
import type * as net from 'node:net';

export function listenOn(server: net.Server, options: net.ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(options, () => {
      server.off('error', reject);
      resolve();
    });
  });
}
