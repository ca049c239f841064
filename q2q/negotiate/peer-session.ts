/**
 * One peer session: a claimed mutual-TLS channel between two agents (on
 * whatever route the ladder found) carrying multiplexed streams
 * (transport/mux.ts). It knows its authenticated peer (address, device,
 * certificate), counts its streams and bytes, closes itself after it has
 * carried no stream for idleMs, and closes when either certificate expires.
 */
import { EventEmitter } from 'node:events';
import type { TLSSocket } from 'node:tls';
import { isVertexError, vertexError } from '../errors';
import { describeCertificate } from '../identity';
import { MuxSession, type MuxStream, type OpenRequest } from '../transport/mux';
import type { RouteName } from '../transport/route';
import { systemClock, type Clock, type Timer } from '../util/clock';
import { Pacer } from '../util/pacer';
import type { PeerChannel } from './ladder';
import type { Q2QStream } from './types';

/** A session that has carried no stream for this long ends cleanly. */
export const SESSION_IDLE_MS = 300_000;
/** Longest single timer; a certificate expiry further away is re-armed in steps. */
const MAX_TIMER_MS = 24 * 60 * 60 * 1000;
/**
 * Early opens (openEarly) waiting for their answer, at most; past this a connect waits for
 * its answer as without early streams (and so takes the agent's dial slots). Without a
 * bound a burst (10,000 SOCKS connects at once) put every OPEN on the wire together, the
 * listener connected to its local service 10,000 times at once, the service's accept
 * queue overflowed, and connections the kernel completed with SYN cookies but the service
 * never accepted hung, waiting for a greeting (bench/README.md "socks-concurrent").
 */
export const MAX_EARLY_IN_FLIGHT = 64;
/**
 * The listener's side of the same bound: streams the peer opened whose service is being
 * prepared (an exposed target: the local connect) at once, at most; later ones wait their
 * turn. A peer may hold up to MUX_DEFAULT_MAX_INCOMING streams open, but it cannot make
 * this agent connect to a local service that many times in one instant, overflowing the
 * service's accept queue (see above), whatever its own agent does.
 */
export const MAX_PREPARING = 64;
/** Length of the session id both ends derive from the TLS session (RFC 8446 §7.5). */
const SESSION_ID_BYTES = 8;

export interface PeerSessionOptions {
  clock?: Clock;
  /** Wall-clock milliseconds (certificate lifetimes are wall-clock). */
  wallNow?: () => number;
  idleMs?: number;
  /** Our own certificate on this session: its expiry ends the session too. */
  ownCertificate: string;
  mux?: { window?: number; keepaliveMs?: number; deadAfterMs?: number };
  /** A stream the peer opened: accept or refuse it. */
  onOpen: (session: PeerSession, request: OpenRequest) => void;
}

export type SessionState = 'open' | 'draining' | 'closed';

export interface SessionStatus {
  id: string;
  peer: string;
  device: string;
  /** caller: we set it up; listener: the peer did. */
  role: 'caller' | 'listener';
  route: RouteName;
  state: SessionState;
  streams: number;
  bytesIn: number;
  bytesOut: number;
  startedAt: string;
  ageMs: number;
}

export interface PeerSessionEvents {
  close: [err: Error | null];
}

export class PeerSession extends EventEmitter<PeerSessionEvents> {
  readonly id: string;
  readonly route: RouteName;
  readonly role: 'caller' | 'listener';
  readonly peer: string;
  readonly device: string;
  readonly certificate: string;
  readonly socket: TLSSocket;
  readonly mux: MuxSession;
  /** Services this side opened streams to (fall forward asks for one of them). */
  readonly servicesUsed = new Set<string>();
  /** Prepares of streams the peer opened (SessionManager), MAX_PREPARING at once. */
  readonly preparing = new Pacer(MAX_PREPARING);
  /**
   * Services the peer accepted the last time this side opened one on this session:
   * openEarly may send before the answer. A refusal (or a timeout) takes the service
   * out, so the next open waits for the answer and its caller gets the exact error.
   */
  readonly #accepted = new Set<string>();
  #earlyInFlight = 0;
  readonly #clock: Clock;
  readonly #wallNow: () => number;
  readonly #idleMs: number;
  readonly #startedWall: number;
  readonly #startedMono: number;
  #streams = 0;
  #idleTimer: Timer | null = null;
  /** Clock ms when the last stream closed (or the session opened). */
  #idleSince = 0;
  #expiryTimer: Timer | null = null;
  #closed = false;

