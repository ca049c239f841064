import * as dgram from 'node:dgram';
import {
  CALLER_LOW_TTL_PROBES, isProbe, learnReflexiveAddress, LISTENER_LOW_TTL_PROBES, LOW_PROBE_TTL, probeFor, punch, type PunchRole,
} from '../../../../q2q/negotiate/punch';
import { PtcpSocket } from '../../../../q2q/transport/ptcp-socket';
import { encodeWhoAmIAnswer, isWhoAmIRequest, requestNonce } from '../../../../q2q/wire/who-am-i';

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
      const started = Date.now();
      expect(await learnReflexiveAddress(socket, '127.0.0.1', silent.address().port)).toBeNull();
      expect(asked).toBe(3);
      expect(Date.now() - started).toBeLessThan(3_000);
    } finally {
      silent.close();
      await socket.close();
    }
  });
});
