import * as dgram from 'node:dgram';
import { isVertexError } from '../../../../q2q/errors';
import {
  CALLER_FULL_TTL_PROBES, CALLER_LOW_TTL_PROBES, isProbe, learnReflexiveAddress, LISTENER_LOW_TTL_PROBES, LOW_PROBE_TTL, probeFor, punch,
  punchedConnect, PTCP_ROUND_MS, type PunchRole,
} from '../../../../q2q/negotiate/punch';
import { PTCP_DEFAULTS } from '../../../../q2q/proto/ptcp/constants';
import { PtcpSocket, type PtcpStream } from '../../../../q2q/transport/ptcp-socket';
import { ManualClock } from '../../../../q2q/util/clock';
import { decodeSegment, FLAG_SYN, isPtcpDatagram } from '../../../../q2q/wire/ptcp-segment';
import { encodeWhoAmIAnswer, isWhoAmIRequest, requestNonce } from '../../../../q2q/wire/who-am-i';
import { ImpairmentProxy } from '../../../../bench/impairment-proxy';
import { flushedTo, silentPeer, type SilentPeer } from '../../../helpers/silent-peer';

/** Records what punch() sends, in order, with the TTL of each datagram. */
function recordingSocket(): { socket: PtcpSocket; sent: Array<{ host: string; port: number; ttl: number | null; buf: Buffer }> } {
  const sent: Array<{ host: string; port: number; ttl: number | null; buf: Buffer }> = [];
  const fake = {
    sendRaw: (buf: Buffer, host: string, port: number, opts: { ttl?: number } = {}) => {
      sent.push({ buf, host, port, ttl: opts.ttl ?? null });
      return Promise.resolve();
    },
  };
  return { socket: fake as unknown as PtcpSocket, sent };
}

const targets = [{ host: '203.0.113.66', port: 40000 }, { host: '192.0.2.2', port: 40000 }];

