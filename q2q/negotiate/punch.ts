/**
 * UDP groundwork for the ptcp route, on the very socket PTCP streams use:
 *
 * - reflexive address: ask a server's UDP who-am-i from this socket, so the
 *   answer names the NAT mapping the streams will use;
 * - punch probes: small datagrams toward the peer's candidates that open our
 *   own NAT mapping.
 *
 * The order of the punch is what makes it work between two Linux NATs
 * (measured in the NAT lab, test/netns; docs/holepunch.md):
 *
 *   1. the listener, while its answer to `inbound` travels back, sends
 *      low-TTL probes only. They leave its NAT, so its mapping toward the
 *      caller exists, and die in the network before the caller's NAT;
 *   2. the caller, once it has the answer, sends low-TTL probes, one probe
 *      at full TTL, then its PTCP SYN. Everything it sends arrives at the
 *      listener's NAT as the answer to the listener's outward probes, which
 *      ESTABLISHED-only home-router filtering lets through.
 *
 * A full-TTL datagram that reaches a NAT before its own host has sent toward
 * the sender is the failure to avoid: Linux conntrack records it, and the
 * host's own outward packet is then given a different source port
 * (TESTING.md "The NAT lab"). So the listener never sends one first, and the
 * caller sends its first full-TTL packet only after the listener's mapping
 * exists.
 *
 * The caller's handshake (punchedConnect) runs in rounds: a punch, then a
 * PTCP connect whose SYN PTCP retransmits with its own backoff for up to
 * PTCP_ROUND_MS; a round that gets no answer is followed by a new punch after
 * a pause. Once the race for the connection is settled, won or lost, its
 * AbortSignal gives the connect up at once and nothing more goes out: a stray
 * SYN that reaches the peer's NAT before the peer punches again (for the next
 * connection) makes conntrack re-map the peer, and that punch fails (NAT lab,
 * fall-forward scenario). Before connects could be cancelled, rounds had to
 * end before PTCP's first retransmission (0.9 x the initial RTO) to keep that
 * promise, so a path slower than 0.9 s never completed a handshake; a round
 * now outlasts several RTOs.
 *
 * Probes carry the first bytes of SHA-256(token): they are bound to one
 * inbound and say nothing to anyone who does not hold the token.
 */
import { createHash, randomBytes } from 'node:crypto';
import type * as dgram from 'node:dgram';
import { isVertexError, vertexError } from '../errors';
import { PTCP_DEFAULTS } from '../proto/ptcp/constants';
import type { PtcpSocket, PtcpStream } from '../transport/ptcp-socket';
import { decodeWhoAmIAnswer, encodeWhoAmIRequest, isWhoAmIAnswer, WHO_AM_I_NONCE_BYTES } from '../wire/who-am-i';

const PROBE_MAGIC = Buffer.from('Q2QP', 'latin1');
const PROBE_TOKEN_BYTES = 8;
export const PROBE_BYTES = PROBE_MAGIC.length + PROBE_TOKEN_BYTES;
/** Low enough to leave our own NAT, too low to reach the peer's when a router sits between them. */
export const LOW_PROBE_TTL = 2;
/** The listener's low-TTL probes per candidate: several, so a lossy link (2 %) still opens the mapping. */
export const LISTENER_LOW_TTL_PROBES = 3;
export const CALLER_LOW_TTL_PROBES = 2;
export const CALLER_FULL_TTL_PROBES = 1;
/**
 * Longest one round's connect waits for a SYN-ACK: three initial RTOs, so a path with a
 * round trip of up to about 3 s completes in the first round, with the SYN sent twice
 * (PTCP retransmits it after one RTO).
 */
export const PTCP_ROUND_MS = 3 * PTCP_DEFAULTS.initialRtoMs;
/** Pause before each further round: backoff, never a tight loop. */
export const PTCP_ROUND_BACKOFF_MS = [300, 600, 1_200, 2_400] as const;
/** A further round is started only with at least this long left before the deadline. */
const PTCP_MIN_ROUND_MS = PTCP_DEFAULTS.initialRtoMs;
const WHO_AM_I_TRIES = 3;
const WHO_AM_I_WAIT_MS = 400;

