/**
 * The relay of last resort. Each brokered inbound registers its token here;
 * the caller and the listener each open a relay leg (a plain TCP connection
 * whose request is sealed with the token and signed with their certificate's
 * key, q2q/transport/relay-leg.ts) and name the token by its hash: the pair
 * is found by that id, then its token opens and proves the request. When both legs
 * are in, the relay answers both and splices them (server/splice.ts). What
 * it carries is the peers' own TLS: the relay never holds their keys and
 * adds no encryption of its own.
 */
import type * as net from 'node:net';
import { Transform, type TransformCallback } from 'node:stream';
import { RELAY_PAIRING_TIMEOUT_MS, TOKEN_LIFETIME_MS } from '../q2q/control/protocol';
import { asVertexError, vertexError, VertexError } from '../q2q/errors';
import { openLegRequest, readLegHeader, refuseLeg, relayTokenId, type LegHeader, type LegRequest } from '../q2q/transport/relay-leg';
import { readPreamble, writePreamble } from '../q2q/transport/preamble';
import type { Logger } from '../q2q/util/log';
import type { ServerMetrics } from './metrics';
import { splice } from './splice';
import { abortTcp } from '../q2q/transport/tcp-close';

/** Who a leg's certificate names, once checked now (chain, account, revocation, foreign status). */
export interface LegOwner {
  address: string;
  serial: string;
  local: boolean;
  certPem: string;
}

export interface RelayOptions {
  enabled: boolean;
  maxStreams: number;
  /** Bytes per second per user and direction; 0 = unlimited. */
  perUserRate: number;
  log: Logger;
  metrics?: ServerMetrics;
  /**
   * Checks a leg's certificate as a control session's is checked; throws
   * (CertificateRevoked, CertificateInvalid, ...) when it is not good now.
   * Without it every leg is refused.
   */
  authenticate?: (certPem: string) => Promise<LegOwner>;
  /**
   * Test fault `relay-no-leg-proof` (server/test-faults.ts): legs are taken
   * without their signature, token proof or fresh nonce checked.
   */
  noLegProof?: boolean;
  /** Checks again once the leg is registered (a revocation racing its opening) and calls `close` if it fails. */
  recheck?: (owner: LegOwner, close: () => void) => void;
  /**
   * Test fault `relay-carry-unknown` (server/test-faults.ts): a leg whose
   * token id no node announced is carried to another node (as a design that
   * asks around would) instead of being refused where it lands.
   */
  carryUnknown?: boolean;
  /** How long a leg for a token id not known here waits for an announcement; default ROUTE_WAIT_MS (unit tests shorten it). */
  routeWaitMs?: number;
}

type Role = 'caller' | 'listener';

/**
 * Takes a relay leg whose token pairs on another node, `node` (this node
 * forwarded the inbound, or the node holding the token announced it), to
 * that node (server/node-mesh.ts), which opens and checks the request in
 * full: this node cannot, as it does not know the token. `carried` runs once
 * that node has taken the leg ({held: 1}). `node` is '' only under the test
 * fault `relay-carry-unknown` (any other node).
 */
export type LegForwarder = (leg: net.Socket, header: LegHeader, node: string, carried: () => void) => void;

/** With several nodes (server/node-mesh.ts): carries legs to other nodes, and tells them which token ids pair here. */
export interface RelayMesh {
  forward: LegForwarder;
  /** A token registered here for a listener of `domain`: the other nodes learn that its id pairs on this node. */
  announce: (tokenId: string, domain: string) => void;
}

/**
 * How long a leg whose token id this node does not know waits for the node
 * holding the token to announce it (the announcement and the answer that
 * gave the caller the token leave the holding node at the same moment, and
 * may arrive in either order). A leg for a token id nobody announces is
 * refused after this: it costs a timer, no store query and no other node's
 * work. Below the agents' pairing timeout (RELAY_PAIRING_TIMEOUT_MS).
 */
export const ROUTE_WAIT_MS = 5_000;
/** Legs waiting for an announcement at once; more are refused without waiting. */
export const MAX_ROUTE_WAITERS = 4_096;
/** How often the token ids known to pair on other nodes are swept of expired ones. */
const ELSEWHERE_SWEEP_MS = 1_000;