describe('punch', () => {
  it('the listener sends low-TTL probes only: nothing of its own may reach the caller\'s NAT first', async () => {
    const { socket, sent } = recordingSocket();
    await punch(socket, 'a'.repeat(32), targets, { role: 'listener' });
    expect(sent.length).toBe(LISTENER_LOW_TTL_PROBES * targets.length);
    for (const s of sent) expect(s.ttl).toBe(LOW_PROBE_TTL);
    for (const t of targets) expect(sent.filter((s) => s.host === t.host && s.port === t.port).length).toBe(LISTENER_LOW_TTL_PROBES);
  });

  it('the caller sends its low-TTL probes before any full-TTL one, toward every target', async () => {
    const { socket, sent } = recordingSocket();
    await punch(socket, 'b'.repeat(32), targets, { role: 'caller' });
    for (const t of targets) {
      const ttls = sent.filter((s) => s.host === t.host).map((s) => s.ttl);
      expect(ttls.slice(0, CALLER_LOW_TTL_PROBES)).toEqual(Array(CALLER_LOW_TTL_PROBES).fill(LOW_PROBE_TTL));
      expect(ttls.slice(CALLER_LOW_TTL_PROBES).length).toBeGreaterThan(0);
      expect(ttls.slice(CALLER_LOW_TTL_PROBES).every((ttl) => ttl === null)).toBe(true);
    }
  });

  it('probes are bound to the token and recognisable, and say nothing else', async () => {
    const { socket, sent } = recordingSocket();
    const token = 'c'.repeat(32);
    await punch(socket, token, targets.slice(0, 1));
    for (const s of sent) {
      expect(s.buf.equals(probeFor(token))).toBe(true);
      expect(isProbe(s.buf)).toBe(true);
      expect(s.buf.includes(Buffer.from(token))).toBe(false);
    }
    expect(probeFor(token).equals(probeFor('d'.repeat(32)))).toBe(false);
    expect(isProbe(Buffer.from('Q2QPxx'))).toBe(false);
  });

  it('never throws when a send fails', async () => {
    const fake = { sendRaw: () => Promise.reject(new Error('EPERM')) } as unknown as PtcpSocket;
    await expect(punch(fake, 'e'.repeat(32), targets, { role: 'caller' })).resolves.toBeUndefined();
  });

  it('real probes leave a real PTCP socket and arrive (loopback)', async () => {
    const socket = await PtcpSocket.bind({ host: '127.0.0.1', port: 0 });
    const receiver = dgram.createSocket('udp4');
    await new Promise<void>((r) => receiver.bind(0, '127.0.0.1', () => r()));
    const got: Buffer[] = [];
    receiver.on('message', (m) => got.push(m));
    try {
      for (const role of ['listener', 'caller'] as PunchRole[]) await punch(socket, 'f'.repeat(32), [{ host: '127.0.0.1', port: receiver.address().port }], { role });
      const deadline = Date.now() + 2000;
      while (got.length < LISTENER_LOW_TTL_PROBES + CALLER_LOW_TTL_PROBES + 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      expect(got.length).toBe(LISTENER_LOW_TTL_PROBES + CALLER_LOW_TTL_PROBES + 1);
      expect(got.every(isProbe)).toBe(true);
    } finally {
      receiver.close();
      await socket.close();
    }
  });
});

describe('learnReflexiveAddress', () => {
  it('asks from the PTCP socket itself and returns the answer carrying its nonce', async () => {
    const socket = await PtcpSocket.bind({ host: '127.0.0.1', port: 0 });
    const server = dgram.createSocket('udp4');
    await new Promise<void>((r) => server.bind(0, '127.0.0.1', () => r()));
    const seenFrom: number[] = [];
    server.on('message', (m, rinfo) => {
      if (!isWhoAmIRequest(m)) return;
      seenFrom.push(rinfo.port);
      // A stale answer with another nonce first: it must be ignored.
      server.send(encodeWhoAmIAnswer(Buffer.alloc(requestNonce(m).length, 9), '198.51.100.99', 1), rinfo.port, rinfo.address);
      server.send(encodeWhoAmIAnswer(requestNonce(m), '203.0.113.66', 40123), rinfo.port, rinfo.address);
    });
    try {
      const answer = await learnReflexiveAddress(socket, '127.0.0.1', server.address().port);
      expect(answer).toEqual({ address: '203.0.113.66', port: 40123 });
      expect(seenFrom).toEqual([socket.address().port]);
    } finally {
      server.close();
      await socket.close();
    }
  });

  it('returns null when nobody answers (after a bounded number of tries)', async () => {
    const socket = await PtcpSocket.bind({ host: '127.0.0.1', port: 0 });
    const silent = dgram.createSocket('udp4');
    await new Promise<void>((r) => silent.bind(0, '127.0.0.1', () => r()));
    let asked = 0;
    silent.on('message', () => { asked += 1; });
    try {
      expect(await learnReflexiveAddress(socket, '127.0.0.1', silent.address().port)).toBeNull();
      // Bounded by tries, not by a wall-clock check: three questions, then null.
      expect(asked).toBe(3);
    } finally {
      silent.close();
      await socket.close();
    }
  });
});

const syns = (got: Buffer[]): Buffer[] => got.filter((m) => isPtcpDatagram(m) && (decodeSegment(m).flags & FLAG_SYN) !== 0);

describe('punchedConnect', () => {
  const token = 'g'.repeat(32);

  it('punches, then connects to a listening PTCP socket', async () => {
    const caller = await PtcpSocket.bind({ host: '127.0.0.1' });
    const listener = await PtcpSocket.bind({ host: '127.0.0.1' });
    const probes: Buffer[] = [];
    listener.on('datagram', (m: Buffer) => probes.push(m));
    const accepted = new Promise<PtcpStream>((resolve) => listener.listen(resolve));
    try {
      const stream = await punchedConnect(caller, token, { host: '127.0.0.1', port: listener.address().port }, { deadline: Date.now() + 10_000, signal: new AbortController().signal });
      const peer = await accepted;
      expect(stream.remotePort).toBe(listener.address().port);
      // One round: the caller's probes (loopback delivers the low-TTL ones too), then the SYN.
      expect(probes).toHaveLength(CALLER_LOW_TTL_PROBES + CALLER_FULL_TTL_PROBES);
      expect(probes.every((m) => m.equals(probeFor(token)))).toBe(true);
      peer.destroy();
      stream.destroy();
    } finally {
      await caller.close();
      await listener.close();
    }
  });

  it('completes over a path whose round trip (1.4 s) is longer than 0.9 initial RTOs', async () => {
    const caller = await PtcpSocket.bind({ host: '127.0.0.1' });
    const listener = await PtcpSocket.bind({ host: '127.0.0.1' });
    const slow = { delayMs: 700 };
    const proxy = await ImpairmentProxy.start({ target: { port: listener.address().port }, up: slow, down: slow });
    const accepted = new Promise<PtcpStream>((resolve) => listener.listen(resolve));
    try {
      expect(2 * slow.delayMs).toBeGreaterThan(0.9 * PTCP_DEFAULTS.initialRtoMs);
      expect(2 * slow.delayMs).toBeLessThan(PTCP_ROUND_MS);
      const stream = await punchedConnect(caller, token, { host: '127.0.0.1', port: proxy.port }, { deadline: Date.now() + 10_000, signal: new AbortController().signal });
      const peer = await accepted;
      stream.end('over a slow path');
      const got = await new Promise<string>((resolve) => {
        const parts: Buffer[] = [];
        peer.on('data', (d: Buffer) => parts.push(d)).once('end', () => resolve(Buffer.concat(parts).toString()));
      });
      expect(got).toBe('over a slow path');
      peer.end();
      stream.destroy();
    } finally {
      await caller.close();
      await listener.close();
      await proxy.close();
    }
  }, 20_000);

  describe('aborted', () => {
    let clock: ManualClock;
    let socket: PtcpSocket;
    let peer: SilentPeer;
    const flushed = (): Promise<void> => flushedTo(socket, peer);

    beforeEach(async () => {
      clock = new ManualClock(0);
      socket = await PtcpSocket.bind({ host: '127.0.0.1', clock });
      peer = await silentPeer();
    });

    afterEach(async () => {
      peer.close();
      await socket.close();
    });

    it('while its SYN waits for an answer: rejects with ConnectionLost, and no SYN follows', async () => {
      const controller = new AbortController();
      const connecting = punchedConnect(socket, token, { host: '127.0.0.1', port: peer.port }, { deadline: Date.now() + 60_000, signal: controller.signal }).catch((e: unknown) => e);
      await peer.until(() => syns(peer.got).length === 1);
      controller.abort();
      expect(isVertexError(await connecting, 'ConnectionLost')).toBe(true);
      expect(socket.connectionCount).toBe(0);
      // Past every SYN retransmission the round would have made: none goes out.
      clock.advance(PTCP_ROUND_MS * 2);
      await flushed();
      expect(syns(peer.got)).toHaveLength(1);
      expect(peer.got.filter(isProbe)).toHaveLength(CALLER_FULL_TTL_PROBES + CALLER_LOW_TTL_PROBES);
    });

    it('between rounds: rejects with ConnectionLost without another punch or SYN', async () => {
      const controller = new AbortController();
      const connecting = punchedConnect(socket, token, { host: '127.0.0.1', port: peer.port }, { deadline: Date.now() + 60_000, signal: controller.signal }).catch((e: unknown) => e);
      await peer.until(() => syns(peer.got).length === 1);
      // The round's connect (its SYN and retransmissions) times out on the manual clock; the
      // next round waits out its pause.
      clock.advance(PTCP_ROUND_MS);
      await new Promise((r) => setImmediate(r));
      expect(socket.connectionCount).toBe(0);
      controller.abort();
      expect(isVertexError(await connecting, 'ConnectionLost')).toBe(true);
      clock.advance(PTCP_ROUND_MS * 2);
      await flushed();
      // One round only: its probes, and SYNs of its one connection (a new round opens a new one).
      expect(peer.got.filter(isProbe)).toHaveLength(CALLER_FULL_TTL_PROBES + CALLER_LOW_TTL_PROBES);
      expect(new Set(syns(peer.got).map((m) => decodeSegment(m).srcId)).size).toBe(1);
    });

    it('before it starts: sends nothing at all', async () => {
      const err = await punchedConnect(socket, token, { host: '127.0.0.1', port: peer.port }, { deadline: Date.now() + 60_000, signal: AbortSignal.abort() }).catch((e: unknown) => e);
      expect(isVertexError(err, 'ConnectionLost')).toBe(true);
      await flushed();
      expect(peer.got).toHaveLength(1);
    });
  });
});
