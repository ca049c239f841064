/**
 * The transport compliance suite: what every byte stream Vertex hands to a
 * program must do, whatever carries the bytes (STYLE.md; the idea of libp2p's
 * interface-compliance-tests). A transport plugs in a factory yielding a
 * connected pair of Duplex streams, and `transportSuite()` registers the same
 * cases for it: tcp, ptcp and relay Q2Q routes, raw PTCP, and the in-memory
 * pair below.
 *
 * Cases assert behaviour, never timings. Every wait is raced against a
 * generous hang bound, so a transport that stalls fails with a message naming
 * what never happened instead of through jest's timeout. The cases are
 * exported as data (COMPLIANCE_CASES) so that a test can run each one against
 * a deliberately broken pair and see it fail.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Duplex } from 'node:stream';
import { untilTrue } from '../../helpers/net';

export interface StreamPair {
  /** One end; the caller where the transport has one. */
  a: Duplex;
  /** The other end; the listener's stream. */
  b: Duplex;
  /** Releases what the pair holds. The suite destroys both streams first. */
  teardown(): Promise<void>;
}

export type MakePair = () => Promise<StreamPair>;

export interface SuiteOptions {
  /** How long any one awaited event (a transfer, an end, a close) may take before the case fails as a hang. */
  hangMs?: number;
}

export interface ComplianceCase {
  /** Short and stable, for tests that refer to one case. */
  id: string;
  name: string;
  run(makePair: MakePair, opts?: SuiteOptions): Promise<void>;
}

/** Generous: 10 MB each way through the relay on 2 loaded cores takes seconds, not a minute. */
export const DEFAULT_HANG_MS = 60_000;

const KB = 1024;
const MB = 1024 * 1024;

export function transportSuite(name: string, makePair: MakePair, opts: SuiteOptions = {}): void {
  const hangMs = opts.hangMs ?? DEFAULT_HANG_MS;
  describe(`transport compliance: ${name}`, () => {
    for (const c of COMPLIANCE_CASES) {
      // A case awaits a few bounded steps in sequence; the jest timeout is only a backstop.
      it(c.name, () => c.run(makePair, { hangMs }), 3 * hangMs);
    }
  });
}

// ---- the cases ----

/** What the survivor of an abrupt destroy is doing. */
const SURVIVOR_ACTIVITIES: ReadonlyArray<'reading' | 'writing'> = ['reading', 'writing'];

