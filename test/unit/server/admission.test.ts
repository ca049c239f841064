/**
 * Bookkeeping of unauthenticated connections (server/admission.ts) on an
 * injected clock: per-address cap, total cap with eviction of the quietest
 * idle one, idle and lifetime timeouts, and busy connections left alone.
 */
import { Admission } from '../../../server/admission';

function harness(limits: ConstructorParameters<typeof Admission>[0]) {
  let now = 0;
  const closed: string[] = [];
  const admission = new Admission(limits, () => now);
  const open = (address: string, name: string, busy = () => false) => admission.admit(address, (reason) => closed.push(`${name}: ${reason}`), busy);
  return { admission, closed, open, advance: (ms: number) => { now += ms; } };
}

describe('Admission', () => {
  it('caps connections per source address; others are unaffected; a closed one frees its place', () => {
    const { admission, open } = harness({ perAddress: 3, total: 100 });
    const held = [open('192.0.2.1', 'a0'), open('192.0.2.1', 'a1'), open('192.0.2.1', 'a2')];
    expect(held.every(Boolean)).toBe(true);
    expect(open('192.0.2.1', 'a3')).toBeNull();
    expect(open('192.0.2.2', 'b0')).not.toBeNull();
    admission.release(held[0]!);
    expect(open('192.0.2.1', 'a4')).not.toBeNull();
    expect(admission.stats.refused).toBe(1);
  });

  it('when full, a newcomer closes the connection quiet longest, never a busy one', () => {
    const { admission, closed, open, advance } = harness({ perAddress: 10, total: 3 });
    const first = open('192.0.2.1', 'first', () => true);
    advance(1);
    const second = open('192.0.2.2', 'second');
    advance(1);
    const third = open('192.0.2.3', 'third');
    advance(1);
    admission.touch(second!);
    expect(open('192.0.2.4', 'newcomer')).not.toBeNull();
    expect(closed).toEqual(['third: closed to make room for a newer connection']);
    expect([first, second].every(Boolean)).toBe(true);
    expect(admission.size).toBe(3);
  });

  it('closes after the idle time without a request and after the lifetime in all, but not while busy', () => {
    const { admission, closed, open, advance } = harness({ perAddress: 10, total: 10, idleMs: 10_000, lifetimeMs: 60_000 });
    let busy = true;
    open('192.0.2.1', 'idle');
    const chatty = open('192.0.2.1', 'chatty')!;
    open('192.0.2.1', 'busy', () => busy);
    advance(9_999);
    admission.touch(chatty);
    admission.sweep();
    expect(closed).toEqual([]);
    advance(1);
    admission.sweep();
    expect(closed).toEqual(['idle: idle without authenticating']);
    for (let t = 0; t < 5; t++) {
      advance(9_000);
      admission.touch(chatty);
      admission.sweep();
    }
    expect(closed).toEqual(['idle: idle without authenticating']);
    advance(5_000);
    admission.touch(chatty);
    admission.sweep();
    expect(closed).toEqual(['idle: idle without authenticating', 'chatty: open too long without authenticating']);
    busy = false;
    admission.sweep();
    expect(closed).toHaveLength(3);
    expect(admission.size).toBe(0);
    expect(admission.countFor('192.0.2.1')).toBe(0);
  });
});

describe('Admission eviction under a churning flood', () => {
  it('evicts from the address holding the most, so a newcomer with one connection survives any number of later arrivals', () => {
    const { closed, open } = harness({ perAddress: 32, total: 40 });
    for (let i = 0; i < 39; i++) open(`198.51.100.${i % 3}`, `flood${i}`);
    open('203.0.113.1', 'owner');
    for (let i = 0; i < 500; i++) expect(open(`198.51.100.${i % 3}`, `more${i}`)).not.toBeNull();
    expect(closed.filter((c) => c.startsWith('owner'))).toEqual([]);
  });
});
