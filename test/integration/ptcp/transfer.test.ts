/**
 * Issue 5, "must show" 1: 50 MB each way, byte-exact, through the impairment proxy.
 * Each case states its time bound (measured on 2 cores, with headroom); none may hang.
 */
import type { Impairment } from '../../helpers/impairment-proxy';
import { exchange, pair, payload } from './harness';

const MB = 1_000_000;
const SIZE = 50 * MB;

const cases: Array<[string, Impairment | undefined, number]> = [
  ['no impairment (direct)', undefined, 20_000],
  ['no impairment (through the proxy)', {}, 30_000],
  ['5% loss', { loss: 0.05 }, 90_000],
  ['10% loss', { loss: 0.1 }, 240_000],
  ['reordering within 50 ms', { jitterMs: 50 }, 240_000],
  ['5% duplication', { duplicate: 0.05 }, 30_000],
  ['all at once', { loss: 0.1, jitterMs: 50, duplicate: 0.05 }, 300_000],
];

describe('ptcp 50 MB each way', () => {
  const up = payload(SIZE);
  const down = payload(SIZE);

  it.each(cases)('%s', async (_name, impairment, boundMs) => {
    const p = await pair(impairment, 7);
    const started = performance.now();
    try {
      await exchange(p, up, down);
      expect(performance.now() - started).toBeLessThan(boundMs);
    } finally {
      await p.close();
    }
  }, 330_000);
});
