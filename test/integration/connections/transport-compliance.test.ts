/**
 * The transport compliance suite (transport-suite.ts) run for every stream
 * Vertex carries: the in-memory reference pair, raw PTCP streams over
 * loopback UDP, and full Q2Q connections (peer TLS included) through real
 * server processes with the route forced to tcp, ptcp and relay.
 *
 * Last, each case is run against an in-memory pair broken in one way, and
 * must fail there: a case that cannot fail proves nothing.
 */
import type { TLSSocket } from 'node:tls';
import { Q2QNode } from '../../../q2q/negotiate/node';
import type { Q2QStream, RouteName } from '../../../q2q/negotiate/types';
import { PtcpSocket, type PtcpStream } from '../../../q2q/transport/ptcp-socket';
import { stopAll } from '../../helpers/cli';
import { startWorld, type World } from '../../helpers/q2q-world';
import { COMPLIANCE_CASES, memoryPair, transportSuite, within, type MakePair, type MemoryFaults, type StreamPair } from './transport-suite';

const MB = 1024 * 1024;
/** Bounds a listener-side arrival; the suite bounds the pair as a whole. */
const ARRIVAL_BOUND_MS = 30_000;

// ---- pairing the two ends ----

/** A listener's streams in arrival order. */
class ArrivalQueue<T> {
  readonly #ready: T[] = [];
  readonly #waiting: Array<(item: T) => void> = [];

  push(item: T): void {
    const waiter = this.#waiting.shift();
    if (waiter) waiter(item);
    else this.#ready.push(item);
  }

  next(): Promise<T> {
    const item = this.#ready.shift();
    if (item !== undefined) return Promise.resolve(item);
    return new Promise((resolve) => this.#waiting.push(resolve));
  }
}

/** Matches a listener's stream to the caller's by a key both ends compute. */
class Rendezvous<T> {
  readonly #arrived = new Map<string, T>();
  readonly #waiting = new Map<string, (item: T) => void>();

  arrive(key: string, item: T): void {
    const waiter = this.#waiting.get(key);
    this.#waiting.delete(key);
    if (waiter) waiter(item);
    else this.#arrived.set(key, item);
  }

