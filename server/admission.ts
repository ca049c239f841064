/**
 * Admission of connections that have not authenticated (issue 11, item 4):
 * from the TCP accept until a valid client certificate is known, and for
 * the whole life of a control session without one (register, login, who-am-i).
 * Such connections cost memory and a slot of max_connections but prove
 * nothing, so they are bounded in three ways (docs/security.md "Limits and
 * their defaults"):
 *
 * - per source address: at most `perAddress` at once; more are closed at
 *   accept, before any TLS work;
 * - in total: at most `total`; a newcomer then closes the connection quiet
 *   longest of the address holding the most (never one with a request in
 *   flight), so a flood from many addresses cannot keep a legitimate
 *   newcomer out even while it churns, and authenticated
 *   sessions keep the rest of max_connections;
 * - in time: closed after `idleMs` without a request, and after `lifetimeMs`
 *   in all, since nothing an unauthenticated client may do takes longer.
 *
 * Pure bookkeeping over a clock; the identity server calls it and closes what
 * it is told to.
 */

export interface AdmissionLimits {
  perAddress: number;
  total: number;
  idleMs: number;
  lifetimeMs: number;
}

export const DEFAULT_ADMISSION_LIMITS: Readonly<AdmissionLimits> = Object.freeze({
  // Every connection counts here until its TLS handshake shows a client
  // certificate, so this also bounds a burst of handshakes from one busy
  // agent (100 relay legs at once in test/integration/connections) or from a
  // NAT shared by many users: 32 refused those at accept (ECONNRESET).
  perAddress: 256,
  total: 2000,
  idleMs: 10_000,
  lifetimeMs: 60_000,
});

export interface Admitted {
  readonly address: string;
  readonly openedAt: number;
  lastActive: number;
  /** True while a request of this connection is being answered: never evicted or timed out then. */
  busy: () => boolean;
  close: (reason: string) => void;
}

export class Admission {
  readonly limits: Readonly<AdmissionLimits>;
  readonly #now: () => number;
  /** Least recently active first (activity re-inserts). */
  readonly #entries = new Set<Admitted>();
  readonly #byAddress = new Map<string, number>();
  #refused = 0;
  #evicted = 0;
  #timedOut = 0;

  constructor(limits: Partial<AdmissionLimits> = {}, now: () => number = Date.now) {
    this.limits = { ...DEFAULT_ADMISSION_LIMITS, ...limits };
    this.#now = now;
  }

  get size(): number {
    return this.#entries.size;
  }

  countFor(address: string): number {
    return this.#byAddress.get(address) ?? 0;
  }

  get stats(): { open: number; refused: number; evicted: number; timedOut: number } {
    return { open: this.#entries.size, refused: this.#refused, evicted: this.#evicted, timedOut: this.#timedOut };
  }

  /** A new connection from `address`; null means close it now (its address is at its limit, or everything else is busy). */
  admit(address: string, close: Admitted['close'], busy: Admitted['busy'] = () => false): Admitted | null {
    if (this.countFor(address) >= this.limits.perAddress) {
      this.#refused++;
      return null;
    }
    if (this.#entries.size >= this.limits.total && !this.#evictOne()) {
      this.#refused++;
      return null;
    }
    const now = this.#now();
    const entry: Admitted = { address, openedAt: now, lastActive: now, busy, close };
    this.#entries.add(entry);
    this.#byAddress.set(address, this.countFor(address) + 1);
    return entry;
  }

  /** The connection did something (a request arrived): it moves to the back of the eviction line. */
  touch(entry: Admitted): void {
    if (!this.#entries.delete(entry)) return;
    entry.lastActive = this.#now();
    this.#entries.add(entry);
  }

  /** The connection closed, or authenticated: it no longer counts. */
  release(entry: Admitted): void {
    if (!this.#entries.delete(entry)) return;
    const n = this.countFor(entry.address) - 1;
    if (n > 0) this.#byAddress.set(entry.address, n);
    else this.#byAddress.delete(entry.address);
  }

  /** Closes connections idle or alive too long; call it every second or so. */
  sweep(): void {
    const now = this.#now();
    for (const entry of [...this.#entries]) {
      if (entry.busy()) continue;
      if (now - entry.lastActive >= this.limits.idleMs) {
        this.#close(entry, 'idle without authenticating');
        this.#timedOut++;
      } else if (now - entry.openedAt >= this.limits.lifetimeMs) {
        this.#close(entry, 'open too long without authenticating');
        this.#timedOut++;
      }
    }
  }

  #evictOne(): boolean {
    // From the address holding the most, so a flood from many addresses,
    // churning, evicts its own connections and not a newcomer's single one.
    let top = '';
    let most = 0;
    for (const [address, n] of this.#byAddress) if (n > most) { top = address; most = n; }
    for (const entry of this.#entries) {
      if (entry.address !== top || entry.busy()) continue;
      this.#close(entry, 'closed to make room for a newer connection');
      this.#evicted++;
      return true;
    }
    for (const entry of this.#entries) {
      if (entry.busy()) continue;
      this.#close(entry, 'closed to make room for a newer connection');
      this.#evicted++;
      return true;
    }
    return false;
  }

  #close(entry: Admitted, reason: string): void {
    this.release(entry);
    entry.close(reason);
  }
}
