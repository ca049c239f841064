/**
 * Aborts over TLS on TCP (carryAbortsOverTcp, used by the tcp route and by
 * both ends of relay legs), on loopback with plain node:tls wired the way
 * peer-tls.ts wires it: an abort must reach the other end as an abort even
 * in the middle of a transfer, where libuv reports the reset as a plain end;
 * the reset must neither crash node (a TLS write still pending) nor leak the
 * socket (a shutdown under way); and clean closes must stay clean.
 */
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { createDomainCa } from '../../../q2q/identity/certificates';
import { carryAbortsOverTcp } from '../../../q2q/transport/tcp-close';
import { within } from './transport-suite';

const MB = 1024 * 1024;
const HANG_MS = 20_000;

interface End {
  tls: tls.TLSSocket;
  tcp: net.Socket;
  /** What the TLS socket reported, in order: 'end', 'error <code>', 'close'. */
  seen: string[];
  closed: Promise<void>;
  tcpClosed: Promise<void>;
}

let context: tls.SecureContext;
const servers: net.Server[] = [];
const ends: End[] = [];

beforeAll(async () => {
  const ca = await createDomainCa('abort.test');
  context = tls.createSecureContext({ key: ca.keyPem, cert: ca.certPem, minVersion: 'TLSv1.3' });
});
afterEach(async () => {
  for (const end of ends.splice(0)) {
    end.tls.destroy();
    end.tcp.destroy();
  }
  await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
});

function watch(socket: tls.TLSSocket, tcp: net.Socket): End {
  const seen: string[] = [];
  socket.on('end', () => seen.push('end'));
  socket.on('error', (err: Error & { code?: string }) => seen.push(`error ${err.code ?? err.message}`));
  const closed = new Promise<void>((resolve) => socket.once('close', () => {
    seen.push('close');
    resolve();
  }));
  const tcpClosed = new Promise<void>((resolve) => (tcp.closed ? resolve() : tcp.once('close', () => resolve())));
  tcp.on('error', () => undefined);
  const end = { tls: socket, tcp, seen, closed, tcpClosed };
  ends.push(end);
  return end;
}

/**
 * A connected pair: a is the TLS client, b the server, both carrying aborts
 * over their TCP sockets. `atHandshake` runs in the client's secureConnect
 * handler, where node.ts's connect race may destroy a losing attempt.
 */
async function tlsPair(atHandshake?: (a: End) => void): Promise<{ a: End; b: End }> {
  const server = net.createServer({ allowHalfOpen: true });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<End>((resolve) => server.once('connection', (raw: net.Socket) => {
    const socket = new tls.TLSSocket(raw, { isServer: true, secureContext: context });
    carryAbortsOverTcp(socket, raw);
    resolve(watch(socket, raw));
  }));
  const raw = net.connect({ host: '127.0.0.1', port: (server.address() as net.AddressInfo).port, allowHalfOpen: true });
  const halfOpen = { allowHalfOpen: true } as tls.ConnectionOptions;
  const socket = tls.connect({ ...halfOpen, socket: raw, rejectUnauthorized: false });
  const a = watch(socket, raw);
  await within(new Promise<void>((resolve) => socket.once('secureConnect', () => {
    carryAbortsOverTcp(socket, raw);
    atHandshake?.(a);
    resolve();
  })), HANG_MS, 'the TLS handshake');
  const b = await within(accepted, HANG_MS, 'the server accepting');
  if (!atHandshake) await within(new Promise((resolve) => b.tls.once('secure', resolve)), HANG_MS, "the server's handshake");
  return { a, b };
}

/** Waits for `end` to close; a hang reports what it saw meanwhile. */
function closing(end: End, what: string): Promise<void> {
  return within(end.closed, HANG_MS, what).catch((err: Error) => {
    throw new Error(`${err.message}; it saw ${end.seen.join(', ') || 'nothing'}`);
  });
}

/** Writes 1 MB pieces until the socket closes (bounded at 4 GB: the hang bound fires long before). */
async function flood(socket: tls.TLSSocket): Promise<void> {
  const piece = randomBytes(MB);
  for (let written = 0; written < 4096 * MB && !socket.destroyed; written += MB) {
    if (!socket.write(piece)) await new Promise<void>((resolve) => {
      const done = (): void => {
        socket.off('drain', done);
        socket.off('close', done);
        resolve();
      };
      socket.once('drain', done);
      socket.once('close', done);
    });
  }
}

function received(end: End, bytes: number): Promise<void> {
  let count = 0;
  return new Promise((resolve) => end.tls.on('data', (chunk: Buffer) => {
    count += chunk.length;
    if (count >= bytes) resolve();
  }));
}

