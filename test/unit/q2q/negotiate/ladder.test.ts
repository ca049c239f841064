/**
 * The ladder's phases on the in-memory network (test/helpers/memory-network.ts),
 * with the production listener, ladder and session manager and a manual
 * clock: which route wins when, what each phase waits for, and that the
 * losers' channels are closed.
 */
import { randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { RELAY_READY_SAFETY_MS } from '../../../../q2q/negotiate/listener';
import { MemoryWorld, type MemoryNode } from '../../../helpers/memory-network';

/** bob's "echo" service: echoes, and ends when the caller ends. */
function echo(stream: Duplex): void {
  stream.on('error', () => undefined);
  stream.pipe(stream);
}

async function roundTrip(world: MemoryWorld, stream: Duplex): Promise<void> {
  const data = randomBytes(100_000);
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  const ended = new Promise((resolve) => stream.once('end', resolve));
  stream.end(data);
  await world.drive(ended);
  expect(Buffer.concat(chunks).equals(data)).toBe(true);
}

describe('ladder', () => {
  let world: MemoryWorld;
  let alice: MemoryNode;
  let bob: MemoryNode;

  beforeEach(async () => {
    world = new MemoryWorld();
    alice = await world.node('alice@a.test', '192.0.2.1');
    bob = await world.node('bob@b.test', '198.51.100.1');
    bob.expose('echo', { allow: ['alice@a.test'], onConnection: echo });
  });
  afterEach(() => world.stop());

  const dialsOf = (route: string) => world.network.dials.filter((d) => d.route === route && d.from === alice.host);

  it('phase direct: a reachable tcp candidate wins before the punch and the relay start', async () => {
    const stream = await world.drive(alice.connect('bob@b.test:echo'));
    expect(stream.route).toBe('tcp');
    expect(dialsOf('tcp')).toHaveLength(1);
    expect(dialsOf('ptcp')).toHaveLength(0);
    expect(dialsOf('relay')).toHaveLength(0);
    await roundTrip(world, stream);
  });

  it('phase punch: with tcp refused, ptcp wins, started PTCP_STAGGER_MS after tcp', async () => {
    world.network.fault(bob.host, 'refuse', 'tcp');
    const stream = await world.drive(alice.connect('bob@b.test:echo'));
    expect(stream.route).toBe('ptcp');
    const [tcp] = dialsOf('tcp');
    const [ptcp] = dialsOf('ptcp');
    expect(ptcp!.at - tcp!.at).toBeGreaterThanOrEqual(150);
    expect(dialsOf('relay')).toHaveLength(0);
    await roundTrip(world, stream);
  });

  it('phase relay: when no direct attempt answers, the relay leg opens after relayDelayMs and wins', async () => {
    world.network.fault(bob.host, 'block');
    const started = world.clock.now();
    const stream = await world.drive(alice.connect('bob@b.test:echo'));
    expect(stream.route).toBe('relay');
    const [relay] = dialsOf('relay');
    expect(relay!.at - started).toBeGreaterThanOrEqual(1_000);
    // The listener opened its leg only once the caller's was in (relay-ready).
    expect(world.network.dials.filter((d) => d.route === 'relay' && d.from === bob.host)).toHaveLength(1);
    await roundTrip(world, stream);
  });

  it('both ends behind hard NATs: no punch, the relay at once', async () => {
    alice.nat = 'hard';
    bob.nat = 'hard';
    world.network.fault(bob.host, 'block', 'tcp');
    const started = world.clock.now();
    const stream = await world.drive(alice.connect('bob@b.test:echo'));
    expect(stream.route).toBe('relay');
    expect(dialsOf('ptcp')).toHaveLength(0);
    expect(dialsOf('relay')[0]!.at - started).toBeLessThan(150);
  });

  it('every route failing is Unreachable, naming each failure', async () => {
    world.network.fault(bob.host, 'refuse');
    world.network.relayEnabled = false;
    const connecting = alice.connect('bob@b.test:echo');
    await expect(world.drive(connecting)).rejects.toMatchObject({ code: 'Unreachable', message: expect.stringMatching(/tcp: .*ECONNREFUSED.*ptcp: .*ECONNREFUSED/) });
  });

  it('nothing answering at all is a Timeout at the connect deadline, and every attempt is cancelled', async () => {
    world.network.fault(bob.host, 'block');
    world.network.relayEnabled = false;
    const started = world.clock.now();
    await expect(world.drive(alice.connect('bob@b.test:echo', 5_000), 10_000, 10)).rejects.toMatchObject({ code: 'Timeout' });
    expect(world.clock.now() - started).toBeGreaterThanOrEqual(5_000);
    expect(world.network.liveLinks()).toHaveLength(0);
  });

  it('the losers are closed: only the winning channel stays open', async () => {
    // tcp and ptcp both answer; tcp wins; ptcp never started (stagger), relay neither.
    const stream = await world.drive(alice.connect('bob@b.test:echo'));
    await world.advance(2_000);
    expect(world.network.liveLinks().map((l) => l.route)).toEqual([stream.route]);
  });

  it('a listener that refuses the caller in its allow list answers Denied at the ask, before any channel', async () => {
    bob.expose('private', { allow: ['carol@a.test'], onConnection: echo });
    await expect(world.drive(alice.connect('bob@b.test:private'))).rejects.toMatchObject({ code: 'Denied' });
    expect(world.network.dials).toHaveLength(0);
  });
});

describe("the listener's relay leg waits for relay-ready", () => {
  let world: MemoryWorld;
  afterEach(() => world.stop());

  /** alice calls bob; `listener` options for bob's PeerListener; alice's relay delay is 3 s (her agent.yaml). */
  async function pair(listener: { relayReadySafetyMs?: number } = {}): Promise<{ alice: MemoryNode; bob: MemoryNode }> {
    world = new MemoryWorld();
    const alice = await world.node('alice@a.test', '192.0.2.1', { relayDelayMs: 3_000 });
    const bob = await world.node('bob@b.test', '198.51.100.1', { listener });
    bob.expose('echo', { allow: ['alice@a.test'], onConnection: echo });
    return { alice, bob };
  }
  const listenerLegs = (bob: MemoryNode) => world.network.dials.filter((d) => d.route === 'relay' && d.from === bob.host);

  it('a direct route that wins after a second opens no relay leg at the listener', async () => {
    const { alice, bob } = await pair();
    // tcp answers after 2 s: past the listener's old fallback timer (its relay delay, 1 s), before alice's relay delay.
    world.network.slow(bob.host, 2_000, 'tcp');
    world.network.fault(bob.host, 'block', 'ptcp');
    const started = world.clock.now();
    const stream = await world.drive(alice.connect('bob@b.test:echo'));
    expect(stream.route).toBe('tcp');
    expect(world.clock.now() - started).toBeGreaterThanOrEqual(2_000);
    await world.advance(RELAY_READY_SAFETY_MS + 1_000);
    expect(listenerLegs(bob)).toHaveLength(0);
    expect(world.network.dials.filter((d) => d.route === 'relay')).toHaveLength(0);
    await roundTrip(world, stream);
  });

  it('(the check can fail) a listener that opens its leg on a 1 s timer, as before, wastes one there', async () => {
    const { alice, bob } = await pair({ relayReadySafetyMs: 1_000 });
    world.network.slow(bob.host, 2_000, 'tcp');
    world.network.fault(bob.host, 'block', 'ptcp');
    const stream = await world.drive(alice.connect('bob@b.test:echo'));
    expect(stream.route).toBe('tcp');
    expect(listenerLegs(bob)).toHaveLength(1);
  });

  it('with no direct route at all (both behind hard NATs), the listener still waits for the caller\'s leg', async () => {
    const { alice, bob } = await pair();
    alice.nat = 'hard';
    bob.nat = 'hard';
    world.network.fault(bob.host, 'block', 'tcp');
    const stream = await world.drive(alice.connect('bob@b.test:echo'));
    expect(stream.route).toBe('relay');
    const callerLeg = world.network.dials.find((d) => d.route === 'relay' && d.from === alice.host);
    const [listenerLeg] = listenerLegs(bob);
    expect(listenerLegs(bob)).toHaveLength(1);
    expect(listenerLeg!.at).toBeGreaterThanOrEqual(callerLeg!.at);
    await roundTrip(world, stream);
  });

  it('a lost relay-ready: the safety net opens the leg after RELAY_READY_SAFETY_MS and the relay still connects', async () => {
    const { alice, bob } = await pair();
    world.broker.loseRelayReady = true;
    world.network.fault(bob.host, 'block');
    const started = world.clock.now();
    const stream = await world.drive(alice.connect('bob@b.test:echo'));
    expect(stream.route).toBe('relay');
    const [listenerLeg] = listenerLegs(bob);
    expect(listenerLeg!.at - started).toBeGreaterThanOrEqual(RELAY_READY_SAFETY_MS);
    await roundTrip(world, stream);
  });
});
