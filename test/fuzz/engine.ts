/**
 * A small mutation fuzzer for our decoders and protocol machines (issue 11).
 *
 * Each target turns one input (bytes) into a run of the code under test and
 * says which path it took (a "feature": the refusal's message with numbers
 * blanked, or the shape of what was decoded). The engine:
 *
 *  - starts from the target's seeds (golden vectors, typical messages) and
 *    mutates them: bit flips, interesting bytes and lengths, inserted, deleted
 *    and duplicated ranges, splices of two inputs; now and then it asks the
 *    target for a fresh structured input or feeds plain random bytes;
 *  - keeps an input in the corpus when it reached something new: a new
 *    feature, or (when the run is instrumented, `jest --coverage`) a branch
 *    of the target's source files that no input had taken before;
 *  - classifies every throw: a VertexError with one of the target's codes is
 *    a typed refusal; anything else (a plain Error, a TypeError, a wrong code,
 *    a broken invariant the target checks) is a failure, kept with its input
 *    (shrunk) and the seed that reproduces the run;
 *  - measures the heap (after a full GC) before and after.
 *
 * Deterministic for a given seed, except for targets that talk to a server.
 */
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { isVertexError, type ErrorCode } from '../../q2q/errors';

/** A broken invariant, thrown by a target: always a failure. */
export class FuzzPropertyError extends Error {
  override name = 'FuzzPropertyError';
}

export function invariant(ok: unknown, message: string): asserts ok {
  if (!ok) throw new FuzzPropertyError(message);
}

// ---------------------------------------------------------------- randomness

export interface Rng {
  /** A uint32. */
  u32(): number;
  /** An integer in [0, n). */
  int(n: number): number;
  chance(p: number): boolean;
  pick<T>(items: readonly T[]): T;
  bytes(n: number): Buffer;
}

/** mulberry32: small, fast, and enough to spread mutations. */
export function rngFrom(seed: number): Rng {
  let a = seed >>> 0;
  const u32 = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
  const int = (n: number) => (n <= 0 ? 0 : u32() % n);
  return {
    u32,
    int,
    chance: (p) => u32() / 4294967296 < p,
    pick: (items) => items[int(items.length)] as (typeof items)[number],
    bytes: (n) => {
      const out = Buffer.allocUnsafe(n);
      let i = 0;
      for (; i + 4 <= n; i += 4) out.writeUInt32LE(u32(), i);
      for (; i < n; i++) out[i] = u32() & 0xff;
      return out;
    },
  };
}

/** Reads an input front to back, for targets that treat their input as a program. */
export class ByteReader {
  #at = 0;
  constructor(readonly bytes: Buffer) {}

  get done(): boolean {
    return this.#at >= this.bytes.length;
  }

  u8(): number {
    return this.#at < this.bytes.length ? (this.bytes[this.#at++] as number) : 0;
  }

  u16(): number {
    return (this.u8() << 8) | this.u8();
  }

  u32(): number {
    return ((this.u16() << 16) | this.u16()) >>> 0;
  }

