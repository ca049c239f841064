/**
 * Issue 5, "must show" 1, at a size that is quick on a busy machine: transfers each way,
 * byte-exact (length and SHA-256 at both ends), through each impairment of the impairment
 * proxy. No time bound here: the 50 MB runs with their bounds are in the slow tier
 * (test/slow/ptcp-transfer.test.ts, `npm run test:slow`). A transfer that stalls still fails,
 * at the test's timeout.
 */
import type { Impairment } from '../../../bench/impairment-proxy';
import { exchange, pair, payload } from './harness';

const MB = 1_000_000;

const cases: Array<[string, number, Impairment | undefined]> = [
  ['no impairment (direct), 4 MB', 4 * MB, undefined],
  ['no impairment (through the proxy), 4 MB', 4 * MB, {}],
  ['5% loss, 2 MB', 2 * MB, { loss: 0.05 }],
  ['10% loss, 2 MB', 2 * MB, { loss: 0.1 }],
  ['5% duplication, 2 MB', 2 * MB, { duplicate: 0.05 }],
  ['reordering within 50 ms, 2 MB', 2 * MB, { jitterMs: 50 }],
  ['all at once, 2 MB', 2 * MB, { loss: 0.1, jitterMs: 50, duplicate: 0.05 }],
];

describe('ptcp transfers each way', () => {
  it.each(cases)('%s', async (_name, size, impairment) => {
    const p = await pair(impairment, 7);
    try {
      await exchange(p, payload(size), payload(size));
    } finally {
      await p.close();
    }
  }, 120_000);
});
