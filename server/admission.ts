/**
 * Admission of connections that have not authenticated (issue 11, item 4):
 * from the TCP accept until a valid client certificate is known, and for
 * the whole life of a control session without one (register, login, who-am-i).
 * Such connections cost memory, a slot of max_connections and a TLS handshake,
 * but prove nothing, so they are bounded (docs/security.md "Limits and their
 * defaults"):
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
 * - under pressure (within the last `idleMs` the table was full, or
 *   `handshakes` TLS handshakes were in progress at once, or a connection was
 *   shed): addresses that recently proved themselves (a client
 *   certificate of our own domains, a right password, a registration) are
 *   admitted as before; any other address gets one new connection per
 *   `newcomerIntervalMs`, and the rest are closed at accept, before TLS.
 *   A flood that reopens what is closed therefore costs the server a TCP
 *   accept, not a TLS handshake, and no longer queues the handshakes of
 *   known users behind its own; a first `register` from a new address still
 *   gets its one connection.
 *
 * Pure bookkeeping over a clock; the identity server calls it and closes what
 * it is told to.
 */

export interface AdmissionLimits {
  perAddress: number;
  total: number;
  idleMs: number;
  lifetimeMs: number;
  /** TLS handshakes in progress at once (admitted, not yet through TLS) that bring pressure on. */
  handshakes: number;
  /** Under pressure, an address not known good gets one new connection per this long. */
  newcomerIntervalMs: number;
  /** Known-good addresses remembered at most (the one proven longest ago is forgotten first). */
  knownAddresses: number;
  /** An address stays known good for this long after it last proved itself. */
  knownForMs: number;
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
  // Each costs the server ~1-2 ms of CPU in turn, and a known agent's own
  // handshake waits behind those in progress: 128 is a few hundred ms on a
  // small server. A flood's first burst is cut here, long before the table
  // is full; a storm of agents reconnecting (a restart) still gets one
  // connection per address at once, and every address that authenticates
  // is then let in freely.
  handshakes: 128,
  // One TLS handshake per unknown address per 10 s under pressure: enough for
  // a first `register` or `login` (which then makes the address known good),
  // and it makes a flood from 160 addresses cost 16 handshakes a second.
  newcomerIntervalMs: 10_000,
  // A Map entry of an address and a time: ~100 bytes, so 1 MB at most.
  knownAddresses: 10_000,
  // An agent keeps its control connection open and reconnects within seconds
  // of a drop; a day covers a laptop that sleeps overnight on the same network.
  knownForMs: 24 * 60 * 60 * 1000,
});

/** Why admit() said no: `address` = the per-address cap, `shed` = under pressure and not known good, `full` = everything else busy. */
export type Refusal = 'address' | 'shed' | 'full';

export interface Admitted {
  readonly address: string;
  /** Until its TLS handshake is done (secured()). */
  handshaking: boolean;
  readonly openedAt: number;
  lastActive: number;
  /** True while a request of this connection is being answered: never evicted or timed out then. */
  busy: () => boolean;
  close: (reason: string) => void;
}

export interface AdmissionOptions {
  /**
   * False: no pressure mode, every address is admitted as a newcomer would be
   * (the behaviour before the known-good set; the test fault
   * `no-admission-priority`, so the tests can show they fail without it).
   */
  priority?: boolean;
  /** Told of every connection refused at accept, and why (metrics). */
  onRefuse?: (reason: Refusal) => void;
}

export class Admission {
  readonly limits: Readonly<AdmissionLimits>;
  readonly #now: () => number;
  readonly #priority: boolean;
  readonly #onRefuse: (reason: Refusal) => void;
  /** Least recently active first (activity re-inserts). */
  readonly #entries = new Set<Admitted>();
  readonly #byAddress = new Map<string, number>();
  /** Address -> when it last proved itself; least recent first (proving re-inserts). */
  readonly #known = new Map<string, number>();
  /** Address not known good -> when it was last admitted under pressure; oldest first. */
  readonly #newcomers = new Map<string, number>();
  /** Pressure lasts until then (renewed while the table is full or connections are shed). */
  #pressureUntil = 0;
  #handshaking = 0;
  #refused = 0;
  #shed = 0;
  #evicted = 0;
  #timedOut = 0;

  constructor(limits: Partial<AdmissionLimits> = {}, now: () => number = Date.now, opts: AdmissionOptions = {}) {
    this.limits = { ...DEFAULT_ADMISSION_LIMITS, ...limits };
    this.#now = now;
    this.#priority = opts.priority ?? true;
    this.#onRefuse = opts.onRefuse ?? (() => undefined);
  }

  get size(): number {
    return this.#entries.size;
  }

  /** Admitted connections still in their TLS handshake. */
  get handshaking(): number {
    return this.#handshaking;
  }

  countFor(address: string): number {
    return this.#byAddress.get(address) ?? 0;
  }

  /** True while new connections from addresses not known good are rationed. */
  get underPressure(): boolean {
    return this.#priority && this.#now() < this.#pressureUntil;
  }