export const COMPLIANCE_CASES: readonly ComplianceCase[] = [
  {
    id: 'echo',
    name: 'echoes a small message round trip, then both ends close cleanly',
    run: (makePair, opts) => withPair(makePair, opts, async ({ a, b }, bound) => {
      // b checks what it got too: a fault that undoes itself on the way back must still fail.
      const atB: Buffer[] = [];
      b.on('data', (chunk: Buffer) => {
        atB.push(chunk);
        b.write(chunk);
      });
      b.once('end', () => b.end());
      const message = Buffer.concat([Buffer.from('ping '), randomBytes(59)]);
      a.write(message);
      expectSameBytes(await bound(readExactly(a, message.length), 'the echo of a 64-byte message'), message);
      expectSameBytes(Buffer.concat(atB), message);
      a.end();
      const [rest] = await bound(Promise.all([readToEnd(a), finished(a)]), "a's end after it ended its side");
      expect(rest.length).toBe(0);
      await bound(Promise.all([closed(a), closed(b)]), 'both ends closing after a clean end both ways');
      expect({ a: a.errored, b: b.errored }).toEqual({ a: null, b: null });
    }),
  },
  {
    id: 'bulk',
    name: '10 MB each way at once, SHA-256 byte-exact',
    run: (makePair, opts) => withPair(makePair, opts, async ({ a, b }, bound) => {
      const up = randomBytes(10 * MB);
      const down = randomBytes(10 * MB);
      const [atB, atA] = await bound(Promise.all([readToEnd(b), readToEnd(a), pump(a, up), pump(b, down)]), '10 MB each way');
      expectSameBytes(atB, up);
      expectSameBytes(atA, down);
    }),
  },
  {
    id: 'half-close',
    name: 'half-close: a ends its side and still receives what b sends afterwards; both see end',
    run: (makePair, opts) => withPair(makePair, opts, async ({ a, b }, bound) => {
      const fromA = randomBytes(64 * KB);
      const fromB = randomBytes(512 * KB);
      a.end(fromA);
      const atA = readToEnd(a);
      atA.catch(() => undefined);
      // b writes only once it has seen a's end: every byte a receives travels after a's FIN.
      const atB = await bound(readToEnd(b), "b reading a's bytes to their end");
      expectSameBytes(atB, fromA);
      expect({ 'a open after its end reached b': !a.destroyed }).toEqual({ 'a open after its end reached b': true });
      await bound(pump(b, fromB), 'b writing after a ended');
      expectSameBytes(await bound(atA, "a reading b's bytes to their end"), fromB);
      await bound(Promise.all([closed(a), closed(b)]), 'both ends closing after a clean end both ways');
      expect({ a: a.errored, b: b.errored }).toEqual({ a: null, b: null });
    }),
  },
  {
    id: 'slow-readers',
    name: 'slow readers: nothing read while 3 MB is written each way until both writers are held or done, then every byte arrives',
    run: (makePair, opts) => withPair(makePair, opts, async ({ a, b }, bound) => {
      const up = randomBytes(3 * MB);
      const down = randomBytes(3 * MB);
      // a has no reader at all during the pause; b reads 64 KB, then pauses its flowing stream.
      const written = { a: false, b: false };
      const writes = Promise.all([pump(a, up).then(() => { written.a = true; }), pump(b, down).then(() => { written.b = true; })]);
      let resume!: () => void;
      const resumed = new Promise<void>((resolve) => (resume = resolve));
      const atB = readToEnd(b, { pauseAfterBytes: 64 * KB, resumeWhen: resumed });
      writes.catch(() => undefined);
      atB.catch(() => undefined);
      // The pause lasts until each writer has done all it can with nobody reading: it is held by
      // back-pressure, or the transport's buffers took everything (a state, not a time).
      await untilTrue('both writers held by back-pressure or done', () => (a.writableNeedDrain || written.a) && (b.writableNeedDrain || written.b), opts?.hangMs ?? DEFAULT_HANG_MS);
      resume();
      const [atA, atBDone] = await bound(Promise.all([readToEnd(a), atB, writes]), 'the slow readers draining 3 MB each way');
      expectSameBytes(atA, down);
      expectSameBytes(atBDone, up);
    }),
  },
  ...(['a', 'b'] as const).flatMap((destroyer) => SURVIVOR_ACTIVITIES.map((activity): ComplianceCase => {
    const survivor = destroyer === 'a' ? 'b' : 'a';
    return {
      id: `destroy-${destroyer}-while-${survivor}-${activity}`,
      name: `an abrupt destroy of ${destroyer} is seen by ${survivor} as close (with or without error) while ${survivor} is ${activity}`,
      run: (makePair, opts) => withPair(makePair, opts, async (pair, bound) => {
        const gone = pair[destroyer];
        const left = pair[survivor];
        const leftClosed = closed(left);
        // What the survivor saw instead, for the report when it never closes.
        const seen: string[] = [];
        left.once('end', () => seen.push("'end'"));
        left.once('error', (err: Error & { code?: string }) => seen.push(`'error' ${err.code ?? err.message}`));
        // Traffic first, so the destroy hits an established stream in use.
        const sender = activity === 'reading' ? gone : left;
        const receiver = activity === 'reading' ? left : gone;
        let received = 0;
        const flowing = new Promise<void>((resolve) => receiver.on('data', (chunk: Buffer) => {
          received += chunk.length;
          if (received >= 64 * KB) resolve();
        }));
        const sending = activity === 'reading' ? pump(gone, randomBytes(64 * KB), { end: false }) : writeUntilClosed(left);
        sending.catch(() => undefined);
        await bound(flowing, `the first 64 KB from ${sender === gone ? destroyer : survivor}`);
        gone.destroy();
        await bound(leftClosed, `${survivor} closing after ${destroyer} was destroyed`).catch((err: Error) => {
          throw new Error(`${err.message}; ${survivor} saw ${seen.join(', ') || 'nothing'}`);
        });
      }),
    };
  })),
  // The case the one above misses: a destroy while the data is still flowing. Over
  // TCP the reset then lands on unread bytes, which libuv reports as a plain end.
  ...(['a', 'b'] as const).map((destroyer): ComplianceCase => {
    const survivor = destroyer === 'a' ? 'b' : 'a';
    return {
      id: `abort-${destroyer}-mid-transfer`,
      name: `${destroyer} destroyed while still sending is seen by ${survivor} as an abort: a close, never a clean end`,
      run: (makePair, opts) => withPair(makePair, opts, async (pair, bound) => {
        const gone = pair[destroyer];
        const left = pair[survivor];
        const leftClosed = closed(left);
        const seen: string[] = [];
        left.once('error', (err: Error & { code?: string }) => seen.push(`'error' ${err.code ?? err.message}`));
        // A clean end of a transfer that was cut off makes it look complete.
        const endedCleanly = new Promise<never>((_, reject) => left.once('end', () => {
          reject(new Error(`${survivor} saw a clean end ('end') of a transfer ${destroyer} aborted`));
        }));
        endedCleanly.catch(() => undefined);
        let received = 0;
        const flowing = new Promise<void>((resolve) => left.on('data', (chunk: Buffer) => {
          received += chunk.length;
          if (received >= MB) resolve();
        }));
        const sending = writeUntilClosed(gone);
        sending.catch(() => undefined);
        await bound(flowing, `the first MB from ${destroyer}`);
        gone.destroy();
        await bound(Promise.race([leftClosed, endedCleanly]), `${survivor} closing after ${destroyer} was destroyed`).catch((err: Error) => {
          throw new Error(`${err.message}; ${survivor} saw ${seen.join(', ') || 'no error'}`);
        });
      }),
    };
  }),
  {
    id: 'many-pairs',
    name: '20 pairs at once, 256 KB each way on each, byte-exact and not crossed',
    run: async (makePair, opts) => {
      const hangMs = opts?.hangMs ?? DEFAULT_HANG_MS;
      const made = await Promise.allSettled(Array.from({ length: 20 }, () => makePairWithin(makePair, hangMs)));
      const pairs = made.flatMap((m) => (m.status === 'fulfilled' ? [m.value] : []));
      try {
        const failed = made.find((m): m is PromiseRejectedResult => m.status === 'rejected');
        if (failed) throw failed.reason;
        for (const p of pairs) absorbErrors(p);
        const results = await within(Promise.all(pairs.map(async ({ a, b }) => {
          const up = randomBytes(256 * KB);
          const down = randomBytes(256 * KB);
          const [atB, atA] = await Promise.all([readToEnd(b), readToEnd(a), pump(a, up), pump(b, down)]);
          return { up: sameBytes(atB, up), down: sameBytes(atA, down) };
        })), hangMs, '20 pairs moving 256 KB each way');
        expect(results).toEqual(pairs.map(() => ({ up: true, down: true })));
      } finally {
        await Promise.all(pairs.map((p) => release(p)));
      }
    },
  },
  {
    id: 'odd-sizes',
    name: 'writes of odd sizes (1, 1199, 1201, 65537, ...) arrive in order, byte-exact, both ways',
    run: (makePair, opts) => withPair(makePair, opts, async ({ a, b }, bound) => {
      // Around a 1200-byte datagram payload, a 16 KiB TLS record, and 16-bit lengths.
      const SIZES = [1, 1199, 1201, 65537, 1, 1200, 16383, 16384, 16385, 65535, 65536, 2, 1];
      const [atB, atA, up, down] = await bound(Promise.all([readToEnd(b), readToEnd(a), writeSizes(a, SIZES), writeSizes(b, SIZES)]), 'odd-sized writes each way');
      expectSameBytes(atB, up);
      expectSameBytes(atA, down);
    }),
  },
];