interface PendingRelay {
  /** The token itself: it opens and proves legs' requests (openLegRequest); it is never sent to them. */
  token: string;
  caller: string;
  listener: string;
  expiresAt: number;
  legs: Partial<Record<Role, { socket: net.Socket; answer: (err: VertexError | null) => void }>>;
  /** Nonces of the legs that opened for this token: a request copied off the wire opens nothing. */
  nonces: Set<string>;
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
  /** Pending pairs by token id (relayTokenId). */
  readonly #pending = new Map<string, PendingRelay>();
  readonly #active = new Set<net.Socket>();
  readonly #limits = new Map<string, RateLimit>();
  /** Every open leg (pending or spliced) and whose certificate opened it, so a revocation can close it. */
  readonly #owners = new Map<net.Socket, { user: string; serial: string }>();
  #activeStreams = 0;
  /**
   * Token ids that pair on another node, with that node and until when:
   * brokered here for another node's caller (pairsOn), or announced by the
   * node holding the token (pairsOnId). In insertion order, and every entry
   * lives TOKEN_LIFETIME_MS, so the oldest are first: a sweep drops them.
   */
  readonly #elsewhere = new Map<string, { node: string; until: number }>();
  #sweep: NodeJS.Timeout | null = null;
  /** Legs waiting for their token id to be announced (or registered here), by token id. */
  readonly #waiting = new Map<string, Set<() => void>>();
  #waiters = 0;
  #mesh: RelayMesh | null = null;

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
  register(token: string, caller: string, listener: string, callerIn?: () => void, opts: { announce?: boolean } = {}): void {
    if (!this.#opts.enabled) return;
    const id = relayTokenId(token);
    const timer = setTimeout(() => this.#expire(id), TOKEN_LIFETIME_MS);
    timer.unref();
    this.#pending.set(id, {
      token, caller, listener, expiresAt: Date.now() + TOKEN_LIFETIME_MS, legs: {}, nonces: new Set(), timer, ...(callerIn && { callerIn }),
    });
    this.#wake(id);
    // Either leg may land on any node of the domain (a balancer or DNS round robin picks it):
    // every other node learns that this token id pairs here.
    if (opts.announce !== false) this.#mesh?.announce(id, listener.slice(listener.lastIndexOf('@') + 1).toLowerCase());
  }

  /** With several nodes: legs for tokens this node does not hold go through the mesh, which also hears of every token registered here. */
  attachMesh(mesh: RelayMesh): void {
    this.#mesh = mesh;
  }

  /** An inbound this node forwarded to its listener for another node's caller: the token pairs on `node`. */
  pairsOn(token: string, node: string): void {
    this.pairsOnId(relayTokenId(token), node);
  }

  /**
   * `node` announced that it holds a token with this id (server/node-mesh.ts,
   * over the authenticated node session: a node can only name itself). A
   * leg for it that lands here is carried there.
   */
  pairsOnId(tokenId: string, node: string): void {
    if (!this.#opts.enabled) return;
    // Re-inserted, so that the map stays in expiry order.
    this.#elsewhere.delete(tokenId);
    this.#elsewhere.set(tokenId, { node, until: Date.now() + TOKEN_LIFETIME_MS });
    this.#sweep ??= setInterval(() => this.#sweepElsewhere(), ELSEWHERE_SWEEP_MS).unref();
    this.#wake(tokenId);
  }

  #sweepElsewhere(): void {
    const now = Date.now();
    for (const [id, entry] of this.#elsewhere) {
      if (entry.until > now) break;
      this.#elsewhere.delete(id);
    }
    if (this.#elsewhere.size === 0 && this.#sweep) {
      clearInterval(this.#sweep);
      this.#sweep = null;
    }
  }

  /** Where a token id pairs, if on another node and not expired. */
  #elsewhereNode(tokenId: string): string | undefined {
    const entry = this.#elsewhere.get(tokenId);
    return entry && entry.until > Date.now() ? entry.node : undefined;
  }

