import { randomBytes } from 'node:crypto';
import { PassThrough } from 'node:stream';
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

  it('gathers the chunks that arrive in one turn into one write to a socket', async () => {
    const [b, server] = await pairs.pair();
    const source = new PassThrough();
    // What reaches the kernel: one writev of everything the turn gathered, or one write per chunk.
    const writes: number[] = [];
    const writev = b._writev!.bind(b);
    const write = b._write.bind(b);
    b._writev = (chunks, cb) => (writes.push(chunks.length), writev(chunks, cb));
    b._write = (chunk, encoding, cb) => (writes.push(1), write(chunk, encoding, cb));
    const done = joinStreams(source, b);
    const atServer = readAll(server);
    const chunks = [1, 2, 3, 4].map(() => randomBytes(16 * 1024));
    await new Promise<void>((resolve) => setImmediate(resolve));
    for (const chunk of chunks) source.write(chunk);
    source.end();
    expect((await atServer).equals(Buffer.concat(chunks))).toBe(true);
    expect(writes[0]).toBe(4);
    server.end();
    await done;
  });

  it('pauses its source, as without gathering, once what waits for a socket that does not read passes its high-water mark', async () => {
    const [b, server] = await pairs.pair();
    server.pause();
    const source = new PassThrough({ highWaterMark: 64 * 1024 });
    joinStreams(source, b).catch(() => undefined);
    // One small chunk a turn, until the source refuses more: the tunnel stopped taking it.
    const chunk = Buffer.alloc(8 * 1024);
    let written = 0;
    for (let turn = 0; turn < 20_000 && source.write(chunk); turn += 1) {
      written += chunk.length;
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    await new Promise<void>((resolve) => setTimeout(resolve, 50));
    // The kernel's buffers take some MB on loopback; past them the socket holds at most its
    // high-water mark and one more chunk, not a turn's gathering (64 KiB) per stream.
    expect(b.writableLength).toBeLessThanOrEqual(b.writableHighWaterMark + chunk.length);
    expect(source.isPaused()).toBe(true);
    expect(written).toBeLessThan(20_000 * chunk.length);
    server.resume();
    server.destroy();
  });
});
