/**
 * The stream multiplexer (q2q/transport/mux.ts): its streams pass the
 * transport compliance suite over an in-memory channel and over TLS on
 * loopback TCP, and the session keeps its promises: per-stream flow control
 * (a stalled reader stalls only its stream), refusals with codes, GOAWAY,
 * streams opened by either side, keepalive and a dead peer noticed by its
 * silence, and a peer that breaks the rules closes the session.
 */
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import { isVertexError, vertexError } from '../../../../q2q/errors';
import { createDomainCa } from '../../../../q2q/identity';
import { MuxSession, MuxStream, MUX_DATA_FRAME } from '../../../../q2q/transport/mux';
import { ManualClock } from '../../../../q2q/util/clock';
import { encodeFields, encodeFrame, encodeHeader, FRAME } from '../../../../q2q/wire/mux-frame';
import { memoryPair, transportSuite, type StreamPair } from '../../../integration/connections/transport-suite';

const KB = 1024;
const MB = 1024 * 1024;

/** Two sessions over one channel; B accepts every stream and hands it to whoever waits for that id. */
class SessionPair {
  readonly a: MuxSession;
  readonly b: MuxSession;
  readonly #accepted = new Map<number, MuxStream>();
  readonly #waiting = new Map<number, (s: MuxStream) => void>();

  constructor(x: Duplex, y: Duplex, opts: { window?: number; clock?: ManualClock } = {}) {
    const onOpen = (request: { id: number; accept(): MuxStream }) => {
      const stream = request.accept();
      // Closing a session aborts its streams with an error; the tests look at it where it matters.
      stream.on('error', () => undefined);
      const waiter = this.#waiting.get(request.id);
      this.#waiting.delete(request.id);
      if (waiter) waiter(stream);
      else this.#accepted.set(request.id, stream);
    };
    this.a = new MuxSession(x, { initiator: true, onOpen, ...opts });
    this.b = new MuxSession(y, { initiator: false, onOpen, ...opts });
    this.a.on('close', () => undefined);
    this.b.on('close', () => undefined);
  }

  take(id: number): Promise<MuxStream> {
    const s = this.#accepted.get(id);
    this.#accepted.delete(id);
    if (s) return Promise.resolve(s);
    return new Promise((resolve) => this.#waiting.set(id, resolve));
  }

  async pair(service = 'echo'): Promise<StreamPair> {
    const a = await this.a.open(service);
    a.on('error', () => undefined);
    const b = await this.take(a.id);
    return { a, b, teardown: async () => undefined };
  }

  close(): void {
    this.a.close();
    this.b.close();
  }
}

function memoryChannel(): [Duplex, Duplex] {
  const { a, b } = memoryPair();
  return [a, b];
}

async function tlsChannel(): Promise<{ channel: [Duplex, Duplex]; close: () => void }> {
  const { keyPem, certPem } = await createDomainCa('mux.test');
  let accepted!: (s: tls.TLSSocket) => void;
  const serverSide = new Promise<tls.TLSSocket>((resolve) => { accepted = resolve; });
  const server = tls.createServer({ key: keyPem, cert: certPem, minVersion: 'TLSv1.3' }, (s) => accepted(s));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const client = tls.connect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port, rejectUnauthorized: false });
  await new Promise((resolve) => client.once('secureConnect', resolve));
  const other = await serverSide;
  return { channel: [client, other], close: () => { client.destroy(); other.destroy(); server.close(); } };
}

describe('mux streams over an in-memory channel', () => {
  let pair: SessionPair;
  beforeAll(() => {
    pair = new SessionPair(...memoryChannel());
  });
  afterAll(() => pair.close());
  transportSuite('mux over memory', () => pair.pair());
});

describe('mux streams over TLS on loopback TCP', () => {
  let pair: SessionPair;
  let close: () => void;
  beforeAll(async () => {
    const t = await tlsChannel();
    close = t.close;
    pair = new SessionPair(...t.channel);
  });
  afterAll(() => {
    pair.close();
    close();
  });
  transportSuite('mux over tls', () => pair.pair());
});

/** Resolves with everything read up to 'end'. */
function readAll(stream: Duplex): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.once('end', () => resolve(Buffer.concat(chunks)));
    stream.once('error', reject);
  });
}

/** Writes `data` honouring back-pressure, then ends. */
async function writeAll(stream: Duplex, data: Buffer): Promise<void> {
  for (let at = 0; at < data.length; at += 64 * KB) {
    if (!stream.write(data.subarray(at, at + 64 * KB))) await new Promise((resolve) => stream.once('drain', resolve));
  }
  await new Promise<void>((resolve) => stream.end(resolve));
}

