/**
 * The TCP close policy (q2q/transport/tcp-close.ts) on loopback, and the
 * node behaviour it rests on. If the first case fails after a node upgrade,
 * node (its libuv) now reports a reset that comes with unread bytes as an
 * error: endedByReset is then belt and braces, and tcp-close.ts's comment
 * and carryAbortsOverTcp's receive side should be revisited.
 */
import * as net from 'node:net';
import { abortTcp, endedByReset } from '../../../../q2q/transport/tcp-close';

const servers: net.Server[] = [];
const sockets: net.Socket[] = [];

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
});

/** A connected pair; the accepted end is paused and half-open, as the relay's legs are. */
async function pair(): Promise<{ client: net.Socket; accepted: net.Socket }> {
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const client = net.connect({ host: '127.0.0.1', port: (server.address() as net.AddressInfo).port, allowHalfOpen: true });
  sockets.push(client);
  client.on('error', () => undefined);
  await new Promise((resolve) => client.once('connect', resolve));
  const a = await accepted;
  sockets.push(a);
  return { client, accepted: a };
}

/** What the accepted end reports, in order, until it ends or closes; then the probe's verdict. */
async function watchEnd(socket: net.Socket, probe: (s: net.Socket) => Promise<boolean>): Promise<{ seen: string[]; reset: boolean | null }> {
  const seen: string[] = [];
  socket.on('data', () => undefined);
  socket.on('error', (err: NodeJS.ErrnoException) => seen.push(`error ${err.code}`));
  const ended = await new Promise<boolean>((resolve) => {
    socket.once('end', () => { seen.push('end'); resolve(true); });
    socket.once('close', () => { seen.push('close'); resolve(false); });
    socket.resume();
  });
  return { seen, reset: ended ? await probe(socket) : null };
}

async function sendThen(client: net.Socket, finish: (c: net.Socket) => void): Promise<void> {
  client.write(Buffer.alloc(256 * 1024, 1));
  // The bytes sit unread in the accepted end's receive queue when the close arrives.
  await new Promise((r) => setTimeout(r, 100));
  finish(client);
  await new Promise((r) => setTimeout(r, 100));
}

describe('tcp close policy', () => {
  it('node behaviour: a reset that arrives with unread bytes reads as a plain end (libuv POLLHUP)', async () => {
    const { client, accepted } = await pair();
    await sendThen(client, (c) => c.resetAndDestroy());
    const { seen } = await watchEnd(accepted, async () => true);
    expect(seen[0]).toBe('end');
  });

  it('endedByReset tells that end from a clean one', async () => {
    const reset = await pair();
    await sendThen(reset.client, (c) => c.resetAndDestroy());
    expect((await watchEnd(reset.accepted, endedByReset)).reset).toBe(true);

    const clean = await pair();
    await sendThen(clean.client, (c) => c.end());
    expect((await watchEnd(clean.accepted, endedByReset)).reset).toBe(false);
    // The clean end left our direction open: it still carries bytes.
    const got = new Promise<Buffer>((resolve) => clean.client.once('data', resolve));
    clean.accepted.write('still open');
    expect((await got).toString()).toBe('still open');
  });

  it('abortTcp resets an open connection, and closes one whose end is under way without hanging', async () => {
    const open = await pair();
    const seen = watchEnd(open.accepted, async () => true);
    abortTcp(open.client);
    const result = await seen;
    // A reset: an error or a close without an end, never a clean end alone.
    expect(result.seen.join(',')).toMatch(/error ECONNRESET|^close/);

    const ending = await pair();
    ending.client.end('last words');
    abortTcp(ending.client);
    await new Promise<void>((resolve) => (ending.client.closed ? resolve() : ending.client.once('close', () => resolve())));
    expect(ending.client.destroyed).toBe(true);
  });
});
