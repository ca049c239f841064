/**
 * The close policy for TCP connections that carry a peer's bytes (a relay
 * leg at the server, a peer channel on the tcp or relay route at an agent):
 * an abort reaches the far end as an abort (a TCP reset), a clean end as a
 * clean end (a FIN), and never the one for the other. Before, an abort that
 * arrived as a clean end let a transfer cut short look complete.
 *
 * Plain sockets (the relay's splice) use public calls only: abortTcp, and
 * endedByReset for the one case libuv hides (below). TLS sockets over TCP
 * (peer TLS at the agents) still need carryAbortsOverTcp, which reaches
 * into node:tls; it is the only place that does (see there why). Node has no
 * public way to reset the TCP connection under a TLS socket:
 * TLSSocket.resetAndDestroy() throws ERR_INVALID_HANDLE_TYPE (nodejs/node
 * #49484, open), and destroying the TCP socket under a live TLS socket is
 * the crash described there. test/integration/connections/tcp-abort.test.ts
 * fails if a node upgrade changes what it relies on.
 *
 * Why endedByReset: libuv on Linux reports a reset that arrives together
 * with unread bytes as a plain end of stream, because it takes POLLHUP after
 * a partial read as end of file without reading once more (libuv
 * src/unix/stream.c, uv__stream_io; changed by libuv#4997, "unix: fix partial
 * read handling after POLLHUP", January 2026, after node 20's libuv). So an
 * abort in the middle of a transfer shows as 'end' on a net.Socket. The
 * kernel still knows: a zero-length write to a reset connection fails
 * (EPIPE or ECONNRESET), to a connection the far end merely half-closed it
 * succeeds. test/unit/q2q/transport/tcp-close.test.ts pins both behaviours, so a node
 * upgrade that changes them fails there first.
 */
import * as net from 'node:net';
import type * as tls from 'node:tls';
import { vertexError } from '../errors';

/**
 * Aborts `socket`'s connection: a reset, so that the far end sees an abort.
 * Once our own end (FIN) is under way or sent, the connection is closed
 * normally instead: libuv refuses to reset a socket whose shutdown it has
 * started (EINVAL) and node then never closes the handle.
 */
export function abortTcp(socket: net.Socket): void {
  if (socket.destroyed) return;
  if (socket.writableEnded || socket.connecting) socket.destroy();
  else socket.resetAndDestroy();
}

/**
 * Called at a plain socket's 'end': resolves true when the far end reset the
 * connection rather than ended it (see the file comment). After our own FIN
 * nothing can be probed, and an end then reads as an end.
 */
export function endedByReset(socket: net.Socket): Promise<boolean> {
  if (socket.destroyed) return Promise.resolve(!socket.readableEnded);
  if (socket.writableEnded) return Promise.resolve(false);
  return new Promise((resolve) => {
    socket.write(Buffer.alloc(0), (err) => resolve(err !== null && err !== undefined));
  });
}

/**
 * Carries aborts both ways over a TLS socket running on the TCP socket `tcp`
 * (a relay leg, at either end, or peer TLS on the tcp route), so that an abort
 * is never taken for a clean end: a reader stayed half-open, a transfer cut
 * short looked complete, and the relay passed such a close on as a clean end.
 *
 * Sending: a destroy of `socket` before its writable side finished, or with an
 * error, resets the TCP connection instead of closing it with a FIN. Two
 * hazards of node 20 decide how:
 * - libuv refuses to reset a socket whose shutdown is under way (EINVAL), and
 *   node then leaks the handle (the process never exits). Once end() has
 *   handed every byte to TLS (which then shuts the socket down), the
 *   connection is closed normally: what was written still arrives, in full.
 * - node:tls frees its state at once when it finds its TCP socket already
 *   closed, and a TLS write still pending on that socket then completes into
 *   freed memory (a segfault); and a TLS socket marked destroyed that still
 *   delivers bytes throws from node's read callback. So the TLS socket closes
 *   the usual way, which destroys the TCP socket and frees the TLS state only
 *   once that socket has closed, and that destroy becomes the reset.
 *
 * Receiving: libuv reports a reset that arrives together with unread bytes
 * (an abort in the middle of a transfer) as a plain end of stream. At that
 * end the connection is checked: before our own FIN, a connection the kernel
 * already counts as closed was reset (after our FIN, the peer's FIN closes it
 * too, so a reset there still reads as an end). Such an end becomes a
 * ConnectionLost error instead.
 */
export function carryAbortsOverTcp(socket: tls.TLSSocket, tcp: net.Socket): void {
  const closeTls = socket._destroy;
  socket._destroy = (err, callback) => {
    const aborted = err !== null || !socket.writableFinished;
    const shutdownUnderWay = socket.writableEnded && !socket.writableFinished && socket.writableLength === 0;
    if (aborted && !shutdownUnderWay && !tcp.destroyed) {
      const close = tcp.destroy;
      tcp.destroy = (error?: Error) => {
        tcp.destroy = close;
        return error ? close.call(tcp, error) : tcp.resetAndDestroy();
      };
    }
    closeTls.call(socket, err, callback);
  };
  // node:tls ends the readable side with push(null); no event comes before it.
  const push = socket.push;
  socket.push = (chunk: unknown, encoding?: BufferEncoding): boolean => {
    if (chunk === null && !socket.writableEnded && kernelClosed(tcp)) {
      socket.destroy(vertexError('ConnectionLost', 'the peer reset the connection before it ended'));
      return false;
    }
    return push.call(socket, chunk, encoding);
  };
}

/**
 * Whether the kernel counts `tcp`'s connection as closed: getpeername fails
 * (ENOTCONN) then. node has no public call for it; its TCP handle's
 * getpeername is what net.Socket's remoteAddress uses (and caches).
 */
function kernelClosed(tcp: net.Socket): boolean {
  const handle = (tcp as unknown as { _handle?: { getpeername?: (out: object) => number } | null })._handle;
  return typeof handle?.getpeername === 'function' && handle.getpeername({}) !== 0;
}