  get stats(): { open: number; handshaking: number; refused: number; shed: number; evicted: number; timedOut: number; known: number; underPressure: boolean } {
    return {
      open: this.#entries.size, handshaking: this.#handshaking, refused: this.#refused, shed: this.#shed, evicted: this.#evicted, timedOut: this.#timedOut,
      known: this.#known.size, underPressure: this.underPressure,
    };
  }

  /**
   * `address` proved itself: a client certificate of one of our domains, a
   * right password, a registration. Under pressure it is admitted as before.
   */
  prove(address: string): void {
    this.#known.delete(address);
    this.#known.set(address, this.#now());
    this.#newcomers.delete(address);
    while (this.#known.size > this.limits.knownAddresses) this.#known.delete(this.#known.keys().next().value as string);
  }

  isKnown(address: string): boolean {
    const at = this.#known.get(address);
    if (at === undefined) return false;
    if (this.#now() - at < this.limits.knownForMs) return true;
    this.#known.delete(address);
    return false;
  }

  /** Why a connection from `address` would be refused now, or null when it would be admitted. */
  check(address: string): Refusal | null {
    if (this.countFor(address) >= this.limits.perAddress) return 'address';
    if (this.#priority && this.#now() < this.#pressureUntil && !this.isKnown(address)) {
      const last = this.#newcomers.get(address);
      if (last !== undefined && this.#now() - last < this.limits.newcomerIntervalMs) return 'shed';
    }
    return null;
  }

  /** A new connection from `address`; null means close it now (see check(), and `full`: everything else is busy). */
  admit(address: string, close: Admitted['close'], busy: Admitted['busy'] = () => false): Admitted | null {
    const now = this.#now();
    const full = this.#entries.size >= this.limits.total;
    if (full || this.#handshaking >= this.limits.handshakes) this.#pressureUntil = now + this.limits.idleMs;
    const refusal = this.check(address);
    if (refusal) {
      this.#refused++;
      if (refusal === 'shed') {
        // Still knocking: the flood goes on, so does the pressure.
        this.#shed++;
        this.#pressureUntil = now + this.limits.idleMs;
      }
      this.#onRefuse(refusal);
      return null;
    }
    if (this.#priority && now < this.#pressureUntil && !this.isKnown(address)) this.#noteNewcomer(address, now);
    if (full && !this.#evictOne()) {
      this.#refused++;
      this.#onRefuse('full');
      return null;
    }
    const entry: Admitted = { address, handshaking: true, openedAt: now, lastActive: now, busy, close };
    this.#entries.add(entry);
    this.#handshaking++;
    this.#byAddress.set(address, this.countFor(address) + 1);
    return entry;
  }

  /** The connection did something (a request arrived): it moves to the back of the eviction line. */
  touch(entry: Admitted): void {
    if (!this.#entries.delete(entry)) return;
    entry.lastActive = this.#now();
    this.#entries.add(entry);
  }

  /** The connection's TLS handshake is done (it may still be unauthenticated). */
  secured(entry: Admitted): void {
    if (!entry.handshaking || !this.#entries.has(entry)) return;
    entry.handshaking = false;
    this.#handshaking--;
  }

  /** The connection closed, or authenticated: it no longer counts. */
  release(entry: Admitted): void {
    if (!this.#entries.delete(entry)) return;
    if (entry.handshaking) {
      entry.handshaking = false;
      this.#handshaking--;
    }
    const n = this.countFor(entry.address) - 1;
    if (n > 0) this.#byAddress.set(entry.address, n);
    else this.#byAddress.delete(entry.address);
  }

  /** Closes connections idle or alive too long, forgets stale addresses; call it every second or so. */
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
    this.#pruneNewcomers(now);
    for (const [address, at] of this.#known) {
      if (now - at < this.limits.knownForMs) break;
      this.#known.delete(address);
    }
  }

  #noteNewcomer(address: string, now: number): void {
    this.#newcomers.delete(address);
    this.#newcomers.set(address, now);
    this.#pruneNewcomers(now);
    // Bounded like the known set: a flood from more addresses than that within
    // one interval forgets its oldest, which may then come again a little early.
    while (this.#newcomers.size > this.limits.knownAddresses) this.#newcomers.delete(this.#newcomers.keys().next().value as string);
  }

  #pruneNewcomers(now: number): void {
    for (const [address, at] of this.#newcomers) {
      if (now - at < this.limits.newcomerIntervalMs) break;
      this.#newcomers.delete(address);
    }
  }

  #evictOne(): boolean {
    // From the address holding the most, so a flood from many addresses,
    // churning, evicts its own connections and not a newcomer's single one.
    // Known-good addresses come last: under pressure they are the ones let in.
    let top = '';
    let most = 0;
    for (const [address, n] of this.#byAddress) {
      if (n > most && !(this.#priority && this.isKnown(address))) { top = address; most = n; }
    }
    if (most > 0) {
      for (const entry of this.#entries) {
        if (entry.address !== top || entry.busy()) continue;
        this.#close(entry, 'closed to make room for a newer connection');
        this.#evicted++;
        return true;
      }
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
