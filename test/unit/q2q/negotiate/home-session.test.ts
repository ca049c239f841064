import { reconnectDelay, RECONNECT_MAX_MS, RECONNECT_MIN_MS } from '../../../../q2q/negotiate/home-session';

describe('home session reconnect backoff (issue 13: online within 5 s of the server coming back)', () => {
  it('doubles from 1 s and never waits longer than 4 s, whatever the jitter', () => {
    expect(RECONNECT_MAX_MS).toBeLessThanOrEqual(4_000);
    for (let attempt = 0; attempt < 100; attempt++) {
      for (const random of [0, 0.5, 0.999999]) {
        const wait = reconnectDelay(attempt, random);
        expect(wait).toBeLessThanOrEqual(RECONNECT_MAX_MS);
        expect(wait).toBeGreaterThanOrEqual(0.75 * RECONNECT_MIN_MS);
      }
    }
    expect([0, 1, 2, 3].map((a) => reconnectDelay(a, 0.999999))).toEqual([1_000, 2_000, 4_000, 4_000]);
    expect(reconnectDelay(0, 0)).toBe(750);
  });
});
