/**
 * Peer sessions through Q2QNode (issue 12) against real server processes:
 * the first connection to a peer sets a session up, later ones are streams
 * on it (no inbound through the listener's server, no new TLS handshake);
 * every stream is checked against its service's allow list on the session;
 * both ends show the session in status(); the per-connection path stays
 * available with peerSessions: false.
 */
import { listenQ2Q, Q2QNode, type Q2QStream } from '../../../q2q';
import { MUX_DEFAULT_WINDOW } from '../../../q2q/transport/mux';
import { stopAll } from '../../helpers/cli';
import { untilTrue } from '../../helpers/net';
import { echo, exchange, startWorld, type World } from '../../helpers/q2q-world';

jest.setTimeout(120_000);

let world: World;
let alice: Awaited<ReturnType<World['user']>>;
let bob: Awaited<ReturnType<World['user']>>;
const nodes: Q2QNode[] = [];

beforeAll(async () => {
  world = await startWorld();
  [alice, bob] = await Promise.all([world.user('alice@a.test'), world.user('bob@b.test')]);
});

afterAll(async () => {
  await Promise.all(nodes.map((n) => n.stop()));
  await stopAll();
});

function track<T extends Q2QNode>(node: T): T {
  nodes.push(node);
  return node;
}

async function roundTrip(stream: Q2QStream, text: string): Promise<string> {
  stream.on('error', () => undefined);
  return (await exchange(stream, Buffer.from(text))).toString();
}

describe('peer sessions (issue 12)', () => {
  it('a second connection to the same peer is a stream on the first one\'s session, even with the server gone', async () => {
    const listener = track(await listenQ2Q(bob.identity, {
      echo: { allow: ['alice@a.test'], onConnection: echo },
      other: { allow: ['alice@a.test'], onConnection: echo },
    }, bob.options({ routes: ['tcp'], peerSessions: true })));
    const caller = track(new Q2QNode(alice.identity, alice.options({ routes: ['tcp'], peerSessions: true })));
    expect(caller.peerSessions).toBe(true);

    const first = await caller.connect('bob@b.test:echo');
    expect(first.sessionId).toMatch(/^[0-9a-f]{16}$/);
    expect(first.route).toBe('tcp');
    const second = await caller.connect('bob@b.test:echo');
    // Same session, both connections open at once, each with its own bytes.
    expect(second.sessionId).toBe(first.sessionId);
    const [one, two] = await Promise.all([roundTrip(first, 'first'), roundTrip(second, 'second')]);
    expect([one, two]).toEqual(['first', 'second']);

    // Both ends list the one session, with its route and bytes.
    const [mine] = caller.status().sessions ?? [];
    expect(caller.status().sessions).toHaveLength(1);
    expect(mine).toMatchObject({ id: first.sessionId, peer: 'bob@b.test', role: 'caller', route: 'tcp', state: 'open' });
    expect(mine?.bytesOut).toBeGreaterThanOrEqual('firstsecond'.length);
    await untilTrue('the listener counting the session bytes', () => listener.status().sessions?.[0]?.bytesIn === 'firstsecond'.length, 30_000);
    expect(listener.status().sessions).toMatchObject([{ id: first.sessionId, peer: 'alice@a.test', role: 'listener', route: 'tcp' }]);

    // No inbound round trip: with b.test's server stopped, a third connection still opens.
    await world.b.proc.stop('SIGKILL');
    const third = await caller.connect('bob@b.test:echo');
    expect(third.sessionId).toBe(first.sessionId);
    expect(await roundTrip(third, 'third')).toBe('third');
    await Promise.all([caller.stop(), listener.stop()]);
  });
});

