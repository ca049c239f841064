/**
 * What inbound requests may cost a listener (issue 11, item 7).
 *
 * Every forwarded `inbound` that is answered leaves a pending token behind
 * (until it is claimed or expires), and its handling costs a little work: the
 * candidates, up to MAX_PUNCH_TARGETS x 3 punch probes, a log line. Its relay
 * leg is opened only when the server says `relay-ready` (the caller's leg is
 * in), so a pending token holds no socket. These limits bound the rest:
 *
 * - per caller, a token bucket: a burst of INBOUND_BURST_PER_CALLER requests,
 *   refilled at INBOUND_RATE_PER_CALLER per second;
 * - per caller, at most MAX_PENDING_PER_CALLER unclaimed tokens;
 * - for the listener as a whole, at most MAX_PENDING_INBOUND unclaimed tokens.
 *
 * The figures leave room for what users do before peer sessions multiplex
 * streams (issue 12): a browser's parallel requests, 100-200 tunnels opened at
 * once by one caller. A refused request gets RateLimited, which the caller
 * sees as the error of its connect.
 */
import { vertexError } from '../errors';
import { systemClock, type Clock } from '../util/clock';

export const INBOUND_BURST_PER_CALLER = 256;
export const INBOUND_RATE_PER_CALLER = 64;
export const MAX_PENDING_PER_CALLER = 128;
export const MAX_PENDING_INBOUND = 1024;
/** Callers tracked at once; beyond it, buckets that are full again are dropped (they hold no debt). */
const MAX_TRACKED_CALLERS = 4096;

export interface InboundLimitsOptions {
  clock?: Clock;
  burstPerCaller?: number;
  ratePerCaller?: number;
  maxPendingPerCaller?: number;
  maxPending?: number;
}

interface CallerState {
  tokens: number;
  at: number;
  pending: number;
}

/** One admitted inbound: release() when its token is claimed, expires or is dropped (idempotent). */
export interface InboundAdmission {
  release(): void;
}

export class InboundLimits {
  readonly #clock: Clock;
  readonly #burst: number;
  readonly #rate: number;
  readonly #maxPerCaller: number;
  readonly #max: number;
  readonly #callers = new Map<string, CallerState>();
  #pending = 0;

  constructor(opts: InboundLimitsOptions = {}) {
    this.#clock = opts.clock ?? systemClock;
    this.#burst = opts.burstPerCaller ?? INBOUND_BURST_PER_CALLER;
    this.#rate = opts.ratePerCaller ?? INBOUND_RATE_PER_CALLER;
    this.#maxPerCaller = opts.maxPendingPerCaller ?? MAX_PENDING_PER_CALLER;
    this.#max = opts.maxPending ?? MAX_PENDING_INBOUND;
  }

  /** Unclaimed tokens, all callers together. */
  get pending(): number {
    return this.#pending;
  }

  /**
   * Takes one request of `caller` from its bucket; throws RateLimited when the
   * bucket is empty. Called first, before any other work on the request.
   */
  take(caller: string): void {
    const state = this.#state(caller);
    if (state.tokens < 1) {
      throw vertexError('RateLimited', `inbound from ${caller}: more than ${this.#rate} requests a second; wait before trying again`);
    }
    state.tokens -= 1;
  }

  /**
   * Reserves a pending token for `caller`; throws RateLimited when the caller
   * or the listener already holds the most unclaimed tokens allowed.
   */
  admit(caller: string): InboundAdmission {
    const state = this.#state(caller);
    if (state.pending >= this.#maxPerCaller) {
      throw vertexError('RateLimited', `inbound from ${caller}: ${this.#maxPerCaller} connections are already waiting to be claimed`);
    }
    if (this.#pending >= this.#max) {
      throw vertexError('RateLimited', `inbound from ${caller}: the listener already has ${this.#max} connections waiting to be claimed`);
    }
    state.pending += 1;
    this.#pending += 1;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        state.pending -= 1;
        this.#pending -= 1;
      },
    };
  }

  #state(caller: string): CallerState {
    const now = this.#clock.now();
    let state = this.#callers.get(caller);
    if (!state) {
      if (this.#callers.size >= MAX_TRACKED_CALLERS) this.#prune(now);
      state = { tokens: this.#burst, at: now, pending: 0 };
      this.#callers.set(caller, state);
      return state;
    }
    state.tokens = Math.min(this.#burst, state.tokens + ((now - state.at) / 1000) * this.#rate);
    state.at = now;
    return state;
  }

  /** Forgets callers with nothing pending whose bucket has refilled: they cost nothing to recreate. */
  #prune(now: number): void {
    for (const [caller, state] of this.#callers) {
      const tokens = state.tokens + ((now - state.at) / 1000) * this.#rate;
      if (state.pending === 0 && tokens >= this.#burst) this.#callers.delete(caller);
    }
    // Still full (thousands of distinct callers at once): the oldest goes. Its releases
    // still balance the listener's count, since they hold their state object.
    if (this.#callers.size >= MAX_TRACKED_CALLERS) {
      const oldest = this.#callers.keys().next();
      if (!oldest.done) this.#callers.delete(oldest.value);
    }
  }
}
