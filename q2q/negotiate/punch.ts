/**
 * UDP groundwork for the ptcp route, on the very socket PTCP streams use:
 *
 * - reflexive address: ask the home server's UDP who-am-i from this socket,
 *   so the answer names the NAT mapping the streams will use;
 * - punch probes: small datagrams toward the peer's candidates that open our
 *   own NAT mapping. The first ones go out with a low TTL so they die in the
 *   network before reaching the far NAT: a probe that arrives there before
 *   the far host has sent outward makes Linux conntrack pick a different
 *   port for that host, and the punch fails (measured; TESTING.md "NAT lab").
 *
 * Probes carry the first bytes of SHA-256(token): they are bound to one
 * inbound and say nothing to anyone who does not hold the token.
 */
import { createHash, randomBytes } from 'node:crypto';
import type * as dgram from 'node:dgram';
import type { PtcpSocket } from '../transport/ptcp-socket';
import { decodeWhoAmIAnswer, encodeWhoAmIRequest, isWhoAmIAnswer, WHO_AM_I_NONCE_BYTES } from '../wire/who-am-i';

const PROBE_MAGIC = Buffer.from('Q2QP', 'latin1');
/** Low enough to leave our own NAT, too low to reach the peer's (TESTING.md). */
export const LOW_PROBE_TTL = 2;
export const LOW_TTL_PROBES = 2;
export const FULL_TTL_PROBES = 3;
export const PROBE_INTERVAL_MS = 50;
const WHO_AM_I_TRIES = 3;
const WHO_AM_I_WAIT_MS = 400;

export function probeFor(token: string): Buffer {
  return Buffer.concat([PROBE_MAGIC, createHash('sha256').update(token).digest().subarray(0, 8)]);
}

export function isProbe(buf: Buffer): boolean {
  return buf.length === 12 && buf.subarray(0, 4).equals(PROBE_MAGIC);
}

/** Sends the probe sequence toward each candidate; resolves when all are sent. Never throws. */
export async function punch(socket: PtcpSocket, token: string, targets: Array<{ host: string; port: number }>): Promise<void> {
  const probe = probeFor(token);
  const sendAll = (ttl?: number) => Promise.all(targets.map((t) =>
    socket.sendRaw(probe, t.host, t.port, ttl === undefined ? {} : { ttl }).catch(() => undefined)));
  for (let i = 0; i < LOW_TTL_PROBES; i++) await sendAll(LOW_PROBE_TTL);
  for (let i = 0; i < FULL_TTL_PROBES; i++) {
    await sendAll();
    await new Promise((r) => setTimeout(r, PROBE_INTERVAL_MS));
  }
}

/** The socket's reflexive ip:port as the server at host:port sees it, or null if it does not answer. */
export async function learnReflexiveAddress(socket: PtcpSocket, host: string, port: number): Promise<{ address: string; port: number } | null> {
  for (let attempt = 0; attempt < WHO_AM_I_TRIES; attempt++) {
    const nonce = randomBytes(WHO_AM_I_NONCE_BYTES);
    const answer = await new Promise<{ address: string; port: number } | null>((resolve) => {
      const onDatagram = (buf: Buffer, _rinfo: dgram.RemoteInfo) => {
        if (!isWhoAmIAnswer(buf)) return;
        try {
          const decoded = decodeWhoAmIAnswer(buf);
          if (!decoded.nonce.equals(nonce)) return;
          done({ address: decoded.address, port: decoded.port });
        } catch {
          // A malformed answer is ignored like any stray datagram.
        }
      };
      const timer = setTimeout(() => done(null), WHO_AM_I_WAIT_MS);
      const done = (value: { address: string; port: number } | null) => {
        clearTimeout(timer);
        socket.off('datagram', onDatagram);
        resolve(value);
      };
      socket.on('datagram', onDatagram);
      socket.sendRaw(encodeWhoAmIRequest(nonce), host, port).catch(() => done(null));
    });
    if (answer) return answer;
  }
  return null;
}