// ---- running a case on a pair ----

type Bound = <T>(promise: Promise<T>, what: string) => Promise<T>;

async function withPair(makePair: MakePair, opts: SuiteOptions | undefined, body: (pair: StreamPair, bound: Bound) => Promise<void>): Promise<void> {
  const hangMs = opts?.hangMs ?? DEFAULT_HANG_MS;
  const pair = await makePairWithin(makePair, hangMs);
  absorbErrors(pair);
  try {
    await body(pair, (promise, what) => within(promise, hangMs, what));
  } finally {
    await release(pair);
  }
}

/** A pair that arrives after the hang bound fired is released, not leaked. */
function makePairWithin(makePair: MakePair, hangMs: number): Promise<StreamPair> {
  const making = makePair();
  return within(making, hangMs, 'making a pair').catch((err: unknown) => {
    making.then(release, () => undefined);
    throw err;
  });
}

/** Errors are observed through `errored` and rejected reads; an unheard 'error' must not crash jest. */
function absorbErrors(pair: StreamPair): void {
  pair.a.on('error', () => undefined);
  pair.b.on('error', () => undefined);
}

async function release(pair: StreamPair): Promise<void> {
  pair.a.destroy();
  pair.b.destroy();
  await pair.teardown();
}

export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`hang: ${what} did not happen within ${ms} ms`)), ms);
  });
  return Promise.race([promise, hang]).finally(() => clearTimeout(timer));
}

