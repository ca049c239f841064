import { ManualClock } from '../../../../q2q/util/clock';
import { Deadlines } from '../../../../q2q/util/deadlines';

describe('Deadlines', () => {
  it('expires each item at its deadline, not before, on one timer', () => {
    const clock = new ManualClock();
    const expired: string[] = [];
    const d = new Deadlines<string>(clock, (item) => expired.push(item));
    d.add('a', 100);
    clock.advance(40);
    d.add('b', 100);
    expect(clock.pendingTimers()).toBe(1);
    clock.advance(59);
    expect(expired).toEqual([]);
    clock.advance(1);
    expect(expired).toEqual(['a']);
    clock.advance(39);
    expect(expired).toEqual(['a']);
    clock.advance(1);
    expect(expired).toEqual(['a', 'b']);
    expect(d.size).toBe(0);
    expect(clock.pendingTimers()).toBe(0);
  });

  it('forgets deleted items; the timer fires once for them and stops', () => {
    const clock = new ManualClock();
    const expired: number[] = [];
    const d = new Deadlines<number>(clock, (item) => expired.push(item));
    for (let i = 0; i < 1000; i++) d.add(i, 50);
    for (let i = 0; i < 1000; i++) if (i !== 500) d.delete(i);
    clock.advance(50);
    expect(expired).toEqual([500]);
    expect(clock.pendingTimers()).toBe(0);
  });

  it('handles mixed timeouts, an earlier deadline re-arms the timer, and re-adding moves a deadline', () => {
    const clock = new ManualClock();
    const expired: string[] = [];
    const d = new Deadlines<string>(clock, (item) => expired.push(`${item}@${clock.now()}`));
    d.add('long', 1000);
    d.add('short', 10);
    d.add('mid', 500);
    d.add('moved', 20);
    d.add('moved', 700);
    clock.advance(2000);
    expect(expired).toEqual(['short@10', 'mid@500', 'moved@700', 'long@1000']);
  });

  it('lets a callback add and delete items; clear() stops everything', () => {
    const clock = new ManualClock();
    const expired: string[] = [];
    const d: Deadlines<string> = new Deadlines<string>(clock, (item) => {
      expired.push(item);
      if (item === 'first') d.add('again', 10);
    });
    d.add('first', 10);
    clock.advance(10);
    clock.advance(10);
    expect(expired).toEqual(['first', 'again']);
    d.add('never', 10);
    d.clear();
    clock.advance(100);
    expect(expired).toEqual(['first', 'again']);
    expect(clock.pendingTimers()).toBe(0);
  });
});
