import { ManualClock } from '../../../q2q/util/clock';
import { TunnelRegistry, type TunnelInfo } from '../../../agent/tunnels';
import { closed, readAll, socketPairs, type PairFactory } from './socket-pair';

const INFO: TunnelInfo = { kind: 'socks', target: 'bob@b.test:http', peer: 'bob@b.test', route: 'relay', local: '127.0.0.1:5000', connectMs: 12 };

describe('TunnelRegistry', () => {
  let pairs: PairFactory;
  beforeEach(async () => {
    pairs = await socketPairs();
  });
  afterEach(() => pairs.close());

  it('lists a tunnel with its age and the bytes moved after it was added, and forgets it when it closes', async () => {
    const clock = new ManualClock(1000);
    const registry = new TunnelRegistry({ clock, wallNow: () => Date.UTC(2030, 0, 1) });
    const [near, far] = await pairs.pair();
    // Bytes before the hand-over (a handshake preamble) are not the tunnel's.
    near.write('preamble');
    await new Promise<void>((resolve) => far.once('data', () => resolve()));
    const id = registry.add(INFO, near);
    const farGot = readAll(far);
    near.write('x'.repeat(100));
    far.write('y'.repeat(30));
    await new Promise<void>((resolve) => near.once('data', () => resolve()));
    clock.advance(2500);
    expect(registry.list()).toEqual([{ id, ...INFO, startedAt: '2030-01-01T00:00:00.000Z', ageMs: 2500, bytesIn: 30, bytesOut: 100 }]);
    const nearClosed = closed(near);
    near.end();
    far.end();
    await farGot;
    await nearClosed;
    expect(registry.list()).toEqual([]);
    expect(registry.size).toBe(0);
  });

  it('drain waits for open tunnels up to a limit; destroyAll closes the rest', async () => {
    const clock = new ManualClock();
    const registry = new TunnelRegistry({ clock });
    const [a1, b1] = await pairs.pair();
    const [a2] = await pairs.pair();
    registry.add(INFO, a1);
    registry.add({ ...INFO, kind: 'forward' }, a2);
    let drained = false;
    const drain = registry.drain(500).then(() => (drained = true));
    const a1Closed = closed(a1);
    a1.destroy();
    b1.destroy();
    await a1Closed;
    await Promise.resolve();
    expect(drained).toBe(false);
    clock.advance(500);
    await drain;
    expect(registry.list().map((t) => t.kind)).toEqual(['forward']);
    const a2Closed = closed(a2);
    registry.destroyAll();
    await a2Closed;
    expect(registry.size).toBe(0);
  });

  it('drain resolves as soon as the last tunnel closes', async () => {
    const clock = new ManualClock();
    const registry = new TunnelRegistry({ clock });
    const [a] = await pairs.pair();
    registry.add(INFO, a);
    const drain = registry.drain(60_000);
    a.destroy();
    await drain;
    expect(clock.pendingTimers()).toBe(0);
  });
});
