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
 *
 * The bytes are handed across directly ('data' -> write, pause() when the
 * other side's buffer is full, resume() on its 'drain'), not through
 * Readable.pipe(): a tunnel is made for every SOCKS connection and every
 * inbound stream, and pipe() costs two sets of about ten listeners, a
 * nextTick to start flowing and an unpipe dance at the end, per direction
 * (bench/README.md, "new-connection cost"). The behaviour is pipe()'s.
 *
 * Writes into a socket are gathered for the rest of the event-loop turn
 * (cork, then uncork in setImmediate): a tunnel's bytes arrive as one 16 KiB
 * chunk per TLS record, several per read, and one write per chunk cost a
 * syscall and a wake-up of the reader each. Gathered, they leave as one
 * writev (bench/README.md, "Bulk: one write per turn").
 */
import { Socket } from 'node:net';
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
  /**
   * An error on `b` (an early Q2Q stream refused after the fact, or aborted later)
   * resets `a`, a TCP socket, instead of closing it: its client must not take the
   * end for a complete (empty) answer.
   */
  resetAOnError?: boolean;
}

/**
 * How much a flow gathers in one turn before it pauses its source. The socket's own 16 KiB
 * high-water mark would stop the gathering at the first chunk; one read of the tunnel's
 * TLS socket gives up to 64 KiB, as four records.
 */
const GATHER_BYTES = 64 * 1024;

/** Gathering writes per turn unless VERTEX_GATHER_WRITES=0 (for A/B measurement: bench/README.md). */
const gatherWrites = process.env.VERTEX_GATHER_WRITES !== '0';

/** One direction: from `src` into `dst`. */
class Flow {
  readonly #src: Duplex;
  readonly #dst: Duplex;
  readonly #join: Join;
  /** `dst` is a socket: its writes are gathered per turn (see the top of the file). */
  readonly #gather: boolean;
  #corked = false;
  #waitingForDrain = false;

  constructor(join: Join, src: Duplex, dst: Duplex) {
    this.#join = join;
    this.#src = src;
    this.#dst = dst;
    this.#gather = gatherWrites && dst instanceof Socket;
    src.on('data', this.#onData);
    // A socket that read its end before the join (a local target that closed while the
    // ACCEPT waited for its first bytes, expose.ts) emitted 'end' to nobody: it ended.
    if (src.readableEnded) process.nextTick(this.#onEnd);
    else src.once('end', this.#onEnd);
  }

  readonly #onData = (chunk: Buffer): void => {
    const dst = this.#dst;
    if (this.#gather) {
      if (!this.#corked) {
        this.#corked = true;
        dst.cork();
        setImmediate(this.#uncork);
      }
      dst.write(chunk);
      if (dst.writableLength < GATHER_BYTES) return;
    } else if (dst.write(chunk)) {
      return;
    }
    this.#waitForDrain();
  };

  /** The turn's writes leave as one (end() uncorks by itself, and uncork on an ended socket does nothing). */
  readonly #uncork = (): void => {
    this.#corked = false;
    const dst = this.#dst;
    dst.uncork();
    // What the kernel did not take waits in the socket. Past the socket's high-water mark the
    // source waits for it, as without the gathering: a reader that does not read holds this
    // flow to about what it did before, not to a turn's worth per stream.
    if (dst.writableLength >= dst.writableHighWaterMark) this.#waitForDrain();
  };

  /** At or past the high-water mark a write() returned false, so 'drain' will come. */
  #waitForDrain(): void {
    if (this.#waitingForDrain) return;
    this.#waitingForDrain = true;
    this.#src.pause();
    this.#dst.once('drain', this.#onDrain);
  }

  readonly #onDrain = (): void => {
    this.#waitingForDrain = false;
    this.#src.resume();
  };

  readonly #onEnd = (): void => {
    this.#dst.end();
    this.#join.ended();
  };
}

/** The tunnel between `a` and `b`: error and close handling for both flows. */
class Join {
  readonly #a: Duplex;
  readonly #b: Duplex;
  readonly #log: Logger;
  readonly #propagate: boolean;
  readonly #resetAOnError: boolean;
  #torn = false;
  #ends = 0;

  constructor(a: Duplex, b: Duplex, opts: JoinOptions) {
    this.#a = a;
    this.#b = b;
    this.#log = opts.log ?? silentLogger;
    this.#propagate = opts.propagate === true;
    this.#resetAOnError = opts.resetAOnError === true;
    a.on('error', this.#onErrorA);
    b.on('error', this.#onErrorB);
    a.once('close', this.#onCloseA);
    b.once('close', this.#onCloseB);
    if (opts.head && opts.head.length > 0) b.write(opts.head);
    new Flow(this, a, b);
    new Flow(this, b, a);
    // A stream that was paused before the join (an inbound stream holding the peer's first
    // bytes) flows now; 'data' listeners start a stream only if nobody paused it.
    a.resume();
    b.resume();
  }

  /**
   * When both directions have ended, release the sockets even if the other
   * side never closes on its own (a TLS stream waits for a close from below).
   */
  ended(): void {
    this.#ends += 1;
    if (this.#ends !== 2) return;
    for (const s of [this.#a, this.#b]) {
      if (s.writableFinished) s.destroy();
      else s.once('finish', () => s.destroy());
    }
  }

  #teardown(why: string, err: Error | undefined, from: Duplex): void {
    if (this.#torn) return;
    this.#torn = true;
    this.#log.debug({ err: err?.message }, `tunnel ${why}`);
    const reason = this.#propagate ? asVertexError(err ?? vertexError('ConnectionLost', why), 'ConnectionLost') : undefined;
    for (const s of [this.#a, this.#b]) s.destroy(s === from ? undefined : reason);
  }

  readonly #onErrorA = (err: Error): void => this.#teardown('error on the near side', err, this.#a);
  readonly #onErrorB = (err: Error): void => {
    const a = this.#a;
    if (this.#resetAOnError && !this.#torn && a instanceof Socket && !a.destroyed) {
      this.#log.info({ err: err.message }, 'tunnel aborted on the far side: resetting the client');
      a.resetAndDestroy();
    }
    this.#teardown('error on the far side', err, this.#b);
  };
  // A side that closes before its end was read, or before what we wrote to it was
  // flushed, was cut off, not finished.
  readonly #onCloseA = (): void => {
    if (!this.#a.readableEnded || !this.#a.writableFinished) this.#teardown('near side closed before it finished', undefined, this.#a);
  };

  readonly #onCloseB = (): void => {
    if (!this.#b.readableEnded || !this.#b.writableFinished) this.#teardown('far side closed before it finished', undefined, this.#b);
  };
}

/** Joins `a` and `b` (see the top of the file); nothing to wait for. */
export function join(a: Duplex, b: Duplex, opts: JoinOptions = {}): void {
  new Join(a, b, opts);
}

/** Joins `a` and `b`; resolves once both streams have closed, for whatever reason. */
export function joinStreams(a: Duplex, b: Duplex, opts: JoinOptions = {}): Promise<void> {
  const closed = (s: Duplex): Promise<void> =>
    new Promise((resolve) => {
      if (s.destroyed && s.closed) return resolve();
      s.once('close', () => resolve());
    });
  const done = Promise.all([closed(a), closed(b)]).then(() => undefined);
  join(a, b, opts);
  return done;
}