// ---- reading and writing ----

/** Reads until 'end'. Rejects on an error or on a close that came without an end. */
function readToEnd(stream: Duplex, slow?: { pauseAfterBytes: number; resumeWhen: Promise<void> }): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let bytes = 0;
    let paused = false;
    stream.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      bytes += chunk.length;
      if (slow && !paused && bytes >= slow.pauseAfterBytes) {
        paused = true;
        stream.pause();
        void slow.resumeWhen.then(() => stream.resume());
      }
    });
    stream.once('end', () => resolve(Buffer.concat(chunks)));
    stream.once('error', reject);
    stream.once('close', () => {
      if (!stream.readableEnded) reject(new Error(`the stream closed without an end after ${bytes} bytes`));
    });
    // A 'data' listener does not restart a stream that was paused explicitly.
    if (!slow || slow.pauseAfterBytes > 0) stream.resume();
  });
}

/** Reads exactly `length` bytes (more is a failure), leaving the stream paused. */
function readExactly(stream: Duplex, length: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let bytes = 0;
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      bytes += chunk.length;
      if (bytes < length) return;
      done();
      if (bytes > length) reject(new Error(`expected ${length} bytes, got ${bytes}`));
      else resolve(Buffer.concat(chunks));
    };
    const onEnd = (): void => {
      done();
      reject(new Error(`the stream ended after ${bytes} of ${length} bytes`));
    };
    const onError = (err: Error): void => {
      done();
      reject(err);
    };
    const done = (): void => {
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('error', onError);
      stream.pause();
    };
    stream.on('data', onData);
    stream.once('end', onEnd);
    stream.once('error', onError);
  });
}

/** Writes `data` in `chunk`-sized pieces honouring back-pressure; ends the stream unless told not to. */
function pump(stream: Duplex, data: Buffer, opts: { chunk?: number; end?: boolean } = {}): Promise<void> {
  const chunk = opts.chunk ?? 64 * KB;
  return new Promise((resolve, reject) => {
    let offset = 0;
    const fail = (err: Error): void => reject(err);
    const onClose = (): void => reject(new Error(`the stream closed after ${offset} of ${data.length} bytes were written`));
    stream.once('error', fail);
    stream.once('close', onClose);
    const settle = (): void => {
      stream.off('error', fail);
      stream.off('close', onClose);
      resolve();
    };
    const write = (): void => {
      while (offset < data.length) {
        const piece = data.subarray(offset, offset + chunk);
        offset += piece.length;
        if (!stream.write(piece)) {
          stream.once('drain', write);
          return;
        }
      }
      if (opts.end === false) settle();
      else stream.end(settle);
    };
    write();
  });
}

/** Writes 1 MB pieces until the stream closes (bounded at 4 GB: a hang bound fires long before). */
async function writeUntilClosed(stream: Duplex): Promise<void> {
  const piece = randomBytes(MB);
  for (let written = 0; written < 4096 * MB && !stream.destroyed; written += piece.length) {
    if (!stream.write(piece)) await new Promise<void>((resolve) => {
      const done = (): void => {
        stream.off('drain', done);
        stream.off('close', done);
        resolve();
      };
      stream.once('drain', done);
      stream.once('close', done);
    });
  }
}

/**
 * Writes fresh random pieces of the given sizes twice: first all in one
 * event-loop turn (where a transport may coalesce them), then one per turn
 * (where each may become its own segment or record). Ends the stream and
 * resolves with everything written.
 */
async function writeSizes(stream: Duplex, sizes: readonly number[]): Promise<Buffer> {
  const burst = sizes.map((n) => randomBytes(n));
  for (const piece of burst) stream.write(piece);
  const spaced = sizes.map((n) => randomBytes(n));
  for (const piece of spaced) {
    await new Promise((resolve) => setImmediate(resolve));
    stream.write(piece);
  }
  await new Promise<void>((resolve, reject) => {
    stream.once('error', reject);
    stream.end(() => resolve());
  });
  return Buffer.concat([...burst, ...spaced]);
}