function readAll(end: End): Promise<Buffer> {
  const chunks: Buffer[] = [];
  end.tls.on('data', (chunk: Buffer) => chunks.push(chunk));
  return new Promise((resolve, reject) => {
    end.tls.once('end', () => resolve(Buffer.concat(chunks)));
    end.tls.once('close', () => reject(new Error(`closed without an end: ${end.seen.join(', ')}`)));
  });
}

describe('an abort reaches the other end as an abort', () => {
  // Several rounds: whether a reset lands on unread bytes depends on timing, and
  // without the check at the end most rounds ended cleanly.
  it.each([['the client', 'a'], ['the server', 'b']] as const)('%s destroyed in the middle of a flood: the reader sees an error and a close, never an end', async (_who, destroyer) => {
    const outcomes: Array<{ end: boolean; reset: boolean; close: boolean }> = [];
    for (let round = 0; round < 5; round++) {
      const pair = await tlsPair();
      const gone = pair[destroyer];
      const left = destroyer === 'a' ? pair.b : pair.a;
      const flowing = received(left, 4 * MB);
      flood(gone.tls).catch(() => undefined);
      await within(flowing, HANG_MS, 'the first 4 MB');
      gone.tls.destroy();
      await closing(left, 'the reader closing');
      outcomes.push({
        end: left.seen.includes('end'),
        reset: left.seen.some((s) => s === 'error ConnectionLost' || s === 'error ECONNRESET'),
        close: left.seen.includes('close'),
      });
    }
    expect(outcomes).toEqual(outcomes.map(() => ({ end: false, reset: true, close: true })));
  }, 5 * 3 * HANG_MS);

  // node:tls still has handshake bytes to write then; reset under them, it crashed (SIGSEGV).
  it('a destroy in the same turn as the handshake completes (a losing connect attempt) does not crash node', async () => {
    const { a, b } = await tlsPair((client) => client.tls.destroy());
    await within(a.tcpClosed, HANG_MS, "a's TCP socket closing");
    await closing(b, 'b closing');
    expect(b.seen).not.toContain('end');
  });

  it('a destroy with a large TLS write still pending does not crash node, and the peer sees the abort', async () => {
    const { a, b } = await tlsPair();
    b.tls.resume();
    a.tls.write(randomBytes(8 * MB));
    a.tls.destroy();
    await within(a.tcpClosed, HANG_MS, "a's TCP socket closing");
    await closing(b, 'b closing');
    expect(b.seen).not.toContain('end');
  });
});

describe('closes after end()', () => {
  // libuv refuses that reset (EINVAL) and node leaks the socket: the process never exits.
  it('a destroy while end() is shutting the socket down still closes the TCP socket, and the peer closes', async () => {
    const { a, b } = await tlsPair();
    b.tls.resume();
    // Every byte is with TLS once the write completes; end() then starts the TCP shutdown at once.
    a.tls.write(randomBytes(64 * 1024), () => {
      a.tls.end();
      a.tls.destroy();
    });
    await within(Promise.all([a.tcpClosed, a.closed, b.closed]), HANG_MS, "a's TCP socket and both ends closing");
  });

  it('a clean end both ways: every byte, an end at each side, no error', async () => {
    const { a, b } = await tlsPair();
    const up = randomBytes(MB);
    const down = randomBytes(MB);
    const [atB, atA] = [readAll(b), readAll(a)];
    a.tls.end(up);
    b.tls.end(down);
    expect((await within(atB, HANG_MS, 'b reading')).equals(up)).toBe(true);
    expect((await within(atA, HANG_MS, 'a reading')).equals(down)).toBe(true);
    await within(Promise.all([a.closed, b.closed, a.tcpClosed, b.tcpClosed]), HANG_MS, 'both closing');
    expect({ a: a.seen, b: b.seen }).toEqual({ a: ['end', 'close'], b: ['end', 'close'] });
  });

  // After our own FIN the kernel counts the connection closed once the peer's FIN
  // arrives, exactly as after a reset: that end must stay clean.
  it('an end that comes after our own end is clean', async () => {
    const { a, b } = await tlsPair();
    const down = randomBytes(MB);
    const atA = readAll(a);
    a.tls.end();
    await within(readAll(b), HANG_MS, "b reading a's end");
    b.tls.end(down);
    expect((await within(atA, HANG_MS, 'a reading to the end')).equals(down)).toBe(true);
    await within(Promise.all([a.closed, b.closed]), HANG_MS, 'both closing');
    expect({ a: a.seen, b: b.seen }).toEqual({ a: ['end', 'close'], b: ['end', 'close'] });
  });
});
