/**
 * The stream multiplexer (q2q/transport/mux.ts): its streams pass the
 * transport compliance suite over an in-memory channel and over TLS on
 * loopback TCP, and the session keeps its promises: per-stream flow control
 * (a stalled reader stalls only its stream), refusals with codes, GOAWAY,
 * streams opened by either side, keepalive and a dead peer noticed by its
 * silence, a session budget that bounds what a peer can make this side
 * hold however many streams it opens, and a peer that breaks the rules
 * closes the session.
 */
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import { isVertexError, vertexError } from '../../../../q2q/errors';
import { createDomainCa } from '../../../../q2q/identity';
import { MuxSession, MuxStream, MUX_DATA_FRAME, MUX_MAX_UNSENT, type OpenRequest } from '../../../../q2q/transport/mux';
import { ManualClock } from '../../../../q2q/util/clock';
import { decodeFields, encodeFields, encodeFrame, encodeHeader, encodeWindow, FRAME, FrameDecoder, MUX_MAX_WINDOW } from '../../../../q2q/wire/mux-frame';
import { memoryPair, transportSuite, type StreamPair } from '../../../integration/connections/transport-suite';

const KB = 1024;
const MB = 1024 * 1024;

/** Two sessions over one channel; B accepts every stream and hands it to whoever waits for that id. */
class SessionPair {
  readonly a: MuxSession;
  readonly b: MuxSession;
  readonly #accepted = new Map<number, MuxStream>();
  readonly #waiting = new Map<number, (s: MuxStream) => void>();

