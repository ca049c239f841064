/**
 * Each fuzz target can fail (issue 11): the same runner, with the code under
 * test broken on purpose (--case target:fault), must report the break. Plain
 * errors, wrong codes and broken invariants in decoders and machines, a
 * responder that throws inside a real server, and memory that is never let
 * go. All cases run in one runner process, one after another.
 */
import { HEAP_GROWTH_LIMIT_MB, runFuzzer, TARGET_NAMES } from './runner';
import type { FuzzReport } from './engine';

const FAULTS: Array<[target: string, fault: string, expected: RegExp]> = [
  ['amp', 'plain-error', /decoder threw Error: injected: a plain error in the decoder/],
  ['amp', 'wrong-code', /decoder threw VertexError: injected: the wrong code/],
  ['amp', 'peer-throws', /Error: injected: receive\(\) threw/],
  ['control', 'plain-error', /the server answered UNKNOWN: internal error/],
  ['ptcp', 'plain-error', /decodeSegment threw Error: injected: a plain error in the decoder/],
  ['ptcp', 'machine-throws', /TypeError: injected: the machine threw/],
  ['ptcp', 'unbounded', /buffers \d+ received bytes/],
  ['socks5', 'plain-error', /decode threw Error: injected: a plain error in the decoder/],
  ['socks5', 'session-throws', /RangeError: injected: the session threw/],
  ['file-transfer', 'plain-error', /decoder threw Error: injected: a plain error in the decoder/],
  ['file-transfer', 'hoards', /the decoder holds \d+ bytes/],
];
/** Enough inputs to find each injected fault with room to spare; the run stops at the first failure. */
const MAX_INPUTS = 200_000;
/** A leak of 64 KB per input passes the 32 MB limit after 512 inputs. */
const LEAK_INPUTS = 1000;

describe('every fuzz target can fail', () => {
  let reports: Array<FuzzReport & { fuzz: string; inject?: string }> = [];
  beforeAll(async () => {
    const cases = [
      ...FAULTS.map(([target, fault]) => `${target}:${fault}:${MAX_INPUTS}`),
      ...TARGET_NAMES.map((target) => `${target}:leak:${LEAK_INPUTS}`),
    ];
    const out = await runFuzzer([...cases.flatMap((c) => ['--case', c]), '--seconds', '0', '--max-failures', '1', '--seed', '1'], 1_200_000);
    reports = out.reports;
    if (reports.length !== cases.length) throw new Error(`${reports.length} reports for ${cases.length} cases (exit ${out.code}):\n${out.stderr}`);
  }, 1_260_000);

  it.each(FAULTS)('%s with %s is caught', (target, fault, expected) => {
    const report = reports.find((r) => r.fuzz === target && r.inject === fault)!;
    expect(report.failures.map((f) => f.error).join('\n')).toMatch(expected);
  });

  it.each(TARGET_NAMES)('%s: memory that is never let go is caught', (target) => {
    const report = reports.find((r) => r.fuzz === target && r.inject === 'leak')!;
    expect(report.heapAfterMB - report.heapBeforeMB).toBeGreaterThanOrEqual(HEAP_GROWTH_LIMIT_MB);
  });
});