describe('mux session', () => {
  it('a reader that takes the whole window in one read() gets more (credit is counted after the read)', async () => {
    // Node calls _read before it removes what read() returns from the buffer. Credit counted
    // there saw a full buffer, returned nothing, and with the sender out of credit no DATA
    // ever came to call _read again: vertex send of 200 MB stalled at about 100 MB.
    const window = 64 * KB;
    const pair = new SessionPair(...memoryChannel(), { window });
    try {
      const { a, b } = await pair.pair('bulk');
      const data = randomBytes(3 * window);
      const writing = writeAll(a, data);
      writing.catch(() => undefined);
      // Paused mode, nothing read until the sender has used every byte of its credit.
      const full = new Promise<void>((resolve) => {
        const check = (): void => {
          if (b.readableLength >= window) resolve();
          else setImmediate(check);
        };
        check();
      });
      await full;
      const got: Buffer[] = [];
      const done = new Promise<void>((resolve, reject) => {
        const drain = (): void => {
          for (let chunk = b.read() as Buffer | null; chunk !== null; chunk = b.read() as Buffer | null) got.push(chunk);
        };
        b.on('readable', drain);
        b.once('end', () => resolve());
        b.once('error', reject);
        drain();
      });
      await done;
      expect(Buffer.concat(got).equals(data)).toBe(true);
      await writing;
    } finally {
      pair.close();
    }
  });

  it('a stalled reader holds back only its own stream, and at most one window of it', async () => {
    const window = 256 * KB;
    const pair = new SessionPair(...memoryChannel(), { window });
    try {
      const slow = await pair.pair('slow');
      const fast = await pair.pair('fast');
      // The slow stream's reader never reads; its writer keeps offering 4 MB.
      slow.b.pause();
      let offered = 0;
      const offer = randomBytes(64 * KB);
      const stuck = (async () => {
        while (offered < 4 * MB && !slow.a.destroyed) {
          offered += offer.length;
          if (!slow.a.write(offer)) {
            // Whichever comes first; the other listener goes too, so waits do not pile up on the stream.
            await new Promise<void>((resolve) => {
              const done = (): void => { slow.a.off('drain', done); slow.a.off('close', done); resolve(); };
              slow.a.once('drain', done);
              slow.a.once('close', done);
            });
          }
        }
      })();
      stuck.catch(() => undefined);
      const data = randomBytes(8 * MB);
      const [got] = await Promise.all([readAll(fast.b), writeAll(fast.a, data)]);
      expect(got.equals(data)).toBe(true);
      // The stalled stream got no further than its window (plus what sits in its writable buffer).
      expect(slow.b.readableLength).toBeLessThanOrEqual(window);
      expect(slow.b.readableLength).toBeGreaterThan(0);
      expect(offered).toBeLessThan(4 * MB);
      // Once it reads, the rest arrives.
      const rest = readAll(slow.b);
      slow.b.resume();
      await stuck;
      slow.a.end();
      expect((await rest).length).toBe(offered);
    } finally {
      pair.close();
    }
  });

  it('a refused open rejects with the refusal code, and the session goes on', async () => {
    const [x, y] = memoryChannel();
    const a = new MuxSession(x, { initiator: true });
    const b = new MuxSession(y, {
      initiator: false,
      onOpen: (r) => (r.service === 'secret' ? r.refuse(vertexError('Denied', 'bob@b.test:secret does not allow alice@a.test')) : r.accept().on('error', () => undefined).end('hi')),
    });
    a.on('close', () => undefined);
    b.on('close', () => undefined);
    try {
      await expect(a.open('secret')).rejects.toMatchObject({ code: 'Denied', message: expect.stringContaining('does not allow') });
      const s = await a.open('open');
      s.on('error', () => undefined);
      expect((await readAll(s)).toString()).toBe('hi');
      s.end();
      expect(a.streamCount + b.streamCount).toBeLessThanOrEqual(2);
    } finally {
      a.close();
      b.close();
    }
  });

  it('accept({ flush: true }) puts the ACCEPT on the channel at once; plain accept() leaves it for the end of the turn', async () => {
    const [x, y] = memoryChannel();
    // What reaches the channel's own write (past the session's cork), as it happens.
    const written: Buffer[] = [];
    const write = y._write.bind(y);
    y._write = (chunk: Buffer, encoding: BufferEncoding, callback: (err?: Error | null) => void) => {
      written.push(chunk);
      write(chunk, encoding, callback);
    };
    if (y._writev) {
      const writev = y._writev.bind(y);
      y._writev = (chunks, callback) => {
        for (const c of chunks) written.push(c.chunk as Buffer);
        writev(chunks, callback);
      };
    }
    // A write carries whole frames, one or several (the frames of one turn go together).
    const framesIn = (c: Buffer): number[] => {
      const types: number[] = [];
      for (let at = 0; at + 9 <= c.length; at += 9 + c.readUInt32BE(at + 5)) types.push(c[at] as number);
      return types;
    };
    const acceptOnWire = () => written.some((c) => framesIn(c).includes(FRAME.ACCEPT));
    const seen: Record<string, boolean> = {};
    const a = new MuxSession(x, { initiator: true });
    const b = new MuxSession(y, {
      initiator: false,
      onOpen: (r) => {
        written.length = 0;
        const stream = r.accept(r.service === 'now' ? { flush: true } : undefined);
        seen[r.service] = acceptOnWire();
        stream.on('error', () => undefined).end('x');
      },
    });
    a.on('close', () => undefined);
    b.on('close', () => undefined);
    try {
      for (const service of ['now', 'later']) {
        const s = await a.open(service);
        s.on('error', () => undefined);
        expect((await readAll(s)).toString()).toBe('x');
        s.end();
      }
      expect(seen).toEqual({ now: true, later: false });
    } finally {
      a.close();
      b.close();
    }
  });

  it('the side that did not set the session up opens streams too (even ids)', async () => {
    const pair = new SessionPair(...memoryChannel());
    try {
      const fromB = await pair.b.open('back');
      fromB.on('error', () => undefined);
      expect(fromB.id % 2).toBe(0);
      const atA = await pair.take(fromB.id);
      fromB.end('from b');
      expect((await readAll(atA)).toString()).toBe('from b');
    } finally {
      pair.close();
    }
  });

  it('after GOAWAY no new stream opens either way, open ones finish, then idle', async () => {
    const pair = new SessionPair(...memoryChannel());
    try {
      const open = await pair.pair();
      const goaway = new Promise((resolve) => pair.a.once('goaway', resolve));
      pair.b.goAway('NotExposed', 'nothing left for you');
      await expect(goaway).resolves.toMatchObject({ code: 'NotExposed' });
      expect(pair.a.usable).toBe(false);
      await expect(pair.a.open('more')).rejects.toMatchObject({ code: 'ConnectionLost' });
      await expect(pair.b.open('more')).rejects.toMatchObject({ code: 'ConnectionLost' });
      const idle = new Promise<void>((resolve) => pair.b.once('idle', () => resolve()));
      const got = readAll(open.b);
      open.a.end('last words');
      expect((await got).toString()).toBe('last words');
      open.b.end();
      await idle;
    } finally {
      pair.close();
    }
  });

  it('ping measures a round trip', async () => {
    const pair = new SessionPair(...memoryChannel());
    try {
      await expect(pair.a.ping()).resolves.toBeGreaterThanOrEqual(0);
    } finally {
      pair.close();
    }
  });

  it('closing the session aborts every stream at both ends, never as a clean end', async () => {
    const pair = new SessionPair(...memoryChannel());
    const { a, b } = await pair.pair();
    a.on('error', () => undefined);
    const ended = jest.fn();
    b.on('end', ended);
    const closedB = new Promise<Error | undefined>((resolve) => b.once('error', resolve));
    a.write('partial');
    pair.a.close(vertexError('CertificateRevoked', 'the peer certificate was revoked'));
    expect(a.destroyed).toBe(true);
    await expect(closedB).resolves.toMatchObject({ code: 'ConnectionLost' });
    expect(ended).not.toHaveBeenCalled();
    pair.close();
  });
});

