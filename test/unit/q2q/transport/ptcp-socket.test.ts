/**
 * PtcpSocket's connect over real loopback UDP, with a ManualClock driving its timers: the
 * retransmission schedule and what an aborted connect leaves behind (nothing on the wire).
 */
import { execFileSync } from 'node:child_process';
import * as dgram from 'node:dgram';
import { isVertexError } from '../../../../q2q/errors';
import { PTCP_DEFAULTS } from '../../../../q2q/proto/ptcp/constants';
import { PtcpSocket, type PtcpStream } from '../../../../q2q/transport/ptcp-socket';
import { ManualClock } from '../../../../q2q/util/clock';
import { decodeSegment, encodeSegment, FLAG_ACK, FLAG_SYN, isPtcpDatagram } from '../../../../q2q/wire/ptcp-segment';
import { untilTrue } from '../../../helpers/net';
import { flushedTo, silentPeer, type SilentPeer } from '../../../helpers/silent-peer';

const ptcpDatagrams = (peer: SilentPeer): Buffer[] => peer.got.filter((m) => isPtcpDatagram(m));
const isSyn = (m: Buffer): boolean => (decodeSegment(m).flags & FLAG_SYN) !== 0;

/** Settles a promise into its value or its error, so a rejection is never unhandled. */
function outcome<T>(p: Promise<T>): Promise<T | Error> {
  return p.then((v) => v, (err: Error) => err);
}

describe('PtcpSocket.connect', () => {
  let clock: ManualClock;
  let socket: PtcpSocket;
  let peer: SilentPeer;

  beforeEach(async () => {
    clock = new ManualClock(0);
    socket = await PtcpSocket.bind({ host: '127.0.0.1', clock });
    peer = await silentPeer();
  });

  afterEach(async () => {
    peer.close();
    await socket.close();
  });

  it('retransmits the SYN on the machine\'s schedule (1, 2, 4 initial RTOs apart)', async () => {
    const connecting = outcome(socket.connect('127.0.0.1', peer.port, { connectTimeoutMs: 60_000 }));
    await peer.until(() => ptcpDatagrams(peer).length === 1);
    const rto = PTCP_DEFAULTS.initialRtoMs;
    const expected: Array<[number, number]> = [[rto - 1, 1], [1, 2], [2 * rto - 1, 2], [1, 3], [4 * rto - 1, 3], [1, 4]];
    for (const [advance, syns] of expected) {
      clock.advance(advance);
      await flushedTo(socket, peer);
      expect(ptcpDatagrams(peer).filter(isSyn)).toHaveLength(syns);
    }
    clock.advance(60_000);
    expect(await connecting).toMatchObject({ code: 'PtcpConnectTimeout' });
  });

  it('an abort while the SYN is being retransmitted rejects with ConnectionLost, frees the id and sends nothing more', async () => {
    const controller = new AbortController();
    const connecting = outcome(socket.connect('127.0.0.1', peer.port, { signal: controller.signal }));
    await peer.until(() => ptcpDatagrams(peer).length === 1);
    clock.advance(PTCP_DEFAULTS.initialRtoMs);
    await peer.until(() => ptcpDatagrams(peer).length === 2);
    expect(socket.connectionCount).toBe(1);

    const reason = new Error('another route won');
    controller.abort(reason);
    const err = await connecting;
    expect(isVertexError(err, 'ConnectionLost')).toBe(true);
    expect((err as Error).cause).toBe(reason);
    expect(socket.connectionCount).toBe(0);

    // Well past every retransmission and the connect timeout: a live connection would send.
    clock.advance(PTCP_DEFAULTS.connectTimeoutMs * 3);
    await flushedTo(socket, peer);
    const sent = ptcpDatagrams(peer);
    expect(sent).toHaveLength(2);
    expect(sent.every(isSyn)).toBe(true);
  });

  it('an abort before the first SYN has left sends nothing at all', async () => {
    const controller = new AbortController();
    const connecting = outcome(socket.connect('127.0.0.1', peer.port, { signal: controller.signal }));
    controller.abort();
    expect(isVertexError(await connecting, 'ConnectionLost')).toBe(true);
    clock.advance(PTCP_DEFAULTS.connectTimeoutMs * 3);
    await flushedTo(socket, peer);
    expect(ptcpDatagrams(peer)).toHaveLength(0);
    expect(socket.connectionCount).toBe(0);
  });

  it('an already aborted signal rejects at once without a connection or a datagram', async () => {
    const err = await outcome(socket.connect('127.0.0.1', peer.port, { signal: AbortSignal.abort() }));
    expect(isVertexError(err, 'ConnectionLost')).toBe(true);
    expect(socket.connectionCount).toBe(0);
    await flushedTo(socket, peer);
    expect(ptcpDatagrams(peer)).toHaveLength(0);
  });
});

describe('PtcpSocket.connect with a signal that aborts after the handshake', () => {
  it('changes nothing: the stream carries data both ways and ends cleanly', async () => {
    const a = await PtcpSocket.bind({ host: '127.0.0.1' });
    const b = await PtcpSocket.bind({ host: '127.0.0.1' });
    try {
      const accepted = new Promise<PtcpStream>((resolve) => b.listen(resolve));
      const controller = new AbortController();
      const client = await a.connect('127.0.0.1', b.address().port, { signal: controller.signal });
      const server = await accepted;
      controller.abort();
      const read = (s: PtcpStream): Promise<string> => new Promise((resolve, reject) => {
        const parts: Buffer[] = [];
        s.on('data', (d: Buffer) => parts.push(d)).once('end', () => resolve(Buffer.concat(parts).toString())).once('error', reject);
      });
      const [atServer, atClient] = [read(server), read(client)];
      client.end('ping');
      server.end('pong');
      expect(await atServer).toBe('ping');
      expect(await atClient).toBe('pong');
      expect(client.destroyed && client.errored).toBeFalsy();
    } finally {
      await a.close();
      await b.close();
    }
  });
});

