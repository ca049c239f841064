/**
 * A reader slower than the network still gets every byte: the listener sends
 * 2 MB and closes while the caller drains its stream 1 ms per chunk. Over
 * ptcp and relay, peer TLS runs on a JS stream; node's JSStreamSocket
 * destroyed the TLS socket when that stream closed, and the unread tail
 * (16 KiB) was lost.
 */
import { randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { Q2QNode } from '../../../q2q/negotiate/node';
import type { RouteName } from '../../../q2q/negotiate/types';
import { stopAll } from '../../helpers/cli';
import { sha256, startWorld, type World } from '../../helpers/q2q-world';

const PAYLOAD = 2 * 1024 * 1024;

let world: World;
let bob: Awaited<ReturnType<World['user']>>;
let alice: Awaited<ReturnType<World['user']>>;
beforeAll(async () => {
  world = await startWorld();
  bob = await world.user('bob@b.test');
  alice = await world.user('alice@a.test');
});
afterAll(async () => {
  await stopAll();
});

it.each([['tcp'], ['ptcp'], ['relay']] as Array<[RouteName]>)('a slow reader gets the whole tail over %s', async (route) => {
  const node = new Q2QNode(bob.identity, bob.options({ routes: [route] }));
  const sent: string[] = [];
  node.expose('tail', {
    allow: ['*'],
    onConnection: (s: Duplex) => {
      const out = randomBytes(PAYLOAD);
      sent.push(sha256(out));
      s.on('error', () => undefined);
      s.on('data', () => undefined);
      let ended = false;
      let finished = false;
      const done = () => { if (ended && finished) s.destroy(); };
      s.on('end', () => { ended = true; done(); });
      s.end(out, () => { finished = true; done(); });
    },
  });
  await node.start();
  const caller = new Q2QNode(alice.identity, alice.options({ routes: [route] }));
  try {
    for (let i = 0; i < 3; i++) {
      const stream = await caller.connect('bob@b.test:tail');
      expect(stream.route).toBe(route);
      const chunks: Buffer[] = [];
      const closedEarly = await new Promise<boolean>((resolve, reject) => {
        stream.on('data', (c: Buffer) => {
          chunks.push(c);
          stream.pause();
          setTimeout(() => stream.resume(), 1);
        });
        stream.once('end', () => resolve(false));
        stream.once('close', () => resolve(!stream.readableEnded));
        stream.once('error', reject);
        stream.end(randomBytes(64 * 1024));
      });
      expect({ closedEarly, bytes: Buffer.concat(chunks).length }).toEqual({ closedEarly: false, bytes: PAYLOAD });
      expect(sha256(Buffer.concat(chunks))).toBe(sent[i]);
    }
  } finally {
    await caller.stop();
    await node.stop();
  }
}, 60_000);