  take(n: number): Buffer {
    const out = this.bytes.subarray(this.#at, this.#at + n);
    this.#at += out.length;
    return out;
  }

  rest(): Buffer {
    return this.take(this.bytes.length - this.#at);
  }
}

// ---------------------------------------------------------------- targets

export interface FuzzTarget {
  name: string;
  /** Codes a refusal may carry. */
  codes: readonly ErrorCode[];
  seeds: () => Buffer[];
  /** Tokens worth splicing in (an AFL-style dictionary): keywords, separators, awkward UTF-8. */
  dictionary?: readonly Buffer[];
  /** A fresh, well-formed-ish input. */
  generate?: (rng: Rng) => Buffer;
  /** Runs one input; returns the path it took. Throws a typed refusal, or anything else on a bug. */
  run: (input: Buffer, rng: Rng) => string | Promise<string>;
  /** The largest input to try (default 4096 bytes). */
  maxInputBytes?: number;
  /** Inputs in flight at once (async targets: requests pipelined on a connection). */
  concurrency?: number;
  /** Source files whose branches guide the corpus when the run is instrumented. */
  sources?: readonly string[];
  setup?: () => Promise<void>;
  /** Counts the target keeps of its own (segments decoded, boxes, requests), reported as they are. */
  counters?: Record<string, number>;
  /** Checks that must hold after the whole run (server still up, sessions bounded). */
  after?: () => Promise<void>;
  teardown?: () => Promise<void>;
}

export interface FuzzFailure {
  error: string;
  /** The input, hex, shrunk as far as the budget allowed (at most 512 bytes shown). */
  input: string;
  inputBytes: number;
}

export interface FuzzReport {
  target: string;
  seed: number;
  inputs: number;
  accepted: number;
  refused: number;
  seconds: number;
  inputsPerSecond: number;
  /** CPU time this process used (user + system): on a shared machine, wall time says little. */
  cpuSeconds: number;
  inputsPerCpuSecond: number;
  corpus: number;
  features: number;
  /** Branches of `sources` taken, of how many, when instrumented (--coverage). */
  branches: number | null;
  branchesTotal: number | null;
  heapBeforeMB: number;
  heapAfterMB: number;
  counters: Record<string, number>;
  failures: FuzzFailure[];
}

export interface FuzzOptions {
  /** Run at least this long... */
  seconds: number;
  /** ...and at least this many inputs. */
  minInputs?: number;
  /** Run exactly this many inputs (fewer if it fails first), whatever the time: tests of the harness. */
  maxInputs?: number;
  seed?: number;
  /** Stop at this many distinct failures. */
  maxFailures?: number;
}

// ---------------------------------------------------------------- mutation

const INTERESTING_8 = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff];
const INTERESTING_16 = [0, 1, 2, 0xff, 0x100, 0x7fff, 0x8000, 0xfffe, 0xffff];
const INTERESTING_32 = [0, 1, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
/** Inputs are cut to this size unless the target says otherwise: most bugs need few bytes, and big inputs cost time. */
const DEFAULT_MAX_INPUT_BYTES = 4096;
const MAX_CORPUS = 2048;
const MAX_CORPUS_BYTES = 16 << 20;

/** Tokens every target gets: the UTF-8 byte-order mark, a bidi override, an overlong NUL, a lone surrogate. */
const COMMON_TOKENS = [Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('\u202e'), Buffer.from([0xc0, 0x80]), Buffer.from([0xed, 0xa0, 0x80])];

function mutateOnce(input: Buffer, rng: Rng, other: () => Buffer, dictionary: readonly Buffer[]): Buffer {
  const len = input.length;
  const at = (extra = 0) => rng.int(Math.max(1, len - extra));
  if (rng.chance(0.1)) {
    // A dictionary token, inserted or written over what is there.
    const token = rng.pick(dictionary);
    const i = rng.int(len + 1);
    return rng.chance(0.5)
      ? Buffer.concat([input.subarray(0, i), token, input.subarray(i)])
      : Buffer.concat([input.subarray(0, i), token, input.subarray(Math.min(len, i + token.length))]);
  }
  switch (rng.int(12)) {
    case 0: {
      if (len === 0) return rng.bytes(1 + rng.int(8));
      const out = Buffer.from(input);
      const i = at();
      out[i] = (out[i] as number) ^ (1 << rng.int(8));
      return out;
    }
    case 1: {
      if (len === 0) return Buffer.from([rng.pick(INTERESTING_8)]);
      const out = Buffer.from(input);
      out[at()] = rng.pick(INTERESTING_8);
      return out;
    }
    case 2: {
      if (len < 2) return Buffer.concat([input, rng.bytes(2)]);
      const out = Buffer.from(input);
      const i = at(1);
      const v = rng.chance(0.3) ? Math.max(0, Math.min(0xffff, out.readUInt16BE(i) + rng.int(5) - 2)) : rng.pick(INTERESTING_16);
      out.writeUInt16BE(v, i);
      return out;
    }
    case 3: {
      if (len < 4) return Buffer.concat([input, rng.bytes(4)]);
      const out = Buffer.from(input);
      out.writeUInt32BE(rng.pick(INTERESTING_32), at(3));
      return out;
    }
    case 4: {
      const i = rng.int(len + 1);
      return Buffer.concat([input.subarray(0, i), rng.bytes(1 + rng.int(16)), input.subarray(i)]);
    }
    case 5: {
      if (len === 0) return input;
      const i = at();
      const n = 1 + rng.int(Math.min(64, len - i));
      return Buffer.concat([input.subarray(0, i), input.subarray(i + n)]);
    }
    case 6: {
      if (len === 0) return input;
      const i = at();
      const n = 1 + rng.int(Math.min(256, len - i));
      const j = rng.int(len + 1);
      return Buffer.concat([input.subarray(0, j), input.subarray(i, i + n), input.subarray(j)]);
    }
    case 7: {
      const b = other();
      return Buffer.concat([input.subarray(0, rng.int(len + 1)), b.subarray(rng.int(b.length + 1))]);
    }
    case 8:
      return input.subarray(0, rng.int(len + 1));
    case 9:
      return Buffer.concat([input, rng.bytes(1 + rng.int(32))]);
    case 10: {
      const b = other();
      if (len === 0 || b.length === 0) return b;
      const out = Buffer.from(input);
      const n = Math.min(b.length, 1 + rng.int(32));
      b.copy(out, at(), rng.int(b.length - n + 1), n);
      return out;
    }
    default: {
      // Repeat a slice many times: lengths that add up to limits.
      if (len === 0) return input;
      const i = at();
      const n = 1 + rng.int(Math.min(16, len - i));
      const times = 1 + rng.int(64);
      return Buffer.concat([input.subarray(0, i), ...Array.from({ length: times }, () => input.subarray(i, i + n)), input.subarray(i)]);
    }
  }
}

/** A refusal's message as a feature: numbers, hex and quoted text blanked, so the set stays small. */
export function shape(message: string): string {
  return message
    .replace(/"(?:[^"\\]|\\.)*"/g, '"…"')
    .replace(/'[^']*'/g, "'…'")
    .replace(/0x[0-9a-f]+/gi, '0xN')
    .replace(/\b[0-9a-f]{8,}\b/gi, 'H')
    .replace(/-?\d+(\.\d+)?/g, 'N')
    .slice(0, 160);
}

// ---------------------------------------------------------------- coverage

type IstanbulFile = { path: string; b: Record<string, number[]>; s: Record<string, number> };

/** Branch counters of `sources` in an instrumented run (jest --coverage), else null. */
function coverageOf(sources: readonly string[] | undefined): Array<number[]> | null {
  const cov = (globalThis as { __coverage__?: Record<string, IstanbulFile> }).__coverage__;
  if (!cov || !sources || sources.length === 0) return null;
  const counters: Array<number[]> = [];
  for (const file of Object.values(cov)) {
    if (!sources.some((s) => file.path.endsWith(s))) continue;
    counters.push(...Object.values(file.b));
  }
  return counters.length > 0 ? counters : null;
}

class BranchTracker {
  readonly #counters: Array<number[]>;
  readonly #seen: Array<Uint8Array>;
  taken = 0;
  readonly total: number;