  #wake(tokenId: string): void {
    const waiting = this.#waiting.get(tokenId);
    if (!waiting) return;
    this.#waiting.delete(tokenId);
    for (const wake of waiting) wake();
  }

  /**
   * Waits up to ROUTE_WAIT_MS for a token id to be announced by another node
   * or registered here; false when it was not (or too many legs wait already).
   */
  #awaitRoute(tokenId: string, socket: net.Socket): Promise<boolean> {
    if (this.#waiters >= MAX_ROUTE_WAITERS || socket.destroyed) return Promise.resolve(false);
    return new Promise((resolve) => {
      let set = this.#waiting.get(tokenId);
      if (!set) {
        set = new Set();
        this.#waiting.set(tokenId, set);
      }
      const waiting = set;
      this.#waiters += 1;
      const done = (found: boolean) => {
        clearTimeout(timer);
        socket.off('close', onClose);
        waiting.delete(wake);
        if (waiting.size === 0 && this.#waiting.get(tokenId) === waiting) this.#waiting.delete(tokenId);
        this.#waiters -= 1;
        resolve(found);
      };
      const wake = () => done(true);
      const onClose = () => done(false);
      const timer = setTimeout(() => done(false), this.#opts.routeWaitMs ?? ROUTE_WAIT_MS);
      timer.unref();
      waiting.add(wake);
      socket.once('close', onClose);
    });
  }

  #expire(id: string): void {
    const pending = this.#pending.get(id);
    if (!pending) return;
    this.#pending.delete(id);
    for (const leg of Object.values(pending.legs)) leg?.answer(vertexError('Timeout', 'relay: the other side never arrived'));
  }

  /**
   * A new relay leg: its request is read and checked here (its form, then
   * the pending pair its token id names, then with that pair's token the
   * seal, signature and token proof, then the certificate's standing now).
   * `forwardedBy` is the node that carried the leg here
   * (server/node-mesh.ts): such a leg pairs here or is refused, and hears
   * {held: 1} at once when it pairs here. `onAuthenticated` runs once the
   * certificate is known good, `onCarried` once a leg whose token pairs on
   * another node was taken there (either way the identity server stops
   * counting the connection as unauthenticated).
   */
  async acceptLeg(socket: net.Socket, hooks: { forwardedBy?: string; onAuthenticated?: (owner: LegOwner) => void; onCarried?: () => void } = {}): Promise<void> {
    const log = this.#opts.log.child(hooks.forwardedBy ? { via: hooks.forwardedBy } : {});
    socket.on('error', (err) => log.debug({ reason: err.message }, 'relay leg socket error'));
    let fields: Record<string, string>;
    try {
      fields = await readPreamble(socket, 'relay leg', RELAY_PAIRING_TIMEOUT_MS);
    } catch (err) {
      // Silence, a close or bytes that are no request box: closed without a word, as TLS
      // closes on garbage (and a client that sent garbage then sees the reset, not an answer).
      log.info({ reason: (err as Error).message }, 'relay leg without a request');
      socket.destroy();
      return;
    }
    // Until the certificate checks out, refusals hear why and close a second later.
    const refuseEarly = (err: unknown, what: string, fallback: 'BadRequest' | 'TokenInvalid' | 'CertificateInvalid') => {
      const e = asVertexError(err, fallback);
      log.info({ code: e.code, reason: e.message }, `relay leg refused: ${what}`);
      refuseLeg(socket, e);
      setTimeout(() => socket.destroy(), 1_000).unref();
    };
    let header: LegHeader;
    try {
      header = readLegHeader(fields);
    } catch (err) {
      return refuseEarly(err, 'request', 'BadRequest');
    }
    if (!this.#opts.enabled) return refuseEarly(vertexError('NotAllowed', 'relay: this server does not relay'), 'request', 'BadRequest');
    if (!this.#opts.authenticate) return refuseEarly(vertexError('NotAllowed', 'relay: this server checks no relay legs'), 'certificate', 'CertificateInvalid');
    let pending = this.#pending.get(header.tokenId);
    if (!pending && !hooks.forwardedBy && this.#mesh) {
      // Only the node holding the token can open the request: a leg for a token that pairs on
      // another node goes there whole, when this node knows that node (it forwarded the inbound
      // there, or that node announced the token id over the node mesh). A token id not known yet
      // may be announced in a moment; one nobody announces is refused here, so an
      // unauthenticated request makes this node dial only a node that told it of that token id.
      // A leg carried here by another node pairs here or is refused: it is never carried on.
      if (this.#elsewhereNode(header.tokenId) === undefined && !await this.#awaitRoute(header.tokenId, socket)) {
        if (socket.destroyed) return;
        if (this.#opts.carryUnknown) return this.#mesh.forward(socket, header, '', () => hooks.onCarried?.());
      }
      if (socket.destroyed) return;
      pending = this.#pending.get(header.tokenId);
      const node = pending ? undefined : this.#elsewhereNode(header.tokenId);
      if (node !== undefined) return this.#mesh.forward(socket, header, node, () => hooks.onCarried?.());
    }
    if (!pending) return refuseEarly(vertexError('TokenInvalid', 'relay: unknown, expired or used token'), 'token', 'TokenInvalid');
    let request: LegRequest;
    try {
      request = openLegRequest(header, pending.token, this.#opts.noLegProof === true);
    } catch (err) {
      return refuseEarly(err, 'request', 'BadRequest');
    }
    let owner: LegOwner;
    try {
      owner = await this.#opts.authenticate(request.certPem);
    } catch (err) {
      return refuseEarly(err, 'certificate', 'CertificateInvalid');
    }
    if (socket.destroyed) return;
    hooks.onAuthenticated?.(owner);
    const user = owner.address;
    this.#owners.set(socket, { user, serial: owner.serial });
    socket.once('close', () => this.#owners.delete(socket));
    this.#opts.recheck?.(owner, () => socket.destroy());
    const legLog = log.child({ user });
    const refuse = (err: VertexError) => {
      legLog.info({ code: err.code, reason: err.message }, 'relay leg refused');
      refuseLeg(socket, err);
    };
    // The pair may have expired or paired while the certificate was checked.
    if (this.#pending.get(header.tokenId) !== pending) return refuse(vertexError('TokenInvalid', 'relay: unknown, expired or used token'));
    this.#join(socket, user, request, pending, legLog, refuse, hooks.forwardedBy !== undefined);
  }

  #join(socket: net.Socket, user: string, request: LegRequest, pending: PendingRelay, log: Logger, refuse: (err: VertexError) => void, forwarded: boolean): void {
    const unchecked = this.#opts.noLegProof === true;
    if (!unchecked && pending.nonces.has(request.nonce)) return refuse(vertexError('TokenInvalid', 'relay: this request was used already'));
    pending.nonces.add(request.nonce);
    const role: Role | null = user === pending.caller ? 'caller' : user === pending.listener ? 'listener' : null;
    if (!role) return refuse(vertexError('TokenInvalid', `relay: the token does not belong to ${user}`));
    if (pending.legs[role]) return refuse(vertexError('TokenInvalid', 'relay: this side of the token is already connected'));
    if (this.#activeStreams >= this.#opts.maxStreams) return refuse(vertexError('NotAllowed', `relay: the server carries its maximum of ${this.#opts.maxStreams} streams`));

    // The node that carried this leg here splices it to its agent on this answer.
    if (forwarded) writePreamble(socket, { held: '1' });
    pending.legs[role] = {
      socket,
      answer: (err) => (err ? refuse(err) : writePreamble(socket, { ok: '1' })),
    };
    socket.once('close', () => {
      if (this.#pending.get(request.tokenId)?.legs[role]?.socket === socket) delete pending.legs[role];
    });
    const caller = pending.legs.caller;
    const listener = pending.legs.listener;
    if (caller && listener) {
      this.#pending.delete(request.tokenId);
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

  #splice(a: net.Socket, b: net.Socket, pending: PendingRelay): void {
    this.#activeStreams += 1;
    this.#opts.metrics?.relaySpliced(a, b);
    this.#active.add(a);
    this.#active.add(b);
    a.once('close', () => this.#active.delete(a));
    b.once('close', () => this.#active.delete(b));
    const limited = this.#opts.perUserRate > 0;
    splice(a, b, {
      ...(limited && { aToB: throttle(this.#rateLimitFor(pending.caller)), bToA: throttle(this.#rateLimitFor(pending.listener)) }),
      onClosed: () => {
        this.#activeStreams -= 1;
      },
    });
  }

  /** Who opened each open leg (pending or spliced): foreign ones are re-checked with their issuers. */
  legOwners(): Array<{ user: string; serial: string }> {
    return [...this.#owners.values()];
  }

  /**
   * Closes every leg opened with one of `serials` or by one of `addresses`
   * (a revocation or a removed account), with a reset: its partner is reset
   * in turn (server/splice.ts), so the other peer sees the stream abort.
   * Returns how many legs closed.
   */
  closeLegs(serials: ReadonlySet<string>, addresses: ReadonlySet<string>): number {
    let closed = 0;
    for (const [socket, owner] of [...this.#owners]) {
      if (!serials.has(owner.serial) && !addresses.has(owner.user)) continue;
      this.#owners.delete(socket);
      abortTcp(socket);
      closed += 1;
    }
    if (closed > 0) this.#opts.log.info({ closed }, 'relay legs closed: certificate revoked');
    return closed;
  }

  stop(): void {
    for (const pending of this.#pending.values()) clearTimeout(pending.timer);
    this.#pending.clear();
    if (this.#sweep) clearInterval(this.#sweep);
    this.#sweep = null;
    this.#elsewhere.clear();
    for (const socket of this.#active) abortTcp(socket);
  }
}