describe('PtcpSocket passive open: a SYN from an unverified source (issue 11)', () => {
  async function synAcksDrawn(retransmitSynAck: boolean): Promise<{ synAcks: number; answered: number }> {
    const clock = new ManualClock(0);
    // retransmitSynAck is a test-only connection option; the socket hands its tunables to each connection.
    const tunables = (retransmitSynAck ? { retransmitSynAck: true } : {}) as Record<string, never>;
    const socket = await PtcpSocket.bind({ host: '127.0.0.1', clock, tunables });
    socket.listen(() => undefined);
    // The "victim": the address a spoofer would write as the SYN's source.
    const sender = dgram.createSocket('udp4');
    try {
      await new Promise<void>((resolve) => sender.bind(0, '127.0.0.1', () => resolve()));
      const got: Buffer[] = [];
      sender.on('message', (m) => got.push(m));
      const syn = encodeSegment({ flags: FLAG_SYN, srcId: 0xbeef, dstId: 0, seq: 4242, ack: 0, tsVal: 1, tsEcr: 0, window: 65535, sacks: [], payload: Buffer.alloc(0) });
      sender.send(syn, socket.address().port, '127.0.0.1');
      const marker = Buffer.from('marker');
      const flushed = async (): Promise<void> => {
        const before = got.filter((m) => m.equals(marker)).length;
        await socket.sendRaw(marker, '127.0.0.1', sender.address().port);
        await untilTrue('marker', () => got.filter((m) => m.equals(marker)).length > before);
      };
      await untilTrue('the first SYN-ACK', () => got.some((m) => isPtcpDatagram(m)));
      // Everything the half-open connection would ever do: retransmissions, then giving up.
      for (let t = 0; t < 60_000; t += 500) {
        clock.advance(500);
        await flushed();
      }
      const answers = got.filter((m) => isPtcpDatagram(m));
      return { synAcks: answers.filter(isSyn).length, answered: answers.length };
    } finally {
      sender.close();
      await socket.close();
    }
  }

  it('sends one SYN-ACK and nothing more toward the source', async () => {
    expect(await synAcksDrawn(false)).toEqual({ synAcks: 1, answered: 1 });
  });

  it('can fail: with SYN-ACK retransmission on a timer (the behaviour before), the count is caught', async () => {
    expect((await synAcksDrawn(true)).synAcks).toBeGreaterThan(1);
  });
});

describe('PtcpSocket on a process that reads its socket late (the 200-connection flake at load 12-15)', () => {
  it('keeps a half-open connection whose completing ACK is queued unread past the deadline, and completes it', async () => {
    const clock = new ManualClock(0);
    const socket = await PtcpSocket.bind({ host: '127.0.0.1', clock });
    const accepted: PtcpStream[] = [];
    socket.listen((s) => {
      s.on('error', () => undefined);
      accepted.push(s);
    });
    const client = dgram.createSocket('udp4');
    try {
      await new Promise<void>((resolve) => client.bind(0, '127.0.0.1', () => resolve()));
      const got: Buffer[] = [];
      client.on('message', (m) => got.push(m));
      client.send(encodeSegment({ flags: FLAG_SYN, srcId: 0xbeef, dstId: 0, seq: 4242, ack: 0, tsVal: 1, tsEcr: 0, window: 65535, sacks: [], payload: Buffer.alloc(0) }), socket.address().port, '127.0.0.1');
      await untilTrue('the SYN-ACK', () => got.some((m) => isPtcpDatagram(m)));
      const synAck = decodeSegment(got.find((m) => isPtcpDatagram(m)) as Buffer);
      // The handshake's ACK, carrying data, queued behind 200 other datagrams: another process
      // sends them all while this one is blocked, as a starved process finds its socket. No
      // timestamp echo, so only the socket's reads tell how far it has been read.
      const ack = encodeSegment({ flags: FLAG_ACK, srcId: 0xbeef, dstId: synAck.srcId, seq: 4243, ack: (synAck.seq + 1) >>> 0, tsVal: 2, tsEcr: 0, window: 65535, sacks: [], payload: Buffer.from('hi') });
      const sender = `const d = require('node:dgram').createSocket('udp4'); let n = 0;
        const to = (b, then) => d.send(b, ${socket.address().port}, '127.0.0.1', then);
        const next = () => (n++ < 200 ? to(Buffer.from('not ptcp'), next) : to(Buffer.from('${ack.toString('hex')}', 'hex'), () => to(Buffer.from('last'), () => d.close())));
        next();`;
      let lastRead = false;
      socket.on('datagram', (m: Buffer) => {
        if (m.toString() === 'last') lastRead = true;
      });
      execFileSync(process.execPath, ['-e', sender]);
      // Still before this process reads anything: the half-open connection's time is up.
      clock.advance(PTCP_DEFAULTS.connectTimeoutMs + 1000);
      // libuv reads 32 datagrams per turn; the ACK is read some turns later. Given up, the
      // connection would be gone by then, and the ACK would draw a reset (toward the sender).
      await untilTrue('the datagram sent after the ACK', () => lastRead);
      await new Promise((resolve) => setImmediate(resolve));
      expect(accepted).toHaveLength(1);
      expect(socket.connectionCount).toBe(1);
      const first = await new Promise<Buffer>((resolve) => (accepted[0] as PtcpStream).once('data', resolve));
      expect(first.toString()).toBe('hi');
    } finally {
      client.close();
      await socket.close();
    }
  });
});
