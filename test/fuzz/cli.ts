/**
 * The fuzz runner's command line (loaded by run.js, which compiles TypeScript
 * on the fly). Targets are loaded only after the instrumented files are known,
 * so --coverage can instrument the code under test as it is first required.
 */
import type { FuzzOptions, FuzzReport, FuzzTarget } from './engine';

interface TargetEntry {
  /** The code under test, relative to the repository root: instrumented under --coverage. */
  sources: string[];
  /** The target, or with `inject` one whose code under test is broken on purpose. */
  make: (inject?: string) => FuzzTarget;
}

/* eslint-disable @typescript-eslint/no-require-imports */
export const TARGETS: Record<string, TargetEntry> = {
  amp: {
    sources: ['q2q/wire/amp.ts', 'q2q/proto/amp-peer.ts', 'q2q/wire/amp-errors.ts'],
    make: (inject) => {
      const m = require('./targets/amp') as typeof import('./targets/amp');
      return m.ampTarget(inject ? m.faultyAmp(inject) : undefined);
    },
  },
  control: {
    sources: ['server/control-session.ts', 'server/broker.ts', 'server/account-service.ts', 'q2q/address.ts', 'q2q/identity/certificates.ts'],
    make: (inject) => {
      const m = require('./targets/control') as typeof import('./targets/control');
      return m.controlTarget(inject);
    },
  },
  ptcp: {
    sources: ['q2q/wire/ptcp-segment.ts', 'q2q/proto/ptcp/connection.ts', 'q2q/proto/ptcp/scoreboard.ts', 'q2q/proto/ptcp/reassembly.ts'],
    make: (inject) => {
      const m = require('./targets/ptcp') as typeof import('./targets/ptcp');
      return m.ptcpTarget(inject ? m.faultyPtcp(inject) : undefined);
    },
  },
  socks5: {
    sources: ['q2q/wire/socks5.ts', 'q2q/proto/socks5-session.ts'],
    make: (inject) => {
      const m = require('./targets/socks5') as typeof import('./targets/socks5');
      return m.socks5Target(inject ? m.faultySocks5(inject) : undefined);
    },
  },
  'file-transfer': {
    sources: ['q2q/wire/file-transfer.ts'],
    make: (inject) => {
      const m = require('./targets/file-transfer') as typeof import('./targets/file-transfer');
      return m.fileTransferTarget(inject ? m.faultyFileTransfer(inject) : undefined);
    },
  },
};

interface Run {
  target: string;
  inject?: string;
  maxInputs?: number;
}

function parse(argv: string[]): { runs: Run[]; opts: FuzzOptions; replay?: string } {
  const targets: string[] = [];
  const cases: Run[] = [];
  const opts: FuzzOptions = { seconds: 10 };
  let inject: string | undefined;
  let replay: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${arg} needs a value`);
      return v;
    };
    switch (arg) {
      case '--target': targets.push(value()); break;
      case '--case': {
        // target:fault[:max-inputs], for running many injected faults in one process.
        const [target = '', fault, max] = value().split(':');
        cases.push({ target, inject: fault || undefined, maxInputs: max ? Number(max) : undefined });
        break;
      }
      case '--seconds': opts.seconds = Number(value()); break;
      case '--min-inputs': opts.minInputs = Number(value()); break;
      case '--max-inputs': opts.maxInputs = Number(value()); break;
      case '--seed': opts.seed = Number(value()); break;
      case '--inject': inject = value(); break;
      case '--max-failures': opts.maxFailures = Number(value()); break;
      case '--replay': replay = value(); break;
      case '--coverage': break; // read by run.js
      default: throw new Error(`unknown argument ${arg}; see test/fuzz/run.js`);
    }
  }
  const runs = [...(targets.length > 0 || cases.length === 0 ? (targets.length > 0 ? targets : Object.keys(TARGETS)).map((target) => ({ target, inject })) : []), ...cases];
  for (const r of runs) if (!(r.target in TARGETS)) throw new Error(`unknown target ${r.target}; targets: ${Object.keys(TARGETS).join(', ')}`);
  if (replay !== undefined && (runs.length !== 1 || opts.seed === undefined)) throw new Error('--replay HEX needs one --target and the --seed of the failure');
  return { runs, opts, replay };
}

/** Runs one input again, as a failure reported it, and shows what happens, with the stack. */
async function replayOne(target: FuzzTarget, hex: string, seed: number): Promise<number> {
  const { rngFrom } = require('./engine') as typeof import('./engine');
  await target.setup?.();
  try {
    const feature = await target.run(Buffer.from(hex, 'hex'), rngFrom(seed));
    process.stdout.write(`accepted: ${feature}\n`);
    return 0;
  } catch (err) {
    process.stdout.write(`threw: ${(err as Error)?.stack ?? String(err)}\n`);
    return 1;
  } finally {
    await target.teardown?.();
  }
}

/**
 * `leak` breaks any target the same way: every input keeps 64 KB alive (up to 64 MB).
 * The 64 KB live on V8's heap (an array of 8,192 doubles), not in a Buffer: V8 frees
 * dead Buffers' memory on a background thread, so on a busy machine the previous
 * case's leak could still count as `external` when this case's "before" was read,
 * and be freed during this case, hiding its growth (seen once in CI at load ~5).
 */
function leaking(target: FuzzTarget): FuzzTarget {
  const kept: number[][] = [];
  const run = target.run.bind(target);
  target.run = (input, rng) => {
    if (kept.length < 1024) kept.push(new Array<number>(8192).fill(kept.length + 0.5));
    return run(input, rng);
  };
  return target;
}

export async function main(argv: string[]): Promise<number> {
  const { runs, opts, replay } = parse(argv);
  const instrument = (globalThis as { __fuzzInstrument?: Set<string> }).__fuzzInstrument;
  for (const r of runs) for (const s of TARGETS[r.target]!.sources) instrument?.add(s);
  const { fuzz } = require('./engine') as typeof import('./engine');
  if (replay !== undefined) return replayOne(TARGETS[runs[0]!.target]!.make(runs[0]!.inject), replay, opts.seed!);
  let failed = false;
  for (const r of runs) {
    const made = TARGETS[r.target]!.make(r.inject === 'leak' ? undefined : r.inject);
    const target = r.inject === 'leak' ? leaking(made) : made;
    target.sources = TARGETS[r.target]!.sources;
    const report: FuzzReport = await fuzz(target, r.maxInputs !== undefined ? { ...opts, maxInputs: r.maxInputs } : opts);
    process.stdout.write(`${JSON.stringify({ fuzz: r.target, ...(r.inject ? { inject: r.inject } : {}), ...report })}\n`);
    if (report.failures.length > 0) failed = true;
  }
  return failed ? 1 : 0;
}
