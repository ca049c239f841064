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
import { silentLogger, type Logger } from '../../q2q/util/log';

export interface JoinOptions {
  /** Bytes that arrived on `a` before the join, written to `b` first. */
  head?: Buffer;
  log?: Logger;
}

/** Resolves once both streams have closed, for whatever reason. */
export function joinStreams(a: Duplex, b: Duplex, opts: JoinOptions = {}): Promise<void> {
  const log = opts.log ?? silentLogger;
  let torn = false;
  const teardown = (why: string, err?: Error): void => {
    if (torn) return;
    torn = true;
    log.debug({ err: err?.message }, `tunnel ${why}`);
    a.destroy();
    b.destroy();
  };
  const closed = (s: Duplex): Promise<void> =>
    new Promise((resolve) => {
      if (s.destroyed && s.closed) return resolve();
      s.once('close', () => resolve());
    });
  const done = Promise.all([closed(a), closed(b)]).then(() => undefined);
  a.on('error', (err) => teardown('error on the near side', err));
  b.on('error', (err) => teardown('error on the far side', err));
  // A side that closes before its end was read was cut off, not finished.
  a.on('close', () => {
    if (!a.readableEnded) teardown('near side closed');
  });
  b.on('close', () => {
    if (!b.readableEnded) teardown('far side closed');
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
