import { isVertexError } from '../../../../q2q/errors';
import { InboundLimits } from '../../../../q2q/negotiate/inbound-limits';
import { ManualClock } from '../../../../q2q/util/clock';

function refused(fn: () => unknown): boolean {
  try {
    fn();
    return false;
  } catch (err) {
    if (isVertexError(err, 'RateLimited')) return true;
    throw err;
  }
}

describe('inbound limits', () => {
  it('a caller gets its burst, then its rate, and one caller does not spend another\'s', () => {
    const clock = new ManualClock();
    const limits = new InboundLimits({ clock, burstPerCaller: 10, ratePerCaller: 5 });
    let taken = 0;
    for (let i = 0; i < 1000 && !refused(() => limits.take('mallory@a.test')); i++) taken++;
    expect(taken).toBe(10);
    expect(refused(() => limits.take('alice@a.test'))).toBe(false);
    clock.advance(1000);
    taken = 0;
    for (let i = 0; i < 1000 && !refused(() => limits.take('mallory@a.test')); i++) taken++;
    expect(taken).toBe(5);
  });

  it('pending tokens are capped per caller and for the listener, and freed on release (once)', () => {
    const limits = new InboundLimits({ maxPendingPerCaller: 3, maxPending: 5 });
    const held = [1, 2, 3].map(() => limits.admit('mallory@a.test'));
    expect(refused(() => limits.admit('mallory@a.test'))).toBe(true);
    const others = [1, 2].map(() => limits.admit('alice@a.test'));
    expect(limits.pending).toBe(5);
    expect(refused(() => limits.admit('carol@c.test'))).toBe(true);
    held[0]?.release();
    held[0]?.release();
    expect(limits.pending).toBe(4);
    expect(refused(() => limits.admit('carol@c.test'))).toBe(false);
    for (const a of [...held, ...others]) a.release();
    expect(limits.pending).toBe(1);
  });

  it('1,000 requests in a burst from one caller: the bound holds, and without limits it would not', () => {
    const clock = new ManualClock();
    const run = (limits: InboundLimits | null): number => {
      let admitted = 0;
      for (let i = 0; i < 1000; i++) {
        clock.advance(2);
        try {
          limits?.take('mallory@a.test');
          limits?.admit('mallory@a.test');
          admitted++;
        } catch (err) {
          if (!isVertexError(err, 'RateLimited')) throw err;
        }
      }
      return admitted;
    };
    expect(run(new InboundLimits({ clock }))).toBeLessThanOrEqual(128);
    // The forbidden behaviour: nothing counted, every request admitted.
    expect(run(null)).toBe(1000);
  });
});
