/**
 * Certificate renewal: certificates live days, not years (ARCHITECTURE.md
 * "Certificates"), so the agent asks its home server for a new one when two
 * thirds of the current one's life have passed. A failed attempt is retried
 * with backoff (RETRY_MIN_MS doubling up to RETRY_MAX_MS) until it works or
 * the certificate expires; every attempt is logged.
 *
 * The renewal itself (a control connection authenticated with the current
 * certificate, then `renew`) and what to do with the result (store it, hand
 * it to the node) are injected, so the schedule is tested on a ManualClock.
 */
import { asVertexError } from '../q2q/errors';
import { describeCertificate } from '../q2q/identity';
import type { Identity } from '../q2q/negotiate/types';
import { systemClock, type Clock, type Timer } from '../q2q/util/clock';
import { silentLogger, type Logger } from '../q2q/util/log';

/** Renew when this fraction of the lifetime has passed. */
export const RENEW_AT_FRACTION = 2 / 3;
export const RETRY_MIN_MS = 60_000;
export const RETRY_MAX_MS = 3_600_000;
/** setTimeout cannot wait longer than this (2^31 - 1 ms, about 24.8 days); longer waits are chained. */
const MAX_TIMER_MS = 2_147_483_647;

export interface RenewerOptions {
  identity: Identity;
  renew: (current: Identity) => Promise<Identity>;
  onRenewed: (next: Identity) => void | Promise<void>;
  clock?: Clock;
  /** Wall-clock milliseconds, for comparing with certificate dates. */
  wallNow?: () => number;
  log?: Logger;
}

/** When to renew a certificate valid from `notBefore` to `notAfter` (wall-clock ms). */
export function renewalTime(notBefore: number, notAfter: number): number {
  return notBefore + Math.max(0, notAfter - notBefore) * RENEW_AT_FRACTION;
}

export class CertificateRenewer {
  readonly #opts: RenewerOptions;
  readonly #clock: Clock;
  readonly #wallNow: () => number;
  readonly #log: Logger;
  #identity: Identity;
  #timer: Timer | undefined;
  #retryMs = RETRY_MIN_MS;
  #stopped = true;

  constructor(opts: RenewerOptions) {
    this.#opts = opts;
    this.#identity = opts.identity;
    this.#clock = opts.clock ?? systemClock;
    this.#wallNow = opts.wallNow ?? Date.now;
    this.#log = (opts.log ?? silentLogger).child({ component: 'renewal' });
  }

  get identity(): Identity {
    return this.#identity;
  }

  start(): void {
    this.#stopped = false;
    this.#schedule();
  }

  stop(): void {
    this.#stopped = true;
    this.#timer?.cancel();
    this.#timer = undefined;
  }

  #schedule(): void {
    const cert = describeCertificate(this.#identity.certPem);
    const at = renewalTime(cert.notBefore.getTime(), cert.notAfter.getTime());
    const wait = Math.max(0, at - this.#wallNow());
    this.#log.info({ notAfter: cert.notAfter.toISOString(), renewAt: new Date(at).toISOString() }, 'certificate renewal scheduled');
    this.#wait(wait, () => void this.#attempt());
  }

  /** Waits `ms`, chaining timers past the setTimeout limit. */
  #wait(ms: number, fn: () => void): void {
    const step = Math.min(ms, MAX_TIMER_MS);
    this.#timer = this.#clock.setTimer(() => {
      if (this.#stopped) return;
      if (ms > step) this.#wait(ms - step, fn);
      else fn();
    }, step);
  }

  async #attempt(): Promise<void> {
    const current = this.#identity;
    let next: Identity;
    try {
      next = await this.#opts.renew(current);
    } catch (err) {
      if (this.#stopped) return;
      const e = asVertexError(err);
      const notAfter = describeCertificate(current.certPem).notAfter.getTime();
      const left = notAfter - this.#wallNow();
      this.#log[left > 0 ? 'warn' : 'error']({ code: e.code, reason: e.message, retryInMs: this.#retryMs, expiresInMs: left }, 'certificate renewal failed');
      const retry = this.#retryMs;
      this.#retryMs = Math.min(RETRY_MAX_MS, this.#retryMs * 2);
      this.#wait(retry, () => void this.#attempt());
      return;
    }
    if (this.#stopped) return;
    this.#retryMs = RETRY_MIN_MS;
    this.#identity = next;
    try {
      await this.#opts.onRenewed(next);
      this.#log.info({ notAfter: describeCertificate(next.certPem).notAfter.toISOString() }, 'certificate renewed');
    } catch (err) {
      this.#log.error({ err: asVertexError(err).message }, 'certificate renewed but not stored');
    }
    if (!this.#stopped) this.#schedule();
  }
}