  take(key: string): Promise<T> {
    const item = this.#arrived.get(key);
    this.#arrived.delete(key);
    if (item !== undefined) return Promise.resolve(item);
    return new Promise((resolve) => this.#waiting.set(key, resolve));
  }
}

/**
 * Both ends of a stream know its peer session's id (derived from the TLS
 * session, RFC 8446 section 7.5) and the stream's id within it, and no other
 * stream has both, so concurrent connects pair up without sending a byte the
 * cases would see.
 */
function pairingKey(stream: Q2QStream): string {
  if (stream.sessionId) return `${stream.sessionId}/${(stream as Q2QStream & { id: number }).id}`;
  // A stream that is its own TLS session (before peer sessions): the session's exporter alone.
  return (stream as unknown as TLSSocket).exportKeyingMaterial(32, 'vertex transport compliance pairing', Buffer.alloc(0)).toString('hex');
}

/** A pair that arrived on another route is released before the case fails. */
function expectRoute(ends: Q2QStream[], route: RouteName): void {
  const routes = ends.map((s) => s.route);
  if (routes.every((r) => r === route)) return;
  for (const s of ends) s.destroy();
  expect(routes).toEqual(ends.map(() => route));
}

/**
 * Pairs whose ends get crossed when two are made at once, the way a listener
 * that matched accepted streams to connects by arrival order could cross them.
 */
function crossedPairs(): MakePair {
  let unmatched: StreamPair | null = null;
  return async () => {
    const pair = memoryPair();
    if (unmatched) {
      [unmatched.b, pair.b] = [pair.b, unmatched.b];
      unmatched = null;
    } else {
      unmatched = pair;
    }
    return pair;
  };
}

// ---- the transports ----

transportSuite('in-memory pair', async () => memoryPair());

describe('raw PTCP streams over loopback', () => {
  let client: PtcpSocket;
  let server: PtcpSocket;
  const arrivals = new ArrivalQueue<PtcpStream>();
  // One handshake at a time: the accepted stream is then the one this connect made
  // (a PtcpStream does not expose the ids that would match them). The pairs still
  // share the two sockets and run at once, so demultiplexing is exercised.
  let turn: Promise<unknown> = Promise.resolve();

  beforeAll(async () => {
    client = await PtcpSocket.bind({ host: '127.0.0.1' });
    server = await PtcpSocket.bind({ host: '127.0.0.1' });
    server.listen((stream) => {
      stream.on('error', () => undefined);
      arrivals.push(stream);
    });
  });
  afterAll(async () => {
    await client.close();
    await server.close();
  });

  transportSuite('raw ptcp', () => {
    const made = turn.then(async (): Promise<StreamPair> => {
      const accepted = within(arrivals.next(), ARRIVAL_BOUND_MS, 'the listening PTCP socket accepting');
      accepted.catch(() => undefined);
      const a = await client.connect('127.0.0.1', server.address().port);
      const b = await accepted.catch((err: Error) => {
        a.destroy();
        throw err;
      });
      return { a, b, teardown: async () => undefined };
    });
    turn = made.catch(() => undefined);
    return made;
  });
});

describe('Q2Q connections through real servers', () => {
  let world: World;
  let alice: Awaited<ReturnType<World['user']>>;
  let bob: Awaited<ReturnType<World['user']>>;

  beforeAll(async () => {
    world = await startWorld();
    [alice, bob] = await Promise.all([world.user('alice@a.test'), world.user('bob@b.test')]);
  });
  afterAll(async () => {
    await stopAll();
  });

  for (const route of ['tcp', 'ptcp', 'relay'] as const) {
    describe(`routes forced to ${route}`, () => {
      let listener: Q2QNode;
      let caller: Q2QNode;
      const arrivals = new Rendezvous<Q2QStream>();

      beforeAll(async () => {
        // Both ends allow only this route, so nothing can fall back to another.
        listener = new Q2QNode(bob.identity, bob.options({ routes: [route] }));
        listener.expose('compliance', {
          allow: ['alice@a.test'],
          onConnection: (stream) => {
            stream.on('error', () => undefined);
            arrivals.arrive(pairingKey(stream), stream);
          },
        });
        await listener.start();
        // 20 handshakes at once on 2 shared cores: a generous connect deadline.
        caller = new Q2QNode(alice.identity, alice.options({ routes: [route], connectTimeoutMs: 60_000 }));
      });
      afterAll(async () => {
        await caller?.stop();
        await listener?.stop();
      });

      transportSuite(`q2q over ${route}`, async () => {
        const a = await caller.connect('bob@b.test:compliance');
        const b = await within(arrivals.take(pairingKey(a)), ARRIVAL_BOUND_MS, "the listener's end of the connection").catch((err: Error) => {
          a.destroy();
          throw err;
        });
        expectRoute([a, b], route);
        return { a, b, teardown: async () => undefined };
      });
    });
  }
});

describe('each case fails on a pair broken in its way', () => {
  const flipByteAt = (at: number): MemoryFaults['tamper'] => (chunk, offset) => {
    if (at < offset || at >= offset + chunk.length) return chunk;
    const copy = Buffer.from(chunk);
    copy.writeUInt8(copy.readUInt8(at - offset) ^ 0xff, at - offset);
    return copy;
  };
  const broken = (faults: MemoryFaults): MakePair => async () => memoryPair(faults);
  const destroyStaysLocal = broken({ destroyStaysLocal: true });
  // Each broken pair, and how the case must report it: failing for another reason would not count.
  const faultFor: Record<string, [string, MakePair, RegExp]> = {
    echo: ['flips the first byte', broken({ tamper: flipByteAt(0) }), /"firstDifference": 0/],
    bulk: ['flips the byte at 8 MB', broken({ tamper: flipByteAt(8 * MB) }), /"firstDifference": 8388608/],
    'half-close': ['ends both directions when one ends', broken({ endEndsBoth: true }), /a open after its end reached b/],
    'slow-readers': ['drops what arrives while 1 MB is unread', broken({ overflowAt: MB }), /"firstDifference": 1048576/],
    'many-pairs': ['crosses the ends of pairs made at once', crossedPairs(), /"up": false/],
    // 65537-byte writes shrink to 1 byte and 65536-byte writes to nothing: 4 × 64 KiB go missing.
    'odd-sizes': ['keeps 16 bits of a write length', broken({ tamper: (chunk) => chunk.subarray(0, chunk.length & 0xffff) }), /"bytes": 236586/],
    'abort-a-mid-transfer': ['passes a destroy across as a clean end', broken({ destroyEndsPeer: true }), /b saw a clean end/],
    'abort-b-mid-transfer': ['passes a destroy across as a clean end', broken({ destroyEndsPeer: true }), /a saw a clean end/],
  };

  // Every destroy case (destroy-<destroyer>-while-<survivor>-<activity>) on a pair that keeps a destroy to itself.
  for (const c of COMPLIANCE_CASES) {
    const destroy = /^destroy-(a|b)-while-(a|b)-/.exec(c.id);
    if (destroy) faultFor[c.id] = ['does not pass a destroy across', destroyStaysLocal, new RegExp(`hang: ${destroy[2]} closing after ${destroy[1]} was destroyed`)];
  }

  it.each(COMPLIANCE_CASES.map((c) => [c.id, faultFor[c.id]?.[0] ?? '(none given)', c] as const))('%s fails on a pair that %s', async (id, _fault, c) => {
    const fault = faultFor[id];
    // A new case must come with a broken pair it fails on.
    expect(fault).toBeDefined();
    const [, makePair, report] = fault!;
    await expect(c.run(makePair, { hangMs: 2_000 })).rejects.toThrow(report);
  }, 30_000);
});
