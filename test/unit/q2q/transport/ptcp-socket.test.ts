/**
 * PtcpSocket's connect over real loopback UDP, with a ManualClock driving its timers: the
 * retransmission schedule and what an aborted connect leaves behind (nothing on the wire).
 */
import { isVertexError } from '../../../../q2q/errors';
import { PTCP_DEFAULTS } from '../../../../q2q/proto/ptcp/constants';
import { PtcpSocket, type PtcpStream } from '../../../../q2q/transport/ptcp-socket';
import { ManualClock } from '../../../../q2q/util/clock';
import { decodeSegment, FLAG_SYN, isPtcpDatagram } from '../../../../q2q/wire/ptcp-segment';
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