function finished(stream: Duplex): Promise<void> {
  return new Promise((resolve, reject) => {
    if (stream.writableFinished) return resolve();
    stream.once('finish', () => resolve());
    stream.once('error', reject);
  });
}

function closed(stream: Duplex): Promise<void> {
  return new Promise((resolve) => (stream.closed ? resolve() : stream.once('close', () => resolve())));
}

// ---- comparing bytes ----

const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

function firstDifference(got: Buffer, want: Buffer): number {
  const n = Math.min(got.length, want.length);
  for (let i = 0; i < n; i++) if (got[i] !== want[i]) return i;
  return got.length === want.length ? -1 : n;
}

function sameBytes(got: Buffer, want: Buffer): boolean {
  return got.length === want.length && got.equals(want);
}

/** Compares length, first differing offset and SHA-256, so a failure says where the bytes went wrong. */
function expectSameBytes(got: Buffer, want: Buffer): void {
  expect({ bytes: got.length, firstDifference: firstDifference(got, want), sha256: sha256(got) })
    .toEqual({ bytes: want.length, firstDifference: -1, sha256: sha256(want) });
}

// ---- the in-memory reference pair ----

/**
 * Faults for showing that each case can fail: a pair with one of these set is
 * a broken transport. A correct pair sets none.
 */
export interface MemoryFaults {
  /** Changes the bytes in flight; `offset` counts bytes already sent that way. */
  tamper?: (chunk: Buffer, offset: number) => Buffer;
  /** Ending one direction also ends the other (no half-close). */
  endEndsBoth?: boolean;
  /** No back-pressure: writes never wait, and a reader with this many bytes unread loses what arrives next. */
  overflowAt?: number;
  /** A destroy is not seen by the other end (node 20's stream.duplexPair behaves so). */
  destroyStaysLocal?: boolean;
  /** A destroy reaches the other end as a clean end (the tcp and relay routes did so). */
  destroyEndsPeer?: boolean;
}

/**
 * Two Duplex ends joined in memory: back-pressure (a write completes once the
 * other end's reader has room), half-close, and a destroy that resets the
 * other end unless both directions had ended cleanly. stream.duplexPair exists
 * in node 20.20 but does not pass a destroy across, so the destroy case would
 * hang on it.
 */
export function memoryPair(faults: MemoryFaults = {}): StreamPair {
  const a = new MemoryEnd(faults);
  const b = new MemoryEnd(faults);
  a.peer = b;
  b.peer = a;
  return { a, b, teardown: async () => undefined };
}

class MemoryEnd extends Duplex {
  peer!: MemoryEnd;
  readonly #faults: MemoryFaults;
  #sent = 0;
  /** The other end's write callback, held until this end's reader wants more. */
  #heldWrite: ((err?: Error | null) => void) | null = null;

  constructor(faults: MemoryFaults) {
    super({ allowHalfOpen: true });
    this.#faults = faults;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    const peer = this.peer;
    if (peer.destroyed) return callback(connectionReset());
    const data = this.#faults.tamper ? this.#faults.tamper(chunk, this.#sent) : chunk;
    this.#sent += chunk.length;
    if (this.#faults.overflowAt !== undefined) {
      if (peer.readableLength < this.#faults.overflowAt) peer.push(data);
      return callback();
    }
    if (data.length === 0 || peer.push(data)) callback();
    else peer.#heldWrite = callback;
  }

  override _read(): void {
    const held = this.#heldWrite;
    this.#heldWrite = null;
    held?.();
  }

  override _final(callback: (err?: Error | null) => void): void {
    if (!this.peer.destroyed) {
      this.peer.push(null);
      if (this.#faults.endEndsBoth) this.peer.end();
    }
    callback();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    const held = this.#heldWrite;
    this.#heldWrite = null;
    held?.(connectionReset());
    const clean = this.writableFinished && this.readableEnded;
    const peer = this.peer;
    if (clean || this.#faults.destroyStaysLocal || peer.destroyed) return callback(err);
    if (this.#faults.destroyEndsPeer) process.nextTick(() => peer.push(null));
    else process.nextTick(() => peer.destroy(connectionReset()));
    callback(err);
  }
}

function connectionReset(): Error {
  return Object.assign(new Error('memory pair: the other end was destroyed'), { code: 'ECONNRESET' });
}