  constructor(x: Duplex, y: Duplex, opts: { window?: number; sessionWindow?: number; clock?: ManualClock } = {}) {
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

function memoryChannel(faults: Parameters<typeof memoryPair>[0] = {}): [Duplex, Duplex] {
  const { a, b } = memoryPair(faults);
  return [a, b];
}

/**
 * A channel fault: the HELLO each side sends loses its sessionWindow, which makes
 * both sides what a peer from before session windows is to us (its HELLO has no
 * sessionWindow, and it ignores ours).
 */
function withoutSessionWindow(chunk: Buffer, offset: number): Buffer {
  if (offset !== 0 || chunk[0] !== FRAME.HELLO) return chunk;
  const length = chunk.readUInt32BE(5);
  const fields = decodeFields(chunk.subarray(9, 9 + length));
  delete fields.sessionWindow;
  return Buffer.concat([encodeFrame(FRAME.HELLO, 0, encodeFields(fields)), chunk.subarray(9 + length)]);
}

/** Records the frames `end` writes (type and stream id), as they reach its channel. */
function tapFrames(end: Duplex): Array<[number, number]> {
  const frames: Array<[number, number]> = [];
  const decoder = new FrameDecoder({ frame: (type, id) => frames.push([type, id]), data: () => undefined });
  const write = end._write.bind(end);
  end._write = (chunk: Buffer, encoding: BufferEncoding, callback: (err?: Error | null) => void) => {
    decoder.push(chunk);
    write(chunk, encoding, callback);
  };
  return frames;
}

/** Lets queued I/O of the in-memory channel run (a few turns). */
async function settle(turns = 5): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise((resolve) => setImmediate(resolve));
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

describe('mux streams with a peer from before session windows (no sessionWindow in HELLO)', () => {
  let pair: SessionPair;
  beforeAll(() => {
    pair = new SessionPair(...memoryChannel({ tamper: withoutSessionWindow }));
  });
  afterAll(() => pair.close());
  transportSuite('mux without session windows', () => pair.pair());
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
        // Without flush, the ACCEPT and the service's first bytes (and here its END) written in
        // the same turn leave in one write: one TLS record on a real channel.
        if (service === 'later') expect(written.map(framesIn)).toContainEqual([FRAME.ACCEPT, FRAME.DATA, FRAME.END]);
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

  it('a stream done on the wire keeps every byte for a slow reader when the peer ends the session (idle after a drain)', async () => {
    const pair = new SessionPair(...memoryChannel());
    try {
      const { a, b } = await pair.pair();
      // b's reader is a local service slower than the tunnel: it reads nothing for now.
      b.pause();
      b.end();
      const payload = randomBytes(3 * MB);
      a.end(payload);
      a.resume();
      await new Promise<void>((resolve) => a.once('close', () => resolve()));
      // a's side is done (its END went, b's came): draining, a's session goes idle and ends its channel.
      const bClosed = new Promise<void>((resolve) => pair.b.once('close', () => resolve()));
      pair.a.on('idle', () => pair.a.end());
      pair.a.goAway('ConnectionLost', 'moved to another route');
      await bClosed;
      expect(b.destroyed).toBe(false);
      // The reader comes back: every byte is there, and the stream ends cleanly.
      const errors: Error[] = [];
      b.on('error', (err) => errors.push(err));
      const reading = readAll(b);
      b.resume();
      const got = await reading;
      expect(got.equals(payload)).toBe(true);
      expect(errors).toEqual([]);
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

describe('mux early opens (openEarly)', () => {
  /** Two sessions over an in-memory channel; `onOpen` is B's (A opens). */
  function sessions(onOpen: (r: OpenRequest) => void, clock?: ManualClock): { a: MuxSession; b: MuxSession; close(): void } {
    const [x, y] = memoryChannel();
    const a = new MuxSession(x, { initiator: true, ...(clock && { clock }) });
    const b = new MuxSession(y, { initiator: false, onOpen, ...(clock && { clock }) });
    a.on('close', () => undefined);
    b.on('close', () => undefined);
    return { a, b, close: () => { a.close(); b.close(); } };
  }

  /** Turns of the event loop until `ready()` holds (bounded: the in-memory channel delivers in a few). */
  async function until(ready: () => boolean): Promise<void> {
    for (let i = 0; i < 1000 && !ready(); i++) await new Promise((resolve) => setImmediate(resolve));
    if (!ready()) throw new Error('condition not reached in 1000 turns');
  }

  it('bytes written before the ACCEPT reach the peer before it answers, are held for the stream, and arrive byte-exact', async () => {
    let opening: OpenRequest | undefined;
    const { a, close } = sessions((r) => { opening = r; });
    try {
      await a.ping(); // both HELLOs are in: the peer's window is known
      const answers: Array<Error | null> = [];
      const stream = a.openEarly('echo', { onAnswer: (err) => answers.push(err) });
      stream.on('error', () => undefined);
      const request = randomBytes(200 * KB);
      stream.write(request);
      // No ACCEPT yet, and the whole request is already at the peer.
      await until(() => opening !== undefined && opening.bytesWaiting === request.length);
      expect(answers).toEqual([]);
      const accepted = (opening as OpenRequest).accept();
      const got = readAll(accepted);
      accepted.end('answer');
      stream.end();
      expect((await got).equals(request)).toBe(true);
      expect((await readAll(stream)).toString()).toBe('answer');
      expect(answers).toEqual([null]);
    } finally {
      close();
    }
  });

  it('with open() instead, nothing leaves before the ACCEPT (the case above can fail)', async () => {
    let opening: OpenRequest | undefined;
    const { a, close } = sessions((r) => { opening = r; });
    try {
      await a.ping();
      const pending = a.open('echo');
      await until(() => opening !== undefined);
      for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
      expect((opening as OpenRequest).bytesWaiting).toBe(0);
      (opening as OpenRequest).accept().on('error', () => undefined);
      (await pending).on('error', () => undefined);
    } finally {
      close();
    }
  });

  it('a refusal destroys the early stream with the refusal code; its bytes reach no one; the session goes on', async () => {
    const { a, b, close } = sessions((r) => (r.service === 'secret' ? r.refuse(vertexError('Denied', 'bob@b.test:secret does not allow alice@a.test')) : r.accept().on('error', () => undefined).end('hi')));
    try {
      await a.ping();
      const answers: Array<Error | null> = [];
      const stream = a.openEarly('secret', { onAnswer: (err) => answers.push(err) });
      const failed = new Promise<Error>((resolve) => stream.once('error', resolve));
      const ended = jest.fn();
      stream.on('end', ended);
      stream.write('GET /private HTTP/1.1\r\n\r\n');
      await expect(failed).resolves.toMatchObject({ code: 'Denied', message: expect.stringContaining('does not allow') });
      expect(answers).toEqual([expect.objectContaining({ code: 'Denied' })]);
      expect(ended).not.toHaveBeenCalled();
      expect(b.streamCount).toBe(0);
      const next = await a.open('open');
      next.on('error', () => undefined);
      expect((await readAll(next)).toString()).toBe('hi');
    } finally {
      close();
    }
  });

  it('an early open the peer never answers is destroyed with Timeout; the peer, still deciding, drops its side quietly', async () => {
    const clock = new ManualClock();
    let opening: OpenRequest | undefined;
    const { a, b, close } = sessions((r) => { opening = r; }, clock);
    try {
      const stream = a.openEarly('slow', { timeoutMs: 1000 });
      const failed = new Promise<Error>((resolve) => stream.once('error', resolve));
      await until(() => opening !== undefined);
      clock.advance(1001);
      await expect(failed).resolves.toMatchObject({ code: 'Timeout' });
      // The RESET reached a stream nobody holds yet: no error event without a listener
      // (that would end the process); the late accept gets a stream that is gone.
      await until(() => b.streamCount === 0);
      expect((opening as OpenRequest).accept().destroyed).toBe(true);
    } finally {
      close();
    }
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
  /** A session B, with a raw channel end to write crafted frames into; `hello` adds to the raw peer's HELLO. */
  function rawPeer(opts: { sessionWindow?: number; hello?: Record<string, string> } = {}): { session: MuxSession; send: (b: Buffer) => void; closed: Promise<Error | null> } {
    const [x, y] = memoryChannel();
    const session = new MuxSession(y, { initiator: false, window: MUX_DATA_FRAME, sessionWindow: opts.sessionWindow, onOpen: (r) => r.accept().on('error', () => undefined) });
    const closed = new Promise<Error | null>((resolve) => session.once('close', resolve));
    x.on('data', () => undefined);
    x.on('error', () => undefined);
    x.write(encodeFrame(FRAME.HELLO, 0, encodeFields({ version: '1', window: String(MUX_DATA_FRAME), ...opts.hello })));
    return { session, send: (b) => x.write(b), closed };
  }

  /** OPEN on `id` and one stream window of DATA on it. */
  const fill = (id: number): Buffer => Buffer.concat([
    encodeFrame(FRAME.OPEN, id, encodeFields({ service: 'x' })),
    encodeHeader(FRAME.DATA, id, MUX_DATA_FRAME),
    Buffer.alloc(MUX_DATA_FRAME),
  ]);

  it('sending past the session window closes the session with MuxDecode', async () => {
    const peer = rawPeer({ sessionWindow: 2 * MUX_DATA_FRAME, hello: { sessionWindow: String(MUX_DATA_FRAME) } });
    peer.send(fill(1));
    peer.send(fill(3));
    peer.send(Buffer.concat([encodeFrame(FRAME.OPEN, 5, encodeFields({ service: 'x' })), encodeHeader(FRAME.DATA, 5, 1), Buffer.alloc(1)]));
    const err = await peer.closed;
    expect(isVertexError(err, 'MuxDecode')).toBe(true);
    expect(err?.message).toMatch(/1 bytes past its session window/);
  });

  it.each([
    ['session credit past the maximum', encodeWindow(0, MUX_MAX_WINDOW)],
    ['a HELLO with a sessionWindow below one DATA frame', null],
  ])('%s closes the session with MuxDecode', async (_what, frame) => {
    const peer = rawPeer({ hello: { sessionWindow: frame ? String(MUX_DATA_FRAME) : String(MUX_DATA_FRAME - 1) } });
    if (frame) peer.send(frame);
    expect(isVertexError(await peer.closed, 'MuxDecode')).toBe(true);
  });

  it('within the session window, the same bytes are fine (the case above can pass)', async () => {
    const peer = rawPeer({ sessionWindow: 2 * MUX_DATA_FRAME, hello: { sessionWindow: String(MUX_DATA_FRAME) } });
    peer.send(fill(1));
    peer.send(fill(3));
    await settle();
    expect(peer.session.closed).toBe(false);
    expect(peer.session.bytesBuffered).toBe(2 * MUX_DATA_FRAME);
    peer.session.close();
  });

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

describe('mux session budget', () => {
  const window = MUX_DATA_FRAME;
  const budget = 4 * MUX_DATA_FRAME;

  /**
   * A hostile peer on a raw channel: it opens `streams` streams to a service that never
   * reads, and fills each to its stream window, as fast as it can. Returns the most the
   * receiving session held at any point, and what became of it.
   */
  async function flood(opts: { peerHello: Record<string, string>; sessionWindow: number; streams: number; answer?: 'never' }) {
    const [x, y] = memoryChannel();
    const accepted: MuxStream[] = [];
    const unanswered: OpenRequest[] = [];
    const session = new MuxSession(y, {
      initiator: false,
      window,
      sessionWindow: opts.sessionWindow,
      onOpen: (r) => (opts.answer === 'never' ? unanswered.push(r) : accepted.push(r.accept().on('error', () => undefined))),
    });
    let closedWith: Error | null | undefined;
    session.on('close', (err) => { closedWith = err; });
    const back: Array<[number, number]> = [];
    const decoder = new FrameDecoder({ frame: (type, id) => back.push([type, id]), data: () => undefined });
    x.on('data', (c: Buffer) => decoder.push(c));
    x.on('error', () => undefined);
    x.write(encodeFrame(FRAME.HELLO, 0, encodeFields(opts.peerHello)));
    let most = 0;
    for (let i = 0; i < opts.streams && !session.closed; i++) {
      const id = 2 * i + 1;
      x.write(encodeFrame(FRAME.OPEN, id, encodeFields({ service: 'sink' })));
      for (let at = 0; at < window; at += 16 * KB) x.write(Buffer.concat([encodeHeader(FRAME.DATA, id, 16 * KB), Buffer.alloc(16 * KB, i)]));
      await settle(2);
      most = Math.max(most, session.bytesBuffered);
    }
    await settle();
    most = Math.max(most, session.bytesBuffered);
    const resets = back.filter(([type]) => type === FRAME.RESET).map(([, id]) => id);
    return { session, most, closedWith, resets, accepted, unanswered, x };
  }

  it.each<[string, Record<string, string>]>([
    ['claims a session window: cut off with MuxDecode', { sessionWindow: String(64 * MB) }],
    ['has none: streams past the budget reset', {}],
  ])('DATA on streams this side has not accepted yet counts too; a peer that %s', async (_what, hello) => {
    const { session, most, closedWith, resets, unanswered } = await flood({ peerHello: { version: '1', window: String(window), ...hello }, sessionWindow: budget, streams: 32, answer: 'never' });
    expect(most).toBeGreaterThan(budget / 2);
    expect(most).toBeLessThanOrEqual(budget);
    if (hello.sessionWindow) {
      expect(isVertexError(closedWith, 'MuxDecode')).toBe(true);
      return;
    }
    expect(session.closed).toBe(false);
    expect(resets.length).toBe(32 - budget / window);
    // Refusing what waits gives the budget back; so does accepting and reading.
    const [first, ...rest] = unanswered;
    for (const r of rest) r.refuse(vertexError('Denied', 'no'));
    const stream = (first as OpenRequest).accept().on('error', () => undefined);
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    await settle();
    expect(Buffer.concat(chunks).equals(Buffer.alloc(window, 0))).toBe(true);
    expect(session.bytesBuffered).toBe(0);
    session.close();
  });

  it.each([
    ['the session closes', (session: MuxSession) => session.close()],
    ['the peer goes away', (_session: MuxSession, peer: MuxSession) => peer.close()],
  ])('an OPEN still waiting for its answer when %s is dropped quietly (no unhandled error), and a late accept gets a destroyed stream', async (_what, end) => {
    const [x, y] = memoryChannel();
    const a = new MuxSession(x, { initiator: true });
    const waiting: OpenRequest[] = [];
    const b = new MuxSession(y, { initiator: false, onOpen: (r) => waiting.push(r) });
    a.on('close', () => undefined);
    b.on('close', () => undefined);
    const opening = a.open('slow-target');
    opening.catch(() => undefined);
    await settle();
    expect(waiting.length).toBe(1);
    end(b, a);
    await settle();
    expect(b.closed).toBe(true);
    const late = (waiting[0] as OpenRequest).accept();
    expect(late.destroyed).toBe(true);
  });

  it('early opens (openEarly) stop at the budget while this side has not answered; accepted later, every stream completes byte-exact', async () => {
    const [x, y] = memoryChannel();
    const a = new MuxSession(x, { initiator: true, window, sessionWindow: budget });
    const waiting: OpenRequest[] = [];
    const b = new MuxSession(y, { initiator: false, window, sessionWindow: budget, onOpen: (r) => waiting.push(r) });
    a.on('close', () => undefined);
    b.on('close', () => undefined);
    try {
      await settle(); // the HELLOs: an early stream's credit before ACCEPT comes from the peer's
      // Sixteen early streams, each with a stream window of credit before any ACCEPT: 4 budgets' worth.
      const streams = Array.from({ length: 16 }, () => a.openEarly('sink').on('error', () => undefined));
      const data = streams.map(() => randomBytes(2 * window));
      const writing = Promise.all(streams.map((s, i) => writeAll(s, data[i] as Buffer)));
      writing.catch(() => undefined);
      for (let i = 0; i < 100 && b.bytesBuffered < budget; i++) await settle(1);
      await settle(20);
      expect(waiting.length).toBe(16);
      expect(b.bytesBuffered).toBe(budget);
      expect(waiting.reduce((n, r) => n + r.bytesWaiting, 0)).toBe(budget);
      expect(a.closed || b.closed).toBe(false);
      const got = waiting.map((r) => readAll(r.accept().on('error', () => undefined)));
      await writing;
      (await Promise.all(got)).forEach((body, i) => expect(body.equals(data[i] as Buffer)).toBe(true));
      expect(b.bytesBuffered).toBe(0);
    } finally {
      a.close();
      b.close();
    }
  });

  it('a peer that sends PINGs and never reads our answers makes us queue at most MUX_MAX_UNSENT (and a bit) of them; once it reads, every answer comes', async () => {
    const [x, y] = memoryChannel();
    const session = new MuxSession(y, { initiator: false });
    session.on('close', () => undefined);
    x.on('error', () => undefined);
    const pings = 200_000; // 3.4 MB of PONGs if every one were queued
    const ping = encodeFrame(FRAME.PING, 0, Buffer.alloc(8));
    const burst = Buffer.concat(Array.from({ length: 1000 }, () => ping));
    for (let i = 0; i < pings / 1000; i++) x.write(burst);
    let most = 0;
    for (let i = 0; i < 50; i++) {
      await settle(1);
      most = Math.max(most, y.writableLength);
    }
    expect(most).toBeGreaterThan(MUX_MAX_UNSENT / 2);
    expect(most).toBeLessThanOrEqual(MUX_MAX_UNSENT + 256 * KB);
    expect(session.closed).toBe(false);
    // It reads now: the held PINGs are read and answered, all of them.
    const decoder = new FrameDecoder({ frame: (type) => { if (type === FRAME.PONG) pongs += 1; }, data: () => undefined });
    let pongs = 0;
    x.on('data', (c: Buffer) => decoder.push(c));
    for (const until = Date.now() + 30_000; pongs < pings && Date.now() < until;) await new Promise((resolve) => setTimeout(resolve, 5));
    expect(pongs).toBe(pings);
    session.close();
  });

  it('a peer that opens and resets at once (rapid reset) has at most maxIncomingStreams being decided on; answering one frees its place', async () => {
    const [x, y] = memoryChannel();
    const waiting: OpenRequest[] = [];
    const session = new MuxSession(y, { initiator: false, maxIncomingStreams: 2, onOpen: (r) => waiting.push(r) });
    session.on('close', () => undefined);
    const back: Array<[number, number]> = [];
    const decoder = new FrameDecoder({ frame: (type, id) => back.push([type, id]), data: () => undefined });
    x.on('data', (c: Buffer) => decoder.push(c));
    x.on('error', () => undefined);
    x.write(encodeFrame(FRAME.HELLO, 0, encodeFields({ version: '1', window: String(MUX_DATA_FRAME) })));
    const openAndReset = (id: number): Buffer => Buffer.concat([
      encodeFrame(FRAME.OPEN, id, encodeFields({ service: 'x' })),
      encodeFrame(FRAME.RESET, id, encodeFields({ code: 'ConnectionLost', description: 'never mind' })),
    ]);
    for (let i = 0; i < 100; i++) x.write(openAndReset(2 * i + 1));
    await settle();
    // Two reached the service; the other 98 were refused before it heard of them.
    expect(waiting.length).toBe(2);
    expect(back.filter(([type]) => type === FRAME.REFUSE).length).toBe(98);
    expect(session.closed).toBe(false);
    // The service answers one (too late: the stream is gone): its place is free again.
    expect((waiting[0] as OpenRequest).accept().destroyed).toBe(true);
    x.write(openAndReset(201));
    await settle();
    expect(waiting.length).toBe(3);
    session.close();
  });

  it('a peer may keep at most maxIncomingStreams open; the next OPEN is refused with NotAllowed until one closes', async () => {
    const [x, y] = memoryChannel();
    const a = new MuxSession(x, { initiator: true });
    const b = new MuxSession(y, { initiator: false, maxIncomingStreams: 2, onOpen: (r) => r.accept().on('error', () => undefined) });
    a.on('close', () => undefined);
    b.on('close', () => undefined);
    try {
      const first = await a.open('x');
      first.on('error', () => undefined);
      (await a.open('x')).on('error', () => undefined);
      await expect(a.open('x')).rejects.toMatchObject({ code: 'NotAllowed', message: expect.stringMatching(/2 streams open here already/) });
      first.destroy();
      await settle();
      const again = await a.open('x');
      again.on('error', () => undefined);
      expect(again).toBeInstanceOf(MuxStream);
    } finally {
      a.close();
      b.close();
    }
  });

  it('a peer that opens many streams and fills them, nothing read, makes us hold at most the budget (and is cut off when it claims a session window)', async () => {
    const { session, most, closedWith } = await flood({ peerHello: { version: '1', window: String(window), sessionWindow: String(64 * MB) }, sessionWindow: budget, streams: 64 });
    expect(most).toBeGreaterThan(budget / 2);
    expect(most).toBeLessThanOrEqual(budget);
    expect(session.closed).toBe(true);
    expect(isVertexError(closedWith, 'MuxDecode')).toBe(true);
    expect(closedWith?.message).toMatch(/past its session window/);
  });

  it.each([
    ['with a budget: streams past it are reset, the session lives on', budget, true],
    // The can-fail case: no budget to speak of (the largest window) is what every session had
    // before session windows, and the same flood then makes the receiver hold 64 stream windows.
    ['without a budget (as before session windows) the same flood is held whole', MUX_MAX_WINDOW, false],
  ])('a peer without session windows: %s', async (_what, sessionWindow, bounded) => {
    const streams = 64;
    const { session, most, resets, accepted } = await flood({ peerHello: { version: '1', window: String(window) }, sessionWindow, streams });
    if (bounded) {
      expect(most).toBeLessThanOrEqual(budget);
      expect(session.closed).toBe(false);
      // The first streams filled the budget; each later one was reset with its first bytes.
      expect(resets.length).toBe(streams - budget / window);
      expect(Math.min(...resets)).toBe(2 * (budget / window) + 1);
      // Once the service reads, the budget is free again for the streams that are left.
      for (const s of accepted) s.resume();
      await settle();
      expect(session.bytesBuffered).toBe(0);
    } else {
      expect(most).toBe(streams * window);
      expect(resets).toEqual([]);
    }
    session.close();
  });

  it.each([['memory'], ['tls']])('a sender that honours the budget never trips it; every stream completes byte-exact once readers resume (%s)', async (channel) => {
    const tls = channel === 'tls' ? await tlsChannel() : null;
    const pair = new SessionPair(...(tls ? tls.channel : memoryChannel()), { window, sessionWindow: budget });
    try {
      const streams = await Promise.all(Array.from({ length: 16 }, () => pair.pair('bulk')));
      for (const { b } of streams) b.pause();
      const data = streams.map(() => randomBytes(8 * window));
      const writing = Promise.all(streams.map(({ a }, i) => writeAll(a, data[i] as Buffer)));
      writing.catch(() => undefined);
      // The sender stops at the budget: 16 streams could take 16 windows, the session allows 4.
      // (Polled: over TLS the bytes take real sockets; 30 s is a hang guard, not a bound.)
      let most = 0;
      for (const until = Date.now() + 30_000; pair.b.bytesBuffered < budget && Date.now() < until;) {
        await new Promise((resolve) => setTimeout(resolve, 2));
        most = Math.max(most, pair.b.bytesBuffered);
      }
      await settle(20);
      most = Math.max(most, pair.b.bytesBuffered);
      expect(most).toBe(budget);
      expect(pair.a.closed || pair.b.closed).toBe(false);
      const got = streams.map(({ b }) => readAll(b));
      for (const { b } of streams) b.resume();
      await writing;
      const bodies = await Promise.all(got);
      bodies.forEach((body, i) => expect(body.equals(data[i] as Buffer)).toBe(true));
      expect(pair.a.closed || pair.b.closed).toBe(false);
      expect(pair.b.bytesBuffered).toBe(0);
    } finally {
      pair.close();
      tls?.close();
    }
  });

  it.each([
    ['a full window', 4 * 256 * KB],
    ['100 KiB, less than a stream window', 3 * 256 * KB + 100 * KB],
  ])('stalled streams hold their windows of the budget, and a fast stream still runs beside them, with %s left', async (_left, sessionWindow) => {
    const streamWindow = 256 * KB;
    const pair = new SessionPair(...memoryChannel(), { window: streamWindow, sessionWindow });
    try {
      // Three streams whose readers never read: together three quarters of the budget.
      const slow = await Promise.all([1, 2, 3].map(() => pair.pair('slow')));
      const offers = slow.map(({ a, b }) => {
        b.pause();
        const offering = writeAll(a, randomBytes(2 * MB));
        offering.catch(() => undefined);
        return offering;
      });
      for (let i = 0; i < 200 && pair.b.bytesBuffered < 3 * streamWindow; i++) await settle(1);
      expect(pair.b.bytesBuffered).toBe(3 * streamWindow);
      const fast = await pair.pair('fast');
      const data = randomBytes(8 * MB);
      const [got] = await Promise.all([readAll(fast.b), writeAll(fast.a, data)]);
      expect(got.equals(data)).toBe(true);
      for (const { b } of slow) expect(b.readableLength).toBeLessThanOrEqual(streamWindow);
      expect(pair.b.bytesBuffered).toBeLessThanOrEqual(sessionWindow);
      // And the stalled ones finish once read.
      const rest = slow.map(({ b }) => readAll(b));
      for (const { b } of slow) b.resume();
      await Promise.all(offers);
      expect((await Promise.all(rest)).map((r) => r.length)).toEqual([2 * MB, 2 * MB, 2 * MB]);
    } finally {
      pair.close();
    }
  });

  it('with a peer from before session windows: no WINDOW on stream 0 either way, and bulk in both directions completes', async () => {
    const [x, y] = memoryChannel({ tamper: withoutSessionWindow });
    const fromA = tapFrames(x);
    const fromB = tapFrames(y);
    const pair = new SessionPair(x, y, { window, sessionWindow: budget });
    try {
      // Four streams each way, each read as it arrives: well within the budget.
      const streams = await Promise.all([...Array.from({ length: 4 }, () => pair.pair('up')), ...Array.from({ length: 4 }, async () => {
        const s = await pair.b.open('down');
        s.on('error', () => undefined);
        return { a: s, b: await pair.take(s.id) };
      })]);
      const data = streams.map(() => randomBytes(16 * window));
      const got = streams.map(({ b }) => readAll(b));
      await Promise.all(streams.map(({ a }, i) => writeAll(a, data[i] as Buffer)));
      (await Promise.all(got)).forEach((body, i) => expect(body.equals(data[i] as Buffer)).toBe(true));
      expect([...fromA, ...fromB].filter(([type, id]) => type === FRAME.WINDOW && id === 0)).toEqual([]);
      expect(pair.a.closed || pair.b.closed).toBe(false);
    } finally {
      pair.close();
    }
  });

  it('a peer with the HELLO field gets its session credit back in WINDOW frames on stream 0', async () => {
    const [x, y] = memoryChannel();
    const fromB = tapFrames(y);
    const pair = new SessionPair(x, y, { window, sessionWindow: budget });
    try {
      const { a, b } = await pair.pair('bulk');
      const data = randomBytes(4 * budget);
      const [got] = await Promise.all([readAll(b), writeAll(a, data)]);
      expect(got.equals(data)).toBe(true);
      expect(fromB.filter(([type, id]) => type === FRAME.WINDOW && id === 0).length).toBeGreaterThan(0);
    } finally {
      pair.close();
    }
  });
});
