/**
 * A relay leg: a TLS connection to the listener's server (ALPN q2q-relay/2,
 * authenticated by our certificate) that names the inbound token. Once the
 * server has both legs it answers ok, and from then on the socket is a raw
 * pipe to the other side, over which the peers run their own TLS.
 */
import * as net from 'node:net';
import { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import { isErrorCode, vertexError } from '../errors';
import type { ServerEndpoint, ServerResolver } from '../control/discovery';
import { checkServerCa, connectTls, type CaTrust } from '../control/server-connection';
import { ALPN_RELAY, RELAY_PAIRING_TIMEOUT_MS } from '../control/protocol';
import { preambleError, readPreamble, writePreamble } from '../transport/preamble';
import type { Identity } from './types';

/** How long an ended leg may keep flushing after the stream over it was destroyed. */
export const LEG_FLUSH_LINGER_MS = 10_000;

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

/**
 * The leg as a plain Duplex for peer TLS to run over. Handed a TLSSocket,
 * node:tls would stack the peer TLS on the leg's own native handle, and
 * destroying the peer TLS (which it does right after both close_notify
 * alerts) would tear that handle down before the leg flushed its queued
 * bytes: the tail of a transfer was lost. Through this Duplex, a destroy after
 * a clean end waits for the leg to finish writing (bounded by
 * LEG_FLUSH_LINGER_MS); back-pressure and half-close pass through.
 *
 * A destroy before this stream's writable side finished is an abort: the
 * leg's TCP connection is reset (carryAbortsOverTcp), and the relay resets
 * the other leg in turn. A leg the relay reset or closed before its end
 * surfaces here as ConnectionLost, one turn of the event loop later: a write
 * that fails at once can fail in the very turn the peer TLS handshake over
 * this stream completes (its last handshake record), and the error would
 * then reach the TLS socket before whoever awaits the handshake has attached
 * its handlers (an unhandled 'error' ends the process).
 */
export class RelayLegStream extends Duplex {
  readonly #leg: tls.TLSSocket;

  /** `leg` must carry aborts over its TCP connection (carryAbortsOverTcp; openRelayLeg does it). */
  constructor(leg: tls.TLSSocket) {
    super({ allowHalfOpen: true });
    this.#leg = leg;
    leg.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) leg.pause();
    });
    let ended = false;
    leg.once('end', () => {
      ended = true;
      this.push(null);
    });
    leg.once('error', (err: NodeJS.ErrnoException) => {
      this.#lose(vertexError('ConnectionLost', `relay leg: ${err.code ?? err.message}`, err));
    });
    // After a clean end the bytes already pushed must still be read: only a leg
    // that closed without ending cuts the stream off.
    leg.once('close', () => {
      if (!ended) this.#lose(vertexError('ConnectionLost', 'relay leg closed before it ended'));
    });
  }

  /** Destroys the stream with `err` on the next turn (see the class comment). */
  #lose(err: Error): void {
    setImmediate(() => {
      if (!this.destroyed) this.destroy(err);
    });
  }

  override _read(): void {
    this.#leg.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.#leg.write(chunk, (err) => {
      // The leg's own 'error' follows and destroys the stream, a turn later.
      if (err) setImmediate(() => callback(vertexError('ConnectionLost', `relay leg: ${(err as NodeJS.ErrnoException).code ?? err.message}`, err)));
      else callback();
    });
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.#leg.end(callback);
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    const leg = this.#leg;
    if (err || !this.writableFinished || leg.destroyed) {
      // An abort (the leg is unfinished too, so it resets), or a leg already gone.
      leg.destroy();
    } else {
      // A clean close: finish writing, keep reading until the far side ends too, and
      // let the socket close by itself. Closing with unread bytes would send a TCP RST,
      // which makes the far side's kernel throw away what it has not yet read.
      leg.removeAllListeners('data');
      leg.on('data', () => undefined);
      leg.resume();
      setTimeout(() => leg.destroy(), LEG_FLUSH_LINGER_MS).unref();
    }
    callback(err);
  }
}

/**
 * TLS to the relay (connectTls: TLS 1.3, SNI for the domain, the identity's
 * shared context, the chain checked afterwards against the pinned CA) over a
 * TCP connection of our own, so that an abort can reset it.
 */
function connectLeg(endpoint: ServerEndpoint, domain: string, identity: Identity, timeoutMs: number): Promise<tls.TLSSocket> {
  // A relay leg carries one direction after the other has ended (half-close): the TCP socket
  // stays open when one direction ends, as the TLS socket over it does.
  const tcp = net.connect({ host: endpoint.host, port: endpoint.port, allowHalfOpen: true });
  return connectTls(endpoint, domain, identity, timeoutMs, {
    alpn: ALPN_RELAY,
    tcp,
    what: `relay via ${domain} server at ${endpoint.host}:${endpoint.port}`,
  }).then((leg) => {
    carryAbortsOverTcp(leg, tcp);
    return leg;
  });
}

export async function openRelayLeg(opts: {
  domain: string;
  token: string;
  identity: Identity;
  resolve: ServerResolver;
  trust: CaTrust;
  timeoutMs?: number;
}): Promise<RelayLegStream> {
  const endpoints = await opts.resolve(opts.domain);
  if (endpoints.length === 0) throw vertexError('ServerUnavailable', `relay: no server address for ${opts.domain}`);
  const timeoutMs = opts.timeoutMs ?? RELAY_PAIRING_TIMEOUT_MS;
  // A domain served by several nodes lists them all: any node pairs the legs (server/node-mesh.ts), so one that is down is skipped.
  let leg: tls.TLSSocket | null = null;
  let lastError: unknown;
  for (const endpoint of endpoints) {
    try {
      leg = await connectLeg(endpoint, opts.domain, opts.identity, timeoutMs);
      break;
    } catch (err) {
      lastError = err;
    }
  }
  if (!leg) throw lastError;
  try {
    opts.trust.pinDomainCa(opts.domain, checkServerCa(opts.domain, leg.getPeerX509Certificate()));
    writePreamble(leg, { token: opts.token });
    const answer = await readPreamble(leg, `relay via ${opts.domain}`, timeoutMs);
    const refused = preambleError(answer);
    if (refused) throw vertexError(isErrorCode(refused.code) ? refused.code : 'Internal', refused.description);
    return new RelayLegStream(leg);
  } catch (err) {
    leg.destroy();
    throw err;
  }
}
