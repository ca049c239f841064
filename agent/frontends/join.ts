/**
 * Joins two byte streams into one tunnel, with back-pressure both ways and
 * half-close kept: an end from one side becomes an end on the other, so a
 * client that shuts down its sending side first (ssh, `ncat --send-only`,
 * `vertex connect < file`) still gets the rest of the answer. An error or an
 * abrupt close on either side tears both down: a peer that vanished must
 * not leave the other side waiting forever.
 *
 * Sockets handed in must be created with `allowHalfOpen: true`; otherwise
 * Node ends their writing side by itself when their reading side ends.
 */
import type { Duplex } from 'node:stream';
import { asVertexError, vertexError } from '../../q2q/errors';
import { silentLogger, type Logger } from '../../q2q/util/log';

export interface JoinOptions {
  /** Bytes that arrived on `a` before the join, written to `b` first. */
  head?: Buffer;
  log?: Logger;
  /**
   * Destroy the surviving side with the failed side's error (or a
   * ConnectionLost naming what happened), so a side that can carry a reason
   * (a FramedTunnel sends it as ABORT) tells its other end why.
   */
  propagate?: boolean;
}

/** Resolves once both streams have closed, for whatever reason. */
export function joinStreams(a: Duplex, b: Duplex, opts: JoinOptions = {}): Promise<void> {
  const log = opts.log ?? silentLogger;
  let torn = false;
  const teardown = (why: string, err?: Error, from?: Duplex): void => {
    if (torn) return;
    torn = true;
    log.debug({ err: err?.message }, `tunnel ${why}`);
    const reason = opts.propagate ? asVertexError(err ?? vertexError('ConnectionLost', why), 'ConnectionLost') : undefined;
    for (const s of [a, b]) s.destroy(s === from ? undefined : reason);
  };
  const closed = (s: Duplex): Promise<void> =>
    new Promise((resolve) => {
      if (s.destroyed && s.closed) return resolve();
      s.once('close', () => resolve());
    });
  const done = Promise.all([closed(a), closed(b)]).then(() => undefined);
  a.on('error', (err) => teardown('error on the near side', err, a));
  b.on('error', (err) => teardown('error on the far side', err, b));
  // A side that closes before its end was read was cut off, not finished.
  a.on('close', () => {
    if (!a.readableEnded) teardown('near side closed before it finished', undefined, a);
  });
  b.on('close', () => {
    if (!b.readableEnded) teardown('far side closed before it finished', undefined, b);
  });
  // When both directions have ended, release the sockets even if the other
  // side never closes on its own (a TLS stream waits for a close from below).
  let ends = 0;
  const ended = (): void => {
    ends += 1;
    if (ends === 2) {
      for (const s of [a, b]) {
        if (s.writableFinished) s.destroy();
        else s.once('finish', () => s.destroy());
      }
    }
  };
  a.once('end', ended);
  b.once('end', ended);
  if (opts.head && opts.head.length > 0) b.write(opts.head);
  a.pipe(b);
  b.pipe(a);
  return done;
}