  constructor(counters: Array<number[]>) {
    this.#counters = counters;
    this.#seen = counters.map((c) => new Uint8Array(c.length));
    this.total = counters.reduce((n, c) => n + c.length, 0);
    this.changed();
  }

  /** True when some branch was taken for the first time since the last call. */
  changed(): boolean {
    let fresh = false;
    for (let i = 0; i < this.#counters.length; i++) {
      const c = this.#counters[i] as number[];
      const seen = this.#seen[i] as Uint8Array;
      for (let j = 0; j < c.length; j++) {
        if (seen[j] === 0 && (c[j] as number) > 0) {
          seen[j] = 1;
          this.taken++;
          fresh = true;
        }
      }
    }
    return fresh;
  }
}

// ---------------------------------------------------------------- memory

let gcFn: (() => void) | undefined;

/**
 * Memory in MB after full collections: the JS heap and the memory outside it
 * (Buffers live there). gc is exposed on the fly. V8 frees the memory of dead
 * Buffers on a background thread, so it collects until two readings agree.
 */
export async function settledHeapMB(): Promise<number> {
  if (!gcFn) {
    v8.setFlagsFromString('--expose-gc');
    gcFn = vm.runInNewContext('gc') as () => void;
  }
  const read = () => {
    const m = process.memoryUsage();
    return (m.heapUsed + m.external) / (1 << 20);
  };
  let last = Infinity;
  for (let i = 0; i < 20; i++) {
    gcFn();
    await new Promise((resolve) => setTimeout(resolve, 10));
    const now = read();
    if (Math.abs(now - last) < 0.5) return now;
    last = now;
  }
  return last;
}

// ---------------------------------------------------------------- the loop

type Outcome = { kind: 'accepted'; feature: string } | { kind: 'refused'; feature: string } | { kind: 'failed'; error: string };

function classify(target: FuzzTarget, err: unknown): Outcome {
  if (isVertexError(err) && target.codes.includes(err.code)) return { kind: 'refused', feature: `${err.code}: ${shape(err.message)}` };
  if (err instanceof FuzzPropertyError) return { kind: 'failed', error: `invariant: ${err.message}` };
  if (isVertexError(err)) return { kind: 'failed', error: `VertexError with code ${err.code} (allowed: ${target.codes.join(', ')}): ${err.message}` };
  const e = err as Error;
  return { kind: 'failed', error: `${e?.name ?? typeof err}: ${e?.message ?? String(err)}\n${(e?.stack ?? '').split('\n').slice(1, 6).join('\n')}` };
}

/**
 * Refusals are thrown errors, and capturing a stack for each is most of the cost of a
 * refused input; the loop runs without stacks and a failure is run again with them.
 */
const STACK_LIMIT = Error.stackTraceLimit;

async function runOne(target: FuzzTarget, input: Buffer, seed: number, stacks = false): Promise<Outcome> {
  Error.stackTraceLimit = stacks ? STACK_LIMIT : 0;
  try {
    const feature = await target.run(input, rngFrom(seed));
    return { kind: 'accepted', feature };
  } catch (err) {
    return classify(target, err);
  } finally {
    Error.stackTraceLimit = STACK_LIMIT;
  }
}

/** Cuts a failing input down while it still fails (the same first line), within a budget. */
async function shrink(target: FuzzTarget, input: Buffer, seed: number, error: string): Promise<Buffer> {
  const headline = error.split('\n')[0]?.replace(/-?\d+/g, 'N');
  const stillFails = async (candidate: Buffer) => {
    const out = await runOne(target, candidate, seed);
    return out.kind === 'failed' && out.error.split('\n')[0]?.replace(/-?\d+/g, 'N') === headline;
  };
  let best = input;
  let budget = 2000;
  for (let chunk = Math.max(1, best.length >> 1); chunk >= 1 && budget > 0; chunk >>= 1) {
    for (let i = 0; i + chunk <= best.length && budget > 0; budget--) {
      const candidate = Buffer.concat([best.subarray(0, i), best.subarray(i + chunk)]);
      if (await stillFails(candidate)) best = candidate;
      else i += chunk;
    }
  }
  return best;
}

export async function fuzz(target: FuzzTarget, opts: FuzzOptions): Promise<FuzzReport> {
  const seed = opts.seed ?? (Date.now() >>> 0);
  const rng = rngFrom(seed);
  const maxFailures = opts.maxFailures ?? 3;
  await target.setup?.();
  const failures: FuzzFailure[] = [];
  const failureHeads = new Set<string>();
  // Errors a target's async work throws outside of run() (a server's socket handler, a timer).
  const stray: unknown[] = [];
  const onStray = (err: unknown) => void stray.push(err);
  process.on('uncaughtException', onStray);
  process.on('unhandledRejection', onStray);
  let inputs = 0;
  let accepted = 0;
  let refused = 0;
  let corpusBytes = 0;
  let branches: BranchTracker | null = null;
  const features = new Set<string>();
  let corpus: Buffer[] = [];
  let heapBeforeMB = 0;
  const started = performance.now();
  const cpuStarted = process.cpuUsage();
  try {
    const MAX_INPUT_BYTES = target.maxInputBytes ?? DEFAULT_MAX_INPUT_BYTES;
    const dictionary = [...COMMON_TOKENS, ...(target.dictionary ?? [])];
    const seeds = target.seeds().filter((s) => s.length <= MAX_INPUT_BYTES);
    corpus = [...seeds];
    corpusBytes = corpus.reduce((n, b) => n + b.length, 0);
    const counters = coverageOf(target.sources);
    branches = counters ? new BranchTracker(counters) : null;
    heapBeforeMB = await settledHeapMB();
    const keep = (input: Buffer) => {
      if (input.length > MAX_INPUT_BYTES) return;
      if (corpus.length >= MAX_CORPUS || corpusBytes + input.length > MAX_CORPUS_BYTES) {
        // Seeds stay; evict a random later entry.
        const victim = seeds.length + rng.int(Math.max(1, corpus.length - seeds.length));
        if (victim < corpus.length) {
          corpusBytes -= (corpus[victim] as Buffer).length;
          corpus[victim] = input;
          corpusBytes += input.length;
        }
        return;
      }
      corpus.push(input);
      corpusBytes += input.length;
    };
    const nextInput = (): Buffer => {
      const roll = rng.int(100);
      if (roll < 4 || corpus.length === 0) return rng.bytes(rng.int(rng.chance(0.5) ? 64 : Math.min(2048, MAX_INPUT_BYTES)));
      if (roll < 20 && target.generate) {
        const fresh = target.generate(rng);
        return fresh.length > MAX_INPUT_BYTES ? fresh.subarray(0, MAX_INPUT_BYTES) : fresh;
      }
      const base = corpus[rng.chance(0.5) ? Math.max(0, corpus.length - 1 - rng.int(64)) : rng.int(corpus.length)] as Buffer;
      let out = base;
      const rounds = 1 + rng.int(rng.chance(0.2) ? 8 : 3);
      for (let i = 0; i < rounds; i++) out = mutateOnce(out, rng, () => corpus[rng.int(corpus.length)] as Buffer, dictionary);
      return out.length > MAX_INPUT_BYTES ? out.subarray(0, MAX_INPUT_BYTES) : out;
    };
    const minMs = opts.seconds * 1000;
    const minInputs = opts.minInputs ?? 0;
    // With maxInputs the run is that many inputs (or fewer, when it fails first); else a duration and a count.
    const done = () =>
      failures.length >= maxFailures ||
      (opts.maxInputs !== undefined ? inputs >= opts.maxInputs : performance.now() - started >= minMs && inputs >= minInputs);
    const record = async (input: Buffer, runSeed: number, out: Outcome) => {
      inputs++;
      if (out.kind === 'failed') {
        const head = out.error.split('\n')[0] ?? out.error;
        if (failureHeads.has(head)) return;
        failureHeads.add(head);
        const small = await shrink(target, input, runSeed, out.error);
        const again = await runOne(target, small, runSeed, true);
        const error = again.kind === 'failed' ? again.error : out.error;
        failures.push({ error: `${error}\n(seed ${runSeed})`, input: small.subarray(0, 512).toString('hex'), inputBytes: small.length });
        return;
      }
      if (out.kind === 'accepted') accepted++;
      else refused++;
      const fresh = !features.has(out.feature);
      if (fresh) features.add(out.feature);
      const newBranch = branches !== null && branches.changed();
      if (fresh || newBranch) keep(input);
      if (stray.length > 0) {
        const err = stray.shift();
        const c = classify(target, err);
        const error = c.kind === 'failed' ? c.error : `${(err as Error)?.message}`;
        failures.push({ error: `thrown outside the run (uncaught): ${error}`, input: input.subarray(0, 512).toString('hex'), inputBytes: input.length });
      }
    };
    const concurrency = target.concurrency ?? 1;
    if (concurrency <= 1) {
      while (!done()) {
        const input = nextInput();
        const runSeed = rng.u32();
        await record(input, runSeed, await runOne(target, input, runSeed));
      }
    } else {
      const inFlight = new Set<Promise<void>>();
      while (!done()) {
        while (inFlight.size < concurrency) {
          const input = nextInput();
          const runSeed = rng.u32();
          const p: Promise<void> = runOne(target, input, runSeed).then((out) => record(input, runSeed, out)).finally(() => inFlight.delete(p));
          inFlight.add(p);
        }
        await Promise.race(inFlight);
      }
      await Promise.all(inFlight);
    }
    await target.after?.();
  } catch (err) {
    failures.push({ error: `the harness or the target's own checks failed: ${(err as Error)?.stack ?? String(err)}`, input: '', inputBytes: 0 });
  } finally {
    process.off('uncaughtException', onStray);
    process.off('unhandledRejection', onStray);
    await target.teardown?.();
  }
  const seconds = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuStarted);
  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  const corpusSize = corpus.length;
  corpus = [];
  const heapAfterMB = await settledHeapMB();
  return {
    target: target.name,
    seed,
    inputs,
    accepted,
    refused,
    seconds: Math.round(seconds * 10) / 10,
    inputsPerSecond: Math.round(inputs / seconds),
    cpuSeconds: Math.round(cpuSeconds * 10) / 10,
    inputsPerCpuSecond: Math.round(inputs / cpuSeconds),
    corpus: corpusSize,
    features: features.size,
    branches: branches?.taken ?? null,
    branchesTotal: branches?.total ?? null,
    heapBeforeMB: Math.round(heapBeforeMB * 10) / 10,
    heapAfterMB: Math.round(heapAfterMB * 10) / 10,
    counters: { ...(target.counters ?? {}) },
    failures,
  };
}
