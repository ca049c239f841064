/**
 * The fuzz tier of `npm test` (issue 11): each target for about 10 s
 * (FUZZ_SECONDS), in a plain Node process (test/fuzz/run.js; jest's vm makes
 * Buffer work several times slower). Typed errors only, no crash, memory
 * bounded. `npm run fuzz` runs the same targets for much longer.
 *
 * The report line of each target goes to stderr, for the record.
 */
import { HEAP_GROWTH_LIMIT_MB, runFuzzer, TARGET_NAMES } from './runner';

const SECONDS = Number(process.env.FUZZ_SECONDS ?? 10);

describe('fuzz', () => {
  it.each(TARGET_NAMES)('%s: typed errors only, no crash, memory bounded', async (name) => {
    const { code, reports, stderr } = await runFuzzer(['--target', name, '--seconds', String(SECONDS)], (SECONDS + 120) * 1000);
    const report = reports[0];
    if (!report) throw new Error(`no report from the fuzzer (exit ${code}):\n${stderr}`);
    process.stderr.write(`${JSON.stringify({ ...report, failures: report.failures.length })}\n`);
    expect(report.failures).toEqual([]);
    expect(code).toBe(0);
    expect(report.inputs).toBeGreaterThan(0);
    expect(report.heapAfterMB - report.heapBeforeMB).toBeLessThan(HEAP_GROWTH_LIMIT_MB);
  }, (SECONDS + 180) * 1000);
});
