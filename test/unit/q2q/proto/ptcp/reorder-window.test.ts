import { MAX_REORDER_MULTIPLIER, REORDER_DECAY_RECOVERIES, REORDER_MIN_BASE_MS, ReorderWindow } from '../../../../../q2q/proto/ptcp/reorder-window';

const path = (minRttMs: number, srttMs: number | undefined, rttvarMs = 0) => ({ minRttMs, srttMs, rttvarMs });

describe('ReorderWindow', () => {
  it('is zero before any reordering once DupThresh is met, min_rtt/4 otherwise', () => {
    const w = new ReorderWindow();
    expect(w.window(path(8, 20), true)).toBe(0);
    expect(w.window(path(8, 20), false)).toBe(2);
    w.onReordering();
    expect(w.seen).toBe(true);
    expect(w.window(path(8, 20), true)).toBe(2);
  });

  it('floors the min_rtt base so a loopback path still gets a usable window', () => {
    const w = new ReorderWindow();
    expect(w.window(path(0.01, 0.05, 0), false)).toBeCloseTo(0.05);
    expect(w.window(path(0.01, 100, 0), false)).toBe(REORDER_MIN_BASE_MS / 4);
    expect(w.window(path(Infinity, undefined), false)).toBe(REORDER_MIN_BASE_MS / 4);
  });

  it('doubles the multiplier on each spurious retransmission, up to its bound', () => {
    const w = new ReorderWindow();
    for (let i = 1; i <= 12; i++) {
      w.onSpurious(0);
      expect(w.multiplier).toBe(Math.min(2 ** i, MAX_REORDER_MULTIPLIER));
    }
    expect(w.window(path(4, 1e9), true)).toBe(MAX_REORDER_MULTIPLIER);
  });

  it('jumps to the measured lateness at once, within SRTT + 4 RTTVAR', () => {
    const w = new ReorderWindow();
    w.onSpurious(70);
    expect(w.window(path(0.1, 50, 10), true)).toBe(70);
    // The RFC 8985 cap (SRTT) would be 50 ms, below the reordering actually seen.
    expect(w.window(path(0.1, 50, 2), true)).toBe(58);
    w.onSpurious(30);
    expect(w.extentMs).toBe(70);
  });

  it('shrinks after 16 recoveries without a spurious one, and a spurious one restarts the count', () => {
    const w = new ReorderWindow();
    w.onSpurious(40);
    w.onSpurious(0);
    for (let i = 0; i < REORDER_DECAY_RECOVERIES - 1; i++) w.onRecovery();
    w.onSpurious(0);
    expect(w.multiplier).toBe(8);
    for (let i = 0; i < REORDER_DECAY_RECOVERIES - 1; i++) w.onRecovery();
    expect(w.extentMs).toBe(40);
    w.onRecovery();
    expect(w.multiplier).toBe(1);
    expect(w.extentMs).toBe(20);
    expect(w.seen).toBe(true);
  });

  it('ignores a non-finite lateness', () => {
    const w = new ReorderWindow();
    w.onSpurious(Number.NaN);
    w.onSpurious(Infinity);
    expect(w.extentMs).toBe(0);
  });
});
