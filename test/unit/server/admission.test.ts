/**
 * Bookkeeping of unauthenticated connections (server/admission.ts) on an
 * injected clock: per-address cap, total cap with eviction of the quietest
 * idle one, idle and lifetime timeouts, and busy connections left alone.
 */
import { Admission } from '../../../server/admission';

function harness(limits: ConstructorParameters<typeof Admission>[0], opts: ConstructorParameters<typeof Admission>[2] = {}) {
  let now = 0;
  const closed: string[] = [];
  const admission = new Admission(limits, () => now, opts);
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
    const { admission, closed, open } = harness({ perAddress: 32, total: 40 });
    for (let i = 0; i < 39; i++) open(`198.51.100.${i % 3}`, `flood${i}`);
    open('203.0.113.1', 'owner');
    // Full: each flooding address gets one more (evicting its own), the rest are shed at accept.
    let admitted = 0;
    for (let i = 0; i < 500; i++) if (open(`198.51.100.${i % 3}`, `more${i}`)) admitted++;
    expect(admitted).toBe(3);
    expect(admission.stats.shed).toBe(497);
    expect(closed.filter((c) => c.startsWith('owner'))).toEqual([]);
  });

  it('without priority (the old behaviour) every later arrival evicts and is admitted', () => {
    const { admission, closed, open } = harness({ perAddress: 32, total: 40 }, { priority: false });
    for (let i = 0; i < 39; i++) open(`198.51.100.${i % 3}`, `flood${i}`);
    open('203.0.113.1', 'owner');
    for (let i = 0; i < 500; i++) expect(open(`198.51.100.${i % 3}`, `more${i}`)).not.toBeNull();
    expect(admission.underPressure).toBe(false);
    expect(admission.stats.shed).toBe(0);
    expect(closed.filter((c) => c.startsWith('owner'))).toEqual([]);
  });
});

describe('Admission under pressure', () => {
  const limits = { perAddress: 100, total: 10, idleMs: 10_000, newcomerIntervalMs: 5_000 };

  function full() {
    const h = harness(limits);
    for (let i = 0; i < 10; i++) h.open(`198.51.100.${i % 2}`, `flood${i}`);
    expect(h.admission.underPressure).toBe(false);
    return h;
  }

  it('admits a known-good address every time, evicting flood connections (never its own) for it', () => {
    const { admission, closed, open } = full();
    admission.prove('192.0.2.7');
    for (let i = 0; i < 8; i++) expect(open('192.0.2.7', `agent${i}`)).not.toBeNull();
    expect(admission.underPressure).toBe(true);
    expect(closed).toHaveLength(8);
    expect(closed.every((c) => c.startsWith('flood'))).toBe(true);
    expect(admission.countFor('192.0.2.7')).toBe(8);
  });

  it('gives an unknown address one connection per interval, and sheds the rest before any work', () => {
    const { admission, open, advance } = full();
    expect(open('203.0.113.9', 'first register')).not.toBeNull();
    expect(open('203.0.113.9', 'second')).toBeNull();
    expect(admission.check('203.0.113.9')).toBe('shed');
    expect(open('198.51.100.0', 'flood again')).not.toBeNull();
    expect(open('198.51.100.0', 'flood again 2')).toBeNull();
    advance(4_999);
    expect(open('203.0.113.9', 'too early')).toBeNull();
    advance(1);
    expect(open('203.0.113.9', 'next interval')).not.toBeNull();
    expect(admission.stats.shed).toBe(3);
  });

  it('tells why each refused connection was refused', () => {
    const reasons: string[] = [];
    let now = 0;
    const admission = new Admission({ perAddress: 2, total: 3, newcomerIntervalMs: 5_000 }, () => now, { onRefuse: (r) => reasons.push(r) });
    const open = (a: string, busy = () => false) => admission.admit(a, () => undefined, busy);
    open('198.51.100.1', () => true);
    open('198.51.100.1', () => true);
    expect(open('198.51.100.1')).toBeNull();
    open('198.51.100.2', () => true);
    // Full of busy ones: the newcomer's share, but nothing to evict.
    expect(open('198.51.100.3')).toBeNull();
    expect(open('198.51.100.3')).toBeNull();
    now += 1;
    expect(reasons).toEqual(['address', 'full', 'shed']);
  });

  it('an address that proves itself (registers, logs in) is admitted at once after', () => {
    const { admission, open } = full();
    expect(open('203.0.113.9', 'register')).not.toBeNull();
    expect(open('203.0.113.9', 'agent')).toBeNull();
    admission.prove('203.0.113.9');
    expect(open('203.0.113.9', 'agent')).not.toBeNull();
  });

  it('lasts while the flood knocks, ends an idle time after it stopped, and is not entered below the limit', () => {
    const { admission, open, advance } = full();
    expect(open('203.0.113.1', 'x')).not.toBeNull();
    for (let t = 0; t < 5; t++) {
      advance(9_000);
      admission.sweep();
      // The first knock of an interval is the address's share; the next is shed.
      open('198.51.100.1', `knock${t}`);
      expect(open('198.51.100.1', `knock${t} again`)).toBeNull();
      expect(admission.underPressure).toBe(true);
    }
    // The table drained (idle), but the knocking went on: still rationed.
    expect(admission.size).toBeLessThanOrEqual(2);
    advance(10_000);
    expect(admission.underPressure).toBe(false);
    for (let i = 0; i < 8; i++) expect(open('198.51.100.1', `back${i}`)).not.toBeNull();
    expect(admission.underPressure).toBe(false);
  });

  it('comes on with too many TLS handshakes in progress, long before the table is full', () => {
    const { admission, open, advance } = harness({ perAddress: 100, total: 1000, handshakes: 4, idleMs: 10_000, newcomerIntervalMs: 5_000 });
    const burst = Array.from({ length: 4 }, (_, i) => open('198.51.100.1', `burst${i}`)!);
    expect(admission.handshaking).toBe(4);
    expect(admission.underPressure).toBe(false);
    // The fifth: its address's share under pressure; the sixth is shed.
    expect(open('198.51.100.1', 'fifth')).not.toBeNull();
    expect(open('198.51.100.1', 'sixth')).toBeNull();
    for (const entry of burst) admission.secured(entry);
    admission.release(burst[0]!);
    expect(admission.handshaking).toBe(1);
    expect(admission.size).toBe(4);
    expect(open('198.51.100.1', 'still rationed')).toBeNull();
    advance(10_001);
    expect(admission.underPressure).toBe(false);
    expect(open('198.51.100.1', 'eased')).not.toBeNull();
  });

  it('remembers a bounded number of known addresses, each for a while', () => {
    const { admission, advance } = harness({ knownAddresses: 3, knownForMs: 60_000 });
    for (const a of ['192.0.2.1', '192.0.2.2', '192.0.2.3']) admission.prove(a);
    advance(1_000);
    admission.prove('192.0.2.1');
    admission.prove('192.0.2.4');
    expect(admission.isKnown('192.0.2.2')).toBe(false);
    expect(['192.0.2.1', '192.0.2.3', '192.0.2.4'].every((a) => admission.isKnown(a))).toBe(true);
    advance(59_500);
    admission.sweep();
    expect(admission.stats.known).toBe(2);
    expect(admission.isKnown('192.0.2.3')).toBe(false);
    expect(admission.isKnown('192.0.2.1')).toBe(true);
  });
});
