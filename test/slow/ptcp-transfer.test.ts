/**
 * Slow tier. Issue 5, "must show" 1: transfers of 50 MB each way, byte-exact, through the
 * impairment proxy, each within its time bound (measured on 2 cores, with headroom).
 *
 * Measured with BBR on an otherwise busy 2-core machine: 5 % loss 6 s, 10 % loss 14 s,
 * reordering 7 s, all at once 19 s. With CUBIC the all-at-once case moved ~60 KB/s (it ran at
 * 1 MB) and reordering alone took up to 75 s under load; the bounds still allow for that
 * slower machine. Under a second `npm test` the direct 50 MB case took 20-24 s, over its
 * 20 s bound: these bounds hold on a quiet machine only, so they live here, not in `npm test`.
 * test/integration/ptcp/transfer.test.ts runs the same impairments at a small size, with no
 * time bound, in the default tier.
 */
import type { Impairment } from '../../bench/impairment-proxy';
import { exchange, pair, payload } from '../integration/ptcp/harness';

const MB = 1_000_000;

const cases: Array<[string, number, Impairment | undefined, number]> = [
  ['no impairment (direct), 50 MB', 50 * MB, undefined, 20_000],
  ['no impairment (through the proxy), 50 MB', 50 * MB, {}, 30_000],
  ['5% loss, 50 MB', 50 * MB, { loss: 0.05 }, 90_000],
  ['10% loss, 50 MB', 50 * MB, { loss: 0.1 }, 180_000],
  ['5% duplication, 50 MB', 50 * MB, { duplicate: 0.05 }, 30_000],
  ['reordering within 50 ms, 50 MB', 50 * MB, { jitterMs: 50 }, 150_000],
  ['all at once, 50 MB', 50 * MB, { loss: 0.1, jitterMs: 50, duplicate: 0.05 }, 150_000],
];

describe('ptcp transfers each way, within their time bounds', () => {
  it.each(cases)('%s', async (_name, size, impairment, boundMs) => {
    const p = await pair(impairment, 7);
    const started = performance.now();
    try {
      await exchange(p, payload(size), payload(size));
      const ms = performance.now() - started;
      process.stderr.write(`${JSON.stringify({ slow: 'ptcp-transfer', case: _name, ms: Math.round(ms), boundMs })}\n`);
      expect(ms).toBeLessThan(boundMs);
    } finally {
      await p.close();
    }
  }, 200_000);
});