/** Which end of the inbound is punching: the order of probes differs (see the top of the file). */
export type PunchRole = 'caller' | 'listener';

export interface PunchTarget {
  host: string;
  port: number;
}

export function probeFor(token: string): Buffer {
  return Buffer.concat([PROBE_MAGIC, createHash('sha256').update(token).digest().subarray(0, PROBE_TOKEN_BYTES)]);
}

export function isProbe(buf: Buffer): boolean {
  return buf.length === PROBE_BYTES && buf.subarray(0, PROBE_MAGIC.length).equals(PROBE_MAGIC);
}

/** The probes one role sends toward each target, in order: `ttl` null means the socket's normal TTL. */
export function probePlan(role: PunchRole): Array<{ ttl: number | null }> {
  switch (role) {
    case 'listener':
      return Array.from({ length: LISTENER_LOW_TTL_PROBES }, () => ({ ttl: LOW_PROBE_TTL }));
    case 'caller':
      return [
        ...Array.from({ length: CALLER_LOW_TTL_PROBES }, () => ({ ttl: LOW_PROBE_TTL })),
        ...Array.from({ length: CALLER_FULL_TTL_PROBES }, () => ({ ttl: null })),
      ];
    default: {
      const never: never = role;
      throw new Error(`punch: unknown role ${String(never)}`);
    }
  }
}

/**
 * Sends the role's probe sequence toward each target, in order; resolves once
 * every probe has left the socket. Never throws: a probe that cannot be sent
 * is a punch that does not happen, and the connect attempt reports that.
 */
export async function punch(socket: PtcpSocket, token: string, targets: readonly PunchTarget[], opts: { role?: PunchRole } = {}): Promise<void> {
  const probe = probeFor(token);
  for (const step of probePlan(opts.role ?? 'caller')) {
    await Promise.all(targets.map((t) =>
      socket.sendRaw(probe, t.host, t.port, step.ttl === null ? {} : { ttl: step.ttl }).catch(() => undefined)));
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

export interface PunchedConnectOptions {
  /** Date.now() after which no round starts and the running one ends. */
  deadline: number;
  /** Settles the attempt: aborting stops the rounds and the connect, and nothing more is sent. */
  signal: AbortSignal;
  /** Overrides PTCP_ROUND_MS (tests). */
  roundMs?: number;
}

/**
 * The caller's PTCP handshake toward one candidate, in rounds (see the top of the file).
 * Rejects with the connect's own error (PtcpReset, PtcpConnectTimeout once the deadline
 * leaves no room for another round), or with ConnectionLost when `signal` aborts.
 */
export async function punchedConnect(socket: PtcpSocket, token: string, target: PunchTarget, opts: PunchedConnectOptions): Promise<PtcpStream> {
  const { deadline, signal } = opts;
  const roundMs = opts.roundMs ?? PTCP_ROUND_MS;
  const where = `ptcp to ${target.host}:${target.port}`;
  for (let round = 0; ; round++) {
    if (signal.aborted) throw cancelled(where, signal);
    await punch(socket, token, [target], { role: 'caller' });
    if (signal.aborted) throw cancelled(where, signal);
    try {
      return await socket.connect(target.host, target.port, { connectTimeoutMs: Math.max(1, Math.min(roundMs, deadline - Date.now())), signal });
    } catch (err) {
      if (signal.aborted) throw cancelled(where, signal);
      const pause = PTCP_ROUND_BACKOFF_MS[Math.min(round, PTCP_ROUND_BACKOFF_MS.length - 1)] ?? 0;
      if (!isVertexError(err, 'PtcpConnectTimeout') || deadline - Date.now() < pause + Math.min(roundMs, PTCP_MIN_ROUND_MS)) throw err;
      await pauseUnlessAborted(pause, signal);
    }
  }
}

function cancelled(where: string, signal: AbortSignal): Error {
  return vertexError('ConnectionLost', `${where}: cancelled`, signal.reason);
}

/** Waits `ms`, or less if `signal` aborts first (the caller checks which). */
function pauseUnlessAborted(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}