describe('mux liveness', () => {
  /** A channel into the void: writes vanish, nothing is ever read. */
  const silent = (): Duplex => new Duplex({ write: (_c, _e, cb) => cb(), read: () => undefined });

  it('a silent peer is declared dead after deadAfterMs, with a PING sent before', async () => {
    const clock = new ManualClock();
    const sent: Buffer[] = [];
    const channel = new Duplex({ write: (c: Buffer, _e, cb) => { sent.push(c); cb(); }, read: () => undefined });
    const session = new MuxSession(channel, { initiator: true, clock, keepaliveMs: 2_000, deadAfterMs: 6_000 });
    const closed = jest.fn();
    session.on('close', closed);
    clock.advance(1_999);
    expect(closed).not.toHaveBeenCalled();
    clock.advance(1);
    // The PING leaves at the end of the turn (frames of one turn go together).
    await new Promise((resolve) => process.nextTick(resolve));
    expect(sent.some((b) => b.includes(Buffer.from([FRAME.PING, 0, 0, 0, 0, 0, 0, 0, 8])))).toBe(true);
    clock.advance(3_999);
    expect(closed).not.toHaveBeenCalled();
    clock.advance(1);
    expect(closed).toHaveBeenCalledWith(expect.objectContaining({ code: 'ConnectionLost' }));
  });

  it('a peer that keeps talking is never declared dead', async () => {
    const clock = new ManualClock();
    const channel = silent();
    const session = new MuxSession(channel, { initiator: true, clock, keepaliveMs: 2_000, deadAfterMs: 6_000 });
    const closed = jest.fn();
    session.on('close', closed);
    const hello = encodeFrame(FRAME.HELLO, 0, encodeFields({ version: '1', window: String(MUX_DATA_FRAME) }));
    channel.push(hello);
    for (let i = 0; i < 20; i++) {
      clock.advance(1_000);
      channel.push(encodeFrame(FRAME.PONG, 0, Buffer.alloc(8)));
      // Pushed bytes reach the session on a later tick.
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(closed).not.toHaveBeenCalled();
    session.close();
  });

  it('the bound holds with the defaults: a silent peer is noticed within 10 s', () => {
    const clock = new ManualClock();
    const session = new MuxSession(silent(), { initiator: true, clock });
    const closed = jest.fn();
    session.on('close', closed);
    clock.advance(10_000);
    expect(closed).toHaveBeenCalledTimes(1);
  });
});

describe('mux peers that break the rules', () => {
  /** A session B, with a raw channel end to write crafted frames into. */
  function rawPeer(): { session: MuxSession; send: (b: Buffer) => void; closed: Promise<Error | null> } {
    const [x, y] = memoryChannel();
    const session = new MuxSession(y, { initiator: false, window: MUX_DATA_FRAME, onOpen: (r) => r.accept().on('error', () => undefined) });
    const closed = new Promise<Error | null>((resolve) => session.once('close', resolve));
    x.on('data', () => undefined);
    x.on('error', () => undefined);
    x.write(encodeFrame(FRAME.HELLO, 0, encodeFields({ version: '1', window: String(MUX_DATA_FRAME) })));
    return { session, send: (b) => x.write(b), closed };
  }

  it('sending past the window closes the session with MuxDecode', async () => {
    const peer = rawPeer();
    peer.send(encodeFrame(FRAME.OPEN, 1, encodeFields({ service: 'x' })));
    peer.send(Buffer.concat([encodeHeader(FRAME.DATA, 1, MUX_DATA_FRAME), Buffer.alloc(MUX_DATA_FRAME)]));
    peer.send(Buffer.concat([encodeHeader(FRAME.DATA, 1, 1), Buffer.alloc(1)]));
    const err = await peer.closed;
    expect(isVertexError(err, 'MuxDecode')).toBe(true);
    expect(err?.message).toMatch(/past its window/);
  });

  it('within the window, the same bytes are fine (the case above can pass)', async () => {
    const peer = rawPeer();
    peer.send(encodeFrame(FRAME.OPEN, 1, encodeFields({ service: 'x' })));
    peer.send(Buffer.concat([encodeHeader(FRAME.DATA, 1, MUX_DATA_FRAME), Buffer.alloc(MUX_DATA_FRAME)]));
    await new Promise((resolve) => setImmediate(resolve));
    expect(peer.session.closed).toBe(false);
    peer.session.close();
  });

  it.each([
    ['an OPEN with the wrong parity', () => encodeFrame(FRAME.OPEN, 2, encodeFields({ service: 'x' }))],
    ['DATA on a stream never opened', () => Buffer.concat([encodeHeader(FRAME.DATA, 9, 1), Buffer.alloc(1)])],
    ['a session frame on a stream', () => encodeFrame(FRAME.PING, 3, Buffer.alloc(8))],
    ['an unknown frame type', () => Buffer.from([99, 0, 0, 0, 0, 0, 0, 0, 0])],
    ['a second HELLO', () => encodeFrame(FRAME.HELLO, 0, encodeFields({ version: '1', window: String(MUX_DATA_FRAME) }))],
  ])('%s closes the session with MuxDecode', async (_what, frame) => {
    const peer = rawPeer();
    peer.send(frame());
    expect(isVertexError(await peer.closed, 'MuxDecode')).toBe(true);
  });
});