  constructor(channel: PeerChannel, opts: PeerSessionOptions) {
    super();
    this.#clock = opts.clock ?? systemClock;
    this.#wallNow = opts.wallNow ?? Date.now;
    this.#idleMs = opts.idleMs ?? SESSION_IDLE_MS;
    this.route = channel.route;
    this.role = channel.role;
    this.peer = channel.peer;
    this.device = channel.device;
    this.certificate = channel.certificate;
    this.socket = channel.socket as TLSSocket;
    this.id = this.socket.exportKeyingMaterial(SESSION_ID_BYTES, 'vertex peer session id', Buffer.alloc(0)).toString('hex');
    this.#startedWall = this.#wallNow();
    this.#startedMono = this.#clock.now();
    this.mux = new MuxSession(this.socket, {
      initiator: channel.role === 'caller',
      clock: this.#clock,
      ...opts.mux,
      onOpen: (request) => opts.onOpen(this, request),
    });
    this.mux.on('close', (err) => this.#onClosed(err));
    this.mux.on('idle', () => this.mux.end());
    const expires = Math.min(describeCertificate(opts.ownCertificate).notAfter.getTime(), describeCertificate(channel.certificate).notAfter.getTime());
    this.#armExpiry(expires);
    this.#armIdle();
  }

  get state(): SessionState {
    if (this.#closed) return 'closed';
    return this.mux.usable ? 'open' : 'draining';
  }

  /** New streams may go on this session. */
  get usable(): boolean {
    return !this.#closed && this.mux.usable;
  }

  get streamCount(): number {
    return this.#streams;
  }

  /** Opens a stream to `service` on the peer; `connectMs` counts from `startedAt` (clock ms). */
  async open(service: string, opts: { timeoutMs?: number; startedAt?: number } = {}): Promise<Q2QStream> {
    let stream: MuxStream;
    try {
      stream = await this.mux.open(service, { timeoutMs: opts.timeoutMs });
    } catch (err) {
      this.#accepted.delete(service);
      throw err;
    }
    this.servicesUsed.add(service);
    this.#accepted.add(service);
    const connectMs = opts.startedAt === undefined ? 0 : Math.round(this.#clock.now() - opts.startedAt);
    return this.adoptStream(stream, service, connectMs);
  }

  /**
   * openEarly may be used: the peer accepted `service` at the last open on this session
   * (see #accepted), and fewer than MAX_EARLY_IN_FLIGHT early opens wait for their answer.
   */
  mayOpenEarly(service: string): boolean {
    return this.#accepted.has(service) && this.#earlyInFlight < MAX_EARLY_IN_FLIGHT;
  }

  /**
   * A stream to `service` returned before the peer answers (mux openEarly): for a
   * service acceptedBefore, where waiting for the ACCEPT would only add a round trip.
   * If the peer refuses after all, the stream is destroyed with the reason and
   * `onRefused` hears it; the service then waits for answers again.
   */
  openEarly(service: string, opts: { timeoutMs?: number; onRefused?: (err: Error) => void } = {}): Q2QStream {
    const onRefused = opts.onRefused;
    const stream = this.mux.openEarly(service, {
      timeoutMs: opts.timeoutMs,
      onAnswer: (err) => {
        this.#earlyInFlight -= 1;
        // ConnectionLost: the stream or the session went on our side; the peer did not refuse.
        if (err === null || isVertexError(err, 'ConnectionLost')) return;
        this.#accepted.delete(service);
        onRefused?.(err);
      },
    });
    this.#earlyInFlight += 1;
    this.servicesUsed.add(service);
    return Object.assign(this.adoptStream(stream, service, 0), { early: true });
  }

  /** Counts `stream` and gives it what a Q2QStream knows about itself. */
  adoptStream(stream: MuxStream, service: string, connectMs: number): Q2QStream {
    // A stream the peer aborted before it was accepted has closed already: nothing to count.
    if (!stream.closed) {
      this.#streams += 1;
      stream.once('close', this.#streamClosed);
    }
    return Object.assign(stream, {
      route: this.route, peer: this.peer, service, peerCertificate: this.certificate, connectMs, sessionId: this.id, device: this.device,
    }) as unknown as Q2QStream;
  }

  /** No new streams either way; the open ones finish, then the session ends. */
  drain(code: string, description: string): void {
    this.mux.goAway(code, description);
  }

  /** Closes at once: every stream aborts. */
  close(err?: Error): void {
    this.mux.close(err);
  }

  status(): SessionStatus {
    return {
      id: this.id, peer: this.peer, device: this.device, role: this.role, route: this.route, state: this.state,
      streams: this.#streams, bytesIn: this.mux.bytesIn, bytesOut: this.mux.bytesOut,
      startedAt: new Date(this.#startedWall).toISOString(), ageMs: Math.max(0, Math.round(this.#clock.now() - this.#startedMono)),
    };
  }

  readonly #streamClosed = (): void => {
    this.#streams -= 1;
    if (this.#streams === 0) this.#armIdle();
  };

  /**
   * The idle close: due idleMs after the last stream closed. Streams come and
   * go by the dozen, so the timer is not moved for each: it is armed when the
   * session falls idle and none is armed, and when it fires it re-arms for
   * the rest of the time if a stream came and went meanwhile (or does nothing
   * while streams are open: the last one to close arms it again).
   */
  #armIdle(): void {
    this.#idleSince = this.#clock.now();
    if (this.#idleTimer === null) this.#armIdleIn(this.#idleMs);
  }

  #armIdleIn(ms: number): void {
    if (this.#closed) return;
    this.#idleTimer = this.#clock.setTimer(this.#idleCheck, ms);
  }

  readonly #idleCheck = (): void => {
    this.#idleTimer = null;
    if (this.#streams > 0) return;
    const left = this.#idleSince + this.#idleMs - this.#clock.now();
    if (left > 0) this.#armIdleIn(left);
    else this.mux.end();
  };

  #armExpiry(at: number): void {
    const left = at - this.#wallNow();
    if (left <= 0) {
      this.close(vertexError('CertificateInvalid', `peer session with ${this.peer}: a certificate expired`));
      return;
    }
    this.#expiryTimer = this.#clock.setTimer(() => this.#armExpiry(at), Math.min(left, MAX_TIMER_MS));
  }

  #onClosed(err: Error | null): void {
    if (this.#closed) return;
    this.#closed = true;
    this.preparing.clear();
    this.#idleTimer?.cancel();
    this.#expiryTimer?.cancel();
    this.emit('close', err);
  }
}
