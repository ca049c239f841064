/**
 * The relay of last resort. Each brokered inbound registers its token here;
 * the caller and the listener each open a relay leg (a TLS connection with
 * ALPN q2q-relay/2, authenticated by their certificates) and name the token.
 * When both legs are in, the relay answers both and splices them. What it
 * carries is the peers' own TLS: the relay never holds their keys.
 */
import * as net from 'node:net';
import type { TLSSocket } from 'node:tls';
import { Transform, type TransformCallback } from 'node:stream';
import { RELAY_PAIRING_TIMEOUT_MS, TOKEN_LIFETIME_MS } from '../q2q/control/protocol';
import { vertexError, VertexError } from '../q2q/errors';
import { carryAbortsOverTcp } from '../q2q/negotiate/relay-leg';
import { readPreamble, writePreamble } from '../q2q/transport/preamble';
import type { Logger } from '../q2q/util/log';
import type { ServerMetrics } from './metrics';

export interface RelayOptions {
  enabled: boolean;
  maxStreams: number;
  /** Bytes per second per user and direction; 0 = unlimited. */
  perUserRate: number;
  log: Logger;
  metrics?: ServerMetrics;
}

type Role = 'caller' | 'listener';

/**
 * Takes a relay leg whose token this node does not hold to the node that
 * does (server/node-mesh.ts); `node` is that node when this node knows it
 * (it forwarded the inbound), else undefined (ask the others).
 */
export type LegForwarder = (leg: TLSSocket, user: string, token: string, node: string | undefined) => void;

/** How long a leg may keep flushing after its partner closed cleanly. */
export const RELAY_CLOSE_LINGER_MS = 10_000;

/**
 * The net.Socket under a leg: node:tls made the leg over the socket the
 * server accepted and keeps it as `_parent` (undocumented, but how node:tls
 * itself proxies socket methods). Only a net.Socket can send a TCP reset.
 */
function tcpUnder(leg: TLSSocket): net.Socket | null {
  const parent = (leg as unknown as { _parent?: unknown })._parent;
  return parent instanceof net.Socket ? parent : null;
}

interface PendingRelay {
  caller: string;
  listener: string;
  expiresAt: number;
  legs: Partial<Record<Role, { socket: TLSSocket; answer: (err: VertexError | null) => void }>>;
  timer: NodeJS.Timeout;
  /** Tells the listener's agent that the caller's leg is in (relay-ready), once. */
  callerIn?: () => void;
}

/** A token bucket per user; a Transform that waits when the bucket is empty. */
class RateLimit {
  #tokens: number;
  #last = Date.now();
  constructor(readonly bytesPerSecond: number) {
    this.#tokens = bytesPerSecond;
  }
  /** Milliseconds to wait before `bytes` may pass. */
  take(bytes: number): number {
    const now = Date.now();
    this.#tokens = Math.min(this.bytesPerSecond, this.#tokens + ((now - this.#last) / 1000) * this.bytesPerSecond);
    this.#last = now;
    this.#tokens -= bytes;
    return this.#tokens >= 0 ? 0 : Math.ceil((-this.#tokens / this.bytesPerSecond) * 1000);
  }
}

function throttle(limit: RateLimit): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, done: TransformCallback) {
      const wait = limit.take(chunk.length);
      if (wait === 0) done(null, chunk);
      else setTimeout(() => done(null, chunk), wait);
    },
  });
}

export class Relay {
  readonly #opts: RelayOptions;
  readonly #pending = new Map<string, PendingRelay>();
  readonly #active = new Set<TLSSocket>();
  readonly #limits = new Map<string, RateLimit>();
  /** Every open leg (pending or spliced) and whose certificate opened it, so a revocation can close it. */
  readonly #owners = new Map<TLSSocket, { user: string; serial: string }>();
  #activeStreams = 0;
  /** Tokens brokered here for another node's caller: they pair on that node. */
  readonly #elsewhere = new Map<string, string>();
  #forward: LegForwarder | null = null;

  constructor(opts: RelayOptions) {
    this.#opts = opts;
  }

  get enabled(): boolean {
    return this.#opts.enabled;
  }

  get activeStreams(): number {
    return this.#activeStreams;
  }

