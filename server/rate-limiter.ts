/**
 * Password-failure limiting, per account and per source address.
 *
 * Policy (documented in README "Limits"): within a window of
 * FAILURE_WINDOW_MS, an account accepts ACCOUNT_FAILURE_LIMIT wrong passwords
 * and a source address ADDRESS_FAILURE_LIMIT; after that, attempts are
 * refused with RateLimited, without checking the password, until the window
 * that began with the first failure ends. A success clears the account's
 * count (not the address's). Memory is bounded by MAX_TRACKED_KEYS.
 */
import { vertexError } from '../q2q/errors';

export const FAILURE_WINDOW_MS = 15 * 60 * 1000;
export const ACCOUNT_FAILURE_LIMIT = 5;
export const ADDRESS_FAILURE_LIMIT = 20;
const MAX_TRACKED_KEYS = 100_000;

interface FailureWindow {
  startedAt: number;
  failures: number;
}

class FailureCounter {
  readonly #windows = new Map<string, FailureWindow>();

  constructor(readonly limit: number, readonly windowMs: number) {}

  /** Milliseconds until `key` may try again, or 0 if it may try now. */
  blockedFor(key: string, now: number): number {
    const w = this.#windows.get(key);
    if (!w) return 0;
    const endsAt = w.startedAt + this.windowMs;
    if (now >= endsAt) {
      this.#windows.delete(key);
      return 0;
    }
    return w.failures >= this.limit ? endsAt - now : 0;
  }

  recordFailure(key: string, now: number): void {
    const w = this.#windows.get(key);
    if (w && now < w.startedAt + this.windowMs) {
      w.failures += 1;
      return;
    }
    if (this.#windows.size >= MAX_TRACKED_KEYS) {
      // Maps iterate in insertion order: drop the oldest window.
      const oldest = this.#windows.keys().next().value;
      if (oldest !== undefined) this.#windows.delete(oldest);
    }
    this.#windows.set(key, { startedAt: now, failures: 1 });
  }

  clear(key: string): void {
    this.#windows.delete(key);
  }
}

export class PasswordRateLimiter {
  readonly #accounts: FailureCounter;
  readonly #addresses: FailureCounter;
  readonly #now: () => number;

  constructor(opts: { now?: () => number; accountLimit?: number; addressLimit?: number; windowMs?: number } = {}) {
    const windowMs = opts.windowMs ?? FAILURE_WINDOW_MS;
    this.#accounts = new FailureCounter(opts.accountLimit ?? ACCOUNT_FAILURE_LIMIT, windowMs);
    this.#addresses = new FailureCounter(opts.addressLimit ?? ADDRESS_FAILURE_LIMIT, windowMs);
    this.#now = opts.now ?? Date.now;
  }

  /** Throws RateLimited if either the account or the source address is over its limit. */
  check(account: string, sourceAddress: string): void {
    const now = this.#now();
    const wait = Math.max(this.#accounts.blockedFor(account, now), this.#addresses.blockedFor(sourceAddress, now));
    if (wait > 0) {
      const seconds = Math.ceil(wait / 1000);
      throw vertexError('RateLimited', `${account}: too many wrong passwords; try again in ${seconds} s`);
    }
  }

  recordFailure(account: string, sourceAddress: string): void {
    const now = this.#now();
    this.#accounts.recordFailure(account, now);
    this.#addresses.recordFailure(sourceAddress, now);
  }

  recordSuccess(account: string): void {
    this.#accounts.clear(account);
  }
}
