import { randomBytes } from 'node:crypto';
import { joinStreams } from '../../../../agent/frontends/join';
import { readAll, socketPairs, type PairFactory } from '../socket-pair';

describe('joinStreams', () => {
  let pairs: PairFactory;
  beforeEach(async () => {
    pairs = await socketPairs();
  });
  afterEach(() => pairs.close());

  /** client <-> [a | join | b] <-> server */
  async function tunnel(head?: Buffer) {
    const [client, a] = await pairs.pair();
    const [b, server] = await pairs.pair();
    const done = joinStreams(a, b, { head });
    return { client, server, a, b, done };
  }

  it('carries bytes both ways, writes the head first, and keeps half-close in both directions', async () => {
    const { client, server, done } = await tunnel(Buffer.from('head:'));
    const payload = randomBytes(500_000);
    const atServer = readAll(server);
    client.end(payload);
    // The client's end reached the server while the server can still answer.
    const got = await atServer;
    expect(got.subarray(0, 5).toString()).toBe('head:');
    expect(got.subarray(5).equals(payload)).toBe(true);
    const atClient = readAll(client);
    server.end('the answer after the end');
    expect((await atClient).toString()).toBe('the answer after the end');
    await done;
  });

  it('a write error on one side tears down both legs', async () => {
    const { client, server, a, b, done } = await tunnel();
    server.on('error', () => undefined);
    const serverEnded = new Promise<void>((resolve) => server.once('end', () => resolve()));
    server.resume();
    // The client goes away completely; its FIN reaches the server as a half-close.
    client.destroy();
    await serverEnded;
    // The server still talks; writing to the vanished client fails, and that must end the whole tunnel.
    const talk = setInterval(() => server.write('late'), 20);
    try {
      await done;
    } finally {
      clearInterval(talk);
    }
    expect(a.destroyed).toBe(true);
    expect(b.destroyed).toBe(true);
  });
});
