/**
 * Splices two plain TCP connections that carry the peers' TLS (relay legs,
 * and a leg carried on to another node): bytes both ways with back-pressure,
 * each half-close passed on as a half-close, and an abort passed on as an
 * abort (q2q/transport/tcp-close.ts is the policy). No TLS here: the server
 * copies ciphertext it cannot read.
 */
import type * as net from 'node:net';
import type { Transform } from 'node:stream';
import { abortTcp, endedByReset } from '../q2q/transport/tcp-close';

/** How long a connection may keep flushing after its partner closed cleanly. */
export const SPLICE_LINGER_MS = 10_000;

export interface SpliceOptions {
  /** Each direction may pass through a Transform (the relay's per-user rate limit). */
  aToB?: Transform;
  bToA?: Transform;
  /** Called once, when both have closed. */
  onClosed?: () => void;
}

export function splice(a: net.Socket, b: net.Socket, opts: SpliceOptions = {}): void {
  let open = 2;
  const pass = (from: net.Socket, to: net.Socket, through: Transform | undefined): void => {
    const source = through ? from.pipe(through) : from;
    source.pipe(to, { end: false });
    // A clean end ends the other side (half-close) once every byte before it was written;
    // an end that was really a reset (libuv, see tcp-close.ts) aborts it.
    source.once('end', () => {
      void endedByReset(from).then((reset) => {
        if (to.destroyed) return;
        if (reset) abortTcp(to);
        else to.end();
      });
    });
  };
  // A connection that closed before its end (its peer reset it, or it broke) aborts the
  // other at once, so that its peer sees the abort rather than a clean end. One that
  // closed after its end closed cleanly: the other may still be flushing what it was
  // given, and is destroyed only if it does not close by itself within SPLICE_LINGER_MS.
  const onClose = (closed: net.Socket, other: net.Socket) => () => {
    open -= 1;
    if (open === 0) {
      opts.onClosed?.();
      return;
    }
    if (other.destroyed) return;
    if (!closed.readableEnded) abortTcp(other);
    else setTimeout(() => other.destroy(), SPLICE_LINGER_MS).unref();
  };
  a.once('close', onClose(a, b));
  b.once('close', onClose(b, a));
  a.on('error', () => undefined);
  b.on('error', () => undefined);
  pass(a, b, opts.aToB);
  pass(b, a, opts.bToA);
}