  /**
   * Called by the broker when an inbound is answered: the token may now pair
   * two legs. `callerIn` runs when the caller's leg arrives first, so the
   * listener opens its leg only for a caller who is really there (DESIGN.md:
   * relay-ready).
   */
  register(token: string, caller: string, listener: string, callerIn?: () => void): void {
    if (!this.#opts.enabled) return;
    const timer = setTimeout(() => this.#expire(token), TOKEN_LIFETIME_MS);
    timer.unref();
    this.#pending.set(token, { caller, listener, expiresAt: Date.now() + TOKEN_LIFETIME_MS, legs: {}, timer, ...(callerIn && { callerIn }) });
  }

  /** With several nodes: legs for tokens this node does not hold go through `forward`. */
  setForwarder(forward: LegForwarder): void {
    this.#forward = forward;
  }

  /** An inbound this node forwarded to its listener for another node's caller: the token pairs on `node`. */
  pairsOn(token: string, node: string): void {
    if (!this.#opts.enabled) return;
    this.#elsewhere.set(token, node);
    setTimeout(() => {
      if (this.#elsewhere.get(token) === node) this.#elsewhere.delete(token);
    }, TOKEN_LIFETIME_MS).unref();
  }

  /** Whether a leg naming `token` would pair here (a node asking before it brings a leg). */
  holds(token: string): boolean {
    return this.#pending.has(token);
  }

  #expire(token: string): void {
    const pending = this.#pending.get(token);
    if (!pending) return;
    this.#pending.delete(token);
    for (const leg of Object.values(pending.legs)) leg?.answer(vertexError('Timeout', 'relay: the other side never arrived'));
  }

  /** A new relay leg from an authenticated user. */
  async acceptLeg(socket: TLSSocket, user: string, serial = ''): Promise<void> {
    const log = this.#opts.log.child({ user });
    this.#owners.set(socket, { user, serial });
    socket.once('close', () => this.#owners.delete(socket));
    let request: Record<string, string>;
    try {
      request = await readPreamble(socket, 'relay leg', RELAY_PAIRING_TIMEOUT_MS);
    } catch (err) {
      log.info({ reason: (err as Error).message }, 'relay leg closed before its request');
      socket.destroy();
      return;
    }
    const refuse = (err: VertexError) => {
      log.info({ code: err.code, reason: err.message }, 'relay leg refused');
      writePreamble(socket, { error_code: err.code, error_description: err.message });
      socket.end();
    };
    if (!this.#opts.enabled) return refuse(vertexError('NotAllowed', 'relay: this server does not relay'));
    const token = request.token ?? '';
    const pending = this.#pending.get(token);
    if (!pending && this.#forward) return this.#forward(socket, user, token, this.#elsewhere.get(token));
    if (!pending) return refuse(vertexError('TokenInvalid', 'relay: unknown, expired or used token'));
    this.#join(socket, user, token, pending, log, refuse);
  }

  /**
   * A leg another node brought here (server/node-mesh.ts), for a user that
   * node authenticated; its request was read there. Answers {held: 1} at
   * once when the token pairs here, then the usual answer when both legs are in.
   */
  acceptForwardedLeg(socket: TLSSocket, user: string, token: string, from: string): void {
    const log = this.#opts.log.child({ user, via: from });
    const refuse = (err: VertexError) => {
      log.info({ code: err.code, reason: err.message }, 'relay leg refused');
      writePreamble(socket, { error_code: err.code, error_description: err.message });
      socket.end();
    };
    if (!this.#opts.enabled) return refuse(vertexError('NotAllowed', 'relay: this server does not relay'));
    const pending = this.#pending.get(token);
    if (!pending) return refuse(vertexError('TokenInvalid', 'relay: unknown, expired or used token'));
    writePreamble(socket, { held: '1' });
    this.#join(socket, user, token, pending, log, refuse);
  }

  #join(socket: TLSSocket, user: string, token: string, pending: PendingRelay, log: Logger, refuse: (err: VertexError) => void): void {
    const role: Role | null = user === pending.caller ? 'caller' : user === pending.listener ? 'listener' : null;
    if (!role) return refuse(vertexError('TokenInvalid', `relay: the token does not belong to ${user}`));
    if (pending.legs[role]) return refuse(vertexError('TokenInvalid', 'relay: this side of the token is already connected'));
    if (this.#activeStreams >= this.#opts.maxStreams) return refuse(vertexError('NotAllowed', `relay: the server carries its maximum of ${this.#opts.maxStreams} streams`));

    pending.legs[role] = {
      socket,
      answer: (err) => (err ? refuse(err) : writePreamble(socket, { ok: '1' })),
    };
    socket.once('close', () => {
      if (this.#pending.get(token)?.legs[role]?.socket === socket) delete pending.legs[role];
    });
    const caller = pending.legs.caller;
    const listener = pending.legs.listener;
    if (caller && listener) {
      this.#pending.delete(token);
      clearTimeout(pending.timer);
      caller.answer(null);
      listener.answer(null);
      this.#splice(caller.socket, listener.socket, pending);
      log.info({ caller: pending.caller, listener: pending.listener }, 'relay spliced');
    } else if (role === 'caller' && pending.callerIn) {
      const callerIn = pending.callerIn;
      delete pending.callerIn;
      callerIn();
    }
  }

  #rateLimitFor(user: string): RateLimit {
    let limit = this.#limits.get(user);
    if (!limit) {
      limit = new RateLimit(this.#opts.perUserRate);
      this.#limits.set(user, limit);
    }
    return limit;
  }

  #splice(a: TLSSocket, b: TLSSocket, pending: PendingRelay): void {
    this.#activeStreams += 1;
    this.#opts.metrics?.relaySpliced(a, b);
    this.#active.add(a);
    this.#active.add(b);
    let open = 2;
    // A leg that closed after its end was read closed cleanly: the other still
    // holds bytes piped from it, so end it (flushing them) rather than destroy
    // it, and destroy it only if it does not close by itself within
    // RELAY_CLOSE_LINGER_MS. A leg that closed before its end (its peer reset it
    // on an abort, or it broke) aborts the stream: destroy the other at once,
    // which resets it, so that its peer sees the abort rather than a clean end.
    const onClose = (closed: TLSSocket, other: TLSSocket) => () => {
      open -= 1;
      this.#active.delete(closed);
      if (open === 0) {
        this.#activeStreams -= 1;
        return;
      }
      if (other.destroyed) return;
      if (!closed.readableEnded) {
        other.destroy();
        return;
      }
      other.end();
      setTimeout(() => other.destroy(), RELAY_CLOSE_LINGER_MS).unref();
    };
    // Any destroy of a leg before its writable side finished (the abort above, a
    // flush that outlived the linger, stop()) resets it, so its peer sees an
    // abort; and a reset that libuv reports as an end closes the leg without one.
    for (const leg of [a, b]) {
      const tcp = tcpUnder(leg);
      if (tcp) carryAbortsOverTcp(leg, tcp);
    }
    a.once('close', onClose(a, b));
    b.once('close', onClose(b, a));
    a.on('error', () => undefined);
    b.on('error', () => undefined);
    // pipe() carries back-pressure both ways and ends the far side on end (half-close).
    if (this.#opts.perUserRate > 0) {
      a.pipe(throttle(this.#rateLimitFor(pending.caller))).pipe(b);
      b.pipe(throttle(this.#rateLimitFor(pending.listener))).pipe(a);
    } else {
      a.pipe(b);
      b.pipe(a);
    }
    a.resume();
    b.resume();
  }

  /** Who opened each open leg (pending or spliced): foreign ones are re-checked with their issuers. */
  legOwners(): Array<{ user: string; serial: string }> {
    return [...this.#owners.values()];
  }

  /**
   * Closes every leg opened with one of `serials` or by one of `addresses`
   * (a revocation or a removed account). Destroying a spliced leg resets its
   * partner too (see #splice), so the other peer sees the stream abort.
   * Returns how many legs closed.
   */
  closeLegs(serials: ReadonlySet<string>, addresses: ReadonlySet<string>): number {
    let closed = 0;
    for (const [socket, owner] of [...this.#owners]) {
      if (!serials.has(owner.serial) && !addresses.has(owner.user)) continue;
      this.#owners.delete(socket);
      socket.destroy();
      closed += 1;
    }
    if (closed > 0) this.#opts.log.info({ closed }, 'relay legs closed: certificate revoked');
    return closed;
  }

  stop(): void {
    for (const pending of this.#pending.values()) clearTimeout(pending.timer);
    this.#pending.clear();
    for (const socket of this.#active) socket.destroy();
  }
}