describe('streams on one session, and the per-stream allow check', () => {
  let b: World['b'];
  beforeAll(async () => {
    // The test above stopped b.test's server: a fresh world for the rest.
    world = await startWorld();
    [alice, bob] = await Promise.all([world.user('alice@a.test'), world.user('bob@b.test')]);
    b = world.b;
  });

  it('a stalled reader stalls only its own stream: a second one moves 10 MB meanwhile, and the stalled one then gets every byte', async () => {
    const MB = 1024 * 1024;
    const big = Buffer.alloc(10 * MB, 7);
    const listener = track(await listenQ2Q(bob.identity, {
      // Writes 10 MB and ends, whatever the reader does.
      source: { allow: ['alice@a.test'], onConnection: (s) => { s.on('error', () => undefined); s.resume(); s.end(big); } },
    }, bob.options({ routes: ['tcp'], peerSessions: true })));
    const caller = track(new Q2QNode(alice.identity, alice.options({ routes: ['tcp'], peerSessions: true })));
    const stalled = await caller.connect('bob@b.test:source');
    stalled.on('error', () => undefined);
    stalled.pause();
    const fast = await caller.connect('bob@b.test:source');
    expect(fast.sessionId).toBe(stalled.sessionId);
    // The fast stream's 10 MB arrive while the stalled one holds its window and reads nothing.
    const got = await exchange(fast, Buffer.alloc(0));
    expect(got.length).toBe(big.length);
    // It holds at most its window, well short of the 10 MB sent.
    expect(stalled.readableLength).toBeLessThanOrEqual(MUX_DEFAULT_WINDOW);
    expect(MUX_DEFAULT_WINDOW).toBeLessThan(big.length / 2);
    // Explicitly paused: a 'data' listener alone would not start it again.
    const resting = exchange(stalled, Buffer.alloc(0));
    stalled.resume();
    const rest = await resting;
    expect(rest.equals(big)).toBe(true);
    await Promise.all([caller.stop(), listener.stop()]);
  });

  it('a stream to a service the peer may no longer use is refused on the live session, the session stays up', async () => {
    const listener = track(await listenQ2Q(bob.identity, {
      echo: { allow: ['alice@a.test'], onConnection: echo },
      other: { allow: ['alice@a.test'], onConnection: echo },
    }, bob.options({ routes: ['tcp'], peerSessions: true })));
    const caller = track(new Q2QNode(alice.identity, alice.options({ routes: ['tcp'], peerSessions: true })));
    const first = await caller.connect('bob@b.test:other');
    expect(await roundTrip(first, 'x')).toBe('x');
    const echoStream = await caller.connect('bob@b.test:echo');
    expect(echoStream.sessionId).toBe(first.sessionId);

    // bob narrows "other" to himself; "echo" still admits alice, so the session stays.
    listener.expose('other', { allow: ['bob@b.test'], onConnection: echo });
    await expect(caller.connect('bob@b.test:other')).rejects.toMatchObject({ code: 'Denied' });
    expect(caller.status().sessions).toHaveLength(1);
    expect(await roundTrip(echoStream, 'still here')).toBe('still here');

    // Nothing left for alice: the session is drained and the next connect is refused.
    listener.expose('echo', { allow: ['bob@b.test'], onConnection: echo });
    await untilTrue('the session drained', () => (caller.status().sessions ?? []).every((s) => s.state !== 'open'), 30_000);
    await expect(caller.connect('bob@b.test:echo')).rejects.toMatchObject({ code: 'Denied' });
    expect(b.port).toBeGreaterThan(0);
    await Promise.all([caller.stop(), listener.stop()]);
  });

  it('with peerSessions: false both ends use the per-connection path (one TLS session per connection)', async () => {
    const listener = track(await listenQ2Q(bob.identity, { echo: { allow: ['alice@a.test'], onConnection: echo } }, bob.options({ routes: ['tcp'], peerSessions: false })));
    const caller = track(new Q2QNode(alice.identity, alice.options({ routes: ['tcp'], peerSessions: false })));
    const stream = await caller.connect('bob@b.test:echo');
    expect(stream.sessionId).toBeUndefined();
    expect(await roundTrip(stream, 'old')).toBe('old');
    expect(caller.status().sessions).toEqual([]);
    await Promise.all([caller.stop(), listener.stop()]);
  });
});
